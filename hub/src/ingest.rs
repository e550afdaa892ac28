//! Ingestion: the hub half of the sync contract (DESIGN.md §4).
//!
//! A group of uplink batches (from one or many stores) is applied in ONE
//! transaction: for each store the high-water mark is read under a row lock
//! (PostgreSQL `FOR UPDATE`; SQLite's write lock), events at or below it are
//! duplicates, a batch that starts above `hwm + 1` is a gap, and new events
//! are stored with their effects (stock ledger and levels, discrepancies,
//! device registry) before the mark advances. Only after the commit does
//! the caller publish the application ack and ack the MQTT message.
//!
//! Several replicas may ingest the same store (shared subscriptions split
//! messages, not stores); the row lock serialises them, and the verdicts
//! stay right whichever replica commits first.
//!
//! Business validation never blocks a stream: an unknown SKU, a price that
//! disagrees with the catalog or totals that do not add up are stored and
//! flagged as discrepancies. If applying effects fails outright, the caller
//! retries with effects off ([`apply`]'s `effects` flag): the events are
//! stored and flagged, the mark advances, and the store keeps syncing.

use std::collections::{BTreeMap, HashMap, HashSet};

use sqlx::{Any, AnyConnection, AssertSqlSafe, Transaction};
use storegate_protocol::envelope::{UpBatch, encode_event};
use storegate_protocol::event::{Event, EventBody};
use storegate_protocol::{Seq, StoreId};

use crate::db::{Db, now_ms};
use crate::domain::ingest::{self as rules, Discrepancy, Effects, Facts, Movement};
pub use crate::domain::ingest::{Verdict, validate};
use crate::domain::order::OrderStatus;
use crate::payments::PaymentStatus;
use crate::sql::{self, row};
use crate::{catalog, orders, payments, stock, tasks};

/// A decoded batch and the store it came from (checked against the topic).
#[derive(Debug, Clone)]
pub struct Batch {
    /// The store (from the topic).
    pub store: StoreId,
    /// The batch.
    pub batch: UpBatch,
}

/// What a group changes in a store's sync row.
#[derive(Default)]
struct SyncUpdate {
    hwm: i64,
    backlog: i64,
    dropped: i64,
    events: i64,
    duplicates: i64,
    resends: i64,
    batch_seen: bool,
}

/// Applies `batches` in one transaction and returns a verdict per batch.
/// With `effects` false, events are stored and the mark advances but no
/// effect is applied (each such event is flagged instead).
pub async fn apply(db: &Db, batches: &[Batch], effects: bool) -> Result<Vec<Verdict>, sqlx::Error> {
    let now = now_ms();
    let mut tx = db.begin().await?;
    let mut marks: HashMap<StoreId, Seq> = HashMap::new();
    let mut sync: BTreeMap<String, SyncUpdate> = BTreeMap::new();
    let mut fresh: Vec<(&StoreId, &Event)> = Vec::new();
    let mut verdicts = Vec::with_capacity(batches.len());

    for b in batches {
        let hwm = match marks.get(&b.store) {
            Some(h) => *h,
            None => {
                crate::stores::ensure(&mut tx, &b.store, now).await?;
                let h: i64 = sqlx::query_scalar(AssertSqlSafe(format!(
                    "SELECT hwm FROM store_sync WHERE store_id = $1{}",
                    db.for_update()
                )))
                .bind(b.store.as_str())
                .fetch_one(&mut *tx)
                .await?;
                Seq(u64::try_from(h).unwrap_or(0))
            }
        };
        let judged = rules::judge(hwm, &b.batch);
        let s = sync.entry(b.store.to_string()).or_default();
        s.duplicates += judged.duplicates as i64;
        match judged.verdict {
            Verdict::Gap { .. } => s.resends += 1,
            Verdict::Duplicate { .. } => {}
            Verdict::Committed { hwm, applied } => {
                fresh.extend(judged.fresh.iter().map(|e| (&b.store, e)));
                s.hwm = hwm.0 as i64;
                s.backlog = b.batch.backlog as i64;
                s.dropped = b.batch.dropped_telemetry as i64;
                s.events += applied as i64;
                s.batch_seen = true;
                marks.insert(b.store.clone(), hwm);
                verdicts.push(judged.verdict);
                continue;
            }
        }
        marks.insert(b.store.clone(), hwm);
        verdicts.push(judged.verdict);
    }

    insert_events(&mut tx, &fresh, now).await?;
    let discrepancies = if effects {
        apply_effects(db, &mut tx, &fresh, now).await?
    } else {
        rules::unapplied(&fresh)
    };
    insert_discrepancies(&mut tx, &discrepancies, now).await?;

    for (store, s) in &sync {
        if s.batch_seen {
            sqlx::query(
                "UPDATE store_sync SET hwm = $2, last_batch_ms = $3, backlog = $4, dropped_telemetry = $5, \
                 events_ingested = events_ingested + $6, duplicates = duplicates + $7, \
                 resend_requests = resend_requests + $8 WHERE store_id = $1",
            )
            .bind(store.as_str())
            .bind(s.hwm)
            .bind(now)
            .bind(s.backlog)
            .bind(s.dropped)
            .bind(s.events)
            .bind(s.duplicates)
            .bind(s.resends)
            .execute(&mut *tx)
            .await?;
        } else {
            sqlx::query(
                "UPDATE store_sync SET duplicates = duplicates + $2, resend_requests = resend_requests + $3 \
                 WHERE store_id = $1",
            )
            .bind(store.as_str())
            .bind(s.duplicates)
            .bind(s.resends)
            .execute(&mut *tx)
            .await?;
        }
    }
    tx.commit().await?;
    metrics::counter!("hub_ingest_events_total").increment(fresh.len() as u64);
    metrics::counter!("hub_discrepancies_total").increment(discrepancies.len() as u64);
    Ok(verdicts)
}

