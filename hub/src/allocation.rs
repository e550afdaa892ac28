//! Allocation: which location fulfils an online order.
//!
//! Candidates are the locations with enough available stock (for the whole
//! order, or per line when the order allows split shipments). The rules,
//! kept in `allocation_rules` and editable through the API, rank them: the
//! first rule that tells two candidates apart decides, and the location id
//! breaks remaining ties so that allocation is deterministic.

use std::cmp::Ordering;

use serde::{Deserialize, Serialize};
use sqlx::Row;
use utoipa::ToSchema;

use crate::db::Db;

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

/// The rules, in order.
pub async fn load(db: &Db) -> Result<Vec<Rule>, sqlx::Error> {
    let rows = sqlx::query("SELECT criterion, params FROM allocation_rules ORDER BY position")
        .fetch_all(&db.pool)
        .await?;
    let mut rules = Vec::new();
    for r in rows {
        let criterion: String = r.try_get(0)?;
        let params: String = r.try_get(1)?;
        let mut v: serde_json::Value =
            serde_json::from_str(&params).unwrap_or_else(|_| serde_json::json!({}));
        if let Some(o) = v.as_object_mut() {
            o.insert("criterion".into(), serde_json::Value::String(criterion.clone()));
        }
        match serde_json::from_value(v) {
            Ok(rule) => rules.push(rule),
            Err(e) => tracing::warn!(criterion, error = %e, "allocation rule unreadable; skipped"),
        }
    }
    Ok(rules)
}

/// Replaces the rules.
pub async fn save(db: &Db, actor: &str, rules: &[Rule]) -> Result<(), sqlx::Error> {
    let mut tx = db.begin().await?;
    sqlx::query("DELETE FROM allocation_rules")
        .execute(&mut *tx)
        .await?;
    for (i, rule) in rules.iter().enumerate() {
        let mut v = serde_json::to_value(rule).unwrap_or_default();
        let criterion = v
            .as_object_mut()
            .and_then(|o| o.remove("criterion"))
            .and_then(|c| c.as_str().map(str::to_owned))
            .unwrap_or_default();
        sqlx::query("INSERT INTO allocation_rules (position, criterion, params) VALUES ($1, $2, $3)")
            .bind(i as i64 + 1)
            .bind(criterion)
            .bind(v.to_string())
            .execute(&mut *tx)
            .await?;
    }
    crate::audit::record(
        &mut tx,
        actor,
        "allocation_rules_saved",
        "allocation_rules",
        "all",
        serde_json::to_value(rules).unwrap_or_default(),
    )
    .await?;
    tx.commit().await
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
}
