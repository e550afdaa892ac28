//! A raw MQTT 3.1.1 client for attacking a broker in tests: it reports
//! exactly what the broker did (refused the TLS handshake, refused the
//! CONNECT with a code, closed the connection, granted or refused a
//! subscription, delivered messages), where a full client would retry and
//! hide it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// What a broker did with an attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The TLS handshake failed (no or untrusted certificate, revoked).
    TlsRefused,
    /// CONNACK with this non-zero return code.
    ConnectRefused(u8),
    /// The broker closed the connection (after CONNECT or after a packet).
    Closed,
    /// Connected; the packet was taken (PUBACK for a publish).
    Accepted,
    /// SUBACK return codes (0x80: refused), and the messages delivered in
    /// the listening window that followed.
    Subscribed {
        /// One per filter.
        codes: Vec<u8>,
        /// (topic, payload) delivered afterwards.
        delivered: Vec<(String, Vec<u8>)>,
    },
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A connected probe.
pub struct Probe {
    io: Box<dyn Io>,
}

impl std::fmt::Debug for Probe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Probe")
    }
}

fn string(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s);
}

fn frame(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![kind];
    let mut len = body.len();
    loop {
        let mut b = (len & 0x7F) as u8;
        len >>= 7;
        if len > 0 {
            b |= 0x80;
        }
        out.push(b);
        if len == 0 {
            break;
        }
    }
    out.extend_from_slice(body);
    out
}

async fn read_packet(io: &mut dyn Io, within: Duration) -> Option<(u8, Vec<u8>)> {
    tokio::time::timeout(within, async {
        let first = io.read_u8().await.ok()?;
        let mut len = 0usize;
        for i in 0..4 {
            let b = io.read_u8().await.ok()?;
            len |= usize::from(b & 0x7F) << (7 * i);
            if b & 0x80 == 0 {
                break;
            }
        }
        let mut body = vec![0; len];
        io.read_exact(&mut body).await.ok()?;
        Some((first, body))
    })
    .await
    .ok()
    .flatten()
}

/// Whether the peer closed: a read returns end of file (or fails) within
/// `within`.
async fn closed(io: &mut dyn Io, within: Duration) -> bool {
    let mut b = [0u8; 1];
    matches!(
        tokio::time::timeout(within, io.read(&mut b)).await,
        Ok(Ok(0) | Err(_))
    )
}

impl Probe {
    /// Connects (over TLS with `tls`, naming the server by its IP) and
    /// sends CONNECT with `client_id` (clean session, 30 s keep-alive).
    /// Returns the probe when CONNACK accepted it, or what happened.
    pub async fn connect(
        addr: SocketAddr,
        tls: Option<Arc<rustls::ClientConfig>>,
        client_id: &str,
    ) -> Result<Probe, Outcome> {
        let tcp = TcpStream::connect(addr).await.map_err(|_| Outcome::Closed)?;
        let over_tls = tls.is_some();
        let mut io: Box<dyn Io> = match tls {
            Some(cfg) => {
                let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
                let stream = tokio_rustls::TlsConnector::from(cfg)
                    .connect(name, tcp)
                    .await
                    .map_err(|_| Outcome::TlsRefused)?;
                Box::new(stream)
            }
            None => Box::new(tcp),
        };
        let mut body = Vec::new();
        string(&mut body, b"MQTT");
        body.extend_from_slice(&[4, 0x02, 0, 30]);
        string(&mut body, client_id.as_bytes());
        let refused = if over_tls {
            Outcome::TlsRefused
        } else {
            Outcome::Closed
        };
        if io.write_all(&frame(0x10, &body)).await.is_err() {
            return Err(refused);
        }
        // A TLS 1.3 server that refuses the client certificate says so
        // after the handshake, at the first read.
        match read_packet(io.as_mut(), Duration::from_secs(5)).await {
            Some((0x20, b)) if b.len() == 2 && b[1] == 0 => Ok(Probe { io }),
            Some((0x20, b)) if b.len() == 2 => Err(Outcome::ConnectRefused(b[1])),
            Some(_) => Err(Outcome::Closed),
            None => Err(refused),
        }
    }

    /// Publishes at QoS 1; `Accepted` on PUBACK, `Closed` if the broker
    /// closes the connection instead.
    pub async fn publish(mut self, topic: &str, payload: &[u8]) -> (Outcome, Option<Probe>) {
        let mut body = Vec::new();
        string(&mut body, topic.as_bytes());
        body.extend_from_slice(&[0, 1]);
        body.extend_from_slice(payload);
        if self.io.write_all(&frame(0x32, &body)).await.is_err() {
            return (Outcome::Closed, None);
        }
        loop {
            match read_packet(self.io.as_mut(), Duration::from_secs(3)).await {
                Some((0x40, _)) => return (Outcome::Accepted, Some(self)),
                Some(_) => continue,
                None => return (Outcome::Closed, None),
            }
        }
    }

    /// Subscribes to `filter` at QoS 1 and listens for `window`.
    pub async fn subscribe(self, filter: &str, window: Duration) -> Outcome {
        match self.subscribe_only(filter).await {
            Ok((probe, codes)) => probe.listen(codes, window).await,
            Err(o) => o,
        }
    }

    /// Subscribes to `filter` at QoS 1; returns once the SUBACK is in, with
    /// its return codes (0x80: refused), or `Closed`.
    pub async fn subscribe_only(mut self, filter: &str) -> Result<(Probe, Vec<u8>), Outcome> {
        let mut body = vec![0, 7];
        string(&mut body, filter.as_bytes());
        body.push(1);
        if self.io.write_all(&frame(0x82, &body)).await.is_err() {
            return Err(Outcome::Closed);
        }
        match read_packet(self.io.as_mut(), Duration::from_secs(3)).await {
            Some((0x90, b)) if b.len() > 2 => Ok((self, b[2..].to_vec())),
            _ => Err(Outcome::Closed),
        }
    }

    /// Collects what is delivered for `window` (acking QoS 1).
    pub async fn listen(mut self, codes: Vec<u8>, window: Duration) -> Outcome {
        let mut delivered = Vec::new();
        let deadline = tokio::time::Instant::now() + window;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                break;
            }
            match read_packet(self.io.as_mut(), left).await {
                Some((first, b)) if first >> 4 == 3 => {
                    let tl = usize::from(u16::from_be_bytes([b[0], b[1]]));
                    let topic = String::from_utf8_lossy(&b[2..2 + tl]).into_owned();
                    let mut at = 2 + tl;
                    let qos = (first >> 1) & 3;
                    if qos > 0 {
                        let id = [b[at], b[at + 1]];
                        at += 2;
                        let _ = self.io.write_all(&[0x40, 2, id[0], id[1]]).await;
                    }
                    delivered.push((topic, b[at..].to_vec()));
                }
                Some(_) => {}
                None => {
                    if closed(self.io.as_mut(), Duration::from_millis(1)).await {
                        return Outcome::Closed;
                    }
                    break;
                }
            }
        }
        Outcome::Subscribed { codes, delivered }
    }

    /// Whether the broker closes the connection within `within`.
    pub async fn is_closed_within(mut self, within: Duration) -> bool {
        closed(self.io.as_mut(), within).await
    }
}
