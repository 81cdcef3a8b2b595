//! Network addresses read from the environment: `host[:port]` and HTTP(S) URLs.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr};

use serde::{Serialize, Serializer};
use url::Url;

use mmt_core::redact::{redact_url_with, UserName};

/// A host and port, written `host`, `host:port` or `[v6-address]:port`.
///
/// Credentials do not belong here, so a URL (`amqp://user:pass@host`) is rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPort {
    /// Host name or IP address (IPv6 without brackets).
    pub host: String,
    /// Port, the service's default when none was written.
    pub port: u16,
}

impl HostPort {
    /// The form a problem message asks for.
    pub const EXPECTED: &'static str =
        "host or host:port (no scheme and no credentials), e.g. rabbitmq.internal:5672";

    /// Parses `value`, using `default_port` when it names none.
    pub fn parse(value: &str, default_port: u16) -> Option<Self> {
        if value.contains("://") || value.contains(['@', '/', '?', '#']) {
            return None;
        }
        if value.chars().any(char::is_whitespace) {
            return None;
        }
        let (host, port) = split_host_port(value)?;
        let port = match port {
            Some(port) => port.parse().ok().filter(|&p: &u16| p != 0)?,
            None => default_port,
        };
        valid_host(host).then(|| Self {
            host: host.to_owned(),
            port,
        })
    }

    /// Whether this names the local machine (`localhost`, `127.0.0.1`, `::1`,
    /// `0.0.0.0`): fine on a laptop, a mistake in production.
    pub fn is_local(&self) -> bool {
        mmt_connectors::tls::is_local_host(&self.host)
    }
}

fn split_host_port(value: &str) -> Option<(&str, Option<&str>)> {
    if let Some(bracketed) = value.strip_prefix('[') {
        let (host, rest) = bracketed.split_once(']')?;
        host.parse::<Ipv6Addr>().ok()?;
        return match rest {
            "" => Some((host, None)),
            _ => Some((host, Some(rest.strip_prefix(':')?))),
        };
    }
    match value.matches(':').count() {
        0 => Some((value, None)),
        1 => value.split_once(':').map(|(h, p)| (h, Some(p))),
        _ => value.parse::<Ipv6Addr>().ok().map(|_| (value, None)),
    }
}

fn valid_host(host: &str) -> bool {
    !host.is_empty()
        && (host.parse::<IpAddr>().is_ok()
            || host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_')))
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl Serialize for HostPort {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// An `http://` or `https://` URL. `Debug`, `Display` and `Serialize` hide any
/// user-info; [`HttpUrl::as_str`] gives the URL as configured.
#[derive(Clone, PartialEq, Eq)]
pub struct HttpUrl {
    raw: String,
    parsed: Url,
}

impl HttpUrl {
    /// The form a problem message asks for.
    pub const EXPECTED: &'static str =
        "an http:// or https:// URL, e.g. http://otel-collector:4318";

    /// Parses `value` with the `url` crate (WHATWG rules), then keeps only
    /// what a collector or server address may be: http(s), a host, a port
    /// other than 0, and no whitespace (which the parser would silently strip).
    pub fn parse(value: &str) -> Option<Self> {
        if value.chars().any(char::is_whitespace) {
            return None;
        }
        let parsed = Url::parse(value).ok()?;
        let acceptable = matches!(parsed.scheme(), "http" | "https")
            && parsed.host_str().is_some_and(|host| !host.is_empty())
            && parsed.port() != Some(0);
        acceptable.then(|| Self {
            raw: value.to_owned(),
            parsed,
        })
    }

    /// The URL as configured (it may carry credentials: do not log it).
    pub fn as_str(&self) -> &str {
        &self.raw
    }

    /// Whether the scheme is `https`.
    pub fn is_https(&self) -> bool {
        self.parsed.scheme() == "https"
    }

    /// The host (an IPv6 address without brackets).
    pub fn host(&self) -> &str {
        let host = self.parsed.host_str().unwrap_or_default();
        host.strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host)
    }

    /// The port, explicit or the scheme's default.
    pub fn port(&self) -> u16 {
        self.parsed
            .port_or_known_default()
            .unwrap_or(if self.is_https() { 443 } else { 80 })
    }
}

impl fmt::Display for HttpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Some collectors take a token as the user name: it is masked too.
        f.write_str(&redact_url_with(&self.raw, UserName::Mask))
    }
}

impl fmt::Debug for HttpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HttpUrl({self})")
    }
}

impl Serialize for HttpUrl {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hp(value: &str) -> Option<HostPort> {
        HostPort::parse(value, 5672)
    }

    #[test]
    fn host_port_forms() {
        assert_eq!(
            hp("rabbit").map(|h| h.to_string()).as_deref(),
            Some("rabbit:5672")
        );
        assert_eq!(hp("rabbit:5673").map(|h| h.port), Some(5673));
        assert_eq!(hp("10.0.0.7").map(|h| h.host), Some("10.0.0.7".into()));
        assert_eq!(
            hp("[::1]:5").map(|h| h.to_string()).as_deref(),
            Some("[::1]:5")
        );
        assert_eq!(hp("fd00::7").map(|h| h.port), Some(5672));
        for bad in [
            "amqp://guest:guest@rabbit",
            "guest@rabbit",
            "rabbit:0",
            "rabbit:99999",
            "rabbit:x",
            "rab bit",
            "rabbit/vhost",
            ":5672",
            "[zz]:1",
        ] {
            assert_eq!(hp(bad), None, "{bad}");
        }
    }

    #[test]
    fn local_hosts_are_recognised() {
        for local in [
            "localhost",
            "LOCALHOST:1",
            "127.0.0.1",
            "127.1.2.3",
            "[::1]",
            "0.0.0.0",
        ] {
            assert!(hp(local).is_some_and(|h| h.is_local()), "{local}");
        }
        for remote in ["rabbit", "10.0.0.1", "localhost.example.com"] {
            assert!(hp(remote).is_some_and(|h| !h.is_local()), "{remote}");
        }
    }

    #[test]
    fn http_urls() {
        let url = HttpUrl::parse("https://collector.example:4317/v1").expect("valid");
        assert!(url.is_https());
        assert_eq!(url.host(), "collector.example");
        assert_eq!(url.port(), 4317);
        assert_eq!(HttpUrl::parse("http://c").map(|u| u.port()), Some(80));
        for bad in [
            "collector:4317",
            "grpc://c:4317",
            "http://",
            "http://a b",
            "http://c:0",
        ] {
            assert!(HttpUrl::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn http_url_credentials_are_hidden() {
        let url = HttpUrl::parse("https://user:tok3n@collector:4318").expect("valid");
        for shown in [
            url.to_string(),
            format!("{url:?}"),
            serde_json::to_string(&url).unwrap_or_default(),
        ] {
            assert!(!shown.contains("tok3n"), "{shown}");
            assert!(shown.contains("collector:4318"), "{shown}");
        }
    }
}
