//! Prints the encoded sizes of typical messages: a 5-line sale event, a
//! signed batch of 500 of them, and every sample message signed (the
//! signature envelope adds 75-77 bytes).
//!
//! `cargo run -p storegate-protocol --example sizes`

use storegate_protocol::envelope::{self, Message};
use storegate_protocol::event::EventBody;
use storegate_protocol::samples;
use storegate_protocol::seal::{self, SigningKey};

fn main() {
    let sale = samples::event(1, EventBody::Sale(samples::sale(5)));
    let one = envelope::encode_event(&sale).len();
    let key = SigningKey::from_seed_for_tests(&[1; 32]);
    let seal = |m: &Message| seal::seal(&key, "sg/v1/store/store-0001/up", &envelope::encode_body(m));
    let batch = seal(&Message::UpBatch(samples::sale_batch(500, 5))).len();
    let json = serde_json::to_vec(&sale).map(|v| v.len()).unwrap_or(0);
    println!("5-line sale event (postcard):          {one:>8} bytes");
    println!("5-line sale event (JSON, for scale):   {json:>8} bytes");
    println!(
        "UpBatch of 500 5-line sales:           {batch:>8} bytes ({:.1} bytes/event)",
        batch as f64 / 500.0
    );
    println!();
    for (name, m) in samples::messages() {
        println!("{name:<16} {:>6} bytes signed", seal(&m).len());
    }
}
