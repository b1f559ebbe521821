//! How far the host clock is from the servers' clock, and how surely. Leases compare wall
//! clocks of different hosts (a lease written by one host is judged lapsed by another), so a
//! pass does not start on a host whose clock is certainly further off than
//! `MAX_CLOCK_OFFSET_MS`. Pure: the DynamoDB adapter feeds it the `Date` of its answers.

use std::time::Duration;

/// How fast the host's and the servers' clocks may drift apart between two answers: 500 ppm,
/// the fastest rate at which NTP slews a clock.
const MAX_DRIFT_PPM: u64 = 500;

/// Bounds on the servers' clock minus the host's, in ms: negative when the host is ahead.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClockOffset {
    /// The offset is at least this.
    pub low_ms: i64,
    /// The offset is at most this.
    pub high_ms: i64,
    /// Host time (epoch ms) of the latest answer the bounds rest on: older bounds widen by
    /// the drift the clocks may have had since.
    pub at_ms: u64,
}

fn signed(ms: u64) -> i64 {
    i64::try_from(ms).unwrap_or(i64::MAX)
}

impl ClockOffset {
    /// One clock (the in-memory store): no offset at all.
    pub const ZERO: ClockOffset = ClockOffset {
        low_ms: 0,
        high_ms: 0,
        at_ms: 0,
    };

    /// What one answer says: the server's clock read `date_s` (whole seconds, as an HTTP
    /// `Date` header has it, truncated) at some moment between `sent_ms` and `received_ms` of
    /// the host clock. So the server's time at that moment was in `[date, date + 1 s)` while
    /// the host's was in `[sent, received]`: the middle is `date + 0.5 s - (sent + received)
    /// / 2`, give or take `0.5 s + (received - sent) / 2`.
    pub fn from_answer(sent_ms: u64, received_ms: u64, date_s: u64) -> ClockOffset {
        let received_ms = received_ms.max(sent_ms);
        let date_ms = signed(date_s.saturating_mul(1000));
        ClockOffset {
            low_ms: date_ms.saturating_sub(signed(received_ms)),
            high_ms: date_ms.saturating_add(1000).saturating_sub(signed(sent_ms)),
            at_ms: received_ms,
        }
    }

    /// The middle of the bounds: the best single figure.
    pub fn estimate_ms(&self) -> i64 {
        self.low_ms + (self.high_ms - self.low_ms) / 2
    }

    /// Half the width of the bounds: how far the estimate may be off.
    pub fn uncertainty_ms(&self) -> i64 {
        (self.high_ms - self.low_ms + 1) / 2
    }

    /// These bounds narrowed by those of another answer: both hold, so the offset is in
    /// their overlap, once the older ones are widened by the drift since. Bounds that do
    /// not overlap mean a clock was stepped: the later answer alone counts.
    pub fn merge(self, other: ClockOffset) -> ClockOffset {
        let (older, later) = if other.at_ms >= self.at_ms {
            (self, other)
        } else {
            (other, self)
        };
        let drift = signed(
            (later.at_ms - older.at_ms)
                .saturating_mul(MAX_DRIFT_PPM)
                .div_ceil(1_000_000),
        );
        let low = older.low_ms.saturating_sub(drift).max(later.low_ms);
        let high = older.high_ms.saturating_add(drift).min(later.high_ms);
        if low > high {
            return later;
        }
        ClockOffset {
            low_ms: low,
            high_ms: high,
            at_ms: later.at_ms,
        }
    }

    /// Refuses a host whose clock is certainly more than `limit` from the servers': both
    /// bounds beyond it, on the same side. An offset that may be within it passes.
    pub fn check(&self, limit: Duration) -> Result<(), String> {
        let limit_ms = signed(u64::try_from(limit.as_millis()).unwrap_or(u64::MAX));
        let side = if self.low_ms > limit_ms {
            "behind"
        } else if self.high_ms < -limit_ms {
            "ahead of"
        } else {
            return Ok(());
        };
        Err(format!(
            "the host clock is {} s (± {} s) {side} DynamoDB's (limit {} s): leases are compared across hosts; sync the clock (NTP) or raise MAX_CLOCK_OFFSET_MS",
            tenths(self.estimate_ms().unsigned_abs()),
            tenths(self.uncertainty_ms().unsigned_abs()),
            tenths(limit_ms.unsigned_abs()),
        ))
    }
}

