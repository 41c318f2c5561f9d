//! The cases of the hostile-input battery, what the service answers each,
//! what nginx answers the same bytes and, where they differ, why.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command};

const PKG: &str = "/distri/jackherer/pkg/pkg001-amd64-1.0-1.squashfs";

/// What came back on one connection: each answer's status in order (0 for
/// bytes that are not an HTTP/1 answer), each `Location`.
#[derive(Debug)]
pub struct Reply {
    pub statuses: Vec<u16>,
    pub locations: Vec<String>,
    pub raw: Vec<u8>,
}

impl Reply {
    /// Splits pipelined answers by their heads and `Content-Length`.
    pub fn parse(buf: &[u8]) -> Reply {
        let mut reply = Reply {
            statuses: Vec::new(),
            locations: Vec::new(),
            raw: buf.to_vec(),
        };
        let mut rest = buf;
        while !rest.is_empty() {
            let Some(end) = rest.windows(4).position(|w| w == b"\r\n\r\n") else {
                reply.statuses.push(0);
                break;
            };
            let head = String::from_utf8_lossy(&rest[..end]);
            let mut lines = head.split("\r\n");
            let status = lines
                .next()
                .filter(|l| l.starts_with("HTTP/1."))
                .and_then(|l| l.get(9..12))
                .and_then(|s| s.parse().ok());
            let Some(status) = status else {
                reply.statuses.push(0);
                break;
            };
            reply.statuses.push(status);
            let mut length = 0;
            for l in lines {
                let Some((k, v)) = l.split_once(':') else {
                    continue;
                };
                match k.trim().to_ascii_lowercase().as_str() {
                    "location" => reply.locations.push(v.trim().to_string()),
                    "content-length" => length = v.trim().parse().unwrap_or(0),
                    _ => {}
                }
            }
            rest = &rest[end + 4..];
            // A HEAD answer announces a length it does not send.
            if !rest.starts_with(b"HTTP/1.") {
                rest = &rest[length.min(rest.len())..];
            }
        }
        reply
    }
}

/// What the checks compare with.
pub struct Ctx {
    /// Mirror base URLs in the fixture's order (eu-fra, us-nyc, jp-tyo,
    /// br-sao).
    pub mirrors: Vec<String>,
    pub origin: String,
    /// The Location each loopback source gets for `PKG` with no
    /// forwarding headers (loopback is not located: it is spread over
    /// the mirrors by network).
    pub alone: Vec<(&'static str, String)>,
}

/// A further check on a reply.
type Check = fn(&Reply, &Ctx) -> Result<(), String>;

pub struct Case {
    pub name: &'static str,
    /// The loopback address the connection comes from: 127.0.0.1 is a
    /// trusted proxy in the fixture, 127.0.0.2 is not.
    pub from: &'static str,
    pub bytes: Vec<u8>,
    /// The statuses the service answers, in order; empty: closed unanswered.
    pub want: Vec<u16>,
    /// What nginx answers, where it differs; `None`: the same as `want`.
    pub nginx: Option<&'static [u16]>,
    /// Why the two differ, where they do.
    pub why: &'static str,
    pub check: Option<Check>,
}

fn case(name: &'static str, bytes: impl Into<Vec<u8>>, want: &[u16]) -> Case {
    Case {
        name,
        from: "127.0.0.1",
        bytes: bytes.into(),
        want: want.to_vec(),
        nginx: None,
        why: "",
        check: None,
    }
}

impl Case {
    fn nginx(mut self, answers: &'static [u16], why: &'static str) -> Case {
        self.nginx = Some(answers);
        self.why = why;
        self
    }

    fn from(mut self, addr: &'static str) -> Case {
        self.from = addr;
        self
    }

