//! Downlink applied in seq order, idempotently: the catalog replica,
//! stock levels, tasks, config and payment decisions.

use std::collections::HashSet;

use serde::Serialize;
use sqlx::SqliteTransaction;
use storegate_protocol::downlink::{DownBody, DownItem, PaymentOutcome};
use storegate_protocol::{Measure, Seq};

use super::writer::WriterState;
use super::{DownApplied, JournalError, now_ms};

fn postcard_bytes<T: Serialize>(v: &T) -> Vec<u8> {
    postcard::to_allocvec(v).expect("protocol types have known lengths and no fallible Serialize impls")
}

pub(super) async fn downlink(
    tx: &mut SqliteTransaction<'_>,
    st: &mut WriterState,
    items: &[DownItem],
) -> Result<DownApplied, JournalError> {
    let mut out = DownApplied::default();
    let mut sorted: Vec<&DownItem> = items.iter().collect();
    sorted.sort_by_key(|i| i.seq);
    let mut seen = HashSet::new();
    for item in sorted {
        if item.seq.0 <= st.down_applied || !seen.insert(item.seq) {
            out.duplicates += 1;
            continue;
        }
        if st.down_applied.checked_add(1) != Some(item.seq.0) {
            out.gap = true;
            break;
        }
        apply_down_item(tx, &item.body).await?;
        st.down_applied = item.seq.0;
        out.applied.push(item.body.clone());
    }
    out.applied_up_to = Seq(st.down_applied);
    Ok(out)
}

async fn apply_down_item(tx: &mut SqliteTransaction<'_>, body: &DownBody) -> Result<(), JournalError> {
    let now = now_ms();
    match body {
        DownBody::ProductUpsert(p) => {
            sqlx::query(
                "INSERT INTO products (sku, name, measure, tax_rate_bp, category, active) VALUES (?, ?, ?, ?, ?, ?) \
                 ON CONFLICT (sku) DO UPDATE SET name = excluded.name, measure = excluded.measure, \
                 tax_rate_bp = excluded.tax_rate_bp, category = excluded.category, active = excluded.active",
            )
            .bind(p.sku.as_str())
            .bind(p.name.as_str())
            .bind(match p.measure {
                Measure::Each => "each",
                Measure::Grams => "grams",
            })
            .bind(i64::from(p.tax_rate_bp))
            .bind(p.category.as_deref())
            .bind(i64::from(p.active))
            .execute(&mut **tx)
            .await?;
            sqlx::query("DELETE FROM barcodes WHERE sku = ?")
                .bind(p.sku.as_str())
                .execute(&mut **tx)
                .await?;
            for g in &p.barcodes {
                sqlx::query("INSERT INTO barcodes (gtin14, sku) VALUES (?, ?) ON CONFLICT (gtin14) DO UPDATE SET sku = excluded.sku")
                    .bind(g.to_gtin14())
                    .bind(p.sku.as_str())
                    .execute(&mut **tx)
                    .await?;
            }
        }
        DownBody::ProductRemoved { sku } => {
            sqlx::query("UPDATE products SET active = 0 WHERE sku = ?")
                .bind(sku.as_str())
                .execute(&mut **tx)
                .await?;
        }
        DownBody::PriceSet(p) => {
            sqlx::query(
                "INSERT INTO prices (sku, effective_from_ms, effective_to_ms, price_minor, currency) VALUES (?, ?, ?, ?, ?) \
                 ON CONFLICT (sku, effective_from_ms) DO UPDATE SET effective_to_ms = excluded.effective_to_ms, \
                 price_minor = excluded.price_minor, currency = excluded.currency",
            )
            .bind(p.sku.as_str())
            .bind(p.effective_from_ms)
            .bind(p.effective_to_ms)
            .bind(p.price.minor)
            .bind(p.price.currency.as_str())
            .execute(&mut **tx)
            .await?;
        }
        DownBody::PromotionUpsert(p) => {
            sqlx::query(
                "INSERT INTO promotions (id, starts_ms, ends_ms, body) VALUES (?, ?, ?, ?) \
                 ON CONFLICT (id) DO UPDATE SET starts_ms = excluded.starts_ms, ends_ms = excluded.ends_ms, body = excluded.body",
            )
            .bind(p.id.as_str())
            .bind(p.starts_ms)
            .bind(p.ends_ms)
            .bind(postcard_bytes(p))
            .execute(&mut **tx)
            .await?;
        }
        DownBody::PromotionRemoved { id } => {
            sqlx::query("DELETE FROM promotions WHERE id = ?")
                .bind(id.as_str())
                .execute(&mut **tx)
                .await?;
        }
        DownBody::StockLevel(l) => {
            sqlx::query(
                "INSERT INTO stock_levels (sku, on_hand, reserved, as_of_seq) VALUES (?, ?, ?, ?) \
                 ON CONFLICT (sku) DO UPDATE SET on_hand = excluded.on_hand, reserved = excluded.reserved, \
                 as_of_seq = excluded.as_of_seq WHERE excluded.as_of_seq >= stock_levels.as_of_seq",
            )
            .bind(l.sku.as_str())
            .bind(l.on_hand)
            .bind(l.reserved)
            .bind(l.as_of_edge_seq.0 as i64)
            .execute(&mut **tx)
            .await?;
            sqlx::query(
                "DELETE FROM stock_moves WHERE sku = ?1 AND seq <= (SELECT as_of_seq FROM stock_levels WHERE sku = ?1)",
            )
            .bind(l.sku.as_str())
            .execute(&mut **tx)
            .await?;
        }
        DownBody::TaskAssigned(t) => {
            sqlx::query(
                "INSERT INTO tasks (task_id, status, body, updated_ms) VALUES (?, 'assigned', ?, ?) \
                 ON CONFLICT (task_id) DO UPDATE SET body = excluded.body, updated_ms = excluded.updated_ms",
            )
            .bind(t.task_id.as_str())
            .bind(postcard_bytes(t))
            .bind(now)
            .execute(&mut **tx)
            .await?;
        }
        DownBody::TaskCancelled { task_id } => {
            sqlx::query("UPDATE tasks SET status = 'cancelled', updated_ms = ? WHERE task_id = ?")
                .bind(now)
                .bind(task_id.as_str())
                .execute(&mut **tx)
                .await?;
        }
        DownBody::Config(c) => {
            for e in &c.entries {
                sqlx::query("INSERT INTO config (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value")
                    .bind(e.key.as_str())
                    .bind(postcard_bytes(&e.value))
                    .execute(&mut **tx)
                    .await?;
            }
        }
        DownBody::PaymentDecision(d) => {
            let (status, detail) = match &d.outcome {
                PaymentOutcome::Captured { capture_id } => ("captured", capture_id.as_str()),
                PaymentOutcome::Declined { reason } => ("declined", reason.as_str()),
            };
            sqlx::query("UPDATE payments SET status = ?, detail = ? WHERE payment_key = ?")
                .bind(status)
                .bind(detail)
                .bind(d.payment_key.to_bytes().as_slice())
                .execute(&mut **tx)
                .await?;
        }
    }
    Ok(())
}
