//! Noticing that a file the service reads has changed on disk: the config,
//! the GeoIP database, the TLS certificate and key.
//!
//! The folders holding them are watched (inotify through `notify`), not the
//! files: tools that refresh a file by writing a new one and renaming it
//! over the old (`geoipupdate`, npm, certbot's symlinks, most editors)
//! replace the inode a file watch would follow. Every event that names one
//! of the files calls back; the caller debounces and decides what changed.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use notify::{EventKind, RecursiveMode, Watcher};

/// A running watch; dropping it stops watching.
pub struct FileWatch {
    files: Vec<PathBuf>,
    _watcher: notify::RecommendedWatcher,
}

impl FileWatch {
    /// Watches `files`, calling `changed` from the watcher's thread for each
    /// event about any of them (several per change, usually).
    pub fn start(
        files: &[PathBuf],
        changed: impl Fn() + Send + 'static,
    ) -> Result<FileWatch, notify::Error> {
        let watched: Vec<(PathBuf, PathBuf)> = files.iter().map(|f| split(f)).collect();
        let names: HashSet<PathBuf> = watched.iter().map(|(d, n)| d.join(n)).collect();
        let mut watcher = notify::recommended_watcher(move |e: notify::Result<notify::Event>| {
            let Ok(e) = e else {
                // The watch itself had trouble (e.g. a queue overflow):
                // look at every file again rather than miss a change.
                return changed();
            };
            // Opening and reading (our own loads among them) change nothing.
            if matches!(e.kind, EventKind::Access(_)) {
                return;
            }
            if e.need_rescan() || e.paths.iter().any(|p| names.contains(p)) {
                changed();
            }
        })?;
        let dirs: HashSet<&PathBuf> = watched.iter().map(|(d, _)| d).collect();
        for d in dirs {
            watcher.watch(d, RecursiveMode::NonRecursive)?;
        }
        Ok(FileWatch {
            files: files.to_vec(),
            _watcher: watcher,
        })
    }

    /// The files this watch was started for.
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }
}

/// A file's folder (`.` for a bare name) and its name; events name files
/// as the watched folder joined with the name.
fn split(file: &Path) -> (PathBuf, PathBuf) {
    let dir = match file.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = file.file_name().map(PathBuf::from).unwrap_or_default();
    (dir, name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    /// A file renamed over a watched one is noticed.
    #[test]
    fn rename_over_is_seen() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("db.mmdb");
        std::fs::write(&file, "one").unwrap();
        let (tx, rx) = mpsc::channel();
        let _w = FileWatch::start(std::slice::from_ref(&file), move || {
            let _ = tx.send(());
        })
        .unwrap();
        let tmp = dir.path().join("db.mmdb.tmp");
        std::fs::write(&tmp, "two").unwrap();
        std::fs::rename(&tmp, &file).unwrap();
        rx.recv_timeout(Duration::from_secs(10))
            .expect("the rename is noticed");
    }

    #[test]
    fn bare_names_live_in_the_current_folder() {
        assert_eq!(
            split(Path::new("mirrors.toml")),
            (PathBuf::from("."), PathBuf::from("mirrors.toml"))
        );
        assert_eq!(
            split(Path::new("/etc/x/geo.mmdb")),
            (PathBuf::from("/etc/x"), PathBuf::from("geo.mmdb"))
        );
    }
}
