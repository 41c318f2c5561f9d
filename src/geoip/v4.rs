//! A flat copy of a database's IPv4 ranges, built once when it is opened,
//! so that an IPv4 lookup is a jump by the first 16 bits and a short binary
//! search instead of a 32-level tree walk and a record decode; for a /16
//! that one range covers, just the jump.
//!
//! Under load the tree walk was the largest user-space cost of a request
//! (about 480 ns: the deep tree nodes are cold in the cache); this touches
//! a few cache lines. The ranges are contiguous, each a run of addresses
//! with one location, adjacent runs with equal locations merged.
//!
//! Sized for a full city database: DB-IP's (6.3 M IPv4 networks, 425,000
//! records) becomes 3.7 M ranges in 5 bytes each (`Ranges::Narrow`) and
//! 0.42 M places in 12 bytes each, 24 MB in all, built in about half a
//! second. Smaller tables keep 8 bytes a range, one cache miss fewer.

use std::collections::HashMap;
use std::net::Ipv4Addr;

use super::Location;

/// At most this many ranges (32 MB at most) or distinct records are
/// copied; a larger database keeps its tree walk. Location ids therefore
/// fit in 3 bytes.
const MAX_RANGES: usize = 1 << 22;

pub struct V4Table {
    ranges: Ranges,
    locations: Places,
}

/// Past this many ranges, the narrow layout: it saves 3 bytes a range
/// (11 MB in a full city database) for one more dependent cache miss. The
/// shipped default (1.37 M ranges) stays wide: 4 MB more for lookups a
/// fifth faster (benches/RESULTS.md).
const NARROW_FROM: usize = 1 << 21;

/// The ranges, in one of two layouts. Lookups in the wide one took 126 ns
/// in the shipped database, against 176 ns in the narrow one; in a full
/// city database 303 ns against 330 ns (latency-bound, benches/RESULTS.md).
enum Ranges {
    /// `jump`: for each /16, `UNIFORM | location` when one range covers all
    /// of it (then a lookup touches this entry and the location only), else
    /// the index of the range holding its first address. `ranges`: each
    /// range as `first address << 32 | location`, ascending: the search
    /// reads the start and lands on the location in the same line.
    Wide {
        jump: Box<[u32]>,
        ranges: Box<[u64]>,
    },
    /// `jump`: `UNIFORM64 | location`, or `first << 32 | count`: the
    /// `count` ranges from `first` (holding the /16's first address) are
    /// those holding some of its addresses. `lows`: each range's first
    /// address, its low 16 bits (the high ones are its /16's); `ids`: each
    /// range's location, in 3 bytes (4 took 3.7 MB more of a full city
    /// database's 50 MB budget).
    Narrow {
        jump: Box<[u64]>,
        lows: Box<[u16]>,
        ids: Ids,
    },
}

const UNIFORM: u32 = 1 << 31;
const UNIFORM64: u64 = 1 << 63;

/// The distinct locations. A city database has hundreds of thousands, so
/// their size counts: where every coordinate is exactly a 32-bit float (as
/// in ip-location-db's files, whose schema stores `float`), they are kept
/// as such, in 12 bytes instead of 32; otherwise as they are.
enum Places {
    Narrow(Box<[Narrow]>),
    Wide(Box<[Location]>),
}

#[derive(Clone, Copy)]
struct Narrow {
    lat: f32,
    lon: f32,
    country: Option<crate::geo::Country>,
    source: super::Source,
}

impl Narrow {
    /// `None` unless the location comes back from it unchanged.
    fn of(l: &Location) -> Option<Narrow> {
        let (lat, lon) = l.coord.map_or((0.0, 0.0), |c| (c.lat as f32, c.lon as f32));
        let n = Narrow {
            lat,
            lon,
            country: l.country,
            source: l.source,
        };
        (n.location() == *l).then_some(n)
    }

    fn location(self) -> Location {
        let coord = (self.source != super::Source::Unknown).then_some(crate::geo::Coord {
            lat: f64::from(self.lat),
            lon: f64::from(self.lon),
        });
        Location {
            country: self.country,
            coord,
            source: self.source,
        }
    }
}