async fn insert_events(
    tx: &mut Transaction<'static, Any>,
    fresh: &[(&StoreId, &Event)],
    now: i64,
) -> Result<(), sqlx::Error> {
    for chunk in fresh.chunks(sql::CHUNK) {
        let text = sql::values(
            "INSERT INTO events (store_id, seq, event_id, kind, recorded_ms, ingested_ms, body, ref_id)",
            chunk.len(),
            8,
            "ON CONFLICT DO NOTHING",
        );
        let mut q = sqlx::query(AssertSqlSafe(text));
        for (store, e) in chunk {
            q = q
                .bind(store.as_str())
                .bind(e.seq.0 as i64)
                .bind(e.id.to_bytes().to_vec())
                .bind(e.body.kind().as_str())
                .bind(e.recorded_at_ms)
                .bind(now)
                .bind(encode_event(e))
                .bind(match &e.body {
                    EventBody::Sale(s) => Some(s.sale_id.to_bytes().to_vec()),
                    _ => None,
                });
        }
        q.execute(&mut **tx).await?;
    }
    Ok(())
}

async fn insert_discrepancies(
    tx: &mut Transaction<'static, Any>,
    rows: &[Discrepancy],
    now: i64,
) -> Result<(), sqlx::Error> {
    for chunk in rows.chunks(sql::CHUNK) {
        let text = sql::values(
            "INSERT INTO discrepancies (store_id, seq, kind, detail, created_ms)",
            chunk.len(),
            5,
            "",
        );
        let mut q = sqlx::query(AssertSqlSafe(text));
        for d in chunk {
            q = q
                .bind(d.store.as_str())
                .bind(d.seq)
                .bind(d.kind)
                .bind(sql::text(&d.detail))
                .bind(now);
        }
        q.execute(&mut **tx).await?;
    }
    Ok(())
}

row! {
    /// A discrepancy between what a store recorded and what the hub knows.
    #[derive(Debug, serde::Serialize, utoipa::ToSchema)]
    pub struct DiscrepancyView {
        /// Id.
        pub id: i64,
        /// The store.
        pub store_id: String,
        /// The event's seq at that store.
        pub seq: i64,
        /// `unknown_sku`, `price_mismatch`, `totals_mismatch`, ...
        pub kind: String,
        /// What was found.
        pub detail: String,
        /// When flagged, ms.
        pub created_ms: i64,
        /// When resolved, ms.
        pub resolved_ms: Option<i64>,
    }
}

