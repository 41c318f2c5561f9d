//! Who the client is: the TCP peer, or, behind a trusted proxy, the address
//! the proxy chain reports.
//!
//! `X-Forwarded-For` (or, when it is absent, RFC 7239 `Forwarded: for=`) is
//! walked from the right, skipping trusted proxies; the first other address
//! is the client. Entries to its left were written by the client itself and
//! are never believed. A malformed header is ignored: the peer is used.
//! Whether the client came over https is read from the same trusted peer.

use std::net::{IpAddr, SocketAddr};

use hyper::header::{HeaderMap, HeaderName};
use ipnet::IpNet;

static FORWARDED: HeaderName = hyper::header::FORWARDED;
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// Who sent a request, as far as it can be believed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sender {
    pub ip: IpAddr,
    /// It reached us, or a trusted proxy, over https: send it to `https://`
    /// mirrors only.
    pub https: bool,
}

/// The sender of a request from `peer`, over TLS or not. Only a trusted
/// peer's forwarding headers are read: the address as described above, and
/// `X-Forwarded-Proto: https` or `proto=https` in `Forwarded`. Any hop
/// saying https counts: erring that way only narrows the client to
/// `https://` mirrors, never the reverse.
pub fn sender(peer: IpAddr, tls: bool, headers: &HeaderMap, trusted: &[IpNet]) -> Sender {
    derive(peer, tls, headers, trusted, &mut |_| {}).0
}

/// How the client's address was found, for `?mirrorlist`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Derivation {
    /// The TCP peer.
    pub peer: IpAddr,
    pub via: Via,
    /// The trusted proxies passed over, from the peer inwards (the peer
    /// first, when it is one).
    pub proxies: Vec<IpAddr>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    /// The TCP peer, which is not a trusted proxy.
    Peer,
    /// A trusted peer that sent no forwarding header.
    TrustedPeerWithoutHeader,
    /// A trusted peer whose forwarding header did not parse: the peer.
    MalformedHeader,
    XForwardedFor,
    Forwarded,
}

impl Via {
    pub fn describe(self) -> &'static str {
        match self {
            Via::Peer => "the TCP peer (not a trusted proxy)",
            Via::TrustedPeerWithoutHeader => {
                "the TCP peer (a trusted proxy that sent no forwarding header)"
            }
            Via::MalformedHeader => "the TCP peer (its forwarding header did not parse)",
            Via::XForwardedFor => "X-Forwarded-For, through trusted proxies",
            Via::Forwarded => "Forwarded (RFC 7239), through trusted proxies",
        }
    }
}

/// [`sender`], and how its address was found.
pub fn explain(
    peer: IpAddr,
    tls: bool,
    headers: &HeaderMap,
    trusted: &[IpNet],
) -> (Sender, Derivation) {
    let mut proxies = Vec::new();
    let (sender, via) = derive(peer, tls, headers, trusted, &mut |hop| proxies.push(hop));
    if via == Via::MalformedHeader {
        // The peer is the client: no proxy was passed over.
        proxies.clear();
    }
    if via != Via::Peer {
        proxies.insert(0, peer.to_canonical());
    }
    let derivation = Derivation {
        peer: peer.to_canonical(),
        via,
        proxies,
    };
    (sender, derivation)
}

/// The one implementation behind [`sender`] and [`explain`]: `hop` hears
/// each trusted proxy passed over in the headers.
fn derive(
    peer: IpAddr,
    tls: bool,
    headers: &HeaderMap,
    trusted: &[IpNet],
    hop: &mut impl FnMut(IpAddr),
) -> (Sender, Via) {
    let peer = peer.to_canonical();
    if !is_trusted(peer, trusted) {
        let sender = Sender {
            ip: peer,
            https: tls,
        };
        return (sender, Via::Peer);
    }
    let (ip, via) = forwarded_ip(peer, headers, trusted, hop);
    let sender = Sender {
        ip,
        https: tls || forwarded_https(headers),
    };
    (sender, via)
}

/// The address a trusted peer's forwarding headers report, or the peer.
fn forwarded_ip(
    peer: IpAddr,
    headers: &HeaderMap,
    trusted: &[IpNet],
    hop: &mut impl FnMut(IpAddr),
) -> (IpAddr, Via) {
    let from_xff = walk(headers, &X_FORWARDED_FOR, trusted, parse_xff_entry, hop);
    let (found, via) = match from_xff {
        Walk::Absent => (
            walk(headers, &FORWARDED, trusted, parse_forwarded_element, hop),
            Via::Forwarded,
        ),
        other => (other, Via::XForwardedFor),
    };
    match found {
        Walk::Client(ip) => (ip, via),
        Walk::Absent => (peer, Via::TrustedPeerWithoutHeader),
        Walk::Malformed => (peer, Via::MalformedHeader),
    }
}