impl Places {
    fn new(all: Vec<Location>) -> Places {
        match all
            .iter()
            .map(Narrow::of)
            .collect::<Option<Box<[Narrow]>>>()
        {
            Some(narrow) => Places::Narrow(narrow),
            None => Places::Wide(all.into()),
        }
    }

    fn get(&self, id: u32) -> Location {
        let i = id as usize;
        let found = match self {
            Places::Narrow(n) => n.get(i).map(|n| n.location()),
            Places::Wide(w) => w.get(i).copied(),
        };
        found.unwrap_or(Location::UNKNOWN)
    }
}

/// Builds a table from a database's IPv4 networks, given in ascending
/// order and covering the whole space (`tree::Tree::ipv4_networks`).
///
/// Two steps: the walk collects runs of networks with one record, and each
/// distinct record once; `finish` then decodes the records (on two
/// threads: decoding is most of a city database's load) and merges runs
/// whose records give equal places. Every allocation stays on the calling
/// thread, so that nothing is left behind in another thread's malloc arena.
pub struct V4Builder {
    /// Each run's first address, ascending, and its record's index.
    starts: Vec<u32>,
    runs: Vec<u32>,
    /// Record key to index; index 0 is "no data". A city database has
    /// millions of networks and far fewer records.
    by_record: HashMap<u32, u32, Fast>,
    /// An address in each record's first network.
    records: Vec<Ipv4Addr>,
    /// The previous network's record and index: neighbours often share
    /// one, and the map's probes were much of a load's time.
    last: Option<(usize, u32)>,
    cap: usize,
    narrow_from: usize,
    over: bool,
}

/// SipHash was a sixth of a city database's load; the keys are the
/// database's own pointers and places, not chosen by clients.
type Fast = std::hash::BuildHasherDefault<Multiply>;

#[derive(Default)]
struct Multiply(u64);

impl std::hash::Hasher for Multiply {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
    }
    fn write_u64(&mut self, x: u64) {
        self.0 = (self.0.rotate_left(5) ^ x).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
    fn write_usize(&mut self, x: usize) {
        self.write_u64(x as u64);
    }
}

type PlaceKey = (Option<crate::geo::Country>, Option<(u64, u64)>, u8);

fn place_key(l: &Location) -> PlaceKey {
    let coord = l.coord.map(|c| (c.lat.to_bits(), c.lon.to_bits()));
    (l.country, coord, l.source as u8)
}

impl Default for V4Builder {
    fn default() -> Self {
        V4Builder::with_cap(MAX_RANGES)
    }
}

impl V4Builder {
    fn with_cap(cap: usize) -> Self {
        V4Builder {
            starts: Vec::new(),
            runs: Vec::new(),
            by_record: HashMap::default(),
            records: vec![Ipv4Addr::UNSPECIFIED],
            last: None,
            cap,
            narrow_from: NARROW_FROM,
            over: false,
        }
    }

    /// Adds the next network: (first address, prefix length, record key;
    /// `None` without data). `false` once the table is over its cap, and
    /// the walk can stop.
    pub fn push(&mut self, (start, _prefix, record): super::tree::Network) -> bool {
        let index = match (record, self.last) {
            (None, _) => 0,
            (Some(r), Some((last, index))) if last == r => index,
            (Some(r), _) => {
                let next = self.records.len() as u32;
                let index = *self.by_record.entry(r as u32).or_insert(next);
                if index == next {
                    self.records.push(Ipv4Addr::from(start));
                }
                self.last = Some((r, index));
                index
            }
        };
        if self.runs.last() == Some(&index) {
            return true;
        }
        if self.runs.len() == self.cap || self.records.len() > self.cap {
            self.over = true;
            return false;
        }
        self.starts.push(start);
        self.runs.push(index);
        true
    }

