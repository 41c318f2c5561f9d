//! HTTPS: certificates made in the test, real handshakes on loopback,
//! HTTP/2 by ALPN, no downgrade to `http://` mirrors, and a certificate
//! renewed on disk taken without a restart.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use distri_redirector::config::Config;
use distri_redirector::frontend::{Conn, Frontend, Outcome};
use distri_redirector::geoip::GeoDb;
use distri_redirector::routing::Routing;
use distri_redirector::table::{Status, Table};
use http_body_util::Empty;
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, ServerName};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

const PKG: &str = "/distri/jackherer/pkg/pkg001-amd64-1.0-1.squashfs";

/// Writes a fresh self-signed certificate for `localhost` and its key;
/// returns the certificate's DER.
fn write_cert(dir: &Path) -> CertificateDer<'static> {
    let c = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    std::fs::write(dir.join("cert.pem"), c.cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), c.signing_key.serialize_pem()).unwrap();
    c.cert.der().clone()
}

/// The world fixture with an HTTPS listener using the certificate in `dir`.
async fn tls_fixture(dir: &Path) -> Fixture {
    tls_fixture_with(dir, "").await
}

/// The same, with these `[server]` settings.
async fn tls_fixture_with(dir: &Path, server: &str) -> Fixture {
    let extra = format!(
        "[server]\n{server}\n[tls]\nlisten = [\"127.0.0.1:0\"]\ncert = \"{}\"\nkey = \"{}\"\n",
        dir.join("cert.pem").display(),
        dir.join("key.pem").display()
    );
    let opts = Options {
        extra: Box::leak(extra.into_boxed_str()),
        ..Options::default()
    };
    Fixture::world(opts).await
}

fn tls_addr(f: &Fixture) -> SocketAddr {
    f.service.as_ref().unwrap().tls_addrs[0]
}

/// A client configuration trusting only `root`, offering `alpn`.
fn client_config(root: &CertificateDer<'static>, alpn: &[u8]) -> TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    TlsConnector::from(Arc::new(config))
}

/// A TLS connection trusting only `root`, offering `alpn`.
async fn connect(
    addr: SocketAddr,
    root: &CertificateDer<'static>,
    alpn: &[u8],
) -> TlsStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    client_config(root, alpn)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .expect("handshake")
}

/// One HTTP/1.1 request over TLS; the response head as text.
async fn get_h1(tls: &mut TlsStream<TcpStream>, headers: &str) -> String {
    let req =
        format!("GET {PKG} HTTP/1.1\r\nHost: localhost\r\n{headers}Connection: close\r\n\r\n");
    tls.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    // A peer that closes without close_notify is an error here; the bytes
    // read before it still count.
    let _ = tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut buf))
        .await
        .expect("an answer within 10 s");
    String::from_utf8_lossy(&buf).into_owned()
}

fn location(head: &str) -> &str {
    head.lines()
        .find_map(|l| l.strip_prefix("location: "))
        .unwrap_or_else(|| panic!("no location in {head}"))
}

/// The server's suite order decides: a client that lists AES-256-GCM-SHA384
/// first, as OpenSSL and Go do, gets AES-128-GCM-SHA256, whose key schedule
/// costs the server a fraction (SHA-256 in hardware).
#[tokio::test]
async fn the_server_prefers_sha256_suites() {
    let certs = tempfile::tempdir().unwrap();
    let root = write_cert(certs.path());
    let f = tls_fixture(certs.path()).await;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root).unwrap();
    let mut provider = rustls::crypto::ring::default_provider();
    assert_eq!(
        provider.cipher_suites[0].suite(),
        rustls::CipherSuite::TLS13_AES_256_GCM_SHA384,
        "the client offers SHA-384 first"
    );
    provider.cipher_suites.truncate(2);
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = TcpStream::connect(tls_addr(&f)).await.unwrap();
    let tls = TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let suite = tls.get_ref().1.negotiated_cipher_suite().unwrap().suite();
    assert_eq!(suite, rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
}

/// HTTP/2 by ALPN: 500 requests at once on one connection, all answered,
/// and each client sent to the origin, since every mirror is `http://`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_serves_a_burst_of_500_streams_on_one_connection() {
    let certs = tempfile::tempdir().unwrap();
    let root = write_cert(certs.path());
    let f = tls_fixture(certs.path()).await;
    let tls = connect(tls_addr(&f), &root, b"h2").await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    let mut burst = tokio::task::JoinSet::new();
    for i in 0..500u32 {
        let mut sender = sender.clone();
        burst.spawn(async move {
            let req = Request::get(format!("https://localhost{PKG}"))
                .header("x-forwarded-for", format!("1.0.0.{}", i % 250 + 1))
                .body(Empty::<Bytes>::new())
                .unwrap();
            let resp = sender.send_request(req).await.expect("answered");
            assert_eq!(resp.version(), hyper::Version::HTTP_2);
            (
                resp.status().as_u16(),
                resp.headers()["location"].to_str().unwrap().to_string(),
            )
        });
    }
    let answers = burst.join_all().await;
    assert_eq!(answers.len(), 500);
    for (status, loc) in answers {
        assert_eq!(status, 302);
        assert!(loc.starts_with(&f.origin.url()), "a downgrade: {loc}");
    }
}

