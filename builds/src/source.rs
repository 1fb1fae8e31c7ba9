//! Which git sources a build may fetch, and where git may connect for them.
//!
//! [`check`] parses `source_url` once, with the `url` crate (the WHATWG URL
//! standard): the scheme and host come out lowercased, and every IPv4
//! spelling git and curl accept (`2130706433`, `0x7f.1`, `127.1`,
//! `0177.0.0.1`) comes out as the dotted address it means, so one check
//! sees what git will see. It refuses schemes that are not configured,
//! credentials and fragments; for http(s) it resolves the host (with a
//! timeout) and refuses it unless every address is public, or the admin
//! trusts the host by name (`private_source_hosts`). The [`Source`] it
//! returns carries the normalised URL git must be given (never the raw
//! text, which curl might parse differently) and the addresses that were
//! checked, which git is pinned to (`http.curloptResolve`), so a second DNS
//! answer cannot send git somewhere else.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;
use url::{Host, Url};

/// The `[builds]` settings that decide which sources are allowed.
#[derive(Debug, Clone)]
pub struct SourcePolicy {
    /// Allowed schemes, lowercase: a subset of `https`, `http`, `file`.
    pub schemes: Vec<String>,
    /// When not empty, the only hosts builds may fetch from (exact names,
    /// as they appear in the URL).
    pub hosts: Vec<String>,
    /// Hosts the admin trusts although they resolve to non-public
    /// addresses (an internal git server). Also allowed when `hosts` is set.
    pub private_hosts: Vec<String>,
    /// How long resolving the host may take.
    pub resolve_timeout: Duration,
}

/// The schemes berth can fetch from with the checks above (`git://` and
/// `ssh://` cannot be pinned to a checked address, so they are not offered).
pub const SUPPORTED_SCHEMES: &[&str] = &["https", "http", "file"];

/// A source that passed the checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// The normalised URL: what git is given.
    pub url: String,
    /// `https`, `http` or `file`.
    pub scheme: String,
    /// For a named http(s) host: the addresses git must connect to.
    pub pin: Option<Pin>,
}

/// A host name with the addresses it was checked against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pin {
    pub host: String,
    pub port: u16,
    pub addrs: Vec<IpAddr>,
}

impl Pin {
    /// The value of git's `http.curloptResolve` (curl's `CURLOPT_RESOLVE`):
    /// `host:port:addr[,addr...]`, IPv6 addresses in brackets.
    pub fn curl_resolve(&self) -> String {
        let addrs: Vec<String> = self
            .addrs
            .iter()
            .map(|a| match a {
                IpAddr::V4(v4) => v4.to_string(),
                IpAddr::V6(v6) => format!("[{v6}]"),
            })
            .collect();
        format!("{}:{}:{}", self.host, self.port, addrs.join(","))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The URL itself is not acceptable; the message says why and may be
    /// shown to the caller (it holds nothing the caller did not send).
    #[error("{0}")]
    Refused(String),
    /// The host did not resolve, or resolved to an address builds may not
    /// reach. Callers see only the generic [`cannot_fetch`] answer, so the
    /// API cannot be used to learn internal DNS; `detail` is for berth's log.
    #[error("{detail}")]
    Unreachable { detail: String },
}

/// The one answer a caller gets for a repository that cannot be fetched,
/// whatever the reason (no such host, a refused address, a closed or open
/// port, a timeout, an HTTP error): details stay in berth's log.
pub fn cannot_fetch(url: &str) -> String {
    format!(
        "cannot fetch the repository {}: check that it exists and is public",
        shown(url)
    )
}

/// `text` quoted and cut to 200 characters, for messages.
pub fn shown(text: &str) -> String {
    format!("{:?}", text.chars().take(200).collect::<String>())
}

/// Checks `raw` against `policy`; see the module documentation.
pub async fn check(policy: &SourcePolicy, raw: &str) -> Result<Source, SourceError> {
    let refused = |why: String| Err(SourceError::Refused(why));
    if raw.len() > 2048 {
        return refused("source_url is longer than 2048 characters".into());
    }
    if raw.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return refused("source_url contains characters a URL cannot".into());
    }
    let url = match Url::parse(raw) {
        Ok(u) => u,
        Err(e) => return refused(format!("source_url {} is not a URL: {e}", shown(raw))),
    };
    let scheme = url.scheme().to_owned();
    if !policy.schemes.contains(&scheme) || !SUPPORTED_SCHEMES.contains(&&*scheme) {
        return refused(format!(
            "source_url {} must use one of the schemes {:?}",
            shown(raw),
            policy.schemes
        ));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return refused(
            "source_url must not carry credentials: builds fetch public repositories".into(),
        );
    }
    if url.fragment().is_some() {
        return refused("source_url must not have a #fragment".into());
    }
    if scheme == "file" {
        if url.host_str().is_some_and(|h| !h.is_empty()) {
            return refused("a file source_url names a local path: file:///path/to/repo".into());
        }
        return Ok(Source {
            url: url.to_string(),
            scheme,
            pin: None,
        });
    }
    let (Some(host), Some(host_text), Some(port)) =
        (url.host(), url.host_str(), url.port_or_known_default())
    else {
        return refused(format!("source_url {} has no host", shown(raw)));
    };
    let host_text = host_text.to_owned();
    let trusted = policy.private_hosts.contains(&host_text);
    if !trusted && !policy.hosts.is_empty() && !policy.hosts.contains(&host_text) {
        return refused(format!(
            "builds may fetch only from {:?} ([builds] source_hosts); {host_text:?} is not one of them",
            policy.hosts
        ));
    }
    let name = match host {
        Host::Ipv4(ip) => return literal(url.to_string(), scheme, IpAddr::V4(ip), trusted),
        Host::Ipv6(ip) => return literal(url.to_string(), scheme, IpAddr::V6(ip), trusted),
        Host::Domain(name) => name.to_owned(),
    };
    if name.ends_with('.') {
        return refused(format!("source_url host {name:?} must not end with a dot"));
    }
    let addrs = resolve(&name, port, policy.resolve_timeout).await?;
    if !trusted {
        if let Some((ip, kind)) = addrs
            .iter()
            .find_map(|ip| non_public(*ip).map(|kind| (*ip, kind)))
        {
            return Err(SourceError::Unreachable {
                detail: format!("{name} resolves to {ip}, a {kind} address"),
            });
        }
    }
    Ok(Source {
        url: url.to_string(),
        scheme,
        pin: Some(Pin {
            host: name,
            port,
            addrs,
        }),
    })
}

