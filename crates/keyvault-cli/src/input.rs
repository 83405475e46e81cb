//! What commands read from a file or standard input, bounded: a value, a backup or an import file larger than
//! any the vault takes is refused once that much has been read, before any request (`--file /dev/zero` or
//! `yes |` would otherwise fill the memory, and an oversized body is cut off by the server mid-request).

use crate::errors::{CliError, CliResult};
use std::io::Read;
use std::path::Path;

/// Reads `path` (`-`: standard input) whole, refusing more than `limit` bytes. Returns the bytes and how to
/// name their source in messages (`standard input`, or the path in quotes).
pub fn read_bounded(path: &Path, limit: usize, what: &str) -> CliResult<(Vec<u8>, String)> {
    if path == Path::new("-") {
        let from = "standard input".to_string();
        let bytes = read_from(std::io::stdin().lock(), limit, what, &from)?;
        Ok((bytes, from))
    } else {
        let bytes = read_file(path, limit, &path.display().to_string(), what)?;
        Ok((bytes, format!("'{}'", path.display())))
    }
}

/// Reads the file at `path` whole, refusing more than `limit` bytes (`what`: what may be that long), without
/// reading a regular file whose size is already too large. `described` names the file in messages.
pub fn read_file(path: &Path, limit: usize, described: &str, what: &str) -> CliResult<Vec<u8>> {
    let file = std::fs::File::open(path)
        .map_err(|e| CliError::bad_input(format!("cannot read {described}: {e}")))?;
    if file
        .metadata()
        .is_ok_and(|m| m.is_file() && m.len() > limit as u64)
    {
        return Err(too_long(described, what));
    }
    read_from(file, limit, what, described)
}

fn read_from(input: impl Read, limit: usize, what: &str, from: &str) -> CliResult<Vec<u8>> {
    let mut bytes = Vec::new();
    input
        .take(limit as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| CliError::bad_input(format!("cannot read {from}: {e}")))?;
    if bytes.len() > limit {
        return Err(too_long(from, what));
    }
    Ok(bytes)
}

fn too_long(from: &str, what: &str) -> CliError {
    CliError::bad_input(format!("{from} is longer than {what}; nothing was sent"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_up_to_the_limit_is_read_and_past_it_refused() {
        let ok = read_from(&[7u8; 10][..], 10, "a value", "'f'").unwrap();
        assert_eq!(ok, vec![7u8; 10]);
        let e = read_from(std::io::repeat(0), 10, "a value may be", "'f'").unwrap_err();
        assert_eq!(e.code, crate::errors::code::BAD_INPUT);
        assert_eq!(
            e.to_string(),
            "'f' is longer than a value may be; nothing was sent"
        );
    }
}
