//! The orders' SQL: orders, lines, status history, sagas and allocation
//! rules, with typed rows. Status moves are conditional updates on the
//! domain's transition table ([`Machine::sources`]).

use std::collections::BTreeMap;

use sqlx::{AnyConnection, AssertSqlSafe};
use storegate_protocol::Sku;
use storegate_protocol::event::EventBody;

use super::{HistoryView, LineView, OrderSummary, OrderView};
use crate::db::{Db, now_ms};
use crate::domain::allocation::{Holding, Rule};
use crate::domain::machine::Machine;
use crate::domain::order::{Fulfilment, OrderStatus, SagaStep};
use crate::domain::payment::PaymentMethod;
use crate::sql::{self, row};
use crate::{payments, shipping, tasks};

row! {
    /// What a location holds of one SKU, with the location's facts.
    struct HoldingRow {
        location: String,
        kind: String,
        region: Option<String>,
        sku: String,
        available: i64,
    }
}

/// What every location holds of `skus` (available > 0 only).
pub(super) async fn availability(
    conn: &mut AnyConnection,
    skus: &[&Sku],
) -> Result<BTreeMap<String, Holding>, sqlx::Error> {
    let mut q = sqlx::query_as::<_, HoldingRow>(AssertSqlSafe(format!(
        "SELECT l.location AS location, s.kind AS kind, s.region AS region, l.sku AS sku, \
         l.on_hand - l.reserved AS available FROM stock_levels l \
         JOIN stores s ON s.store_id = l.location WHERE l.sku IN {} AND l.on_hand - l.reserved > 0",
        sql::list(1, skus.len())
    )));
    for s in skus {
        q = q.bind(s.as_str());
    }
    let mut out: BTreeMap<String, Holding> = BTreeMap::new();
    for r in q.fetch_all(conn).await? {
        let Ok(sku) = Sku::parse(r.sku.as_str()) else {
            continue;
        };
        let h = out.entry(r.location).or_insert_with(|| Holding {
            kind: r.kind,
            region: r.region,
            ..Holding::default()
        });
        h.available.insert(sku, r.available);
    }
    Ok(out)
}

/// A new online order's row.
pub(super) struct NewOrder {
    pub id: String,
    pub customer: Option<String>,
    /// The location, if every line comes from one.
    pub location: Option<String>,
    pub fulfilment: Fulfilment,
    pub region: Option<String>,
    pub currency: String,
    pub subtotal: i64,
    pub discount: i64,
    pub tax: i64,
    pub shipping: i64,
    pub total: i64,
    pub allow_split: bool,
    pub now: i64,
    pub lines: Vec<NewLine>,
    /// The note of its `reserved` history entry.
    pub note: String,
}

/// A new order line.
pub(super) struct NewLine {
    pub sku: Sku,
    pub qty: i64,
    pub unit_price: i64,
    pub total: i64,
    pub tax: i64,
    pub location: String,
    pub discount: i64,
    pub promotion_id: Option<String>,
}

