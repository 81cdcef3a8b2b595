//! Where a callback may go: the guard against server-side request forgery.
//!
//! A callback URL is chosen by the client, and the server POSTs to it: without
//! a guard, a client could make the server reach its own loopback services,
//! the private network behind it, or the cloud's metadata service (and its
//! credentials). So the destination *address* is judged, twice:
//!
//! - at submission, the host is resolved and every address it names must be
//!   allowed, or the request is refused (422, naming the rule, never the URL);
//! - at delivery, the HTTP client's resolver ([`GuardedResolver`]) drops the
//!   refused addresses from what DNS answers at connect time, so a name that
//!   resolved to a public address at submission and to a private one later
//!   (DNS rebinding) still never reaches it. IP literals pass through the
//!   same resolver. Redirects and proxies are off for callbacks.
//!
//! [`TargetPolicy::refusal`] is the one decision both use. Refused always:
//! unspecified, link-local (169.254.0.0/16, fe80::/10), multicast, broadcast,
//! reserved (240.0.0.0/4) and cloud-metadata addresses (169.254.169.254,
//! fd00:ec2::254, Alibaba's 100.100.100.200, Azure's 168.63.129.16). Refused
//! unless the operator allows private targets (`MMT_WEBHOOK_ALLOW_PRIVATE_TARGETS`,
//! for receivers on the premises): loopback, private (RFC 1918, fc00::/7) and
//! shared (100.64.0.0/10) addresses. IPv6 forms that embed an IPv4 address
//! (IPv4-mapped, IPv4-compatible, NAT64 64:ff9b::/96, 6to4 2002::/16) are
//! judged by the IPv4 address they carry.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use ureq::unversioned::resolver::{DefaultResolver, ResolvedSocketAddrs, Resolver};
use ureq::unversioned::transport::NextTimeout;

/// Longest callback URL accepted.
pub const MAX_CALLBACK_URL: usize = 2048;

/// Longest a submission waits for the callback host to resolve.
const SUBMISSION_RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// Why an address may not receive callbacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blocked {
    Unspecified,
    Loopback,
    Private,
    SharedAddressSpace,
    LinkLocal,
    CloudMetadata,
    Multicast,
    Broadcast,
    Reserved,
}

impl Blocked {
    /// Whether `MMT_WEBHOOK_ALLOW_PRIVATE_TARGETS` lifts this rule.
    fn lifted_by_private_switch(self) -> bool {
        matches!(
            self,
            Self::Loopback | Self::Private | Self::SharedAddressSpace
        )
    }
}

impl fmt::Display for Blocked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Unspecified => "an unspecified address",
            Self::Loopback => "a loopback address",
            Self::Private => "a private address (RFC 1918 or IPv6 unique local)",
            Self::SharedAddressSpace => "a shared address (100.64.0.0/10, carrier-grade NAT)",
            Self::LinkLocal => "a link-local address",
            Self::CloudMetadata => "a cloud metadata address",
            Self::Multicast => "a multicast address",
            Self::Broadcast => "the broadcast address",
            Self::Reserved => "a reserved address",
        })
    }
}

/// Which addresses callbacks may reach.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TargetPolicy {
    /// `MMT_WEBHOOK_ALLOW_PRIVATE_TARGETS`: loopback, private and shared
    /// addresses allowed too (receivers on the premises).
    pub allow_private: bool,
}

impl TargetPolicy {
    /// The rule that refuses `ip`, or `None` if callbacks may reach it.
    pub fn refusal(&self, ip: IpAddr) -> Option<Blocked> {
        classify(ip).filter(|rule| !(self.allow_private && rule.lifted_by_private_switch()))
    }

    /// The addresses of `resolved` callbacks may reach, in their order; the
    /// rule of the first refused one when none is left.
    pub fn allowed(&self, resolved: &[SocketAddr]) -> Result<Vec<SocketAddr>, Blocked> {
        let mut first_refusal = None;
        let allowed: Vec<SocketAddr> = resolved
            .iter()
            .filter(|address| match self.refusal(address.ip()) {
                None => true,
                Some(rule) => {
                    first_refusal.get_or_insert(rule);
                    false
                }
            })
            .copied()
            .collect();
        match (allowed.is_empty(), first_refusal) {
            (true, Some(rule)) => Err(rule),
            _ => Ok(allowed),
        }
    }
}

