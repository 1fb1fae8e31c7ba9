//! Behind a reverse proxy. A peer listed in `[server] trusted_proxies` may
//! say, in `X-Forwarded-For`, `-Proto` and `-Host`, who the client is and
//! what URL it used; anyone else's forwarded headers are removed before the
//! request goes further. `server` calls [`Forwarding::apply`] on every
//! request, so everything after it sees the same picture:
//!
//! - the client address it returns (the per-address login limits, the
//!   failed-login throttle and the access log key on it);
//! - `Host`: the host the client asked for (a trusted proxy's
//!   `X-Forwarded-Host`, else `Host`, else the HTTP/2 `:authority`);
//! - `X-Forwarded-Proto`: `https` or `http`, the scheme the client used
//!   (a trusted proxy's word, else whether this connection is TLS). It is
//!   always set here, never passed through from a client.

use http::{HeaderMap, HeaderValue, Uri};
use std::net::IpAddr;
use std::str::FromStr;

pub const X_FORWARDED_FOR: &str = "x-forwarded-for";
pub const X_FORWARDED_PROTO: &str = "x-forwarded-proto";
pub const X_FORWARDED_HOST: &str = "x-forwarded-host";
/// RFC 7239's header: not read (the `X-Forwarded-*` trio is what nginx,
/// HAProxy and Kubernetes ingresses send), but removed like the others.
const FORWARDED: &str = "forwarded";

/// An address block such as `10.0.0.0/8`, `2001:db8::/32` or one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    prefix: u8,
}

/// IPv4-mapped IPv6 addresses (`::ffff:10.0.0.1`, what a dual-stack
/// listener reports) are the IPv4 address they carry.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Cidr, String> {
        let bad = || format!("{s:?} is not an address or address block such as \"10.0.0.0/8\"");
        let (addr, prefix) = match s.trim().split_once('/') {
            Some((a, p)) => (a, Some(p.parse::<u8>().map_err(|_| bad())?)),
            None => (s.trim(), None),
        };
        let net = canonical(addr.parse::<IpAddr>().map_err(|_| bad())?);
        let max = if net.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        if prefix > max {
            return Err(bad());
        }
        let cidr = Cidr { net, prefix };
        if cidr.masked(net) != net {
            return Err(format!(
                "{s:?} has bits set past its prefix length; write the block's first address"
            ));
        }
        Ok(cidr)
    }
}

impl<'de> serde::Deserialize<'de> for Cidr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Cidr, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.net, self.prefix)
    }
}

impl Cidr {
    fn masked(&self, ip: IpAddr) -> IpAddr {
        match ip {
            IpAddr::V4(v4) => {
                let bits = u32::from(v4);
                let mask = u32::MAX.checked_shl(32 - self.prefix as u32).unwrap_or(0);
                IpAddr::V4((bits & mask).into())
            }
            IpAddr::V6(v6) => {
                let bits = u128::from(v6);
                let mask = u128::MAX.checked_shl(128 - self.prefix as u32).unwrap_or(0);
                IpAddr::V6((bits & mask).into())
            }
        }
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        ip.is_ipv4() == self.net.is_ipv4() && self.masked(ip) == self.net
    }
}

/// The trusted proxies, and the request rewriting described above.
#[derive(Debug, Clone, Default)]
pub struct Forwarding {
    pub trusted_proxies: Vec<Cidr>,
}

/// Where a request came from, after `apply`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Origin {
    /// The client: the TCP peer, or the address a trusted proxy forwarded.
    pub client: IpAddr,
    /// Whether a trusted proxy's headers were used.
    pub forwarded: bool,
}

/// A value of `X-Forwarded-Host` or `Host` good enough to put in a URL.
fn valid_host(h: &str) -> bool {
    !h.is_empty()
        && h.len() < 256
        && h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
}

/// The last comma-separated value of a header (the nearest proxy's).
fn last_value(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .rfind(|v| !v.is_empty())
        .map(str::to_owned)
}

/// One `X-Forwarded-For` entry: an address, maybe with a port.
fn parse_hop(s: &str) -> Option<IpAddr> {
    let s = s.trim();
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(canonical(ip));
    }
    if let Ok(sa) = s.parse::<std::net::SocketAddr>() {
        return Some(canonical(sa.ip()));
    }
    s.strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'))
        .and_then(|a| a.parse::<IpAddr>().ok())
        .map(canonical)
}

impl Forwarding {
    pub fn trusts(&self, peer: IpAddr) -> bool {
        self.trusted_proxies.iter().any(|c| c.contains(peer))
    }

