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

use sqlx::{Any, AssertSqlSafe, Row, Transaction};
use storegate_protocol::envelope::{AppAck, Message, ResendRequest, UpBatch, encode_event};
use storegate_protocol::event::{CardAuth, Event, EventBody, EventKind, Tender, TenderMethod};
use storegate_protocol::{Seq, StoreId};

use crate::catalog;
use crate::db::{Db, now_ms};
use crate::domain::order::OrderStatus;
use crate::domain::price::effective_price;
use crate::domain::stock::MovementKind;
use crate::payments::{NewPayment, PaymentMethod, PaymentStatus};
use crate::{orders, payments, sql, stock, tasks};

/// A decoded batch and the store it came from (checked against the topic).
#[derive(Debug, Clone)]
pub struct Batch {
    /// The store (from the topic).
    pub store: StoreId,
    /// The batch.
    pub batch: UpBatch,
}

/// What became of one batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// New events committed; the store is acked up to `hwm`.
    Committed {
        /// The new high-water mark.
        hwm: Seq,
        /// Events newly stored.
        applied: u64,
    },
    /// Everything was already committed; ack `hwm` again, no effect.
    Duplicate {
        /// The mark.
        hwm: Seq,
    },
    /// Events are missing before this batch: ask for them from `hwm + 1`.
    Gap {
        /// The mark.
        hwm: Seq,
    },
}

impl Verdict {
    /// The message to publish on the store's ack topic.
    pub fn reply(&self) -> Message {
        match *self {
            Verdict::Committed { hwm, .. } | Verdict::Duplicate { hwm } => {
                Message::AppAck(AppAck { committed_up_to: hwm })
            }
            Verdict::Gap { hwm } => Message::ResendRequest(ResendRequest { from: hwm.next() }),
        }
    }
}

/// Checks a batch's shape: non-empty, contiguous seqs matching its header.
/// A batch that fails is quarantined, never applied.
pub fn validate(b: &UpBatch) -> Result<(), String> {
    let (Some(first), Some(last)) = (b.events.first(), b.events.last()) else {
        return Err("batch has no events".into());
    };
    if first.seq != b.first || last.seq != b.last {
        return Err(format!(
            "header says {}..={} but events run {}..={}",
            b.first, b.last, first.seq, last.seq
        ));
    }
    if b.first.0 == 0 {
        return Err("seq 0 is not a sequence number".into());
    }
    if b.last > Seq::MAX {
        return Err(format!("seq {} is beyond the largest seq {}", b.last, Seq::MAX));
    }
    for pair in b.events.windows(2) {
        if pair[0].seq.0.checked_add(1) != Some(pair[1].seq.0) {
            return Err(format!("seq jumps from {} to {}", pair[0].seq, pair[1].seq));
        }
    }
    Ok(())
}

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

/// A stock movement caused by edge events: one per group, location, SKU
/// and kind, with the seq range of the events behind it.
pub(crate) struct Movement {
    location: String,
    sku: String,
    delta: i64,
    kind: MovementKind,
    store: String,
    seq_from: i64,
    seq_to: i64,
}

/// A device's latest health report in a group.
struct DeviceUpdate {
    kind: String,
    status: String,
    detail: String,
    errors: i64,
    seen_ms: i64,
}

struct Discrepancy {
    store: String,
    seq: i64,
    kind: &'static str,
    detail: String,
}

