//! The access log: one line per request, written by a `tracing` layer of
//! its own for events with target `access` (`frontend` emits them when
//! `[log] access = true`).
//!
//! The general `fmt` layer formats each event and writes it to stderr with
//! a system call, under a lock both serving threads share: that cost 12 us
//! per request, half the throughput (benches/RESULTS.md). Here each thread
//! formats its lines into a buffer of its own (one uncontended lock), and
//! one writer thread sends the buffers to stderr in large writes, every
//! 100 ms or when a buffer fills. Lines are made of strings and numbers
//! the front-end passes, without `core::fmt`: about 0.4 us a line. If stderr blocks for long, lines past a
//! cap are dropped and counted, rather than memory growing without bound.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::Thread;
use std::time::{Duration, SystemTime};

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, Layer};

/// The target access events use.
pub const TARGET: &str = "access";

/// A buffer this big wakes the writer.
const FLUSH_AT: usize = 64 * 1024;
/// Each buffer's room, allocated once: lines keep coming while the writer
/// wakes up. Buffers are swapped with a spare, never freed, so the serving
/// threads neither reallocate nor fault in fresh pages. Freeing them at
/// each flush made glibc hand the pages back (`madvise`, about 25 a
/// second) and the serving threads fault them in again (300 a second).
const CAPACITY: usize = 2 * FLUSH_AT;
/// Past this a thread's buffer drops lines (stderr is not keeping up).
const CAP: usize = 8 * 1024 * 1024;
const EVERY: Duration = Duration::from_millis(100);

type Buffer = Arc<Mutex<Vec<u8>>>;

struct Shared {
    buffers: Mutex<Vec<Buffer>>,
    /// What a buffer is swapped with when flushed; held while flushing, so
    /// flushes (the writer's, the one at exit) do not interleave.
    spare: Mutex<Vec<u8>>,
    /// `None` if it could not be started: lines pile up to the cap, then
    /// are dropped and counted.
    writer: OnceLock<Option<Thread>>,
    dropped: AtomicU64,
    /// Where flushed lines go: stderr, or what [`set_sink`] gave.
    sink: Mutex<Box<dyn std::io::Write + Send>>,
}

fn shared() -> &'static Shared {
    static SHARED: OnceLock<Shared> = OnceLock::new();
    SHARED.get_or_init(|| Shared {
        buffers: Mutex::default(),
        spare: Mutex::new(Vec::with_capacity(CAPACITY)),
        writer: OnceLock::new(),
        dropped: AtomicU64::new(0),
        sink: Mutex::new(Box::new(std::io::stderr())),
    })
}

thread_local! {
    static MINE: RefCell<Option<Buffer>> = const { RefCell::new(None) };
}

/// The layer; install it beside the general one, which must skip
/// [`TARGET`].
struct AccessLayer {
    json: bool,
}

impl AccessLayer {
    fn new(json: bool) -> AccessLayer {
        AccessLayer { json }
    }
}

/// The service's subscriber: the general log (RUST_LOG, default info) and,
/// beside it, the access layer, in text or JSON; colours only for a person
/// at a terminal (`ansi`), not in files and journals.
///
/// One global filter, not one per layer: with a per-layer filter that
/// refuses access events beside a layer that takes them, `tracing` marks
/// the access callsite "sometimes" and asks every layer's filter about
/// every line, which cost a tenth of the throughput (benches/RESULTS.md).
/// Here the filter enables access events for the whole subscriber, the
/// callsite is "always", and the general layer skips them itself.
pub fn subscriber(json: bool, ansi: bool) -> impl Subscriber + Send + Sync {
    use tracing_subscriber::prelude::*;
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let general = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let general = if json {
        general.json().boxed()
    } else {
        general.with_ansi(ansi).boxed()
    };
    assemble(filter, general, AccessLayer::new(json))
}

/// Below the general layer: the filter over the registry.
type Base =
    tracing_subscriber::layer::Layered<tracing_subscriber::EnvFilter, tracing_subscriber::Registry>;
/// The general log's layer, whatever its format.
type General = Box<dyn Layer<Base> + Send + Sync>;
/// Below the access layer.
type WithGeneral = tracing_subscriber::layer::Layered<SkipAccess<General>, Base>;