/// A URL naming its host by address: refused unless public (or trusted).
/// The caller typed the address, so saying what is wrong with it tells
/// them nothing new.
fn literal(url: String, scheme: String, ip: IpAddr, trusted: bool) -> Result<Source, SourceError> {
    if let Some(kind) = non_public(ip).filter(|_| !trusted) {
        return Err(SourceError::Refused(format!(
            "source_url must name a public host; {ip} is a {kind} address"
        )));
    }
    Ok(Source {
        url,
        scheme,
        pin: None,
    })
}

/// Every address `name` resolves to (deduplicated, in resolver order).
async fn resolve(name: &str, port: u16, timeout: Duration) -> Result<Vec<IpAddr>, SourceError> {
    let found = tokio::time::timeout(timeout, tokio::net::lookup_host((name, port)))
        .await
        .map_err(|_| SourceError::Unreachable {
            detail: format!("resolving {name} took longer than {timeout:?}"),
        })?
        .map_err(|e| SourceError::Unreachable {
            detail: format!("cannot resolve {name}: {e}"),
        })?;
    let mut addrs: Vec<IpAddr> = Vec::new();
    for a in found {
        if !addrs.contains(&a.ip()) {
            addrs.push(a.ip());
        }
    }
    if addrs.is_empty() {
        return Err(SourceError::Unreachable {
            detail: format!("{name} has no addresses"),
        });
    }
    Ok(addrs)
}

/// IPv4 ranges builds may not fetch from, with what they are.
const V4_BLOCKED: &[(Ipv4Addr, u8, &str)] = &[
    (
        Ipv4Addr::new(0, 0, 0, 0),
        8,
        "\"this network\" (unspecified)",
    ),
    (Ipv4Addr::new(10, 0, 0, 0), 8, "private"),
    (
        Ipv4Addr::new(100, 64, 0, 0),
        10,
        "shared (carrier-grade NAT)",
    ),
    (Ipv4Addr::new(127, 0, 0, 0), 8, "loopback"),
    (Ipv4Addr::new(169, 254, 0, 0), 16, "link-local"),
    (Ipv4Addr::new(172, 16, 0, 0), 12, "private"),
    (Ipv4Addr::new(192, 0, 0, 0), 24, "IETF protocol assignment"),
    (Ipv4Addr::new(192, 0, 2, 0), 24, "documentation"),
    (Ipv4Addr::new(192, 88, 99, 0), 24, "6to4 relay"),
    (Ipv4Addr::new(192, 168, 0, 0), 16, "private"),
    (Ipv4Addr::new(198, 18, 0, 0), 15, "benchmarking"),
    (Ipv4Addr::new(198, 51, 100, 0), 24, "documentation"),
    (Ipv4Addr::new(203, 0, 113, 0), 24, "documentation"),
    (Ipv4Addr::new(224, 0, 0, 0), 4, "multicast"),
    (Ipv4Addr::new(240, 0, 0, 0), 4, "reserved or broadcast"),
];

