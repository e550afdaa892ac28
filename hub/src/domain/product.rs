//! The catalog's rules, pure: what makes a product, a promotion, a
//! supplier or a category valid, and how they travel to the stores.

use serde::{Deserialize, Serialize};
use storegate_protocol::downlink::{self as dl, PromotionRule};
use storegate_protocol::{Gtin, Sku};
use utoipa::ToSchema;

use super::Invalid;
use super::machine::states;

states! {
    /// How a product is sold.
    #[derive(Default)]
    pub enum Measure: "measure" {
        /// Counted, priced per item.
        #[default]
        Each = "each",
        /// Weighed, priced per kilogram, quantities in grams.
        Grams = "grams",
    }
}

impl Measure {
    /// As stores get it.
    pub fn to_down(self) -> storegate_protocol::Measure {
        match self {
            Measure::Each => storegate_protocol::Measure::Each,
            Measure::Grams => storegate_protocol::Measure::Grams,
        }
    }
}

fn empty_object() -> serde_json::Value {
    serde_json::json!({})
}

fn yes() -> bool {
    true
}

/// A product as the API takes it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ProductInput {
    /// Name for tills, receipts and the web shop.
    pub name: String,
    /// Category id.
    pub category: Option<String>,
    /// Supplier id.
    pub supplier: Option<String>,
    /// Counted (`each`) or weighed (`grams`; prices are per kilogram).
    #[serde(default)]
    pub measure: Measure,
    /// Tax rate in basis points (2000 = 20%).
    pub tax_rate_bp: u32,
    /// Barcodes (EAN-8, UPC-A, EAN-13, GTIN-14), check digits verified.
    #[serde(default)]
    pub barcodes: Vec<String>,
    /// Free attributes (`weight_grams` is used for shipping).
    #[serde(default = "empty_object")]
    #[schema(value_type = Object)]
    pub attributes: serde_json::Value,
    /// False: may not be sold.
    #[serde(default = "yes")]
    pub active: bool,
}

/// A checked product input.
#[derive(Debug, Clone)]
pub struct ValidProduct {
    /// The SKU.
    pub sku: Sku,
    /// What was asked.
    pub input: ProductInput,
    /// Its barcodes as GTIN-14, sorted, once each.
    pub gtins: Vec<String>,
}

/// Most bytes in a product's name.
pub const MAX_NAME: usize = 200;
/// The highest tax rate, basis points (100%).
pub const MAX_TAX_BP: u32 = 10_000;

/// Checks a product input.
pub fn validate_product(sku: &str, input: ProductInput) -> Result<ValidProduct, Invalid> {
    let sku = Sku::parse(sku).map_err(|e| Invalid(format!("sku: {e}")))?;
    if input.name.trim().is_empty() || input.name.len() > MAX_NAME {
        return Err(Invalid(format!("name must be 1 to {MAX_NAME} bytes")));
    }
    if input.tax_rate_bp > MAX_TAX_BP {
        return Err(Invalid(format!("tax_rate_bp is at most {MAX_TAX_BP} (100%)")));
    }
    if !input.attributes.is_object() {
        return Err(Invalid("attributes must be a JSON object".into()));
    }
    let mut gtins = Vec::new();
    for b in &input.barcodes {
        let g = Gtin::parse(b.trim()).map_err(|e| Invalid(format!("barcode {b:?}: {e}")))?;
        gtins.push(g.to_gtin14());
    }
    gtins.sort();
    gtins.dedup();
    Ok(ValidProduct { sku, input, gtins })
}

/// A promotion.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Promotion {
    /// Key.
    #[serde(default)]
    pub id: String,
    /// Receipt text.
    pub label: String,
    /// `{"PercentOff": {"bp": 1500}}`, `{"AmountOff": {"amount": {"minor": 50, "currency": "EUR"}}}`
    /// or `{"MultiBuy": {"buy": 3, "pay": 2}}`.
    #[schema(value_type = Object)]
    pub rule: PromotionRule,
    /// Products it applies to.
    pub skus: Vec<String>,
    /// Start, ms.
    pub starts_ms: i64,
    /// End, ms.
    pub ends_ms: Option<i64>,
    /// False once removed.
    #[serde(default = "yes")]
    pub active: bool,
}

impl Promotion {
    /// As stores get it (`None` if a SKU is malformed).
    pub fn to_down(&self) -> Option<dl::Promotion> {
        Some(dl::Promotion {
            id: self.id.clone(),
            label: self.label.clone(),
            rule: self.rule.clone(),
            skus: self
                .skus
                .iter()
                .map(|s| Sku::parse(s.as_str()))
                .collect::<Result<_, _>>()
                .ok()?,
            starts_ms: self.starts_ms,
            ends_ms: self.ends_ms,
        })
    }

