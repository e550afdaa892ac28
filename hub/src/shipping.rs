//! Shipping: carriers, zones (region -> zone), rate tables (carrier, zone,
//! weight bracket -> price), shipments with tracking numbers and status
//! events.

use serde::{Deserialize, Serialize};
use sqlx::{Any, Row, Transaction};
use utoipa::ToSchema;

use crate::audit;
use crate::db::{Db, now_ms};

/// A carrier.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CarrierView {
    /// Key (`dhl`, `ups`...).
    #[serde(default)]
    pub id: String,
    /// Display name.
    pub name: String,
}

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

/// Saves a carrier.
pub async fn save_carrier(
    tx: &mut Transaction<'static, Any>,
    actor: &str,
    c: &CarrierView,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO carriers (id, name, created_ms) VALUES ($1, $2, $3) ON CONFLICT (id) DO UPDATE SET name = excluded.name",
    )
    .bind(c.id.as_str())
    .bind(crate::sql::text(&c.name))
    .bind(now_ms())
    .execute(&mut **tx)
    .await?;
    audit::record(
        tx,
        actor,
        "carrier_saved",
        "carrier",
        &c.id,
        serde_json::json!({"name": c.name}),
    )
    .await
}

/// Every carrier.
pub async fn carriers(db: &Db) -> Result<Vec<CarrierView>, sqlx::Error> {
    sqlx::query("SELECT id, name FROM carriers ORDER BY id")
        .fetch_all(&db.pool)
        .await?
        .iter()
        .map(|r| {
            Ok(CarrierView {
                id: r.try_get(0)?,
                name: r.try_get(1)?,
            })
        })
        .collect()
}

/// Maps a region to a zone.
pub async fn save_zone(
    tx: &mut Transaction<'static, Any>,
    actor: &str,
    region: &str,
    zone: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO shipping_zones (region, zone) VALUES ($1, $2) ON CONFLICT (region) DO UPDATE SET zone = excluded.zone",
    )
    .bind(region)
    .bind(zone)
    .execute(&mut **tx)
    .await?;
    audit::record(
        tx,
        actor,
        "shipping_zone_saved",
        "region",
        region,
        serde_json::json!({"zone": zone}),
    )
    .await
}

/// Saves a rate (replacing the same carrier, zone and bracket).
pub async fn save_rate(
    tx: &mut Transaction<'static, Any>,
    actor: &str,
    r: &RateView,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO shipping_rates (carrier, zone, max_grams, price_minor, currency) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (carrier, zone, max_grams) DO UPDATE SET price_minor = excluded.price_minor, currency = excluded.currency",
    )
    .bind(r.carrier.as_str())
    .bind(r.zone.as_str())
    .bind(r.max_grams)
    .bind(r.price_minor)
    .bind(r.currency.as_str())
    .execute(&mut **tx)
    .await?;
    audit::record(
        tx,
        actor,
        "shipping_rate_saved",
        "carrier",
        &r.carrier,
        serde_json::to_value(r).unwrap_or_default(),
    )
    .await
}

/// Every rate.
pub async fn rates(db: &Db) -> Result<Vec<RateView>, sqlx::Error> {
    sqlx::query("SELECT carrier, zone, max_grams, price_minor, currency FROM shipping_rates ORDER BY carrier, zone, max_grams")
        .fetch_all(&db.pool)
        .await?
        .iter()
        .map(|r| {
            Ok(RateView {
                carrier: r.try_get(0)?,
                zone: r.try_get(1)?,
                max_grams: r.try_get(2)?,
                price_minor: r.try_get(3)?,
                currency: r.try_get(4)?,
            })
        })
        .collect()
}

/// Quotes per carrier for `grams` to `region`, cheapest first: each
/// carrier's smallest bracket that holds the weight. A region without a
/// zone uses zone `default`.
pub async fn quote(
    tx: &mut Transaction<'static, Any>,
    region: &str,
    grams: i64,
) -> Result<Vec<Quote>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT r.carrier, r.zone, r.price_minor, r.currency FROM shipping_rates r \
         WHERE r.zone = COALESCE((SELECT zone FROM shipping_zones WHERE region = $1), 'default') \
         AND r.max_grams >= $2 ORDER BY r.carrier, r.max_grams",
    )
    .bind(region)
    .bind(grams)
    .fetch_all(&mut **tx)
    .await?;
    let mut out: Vec<Quote> = Vec::new();
    for r in rows {
        let carrier: String = r.try_get(0)?;
        if out.iter().any(|q| q.carrier == carrier) {
            continue;
        }
        out.push(Quote {
            carrier,
            zone: r.try_get(1)?,
            price_minor: r.try_get(2)?,
            currency: r.try_get(3)?,
        });
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
    /// label_created, in_transit, delivered, exception.
    pub status: String,
    /// Price charged, minor units.
    pub price_minor: i64,
    /// ISO currency.
    pub currency: String,
    /// Status events, oldest first.
    pub events: Vec<ShipmentEvent>,
    /// Created, ms.
    pub created_ms: i64,
}

