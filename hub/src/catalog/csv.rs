//! The catalog's CSV format (import and export): products and prices.
//! An import is checked whole: any bad row refuses the file, naming every
//! bad row's line.

use std::collections::{BTreeSet, HashMap};

use serde::Serialize;
use utoipa::ToSchema;

use super::ProductView;
use crate::domain::Invalid;
use crate::domain::price::{Price, PriceInput, PriceScope, validate_price};
use crate::domain::product::{Measure, ProductInput, ValidProduct, validate_product};

/// Columns of the products CSV.
pub const PRODUCT_COLUMNS: [&str; 9] = [
    "sku",
    "name",
    "category",
    "supplier",
    "measure",
    "tax_rate_bp",
    "barcodes",
    "active",
    "attributes",
];

/// Columns of the prices CSV.
pub const PRICE_COLUMNS: [&str; 7] = [
    "sku",
    "scope",
    "scope_id",
    "price_minor",
    "currency",
    "effective_from_ms",
    "effective_to_ms",
];

/// A CSV row that could not be used.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RowError {
    /// 1-based line in the file (the header is line 1).
    pub line: u64,
    /// What is wrong.
    pub message: String,
}

/// One record's values by column (missing columns read as empty).
struct Record(HashMap<String, String>);

impl Record {
    fn get(&self, k: &str) -> String {
        self.0.get(k).cloned().unwrap_or_default()
    }

    fn opt(&self, k: &str) -> Option<String> {
        Some(self.get(k)).filter(|v| !v.is_empty())
    }

    fn num<T: std::str::FromStr>(&self, k: &str) -> Result<Option<T>, Invalid> {
        match self.opt(k) {
            None => Ok(None),
            Some(v) => v
                .parse()
                .map(Some)
                .map_err(|_| Invalid(format!("{k} {v:?} is not a whole number"))),
        }
    }
}

/// Reads `text` with a header of `columns` (including `sku`) and turns
/// each record into a `T` with `each`; every error is collected with its
/// line, and any error refuses the whole file.
fn parse<T>(
    text: &str,
    columns: &[&str],
    mut each: impl FnMut(&Record) -> Result<T, Invalid>,
) -> Result<Vec<T>, Vec<RowError>> {
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_reader(text.as_bytes());
    let header: Vec<String> = match reader.headers() {
        Ok(h) => h.iter().map(str::to_ascii_lowercase).collect(),
        Err(e) => {
            return Err(vec![RowError {
                line: 1,
                message: format!("header: {e}"),
            }]);
        }
    };
    let unknown: Vec<&String> = header.iter().filter(|h| !columns.contains(&h.as_str())).collect();
    if !unknown.is_empty() || !header.iter().any(|h| h == "sku") {
        return Err(vec![RowError {
            line: 1,
            message: format!("header must name columns from {columns:?} including sku; unknown: {unknown:?}"),
        }]);
    }
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for (i, rec) in reader.records().enumerate() {
        let line = i as u64 + 2;
        let result = rec.map_err(|e| Invalid(e.to_string())).and_then(|r| {
            // Card data in any cell but codes refuses the row (naming the
            // column, never the digits).
            for (column, cell) in header.iter().zip(r.iter()) {
                if !storegate_protocol::pan::CODE_KEYS.contains(&column.as_str())
                    && let Some(found) = storegate_protocol::pan::find(cell)
                {
                    return Err(Invalid(format!(
                        "{column} holds {found}: card data may not be stored"
                    )));
                }
            }
            each(&Record(
                header.iter().cloned().zip(r.iter().map(str::to_owned)).collect(),
            ))
        });
        match result {
            Ok(v) => out.push(v),
            Err(e) => errors.push(RowError { line, message: e.0 }),
        }
    }
    if errors.is_empty() { Ok(out) } else { Err(errors) }
}

/// Parses a products CSV into validated products.
pub fn parse_products_csv(text: &str) -> Result<Vec<ValidProduct>, Vec<RowError>> {
    let mut seen = BTreeSet::new();
    parse(text, &PRODUCT_COLUMNS, |r| {
        let sku = r.get("sku");
        if !seen.insert(sku.clone()) {
            return Err(Invalid(format!("SKU {sku} appears twice")));
        }
        let measure = match r.opt("measure") {
            None => Measure::Each,
            Some(m) => {
                Measure::parse(&m).map_err(|_| Invalid(format!("measure {m:?}: use `each` or `grams`")))?
            }
        };
        let input = ProductInput {
            name: r.get("name"),
            category: r.opt("category"),
            supplier: r.opt("supplier"),
            measure,
            tax_rate_bp: r
                .num("tax_rate_bp")?
                .ok_or_else(|| Invalid("tax_rate_bp is required".into()))?,
            barcodes: r
                .get("barcodes")
                .split([';', ' '])
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect(),
            active: !matches!(
                r.get("active").to_ascii_lowercase().as_str(),
                "0" | "false" | "no"
            ),
            attributes: match r.opt("attributes") {
                Some(a) => serde_json::from_str(&a).map_err(|e| Invalid(format!("attributes: {e}")))?,
                None => serde_json::json!({}),
            },
        };
        validate_product(&sku, input)
    })
}

