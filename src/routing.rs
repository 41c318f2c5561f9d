//! What requests read: one immutable snapshot of the routing policy, the
//! GeoIP database and the mirror table, replaced whole by the publisher
//! (`publish`) and loaded by each request without a lock.
//!
//! Reloading the config, swapping the database and publishing probe
//! results all store a new [`Routing`]; a request that loaded the old one
//! finishes with it, so no request ever sees half of a change.

use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwap;
use ipnet::IpNet;

use crate::config::Config;
use crate::geo::Coord;
use crate::geoip::GeoDb;
use crate::stats::{Sent, Tally};
use crate::table::Table;

/// The snapshot requests read, and the publisher replaces.
pub type SharedRouting = Arc<ArcSwap<Routing>>;

/// Everything a request needs to decide.
pub struct Routing {
    pub policy: Arc<Policy>,
    pub geo: Arc<GeoDb>,
    pub table: Arc<Table>,
    /// How the last reloads went, for operators (status page, metrics).
    pub reload: Arc<ReloadStatus>,
    /// Each mirror's request counters, by id in `table`; empty when not
    /// counting (tests, benches).
    pub sent: Arc<[Arc<Sent>]>,
}

/// The settings of the config that requests use.
#[derive(Debug, PartialEq)]
pub struct Policy {
    /// The origin's base URL, ending in `/`.
    pub origin: Arc<str>,
    pub releases: Vec<String>,
    pub trusted_proxies: Vec<IpNet>,
    /// Where the origin is, if configured (coverage distances).
    pub origin_at: Option<Coord>,
    /// One log line per request.
    pub access_log: bool,
    /// The longest request target served; past it `414`.
    pub max_target: usize,
}

impl Policy {
    pub fn from_config(config: &Config) -> Policy {
        Policy {
            origin: Arc::from(config.origin.as_str()),
            releases: config.releases.clone(),
            trusted_proxies: config.trusted_proxies.clone(),
            origin_at: config.origin_at,
            access_log: config.log.access,
            max_target: config.server.max_target_bytes,
        }
    }

    /// `distri/<release>/...` with a current release.
    pub fn is_release_path(&self, path: &str) -> bool {
        let Some(rest) = path.strip_prefix("distri/") else {
            return false;
        };
        let release = rest.split_once('/').map_or(rest, |(r, _)| r);
        rest.len() > release.len() && self.releases.iter().any(|r| r == release)
    }
}

/// The outcome of reloads since the start.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ReloadStatus {
    /// Reloads that changed something.
    pub applied: u64,
    /// Reloads refused (a config, database or certificate that did not load).
    pub failed: u64,
    /// The last refusal, while it is not fixed by a later good load.
    pub last_error: Option<ReloadError>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ReloadError {
    pub at: SystemTime,
    /// One line: the file, the place in it and what is wrong.
    pub message: String,
}

impl Routing {
    pub fn new(config: &Config, geo: Arc<GeoDb>, table: Table) -> Routing {
        Routing {
            policy: Arc::new(Policy::from_config(config)),
            geo,
            table: Arc::new(table),
            reload: Arc::default(),
            sent: Arc::new([]),
        }
    }

    /// The same snapshot, with requests counted in `tally`.
    pub fn counted(self, tally: &Tally) -> Routing {
        Routing {
            sent: tally.slots(&self.table),
            ..self
        }
    }

    pub fn share(self) -> SharedRouting {
        Arc::new(ArcSwap::from_pointee(self))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn release_paths_need_a_current_release_and_more() {
        let p = Policy {
            origin: Arc::from("https://o/"),
            releases: vec!["jackherer".into()],
            trusted_proxies: vec![],
            origin_at: None,
            access_log: false,
            max_target: 8192,
        };
        assert!(p.is_release_path("distri/jackherer/pkg/a.squashfs"));
        assert!(p.is_release_path("distri/jackherer/"));
        assert!(!p.is_release_path("distri/jackherer"));
        assert!(!p.is_release_path("distri/master/pkg/a.squashfs"));
        assert!(!p.is_release_path("distri/jackhererx/pkg/a"));
        assert!(!p.is_release_path("other/jackherer/pkg/a"));
    }
}