/// IPv6 ranges inside global unicast (2000::/3) that are not public.
const V6_BLOCKED: &[(Ipv6Addr, u8, &str)] = &[
    (
        Ipv6Addr::new(0x2001, 0, 0, 0, 0, 0, 0, 0),
        23,
        "IETF protocol assignment (Teredo, ORCHID...)",
    ),
    (
        Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0),
        32,
        "documentation",
    ),
    (
        Ipv6Addr::new(0x3fff, 0, 0, 0, 0, 0, 0, 0),
        20,
        "documentation",
    ),
];

fn in_v4(ip: Ipv4Addr, net: Ipv4Addr, len: u8) -> bool {
    let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
    u32::from(ip) & mask == u32::from(net) & mask
}

fn in_v6(ip: Ipv6Addr, net: Ipv6Addr, len: u8) -> bool {
    let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
    u128::from(ip) & mask == u128::from(net) & mask
}

/// None for a public address; else what kind of address it is.
pub fn non_public(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => V4_BLOCKED
            .iter()
            .find(|(net, len, _)| in_v4(v4, *net, *len))
            .map(|(_, _, kind)| *kind),
        IpAddr::V6(v6) => {
            // Forms that carry an IPv4 address are judged by it: mapped
            // (::ffff:a.b.c.d), NAT64 (64:ff9b::/96), 6to4 (2002::/16).
            let s = v6.segments();
            let embedded = if in_v6(v6, Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0, 0), 96)
                || in_v6(v6, Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, 0, 0), 96)
            {
                Some(Ipv4Addr::new(
                    (s[6] >> 8) as u8,
                    s[6] as u8,
                    (s[7] >> 8) as u8,
                    s[7] as u8,
                ))
            } else if s[0] == 0x2002 {
                Some(Ipv4Addr::new(
                    (s[1] >> 8) as u8,
                    s[1] as u8,
                    (s[2] >> 8) as u8,
                    s[2] as u8,
                ))
            } else {
                None
            };
            if let Some(v4) = embedded {
                return non_public(IpAddr::V4(v4));
            }
            if v6.is_unspecified() {
                return Some("unspecified");
            }
            if v6.is_loopback() {
                return Some("loopback");
            }
            if in_v6(v6, Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 0), 7) {
                return Some("unique local (ULA)");
            }
            if in_v6(v6, Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0), 10) {
                return Some("link-local");
            }
            if in_v6(v6, Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0), 8) {
                return Some("multicast");
            }
            // Only global unicast is public; everything outside 2000::/3
            // (IPv4-compatible, discard, site-local...) is reserved.
            if !in_v6(v6, Ipv6Addr::new(0x2000, 0, 0, 0, 0, 0, 0, 0), 3) {
                return Some("reserved");
            }
            V6_BLOCKED
                .iter()
                .find(|(net, len, _)| in_v6(v6, *net, *len))
                .map(|(_, _, kind)| *kind)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> SourcePolicy {
        SourcePolicy {
            schemes: vec!["https".into(), "http".into()],
            hosts: vec![],
            private_hosts: vec![],
            resolve_timeout: Duration::from_secs(10),
        }
    }

    #[test]
    fn addresses_are_classified() {
        for (ip, public) in [
            ("8.8.8.8", true),
            ("140.82.112.3", true),
            ("127.0.0.1", false),
            ("127.255.0.9", false),
            ("0.0.0.0", false),
            ("10.1.2.3", false),
            ("100.64.0.1", false),
            ("100.127.255.255", false),
            ("100.128.0.1", true),
            ("169.254.169.254", false),
            ("172.16.0.1", false),
            ("172.31.255.255", false),
            ("172.32.0.1", true),
            ("192.0.0.8", false),
            ("192.0.2.1", false),
            ("192.168.0.1", false),
            ("198.18.0.1", false),
            ("198.19.255.255", false),
            ("198.51.100.7", false),
            ("203.0.113.9", false),
            ("224.0.0.1", false),
            ("239.1.1.1", false),
            ("255.255.255.255", false),
            ("2606:4700::1111", true),
            ("2a00:1450:4001::1", true),
            ("::", false),
            ("::1", false),
            ("::ffff:127.0.0.1", false),
            ("::ffff:10.0.0.1", false),
            ("::ffff:8.8.8.8", true),
            ("::127.0.0.1", false),
            ("64:ff9b::7f00:1", false),
            ("64:ff9b::808:808", true),
            ("2002:7f00:1::", false),
            ("2002:808:808::", true),
            ("2001::1", false),
            ("2001:db8::1", false),
            ("fc00::1", false),
            ("fd12:3456::1", false),
            ("fe80::1", false),
            ("fec0::1", false),
            ("ff02::1", false),
            ("100::1", false),
        ] {
            let addr: IpAddr = ip.parse().unwrap();
            assert_eq!(
                non_public(addr).is_none(),
                public,
                "{ip}: {:?}",
                non_public(addr)
            );
        }
    }

    async fn refused(p: &SourcePolicy, url: &str) -> String {
        match check(p, url).await {
            Err(SourceError::Refused(m)) => m,
            Err(SourceError::Unreachable { detail }) => format!("unreachable: {detail}"),
            Ok(s) => panic!("{url} was accepted as {s:?}"),
        }
    }

    #[tokio::test]
    async fn every_spelling_of_a_loopback_address_is_refused() {
        let p = policy();
        for url in [
            "http://127.0.0.1/x.git",
            "http://2130706433/x.git",
            "http://0x7f000001/x.git",
            "http://0x7f.1/x.git",
            "http://127.1/x.git",
            "http://0177.0.0.1/x.git",
            "http://017700000001/x.git",
            "http://127.0.0.1./x.git",
            "HTTP://127.0.0.1/x.git",
            "http://[::1]/x.git",
            "http://[::ffff:127.0.0.1]/x.git",
            "http://[::ffff:7f00:1]/x.git",
            "https://169.254.169.254/latest/meta-data",
            "http://0/x.git",
            "http://[fd00::1]/x.git",
            "http://[fe80::1%25eth0]/x.git",
        ] {
            let m = refused(&p, url).await;
            assert!(
                m.contains("public host") || m.contains("not a URL"),
                "{url}: {m}"
            );
        }
    }

    #[tokio::test]
    async fn names_resolving_inside_are_unreachable_unless_trusted() {
        let mut p = policy();
        for url in ["http://localhost:9/x.git", "http://LOCALHOST:9/x.git"] {
            let m = refused(&p, url).await;
            assert!(m.starts_with("unreachable: localhost resolves to"), "{m}");
        }
        p.private_hosts = vec!["localhost".into()];
        let s = check(&p, "http://LocalHost:9/x.git").await.unwrap();
        assert_eq!(s.url, "http://localhost:9/x.git");
        let pin = s.pin.unwrap();
        assert!(pin.curl_resolve().starts_with("localhost:9:"), "{pin:?}");
        assert!(pin.addrs.iter().all(|a| a.is_loopback()));
        // Trusting a name does not trust its address typed out.
        assert!(refused(&p, "http://127.0.0.1:9/x.git")
            .await
            .contains("loopback"));
    }

    #[tokio::test]
    async fn schemes_credentials_and_allow_list() {
        let mut p = policy();
        for (url, want) in [
            ("ftp://example.org/x.git", "schemes"),
            ("git://example.org/x.git", "schemes"),
            ("ssh://example.org/x.git", "schemes"),
            ("file:///srv/x.git", "schemes"),
            ("ext::sh -c touch% /tmp/pwned", "characters"),
            ("-uhttps://example.org", "not a URL"),
            ("https://user:secret@example.org/x.git", "credentials"),
            ("https://token@example.org/x.git", "credentials"),
            ("https://example.org/x.git#frag", "fragment"),
            ("https://example.org./x.git", "dot"),
            ("https://ex ample.org/x.git", "characters"),
        ] {
            let m = refused(&p, url).await;
            assert!(m.contains(want), "{url}: {m}");
        }
        p.schemes.push("file".into());
        let s = check(&p, "FILE:///srv/x.git").await.unwrap();
        assert_eq!((s.url.as_str(), s.pin), ("file:///srv/x.git", None));
        assert!(refused(&p, "file://server/srv/x.git")
            .await
            .contains("local path"));
        p.hosts = vec!["git.example.org".into()];
        assert!(refused(&p, "https://8.8.8.8/x.git")
            .await
            .contains("source_hosts"));
        p.private_hosts = vec!["localhost".into()];
        assert!(check(&p, "http://localhost/x.git").await.is_ok());
    }

    #[test]
    fn ipv6_pins_are_bracketed() {
        let pin = Pin {
            host: "git.example.org".into(),
            port: 443,
            addrs: vec!["2001:4860::1".parse().unwrap(), "8.8.8.8".parse().unwrap()],
        };
        assert_eq!(
            pin.curl_resolve(),
            "git.example.org:443:[2001:4860::1],8.8.8.8"
        );
    }
}
