//! Prices, pure: scopes (chain, region, location), the price in force at
//! a place and time, and the schedule a store gets.
//!
//! The most specific scope wins (location beats region beats chain), then
//! the latest start. Price rows are append-only; each store gets its own
//! schedule: one `PriceSet` per breakpoint, each ending at the next, so
//! every start a store ever received stays a breakpoint and is
//! overwritten with the right value on every change.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use storegate_protocol::downlink::{self as dl, DownBody};
use storegate_protocol::{Currency, Money, Sku};
use utoipa::ToSchema;

use super::Invalid;
use super::machine::states;

states! {
    /// Where a price applies.
    pub enum PriceScope: "price scope" {
        /// The whole chain.
        All = "all",
        /// One region's locations.
        Region = "region",
        /// One location.
        Location = "location",
    }
}

impl PriceScope {
    /// How specific it is (higher wins).
    fn rank(self) -> u8 {
        match self {
            PriceScope::All => 1,
            PriceScope::Region => 2,
            PriceScope::Location => 3,
        }
    }
}

/// A price as the API takes it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PriceInput {
    /// Product.
    pub sku: String,
    /// Where it applies.
    pub scope: PriceScope,
    /// Region or location id (omit for `all`).
    #[serde(default)]
    pub scope_id: String,
    /// Minor units, per item or per kilogram.
    pub price_minor: i64,
    /// ISO currency.
    pub currency: String,
    /// Start, ms since the epoch (default: now).
    pub effective_from_ms: Option<i64>,
    /// End (exclusive), if limited.
    pub effective_to_ms: Option<i64>,
}

/// A price row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct Price {
    /// Row id.
    pub id: i64,
    /// Product.
    pub sku: String,
    /// Where it applies.
    pub scope: PriceScope,
    /// Region or location id.
    pub scope_id: String,
    /// Minor units.
    pub price_minor: i64,
    /// ISO currency.
    pub currency: String,
    /// Start, ms.
    pub effective_from_ms: i64,
    /// End (exclusive), ms.
    pub effective_to_ms: Option<i64>,
}

impl Price {
    /// How specific it is at `location` (in `region`); `None` if it does
    /// not apply there.
    fn rank_at(&self, location: &str, region: Option<&str>) -> Option<u8> {
        let applies = match self.scope {
            PriceScope::All => true,
            PriceScope::Region => Some(self.scope_id.as_str()) == region,
            PriceScope::Location => self.scope_id == location,
        };
        applies.then(|| self.scope.rank())
    }

    fn in_force(&self, at: i64) -> bool {
        self.effective_from_ms <= at && self.effective_to_ms.is_none_or(|t| at < t)
    }
}

/// Checks a price input.
pub fn validate_price(p: &PriceInput) -> Result<(), Invalid> {
    let bad = |m: String| Err(Invalid(m));
    Sku::parse(p.sku.as_str()).map_err(|e| Invalid(format!("sku: {e}")))?;
    match (p.scope, p.scope_id.is_empty()) {
        (PriceScope::All, true) | (PriceScope::Region | PriceScope::Location, false) => {}
        (PriceScope::All, false) => return bad("scope `all` takes no scope_id".into()),
        (scope, true) => return bad(format!("scope `{scope}` needs a scope_id")),
    }
    if p.price_minor < 0 {
        return bad("price_minor must not be negative".into());
    }
    Currency::parse(&p.currency).map_err(|e| Invalid(format!("currency: {e}")))?;
    if let (Some(from), Some(to)) = (p.effective_from_ms, p.effective_to_ms)
        && to <= from
    {
        return bad("effective_to_ms must be after effective_from_ms".into());
    }
    Ok(())
}

/// The price of `sku` in force at `location` (in `region`) at time `at`:
/// the most specific scope wins, then the latest start.
pub fn effective_price<'a>(
    prices: &'a [Price],
    sku: &str,
    location: &str,
    region: Option<&str>,
    at: i64,
) -> Option<&'a Price> {
    prices
        .iter()
        .filter(|p| p.sku == sku && p.in_force(at))
        .filter_map(|p| Some((p.rank_at(location, region)?, p.effective_from_ms, p)))
        .max_by_key(|(rank, from, _)| (*rank, *from))
        .map(|(_, _, p)| p)
}

/// One segment of a store's price schedule: `price` from `from` until
/// `to`; `None` means no price in that segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    /// Start, ms.
    pub from: i64,
    /// End (exclusive), ms; `None` for the last.
    pub to: Option<i64>,
    /// Minor units and currency.
    pub price: Option<(i64, String)>,
}