/// Discrepancies, newest first, below id `before`: open ones only when
/// `open`, optionally of one store and one kind.
pub async fn discrepancies(
    db: &Db,
    before: i64,
    open: bool,
    store: Option<&str>,
    kind: Option<&str>,
    limit: i64,
) -> Result<Vec<DiscrepancyView>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, store_id, seq, kind, detail, created_ms, resolved_ms FROM discrepancies \
         WHERE id < $1 AND ($2 = 0 OR resolved_ms IS NULL) AND ($3 = '' OR store_id = $3) AND ($4 = '' OR kind = $4) \
         ORDER BY id DESC LIMIT $5",
    )
    .bind(before)
    .bind(i64::from(open))
    .bind(store.unwrap_or(""))
    .bind(kind.unwrap_or(""))
    .bind(limit)
    .fetch_all(&db.pool)
    .await
}

/// Marks a discrepancy resolved (audited); returns whether it was open.
pub async fn resolve_discrepancy(db: &Db, actor: &str, id: i64) -> Result<bool, sqlx::Error> {
    let mut tx = db.begin().await?;
    let done = sqlx::query("UPDATE discrepancies SET resolved_ms = $2 WHERE id = $1 AND resolved_ms IS NULL")
        .bind(id)
        .bind(now_ms())
        .execute(&mut *tx)
        .await?
        .rows_affected()
        == 1;
    if done {
        crate::audit::record(
            &mut tx,
            actor,
            "discrepancy_resolved",
            "discrepancy",
            &id.to_string(),
            serde_json::json!({}),
        )
        .await?;
    }
    tx.commit().await?;
    Ok(done)
}

/// A synced event.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct EventView {
    /// Per-store seq.
    pub seq: i64,
    /// Event id (ULID).
    pub event_id: String,
    /// Kind (`sale`, `stock_adjusted`...).
    pub kind: String,
    /// Edge clock when recorded, ms.
    pub recorded_ms: i64,
    /// Hub clock when ingested, ms.
    pub ingested_ms: i64,
    /// The event body as JSON (see storegate_protocol::event::EventBody).
    #[schema(value_type = Object)]
    pub body: serde_json::Value,
}

row! {
    struct EventRow {
        seq: i64,
        event_id: Vec<u8>,
        kind: String,
        recorded_ms: i64,
        ingested_ms: i64,
        body: Vec<u8>,
    }
}

