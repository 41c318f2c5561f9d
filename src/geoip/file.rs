//! A database file's bytes: mapped from a private copy, so that a city
//! database costs resident memory only for the pages lookups touch, not
//! its whole size on the heap.
//!
//! Mapping the operator's file itself would be unsound: `cp new.mmdb
//! city.mmdb` truncates and rewrites it in place, and a lookup touching a
//! page past the new end would kill the process with SIGBUS. So the file is
//! copied first into an anonymous temporary file (unlinked at creation:
//! only this process holds it, nobody can change it) and that is mapped.
//! The copy is sequential and from the page cache: about 40 ms for 70 MB.
//! It goes to `TMPDIR`, which should be on disk: in a tmpfs the copy
//! takes its whole size in RAM (the systemd unit sets `/var/tmp`).
//! Where no temporary file can be made, the bytes are read onto the heap.

use std::fs::File;
use std::io;
use std::path::Path;
use std::sync::Arc;

/// A database's bytes, cheap to clone: the reader and the flat table's
/// build share them.
#[derive(Clone)]
pub struct Bytes(Arc<Held>);

enum Held {
    Heap(Vec<u8>),
    Mapped(memmap2::Mmap),
}

impl AsRef<[u8]> for Bytes {
    fn as_ref(&self) -> &[u8] {
        match &*self.0 {
            Held::Heap(v) => v,
            Held::Mapped(m) => m,
        }
    }
}

/// Where a database's bytes come from, kept so that they can be mapped
/// afresh (see [`Source::bytes`]).
pub enum Source {
    Copy(File),
    Heap(Bytes),
}

impl Source {
    /// The file at `path`, copied privately; read onto the heap when the
    /// copy cannot be made.
    pub fn open(path: &Path) -> io::Result<Source> {
        let mut from = File::open(path)?;
        match tempfile::tempfile() {
            Ok(mut copy) => {
                io::copy(&mut from, &mut copy)?;
                Ok(Source::Copy(copy))
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e,
                    "geoip: no temporary file for a private copy; reading the database onto the heap");
                let mut bytes = Vec::new();
                io::Read::read_to_end(&mut from, &mut bytes)?;
                Ok(Source::Heap(Bytes::heap(bytes)))
            }
        }
    }

    /// The bytes. Each call on a copy maps it anew: a fresh mapping has
    /// no resident pages, so the pages a full walk touched at the start
    /// stop counting once that walk's mapping is dropped. `whole` maps
    /// every page at once, for that walk (one call instead of a page
    /// fault per 4 KiB).
    pub fn bytes(&self, whole: bool) -> io::Result<Bytes> {
        match self {
            Source::Copy(file) => map(file, whole),
            Source::Heap(b) => Ok(b.clone()),
        }
    }
}

impl Bytes {
    pub fn heap(bytes: Vec<u8>) -> Bytes {
        Bytes(Arc::new(Held::Heap(bytes)))
    }
}

#[allow(unsafe_code)]
fn map(file: &File, whole: bool) -> io::Result<Bytes> {
    if file.metadata()?.len() == 0 {
        return Ok(Bytes::heap(Vec::new()));
    }
    // SAFETY: the mapping is only unsound if the file changes underneath
    // it. This file is an unlinked temporary file that only this process
    // holds and never writes after the copy, so it cannot change.
    let mut options = memmap2::MmapOptions::new();
    if whole {
        options.populate();
    }
    let map = unsafe { options.map(file)? };
    Ok(Bytes(Arc::new(Held::Mapped(map))))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The copy is private: rewriting the file in place (as `cp` does)
    /// changes nothing already open, and maps see the bytes of the open.
    #[test]
    fn the_copy_does_not_follow_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.mmdb");
        std::fs::write(&path, b"first version").unwrap();
        let source = Source::open(&path).unwrap();
        assert!(matches!(source, Source::Copy(_)));
        let before = source.bytes(true).unwrap();
        std::fs::write(&path, b"x").unwrap();
        assert_eq!(before.as_ref(), b"first version");
        assert_eq!(source.bytes(false).unwrap().as_ref(), b"first version");
    }
}
