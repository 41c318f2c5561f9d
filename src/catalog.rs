//! Which mirrors may serve which file, from what the prober verified of
//! each tree (`pkg/`, `debug/`, `src/`) of each release.
//!
//! Built once per published table, never per request:
//! - a mutable file of a tree (its `meta.binaryproto`, the unversioned
//!   `<name>-<arch>.meta.textproto`, anything not named by the index) goes
//!   only to mirrors fresh for that tree: their verified index is the
//!   origin's current one;
//! - an immutable file (a versioned `.squashfs` or `.meta.textproto`, and
//!   their `.gz`/`.zst` twins) goes to any mirror whose last index verified
//!   complete lists it, fresh or behind; one the origin's index does not
//!   list goes to the origin;
//! - other paths of a release go to mirrors fresh for every tree of it.
//!
//! Mirrors at the same sync point share one index (the prober interns
//! them), so a tree has a few distinct indexes. Each file name maps to the
//! set of those that list it, and each distinct set of mirrors gets one
//! [`SetId`], for which the table precomputes a selection view. On the
//! request path: one hash lookup of the file name, no allocation.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::Arc;

use foldhash::fast::FixedState;

use crate::meta::{Listing, Tree};
use crate::table::{Mirror, MirrorId};

/// A candidate set: an index into the table's views.
pub type SetId = u16;

/// Every eligible mirror: what a table without per-tree knowledge uses.
pub const ALL: SetId = 0;

/// One tree the origin has now, with its current index.
#[derive(Clone, Debug)]
pub struct OriginTree {
    pub release: Arc<str>,
    pub tree: Tree,
    pub listing: Arc<Listing>,
}

/// How a path was classified, for explanations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// No per-tree knowledge (before the origin was read, or a hand-built
    /// table): every eligible mirror.
    Unknown,
    /// An immutable file the verified indexes list.
    Listed,
    /// An image the origin's index does not list: only the origin.
    Unlisted,
    /// A mutable file of a tree: mirrors fresh for the tree.
    Mutable(Tree),
    /// Outside the trees, or in a tree the origin does not have: mirrors
    /// fresh for the whole release.
    Release,
}

impl std::fmt::Display for Class {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Class::Unknown => f.write_str("any eligible mirror (trees not verified yet)"),
            Class::Listed => f.write_str(
                "an immutable file: mirrors whose verified index lists it, fresh or behind",
            ),
            Class::Unlisted => f.write_str("an image the origin's index does not list: the origin"),
            Class::Mutable(t) => write!(f, "a mutable file: mirrors fresh for its {t}/ tree"),
            Class::Release => f.write_str("outside the trees: mirrors fresh for the whole release"),
        }
    }
}

#[derive(Debug)]
struct ReleaseSets {
    name: Box<str>,
    whole: SetId,
    /// The fresh set of each tree the origin has, by `Tree` order.
    trees: [Option<SetId>; 3],
}

/// From file paths to candidate sets.
#[derive(Debug, Default)]
pub struct Catalog {
    /// `<release>/<tree>/<image name>` to the set of mirrors that list it.
    files: Files,
    /// Empty when there is no per-tree knowledge: everything is [`ALL`].
    releases: Vec<ReleaseSets>,
    /// Mirrors fresh for every tree of every release: where any file may go.
    everything: SetId,
}

/// Names to sets in one open-addressed table of 16-byte slots, each the
/// name's 64-bit hash and 47 bits of a second, independent one beside its
/// set: a lookup reads one slot (one cache miss) and follows no pointer.
/// Two names agreeing on all 111 bits is as likely as a random 111-bit
/// collision (about 2^-80 for a million names); should two listed names
/// ever do so, that slot sends its files to the origin.
#[derive(Debug, Default)]
struct Files {
    slots: Box<[Slot]>,
}

/// `tag`: the second hash's top 47 bits, bit 16 always set (so that a
/// used slot is never all zero), the set in the low 16 bits.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct Slot {
    hash: u64,
    tag: u64,
}

const SEEDS: (u64, u64) = (0x5eed_f11e_0000_0001, 0x9e37_79b9_7f4a_7c15);

fn hashes(key: &[u8]) -> (u64, u64) {
    (
        FixedState::with_seed(SEEDS.0).hash_one(key),
        FixedState::with_seed(SEEDS.1).hash_one(key) & !0xffff | 1 << 16,
    )
}