/// The schedule of `sku` at `location` from the segment in force at `now`
/// onwards (see the module docs).
pub fn price_schedule(
    prices: &[Price],
    sku: &str,
    location: &str,
    region: Option<&str>,
    now: i64,
) -> Vec<Segment> {
    let points: BTreeSet<i64> = prices
        .iter()
        .filter(|p| p.sku == sku && p.rank_at(location, region).is_some())
        .flat_map(|p| std::iter::once(p.effective_from_ms).chain(p.effective_to_ms))
        .collect();
    let points: Vec<i64> = points.into_iter().collect();
    let start = points.iter().rposition(|&p| p <= now).unwrap_or(0);
    (start..points.len())
        .map(|i| Segment {
            from: points[i],
            to: points.get(i + 1).copied(),
            price: effective_price(prices, sku, location, region, points[i])
                .map(|p| (p.price_minor, p.currency.clone())),
        })
        .collect()
}

/// A schedule as downlink items: one `PriceSet` per segment (a segment
/// without a price is an empty range, never in force).
pub fn segment_items(sku: &Sku, segments: &[Segment], fallback: Currency) -> Vec<DownBody> {
    segments
        .iter()
        .map(|s| {
            let (price, to) = match &s.price {
                Some((minor, cur)) => (Money::new(*minor, Currency::parse(cur).unwrap_or(fallback)), s.to),
                None => (Money::zero(fallback), Some(s.from)),
            };
            DownBody::PriceSet(dl::Price {
                sku: sku.clone(),
                price,
                effective_from_ms: s.from,
                effective_to_ms: to,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(scope: PriceScope, id: &str, price: i64, from: i64, to: Option<i64>) -> Price {
        Price {
            id: 0,
            sku: "A".into(),
            scope,
            scope_id: id.into(),
            price_minor: price,
            currency: "EUR".into(),
            effective_from_ms: from,
            effective_to_ms: to,
        }
    }

    #[test]
    fn the_most_specific_effective_price_wins() {
        use PriceScope::*;
        let prices = vec![
            row(All, "", 100, 0, None),
            row(All, "", 120, 50, None),
            row(Region, "north", 110, 0, None),
            row(Location, "s1", 90, 0, Some(40)),
        ];
        let at = |loc, region, t| effective_price(&prices, "A", loc, region, t).map(|p| p.price_minor);
        assert_eq!(at("s1", Some("north"), 10), Some(90));
        assert_eq!(at("s1", Some("north"), 45), Some(110));
        assert_eq!(at("s2", None, 45), Some(100));
        assert_eq!(at("s2", None, 60), Some(120));
        assert!(effective_price(&prices, "B", "s2", None, 60).is_none());
    }

    #[test]
    fn a_schedule_resolves_scopes_per_store_and_keeps_every_breakpoint() {
        use PriceScope::*;
        let prices = vec![
            row(All, "", 100, 0, None),
            row(Location, "s1", 90, 10, Some(40)),
            row(All, "", 120, 50, None),
        ];
        // s1 at t=20: the location price is in force until 40, then the
        // chain price, then the new chain price from 50.
        let s = price_schedule(&prices, "A", "s1", None, 20);
        let seg = |from, to, price: i64| Segment {
            from,
            to,
            price: Some((price, "EUR".into())),
        };
        assert_eq!(
            s,
            vec![seg(10, Some(40), 90), seg(40, Some(50), 100), seg(50, None, 120)]
        );
        // s2 ignores s1's row.
        let s = price_schedule(&prices, "A", "s2", None, 20);
        assert_eq!(
            s.first().map(|x| (x.from, x.price.clone())),
            Some((0, Some((100, "EUR".into()))))
        );
        // A price that ends with nothing after it leaves an empty segment.
        let prices = vec![row(All, "", 100, 0, Some(30))];
        let s = price_schedule(&prices, "A", "s1", None, 5);
        assert_eq!(
            s[1],
            Segment {
                from: 30,
                to: None,
                price: None
            }
        );
        let items = segment_items(&Sku::parse("A").unwrap(), &s, Currency::parse("EUR").unwrap());
        assert!(matches!(&items[1], DownBody::PriceSet(p) if p.effective_to_ms == Some(30)));
    }

    #[test]
    fn price_inputs_are_checked() {
        let mut p = PriceInput {
            sku: "A".into(),
            scope: PriceScope::All,
            scope_id: String::new(),
            price_minor: 100,
            currency: "EUR".into(),
            effective_from_ms: Some(10),
            effective_to_ms: None,
        };
        assert_eq!(validate_price(&p), Ok(()));
        p.scope = PriceScope::Region;
        assert_eq!(
            validate_price(&p),
            Err(Invalid("scope `region` needs a scope_id".into()))
        );
        p.scope_id = "north".into();
        p.effective_to_ms = Some(10);
        assert!(validate_price(&p).is_err());
        p.effective_to_ms = None;
        p.price_minor = -1;
        assert!(validate_price(&p).is_err());
        p.price_minor = 0;
        p.currency = "euro".into();
        assert!(validate_price(&p).is_err());
    }
}
