//! State machines: the statuses of orders, payments, sagas, tasks and
//! shipments are enums, and each machine's allowed moves are one
//! exhaustive `match` ([`Machine::can_become`]). The repositories move a
//! row only with a conditional update `WHERE status IN
//! (`[`Machine::sources`]`)`, so the database enforces the same table
//! against concurrent writers.

/// A move a state machine does not allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{what} cannot go from {from} to {to}")]
pub struct Refused {
    /// The machine (`order`, `payment`...).
    pub what: &'static str,
    /// Where it is.
    pub from: &'static str,
    /// Where it was asked to go.
    pub to: &'static str,
}

/// A name that is not one of a machine's states.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} status {name:?} is unknown")]
pub struct Unknown {
    /// The machine.
    pub what: &'static str,
    /// The name found.
    pub name: String,
}

/// A status enum and its allowed moves.
pub trait Machine: Named {
    /// Whether `self` may become `to`.
    fn can_become(self, to: Self) -> bool;

    /// `Ok(to)` if `self` may become `to`.
    fn check(self, to: Self) -> Result<Self, Refused> {
        if self.can_become(to) {
            Ok(to)
        } else {
            Err(Refused {
                what: Self::WHAT,
                from: self.as_str(),
                to: to.as_str(),
            })
        }
    }

    /// The states that may become `to`.
    fn sources(to: Self) -> Vec<Self> {
        Self::ALL.iter().copied().filter(|s| s.can_become(to)).collect()
    }

    /// Whether nothing leaves this state.
    fn is_final(self) -> bool {
        !Self::ALL.iter().any(|&to| self.can_become(to))
    }
}

/// Declares a status enum: variants with their names (serde, OpenAPI and
/// the database use the same: the snake_case of the variant, which the
/// tests check), `as_str`, `Display` and the `ALL` list a [`Machine`]
/// needs. The allowed moves are written by hand beside it.
macro_rules! states {
    (
        $(#[$m:meta])*
        $vis:vis enum $name:ident: $what:literal {
            $($(#[$vm:meta])* $variant:ident = $text:literal),+ $(,)?
        }
    ) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
        #[serde(rename_all = "snake_case")]
        $vis enum $name {
            $($(#[$vm])* $variant),+
        }

        impl $name {
            /// Every value.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// Its name in the database and the API.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }

            /// The value named `s`.
            pub fn parse(s: &str) -> Result<Self, $crate::domain::machine::Unknown> {
                <Self as $crate::domain::machine::Named>::parse(s)
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $name {
            type Err = $crate::domain::machine::Unknown;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::parse(s)
            }
        }

        impl $crate::domain::machine::Named for $name {
            const WHAT: &'static str = $what;
            const ALL: &'static [Self] = $name::ALL;
            fn as_str(self) -> &'static str {
                $name::as_str(self)
            }
        }
    };
}
pub(crate) use states;

/// An enum with a name per value ([`states!`]); a [`Machine`] adds moves.
pub trait Named: Copy + Eq + Sized + 'static {
    /// The enum's name in messages.
    const WHAT: &'static str;
    /// Every value.
    const ALL: &'static [Self];
    /// Its name.
    fn as_str(self) -> &'static str;

    /// The value named `s`.
    fn parse(s: &str) -> Result<Self, Unknown> {
        Self::ALL
            .iter()
            .copied()
            .find(|x| x.as_str() == s)
            .ok_or_else(|| Unknown {
                what: Self::WHAT,
                name: s.to_owned(),
            })
    }
}