impl Files {
    /// The table of `entries` (names unique), at most three quarters full.
    fn build(entries: &[(String, SetId)]) -> Files {
        let size = (entries.len() * 4 / 3 + 1).next_power_of_two().max(16);
        let mut slots = vec![Slot::default(); size].into_boxed_slice();
        for (key, set) in entries {
            let (hash, tag) = hashes(key.as_bytes());
            let mut i = hash as usize & (size - 1);
            loop {
                let s = &mut slots[i];
                if s.tag == 0 {
                    *s = Slot {
                        hash,
                        tag: tag | u64::from(*set),
                    };
                    break;
                }
                if s.hash == hash && s.tag & !0xffff == tag {
                    s.tag = tag | u64::from(Catalog::ORIGIN);
                    break;
                }
                i = (i + 1) & (size - 1);
            }
        }
        Files { slots }
    }

    #[inline]
    fn get(&self, key: &str) -> Option<SetId> {
        let mask = self.slots.len().checked_sub(1)?;
        let (hash, tag) = hashes(key.as_bytes());
        let mut i = hash as usize & mask;
        loop {
            let s = self.slots[i];
            if s.tag == 0 {
                return None;
            }
            if s.hash == hash && s.tag & !0xffff == tag {
                return Some(s.tag as SetId);
            }
            i = (i + 1) & mask;
        }
    }
}

/// A catalog and the members of each of its sets (set 0 is every mirror).
pub struct Built {
    pub catalog: Catalog,
    pub sets: Vec<Vec<MirrorId>>,
}

/// Sets by members, so that equal sets share one id and one view.
struct Sets {
    ids: HashMap<Vec<MirrorId>, SetId>,
    members: Vec<Vec<MirrorId>>,
}

impl Sets {
    fn id(&mut self, members: Vec<MirrorId>) -> SetId {
        if let Some(&id) = self.ids.get(&members) {
            return id;
        }
        // Past the last id (never in practice) a file goes to the origin:
        // never to a mirror that may lack it.
        let id = match SetId::try_from(self.members.len()) {
            Ok(id) if id < Catalog::ORIGIN => id,
            _ => return Catalog::ORIGIN,
        };
        self.ids.insert(members.clone(), id);
        self.members.push(members);
        id
    }
}

/// Most distinct indexes per tree told apart; mirrors at further sync
/// points are served only what is fresh for them.
const MAX_GENERATIONS: usize = 64;

/// What the prober verified of one mirror's tree: `None` when the mirror
/// has no per-tree status (assumed to hold everything).
fn verified<'a>(m: &'a Mirror, release: &str, tree: Tree) -> Option<Option<&'a Arc<Listing>>> {
    let trees = m.status.trees.as_ref()?;
    Some(
        trees
            .iter()
            .find(|t| &*t.release == release && t.tree == tree)
            .and_then(|t| t.verified.as_ref()),
    )
}

impl Catalog {
    /// The catalog for `mirrors` against the origin's current trees. With
    /// no origin trees known, every path maps to [`ALL`].
    pub fn build(releases: &[String], origin: &[OriginTree], mirrors: &[Mirror]) -> Built {
        let mut sets = Sets {
            ids: HashMap::new(),
            members: Vec::new(),
        };
        sets.id((0..mirrors.len()).collect());
        let mut catalog = Catalog::default();
        if origin.is_empty() {
            return Built {
                catalog,
                sets: sets.members,
            };
        }
        let mut files = Vec::new();
        let fresh_for =
            |id: &MirrorId, o: &OriginTree| match verified(&mirrors[*id], &o.release, o.tree) {
                None => true,
                Some(v) => v.is_some_and(|l| l.sha256 == o.listing.sha256),
            };
        for release in releases {
            let ours: Vec<&OriginTree> =
                origin.iter().filter(|o| *o.release == **release).collect();
            let mut trees = [None; 3];
            for o in &ours {
                let fresh = (0..mirrors.len()).filter(|id| fresh_for(id, o)).collect();
                trees[o.tree as usize] = Some(sets.id(fresh));
                Catalog::list_files(&mut files, release, o, mirrors, &mut sets);
            }
            let whole = (0..mirrors.len())
                .filter(|id| ours.iter().all(|o| fresh_for(id, o)))
                .collect();
            catalog.releases.push(ReleaseSets {
                name: release.as_str().into(),
                whole: sets.id(whole),
                trees,
            });
        }
        catalog.files = Files::build(&files);
        let everything = (0..mirrors.len())
            .filter(|id| origin.iter().all(|o| fresh_for(id, o)))
            .collect();
        catalog.everything = sets.id(everything);
        Built {
            catalog,
            sets: sets.members,
        }
    }

