//! Validated identifiers: store, device, lane, SKU, event id and sequence numbers.
//!
//! Every identifier that ends up inside an MQTT topic (store, device, lane) is
//! restricted to a topic-safe alphabet, so that building a topic can never
//! produce a wildcard (`+`, `#`) or an extra level (`/`).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a string was refused as an identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// The string was empty.
    #[error("{kind} must not be empty")]
    Empty {
        /// Which identifier was being parsed.
        kind: &'static str,
    },
    /// The string was longer than the identifier allows.
    #[error("{kind} is {len} bytes long; at most {max} are allowed")]
    TooLong {
        /// Which identifier was being parsed.
        kind: &'static str,
        /// Length of the offered string in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The string held a character outside `[A-Za-z0-9._-]`.
    #[error("{kind} {value:?} has the character {ch:?}; only A-Z, a-z, 0-9, '.', '_' and '-' are allowed")]
    BadChar {
        /// Which identifier was being parsed.
        kind: &'static str,
        /// The offered string.
        value: String,
        /// The first offending character.
        ch: char,
    },
}

fn check_id(kind: &'static str, s: &str, max: usize) -> Result<(), IdError> {
    if s.is_empty() {
        return Err(IdError::Empty { kind });
    }
    if s.len() > max {
        return Err(IdError::TooLong {
            kind,
            len: s.len(),
            max,
        });
    }
    if let Some(ch) = s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(IdError::BadChar {
            kind,
            value: s.to_owned(),
            ch,
        });
    }
    Ok(())
}

/// Declares a validated string identifier with `parse`, `as_str`, `Display`,
/// `FromStr` and a serde form that re-validates on the way in.
macro_rules! string_id {
    ($(#[$meta:meta])* $name:ident, $kind:literal, $max:expr) => {
        $(#[$meta])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(String);

        impl $name {
            /// Longest accepted value, in bytes.
            pub const MAX_LEN: usize = $max;

            /// Validates `s` and wraps it.
            pub fn parse(s: impl Into<String>) -> Result<Self, IdError> {
                let s = s.into();
                check_id($kind, &s, Self::MAX_LEN)?;
                Ok(Self(s))
            }

            /// The identifier as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), self.0)
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::parse(s)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::parse(s).map_err(serde::de::Error::custom)
            }
        }
    };
}

string_id!(
    /// A store or warehouse: one edge agent, one set of `sg/v1/store/{store}/...` topics.
    StoreId,
    "store id",
    64
);
string_id!(
    /// A device on a store's LAN (scanner, scale, handheld, POS terminal).
    DeviceId,
    "device id",
    64
);
string_id!(
    /// A POS lane (till) within a store.
    LaneId,
    "lane id",
    32
);
string_id!(
    /// A stock keeping unit: the catalog's key for a product.
    Sku,
    "sku",
    64
);

/// A per-store, gap-free, monotonic sequence number (outbox and downlink).
///
/// Sequence numbers start at 1; `Seq(0)` means "nothing yet".
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Seq(pub u64);

impl Seq {
    /// The value before the first sequence number.
    pub const ZERO: Seq = Seq(0);

    /// The next sequence number.
    #[must_use]
    pub fn next(self) -> Seq {
        // Saturating: a seq from a peer is never trusted to leave room.
        Seq(self.0.saturating_add(1))
    }

    /// The largest seq storegate stores (databases keep seqs as BIGINT).
    pub const MAX: Seq = Seq(i64::MAX as u64);
}

impl fmt::Display for Seq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Why a string was refused as an [`EventId`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventIdError {
    /// Not 26 characters long.
    #[error("an event id has 26 characters, got {0}")]
    Length(usize),
    /// A character outside Crockford's base32 alphabet.
    #[error("{0:?} is not a Crockford base32 character")]
    BadChar(char),
    /// The first character encodes more than 128 bits.
    #[error("event id overflows 128 bits")]
    Overflow,
}

/// A globally unique, time-ordered event identifier (a ULID).
///
/// The top 48 bits are milliseconds since the Unix epoch, the low 80 bits
/// are random. Text form: 26 characters of Crockford base32. Binary form
/// (postcard): 16 bytes, big-endian, so byte order is time order.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EventId(u128);

const CROCKFORD: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

impl EventId {
    /// Builds an id from a millisecond timestamp and 80 random bits.
    pub fn from_parts(unix_ms: u64, random: u128) -> Self {
        let ms = u128::from(unix_ms & 0xFFFF_FFFF_FFFF);
        EventId((ms << 80) | (random & ((1u128 << 80) - 1)))
    }

    /// Wraps a raw 128-bit value.
    pub const fn from_u128(v: u128) -> Self {
        EventId(v)
    }

    /// The raw 128-bit value.
    pub const fn as_u128(self) -> u128 {
        self.0
    }

    /// Milliseconds since the Unix epoch at which the id was minted.
    pub fn unix_ms(self) -> u64 {
        // Lossless: the shift leaves at most 48 bits.
        (self.0 >> 80) as u64
    }

    /// The 16 big-endian bytes.
    pub fn to_bytes(self) -> [u8; 16] {
        self.0.to_be_bytes()
    }

    /// Reads 16 big-endian bytes.
    pub fn from_bytes(b: [u8; 16]) -> Self {
        EventId(u128::from_be_bytes(b))
    }

    /// Reads a byte slice that must be exactly 16 bytes long.
    pub fn from_slice(b: &[u8]) -> Option<Self> {
        <[u8; 16]>::try_from(b).ok().map(Self::from_bytes)
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = [0u8; 26];
        let mut v = self.0;
        for slot in out.iter_mut().rev() {
            *slot = CROCKFORD[(v & 31) as usize];
            v >>= 5;
        }
        // The alphabet is ASCII, so this cannot fail.
        f.write_str(std::str::from_utf8(&out).map_err(|_| fmt::Error)?)
    }
}

impl fmt::Debug for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EventId({self})")
    }
}

