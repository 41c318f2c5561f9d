//! The client's address from forwarding headers: never panics, and an
//! untrusted peer's headers are never believed.
#![no_main]

use std::net::IpAddr;

use distri_redirector::client::sender;
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;

const NAMES: [&str; 3] = ["x-forwarded-for", "forwarded", "x-forwarded-proto"];

fuzz_target!(|data: &[u8]| {
    // Header values separated by 0xff (which no value may contain), the
    // first byte choosing each value's header.
    let mut headers = HeaderMap::new();
    for chunk in data.split(|&b| b == 0xff) {
        let Some((&which, value)) = chunk.split_first() else { continue };
        let Ok(value) = HeaderValue::from_bytes(value) else { continue };
        let name = HeaderName::from_static(NAMES[which as usize % NAMES.len()]);
        headers.append(name, value);
    }
    let trusted: Vec<ipnet::IpNet> = vec![
        "127.0.0.0/8".parse().unwrap(),
        "10.0.0.0/8".parse().unwrap(),
        "::1/128".parse().unwrap(),
    ];
    let proxy: IpAddr = "127.0.0.1".parse().unwrap();
    let _ = sender(proxy, false, &headers, &trusted);
    let stranger: IpAddr = "192.0.2.1".parse().unwrap();
    let s = sender(stranger, false, &headers, &trusted);
    assert_eq!(s.ip, stranger, "an untrusted peer's headers were believed");
    assert!(!s.https, "an untrusted peer's proto was believed");
});
