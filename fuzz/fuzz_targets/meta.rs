//! The `meta.binaryproto` decoder: never panics, and every name it keeps is
//! a plain file name.
#![no_main]

use distri_redirector::meta::decode_names;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|body: &[u8]| {
    let Ok(names) = decode_names(body) else { return };
    for n in names {
        assert!(!n.is_empty() && !n.contains('/') && n != "." && n != "..", "{n:?}");
    }
});
