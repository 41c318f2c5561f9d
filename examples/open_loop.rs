//! Open-loop load generator for `benches/load.sh` (`RATE=`): requests at a
//! fixed rate whatever the server does, the way real clients arrive, with
//! each latency counted from when the request was due. wrk's closed loop
//! (each connection waits for its answer before asking again) sends less
//! when the server slows, and at saturation its queue forms on whichever
//! side is slower to run: its p99 moved ±30% between identical runs here
//! (benches/RESULTS.md, "Ninth session"). wrk2 does this, but is not
//! packaged; oha cannot give each request its own client address.
//!
//! `open_loop --addr 127.0.0.1:18181 --rate 40000 [--connections 256]
//!  [--seconds 10] [--warmup 2] [--v6]`
//!
//! Requests are those of `benches/xff.lua`: the fixture's images, each from
//! another client address (every fourth over IPv6 with `--v6`). Each
//! connection is due to send every `connections / rate` seconds, staggered.
//! A request sent late because the connection still waited for the answer
//! before is counted from when it was due (the coordinated-omission
//! correction), so a slow server cannot hide its queue by slowing the
//! load. A request sent late only because the generator's own timer fired
//! late (tokio's is in milliseconds) is counted from when it went: that
//! lag is the generator's, not the server's.
//!
//! Prints the lines of wrk's `--latency` report that `benches/common.sh`
//! reads (requests, requests/s, 50% and 99%), then the rest of the
//! distribution. Exits non-zero if any request failed: a run with errors
//! measures something else.

use std::io;
use std::net::IpAddr;
use std::time::Duration;

use clap::Parser;
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, sleep_until, timeout_at};

#[derive(Parser, Clone)]
struct Args {
    /// The server, host:port.
    #[arg(long)]
    addr: String,
    /// Requests a second, all connections together.
    #[arg(long)]
    rate: f64,
    /// Keep-alive connections. The default gives each a request every
    /// 4 ms at most, so a timer firing a millisecond late never delays the
    /// next request.
    #[arg(long)]
    connections: Option<usize>,
    /// How long requests are sent, warm-up included.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Requests due in the first seconds are sent but not counted.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Every fourth request from an IPv6 address.
    #[arg(long)]
    v6: bool,
    /// Each request leaves when it is due, to the microsecond (a timerfd
    /// per connection), instead of with the others due in the same
    /// millisecond of tokio's timer: an even flow instead of batches.
    #[arg(long)]
    smooth: bool,
}

/// What one connection saw.
#[derive(Default)]
struct Seen {
    /// Latencies of the counted requests, in nanoseconds.
    latencies: Vec<u64>,
    /// Every request answered, counted or not (the server's CPU per
    /// request is divided by it).
    answered: u64,
    /// Counted requests sent late because the connection was still busy.
    late: u64,
    errors: u64,
    first_error: Option<String>,
}

fn main() -> io::Result<()> {
    let mut args = Args::parse();
    if !(args.rate > 0.0 && args.seconds > args.warmup && args.warmup >= 0.0) {
        eprintln!("open_loop: --rate must be positive and --seconds longer than --warmup");
        std::process::exit(2);
    }
    let conns = *args
        .connections
        .get_or_insert((args.rate * 0.004).ceil().max(16.0) as usize);
    // One thread, like `wrk -t1`: the generator takes one core at most.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let seen = rt.block_on(async {
        let start = Instant::now() + Duration::from_millis(100);
        let tasks: Vec<_> = (0..conns)
            .map(|j| tokio::spawn(connection(args.clone(), j, start)))
            .collect();
        let mut all = Seen::default();
        for t in tasks {
            let s = t.await.expect("a connection task panicked");
            all.latencies.extend(s.latencies);
            all.answered += s.answered;
            all.late += s.late;
            all.errors += s.errors;
            all.first_error = all.first_error.or(s.first_error);
        }
        all
    });
    report(&args, conns, seen)
}

