//! The journal against a real SQLite file: durability across reopen,
//! idempotency, acks, validation, group commit, downlink.

#![allow(clippy::unwrap_used)]

use std::path::Path;

use storegate_edge::journal::Journal;
use storegate_edge::settings::JournalSettings;
use storegate_protocol::event::{EventBody, SaleVoid};
use storegate_protocol::{Currency, EventId, LaneId, Money, Seq, samples};

async fn open(dir: &Path) -> (Journal, tokio::task::JoinHandle<()>) {
    Journal::open(&dir.join("j.db"), &JournalSettings::default(), Currency::EUR)
        .await
        .unwrap()
}

fn sale(n: u128) -> EventBody {
    let mut s = samples::sale(3);
    s.sale_id = EventId::from_parts(1, n);
    for (i, t) in s.tenders.iter_mut().enumerate() {
        t.payment_key = EventId::from_parts(2, n * 8 + i as u128);
    }
    EventBody::Sale(s)
}

async fn close(j: Journal, w: tokio::task::JoinHandle<()>) {
    drop(j);
    w.await.unwrap();
}

#[tokio::test]
async fn seq_is_gap_free_and_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (j, w) = open(dir.path()).await;
    for n in 0..5 {
        let r = j.record(sale(n), None).await.unwrap();
        assert_eq!(r.seq, Seq(n as u64 + 1));
    }
    j.ack(Seq(5)).await.unwrap();
    close(j, w).await;
    let (j, w) = open(dir.path()).await;
    let s = j.stats();
    assert_eq!((s.next_seq, s.acked_up_to, s.outbox_depth), (6, 5, 0));
    assert_eq!(
        j.record(sale(9), None).await.unwrap().seq,
        Seq(6),
        "acked rows are deleted, seqs never reused"
    );
    close(j, w).await;
}

#[tokio::test]
async fn recording_the_same_sale_twice_writes_it_once() {
    let dir = tempfile::tempdir().unwrap();
    let (j, w) = open(dir.path()).await;
    let a = j.record(sale(1), None).await.unwrap();
    let b = j.record(sale(1), None).await.unwrap();
    assert!(!a.duplicate && b.duplicate);
    assert_eq!((a.seq, a.id), (b.seq, b.id));
    let c = j
        .record(samples::event_bodies().remove(5), Some("client:k1".into()))
        .await
        .unwrap();
    let d = j
        .record(samples::event_bodies().remove(5), Some("client:k1".into()))
        .await
        .unwrap();
    assert_eq!(c.seq, d.seq);
    assert_eq!(j.stats().outbox_depth, 2);
    close(j, w).await;
}

#[tokio::test]
async fn invalid_events_are_refused_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let (j, w) = open(dir.path()).await;
    let EventBody::Sale(mut s) = sale(1) else {
        unreachable!()
    };
    s.tenders[0].amount = Money::new(1, Currency::EUR);
    let e = j.record(EventBody::Sale(s), None).await.unwrap_err().to_string();
    assert!(e.contains("tenders sum"), "{e}");
    let EventBody::Sale(mut s) = sale(2) else {
        unreachable!()
    };
    s.totals.total = Money::new(s.totals.total.minor, Currency::USD);
    let e = j.record(EventBody::Sale(s), None).await.unwrap_err().to_string();
    assert!(e.contains("USD"), "{e}");
    let dropped = samples::event_bodies().pop().unwrap();
    assert!(j.record(dropped, None).await.is_err());
    let void = |id| {
        EventBody::SaleVoided(SaleVoid {
            sale_id: id,
            lane: LaneId::parse("1").unwrap(),
            reason: "x".into(),
            refunds: vec![],
            restock: true,
        })
    };
    let e = j
        .record(void(EventId::from_u128(77)), None)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("no sale"), "{e}");
    assert_eq!(j.stats().next_seq, 1, "refusals consume no seq");

    // A real void restocks; a second void of the same sale is a duplicate, not a second restock.
    let r = j.record(sale(3), None).await.unwrap();
    let EventBody::Sale(s) = sale(3) else {
        unreachable!()
    };
    let before = j.stock_view("SKU-00000").await.unwrap();
    j.record(void(s.sale_id), None).await.unwrap();
    assert_eq!(j.stock_view("SKU-00000").await.unwrap(), before + 1);
    assert!(j.record(void(s.sale_id), None).await.unwrap().duplicate);
    assert_eq!(j.stats().next_seq, r.seq.0 + 2);
    close(j, w).await;
}

#[tokio::test]
async fn acks_delete_only_what_they_cover_and_never_beyond_the_journal() {
    let dir = tempfile::tempdir().unwrap();
    let (j, w) = open(dir.path()).await;
    for n in 0..10 {
        j.record(sale(n), None).await.unwrap();
    }
    j.ack(Seq(4)).await.unwrap();
    let seqs: Vec<u64> = j.outbox_events().await.unwrap().iter().map(|e| e.seq.0).collect();
    assert_eq!(seqs, (5..=10).collect::<Vec<_>>());
    j.ack(Seq(2)).await.unwrap();
    assert_eq!(j.stats().acked_up_to, 4, "an old ack changes nothing");
    j.ack(Seq(99)).await.unwrap();
    assert_eq!(j.stats().acked_up_to, 10, "an ack past the journal is clamped");
    assert_eq!(j.stats().outbox_bytes, 0);
    close(j, w).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_lanes_share_commits() {
    let dir = tempfile::tempdir().unwrap();
    let (j, w) = open(dir.path()).await;
    let tasks: Vec<_> = (0..200u128)
        .map(|n| {
            let j = j.clone();
            tokio::spawn(async move { j.record(sale(n), None).await.unwrap().seq })
        })
        .collect();
    let mut seqs = Vec::new();
    for t in tasks {
        seqs.push(t.await.unwrap().0);
    }
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=200).collect::<Vec<_>>());
    assert!(
        j.commits() < 200,
        "group commit shared fsyncs: {} commits for 200 sales",
        j.commits()
    );
    close(j, w).await;
}

#[tokio::test]
async fn a_fetched_batch_is_exactly_the_rows_concatenated() {
    let dir = tempfile::tempdir().unwrap();
    let settings = JournalSettings {
        outbox_budget_bytes: 4000,
        ..JournalSettings::default()
    };
    let (j, w) = Journal::open(&dir.path().join("j.db"), &settings, Currency::EUR)
        .await
        .unwrap();
    for n in 0..40u128 {
        j.record(sale(n), None).await.unwrap();
        j.record(samples::event_bodies().remove(9), None).await.unwrap(); // a scan: telemetry
    }
    assert!(
        j.stats().dropped_telemetry > 0,
        "the small budget dropped scans into placeholders"
    );
    for (from, max_bytes) in [(1u64, usize::MAX), (5, 3000), (17, 1), (80, usize::MAX)] {
        let rows = j.fetch_outbox(Seq(from), 25, max_bytes).await.unwrap();
        let batch = j.fetch_batch(Seq(from), 25, max_bytes).await.unwrap().unwrap();
        let concatenated: Vec<u8> = rows.iter().flat_map(|r| r.encoded.clone()).collect();
        assert_eq!(batch.events, rows.len(), "from {from}");
        assert_eq!(batch.last, rows.last().unwrap().seq);
        assert_eq!(batch.bytes, concatenated, "from {from}");
    }
    assert!(j.fetch_batch(Seq(81), 25, usize::MAX).await.unwrap().is_none());
    close(j, w).await;
}
