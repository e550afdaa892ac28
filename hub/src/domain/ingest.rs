//! Ingestion, pure: where a store's batch stands against its high-water
//! mark, and the plan of a group's effects (stock movements, discrepancies,
//! device reports, store sales and their payments, voids, task updates),
//! given what the database says about the SKUs, prices, levels and
//! earlier sales it names. The service reads those facts, calls
//! [`plan`], and writes the plan in the group's transaction.

use std::collections::{BTreeMap, HashMap, HashSet};

use storegate_protocol::envelope::{AppAck, Message, ResendRequest, UpBatch};
use storegate_protocol::event::{
    CardAuth, Event, EventBody, EventKind, Sale, TaskUpdate, Tender, TenderMethod,
};
use storegate_protocol::{Seq, StoreId};

use super::payment::{NewPayment, PaymentMethod, PaymentStatus};
use super::price::{Price, effective_price};
use super::stock::MovementKind;

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

/// A (valid) batch judged against its store's mark.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Judged<'a> {
    /// What to answer.
    pub verdict: Verdict,
    /// The events above the mark, to store and apply.
    pub fresh: &'a [Event],
    /// Events at or below the mark: already committed.
    pub duplicates: u64,
}

/// Judges a valid batch against the store's mark `hwm`: all at or below
/// it, a duplicate; starting above `hwm + 1`, a gap; else the events above
/// the mark are fresh and the mark moves to the batch's last seq.
pub fn judge(hwm: Seq, b: &UpBatch) -> Judged<'_> {
    let n = b.events.len() as u64;
    if b.last <= hwm {
        return Judged {
            verdict: Verdict::Duplicate { hwm },
            fresh: &[],
            duplicates: n,
        };
    }
    if b.first > hwm.next() {
        return Judged {
            verdict: Verdict::Gap { hwm },
            fresh: &[],
            duplicates: 0,
        };
    }
    let skip = b.events.iter().take_while(|e| e.seq <= hwm).count();
    let fresh = &b.events[skip..];
    Judged {
        verdict: Verdict::Committed {
            hwm: b.last,
            applied: fresh.len() as u64,
        },
        fresh,
        duplicates: skip as u64,
    }
}

/// A stock movement caused by edge events: one per group, location, SKU
/// and kind, with the seq range of the events behind it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Movement {
    /// The store's location.
    pub location: String,
    /// The product.
    pub sku: String,
    /// Signed base units.
    pub delta: i64,
    /// Why.
    pub kind: MovementKind,
    /// The store whose events caused it.
    pub store: String,
    /// The first event's seq.
    pub seq_from: i64,
    /// The last event's seq.
    pub seq_to: i64,
}

/// A device's latest health report in a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceUpdate {
    /// The store.
    pub store: String,
    /// The device.
    pub device: String,
    /// Scanner, scale...
    pub kind: String,
    /// Its status.
    pub status: String,
    /// What it said.
    pub detail: String,
    /// Errors it counted.
    pub errors: i64,
    /// When it said it, ms.
    pub seen_ms: i64,
}

/// Something a store reported that does not add up (stored, flagged,
/// never blocking the stream).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Discrepancy {
    /// The store.
    pub store: String,
    /// The event's seq.
    pub seq: i64,
    /// `unknown_sku`, `price_mismatch`, `totals_mismatch`,
    /// `void_unknown_sale`, `effects_not_applied`.
    pub kind: &'static str,
    /// For people.
    pub detail: String,
}

/// A store sale, to be written as an order.
#[derive(Debug, Clone, Copy)]
pub struct StoreSale<'a> {
    /// The store.
    pub store: &'a StoreId,
    /// The event's seq.
    pub seq: i64,
    /// The sale.
    pub sale: &'a Sale,
}

/// What the database says about what a group names.
#[derive(Debug, Clone, Default)]
pub struct Facts {
    /// The SKUs the catalog has.
    pub known: HashSet<String>,
    /// Price rows of the SKUs named.
    pub prices: Vec<Price>,
    /// Stores' regions.
    pub regions: HashMap<String, String>,
    /// On-hand levels (store, SKU) that counts need (see [`count_levels`]).
    pub levels: HashMap<(String, String), i64>,
    /// Lines (SKU, base units) of earlier sales voided with a restock in
    /// this group (see [`earlier_sales`]), by sale id.
    pub earlier_sales: HashMap<Vec<u8>, Vec<(String, i64)>>,
    /// What was paid for the sales refunds in this group name (see
    /// [`refunded_sales`]), by (store, sale id); sales earlier in the group
    /// are added as they are planned.
    pub paid: HashMap<(String, Vec<u8>), Vec<Paid>>,
    /// The payments the hub took for lanes (card authorisations, gift-card
    /// debits) that online tenders in this group name (see
    /// [`online_keys`]), by payment key.
    pub issued: HashMap<String, Issued>,
}