fn report(args: &Args, conns: usize, mut seen: Seen) -> io::Result<()> {
    seen.latencies.sort_unstable();
    let n = seen.latencies.len();
    let at = |q: f64| {
        let i = ((n as f64 * q).ceil() as usize).clamp(1, n.max(1)) - 1;
        seen.latencies.get(i).map_or(0.0, |&ns| ns as f64 / 1e6)
    };
    let counted_for = args.seconds - args.warmup;
    println!(
        "open loop: {} req/s offered over {conns} connections",
        args.rate
    );
    println!("  {} requests in {:.1}s", seen.answered, args.seconds);
    println!("Requests/sec: {:.2}", n as f64 / counted_for);
    for (label, q) in [("50%", 0.5), ("90%", 0.9), ("99%", 0.99), ("99.9%", 0.999)] {
        println!("  {label:>6} {:.3}ms", at(q));
    }
    println!("  max {:.3}ms", at(1.0));
    println!(
        "  late {} of {n} ({:.2}%)",
        seen.late,
        100.0 * seen.late as f64 / n.max(1) as f64
    );
    if seen.errors > 0 || n == 0 {
        let why = seen.first_error.unwrap_or_else(|| "no answers".into());
        eprintln!(
            "open_loop: {} requests failed; the first: {why}",
            seen.errors
        );
        std::process::exit(1);
    }
    Ok(())
}

/// Connection `j`'s requests, from `start` until `args.seconds` later.
async fn connection(args: Args, j: usize, start: Instant) -> Seen {
    let conns = args.connections.unwrap_or(1);
    let every = Duration::from_secs_f64(conns as f64 / args.rate);
    let first = start + every.mul_f64(j as f64 / conns as f64);
    let end = start + Duration::from_secs_f64(args.seconds);
    let counted_from = start + Duration::from_secs_f64(args.warmup);
    // A server that stops answering fails the run instead of hanging it.
    let give_up = end + Duration::from_secs(5);
    let mut seen = Seen::default();
    let mut stream = None;
    let (mut request, mut answer) = (Vec::with_capacity(256), Vec::with_capacity(1024));
    let mut free_since = Instant::now();
    let precise = match args.smooth.then(Precise::new).transpose() {
        Ok(p) => p,
        Err(e) => {
            seen.errors += 1;
            seen.first_error = Some(format!("timerfd: {e}"));
            return seen;
        }
    };
    for k in 0u64.. {
        let due = first + every * k as u32;
        if due >= end {
            break;
        }
        let late = free_since > due;
        if !late {
            match &precise {
                Some(p) => p.until(due).await,
                None => sleep_until(due).await,
            }
        }
        let sent = if late { due } else { Instant::now() };
        build(&mut request, j as u64 + k * conns as u64, args.v6);
        let result = timeout_at(
            give_up,
            exchange(&mut stream, &args.addr, &request, &mut answer),
        )
        .await
        .unwrap_or_else(|_| Err(io::Error::new(io::ErrorKind::TimedOut, "no answer")));
        free_since = Instant::now();
        match result {
            Ok(()) => {
                seen.answered += 1;
                if due >= counted_from {
                    seen.latencies.push((free_since - sent).as_nanos() as u64);
                    seen.late += u64::from(late);
                }
            }
            Err(e) => {
                seen.errors += 1;
                seen.first_error.get_or_insert_with(|| e.to_string());
                stream = None;
                if free_since >= give_up {
                    break;
                }
            }
        }
    }
    seen
}

/// One request and its answer on the connection, opened if needed.
async fn exchange(
    stream: &mut Option<TcpStream>,
    addr: &str,
    request: &[u8],
    answer: &mut Vec<u8>,
) -> io::Result<()> {
    if stream.is_none() {
        let s = TcpStream::connect(addr).await?;
        s.set_nodelay(true)?;
        *stream = Some(s);
    }
    let s = stream.as_mut().expect("connected above");
    s.write_all(request).await?;
    if read_answer(s, answer).await? {
        // nginx closes a connection after 1,000 requests (its
        // `keepalive_requests`); the next request opens another.
        *stream = None;
    }
    Ok(())
}

