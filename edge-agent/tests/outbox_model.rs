//! A proptest model of the outbox and the sync core together: record,
//! publish, deliver, lose, ack, resend-from, reconnect, ack timeout and
//! crash/restart, against an in-memory model of the hub. After every step
//! the journal never deleted anything the hub does not have, the outbox is
//! exactly the unacked seqs, and the hub holds a gap-free prefix; at the
//! end everything drains.

#![allow(clippy::unwrap_used)]

use std::collections::VecDeque;
use std::path::Path;
use std::time::Duration;

use proptest::prelude::*;
use storegate_edge::journal::Journal;
use storegate_edge::settings::JournalSettings;
use storegate_edge::sync::SyncCore;
use storegate_protocol::envelope::decode_event;
use storegate_protocol::event::{EventBody, ScanOutcome, ScanRecord};
use storegate_protocol::{Currency, DeviceId, EventId, Seq, samples};
use tokio::time::Instant;

#[derive(Debug, Clone)]
enum Op {
    Record { telemetry: bool },
    Publish,
    Deliver,
    Lose,
    DeliverBack,
    Reconnect,
    AckTimeout,
    Crash,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => any::<bool>().prop_map(|telemetry| Op::Record { telemetry }),
        3 => Just(Op::Publish),
        3 => Just(Op::Deliver),
        1 => Just(Op::Lose),
        3 => Just(Op::DeliverBack),
        1 => Just(Op::Reconnect),
        1 => Just(Op::AckTimeout),
        1 => Just(Op::Crash),
    ]
}

enum Back {
    Ack(u64),
    Resend(u64),
}

struct World {
    journal: Option<Journal>,
    writer: Option<tokio::task::JoinHandle<()>>,
    core: SyncCore,
    /// Batches on their way to the hub (the broker holds them across crashes).
    network: VecDeque<Vec<u64>>,
    /// Acks and resend requests on their way back.
    back: VecDeque<Back>,
    /// The hub's accepted seqs, in order.
    hub: Vec<u64>,
    /// Seqs recorded (the model's next seq - 1).
    recorded: u64,
    n: u128,
}

async fn open(dir: &Path) -> (Journal, tokio::task::JoinHandle<()>) {
    Journal::open(&dir.join("j.db"), &JournalSettings::default(), Currency::EUR)
        .await
        .unwrap()
}

fn body(n: u128, telemetry: bool) -> EventBody {
    if telemetry {
        EventBody::Scan(ScanRecord {
            device: DeviceId::parse("d").unwrap(),
            lane: None,
            code: n.to_string(),
            symbology: None,
            outcome: ScanOutcome::Unknown,
        })
    } else {
        let mut s = samples::sale(1);
        s.sale_id = EventId::from_parts(1, n);
        for (i, t) in s.tenders.iter_mut().enumerate() {
            t.payment_key = EventId::from_parts(2, n * 8 + i as u128);
        }
        EventBody::Sale(s)
    }
}

impl World {
    fn j(&self) -> &Journal {
        self.journal.as_ref().expect("journal open between steps")
    }

    async fn step(&mut self, dir: &Path, op: &Op) {
        match op {
            Op::Record { telemetry } => {
                self.n += 1;
                let r = self.j().record(body(self.n, *telemetry), None).await.unwrap();
                self.recorded += 1;
                assert_eq!(r.seq.0, self.recorded);
            }
            Op::Publish => {
                if let Some(from) = self.core.next_from() {
                    let rows = self.j().fetch_outbox(from, 3, usize::MAX).await.unwrap();
                    if let Some(last) = rows.last() {
                        self.core.on_published(last.seq, Instant::now());
                        self.network.push_back(
                            rows.iter()
                                .map(|r| decode_event(&r.encoded).unwrap().seq.0)
                                .collect(),
                        );
                    }
                }
            }
            Op::Deliver => {
                if let Some(batch) = self.network.pop_front() {
                    let mut gap = None;
                    for s in batch {
                        let hwm = self.hub.len() as u64;
                        if s == hwm + 1 {
                            self.hub.push(s);
                        } else if s > hwm + 1 {
                            gap = Some(hwm + 1);
                            break;
                        }
                    }
                    self.back.push_back(match gap {
                        Some(from) => Back::Resend(from),
                        None => Back::Ack(self.hub.len() as u64),
                    });
                }
            }
            Op::Lose => {
                self.network.pop_front();
            }
            Op::DeliverBack => match self.back.pop_front() {
                Some(Back::Ack(n)) => {
                    if let Some(n) = self.core.on_app_ack(Seq(n)) {
                        self.j().ack(n).await.unwrap();
                    }
                }
                Some(Back::Resend(from)) => {
                    if let Some(n) = self.core.on_resend(Seq(from)) {
                        self.j().ack(n).await.unwrap();
                    }
                }
                None => {}
            },
            Op::Reconnect => {
                self.core.on_disconnected();
                self.core.on_connected();
            }
            Op::AckTimeout => {
                self.core
                    .on_tick(Instant::now() + Duration::from_secs(3600), Duration::from_secs(1));
            }
            Op::Crash => {
                // Close the writer completely, then reopen: all state comes from disk.
                let (journal, writer) = (self.journal.take(), self.writer.take());
                drop(journal);
                if let Some(w) = writer {
                    w.await.unwrap();
                }
                let (j, w) = open(dir).await;
                self.journal = Some(j);
                self.writer = Some(w);
                self.core = SyncCore::new(Seq(self.j().stats().acked_up_to), 2);
                self.core.on_connected();
            }
        }
    }

    async fn check(&self) {
        let stats = self.j().stats();
        let hwm = self.hub.len() as u64;
        assert_eq!(stats.next_seq, self.recorded + 1, "seq counter matches the model");
        assert!(
            stats.acked_up_to <= hwm,
            "deleted {} but the hub has only {hwm}",
            stats.acked_up_to
        );
        assert!(hwm <= self.recorded);
        let outbox: Vec<u64> = self
            .j()
            .outbox_events()
            .await
            .unwrap()
            .iter()
            .map(|e| e.seq.0)
            .collect();
        assert_eq!(
            outbox,
            (stats.acked_up_to + 1..=self.recorded).collect::<Vec<_>>()
        );
        assert_eq!(self.hub, (1..=hwm).collect::<Vec<_>>());
        assert_eq!(self.core.acked().0, stats.acked_up_to);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn outbox_and_sync_core_never_lose_or_duplicate(ops in proptest::collection::vec(op(), 1..60)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let (journal, writer) = open(dir.path()).await;
            let mut core = SyncCore::new(Seq(0), 2);
            core.on_connected();
            let mut w = World { journal: Some(journal), writer: Some(writer), core, network: VecDeque::new(), back: VecDeque::new(), hub: Vec::new(), recorded: 0, n: 0 };
            for op in &ops {
                w.step(dir.path(), op).await;
                w.check().await;
            }
            // Liveness: with a working network everything drains.
            for _ in 0..10_000 {
                if w.hub.len() as u64 == w.recorded && w.j().stats().outbox_depth == 0 {
                    break;
                }
                for op in [Op::Publish, Op::Deliver, Op::DeliverBack] {
                    w.step(dir.path(), &op).await;
                }
                // Nothing in transit: the real engine's ack timer fires and rewinds.
                if w.network.is_empty() && w.back.is_empty() {
                    w.step(dir.path(), &Op::AckTimeout).await;
                }
            }
            w.check().await;
            assert_eq!(w.hub.len() as u64, w.recorded, "everything reached the hub");
            assert_eq!(w.j().stats().outbox_depth, 0, "and was deleted after the ack");
        });
    }
}
