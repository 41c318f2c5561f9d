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
//!   IPv4 from a flat copy of its ranges made at open.
//! - [`table`]: the immutable mirror table, published with `arc-swap`.
//! - [`probe`]: background checks of the origin and every mirror; the only
//!   writer of the table.
//! - [`meta`]: distri's `meta.binaryproto` index (protobuf).
//! - [`index`]: per-table spatial index, so selection looks at few mirrors.
//! - [`select`]: which mirror serves a client; a pure function.
//! - [`path`]: request paths to one canonical form, or a refusal.
//! - [`client`]: the client's address, behind trusted proxies.
//! - [`frontend`]: request to outcome to response, in one place.
//! - [`server`]: accept, connection limits, graceful shutdown; one loop
//!   per serving thread, each with its own SO_REUSEPORT sockets.
//! - [`app`]: wiring from a config to a running service: the prober on the
//!   caller's runtime, the work-stealing runtime that serves.
//! - [`minitree`]: miniature distri trees served on loopback (demo, tests).
//! - [`commands`]: the `check`, `locate` and `probe` subcommands.
//! - [`demo`]: the `demo` subcommand: a miniature mirror network on loopback.
//!
//! The request path is `server` → `frontend` → (`path`, `client`, `geoip`,
//! `select` over a loaded `table`): no lock, no I/O, no waiting on probes.

pub mod app;
pub mod client;
pub mod commands;
pub mod config;
pub mod demo;
pub mod frontend;
pub mod geo;
pub mod geoip;
pub mod index;
pub mod meta;
pub mod minitree;
pub mod path;
pub mod probe;
pub mod select;
pub mod server;
pub mod table;