    /// The client behind a chain of proxies: `X-Forwarded-For` read from
    /// the right (nearest hop first), skipping trusted proxies; the first
    /// address that is not one is the client. An entry that is not an
    /// address stops the walk at the last trusted hop (the client is then
    /// not known better than that).
    fn client_from(&self, headers: &HeaderMap, peer: IpAddr) -> IpAddr {
        let hops: Vec<&str> = headers
            .get_all(X_FORWARDED_FOR)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect();
        let mut client = canonical(peer);
        for hop in hops.iter().rev() {
            match parse_hop(hop) {
                Some(ip) if self.trusts(ip) => client = ip,
                Some(ip) => return ip,
                None => return client,
            }
        }
        client
    }

    /// Works out the request's origin from the TCP peer, whether the
    /// connection is TLS, and (from a trusted proxy only) the forwarded
    /// headers; rewrites `Host` and `X-Forwarded-Proto` to the client's
    /// view and removes every other forwarded header.
    pub fn apply(&self, headers: &mut HeaderMap, uri: &Uri, peer: IpAddr, tls: bool) -> Origin {
        let own_scheme = if tls { "https" } else { "http" };
        let own_host = headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_owned)
            .or_else(|| uri.authority().map(|a| a.as_str().to_owned()))
            .filter(|h| valid_host(h));
        let trusted = self.trusts(peer);
        let (client, scheme, host) = if trusted {
            let scheme = match last_value(headers, X_FORWARDED_PROTO) {
                Some(p) if p.eq_ignore_ascii_case("https") => "https",
                Some(p) if p.eq_ignore_ascii_case("http") => "http",
                _ => own_scheme,
            };
            let host = last_value(headers, X_FORWARDED_HOST)
                .filter(|h| valid_host(h))
                .or(own_host);
            (self.client_from(headers, peer), scheme, host)
        } else {
            (canonical(peer), own_scheme, own_host)
        };
        for name in [
            X_FORWARDED_FOR,
            X_FORWARDED_HOST,
            X_FORWARDED_PROTO,
            FORWARDED,
        ] {
            headers.remove(name);
        }
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(scheme));
        match host.and_then(|h| HeaderValue::from_str(&h).ok()) {
            Some(h) => {
                headers.insert(http::header::HOST, h);
            }
            None => {
                headers.remove(http::header::HOST);
            }
        }
        Origin {
            client,
            forwarded: trusted && client != canonical(peer),
        }
    }
}

