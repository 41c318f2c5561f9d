//! Configuration text: never panics, whatever the text (run from the
//! repository's root, so the shipped files it names are readable).
#![no_main]

use std::path::Path;

use distri_redirector::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    if let Err(e) = Config::parse(Path::new("mirrors.toml"), text) {
        // Every refusal renders: file, line, column and key.
        let _ = e.to_string();
    }
});
