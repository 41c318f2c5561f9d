//! The mirror table: an immutable snapshot of every configured mirror and its
//! probed status, published through `arc-swap`.
//!
//! The prober is the only writer: it builds a new [`Table`] off to the side
//! and stores it. Requests `load()` the current one without taking a lock.
//! Anything selection needs that can be computed once per table (the list of
//! eligible mirrors, the hash seeds) is computed here, at publish time.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;

use crate::config::{self, Selection};
use crate::geo::{Coord, Country};
use crate::index::Index;

/// The table requests read and the prober replaces.
pub type SharedTable = Arc<ArcSwap<Table>>;

/// A mirror's place in the table; stable for the life of the process.
pub type MirrorId = usize;

/// Probed state of a mirror, as requests and operators see it.
#[derive(Clone, Debug, PartialEq)]
pub struct Status {
    pub eligible: bool,
    pub health: Health,
    /// Why it is in this state, e.g. `incomplete: jackherer/pkg/x.squashfs: 404`.
    pub reason: Arc<str>,
    /// When it entered this state.
    pub since: SystemTime,
    /// Moving average of probe latency, once measured.
    pub latency: Option<Duration>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Health {
    /// Not probed yet: not eligible.
    Unknown,
    Up,
    Down,
}

impl std::fmt::Display for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Health::Unknown => "unknown",
            Health::Up => "up",
            Health::Down => "down",
        })
    }
}

impl Status {
    /// The state before the first probe round.
    pub fn unprobed() -> Status {
        Status {
            eligible: false,
            health: Health::Unknown,
            reason: Arc::from("not probed yet"),
            since: SystemTime::now(),
            latency: None,
        }
    }

    /// Eligible without a probe: for tables built by hand (tests, benches).
    pub fn assumed_up() -> Status {
        Status {
            eligible: true,
            health: Health::Up,
            reason: Arc::from("assumed up"),
            since: SystemTime::now(),
            latency: None,
        }
    }
}

/// One mirror as selection sees it.
#[derive(Clone, Debug)]
pub struct Mirror {
    pub name: Arc<str>,
    /// Base URL ending in `/`, standing for the origin's root.
    pub base: Arc<str>,
    pub coord: Coord,
    pub weight: f64,
    /// `1 / weight`, which selection multiplies by.
    pub inv_weight: f64,
    pub countries: Option<Arc<[Country]>>,
    pub ipv6: bool,
    /// Rendezvous-hash seed derived from the name, so a mirror keeps its
    /// clients across restarts and reorderings of the config.
    pub seed: u64,
    pub status: Status,
}

impl Mirror {
    pub fn from_config(m: &config::Mirror, status: Status) -> Mirror {
        Mirror {
            name: Arc::from(m.name.as_str()),
            base: Arc::from(m.url.as_str()),
            coord: m.coord,
            weight: m.weight,
            inv_weight: 1.0 / m.weight,
            countries: m.countries.as_deref().map(Arc::from),
            ipv6: m.ipv6,
            seed: name_seed(&m.name),
            status,
        }
    }

    /// Whether a client located in `country` may be sent here.
    pub fn serves_country(&self, country: Option<Country>) -> bool {
        match (&self.countries, country) {
            (None, _) => true,
            (Some(list), Some(c)) => list.contains(&c),
            (Some(_), None) => false,
        }
    }
}

/// An immutable snapshot of all mirrors, with the index selection uses.
#[derive(Debug, Default)]
pub struct Table {
    mirrors: Vec<Mirror>,
    /// Ids of eligible mirrors: the only ones selection looks at.
    eligible: Vec<MirrorId>,
    band: Selection,
    index: Index,
}

impl Table {
    /// Builds the table and its index. Costs about a millisecond per ten
    /// mirrors: call it off the request path.
    pub fn new(mirrors: Vec<Mirror>, band: Selection) -> Table {
        let eligible: Vec<MirrorId> = (0..mirrors.len())
            .filter(|&i| mirrors[i].status.eligible)
            .collect();
        let index = Index::build(&mirrors, &eligible, &band);
        Table {
            mirrors,
            eligible,
            band,
            index,
        }
    }

    /// All configured mirrors, each with the same status.
    pub fn from_config(mirrors: &[config::Mirror], status: Status, band: Selection) -> Table {
        Table::new(
            mirrors
                .iter()
                .map(|m| Mirror::from_config(m, status.clone()))
                .collect(),
            band,
        )
    }

    /// A copy with new statuses, in mirror order.
    pub fn with_statuses(&self, statuses: impl IntoIterator<Item = Status>) -> Table {
        let mirrors = self
            .mirrors
            .iter()
            .zip(statuses)
            .map(|(m, status)| Mirror {
                status,
                ..m.clone()
            })
            .collect();
        Table::new(mirrors, self.band)
    }

    pub fn mirrors(&self) -> &[Mirror] {
        &self.mirrors
    }

    pub fn get(&self, id: MirrorId) -> &Mirror {
        &self.mirrors[id]
    }

    pub fn eligible(&self) -> &[MirrorId] {
        &self.eligible
    }

    pub fn band(&self) -> &Selection {
        &self.band
    }

    pub fn index(&self) -> &Index {
        &self.index
    }

    pub fn share(self) -> SharedTable {
        Arc::new(ArcSwap::from_pointee(self))
    }
}

/// FNV-1a, then a finaliser: stable across builds and platforms, unlike
/// std's `DefaultHasher`.
fn name_seed(name: &str) -> u64 {
    let h = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    });
    mix(h)
}

/// splitmix64's finaliser: a cheap, well-spread 64-bit mix.
pub fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}
