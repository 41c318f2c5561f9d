//! A database's search tree read straight from its bytes, to list every
//! IPv4 network once when the flat table is built.
//!
//! maxminddb's own network iterator yields each network through a lookup
//! result and a network object; a city database has six million of them,
//! and that walk alone took longer than the whole start may (half a
//! second). This reads the tree's records directly: about 20 ns a network.
//! The record layout is MaxMind DB's (24, 28 or 32 bits per record).

/// How many nodes an IPv4 walk may enter when nodes are shared: a walk
/// enters one node fewer than it lists networks, and DB-IP's full city
/// database lists 6.3 million. About a third of a second at most.
const MAX_ENTERED: usize = 1 << 24;

/// The search tree of a database: `nodes` nodes at the start of `buf`.
pub struct Tree<'a> {
    buf: &'a [u8],
    nodes: usize,
    record_size: u16,
    ip_version: u16,
}

/// The tree does not describe a set of networks: a node where an address
/// has run out of bits, records past the end, or more paths than a walk
/// may follow ([`MAX_ENTERED`]).
#[derive(Debug, PartialEq, Eq)]
pub struct Corrupt;

/// One network: its first address, its prefix length and its record (the
/// tree's pointer into the data section; `None` without data).
pub type Network = (u32, u8, Option<usize>);

impl<'a> Tree<'a> {
    pub fn new(buf: &'a [u8], meta: &maxminddb::Metadata) -> Result<Tree<'a>, Corrupt> {
        Tree::from_parts(buf, meta.node_count, meta.record_size, meta.ip_version)
    }

    fn from_parts(
        buf: &'a [u8],
        nodes: u32,
        record_size: u16,
        ip_version: u16,
    ) -> Result<Tree<'a>, Corrupt> {
        let nodes = nodes as usize;
        if ![24, 28, 32].contains(&record_size) || buf.len() / usize::from(record_size / 4) < nodes
        {
            return Err(Corrupt);
        }
        Ok(Tree {
            buf,
            nodes,
            record_size,
            ip_version,
        })
    }

    /// Record `side` (0 left, 1 right) of node `node` (< `nodes`).
    pub(super) fn record(&self, node: usize, side: usize) -> usize {
        let b = |i: usize| usize::from(self.buf[i]);
        match self.record_size {
            24 => {
                let o = node * 6 + side * 3;
                b(o) << 16 | b(o + 1) << 8 | b(o + 2)
            }
            28 => {
                let o = node * 7;
                if side == 0 {
                    (b(o + 3) & 0xF0) << 20 | b(o) << 16 | b(o + 1) << 8 | b(o + 2)
                } else {
                    (b(o + 3) & 0x0F) << 24 | b(o + 4) << 16 | b(o + 5) << 8 | b(o + 6)
                }
            }
            _ => {
                let o = node * 8 + side * 4;
                b(o) << 24 | b(o + 1) << 16 | b(o + 2) << 8 | b(o + 3)
            }
        }
    }

    /// Calls `each` with every IPv4 network in ascending order, covering
    /// the whole IPv4 space as lookups of IPv4 addresses see it (`::/96`
    /// in an IPv6 tree). Stops early when `each` returns `false`.
    ///
    /// Nodes may be shared between branches, as MaxMind's own files share
    /// the IPv4 subtree with its aliases and the shipped database shares
    /// every repeated subtree: the walk follows paths, so a shared node is
    /// entered once per path to it. Bounded all the same: past
    /// [`MAX_ENTERED`] entries (or the node count, if larger) the file is
    /// taken for corrupt rather than followed through its paths without
    /// end.
    pub fn ipv4_networks(&self, mut each: impl FnMut(Network) -> bool) -> Result<(), Corrupt> {
        let mut root = 0;
        if self.ip_version == 6 {
            for _ in 0..96 {
                if root >= self.nodes {
                    break;
                }
                root = self.record(root, 0);
            }
        }
        let mut stack = vec![(root, 0u8, 0u32)];
        let mut entered = 0;
        while let Some((value, depth, start)) = stack.pop() {
            if value >= self.nodes {
                let data = (value > self.nodes).then_some(value);
                if !each((start, depth, data)) {
                    return Ok(());
                }
                continue;
            }
            entered += 1;
            if depth == 32 || entered > self.nodes.max(MAX_ENTERED) {
                return Err(Corrupt);
            }
            let bit = 1u32 << (31 - depth);
            stack.push((self.record(value, 1), depth + 1, start | bit));
            stack.push((self.record(value, 0), depth + 1, start));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, Ipv4Addr};

    fn write(nets: &[(&str, &str)]) -> Vec<u8> {
        let mut w = mmdb_writer::Writer::new("Test");
        for (net, cc) in nets {
            let record = serde_json::json!({ "country_code": cc });
            w.insert(net.parse::<ipnet::IpNet>().unwrap(), &record)
                .unwrap();
        }
        w.to_bytes().unwrap()
    }

    /// The walk lists exactly the networks maxminddb's lookups see: every
    /// network's first and last address looks up to the same network.
    #[test]
    fn networks_agree_with_lookups() {
        let bytes = write(&[
            ("1.0.0.0/8", "FR"),
            ("1.2.3.0/24", "DE"),
            ("9.9.9.9/32", "US"),
            ("200.0.0.0/5", "BR"),
            ("2a00::/12", "DE"),
        ]);
        let reader = maxminddb::Reader::from_source(bytes.as_slice()).unwrap();
        let tree = Tree::new(&bytes, reader.metadata()).unwrap();
        let mut nets = Vec::new();
        tree.ipv4_networks(|n| {
            nets.push(n);
            true
        })
        .unwrap();
        let mut next = 0u64;
        for &(start, prefix, data) in &nets {
            assert_eq!(u64::from(start), next, "contiguous and ascending");
            let size = 1u64 << (32 - prefix);
            for ip in [start, (u64::from(start) + size - 1) as u32] {
                let found = reader.lookup(IpAddr::V4(Ipv4Addr::from(ip))).unwrap();
                assert_eq!(found.network().unwrap().prefix(), prefix, "{ip}");
                assert_eq!(found.has_data(), data.is_some(), "{ip}");
            }
            next += size;
        }
        assert_eq!(next, 1 << 32);
        let with_data = nets.iter().filter(|n| n.2.is_some()).count();
        assert!(with_data >= 4, "{nets:?}");
    }

    #[test]
    fn shared_nodes_end_the_walk() {
        // Two nodes whose records all point at node 1: 2^32 paths.
        let mut bytes = vec![0u8, 0, 1, 0, 0, 1, 0, 0, 1, 0, 0, 1];
        bytes.resize(64, 0);
        let tree = Tree::from_parts(&bytes, 2, 24, 4).unwrap();
        assert_eq!(tree.ipv4_networks(|_| true), Err(Corrupt));
        assert!(Tree::from_parts(&bytes[..6], 2, 24, 4).is_err());
    }
}