fn forwarded_https(headers: &HeaderMap) -> bool {
    let any = |name: &HeaderName, says: fn(&str) -> bool| {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.split([',', ';']).any(|item| says(item.trim())))
    };
    any(&X_FORWARDED_PROTO, is_https) || any(&FORWARDED, proto_is_https)
}

fn is_https(value: &str) -> bool {
    value.trim_matches('"').eq_ignore_ascii_case("https")
}

/// `proto=https` (one parameter of a `Forwarded` element).
fn proto_is_https(pair: &str) -> bool {
    pair.split_once('=')
        .is_some_and(|(k, v)| k.trim().eq_ignore_ascii_case("proto") && is_https(v.trim()))
}

fn is_trusted(ip: IpAddr, trusted: &[IpNet]) -> bool {
    trusted.iter().any(|n| n.contains(&ip))
}

enum Walk {
    Absent,
    Malformed,
    Client(IpAddr),
}

/// Walks every value of `name`, right to left across all its header lines,
/// without allocating.
fn walk(
    headers: &HeaderMap,
    name: &HeaderName,
    trusted: &[IpNet],
    parse: fn(&str) -> Option<IpAddr>,
    hop: &mut impl FnMut(IpAddr),
) -> Walk {
    let mut values = headers.get_all(name).iter().rev().peekable();
    if values.peek().is_none() {
        return Walk::Absent;
    }
    let mut leftmost = None;
    for value in values {
        let Ok(value) = value.to_str() else {
            return Walk::Malformed;
        };
        for entry in value.rsplit(',') {
            let Some(ip) = parse(entry.trim()).map(|ip| ip.to_canonical()) else {
                return Walk::Malformed;
            };
            // A trusted entry is a proxy passed over only once another
            // entry stands to its left: the leftmost of all is the client.
            let proxy = is_trusted(ip, trusted);
            let passed = if proxy {
                leftmost.replace(ip)
            } else {
                leftmost
            };
            if let Some(p) = passed {
                hop(p);
            }
            if !proxy {
                return Walk::Client(ip);
            }
        }
    }
    // Every hop is a trusted proxy: the first of them is the client.
    leftmost.map_or(Walk::Malformed, Walk::Client)
}

/// An address, optionally with a port (`192.0.2.1`, `192.0.2.1:80`,
/// `2001:db8::1`, `[2001:db8::1]:80`).
fn parse_addr(s: &str) -> Option<IpAddr> {
    s.parse::<IpAddr>()
        .ok()
        .or_else(|| s.parse::<SocketAddr>().ok().map(|a| a.ip()))
        .or_else(|| s.strip_prefix('[')?.strip_suffix(']')?.parse().ok())
}

fn parse_xff_entry(s: &str) -> Option<IpAddr> {
    parse_addr(s)
}