/// Card and gift-card tokens in an event shown to people: the last four
/// characters only.
fn mask_tokens(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(o) => {
            for (k, x) in o.iter_mut() {
                match x {
                    serde_json::Value::String(t) if k == "token" => {
                        *t = storegate_protocol::pan::last4(t);
                    }
                    _ => mask_tokens(x),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(mask_tokens),
        _ => {}
    }
}

/// A store's events in seq order, after `after_seq` (card tokens masked).
pub async fn events(db: &Db, store: &str, after_seq: i64, limit: i64) -> Result<Vec<EventView>, sqlx::Error> {
    let rows: Vec<EventRow> = sqlx::query_as(
        "SELECT seq, event_id, kind, recorded_ms, ingested_ms, body FROM events WHERE store_id = $1 AND seq > $2 \
         ORDER BY seq LIMIT $3",
    )
    .bind(store)
    .bind(after_seq)
    .bind(limit)
    .fetch_all(&db.pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| EventView {
            seq: r.seq,
            event_id: storegate_protocol::EventId::from_slice(&r.event_id)
                .map(|i| i.to_string())
                .unwrap_or_default(),
            kind: r.kind,
            recorded_ms: r.recorded_ms,
            ingested_ms: r.ingested_ms,
            body: storegate_protocol::envelope::decode_event(&r.body)
                .map(|e| {
                    let mut v = serde_json::to_value(e.body).unwrap_or_default();
                    mask_tokens(&mut v);
                    v
                })
                .unwrap_or_else(|e| serde_json::json!({"undecodable": e.to_string()})),
        })
        .collect())
}

row! {
    struct Region {
        store_id: String,
        region: String,
    }
}

/// Reads what a group's plan needs: one query each for the whole group.
async fn facts(
    conn: &mut AnyConnection,
    fresh: &[(&StoreId, &Event)],
    for_update: &'static str,
) -> Result<Facts, sqlx::Error> {
    let all_skus: Vec<&str> = fresh
        .iter()
        .flat_map(|(_, e)| rules::skus(&e.body))
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    let owned: Vec<String> = all_skus.iter().map(|s| (*s).to_owned()).collect();
    let mut facts = Facts {
        known: catalog::known_skus(conn, &all_skus).await?,
        prices: catalog::price_rows(conn, Some(&owned)).await?,
        ..Facts::default()
    };
    let stores: Vec<&str> = fresh
        .iter()
        .map(|(s, _)| s.as_str())
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    let mut q = sqlx::query_as::<_, Region>(AssertSqlSafe(format!(
        "SELECT store_id, region FROM stores WHERE region IS NOT NULL AND store_id IN {}",
        sql::list(1, stores.len())
    )));
    for s in &stores {
        q = q.bind(*s);
    }
    for r in q.fetch_all(&mut *conn).await? {
        facts.regions.insert(r.store_id, r.region);
    }
    // A count books `counted - level`.
    for (loc, sku) in rules::count_levels(fresh) {
        let level = stock::on_hand(conn, &loc, &sku).await?;
        facts.levels.insert((loc, sku), level);
    }
    for (store, sale) in rules::earlier_sales(fresh) {
        let lines = sale_lines_from_db(conn, store, &sale).await?;
        facts.earlier_sales.insert(sale, lines);
    }
    // Refunds go back to what their sale was paid with; online tenders
    // must match what the hub issued.
    for (store, sale) in rules::refunded_sales(fresh) {
        let paid = payments::sale_tenders(conn, store.as_str(), &sale, for_update).await?;
        facts.paid.insert((store.to_string(), sale), paid);
    }
    let keys = rules::online_keys(fresh);
    if !keys.is_empty() {
        facts.issued = payments::issued(conn, &keys).await?.into_iter().collect();
    }
    Ok(facts)
}

/// Plans a group's effects and writes them; returns its discrepancies.
async fn apply_effects(
    db: &Db,
    tx: &mut Transaction<'static, Any>,
    fresh: &[(&StoreId, &Event)],
    now: i64,
) -> Result<Vec<Discrepancy>, sqlx::Error> {
    if fresh.is_empty() {
        return Ok(Vec::new());
    }
    let mut facts = facts(tx, fresh, db.for_update()).await?;
    let fx = rules::plan(fresh, &mut facts);
    if !fx.movements.is_empty() {
        insert_movements(tx, &fx.movements, now).await?;
        bump_levels(tx, &fx.movements, now).await?;
        let dirty: Vec<(&str, &str)> = fx
            .movements
            .iter()
            .map(|m| (m.location.as_str(), m.sku.as_str()))
            .collect();
        stock::mark_dirty(tx, &dirty).await?;
    }
    commerce_effects(db, tx, &fx, now).await?;
    for d in &fx.devices {
        sqlx::query(
            "INSERT INTO devices (store_id, device_id, kind, status, detail, error_count, last_seen_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (store_id, device_id) DO UPDATE SET \
             kind = excluded.kind, status = excluded.status, detail = excluded.detail, \
             error_count = excluded.error_count, last_seen_ms = excluded.last_seen_ms",
        )
        .bind(d.store.as_str())
        .bind(d.device.as_str())
        .bind(d.kind.as_str())
        .bind(d.status.as_str())
        .bind(sql::text(&d.detail))
        .bind(d.errors)
        .bind(d.seen_ms)
        .execute(&mut **tx)
        .await?;
    }
    Ok(fx.discrepancies)
}

/// Orders and payments from sales, voids and returns; payment voids; task
/// progress. Same transaction as the events.
async fn commerce_effects(
    db: &Db,
    tx: &mut Transaction<'static, Any>,
    fx: &Effects<'_>,
    now: i64,
) -> Result<(), sqlx::Error> {
    for chunk in fx.sales.chunks(sql::CHUNK) {
        let text = sql::values(
            "INSERT INTO orders (id, kind, status, customer_id, location, currency, subtotal_minor, discount_minor, tax_minor, \
             total_minor, sale_id, store_id, seq, created_ms, updated_ms)",
            chunk.len(),
            15,
            "ON CONFLICT DO NOTHING",
        );
        let mut q = sqlx::query(AssertSqlSafe(text));
        for x in chunk {
            let s = x.sale;
            q = q
                .bind(s.sale_id.to_string())
                .bind("store")
                .bind(OrderStatus::Completed)
                .bind(s.customer.as_deref().map(sql::text))
                .bind(x.store.as_str())
                .bind(s.totals.total.currency.as_str())
                .bind(s.totals.subtotal.minor)
                .bind(s.totals.discount.minor)
                .bind(s.totals.tax.minor)
                .bind(s.totals.total.minor)
                .bind(s.sale_id.to_bytes().to_vec())
                .bind(x.store.as_str())
                .bind(x.seq)
                .bind(s.completed_at_ms)
                .bind(now);
        }
        q.execute(&mut **tx).await?;
    }
    payments::upsert_rows(tx, &fx.payments).await?;
    for (id, amount) in &fx.refunded {
        payments::add_refunded(tx, id, *amount).await?;
    }
    orders::void_store_sales(tx, &fx.voided_sales).await?;
    for (store, key) in &fx.payment_voids {
        // Only the store's own payment: a key of another store's is
        // refused (and a tombstone of this store's key stays harmless).
        if !payments::transition_at_store(tx, key, store.as_str(), PaymentStatus::VoidPending).await? {
            // Unknown yet (or already settled): a tombstone stops a late
            // authorisation from being kept; settled ones stay as they are.
            payments::tombstone(tx, key, store.as_str(), "voided at the lane").await?;
        }
    }
    for (store, u) in &fx.task_updates {
        if let Some(applied) = tasks::apply_update(tx, db, store.as_str(), u).await? {
            orders::on_task_update(tx, db, store.as_str(), &applied).await?;
        }
    }
    Ok(())
}

async fn sale_lines_from_db(
    conn: &mut AnyConnection,
    store: &StoreId,
    sale_id: &[u8],
) -> Result<Vec<(String, i64)>, sqlx::Error> {
    let body: Option<Vec<u8>> =
        sqlx::query_scalar("SELECT body FROM events WHERE ref_id = $1 AND store_id = $2 AND kind = 'sale'")
            .bind(sale_id.to_vec())
            .bind(store.as_str())
            .fetch_optional(conn)
            .await?;
    Ok(
        match body.map(|b| storegate_protocol::envelope::decode_event(&b)) {
            Some(Ok(Event {
                body: EventBody::Sale(s),
                ..
            })) => s
                .lines
                .iter()
                .map(|l| (l.sku.to_string(), l.qty.base_units()))
                .collect(),
            _ => Vec::new(),
        },
    )
}

async fn insert_movements(
    tx: &mut Transaction<'static, Any>,
    moves: &[Movement],
    now: i64,
) -> Result<(), sqlx::Error> {
    for chunk in moves.chunks(sql::CHUNK) {
        let text = sql::values(
            "INSERT INTO stock_movements (location, sku, delta, kind, store_id, seq_from, seq_to, created_ms)",
            chunk.len(),
            8,
            "",
        );
        let mut q = sqlx::query(AssertSqlSafe(text));
        for m in chunk {
            q = q
                .bind(m.location.as_str())
                .bind(m.sku.as_str())
                .bind(m.delta)
                .bind(m.kind.as_str())
                .bind(m.store.as_str())
                .bind(m.seq_from)
                .bind(m.seq_to)
                .bind(now);
        }
        q.execute(&mut **tx).await?;
    }
    Ok(())
}

/// Adds movements to `stock_levels` (one row per location and SKU per
/// statement: PostgreSQL refuses to upsert one row twice in a statement).
async fn bump_levels(
    tx: &mut Transaction<'static, Any>,
    moves: &[Movement],
    now: i64,
) -> Result<(), sqlx::Error> {
    let mut sums: BTreeMap<(&str, &str), i64> = BTreeMap::new();
    for m in moves {
        *sums.entry((m.location.as_str(), m.sku.as_str())).or_insert(0) += m.delta;
    }
    let sums: Vec<_> = sums.into_iter().collect();
    for chunk in sums.chunks(sql::CHUNK) {
        let text = sql::values(
            "INSERT INTO stock_levels (location, sku, on_hand, reserved, updated_ms)",
            chunk.len(),
            5,
            "ON CONFLICT (location, sku) DO UPDATE SET on_hand = stock_levels.on_hand + excluded.on_hand, \
             updated_ms = excluded.updated_ms",
        );
        let mut q = sqlx::query(AssertSqlSafe(text));
        for ((loc, sku), delta) in chunk {
            q = q.bind(*loc).bind(*sku).bind(*delta).bind(0i64).bind(now);
        }
        q.execute(&mut **tx).await?;
    }
    Ok(())
}
