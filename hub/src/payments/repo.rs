//! The payments' SQL: payments, gift cards and payment exceptions, with
//! typed rows. Status moves are conditional updates on the domain's
//! transition table.

use sqlx::{AnyConnection, AssertSqlSafe};
use storegate_protocol::Money;

use super::{ExceptionView, GiftCardView, NewGiftCard, NewPayment, PaymentView};
use crate::db::{Db, now_ms};
use crate::domain::machine::Machine;
use crate::domain::payment::{ExceptionStatus, PaymentMethod, PaymentStatus};
use crate::sql::{self, row};

row! {
    /// A payment row with its card token (never shown).
    pub(super) struct PaymentRow {
        pub id: String,
        pub payment_key: String,
        pub order_id: Option<String>,
        pub store_id: Option<String>,
        pub sale_id: Option<Vec<u8>>,
        pub method: PaymentMethod,
        pub status: PaymentStatus,
        pub amount_minor: i64,
        pub captured_minor: i64,
        pub refunded_minor: i64,
        pub currency: String,
        pub card_last4: Option<String>,
        pub provider_ref: Option<String>,
        pub offline: i64,
        pub parent_id: Option<String>,
        pub detail: String,
        pub created_ms: i64,
        pub updated_ms: i64,
        pub lease_until_ms: i64,
        pub card_token: Option<String>,
    }
}

impl PaymentRow {
    /// The token, or empty.
    pub fn token(&self) -> &str {
        self.card_token.as_deref().unwrap_or("")
    }

    /// What callers see.
    pub fn view(self) -> PaymentView {
        PaymentView {
            id: self.id,
            payment_key: self.payment_key,
            order_id: self.order_id,
            store_id: self.store_id,
            method: self.method,
            status: self.status,
            amount_minor: self.amount_minor,
            captured_minor: self.captured_minor,
            refunded_minor: self.refunded_minor,
            currency: self.currency,
            card_last4: self.card_last4,
            provider_ref: self.provider_ref,
            offline: self.offline != 0,
            parent_id: self.parent_id,
            detail: self.detail,
            created_ms: self.created_ms,
            updated_ms: self.updated_ms,
        }
    }
}

const SELECT: &str = "SELECT id, payment_key, order_id, store_id, sale_id, method, status, amount_minor, captured_minor, \
     refunded_minor, currency, card_last4, provider_ref, offline, parent_id, detail, created_ms, updated_ms, \
     lease_until_ms, card_token FROM payments";

/// One payment by id; `lock` (the database) locks it for the transaction.
pub(super) async fn by_id(
    conn: &mut AnyConnection,
    lock: Option<&Db>,
    id: &str,
) -> Result<Option<PaymentRow>, sqlx::Error> {
    sqlx::query_as(AssertSqlSafe(format!(
        "{SELECT} WHERE id = $1{}",
        lock.map_or("", Db::for_update)
    )))
    .bind(id)
    .fetch_optional(conn)
    .await
}

/// One payment by its idempotency key.
pub(super) async fn by_key(conn: &mut AnyConnection, key: &str) -> Result<Option<PaymentRow>, sqlx::Error> {
    sqlx::query_as(AssertSqlSafe(format!("{SELECT} WHERE payment_key = $1")))
        .bind(key)
        .fetch_optional(conn)
        .await
}

/// One payment by id.
pub async fn get(db: &Db, id: &str) -> Result<Option<PaymentView>, sqlx::Error> {
    let mut conn = db.pool.acquire().await?;
    Ok(by_id(&mut conn, None, id).await?.map(PaymentRow::view))
}

/// Payments, filtered, by id after `after`.
pub async fn list(
    db: &Db,
    order_id: Option<&str>,
    status: Option<PaymentStatus>,
    after: &str,
    limit: i64,
) -> Result<Vec<PaymentView>, sqlx::Error> {
    let rows: Vec<PaymentRow> = sqlx::query_as(AssertSqlSafe(format!(
        "{SELECT} WHERE ($1 = '' OR order_id = $1) AND ($2 = '' OR status = $2) AND id > $3 ORDER BY id LIMIT $4"
    )))
    .bind(order_id.unwrap_or(""))
    .bind(status.map_or("", PaymentStatus::as_str))
    .bind(after)
    .bind(limit)
    .fetch_all(&db.pool)
    .await?;
    Ok(rows.into_iter().map(PaymentRow::view).collect())
}