    /// The table, each record's place given by `location_of` (asked once
    /// per record, for an address in its first network); `None` when it
    /// went over its cap or no range has data.
    pub fn finish(self, location_of: impl Fn(Ipv4Addr) -> Location + Sync) -> Option<V4Table> {
        let V4Builder {
            mut starts,
            mut runs,
            records,
            ..
        } = self;
        if self.over || starts.first() != Some(&0) || runs.iter().all(|&r| r == 0) {
            return None;
        }
        // Index 0 is "no data": nothing to decode.
        let mut places = vec![Location::UNKNOWN; records.len()];
        let half = records.len() / 2;
        let (first, second) = places.split_at_mut(half);
        let first = &mut first[1..];
        let decode = |out: &mut [Location], from: &[Ipv4Addr]| {
            for (o, &ip) in out.iter_mut().zip(from) {
                *o = location_of(ip);
            }
        };
        std::thread::scope(|s| {
            s.spawn(|| decode(second, &records[half..]));
            decode(first, &records[1..half]);
        });
        // Records with equal places share an id; runs with equal ids merge.
        let mut by_place: HashMap<PlaceKey, u32, Fast> = HashMap::default();
        let mut locations = Vec::new();
        let ids: Vec<u32> = places
            .iter()
            .map(|p| {
                let next = locations.len() as u32;
                let id = *by_place.entry(place_key(p)).or_insert(next);
                if id == next {
                    locations.push(*p);
                }
                id
            })
            .collect();
        let mut kept = 0;
        for i in 0..runs.len() {
            let id = ids[runs[i] as usize];
            if kept > 0 && runs[kept - 1] == id {
                continue;
            }
            (starts[kept], runs[kept]) = (starts[i], id);
            kept += 1;
        }
        starts.truncate(kept);
        runs.truncate(kept);
        Some(V4Table::new(&starts, &runs, locations, self.narrow_from))
    }
}

impl V4Table {
    /// The table of ranges starting at `starts` (ascending, the first at
    /// 0) with locations `ids`.
    fn new(starts: &[u32], ids: &[u32], locations: Vec<Location>, narrow_from: usize) -> V4Table {
        let ranges = if starts.len() >= narrow_from {
            Ranges::narrow(starts, ids)
        } else {
            Ranges::wide(starts, ids)
        };
        V4Table {
            ranges,
            locations: Places::new(locations),
        }
    }

    pub fn lookup(&self, ip: Ipv4Addr) -> Location {
        self.locations.get(self.ranges.id(u32::from(ip)))
    }

    pub fn ranges(&self) -> usize {
        match &self.ranges {
            Ranges::Wide { ranges, .. } => ranges.len(),
            Ranges::Narrow { lows, .. } => lows.len(),
        }
    }
}

impl Ranges {
    /// For each /16, `k` (the range holding its first address) and `end`
    /// (the first range starting past its last), in one pass.
    fn bounds(starts: &[u32]) -> impl Iterator<Item = (usize, usize)> + '_ {
        let (mut k, mut end) = (0, 1);
        (0..1u32 << 16).map(move |p| {
            let (first, last) = (p << 16, p << 16 | 0xFFFF);
            while starts.get(k + 1).is_some_and(|&s| s <= first) {
                k += 1;
            }
            end = end.max(k + 1);
            while starts.get(end).is_some_and(|&s| s <= last) {
                end += 1;
            }
            (k, end)
        })
    }

    fn wide(starts: &[u32], ids: &[u32]) -> Ranges {
        let jump = Ranges::bounds(starts)
            .map(|(k, end)| {
                if end == k + 1 {
                    UNIFORM | ids[k]
                } else {
                    k as u32
                }
            })
            .collect();
        let ranges = starts
            .iter()
            .zip(ids)
            .map(|(&s, &id)| u64::from(s) << 32 | u64::from(id))
            .collect();
        Ranges::Wide { jump, ranges }
    }

    fn narrow(starts: &[u32], ids: &[u32]) -> Ranges {
        let jump = Ranges::bounds(starts)
            .map(|(k, end)| {
                if end == k + 1 {
                    UNIFORM64 | u64::from(ids[k])
                } else {
                    (k as u64) << 32 | (end - k) as u64
                }
            })
            .collect();
        let lows = starts.iter().map(|&s| s as u16).collect();
        Ranges::Narrow {
            jump,
            lows,
            ids: Ids::new(ids),
        }
    }

    /// The location id of the range holding `ip`.
    fn id(&self, ip: u32) -> u32 {
        let p = (ip >> 16) as usize;
        match self {
            Ranges::Wide { jump, ranges } => {
                let e = jump[p];
                if e & UNIFORM != 0 {
                    return e & !UNIFORM;
                }
                // ranges[e] starts at or before ip. Gallop forward from it
                // (the ranges of one /16 are adjacent, usually in one or
                // two cache lines), then binary-search the last step.
                let key = u64::from(ip) << 32 | u64::from(u32::MAX);
                let (mut i, mut step) = (e as usize, 1);
                while ranges.get(i + step).is_some_and(|&r| r <= key) {
                    i += step;
                    step *= 2;
                }
                let end = (i + step).min(ranges.len());
                let later = ranges
                    .get(i..end)
                    .map_or(1, |r| r.partition_point(|&r| r <= key));
                ranges.get(i + later - 1).map_or(0, |&r| r as u32)
            }
            Ranges::Narrow { jump, lows, ids } => {
                let e = jump[p];
                if e & UNIFORM64 != 0 {
                    return e as u32;
                }
                // Ranges k+1.. start inside this /16, after its first address.
                let (k, n) = ((e >> 32) as usize, e as u32 as usize);
                let low = ip as u16;
                let later = lows
                    .get(k + 1..k + n)
                    .map_or(0, |l| l.partition_point(|&s| s <= low));
                ids.get(k + later)
            }
        }
    }
}

