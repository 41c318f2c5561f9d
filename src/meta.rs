//! distri's repository index, `meta.binaryproto`: one entry per package
//! image in a `pkg/` (or `debug/`, `src/`) directory.
//!
//! Declared by hand from distri's proto2 schema:
//! `message MirrorMeta { message Package { optional string name = 1;
//! repeated string well_known_path = 2; } repeated Package package = 1; }`

use std::fmt;

use prost::Message;

#[derive(Clone, PartialEq, prost::Message)]
pub struct MirrorMeta {
    #[prost(message, repeated, tag = "1")]
    pub package: Vec<Package>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Package {
    /// The file name without `.squashfs`, e.g. `bash-amd64-5.0-4`.
    #[prost(string, optional, tag = "1")]
    pub name: Option<String>,
    #[prost(string, repeated, tag = "2")]
    pub well_known_path: Vec<String>,
}

/// Package names in index order, skipping entries without a usable name
/// (empty, or with a `/` that would leave `pkg/`).
pub fn decode_names(body: &[u8]) -> Result<Vec<String>, prost::DecodeError> {
    let meta = MirrorMeta::decode(body)?;
    Ok(meta
        .package
        .into_iter()
        .filter_map(|p| p.name)
        .filter(|n| !n.is_empty() && !n.contains('/') && n != "." && n != "..")
        .collect())
}

/// The trees of a release, each with its own `meta.binaryproto`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Tree {
    Pkg,
    Debug,
    Src,
}

impl Tree {
    pub const ALL: [Tree; 3] = [Tree::Pkg, Tree::Debug, Tree::Src];

    pub fn as_str(self) -> &'static str {
        match self {
            Tree::Pkg => "pkg",
            Tree::Debug => "debug",
            Tree::Src => "src",
        }
    }

    pub fn from_dir(dir: &str) -> Option<Tree> {
        Tree::ALL.into_iter().find(|t| t.as_str() == dir)
    }

    /// The tree's index, relative to the server root.
    pub fn index_path(self, release: &str) -> String {
        format!("distri/{release}/{}/meta.binaryproto", self.as_str())
    }
}

impl fmt::Display for Tree {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One decoded index, identified by the SHA-256 of its bytes: the image
/// names it lists, sorted. Mirrors at the same sync point share one
/// (interned by the prober), so holding many costs little.
#[derive(Debug)]
pub struct Listing {
    pub sha256: [u8; 32],
    names: Box<[Box<str>]>,
}

impl Listing {
    pub fn new(sha256: [u8; 32], names: impl IntoIterator<Item = String>) -> Listing {
        let mut names: Vec<Box<str>> = names.into_iter().map(String::into_boxed_str).collect();
        names.sort_unstable();
        names.dedup();
        Listing {
            sha256,
            names: names.into_boxed_slice(),
        }
    }

    /// Names in sort order (the order an rsync fills a directory in).
    pub fn names(&self) -> &[Box<str>] {
        &self.names
    }

    pub fn contains(&self, name: &str) -> bool {
        self.names.binary_search_by(|n| (**n).cmp(name)).is_ok()
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// The first bytes of the hash, in hex: enough to tell generations apart.
    pub fn short_id(&self) -> String {
        self.sha256[..4]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

/// Listings are the same when their bytes were.
impl PartialEq for Listing {
    fn eq(&self, other: &Listing) -> bool {
        self.sha256 == other.sha256
    }
}

/// Encodes an index listing `names` (for generated trees).
pub fn encode_names<S: AsRef<str>>(names: &[S]) -> Vec<u8> {
    MirrorMeta {
        package: names
            .iter()
            .map(|n| Package {
                name: Some(n.as_ref().to_string()),
                well_known_path: vec![format!("/ro/{}/bin", n.as_ref())],
            })
            .collect(),
    }
    .encode_to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_filtering() {
        let body = encode_names(&["bash-amd64-5.0-4", "", "../x", "zsh-amd64-5.8-1"]);
        assert_eq!(
            decode_names(&body).unwrap(),
            ["bash-amd64-5.0-4", "zsh-amd64-5.8-1"]
        );
        assert!(decode_names(b"\x0a\xff").is_err());
    }
}