/// Milliseconds as seconds with one decimal, without a trailing `.0`.
fn tenths(ms: u64) -> String {
    let t = (ms + 50) / 100;
    if t % 10 == 0 {
        format!("{}", t / 10)
    } else {
        format!("{}.{}", t / 10, t % 10)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One answer: the server's second is [date, date + 1 s), the host's moment [sent,
    /// received]; the estimate is their middle and the uncertainty 0.5 s + half the round trip.
    #[test]
    fn one_answer_bounds_the_offset() {
        // Sent at 100.200 s, answered at 100.400 s, Date 107 s: the server read 107.000 to
        // 107.999 while the host read 100.200 to 100.400.
        let o = ClockOffset::from_answer(100_200, 100_400, 107);
        assert_eq!((o.low_ms, o.high_ms, o.at_ms), (6_600, 7_800, 100_400));
        assert_eq!(o.estimate_ms(), 7_200);
        assert_eq!(o.uncertainty_ms(), 600);
        // The host ahead: Date 93 s.
        let o = ClockOffset::from_answer(100_200, 100_400, 93);
        assert_eq!((o.low_ms, o.high_ms), (-7_400, -6_200));
        assert_eq!(o.estimate_ms(), -6_800);
        // An answer that came back "before" it was sent (a clock stepped back) counts as
        // instantaneous.
        let o = ClockOffset::from_answer(100_400, 100_200, 100);
        assert_eq!((o.low_ms, o.high_ms), (-400, 600));
    }

    /// Answers at different phases of the server's second narrow the bounds to their overlap.
    #[test]
    fn answers_narrow_the_bounds() {
        let a = ClockOffset::from_answer(100_200, 100_300, 100); // [-300, 800]
        let b = ClockOffset::from_answer(100_700, 100_800, 101); // [200, 1300]
        let m = a.merge(b);
        // a widens by the drift of 0.5 s, rounded up to 1 ms.
        assert_eq!((m.low_ms, m.high_ms, m.at_ms), (200, 801, 100_800));
        assert_eq!(m.estimate_ms(), 500);
        assert_eq!(m.uncertainty_ms(), 301);
        // Order does not matter.
        assert_eq!(b.merge(a), m);
    }

    /// Older bounds widen by 500 ppm of the time since; bounds that cannot both hold (a
    /// stepped clock) give way to the later answer.
    #[test]
    fn old_bounds_widen_and_a_step_resets() {
        let a = ClockOffset::from_answer(0, 0, 0); // [0, 1000] at 0
                                                   // An hour later: a widens by 1.8 s to [-1800, 2800], which overlaps b's bounds (a's
                                                   // own would not).
        let b = ClockOffset::from_answer(3_600_000, 3_600_000, 3_598); // [-2000, -1000]
        let m = a.merge(b);
        assert_eq!((m.low_ms, m.high_ms, m.at_ms), (-1_800, -1_000, 3_600_000));
        // Ten seconds later the clock was stepped by a minute: the overlap is empty.
        let c = ClockOffset::from_answer(3_610_000, 3_610_000, 3_667); // [57000, 58000]
        assert_eq!(m.merge(c), c);
    }

    /// Only an offset certainly beyond the limit is refused, with the figure, the side, the
    /// limit and what to do.
    #[test]
    fn refuses_only_when_certainly_beyond_the_limit() {
        let limit = Duration::from_secs(2);
        // Ahead by 7.4 s, give or take 0.6 s.
        let ahead = ClockOffset {
            low_ms: -8_000,
            high_ms: -6_800,
            at_ms: 0,
        };
        assert_eq!(
            ahead.check(limit).unwrap_err(),
            "the host clock is 7.4 s (± 0.6 s) ahead of DynamoDB's (limit 2 s): leases are compared across hosts; sync the clock (NTP) or raise MAX_CLOCK_OFFSET_MS"
        );
        let behind = ClockOffset {
            low_ms: 2_001,
            high_ms: 3_001,
            at_ms: 0,
        };
        assert!(behind
            .check(limit)
            .unwrap_err()
            .starts_with("the host clock is 2.5 s (± 0.5 s) behind DynamoDB's (limit 2 s)"));
        // Possibly within the limit on either side: passes.
        for (low_ms, high_ms) in [
            (1_500, 2_500),
            (-2_500, -1_500),
            (2_000, 3_000),
            (-500, 500),
        ] {
            let o = ClockOffset {
                low_ms,
                high_ms,
                at_ms: 0,
            };
            assert_eq!(o.check(limit), Ok(()), "{o:?}");
        }
        assert_eq!(ClockOffset::ZERO.check(Duration::ZERO), Ok(()));
        assert!(behind
            .check(Duration::from_millis(1_500))
            .unwrap_err()
            .contains("(limit 1.5 s)"));
    }
}