    fn check(mut self, c: Check) -> Case {
        self.check = Some(c);
        self
    }
}

/// `GET target` with a Host header and these header lines.
fn get(target: &str, headers: &str) -> Vec<u8> {
    format!("GET {target} HTTP/1.1\r\nHost: t\r\n{headers}\r\n").into_bytes()
}

/// The one Location must go to the mirror at `i` in the fixture's order,
/// or to the origin for `None`.
fn goes_to(reply: &Reply, ctx: &Ctx, i: Option<usize>) -> Result<(), String> {
    let base = i.map_or(ctx.origin.as_str(), |i| ctx.mirrors[i].as_str());
    match reply.locations.as_slice() {
        [l] if l.starts_with(base) => Ok(()),
        other => Err(format!("want one Location under {base}, got {other:?}")),
    }
}

/// The one Location must be what `from` gets with no forwarding headers:
/// the headers were not believed.
fn as_if_alone(reply: &Reply, ctx: &Ctx, from: &str) -> Result<(), String> {
    let want = &ctx.alone.iter().find(|(f, _)| *f == from).unwrap().1;
    match reply.locations.as_slice() {
        [l] if l == want => Ok(()),
        other => Err(format!("want {want} as {from} alone gets, got {other:?}")),
    }
}

fn no_location_has(reply: &Reply, c: char) -> Result<(), String> {
    match reply.locations.iter().find(|l| l.contains(c)) {
        Some(l) => Err(format!("{c:?} in {l}")),
        None => Ok(()),
    }
}

const ORIGIN: Option<usize> = None;
const EU: Option<usize> = Some(0);
const US: Option<usize> = Some(1);

pub fn cases() -> Vec<Case> {
    let mut c = Vec::new();
    c.extend(request_lines());
    c.extend(sizes());
    c.extend(targets());
    c.extend(methods());
    c.extend(framing());
    c.extend(forwarding());
    c
}

fn request_lines() -> Vec<Case> {
    vec![
        case("plain request", get(PKG, ""), &[302]),
        case("garbage request line", "GARBAGE\r\n\r\n", &[400]),
        case("method only", "GET\r\n\r\n", &[400]),
        case("HTTP/0.9 request", "GET /\r\n\r\n", &[400]).nginx(
            &[0],
            "nginx still speaks HTTP/0.9 (a bare body, no status line); no distri client does",
        ),
        case("HTTP/1.2", "GET / HTTP/1.2\r\nHost: t\r\n\r\n", &[400]).nginx(
            &[302],
            "nginx takes any 1.x as 1.1; hyper accepts 1.0 and 1.1 only",
        ),
        case(
            "HTTP/2.0 over HTTP/1",
            "GET / HTTP/2.0\r\nHost: t\r\n\r\n",
            &[400],
        )
        .nginx(&[505], "the same refusal, nginx with a more precise status"),
        case("HTTP/9.9", "GET / HTTP/9.9\r\nHost: t\r\n\r\n", &[400]).nginx(&[505], "as HTTP/2.0"),
        case(
            "lowercase version",
            "GET / http/1.1\r\nHost: t\r\n\r\n",
            &[400],
        ),
        case("two spaces", "GET  / HTTP/1.1\r\nHost: t\r\n\r\n", &[400])
            .nginx(&[302], "nginx tolerates runs of spaces in the request line"),
        case(
            "tabs as separators",
            "GET\t/\tHTTP/1.1\r\nHost: t\r\n\r\n",
            &[400],
        ),
        case("bare LF line ends", "GET / HTTP/1.1\nHost: t\n\n", &[302]),
        case(
            "leading empty line",
            "\r\nGET / HTTP/1.1\r\nHost: t\r\n\r\n",
            &[302],
        ),
        case(
            "h2c prior knowledge on a plain port",
            "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            &[],
        )
        .nginx(
            &[400],
            "plain listeners speak HTTP/1 only and close an HTTP/2 preface (README, Request rules)",
        ),
        case(
            "TLS ClientHello on a plain port",
            b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03".to_vec(),
            &[400],
        ),
        case("nothing, then half-close", "", &[]),
        case("only CRLFs", "\r\n\r\n", &[]),
        case("head never finished", "GET / HTTP/1.1\r\nHost: t\r\n", &[]),
        case("no Host in HTTP/1.1", "GET / HTTP/1.1\r\n\r\n", &[302]).nginx(
            &[400],
            "Host names nothing here: every answer is the same for any host",
        ),
        case(
            "two Host headers",
            "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            &[302],
        )
        .nginx(&[400], "as above: Host is not used"),
        case("HTTP/1.0 without Host", "GET / HTTP/1.0\r\n\r\n", &[302]),
    ]
}

fn sizes() -> Vec<Case> {
    let long_header = format!("X-Big: {}\r\n", "a".repeat(20_000));
    let many_headers: String = (0..200).map(|i| format!("X-H{i}: v\r\n")).collect();
    let huge_target = format!("/distri/jackherer/pkg/{}", "a".repeat(9000));
    let long_method = format!("{} / HTTP/1.1\r\nHost: t\r\n\r\n", "A".repeat(20_000));
    vec![
        case("one 20 KB header", get(PKG, &long_header), &[431]).nginx(
            &[400],
            "nginx says 400 for a header line over its 8 KB buffer; 431 names the cause",
        ),
        case("200 headers", get(PKG, &many_headers), &[431]).nginx(
            &[302],
            "nginx counts bytes, not headers; hyper caps them at 100",
        ),
        case("9 KB target", get(&huge_target, ""), &[414]),
        case("20 KB method", long_method, &[431]).nginx(
            &[414],
            "nginx counts the method into the request line; here the head is over its cap",
        ),
        case(
            "200 KB header",
            get(PKG, &format!("X-Big: {}\r\n", "a".repeat(200_000))),
            &[431],
        )
        .nginx(&[400], "as the 20 KB header"),
    ]
}

fn targets() -> Vec<Case> {
    let origin = |r: &Reply, ctx: &Ctx| goes_to(r, ctx, ORIGIN);
    vec![
        case(
            "encoded dots",
            get("/distri/jackherer/pkg/%2e%2e/%2e%2e/etc/passwd", ""),
            &[400],
        )
        .nginx(
            &[302],
            "nginx resolves the dots and redirects; no dot segment is ever sent on here",
        ),
        case(
            "plain dots",
            get("/distri/jackherer/../../etc/passwd", ""),
            &[400],
        )
        .nginx(&[302], "as encoded dots"),
        case("dots above the root", get("/../../etc/passwd", ""), &[400]),
        case(
            "single dot segment",
            get("/distri/jackherer/./pkg/x", ""),
            &[400],
        )
        .nginx(&[302], "as encoded dots"),
        case(
            "encoded slash",
            get("/distri/jackherer%2fpkg/x", ""),
            &[400],
        )
        .nginx(
            &[302],
            "an encoded slash would name another file on a mirror than here",
        ),
        case(
            "encoded backslash",
            get("/distri/jackherer/pkg/a%5cb", ""),
            &[302],
        ),
        case(
            "raw backslash",
            get("/distri/jackherer/pkg/a\\b", ""),
            &[302],
        ),
        case(
            "overlong slash",
            get("/distri/jackherer/pkg/%c0%af", ""),
            &[400],
        )
        .nginx(&[302], "invalid UTF-8 is refused, never passed on"),
        case("overlong dots", get("/distri/%c0%ae%c0%ae/x", ""), &[400])
            .nginx(&[302], "as overlong slash"),
        case(
            "invalid UTF-8 escape",
            get("/distri/jackherer/pkg/%ff", ""),
            &[400],
        )
        .nginx(&[302], "as overlong slash"),
        case("bad escape", get("/distri/jackherer/pkg/%zz", ""), &[400]),
        case(
            "truncated escape",
            get("/distri/jackherer/pkg/%2", ""),
            &[400],
        ),
        case(
            "encoded NUL",
            get("/distri/jackherer/pkg/a%00b", ""),
            &[400],
        ),
        case("encoded CR LF", get("/a%0d%0aSet-Cookie:x", ""), &[400])
            .nginx(&[302], "as encoded NUL; nginx re-escapes them"),
        case(
            "raw NUL",
            b"GET /a\0b HTTP/1.1\r\nHost: t\r\n\r\n".to_vec(),
            &[400],
        ),
        case(
            "raw CR in target",
            "GET /a\rb HTTP/1.1\r\nHost: t\r\n\r\n",
            &[400],
        ),
        case(
            "raw byte 0xff",
            b"GET /a\xffb HTTP/1.1\r\nHost: t\r\n\r\n".to_vec(),
            &[400],
        )
        .nginx(&[302], "as invalid UTF-8"),
        case(
            "double-encoded dots",
            get("/distri/jackherer/pkg/%252e%252e", ""),
            &[302],
        ),
        case("protocol-relative", get("//evil.example/x", ""), &[302]).check(origin),
        case(
            "absolute form",
            get(&format!("http://evil.example{PKG}"), ""),
            &[302],
        )
        .check(|r, ctx| as_if_alone(r, ctx, "127.0.0.1")),
        case(
            "absolute form, https",
            get("https://evil.example/x", ""),
            &[302],
        )
        .check(origin),
        case(
            "authority form with GET",
            get("evil.example:443", ""),
            &[400],
        ),
        case("asterisk with GET", get("*", ""), &[400]),
        case("fragment", get("/distri/jackherer/pkg/x#frag", ""), &[302])
            .check(|r, _| no_location_has(r, '#')),
        case(
            "not a current release",
            get("/distri/master/pkg/x", ""),
            &[302],
        )
        .check(origin),
        case(
            "mirrorlist with a bad ip",
            get(&format!("{PKG}?mirrorlist&ip=999.1.1.1"), ""),
            &[400],
        )
        .nginx(&[302], "nginx has no ?mirrorlist"),
        case(
            "query dropped",
            get(&format!("{PKG}?x=https://evil.example/"), ""),
            &[302],
        )
        .check(|r, _| match r.locations.as_slice() {
            [l] if !l.contains('?') && !l.contains("evil") => Ok(()),
            other => Err(format!("the query leaked: {other:?}")),
        }),
    ]
}

fn methods() -> Vec<Case> {
    let line = |m: &str, t: &str| format!("{m} {t} HTTP/1.1\r\nHost: t\r\n\r\n");
    vec![
        case("HEAD", line("HEAD", PKG), &[302]),
        case("POST", line("POST", PKG), &[405]).nginx(&[302], "nginx's return answers any method"),
        case("TRACE", line("TRACE", "/"), &[405]),
        case("CONNECT", line("CONNECT", "evil.example:443"), &[405])
            .nginx(&[400], "nginx refuses the authority form outright"),
        case("OPTIONS *", line("OPTIONS", "*"), &[405]).nginx(&[400], "the same refusal"),
        case("lowercase method", line("get", PKG), &[405])
            .nginx(&[400], "nginx refuses a lowercase method as malformed"),
        case("unknown method", line("BREW", PKG), &[405]).nginx(&[302], "as POST"),
    ]
}

fn framing() -> Vec<Case> {
    let pkg = PKG;
    let second = format!("GET {pkg} HTTP/1.1\r\nHost: t\r\n\r\n");
    vec![
        case("three pipelined", [get(pkg, ""), get(pkg, ""), get(pkg, "")].concat(), &[302, 302, 302]),
        case("pipelined, bad one in the middle", [get(pkg, ""), b"BAD\r\n\r\n".to_vec(), get(pkg, "")].concat(), &[302, 400]),
        case("GET with a body, then a request", format!("GET {pkg} HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello{second}"), &[302, 302]),
        case("conflicting Content-Length", format!("GET {pkg} HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello{second}"), &[400]),
        case("Content-Length list", format!("GET {pkg} HTTP/1.1\r\nHost: t\r\nContent-Length: 5, 6\r\n\r\nhello"), &[400]),
        case("negative Content-Length", format!("GET {pkg} HTTP/1.1\r\nHost: t\r\nContent-Length: -1\r\n\r\n"), &[400]),
        case("Content-Length with a sign", format!("GET {pkg} HTTP/1.1\r\nHost: t\r\nContent-Length: +5\r\n\r\nhello"), &[400]),
        case("Content-Length past u64", format!("GET {pkg} HTTP/1.1\r\nHost: t\r\nContent-Length: 99999999999999999999999\r\n\r\n"), &[400]),
        case("CL.TE smuggling", format!("POST {pkg} HTTP/1.1\r\nHost: t\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nG{second}"), &[405])
            .nginx(&[400], "nginx refuses both framings at once; hyper takes chunked (RFC 9112 6.3) and closes after"),
        case("TE.CL smuggling", format!("POST {pkg} HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n8\r\nSMUGGLED\r\n0\r\n\r\n{second}"), &[405])
            .nginx(&[400], "as CL.TE"),
        case("Transfer-Encoding not chunked last", format!("POST {pkg} HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n"), &[400])
            .nginx(&[501], "the same refusal"),
        case("Transfer-Encoding xchunked", format!("POST {pkg} HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n"), &[400])
            .nginx(&[501], "the same refusal"),
        case("space before colon", format!("POST {pkg} HTTP/1.1\r\nHost: t\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n"), &[400]),
        case("obsolete line folding", format!("GET {pkg} HTTP/1.1\r\nHost: t\r\nX-A: a\r\n b\r\n\r\n"), &[400]),
        case("header without colon", format!("GET {pkg} HTTP/1.1\r\nHost: t\r\nnocolon\r\n\r\n"), &[400])
            .nginx(&[302], "nginx skips a malformed header line; hyper refuses the request (RFC 9112 5)"),
        case("header name with a space", format!("GET {pkg} HTTP/1.1\r\nHost: t\r\nBad Name: x\r\n\r\n"), &[400]),
        case("NUL in a header value", b"GET / HTTP/1.1\r\nHost: t\r\nX-A: a\0b\r\n\r\n".to_vec(), &[400]),
        case("bad chunk size", format!("POST {pkg} HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n\r\n{second}"), &[405])
            .nginx(&[400], "the answer goes out before the body is read; the connection then closes"),
        case("Expect: 100-continue", format!("GET {pkg} HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\nabc"), &[302])
            .nginx(&[100, 302], "hyper sends 100 only when the body is read, and a redirect never reads it"),
        case("Upgrade: websocket", format!("GET {pkg} HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"), &[302]),
        case("Connection: close, then more", [format!("GET {pkg} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").into_bytes(), get(pkg, "")].concat(), &[302]),
        case("obs-text in a header value", b"GET / HTTP/1.1\r\nHost: t\r\nX-A: caf\xe9\r\n\r\n".to_vec(), &[302]),
    ]
}

fn forwarding() -> Vec<Case> {
    let xff_long: String = (0..1000)
        .map(|i| format!("9.9.{}.{}, ", i / 256, i % 256))
        .collect();
    let xff_lines: String = (0..90)
        .map(|i| format!("X-Forwarded-For: 9.9.9.{i}\r\n"))
        .collect();
    let xff_huge: String = (0..5000).map(|_| "9.9.9.9, ").collect();
    let us = |r: &Reply, ctx: &Ctx| goes_to(r, ctx, US);
    let eu = |r: &Reply, ctx: &Ctx| goes_to(r, ctx, EU);
    let trusted_alone = |r: &Reply, ctx: &Ctx| as_if_alone(r, ctx, "127.0.0.1");
    let untrusted_alone = |r: &Reply, ctx: &Ctx| as_if_alone(r, ctx, "127.0.0.2");
    vec![
        // The nearest proxy's view wins: the rightmost untrusted address.
        case(
            "1000 X-Forwarded-For entries",
            get(PKG, &format!("X-Forwarded-For: {xff_long}2.0.0.1\r\n")),
            &[302],
        )
        .nginx(
            &[400],
            "the line is over nginx's 8 KB header buffer; here the head's cap is 16 KiB",
        )
        .check(us),
        case(
            "90 X-Forwarded-For lines",
            get(PKG, &format!("{xff_lines}X-Forwarded-For: 2.0.0.1\r\n")),
            &[302],
        )
        .check(us),
        case(
            "5000 X-Forwarded-For entries",
            get(PKG, &format!("X-Forwarded-For: {xff_huge}\r\n")),
            &[431],
        )
        .nginx(&[400], "as the 20 KB header"),
        case(
            "X-Forwarded-For garbage",
            get(PKG, "X-Forwarded-For: not-an-address\r\n"),
            &[302],
        )
        .check(trusted_alone),
        case(
            "X-Forwarded-For with a port",
            get(PKG, "X-Forwarded-For: 2.0.0.1:4711\r\n"),
            &[302],
        )
        .check(trusted_alone),
        case(
            "Forwarded quoted",
            get(PKG, "Forwarded: for=\"2.0.0.1\"\r\n"),
            &[302],
        )
        .check(us),
        case(
            "Forwarded with case and spaces",
            get(PKG, "Forwarded: For = 2.0.0.1 ;proto=http\r\n"),
            &[302],
        ),
        case(
            "Forwarded IPv6 with port",
            get(PKG, "Forwarded: for=\"[2600:1000::1]:80\"\r\n"),
            &[302],
        )
        .check(us),
        case(
            "Forwarded IPv6 zone id",
            get(PKG, "Forwarded: for=\"[fe80::1%eth0]\"\r\n"),
            &[302],
        )
        .check(trusted_alone),
        case(
            "Forwarded obfuscated",
            get(PKG, "Forwarded: for=_hidden, for=unknown\r\n"),
            &[302],
        )
        .check(trusted_alone),
        case(
            "Forwarded unterminated quote",
            get(PKG, "Forwarded: for=\"2.0.0.1\r\n"),
            &[302],
        )
        .check(trusted_alone),
        case(
            "spoofed X-Forwarded-For, untrusted peer",
            get(PKG, "X-Forwarded-For: 2.0.0.1\r\n"),
            &[302],
        )
        .from("127.0.0.2")
        .check(untrusted_alone),
        case(
            "spoofed Forwarded, untrusted peer",
            get(PKG, "Forwarded: for=1.0.0.1\r\n"),
            &[302],
        )
        .from("127.0.0.2")
        .check(untrusted_alone),
        case(
            "spoofed X-Forwarded-Proto, untrusted peer",
            get(
                PKG,
                "X-Forwarded-For: 1.0.0.1\r\nX-Forwarded-Proto: https\r\n",
            ),
            &[302],
        )
        .from("127.0.0.2")
        .check(untrusted_alone),
        case(
            "trusted X-Forwarded-For",
            get(PKG, "X-Forwarded-For: 1.0.0.1\r\n"),
            &[302],
        )
        .check(eu),
    ]
}

/// nginx on a loopback port with `return 302` to an origin, as in
/// `benches/load.sh`; stopped when dropped.
pub struct Nginx {
    pub addr: SocketAddr,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Nginx {
    pub fn start() -> Option<Nginx> {
        let bin = ["/usr/sbin/nginx", "/usr/bin/nginx"]
            .into_iter()
            .map(PathBuf::from)
            .find(|p| p.exists())?;
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let d = dir.path().display();
        let conf = format!(
            "daemon off; worker_processes 1; pid {d}/nginx.pid; error_log {d}/error.log;\n\
             events {{ worker_connections 64; }}\n\
             http {{ access_log off;\n\
             client_body_temp_path {d}; proxy_temp_path {d}; fastcgi_temp_path {d};\n\
             uwsgi_temp_path {d}; scgi_temp_path {d};\n\
             server {{ listen 127.0.0.1:{port}; location / {{ return 302 http://origin.example$request_uri; }} }} }}\n"
        );
        std::fs::write(dir.path().join("nginx.conf"), conf).unwrap();
        let child = Command::new(bin)
            .arg("-c")
            .arg(dir.path().join("nginx.conf"))
            .arg("-e")
            .arg(dir.path().join("error.log"))
            .spawn()
            .ok()?;
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        // Up when it accepts (it starts in milliseconds).
        for _ in 0..500 {
            if std::net::TcpStream::connect(addr).is_ok() {
                return Some(Nginx {
                    addr,
                    child,
                    _dir: dir,
                });
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        panic!("nginx did not start on {addr}");
    }
}

impl Drop for Nginx {
    /// SIGTERM, so the master stops its worker: SIGKILL (`Child::kill`)
    /// left the worker running, and holding its port, after every run.
    fn drop(&mut self) {
        let term = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        if !term.is_ok_and(|s| s.success()) {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// The plain request for `PKG` from `from`, with no forwarding headers.
pub fn plain_from(from: &'static str) -> Case {
    case("plain", get(PKG, ""), &[302]).from(from)
}
