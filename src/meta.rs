//! distri's repository index, `meta.binaryproto`: one entry per package
//! image in a `pkg/` (or `debug/`, `src/`) directory.
//!
//! Declared by hand from distri's proto2 schema:
//! `message MirrorMeta { message Package { optional string name = 1;
//! repeated string well_known_path = 2; } repeated Package package = 1; }`

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