/// The rule an address falls under, whatever the policy.
fn classify(ip: IpAddr) -> Option<Blocked> {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

/// Cloud metadata services reachable from inside a VM.
const METADATA_V4: [Ipv4Addr; 3] = [
    // AWS, GCP, Azure IMDS, Oracle, OpenStack, DigitalOcean.
    Ipv4Addr::new(169, 254, 169, 254),
    // Alibaba Cloud.
    Ipv4Addr::new(100, 100, 100, 200),
    // Azure's WireServer.
    Ipv4Addr::new(168, 63, 129, 16),
];

/// AWS's IMDS over IPv6.
const METADATA_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x0254);

fn classify_v4(ip: Ipv4Addr) -> Option<Blocked> {
    let [a, b, ..] = ip.octets();
    if METADATA_V4.contains(&ip) {
        Some(Blocked::CloudMetadata)
    } else if a == 0 {
        // 0.0.0.0/8, "this network": connecting to it reaches the local host.
        Some(Blocked::Unspecified)
    } else if ip.is_loopback() {
        Some(Blocked::Loopback)
    } else if ip.is_private() {
        Some(Blocked::Private)
    } else if a == 100 && (b & 0xc0) == 64 {
        Some(Blocked::SharedAddressSpace)
    } else if ip.is_link_local() {
        Some(Blocked::LinkLocal)
    } else if ip.is_multicast() {
        Some(Blocked::Multicast)
    } else if ip.is_broadcast() {
        Some(Blocked::Broadcast)
    } else if a >= 240 {
        Some(Blocked::Reserved)
    } else {
        None
    }
}

fn classify_v6(ip: Ipv6Addr) -> Option<Blocked> {
    if ip == METADATA_V6 {
        return Some(Blocked::CloudMetadata);
    }
    if ip.is_unspecified() {
        return Some(Blocked::Unspecified);
    }
    if ip.is_loopback() {
        return Some(Blocked::Loopback);
    }
    if let Some(v4) = embedded_v4(ip) {
        return classify_v4(v4);
    }
    let first = ip.segments()[0];
    if ip.is_multicast() {
        Some(Blocked::Multicast)
    } else if ip.is_unicast_link_local() {
        Some(Blocked::LinkLocal)
    } else if ip.is_unique_local() || (first & 0xffc0) == 0xfec0 {
        // fc00::/7, and the deprecated site-local fec0::/10.
        Some(Blocked::Private)
    } else {
        None
    }
}

/// The IPv4 address an IPv6 address stands for, in the forms that route to it.
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let segments = ip.segments();
    let low =
        |s: &[u16]| Ipv4Addr::new((s[0] >> 8) as u8, s[0] as u8, (s[1] >> 8) as u8, s[1] as u8);
    if let Some(mapped) = ip.to_ipv4_mapped() {
        return Some(mapped);
    }
    match segments {
        // IPv4-compatible ::a.b.c.d (deprecated, still routed by some stacks).
        [0, 0, 0, 0, 0, 0, _, _] => Some(low(&segments[6..])),
        // NAT64, the well-known prefix 64:ff9b::/96.
        [0x64, 0xff9b, 0, 0, 0, 0, _, _] => Some(low(&segments[6..])),
        // 6to4, 2002:a.b.c.d::/48.
        [0x2002, _, _, ..] => Some(low(&segments[1..])),
        _ => None,
    }
}

/// Why a callback URL is refused. The texts name the rule, never the URL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error(
        "callback_url must be an http(s) URL with a host, of at most {MAX_CALLBACK_URL} characters"
    )]
    NotHttp,
    #[error("callback_url's host could not be resolved")]
    Unresolvable,
    #[error("callback_url points at {0}, which callbacks may not reach")]
    Refused(Blocked),
}

/// A callback URL, checked for its form.
#[derive(Debug, Clone)]
pub struct CallbackTarget(url::Url);

impl CallbackTarget {
    /// An http(s) URL with a host, at most [`MAX_CALLBACK_URL`] characters.
    pub fn parse(text: &str) -> Result<Self, TargetError> {
        if text.len() > MAX_CALLBACK_URL || text.contains(char::is_whitespace) {
            return Err(TargetError::NotHttp);
        }
        let url = url::Url::parse(text).map_err(|_| TargetError::NotHttp)?;
        let has_host = url.host_str().is_some_and(|host| !host.is_empty());
        if !matches!(url.scheme(), "http" | "https") || !has_host {
            return Err(TargetError::NotHttp);
        }
        Ok(Self(url))
    }

