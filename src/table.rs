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

use crate::catalog::{Catalog, OriginTree, SetId};
use crate::config::{self, Selection};
use crate::geo::{Coord, Country};
use crate::index::Index;
use crate::meta::{Listing, Tree};

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
    /// What was verified of each tree the origin has; `None` when nothing
    /// is known per tree (the mirror is taken to hold every file).
    pub trees: Option<Arc<[TreeStatus]>>,
}

/// One tree of one release on one mirror.
#[derive(Clone, Debug, PartialEq)]
pub struct TreeStatus {
    pub release: Arc<str>,
    pub tree: Tree,
    pub state: TreeState,
    /// What the last round found, for operators.
    pub detail: Arc<str>,
    /// The last index verified complete: the immutable files it lists may
    /// be sent here even when it is older than the origin's.
    pub verified: Option<Arc<Listing>>,
}

/// What the last round found of a tree.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TreeState {
    /// The origin's current index, verified complete.
    Fresh,
    /// An older (or other) index, verified complete.
    Behind,
    /// A new index whose files are not all there yet: the previous
    /// verified index, if any, still counts.
    MidSync,
    /// No index at all (the mirror leaves the tree out).
    Missing,
    /// An index that could not be read or checked.
    Unverified,
}

impl std::fmt::Display for TreeState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TreeState::Fresh => "fresh",
            TreeState::Behind => "behind",
            TreeState::MidSync => "mid-sync",
            TreeState::Missing => "missing",
            TreeState::Unverified => "unverified",
        })
    }
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
    /// One line for operators: why it is out, or what its trees lack.
    pub fn summary(&self) -> String {
        let Some(trees) = self.trees.as_ref().filter(|_| self.eligible) else {
            return self.reason.to_string();
        };
        let lacking: Vec<&str> = trees
            .iter()
            .filter(|t| t.state != TreeState::Fresh)
            .map(|t| &*t.detail)
            .collect();
        if lacking.is_empty() {
            "ok: fresh and complete".into()
        } else {
            format!("ok, but {}", lacking.join("; "))
        }
    }

    /// The state before the first probe round.
    pub fn unprobed() -> Status {
        Status {
            eligible: false,
            health: Health::Unknown,
            reason: Arc::from("not probed yet"),
            since: SystemTime::now(),
            latency: None,
            trees: None,
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
            trees: None,
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
    /// The views of each candidate set, by [`SetId`].
    sets: Vec<Views>,
    /// What sets ids past the last stand for: no mirror.
    none: Views,
    /// Which set a file's requests choose from.
    catalog: Catalog,
    band: Selection,
}

/// One candidate set's views.
#[derive(Debug, Default)]
struct Views {
    /// Every eligible member.
    all: View,
    /// Eligible `https://` members, for clients that came over TLS; `None`
    /// when that is all of them (the usual case), so nothing is built twice.
    https: Option<View>,
}

impl Views {
    fn build(mirrors: &[Mirror], band: &Selection, members: &[MirrorId]) -> Views {
        let all = View::build(mirrors, band, members, |_| true);
        let https = all
            .eligible
            .iter()
            .any(|&id| !mirrors[id].https)
            .then(|| View::build(mirrors, band, members, |m| m.https));
        Views { all, https }
    }
}

/// The eligible mirrors of one kind and their spatial index.
#[derive(Debug, Default)]
pub struct View {
    /// Ids of eligible mirrors: the only ones selection looks at.
    pub eligible: Vec<MirrorId>,
    pub index: Index,
}

impl View {
    fn build(
        mirrors: &[Mirror],
        band: &Selection,
        members: &[MirrorId],
        keep: impl Fn(&Mirror) -> bool,
    ) -> View {
        let eligible: Vec<MirrorId> = members
            .iter()
            .copied()
            .filter(|&i| mirrors[i].status.eligible && keep(&mirrors[i]))
            .collect();
        let index = Index::build(mirrors, &eligible, band);
        View { eligible, index }
    }
}

impl Table {
    /// Builds the table and its indexes, every file going to any eligible
    /// mirror. Costs about a millisecond per ten mirrors: call it off the
    /// request path.
    pub fn new(mirrors: Vec<Mirror>, band: Selection) -> Table {
        Table::with_origin(mirrors, band, &[], &[])
    }

    /// Builds the table with per-file candidate sets, from what each
    /// mirror's status says of the `origin`'s current trees
    /// ([`crate::catalog`]): a view per distinct set.
    pub fn with_origin(
        mirrors: Vec<Mirror>,
        band: Selection,
        releases: &[String],
        origin: &[OriginTree],
    ) -> Table {
        let built = Catalog::build(releases, origin, &mirrors);
        let sets = built
            .sets
            .iter()
            .map(|members| Views::build(&mirrors, &band, members))
            .collect();
        Table {
            mirrors,
            sets,
            none: Views::default(),
            catalog: built.catalog,
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
        Table::probed(mirrors, status_of, band, &[], &[])
    }

    /// The same, with per-file candidate sets judged against the origin's
    /// current trees ([`Table::with_origin`]).
    pub fn probed(
        mirrors: &[config::Mirror],
        status_of: impl Fn(&str) -> Status,
        band: Selection,
        releases: &[String],
        origin: &[OriginTree],
    ) -> Table {
        let mirrors = mirrors
            .iter()
            .map(|m| Mirror::from_config(m, status_of(&m.name)))
            .collect();
        Table::with_origin(mirrors, band, releases, origin)
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

    /// What selection looks at for a client asking for a file of `set`:
    /// the eligible members, or only the `https://` ones for a client that
    /// came over TLS.
    #[inline]
    pub fn view(&self, set: SetId, https_only: bool) -> &View {
        let views = self.sets.get(usize::from(set)).unwrap_or(&self.none);
        match &views.https {
            Some(v) if https_only => v,
            _ => &views.all,
        }
    }

    /// Which candidate set each file belongs to.
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
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