/// Applies `batches` in one transaction and returns a verdict per batch.
/// With `effects` false, events are stored and the mark advances but no
/// effect is applied (each such event is flagged instead).
pub async fn apply(db: &Db, batches: &[Batch], effects: bool) -> Result<Vec<Verdict>, sqlx::Error> {
    let now = now_ms();
    let mut tx = db.begin().await?;
    let mut marks: HashMap<StoreId, i64> = HashMap::new();
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
                marks.insert(b.store.clone(), h);
                h
            }
        };
        let s = sync.entry(b.store.to_string()).or_default();
        let (first, last) = (b.batch.first.0 as i64, b.batch.last.0 as i64);
        if last <= hwm {
            s.duplicates += b.batch.events.len() as i64;
            verdicts.push(Verdict::Duplicate { hwm: Seq(hwm as u64) });
            continue;
        }
        if first > hwm + 1 {
            s.resends += 1;
            verdicts.push(Verdict::Gap { hwm: Seq(hwm as u64) });
            continue;
        }
        let mut applied = 0u64;
        for e in &b.batch.events {
            if (e.seq.0 as i64) <= hwm {
                s.duplicates += 1;
            } else {
                fresh.push((&b.store, e));
                applied += 1;
            }
        }
        marks.insert(b.store.clone(), last);
        s.hwm = last;
        s.backlog = b.batch.backlog as i64;
        s.dropped = b.batch.dropped_telemetry as i64;
        s.events += applied as i64;
        s.batch_seen = true;
        verdicts.push(Verdict::Committed {
            hwm: Seq(last as u64),
            applied,
        });
    }

    insert_events(&mut tx, &fresh, now).await?;
    let discrepancies = if effects {
        apply_effects(db, &mut tx, &fresh, now).await?
    } else {
        fresh
            .iter()
            .filter(|(_, e)| !e.body.stock_deltas().is_empty() || e.body.kind() == EventKind::StockCounted)
            .map(|(store, e)| Discrepancy {
                store: store.to_string(),
                seq: e.seq.0 as i64,
                kind: "effects_not_applied",
                detail: format!(
                    "{} stored without its effects after they failed to apply",
                    e.body.kind()
                ),
            })
            .collect()
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

/// The SKUs an event names.
fn skus(body: &EventBody) -> Vec<&str> {
    match body {
        EventBody::Sale(s) => s.lines.iter().map(|l| l.sku.as_str()).collect(),
        EventBody::Return(r) => r.lines.iter().map(|l| l.sku.as_str()).collect(),
        EventBody::StockCounted(c) => c.lines.iter().map(|l| l.sku.as_str()).collect(),
        EventBody::StockAdjusted(a) => a.lines.iter().map(|l| l.sku.as_str()).collect(),
        EventBody::GoodsReceived(g) => g.lines.iter().map(|l| l.sku.as_str()).collect(),
        EventBody::TransferIn(t) | EventBody::TransferOut(t) => {
            t.lines.iter().map(|l| l.sku.as_str()).collect()
        }
        _ => Vec::new(),
    }
}

fn movement_kind(kind: EventKind) -> MovementKind {
    match kind {
        EventKind::Sale => MovementKind::Sale,
        EventKind::SaleVoided => MovementKind::Void,
        EventKind::Return => MovementKind::Return,
        EventKind::StockCounted => MovementKind::Count,
        EventKind::StockAdjusted => MovementKind::Adjustment,
        EventKind::GoodsReceived => MovementKind::Receipt,
        EventKind::TransferOut => MovementKind::TransferOut,
        EventKind::TransferIn => MovementKind::TransferIn,
        _ => MovementKind::Other,
    }
}

async fn apply_effects(
    db: &Db,
    tx: &mut Transaction<'static, Any>,
    fresh: &[(&StoreId, &Event)],
    now: i64,
) -> Result<Vec<Discrepancy>, sqlx::Error> {
    let mut discrepancies = Vec::new();
    if fresh.is_empty() {
        return Ok(discrepancies);
    }
    // Reads first, one query each for the whole group.
    let all_skus: Vec<&str> = fresh
        .iter()
        .flat_map(|(_, e)| skus(&e.body))
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    let owned: Vec<String> = all_skus.iter().map(|s| (*s).to_owned()).collect();
    let known = catalog::known_skus(tx, &all_skus).await?;
    let prices = catalog::price_rows(tx, Some(&owned)).await?;
    let stores: Vec<&str> = fresh
        .iter()
        .map(|(s, _)| s.as_str())
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    let mut regions: HashMap<String, String> = HashMap::new();
    let rows = bind_all(
        sqlx::query(AssertSqlSafe(format!(
            "SELECT store_id, region FROM stores WHERE region IS NOT NULL AND store_id IN {}",
            sql::list(1, stores.len())
        ))),
        &stores,
    )
    .fetch_all(&mut **tx)
    .await?;
    for r in rows {
        regions.insert(r.try_get(0)?, r.try_get(1)?);
    }
    // Levels needed by counts: a count books `counted - level`.
    let mut levels: HashMap<(String, String), i64> = HashMap::new();
    for (store, e) in fresh {
        if let EventBody::StockCounted(c) = &e.body {
            for l in &c.lines {
                if let std::collections::hash_map::Entry::Vacant(slot) =
                    levels.entry((store.to_string(), l.sku.to_string()))
                {
                    let level: Option<i64> = sqlx::query_scalar(
                        "SELECT on_hand FROM stock_levels WHERE location = $1 AND sku = $2",
                    )
                    .bind(slot.key().0.as_str())
                    .bind(slot.key().1.as_str())
                    .fetch_optional(&mut **tx)
                    .await?;
                    slot.insert(level.unwrap_or(0));
                }
            }
        }
    }

    // Effects, in seq order within each store, summed per location, SKU and kind.
    let mut moves: BTreeMap<(String, String, MovementKind), Movement> = BTreeMap::new();
    let mut devices: BTreeMap<(String, String), DeviceUpdate> = BTreeMap::new();
    let mut sale_lines: HashMap<Vec<u8>, Vec<(String, i64)>> = HashMap::new();
    for (store, e) in fresh {
        let seq = e.seq.0 as i64;
        let loc = store.to_string();
        let mut flag = |kind: &'static str, detail: String| {
            discrepancies.push(Discrepancy {
                store: loc.clone(),
                seq,
                kind,
                detail,
            });
        };
        for sku in skus(&e.body) {
            if !known.contains(sku) {
                flag(
                    "unknown_sku",
                    format!(
                        "{} names SKU {sku}, which the catalog does not have",
                        e.body.kind()
                    ),
                );
            }
        }
        let mut push =
            |sku: &str, delta: i64, kind: MovementKind, levels: &mut HashMap<(String, String), i64>| {
                if delta == 0 {
                    return;
                }
                *levels.entry((loc.clone(), sku.to_owned())).or_insert(0) += delta;
                let m = moves
                    .entry((loc.clone(), sku.to_owned(), kind))
                    .or_insert_with(|| Movement {
                        location: loc.clone(),
                        sku: sku.to_owned(),
                        delta: 0,
                        kind,
                        store: loc.clone(),
                        seq_from: seq,
                        seq_to: seq,
                    });
                m.delta += delta;
                m.seq_from = m.seq_from.min(seq);
                m.seq_to = m.seq_to.max(seq);
            };
        match &e.body {
            EventBody::Sale(s) => {
                let region = regions.get(store.as_str()).map(String::as_str);
                for l in &s.lines {
                    if known.contains(l.sku.as_str())
                        && let Some(p) = effective_price(
                            &prices,
                            l.sku.as_str(),
                            store.as_str(),
                            region,
                            s.completed_at_ms,
                        )
                        && (p.price_minor != l.unit_price.minor
                            || p.currency != l.unit_price.currency.as_str())
                    {
                        discrepancies.push(Discrepancy {
                            store: store.to_string(),
                            seq,
                            kind: "price_mismatch",
                            detail: format!(
                                "line {} sold {} at {} but the catalog price is {} {}",
                                l.line_no, l.sku, l.unit_price, p.price_minor, p.currency
                            ),
                        });
                    }
                }
                let lines_total: i64 = s.lines.iter().map(|l| l.total.minor).sum();
                let basket: i64 = s.basket_discounts.iter().map(|d| d.amount.minor).sum();
                let expected = if s.tax_included {
                    lines_total - basket
                } else {
                    lines_total - basket + s.totals.tax.minor
                };
                if expected != s.totals.total.minor {
                    discrepancies.push(Discrepancy {
                        store: store.to_string(),
                        seq,
                        kind: "totals_mismatch",
                        detail: format!(
                            "lines add up to {expected} but the sale total is {}",
                            s.totals.total.minor
                        ),
                    });
                }
                sale_lines.insert(
                    s.sale_id.to_bytes().to_vec(),
                    s.lines
                        .iter()
                        .map(|l| (l.sku.to_string(), l.qty.base_units()))
                        .collect(),
                );
                for (sku, delta) in e.body.stock_deltas() {
                    push(sku.as_str(), delta, MovementKind::Sale, &mut levels);
                }
            }
            EventBody::SaleVoided(v) if v.restock => {
                // The sale came earlier in seq order: in this group or before.
                let key = v.sale_id.to_bytes().to_vec();
                let lines = match sale_lines.get(&key) {
                    Some(l) => l.clone(),
                    None => sale_lines_from_db(tx, store, &key).await?,
                };
                if lines.is_empty() {
                    discrepancies.push(Discrepancy {
                        store: store.to_string(),
                        seq,
                        kind: "void_unknown_sale",
                        detail: format!("void of sale {} which this store never synced", v.sale_id),
                    });
                }
                for (sku, qty) in lines {
                    push(&sku, qty, MovementKind::Void, &mut levels);
                }
            }
            EventBody::StockCounted(c) => {
                for l in &c.lines {
                    let level = levels
                        .get(&(loc.clone(), l.sku.to_string()))
                        .copied()
                        .unwrap_or(0);
                    push(
                        l.sku.as_str(),
                        l.counted - level,
                        MovementKind::Count,
                        &mut levels,
                    );
                }
            }
            EventBody::DeviceHealth(h) => {
                let name = |v: serde_json::Result<serde_json::Value>| {
                    v.ok()
                        .and_then(|v| v.as_str().map(str::to_owned))
                        .unwrap_or_default()
                };
                devices.insert(
                    (store.to_string(), h.device.to_string()),
                    DeviceUpdate {
                        kind: name(serde_json::to_value(h.kind)),
                        status: name(serde_json::to_value(h.status)),
                        detail: sql::text(&h.detail),
                        errors: i64::from(h.error_count),
                        seen_ms: e.recorded_at_ms,
                    },
                );
            }
            other => {
                let kind = movement_kind(other.kind());
                for (sku, delta) in other.stock_deltas() {
                    push(sku.as_str(), delta, kind, &mut levels);
                }
            }
        }
    }
    let moves: Vec<Movement> = moves.into_values().filter(|m| m.delta != 0).collect();
    if !moves.is_empty() {
        insert_movements(tx, &moves, now).await?;
        bump_levels(tx, &moves, now).await?;
        let dirty: Vec<(&str, &str)> = moves
            .iter()
            .map(|m| (m.location.as_str(), m.sku.as_str()))
            .collect();
        stock::mark_dirty(tx, &dirty).await?;
    }
    commerce_effects(db, tx, fresh, now).await?;
    for ((store, device), d) in devices {
        sqlx::query(
            "INSERT INTO devices (store_id, device_id, kind, status, detail, error_count, last_seen_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (store_id, device_id) DO UPDATE SET \
             kind = excluded.kind, status = excluded.status, detail = excluded.detail, \
             error_count = excluded.error_count, last_seen_ms = excluded.last_seen_ms",
        )
        .bind(store)
        .bind(device)
        .bind(d.kind)
        .bind(d.status)
        .bind(d.detail)
        .bind(d.errors)
        .bind(d.seen_ms)
        .execute(&mut **tx)
        .await?;
    }
    Ok(discrepancies)
}

