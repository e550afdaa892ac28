//! A demo catalog: products with real-looking GTINs, prices, a weighed
//! item, a deli item with price labels, and a promotion. Simulated stores
//! sell from it; the demo loads it into the hub.

use storegate_edge::barcode::{self, Decoded};
use storegate_protocol::downlink::{DownBody, DownItem, Price, Product, Promotion, PromotionRule};
use storegate_protocol::gtin::gs1_check_digit;
use storegate_protocol::{Currency, Gtin, Measure, Money, Seq, Sku};

/// One product of the demo catalog.
#[derive(Debug, Clone)]
pub struct DemoProduct {
    /// SKU.
    pub sku: &'static str,
    /// Name.
    pub name: &'static str,
    /// Price in cents (per item, or per kg).
    pub price: i64,
    /// Sold by weight.
    pub weighed: bool,
    /// The code a scanner reads for it (a GTIN, or a weight label).
    pub code: String,
}

fn gtin13(first12: String) -> String {
    let c = gs1_check_digit(first12.as_bytes());
    format!("{first12}{c}")
}

/// The demo products.
pub fn products() -> Vec<DemoProduct> {
    let items: [(&str, &str, i64); 16] = [
        ("MILK-1L", "Milk 1 l", 119),
        ("BREAD-WH", "White bread", 249),
        ("EGGS-10", "Eggs, 10", 329),
        ("COFFEE-500", "Coffee beans 500 g", 899),
        ("TEA-GREEN", "Green tea, 20 bags", 279),
        ("PASTA-500", "Spaghetti 500 g", 139),
        ("RICE-1K", "Rice 1 kg", 219),
        ("OLIVE-OIL", "Olive oil 0.75 l", 749),
        ("TOMATO-CAN", "Chopped tomatoes", 99),
        ("COLA-330", "Cola 330 ml", 120),
        ("WATER-15", "Still water 1.5 l", 69),
        ("CHOC-100", "Dark chocolate 100 g", 199),
        ("SOAP", "Hand soap", 249),
        ("TISSUES", "Tissues, 10 packs", 189),
        ("BATTERY-AA", "AA batteries, 4", 599),
        ("PENCIL-HB", "Pencil HB", 79),
    ];
    let mut out: Vec<DemoProduct> = items
        .iter()
        .enumerate()
        .map(|(i, (sku, name, price))| DemoProduct {
            sku,
            name,
            price: *price,
            weighed: false,
            code: gtin13(format!("40012345{:04}", i + 1)),
        })
        .collect();
    let layouts = barcode::default_layouts();
    out.push(DemoProduct {
        sku: "APPLES",
        name: "Apples",
        price: 299,
        weighed: true,
        // A weight label as the produce scale prints it (1.250 kg).
        code: barcode::encode_variable(&layouts[1], 42, 1250).unwrap_or_default(),
    });
    out.push(DemoProduct {
        sku: "BANANAS",
        name: "Bananas",
        price: 199,
        weighed: true,
        code: barcode::encode_variable(&layouts[1], 43, 980).unwrap_or_default(),
    });
    out
}

/// The product's GTIN: the code itself, or the item GTIN inside a
/// weight label.
pub fn gtin_of(p: &DemoProduct) -> Option<Gtin> {
    match barcode::decode(&p.code, &barcode::default_layouts()).map(|s| s.decoded) {
        Ok(Decoded::Gtin(g)) => Some(g),
        Ok(Decoded::Variable { item_gtin, .. }) => Gtin::parse(&item_gtin).ok(),
        Err(_) => None,
    }
}

/// Tax rate of a demo product, basis points.
pub fn tax_rate_bp(p: &DemoProduct) -> u32 {
    if p.sku == "SOAP" || p.sku == "BATTERY-AA" {
        2000
    } else {
        700
    }
}

/// The catalog as downlink bodies (products, prices, a 3-for-2 on cola).
pub fn downlink_bodies(currency: Currency) -> Vec<DownBody> {
    let mut bodies = Vec::new();
    for p in products() {
        let Ok(sku) = Sku::parse(p.sku) else { continue };
        let barcode = gtin_of(&p);
        bodies.push(DownBody::ProductUpsert(Product {
            sku: sku.clone(),
            name: p.name.into(),
            measure: if p.weighed { Measure::Grams } else { Measure::Each },
            tax_rate_bp: tax_rate_bp(&p),
            barcodes: barcode.into_iter().collect(),
            category: None,
            active: true,
        }));
        bodies.push(DownBody::PriceSet(Price {
            sku,
            price: Money::new(p.price, currency),
            effective_from_ms: 0,
            effective_to_ms: None,
        }));
    }
    if let Ok(cola) = Sku::parse("COLA-330") {
        bodies.push(DownBody::PromotionUpsert(Promotion {
            id: "COLA-3FOR2".into(),
            label: "Cola 3 for 2".into(),
            rule: PromotionRule::MultiBuy { buy: 3, pay: 2 },
            skus: vec![cola],
            starts_ms: 0,
            ends_ms: None,
        }));
    }
    bodies
}

/// The catalog as downlink items numbered from 1 (to load an edge's
/// replica directly when no hub is involved).
pub fn downlink_items(currency: Currency) -> Vec<DownItem> {
    downlink_bodies(currency)
        .into_iter()
        .enumerate()
        .map(|(i, body)| DownItem {
            seq: Seq(i as u64 + 1),
            body,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_demo_code_decodes_to_its_product() {
        let layouts = barcode::default_layouts();
        for p in products() {
            assert!(
                barcode::decode(&p.code, &layouts).is_ok(),
                "{}: {}",
                p.sku,
                p.code
            );
        }
        assert!(downlink_bodies(Currency::EUR).len() > 30);
    }
}
