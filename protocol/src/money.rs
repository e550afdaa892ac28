//! Money in integer minor units with an ISO 4217 currency, and quantities.
//!
//! Floats never touch money: amounts are `i64` minor units (cents, pence,
//! yen) and every operation that can overflow or mix currencies is checked.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An ISO 4217 alphabetic currency code (three upper-case ASCII letters).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Currency([u8; 3]);

/// Why a money operation or parse failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    /// Not three upper-case ASCII letters.
    #[error("{0:?} is not an ISO 4217 currency code (three upper-case letters)")]
    BadCurrency(String),
    /// Two amounts in different currencies were combined.
    #[error("cannot combine {0} with {1}")]
    CurrencyMismatch(Currency, Currency),
    /// The result does not fit in an `i64` of minor units.
    #[error("amount overflows")]
    Overflow,
}

impl Currency {
    /// Euro.
    pub const EUR: Currency = Currency(*b"EUR");
    /// US dollar.
    pub const USD: Currency = Currency(*b"USD");
    /// Pound sterling.
    pub const GBP: Currency = Currency(*b"GBP");

    /// Validates a three-letter code.
    pub fn parse(s: &str) -> Result<Self, MoneyError> {
        let b = s.as_bytes();
        if b.len() == 3 && b.iter().all(u8::is_ascii_uppercase) {
            Ok(Currency([b[0], b[1], b[2]]))
        } else {
            Err(MoneyError::BadCurrency(s.to_owned()))
        }
    }

    /// The code as a string slice.
    pub fn as_str(&self) -> &str {
        // Only upper-case ASCII letters are ever stored.
        std::str::from_utf8(&self.0).unwrap_or("???")
    }

    /// Number of minor-unit digits (2 for EUR, 0 for JPY, 3 for KWD).
    pub fn exponent(&self) -> u32 {
        match &self.0 {
            b"JPY" | b"KRW" | b"ISK" | b"CLP" | b"VND" | b"XOF" | b"XAF" | b"UGX" | b"PYG" => 0,
            b"BHD" | b"KWD" | b"OMR" | b"JOD" | b"TND" | b"LYD" | b"IQD" => 3,
            _ => 2,
        }
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Currency {
    type Err = MoneyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl Serialize for Currency {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Currency {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Currency::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// An amount of money: integer minor units plus currency. May be negative
/// (refunds, change owed).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Money {
    /// Amount in minor units (cents for EUR).
    pub minor: i64,
    /// The currency the amount is in.
    pub currency: Currency,
}

impl Money {
    /// `minor` minor units of `currency`.
    pub const fn new(minor: i64, currency: Currency) -> Self {
        Money { minor, currency }
    }

    /// Zero in `currency`.
    pub const fn zero(currency: Currency) -> Self {
        Money { minor: 0, currency }
    }

    fn same(&self, other: &Money) -> Result<(), MoneyError> {
        if self.currency == other.currency {
            Ok(())
        } else {
            Err(MoneyError::CurrencyMismatch(self.currency, other.currency))
        }
    }

    /// `self + other`, refusing mixed currencies and overflow.
    pub fn checked_add(self, other: Money) -> Result<Money, MoneyError> {
        self.same(&other)?;
        self.minor
            .checked_add(other.minor)
            .map(|minor| Money::new(minor, self.currency))
            .ok_or(MoneyError::Overflow)
    }

    /// `self - other`, refusing mixed currencies and overflow.
    pub fn checked_sub(self, other: Money) -> Result<Money, MoneyError> {
        self.same(&other)?;
        self.minor
            .checked_sub(other.minor)
            .map(|minor| Money::new(minor, self.currency))
            .ok_or(MoneyError::Overflow)
    }

    /// `self * n`, refusing overflow.
    pub fn checked_mul(self, n: i64) -> Result<Money, MoneyError> {
        self.minor
            .checked_mul(n)
            .map(|minor| Money::new(minor, self.currency))
            .ok_or(MoneyError::Overflow)
    }

    /// `self * num / den`, rounded half away from zero; for prices per kilo
    /// times grams, percentages and tax. Intermediate math is 128-bit.
    pub fn mul_div_round(self, num: i64, den: i64) -> Result<Money, MoneyError> {
        if den == 0 {
            return Err(MoneyError::Overflow);
        }
        let p = i128::from(self.minor) * i128::from(num);
        let d = i128::from(den);
        let q = p / d;
        let r = p % d;
        let q = if 2 * r.abs() >= d.abs() {
            q + if (p < 0) != (d < 0) { -1 } else { 1 }
        } else {
            q
        };
        i64::try_from(q)
            .map(|minor| Money::new(minor, self.currency))
            .map_err(|_| MoneyError::Overflow)
    }

    /// Sums amounts that must all be in `currency`.
    pub fn sum<'a>(
        currency: Currency,
        items: impl IntoIterator<Item = &'a Money>,
    ) -> Result<Money, MoneyError> {
        items
            .into_iter()
            .try_fold(Money::zero(currency), |acc, m| acc.checked_add(*m))
    }

    /// The negated amount.
    pub fn checked_neg(self) -> Result<Money, MoneyError> {
        self.minor
            .checked_neg()
            .map(|minor| Money::new(minor, self.currency))
            .ok_or(MoneyError::Overflow)
    }

    /// True for amounts below zero.
    pub fn is_negative(&self) -> bool {
        self.minor < 0
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let exp = self.currency.exponent();
        let sign = if self.minor < 0 { "-" } else { "" };
        let abs = self.minor.unsigned_abs();
        if exp == 0 {
            write!(f, "{sign}{abs} {}", self.currency)
        } else {
            let scale = 10u64.pow(exp);
            write!(
                f,
                "{sign}{}.{:0width$} {}",
                abs / scale,
                abs % scale,
                self.currency,
                width = exp as usize
            )
        }
    }
}

impl fmt::Debug for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Money({self})")
    }
}

/// How a product is measured: counted in units, or weighed in grams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Measure {
    /// Counted items.
    Each,
    /// Weighed goods, in grams.
    Grams,
}

