//! The misc worker (presence, downlink acks, downlink sends, resend
//! invitations) and the downlink sweeper.

use std::sync::atomic::Ordering;
use std::time::Duration;

use storegate_protocol::StoreId;
use storegate_protocol::envelope::{self, Message, ResendUnacked};
use storegate_protocol::topic::WanTopic;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{AckMsg, Link, Misc, Trust};
use crate::db::Db;
use crate::downlink;

pub(super) async fn misc_worker(
    db: Db,
    link: Link,
    trust: Trust,
    mut rx: mpsc::UnboundedReceiver<Misc>,
    acks: mpsc::UnboundedSender<AckMsg>,
    shutdown: CancellationToken,
) {
    loop {
        let msg = tokio::select! {
            () = shutdown.cancelled() => return,
            m = rx.recv() => match m { Some(m) => m, None => return },
        };
        match msg {
            Misc::Presence(job) => {
                let Ok(body) = trust.open(&job.wan, &job.topic, &job.payload).await else {
                    let _ = acks.send(AckMsg::Done(job.receipt));
                    continue;
                };
                match envelope::decode_body(body) {
                    Ok(Message::Presence(p)) if p.store == job.store => {
                        if let Err(e) = crate::stores::presence(&db, &p).await {
                            tracing::warn!(error = %e, store = %job.store, "presence not stored");
                        } else if p.online {
                            if let Err(e) = crate::catalog::snapshot_if_new(&db, &job.store).await {
                                tracing::warn!(error = %e, store = %job.store, "catalog snapshot not queued; retried at next presence");
                            }
                            send_pending(&db, &link, &job.store).await;
                        }
                    }
                    Ok(other) => job.received().unexpected(&db, other.name(), "a status").await,
                    Err(e) => job.received().undecodable(&db, &e).await,
                }
                let _ = acks.send(AckMsg::Done(job.receipt));
            }
            Misc::DownAck(store, seq, receipt) => {
                match downlink::acked(&db, &store, seq).await {
                    Ok(downlink::AckOutcome::Beyond { highest }) => {
                        trust.count("down_ack_beyond");
                        tracing::debug!(store = %store, acked = seq.0, highest = highest.0, "downlink ack above anything sent to the store ignored");
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, store = %store, "down ack not stored"),
                }
                let _ = acks.send(AckMsg::Done(receipt));
                send_pending(&db, &link, &store).await;
            }
            Misc::SendDownlink(store) => send_pending(&db, &link, &store).await,
            Misc::InviteResends => invite_resends(&db, &link).await,
        }
    }
}

/// Tells every store the hub knows to send its unacked uplinks again.
async fn invite_resends(db: &Db, link: &Link) {
    // Every store that has synced, and every store with a valid credential
    // (one that reconnected first may have sent its very first batch into
    // the void).
    let stores: Vec<String> = match sqlx::query_scalar(
        "SELECT store_id FROM store_sync UNION \
         SELECT store_id FROM store_credentials WHERE revoked_ms IS NULL ORDER BY 1",
    )
    .fetch_all(&db.pool)
    .await
    {
        Ok(s) => s,
        Err(e) => return tracing::warn!(error = %e, "stores unreadable; they resend at their ack timeout"),
    };
    let message = Message::ResendUnacked(ResendUnacked {});
    let mut invited = 0u64;
    for s in stores {
        if let Ok(store) = StoreId::parse(s) {
            link.send(&WanTopic::Ack(store), &message).await;
            invited += 1;
        }
    }
    metrics::counter!("hub_resend_invitations_total").increment(invited);
    tracing::info!(
        stores = invited,
        "broker session was lost; asked every store to resend what is unacked"
    );
}

/// Sends the store's next pending downlink batch, if any.
async fn send_pending(db: &Db, link: &Link, store: &StoreId) {
    let (acked, _) = match downlink::cursor(db, store).await {
        Ok(c) => c,
        Err(e) => return tracing::warn!(error = %e, "downlink cursor unreadable"),
    };
    match downlink::pending_batch(db, store, acked).await {
        Ok(Some(batch)) => {
            metrics::counter!("hub_downlink_batches_total").increment(1);
            link.send(&WanTopic::Down(store.clone()), &Message::DownBatch(batch))
                .await;
        }
        Ok(None) => {}
        Err(e) => tracing::warn!(error = %e, "downlink unreadable"),
    }
}

pub(super) async fn sweeper(db: Db, link: Link, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        if !link.connected.load(Ordering::Acquire) {
            continue;
        }
        match downlink::claim_stale(&db, 10_000).await {
            Ok(stores) => {
                for s in stores {
                    send_pending(&db, &link, &s).await;
                }
            }
            Err(e) => tracing::warn!(error = %e, "downlink sweep failed"),
        }
    }
}