/// The general layer under `filter`, and `access` beside it with every
/// access event, whatever the filter says of that target.
fn assemble<A>(
    filter: tracing_subscriber::EnvFilter,
    general: General,
    access: A,
) -> impl Subscriber + Send + Sync
where
    A: Layer<WithGeneral> + Send + Sync,
{
    use tracing_subscriber::prelude::*;
    // Access lines are governed by the config, not by RUST_LOG.
    let filter = filter.add_directive(format!("{TARGET}=info").parse().expect("a valid directive"));
    tracing_subscriber::registry()
        .with(filter)
        .with(SkipAccess(general))
        .with(access)
}

/// A layer with every event of [`TARGET`] taken out; all else passes.
struct SkipAccess<L>(L);

impl<S: Subscriber, L: Layer<S>> Layer<S> for SkipAccess<L> {
    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        if event.metadata().target() != TARGET {
            self.0.on_event(event, ctx);
        }
    }

    fn on_register_dispatch(&self, subscriber: &tracing::Dispatch) {
        self.0.on_register_dispatch(subscriber);
    }

    fn on_layer(&mut self, subscriber: &mut S) {
        self.0.on_layer(subscriber);
    }

    fn register_callsite(
        &self,
        metadata: &'static tracing::Metadata<'static>,
    ) -> tracing::subscriber::Interest {
        self.0.register_callsite(metadata)
    }

    fn enabled(&self, metadata: &tracing::Metadata<'_>, ctx: Context<'_, S>) -> bool {
        self.0.enabled(metadata, ctx)
    }

    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        self.0.on_new_span(attrs, id, ctx);
    }

    fn max_level_hint(&self) -> Option<tracing::level_filters::LevelFilter> {
        self.0.max_level_hint()
    }

    fn on_record(&self, span: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        self.0.on_record(span, values, ctx);
    }

    fn on_follows_from(&self, span: &Id, follows: &Id, ctx: Context<'_, S>) {
        self.0.on_follows_from(span, follows, ctx);
    }

    fn on_enter(&self, id: &Id, ctx: Context<'_, S>) {
        self.0.on_enter(id, ctx);
    }

    fn on_exit(&self, id: &Id, ctx: Context<'_, S>) {
        self.0.on_exit(id, ctx);
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        self.0.on_close(id, ctx);
    }

    fn on_id_change(&self, old: &Id, new: &Id, ctx: Context<'_, S>) {
        self.0.on_id_change(old, new, ctx);
    }
}

/// The writer thread, started with the first line.
fn writer() -> Option<&'static Thread> {
    shared()
        .writer
        .get_or_init(|| {
            std::thread::Builder::new()
                .name("access-log".into())
                .spawn(|| {
                    loop {
                        std::thread::park_timeout(EVERY);
                        flush();
                    }
                })
                .ok()
                .map(|t| t.thread().clone())
        })
        .as_ref()
}

/// Sends access lines to `sink` instead of stderr from now on: the
/// benches measure the log's cost without a terminal's.
pub fn set_sink(sink: Box<dyn std::io::Write + Send>) {
    flush();
    *shared().sink.lock().unwrap_or_else(|e| e.into_inner()) = sink;
}

/// Writes every buffered line to the sink (stderr unless [`set_sink`]
/// said otherwise) now: at exit, and by the writer.
pub fn flush() {
    let s = shared();
    let buffers: Vec<Buffer> = s.buffers.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let mut chunk = s.spare.lock().unwrap_or_else(|e| e.into_inner());
    let mut out = s.sink.lock().unwrap_or_else(|e| e.into_inner());
    for b in buffers {
        {
            let mut mine = b.lock().unwrap_or_else(|e| e.into_inner());
            std::mem::swap(&mut *mine, &mut *chunk);
        }
        let _ = out.write_all(&chunk);
        chunk.clear();
    }
    let dropped = s.dropped.swap(0, Relaxed);
    if dropped > 0 {
        let _ = writeln!(
            out,
            "{} WARN access: {dropped} access log lines dropped: stderr did not keep up",
            humantime::format_rfc3339_micros(SystemTime::now())
        );
    }
    let _ = out.flush();
}

