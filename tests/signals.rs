//! The binary as systemd runs it: readiness told on `NOTIFY_SOCKET` once it
//! listens, SIGHUP reloads (and does not kill it), SIGTERM lets an
//! in-flight request finish and exits 0.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixDatagram;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use support::{rss_kib, write_nested_db};

/// The service started on a config with no mirrors (nothing to probe);
/// its stderr lines arrive on the receiver.
struct Service {
    child: Child,
    lines: mpsc::Receiver<String>,
    _dir: tempfile::TempDir,
}

impl Service {
    fn start(notify: Option<&std::path::Path>) -> Service {
        Service::start_with(notify, "")
    }

    /// With `extra` appended to the config.
    fn start_with(notify: Option<&std::path::Path>, extra: &str) -> Service {
        Service::start_limited(notify, extra, None)
    }

    /// And, with `nofile`, at most that many open files (RLIMIT_NOFILE).
    fn start_limited(
        notify: Option<&std::path::Path>,
        extra: &str,
        nofile: Option<u32>,
    ) -> Service {
        let dir = tempfile::tempdir().unwrap();
        write_nested_db(&dir.path().join("test.mmdb"));
        let config = dir.path().join("mirrors.toml");
        std::fs::write(
            &config,
            format!(
                "listen = [\"127.0.0.1:0\"]\norigin = \"http://127.0.0.1:9/\"\n\
                 releases = [\"jackherer\"]\ngeoip = \"test.mmdb\"\n\
                 [server]\nworkers = 1\nshutdown_grace = \"5s\"\n{extra}"
            ),
        )
        .unwrap();
        let bin = env!("CARGO_BIN_EXE_distri-redirector");
        let mut cmd = match nofile {
            None => Command::new(bin),
            Some(n) => {
                let mut c = Command::new("sh");
                c.arg("-c")
                    .arg(format!("ulimit -n {n} && exec \"$0\" \"$@\""))
                    .arg(bin);
                c
            }
        };
        cmd.arg("serve")
            .arg("--config")
            .arg(&config)
            .env("RUST_LOG", "info")
            .env_remove("NOTIFY_SOCKET")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some(socket) = notify {
            cmd.env("NOTIFY_SOCKET", socket);
        }
        let mut child = cmd.spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Service {
            child,
            lines,
            _dir: dir,
        }
    }

    /// The next stderr line that contains `want`.
    fn line_with(&self, want: &str) -> String {
        loop {
            let line = self
                .lines
                .recv_timeout(Duration::from_secs(20))
                .unwrap_or_else(|_| panic!("no log line with {want:?}"));
            if line.contains(want) {
                return line;
            }
        }
    }

    fn addr(&self) -> SocketAddr {
        let line = self.line_with("serving http");
        // Text (`addr=...`) or JSON (`"addr":"..."`).
        let addr = line
            .split("addr=")
            .nth(1)
            .or_else(|| line.split("\"addr\":\"").nth(1))
            .unwrap()
            .split([' ', '"'])
            .next()
            .unwrap();
        addr.parse().unwrap()
    }

    fn signal(&self, name: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{name}");
    }

    fn wait_exit(&mut self) -> std::process::ExitStatus {
        for _ in 0..2000 {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("did not exit within 20 s");
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const REQUEST: &[u8] = b"GET /distri/jackherer/pkg/a.squashfs HTTP/1.1\r\nHost: t\r\n\r\n";

/// Reads one response: its head, returned, and its body, skipped.
fn read_head(s: &mut TcpStream) -> String {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte) {
            Ok(0) => break,
            Ok(_) => buf.push(byte[0]),
            Err(e) => panic!("reading the answer: {e}"),
        }
    }
    let head = String::from_utf8_lossy(&buf).into_owned();
    let length: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length: ")
                .map(String::from)
        })
        .map_or(0, |v| v.trim().parse().unwrap());
    s.read_exact(&mut vec![0; length]).unwrap();
    head
}