fn tender_row(
    store: &StoreId,
    order_id: Option<&str>,
    sale_id: Option<&[u8]>,
    t: &Tender,
    refund: bool,
) -> NewPayment {
    let key = t.payment_key.to_string();
    let (method, status, captured, card, reference, detail, offline) = match &t.method {
        TenderMethod::Cash { .. } if refund => (
            PaymentMethod::Cash,
            PaymentStatus::Refunded,
            0,
            None,
            None,
            String::new(),
            false,
        ),
        TenderMethod::Cash { .. } => (
            PaymentMethod::Cash,
            PaymentStatus::Captured,
            t.amount.minor,
            None,
            None,
            String::new(),
            false,
        ),
        TenderMethod::Card(c) | TenderMethod::GiftCard(c) => {
            let gift = matches!(t.method, TenderMethod::GiftCard(_));
            let method = if gift {
                PaymentMethod::GiftCard
            } else {
                PaymentMethod::Card
            };
            let (reference, detail, offline) = match &c.auth {
                CardAuth::Online {
                    authorization_id,
                    auth_code,
                } => (Some(authorization_id.clone()), auth_code.clone(), false),
                CardAuth::StoreAndForward { .. } => (None, "store-and-forward".to_owned(), true),
            };
            let (status, captured) = if refund {
                (PaymentStatus::RefundPending, 0)
            } else if gift && !offline {
                // Taken off the balance when the lane asked.
                (PaymentStatus::Captured, t.amount.minor)
            } else {
                (PaymentStatus::PendingCapture, 0)
            };
            (
                method,
                status,
                captured,
                Some(c.card.clone()),
                reference,
                detail,
                offline,
            )
        }
    };
    NewPayment {
        id: key.clone(),
        key,
        order_id: order_id.map(str::to_owned),
        store_id: Some(store.to_string()),
        sale_id: sale_id.map(<[u8]>::to_vec),
        method,
        status,
        amount: t.amount,
        captured,
        card_token: card.as_ref().map(|c| c.token.as_str().to_owned()),
        card_last4: card.as_ref().map(|c| c.last4.as_str().to_owned()),
        provider_ref: reference,
        offline,
        parent_id: None,
        detail,
    }
}

