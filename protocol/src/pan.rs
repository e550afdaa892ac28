//! Card numbers where none may be: one detector for every free-text field
//! at every entry (REST, the store LAN, the edge's HTTP API, events
//! arriving at the hub).
//!
//! A primary account number (PAN) is 13 to 19 digits passing the Luhn
//! check. People and devices write them with spaces or dashes between
//! groups, inside other text, or as magnetic-stripe track data
//! (`%B4111111111111111^NAME^2512...?` for track 1,
//! `;4111111111111111=2512...?` for track 2). The detector reads runs of
//! digit groups split by single spaces or dashes and refuses any
//! consecutive groups making 13-19 digits that pass Luhn (a number written
//! whole, or in groups next to other groups such as an expiry date); it
//! also refuses the track-data shapes themselves (a `%B` or `;` sentinel
//! followed by digits and a `^` or `=` separator), whatever the digits.
//!
//! False positives are possible on purpose (a 16-digit reference that
//! happens to pass Luhn, one time in ten): a field that is refused can be
//! written another way; a PAN that is stored cannot be taken back. A
//! longer unbroken digit run is not searched inside.

/// What a redacted field says instead of the card data it held.
pub const REDACTED: &str = "[card data removed]";

/// What was found. Never holds the digits themselves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found {
    /// 13-19 digits passing the Luhn check.
    CardNumber,
    /// Magnetic-stripe track data.
    TrackData,
}

impl Found {
    /// A short name for errors and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Found::CardNumber => "card_number",
            Found::TrackData => "track_data",
        }
    }
}

impl std::fmt::Display for Found {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Found::CardNumber => "what looks like a card number",
            Found::TrackData => "what looks like card track data",
        })
    }
}

/// The shortest and longest PAN.
const MIN: usize = 13;
const MAX: usize = 19;

/// Whether the digits pass the Luhn check.
fn luhn(digits: &[u8]) -> bool {
    let mut sum = 0u32;
    for (i, d) in digits.iter().rev().enumerate() {
        let mut v = u32::from(*d);
        if i % 2 == 1 {
            v *= 2;
            if v > 9 {
                v -= 9;
            }
        }
        sum += v;
    }
    sum.is_multiple_of(10)
}

/// Track data: `%B` then digits then `^`, or `;` then digits then `=`.
fn track_data(text: &[u8]) -> bool {
    let shaped = |start: usize, sep: u8| {
        let digits = text[start..].iter().take_while(|b| b.is_ascii_digit()).count();
        (12..=MAX).contains(&digits) && text.get(start + digits) == Some(&sep)
    };
    text.windows(2)
        .enumerate()
        .any(|(i, w)| w == b"%B" && shaped(i + 2, b'^'))
        || text
            .iter()
            .enumerate()
            .any(|(i, b)| *b == b';' && shaped(i + 1, b'='))
}

/// Looks for a card number or track data in `text`.
pub fn find(text: &str) -> Option<Found> {
    let bytes = text.as_bytes();
    if track_data(bytes) {
        return Some(Found::TrackData);
    }
    // Runs of digit groups, a single space or dash allowed between two
    // digits; the groups of a run are kept apart.
    let mut groups: Vec<Vec<u8>> = Vec::new();
    let mut group: Vec<u8> = Vec::new();
    for i in 0..=bytes.len() {
        match bytes.get(i).copied() {
            Some(d) if d.is_ascii_digit() => group.push(d - b'0'),
            Some(b' ' | b'-') if !group.is_empty() && bytes.get(i + 1).is_some_and(u8::is_ascii_digit) => {
                groups.push(std::mem::take(&mut group));
            }
            _ => {
                if !group.is_empty() {
                    groups.push(std::mem::take(&mut group));
                }
                if run_has_pan(&groups) {
                    return Some(Found::CardNumber);
                }
                groups.clear();
            }
        }
    }
    None
}

/// Whether consecutive groups of a run (a whole number as written, or a
/// number written in groups and followed or preceded by others, like an
/// expiry date) make 13-19 digits passing Luhn. A longer number written
/// without separators is not searched inside: a 20-digit reference would
/// hide a card number one time in ten at every offset.
fn run_has_pan(groups: &[Vec<u8>]) -> bool {
    (0..groups.len()).any(|i| {
        let mut digits: Vec<u8> = Vec::new();
        groups[i..].iter().any(|g| {
            digits.extend_from_slice(g);
            (MIN..=MAX).contains(&digits.len()) && luhn(&digits)
        })
    })
}

/// Checks `text` (a field named `field`); the error names the field and
/// what was found, never the digits.
pub fn check(field: &str, text: &str) -> Result<(), HoldsCardData> {
    match find(text) {
        None => Ok(()),
        Some(found) => Err(HoldsCardData {
            field: field.to_owned(),
            found,
        }),
    }
}

/// A field holds card data.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field} holds {found}: card data may not be stored; write it another way")]
pub struct HoldsCardData {
    /// The field.
    pub field: String,
    /// What was found.
    pub found: Found,
}

/// Keys whose strings are codes, not text: barcodes and SKUs are digits
/// that may pass Luhn by chance, and card tokens are checked by
/// [`crate::event::CardToken`] itself.
pub const CODE_KEYS: &[&str] = &["gtin", "barcode", "barcodes", "sku", "skus", "code"];