/// A tender of a sale, as refunds are checked against it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paid {
    /// The payment's id.
    pub id: String,
    /// How it was paid.
    pub method: PaymentMethod,
    /// The card or gift-card token.
    pub token: Option<String>,
    /// ISO currency.
    pub currency: String,
    /// The amount paid.
    pub amount: i64,
    /// Refunded so far.
    pub refunded: i64,
}

/// A payment the hub took for a lane, as an online tender must match it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issued {
    /// The store whose lane asked.
    pub store: Option<String>,
    /// Card or gift card.
    pub method: PaymentMethod,
    /// Where it is (authorised, or captured for a gift card).
    pub status: PaymentStatus,
    /// The authorisation id the lane was given.
    pub provider_ref: Option<String>,
    /// Amount, minor units.
    pub amount: i64,
    /// ISO currency.
    pub currency: String,
    /// Already attached to a sale.
    pub attached: bool,
}

/// Whether an online tender of `store` matches what the hub issued; the
/// reason if not.
fn check_online(
    store: &str,
    t: &Tender,
    auth_id: &str,
    gift: bool,
    issued: Option<&Issued>,
) -> Result<(), String> {
    let key = &t.payment_key;
    let Some(i) = issued else {
        return Err(format!(
            "online tender {key} names no authorisation the hub issued"
        ));
    };
    let method = if gift {
        PaymentMethod::GiftCard
    } else {
        PaymentMethod::Card
    };
    let live = if gift {
        i.status == PaymentStatus::Captured
    } else {
        i.status == PaymentStatus::Authorized
    };
    if i.store.as_deref() != Some(store) {
        Err(format!(
            "online tender {key} names an authorisation of another store"
        ))
    } else if i.method != method || i.provider_ref.as_deref() != Some(auth_id) {
        Err(format!(
            "online tender {key} does not match the authorisation the hub issued"
        ))
    } else if i.amount != t.amount.minor || i.currency != t.amount.currency.as_str() {
        Err(format!(
            "online tender {key} is {} but the hub authorised {} {}",
            t.amount, i.amount, i.currency
        ))
    } else if !live || i.attached {
        Err(format!(
            "online tender {key} names an authorisation that is {} or already used",
            i.status
        ))
    } else {
        Ok(())
    }
}

/// Finds the tender of the sale a card or gift-card refund goes back to,
/// and checks the refund fits in what is left of it; returns the payment's
/// index in `paid`, or why the refund is refused.
fn check_refund(paid: Option<&Vec<Paid>>, t: &Tender) -> Result<usize, String> {
    let (method, token) = match &t.method {
        TenderMethod::Card(c) => (PaymentMethod::Card, c.card.token.as_str()),
        TenderMethod::GiftCard(c) => (PaymentMethod::GiftCard, c.card.token.as_str()),
        TenderMethod::Cash { .. } => return Err("cash is not refunded through the hub".into()),
    };
    let Some(paid) = paid else {
        return Err(format!("refund {} names no sale of this store", t.payment_key));
    };
    if t.amount.minor <= 0 {
        return Err(format!(
            "refund {} of {} is not positive",
            t.payment_key, t.amount
        ));
    }
    let candidates = paid
        .iter()
        .enumerate()
        .filter(|(_, p)| p.method == method && p.token.as_deref() == Some(token));
    let mut seen = false;
    for (i, p) in candidates {
        seen = true;
        if p.currency != t.amount.currency.as_str() {
            continue;
        }
        if t.amount.minor <= p.amount.saturating_sub(p.refunded) {
            return Ok(i);
        }
    }
    Err(if seen {
        format!(
            "refund {} of {} is more than is left of that tender of the sale",
            t.payment_key, t.amount
        )
    } else {
        format!(
            "refund {} goes to a card the sale was not paid with",
            t.payment_key
        )
    })
}

