//! What each recorded event writes, staged for the group's multi-row
//! INSERTs: its outbox row, its idempotency key, and its projections
//! (sales, returns, payments, stock moves, tasks).

use std::collections::HashMap;

use sqlx::{QueryBuilder, Row, Sqlite, SqliteTransaction};
use storegate_protocol::envelope::{decode_event, encode_event};
use storegate_protocol::event::{CardAuth, Event, EventBody, EventClass, TaskStatus, Tender, TenderMethod};
use storegate_protocol::ids::EventIdGenerator;
use storegate_protocol::{Currency, EventId, Seq};

use super::reads::STOCK_VIEW_SQL;
use super::rules::Key;
use super::writer::WriterState;
use super::{JournalError, Op, Recorded};

/// Rows staged by a group, written with one multi-row INSERT per table:
/// a group of fifty sales costs a handful of statements, not hundreds.
#[derive(Default)]
pub(super) struct Staged {
    outbox: Vec<OutboxIns>,
    keys: Vec<(String, i64, [u8; 16])>,
    sales: Vec<SaleIns>,
    returns: Vec<ReturnIns>,
    payments: Vec<PaymentIns>,
    moves: Vec<(i64, String, i64)>,
}

struct OutboxIns {
    seq: i64,
    id: [u8; 16],
    kind: &'static str,
    telemetry: bool,
    /// `None` for sales: their bytes live in `sales.body`.
    payload: Option<Vec<u8>>,
    bytes: i64,
    cum_bytes: i64,
    created_ms: i64,
}

struct SaleIns {
    sale_id: [u8; 16],
    event_id: [u8; 16],
    seq: i64,
    lane: String,
    total_minor: i64,
    currency: Currency,
    completed_ms: i64,
    /// The encoded sale event (the same bytes as its outbox payload).
    body: Vec<u8>,
}

struct ReturnIns {
    return_id: [u8; 16],
    seq: i64,
    original_sale: Option<[u8; 16]>,
    refund_minor: i64,
    body: Vec<u8>,
}

struct PaymentIns {
    payment_key: [u8; 16],
    sale_id: Option<[u8; 16]>,
    method: &'static str,
    amount_minor: i64,
    currency: Currency,
    offline: bool,
    status: &'static str,
    last4: Option<String>,
    created_ms: i64,
}

/// Rows per multi-row INSERT (well under SQLite's 32766 bound parameters).
const CHUNK: usize = 400;

impl Staged {
    fn is_empty(&self) -> bool {
        self.outbox.is_empty()
            && self.keys.is_empty()
            && self.sales.is_empty()
            && self.returns.is_empty()
            && self.payments.is_empty()
            && self.moves.is_empty()
    }

