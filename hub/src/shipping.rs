//! Shipping: carriers, zones (region -> zone), rate tables (carrier, zone,
//! weight bracket -> price), shipments with tracking numbers and status
//! events.

use serde::{Deserialize, Serialize};
use sqlx::{Any, AnyConnection, AssertSqlSafe, Transaction};
use utoipa::ToSchema;

use crate::audit;
use crate::db::{Db, now_ms};
use crate::domain::machine::{Machine, Refused};
use crate::domain::shipment::ShipmentStatus;
use crate::domain::{Invalid, valid_id};
use crate::sql::{self, row};

row! {
    /// A carrier.
    #[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
    pub struct CarrierView {
        /// Key (`dhl`, `ups`...).
        #[serde(default)]
        pub id: String,
        /// Display name.
        pub name: String,
    }
}

row! {
    /// A rate: up to `max_grams` in `zone` with `carrier` costs `price_minor`.
    #[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
    pub struct RateView {
        /// Carrier id.
        pub carrier: String,
        /// Zone.
        pub zone: String,
        /// Upper weight bound of this bracket, grams.
        pub max_grams: i64,
        /// Price, minor units.
        pub price_minor: i64,
        /// ISO currency.
        pub currency: String,
    }
}

row! {
    /// A quote for one carrier.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
    pub struct Quote {
        /// Carrier id.
        pub carrier: String,
        /// Zone used.
        pub zone: String,
        /// Price, minor units.
        pub price_minor: i64,
        /// ISO currency.
        pub currency: String,
    }
}

/// Why a shipping change was refused.
#[derive(Debug, thiserror::Error)]
pub enum ShippingError {
    /// Bad input.
    #[error("{0}")]
    Invalid(String),
    /// The database failed.
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
}

impl From<Invalid> for ShippingError {
    fn from(e: Invalid) -> Self {
        ShippingError::Invalid(e.0)
    }
}

/// Creates or renames carrier `id`; returns it.
pub async fn save_carrier(db: &Db, actor: &str, id: &str, name: &str) -> Result<CarrierView, ShippingError> {
    valid_id("carrier id", id)?;
    if name.trim().is_empty() {
        return Err(ShippingError::Invalid("name must not be empty".into()));
    }
    let c = CarrierView {
        id: id.to_owned(),
        name: name.to_owned(),
    };
    let mut tx = db.begin().await?;
    sqlx::query(
        "INSERT INTO carriers (id, name, created_ms) VALUES ($1, $2, $3) ON CONFLICT (id) DO UPDATE SET name = excluded.name",
    )
    .bind(c.id.as_str())
    .bind(crate::sql::text(&c.name))
    .bind(now_ms())
    .execute(&mut *tx)
    .await?;
    audit::record(
        &mut tx,
        actor,
        "carrier_saved",
        "carrier",
        &c.id,
        serde_json::json!({"name": c.name}),
    )
    .await?;
    tx.commit().await?;
    Ok(c)
}

/// Every carrier.
pub async fn carriers(db: &Db) -> Result<Vec<CarrierView>, sqlx::Error> {
    sqlx::query_as("SELECT id, name FROM carriers ORDER BY id")
        .fetch_all(&db.pool)
        .await
}

