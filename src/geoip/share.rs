//! Makes a MaxMind DB file smaller by sharing its repeated subtrees: every
//! node whose records equal another's (once the same is done below both)
//! is replaced by that one. Used by `examples/build_geoip.rs` on the
//! shipped database, where it halves the search tree (benches/RESULTS.md).
//!
//! The result is still a standard MaxMind DB: a reader follows records
//! from the root and never asks how many paths lead to a node, which is
//! how MaxMind's own files share their IPv4 subtree with the IPv4-mapped
//! and 6to4 ranges. Lookups give exactly what they gave before.

use std::collections::HashMap;

use super::tree::Tree;

const MARKER: &[u8] = b"\xab\xcd\xefMaxMind.com";
/// Between the tree and the data section.
const SEPARATOR: usize = 16;

/// Why a file could not be rewritten.
#[derive(Debug, thiserror::Error)]
pub enum ShareError {
    #[error("not a MaxMind DB file: {0}")]
    Open(#[from] maxminddb::MaxMindDbError),
    #[error("the file's layout is not what its metadata says: {0}")]
    Layout(&'static str),
}

/// The same database, with each distinct subtree written once.
pub fn share_subtrees(file: &[u8]) -> Result<Vec<u8>, ShareError> {
    let reader = maxminddb::Reader::from_source(file)?;
    let nodes = reader.metadata().node_count as usize;
    let size = Records(reader.metadata().record_size);
    let tree_len = nodes * size.node_bytes();
    let meta_at = find_last(file, MARKER).ok_or(ShareError::Layout("no metadata marker"))?;
    let tree = Tree::new(file, reader.metadata());
    let tree = match tree {
        Ok(tree) if nodes > 0 && meta_at >= tree_len + SEPARATOR => tree,
        _ => return Err(ShareError::Layout("no tree, or a tree past the metadata")),
    };
    let data = &file[tree_len + SEPARATOR..meta_at];
    let record = |n: usize, side: usize| tree.record(n, side);

    let (class, first) = classes(nodes, record)?;
    // New numbers in breadth-first order from the root, which stays 0.
    let mut number = vec![u32::MAX; first.len()];
    let mut order = vec![class[0]];
    number[class[0] as usize] = 0;
    let mut i = 0;
    while let Some(&c) = order.get(i) {
        i += 1;
        for side in 0..2 {
            let r = record(first[c as usize], side);
            if r < nodes {
                let k = class[r] as usize;
                if number[k] == u32::MAX {
                    number[k] = order.len() as u32;
                    order.push(k as u32);
                }
            }
        }
    }
    let shared = order.len();
    // A record past the tree keeps its meaning: nothing (the node count),
    // or a place in the data section at the same offset.
    let rewrite = |r: usize| {
        if r < nodes {
            number[class[r] as usize] as usize
        } else {
            r - nodes + shared
        }
    };

    let mut out = Vec::with_capacity(shared * size.node_bytes() + file.len() - tree_len);
    for &c in &order {
        let n = first[c as usize];
        size.write(&mut out, rewrite(record(n, 0)), rewrite(record(n, 1)));
    }
    out.extend_from_slice(&[0; SEPARATOR]);
    out.extend_from_slice(data);
    out.extend_from_slice(&with_node_count(&file[meta_at..], nodes, shared)?);
    Ok(out)
}

/// Each node's class (equal subtrees, equal class) and each class's first
/// node. Classes are found children first, by an explicit stack: a tree
/// is up to 128 levels deep.
fn classes(
    nodes: usize,
    record: impl Fn(usize, usize) -> usize,
) -> Result<(Vec<u32>, Vec<usize>), ShareError> {
    const NONE: u32 = u32::MAX;
    let mut class = vec![NONE; nodes];
    let mut first = Vec::new();
    let mut seen: HashMap<(u64, u64), u32> = HashMap::new();
    // A record's key: a node's class, or the value past the tree, marked.
    let key = |class: &[u32], r: usize| {
        if r < nodes {
            u64::from(class[r])
        } else {
            1 << 40 | r as u64
        }
    };
    let mut stack = vec![0usize];
    while let Some(&n) = stack.last() {
        if class[n] != NONE {
            stack.pop();
            continue;
        }
        let (l, r) = (record(n, 0), record(n, 1));
        let before = stack.len();
        stack.extend(
            [l, r]
                .into_iter()
                .filter(|&c| c < nodes && class[c] == NONE),
        );
        if stack.len() > before {
            // Two entries a level at most, 128 levels.
            if stack.len() > 2 * 128 + 1 {
                return Err(ShareError::Layout("a path through the tree loops"));
            }
            continue;
        }
        stack.pop();
        let next = first.len() as u32;
        let k = *seen.entry((key(&class, l), key(&class, r))).or_insert(next);
        if k == next {
            first.push(n);
        }
        class[n] = k;
    }
    Ok((class, first))
}

/// The metadata with its `node_count` replaced. The new count is written
/// in as many bytes as the old, so that nothing after it moves (the
/// metadata may point into itself).
fn with_node_count(meta: &[u8], old: usize, new: usize) -> Result<Vec<u8>, ShareError> {
    const KEY: &[u8] = b"\x4anode_count";
    let at = find_last(meta, KEY).ok_or(ShareError::Layout("no node_count in the metadata"))?;
    let value = at + KEY.len();
    let control = *meta.get(value).ok_or(ShareError::Layout("metadata ends"))?;
    let len = usize::from(control & 0x1f);
    // A uint32 (type 6) of `len` bytes, holding the old count.
    let bytes = meta
        .get(value + 1..value + 1 + len)
        .ok_or(ShareError::Layout("metadata ends"))?;
    let stored = bytes.iter().fold(0usize, |a, &b| a << 8 | usize::from(b));
    if control >> 5 != 6 || len > 4 || stored != old || (len < 4 && new >> (8 * len) != 0) {
        return Err(ShareError::Layout(
            "node_count is not a uint32 of the tree's size",
        ));
    }
    let mut out = meta.to_vec();
    for (i, b) in out[value + 1..value + 1 + len].iter_mut().enumerate() {
        *b = (new >> (8 * (len - 1 - i))) as u8;
    }
    Ok(out)
}

fn find_last(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).rposition(|w| w == needle)
}

/// A record size in bits: 24, 28 or 32 (read by [`Tree`], written here).
#[derive(Clone, Copy)]
struct Records(u16);

impl Records {
    fn node_bytes(self) -> usize {
        usize::from(self.0) / 4
    }