/// Whether a payment with this key exists.
/// The payments of orders `ids`, by id.
pub async fn for_orders(db: &Db, ids: &[&str]) -> Result<Vec<PaymentView>, sqlx::Error> {
    let mut q = sqlx::query_as::<_, PaymentRow>(AssertSqlSafe(format!(
        "{SELECT} WHERE order_id IN {} ORDER BY id",
        sql::list(1, ids.len())
    )));
    for id in ids {
        q = q.bind(*id);
    }
    Ok(q.fetch_all(&db.pool)
        .await?
        .into_iter()
        .map(PaymentRow::view)
        .collect())
}

pub async fn key_exists(conn: &mut AnyConnection, key: &str) -> Result<bool, sqlx::Error> {
    Ok(
        sqlx::query_scalar::<_, String>("SELECT id FROM payments WHERE payment_key = $1")
            .bind(key)
            .fetch_optional(conn)
            .await?
            .is_some(),
    )
}

/// Column count of [`upsert_rows`].
const PAYMENT_COLS: usize = 18;

/// Inserts payment rows. On a key that exists, attaches the order, sale and
/// store and turns an `authorized` payment into `pending_capture` (a sale
/// arriving for a lane authorisation); other statuses stay.
pub async fn upsert_rows(conn: &mut AnyConnection, rows: &[NewPayment]) -> Result<(), sqlx::Error> {
    let now = now_ms();
    let mut seen = std::collections::HashSet::new();
    let rows: Vec<&NewPayment> = rows.iter().filter(|r| seen.insert(r.key.clone())).collect();
    for chunk in rows.chunks(sql::CHUNK) {
        let text = sql::values(
            "INSERT INTO payments (id, payment_key, order_id, store_id, sale_id, method, status, amount_minor, \
             captured_minor, currency, card_token, card_last4, provider_ref, offline, parent_id, detail, created_ms, updated_ms)",
            chunk.len(),
            PAYMENT_COLS,
            &format!(
                "ON CONFLICT (payment_key) DO UPDATE SET order_id = COALESCE(payments.order_id, excluded.order_id), \
                 store_id = COALESCE(payments.store_id, excluded.store_id), sale_id = COALESCE(payments.sale_id, excluded.sale_id), \
                 status = CASE WHEN payments.status = '{a}' AND excluded.status = '{p}' \
                 THEN '{p}' ELSE payments.status END, updated_ms = excluded.created_ms \
                 WHERE COALESCE(payments.store_id, excluded.store_id, '') = COALESCE(excluded.store_id, payments.store_id, '')",
                a = PaymentStatus::Authorized.as_str(),
                p = PaymentStatus::PendingCapture.as_str(),
            ),
        );
        let mut q = sqlx::query(AssertSqlSafe(text));
        for r in chunk {
            q = q
                .bind(r.id.as_str())
                .bind(r.key.as_str())
                .bind(r.order_id.clone())
                .bind(r.store_id.clone())
                .bind(r.sale_id.clone())
                .bind(r.method)
                .bind(r.status)
                .bind(r.amount.minor)
                .bind(r.captured)
                .bind(r.amount.currency.as_str())
                .bind(r.card_token.clone())
                .bind(r.card_last4.clone())
                .bind(r.provider_ref.clone())
                .bind(i64::from(r.offline))
                .bind(r.parent_id.clone())
                .bind(sql::text(&r.detail))
                .bind(now)
                .bind(now);
        }
        q.execute(&mut *conn).await?;
    }
    Ok(())
}

/// Moves a payment (by id, which is its key for every payment that has
/// one) to `to` if its status may become `to`; returns whether it moved.
/// Work states (`void_pending`...) are picked up by the worker at once.
pub async fn transition(conn: &mut AnyConnection, id: &str, to: PaymentStatus) -> Result<bool, sqlx::Error> {
    moved(conn, id, None, to).await
}

/// Like [`transition`], for a payment of `store` only: what a store asks
/// moves its own payments, never another store's.
pub async fn transition_at_store(
    conn: &mut AnyConnection,
    id: &str,
    store: &str,
    to: PaymentStatus,
) -> Result<bool, sqlx::Error> {
    moved(conn, id, Some(store), to).await
}