/// Writes online orders `reserved`, their lines, and their first history
/// (`created`, `reserved` with their note): three statements for all.
pub(super) async fn insert_online(conn: &mut AnyConnection, orders: &[NewOrder]) -> Result<(), sqlx::Error> {
    for chunk in orders.chunks(sql::CHUNK) {
        let text = sql::values(
            "INSERT INTO orders (id, kind, status, customer_id, location, fulfilment, ship_region, currency, subtotal_minor, \
             discount_minor, tax_minor, shipping_minor, total_minor, allow_split, created_ms, updated_ms)",
            chunk.len(),
            16,
            "",
        );
        let mut q = sqlx::query(AssertSqlSafe(text));
        for o in chunk {
            q = q
                .bind(o.id.as_str())
                .bind("online")
                .bind(OrderStatus::Reserved)
                .bind(o.customer.clone())
                .bind(o.location.clone())
                .bind(o.fulfilment)
                .bind(o.region.clone())
                .bind(o.currency.as_str())
                .bind(o.subtotal)
                .bind(o.discount)
                .bind(o.tax)
                .bind(o.shipping)
                .bind(o.total)
                .bind(i64::from(o.allow_split))
                .bind(o.now)
                .bind(o.now);
        }
        q.execute(&mut *conn).await?;
    }
    let lines: Vec<(&str, i64, &NewLine)> = orders
        .iter()
        .flat_map(|o| {
            o.lines
                .iter()
                .enumerate()
                .map(|(i, l)| (o.id.as_str(), i as i64 + 1, l))
        })
        .collect();
    for chunk in lines.chunks(sql::CHUNK) {
        let text = sql::values(
            "INSERT INTO order_lines (order_id, line_no, sku, qty, unit_price_minor, total_minor, tax_minor, location, \
             discount_minor, promotion_id)",
            chunk.len(),
            10,
            "",
        );
        let mut q = sqlx::query(AssertSqlSafe(text));
        for (id, no, l) in chunk {
            q = q
                .bind(*id)
                .bind(*no)
                .bind(l.sku.as_str())
                .bind(l.qty)
                .bind(l.unit_price)
                .bind(l.total)
                .bind(l.tax)
                .bind(l.location.as_str())
                .bind(l.discount)
                .bind(l.promotion_id.clone());
        }
        q.execute(&mut *conn).await?;
    }
    let entries: Vec<(&str, OrderStatus, &str, i64)> = orders
        .iter()
        .flat_map(|o| {
            [
                (o.id.as_str(), OrderStatus::Created, "", o.now),
                (o.id.as_str(), OrderStatus::Reserved, o.note.as_str(), o.now),
            ]
        })
        .collect();
    history(conn, &entries).await
}

/// History entries: (order, status, note, when), in order.
async fn history(
    conn: &mut AnyConnection,
    entries: &[(&str, OrderStatus, &str, i64)],
) -> Result<(), sqlx::Error> {
    for chunk in entries.chunks(sql::CHUNK) {
        let text = sql::values(
            "INSERT INTO order_status_history (order_id, status, at_ms, note)",
            chunk.len(),
            4,
            "",
        );
        let mut q = sqlx::query(AssertSqlSafe(text));
        for (order_id, status, note, at) in chunk {
            q = q.bind(*order_id).bind(*status).bind(*at).bind(sql::text(note));
        }
        q.execute(&mut *conn).await?;
    }
    Ok(())
}

/// Moves an order to `to` (with a history entry) if its status may
/// become `to`; returns whether it moved.
pub(super) async fn set_status(
    conn: &mut AnyConnection,
    order_id: &str,
    to: OrderStatus,
    note: &str,
) -> Result<bool, sqlx::Error> {
    Ok(!set_status_many(conn, &[order_id], to, note).await?.is_empty())
}

/// Moves each of `ids` to `to` (with a history entry) if its status may
/// become `to`; returns those that moved. Two statements for all.
pub(super) async fn set_status_many(
    conn: &mut AnyConnection,
    ids: &[&str],
    to: OrderStatus,
    note: &str,
) -> Result<Vec<String>, sqlx::Error> {
    let from = OrderStatus::sources(to);
    let now = now_ms();
    let mut moved = Vec::with_capacity(ids.len());
    for chunk in ids.chunks(sql::CHUNK) {
        let mut q = sqlx::query_scalar::<_, String>(AssertSqlSafe(format!(
            "UPDATE orders SET status = $1, updated_ms = $2 WHERE status IN {} AND id IN {} RETURNING id",
            sql::list(3, from.len()),
            sql::list(3 + from.len(), chunk.len())
        )))
        .bind(to)
        .bind(now);
        for f in &from {
            q = q.bind(f);
        }
        for id in chunk {
            q = q.bind(*id);
        }
        moved.extend(q.fetch_all(&mut *conn).await?);
    }
    for id in ids {
        if !moved.iter().any(|m| m == id) {
            tracing::warn!(order_id = id, to = %to, "order not moved: its status does not lead there");
        }
    }
    let entries: Vec<(&str, OrderStatus, &str, i64)> =
        moved.iter().map(|id| (id.as_str(), to, note, now)).collect();
    history(conn, &entries).await?;
    Ok(moved)
}

