//! Time on the TOP wire: `yyyy-MM-dd HH:mm:ss` in GMT+8, whatever the host's zone.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use time::format_description::FormatItem;
use time::macros::{format_description, offset};
use time::{OffsetDateTime, PrimitiveDateTime, UtcOffset};

/// China Standard Time; the gateway and `pub_time` use it.
pub const GMT8: UtcOffset = offset!(+8);

const WIRE: &[FormatItem<'static>] =
    format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");
const RFC3339_SECONDS: &[FormatItem<'static>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]+08:00");

/// Formats an instant as the gateway's `timestamp` parameter. Pure: the caller passes the time.
pub fn wire_timestamp(at: SystemTime) -> String {
    OffsetDateTime::from(at)
        .to_offset(GMT8)
        .format(WIRE)
        .unwrap_or_else(|_| "1970-01-01 08:00:00".to_owned())
}

/// Parses a wire time (`yyyy-MM-dd HH:mm:ss`, GMT+8) into an instant.
pub fn parse_wire_time(s: &str) -> Option<SystemTime> {
    let t = PrimitiveDateTime::parse(s.trim(), WIRE).ok()?;
    Some(t.assume_offset(GMT8).into())
}

/// Turns a `pub_time` into RFC 3339 with an explicit `+08:00`, or `None` when it is not a
/// wire time.
pub fn pub_time_rfc3339(s: &str) -> Option<String> {
    let t = PrimitiveDateTime::parse(s.trim(), WIRE).ok()?;
    t.assume_offset(GMT8).format(RFC3339_SECONDS).ok()
}

/// Milliseconds since the Unix epoch (saturating at zero before it).
pub fn epoch_millis(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_millis() as u64
}

/// Seconds since the Unix epoch (saturating at zero before it).
pub fn epoch_secs(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    /// 2016-01-01 04:00:00 UTC is noon in GMT+8.
    #[test]
    fn formats_in_gmt8() {
        assert_eq!(wire_timestamp(at(1_451_620_800)), "2016-01-01 12:00:00");
    }

    /// A day boundary in UTC is mid-morning of the next day in GMT+8.
    #[test]
    fn crosses_the_date_line() {
        // 2021-01-28 16:00:00 UTC
        assert_eq!(wire_timestamp(at(1_611_849_600)), "2021-01-29 00:00:00");
    }

    /// Wire times parse back to the same instant and render as RFC 3339 with +08:00.
    #[test]
    fn parses_and_renders_pub_time() {
        assert_eq!(
            parse_wire_time("2016-01-01 12:00:00"),
            Some(at(1_451_620_800))
        );
        assert_eq!(
            pub_time_rfc3339("2013-10-05 10:55:58").as_deref(),
            Some("2013-10-05T10:55:58+08:00")
        );
        assert_eq!(pub_time_rfc3339("yesterday"), None);
        assert_eq!(pub_time_rfc3339("2013-13-05 10:55:58"), None);
    }
}