/// Moves payment `id` (of `store`, if given) to `to` from any status that
/// may become `to`; returns whether it moved.
async fn moved(
    conn: &mut AnyConnection,
    id: &str,
    store: Option<&str>,
    to: PaymentStatus,
) -> Result<bool, sqlx::Error> {
    let from = PaymentStatus::sources(to);
    let mut q = sqlx::query(AssertSqlSafe(format!(
        "UPDATE payments SET status = $1, updated_ms = $2, lease_until_ms = 0 \
         WHERE id = $3 AND ($4 IS NULL OR store_id = $4) AND status IN {}",
        sql::list(5, from.len())
    )))
    .bind(to)
    .bind(now_ms())
    .bind(id)
    .bind(store);
    for f in from {
        q = q.bind(f);
    }
    Ok(q.execute(conn).await?.rows_affected() == 1)
}

/// The tenders of a store's sale that refunds may go back to (not
/// refunds, declined or voided ones), locked with `for_update` (see
/// [`crate::db::Db::for_update`]) so a refund from the API cannot race one
/// from the store past what is left.
pub async fn sale_tenders(
    conn: &mut AnyConnection,
    store: &str,
    sale_id: &[u8],
    for_update: &'static str,
) -> Result<Vec<crate::domain::ingest::Paid>, sqlx::Error> {
    let rows: Vec<(String, PaymentMethod, Option<String>, String, i64, i64)> =
        sqlx::query_as(AssertSqlSafe(format!(
            "SELECT id, method, card_token, currency, amount_minor, refunded_minor FROM payments \
         WHERE store_id = $1 AND sale_id = $2 AND parent_id IS NULL AND status IN ($3, $4, $5){for_update}"
        )))
        .bind(store)
        .bind(sale_id.to_vec())
        .bind(PaymentStatus::Authorized)
        .bind(PaymentStatus::PendingCapture)
        .bind(PaymentStatus::Captured)
        .fetch_all(conn)
        .await?;
    Ok(rows
        .into_iter()
        .map(
            |(id, method, token, currency, amount, refunded)| crate::domain::ingest::Paid {
                id,
                method,
                token,
                currency,
                amount,
                refunded,
            },
        )
        .collect())
}

/// The payments the hub took for lanes under `keys` (see
/// [`crate::domain::ingest::Issued`]).
pub async fn issued(
    conn: &mut AnyConnection,
    keys: &[String],
) -> Result<Vec<(String, crate::domain::ingest::Issued)>, sqlx::Error> {
    let mut out = Vec::new();
    for chunk in keys.chunks(sql::CHUNK) {
        let mut q = sqlx::query_as::<
            _,
            (
                String,
                Option<String>,
                PaymentMethod,
                PaymentStatus,
                Option<String>,
                i64,
                String,
                Option<Vec<u8>>,
            ),
        >(AssertSqlSafe(format!(
            "SELECT payment_key, store_id, method, status, provider_ref, amount_minor, currency, sale_id \
                 FROM payments WHERE payment_key IN {}",
            sql::list(1, chunk.len())
        )));
        for k in chunk {
            q = q.bind(k.as_str());
        }
        for (key, store, method, status, provider_ref, amount, currency, sale) in
            q.fetch_all(&mut *conn).await?
        {
            out.push((
                key,
                crate::domain::ingest::Issued {
                    store,
                    method,
                    status,
                    provider_ref,
                    amount,
                    currency,
                    attached: sale.is_some(),
                },
            ));
        }
    }
    Ok(out)
}

/// Records the worker's result for a payment it settled: `to` (if the
/// payment is still in `from` and may go there) with the provider's
/// reference (a capture keeps the authorisation's when there is one) and
/// `detail` (when given); a capture takes the whole amount.
pub(super) async fn settled(
    conn: &mut AnyConnection,
    id: &str,
    from: PaymentStatus,
    to: PaymentStatus,
    reference: Option<&str>,
    detail: Option<&str>,
) -> Result<bool, sqlx::Error> {
    if !from.can_become(to) {
        return Ok(false);
    }
    let captured = to == PaymentStatus::Captured;
    let reference_sql = if captured {
        "COALESCE(provider_ref, $2)"
    } else {
        "COALESCE($2, provider_ref)"
    };
    Ok(sqlx::query(AssertSqlSafe(format!(
        "UPDATE payments SET status = $1, provider_ref = {reference_sql}, detail = COALESCE($3, detail), \
         captured_minor = CASE WHEN $4 = 1 THEN amount_minor ELSE captured_minor END, updated_ms = $5 \
         WHERE id = $6 AND status = $7"
    )))
    .bind(to)
    .bind(reference)
    .bind(detail.map(sql::text))
    .bind(i64::from(captured))
    .bind(now_ms())
    .bind(id)
    .bind(from)
    .execute(conn)
    .await?
    .rows_affected()
        == 1)
}

