//! Request paths: one canonical form, or a refusal.
//!
//! Repeated slashes collapse (the distri client sends `pkg//meta.binaryproto`),
//! percent-encoding is decoded once and re-encoded canonically, and anything
//! that could step outside a base URL or into a header is refused: `.` and
//! `..` segments (also encoded), NUL and other control characters, an encoded
//! `/` inside a segment, malformed escapes and invalid UTF-8. The result can
//! be appended to any base URL ending in `/`.

use std::borrow::Cow;
use std::fmt;

/// Why a path is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathError {
    NotAbsolute,
    DotSegment,
    ControlCharacter,
    EncodedSlash,
    BadEscape,
    InvalidUtf8,
}

impl PathError {
    /// The explanation sent to the client as the body of the 400.
    pub fn as_str(&self) -> &'static str {
        match self {
            PathError::NotAbsolute => "the path must start with /",
            PathError::DotSegment => "the path has a . or .. segment",
            PathError::ControlCharacter => "the path has a NUL or control character",
            PathError::EncodedSlash => "the path has an encoded / inside a segment",
            PathError::BadEscape => "the path has a malformed %-escape",
            PathError::InvalidUtf8 => "the path is not valid UTF-8",
        }
    }
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// RFC 3986 `pchar` minus `%`: bytes that stand for themselves in the
/// canonical form. Everything else is percent-encoded.
const PLAIN: [bool; 256] = {
    let mut t = [false; 256];
    let mut c = 0;
    while c < 256 {
        let b = c as u8;
        t[c] = b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
                    | b':'
                    | b'@'
            );
        c += 1;
    }
    t
};

fn is_plain(b: u8) -> bool {
    PLAIN[b as usize]
}

/// The canonical form of `raw`, without its leading `/`. Borrows when the
/// path is already canonical, which is the common case.
pub fn normalise(raw: &str) -> Result<Cow<'_, str>, PathError> {
    let rest = raw.strip_prefix('/').ok_or(PathError::NotAbsolute)?;
    if is_canonical(rest) {
        return Ok(Cow::Borrowed(rest));
    }
    let mut out = String::with_capacity(rest.len());
    let mut decoded = Vec::new();
    for seg in rest.split('/').filter(|s| !s.is_empty()) {
        decode(seg, &mut decoded)?;
        check_segment(&decoded)?;
        if !out.is_empty() {
            out.push('/');
        }
        encode(&decoded, &mut out);
    }
    if rest.ends_with('/') && !out.is_empty() {
        out.push('/');
    }
    Ok(Cow::Owned(out))
}

/// True when `rest` needs no rewriting: plain bytes only, no empty or dot
/// segments (an empty last segment, a trailing slash, is kept). One pass:
/// this runs on every request.
fn is_canonical(rest: &str) -> bool {
    let b = rest.as_bytes();
    let mut start = 0;
    for (i, &c) in b.iter().enumerate() {
        if c == b'/' {
            let seg = &b[start..i];
            if seg.is_empty() || seg == b"." || seg == b".." {
                return false;
            }
            start = i + 1;
        } else if !is_plain(c) {
            return false;
        }
    }
    let last = &b[start..];
    last != b"." && last != b".."
}

fn decode(seg: &str, out: &mut Vec<u8>) -> Result<(), PathError> {
    out.clear();
    let b = seg.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b.get(i + 1..i + 3).ok_or(PathError::BadEscape)?;
            let hex = std::str::from_utf8(hex).map_err(|_| PathError::BadEscape)?;
            let v = u8::from_str_radix(hex, 16).map_err(|_| PathError::BadEscape)?;
            if v == b'/' {
                return Err(PathError::EncodedSlash);
            }
            out.push(v);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Ok(())
}

fn check_segment(seg: &[u8]) -> Result<(), PathError> {
    if seg == b"." || seg == b".." {
        return Err(PathError::DotSegment);
    }
    if seg.iter().any(|&c| c < 0x20 || c == 0x7f) {
        return Err(PathError::ControlCharacter);
    }
    std::str::from_utf8(seg).map_err(|_| PathError::InvalidUtf8)?;
    Ok(())
}

fn encode(seg: &[u8], out: &mut String) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &c in seg {
        if is_plain(c) {
            out.push(c as char);
        } else {
            out.push('%');
            out.push(HEX[(c >> 4) as usize] as char);
            out.push(HEX[(c & 15) as usize] as char);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn canonical_paths_are_borrowed() {
        for p in [
            "/distri/jackherer/pkg/bash-amd64-5.0-4.squashfs",
            "/",
            "/distri/",
            "/a:b@c+d",
        ] {
            assert!(matches!(normalise(p), Ok(Cow::Borrowed(_))), "{p}");
            assert_eq!(normalise(p).unwrap(), &p[1..]);
        }
    }

    #[test]
    fn rewrites() {
        let cases = [
            (
                "/distri/jackherer/pkg//meta.binaryproto",
                "distri/jackherer/pkg/meta.binaryproto",
            ),
            ("//distri///x/", "distri/x/"),
            ("/a%41b", "aAb"),
            ("/a%2e%2Eb", "a..b"),
            ("/with space", "with%20space"),
            ("/caf%C3%A9", "caf%C3%A9"),
            ("/caf%c3%a9", "caf%C3%A9"),
            ("/q%3Fx%23y%25", "q%3Fx%23y%25"),
        ];
        for (raw, want) in cases {
            assert_eq!(normalise(raw).unwrap(), want, "{raw}");
        }
    }

    #[test]
    fn refusals() {
        let cases = [
            ("distri", PathError::NotAbsolute),
            ("/a/./b", PathError::DotSegment),
            ("/a/../b", PathError::DotSegment),
            ("/a/%2e%2e/b", PathError::DotSegment),
            ("/a/%2E/b", PathError::DotSegment),
            ("/..", PathError::DotSegment),
            ("/a%00b", PathError::ControlCharacter),
            ("/a%0d%0aLocation:x", PathError::ControlCharacter),
            ("/a%7f", PathError::ControlCharacter),
            ("/a%2fb", PathError::EncodedSlash),
            ("/a%2Fb", PathError::EncodedSlash),
            ("/a%zz", PathError::BadEscape),
            ("/a%4", PathError::BadEscape),
            ("/a%ff", PathError::InvalidUtf8),
        ];
        for (raw, want) in cases {
            assert_eq!(normalise(raw), Err(want), "{raw}");
        }
    }

    proptest! {
        /// Whatever comes in, what goes out is safe to append to a base URL.
        #[test]
        fn output_is_always_safe(raw in "/[a-zA-Z0-9%./\\-_~ \r\n\x00?#:@]{0,40}") {
            if let Ok(p) = normalise(&raw) {
                let location = format!("https://mirror.example.org/base/{p}");
                prop_assert!(location.starts_with("https://mirror.example.org/base/"));
                prop_assert!(!p.split('/').any(|s| s == ".." || s == "."));
                prop_assert!(!p.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0 || b == b'?' || b == b'#'));
                prop_assert!(!p.starts_with('/') && !p.contains("//"));
                // Normalising twice changes nothing.
                let again = format!("/{p}");
                prop_assert_eq!(normalise(&again).unwrap(), p.clone());
            }
        }
    }
}