    fn write(self, out: &mut Vec<u8>, l: usize, r: usize) {
        let be = |v: usize, n: usize| (0..n).rev().map(move |i| (v >> (8 * i)) as u8);
        match self.0 {
            24 => out.extend(be(l, 3).chain(be(r, 3))),
            28 => {
                out.extend(be(l & 0xff_ffff, 3));
                out.push(((l >> 20) & 0xf0 | (r >> 24) & 0x0f) as u8);
                out.extend(be(r & 0xff_ffff, 3));
            }
            _ => out.extend(be(l, 4).chain(be(r, 4))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use maxminddb::Reader;
    use mmdb_writer::{RecordSize, Writer};
    use std::net::IpAddr;

    /// The same pattern of networks in many places, so subtrees repeat:
    /// in every 10.x.0.0/16 (IPv4) and 2a00:x::/32 (IPv6), one network in
    /// the middle of a country's range.
    fn repeated(size: RecordSize) -> Vec<u8> {
        let mut w = Writer::builder("Test").record_size(size).build();
        let mut put = |net: String, cc: &str| {
            let record = serde_json::json!({ "country_code": cc, "latitude": 1.5 });
            w.insert(net.parse::<ipnet::IpNet>().unwrap(), &record)
                .unwrap();
        };
        for x in 0..64 {
            put(format!("10.{x}.0.0/16"), "FR");
            put(format!("10.{x}.7.0/24"), "DE");
            put(format!("2a00:{x:x}::/32"), "BR");
            put(format!("2a00:{x:x}:9::/48"), "AR");
        }
        put("192.0.2.0/24".into(), "NL");
        w.to_bytes().unwrap()
    }

    fn addresses() -> impl Iterator<Item = IpAddr> {
        let v4 = (0..66u32).flat_map(|x| {
            [0u32, 6 << 8, 7 << 8, (7 << 8) | 255, 8 << 8, 0xffff].map(move |low| {
                IpAddr::from(std::net::Ipv4Addr::from((10 << 24) | (x << 16) | low))
            })
        });
        let v6 = (0..66u128).flat_map(|x| {
            [0u128, 9 << 80, (9 << 80) | 1, 10 << 80].map(move |low| {
                IpAddr::from(std::net::Ipv6Addr::from(
                    (0x2a00u128 << 112) | (x << 96) | low,
                ))
            })
        });
        let other = [
            "192.0.2.9",
            "192.0.3.1",
            "::ffff:10.3.7.1",
            "2002:0a03:0701::",
            "9.9.9.9",
        ]
        .map(|a| a.parse().unwrap());
        v4.chain(v6).chain(other)
    }

    /// Every address looks up to the same network and record, read by
    /// maxminddb, for each record size; the tree is smaller.
    #[test]
    fn lookups_are_unchanged_and_the_tree_is_smaller() {
        for size in [RecordSize::Bits24, RecordSize::Bits28, RecordSize::Bits32] {
            let before = repeated(size);
            let after = share_subtrees(&before).unwrap();
            let (b, a) = (
                Reader::from_source(&before).unwrap(),
                Reader::from_source(&after).unwrap(),
            );
            let (nb, na) = (b.metadata().node_count, a.metadata().node_count);
            assert!(na * 4 < nb, "{nb} nodes before, {na} after");
            assert_eq!(
                after.len(),
                before.len() - (nb - na) as usize * usize::from(b.metadata().record_size) / 4
            );
            for ip in addresses() {
                let (x, y) = (b.lookup(ip).unwrap(), a.lookup(ip).unwrap());
                assert_eq!(x.network().unwrap(), y.network().unwrap(), "{ip}");
                let decode =
                    |r: &maxminddb::LookupResult<_>| r.decode::<serde_json::Value>().unwrap();
                assert_eq!(decode(&x), decode(&y), "{ip}");
            }
            // Done twice, nothing more is shared.
            assert_eq!(share_subtrees(&after).unwrap(), after);
        }
    }

    /// The service reads a shared tree: its flat IPv4 table, built by
    /// walking the tree's paths, answers what the tree does.
    #[test]
    fn the_flat_table_of_a_shared_tree_matches_its_lookups() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shared.mmdb");
        std::fs::write(
            &path,
            share_subtrees(&repeated(RecordSize::Bits24)).unwrap(),
        )
        .unwrap();
        let db = super::super::GeoDb::open(&path).unwrap();
        assert!(db.v4_ranges() > 2 * 64, "{} ranges", db.v4_ranges());
        for ip in addresses() {
            assert_eq!(db.lookup(ip), db.tree_lookup(ip), "{ip}");
        }
        let de = db.lookup("10.63.7.1".parse().unwrap()).country;
        assert_eq!(de.map(|c| c.to_string()).as_deref(), Some("DE"));
    }

    #[test]
    fn node_count_is_patched_only_as_a_uint32_of_the_old_count() {
        let meta = |value: &[u8]| [b"\x4anode_count".as_slice(), value].concat();
        let patched = with_node_count(&meta(&[0xc3, 0x01, 0x00, 0x00]), 65_536, 300).unwrap();
        assert_eq!(patched, meta(&[0xc3, 0x00, 0x01, 0x2c]));
        for bad in [
            meta(&[0xc9, 0, 0, 0, 0, 0, 0, 0x01, 0x00, 0x00]), // 9 bytes: no uint32
            meta(&[0xc3, 0x01, 0x00, 0x01]),                   // another count
            meta(&[0xa3, 0x01, 0x00, 0x00]),                   // a uint16
            meta(&[0xc3, 0x01]),                               // cut short
        ] {
            assert!(with_node_count(&bad, 65_536, 300).is_err(), "{bad:x?}");
        }
        // A new count that needs more bytes than the old one had.
        assert!(with_node_count(&meta(&[0xc1, 0x05]), 5, 300).is_err());
    }

    #[test]
    fn a_file_that_is_not_a_database_is_refused() {
        assert!(matches!(
            share_subtrees(b"not a database"),
            Err(ShareError::Open(_))
        ));
        // A tree whose one node points at itself: a path without end.
        let mut file = repeated(RecordSize::Bits24);
        let nodes = Reader::from_source(&file).unwrap().metadata().node_count as usize;
        file[..6].copy_from_slice(&[0, 0, 0, 0, 0, 0]);
        assert!(nodes > 1);
        let err = share_subtrees(&file).unwrap_err();
        assert!(err.to_string().contains("loops"), "{err}");
    }
}
