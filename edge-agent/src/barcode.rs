//! Barcode decoding: what a scanned string means. Pure; no I/O.
//!
//! - An optional AIM symbology identifier (`]E0` EAN-13, `]E4` EAN-8,
//!   `]E0` UPC-A as EAN-13, `]C1` GS1-128, ...) is stripped and kept.
//! - 8, 12, 13 and 14 digits are GTINs with their GS1 check digit.
//! - 13 digits starting 20-29 are GS1 variable-measure (restricted
//!   circulation) codes when the store configured a layout for the prefix:
//!   `PP IIIII V VVVV C` or `PP IIIII VVVVV C`, with a weight or a price in
//!   the value field and,
//!   optionally, a price/measure verifier digit `V` (GS1 General
//!   Specifications 7.9.3, four-digit fields). Five-digit value fields are
//!   supported without a verifier digit.
//!
//! Every failure says why: wrong length, non-digits, a check digit that does
//! not match, a verifier digit that does not match, an unconfigured prefix.

use serde::{Deserialize, Serialize};
use storegate_protocol::gtin::{Gtin, GtinError, gs1_check_digit};

/// What a variable-measure code carries in its value field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VariableValue {
    /// A weight; `decimals` places after the kilogram (3: grams).
    Weight {
        /// Decimal places of the kilogram value.
        decimals: u32,
    },
    /// A price in the store's currency; `decimals` places (2: cents).
    Price {
        /// Decimal places of the price.
        decimals: u32,
    },
}

/// The layout of one GS1 variable-measure prefix, as the retailer set it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VariableLayout {
    /// Two-digit prefix, 20 to 29.
    pub prefix: u8,
    /// Digits of item reference after the prefix (4 or 5).
    pub item_digits: usize,
    /// What the value field holds.
    pub value: VariableValue,
    /// Whether a 4-digit value field is preceded by a verifier digit.
    pub verifier: bool,
}

impl VariableLayout {
    fn value_digits(&self) -> usize {
        // 13 = 2 prefix + item + verifier + value + 1 check digit
        13 - 2 - self.item_digits - usize::from(self.verifier) - 1
    }

    /// Checks the layout adds up to 13 digits with a sensible value field.
    pub fn validate(&self) -> Result<(), String> {
        if !(20..=29).contains(&self.prefix) {
            return Err(format!(
                "prefix {} is not a variable-measure prefix (20-29)",
                self.prefix
            ));
        }
        if !(3..=6).contains(&self.item_digits) {
            return Err("item_digits must be 3 to 6".into());
        }
        let v = 13usize.saturating_sub(2 + self.item_digits + usize::from(self.verifier) + 1);
        if !(4..=5).contains(&v) {
            return Err(format!("the value field would have {v} digits; it needs 4 or 5"));
        }
        if self.verifier && v != 4 {
            return Err("a verifier digit is supported for 4-digit value fields only".into());
        }
        Ok(())
    }
}

/// The retailer's variable-measure layouts. The defaults are a common
/// European set: 21-24 weight in grams with a verifier, 25-29 price in cents
/// with a verifier, 20 a five-digit price without one.
pub fn default_layouts() -> Vec<VariableLayout> {
    let mut v = vec![VariableLayout {
        prefix: 20,
        item_digits: 5,
        value: VariableValue::Price { decimals: 2 },
        verifier: false,
    }];
    for p in 21..=24 {
        v.push(VariableLayout {
            prefix: p,
            item_digits: 5,
            value: VariableValue::Weight { decimals: 3 },
            verifier: true,
        });
    }
    for p in 25..=29 {
        v.push(VariableLayout {
            prefix: p,
            item_digits: 5,
            value: VariableValue::Price { decimals: 2 },
            verifier: true,
        });
    }
    v
}

/// A decoded scan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    /// A GTIN that names a product.
    Gtin(Gtin),
    /// A variable-measure code: an item and a weight or price.
    Variable {
        /// Prefix and item digits, zero-filled to a GTIN-13 with a zero value
        /// field: the key the catalog lists the item under.
        item_gtin: String,
        /// Weight in grams, for weight layouts.
        grams: Option<u32>,
        /// Price in minor units, for price layouts.
        price_minor: Option<i64>,
    },
}

/// A scan, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scan {
    /// The AIM symbology identifier, if the scanner sent one.
    pub symbology: Option<String>,
    /// What the code means.
    pub decoded: Decoded,
}

