//! Small SQL helpers shared by the repositories: text that emits `$N`
//! placeholders, valid on both PostgreSQL and SQLite (sqlx's
//! `QueryBuilder` emits `?` under `Any`, which PostgreSQL refuses); typed
//! rows read by column name ([`row!`]); the domain's named enums as TEXT
//! columns.

use std::fmt::Write as _;

use sqlx::any::{Any, AnyTypeInfo};
use sqlx::encode::IsNull;
use sqlx::error::BoxDynError;

use crate::domain::order::{Fulfilment, OrderStatus, SagaStep};
use crate::domain::payment::{ExceptionStatus, PaymentMethod, PaymentStatus};
use crate::domain::price::PriceScope;
use crate::domain::product::Measure;
use crate::domain::shipment::ShipmentStatus;
use crate::domain::task::TaskStatus;

/// Declares a typed row: a struct whose fields are read by column name
/// (`sqlx::FromRow` for `AnyRow`), so a query's column order cannot shift
/// a value into the wrong field. Column expressions need an `AS` alias.
macro_rules! row {
    (
        $(#[$m:meta])*
        $vis:vis struct $name:ident {
            $($(#[$fm:meta])* $fvis:vis $field:ident : $ty:ty),* $(,)?
        }
    ) => {
        $(#[$m])*
        $vis struct $name {
            $($(#[$fm])* $fvis $field: $ty),*
        }

        impl<'r> sqlx::FromRow<'r, sqlx::any::AnyRow> for $name {
            fn from_row(row: &'r sqlx::any::AnyRow) -> Result<Self, sqlx::Error> {
                use sqlx::Row as _;
                Ok(Self {
                    $($field: row.try_get(stringify!($field))?),*
                })
            }
        }
    };
}
pub(crate) use row;

/// `sqlx::FromRow` by column name for a struct defined elsewhere (a
/// domain type that is also a row): `row_impl!(Type { field, ... })`.
macro_rules! row_impl {
    ($name:path { $($field:ident),* $(,)? }) => {
        impl<'r> sqlx::FromRow<'r, sqlx::any::AnyRow> for $name {
            fn from_row(row: &'r sqlx::any::AnyRow) -> Result<Self, sqlx::Error> {
                use sqlx::Row as _;
                Ok(Self {
                    $($field: row.try_get(stringify!($field))?),*
                })
            }
        }
    };
}
pub(crate) use row_impl;

/// The domain's named enums are TEXT columns: bound by name, and read
/// back refusing a name the enum does not know.
macro_rules! text_columns {
    ($($t:ty),* $(,)?) => {$(
        impl sqlx::Type<Any> for $t {
            fn type_info() -> AnyTypeInfo {
                <str as sqlx::Type<Any>>::type_info()
            }
        }

        impl<'q> sqlx::Encode<'q, Any> for $t {
            fn encode_by_ref(
                &self,
                buf: &mut <Any as sqlx::Database>::ArgumentBuffer,
            ) -> Result<IsNull, BoxDynError> {
                <&str as sqlx::Encode<'q, Any>>::encode(self.as_str(), buf)
            }
        }

        impl<'r> sqlx::Decode<'r, Any> for $t {
            fn decode(value: <Any as sqlx::Database>::ValueRef<'r>) -> Result<Self, BoxDynError> {
                let s = <&str as sqlx::Decode<'r, Any>>::decode(value)?;
                Ok(<$t>::parse(s)?)
            }
        }
    )*};
}

text_columns!(
    OrderStatus,
    SagaStep,
    Fulfilment,
    PaymentStatus,
    PaymentMethod,
    ExceptionStatus,
    TaskStatus,
    ShipmentStatus,
    PriceScope,
    Measure,
);

/// `prefix VALUES ($1, $2), ($3, $4) suffix` for `rows` rows of `cols`
/// columns, placeholders starting at `$1`.
pub fn values(prefix: &str, rows: usize, cols: usize, suffix: &str) -> String {
    let mut s = String::with_capacity(prefix.len() + suffix.len() + rows * cols * 5 + 16);
    s.push_str(prefix);
    s.push_str(" VALUES ");
    let mut n = 1;
    for r in 0..rows {
        if r > 0 {
            s.push_str(", ");
        }
        s.push('(');
        for c in 0..cols {
            if c > 0 {
                s.push_str(", ");
            }
            let _ = write!(s, "${n}");
            n += 1;
        }
        s.push(')');
    }
    if !suffix.is_empty() {
        s.push(' ');
        s.push_str(suffix);
    }
    s
}

/// `($from, $from+1, ... )` with `count` placeholders, for `IN` lists.
pub fn list(from: usize, count: usize) -> String {
    let mut s = String::from("(");
    for i in 0..count {
        if i > 0 {
            s.push_str(", ");
        }
        let _ = write!(s, "${}", from + i);
    }
    s.push(')');
    s
}

/// `rows` groups of placeholders from `$first`, one per entry of `cols`,
/// each followed by that entry (a cast such as `::text`, an alias such as
/// ` AS k`); each group between `open` and `close`, groups joined by `sep`.
/// `placeholders(2, 2, &["::text", ""], "(", ")", ", ")` is
/// `($2::text, $3), ($4::text, $5)`.
pub fn placeholders(first: usize, rows: usize, cols: &[&str], open: &str, close: &str, sep: &str) -> String {
    let mut s = String::new();
    let mut n = first;
    for r in 0..rows {
        if r > 0 {
            s.push_str(sep);
        }
        s.push_str(open);
        for (c, suffix) in cols.iter().enumerate() {
            if c > 0 {
                s.push_str(", ");
            }
            let _ = write!(s, "${n}{suffix}");
            n += 1;
        }
        s.push_str(close);
    }
    s
}

/// Rows per multi-row statement: under SQLite's 32766 and PostgreSQL's
/// 65535 bound parameters for tables of up to 60 columns.
pub const CHUNK: usize = 500;

/// Text safe for a PostgreSQL TEXT column (which refuses NUL bytes).
pub fn text(s: &str) -> String {
    if s.contains('\0') {
        s.replace('\0', "\u{FFFD}")
    } else {
        s.to_owned()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn placeholders_number_on_across_groups() {
        assert_eq!(
            super::placeholders(2, 2, &["::text", ""], "(", ")", ", "),
            "($2::text, $3), ($4::text, $5)"
        );
        assert_eq!(
            super::placeholders(1, 2, &[" AS k"], "SELECT ", "", " UNION ALL "),
            "SELECT $1 AS k UNION ALL SELECT $2 AS k"
        );
    }

    use super::*;

    #[test]
    fn placeholders_number_from_one() {
        assert_eq!(
            values("INSERT INTO t (a, b)", 2, 2, "ON CONFLICT DO NOTHING"),
            "INSERT INTO t (a, b) VALUES ($1, $2), ($3, $4) ON CONFLICT DO NOTHING"
        );
        assert_eq!(list(3, 3), "($3, $4, $5)");
        assert_eq!(text("a\0b"), "a\u{FFFD}b");
    }
}