    /// Maps every name any verified index of this tree lists (the origin's
    /// included) to the mirrors whose verified index lists it.
    fn list_files(
        files: &mut Vec<(String, SetId)>,
        release: &str,
        o: &OriginTree,
        mirrors: &[Mirror],
        sets: &mut Sets,
    ) {
        // The distinct indexes, the origin's first, and who holds each.
        let mut listings: Vec<&Arc<Listing>> = vec![&o.listing];
        let mut holders: Vec<Vec<MirrorId>> = vec![Vec::new()];
        let mut assumed = Vec::new();
        for (id, m) in mirrors.iter().enumerate() {
            match verified(m, release, o.tree) {
                None => assumed.push(id),
                Some(None) => {}
                Some(Some(l)) => {
                    let at = listings.iter().position(|x| x.sha256 == l.sha256);
                    let at = match at {
                        Some(i) => i,
                        None if listings.len() < MAX_GENERATIONS => {
                            listings.push(l);
                            holders.push(Vec::new());
                            listings.len() - 1
                        }
                        None => continue,
                    };
                    holders[at].push(id);
                }
            }
        }
        let mut masks: HashMap<&str, u64, FixedState> = HashMap::default();
        for (i, l) in listings.iter().enumerate() {
            for n in l.names() {
                *masks.entry(n).or_default() |= 1 << i;
            }
        }
        let mut by_mask: HashMap<u64, SetId> = HashMap::new();
        files.reserve(masks.len());
        for (name, mask) in masks {
            let set = *by_mask.entry(mask).or_insert_with(|| {
                let mut members: Vec<MirrorId> = assumed.clone();
                for (i, h) in holders.iter().enumerate() {
                    if mask & (1 << i) != 0 {
                        members.extend(h);
                    }
                }
                members.sort_unstable();
                sets.id(members)
            });
            files.push((format!("{release}/{}/{name}", o.tree), set));
        }
    }

    /// Mirrors that may serve any file of any current release: fresh for
    /// every tree. What to show when no file is named.
    pub fn any_file(&self) -> SetId {
        self.everything
    }

    /// Whether the catalog knows anything per tree.
    pub fn is_active(&self) -> bool {
        !self.releases.is_empty()
    }

    /// The candidate set for a canonical path of a current release
    /// (`distri/<release>/...`). One hash lookup at most; no allocation.
    #[inline]
    pub fn set_for(&self, path: &str) -> SetId {
        self.classify(path).0
    }

    /// The candidate set and why.
    pub fn classify(&self, path: &str) -> (SetId, Class) {
        if self.releases.is_empty() {
            return (ALL, Class::Unknown);
        }
        let Some(rest) = path.strip_prefix("distri/") else {
            return (ALL, Class::Unknown);
        };
        // Prefix matches only: no scan for `/` until the file name.
        let found = self.releases.iter().find_map(|r| {
            let after = rest.strip_prefix(&*r.name)?.strip_prefix('/')?;
            Some((r, after))
        });
        let Some((rel, after)) = found else {
            return (ALL, Class::Unknown);
        };
        let whole = (rel.whole, Class::Release);
        let Some((tree, file)) = Tree::ALL.into_iter().find_map(|t| {
            let file = after.strip_prefix(t.as_str())?.strip_prefix('/')?;
            Some((t, file))
        }) else {
            return whole;
        };
        let Some(fresh) = rel.trees[tree as usize] else {
            return whole;
        };
        let mutable = (fresh, Class::Mutable(tree));
        if file.bytes().any(|b| b == b'/') {
            return mutable;
        }
        let base = file
            .strip_suffix(".gz")
            .or_else(|| file.strip_suffix(".zst"))
            .unwrap_or(file);
        let (stem, image) = match base.strip_suffix(".squashfs") {
            Some(s) => (s, true),
            None => match base.strip_suffix(".meta.textproto") {
                Some(s) => (s, false),
                None => return mutable,
            },
        };
        // `<release>/<tree>/<stem>`, a slice of the path itself.
        let key = &rest[..rest.len() - file.len() + stem.len()];
        match self.files.get(key) {
            Some(set) => (set, Class::Listed),
            None if image => (Catalog::ORIGIN, Class::Unlisted),
            // An unversioned `.meta.textproto`: it moves with each build.
            None => mutable,
        }
    }

