//! JSON written by hand on the hot paths (a GET's bundle, an audit line), byte for byte what `serde_json`
//! writes for the same values (each writer is tested against it): serde_json escapes every string, member
//! names included, one byte at a time, which made escaping the largest single cost of a GET after the
//! cryptography.

/// Appends `s` as a JSON string: copied as it is when nothing in it needs escaping (names, ids, hex digits:
/// the usual case), escaped by `serde_json` otherwise.
pub(crate) fn push_str(buf: &mut Vec<u8>, s: &str) {
    // What serde_json escapes: control characters, the quote and the backslash. A fold without an early
    // exit, which the compiler vectorises.
    let plain = s
        .bytes()
        .fold(true, |ok, b| ok & (b >= 0x20) & (b != b'"') & (b != b'\\'));
    if plain {
        buf.reserve(s.len() + 2);
        buf.push(b'"');
        buf.extend_from_slice(s.as_bytes());
        buf.push(b'"');
    } else {
        // Writing a string into memory cannot fail.
        let _ = serde_json::to_writer(&mut *buf, s);
    }
}

/// Appends an integer.
pub(crate) fn push_int(buf: &mut Vec<u8>, n: impl itoa::Integer) {
    buf.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_are_what_serde_writes() {
        let mut every_byte = String::new();
        for c in (0u8..=0x7f).map(char::from) {
            every_byte.push(c);
        }
        for s in [
            "",
            "plain-name-0123",
            "quote\"d",
            "back\\slash",
            "\u{0}\u{1f}\t\n\r\u{8}\u{c}",
            "del\u{7f} é ü 日本 🙂",
            "</script>&<>",
            every_byte.as_str(),
        ] {
            let mut buf = Vec::new();
            push_str(&mut buf, s);
            assert_eq!(buf, serde_json::to_vec(s).unwrap(), "{s:?}");
        }
    }

    #[test]
    fn integers_are_what_serde_writes() {
        for n in [0i64, 1, -1, i64::MIN, i64::MAX, 1_795_000_123] {
            let mut buf = Vec::new();
            push_int(&mut buf, n);
            assert_eq!(buf, serde_json::to_vec(&n).unwrap());
        }
    }
}