/// Store sales voided at the till (`completed` → `voided`).
pub(crate) async fn void_store_sales(conn: &mut AnyConnection, ids: &[String]) -> Result<(), sqlx::Error> {
    for id in ids {
        let moved = sqlx::query(
            "UPDATE orders SET status = $1, updated_ms = $2 WHERE id = $3 AND kind = 'store' AND status = $4",
        )
        .bind(OrderStatus::Voided)
        .bind(now_ms())
        .bind(id.as_str())
        .bind(OrderStatus::Completed)
        .execute(&mut *conn)
        .await?
        .rows_affected()
            == 1;
        if moved {
            history(
                conn,
                &[(id.as_str(), OrderStatus::Voided, "voided at the till", now_ms())],
            )
            .await?;
        }
    }
    Ok(())
}

row! {
    /// An order's status and how it is fulfilled.
    pub(super) struct StatusRow {
        pub status: OrderStatus,
        pub fulfilment: Option<Fulfilment>,
    }
}

/// An online order's status; `lock` (the database) locks the row for
/// the transaction.
pub(super) async fn status(
    conn: &mut AnyConnection,
    lock: Option<&Db>,
    order_id: &str,
) -> Result<Option<StatusRow>, sqlx::Error> {
    sqlx::query_as(AssertSqlSafe(format!(
        "SELECT status, fulfilment FROM orders WHERE id = $1 AND kind = 'online'{}",
        lock.map_or("", Db::for_update)
    )))
    .bind(order_id)
    .fetch_optional(conn)
    .await
}

row! {
    /// What an order's total is.
    pub(super) struct TotalRow {
        pub total_minor: i64,
        pub currency: String,
    }
}

/// An order's total.
pub(super) async fn total(conn: &mut AnyConnection, order_id: &str) -> Result<TotalRow, sqlx::Error> {
    sqlx::query_as("SELECT total_minor, currency FROM orders WHERE id = $1")
        .bind(order_id)
        .fetch_one(conn)
        .await
}

row! {
    /// A line as fulfilment needs it.
    pub(super) struct PickLine {
        pub order_id: String,
        pub sku: String,
        pub qty: i64,
        pub location: Option<String>,
    }
}

/// Rows of `select` (which ends in `IN`) for `ids`, then `then` (an
/// `ORDER BY`, or nothing): one statement per 500 ids.
async fn for_ids<T>(
    conn: &mut AnyConnection,
    select: &str,
    ids: &[&str],
    then: &str,
) -> Result<Vec<T>, sqlx::Error>
where
    T: for<'r> sqlx::FromRow<'r, sqlx::any::AnyRow> + Send + Unpin,
{
    let mut out = Vec::new();
    for chunk in ids.chunks(sql::CHUNK) {
        let mut q = sqlx::query_as(AssertSqlSafe(format!(
            "{select} {}{then}",
            sql::list(1, chunk.len())
        )));
        for id in chunk {
            q = q.bind(*id);
        }
        out.extend(q.fetch_all(&mut *conn).await?);
    }
    Ok(out)
}

/// The lines of `ids`, by order and line number.
pub(super) async fn pick_lines(conn: &mut AnyConnection, ids: &[&str]) -> Result<Vec<PickLine>, sqlx::Error> {
    for_ids(
        conn,
        "SELECT order_id, sku, qty, location FROM order_lines WHERE order_id IN",
        ids,
        " ORDER BY order_id, line_no",
    )
    .await
}

row! {
    /// How an order ships.
    pub(super) struct ShipTo {
        pub id: String,
        pub fulfilment: Option<Fulfilment>,
        pub ship_region: Option<String>,
    }
}

/// How each of `ids` ships.
pub(super) async fn ship_to(conn: &mut AnyConnection, ids: &[&str]) -> Result<Vec<ShipTo>, sqlx::Error> {
    for_ids(
        conn,
        "SELECT id, fulfilment, ship_region FROM orders WHERE id IN",
        ids,
        "",
    )
    .await
}

/// A new saga at `authorize`.
pub(super) struct NewSaga<'a> {
    pub order_id: &'a str,
    pub lease_until: i64,
    pub token: &'a str,
    pub last4: &'a str,
    pub method: PaymentMethod,
    pub now: i64,
}