    /// A set no mirror is in. Its id is never used for a view lookup that
    /// could succeed: [`Table`](crate::table::Table) maps ids it has no view
    /// for to an empty one.
    pub const ORIGIN: SetId = SetId::MAX;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Selection;
    use crate::geo::Coord;
    use crate::table::{Status, Table, TreeState, TreeStatus};

    fn listing(names: &[&str]) -> Arc<Listing> {
        let mut sha = [0u8; 32];
        for (i, n) in names.iter().enumerate() {
            sha[i % 32] ^= n.len() as u8 + i as u8;
        }
        sha[31] = names.len() as u8;
        Arc::new(Listing::new(sha, names.iter().map(|s| s.to_string())))
    }

    fn mirror(name: &str, trees: Vec<(Tree, Option<Arc<Listing>>)>) -> Mirror {
        let m = crate::config::Mirror {
            name: name.into(),
            url: format!("http://{name}.example.org/"),
            coord: Coord::new(50.0, 8.0).unwrap(),
            weight: 1.0,
            countries: None,
            ipv6: true,
        };
        let trees: Vec<TreeStatus> = trees
            .into_iter()
            .map(|(tree, verified)| TreeStatus {
                release: "r".into(),
                tree,
                state: TreeState::Fresh,
                detail: "".into(),
                verified,
            })
            .collect();
        let status = Status {
            trees: Some(Arc::from(trees)),
            ..Status::assumed_up()
        };
        Mirror::from_config(&m, status)
    }

    fn names(t: &Table, set: SetId) -> Vec<&str> {
        t.view(set, false)
            .eligible
            .iter()
            .map(|&id| &*t.get(id).name)
            .collect()
    }

    #[test]
    fn each_file_goes_where_it_is_verified() {
        let old = listing(&["a-amd64-1-1"]);
        let new = listing(&["a-amd64-1-1", "b-amd64-1-1"]);
        let origin = vec![OriginTree {
            release: "r".into(),
            tree: Tree::Pkg,
            listing: new.clone(),
        }];
        let mirrors = vec![
            mirror("fresh", vec![(Tree::Pkg, Some(new.clone()))]),
            mirror("behind", vec![(Tree::Pkg, Some(old.clone()))]),
            mirror("none", vec![(Tree::Pkg, None)]),
        ];
        let t = Table::with_origin(mirrors, Selection::default(), &["r".into()], &origin);
        let set = |p: &str| t.catalog().set_for(p);
        assert_eq!(
            names(&t, set("distri/r/pkg/a-amd64-1-1.squashfs")),
            ["fresh", "behind"]
        );
        assert_eq!(
            names(&t, set("distri/r/pkg/a-amd64-1-1.meta.textproto.zst")),
            ["fresh", "behind"]
        );
        assert_eq!(
            names(&t, set("distri/r/pkg/b-amd64-1-1.squashfs")),
            ["fresh"]
        );
        assert_eq!(
            names(&t, set("distri/r/pkg/b-amd64.meta.textproto")),
            ["fresh"]
        );
        assert_eq!(names(&t, set("distri/r/pkg/meta.binaryproto")), ["fresh"]);
        assert_eq!(names(&t, set("distri/r/img/x.img")), ["fresh"]);
        assert!(names(&t, set("distri/r/pkg/c-amd64-1-1.squashfs")).is_empty());
        // The origin has no debug tree: its paths need the whole release.
        assert_eq!(
            names(&t, set("distri/r/debug/a-amd64-1-1.squashfs")),
            ["fresh"]
        );
        assert_eq!(
            t.catalog().classify("distri/r/pkg/c-amd64-1-1.squashfs").1,
            Class::Unlisted
        );
    }

    #[test]
    fn without_origin_trees_everything_is_every_eligible_mirror() {
        let mirrors = vec![mirror("m", vec![(Tree::Pkg, None)])];
        let t = Table::with_origin(mirrors, Selection::default(), &["r".into()], &[]);
        assert!(!t.catalog().is_active());
        assert_eq!(t.catalog().set_for("distri/r/pkg/a.squashfs"), ALL);
        assert_eq!(names(&t, ALL), ["m"]);
    }

    mod property {
        use super::*;
        use crate::geoip::{Location, Source};
        use crate::select::{Client, select};
        use proptest::prelude::*;

        const NAMES: usize = 12;

        fn name(i: usize) -> String {
            format!("n{i:02}-amd64-1-{i}")
        }