#[test]
fn ready_is_told_once_listening() {
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let service = Service::start(Some(&socket_path));
    let mut buf = [0u8; 256];
    let n = socket.recv(&mut buf).expect("a notification");
    assert!(
        String::from_utf8_lossy(&buf[..n]).contains("READY=1"),
        "{:?}",
        String::from_utf8_lossy(&buf[..n])
    );
    // Ready means listening: a connection is answered.
    let mut s = TcpStream::connect(service.addr()).unwrap();
    s.write_all(REQUEST).unwrap();
    assert!(read_head(&mut s).starts_with("HTTP/1.1 302"));
}

#[test]
fn sighup_reloads_and_serving_goes_on() {
    let service = Service::start(None);
    let addr = service.addr();
    service.signal("HUP");
    service.line_with("SIGHUP: reloading");
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(REQUEST).unwrap();
    assert!(read_head(&mut s).starts_with("HTTP/1.1 302"));
}

/// A request half sent when SIGTERM arrives is still answered; then the
/// service exits 0 without waiting out its grace period.
#[test]
fn sigterm_lets_an_in_flight_request_finish_and_exits_0() {
    let mut service = Service::start(None);
    let addr = service.addr();
    let mut busy = TcpStream::connect(addr).unwrap();
    // A whole request first, so the connection is surely accepted and served.
    busy.write_all(REQUEST).unwrap();
    assert!(read_head(&mut busy).starts_with("HTTP/1.1 302"));
    busy.write_all(&REQUEST[..20]).unwrap();
    // Only bytes the service has read make the connection busy; bytes
    // still in its socket when the stop comes are a client that came too
    // late (as with nginx). Wait for the read, not for a while.
    wait_until_read(addr, &busy);
    service.signal("TERM");
    service.line_with("stopping");
    busy.write_all(&REQUEST[20..]).unwrap();
    let head = read_head(&mut busy);
    assert!(head.starts_with("HTTP/1.1 302"), "{head:?}");
    // Then closed: no further request is read.
    assert_eq!(
        busy.read(&mut [0u8; 16]).unwrap_or(0),
        0,
        "closed after the answer"
    );
    let status = service.wait_exit();
    assert_eq!(status.code(), Some(0));
}