    pub(super) async fn flush(&mut self, tx: &mut SqliteTransaction<'_>) -> Result<(), JournalError> {
        if self.is_empty() {
            return Ok(());
        }
        for chunk in self.outbox.chunks(CHUNK) {
            let mut q: QueryBuilder<Sqlite> = QueryBuilder::new(
                "INSERT INTO outbox (seq, event_id, kind, telemetry, payload, bytes, cum_bytes, created_ms) ",
            );
            q.push_values(chunk, |mut b, r| {
                b.push_bind(r.seq)
                    .push_bind(r.id.as_slice())
                    .push_bind(r.kind)
                    .push_bind(i64::from(r.telemetry))
                    .push_bind(r.payload.as_deref())
                    .push_bind(r.bytes)
                    .push_bind(r.cum_bytes)
                    .push_bind(r.created_ms);
            });
            q.build().execute(&mut **tx).await?;
        }
        for chunk in self.keys.chunks(CHUNK) {
            let mut q: QueryBuilder<Sqlite> =
                QueryBuilder::new("INSERT INTO journal_keys (key, seq, event_id) ");
            q.push_values(chunk, |mut b, (k, seq, id)| {
                b.push_bind(k.as_str()).push_bind(*seq).push_bind(id.as_slice());
            });
            q.build().execute(&mut **tx).await?;
        }
        for chunk in self.sales.chunks(CHUNK) {
            let mut q: QueryBuilder<Sqlite> = QueryBuilder::new(
                "INSERT INTO sales (sale_id, event_id, seq, lane, total_minor, currency, completed_ms, body) ",
            );
            q.push_values(chunk, |mut b, r| {
                b.push_bind(r.sale_id.as_slice())
                    .push_bind(r.event_id.as_slice())
                    .push_bind(r.seq)
                    .push_bind(r.lane.as_str())
                    .push_bind(r.total_minor)
                    .push_bind(r.currency.as_str())
                    .push_bind(r.completed_ms)
                    .push_bind(r.body.as_slice());
            });
            q.build().execute(&mut **tx).await?;
        }
        for chunk in self.returns.chunks(CHUNK) {
            let mut q: QueryBuilder<Sqlite> =
                QueryBuilder::new("INSERT INTO returns (return_id, seq, original_sale, refund_minor, body) ");
            q.push_values(chunk, |mut b, r| {
                b.push_bind(r.return_id.as_slice())
                    .push_bind(r.seq)
                    .push_bind(r.original_sale.map(|s| s.to_vec()))
                    .push_bind(r.refund_minor)
                    .push_bind(r.body.as_slice());
            });
            q.build().execute(&mut **tx).await?;
        }
        for chunk in self.payments.chunks(CHUNK) {
            let mut q: QueryBuilder<Sqlite> = QueryBuilder::new(
                "INSERT INTO payments (payment_key, sale_id, method, amount_minor, currency, offline, status, last4, created_ms) ",
            );
            q.push_values(chunk, |mut b, r| {
                b.push_bind(r.payment_key.as_slice())
                    .push_bind(r.sale_id.map(|s| s.to_vec()))
                    .push_bind(r.method)
                    .push_bind(r.amount_minor)
                    .push_bind(r.currency.as_str())
                    .push_bind(i64::from(r.offline))
                    .push_bind(r.status)
                    .push_bind(r.last4.as_deref())
                    .push_bind(r.created_ms);
            });
            q.push(" ON CONFLICT (payment_key) DO NOTHING");
            q.build().execute(&mut **tx).await?;
        }
        for chunk in self.moves.chunks(CHUNK) {
            let mut q: QueryBuilder<Sqlite> = QueryBuilder::new("INSERT INTO stock_moves (seq, sku, delta) ");
            q.push_values(chunk, |mut b, (seq, sku, delta)| {
                b.push_bind(*seq).push_bind(sku.as_str()).push_bind(*delta);
            });
            // Two lines of one event for the same SKU add up.
            q.push(" ON CONFLICT (sku, seq) DO UPDATE SET delta = delta + excluded.delta");
            q.build().execute(&mut **tx).await?;
        }
        *self = Staged::default();
        Ok(())
    }
}

/// Looks up every idempotency key of the group's records: one query for
/// sale ids, one for named keys.
pub(super) async fn lookup_keys(
    tx: &mut SqliteTransaction<'_>,
    ops: &[Op],
) -> Result<HashMap<Key, Recorded>, JournalError> {
    let mut sales = Vec::new();
    let mut named = Vec::new();
    for op in ops {
        match op {
            Op::Record {
                key: Some(Key::Sale(id)),
                ..
            } => sales.push(id.to_bytes()),
            Op::Record {
                key: Some(Key::Named(k)),
                ..
            } => named.push(k.as_str()),
            _ => {}
        }
    }
    let mut known = HashMap::new();
    let recorded = |seq: i64, id: Vec<u8>| Recorded {
        seq: Seq(seq as u64),
        id: EventId::from_slice(&id).unwrap_or(EventId::from_u128(0)),
        duplicate: true,
    };
    for chunk in sales.chunks(CHUNK) {
        let mut q: QueryBuilder<Sqlite> =
            QueryBuilder::new("SELECT sale_id, seq, event_id FROM sales WHERE sale_id IN (");
        let mut list = q.separated(", ");
        for id in chunk {
            list.push_bind(id.as_slice());
        }
        q.push(")");
        for row in q.build().fetch_all(&mut **tx).await? {
            let sale: Vec<u8> = row.try_get(0)?;
            if let Some(sale) = EventId::from_slice(&sale) {
                known.insert(Key::Sale(sale), recorded(row.try_get(1)?, row.try_get(2)?));
            }
        }
    }
    for chunk in named.chunks(CHUNK) {
        let mut q: QueryBuilder<Sqlite> =
            QueryBuilder::new("SELECT key, seq, event_id FROM journal_keys WHERE key IN (");
        let mut list = q.separated(", ");
        for k in chunk {
            list.push_bind(*k);
        }
        q.push(")");
        for row in q.build().fetch_all(&mut **tx).await? {
            known.insert(
                Key::Named(row.try_get(0)?),
                recorded(row.try_get(1)?, row.try_get(2)?),
            );
        }
    }
    Ok(known)
}

