//! Every input a fuzz target (`fuzz/`) found a fault with, run through
//! what that target runs, in the normal suite: `tests/fuzz_regressions/
//! TARGET/` holds them, named for what went wrong.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use distri_redirector::geoip::GeoDb;

fn inputs(target: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fuzz_regressions")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
}

/// Runs `f` on another thread; a hang fails the test instead of holding it.
fn within(what: &Path, f: impl FnOnce() + Send + 'static) {
    let (done, wait) = mpsc::channel();
    std::thread::spawn(move || {
        f();
        let _ = done.send(());
    });
    wait.recv_timeout(Duration::from_secs(60))
        .unwrap_or_else(|_| panic!("{}: still running after 60 s", what.display()));
}

/// A database of these bytes, opened as a configured (or reloaded) file
/// is, is refused or answers lookups.
#[test]
fn geoip_inputs_are_refused_or_answer_without_hanging() {
    for path in inputs("geoip") {
        let p = path.clone();
        within(&path, move || {
            let db = match GeoDb::open_all(std::slice::from_ref(&p)) {
                Ok(db) => Some(db),
                Err(e) => {
                    assert!(!e.to_string().is_empty());
                    GeoDb::from_bytes(std::fs::read(&p).unwrap()).ok()
                }
            };
            for ip in ["1.2.3.4", "2001:db8::1", "::ffff:1.2.3.4"] {
                if let Some(db) = &db {
                    let _ = db.lookup(ip.parse::<IpAddr>().unwrap());
                }
            }
        });
    }
}