        /// Listings as subsets of `NAMES` names; the first is the origin's.
        fn listings(masks: &[u16]) -> Vec<Arc<Listing>> {
            masks
                .iter()
                .enumerate()
                .map(|(k, &mask)| {
                    let names = (0..NAMES).filter(|i| mask & (1 << i) != 0).map(name);
                    let mut sha = [0u8; 32];
                    sha[0] = k as u8;
                    Arc::new(Listing::new(sha, names))
                })
                .collect()
        }

        /// The path of file kind `kind` for name `n` (`NAMES` and above:
        /// names no index lists).
        fn path(n: usize, kind: u8) -> (String, bool) {
            let n = if n < NAMES {
                name(n)
            } else {
                format!("x{n}-amd64-9-9")
            };
            let unversioned = n.split('-').take(2).collect::<Vec<_>>().join("-");
            match kind % 6 {
                0 => (format!("distri/r/pkg/{n}.squashfs"), true),
                1 => (format!("distri/r/pkg/{n}.squashfs.zst"), true),
                2 => (format!("distri/r/pkg/{n}.meta.textproto"), true),
                3 => (format!("distri/r/pkg/{unversioned}.meta.textproto"), false),
                4 => ("distri/r/pkg/meta.binaryproto".to_string(), false),
                _ => ("distri/r/img/disk.img".to_string(), false),
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(300))]

            /// An immutable file only ever goes to a mirror whose verified
            /// index lists it; a mutable one only to a mirror fresh for its
            /// tree; and to the origin only when no eligible mirror qualifies.
            #[test]
            fn files_go_only_where_they_are_verified(
                masks in proptest::collection::vec(any::<u16>(), 1..5),
                mirrors in proptest::collection::vec(
                    (proptest::option::of(0usize..5), any::<bool>(), -60.0..60.0f64, -180.0..180.0f64),
                    1..8,
                ),
                requests in proptest::collection::vec(
                    (0..NAMES + 2, any::<u8>(), -60.0..60.0f64, -180.0..180.0f64, any::<u64>()),
                    1..40,
                ),
            ) {
                let listings = listings(&masks);
                let origin = vec![OriginTree {
                    release: "r".into(),
                    tree: Tree::Pkg,
                    listing: listings[0].clone(),
                }];
                let verified: Vec<Option<Arc<Listing>>> = mirrors
                    .iter()
                    .map(|(v, ..)| v.and_then(|k| listings.get(k).cloned()))
                    .collect();
                let table_mirrors: Vec<Mirror> = mirrors
                    .iter()
                    .enumerate()
                    .map(|(i, (_, eligible, lat, lon))| {
                        let mut m = mirror(&format!("m{i}"), vec![(Tree::Pkg, verified[i].clone())]);
                        m.coord = Coord::new(*lat, *lon).unwrap();
                        m.status.eligible = *eligible;
                        m
                    })
                    .collect();
                let t = Table::with_origin(table_mirrors, Selection::default(), &["r".into()], &origin);
                for (n, kind, lat, lon, net) in requests {
                    let (path, immutable) = path(n, kind);
                    let listed_by = |v: &Option<Arc<Listing>>| {
                        v.as_ref().is_some_and(|l| l.contains(&name(n)) && n < NAMES)
                    };
                    let fresh = |v: &Option<Arc<Listing>>| {
                        v.as_ref().is_some_and(|l| l.sha256 == listings[0].sha256)
                    };
                    // Listed by an index the catalog knows: the origin's or a mirror's.
                    let anywhere = listed_by(&Some(listings[0].clone())) || verified.iter().any(listed_by);
                    let may = |id: usize| {
                        if immutable && anywhere {
                            listed_by(&verified[id])
                        } else if immutable && kind % 6 != 2 {
                            false
                        } else {
                            fresh(&verified[id])
                        }
                    };
                    let location = Location {
                        coord: Coord::new(lat, lon),
                        country: None,
                        source: Source::Record,
                    };
                    let ip = std::net::IpAddr::from(std::net::Ipv4Addr::from(net as u32));
                    let client = Client::new(ip, &location).asking_for(t.catalog().set_for(&path));
                    let qualifies = (0..mirrors.len()).any(|id| mirrors[id].1 && may(id));
                    match select(&t, &client) {
                        Some(id) => prop_assert!(may(id) && mirrors[id].1, "{path} to m{id}"),
                        None => prop_assert!(!qualifies, "{path} to the origin, yet a mirror qualifies"),
                    }
                }
            }
        }
    }
}