/// Why a quantity was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QtyError {
    /// Zero is not a quantity of goods.
    #[error("quantity must be greater than zero")]
    Zero,
}

/// A positive quantity of goods: a count of items or a weight in grams.
///
/// Stock movements use signed base units (see `event::StockLine`); `Qty`
/// is what a customer buys or returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum Qty {
    /// A number of items.
    Each(u32),
    /// A weight in grams.
    Grams(u32),
}

#[derive(Deserialize)]
enum QtyRepr {
    Each(u32),
    Grams(u32),
}

impl TryFrom<QtyRepr> for Qty {
    type Error = QtyError;
    fn try_from(r: QtyRepr) -> Result<Self, QtyError> {
        match r {
            QtyRepr::Each(n) => Qty::each(n),
            QtyRepr::Grams(g) => Qty::grams(g),
        }
    }
}

impl<'de> Deserialize<'de> for Qty {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        QtyRepr::deserialize(d)?
            .try_into()
            .map_err(serde::de::Error::custom)
    }
}

impl Qty {
    /// `n` items; zero is refused.
    pub fn each(n: u32) -> Result<Qty, QtyError> {
        if n == 0 {
            Err(QtyError::Zero)
        } else {
            Ok(Qty::Each(n))
        }
    }

    /// `g` grams; zero is refused.
    pub fn grams(g: u32) -> Result<Qty, QtyError> {
        if g == 0 {
            Err(QtyError::Zero)
        } else {
            Ok(Qty::Grams(g))
        }
    }

    /// The amount in the measure's base unit (items or grams).
    pub fn base_units(&self) -> i64 {
        match *self {
            Qty::Each(n) | Qty::Grams(n) => i64::from(n),
        }
    }

    /// Counted or weighed.
    pub fn measure(&self) -> Measure {
        match self {
            Qty::Each(_) => Measure::Each,
            Qty::Grams(_) => Measure::Grams,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eur(m: i64) -> Money {
        Money::new(m, Currency::EUR)
    }

    #[test]
    fn arithmetic_is_checked() {
        assert_eq!(eur(150).checked_add(eur(275)), Ok(eur(425)));
        assert_eq!(eur(150).checked_sub(eur(275)), Ok(eur(-125)));
        assert_eq!(
            eur(1).checked_add(Money::new(1, Currency::USD)),
            Err(MoneyError::CurrencyMismatch(Currency::EUR, Currency::USD))
        );
        assert_eq!(eur(i64::MAX).checked_add(eur(1)), Err(MoneyError::Overflow));
        assert_eq!(eur(i64::MAX).checked_mul(2), Err(MoneyError::Overflow));
        assert_eq!(eur(i64::MIN).checked_neg(), Err(MoneyError::Overflow));
    }

    #[test]
    fn mul_div_rounds_half_away_from_zero() {
        // 2.99 EUR/kg * 333 g = 0.99567 -> 1.00
        assert_eq!(eur(299).mul_div_round(333, 1000), Ok(eur(100)));
        assert_eq!(eur(5).mul_div_round(1, 2), Ok(eur(3)));
        assert_eq!(eur(-5).mul_div_round(1, 2), Ok(eur(-3)));
        assert_eq!(eur(4).mul_div_round(1, 2), Ok(eur(2)));
        assert_eq!(eur(1).mul_div_round(1, 0), Err(MoneyError::Overflow));
    }

    #[test]
    fn display_uses_the_currency_exponent() {
        assert_eq!(eur(-1205).to_string(), "-12.05 EUR");
        assert_eq!(
            Money::new(500, Currency::parse("JPY").unwrap()).to_string(),
            "500 JPY"
        );
        assert_eq!(
            Money::new(1500, Currency::parse("KWD").unwrap()).to_string(),
            "1.500 KWD"
        );
    }

    #[test]
    fn currency_and_qty_validate() {
        assert!(Currency::parse("eur").is_err());
        assert!(Currency::parse("EURO").is_err());
        assert_eq!(Qty::each(0), Err(QtyError::Zero));
        assert!(serde_json::from_str::<Qty>(r#"{"Grams":0}"#).is_err());
        assert_eq!(
            serde_json::from_str::<Qty>(r#"{"Grams":250}"#).unwrap(),
            Qty::Grams(250)
        );
    }
}