/// Writes sagas at `authorize`, each leased to the request running it.
pub(super) async fn insert_sagas(conn: &mut AnyConnection, sagas: &[NewSaga<'_>]) -> Result<(), sqlx::Error> {
    for chunk in sagas.chunks(sql::CHUNK) {
        let text = sql::values(
            "INSERT INTO sagas (order_id, step, attempts, lease_until_ms, card_token, card_last4, method, updated_ms)",
            chunk.len(),
            8,
            "",
        );
        let mut q = sqlx::query(AssertSqlSafe(text));
        for s in chunk {
            q = q
                .bind(s.order_id)
                .bind(SagaStep::Authorize)
                .bind(0i64)
                .bind(s.lease_until)
                .bind(s.token)
                .bind(s.last4)
                .bind(s.method)
                .bind(s.now);
        }
        q.execute(&mut *conn).await?;
    }
    Ok(())
}

row! {
    /// A saga with what its steps need.
    pub(super) struct SagaRow {
        pub step: SagaStep,
        pub attempts: i64,
        pub card_token: String,
        pub card_last4: String,
        pub method: PaymentMethod,
        pub total_minor: i64,
        pub currency: String,
    }
}

/// An order's saga.
pub(super) async fn saga(db: &Db, order_id: &str) -> Result<Option<SagaRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT s.step AS step, s.attempts AS attempts, COALESCE(s.card_token, '') AS card_token, \
         COALESCE(s.card_last4, '') AS card_last4, s.method AS method, o.total_minor AS total_minor, \
         o.currency AS currency FROM sagas s JOIN orders o ON o.id = s.order_id WHERE s.order_id = $1",
    )
    .bind(order_id)
    .fetch_optional(&db.pool)
    .await
}

/// Moves a saga to `to` if its step may become `to` (recording the
/// payment for `done`); returns whether it moved. `reset_lease` makes the
/// saga worker pick it up at once.
pub(super) async fn move_saga(
    conn: &mut AnyConnection,
    order_id: &str,
    to: SagaStep,
    payment_id: Option<&str>,
    reset_lease: bool,
) -> Result<bool, sqlx::Error> {
    let from = SagaStep::sources(to);
    let mut q = sqlx::query(AssertSqlSafe(format!(
        "UPDATE sagas SET step = $1, payment_id = COALESCE($2, payment_id), updated_ms = $3, \
         lease_until_ms = CASE WHEN $4 = 1 THEN 0 ELSE lease_until_ms END \
         WHERE order_id = $5 AND step IN {}",
        sql::list(6, from.len())
    )))
    .bind(to)
    .bind(payment_id)
    .bind(now_ms())
    .bind(i64::from(reset_lease))
    .bind(order_id);
    for f in from {
        q = q.bind(f);
    }
    Ok(q.execute(conn).await?.rows_affected() == 1)
}

/// Moves the sagas of `ids` to `done` where their step allows it,
/// recording each order's payment (its key); returns the
/// orders whose saga moved.
pub(super) async fn finish_sagas(conn: &mut AnyConnection, ids: &[&str]) -> Result<Vec<String>, sqlx::Error> {
    let from = SagaStep::sources(SagaStep::Done);
    let mut moved = Vec::with_capacity(ids.len());
    for chunk in ids.chunks(sql::CHUNK) {
        let mut q = sqlx::query_scalar::<_, String>(AssertSqlSafe(format!(
            "UPDATE sagas SET step = $1, payment_id = $2 || order_id, updated_ms = $3 \
             WHERE step IN {} AND order_id IN {} RETURNING order_id",
            sql::list(4, from.len()),
            sql::list(4 + from.len(), chunk.len())
        )))
        .bind(SagaStep::Done)
        .bind(super::saga::PAYMENT_KEY_PREFIX)
        .bind(now_ms());
        for f in &from {
            q = q.bind(f);
        }
        for id in chunk {
            q = q.bind(*id);
        }
        moved.extend(q.fetch_all(&mut *conn).await?);
    }
    Ok(moved)
}