/// Why a scan was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BarcodeError {
    /// Empty after trimming.
    #[error("empty scan")]
    Empty,
    /// Not a GTIN.
    #[error("{code:?}: {source}")]
    Gtin {
        /// The code.
        code: String,
        /// Why.
        source: GtinError,
    },
    /// A variable-measure prefix the store has not configured.
    #[error("{0:?}: prefix {1} is a variable-measure prefix with no layout configured")]
    NoLayout(String, u8),
    /// The verifier digit does not match the value.
    #[error("{code:?}: the price/weight verifier digit is {found}, the value needs {expected}")]
    Verifier {
        /// The code.
        code: String,
        /// Digit in the code.
        found: u8,
        /// Digit the value needs.
        expected: u8,
    },
}

/// GS1 weighting "2-": the units digit of 2d, with the minus rule.
const W2_MINUS: [u8; 10] = [0, 2, 4, 6, 8, 9, 1, 3, 5, 7];
/// GS1 weighting "3": the units digit of 3d.
const W3: [u8; 10] = [0, 3, 6, 9, 2, 5, 8, 1, 4, 7];
/// GS1 weighting "5-".
const W5_MINUS: [u8; 10] = [0, 5, 9, 4, 8, 3, 7, 2, 6, 1];

/// The GS1 verifier digit of a 4-digit price or weight field (General
/// Specifications 7.9.3): weights 2-, 2-, 3, 5-; sum; times 3; units digit.
pub fn verifier_digit4(value: [u8; 4]) -> u8 {
    let sum = u32::from(W2_MINUS[value[0] as usize])
        + u32::from(W2_MINUS[value[1] as usize])
        + u32::from(W3[value[2] as usize])
        + u32::from(W5_MINUS[value[3] as usize]);
    ((sum * 3) % 10) as u8
}

/// Splits an AIM symbology identifier (`]` + 2 characters) off the front.
pub fn split_aim(raw: &str) -> (Option<&str>, &str) {
    if raw.starts_with(']') && raw.len() >= 3 && raw.is_char_boundary(3) {
        (Some(&raw[..3]), &raw[3..])
    } else {
        (None, raw)
    }
}

/// Decodes a scanned string with the store's variable-measure layouts.
pub fn decode(raw: &str, layouts: &[VariableLayout]) -> Result<Scan, BarcodeError> {
    let trimmed = raw.trim_matches(|c: char| c.is_whitespace() || c.is_control());
    let (aim, code) = split_aim(trimmed);
    if code.is_empty() {
        return Err(BarcodeError::Empty);
    }
    // The GTIN rules (digits, length, check digit) apply to every code.
    let gtin = Gtin::parse(code).map_err(|source| BarcodeError::Gtin {
        code: code.to_owned(),
        source,
    })?;
    let symbology = aim.map(str::to_owned);
    match gtin.prefix2() {
        Some(p) if (20..=29).contains(&p) => {
            let layout = layouts
                .iter()
                .find(|l| l.prefix == p)
                .ok_or_else(|| BarcodeError::NoLayout(code.to_owned(), p))?;
            let digits: Vec<u8> = code.bytes().map(|b| b - b'0').collect();
            let value_len = layout.value_digits();
            let value_start = 13 - 1 - value_len;
            let value = &digits[value_start..12];
            if layout.verifier {
                let found = digits[value_start - 1];
                let expected = verifier_digit4([value[0], value[1], value[2], value[3]]);
                if found != expected {
                    return Err(BarcodeError::Verifier {
                        code: code.to_owned(),
                        found,
                        expected,
                    });
                }
            }
            let number = value.iter().fold(0u64, |acc, d| acc * 10 + u64::from(*d));
            // The catalog key: prefix + item digits, value zeroed, valid check digit.
            let mut key: Vec<u8> = code.as_bytes()[..2 + layout.item_digits].to_vec();
            key.resize(12, b'0');
            let check = gs1_check_digit(&key);
            key.push(b'0' + check);
            let item_gtin = String::from_utf8(key).unwrap_or_default();
            let (grams, price_minor) = match layout.value {
                VariableValue::Weight { decimals } => {
                    // value is kg with `decimals` places; grams = value * 1000 / 10^decimals
                    let grams = (number * 1000) / 10u64.pow(decimals);
                    (Some(u32::try_from(grams).unwrap_or(u32::MAX)), None)
                }
                VariableValue::Price { decimals } => {
                    // minor units assume 2 decimals in the currency
                    let minor = if decimals >= 2 {
                        number / 10u64.pow(decimals - 2)
                    } else {
                        number * 10u64.pow(2 - decimals)
                    };
                    (None, Some(minor as i64))
                }
            };
            Ok(Scan {
                symbology,
                decoded: Decoded::Variable {
                    item_gtin,
                    grams,
                    price_minor,
                },
            })
        }
        _ => Ok(Scan {
            symbology,
            decoded: Decoded::Gtin(gtin),
        }),
    }
}

