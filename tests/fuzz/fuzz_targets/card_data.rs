//! The card-data detector: any text or JSON is searched without a panic,
//! and a detected text stays detected inside other text.
#![no_main]
use libfuzzer_sys::fuzz_target;
use storegate_protocol::pan;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if pan::find(text).is_some() {
        assert!(pan::find(&format!("note: {text} .")).is_some());
    }
    if let Ok(doc) = serde_json::from_str::<serde_json::Value>(text) {
        let _ = pan::find_in_json(&doc);
    }
});
