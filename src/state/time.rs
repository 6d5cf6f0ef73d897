//! UTC timestamps in RFC 3339, for state files and locks.

use std::time::{Duration, SystemTime};

use aws_smithy_types::date_time::{DateTime, Format};

pub fn now_rfc3339() -> String {
    rfc3339(SystemTime::now())
}

/// The instant `seconds` from now.
pub fn rfc3339_in(seconds: u64) -> String {
    rfc3339(SystemTime::now() + Duration::from_secs(seconds))
}

/// Formats a time as RFC 3339 UTC, to the second.
pub fn rfc3339(time: SystemTime) -> String {
    let seconds = time.duration_since(SystemTime::UNIX_EPOCH).unwrap_or(Duration::ZERO).as_secs();
    DateTime::from_secs(seconds as i64).fmt(Format::DateTime).unwrap_or_default()
}

/// Parses an RFC 3339 UTC time (as kstack writes in locks and tags).
pub fn parse_rfc3339(text: &str) -> Option<SystemTime> {
    let time = DateTime::from_str(text, Format::DateTime).ok()?;
    SystemTime::try_from(time).ok()
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    fn at(seconds: u64) -> String {
        super::rfc3339(UNIX_EPOCH + Duration::from_secs(seconds))
    }

    #[test]
    fn formats_known_instants() {
        assert_eq!(at(0), "1970-01-01T00:00:00Z");
        assert_eq!(at(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(at(1_795_478_400 + 3_723), "2026-11-24T01:02:03Z");
        assert_eq!(super::parse_rfc3339("2026-11-24T01:02:03Z"), Some(UNIX_EPOCH + Duration::from_secs(1_795_478_400 + 3_723)));
    }
}