/// Everything a group does, to be written in its transaction.
#[derive(Debug, Clone, Default)]
pub struct Effects<'a> {
    /// Stock movements (non-zero).
    pub movements: Vec<Movement>,
    /// Discrepancies.
    pub discrepancies: Vec<Discrepancy>,
    /// Latest device reports.
    pub devices: Vec<DeviceUpdate>,
    /// Store sales, as orders.
    pub sales: Vec<StoreSale<'a>>,
    /// Payment rows from tenders and refunds.
    pub payments: Vec<NewPayment>,
    /// Amounts refunded from earlier payments (payment id, amount).
    pub refunded: Vec<(String, i64)>,
    /// Sales voided at the till (order ids).
    pub voided_sales: Vec<String>,
    /// Lane voids of card payments (store, payment key).
    pub payment_voids: Vec<(&'a StoreId, String)>,
    /// Task progress.
    pub task_updates: Vec<(&'a StoreId, &'a TaskUpdate)>,
}

/// The SKUs an event names.
pub fn skus(body: &EventBody) -> Vec<&str> {
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

/// The (store, SKU) levels a group's counts need.
pub fn count_levels(fresh: &[(&StoreId, &Event)]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    let mut seen = HashSet::new();
    for (store, e) in fresh {
        if let EventBody::StockCounted(c) = &e.body {
            for l in &c.lines {
                let key = (store.to_string(), l.sku.to_string());
                if seen.insert(key.clone()) {
                    out.push(key);
                }
            }
        }
    }
    out
}

/// The ids of the sales a group holds.
fn sales_in_group(fresh: &[(&StoreId, &Event)]) -> HashSet<Vec<u8>> {
    fresh
        .iter()
        .filter_map(|(_, e)| match &e.body {
            EventBody::Sale(s) => Some(s.sale_id.to_bytes().to_vec()),
            _ => None,
        })
        .collect()
}

/// The sales (store, sale id) voided with a restock in a group whose sale
/// is not in the group: their lines come from the database.
pub fn earlier_sales<'a>(fresh: &[(&'a StoreId, &Event)]) -> Vec<(&'a StoreId, Vec<u8>)> {
    let in_group = sales_in_group(fresh);
    fresh
        .iter()
        .filter_map(|(store, e)| match &e.body {
            EventBody::SaleVoided(v) if v.restock && !in_group.contains(&v.sale_id.to_bytes()[..]) => {
                Some((*store, v.sale_id.to_bytes().to_vec()))
            }
            _ => None,
        })
        .collect()
}

