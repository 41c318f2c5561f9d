//! distri-redirector sends each package fetch of distri's package manager to
//! the nearest mirror that is healthy and holds every current release, with
//! a `302 Found`, or to the origin when no mirror qualifies.
//!
//! # Layout
//!
//! - [`config`]: `mirrors.toml`, parsed and validated once, with file, line
//!   and key in every error.
//! - [`geo`]: countries, coordinates, distances, the shipped centroid table.
//! - [`geoip`]: where a client is, from a MaxMind DB file (both schemas);
//!   IPv4 from a flat copy of its ranges made at open; `geoip::share`
//!   writes a file's repeated subtrees once (the shipped database's build).
//! - [`table`]: the immutable mirror table (by config order, found by name),
//!   with a selection view per candidate set.
//! - [`catalog`]: which candidate set a file goes to, from each mirror's
//!   verified trees (fresh, behind, mid-sync, missing).
//! - [`routing`]: the snapshot requests read (policy, GeoIP database,
//!   table), replaced whole through `arc-swap`.
//! - [`publish`]: the only writer of that snapshot: probe results, config,
//!   database and certificate reloads.
//! - [`watch`]: noticing that those files changed on disk.
//! - [`probe`]: background checks of the origin and every mirror, one task
//!   per mirror name, reconciled on reload.
//! - [`meta`]: distri's `meta.binaryproto` index (protobuf), its trees and
//!   decoded listings.
//! - [`index`]: per-table spatial index, so selection looks at few mirrors.
//! - [`select`]: which mirror serves a client; a pure function.
//! - [`path`]: request paths to one canonical form, or a refusal.
//! - [`client`]: the client's address, behind trusted proxies.
//! - [`frontend`]: request to outcome to response, in one place; counts
//!   and logs each.
//! - [`server`]: accept (deferred until the client speaks), connection
//!   limits, TLS handshakes (capped for the service and per client
//!   network), HTTP/1.1 and HTTP/2, one timeout per connection for silent
//!   clients, graceful shutdown; one loop per serving thread, each with
//!   its own SO_REUSEPORT sockets; with a runtime per thread, new
//!   connections handed to the least busy one (`server::threads`).
//! - [`tls`]: the certificate (replaceable while serving) and rustls config.
//! - [`app`]: wiring from a config to a running service: the publisher and
//!   prober on the caller's runtime, the serving runtime (one shared and
//!   work-stealing, or one per thread: `[server] runtime`);
//!   signals (SIGHUP reloads, SIGTERM drains).
//! - [`minitree`]: miniature distri trees served on loopback (demo, tests).
//! - [`stats`]: what the request path counts (one add per request).
//! - [`metrics`]: `/metrics` on the admin listener, from those counts, the
//!   snapshot and the probe board.
//! - [`status`]: the `/mirrors` page and its JSON: states, a map, coverage.
//! - [`explain`]: why a client goes where it goes (`?mirrorlist`, `locate`).
//! - [`accesslog`]: the log's subscriber, and one line per request,
//!   batched off the serving threads.
//! - [`malloc`]: glibc told to return large freed blocks (reloaded tables).
//! - [`commands`]: the `check`, `locate` and `probe` subcommands.
//! - [`demo`]: the `demo` subcommand: a miniature mirror network on loopback.
//!
//! The request path is `server` → `frontend` → (`path`, `client`, `geoip`,
//! `select` over one loaded `routing` snapshot): no lock, no I/O, no
//! waiting on probes or reloads.

// Unsafe code in two places only, each allowed by name with the reason it
// is sound: mapping the GeoIP files' private copies (`geoip/file.rs`) and
// one allocator setting (`malloc.rs`). The compiler refuses it elsewhere.
#![deny(unsafe_code)]

pub mod accesslog;
pub mod app;
pub mod catalog;
pub mod client;
pub mod commands;
pub mod config;
pub mod demo;
pub mod explain;
pub mod frontend;
pub mod geo;
pub mod geoip;
pub mod index;
pub mod malloc;
pub mod meta;
pub mod metrics;
pub mod minitree;
pub mod path;
pub mod probe;
pub mod publish;
pub mod routing;
pub mod select;
pub mod server;
pub mod stats;
pub mod status;
pub mod table;
pub mod tls;
pub mod watch;
