//! GTINs (EAN-8, UPC-A, EAN-13, GTIN-14) with check-digit validation.
//!
//! The check digit is the GS1 mod-10 check: from the rightmost data digit
//! leftwards, digits are weighted 3, 1, 3, 1, ...; the check digit brings the
//! weighted sum to a multiple of ten. Every GTIN length uses the same rule,
//! which is why a GTIN can be zero-padded to 14 digits without changing its
//! check digit ([`Gtin::to_gtin14`]).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a string was refused as a GTIN.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GtinError {
    /// A character that is not an ASCII digit.
    #[error("a GTIN has digits only; found {0:?}")]
    NotDigits(char),
    /// A length other than 8, 12, 13 or 14.
    #[error("a GTIN has 8, 12, 13 or 14 digits; got {0}")]
    Length(usize),
    /// The check digit does not match the data digits.
    #[error("check digit is {found}, the data digits need {expected}")]
    CheckDigit {
        /// The last digit of the offered code.
        found: u8,
        /// The digit the GS1 mod-10 rule computes.
        expected: u8,
    },
}

/// Which GTIN format a code was given in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum GtinKind {
    /// 8 digits.
    Ean8,
    /// 12 digits (GTIN-12).
    UpcA,
    /// 13 digits (GTIN-13).
    Ean13,
    /// 14 digits (trade units, cases).
    Gtin14,
}

/// A validated GTIN, kept in the form it was given (8, 12, 13 or 14 digits).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Gtin(String);

/// The GS1 mod-10 check digit for `data` (the digits without the check digit).
///
/// `data` must be ASCII digits; anything else is treated as its low nibble,
/// so callers validate first.
pub fn gs1_check_digit(data: &[u8]) -> u8 {
    let sum: u32 = data
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            let v = u32::from(d.wrapping_sub(b'0'));
            if i % 2 == 0 { v * 3 } else { v }
        })
        .sum();
    // `sum % 10` is below 10, so the result fits a u8.
    ((10 - sum % 10) % 10) as u8
}

impl Gtin {
    /// Validates digits, length and check digit.
    pub fn parse(s: &str) -> Result<Self, GtinError> {
        if let Some(c) = s.chars().find(|c| !c.is_ascii_digit()) {
            return Err(GtinError::NotDigits(c));
        }
        if !matches!(s.len(), 8 | 12 | 13 | 14) {
            return Err(GtinError::Length(s.len()));
        }
        let bytes = s.as_bytes();
        let (data, check) = bytes.split_at(bytes.len() - 1);
        let expected = gs1_check_digit(data);
        let found = check[0] - b'0';
        if found != expected {
            return Err(GtinError::CheckDigit { found, expected });
        }
        Ok(Gtin(s.to_owned()))
    }

    /// The format the code was given in.
    pub fn kind(&self) -> GtinKind {
        match self.0.len() {
            8 => GtinKind::Ean8,
            12 => GtinKind::UpcA,
            13 => GtinKind::Ean13,
            _ => GtinKind::Gtin14,
        }
    }

    /// The digits as given.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The code zero-padded to 14 digits: the one key under which a catalog
    /// finds a product whether it was scanned as UPC-A or as EAN-13.
    pub fn to_gtin14(&self) -> String {
        format!("{:0>14}", self.0)
    }

    /// For 13-digit codes, the two-digit GS1 prefix (e.g. 20-29 for
    /// variable-measure items in restricted circulation).
    pub fn prefix2(&self) -> Option<u8> {
        let b = self.0.as_bytes();
        (b.len() == 13).then(|| (b[0] - b'0') * 10 + (b[1] - b'0'))
    }
}

impl fmt::Display for Gtin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Gtin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Gtin({})", self.0)
    }
}

impl FromStr for Gtin {
    type Err = GtinError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl Serialize for Gtin {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Gtin {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Gtin::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn real_published_gtins_validate() {
        // Faber-Castell pencil (the GS1 textbook EAN-13), Nutella 400 g,
        // Coca-Cola 330 ml can (UPC-A), an EAN-8 from GS1's examples, and the
        // GS1 GTIN-14 example for a case.
        for (code, kind) in [
            ("4006381333931", GtinKind::Ean13),
            ("3017620422003", GtinKind::Ean13),
            ("049000006346", GtinKind::UpcA),
            ("036000291452", GtinKind::UpcA),
            ("96385074", GtinKind::Ean8),
            ("40170725", GtinKind::Ean8),
            ("10614141000415", GtinKind::Gtin14),
            ("00012345600012", GtinKind::Gtin14),
        ] {
            let g = Gtin::parse(code).unwrap_or_else(|e| panic!("{code}: {e}"));
            assert_eq!(g.kind(), kind, "{code}");
        }
    }

    #[test]
    fn a_wrong_check_digit_is_refused_with_the_expected_digit() {
        assert_eq!(
            Gtin::parse("4006381333932"),
            Err(GtinError::CheckDigit {
                found: 2,
                expected: 1
            })
        );
        assert_eq!(Gtin::parse("12345"), Err(GtinError::Length(5)));
        assert_eq!(Gtin::parse("40063813339x1"), Err(GtinError::NotDigits('x')));
        assert_eq!(Gtin::parse(""), Err(GtinError::Length(0)));
    }

    #[test]
    fn upc_a_and_its_ean13_form_share_one_gtin14() {
        let upc = Gtin::parse("036000291452").unwrap();
        let ean = Gtin::parse("0036000291452").unwrap();
        assert_eq!(upc.to_gtin14(), ean.to_gtin14());
        assert_eq!(upc.to_gtin14(), "00036000291452");
    }

    #[test]
    fn every_single_digit_error_is_caught() {
        let good = "4006381333931";
        for pos in 0..good.len() {
            for d in b'0'..=b'9' {
                let mut b = good.as_bytes().to_vec();
                if b[pos] == d {
                    continue;
                }
                b[pos] = d;
                let s = String::from_utf8(b).unwrap();
                assert!(Gtin::parse(&s).is_err(), "{s} should fail");
            }
        }
    }
}
