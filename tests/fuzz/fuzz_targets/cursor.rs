//! Page cursors: any text from a query string decodes or is a 400; what
//! encodes decodes back.
#![no_main]
use libfuzzer_sys::fuzz_target;
use storegate_hub::api::{decode_cursor, encode_cursor};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = decode_cursor(text);
    if text.len() <= 256 {
        assert_eq!(decode_cursor(&encode_cursor(text)).ok().as_deref(), Some(text));
    }
});
