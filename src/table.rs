//! The mirror table: an immutable snapshot of every configured mirror and its
//! probed status, published through `arc-swap`.
//!
//! The publisher (`publish`) is the only writer: it builds a new [`Table`]
//! off to the side, from the config's mirrors and their probed statuses
//! keyed by name, and publishes it inside a [`crate::routing::Routing`].
//! Anything selection needs that can be computed once per table (the list
//! of eligible mirrors, the hash seeds, the spatial index, the https-only
//! view) is computed here, at publish time.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::config::{self, Selection};
use crate::geo::{Coord, Country};
use crate::index::Index;

/// A mirror's place in one table. Only meaningful with that table: a reload
/// may reorder mirrors. A mirror's identity across tables is its name.
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
    /// Its base URL is `https://`: the only kind a client that came over TLS
    /// may be sent to (never a downgrade).
    pub https: bool,
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
            https: m.url.starts_with("https://"),
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
    /// Every eligible mirror.
    all: View,
    /// Eligible `https://` mirrors, for clients that came over TLS; `None`
    /// when that is all of them (the usual case), so nothing is built twice.
    https: Option<View>,
    band: Selection,
}

/// The eligible mirrors of one kind and their spatial index.
#[derive(Debug, Default)]
pub struct View {
    /// Ids of eligible mirrors: the only ones selection looks at.
    pub eligible: Vec<MirrorId>,
    pub index: Index,
}

impl View {
    fn build(mirrors: &[Mirror], band: &Selection, keep: impl Fn(&Mirror) -> bool) -> View {
        let eligible: Vec<MirrorId> = (0..mirrors.len())
            .filter(|&i| mirrors[i].status.eligible && keep(&mirrors[i]))
            .collect();
        let index = Index::build(mirrors, &eligible, band);
        View { eligible, index }
    }
}

impl Table {
    /// Builds the table and its indexes. Costs about a millisecond per ten
    /// mirrors: call it off the request path.
    pub fn new(mirrors: Vec<Mirror>, band: Selection) -> Table {
        let all = View::build(&mirrors, &band, |_| true);
        let https = all
            .eligible
            .iter()
            .any(|&id| !mirrors[id].https)
            .then(|| View::build(&mirrors, &band, |m| m.https));
        Table {
            mirrors,
            all,
            https,
            band,
        }
    }

    /// All configured mirrors, each with the same status.
    pub fn from_config(mirrors: &[config::Mirror], status: Status, band: Selection) -> Table {
        Table::with_status_of(mirrors, |_| status.clone(), band)
    }

    /// All configured mirrors, in config order, each with the status
    /// `status_of` gives for its name.
    pub fn with_status_of(
        mirrors: &[config::Mirror],
        status_of: impl Fn(&str) -> Status,
        band: Selection,
    ) -> Table {
        Table::new(
            mirrors
                .iter()
                .map(|m| Mirror::from_config(m, status_of(&m.name)))
                .collect(),
            band,
        )
    }

    pub fn mirrors(&self) -> &[Mirror] {
        &self.mirrors
    }

    pub fn get(&self, id: MirrorId) -> &Mirror {
        &self.mirrors[id]
    }

    /// A mirror by name.
    pub fn find(&self, name: &str) -> Option<&Mirror> {
        self.mirrors.iter().find(|m| &*m.name == name)
    }

    /// What selection looks at for a client: every eligible mirror, or only
    /// the `https://` ones for a client that came over TLS.
    #[inline]
    pub fn view(&self, https_only: bool) -> &View {
        match &self.https {
            Some(v) if https_only => v,
            _ => &self.all,
        }
    }

    pub fn band(&self) -> &Selection {
        &self.band
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
