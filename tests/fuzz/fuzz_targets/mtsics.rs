//! MT-SICS scale replies: any line is a reply or a parse error.
#![no_main]
use libfuzzer_sys::fuzz_target;
use storegate_edge::mtsics::{Command, parse};

fuzz_target!(|data: &[u8]| {
    let Ok(line) = std::str::from_utf8(data) else {
        return;
    };
    for cmd in [Command::Stable, Command::Immediate, Command::Zero, Command::Tare] {
        let _ = parse(cmd, line);
    }
});
