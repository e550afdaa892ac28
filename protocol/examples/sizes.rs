//! Prints the encoded sizes of typical messages: a 5-line sale event, a
//! batch of 500 of them, and every sample message.
//!
//! `cargo run -p storegate-protocol --example sizes`

use storegate_protocol::envelope::{self, Message};
use storegate_protocol::event::EventBody;
use storegate_protocol::samples;

fn main() {
    let sale = samples::event(1, EventBody::Sale(samples::sale(5)));
    let one = envelope::encode_event(&sale).len();
    let batch = envelope::encode(&Message::UpBatch(samples::sale_batch(500, 5))).len();
    let json = serde_json::to_vec(&sale).map(|v| v.len()).unwrap_or(0);
    println!("5-line sale event (postcard):          {one:>8} bytes");
    println!("5-line sale event (JSON, for scale):   {json:>8} bytes");
    println!(
        "UpBatch of 500 5-line sales:           {batch:>8} bytes ({:.1} bytes/event)",
        batch as f64 / 500.0
    );
    println!();
    for (name, m) in samples::messages() {
        println!("{name:<16} {:>6} bytes", envelope::encode(&m).len());
    }
}
