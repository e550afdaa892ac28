//! Allocation, pure: which location fulfils an online order.
//!
//! Candidates are the locations with enough available stock (for the whole
//! order, or per line when the order allows split shipments). The rules,
//! kept in `allocation_rules` and editable through the API, rank them: the
//! first rule that tells two candidates apart decides, and the location id
//! breaks remaining ties so that allocation is deterministic.

use std::cmp::Ordering;

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};
use storegate_protocol::Sku;
use utoipa::ToSchema;

/// One ranking rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "criterion", rename_all = "snake_case")]
pub enum Rule {
    /// Locations in the order's region first.
    SameRegion,
    /// Locations of this kind (`warehouse` or `store`) first.
    Kind {
        /// The kind preferred.
        prefer: String,
    },
    /// Locations in this order first (unlisted ones after, as equals).
    LocationPriority {
        /// Location ids, best first.
        order: Vec<String>,
    },
    /// The location with the most available stock first.
    MostStock,
}

/// A location that could fulfil (part of) an order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// Location id.
    pub location: String,
    /// `store` or `warehouse`.
    pub kind: String,
    /// Its region.
    pub region: Option<String>,
    /// Available stock of what is asked (the smallest line's, for a
    /// whole-order candidate).
    pub available: i64,
}

fn by_rule(rule: &Rule, region: Option<&str>, a: &Candidate, b: &Candidate) -> Ordering {
    // `true` sorts first.
    let first = |x: bool, y: bool| y.cmp(&x);
    match rule {
        Rule::SameRegion => {
            let r = |c: &Candidate| region.is_some() && c.region.as_deref() == region;
            first(r(a), r(b))
        }
        Rule::Kind { prefer } => first(&a.kind == prefer, &b.kind == prefer),
        Rule::LocationPriority { order } => {
            let pos = |c: &Candidate| order.iter().position(|l| *l == c.location).unwrap_or(usize::MAX);
            pos(a).cmp(&pos(b))
        }
        Rule::MostStock => b.available.cmp(&a.available),
    }
}

/// Sorts candidates best first.
pub fn rank(rules: &[Rule], region: Option<&str>, candidates: &mut [Candidate]) {
    candidates.sort_by(|a, b| {
        rules
            .iter()
            .map(|r| by_rule(r, region, a, b))
            .find(|o| o.is_ne())
            .unwrap_or_else(|| a.location.cmp(&b.location))
    });
}

/// What one location holds of the SKUs asked for.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Holding {
    /// `store` or `warehouse`.
    pub kind: String,
    /// Its region.
    pub region: Option<String>,
    /// Available (on hand minus reserved) by SKU; missing means none.
    pub available: HashMap<Sku, i64>,
}

impl Holding {
    fn has(&self, sku: &Sku) -> i64 {
        self.available.get(sku).copied().unwrap_or(0)
    }

    fn candidate(&self, location: &str, available: i64) -> Candidate {
        Candidate {
            location: location.to_owned(),
            kind: self.kind.clone(),
            region: self.region.clone(),
            available,
        }
    }
}

/// What an order asks of allocation.
#[derive(Debug, Clone, Copy)]
pub struct Ask<'a> {
    /// Merged lines (one per SKU).
    pub lines: &'a [(Sku, i64)],
    /// The only location that may serve it (click and collect).
    pub only_at: Option<&'a str>,
    /// The region it ships to.
    pub region: Option<&'a str>,
    /// Whether lines may come from different locations.
    pub allow_split: bool,
}

/// No location (or set of locations) can serve an order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct OutOfStock(pub String);

