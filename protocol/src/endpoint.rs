//! Broker addresses: `mqtts://host:port` (TLS) or `mqtt://host:port`
//! (plain), as edge and hub settings and store bundles write them.

use std::net::IpAddr;

/// A parsed broker address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerUrl {
    /// Host name or IP (without brackets).
    pub host: String,
    /// Port (1883 plain, 8883 TLS by default).
    pub port: u16,
    /// TLS (`mqtts://`, `ssl://`).
    pub tls: bool,
}

impl BrokerUrl {
    /// Parses `mqtt://`, `tcp://` (plain, default port 1883), `mqtts://` or
    /// `ssl://` (TLS, default port 8883). IPv6 hosts may be bracketed:
    /// `mqtt://[::1]:1883`.
    pub fn parse(url: &str) -> Result<BrokerUrl, String> {
        let (rest, tls) = if let Some(r) = url
            .strip_prefix("mqtts://")
            .or_else(|| url.strip_prefix("ssl://"))
        {
            (r, true)
        } else if let Some(r) = url.strip_prefix("mqtt://").or_else(|| url.strip_prefix("tcp://")) {
            (r, false)
        } else {
            return Err(format!(
                "{url:?} must start with mqtts:// (TLS) or mqtt:// (plain)"
            ));
        };
        let rest = rest.trim_end_matches('/');
        let default_port = if tls { 8883 } else { 1883 };
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(':') => (
                h,
                p.parse::<u16>()
                    .map_err(|_| format!("{url:?}: port {p:?} is not a number"))?,
            ),
            _ => (rest, default_port),
        };
        let host = host.trim_matches(['[', ']']);
        if host.is_empty() {
            return Err(format!("{url:?} has no host"));
        }
        Ok(BrokerUrl {
            host: host.to_owned(),
            port,
            tls,
        })
    }

    /// Whether the host is this machine (`localhost`, 127.0.0.0/8, `::1`):
    /// the only place plain MQTT is allowed without an explicit setting.
    pub fn is_loopback(&self) -> bool {
        self.host.eq_ignore_ascii_case("localhost")
            || self.host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
    }
}

impl std::fmt::Display for BrokerUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.tls { "mqtts" } else { "mqtt" };
        if self.host.contains(':') {
            write!(f, "{scheme}://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{scheme}://{}:{}", self.host, self.port)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(url: &str) -> Result<(String, u16, bool), String> {
        BrokerUrl::parse(url).map(|b| (b.host, b.port, b.tls))
    }

    #[test]
    fn broker_urls_parse() {
        assert_eq!(p("mqtt://h:1884"), Ok(("h".into(), 1884, false)));
        assert_eq!(p("mqtt://h"), Ok(("h".into(), 1883, false)));
        assert_eq!(p("mqtts://h"), Ok(("h".into(), 8883, true)));
        assert_eq!(p("ssl://h:9"), Ok(("h".into(), 9, true)));
        assert_eq!(p("tcp://10.0.0.1:9/"), Ok(("10.0.0.1".into(), 9, false)));
        assert_eq!(p("mqtt://[::1]:9"), Ok(("::1".into(), 9, false)));
        assert!(p("mqtt://:9").is_err());
        assert!(p("mqtt://h:x").is_err());
        assert!(p("http://h").is_err());
        assert_eq!(
            BrokerUrl::parse("mqtts://[::1]:9").unwrap().to_string(),
            "mqtts://[::1]:9"
        );
    }

    #[test]
    fn loopback_is_recognised() {
        for (url, lo) in [
            ("mqtt://localhost:1", true),
            ("mqtt://127.0.0.1:1", true),
            ("mqtt://127.9.0.1:1", true),
            ("mqtt://[::1]:1", true),
            ("mqtt://10.0.0.1:1", false),
            ("mqtt://hub.example.com:1", false),
            ("mqtt://0.0.0.0:1", false),
        ] {
            assert_eq!(BrokerUrl::parse(url).unwrap().is_loopback(), lo, "{url}");
        }
    }
}
