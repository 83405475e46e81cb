//! The service's rules for names and sizes (protocol.md §2, §10).

/// Largest secret value, in bytes of UTF-8 ("maximum size of 25k bytes").
pub const MAX_VALUE_BYTES: usize = 25 * 1024;
/// Longest content type, in characters.
pub const MAX_CONTENT_TYPE_CHARS: usize = 255;
/// Most tags on one secret.
pub const MAX_TAGS: usize = 15;
/// Longest tag name, in characters.
pub const MAX_TAG_NAME_CHARS: usize = 512;
/// Longest tag value, in characters.
pub const MAX_TAG_VALUE_CHARS: usize = 512;
/// Longest secret name.
pub const MAX_NAME_CHARS: usize = 127;
/// Page size bounds for `maxresults`.
pub const MIN_PAGE_SIZE: u32 = 1;
pub const MAX_PAGE_SIZE: u32 = 25;
/// Most versions one backup may carry.
pub const MAX_BACKUP_VERSIONS: usize = 500;
/// Soft-delete retention bounds, in days.
pub const MIN_RETENTION_DAYS: u32 = 7;
pub const MAX_RETENTION_DAYS: u32 = 90;

/// Whether `name` is a valid object name: `^[0-9a-zA-Z-]{1,127}$`.
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_CHARS
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// Whether `version` is a version id as the service issues them: 32 lowercase (or uppercase) hex digits.
pub fn is_valid_version(version: &str) -> bool {
    version.len() == 32 && version.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The time (Unix milliseconds) a version id carries, if it is laid out as this project's server makes them:
/// a UUIDv7 without dashes (48 bits of time, the version nibble `7`, the variant bits `10`), so that ids sort
/// in the order their versions were made. None for other ids; random ids (Key Vault's, earlier releases')
/// look like this layout one time in 64, with any time up to the year 10889.
pub fn time_ordered_version_ms(version: &str) -> Option<u64> {
    let b = version.as_bytes();
    let shaped = is_valid_version(version)
        && b[12] == b'7'
        && matches!(b[16], b'8' | b'9' | b'a' | b'b' | b'A' | b'B');
    shaped.then(|| u64::from_str_radix(&version[..12], 16).ok())?
}

/// The key under which a name is stored and compared: names are case-insensitive.
pub fn name_key(name: &str) -> String {
    name.to_ascii_lowercase()
}

/// Characters that change how text displays without showing themselves: Unicode's format characters (general
/// category Cf) that occur in text — soft hyphen, zero-width spaces and joiners, directional marks, embeddings,
/// overrides and isolates, invisible operators, the byte-order mark, tags —, the line and paragraph
/// separators, and the other default-ignorable characters that display as nothing in any text (the combining
/// grapheme joiner, Hangul fillers, Khmer inherent vowels, the tag block's unassigned rest up to U+E0FFF). Not
/// the variation selectors (emoji use them) nor other spaces (a Japanese name has its full-width one).
/// (`char::is_control` covers only category Cc.) The server refuses them in names people compare (roles,
/// principals); the CLI escapes them when it prints.
pub fn is_invisible_format(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}'
            | '\u{034F}'
            | '\u{061C}'
            | '\u{115F}'..='\u{1160}'
            | '\u{17B4}'..='\u{17B5}'
            | '\u{180E}'
            | '\u{200B}'..='\u{200F}'
            | '\u{2028}'..='\u{202E}'
            | '\u{2060}'..='\u{206F}'
            | '\u{3164}'
            | '\u{FEFF}'
            | '\u{FFA0}'
            | '\u{FFF0}'..='\u{FFFB}'
            | '\u{1BCA0}'..='\u{1BCA3}'
            | '\u{1D173}'..='\u{1D17A}'
            | '\u{E0000}'..='\u{E00FF}'
            | '\u{E01F0}'..='\u{E0FFF}'
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_ordered_versions() {
        assert_eq!(
            time_ordered_version_ms("019af0c1d2e37a4b8c5d6e7f80912345"),
            Some(0x019af0c1d2e3)
        );
        assert!(time_ordered_version_ms("019AF0C1D2E37A4BBC5D6E7F80912345").is_some());
        // Random hex (a 4 and a c where the layout has its 7 and variant), the wrong length, not hex.
        assert_eq!(
            time_ordered_version_ms("4f112f638867c4cf3dbfb9fc91c243d4"),
            None
        );
        assert_eq!(
            time_ordered_version_ms("019af0c1d2e37a4bcc5d6e7f80912345"),
            None
        );
        assert_eq!(
            time_ordered_version_ms("019af0c1d2e37a4b8c5d6e7f8091234"),
            None
        );
        assert_eq!(
            time_ordered_version_ms("019af0c1d2e37a4b8c5d6e7f8091234g"),
            None
        );
    }

    #[test]
    fn names() {
        assert!(is_valid_name("a"));
        assert!(is_valid_name("0-start-with-digit"));
        assert!(is_valid_name("-dash"));
        assert!(is_valid_name(&"x".repeat(127)));
        assert!(!is_valid_name(&"x".repeat(128)));
        assert!(!is_valid_name(""));
        assert!(!is_valid_name("under_score"));
        assert!(!is_valid_name("dot.name"));
        assert!(!is_valid_name("ünïcode"));
        assert!(!is_valid_name("sp ace"));
    }

    #[test]
    fn versions() {
        assert!(is_valid_version("968bc1b35f5449dfaf7109294020deb5"));
        assert!(!is_valid_version("968bc1b35f5449dfaf7109294020deb"));
        assert!(!is_valid_version("968bc1b35f5449dfaf7109294020debz"));
    }
}
