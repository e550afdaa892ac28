//! The store bus: any payload a device sends is parsed or refused with a
//! clear error, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use storegate_protocol::device;

fuzz_target!(|data: &[u8]| {
    let _ = device::parse_json::<device::PosRequest>(data);
    let _ = device::parse_json::<device::ScanMsg>(data);
    let _ = device::parse_json::<device::WeightMsg>(data);
    let _ = device::parse_json::<device::HealthMsg>(data);
    let _ = device::salvage_request_id(data);
});