    /// Checks it: an id, a label, a rule that gives something without
    /// giving everything away, SKUs, and an end after its start. Returns
    /// it as stores get it.
    pub fn validate(&self) -> Result<dl::Promotion, Invalid> {
        let bad = |m: &str| Err(Invalid(m.to_owned()));
        if self.id.is_empty() || self.id.len() > 64 {
            return bad("id must be 1 to 64 bytes");
        }
        if self.label.trim().is_empty() {
            return bad("label must not be empty");
        }
        match &self.rule {
            PromotionRule::PercentOff { bp } if *bp == 0 || *bp > 10_000 => {
                return bad("PercentOff.bp must be 1 to 10000");
            }
            PromotionRule::AmountOff { amount } if amount.minor <= 0 => {
                return bad("AmountOff.amount must be positive");
            }
            PromotionRule::MultiBuy { buy, pay } if *pay >= *buy || *pay == 0 => {
                return bad("MultiBuy needs 0 < pay < buy");
            }
            PromotionRule::PercentOff { .. }
            | PromotionRule::AmountOff { .. }
            | PromotionRule::MultiBuy { .. } => {}
        }
        if self.skus.is_empty() {
            return bad("a promotion needs at least one SKU");
        }
        if let Some(end) = self.ends_ms
            && end <= self.starts_ms
        {
            return bad("ends_ms must be after starts_ms");
        }
        self.to_down().ok_or_else(|| Invalid("a SKU is malformed".into()))
    }
}

/// Checks a supplier's or category's id and name.
pub fn validate_named(id: &str, name: &str) -> Result<(), Invalid> {
    if id.is_empty()
        || id.len() > 64
        || !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        return Err(Invalid(
            "id: 1 to 64 characters of A-Z, a-z, 0-9, '-', '_', '.'".into(),
        ));
    }
    if name.trim().is_empty() {
        return Err(Invalid("name must not be empty".into()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input() -> ProductInput {
        serde_json::from_value(serde_json::json!({"name": "Milk", "tax_rate_bp": 550, "barcodes": ["4001234500010", "04001234500010"]})).unwrap()
    }

    #[test]
    fn products_are_checked_and_barcodes_kept_once_as_gtin14() {
        let p = validate_product("MILK-1L", input()).unwrap();
        assert_eq!(p.gtins, vec!["04001234500010".to_string()]);
        assert_eq!(
            (p.input.measure, p.input.active),
            (Measure::Each, true),
            "defaults"
        );
        let mut bad = input();
        bad.barcodes = vec!["4001234500011".into()];
        assert!(validate_product("A", bad).unwrap_err().0.contains("barcode"));
        let mut bad = input();
        bad.tax_rate_bp = 10_001;
        assert!(validate_product("A", bad).is_err());
        let mut bad = input();
        bad.attributes = serde_json::json!([]);
        assert!(validate_product("A", bad).is_err());
        assert!(validate_product("bad/sku", input()).is_err());
        assert!(
            serde_json::from_value::<ProductInput>(
                serde_json::json!({"name": "x", "tax_rate_bp": 0, "measure": "litres"})
            )
            .is_err()
        );
    }

    #[test]
    fn promotions_give_something_without_giving_everything() {
        let mut p = Promotion {
            id: "p1".into(),
            label: "10% off".into(),
            rule: PromotionRule::PercentOff { bp: 1000 },
            skus: vec!["A".into()],
            starts_ms: 0,
            ends_ms: Some(10),
            active: true,
        };
        assert!(p.validate().is_ok());
        p.rule = PromotionRule::MultiBuy { buy: 2, pay: 2 };
        assert_eq!(p.validate().unwrap_err().0, "MultiBuy needs 0 < pay < buy");
        p.rule = PromotionRule::PercentOff { bp: 10_001 };
        assert!(p.validate().is_err());
        p.rule = PromotionRule::PercentOff { bp: 1 };
        p.ends_ms = Some(0);
        assert!(p.validate().is_err());
        p.ends_ms = None;
        p.skus = vec!["bad/sku".into()];
        assert_eq!(p.validate().unwrap_err().0, "a SKU is malformed");
    }

    #[test]
    fn named_ids_are_url_safe() {
        assert!(validate_named("dairy-1", "Dairy").is_ok());
        assert!(validate_named("a/b", "x").is_err());
        assert!(validate_named("a", " ").is_err());
    }
}