/// Maps a region to a zone.
pub async fn save_zone(db: &Db, actor: &str, region: &str, zone: &str) -> Result<(), ShippingError> {
    valid_id("region", region)?;
    valid_id("zone", zone)?;
    let mut tx = db.begin().await?;
    sqlx::query(
        "INSERT INTO shipping_zones (region, zone) VALUES ($1, $2) ON CONFLICT (region) DO UPDATE SET zone = excluded.zone",
    )
    .bind(region)
    .bind(zone)
    .execute(&mut *tx)
    .await?;
    audit::record(
        &mut tx,
        actor,
        "shipping_zone_saved",
        "region",
        region,
        serde_json::json!({"zone": zone}),
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Saves a rate (replacing the same carrier, zone and bracket) of a
/// carrier that exists.
pub async fn save_rate(db: &Db, actor: &str, r: &RateView) -> Result<(), ShippingError> {
    valid_id("zone", &r.zone)?;
    if r.max_grams <= 0 || r.price_minor < 0 {
        return Err(ShippingError::Invalid(
            "max_grams must be positive and price_minor not negative".into(),
        ));
    }
    storegate_protocol::Currency::parse(&r.currency)
        .map_err(|e| ShippingError::Invalid(format!("currency: {e}")))?;
    let mut tx = db.begin().await?;
    let known: Option<String> = sqlx::query_scalar("SELECT id FROM carriers WHERE id = $1")
        .bind(r.carrier.as_str())
        .fetch_optional(&mut *tx)
        .await?;
    if known.is_none() {
        return Err(ShippingError::Invalid(format!(
            "carrier {} does not exist",
            r.carrier
        )));
    }
    sqlx::query(
        "INSERT INTO shipping_rates (carrier, zone, max_grams, price_minor, currency) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (carrier, zone, max_grams) DO UPDATE SET price_minor = excluded.price_minor, currency = excluded.currency",
    )
    .bind(r.carrier.as_str())
    .bind(r.zone.as_str())
    .bind(r.max_grams)
    .bind(r.price_minor)
    .bind(r.currency.as_str())
    .execute(&mut *tx)
    .await?;
    audit::record(
        &mut tx,
        actor,
        "shipping_rate_saved",
        "carrier",
        &r.carrier,
        serde_json::to_value(r).unwrap_or_default(),
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Every rate.
pub async fn rates(db: &Db) -> Result<Vec<RateView>, sqlx::Error> {
    sqlx::query_as(
        "SELECT carrier, zone, max_grams, price_minor, currency FROM shipping_rates ORDER BY carrier, zone, max_grams",
    )
    .fetch_all(&db.pool)
    .await
}

/// Quotes per carrier for `grams` to `region`, cheapest first: each
/// carrier's smallest bracket that holds the weight. A region without a
/// zone uses zone `default`.
pub async fn quote(
    tx: &mut Transaction<'static, Any>,
    region: &str,
    grams: i64,
) -> Result<Vec<Quote>, sqlx::Error> {
    let rows: Vec<Quote> = sqlx::query_as(
        "SELECT r.carrier AS carrier, r.zone AS zone, r.price_minor AS price_minor, r.currency AS currency \
         FROM shipping_rates r \
         WHERE r.zone = COALESCE((SELECT zone FROM shipping_zones WHERE region = $1), 'default') \
         AND r.max_grams >= $2 ORDER BY r.carrier, r.max_grams",
    )
    .bind(region)
    .bind(grams)
    .fetch_all(&mut **tx)
    .await?;
    // Each carrier's smallest bracket comes first.
    let mut out: Vec<Quote> = Vec::new();
    for q in rows {
        if !out.iter().any(|o| o.carrier == q.carrier) {
            out.push(q);
        }
    }
    out.sort_by(|a, b| {
        a.price_minor
            .cmp(&b.price_minor)
            .then_with(|| a.carrier.cmp(&b.carrier))
    });
    Ok(out)
}

/// A shipment.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ShipmentView {
    /// Id.
    pub id: String,
    /// Order shipped.
    pub order_id: String,
    /// Carrier.
    pub carrier: String,
    /// Tracking number.
    pub tracking: String,
    /// Location it leaves from.
    pub from_location: String,
    /// Where it is.
    pub status: ShipmentStatus,
    /// Price charged, minor units.
    pub price_minor: i64,
    /// ISO currency.
    pub currency: String,
    /// Status events, oldest first.
    pub events: Vec<ShipmentEvent>,
    /// Created, ms.
    pub created_ms: i64,
}

row! {
    /// One status event.
    #[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
    pub struct ShipmentEvent {
        /// New status.
        pub status: ShipmentStatus,
        /// Where (depot, city).
        #[serde(default)]
        pub place: String,
        /// When, ms.
        #[serde(default)]
        pub at_ms: i64,
    }
}

/// Tracking number: carrier prefix and 12 digits from the shipment id.
fn tracking_number(carrier: &str, id: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in id.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    let prefix: String = carrier
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(3)
        .collect::<String>()
        .to_ascii_uppercase();
    format!("{prefix}{:012}", h % 1_000_000_000_000)
}

/// Creates shipments (status `label_created`), each (order, location it
/// leaves from, quote); returns their ids. Two statements for all.
pub async fn create(
    conn: &mut AnyConnection,
    new: &[(&str, &str, &Quote)],
) -> Result<Vec<String>, sqlx::Error> {
    let ids: Vec<String> = new.iter().map(|_| crate::auth::new_id()).collect();
    let now = now_ms();
    let status = ShipmentStatus::LabelCreated;
    let rows: Vec<(&String, &(&str, &str, &Quote))> = ids.iter().zip(new).collect();
    for chunk in rows.chunks(sql::CHUNK) {
        let text = sql::values(
            "INSERT INTO shipments (id, order_id, carrier, tracking, from_location, status, price_minor, currency, \
             created_ms, updated_ms)",
            chunk.len(),
            10,
            "",
        );
        let mut q = sqlx::query(AssertSqlSafe(text));
        for (id, (order_id, from, quote)) in chunk {
            q = q
                .bind(id.as_str())
                .bind(*order_id)
                .bind(quote.carrier.as_str())
                .bind(tracking_number(&quote.carrier, id))
                .bind(*from)
                .bind(status)
                .bind(quote.price_minor)
                .bind(quote.currency.as_str())
                .bind(now)
                .bind(now);
        }
        q.execute(&mut *conn).await?;
        let text = sql::values(
            "INSERT INTO shipment_events (shipment_id, status, place, at_ms)",
            chunk.len(),
            4,
            "",
        );
        let mut q = sqlx::query(AssertSqlSafe(text));
        for (id, (_, from, _)) in chunk {
            q = q.bind(id.as_str()).bind(status).bind(*from).bind(now);
        }
        q.execute(&mut *conn).await?;
    }
    Ok(ids)
}

row! {
    struct ShipmentRow {
        id: String,
        order_id: String,
        carrier: String,
        tracking: String,
        from_location: String,
        status: ShipmentStatus,
        price_minor: i64,
        currency: String,
        created_ms: i64,
    }
}

row! {
    struct EventRow {
        shipment_id: String,
        status: ShipmentStatus,
        place: String,
        at_ms: i64,
    }
}

/// Shipments of an order (or one by id).
pub async fn list(
    db: &Db,
    order_id: Option<&str>,
    id: Option<&str>,
) -> Result<Vec<ShipmentView>, sqlx::Error> {
    let rows: Vec<ShipmentRow> = sqlx::query_as(AssertSqlSafe(format!(
        "{SELECT} WHERE ($1 = '' OR order_id = $1) AND ($2 = '' OR id = $2) ORDER BY created_ms, id LIMIT 100"
    )))
    .bind(order_id.unwrap_or(""))
    .bind(id.unwrap_or(""))
    .fetch_all(&db.pool)
    .await?;
    with_events(db, rows).await
}

const SELECT: &str = "SELECT id, order_id, carrier, tracking, from_location, status, price_minor, currency, created_ms FROM shipments";

/// The shipments of orders `ids`.
pub async fn for_orders(db: &Db, ids: &[&str]) -> Result<Vec<ShipmentView>, sqlx::Error> {
    let mut q = sqlx::query_as::<_, ShipmentRow>(AssertSqlSafe(format!(
        "{SELECT} WHERE order_id IN {} ORDER BY created_ms, id",
        crate::sql::list(1, ids.len())
    )));
    for id in ids {
        q = q.bind(*id);
    }
    let rows = q.fetch_all(&db.pool).await?;
    with_events(db, rows).await
}

/// Shipment views with their events (one query for all).
async fn with_events(db: &Db, rows: Vec<ShipmentRow>) -> Result<Vec<ShipmentView>, sqlx::Error> {
    let mut events: std::collections::HashMap<String, Vec<ShipmentEvent>> = std::collections::HashMap::new();
    for chunk in rows.chunks(crate::sql::CHUNK) {
        let mut q = sqlx::query_as::<_, EventRow>(AssertSqlSafe(format!(
            "SELECT shipment_id, status, place, at_ms FROM shipment_events WHERE shipment_id IN {} ORDER BY id",
            crate::sql::list(1, chunk.len())
        )));
        for r in chunk {
            q = q.bind(r.id.as_str());
        }
        for e in q.fetch_all(&db.pool).await? {
            events.entry(e.shipment_id).or_default().push(ShipmentEvent {
                status: e.status,
                place: e.place,
                at_ms: e.at_ms,
            });
        }
    }
    Ok(rows
        .into_iter()
        .map(|r| ShipmentView {
            events: events.remove(&r.id).unwrap_or_default(),
            id: r.id,
            order_id: r.order_id,
            carrier: r.carrier,
            tracking: r.tracking,
            from_location: r.from_location,
            status: r.status,
            price_minor: r.price_minor,
            currency: r.currency,
            created_ms: r.created_ms,
        })
        .collect())
}

async fn events(conn: &mut AnyConnection, shipment_id: &str) -> Result<Vec<ShipmentEvent>, sqlx::Error> {
    sqlx::query_as("SELECT status, place, at_ms FROM shipment_events WHERE shipment_id = $1 ORDER BY id")
        .bind(shipment_id)
        .fetch_all(conn)
        .await
}

/// A shipment that moved.
#[derive(Debug, Clone)]
pub struct Moved {
    /// Its order.
    pub order_id: String,
    /// The location it leaves from.
    pub from: String,
    /// Its statuses before this event, oldest first.
    pub before: Vec<ShipmentStatus>,
}

row! {
    struct Locked {
        order_id: String,
        from_location: String,
        status: ShipmentStatus,
    }
}

/// Records a status event if the shipment's status allows it; `None` if
/// there is no such shipment.
pub async fn add_event(
    tx: &mut Transaction<'static, Any>,
    db: &Db,
    id: &str,
    e: &ShipmentEvent,
) -> Result<Option<Result<Moved, Refused>>, sqlx::Error> {
    let row: Option<Locked> = sqlx::query_as(AssertSqlSafe(format!(
        "SELECT order_id, from_location, status FROM shipments WHERE id = $1{}",
        db.for_update()
    )))
    .bind(id)
    .fetch_optional(&mut **tx)
    .await?;
    let Some(row) = row else { return Ok(None) };
    if let Err(refused) = row.status.check(e.status) {
        return Ok(Some(Err(refused)));
    }
    let before = events(tx, id).await?.into_iter().map(|e| e.status).collect();
    let now = now_ms();
    sqlx::query("UPDATE shipments SET status = $2, updated_ms = $3 WHERE id = $1")
        .bind(id)
        .bind(e.status)
        .bind(now)
        .execute(&mut **tx)
        .await?;
    sqlx::query("INSERT INTO shipment_events (shipment_id, status, place, at_ms) VALUES ($1, $2, $3, $4)")
        .bind(id)
        .bind(e.status)
        .bind(sql::text(&e.place))
        .bind(if e.at_ms > 0 { e.at_ms } else { now })
        .execute(&mut **tx)
        .await?;
    Ok(Some(Ok(Moved {
        order_id: row.order_id,
        from: row.from_location,
        before,
    })))
}

/// How far an order's shipments are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Neither delivered nor cancelled.
    pub open: i64,
    /// Not cancelled and never left.
    pub waiting: i64,
}

row! {
    struct ProgressRow {
        open: i64,
        waiting: i64,
    }
}

/// How far an order's shipments are.
pub async fn progress(conn: &mut AnyConnection, order_id: &str) -> Result<Progress, sqlx::Error> {
    let left: Vec<ShipmentStatus> = ShipmentStatus::ALL
        .iter()
        .copied()
        .filter(|s| s.has_left())
        .collect();
    let mut q = sqlx::query_as::<_, ProgressRow>(AssertSqlSafe(format!(
        "SELECT \
         COALESCE(SUM(CASE WHEN s.status NOT IN ($2, $3) THEN 1 ELSE 0 END), 0) AS open, \
         COALESCE(SUM(CASE WHEN s.status <> $3 AND NOT EXISTS (SELECT 1 FROM shipment_events e \
           WHERE e.shipment_id = s.id AND e.status IN {}) THEN 1 ELSE 0 END), 0) AS waiting \
         FROM shipments s WHERE s.order_id = $1",
        sql::list(4, left.len())
    )))
    .bind(order_id)
    .bind(ShipmentStatus::Delivered)
    .bind(ShipmentStatus::Cancelled);
    for s in left {
        q = q.bind(s);
    }
    let r = q.fetch_one(conn).await?;
    Ok(Progress {
        open: r.open,
        waiting: r.waiting,
    })
}

/// Whether every shipment of an order may still be cancelled (none has
/// left, none is in trouble).
pub async fn all_cancellable(conn: &mut AnyConnection, order_id: &str) -> Result<bool, sqlx::Error> {
    let ok = ShipmentStatus::sources(ShipmentStatus::Cancelled);
    let mut q = sqlx::query_scalar::<_, i64>(AssertSqlSafe(format!(
        "SELECT COUNT(*) FROM shipments WHERE order_id = $1 AND status NOT IN {}",
        sql::list(2, ok.len())
    )))
    .bind(order_id);
    for s in ok {
        q = q.bind(s);
    }
    Ok(q.fetch_one(conn).await? == 0)
}

/// Cancels an order's shipments that have not left.
pub async fn cancel_for_order(conn: &mut AnyConnection, order_id: &str) -> Result<(), sqlx::Error> {
    let from = ShipmentStatus::sources(ShipmentStatus::Cancelled);
    let mut q = sqlx::query(AssertSqlSafe(format!(
        "UPDATE shipments SET status = $1, updated_ms = $2 WHERE order_id = $3 AND status IN {}",
        sql::list(4, from.len())
    )))
    .bind(ShipmentStatus::Cancelled)
    .bind(now_ms())
    .bind(order_id);
    for s in from {
        q = q.bind(s);
    }
    q.execute(conn).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracking_numbers_are_stable_and_prefixed() {
        let t = tracking_number("dhl-express", "01ABC");
        assert_eq!(t, tracking_number("dhl-express", "01ABC"));
        assert!(t.starts_with("DHL") && t.len() == 15);
    }
}
