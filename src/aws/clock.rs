//! The host clock's offset from DynamoDB's, measured from the `Date` header of its answers
//! (errors included) against the relay's own [`Clock`], the one its leases are read by. The
//! table holding the leases is the common reference of every host that judges them.

use std::sync::{Arc, Mutex};

use aws_sdk_dynamodb::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::context::{
    BeforeDeserializationInterceptorContextRef, BeforeTransmitInterceptorContextRef,
};
use aws_smithy_types::config_bag::{Storable, StoreReplace};
use aws_smithy_types::date_time::{DateTime, Format};

use crate::relay::lease::Clock;
use crate::relay::offset::ClockOffset;

/// What DynamoDB's answers so far say of the host clock.
#[derive(Debug)]
pub struct OffsetMeter {
    /// The host's time, as the leases read it (manual in tests).
    clock: Clock,
    /// Every answer's bounds, merged; `None` before the first answer with a `Date`.
    offset: Mutex<Option<ClockOffset>>,
}

impl OffsetMeter {
    pub fn new(clock: Clock) -> Self {
        Self {
            clock,
            offset: Mutex::new(None),
        }
    }

    /// The offset as measured so far.
    pub fn offset(&self) -> Option<ClockOffset> {
        *self.offset.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes one answer into account: sent and received at these host times, with this
    /// `Date` (epoch seconds).
    pub fn answer(&self, sent_ms: u64, received_ms: u64, date_s: u64) {
        let new = ClockOffset::from_answer(sent_ms, received_ms, date_s);
        let mut slot = self.offset.lock().unwrap_or_else(|p| p.into_inner());
        *slot = Some(match *slot {
            Some(known) => known.merge(new),
            None => new,
        });
    }
}

/// Notes the host time each request attempt goes out at, and feeds its answer's `Date` to
/// the meter.
#[derive(Clone, Debug)]
pub struct OffsetInterceptor {
    meter: Arc<OffsetMeter>,
}

impl OffsetInterceptor {
    pub fn new(meter: Arc<OffsetMeter>) -> Self {
        Self { meter }
    }
}

/// The host time an attempt was sent at (per attempt, in the request's config bag).
#[derive(Clone, Copy, Debug)]
struct SentAt(u64);

impl Storable for SentAt {
    type Storer = StoreReplace<Self>;
}

impl Intercept for OffsetInterceptor {
    fn name(&self) -> &'static str {
        "ClockOffset"
    }

    fn read_before_transmit(
        &self,
        _context: &BeforeTransmitInterceptorContextRef<'_>,
        _components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        cfg.interceptor_state()
            .store_put(SentAt(self.meter.clock.now_ms()));
        Ok(())
    }

    fn read_after_transmit(
        &self,
        context: &BeforeDeserializationInterceptorContextRef<'_>,
        _components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let received_ms = self.meter.clock.now_ms();
        let date = context.response().headers().get("date");
        if let (Some(SentAt(sent_ms)), Some(date_s)) =
            (cfg.load::<SentAt>(), date.and_then(parse_http_date))
        {
            self.meter.answer(*sent_ms, received_ms, date_s);
        }
        Ok(())
    }
}

/// An HTTP `Date` (`Sun, 06 Nov 1994 08:49:37 GMT`) as epoch seconds.
pub fn parse_http_date(v: &str) -> Option<u64> {
    let t = DateTime::from_str(v.trim(), Format::HttpDate).ok()?;
    u64::try_from(t.secs()).ok()
}

/// Adds the interceptor to a DynamoDB client.
pub fn measured(
    client: &aws_sdk_dynamodb::Client,
    meter: Arc<OffsetMeter>,
) -> aws_sdk_dynamodb::Client {
    let conf = client
        .config()
        .to_builder()
        .interceptor(OffsetInterceptor::new(meter))
        .build();
    aws_sdk_dynamodb::Client::from_conf(conf)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `Date` headers in the HTTP format read as epoch seconds; anything else is no date.
    #[test]
    fn http_dates() {
        assert_eq!(
            parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(784_111_777)
        );
        assert_eq!(
            parse_http_date("Thu, 01 Jan 2026 00:00:00 GMT"),
            Some(1_767_225_600)
        );
        assert_eq!(parse_http_date("yesterday"), None);
        assert_eq!(parse_http_date(""), None);
    }

    /// The meter merges answers: two at different phases of the server's second narrow it.
    #[test]
    fn meter_merges_answers() {
        let m = OffsetMeter::new(Clock::manual(0));
        assert_eq!(m.offset(), None);
        m.answer(100_200, 100_300, 100);
        m.answer(100_700, 100_800, 101);
        let o = m.offset().unwrap();
        assert_eq!((o.low_ms, o.high_ms), (200, 801));
    }
}