impl<S: Subscriber> Layer<S> for AccessLayer {
    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        if event.metadata().target() != TARGET {
            return;
        }
        let mut line = LINE.with(|l| std::mem::take(&mut *l.borrow_mut()));
        line.clear();
        self.format(event, &mut line);
        append(line.as_bytes());
        LINE.with(|l| *l.borrow_mut() = line);
    }
}

thread_local! {
    /// A line being formatted, reused so a line allocates nothing.
    static LINE: RefCell<String> = const { RefCell::new(String::new()) };
}

fn append(line: &[u8]) {
    MINE.with(|mine| {
        let mut mine = mine.borrow_mut();
        let buf = mine.get_or_insert_with(|| {
            let b: Buffer = Arc::new(Mutex::new(Vec::with_capacity(CAPACITY)));
            let s = shared();
            s.buffers
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(b.clone());
            b
        });
        let mut b = buf.lock().unwrap_or_else(|e| e.into_inner());
        if b.len() + line.len() > CAP {
            shared().dropped.fetch_add(1, Relaxed);
            return;
        }
        b.extend_from_slice(line);
        let full = b.len() >= FLUSH_AT;
        drop(b);
        match writer() {
            Some(t) if full => t.unpark(),
            _ => {}
        }
    });
}

thread_local! {
    /// The last second's `YYYY-MM-DDTHH:MM:SS`, formatted once per second.
    static SECOND: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
}

/// `2026-11-30T07:21:01.693496Z`, formatting the date at most once per
/// second per thread.
fn timestamp(line: &mut String) {
    let now = SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    SECOND.with(|c| {
        let mut c = c.borrow_mut();
        if c.0 != now.as_secs() {
            let full = humantime::format_rfc3339_seconds(
                SystemTime::UNIX_EPOCH + Duration::from_secs(now.as_secs()),
            )
            .to_string();
            c.1 = full.trim_end_matches('Z').to_string();
            c.0 = now.as_secs();
        }
        line.push_str(&c.1);
    });
    line.push('.');
    let micros = now.subsec_micros();
    let start = line.len();
    number(line, u64::from(micros) + 1_000_000);
    // The leading 1 kept the zeros: drop it.
    line.remove(start);
    line.push('Z');
}

/// Decimal digits without going through `core::fmt`.
fn number(line: &mut String, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for &d in &digits[i..] {
        line.push(d as char);
    }
}

impl AccessLayer {
    fn format(&self, event: &Event<'_>, line: &mut String) {
        if self.json {
            line.push_str("{\"timestamp\":\"");
            timestamp(line);
            line.push_str("\",\"level\":\"INFO\",\"target\":\"access\",\"fields\":{");
            event.record(&mut Json { line, first: true });
            line.push_str("}}\n");
        } else {
            timestamp(line);
            line.push_str("  INFO access:");
            event.record(&mut Text { line });
            line.push('\n');
        }
    }
}

struct Text<'a> {
    line: &'a mut String,
}

impl Text<'_> {
    fn key(&mut self, field: &Field) {
        self.line.push(' ');
        self.line.push_str(field.name());
        self.line.push('=');
    }
}

impl Visit for Text<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.key(field);
        let _ = write!(self.line, "{value:?}");
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.key(field);
        self.line.push_str(value);
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.key(field);
        number(self.line, value);
    }
}

struct Json<'a> {
    line: &'a mut String,
    first: bool,
}

impl Json<'_> {
    fn key(&mut self, field: &Field) {
        if !self.first {
            self.line.push(',');
        }
        self.first = false;
        self.line.push('"');
        self.line.push_str(field.name());
        self.line.push_str("\":");
    }

    /// A JSON string of what `value` writes, escaped as it is written.
    fn string(&mut self, value: impl std::fmt::Debug) {
        self.line.push('"');
        let _ = write!(Escaped(self.line), "{value:?}");
        self.line.push('"');
    }
}

/// Writes into a JSON string: quotes, backslashes and control characters
/// escaped.
struct Escaped<'a>(&'a mut String);

impl std::fmt::Write for Escaped<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        for c in s.chars() {
            match c {
                '"' => self.0.push_str("\\\""),
                '\\' => self.0.push_str("\\\\"),
                c if (c as u32) < 0x20 => write!(self.0, "\\u{:04x}", c as u32)?,
                c => self.0.push(c),
            }
        }
        Ok(())
    }
}

