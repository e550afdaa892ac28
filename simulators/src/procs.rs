//! The real binaries as child processes: reading what they print when
//! they are up.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use tokio::io::AsyncBufReadExt;

/// Waits (30 s at most) for an `edge-agent` child, started with its stdout
/// piped, to print `edge-agent listening http=.. [lan=..]`; returns its
/// HTTP and device bus addresses and keeps draining its stdout so that it
/// never blocks on a full pipe.
pub async fn edge_listening(
    child: &mut tokio::process::Child,
) -> anyhow::Result<(SocketAddr, Option<SocketAddr>)> {
    let stdout = child.stdout.take().context("edge-agent stdout is not piped")?;
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let addrs = tokio::time::timeout(Duration::from_secs(30), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(rest) = line.strip_prefix("edge-agent listening http=") {
                let mut parts = rest.split_whitespace();
                let http: SocketAddr = parts.next().unwrap_or_default().parse()?;
                let lan = match parts.next().and_then(|p| p.strip_prefix("lan=")) {
                    Some(a) => Some(a.parse::<SocketAddr>()?),
                    None => None,
                };
                return anyhow::Ok((http, lan));
            }
        }
        anyhow::bail!("edge-agent exited before listening")
    })
    .await
    .context("edge-agent did not start in 30 s")??;
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok(addrs)
}

/// Waits (60 s at most) for a `hub` child, started with its stdout piped,
/// to print `hub listening api=.. broker=..`; returns both addresses and
/// keeps draining its stdout.
pub async fn hub_listening(child: &mut tokio::process::Child) -> anyhow::Result<(SocketAddr, SocketAddr)> {
    let stdout = child.stdout.take().context("hub stdout is not piped")?;
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let addrs = tokio::time::timeout(Duration::from_secs(60), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(rest) = line.strip_prefix("hub listening api=") {
                let (api, broker) = rest.split_once(" broker=").context("no broker address")?;
                return anyhow::Ok((api.parse()?, broker.trim().parse()?));
            }
        }
        anyhow::bail!("hub exited before listening")
    })
    .await
    .context("hub did not start in 60 s")??;
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok(addrs)
}