/// Counts a failed authorisation and leases the saga until `retry_at`.
pub(super) async fn saga_retry_at(db: &Db, order_id: &str, retry_at: i64) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE sagas SET attempts = attempts + 1, lease_until_ms = $2, updated_ms = $3 \
         WHERE order_id = $1 AND step = $4",
    )
    .bind(order_id)
    .bind(retry_at)
    .bind(now_ms())
    .bind(SagaStep::Authorize)
    .execute(&db.pool)
    .await?;
    Ok(())
}

row! {
    /// A saga whose lease ran out.
    pub(super) struct Expired {
        pub order_id: String,
        pub lease_until_ms: i64,
    }
}

/// Sagas still running whose lease ran out, oldest first.
pub(super) async fn expired_sagas(db: &Db, now: i64, limit: i64) -> Result<Vec<Expired>, sqlx::Error> {
    let open: Vec<SagaStep> = SagaStep::ALL.iter().copied().filter(|s| !s.is_final()).collect();
    let mut q = sqlx::query_as(AssertSqlSafe(format!(
        "SELECT order_id, lease_until_ms FROM sagas WHERE lease_until_ms < $1 AND step IN {} \
         ORDER BY lease_until_ms LIMIT $2",
        sql::list(3, open.len())
    )))
    .bind(now)
    .bind(limit);
    for s in open {
        q = q.bind(s);
    }
    q.fetch_all(&db.pool).await
}

/// Claims a saga whose lease was `lease` until `until`: only one worker
/// (or replica) gets it.
pub(super) async fn claim_saga(db: &Db, order_id: &str, lease: i64, until: i64) -> Result<bool, sqlx::Error> {
    Ok(
        sqlx::query("UPDATE sagas SET lease_until_ms = $2 WHERE order_id = $1 AND lease_until_ms = $3")
            .bind(order_id)
            .bind(until)
            .bind(lease)
            .execute(&db.pool)
            .await?
            .rows_affected()
            == 1,
    )
}

row! {
    struct OrderRow {
        id: String,
        kind: String,
        status: OrderStatus,
        customer_id: Option<String>,
        location: Option<String>,
        fulfilment: Option<Fulfilment>,
        ship_region: Option<String>,
        currency: String,
        subtotal_minor: i64,
        discount_minor: i64,
        tax_minor: i64,
        shipping_minor: i64,
        total_minor: i64,
        store_id: Option<String>,
        sale_id: Option<Vec<u8>>,
        created_ms: i64,
        updated_ms: i64,
    }
}

row! {
    struct LineRow {
        order_id: String,
        line_no: i64,
        sku: String,
        qty: i64,
        unit_price_minor: i64,
        total_minor: i64,
        tax_minor: i64,
        location: Option<String>,
        discount_minor: i64,
        promotion_id: Option<String>,
    }
}

row! {
    struct HistoryRow {
        order_id: String,
        status: OrderStatus,
        at_ms: i64,
        note: String,
    }
}

/// One order with its lines, history, payments, shipments and tasks.
pub async fn get(db: &Db, id: &str) -> Result<Option<OrderView>, sqlx::Error> {
    Ok(get_many(db, &[id]).await?.pop())
}