/// Location ids below 2^24, 3 bytes each, little-endian, with one byte of
/// padding at the end so that each is read as one 4-byte load.
struct Ids(Box<[u8]>);

impl Ids {
    fn new(ids: &[u32]) -> Ids {
        let mut bytes = Vec::with_capacity(3 * ids.len() + 1);
        for id in ids {
            debug_assert!(*id < 1 << 24, "MAX_RANGES keeps ids in 3 bytes");
            bytes.extend_from_slice(&id.to_le_bytes()[..3]);
        }
        bytes.push(0);
        Ids(bytes.into())
    }

    /// The `i`th id; 0 ("no data") past the end.
    fn get(&self, i: usize) -> u32 {
        self.0
            .get(3 * i..3 * i + 4)
            .and_then(|b| b.try_into().ok())
            .map_or(0, |b| u32::from_le_bytes(b) & 0xFF_FFFF)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::geo::Coord;
    use crate::geoip::Source;

    /// A database as a list of CIDR blocks covering the IPv4 space:
    /// (first address, prefix length, record key).
    type Blocks = Vec<(u32, u8, Option<usize>)>;

    fn location(key: Option<usize>) -> Location {
        match key {
            None => Location::UNKNOWN,
            Some(k) => Location {
                country: None,
                // Keys 0 and 1 share a location: their ranges must merge.
                coord: Coord::new((k.max(1) % 80) as f64, 0.0),
                source: Source::Record,
            },
        }
    }

    /// Splits the space at random depths, down to /32 in places.
    fn blocks(seed: u64) -> Blocks {
        let mut state = seed | 1;
        let mut rnd = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut out = Vec::new();
        let mut stack = vec![(0u32, 0u8)];
        while let Some((start, prefix)) = stack.pop() {
            let r = rnd();
            if prefix < 32 && (prefix < 4 || r % 100 < 55) {
                let half = 1u32 << (31 - prefix);
                stack.push((start + half, prefix + 1));
                stack.push((start, prefix + 1));
            } else {
                let key = (r >> 8) % 6;
                out.push((start, prefix, (key != 5).then_some(key as usize)));
            }
        }
        out
    }

    fn find(blocks: &Blocks, ip: u32) -> (u8, Option<usize>) {
        let i = blocks.partition_point(|b| b.0 <= ip) - 1;
        (blocks[i].1, blocks[i].2)
    }

    fn table(blocks: &Blocks, cap: usize) -> Option<V4Table> {
        layout(blocks, cap, NARROW_FROM)
    }

    fn layout(blocks: &Blocks, cap: usize, narrow_from: usize) -> Option<V4Table> {
        let mut b = V4Builder::with_cap(cap);
        b.narrow_from = narrow_from;
        for &block in blocks {
            if !b.push(block) {
                break;
            }
        }
        b.finish(|ip: Ipv4Addr| location(find(blocks, ip.into()).1))
    }

    #[test]
    fn every_boundary_and_random_address_agrees_with_the_blocks() {
        for (seed, narrow_from) in (1..20).flat_map(|s| [(s, usize::MAX), (s, 0)]) {
            let blocks = blocks(seed);
            let table = layout(&blocks, MAX_RANGES, narrow_from).expect("a table");
            let narrow = matches!(table.ranges, Ranges::Narrow { .. });
            assert_eq!(narrow, narrow_from == 0);
            let mut probes: Vec<u32> = vec![0, u32::MAX, 0xFFFF, 0x1_0000];
            for &(start, prefix, _) in &blocks {
                let last = start + ((1u64 << (32 - prefix)) - 1) as u32;
                probes.extend([start, last, start.wrapping_sub(1), last.wrapping_add(1)]);
            }
            probes.extend((0..10_000u32).map(|i| i.wrapping_mul(2_654_435_761)));
            for ip in probes {
                let want = location(find(&blocks, ip).1);
                assert_eq!(
                    table.lookup(ip.into()),
                    want,
                    "seed {seed}, narrow {narrow}, {}",
                    Ipv4Addr::from(ip)
                );
            }
            assert!(table.ranges() < blocks.len(), "equal neighbours merge");
        }
    }

    /// Coordinates that are not 32-bit floats (MaxMind's files store
    /// doubles) come back unchanged too; 32-bit ones are kept narrow.
    #[test]
    fn locations_come_back_exactly() {
        let at = |lat: f64| Location {
            country: crate::geo::Country::parse("US"),
            coord: Coord::new(lat, lat - 170.0),
            source: Source::Record,
        };
        for (lat, narrow) in [(47.6062, false), (47.5, true)] {
            let mut b = V4Builder::default();
            // 0/8, 1/8 (with data), 2/7, 4/6, 8/5, 16/4, 32/3, 64/2, 128/1.
            b.push((0, 8, None));
            b.push((1 << 24, 8, Some(7)));
            for prefix in (1..8).rev() {
                b.push((1 << (32 - prefix), prefix, None));
            }
            let table = b
                .finish(|ip: Ipv4Addr| {
                    if u32::from(ip) == 1 << 24 {
                        at(lat)
                    } else {
                        Location::UNKNOWN
                    }
                })
                .expect("a table");
            assert_eq!(table.lookup(Ipv4Addr::new(1, 2, 3, 4)), at(lat));
            assert_eq!(table.lookup(Ipv4Addr::new(2, 2, 3, 4)), Location::UNKNOWN);
            assert_eq!(
                matches!(table.locations, Places::Narrow(_)),
                narrow,
                "{lat}"
            );
        }
    }

    /// Ids up to the largest 3 bytes hold come back; past the end is 0.
    #[test]
    fn ids_keep_three_bytes_each() {
        let want: Vec<u32> = vec![
            0,
            1,
            0xFF,
            0x100,
            0xFFFF,
            0x1_0000,
            0xAB_CDEF,
            (1 << 24) - 1,
            7,
        ];
        let ids = Ids::new(&want);
        assert_eq!(ids.0.len(), 3 * want.len() + 1);
        for (i, &id) in want.iter().enumerate() {
            assert_eq!(ids.get(i), id, "{i}");
        }
        assert_eq!(ids.get(want.len()), 0);
        assert_eq!(ids.get(usize::MAX / 4), 0);
        assert_eq!(Ids::new(&[]).get(0), 0);
    }

    #[test]
    fn a_database_over_the_cap_gets_no_table() {
        let blocks = blocks(7);
        // The cap counts runs of one record, before equal places merge.
        let runs = 1 + blocks.windows(2).filter(|w| w[0].2 != w[1].2).count();
        assert!(table(&blocks, MAX_RANGES).expect("a table").ranges() < runs);
        assert!(table(&blocks, runs).is_some());
        assert!(table(&blocks, runs - 1).is_none());
    }

    #[test]
    fn a_database_without_ipv4_data_gets_no_table() {
        assert!(table(&vec![(0, 0, None)], MAX_RANGES).is_none());
    }
}