/// A row that says a key is void (before anything was authorised under
/// it), so that a late authorisation is voided rather than kept.
pub async fn tombstone(
    conn: &mut AnyConnection,
    key: &str,
    store: &str,
    detail: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO payments (id, payment_key, store_id, method, status, amount_minor, currency, detail, created_ms, updated_ms) \
         VALUES ($1, $1, $2, $3, $4, 0, 'XXX', $5, $6, $6) ON CONFLICT DO NOTHING",
    )
    .bind(key)
    .bind(store)
    .bind(PaymentMethod::Card)
    .bind(PaymentStatus::Voided)
    .bind(detail)
    .bind(now_ms())
    .execute(conn)
    .await?;
    Ok(())
}

/// Records an online order's declined card payment (for its total).
pub async fn record_declined_order(
    conn: &mut AnyConnection,
    key: &str,
    order_id: &str,
    why: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO payments (id, payment_key, order_id, method, status, amount_minor, currency, detail, created_ms, updated_ms) \
         SELECT $1, $1, id, $2, $3, total_minor, currency, $4, $5, $5 FROM orders WHERE id = $6 \
         ON CONFLICT (payment_key) DO NOTHING",
    )
    .bind(key)
    .bind(PaymentMethod::Card)
    .bind(PaymentStatus::Declined)
    .bind(sql::text(why))
    .bind(now_ms())
    .bind(order_id)
    .execute(conn)
    .await?;
    Ok(())
}

/// Adds `amount` to what was refunded of a payment.
pub async fn add_refunded(conn: &mut AnyConnection, id: &str, amount: i64) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE payments SET refunded_minor = refunded_minor + $2, updated_ms = $3 WHERE id = $1")
        .bind(id)
        .bind(amount)
        .bind(now_ms())
        .execute(conn)
        .await?;
    Ok(())
}

/// Payments the worker should settle (work states whose lease ran out),
/// oldest lease first.
pub(super) async fn work(db: &Db, now: i64, limit: i64) -> Result<Vec<PaymentRow>, sqlx::Error> {
    let mut q = sqlx::query_as(AssertSqlSafe(format!(
        "{SELECT} WHERE status IN {} AND lease_until_ms < $1 ORDER BY lease_until_ms, id LIMIT $2",
        sql::list(3, PaymentStatus::WORK.len())
    )))
    .bind(now)
    .bind(limit);
    for s in PaymentStatus::WORK {
        q = q.bind(s);
    }
    q.fetch_all(&db.pool).await
}

/// Leases a payment the worker read (still in its status, with the lease
/// it read) until `until`: only one worker (or replica) gets it.
pub(super) async fn claim(db: &Db, p: &PaymentRow, until: i64) -> Result<bool, sqlx::Error> {
    Ok(sqlx::query(
        "UPDATE payments SET lease_until_ms = $2 WHERE id = $1 AND lease_until_ms = $3 AND status = $4",
    )
    .bind(p.id.as_str())
    .bind(until)
    .bind(p.lease_until_ms)
    .bind(p.status)
    .execute(&db.pool)
    .await?
    .rows_affected()
        == 1)
}

/// Shortens a payment's lease to `until` (a retry after a failure).
pub(super) async fn retry_at(db: &Db, id: &str, until: i64) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE payments SET lease_until_ms = $2 WHERE id = $1")
        .bind(id)
        .bind(until)
        .execute(&db.pool)
        .await?;
    Ok(())
}