/// Orders with their lines, history, payments, shipments and tasks, in
/// the order of `ids` (missing ones left out): seven statements for all.
pub async fn get_many(db: &Db, ids: &[&str]) -> Result<Vec<OrderView>, sqlx::Error> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut conn = db.pool.acquire().await?;
    let list = sql::list(1, ids.len());
    let bind_all = |text: String| {
        let mut q = sqlx::query(AssertSqlSafe(text));
        for id in ids {
            q = q.bind(*id);
        }
        q
    };
    use sqlx::FromRow as _;
    let rows: Vec<OrderRow> = bind_all(format!(
        "SELECT id, kind, status, customer_id, location, fulfilment, ship_region, currency, subtotal_minor, discount_minor, \
         tax_minor, shipping_minor, total_minor, store_id, sale_id, created_ms, updated_ms FROM orders WHERE id IN {list}"
    ))
    .fetch_all(&mut *conn)
    .await?
    .iter()
    .map(OrderRow::from_row)
    .collect::<Result<_, _>>()?;
    let mut lines: BTreeMap<String, Vec<LineView>> = BTreeMap::new();
    for r in bind_all(format!(
        "SELECT order_id, line_no, sku, qty, unit_price_minor, total_minor, tax_minor, location, discount_minor, promotion_id \
         FROM order_lines WHERE order_id IN {list} ORDER BY order_id, line_no"
    ))
    .fetch_all(&mut *conn)
    .await?
    {
        let l = LineRow::from_row(&r)?;
        lines.entry(l.order_id).or_default().push(LineView {
            line_no: l.line_no,
            sku: l.sku,
            qty: l.qty,
            unit_price_minor: l.unit_price_minor,
            total_minor: l.total_minor,
            tax_minor: l.tax_minor,
            location: l.location,
            discount_minor: l.discount_minor,
            promotion_id: l.promotion_id,
        });
    }
    let mut history: BTreeMap<String, Vec<HistoryView>> = BTreeMap::new();
    for r in bind_all(format!(
        "SELECT order_id, status, at_ms, note FROM order_status_history WHERE order_id IN {list} ORDER BY id"
    ))
    .fetch_all(&mut *conn)
    .await?
    {
        let h = HistoryRow::from_row(&r)?;
        history.entry(h.order_id).or_default().push(HistoryView {
            status: h.status,
            at_ms: h.at_ms,
            note: h.note,
        });
    }
    drop(conn);
    let mut payments = by_order(payments::for_orders(db, ids).await?, |p| p.order_id.clone());
    let mut shipments = by_order(shipping::for_orders(db, ids).await?, |s| Some(s.order_id.clone()));
    let mut tasks = by_order(tasks::for_orders(db, ids).await?, |t| t.order_id.clone());
    let mut by_id: BTreeMap<String, OrderRow> = rows.into_iter().map(|r| (r.id.clone(), r)).collect();
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        let Some(r) = by_id.remove(*id) else { continue };
        let lines = if r.kind == "store" {
            store_sale_lines(db, r.sale_id.as_deref()).await?
        } else {
            lines.remove(*id).unwrap_or_default()
        };
        out.push(OrderView {
            payments: payments.remove(*id).unwrap_or_default(),
            shipments: shipments.remove(*id).unwrap_or_default(),
            tasks: tasks.remove(*id).unwrap_or_default(),
            history: history.remove(*id).unwrap_or_default(),
            lines,
            id: r.id,
            kind: r.kind,
            status: r.status,
            customer_id: r.customer_id,
            location: r.location,
            fulfilment: r.fulfilment,
            ship_region: r.ship_region,
            currency: r.currency,
            subtotal_minor: r.subtotal_minor,
            discount_minor: r.discount_minor,
            tax_minor: r.tax_minor,
            shipping_minor: r.shipping_minor,
            total_minor: r.total_minor,
            store_id: r.store_id,
            created_ms: r.created_ms,
            updated_ms: r.updated_ms,
        });
    }
    Ok(out)
}

/// Items grouped by the order they belong to, in their order.
fn by_order<T>(items: Vec<T>, order_of: impl Fn(&T) -> Option<String>) -> BTreeMap<String, Vec<T>> {
    let mut out: BTreeMap<String, Vec<T>> = BTreeMap::new();
    for x in items {
        if let Some(o) = order_of(&x) {
            out.entry(o).or_default().push(x);
        }
    }
    out
}

/// A store sale's lines, from its event (the hub keeps no line rows for
/// them).
async fn store_sale_lines(db: &Db, sale_id: Option<&[u8]>) -> Result<Vec<LineView>, sqlx::Error> {
    let Some(sale_id) = sale_id else {
        return Ok(Vec::new());
    };
    let body: Option<Vec<u8>> =
        sqlx::query_scalar("SELECT body FROM events WHERE ref_id = $1 AND kind = 'sale'")
            .bind(sale_id.to_vec())
            .fetch_optional(&db.pool)
            .await?;
    let Some(Ok(e)) = body.map(|b| storegate_protocol::envelope::decode_event(&b)) else {
        return Ok(Vec::new());
    };
    let EventBody::Sale(s) = e.body else {
        return Ok(Vec::new());
    };
    Ok(s.lines
        .iter()
        .map(|l| LineView {
            line_no: i64::from(l.line_no),
            sku: l.sku.to_string(),
            qty: l.qty.base_units(),
            unit_price_minor: l.unit_price.minor,
            total_minor: l.total.minor,
            tax_minor: l.tax.minor,
            location: None,
            discount_minor: l.discounts.iter().map(|d| d.amount.minor).sum(),
            promotion_id: l.discounts.first().and_then(|d| d.promotion_id.clone()),
        })
        .collect())
}

