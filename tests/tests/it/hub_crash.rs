//! The hub killed between its commit and its acks, then restarted: the
//! replayed batch is a duplicate, with no second effect.

use std::time::Duration;

use storegate_e2e::{Backend, HubProcess, StorePeer, both_backends, drop_pg_database, fresh_pg_database};
use storegate_protocol::envelope::{AppAck, Message};
use storegate_protocol::{Seq, StoreId};

use crate::hub_ingest::sales;

/// The next message on the ack topic that is not the restarted hub's
/// `ResendUnacked` (it asks every known store for what it may have missed;
/// harmless, and whether it reaches this peer depends on timing).
async fn next_ack(peer: &mut StorePeer) -> Message {
    peer.next_message().await
}

async fn count(db: &sqlx::AnyPool, sql: &'static str) -> i64 {
    sqlx::query_scalar::<_, i64>(sql).fetch_one(db).await.unwrap()
}

both_backends!(
    a_hub_killed_between_commit_and_ack_applies_the_replay_once,
    |backend: Backend| async move {
        let dir = tempfile::tempdir().unwrap();
        let url = match backend {
            Backend::Sqlite => format!("sqlite://{}", dir.path().join("hub.db").display()),
            Backend::Postgres => match fresh_pg_database().await {
                Some(u) => u,
                None => return,
            },
        };
        let hub = HubProcess::spawn(dir.path(), &url, &[("STOREGATE_FAILPOINT", "abort_after_commit")]).await;
        let store = StoreId::parse("s-crash").unwrap();
        let bundle = hub
            .provision(&store, &format!("mqtt://{}", hub.broker), dir.path())
            .await;
        let trust = storegate_e2e::load_bundle(&bundle);
        let peer = StorePeer::connect(hub.broker, "edge-s-crash", trust.clone(), false).await;
        peer.send_up(&sales("s-crash", 1, 10)).await;
        let status = hub.exited(Duration::from_secs(30)).await;
        assert!(!status.success(), "the failpoint aborted the hub");
        let mut peer = peer;
        assert!(
            peer.mqtt.next(Duration::from_millis(200)).await.is_none(),
            "no ack escaped before the crash"
        );

        // What the crash left: the commit happened.
        sqlx::any::install_default_drivers();
        let db = sqlx::AnyPool::connect(&url).await.unwrap();
        assert_eq!(count(&db, "SELECT COUNT(*) FROM events").await, 10);

        // Restarted, the edge (which never got its ack) sends the batch again.
        let hub = HubProcess::spawn(dir.path(), &url, &[]).await;
        let mut peer = StorePeer::connect(hub.broker, "edge-s-crash-2", trust, false).await;
        peer.send_up(&sales("s-crash", 1, 10)).await;
        assert_eq!(
            next_ack(&mut peer).await,
            Message::AppAck(AppAck {
                committed_up_to: Seq(10)
            })
        );
        peer.send_up(&sales("s-crash", 11, 12)).await;
        assert_eq!(
            next_ack(&mut peer).await,
            Message::AppAck(AppAck {
                committed_up_to: Seq(12)
            })
        );

        assert_eq!(
            count(&db, "SELECT COUNT(*) FROM events").await,
            12,
            "no event twice"
        );
        assert_eq!(
            count(
                &db,
                "SELECT CAST(SUM(delta) AS BIGINT) FROM stock_movements WHERE location = 's-crash'"
            )
            .await,
            -12,
            "no stock effect twice"
        );
        assert_eq!(
            count(
                &db,
                "SELECT on_hand FROM stock_levels WHERE location = 's-crash' AND sku = 'SKU-00000'"
            )
            .await,
            -12
        );
        assert_eq!(
            count(
                &db,
                "SELECT duplicates FROM store_sync WHERE store_id = 's-crash'"
            )
            .await,
            10
        );
        db.close().await;
        hub.terminate().await;
        if backend == Backend::Postgres {
            drop_pg_database(&url).await;
        }
    }
);
