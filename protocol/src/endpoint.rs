//! Broker addresses: `mqtt://host:port`, as edge and hub settings write them.

/// Splits `mqtt://host:port` (or `tcp://`; port defaults to 1883) into host
/// and port. IPv6 hosts may be bracketed: `mqtt://[::1]:1883`.
pub fn parse_mqtt_url(url: &str) -> Result<(String, u16), String> {
    let rest = url
        .strip_prefix("mqtt://")
        .or_else(|| url.strip_prefix("tcp://"))
        .ok_or_else(|| format!("{url:?} must start with mqtt://"))?
        .trim_end_matches('/');
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(':') => (
            h,
            p.parse::<u16>()
                .map_err(|_| format!("{url:?}: port {p:?} is not a number"))?,
        ),
        _ => (rest, 1883),
    };
    let host = host.trim_matches(['[', ']']);
    if host.is_empty() {
        return Err(format!("{url:?} has no host"));
    }
    Ok((host.to_owned(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mqtt_urls_parse() {
        assert_eq!(parse_mqtt_url("mqtt://h:1884"), Ok(("h".into(), 1884)));
        assert_eq!(parse_mqtt_url("mqtt://h"), Ok(("h".into(), 1883)));
        assert_eq!(parse_mqtt_url("tcp://10.0.0.1:9/"), Ok(("10.0.0.1".into(), 9)));
        assert_eq!(parse_mqtt_url("mqtt://[::1]:9"), Ok(("::1".into(), 9)));
        assert!(parse_mqtt_url("mqtt://:9").is_err());
        assert!(parse_mqtt_url("mqtt://h:x").is_err());
        assert!(parse_mqtt_url("http://h").is_err());
    }
}
