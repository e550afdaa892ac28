//! Network fault injection: a TCP proxy whose link can be cut and restored,
//! standing for a store's WAN (or any link) going down.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// A TCP proxy in front of a broker: [`Proxy::cut`] drops every connection
/// and refuses new ones (the store's WAN is down), [`Proxy::restore`] lets
/// them through again.
#[derive(Debug, Clone)]
pub struct Proxy {
    /// Where clients connect.
    pub addr: SocketAddr,
    /// True while the link is cut.
    cut: Arc<AtomicBool>,
    /// Cancelled to drop the live connections; replaced on each cut.
    live: Arc<Mutex<CancellationToken>>,
    /// Where new connections go.
    target: Arc<Mutex<SocketAddr>>,
}

impl Proxy {
    /// Starts a proxy to `target` on a free loopback port.
    pub async fn start(target: SocketAddr) -> std::io::Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let proxy = Proxy {
            addr,
            cut: Arc::new(AtomicBool::new(false)),
            live: Arc::new(Mutex::new(CancellationToken::new())),
            target: Arc::new(Mutex::new(target)),
        };
        let p = proxy.clone();
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                if p.cut.load(Ordering::Acquire) {
                    drop(inbound);
                    continue;
                }
                let Ok(token) = p.live.lock().map(|t| t.clone()) else {
                    continue;
                };
                let Ok(target) = p.target.lock().map(|t| *t) else {
                    continue;
                };
                tokio::spawn(async move {
                    let Ok(outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    let (mut a, mut b) = (inbound, outbound);
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut a, &mut b) => {}
                        () = token.cancelled() => {}
                    }
                });
            }
        });
        Ok(proxy)
    }

    /// Cuts the link: live connections drop, new ones are refused.
    pub fn cut(&self) {
        self.cut.store(true, Ordering::Release);
        if let Ok(mut live) = self.live.lock() {
            live.cancel();
            *live = CancellationToken::new();
        }
    }

    /// True while the link is cut.
    pub fn is_cut(&self) -> bool {
        self.cut.load(Ordering::Acquire)
    }

    /// Restores the link.
    pub fn restore(&self) {
        self.cut.store(false, Ordering::Release);
    }

    /// Sends new connections to `target` from now on (the far end moved,
    /// e.g. a restarted broker on a new port); live ones are dropped, as a
    /// broker restart would.
    pub fn retarget(&self, target: SocketAddr) {
        if let Ok(mut t) = self.target.lock() {
            *t = target;
        }
        if let Ok(mut live) = self.live.lock() {
            live.cancel();
            *live = CancellationToken::new();
        }
    }
}
