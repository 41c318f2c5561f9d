//! A GeoIP database of arbitrary bytes, as a reload might find on disk: it
//! goes through the same opening as a configured file (the flat IPv4 table,
//! the check that both families are covered), and is refused or loaded,
//! never a panic or a hang; lookups on what loads answer.
#![no_main]

use std::net::IpAddr;
use std::path::PathBuf;

use distri_redirector::geoip::GeoDb;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let path = std::env::temp_dir().join(format!("fuzz-geoip-{}.mmdb", std::process::id()));
    std::fs::write(&path, bytes).unwrap();
    let opened = GeoDb::open_all(&[PathBuf::from(&path)]);
    let db = match opened {
        Ok(db) => db,
        Err(e) => {
            let _ = e.to_string();
            match GeoDb::from_bytes(bytes.to_vec()) {
                Ok(db) => db,
                Err(_) => return,
            }
        }
    };
    for ip in ["1.2.3.4", "255.255.255.255", "0.0.0.0", "2001:db8::1", "::ffff:1.2.3.4", "::"] {
        let _ = db.lookup(ip.parse::<IpAddr>().unwrap());
    }
});