/// An idle HTTP/2 connection is not held forever: once `header_timeout`
/// passes without a request, the service sends GOAWAY and the connection
/// ends cleanly (hyper's client connection future completes without an
/// error), not before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_http2_connection_gets_goaway_after_the_header_timeout() {
    let certs = tempfile::tempdir().unwrap();
    let root = write_cert(certs.path());
    let f = tls_fixture_with(certs.path(), "header_timeout = \"1s\"").await;
    let tls = connect(tls_addr(&f), &root, b"h2").await;
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    let conn = tokio::spawn(conn);
    let req = Request::get(format!("https://localhost{PKG}"))
        .body(Empty::<Bytes>::new())
        .unwrap();
    assert_eq!(sender.send_request(req).await.unwrap().status(), 302);
    let idle = std::time::Instant::now();
    let ended = tokio::time::timeout(Duration::from_secs(20), conn)
        .await
        .expect("closed within 20 s")
        .unwrap();
    assert!(ended.is_ok(), "not a clean end: {ended:?}");
    let took = idle.elapsed();
    assert!(took >= Duration::from_millis(900), "closed after {took:?}");
}

/// The same client: over plain HTTP to its nearest `http://` mirror; over
/// HTTPS, or through a trusted proxy that says https, to the origin.
#[tokio::test]
async fn a_client_that_came_over_https_is_never_sent_to_http() {
    let certs = tempfile::tempdir().unwrap();
    let root = write_cert(certs.path());
    let f = tls_fixture(certs.path()).await;
    assert_eq!(f.where_to("1.0.0.1").await, "eu-fra");

    let mut tls = connect(tls_addr(&f), &root, b"http/1.1").await;
    let head = get_h1(&mut tls, "X-Forwarded-For: 1.0.0.1\r\n").await;
    assert!(head.starts_with("HTTP/1.1 302"), "{head}");
    assert_eq!(f.name_of(location(&head)), "origin");

    for proto in [
        "X-Forwarded-Proto: https",
        "Forwarded: for=1.0.0.1;proto=https",
    ] {
        let a = raw(
            f.addr(),
            &format!("GET {PKG} HTTP/1.1\r\nHost: t\r\nX-Forwarded-For: 1.0.0.1\r\n{proto}\r\nConnection: close\r\n\r\n"),
        )
        .await;
        assert_eq!(f.name_of(a.location()), "origin", "{proto}");
    }
}

/// With an `https://` mirror in the table, a TLS client gets it, and a
/// plain client still gets the nearer `http://` one.
#[test]
fn tls_clients_get_the_nearest_https_mirror() {
    let dir = tempfile::tempdir().unwrap();
    write_nested_db(&dir.path().join("test.mmdb"));
    let text = "origin = \"https://origin.example/\"\nreleases = [\"jackherer\"]\ngeoip = \"test.mmdb\"\n\
        [[mirror]]\nname = \"paris\"\nurl = \"http://paris.example/\"\nlat = 48.85\nlon = 2.35\n\
        [[mirror]]\nname = \"tokyo\"\nurl = \"https://tokyo.example/\"\nlat = 35.68\nlon = 139.69\n";
    let path = dir.path().join("mirrors.toml");
    std::fs::write(&path, text).unwrap();
    let config = Config::load(&path).unwrap();
    let geo = Arc::new(GeoDb::open_all(&config.geoip).unwrap());
    let table = Table::from_config(&config.mirrors, Status::assumed_up(), config.selection);
    let frontend = Frontend::new(Routing::new(&config, geo, table).share());
    let req = Request::get(PKG).body(()).unwrap();
    let paris_client: SocketAddr = "1.0.0.1:5000".parse().unwrap();
    let to = |tls| match frontend.decide(
        &req,
        Conn {
            peer: paris_client,
            tls,
            admin: false,
        },
    ) {
        Outcome::Redirect { location } => location.to_str().unwrap().to_string(),
        other => panic!("{other:?}"),
    };
    assert!(
        to(false).starts_with("http://paris.example/"),
        "{}",
        to(false)
    );
    assert!(
        to(true).starts_with("https://tokyo.example/"),
        "{}",
        to(true)
    );
}