/// Orders and payments from sales, voids and returns; payment voids; task
/// progress. Same transaction as the events.
async fn commerce_effects(
    db: &Db,
    tx: &mut Transaction<'static, Any>,
    fresh: &[(&StoreId, &Event)],
    now: i64,
) -> Result<(), sqlx::Error> {
    let mut orders_rows = Vec::new();
    let mut pays = Vec::new();
    let mut voided = Vec::new();
    let mut payment_voids = Vec::new();
    let mut task_updates = Vec::new();
    for (store, e) in fresh {
        match &e.body {
            EventBody::Sale(s) => {
                let id = s.sale_id.to_string();
                let sale = s.sale_id.to_bytes();
                for t in &s.tenders {
                    pays.push(tender_row(store, Some(&id), Some(&sale), t, false));
                }
                orders_rows.push((id, *store, e.seq.0 as i64, sale.to_vec(), s));
            }
            EventBody::SaleVoided(v) => {
                let id = v.sale_id.to_string();
                for t in &v.refunds {
                    pays.push(tender_row(store, Some(&id), None, t, true));
                }
                voided.push(id);
            }
            EventBody::Return(r) => {
                let id = r.original_sale.map(|s| s.to_string());
                for t in &r.refunds {
                    pays.push(tender_row(store, id.as_deref(), None, t, true));
                }
            }
            EventBody::PaymentVoided(v) => payment_voids.push((*store, v.payment_key.to_string())),
            EventBody::TaskUpdated(u) => task_updates.push((*store, u)),
            _ => {}
        }
    }
    for chunk in orders_rows.chunks(sql::CHUNK) {
        let text = sql::values(
            "INSERT INTO orders (id, kind, status, customer_id, location, currency, subtotal_minor, discount_minor, tax_minor, \
             total_minor, sale_id, store_id, seq, created_ms, updated_ms)",
            chunk.len(),
            15,
            "ON CONFLICT DO NOTHING",
        );
        let mut q = sqlx::query(AssertSqlSafe(text));
        for (id, store, seq, sale, s) in chunk {
            q = q
                .bind(id.as_str())
                .bind("store")
                .bind(OrderStatus::Completed)
                .bind(s.customer.as_deref().map(sql::text))
                .bind(store.as_str())
                .bind(s.totals.total.currency.as_str())
                .bind(s.totals.subtotal.minor)
                .bind(s.totals.discount.minor)
                .bind(s.totals.tax.minor)
                .bind(s.totals.total.minor)
                .bind(sale.clone())
                .bind(store.as_str())
                .bind(*seq)
                .bind(s.completed_at_ms)
                .bind(now);
        }
        q.execute(&mut **tx).await?;
    }
    payments::upsert_rows(tx, &pays).await?;
    orders::void_store_sales(tx, &voided).await?;
    for (store, key) in payment_voids {
        if !payments::transition(tx, &key, PaymentStatus::VoidPending).await? {
            // Unknown yet (or already settled): a tombstone stops a late
            // authorisation from being kept; settled ones stay as they are.
            payments::tombstone(tx, &key, store.as_str(), "voided at the lane").await?;
        }
    }
    for (store, u) in task_updates {
        if let Some(applied) = tasks::apply_update(tx, db, store.as_str(), u).await? {
            orders::on_task_update(tx, db, store.as_str(), &applied).await?;
        }
    }
    Ok(())
}

