//! Path normalisation: never panics, and what it accepts can be appended
//! to a base URL safely (no dot segment, no control character, nothing
//! that ends the URL or starts a header), and is a fixed point.
#![no_main]

use distri_redirector::path::normalise;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|raw: &str| {
    let Ok(out) = normalise(raw) else { return };
    assert!(!out.starts_with('/'), "{out:?}");
    for seg in out.split('/') {
        assert!(seg != "." && seg != "..", "{out:?}");
    }
    assert!(
        out.bytes().all(|b| b.is_ascii_graphic() && b != b'?' && b != b'#' && b != b'\\'),
        "{out:?}"
    );
    let with_slash = format!("/{out}");
    let again = normalise(&with_slash).expect("canonical output normalises");
    assert_eq!(again, out, "not a fixed point");
});