/// Kinds whose projection reads the journal (and so cannot be staged blind).
pub(super) fn needs_reads(body: &EventBody) -> bool {
    matches!(
        body,
        EventBody::SaleVoided(_)
            | EventBody::StockCounted(_)
            | EventBody::PaymentVoided(_)
            | EventBody::TaskUpdated(_)
    )
}

/// Checks that need the journal, before a seq is spent. `Ok(Err(..))`
/// refuses this operation alone.
pub(super) async fn check_with_reads(
    tx: &mut SqliteTransaction<'_>,
    body: &EventBody,
) -> Result<Result<(), JournalError>, JournalError> {
    if let EventBody::SaleVoided(v) = body {
        let voided: Option<i64> = sqlx::query_scalar("SELECT voided FROM sales WHERE sale_id = ?")
            .bind(v.sale_id.to_bytes().as_slice())
            .fetch_optional(&mut **tx)
            .await?;
        match voided {
            None => return Ok(Err(JournalError::Invalid(format!("no sale {}", v.sale_id)))),
            Some(1) => {
                return Ok(Err(JournalError::Invalid(format!(
                    "sale {} is already voided",
                    v.sale_id
                ))));
            }
            Some(_) => {}
        }
    }
    Ok(Ok(()))
}

/// Assigns the next seq and an event id, encodes the event, and stages its
/// outbox row, idempotency key and (for kinds that need no reads) its
/// journal projection.
pub(super) fn stage(
    staged: &mut Staged,
    st: &mut WriterState,
    ids: &mut EventIdGenerator,
    now: i64,
    body: &EventBody,
    key: Option<&Key>,
) -> Recorded {
    let seq = Seq(st.next_seq);
    let id = ids.next(now.max(0) as u64, rand::random::<u128>);
    let encoded = encode_event(&Event {
        id,
        seq,
        recorded_at_ms: now,
        body: body.clone(),
    });
    st.next_seq += 1;
    st.outbox_bytes += encoded.len() as i64;
    st.cum_bytes += encoded.len() as i64;
    if let Some(Key::Named(key)) = key {
        staged.keys.push((key.clone(), seq.0 as i64, id.to_bytes()));
    }
    let bytes = encoded.len() as i64;
    let mut payload = Some(encoded);
    let seq_i = seq.0 as i64;
    staged.moves.extend(
        body.stock_deltas()
            .into_iter()
            .map(|(sku, d)| (seq_i, sku.as_str().to_owned(), d)),
    );
    match body {
        EventBody::Sale(s) => {
            stage_payments(staged, Some(s.sale_id), &s.tenders, false, now);
            staged.sales.push(SaleIns {
                sale_id: s.sale_id.to_bytes(),
                event_id: id.to_bytes(),
                seq: seq_i,
                lane: s.lane.as_str().to_owned(),
                total_minor: s.totals.total.minor,
                currency: s.totals.total.currency,
                completed_ms: s.completed_at_ms,
                // Stored once: the outbox row joins it by seq.
                body: payload.take().unwrap_or_default(),
            });
        }
        EventBody::Return(r) => {
            stage_payments(staged, r.original_sale, &r.refunds, true, now);
            staged.returns.push(ReturnIns {
                return_id: r.return_id.to_bytes(),
                seq: seq_i,
                original_sale: r.original_sale.map(EventId::to_bytes),
                refund_minor: r.lines.iter().map(|l| l.amount.minor).sum(),
                body: payload.clone().unwrap_or_default(),
            });
        }
        _ => {}
    }
    staged.outbox.push(OutboxIns {
        seq: seq_i,
        id: id.to_bytes(),
        kind: body.kind().as_str(),
        telemetry: body.class() == EventClass::Telemetry,
        payload,
        bytes,
        cum_bytes: st.cum_bytes,
        created_ms: now,
    });
    Recorded {
        seq,
        id,
        duplicate: false,
    }
}

