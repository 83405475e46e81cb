//! Small helpers shared by `auth` and `tls`: private-file writing, PEM encoding, UTC calendar dates.

use std::fs;
use std::io::{self, Write};
use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ring::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

/// Seconds since the Unix epoch, from the system clock.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// A UTC calendar date and time: (year, month 1-12, day 1-31, hour, minute, second).
pub(crate) fn utc_from_unix(secs: i64) -> (i64, u8, u8, u8, u8, u8) {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u8;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (
        year,
        month,
        day,
        (rem / 3600) as u8,
        (rem % 3600 / 60) as u8,
        (rem % 60) as u8,
    )
}

/// RFC 3339 in UTC, seconds precision (`2030-01-31T12:00:00Z`), for messages and logs.
pub(crate) fn rfc3339(secs: i64) -> String {
    let (y, mo, d, h, mi, s) = utc_from_unix(secs);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z")
}

/// PEM-encodes `der` with the given label (64-column base64 lines).
pub(crate) fn pem_encode(label: &str, der: &[u8]) -> String {
    let b64 = Zeroizing::new(STANDARD.encode(der));
    let mut out = String::with_capacity(b64.len() + b64.len() / 64 + 2 * label.len() + 40);
    out.push_str("-----BEGIN ");
    out.push_str(label);
    out.push_str("-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        // base64 output is ASCII.
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END ");
    out.push_str(label);
    out.push_str("-----\n");
    out
}

/// Writes `contents` to `path` without ever exposing a partial file: the bytes go to a temporary file in the
/// same directory (created with `mode`, synced), which is then linked in place. With `replace == false` an
/// existing `path` is left alone and the call fails with [`io::ErrorKind::AlreadyExists`]; with
/// `replace == true` it is atomically replaced.
pub(crate) fn write_file_atomic(
    path: &Path,
    contents: &[u8],
    mode: u32,
    replace: bool,
) -> io::Result<()> {
    let file_name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    let mut nonce = [0u8; 8];
    SystemRandom::new()
        .fill(&mut nonce)
        .map_err(|_| io::Error::other("no randomness"))?;
    let tmp = path.with_file_name(format!(".{file_name}.tmp-{}", hex::encode(nonce)));

    let result = (|| {
        let mut file = create_new_with_mode(&tmp, mode)?;
        file.write_all(contents)?;
        file.sync_all()?;
        drop(file);
        if replace {
            fs::rename(&tmp, path)
        } else {
            match fs::hard_link(&tmp, path) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Err(e),
                // Filesystems without hard links: fall back to a direct exclusive create.
                Err(_) => {
                    let mut file = create_new_with_mode(path, mode)?;
                    file.write_all(contents)?;
                    file.sync_all()
                }
            }
        }
    })();
    // After a rename the temporary name is gone already; otherwise clean it up.
    let _ = fs::remove_file(&tmp);
    if result.is_ok() {
        sync_parent_dir(path);
    }
    result
}

/// Persists the directory entry of `path`; not all platforms allow opening a directory, so failures are
/// ignored.
fn sync_parent_dir(path: &Path) {
    let _ = crate::store::sqlite::snapshot::sync_dir(path.parent().unwrap_or(Path::new("")));
}

fn create_new_with_mode(path: &Path, mode: u32) -> io::Result<fs::File> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    options.open(path)
}

/// Warns (once per load) when a private key file is readable by group or others.
pub(crate) fn warn_if_exposed(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = fs::metadata(path) {
            let mode = meta.permissions().mode();
            if mode & 0o077 != 0 {
                tracing::warn!(
                    path = %path.display(),
                    mode = format_args!("{:o}", mode & 0o777),
                    "private key file is accessible by group or others; chmod 600 it"
                );
            }
        }
    }
    #[cfg(not(unix))]
    let _ = path;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calendar() {
        assert_eq!(utc_from_unix(0), (1970, 1, 1, 0, 0, 0));
        assert_eq!(utc_from_unix(951_782_400), (2000, 2, 29, 0, 0, 0));
        assert_eq!(utc_from_unix(1_700_000_000), (2023, 11, 14, 22, 13, 20));
        assert_eq!(utc_from_unix(4_102_444_799), (2099, 12, 31, 23, 59, 59));
        assert_eq!(utc_from_unix(-1), (1969, 12, 31, 23, 59, 59));
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
    }

    #[test]
    fn atomic_write_replace_and_no_clobber() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f.pem");
        write_file_atomic(&p, b"one", 0o600, false).unwrap();
        let err = write_file_atomic(&p, b"two", 0o600, false).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(fs::read(&p).unwrap(), b"one");
        write_file_atomic(&p, b"three", 0o644, true).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"three");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn pem_lines() {
        let pem = pem_encode("X", &[0u8; 100]);
        let lines: Vec<&str> = pem.lines().collect();
        assert_eq!(lines[0], "-----BEGIN X-----");
        assert_eq!(lines[1].len(), 64);
        assert_eq!(lines.last().unwrap(), &"-----END X-----");
    }
}