row! {
    struct SummaryRow {
        id: String,
        kind: String,
        status: OrderStatus,
        customer_id: Option<String>,
        location: Option<String>,
        total_minor: i64,
        currency: String,
        created_ms: i64,
    }
}

/// Orders, newest first, filtered; `before` is the id to continue after.
pub async fn list(
    db: &Db,
    customer: Option<&str>,
    status: Option<OrderStatus>,
    kind: Option<&str>,
    before: Option<&str>,
    limit: i64,
) -> Result<Vec<OrderSummary>, sqlx::Error> {
    let rows: Vec<SummaryRow> = sqlx::query_as(
        "SELECT id, kind, status, customer_id, location, total_minor, currency, created_ms FROM orders \
         WHERE ($1 = '' OR customer_id = $1) AND ($2 = '' OR status = $2) AND ($3 = '' OR kind = $3) \
         AND ($4 = '' OR id < $4) ORDER BY id DESC LIMIT $5",
    )
    .bind(customer.unwrap_or(""))
    .bind(status.map_or("", OrderStatus::as_str))
    .bind(kind.unwrap_or(""))
    .bind(before.unwrap_or(""))
    .bind(limit)
    .fetch_all(&db.pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| OrderSummary {
            id: r.id,
            kind: r.kind,
            status: r.status,
            customer_id: r.customer_id,
            location: r.location,
            total_minor: r.total_minor,
            currency: r.currency,
            created_ms: r.created_ms,
        })
        .collect())
}

row! {
    struct RuleRow {
        criterion: String,
        params: String,
    }
}

/// The allocation rules, in order (an unreadable one is skipped, logged).
pub async fn rules(db: &Db) -> Result<Vec<Rule>, sqlx::Error> {
    let rows: Vec<RuleRow> =
        sqlx::query_as("SELECT criterion, params FROM allocation_rules ORDER BY position")
            .fetch_all(&db.pool)
            .await?;
    let mut rules = Vec::new();
    for r in rows {
        let mut v: serde_json::Value =
            serde_json::from_str(&r.params).unwrap_or_else(|_| serde_json::json!({}));
        if let Some(o) = v.as_object_mut() {
            o.insert("criterion".into(), serde_json::Value::String(r.criterion.clone()));
        }
        match serde_json::from_value(v) {
            Ok(rule) => rules.push(rule),
            Err(e) => {
                tracing::warn!(criterion = r.criterion, error = %e, "allocation rule unreadable; skipped")
            }
        }
    }
    Ok(rules)
}

/// Replaces the allocation rules.
pub async fn save_rules(db: &Db, actor: &str, rules: &[Rule]) -> Result<(), sqlx::Error> {
    let mut tx = db.begin().await?;
    sqlx::query("DELETE FROM allocation_rules")
        .execute(&mut *tx)
        .await?;
    for (i, rule) in rules.iter().enumerate() {
        let mut v = serde_json::to_value(rule).unwrap_or_default();
        let criterion = v
            .as_object_mut()
            .and_then(|o| o.remove("criterion"))
            .and_then(|c| c.as_str().map(str::to_owned))
            .unwrap_or_default();
        sqlx::query("INSERT INTO allocation_rules (position, criterion, params) VALUES ($1, $2, $3)")
            .bind(i as i64 + 1)
            .bind(criterion)
            .bind(v.to_string())
            .execute(&mut *tx)
            .await?;
    }
    crate::audit::record(
        &mut tx,
        actor,
        "allocation_rules_saved",
        "allocation_rules",
        "all",
        serde_json::to_value(rules).unwrap_or_default(),
    )
    .await?;
    tx.commit().await
}
