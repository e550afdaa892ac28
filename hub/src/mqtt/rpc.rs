//! The RPC opener: checks and decodes lanes' RPC requests and hands them
//! to the commerce side.

use storegate_protocol::envelope::{self, Message};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{RawRpc, RpcJob, STALE_RPC_SLACK_MS, Trust};
use crate::db::Db;

/// Checks lanes' RPC requests and hands the good ones to the commerce side;
/// signed ones that are unusable are quarantined, like uplink.
pub(super) async fn rpc_opener(
    db: Db,
    trust: Trust,
    mut rx: mpsc::Receiver<RawRpc>,
    commerce: mpsc::Sender<RpcJob>,
    shutdown: CancellationToken,
) {
    loop {
        let raw = tokio::select! {
            () = shutdown.cancelled() => return,
            r = rx.recv() => match r { Some(r) => r, None => return },
        };
        let Ok(body) = trust.open(&raw.topic, &raw.text, &raw.payload).await else {
            continue;
        };
        match envelope::decode_body(body) {
            Ok(Message::RpcRequest(request)) => {
                // Held back by a broker long past its own deadline (the
                // edge's clock, with five minutes of slack): the lane gave
                // up on it; acting on it now would surprise everyone.
                let deadline = request
                    .sent_at_ms
                    .saturating_add(i64::from(request.timeout_ms))
                    .saturating_add(STALE_RPC_SLACK_MS);
                if deadline < crate::db::now_ms() {
                    trust.count("rpc_stale");
                    continue;
                }
                let job = RpcJob {
                    store: raw.topic.store().clone(),
                    request,
                    received: raw.received,
                };
                if commerce.try_send(job).is_err() {
                    trust.count("rpc_queue_full");
                }
            }
            Ok(other) => {
                raw.received_msg()
                    .unexpected(&db, other.name(), "an RPC request")
                    .await;
            }
            Err(e) => {
                raw.received_msg().undecodable(&db, &e).await;
            }
        }
    }
}
