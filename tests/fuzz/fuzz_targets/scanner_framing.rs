//! Serial scanner framing: any byte stream, in any chunking, gives frames
//! no longer than the limit and never panics.
#![no_main]
use libfuzzer_sys::fuzz_target;
use storegate_edge::framing::{Framer, Terminator};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let terminator = match mode % 4 {
        0 => Terminator::Cr,
        1 => Terminator::Lf,
        2 => Terminator::CrLf,
        _ => Terminator::StxEtx,
    };
    let mut framer = Framer::new(terminator);
    // The first byte after the mode says how the stream is cut up.
    let step = usize::from(rest.first().copied().unwrap_or(1)).max(1);
    for chunk in rest.chunks(step) {
        let _ = framer.push(chunk);
    }
    let _ = framer.flush();
});