/// A `&str` written by `Debug` without Rust's quotes and escapes.
struct Plain<'a>(&'a str);

impl std::fmt::Debug for Plain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl Visit for Json<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.key(field);
        self.string(value);
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.key(field);
        if value.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
            self.line.push('"');
            self.line.push_str(value);
            self.line.push('"');
        } else {
            self.string(Plain(value));
        }
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.key(field);
        number(self.line, value);
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.key(field);
        let _ = write!(self.line, "{value}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_strings_are_escaped() {
        let mut line = String::new();
        let _ = write!(Escaped(&mut line), "a\"b\\c\nd\u{1}é");
        assert_eq!(line, "a\\\"b\\\\c\\u000ad\\u0001é");
        let v: serde_json::Value = serde_json::from_str(&format!("\"{line}\"")).unwrap();
        assert_eq!(v, "a\"b\\c\nd\u{1}é");
    }

    /// The subscriber's level hint is the filter's, not "all": `init`
    /// gives it to `log` as its maximum, and without it every `log` record
    /// (mio traces each socket it registers) went through the filters: 7%
    /// of the CPU per new connection (benches/RESULTS.md).
    #[test]
    fn the_level_hint_is_the_general_filters() {
        // RUST_LOG is not set in the test environment; if it is, the hint
        // follows it, and this checks only that there is one.
        let hint = subscriber(false, false).max_level_hint();
        match std::env::var_os("RUST_LOG") {
            None => assert_eq!(hint, Some(tracing::level_filters::LevelFilter::INFO)),
            Some(_) => assert!(hint.is_some()),
        }
    }

    /// Records the targets and levels of the events it is given, and the
    /// metadata of the last one.
    #[derive(Clone, Default)]
    struct Seen(Arc<Mutex<(Vec<String>, Option<&'static tracing::Metadata<'static>>)>>);

    impl<S: Subscriber> Layer<S> for Seen {
        fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
            let m = event.metadata();
            let mut seen = self.0.lock().unwrap();
            seen.0.push(format!("{} {}", m.level(), m.target()));
            seen.1 = Some(m);
        }
    }

    /// Access events go to the access layer and never to the general one,
    /// whatever RUST_LOG says of them; the rest follows RUST_LOG. And the
    /// access callsite's interest is "always": no filter is asked per line
    /// (with a per-layer filter it was "sometimes", a tenth of the
    /// throughput; benches/RESULTS.md).
    #[test]
    fn access_events_reach_only_the_access_layer() {
        for spec in ["warn", "access=off,info", "debug"] {
            let (general, access) = (Seen::default(), Seen::default());
            let filter = tracing_subscriber::EnvFilter::new(spec);
            let sub = assemble(filter, Box::new(general.clone()), access.clone());
            let dispatch = tracing::Dispatch::new(sub);
            tracing::dispatcher::with_default(&dispatch, || {
                tracing::info!(target: "access", path = "/a");
            });
            let callsite = access.0.lock().unwrap().1.unwrap();
            assert!(dispatch.register_callsite(callsite).is_always(), "{spec}");
            tracing::dispatcher::with_default(&dispatch, || {
                tracing::info!(target: "distri_redirector", "serving");
                tracing::warn!(target: "distri_redirector", "slow");
            });
            let general = general.0.lock().unwrap().0.clone();
            let want: &[&str] = match spec {
                "warn" => &["WARN distri_redirector"],
                _ => &["INFO distri_redirector", "WARN distri_redirector"],
            };
            assert_eq!(general, want, "{spec}");
            let access = access.0.lock().unwrap().0.clone();
            assert!(
                access.contains(&"INFO access".to_string()),
                "{spec}: {access:?}"
            );
        }
    }

    /// A flush swaps storage; it never leaves a thread an empty vector to
    /// grow again (and glibc pages to fault in again).
    #[test]
    fn buffers_keep_their_room_across_flushes() {
        let room = || MINE.with(|m| m.borrow().as_ref().map(|b| b.lock().unwrap().capacity()));
        append(b"access log test line 1\n");
        assert!(room().unwrap() >= CAPACITY);
        flush();
        append(b"access log test line 2\n");
        assert!(room().unwrap() >= CAPACITY);
    }
}