/// Looks through every string in a JSON document (an API body, a device
/// message) for card data, skipping the values of `CODE_KEYS`; returns the
/// path of the first string that holds some (`lines[2].note`).
pub fn find_in_json(v: &serde_json::Value) -> Option<(String, Found)> {
    fn walk(v: &serde_json::Value, path: &mut String) -> Option<(String, Found)> {
        match v {
            serde_json::Value::String(s) => find(s).map(|f| (path.clone(), f)),
            serde_json::Value::Array(a) => a.iter().enumerate().find_map(|(i, x)| {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                let r = walk(x, path);
                path.truncate(len);
                r
            }),
            serde_json::Value::Object(o) => o
                .iter()
                .filter(|(k, _)| !CODE_KEYS.contains(&k.as_str()))
                .find_map(|(k, x)| {
                    let len = path.len();
                    if !path.is_empty() {
                        path.push('.');
                    }
                    path.push_str(k);
                    let r = walk(x, path);
                    path.truncate(len);
                    r
                }),
            _ => None,
        }
    }
    walk(v, &mut String::new())
}

/// The last four characters of a token or number, for showing and logging
/// (`…1234`); the rest never leaves the place that holds it.
pub fn last4(token: &str) -> String {
    let tail: String = token
        .chars()
        .rev()
        .take(4)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    format!("…{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn card_numbers_are_found_however_they_are_written() {
        for text in [
            "4111111111111111",
            "4111 1111 1111 1111",
            "4111-1111-1111-1111",
            "card 4111111111111111 please",
            "ref:4111111111111111.",
            "378282246310005",  // Amex, 15
            "6011111111111117", // Discover
            "4222222222222",    // 13 digits
            "4111 1111 1111 1111 12/25",
            "exp 12 25 4111 1111 1111 1111",
        ] {
            assert_eq!(find(text), Some(Found::CardNumber), "{text}");
        }
    }

    #[test]
    fn track_data_is_found() {
        assert_eq!(
            find(";4111111111111111=25121010000000000000?"),
            Some(Found::TrackData)
        );
        assert_eq!(
            find("%B4111111111111111^DOE/JOHN^2512101?"),
            Some(Found::TrackData)
        );
        // The shape alone, digits that fail Luhn included.
        assert_eq!(find(";1234567890123=2512?"), Some(Found::TrackData));
    }

    #[test]
    fn ordinary_text_and_numbers_pass() {
        for text in [
            "",
            "Ana",
            "refund: damaged box",
            "4111111111111112",     // fails Luhn
            "41111111111111112222", // 20 digits: not searched inside
            "411111111111",         // 12 digits
            "05012345678900",       // a GTIN-14 (fails Luhn)
            "order 12345, lane 3",
            "tok_visa_1111",
            "2026-12-01 12:00",
        ] {
            assert_eq!(find(text), None, "{text}");
        }
    }

    #[test]
    fn errors_name_the_field_never_the_digits() {
        let e = check("note", "pay with 4111111111111111").unwrap_err();
        let text = e.to_string();
        assert!(text.contains("note"));
        assert!(!text.contains("4111"));
        assert!(check("note", "fine").is_ok());
    }

    #[test]
    fn card_tokens_refuse_card_data_in_any_shape() {
        use crate::event::CardToken;
        for bad in [
            "4111111111111111",
            "4111 1111 1111 1111",
            "tok_4111111111111111",
            ";4111111111111111=2512101?",
            "%B4111111111111111^DOE/JOHN^2512?",
            "tok with space",
            "",
        ] {
            assert!(CardToken::parse(bad).is_err(), "{bad:?}");
        }
        let t = CardToken::parse("tok_visa_9f3a1234").unwrap();
        assert_eq!(format!("{t:?}"), "CardToken(…1234)");
    }

    /// Every free-text field of every event kind: a PAN put into it is
    /// found, and redacting removes it and names the field.
    #[test]
    fn every_free_text_field_is_checked_and_redacted() {
        use crate::event::EventBody;
        let pan = "4111 1111 1111 1111";
        let mut fields = 0;
        for body in crate::samples::event_bodies() {
            let names: Vec<&str> = body.free_text().iter().map(|(n, _)| *n).collect();
            let mut visited = Vec::new();
            body.clone().for_each_free_text_mut(&mut |n, _| visited.push(n));
            assert_eq!(names, visited, "both visitors list the same fields in order");
            for (i, name) in names.iter().enumerate() {
                // Poison field i alone, through the redaction visitor.
                let mut poisoned = body.clone();
                poison(&mut poisoned, i, pan);
                assert_eq!(
                    poisoned.card_data().map_err(|e| e.field),
                    Err((*name).to_owned()),
                    "{name} of {:?}",
                    body.kind()
                );
                let mut redacted = poisoned.clone();
                assert_eq!(redacted.redact_card_data(), vec![*name]);
                assert!(redacted.card_data().is_ok());
                assert!(!format!("{redacted:?}").contains("4111"));
                fields += 1;
            }
        }
        assert!(
            fields >= 10,
            "the samples exercise the free-text fields: {fields}"
        );

        /// Puts `text` into the `i`th free-text field.
        fn poison(body: &mut EventBody, i: usize, text: &str) {
            let mut at = 0;
            body.for_each_free_text_mut(&mut |_, v| {
                if at == i {
                    v.push(' ');
                    v.push_str(text);
                }
                at += 1;
            });
        }
    }

    #[test]
    fn json_documents_are_searched_by_path_codes_skipped() {
        let doc = serde_json::json!({
            "name": "Ana",
            "sku": "4111111111111111",
            "barcodes": ["4111111111111111"],
            "lines": [{"qty": 1}, {"note": "card 4111-1111-1111-1111"}],
        });
        assert_eq!(
            find_in_json(&doc),
            Some(("lines[1].note".to_owned(), Found::CardNumber))
        );
        let clean = serde_json::json!({"name": "Ana", "gtin": "4111111111111111", "n": 4111111111111111_u64});
        assert_eq!(find_in_json(&clean), None);
    }

    #[test]
    fn last4_shows_four() {
        assert_eq!(last4("tok_abcdef1234"), "…1234");
        assert_eq!(last4("12"), "…12");
    }
}