fn stage_payments(staged: &mut Staged, sale_id: Option<EventId>, tenders: &[Tender], refund: bool, now: i64) {
    for t in tenders {
        let (method, offline, status, last4) = match &t.method {
            TenderMethod::Cash { .. } => ("cash", false, "tendered", None),
            TenderMethod::Card(c) | TenderMethod::GiftCard(c) => {
                let method = if matches!(t.method, TenderMethod::Card(_)) {
                    "card"
                } else {
                    "gift_card"
                };
                let last4 = Some(c.card.last4.as_str().to_owned());
                match c.auth {
                    CardAuth::Online { .. } => (method, false, "authorized", last4),
                    CardAuth::StoreAndForward { .. } => (method, true, "pending_capture", last4),
                }
            }
        };
        staged.payments.push(PaymentIns {
            payment_key: t.payment_key.to_bytes(),
            sale_id: sale_id.map(EventId::to_bytes),
            method,
            amount_minor: t.amount.minor,
            currency: t.amount.currency,
            offline,
            status: if refund { "refunded" } else { status },
            last4,
            created_ms: now,
        });
    }
}

/// Projections that read the journal; runs after the group's earlier rows
/// were flushed, and stages whatever it can.
pub(super) async fn project_with_reads(
    tx: &mut SqliteTransaction<'_>,
    staged: &mut Staged,
    seq: Seq,
    now: i64,
    body: &EventBody,
) -> Result<(), JournalError> {
    let seq_i = seq.0 as i64;
    match body {
        EventBody::SaleVoided(v) => {
            let sale_event: Vec<u8> = sqlx::query_scalar("SELECT body FROM sales WHERE sale_id = ?")
                .bind(v.sale_id.to_bytes().as_slice())
                .fetch_one(&mut **tx)
                .await?;
            sqlx::query("UPDATE sales SET voided = 1 WHERE sale_id = ?")
                .bind(v.sale_id.to_bytes().as_slice())
                .execute(&mut **tx)
                .await?;
            if v.restock
                && let Ok(Event {
                    body: EventBody::Sale(sale),
                    ..
                }) = decode_event(&sale_event)
            {
                staged.moves.extend(
                    sale.lines
                        .iter()
                        .map(|l| (seq_i, l.sku.as_str().to_owned(), l.qty.base_units())),
                );
            }
            stage_payments(staged, Some(v.sale_id), &v.refunds, true, now);
        }
        EventBody::StockCounted(c) => {
            for line in &c.lines {
                let view: i64 = sqlx::query_scalar(STOCK_VIEW_SQL)
                    .bind(line.sku.as_str())
                    .fetch_one(&mut **tx)
                    .await?;
                staged
                    .moves
                    .push((seq_i, line.sku.as_str().to_owned(), line.counted - view));
            }
        }
        EventBody::PaymentVoided(p) => {
            sqlx::query(
                "INSERT INTO payments (payment_key, sale_id, method, amount_minor, currency, offline, status, detail, created_ms) \
                 VALUES (?, NULL, 'card', ?, ?, 0, 'voided', ?, ?) \
                 ON CONFLICT (payment_key) DO UPDATE SET status = 'voided', detail = excluded.detail",
            )
            .bind(p.payment_key.to_bytes().as_slice())
            .bind(p.amount.minor)
            .bind(p.amount.currency.as_str())
            .bind(p.reason.as_str())
            .bind(now)
            .execute(&mut **tx)
            .await?;
        }
        EventBody::TaskUpdated(t) => {
            let status = match t.status {
                TaskStatus::Accepted => "accepted",
                TaskStatus::InProgress => "in_progress",
                TaskStatus::Done => "done",
                TaskStatus::Failed => "failed",
            };
            sqlx::query("UPDATE tasks SET status = ?, updated_ms = ? WHERE task_id = ?")
                .bind(status)
                .bind(now)
                .bind(t.task_id.as_str())
                .execute(&mut **tx)
                .await?;
        }
        _ => {}
    }
    Ok(())
}