/// A renewed certificate, written over the old files, is what new
/// handshakes get, without a restart; open connections are not disturbed.
#[tokio::test]
async fn a_renewed_certificate_is_taken_without_a_restart() {
    let certs = tempfile::tempdir().unwrap();
    let first = write_cert(certs.path());
    let f = tls_fixture(certs.path()).await;
    let open = connect(tls_addr(&f), &first, b"http/1.1").await;

    let second = write_cert(certs.path());
    let (addr, second) = (tls_addr(&f), &second);
    f.eventually("the new certificate", || async move {
        let tcp = TcpStream::connect(addr).await.unwrap();
        presented(tcp, second).await.then_some(())
    })
    .await;
    let mut open = open;
    let head = get_h1(&mut open, "").await;
    assert!(
        head.starts_with("HTTP/1.1 302"),
        "the old connection: {head}"
    );
}

/// Whether the server presents `cert` (a handshake trusting only it works).
async fn presented(tcp: TcpStream, cert: &CertificateDer<'static>) -> bool {
    client_config(cert, b"http/1.1")
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .is_ok()
}

/// A certificate that does not load (a key that is not the certificate's)
/// is refused, and the running one stays.
#[tokio::test]
async fn a_broken_certificate_is_refused_and_the_old_one_serves() {
    let certs = tempfile::tempdir().unwrap();
    let first = write_cert(certs.path());
    let f = tls_fixture(certs.path()).await;
    let other = tempfile::tempdir().unwrap();
    write_cert(other.path());
    std::fs::copy(other.path().join("key.pem"), certs.path().join("key.pem")).unwrap();
    f.until("the key is refused", |f| f.reloads().1 >= 1).await;
    let e = f.reloads().2;
    assert!(e.contains("key.pem"), "{e}");
    let mut tls = connect(tls_addr(&f), &first, b"http/1.1").await;
    assert!(get_h1(&mut tls, "").await.starts_with("HTTP/1.1 302"));
}

/// A TCP connection to `addr` from the loopback address `from`.
async fn connect_from(from: &str, addr: SocketAddr) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
    socket.connect(addr).await.unwrap()
}

/// Clients of one network that open TLS and never finish the handshake
/// hold at most `tls_handshakes_per_client` places: the next from that
/// network is closed at once (long before the handshake timeout), and a
/// client from another network is served while they stall.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_handshakes_from_one_network_do_not_starve_others() {
    let certs = tempfile::tempdir().unwrap();
    let root = write_cert(certs.path());
    let server = "header_timeout = \"60s\"\ntls_handshakes = 8\ntls_handshakes_per_client = 4";
    let f = tls_fixture_with(certs.path(), server).await;
    let addr = tls_addr(&f);
    let mut opened = Vec::new();
    for _ in 0..5 {
        // The first byte of a handshake record, then nothing: a client
        // that says nothing at all waits in the kernel, not in a place
        // (the listener defers accepting until a client has sent something).
        let mut s = connect_from("127.0.0.2", addr).await;
        s.write_all(&[0x16]).await.unwrap();
        opened.push(s);
    }
    // Connections are served in whatever order the server's threads take
    // them up, so any one of the five may be the one past the cap.
    let first_closed = async {
        let mut reads: Vec<_> = opened
            .iter_mut()
            .enumerate()
            .map(|(i, s)| {
                Box::pin(async move {
                    let mut byte = [0u8; 1];
                    (i, s.read(&mut byte).await)
                })
            })
            .collect();
        std::future::poll_fn(|cx| {
            for r in &mut reads {
                if let std::task::Poll::Ready(v) = r.as_mut().poll(cx) {
                    return std::task::Poll::Ready(v);
                }
            }
            std::task::Poll::Pending
        })
        .await
    };
    let (closed, read) = tokio::time::timeout(Duration::from_secs(20), first_closed)
        .await
        .expect("one of five is closed at once, not after the 60 s timeout");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    opened.remove(closed);
    let mut stalled = opened;
    let mut byte = [0u8; 1];

    let mut tls = connect(addr, &root, b"http/1.1").await;
    assert!(get_h1(&mut tls, "").await.starts_with("HTTP/1.1 302"));
    // The stalled ones are still open: what refused the fifth was their
    // network's cap, not a timeout.
    for s in &mut stalled {
        let r = tokio::time::timeout(Duration::from_millis(50), s.read(&mut byte)).await;
        assert!(r.is_err(), "a stalled handshake was closed: {r:?}");
    }
    // Once one gives up, its network has a place again.
    drop(stalled.pop());
    let root = &root;
    f.eventually("a place for 127.0.0.2", || async move {
        let tcp = connect_from("127.0.0.2", addr).await;
        presented(tcp, root).await.then_some(())
    })
    .await;
}