/// Plans where each line of `ask` comes from, given what every location
/// holds: the best-ranked location holding the whole order, or, if splits
/// are allowed (and it is not a collection), the best per line. Returns a
/// location per line.
pub fn plan(
    rules: &[Rule],
    stock: &BTreeMap<String, Holding>,
    ask: Ask<'_>,
) -> Result<Vec<String>, OutOfStock> {
    let allowed = |loc: &str| ask.only_at.is_none_or(|c| c == loc);
    let mut whole: Vec<Candidate> = stock
        .iter()
        .filter(|(loc, _)| allowed(loc))
        .filter_map(|(loc, h)| {
            let min = ask.lines.iter().map(|(sku, qty)| h.has(sku) - qty).min()?;
            (min >= 0).then(|| h.candidate(loc, min))
        })
        .collect();
    rank(rules, ask.region, &mut whole);
    if let Some(best) = whole.first() {
        return Ok(vec![best.location.clone(); ask.lines.len()]);
    }
    let short = || {
        let missing: Vec<String> = ask
            .lines
            .iter()
            .filter(|(sku, qty)| !stock.iter().any(|(loc, h)| allowed(loc) && h.has(sku) >= *qty))
            .map(|(sku, qty)| format!("{sku} x{qty}"))
            .collect();
        OutOfStock(if missing.is_empty() {
            "not enough stock in any one location; allow_split lets lines come from several".to_owned()
        } else {
            format!(
                "out of stock{}: {}",
                ask.only_at.map(|c| format!(" at {c}")).unwrap_or_default(),
                missing.join(", ")
            )
        })
    };
    if !ask.allow_split || ask.only_at.is_some() {
        return Err(short());
    }
    let mut out = Vec::with_capacity(ask.lines.len());
    for (sku, qty) in ask.lines {
        let mut cands: Vec<Candidate> = stock
            .iter()
            .filter(|(_, h)| h.has(sku) >= *qty)
            .map(|(loc, h)| h.candidate(loc, h.has(sku)))
            .collect();
        rank(rules, ask.region, &mut cands);
        match cands.first() {
            Some(c) => out.push(c.location.clone()),
            None => return Err(short()),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(location: &str, kind: &str, region: &str, available: i64) -> Candidate {
        Candidate {
            location: location.into(),
            kind: kind.into(),
            region: Some(region.into()),
            available,
        }
    }

    #[test]
    fn the_first_rule_that_differs_decides() {
        let mut cands = vec![
            c("s1", "store", "north", 50),
            c("w1", "warehouse", "south", 10),
            c("w2", "warehouse", "north", 5),
            c("w3", "warehouse", "north", 7),
        ];
        let rules = vec![
            Rule::SameRegion,
            Rule::Kind {
                prefer: "warehouse".into(),
            },
            Rule::MostStock,
        ];
        rank(&rules, Some("north"), &mut cands);
        let order: Vec<&str> = cands.iter().map(|c| c.location.as_str()).collect();
        assert_eq!(order, vec!["w3", "w2", "s1", "w1"]);
        rank(
            &[Rule::LocationPriority {
                order: vec!["w1".into()],
            }],
            None,
            &mut cands,
        );
        assert_eq!(cands[0].location, "w1");
        // No rules: by id.
        rank(&[], None, &mut cands);
        assert_eq!(cands[0].location, "s1");
    }

    #[test]
    fn rules_read_as_tagged_json() {
        let r: Rule = serde_json::from_str(r#"{"criterion":"kind","prefer":"store"}"#).unwrap();
        assert_eq!(
            r,
            Rule::Kind {
                prefer: "store".into()
            }
        );
        assert!(serde_json::from_str::<Rule>(r#"{"criterion":"cheapest"}"#).is_err());
    }

    fn sku(s: &str) -> Sku {
        Sku::parse(s).unwrap()
    }

    fn holding(kind: &str, region: &str, items: &[(&str, i64)]) -> Holding {
        Holding {
            kind: kind.into(),
            region: Some(region.into()),
            available: items.iter().map(|(s, n)| (sku(s), *n)).collect(),
        }
    }

    #[test]
    fn a_whole_order_comes_from_one_location_if_any_holds_it() {
        let stock: BTreeMap<String, Holding> = [
            ("s1".to_owned(), holding("store", "north", &[("A", 5), ("B", 1)])),
            (
                "w1".to_owned(),
                holding("warehouse", "south", &[("A", 50), ("B", 50)]),
            ),
        ]
        .into();
        let lines = [(sku("A"), 2), (sku("B"), 1)];
        let ask = Ask {
            lines: &lines,
            only_at: None,
            region: Some("north"),
            allow_split: false,
        };
        assert_eq!(
            plan(&[Rule::SameRegion], &stock, ask),
            Ok(vec!["s1".into(), "s1".into()])
        );
        assert_eq!(
            plan(&[Rule::MostStock], &stock, ask),
            Ok(vec!["w1".into(), "w1".into()])
        );
        let lines = [(sku("A"), 2), (sku("B"), 2)];
        let ask = Ask {
            lines: &lines,
            only_at: Some("s1"),
            ..ask
        };
        assert_eq!(
            plan(&[], &stock, ask),
            Err(OutOfStock("out of stock at s1: B x2".into())),
            "a collection is served by its store only"
        );
    }

    #[test]
    fn split_orders_take_each_line_from_the_best_location_that_has_it() {
        let stock: BTreeMap<String, Holding> = [
            ("s1".to_owned(), holding("store", "north", &[("A", 5)])),
            ("w1".to_owned(), holding("warehouse", "south", &[("B", 3)])),
        ]
        .into();
        let lines = [(sku("A"), 5), (sku("B"), 3)];
        let mut ask = Ask {
            lines: &lines,
            only_at: None,
            region: None,
            allow_split: false,
        };
        assert_eq!(
            plan(&[], &stock, ask).unwrap_err().0,
            "not enough stock in any one location; allow_split lets lines come from several"
        );
        ask.allow_split = true;
        assert_eq!(plan(&[], &stock, ask), Ok(vec!["s1".into(), "w1".into()]));
        let lines = [(sku("A"), 6), (sku("B"), 3)];
        ask.lines = &lines;
        assert_eq!(
            plan(&[], &stock, ask),
            Err(OutOfStock("out of stock: A x6".into()))
        );
    }
}
