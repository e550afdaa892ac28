//! Barcode decoding (AIM prefixes, GTINs, GS1 variable measure): any text
//! decodes or is refused.
#![no_main]
use libfuzzer_sys::fuzz_target;
use storegate_edge::barcode;

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    let layouts = barcode::default_layouts();
    let _ = barcode::decode(raw, &layouts);
});