/// The sales (store, sale id) that card or gift-card refunds in a group go
/// back to, not themselves in the group: their payments come from the
/// database.
pub fn refunded_sales<'a>(fresh: &[(&'a StoreId, &Event)]) -> Vec<(&'a StoreId, Vec<u8>)> {
    let in_group = sales_in_group(fresh);
    let by_card = |ts: &[Tender]| ts.iter().any(|t| !matches!(t.method, TenderMethod::Cash { .. }));
    let mut out: Vec<(&'a StoreId, Vec<u8>)> = Vec::new();
    for (store, e) in fresh {
        let sale = match &e.body {
            EventBody::SaleVoided(v) if by_card(&v.refunds) => Some(v.sale_id),
            EventBody::Return(r) if by_card(&r.refunds) => r.original_sale,
            _ => None,
        };
        if let Some(id) = sale.map(|i| i.to_bytes().to_vec())
            && !in_group.contains(&id)
            && !out.iter().any(|(s, i)| s == store && *i == id)
        {
            out.push((*store, id));
        }
    }
    out
}

/// The payment keys of a group's online card and gift-card tenders.
pub fn online_keys(fresh: &[(&StoreId, &Event)]) -> Vec<String> {
    fresh
        .iter()
        .filter_map(|(_, e)| match &e.body {
            EventBody::Sale(s) => Some(s.tenders.iter()),
            _ => None,
        })
        .flatten()
        .filter(|t| match &t.method {
            TenderMethod::Card(c) | TenderMethod::GiftCard(c) => matches!(c.auth, CardAuth::Online { .. }),
            TenderMethod::Cash { .. } => false,
        })
        .map(|t| t.payment_key.to_string())
        .collect()
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

/// The stock movements of a group, summed per location, SKU and kind.
#[derive(Default)]
struct Moves(BTreeMap<(String, String, MovementKind), Movement>);

impl Moves {
    fn push(
        &mut self,
        levels: &mut HashMap<(String, String), i64>,
        loc: &str,
        seq: i64,
        sku: &str,
        delta: i64,
        kind: MovementKind,
    ) {
        if delta == 0 {
            return;
        }
        let level = levels.entry((loc.to_owned(), sku.to_owned())).or_insert(0);
        *level = level.saturating_add(delta);
        let m = self
            .0
            .entry((loc.to_owned(), sku.to_owned(), kind))
            .or_insert_with(|| Movement {
                location: loc.to_owned(),
                sku: sku.to_owned(),
                delta: 0,
                kind,
                store: loc.to_owned(),
                seq_from: seq,
                seq_to: seq,
            });
        m.delta = m.delta.saturating_add(delta);
        m.seq_from = m.seq_from.min(seq);
        m.seq_to = m.seq_to.max(seq);
    }
}

/// Plans the effects of a group's fresh events, in seq order within each
/// store. `facts.levels` is updated as the plan books movements (a count
/// after a sale in the same group counts against the level after it).
pub fn plan<'a>(fresh: &[(&'a StoreId, &'a Event)], facts: &mut Facts) -> Effects<'a> {
    let mut fx = Effects::default();
    let mut moves = Moves::default();
    let mut devices: BTreeMap<(String, String), DeviceUpdate> = BTreeMap::new();
    let mut sale_lines: HashMap<Vec<u8>, Vec<(String, i64)>> = HashMap::new();
    for &(store, e) in fresh {
        let seq = e.seq.0 as i64;
        let loc = store.as_str();
        let mut flag = |kind: &'static str, detail: String| {
            fx.discrepancies.push(Discrepancy {
                store: loc.to_owned(),
                seq,
                kind,
                detail,
            });
        };
        for sku in skus(&e.body) {
            if !facts.known.contains(sku) {
                flag(
                    "unknown_sku",
                    format!(
                        "{} names SKU {sku}, which the catalog does not have",
                        e.body.kind()
                    ),
                );
            }
        }
        let removed: Vec<&str> = e
            .body
            .free_text()
            .into_iter()
            .filter(|(_, t)| *t == storegate_protocol::pan::REDACTED)
            .map(|(field, _)| field)
            .collect();
        if !removed.is_empty() {
            flag(
                "card_data_removed",
                format!(
                    "{} arrived with card data in {}; removed before it was stored",
                    e.body.kind(),
                    removed.join(", ")
                ),
            );
        }
        match &e.body {
            EventBody::Sale(s) => {
                let region = facts.regions.get(loc).map(String::as_str);
                for l in &s.lines {
                    if facts.known.contains(l.sku.as_str())
                        && let Some(p) =
                            effective_price(&facts.prices, l.sku.as_str(), loc, region, s.completed_at_ms)
                        && (p.price_minor != l.unit_price.minor
                            || p.currency != l.unit_price.currency.as_str())
                    {
                        flag(
                            "price_mismatch",
                            format!(
                                "line {} sold {} at {} but the catalog price is {} {}",
                                l.line_no, l.sku, l.unit_price, p.price_minor, p.currency
                            ),
                        );
                    }
                }
                let lines_total = s.lines.iter().fold(0i64, |a, l| a.saturating_add(l.total.minor));
                let basket = s
                    .basket_discounts
                    .iter()
                    .fold(0i64, |a, d| a.saturating_add(d.amount.minor));
                let expected = if s.tax_included {
                    lines_total.saturating_sub(basket)
                } else {
                    lines_total
                        .saturating_sub(basket)
                        .saturating_add(s.totals.tax.minor)
                };
                if expected != s.totals.total.minor {
                    flag(
                        "totals_mismatch",
                        format!(
                            "lines add up to {expected} but the sale total is {}",
                            s.totals.total.minor
                        ),
                    );
                }
                sale_lines.insert(
                    s.sale_id.to_bytes().to_vec(),
                    s.lines
                        .iter()
                        .map(|l| (l.sku.to_string(), l.qty.base_units()))
                        .collect(),
                );
                for (sku, delta) in e.body.stock_deltas() {
                    moves.push(
                        &mut facts.levels,
                        loc,
                        seq,
                        sku.as_str(),
                        delta,
                        MovementKind::Sale,
                    );
                }
                let id = s.sale_id.to_string();
                let sale = s.sale_id.to_bytes();
                for t in &s.tenders {
                    if let Err(why) = check_tender(loc, t, &s.totals.total, &facts.issued) {
                        flag(
                            "payment_refused",
                            format!("sale {}: {why}; no payment recorded", s.sale_id),
                        );
                        continue;
                    }
                    // An authorisation pays for one tender.
                    if let Some(i) = facts.issued.get_mut(&t.payment_key.to_string()) {
                        i.attached = true;
                    }
                    let row = tender_row(store, Some(&id), Some(&sale), t, false);
                    if row.method != PaymentMethod::Cash {
                        facts
                            .paid
                            .entry((loc.to_owned(), sale.to_vec()))
                            .or_default()
                            .push(Paid {
                                id: row.id.clone(),
                                method: row.method,
                                token: row.card_token.clone(),
                                currency: row.amount.currency.as_str().to_owned(),
                                amount: row.amount.minor,
                                refunded: 0,
                            });
                    }
                    fx.payments.push(row);
                }
                fx.sales.push(StoreSale { store, seq, sale: s });
            }
            EventBody::SaleVoided(v) => {
                if v.restock {
                    // The sale came earlier in seq order: in this group or before.
                    let key = v.sale_id.to_bytes().to_vec();
                    let lines = sale_lines
                        .get(&key)
                        .or_else(|| facts.earlier_sales.get(&key))
                        .cloned()
                        .unwrap_or_default();
                    if lines.is_empty() {
                        flag(
                            "void_unknown_sale",
                            format!("void of sale {} which this store never synced", v.sale_id),
                        );
                    }
                    for (sku, qty) in lines {
                        moves.push(&mut facts.levels, loc, seq, &sku, qty, MovementKind::Void);
                    }
                }
                let id = v.sale_id.to_string();
                let sale = Some(v.sale_id.to_bytes().to_vec());
                for t in &v.refunds {
                    match refund_row(store, Some(&id), sale.as_deref(), t, facts, &mut fx.refunded) {
                        Ok(row) => fx.payments.push(row),
                        Err(why) => flag(
                            "refund_refused",
                            format!("void of sale {}: {why}; no money moved", v.sale_id),
                        ),
                    }
                }
                fx.voided_sales.push(id);
            }
            EventBody::StockCounted(c) => {
                for l in &c.lines {
                    let level = facts
                        .levels
                        .get(&(loc.to_owned(), l.sku.to_string()))
                        .copied()
                        .unwrap_or(0);
                    moves.push(
                        &mut facts.levels,
                        loc,
                        seq,
                        l.sku.as_str(),
                        l.counted.saturating_sub(level),
                        MovementKind::Count,
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
                    (loc.to_owned(), h.device.to_string()),
                    DeviceUpdate {
                        store: loc.to_owned(),
                        device: h.device.to_string(),
                        kind: name(serde_json::to_value(h.kind)),
                        status: name(serde_json::to_value(h.status)),
                        detail: h.detail.clone(),
                        errors: i64::from(h.error_count),
                        seen_ms: e.recorded_at_ms,
                    },
                );
            }
            EventBody::Return(r) => {
                let id = r.original_sale.map(|s| s.to_string());
                let sale = r.original_sale.map(|s| s.to_bytes().to_vec());
                for t in &r.refunds {
                    match refund_row(store, id.as_deref(), sale.as_deref(), t, facts, &mut fx.refunded) {
                        Ok(row) => fx.payments.push(row),
                        Err(why) => flag(
                            "refund_refused",
                            format!("return {}: {why}; no money moved", r.return_id),
                        ),
                    }
                }
                for (sku, delta) in e.body.stock_deltas() {
                    moves.push(
                        &mut facts.levels,
                        loc,
                        seq,
                        sku.as_str(),
                        delta,
                        MovementKind::Return,
                    );
                }
            }
            EventBody::PaymentVoided(v) => fx.payment_voids.push((store, v.payment_key.to_string())),
            EventBody::TaskUpdated(u) => fx.task_updates.push((store, u)),
            other => {
                let kind = movement_kind(other.kind());
                for (sku, delta) in other.stock_deltas() {
                    moves.push(&mut facts.levels, loc, seq, sku.as_str(), delta, kind);
                }
            }
        }
    }
    fx.movements = moves.0.into_values().filter(|m| m.delta != 0).collect();
    fx.devices = devices.into_values().collect();
    fx
}

/// The discrepancies of a group stored without its effects (after they
/// failed to apply): one per event that has any.
pub fn unapplied(fresh: &[(&StoreId, &Event)]) -> Vec<Discrepancy> {
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
}

/// Checks a sale's tender: a positive amount (cash may be zero) in the
/// sale's currency; an online card or gift-card tender must match what the
/// hub issued to this store's lane.
fn check_tender(
    store: &str,
    t: &Tender,
    total: &storegate_protocol::Money,
    issued: &HashMap<String, Issued>,
) -> Result<(), String> {
    if t.amount.currency != total.currency {
        return Err(format!(
            "tender {} is in {} but the sale in {}",
            t.payment_key, t.amount.currency, total.currency
        ));
    }
    match &t.method {
        TenderMethod::Cash { .. } if t.amount.minor >= 0 => Ok(()),
        _ if t.amount.minor <= 0 => Err(format!(
            "tender {} of {} is not positive",
            t.payment_key, t.amount
        )),
        TenderMethod::Cash { .. } => Ok(()),
        // Gift cards are debited online only: a store-and-forward gift card
        // would be money the hub never took, refundable to any card.
        TenderMethod::GiftCard(c) if matches!(c.auth, CardAuth::StoreAndForward { .. }) => Err(format!(
            "gift card tender {} was not debited online",
            t.payment_key
        )),
        TenderMethod::Card(c) | TenderMethod::GiftCard(c) => match &c.auth {
            CardAuth::StoreAndForward { .. } => Ok(()),
            CardAuth::Online { authorization_id, .. } => check_online(
                store,
                t,
                authorization_id,
                matches!(t.method, TenderMethod::GiftCard(_)),
                issued.get(&t.payment_key.to_string()),
            ),
        },
    }
}

/// The payment row of a refund in a void or return, checked: cash as it
/// is (the store paid it out); a card or gift-card refund only back to a
/// tender of the sale it names, of this store, in its currency, and at most
/// what is left of it (which it then takes).
fn refund_row(
    store: &StoreId,
    order_id: Option<&str>,
    sale: Option<&[u8]>,
    t: &Tender,
    facts: &mut Facts,
    refunded: &mut Vec<(String, i64)>,
) -> Result<NewPayment, String> {
    let mut row = tender_row(store, order_id, None, t, true);
    if let TenderMethod::Cash { .. } = t.method {
        if t.amount.minor < 0 {
            return Err(format!(
                "cash refund {} of {} is negative",
                t.payment_key, t.amount
            ));
        }
        return Ok(row);
    }
    let key = sale.map(|s| (store.to_string(), s.to_vec()));
    let paid = key.as_ref().and_then(|k| facts.paid.get_mut(k));
    let i = check_refund(paid.as_deref(), t)?;
    let p = &mut paid.expect("check_refund found the sale")[i];
    p.refunded = p.refunded.saturating_add(t.amount.minor);
    row.parent_id = Some(p.id.clone());
    refunded.push((p.id.clone(), t.amount.minor));
    Ok(row)
}

/// The payment row a tender (or a refund) makes.
fn tender_row(
    store: &StoreId,
    order_id: Option<&str>,
    sale_id: Option<&[u8]>,
    t: &Tender,
    refund: bool,
) -> NewPayment {
    let key = t.payment_key.to_string();
    let mut row = NewPayment {
        id: key.clone(),
        key,
        order_id: order_id.map(str::to_owned),
        store_id: Some(store.to_string()),
        sale_id: sale_id.map(<[u8]>::to_vec),
        method: PaymentMethod::Cash,
        status: PaymentStatus::Captured,
        amount: t.amount,
        captured: 0,
        card_token: None,
        card_last4: None,
        provider_ref: None,
        offline: false,
        parent_id: None,
        detail: String::new(),
    };
    match &t.method {
        TenderMethod::Cash { .. } if refund => row.status = PaymentStatus::Refunded,
        TenderMethod::Cash { .. } => row.captured = t.amount.minor,
        TenderMethod::Card(c) | TenderMethod::GiftCard(c) => {
            let gift = matches!(t.method, TenderMethod::GiftCard(_));
            row.method = if gift {
                PaymentMethod::GiftCard
            } else {
                PaymentMethod::Card
            };
            match &c.auth {
                CardAuth::Online {
                    authorization_id,
                    auth_code,
                } => {
                    row.provider_ref = Some(authorization_id.clone());
                    row.detail = auth_code.clone();
                }
                CardAuth::StoreAndForward { .. } => {
                    row.detail = "store-and-forward".to_owned();
                    row.offline = true;
                }
            }
            (row.status, row.captured) = if refund {
                (PaymentStatus::RefundPending, 0)
            } else if gift && !row.offline {
                // Taken off the balance when the lane asked.
                (PaymentStatus::Captured, t.amount.minor)
            } else {
                (PaymentStatus::PendingCapture, 0)
            };
            row.card_token = Some(c.card.token.as_str().to_owned());
            row.card_last4 = Some(c.card.last4.as_str().to_owned());
        }
    }
    row
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

    #[test]
    fn a_batch_is_judged_against_the_mark() {
        let mut b = samples::sale_batch(3, 1);
        for (i, e) in b.events.iter_mut().enumerate() {
            e.seq = Seq(5 + i as u64);
        }
        (b.first, b.last) = (Seq(5), Seq(7));
        assert_eq!(judge(Seq(7), &b).verdict, Verdict::Duplicate { hwm: Seq(7) });
        assert_eq!(judge(Seq(9), &b).duplicates, 3);
        assert_eq!(judge(Seq(3), &b).verdict, Verdict::Gap { hwm: Seq(3) });
        assert!(judge(Seq(3), &b).fresh.is_empty());
        let j = judge(Seq(5), &b);
        assert_eq!(
            j.verdict,
            Verdict::Committed {
                hwm: Seq(7),
                applied: 2
            }
        );
        assert_eq!(
            (j.fresh.len(), j.duplicates),
            (2, 1),
            "an overlap keeps only what is new"
        );
        assert_eq!(judge(Seq(4), &b).fresh.len(), 3);
        assert_eq!(
            Verdict::Gap { hwm: Seq(3) }.reply(),
            Message::ResendRequest(ResendRequest { from: Seq(4) })
        );
    }

    #[test]
    fn the_plan_of_a_group_books_each_kind_once_per_sku_and_flags_what_does_not_add_up() {
        let b = samples::sale_batch(3, 1);
        let store = StoreId::parse("s1").unwrap();
        let fresh: Vec<(&StoreId, &Event)> = b.events.iter().map(|e| (&store, e)).collect();
        let mut facts = Facts::default();
        let fx = plan(&fresh, &mut facts);
        assert_eq!(fx.sales.len(), 3);
        assert_eq!(
            fx.payments.len(),
            3,
            "each sale's cash tender becomes a payment, not its unissued card"
        );
        assert!(
            fx.discrepancies
                .iter()
                .all(|d| d.kind == "unknown_sku" || d.kind == "payment_refused"),
            "an empty catalog knows no SKU, and the hub issued no authorisation: {:?}",
            fx.discrepancies
        );
        // One movement per (location, SKU, kind), the deltas summed over
        // the group, with the seq range behind it.
        let mut keys: Vec<_> = fx
            .movements
            .iter()
            .map(|m| (&m.location, &m.sku, m.kind))
            .collect();
        let n = keys.len();
        keys.dedup();
        assert_eq!(keys.len(), n);
        for m in &fx.movements {
            assert_eq!(m.kind, MovementKind::Sale);
            assert!(m.delta < 0 && m.seq_from >= 1 && m.seq_to <= 3);
        }
        let total: i64 = fx.movements.iter().map(|m| m.delta).sum();
        let sold: i64 = fresh
            .iter()
            .flat_map(|(_, e)| e.body.stock_deltas())
            .map(|(_, d)| d)
            .sum();
        assert_eq!(total, sold);
        // The levels facts were advanced by the plan.
        for m in &fx.movements {
            assert_eq!(facts.levels[&(m.location.clone(), m.sku.clone())], m.delta);
        }
        assert!(unapplied(&fresh).iter().all(|d| d.kind == "effects_not_applied"));
        assert_eq!(unapplied(&fresh).len(), 3);
    }

    /// Money from stores: an online tender needs the hub's authorisation
    /// for that store; a refund goes back only to a tender of the sale it
    /// names, in its currency, up to what is left; violations move nothing
    /// and are flagged.
    #[test]
    fn money_from_stores_is_checked_against_what_the_hub_issued_and_what_was_paid() {
        use storegate_protocol::event::{
            CardPayment, CardRef, CardToken, Last4, Return, ReturnLine, SaleVoid,
        };
        use storegate_protocol::{Currency, EventId, Money, Qty};
        let a = StoreId::parse("store-a").unwrap();
        let card = |token: &str, auth: CardAuth| {
            TenderMethod::Card(CardPayment {
                card: CardRef {
                    token: CardToken::parse(token).unwrap(),
                    last4: Last4::parse("1111").unwrap(),
                    brand: None,
                },
                auth,
            })
        };
        let online = || CardAuth::Online {
            authorization_id: "auth-1".into(),
            auth_code: "OK".into(),
        };
        let eur = |m| Money::new(m, Currency::EUR);
        let key = |n| EventId::from_parts(1, n);
        let mut sale = samples::sale(1);
        let total = sale.totals.total.minor;
        sale.sale_id = key(100);
        sale.tenders = vec![Tender {
            payment_key: key(1),
            amount: eur(total),
            method: card("tok_alice", online()),
        }];
        let issued = |store: &str, amount: i64| Issued {
            store: Some(store.into()),
            method: PaymentMethod::Card,
            status: PaymentStatus::Authorized,
            provider_ref: Some("auth-1".into()),
            amount,
            currency: "EUR".into(),
            attached: false,
        };
        let refund = |n, amount, token: &str| Tender {
            payment_key: key(n),
            amount: eur(amount),
            method: card(token, CardAuth::StoreAndForward { taken_at_ms: 0 }),
        };
        let ret = |n: u128, refunds: Vec<Tender>, original: Option<EventId>| {
            EventBody::Return(Return {
                return_id: key(200 + n),
                original_sale: original,
                lane: sale.lane.clone(),
                lines: vec![ReturnLine {
                    sku: sale.lines[0].sku.clone(),
                    qty: Qty::Each(1),
                    amount: eur(1),
                    tax: eur(0),
                    restock: true,
                }],
                refunds,
                reason: "changed mind".into(),
            })
        };
        let run = |issued_to: Issued, bodies: Vec<EventBody>| {
            let events: Vec<Event> = bodies
                .into_iter()
                .enumerate()
                .map(|(i, b)| samples::event(i as u64 + 1, b))
                .collect();
            let fresh: Vec<(&StoreId, &Event)> = events.iter().map(|e| (&a, e)).collect();
            let mut facts = Facts::default();
            facts.issued.insert(key(1).to_string(), issued_to);
            let fx = plan(&fresh, &mut facts);
            let kinds: Vec<&str> = fx
                .discrepancies
                .iter()
                .map(|d| d.kind)
                .filter(|k| *k != "unknown_sku")
                .collect();
            let moved: Vec<(i64, Option<String>)> = fx
                .payments
                .iter()
                .map(|p| (p.amount.minor, p.parent_id.clone()))
                .collect();
            (kinds, moved, fx.refunded)
        };

        // The sale with the hub's authorisation, then a refund of part of it.
        let (kinds, moved, refunded) = run(
            issued("store-a", total),
            vec![
                EventBody::Sale(sale.clone()),
                ret(1, vec![refund(2, 100, "tok_alice")], Some(sale.sale_id)),
            ],
        );
        assert!(kinds.is_empty(), "{kinds:?}");
        assert_eq!(moved, vec![(total, None), (100, Some(key(1).to_string()))]);
        assert_eq!(refunded, vec![(key(1).to_string(), 100)]);

        // Another store's authorisation, or another amount: no payment.
        for bad in [issued("store-b", total), issued("store-a", total + 1)] {
            let (kinds, moved, _) = run(bad, vec![EventBody::Sale(sale.clone())]);
            assert_eq!(kinds, vec!["payment_refused"]);
            assert!(moved.is_empty());
        }

        // Refunds: more than was paid, to another card, without a sale,
        // negative, twice past the total: refused, nothing moves.
        let cases = vec![
            ret(1, vec![refund(2, total + 1, "tok_alice")], Some(sale.sale_id)),
            ret(1, vec![refund(2, 100, "tok_mallory")], Some(sale.sale_id)),
            ret(1, vec![refund(2, 100, "tok_alice")], None),
            ret(1, vec![refund(2, -100, "tok_alice")], Some(sale.sale_id)),
            EventBody::SaleVoided(SaleVoid {
                sale_id: key(999),
                lane: sale.lane.clone(),
                reason: "x".into(),
                refunds: vec![refund(2, 100, "tok_alice")],
                restock: false,
            }),
        ];
        for bad in cases {
            let (kinds, moved, refunded) =
                run(issued("store-a", total), vec![EventBody::Sale(sale.clone()), bad]);
            assert_eq!(kinds, vec!["refund_refused"]);
            assert_eq!(moved.len(), 1, "only the sale's own payment");
            assert!(refunded.is_empty());
        }
        let (kinds, moved, _) = run(
            issued("store-a", total),
            vec![
                EventBody::Sale(sale.clone()),
                ret(1, vec![refund(2, total - 10, "tok_alice")], Some(sale.sale_id)),
                ret(2, vec![refund(3, 11, "tok_alice")], Some(sale.sale_id)),
            ],
        );
        assert_eq!(
            kinds,
            vec!["refund_refused"],
            "the second refund passes what is left"
        );
        assert_eq!(moved.len(), 2);
    }
}