/// `[log] access = true, format = "json"`: one JSON line per request on
/// stderr, every line of the log JSON, and the last lines written before
/// the process exits.
#[test]
fn access_log_writes_one_json_line_per_request() {
    let mut service = Service::start_with(None, "[log]\naccess = true\nformat = \"json\"\n");
    let addr = service.addr();
    let mut s = TcpStream::connect(addr).unwrap();
    for _ in 0..3 {
        s.write_all(REQUEST).unwrap();
        assert!(read_head(&mut s).starts_with("HTTP/1.1 302"));
    }
    s.write_all(b"DELETE /x HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    assert!(read_head(&mut s).starts_with("HTTP/1.1 405"));
    drop(s);
    service.signal("TERM");
    assert_eq!(service.wait_exit().code(), Some(0));
    // Until the reader thread hangs up at the end of stderr.
    let lines: Vec<serde_json::Value> =
        std::iter::from_fn(|| service.lines.recv_timeout(Duration::from_secs(20)).ok())
            .map(|l| serde_json::from_str(&l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
            .collect();
    let access: Vec<&serde_json::Value> =
        lines.iter().filter(|l| l["target"] == "access").collect();
    assert_eq!(access.len(), 4, "{lines:?}");
    let first = &access[0]["fields"];
    assert_eq!(first["client"], "127.0.0.1");
    assert_eq!(first["method"], "GET");
    assert_eq!(first["path"], "/distri/jackherer/pkg/a.squashfs");
    assert_eq!(first["status"], 302);
    assert_eq!(first["to"], "origin_no_candidate");
    assert!(first["us"].is_u64());
    let last = &access[3]["fields"];
    assert_eq!(
        (&last["status"], &last["to"]),
        (
            &serde_json::json!(405),
            &serde_json::json!("method_not_allowed")
        )
    );
}

/// Out of file descriptors: connections past the limit wait in the
/// backlog; once some close, the service accepts and answers again,
/// without a restart.
#[test]
fn serving_resumes_after_running_out_of_file_descriptors() {
    let service = Service::start_limited(None, "header_timeout = \"60s\"\n", Some(64));
    let addr = service.addr();
    // Connections that start a request and stall, until accepting fails
    // for want of descriptors. (Silent ones would wait in the kernel: the
    // listener defers accepting until a client has sent something.)
    let idle: Vec<TcpStream> = (0..80)
        .map(|_| {
            let mut s = TcpStream::connect(addr).unwrap();
            s.write_all(b"GET ").unwrap();
            s
        })
        .collect();
    service.line_with("accept failed");
    // While exhausted, a request waits in the backlog...
    let mut waiting = TcpStream::connect(addr).unwrap();
    waiting.write_all(REQUEST).unwrap();
    // ...and is answered once descriptors are free again.
    drop(idle);
    assert!(read_head(&mut waiting).starts_with("HTTP/1.1 302"));
    let mut fresh = TcpStream::connect(addr).unwrap();
    fresh.write_all(REQUEST).unwrap();
    assert!(read_head(&mut fresh).starts_with("HTTP/1.1 302"));
}

/// Waits until the service has read everything `client` sent it: the
/// receive queue of its end of the connection, in /proc/net/tcp, is empty.
fn wait_until_read(server: SocketAddr, client: &TcpStream) {
    let hex = |a: SocketAddr| match a {
        SocketAddr::V4(v4) => format!(
            "{:08X}:{:04X}",
            u32::from_le_bytes(v4.ip().octets()),
            v4.port()
        ),
        SocketAddr::V6(_) => unreachable!("the test listens on IPv4"),
    };
    let (local, remote) = (hex(server), hex(client.local_addr().unwrap()));
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while std::time::Instant::now() < deadline {
        let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
        let queued = table.lines().find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(1) == Some(&local.as_str()) && f.get(2) == Some(&remote.as_str()))
                .then(|| f[4].split(':').nth(1).unwrap().to_string())
        });
        if queued.as_deref() == Some("00000000") {
            return;
        }
        std::thread::yield_now();
    }
    panic!("the service never read the partial request");
}

/// Memory per connection is bounded by the head limit. 300 connections
/// each send a request with the largest head allowed (just under the 16
/// KiB default), get their answer and stay open: the process grows by less
/// than 40 KiB per connection (measured: 30.5 KiB; a read buffer of at
/// most `max_header_bytes` + 4 KiB, and the connection's state). With
/// `max_header_bytes` at 1 MiB and 90 KB heads the same test grows by
/// about 100 KiB per connection and fails.
#[test]
fn memory_per_connection_is_bounded_by_the_head_limit() {
    let service = Service::start(None);
    let addr = service.addr();
    let pid = service.child.id();
    let filler = format!("X-Filler: {}\r\n", "a".repeat(1000));
    let request = format!(
        "GET /distri/jackherer/pkg/a.squashfs HTTP/1.1\r\nHost: t\r\n{}\r\n",
        filler.repeat(15)
    );
    let send = |n: usize| -> Vec<TcpStream> {
        (0..n)
            .map(|_| {
                let mut s = TcpStream::connect(addr).unwrap();
                s.write_all(request.as_bytes()).unwrap();
                assert!(read_head(&mut s).starts_with("HTTP/1.1 302"));
                s
            })
            .collect()
    };
    // Warm up: the runtime's and allocator's first buffers.
    let warm = send(50);
    let before = rss_kib(pid);
    let open = send(300);
    let grown = rss_kib(pid).saturating_sub(before);
    assert!(
        grown < 300 * 40,
        "resident memory grew by {grown} KiB for 300 connections"
    );
    drop((warm, open));
}