/// Parses a prices CSV into checked price inputs.
pub fn parse_prices_csv(text: &str) -> Result<Vec<PriceInput>, Vec<RowError>> {
    parse(text, &PRICE_COLUMNS, |r| {
        let scope = match r.opt("scope") {
            None => PriceScope::All,
            Some(s) => PriceScope::parse(&s)
                .map_err(|_| Invalid(format!("scope {s:?}: use `all`, `region` or `location`")))?,
        };
        let p = PriceInput {
            sku: r.get("sku"),
            scope,
            scope_id: r.get("scope_id"),
            price_minor: r
                .num("price_minor")?
                .ok_or_else(|| Invalid("price_minor is required".into()))?,
            currency: r.get("currency"),
            effective_from_ms: r.num("effective_from_ms")?,
            effective_to_ms: r.num("effective_to_ms")?,
        };
        validate_price(&p)?;
        Ok(p)
    })
}

/// `columns` then each record, as CSV text.
fn write<const N: usize>(columns: [&str; N], records: impl IntoIterator<Item = [String; N]>) -> String {
    let mut w = csv::Writer::from_writer(Vec::new());
    let _ = w.write_record(columns);
    for r in records {
        let _ = w.write_record(r);
    }
    String::from_utf8(w.into_inner().unwrap_or_default()).unwrap_or_default()
}

/// Products in the import format.
pub(super) fn products(all: Vec<ProductView>) -> String {
    write(
        PRODUCT_COLUMNS,
        all.into_iter().map(|p| {
            [
                p.sku,
                p.name,
                p.category.unwrap_or_default(),
                p.supplier.unwrap_or_default(),
                p.measure.as_str().to_owned(),
                p.tax_rate_bp.to_string(),
                p.barcodes.join(";"),
                u8::from(p.active).to_string(),
                p.attributes.to_string(),
            ]
        }),
    )
}

/// Price rows in the import format.
pub(super) fn prices(all: Vec<Price>) -> String {
    write(
        PRICE_COLUMNS,
        all.into_iter().map(|p| {
            [
                p.sku,
                p.scope.as_str().to_owned(),
                p.scope_id,
                p.price_minor.to_string(),
                p.currency,
                p.effective_from_ms.to_string(),
                p.effective_to_ms.map(|t| t.to_string()).unwrap_or_default(),
            ]
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_import_checks_every_row_and_reports_lines() {
        let ok = "sku,name,measure,tax_rate_bp,barcodes,attributes\n\
                  MILK-1L,Milk 1 l,each,550,4001234500010,\"{\"\"weight_grams\"\": 1030}\"\n\
                  APPLE,Apples,grams,550,,\n";
        let products = parse_products_csv(ok).unwrap();
        assert_eq!(products.len(), 2);
        assert_eq!(products[0].gtins, vec!["04001234500010".to_string()]);
        assert_eq!(products[1].input.measure, Measure::Grams);
        let bad = "sku,name,measure,tax_rate_bp,barcodes\n\
                   A,Thing,each,550,4001234500011\n\
                   B,,each,550,\n\
                   C,Thing,litres,550,\n\
                   C,Thing,each,x,\n";
        let errors = parse_products_csv(bad).unwrap_err();
        let lines: Vec<u64> = errors.iter().map(|e| e.line).collect();
        assert_eq!(lines, vec![2, 3, 4, 5], "{errors:?}");
        assert!(errors[0].message.contains("barcode"));
        assert!(errors[2].message.contains("measure"));
        assert!(errors[3].message.contains("twice"));
        assert!(parse_products_csv("name\nx\n").is_err());
        let e = parse_products_csv("sku,name,tax_rate_bp\nA,pay 4111 1111 1111 1111,550\n").unwrap_err();
        assert!(
            e[0].message.contains("name holds") && !e[0].message.contains("4111"),
            "{e:?}"
        );
        let prices =
            parse_prices_csv("sku,scope,scope_id,price_minor,currency\nA,region,north,199,EUR\n").unwrap();
        assert_eq!(
            (prices[0].price_minor, prices[0].scope),
            (199, PriceScope::Region)
        );
        let errors = parse_prices_csv(
            "sku,scope,price_minor,currency\nA,region,199,EUR\nB,all,-1,EUR\nC,city,1,EUR\n",
        )
        .unwrap_err();
        assert_eq!(errors.len(), 3);
        assert!(errors[2].message.contains("scope \"city\""));
    }

    #[test]
    fn an_export_reads_back_as_the_same_import() {
        let p = parse_products_csv("sku,name,tax_rate_bp,barcodes\nA,\"Apples, red\",550,4001234500010\n")
            .unwrap();
        let view = ProductView {
            sku: p[0].sku.to_string(),
            name: p[0].input.name.clone(),
            category: None,
            supplier: None,
            measure: p[0].input.measure,
            tax_rate_bp: p[0].input.tax_rate_bp,
            barcodes: p[0].gtins.clone(),
            attributes: p[0].input.attributes.clone(),
            active: true,
            created_ms: 0,
            updated_ms: 0,
        };
        let again = parse_products_csv(&products(vec![view])).unwrap();
        assert_eq!(again[0].input.name, "Apples, red");
        assert_eq!(again[0].gtins, p[0].gtins);
    }
}