/// Builds a variable-measure code (for simulators, tests and label
/// printers): `item` digits after the prefix, the value, and the verifier
/// and check digits the layout needs.
pub fn encode_variable(layout: &VariableLayout, item: u32, value: u32) -> Result<String, String> {
    layout.validate()?;
    let value_len = layout.value_digits();
    let item_s = format!("{item:0width$}", width = layout.item_digits);
    let value_s = format!("{value:0width$}", width = value_len);
    if item_s.len() != layout.item_digits || value_s.len() != value_len {
        return Err("item or value does not fit the layout".into());
    }
    let mut s = format!("{:02}{item_s}", layout.prefix);
    if layout.verifier {
        let v: Vec<u8> = value_s.bytes().map(|b| b - b'0').collect();
        s.push((b'0' + verifier_digit4([v[0], v[1], v[2], v[3]])) as char);
    }
    s.push_str(&value_s);
    let check = gs1_check_digit(s.as_bytes());
    s.push((b'0' + check) as char);
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gs1_example_price_2875_has_verifier_9() {
        assert_eq!(verifier_digit4([2, 8, 7, 5]), 9);
    }

    #[test]
    fn gtins_decode_with_and_without_an_aim_prefix() {
        let s = decode("]E04006381333931\r", &default_layouts()).unwrap();
        assert_eq!(s.symbology.as_deref(), Some("]E0"));
        assert_eq!(s.decoded, Decoded::Gtin(Gtin::parse("4006381333931").unwrap()));
        assert!(matches!(
            decode("036000291452", &[]).unwrap().decoded,
            Decoded::Gtin(_)
        ));
    }

    #[test]
    fn bad_codes_say_why() {
        assert_eq!(decode("  ", &[]), Err(BarcodeError::Empty));
        assert!(matches!(
            decode("4006381333932", &[]),
            Err(BarcodeError::Gtin { .. })
        ));
        assert!(matches!(decode("12AB", &[]), Err(BarcodeError::Gtin { .. })));
        let code = encode_variable(&default_layouts()[1], 1234, 1250).unwrap();
        assert!(matches!(decode(&code, &[]), Err(BarcodeError::NoLayout(_, 21))));
    }

    #[test]
    fn weight_codes_round_trip_through_the_verifier() {
        let layout = &default_layouts()[1]; // 21: 5-digit item, verifier, weight in grams
        let code = encode_variable(layout, 4711, 1250).unwrap();
        assert_eq!(code.len(), 13);
        let s = decode(&code, &default_layouts()).unwrap();
        let Decoded::Variable {
            item_gtin,
            grams,
            price_minor,
        } = s.decoded
        else {
            panic!()
        };
        assert_eq!(grams, Some(1250));
        assert_eq!(price_minor, None);
        assert!(item_gtin.starts_with("2104711"), "{item_gtin}");
        assert!(
            Gtin::parse(&item_gtin).is_ok(),
            "the item key is itself a valid GTIN-13"
        );
        // The same item at another weight has the same key.
        let other = encode_variable(layout, 4711, 80).unwrap();
        let Decoded::Variable { item_gtin: k2, .. } = decode(&other, &default_layouts()).unwrap().decoded
        else {
            panic!()
        };
        assert_eq!(item_gtin, k2);
    }

    #[test]
    fn a_wrong_verifier_is_refused_even_with_a_right_check_digit() {
        let code = encode_variable(&default_layouts()[6], 12, 2875).unwrap(); // 26: price
        let mut b = code.into_bytes();
        b[7] = if b[7] == b'0' { b'1' } else { b'0' }; // verifier position (after 2 + 5 digits)
        let data = &b[..12];
        b[12] = b'0' + gs1_check_digit(data);
        let code = String::from_utf8(b).unwrap();
        assert!(matches!(
            decode(&code, &default_layouts()),
            Err(BarcodeError::Verifier { expected: 9, .. })
        ));
    }

    #[test]
    fn price_codes_without_verifier_use_five_digits() {
        let code = encode_variable(&default_layouts()[0], 12345, 1999).unwrap(); // 20: 5-digit price
        let Decoded::Variable {
            price_minor, grams, ..
        } = decode(&code, &default_layouts()).unwrap().decoded
        else {
            panic!()
        };
        assert_eq!((price_minor, grams), (Some(1999), None));
    }

    #[test]
    fn layouts_must_add_up() {
        let bad = VariableLayout {
            prefix: 30,
            item_digits: 5,
            value: VariableValue::Price { decimals: 2 },
            verifier: false,
        };
        assert!(bad.validate().is_err());
        for l in default_layouts() {
            l.validate().unwrap();
        }
    }
}
