//! A flat copy of a database's IPv4 ranges, built once when it is opened,
//! so that an IPv4 lookup is a jump by the first 16 bits and a short binary
//! search instead of a 32-level tree walk and a record decode; for most
//! /16s, which hold one range, just the jump.
//!
//! Under load the tree walk was the largest user-space cost of a request
//! (about 480 ns: the deep tree nodes are cold in the cache); this touches
//! one or two cache lines that are not hot. The ranges are contiguous, each
//! a run of addresses with one location, adjacent runs with equal
//! locations merged. Building it walks every IPv4 network of the database
//! once: about 80 ms for the shipped one (341,574 ranges, 3 MB).

use std::collections::HashMap;
use std::net::Ipv4Addr;

use super::Location;

/// At most this many ranges (8 bytes each, 32 MB) or distinct records are
/// copied; a larger database keeps its tree walk.
const MAX_RANGES: usize = 1 << 22;

pub struct V4Table {
    /// For each /16: `UNIFORM | location` when one range covers all of it
    /// (most do: then a lookup touches this entry and the small, hot
    /// location list only), else the index of the range holding its first
    /// address.
    jump: Box<[u32]>,
    /// Each range as `first address << 32 | location`, ascending: the
    /// search reads the start and lands on the location in the same line.
    ranges: Box<[u64]>,
    locations: Box<[Location]>,
}

const UNIFORM: u32 = 1 << 31;

impl V4Table {
    /// Builds the table by walking the whole IPv4 space with `network_of`,
    /// which answers the network (first address, prefix length) holding an
    /// address, the record's key (data offset; `None` without data) and its
    /// location. `None` when the database has no IPv4 ranges of its own or
    /// too many, or when the walk meets more than `networks` networks.
    ///
    /// A search tree of N nodes has at most N + 1 networks, so the caller
    /// bounds the walk by the tree's node count: a corrupt tree whose nodes
    /// point back at each other ends every lookup at a /32 without data,
    /// and walking its 2^32 addresses one by one would hang the load (found
    /// by fuzzing, `fuzz/README.md`).
    ///
    /// `location_of` is asked once per distinct record, for an address in
    /// its first network: a city database has millions of networks and far
    /// fewer records, and decoding each network's record was most of the
    /// time a load took (benches/RESULTS.md).
    pub fn build(
        networks: u64,
        network_of: impl FnMut(Ipv4Addr) -> Option<(u8, Option<usize>)>,
        location_of: impl FnMut(Ipv4Addr) -> Location,
    ) -> Option<V4Table> {
        V4Table::build_capped(network_of, location_of, MAX_RANGES, networks)
    }

    fn build_capped(
        mut network_of: impl FnMut(Ipv4Addr) -> Option<(u8, Option<usize>)>,
        mut location_of: impl FnMut(Ipv4Addr) -> Location,
        cap: usize,
        networks: u64,
    ) -> Option<V4Table> {
        let mut starts = Vec::new();
        let mut ids: Vec<u32> = Vec::new();
        let mut locations = vec![Location::UNKNOWN];
        let mut by_offset: HashMap<usize, u32> = HashMap::new();
        let mut next: u64 = 0;
        let mut walked = 0;
        while next <= u64::from(u32::MAX) {
            walked += 1;
            if walked > networks {
                return None;
            }
            let at = Ipv4Addr::from(next as u32);
            let (prefix, offset) = network_of(at)?;
            let id = match offset {
                None => 0,
                Some(o) => *by_offset.entry(o).or_insert_with(|| {
                    locations.push(location_of(at));
                    (locations.len() - 1) as u32
                }),
            };
            if locations.len() > cap {
                return None;
            }
            let merge = ids
                .last()
                .is_some_and(|&last| locations[last as usize] == locations[id as usize]);
            if !merge {
                if starts.len() == cap {
                    return None;
                }
                starts.push(next as u32);
                ids.push(id);
            }
            // The network holds `next`; the following one starts after it.
            let size = 1u64 << (32 - u32::from(prefix.min(32)));
            next = (next & !(size - 1)) + size;
        }
        let ranges: Box<[u64]> = starts
            .iter()
            .zip(&ids)
            .map(|(&s, &id)| u64::from(s) << 32 | u64::from(id))
            .collect();
        let jump = (0..1u32 << 16)
            .map(|p| {
                let first = p << 16;
                let k = starts.partition_point(|&s| s <= first) - 1;
                let uniform = starts.get(k + 1).is_none_or(|&next| next > first | 0xFFFF);
                if uniform { UNIFORM | ids[k] } else { k as u32 }
            })
            .collect();
        Some(V4Table {
            jump,
            ranges,
            locations: locations.into(),
        })
    }

    pub fn lookup(&self, ip: Ipv4Addr) -> Location {
        let ip = u32::from(ip);
        let e = self.jump[(ip >> 16) as usize];
        if e & UNIFORM != 0 {
            return self.locations[(e & !UNIFORM) as usize];
        }
        // ranges[e] starts at or before ip. Gallop forward from it (the
        // ranges of one /16 are adjacent, usually in one or two cache
        // lines), then binary-search the last step.
        let key = u64::from(ip) << 32 | u64::from(u32::MAX);
        let (mut i, mut step) = (e as usize, 1);
        while self.ranges.get(i + step).is_some_and(|&r| r <= key) {
            i += step;
            step *= 2;
        }
        let end = (i + step).min(self.ranges.len());
        let k = i + self.ranges[i..end].partition_point(|&r| r <= key) - 1;
        self.locations[self.ranges[k] as u32 as usize]
    }

    pub fn ranges(&self) -> usize {
        self.ranges.len()
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

    #[test]
    fn every_boundary_and_random_address_agrees_with_the_blocks() {
        for seed in 1..20 {
            let blocks = blocks(seed);
            let table = V4Table::build(
                u64::MAX,
                |ip| Some(find(&blocks, ip.into())),
                |ip| location(find(&blocks, ip.into()).1),
            )
            .expect("a table");
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
                    "seed {seed}, {}",
                    Ipv4Addr::from(ip)
                );
            }
            assert!(table.ranges() < blocks.len(), "equal neighbours merge");
        }
    }

    #[test]
    fn a_database_over_the_cap_gets_no_table() {
        let blocks = blocks(7);
        let network_of = |ip: Ipv4Addr| Some(find(&blocks, ip.into()));
        let location_of = |ip: Ipv4Addr| location(find(&blocks, ip.into()).1);
        let ranges = V4Table::build(u64::MAX, network_of, location_of)
            .expect("a table")
            .ranges();
        let capped = |cap| V4Table::build_capped(network_of, location_of, cap, u64::MAX);
        assert!(capped(ranges).is_some());
        assert!(capped(ranges - 1).is_none());
    }

    #[test]
    fn a_tree_of_endless_single_addresses_is_not_walked_to_the_end() {
        let endless = |_| Some((32, None));
        assert!(V4Table::build(1000, endless, |_| Location::UNKNOWN).is_none());
    }

    #[test]
    fn a_database_without_ipv4_ranges_gets_no_table() {
        assert!(V4Table::build(u64::MAX, |_| None, |_| Location::UNKNOWN).is_none());
    }
}