impl FromStr for EventId {
    type Err = EventIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() != 26 {
            return Err(EventIdError::Length(s.len()));
        }
        let mut v: u128 = 0;
        for (i, ch) in s.chars().enumerate() {
            let d = match ch.to_ascii_uppercase() {
                c @ '0'..='9' => c as u32 - '0' as u32,
                'O' => 0,
                'I' | 'L' => 1,
                c => CROCKFORD
                    .iter()
                    .position(|&a| a as char == c)
                    .map(|p| p as u32)
                    .ok_or(EventIdError::BadChar(ch))?,
            };
            if i == 0 && d > 7 {
                return Err(EventIdError::Overflow);
            }
            v = (v << 5) | u128::from(d);
        }
        Ok(EventId(v))
    }
}

impl Serialize for EventId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.collect_str(self)
        } else {
            self.to_bytes().serialize(s)
        }
    }
}

impl<'de> Deserialize<'de> for EventId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            let s = String::deserialize(d)?;
            s.parse().map_err(serde::de::Error::custom)
        } else {
            <[u8; 16]>::deserialize(d).map(EventId::from_bytes)
        }
    }
}

/// Mints monotonic [`EventId`]s. Pure: the caller supplies the clock and the
/// randomness, so this module stays free of I/O.
///
/// Within one millisecond (or when the clock steps backwards) the random part
/// is incremented instead of redrawn, so ids from one generator always
/// increase.
#[derive(Debug, Default, Clone)]
pub struct EventIdGenerator {
    /// The last id handed out; the next one is strictly greater.
    last: Option<EventId>,
}

impl EventIdGenerator {
    /// A generator that has handed out nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The next id for wall-clock time `unix_ms`, drawing 80 random bits from
    /// `random` only when the millisecond moved forward.
    pub fn next(&mut self, unix_ms: u64, random: impl FnOnce() -> u128) -> EventId {
        let id = match self.last {
            Some(last) if last.unix_ms() >= unix_ms => EventId(last.0.wrapping_add(1)),
            _ => EventId::from_parts(unix_ms, random()),
        };
        self.last = Some(id);
        id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_accept_topic_safe_strings_and_refuse_the_rest() {
        assert!(StoreId::parse("store-0042").is_ok());
        assert!(StoreId::parse("A.b_c-9").is_ok());
        assert_eq!(StoreId::parse(""), Err(IdError::Empty { kind: "store id" }));
        for bad in ["a/b", "a+b", "a#", "é", "a b"] {
            assert!(
                matches!(StoreId::parse(bad), Err(IdError::BadChar { .. })),
                "{bad}"
            );
        }
        assert!(matches!(
            LaneId::parse("x".repeat(33)),
            Err(IdError::TooLong { max: 32, .. })
        ));
    }

    #[test]
    fn ids_revalidate_when_deserialized() {
        let err = serde_json::from_str::<Sku>("\"bad/sku\"").unwrap_err();
        assert!(err.to_string().contains("'/'"), "{err}");
    }

    #[test]
    fn event_id_text_round_trips_and_orders_by_time() {
        let a = EventId::from_parts(1_700_000_000_000, 42);
        let b = EventId::from_parts(1_700_000_000_001, 1);
        assert!(a < b);
        assert_eq!(a.unix_ms(), 1_700_000_000_000);
        let text = a.to_string();
        assert_eq!(text.len(), 26);
        assert_eq!(text.parse::<EventId>(), Ok(a));
        assert_eq!(text.to_lowercase().parse::<EventId>(), Ok(a));
        assert_eq!(
            "8ZZZZZZZZZZZZZZZZZZZZZZZZZ".parse::<EventId>(),
            Err(EventIdError::Overflow)
        );
        assert_eq!("01".parse::<EventId>(), Err(EventIdError::Length(2)));
        assert_eq!(
            "0123456789ABCDEFGHJKMNPQRU".parse::<EventId>(),
            Err(EventIdError::BadChar('U'))
        );
    }

    #[test]
    fn event_id_matches_the_ulid_spec_example() {
        // The ULID spec's example: 01ARZ3NDEKTSV4RRFFQ69G5FAV.
        let id: EventId = "01ARZ3NDEKTSV4RRFFQ69G5FAV".parse().unwrap();
        assert_eq!(id.unix_ms(), 1_469_922_850_259);
        assert_eq!(id.to_string(), "01ARZ3NDEKTSV4RRFFQ69G5FAV");
    }

    #[test]
    fn generator_is_monotonic_even_when_the_clock_steps_back() {
        let mut g = EventIdGenerator::new();
        let a = g.next(1000, || 5);
        let b = g.next(1000, || 0);
        let c = g.next(999, || 0);
        let d = g.next(1001, || 0);
        assert!(a < b && b < c && c < d);
        assert_eq!(b.as_u128(), a.as_u128() + 1);
    }
}
