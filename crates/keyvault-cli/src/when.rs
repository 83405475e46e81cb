//! Dates on the command line: RFC 3339, a bare date, or a duration from now (`30d`, `12h`).

use time::format_description::well_known::Rfc3339;
use time::{Duration, OffsetDateTime, UtcOffset};

/// The help text of WHEN arguments (a macro so that `concat!` can use it).
macro_rules! when_help {
    () => {
        "WHEN is an RFC 3339 time (2030-01-31T12:00:00Z), a date (2030-01-31, midnight UTC), or a time \
         from now: a number and a unit s, m, h, d or w (90m, 12h, 30d, 2w)."
    };
}

/// Parse WHEN relative to `now`.
pub fn parse_when(s: &str, now: OffsetDateTime) -> Result<OffsetDateTime, String> {
    let s = s.trim();
    let bad = || {
        format!(
            "invalid date '{s}': expected an RFC 3339 time (2030-01-31T12:00:00Z), a date (2030-01-31) \
             or a duration from now (30d, 12h, 90m, 2w)"
        )
    };
    if let Ok(t) = OffsetDateTime::parse(s, &Rfc3339) {
        return Ok(t.to_offset(UtcOffset::UTC));
    }
    if let Some(t) = parse_date(s) {
        return Ok(t);
    }
    let digits = s.strip_prefix('+').unwrap_or(s);
    let split = digits.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (n, unit) = digits.split_at(split);
    let n: i64 = n.parse().map_err(|_| bad())?;
    let per_unit = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => return Err(bad()),
    };
    n.checked_mul(per_unit)
        .and_then(|secs| now.checked_add(Duration::seconds(secs)))
        .ok_or_else(bad)
}

/// `YYYY-MM-DD` at midnight UTC.
fn parse_date(s: &str) -> Option<OffsetDateTime> {
    let mut parts = s.split('-');
    let (y, m, d) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || y.len() != 4 || m.len() != 2 || d.len() != 2 {
        return None;
    }
    let month = time::Month::try_from(m.parse::<u8>().ok()?).ok()?;
    let date = time::Date::from_calendar_date(y.parse().ok()?, month, d.parse().ok()?).ok()?;
    Some(date.midnight().assume_utc())
}

/// RFC 3339 in UTC, seconds precision.
pub fn format(t: OffsetDateTime) -> String {
    let t = t.to_offset(UtcOffset::UTC);
    let t = t.replace_nanosecond(0).unwrap_or(t);
    t.format(&Rfc3339)
        .unwrap_or_else(|_| t.unix_timestamp().to_string())
}

/// A clap value parser for WHEN.
pub fn when_arg(s: &str) -> Result<OffsetDateTime, String> {
    parse_when(s, OffsetDateTime::now_utc())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms() {
        let now = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        let p = |s| parse_when(s, now).map(|t| t.unix_timestamp());
        assert_eq!(p("30d"), Ok(1_700_000_000 + 30 * 86_400));
        assert_eq!(p("+12h"), Ok(1_700_000_000 + 12 * 3600));
        assert_eq!(p("90m"), Ok(1_700_000_000 + 90 * 60));
        assert_eq!(p("2w"), Ok(1_700_000_000 + 14 * 86_400));
        assert_eq!(p("2030-01-01T00:00:00Z"), Ok(1_893_456_000));
        assert_eq!(p("2030-01-01T01:00:00+01:00"), Ok(1_893_456_000));
        assert_eq!(p("2030-01-01"), Ok(1_893_456_000));
        for bad in ["", "d", "30", "30y", "2030-13-01", "tomorrow", "-5d"] {
            assert!(p(bad).is_err(), "{bad}");
        }
        assert_eq!(
            format(OffsetDateTime::from_unix_timestamp(1_893_456_000).unwrap()),
            "2030-01-01T00:00:00Z"
        );
    }
}