    /// Resolves the host (an IP literal as itself) and judges every address
    /// it names: refused if any is. Blocking (DNS).
    pub fn check(&self, policy: TargetPolicy) -> Result<(), TargetError> {
        let addresses = match self.0.host() {
            Some(url::Host::Ipv4(ip)) => vec![IpAddr::V4(ip)],
            Some(url::Host::Ipv6(ip)) => vec![IpAddr::V6(ip)],
            Some(url::Host::Domain(_)) => self
                .0
                .socket_addrs(|| None)
                .map_err(|_| TargetError::Unresolvable)?
                .into_iter()
                .map(|address| address.ip())
                .collect(),
            None => return Err(TargetError::NotHttp),
        };
        if addresses.is_empty() {
            return Err(TargetError::Unresolvable);
        }
        match addresses.into_iter().find_map(|ip| policy.refusal(ip)) {
            Some(rule) => Err(TargetError::Refused(rule)),
            None => Ok(()),
        }
    }

    /// [`Self::check`] off the async threads, waiting at most a few seconds
    /// for DNS.
    pub async fn check_async(self, policy: TargetPolicy) -> Result<(), TargetError> {
        let lookup = tokio::task::spawn_blocking(move || self.check(policy));
        match tokio::time::timeout(SUBMISSION_RESOLVE_TIMEOUT, lookup).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) | Err(_) => Err(TargetError::Unresolvable),
        }
    }
}

/// The marker inside the I/O error [`GuardedResolver`] fails with, so the
/// delivery can tell a refused target from a network failure.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the callback target resolves only to {0}, which callbacks may not reach")]
pub struct TargetRefused(pub Blocked);

/// ureq's resolver, less the addresses the policy refuses: the check happens
/// on the addresses the connection is then made to.
#[derive(Debug)]
pub struct GuardedResolver<R = DefaultResolver> {
    policy: TargetPolicy,
    inner: R,
}

impl GuardedResolver {
    pub fn new(policy: TargetPolicy) -> Self {
        Self {
            policy,
            inner: DefaultResolver::default(),
        }
    }
}

impl<R: Resolver> Resolver for GuardedResolver<R> {
    fn resolve(
        &self,
        uri: &ureq::http::Uri,
        config: &ureq::config::Config,
        timeout: NextTimeout,
    ) -> Result<ResolvedSocketAddrs, ureq::Error> {
        let resolved = self.inner.resolve(uri, config, timeout)?;
        let allowed = self.policy.allowed(&resolved).map_err(|rule| {
            ureq::Error::Io(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                TargetRefused(rule),
            ))
        })?;
        let mut kept = self.empty();
        // At most as many as were resolved, so within the array's capacity.
        for address in allowed {
            kept.push(address);
        }
        Ok(kept)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    const STRICT: TargetPolicy = TargetPolicy {
        allow_private: false,
    };
    const ON_PREMISES: TargetPolicy = TargetPolicy {
        allow_private: true,
    };

    #[test]
    fn every_forbidden_range_is_refused_by_its_rule() {
        use Blocked::*;
        let cases = [
            ("127.0.0.1", Loopback),
            ("127.255.0.9", Loopback),
            ("::1", Loopback),
            ("10.1.2.3", Private),
            ("172.16.0.1", Private),
            ("172.31.255.255", Private),
            ("192.168.1.1", Private),
            ("fc00::1", Private),
            ("fd12:3456::1", Private),
            ("fec0::1", Private),
            ("100.64.0.1", SharedAddressSpace),
            ("100.127.255.254", SharedAddressSpace),
            ("169.254.1.1", LinkLocal),
            ("fe80::1", LinkLocal),
            ("169.254.169.254", CloudMetadata),
            ("fd00:ec2::254", CloudMetadata),
            ("100.100.100.200", CloudMetadata),
            ("168.63.129.16", CloudMetadata),
            ("224.0.0.1", Multicast),
            ("239.255.255.250", Multicast),
            ("ff02::1", Multicast),
            ("0.0.0.0", Unspecified),
            ("0.1.2.3", Unspecified),
            ("::", Unspecified),
            ("255.255.255.255", Broadcast),
            ("240.0.0.1", Reserved),
            // IPv6 forms carrying an IPv4 address are judged by it.
            ("::ffff:127.0.0.1", Loopback),
            ("::ffff:10.0.0.1", Private),
            ("::ffff:169.254.169.254", CloudMetadata),
            ("::ffff:100.64.1.1", SharedAddressSpace),
            ("::ffff:0.0.0.0", Unspecified),
            ("::ffff:224.0.0.1", Multicast),
            ("::ffff:255.255.255.255", Broadcast),
            ("::ffff:169.254.3.4", LinkLocal),
            ("::10.0.0.1", Private),
            ("64:ff9b::a9fe:a9fe", CloudMetadata),
            ("2002:7f00:1::1", Loopback),
        ];
        for (address, rule) in cases {
            assert_eq!(STRICT.refusal(ip(address)), Some(rule), "{address}");
        }
    }

