//! The WAN envelope decoder and the signature check: any bytes, never a
//! panic; a signed body that opens decodes or is refused.
#![no_main]
use libfuzzer_sys::fuzz_target;
use storegate_protocol::envelope;

fuzz_target!(|data: &[u8]| {
    let _ = envelope::decode_body(data);
    let _ = envelope::decode_event(data);
    let _ = envelope::peek_up_batch_body(data);
});