/// One status event.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ShipmentEvent {
    /// New status.
    pub status: String,
    /// Where (depot, city).
    #[serde(default)]
    pub place: String,
    /// When, ms.
    #[serde(default)]
    pub at_ms: i64,
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

/// Creates a shipment (status `label_created`).
pub async fn create(
    tx: &mut Transaction<'static, Any>,
    order_id: &str,
    from: &str,
    q: &Quote,
) -> Result<String, sqlx::Error> {
    let id = crate::auth::new_id();
    let now = now_ms();
    sqlx::query(
        "INSERT INTO shipments (id, order_id, carrier, tracking, from_location, status, price_minor, currency, created_ms, updated_ms) \
         VALUES ($1, $2, $3, $4, $5, 'label_created', $6, $7, $8, $8)",
    )
    .bind(id.as_str())
    .bind(order_id)
    .bind(q.carrier.as_str())
    .bind(tracking_number(&q.carrier, &id))
    .bind(from)
    .bind(q.price_minor)
    .bind(q.currency.as_str())
    .bind(now)
    .execute(&mut **tx)
    .await?;
    sqlx::query("INSERT INTO shipment_events (shipment_id, status, place, at_ms) VALUES ($1, 'label_created', $2, $3)")
        .bind(id.as_str())
        .bind(from)
        .bind(now)
        .execute(&mut **tx)
        .await?;
    Ok(id)
}

/// Shipments of an order (or one by id).
pub async fn list(
    db: &Db,
    order_id: Option<&str>,
    id: Option<&str>,
) -> Result<Vec<ShipmentView>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT id, order_id, carrier, tracking, from_location, status, price_minor, currency, created_ms FROM shipments \
         WHERE ($1 = '' OR order_id = $1) AND ($2 = '' OR id = $2) ORDER BY created_ms, id LIMIT 100",
    )
    .bind(order_id.unwrap_or(""))
    .bind(id.unwrap_or(""))
    .fetch_all(&db.pool)
    .await?;
    let mut out = Vec::new();
    for r in rows {
        let id: String = r.try_get(0)?;
        let events = sqlx::query(
            "SELECT status, place, at_ms FROM shipment_events WHERE shipment_id = $1 ORDER BY id",
        )
        .bind(id.as_str())
        .fetch_all(&db.pool)
        .await?
        .iter()
        .map(|e| {
            Ok(ShipmentEvent {
                status: e.try_get(0)?,
                place: e.try_get(1)?,
                at_ms: e.try_get(2)?,
            })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
        out.push(ShipmentView {
            id,
            order_id: r.try_get(1)?,
            carrier: r.try_get(2)?,
            tracking: r.try_get(3)?,
            from_location: r.try_get(4)?,
            status: r.try_get(5)?,
            price_minor: r.try_get(6)?,
            currency: r.try_get(7)?,
            events,
            created_ms: r.try_get(8)?,
        });
    }
    Ok(out)
}

/// Allowed status moves.
pub fn allowed(from: &str, to: &str) -> bool {
    matches!(
        (from, to),
        ("label_created", "in_transit" | "exception")
            | ("in_transit", "in_transit" | "delivered" | "exception")
            | ("exception", "in_transit" | "delivered")
    )
}

/// Records a status event; returns `(order_id, from_location, old status)`
/// or `None` if there is no such shipment.
pub async fn add_event(
    tx: &mut Transaction<'static, Any>,
    db: &Db,
    id: &str,
    e: &ShipmentEvent,
) -> Result<Option<Result<(String, String, String), String>>, sqlx::Error> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT order_id, from_location, status FROM shipments WHERE id = $1{}",
        db.for_update()
    )))
    .bind(id)
    .fetch_optional(&mut **tx)
    .await?;
    let Some(row) = row else { return Ok(None) };
    let (order, from, old): (String, String, String) = (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?);
    if !allowed(&old, &e.status) {
        return Ok(Some(Err(format!(
            "a shipment cannot go from {old} to {}",
            e.status
        ))));
    }
    let now = now_ms();
    sqlx::query("UPDATE shipments SET status = $2, updated_ms = $3 WHERE id = $1")
        .bind(id)
        .bind(e.status.as_str())
        .bind(now)
        .execute(&mut **tx)
        .await?;
    sqlx::query("INSERT INTO shipment_events (shipment_id, status, place, at_ms) VALUES ($1, $2, $3, $4)")
        .bind(id)
        .bind(e.status.as_str())
        .bind(crate::sql::text(&e.place))
        .bind(if e.at_ms > 0 { e.at_ms } else { now })
        .execute(&mut **tx)
        .await?;
    Ok(Some(Ok((order, from, old))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracking_numbers_are_stable_and_prefixed() {
        let t = tracking_number("dhl-express", "01ABC");
        assert_eq!(t, tracking_number("dhl-express", "01ABC"));
        assert!(t.starts_with("DHL") && t.len() == 15);
        assert!(allowed("label_created", "in_transit"));
        assert!(!allowed("delivered", "in_transit"));
    }
}