/// Reads one response whole; an error unless it is a `302`. `true` when
/// the server closes the connection after it.
async fn read_answer(s: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<bool> {
    buf.clear();
    loop {
        if let Some(head) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let (status, length, close) = parse_head(&buf[..head])?;
            while buf.len() < head + 4 + length {
                read_more(s, buf).await?;
            }
            if status != 302 {
                return Err(io::Error::other(format!("status {status}, not 302")));
            }
            return Ok(close);
        }
        read_more(s, buf).await?;
    }
}

async fn read_more(s: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<()> {
    if s.read_buf(buf).await? == 0 {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    Ok(())
}

/// The status, `Content-Length` (0 when absent) and whether the server
/// closes the connection (`Connection: close`), from a response head.
fn parse_head(head: &[u8]) -> io::Result<(u16, usize, bool)> {
    let text = std::str::from_utf8(head).map_err(io::Error::other)?;
    let mut lines = text.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| io::Error::other("no status line"))?;
    let headers: Vec<(&str, &str)> = lines.filter_map(|l| l.split_once(':')).collect();
    let value = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim())
    };
    let length = value("content-length")
        .map_or(Ok(0), str::parse)
        .map_err(io::Error::other)?;
    let close = value("connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
    Ok((status, length, close))
}

/// Request `n` of the run, as `benches/xff.lua` makes its `n`th.
fn build(out: &mut Vec<u8>, n: u64, v6: bool) {
    use std::io::Write;
    let n = n + 1;
    let ip: IpAddr = if v6 && n % 4 == 0 {
        let s = [
            0x2000 + (n * 97) % 0x2000,
            (n * 7919) % 65536,
            (n * 31) % 65536,
            0,
            0,
            0,
            0,
            n % 65536,
        ];
        IpAddr::from(s.map(|x| x as u16))
    } else {
        let mut a = 1 + (n * 37) % 223;
        if a == 10 || a == 127 {
            a += 1;
        }
        IpAddr::from([a, (n * 13) % 256, (n * 7) % 256, n % 256].map(|x| x as u8))
    };
    let release = ["jackherer", "supersilverhaze"][(n % 2) as usize];
    out.clear();
    let _ = write!(
        out,
        "GET /distri/{release}/pkg/pkg{:03}-amd64-1.0-1.squashfs HTTP/1.1\r\nHost: bench\r\nX-Forwarded-For: {ip}\r\n\r\n",
        (n * 7) % 40
    );
}

/// A timer precise to the microsecond: a timerfd, waited for in tokio's
/// event loop (whose own timer counts whole milliseconds).
struct Precise(AsyncFd<std::os::fd::OwnedFd>);

impl Precise {
    #[allow(unsafe_code)]
    fn new() -> io::Result<Precise> {
        use std::os::fd::FromRawFd;
        // SAFETY: timerfd_create takes no pointers; a non-negative result
        // is a new descriptor that nothing else owns.
        let fd = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is ours alone (above).
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
        // SAFETY: an OwnedFd stays open, and its descriptor the same,
        // until the AsyncFd that owns it is dropped.
        let registered =
            unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) };
        registered.map(Precise).map_err(io::Error::from)
    }

    /// Until `due`; at once if it has passed. A failing timer returns at
    /// once too: the request then goes early, which only adds load.
    #[allow(unsafe_code)]
    async fn until(&self, due: Instant) {
        use std::os::fd::AsRawFd;
        let wait = due.saturating_duration_since(Instant::now());
        if wait.is_zero() {
            return;
        }
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: wait.as_secs() as libc::time_t,
                tv_nsec: libc::c_long::from(wait.subsec_nanos() as i32),
            },
        };
        let fd = self.0.get_ref().as_raw_fd();
        // SAFETY: a timerfd this struct owns, and a valid itimerspec; the
        // old value is not asked for (null).
        if unsafe { libc::timerfd_settime(fd, 0, &spec, std::ptr::null_mut()) } < 0 {
            return;
        }
        loop {
            let Ok(mut ready) = self.0.readable().await else {
                return;
            };
            let mut expirations = [0u8; 8];
            // SAFETY: reads at most 8 bytes into an 8-byte buffer.
            let read = ready.try_io(|_| {
                let n = unsafe { libc::read(fd, expirations.as_mut_ptr().cast(), 8) };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(())
                }
            });
            if read.is_ok() {
                return;
            }
        }
    }
}