/// What `gift_cards.token` holds for a card: the SHA-256 of its token, so
/// the database holds no usable card token (a lane's request is hashed
/// to find its card). Rows written before this are rehashed at start
/// ([`hash_stored_gift_card_tokens`]).
fn gift_key(token: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(token.as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// Replaces gift-card tokens stored in clear (by an earlier version) with
/// their hashes; returns how many. Idempotent.
pub async fn hash_stored_gift_card_tokens(db: &Db) -> Result<u64, sqlx::Error> {
    let clear: Vec<String> =
        sqlx::query_scalar("SELECT token FROM gift_cards WHERE token NOT LIKE 'sha256:%'")
            .fetch_all(&db.pool)
            .await?;
    let mut tx = db.begin().await?;
    for t in &clear {
        sqlx::query("UPDATE gift_cards SET token = $2 WHERE token = $1")
            .bind(t.as_str())
            .bind(gift_key(t))
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(clear.len() as u64)
}

/// Takes `amount` off a gift card; `Err(reason)` if it cannot.
pub async fn gift_card_debit(
    conn: &mut AnyConnection,
    token: &str,
    amount: Money,
) -> Result<Result<(), String>, sqlx::Error> {
    let n = sqlx::query(
        "UPDATE gift_cards SET balance_minor = balance_minor - $2 WHERE token = $1 AND currency = $3 AND balance_minor >= $2",
    )
    .bind(gift_key(token))
    .bind(amount.minor)
    .bind(amount.currency.as_str())
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if n == 1 {
        return Ok(Ok(()));
    }
    let known: Option<i64> = sqlx::query_scalar("SELECT balance_minor FROM gift_cards WHERE token = $1")
        .bind(gift_key(token))
        .fetch_optional(conn)
        .await?;
    Ok(Err(match known {
        Some(b) => format!("insufficient gift card balance ({b} left)"),
        None => "unknown gift card".into(),
    }))
}

/// Puts `amount` back on a gift card.
pub async fn gift_card_credit(conn: &mut AnyConnection, token: &str, amount: i64) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE gift_cards SET balance_minor = balance_minor + $2 WHERE token = $1")
        .bind(gift_key(token))
        .bind(amount)
        .execute(conn)
        .await?;
    Ok(())
}

/// Issues a gift card, or tops one up in its currency; returns whether it
/// was done (`false`: the card exists in another currency).
pub(super) async fn upsert_gift_card(conn: &mut AnyConnection, g: &NewGiftCard) -> Result<bool, sqlx::Error> {
    let n = sqlx::query(
        "INSERT INTO gift_cards (token, last4, balance_minor, currency) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (token) DO UPDATE SET balance_minor = gift_cards.balance_minor + excluded.balance_minor \
         WHERE gift_cards.currency = excluded.currency",
    )
    .bind(gift_key(&g.token))
    .bind(g.last4.as_str())
    .bind(g.balance_minor)
    .bind(g.currency.as_str())
    .execute(conn)
    .await?
    .rows_affected();
    Ok(n == 1)
}

/// A gift card by token.
pub async fn gift_card(db: &Db, token: &str) -> Result<Option<GiftCardView>, sqlx::Error> {
    sqlx::query_as("SELECT last4, balance_minor, currency FROM gift_cards WHERE token = $1")
        .bind(gift_key(token))
        .fetch_optional(&db.pool)
        .await
}

/// Opens an exception for a store-and-forward payment declined after the
/// goods left (once per payment).
pub(super) async fn open_exception(
    conn: &mut AnyConnection,
    p: &PaymentRow,
    reason: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO payment_exceptions (payment_id, store_id, amount_minor, currency, reason, status, created_ms) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
    )
    .bind(p.id.as_str())
    .bind(p.store_id.clone())
    .bind(p.amount_minor)
    .bind(p.currency.as_str())
    .bind(sql::text(reason))
    .bind(ExceptionStatus::Open)
    .bind(now_ms())
    .execute(conn)
    .await?;
    Ok(())
}

/// Exceptions, open ones only unless `all`, by id after `after`.
pub async fn exceptions(
    db: &Db,
    all: bool,
    after: i64,
    limit: i64,
) -> Result<Vec<ExceptionView>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, payment_id, store_id, amount_minor, currency, reason, status, created_ms, resolved_ms \
         FROM payment_exceptions WHERE ($1 = 1 OR status = $2) AND id > $3 ORDER BY id LIMIT $4",
    )
    .bind(i64::from(all))
    .bind(ExceptionStatus::Open)
    .bind(after)
    .bind(limit)
    .fetch_all(&db.pool)
    .await
}

/// Moves an exception to `to` if its status may become `to`.
pub(super) async fn close_exception(
    conn: &mut AnyConnection,
    id: i64,
    to: ExceptionStatus,
) -> Result<bool, sqlx::Error> {
    let from = ExceptionStatus::sources(to);
    let mut q = sqlx::query(AssertSqlSafe(format!(
        "UPDATE payment_exceptions SET status = $1, resolved_ms = $2 WHERE id = $3 AND status IN {}",
        sql::list(4, from.len())
    )))
    .bind(to)
    .bind(now_ms())
    .bind(id);
    for f in from {
        q = q.bind(f);
    }
    Ok(q.execute(conn).await?.rows_affected() == 1)
}
