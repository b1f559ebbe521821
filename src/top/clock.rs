//! Time on the TOP wire: `yyyy-MM-dd HH:mm:ss` in GMT+8, whatever the host's zone.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use time::format_description::FormatItem;
use time::macros::{format_description, offset};
use time::{Date, Month, OffsetDateTime, PrimitiveDateTime, Time, UtcOffset};

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
    let s = s.trim();
    let t = usual_wire_time(s).or_else(|| PrimitiveDateTime::parse(s, WIRE).ok())?;
    Some(t.assume_offset(GMT8).into())
}

/// Turns a `pub_time` into RFC 3339 with an explicit `+08:00`, or `None` when it is not a
/// wire time.
pub fn pub_time_rfc3339(s: &str) -> Option<String> {
    let s = s.trim();
    if usual_wire_time(s).is_some() {
        // Already zero-padded digits in place: only the separator and the offset change.
        return Some(format!("{}T{}+08:00", &s[..10], &s[11..]));
    }
    let t = PrimitiveDateTime::parse(s, WIRE).ok()?;
    t.assume_offset(GMT8).format(RFC3339_SECONDS).ok()
}

/// A wire time in its usual form, exactly `dddd-dd-dd dd:dd:dd` with a real date and time:
/// its digits read by hand, because the general parser costs more than the rest of a
/// message's body; the calendar is the `time` crate's. Other forms it accepts (a signed
/// year) go to its parser.
fn usual_wire_time(s: &str) -> Option<PrimitiveDateTime> {
    let b = s.as_bytes();
    if b.len() != 19
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b' '
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let num = |from: usize, to: usize| -> Option<u16> {
        b[from..to].iter().try_fold(0u16, |n, &c| {
            c.is_ascii_digit().then(|| n * 10 + u16::from(c - b'0'))
        })
    };
    // Two digits fit a u8; four fit a u16.
    let two = |from: usize| num(from, from + 2).and_then(|n| u8::try_from(n).ok());
    let month = Month::try_from(two(5)?).ok()?;
    let date = Date::from_calendar_date(i32::from(num(0, 4)?), month, two(8)?).ok()?;
    let time = Time::from_hms(two(11)?, two(14)?, two(17)?).ok()?;
    Some(PrimitiveDateTime::new(date, time))
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

    /// The general parser's answer for a wire time, to hold the fast path to.
    fn by_the_time_crate(s: &str) -> (Option<SystemTime>, Option<String>) {
        let t = PrimitiveDateTime::parse(s.trim(), WIRE).ok();
        (
            t.map(|t| t.assume_offset(GMT8).into()),
            t.and_then(|t| t.assume_offset(GMT8).format(RFC3339_SECONDS).ok()),
        )
    }

    proptest::proptest! {
        /// Times in the wire's shape (valid or not: month 13, February 29th, second 60, year
        /// 0000) give the same instant and text as the `time` crate, and so does any string.
        #[test]
        fn the_fast_path_agrees_with_the_time_crate(
            y in 0u32..10_000, mo in 0u32..14, d in 0u32..33,
            h in 0u32..25, mi in 0u32..61, se in 0u32..61,
            other in "[-+ 0-9:T]{0,22}",
        ) {
            let s = format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{se:02}");
            for s in [s.as_str(), other.as_str()] {
                proptest::prop_assert_eq!(
                    (parse_wire_time(s), pub_time_rfc3339(s)),
                    by_the_time_crate(s),
                    "{:?}", s
                );
            }
        }
    }

    /// Leap days, centuries and the years before 1970 are placed as the calendar says.
    #[test]
    fn leap_days_and_early_years() {
        for s in [
            "2000-02-29 23:59:59",
            "1900-03-01 00:00:00",
            "1969-12-31 23:59:59",
            "0000-01-01 00:00:00",
            "9999-12-31 23:59:59",
        ] {
            assert_eq!(
                (parse_wire_time(s), pub_time_rfc3339(s)),
                by_the_time_crate(s),
                "{s}"
            );
            assert!(parse_wire_time(s).is_some(), "{s}");
        }
        assert_eq!(parse_wire_time("1900-02-29 00:00:00"), None);
        assert_eq!(
            parse_wire_time(" 2016-01-01 12:00:00\n"),
            Some(at(1_451_620_800))
        );
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