/// The `for=` of one `Forwarded` element, e.g. `for="[2001:db8::1]:80";proto=https`.
/// An element without `for=`, or with `unknown` or an obfuscated identifier,
/// names no address and counts as malformed.
fn parse_forwarded_element(element: &str) -> Option<IpAddr> {
    element.split(';').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        if !k.trim().eq_ignore_ascii_case("for") {
            return None;
        }
        let v = v.trim();
        let v = v
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or(v);
        parse_addr(v)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    #[test]
    fn forwarded_https_from_trusted_proxies_only() {
        type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], bool);
        let cases: &[Case] = &[
            ("127.0.0.1", &[("x-forwarded-proto", "https")], true),
            ("127.0.0.1", &[("x-forwarded-proto", "HTTPS")], true),
            ("127.0.0.1", &[("x-forwarded-proto", "http, https")], true),
            ("127.0.0.1", &[("x-forwarded-proto", "http")], false),
            (
                "127.0.0.1",
                &[("forwarded", "for=1.2.3.4;proto=https")],
                true,
            ),
            (
                "127.0.0.1",
                &[("forwarded", "for=1.2.3.4; Proto=\"https\"")],
                true,
            ),
            (
                "127.0.0.1",
                &[("forwarded", "for=1.2.3.4;proto=http")],
                false,
            ),
            ("127.0.0.1", &[("forwarded", "for=https")], false),
            ("127.0.0.1", &[], false),
            ("198.51.100.7", &[("x-forwarded-proto", "https")], false),
            ("198.51.100.7", &[("forwarded", "proto=https")], false),
        ];
        for (peer, headers, want) in cases {
            assert_eq!(
                sender(ip(peer), false, &with(headers), &trusted()).https,
                *want,
                "{peer} {headers:?}"
            );
            assert!(sender(ip(peer), true, &with(headers), &trusted()).https);
        }
    }

    #[test]
    fn explain_lists_the_trusted_proxies_passed_over() {
        let case = |xff: &str| {
            let (s, d) = explain(
                ip("127.0.0.1"),
                false,
                &with(&[("x-forwarded-for", xff)]),
                &trusted(),
            );
            (s.ip, d.via, d.proxies)
        };
        let peer = ip("127.0.0.1");
        assert_eq!(
            case("1.2.3.4, 10.0.0.6"),
            (
                ip("1.2.3.4"),
                Via::XForwardedFor,
                vec![peer, ip("10.0.0.6")]
            )
        );
        // Every entry trusted: the leftmost is the client, not a proxy.
        assert_eq!(
            case("10.0.0.5, 10.0.0.6"),
            (
                ip("10.0.0.5"),
                Via::XForwardedFor,
                vec![peer, ip("10.0.0.6")]
            )
        );
        assert_eq!(
            case("10.0.0.6, nonsense"),
            (peer, Via::MalformedHeader, vec![peer])
        );
        let (s, d) = explain(
            ip("198.51.100.7"),
            false,
            &with(&[("x-forwarded-for", "1.2.3.4")]),
            &trusted(),
        );
        assert_eq!(
            (s.ip, d.via, d.proxies),
            (ip("198.51.100.7"), Via::Peer, vec![])
        );
    }

    fn trusted() -> Vec<IpNet> {
        vec![
            "127.0.0.0/8".parse().unwrap(),
            "::1/128".parse().unwrap(),
            "10.0.0.0/8".parse().unwrap(),
        ]
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn with(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn table() {
        type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);
        let cases: &[Case] = &[
            // Untrusted peers are never overridden.
            (
                "198.51.100.7",
                &[("x-forwarded-for", "203.0.113.9")],
                "198.51.100.7",
            ),
            // Trusted peer: rightmost untrusted entry.
            (
                "127.0.0.1",
                &[("x-forwarded-for", "1.1.1.1, 203.0.113.9")],
                "203.0.113.9",
            ),
            (
                "127.0.0.1",
                &[("x-forwarded-for", "1.1.1.1, 203.0.113.9, 10.1.2.3")],
                "203.0.113.9",
            ),
            (
                "127.0.0.1",
                &[
                    ("x-forwarded-for", "1.1.1.1"),
                    ("x-forwarded-for", "10.0.0.1"),
                ],
                "1.1.1.1",
            ),
            ("::1", &[("x-forwarded-for", "2001:db8::5")], "2001:db8::5"),
            (
                "::ffff:127.0.0.1",
                &[("x-forwarded-for", "[2001:db8::5]:4711")],
                "2001:db8::5",
            ),
            (
                "127.0.0.1",
                &[("x-forwarded-for", "::ffff:192.0.2.1")],
                "192.0.2.1",
            ),
            (
                "127.0.0.1",
                &[("x-forwarded-for", "192.0.2.1:8080")],
                "192.0.2.1",
            ),
            // Malformed: the peer.
            (
                "127.0.0.1",
                &[("x-forwarded-for", "1.1.1.1, not-an-ip")],
                "127.0.0.1",
            ),
            ("127.0.0.1", &[("x-forwarded-for", "")], "127.0.0.1"),
            // All trusted: the leftmost.
            (
                "127.0.0.1",
                &[("x-forwarded-for", "10.0.0.2, 10.0.0.1")],
                "10.0.0.2",
            ),
            // Forwarded, when there is no X-Forwarded-For.
            (
                "127.0.0.1",
                &[("forwarded", "for=192.0.2.60;proto=http;by=203.0.113.43")],
                "192.0.2.60",
            ),
            (
                "127.0.0.1",
                &[("forwarded", "for=1.1.1.1, For=\"[2001:db8:cafe::17]:4711\"")],
                "2001:db8:cafe::17",
            ),
            ("127.0.0.1", &[("forwarded", "for=unknown")], "127.0.0.1"),
            ("127.0.0.1", &[("forwarded", "proto=https")], "127.0.0.1"),
            // X-Forwarded-For wins over Forwarded.
            (
                "127.0.0.1",
                &[("forwarded", "for=1.1.1.1"), ("x-forwarded-for", "2.2.2.2")],
                "2.2.2.2",
            ),
            // No header: the peer.
            ("127.0.0.1", &[], "127.0.0.1"),
        ];
        for (peer, headers, want) in cases {
            assert_eq!(
                sender(ip(peer), false, &with(headers), &trusted()).ip,
                ip(want),
                "{peer} {headers:?}"
            );
        }
    }

    #[test]
    fn non_ascii_header_is_ignored() {
        let mut h = HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            HeaderValue::from_bytes(b"1.1.1.1\xff").unwrap(),
        );
        assert_eq!(
            sender(ip("127.0.0.1"), false, &h, &trusted()).ip,
            ip("127.0.0.1")
        );
    }
}