/// `[server] public_url` checked: `http(s)://host[:port]`, no path (a
/// registry lives at the root: `/v2/`), returned without a trailing slash.
pub fn parse_public_url(s: &str) -> Result<String, String> {
    let bad = |why: &str| format!("[server] public_url = {s:?}: {why}");
    let uri: Uri = s.parse().map_err(|_| bad("not a URL"))?;
    match uri.scheme_str() {
        Some("https") | Some("http") => {}
        _ => return Err(bad("must start with https:// or http://")),
    }
    let authority = uri.authority().ok_or_else(|| bad("names no host"))?;
    if authority.as_str().contains('@') {
        return Err(bad("must not hold credentials"));
    }
    if !valid_host(authority.as_str()) {
        return Err(bad("the host is not a plain name or address"));
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(bad(
            "must not have a path or query: a registry is served at the root of its host (/v2/)",
        ));
    }
    Ok(format!(
        "{}://{}",
        uri.scheme_str().unwrap_or("https"),
        authority
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(s: &str) -> Cidr {
        s.parse().unwrap()
    }

    #[test]
    fn cidrs() {
        assert!(cidr("10.0.0.0/8").contains("10.200.1.2".parse().unwrap()));
        assert!(!cidr("10.0.0.0/8").contains("11.0.0.1".parse().unwrap()));
        assert!(cidr("10.0.0.0/8").contains("::ffff:10.1.1.1".parse().unwrap()));
        assert!(cidr("127.0.0.2").contains("127.0.0.2".parse().unwrap()));
        assert!(!cidr("127.0.0.2").contains("127.0.0.1".parse().unwrap()));
        assert!(cidr("2001:db8::/32").contains("2001:db8:ffff::1".parse().unwrap()));
        assert!(!cidr("2001:db8::/32").contains("10.0.0.1".parse().unwrap()));
        assert!(cidr("0.0.0.0/0").contains("8.8.8.8".parse().unwrap()));
        assert!(!cidr("0.0.0.0/0").contains("::1".parse().unwrap()));
        assert!("10.0.0.1/8".parse::<Cidr>().is_err(), "host bits set");
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("example.org".parse::<Cidr>().is_err());
        assert_eq!(cidr("::ffff:10.0.0.0/8").to_string(), "10.0.0.0/8");
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn fwd(list: &[&str]) -> Forwarding {
        Forwarding {
            trusted_proxies: list.iter().map(|s| cidr(s)).collect(),
        }
    }

    const ORIGIN_FORM: &str = "/v2/";

    #[test]
    fn untrusted_peers_cannot_forward() {
        let f = fwd(&["10.0.0.0/8"]);
        let mut h = headers(&[
            ("host", "berth.internal:5000"),
            ("x-forwarded-for", "1.2.3.4"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "evil.example"),
            ("forwarded", "for=1.2.3.4"),
        ]);
        let o = f.apply(
            &mut h,
            &ORIGIN_FORM.parse().unwrap(),
            "192.0.2.9".parse().unwrap(),
            false,
        );
        assert_eq!(o.client, "192.0.2.9".parse::<IpAddr>().unwrap());
        assert!(!o.forwarded);
        assert_eq!(h["host"], "berth.internal:5000");
        assert_eq!(h[X_FORWARDED_PROTO], "http");
        assert!(h.get(X_FORWARDED_FOR).is_none());
        assert!(h.get(X_FORWARDED_HOST).is_none());
        assert!(h.get("forwarded").is_none());
    }

    #[test]
    fn trusted_proxies_name_the_client() {
        let f = fwd(&["10.0.0.0/8", "127.0.0.1"]);
        // Client, then an untrusted hop the client made up, then two of ours.
        let mut h = headers(&[
            ("host", "berth:5000"),
            ("x-forwarded-for", "6.6.6.6, 203.0.113.7"),
            ("x-forwarded-for", "10.1.1.1"),
            ("x-forwarded-proto", "http, https"),
            ("x-forwarded-host", "registry.example.org"),
        ]);
        let o = f.apply(
            &mut h,
            &ORIGIN_FORM.parse().unwrap(),
            "127.0.0.1".parse().unwrap(),
            false,
        );
        assert_eq!(o.client, "203.0.113.7".parse::<IpAddr>().unwrap());
        assert!(o.forwarded);
        assert_eq!(h["host"], "registry.example.org");
        assert_eq!(h[X_FORWARDED_PROTO], "https");
        assert!(h.get(X_FORWARDED_FOR).is_none());

        // Garbage stops the walk at the last trusted hop.
        let mut h = headers(&[("x-forwarded-for", "1.2.3.4, unknown, 10.9.9.9")]);
        let o = f.apply(
            &mut h,
            &ORIGIN_FORM.parse().unwrap(),
            "127.0.0.1".parse().unwrap(),
            true,
        );
        assert_eq!(o.client, "10.9.9.9".parse::<IpAddr>().unwrap());
        assert_eq!(
            h[X_FORWARDED_PROTO], "https",
            "TLS without a forwarded scheme"
        );

        // Ports and brackets as some proxies write them.
        let mut h = headers(&[("x-forwarded-for", "[2001:db8::1]:4711")]);
        let o = f.apply(
            &mut h,
            &ORIGIN_FORM.parse().unwrap(),
            "10.0.0.1".parse().unwrap(),
            false,
        );
        assert_eq!(o.client, "2001:db8::1".parse::<IpAddr>().unwrap());

        // No header: the proxy itself.
        let mut h = HeaderMap::new();
        let o = f.apply(
            &mut h,
            &ORIGIN_FORM.parse().unwrap(),
            "10.0.0.1".parse().unwrap(),
            false,
        );
        assert_eq!(o.client, "10.0.0.1".parse::<IpAddr>().unwrap());
        assert!(!o.forwarded);
    }

    #[test]
    fn http2_authority_becomes_host_and_bad_hosts_go() {
        let f = Forwarding::default();
        let mut h = HeaderMap::new();
        let uri: Uri = "https://registry.example.org:8443/v2/".parse().unwrap();
        f.apply(&mut h, &uri, "192.0.2.1".parse().unwrap(), true);
        assert_eq!(h["host"], "registry.example.org:8443");
        let mut h = headers(&[("host", "a b\"c")]);
        f.apply(
            &mut h,
            &ORIGIN_FORM.parse().unwrap(),
            "192.0.2.1".parse().unwrap(),
            true,
        );
        assert!(h.get("host").is_none());
    }

    #[test]
    fn public_urls() {
        assert_eq!(
            parse_public_url("https://registry.example.org/").unwrap(),
            "https://registry.example.org"
        );
        assert_eq!(
            parse_public_url("http://127.0.0.1:8080").unwrap(),
            "http://127.0.0.1:8080"
        );
        assert!(parse_public_url("registry.example.org").is_err());
        assert!(parse_public_url("ftp://x").is_err());
        assert!(parse_public_url("https://x/registry").is_err());
        assert!(parse_public_url("https://u:p@x").is_err());
        assert!(parse_public_url("https://x/?a=b").is_err());
    }
}