    #[test]
    fn public_addresses_are_allowed() {
        for address in [
            "93.184.216.34",
            "8.8.8.8",
            "100.63.255.255",
            "100.128.0.1",
            "172.32.0.1",
            "2606:4700::1111",
            "::ffff:93.184.216.34",
            "2002:5db8:d822::1",
        ] {
            assert_eq!(STRICT.refusal(ip(address)), None, "{address}");
        }
    }

    #[test]
    fn the_private_switch_lifts_only_loopback_private_and_shared() {
        for address in [
            "127.0.0.1",
            "::1",
            "10.0.0.1",
            "fd12::1",
            "100.64.0.1",
            "::ffff:192.168.0.1",
        ] {
            assert_eq!(ON_PREMISES.refusal(ip(address)), None, "{address}");
        }
        for address in [
            "169.254.169.254",
            "fd00:ec2::254",
            "169.254.1.1",
            "fe80::1",
            "224.0.0.1",
            "0.0.0.0",
            "::",
            "255.255.255.255",
            "::ffff:169.254.169.254",
        ] {
            assert!(ON_PREMISES.refusal(ip(address)).is_some(), "{address}");
        }
    }

    #[test]
    fn resolved_addresses_are_filtered_and_all_refused_is_an_error() {
        let at = |text: &str| SocketAddr::new(ip(text), 443);
        let mixed = [
            at("10.0.0.7"),
            at("93.184.216.34"),
            at("::1"),
            at("2606:4700::1111"),
        ];
        assert_eq!(
            STRICT.allowed(&mixed),
            Ok(vec![at("93.184.216.34"), at("2606:4700::1111")])
        );
        assert_eq!(
            STRICT.allowed(&[at("169.254.169.254"), at("127.0.0.1")]),
            Err(Blocked::CloudMetadata)
        );
        assert_eq!(
            ON_PREMISES.allowed(&[at("169.254.169.254"), at("127.0.0.1")]),
            Ok(vec![at("127.0.0.1")])
        );
        assert_eq!(STRICT.allowed(&[]), Ok(vec![]));
    }

    #[test]
    fn urls_are_judged_by_the_addresses_they_name() {
        let check = |url: &str, policy| CallbackTarget::parse(url).and_then(|t| t.check(policy));
        // IP literals, in the forms a URL parser accepts, need no DNS.
        for url in [
            "http://127.0.0.1:8080/hook",
            "http://[::1]/hook",
            "https://10.1.2.3/hook",
            "http://169.254.169.254/latest/meta-data/",
            "http://[::ffff:169.254.169.254]/",
            "http://0x7f.1/hook",
            "http://2130706433/hook",
            "http://[fd00:ec2::254]/",
        ] {
            assert!(
                matches!(check(url, STRICT), Err(TargetError::Refused(_))),
                "{url}"
            );
        }
        // A name resolving to loopback (from /etc/hosts: no traffic).
        assert_eq!(
            check("http://localhost:9/hook", STRICT),
            Err(TargetError::Refused(Blocked::Loopback))
        );
        assert_eq!(check("http://localhost:9/hook", ON_PREMISES), Ok(()));
        assert_eq!(check("http://127.0.0.1:9/hook", ON_PREMISES), Ok(()));
        assert_eq!(
            check("http://169.254.169.254/", ON_PREMISES),
            Err(TargetError::Refused(Blocked::CloudMetadata))
        );
        assert_eq!(check("https://93.184.216.34/hook", STRICT), Ok(()));
        // The message names the rule, not the URL.
        let message = check("http://10.0.0.1/secret-path?token=abc", STRICT)
            .unwrap_err()
            .to_string();
        assert!(message.contains("private"), "{message}");
        assert!(
            !message.contains("10.0.0.1") && !message.contains("token"),
            "{message}"
        );
    }

    #[test]
    fn only_http_urls_with_a_host_are_accepted() {
        assert!(CallbackTarget::parse("https://ehr.example/hooks/mmt").is_ok());
        for bad in [
            "ftp://ehr.example",
            "https://",
            "https://a b",
            "file:///etc/passwd",
            "hook",
        ] {
            assert_eq!(
                CallbackTarget::parse(bad).unwrap_err(),
                TargetError::NotHttp,
                "{bad}"
            );
        }
        let long = format!("https://ehr.example/{}", "a".repeat(MAX_CALLBACK_URL));
        assert!(CallbackTarget::parse(&long).is_err());
    }
}
