//! The gate in front of the store LAN bus and the WAN broker: any bytes a
//! client sends (framing, the CONNECT, PUBLISH and SUBSCRIBE checks) are
//! read without a panic, and reading stops at the first refused packet.
#![no_main]
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let rt = RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
    });
    let _ = rt.block_on(storegate_broker::gate::fuzz_client_bytes(data));
});