fn bind_all<'q>(
    mut q: sqlx::query::Query<'q, Any, sqlx::any::AnyArguments>,
    values: &'q [&'q str],
) -> sqlx::query::Query<'q, Any, sqlx::any::AnyArguments> {
    for v in values {
        q = q.bind(*v);
    }
    q
}

async fn sale_lines_from_db(
    tx: &mut Transaction<'static, Any>,
    store: &StoreId,
    sale_id: &[u8],
) -> Result<Vec<(String, i64)>, sqlx::Error> {
    let body: Option<Vec<u8>> =
        sqlx::query_scalar("SELECT body FROM events WHERE ref_id = $1 AND store_id = $2 AND kind = 'sale'")
            .bind(sale_id.to_vec())
            .bind(store.as_str())
            .fetch_optional(&mut **tx)
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
pub(crate) async fn bump_levels(
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

#[cfg(test)]
mod tests {
    use super::*;
    use storegate_protocol::samples;

    #[test]
    fn a_batch_must_be_contiguous_and_match_its_header() {
        let mut b = samples::sale_batch(3, 1);
        assert!(validate(&b).is_ok());
        b.last = Seq(9);
        assert!(validate(&b).unwrap_err().contains("header"));
        let mut b = samples::sale_batch(3, 1);
        b.events[1].seq = Seq(5);
        b.events[2].seq = Seq(6);
        b.last = Seq(6);
        assert!(validate(&b).unwrap_err().contains("jumps"));
        let mut b = samples::sale_batch(1, 1);
        b.events.clear();
        assert!(validate(&b).is_err());
    }

    #[test]
    fn seqs_at_the_top_of_the_range_are_refused_without_overflow() {
        let mut b = samples::sale_batch(2, 1);
        b.events[0].seq = Seq(u64::MAX - 1);
        b.events[1].seq = Seq(u64::MAX);
        b.first = Seq(u64::MAX - 1);
        b.last = Seq(u64::MAX);
        assert!(validate(&b).unwrap_err().contains("beyond"));
        b.events[0].seq = Seq(u64::MAX);
        b.first = Seq(u64::MAX);
        b.events[1].seq = Seq(0);
        b.last = Seq(0);
        assert!(validate(&b).is_err(), "a wrap from the top is no successor");
    }
}
