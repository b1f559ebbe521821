//! Fault rules per operation, the seeded choice of faults, and the counts of what was injected.
//!
//! The n-th request of an operation always draws the same faults for a given seed, whatever the
//! other operations do: each request gets its own SplitMix64 stream keyed by (seed, operation, n).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The rule key that applies to every operation without a rule of its own.
pub const ANY_OPERATION: &str = "*";

/// The longest injected delay accepted: an hour is far beyond any client's timeout.
pub const MAX_DELAY_MS: u64 = 3_600_000;

/// What to do to one operation's requests. Rates are probabilities in `0.0..=1.0`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OpRules {
    /// Added before answering every request, to model the service's round trip.
    pub latency_ms: u64,
    /// A uniform extra delay in `0..=latency_jitter_ms` on top of `latency_ms`.
    pub latency_jitter_ms: u64,
    /// Answer with the service's throttling error without reaching the backend.
    pub throttle_rate: f64,
    /// Which error a throttled DynamoDB request gets (SQS has only one).
    pub dynamodb_throttle: DynamoThrottle,
    /// Answer HTTP 500 without reaching the backend.
    pub error500_rate: f64,
    /// Let the backend carry out the request, then close the connection without answering.
    pub lost_response_rate: f64,
    /// How long the connection stays open, silent, before a lost response closes it: 0 closes at
    /// once (the client sees a reset), a long delay makes the client's own timeout fire first.
    pub lost_response_delay_ms: u64,
    /// Per entry, for `SendMessageBatch` (a `Failed` entry), `BatchWriteItem` (an
    /// `UnprocessedItems` request) and `BatchGetItem` (an `UnprocessedKeys` key): the entry is
    /// kept from the backend and reported as not done.
    pub partial_failure_rate: f64,
    /// Among fabricated `SendMessageBatch` failures, the share with `SenderFault: true`
    /// (`InvalidParameterValue`); the rest are `SenderFault: false` (`InternalError` or
    /// `ServiceUnavailable`).
    pub sender_fault_share: f64,
    /// An overloaded server: when above 0, the requests under this rule (this operation, or
    /// every operation `"*"` covers) are served by this many workers at once, each for the
    /// latency; the rest wait for a worker. Latency then grows with the requests in flight
    /// beyond the capacity, as it does on a real queueing server. 0: no limit.
    pub capacity: u32,
}

impl OpRules {
    fn check(&self, op: &str) -> Result<(), String> {
        let rates = [
            ("throttle_rate", self.throttle_rate),
            ("error500_rate", self.error500_rate),
            ("lost_response_rate", self.lost_response_rate),
            ("partial_failure_rate", self.partial_failure_rate),
            ("sender_fault_share", self.sender_fault_share),
        ];
        for (name, v) in rates {
            if !(0.0..=1.0).contains(&v) {
                return Err(format!("{op}.{name} must be within 0..=1, got {v}"));
            }
        }
        let delays = [
            ("latency_ms", self.latency_ms),
            ("latency_jitter_ms", self.latency_jitter_ms),
            ("lost_response_delay_ms", self.lost_response_delay_ms),
        ];
        for (name, v) in delays {
            if v > MAX_DELAY_MS {
                return Err(format!(
                    "{op}.{name} must be at most {MAX_DELAY_MS} ms, got {v}"
                ));
            }
        }
        let whole = self.throttle_rate + self.error500_rate + self.lost_response_rate;
        if whole > 1.0 + 1e-9 {
            return Err(format!(
                "{op}: throttle_rate + error500_rate + lost_response_rate must not exceed 1, got {whole}"
            ));
        }
        Ok(())
    }
}

/// The DynamoDB throttling error a throttled request is answered with (HTTP 400 each).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DynamoThrottle {
    /// `ProvisionedThroughputExceededException` or `ThrottlingException`, drawn per request.
    #[default]
    Either,
    /// `ProvisionedThroughputExceededException`: what DynamoDB answers a table's writes (and
    /// reads) beyond its capacity.
    ProvisionedThroughput,
    /// `ThrottlingException`: what DynamoDB answers control-plane and account-level excess.
    Throttling,
}

/// Rules by operation name as in `X-Amz-Target` (`SendMessageBatch`, `PutItem`, ...), with
/// [`ANY_OPERATION`] (`"*"`) for the rest. JSON: `{"SendMessageBatch": {"latency_ms": 10}}`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Rules(pub BTreeMap<String, OpRules>);

impl Rules {
    /// No faults, no latency.
    pub fn none() -> Self {
        Self::default()
    }

    /// Adds or replaces the rule for one operation (or [`ANY_OPERATION`]).
    pub fn with(mut self, op: &str, rules: OpRules) -> Self {
        self.0.insert(op.to_owned(), rules);
        self
    }

    /// The rule in force for `op`.
    pub fn for_op(&self, op: &str) -> OpRules {
        self.rule_for(op).1
    }

    /// The rule in force for `op` and the key it is stored under (`op` or `"*"`): requests
    /// under one key share its capacity.
    pub fn rule_for(&self, op: &str) -> (String, OpRules) {
        match self.0.get(op) {
            Some(r) => (op.to_owned(), r.clone()),
            None => (
                ANY_OPERATION.to_owned(),
                self.0.get(ANY_OPERATION).cloned().unwrap_or_default(),
            ),
        }
    }

    /// Rejects rates outside `0..=1` and delays over [`MAX_DELAY_MS`].
    pub fn validate(&self) -> Result<(), String> {
        self.0.iter().try_for_each(|(op, r)| r.check(op))
    }
}

/// A whole-request fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    Throttle,
    Error500,
    LostResponse,
}

/// SplitMix64: small, fast, and good enough to spread faults; the same seed gives the same run.
#[derive(Clone, Debug)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`, from the top 53 bits.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && self.next_f64() < p
    }

    /// Uniform in `0..=max`.
    pub fn up_to(&mut self, max: u64) -> u64 {
        match max.checked_add(1) {
            Some(span) => self.next_u64() % span,
            None => self.next_u64(),
        }
    }
}

fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The random stream of the `n`-th request (from 0) of `op`.
pub fn request_rng(seed: u64, op: &str, n: u64) -> SplitMix64 {
    let mut mix = SplitMix64::new(seed ^ fnv1a(op));
    let base = mix.next_u64();
    SplitMix64::new(base ^ n.wrapping_mul(0xD1B5_4A32_D192_ED03))
}

/// The whole-request fault drawn for one request, if any. Draws exactly one number.
pub fn choose_fault(rules: &OpRules, rng: &mut SplitMix64) -> Option<Fault> {
    let u = rng.next_f64();
    let mut edge = rules.throttle_rate;
    if u < edge {
        return Some(Fault::Throttle);
    }
    edge += rules.error500_rate;
    if u < edge {
        return Some(Fault::Error500);
    }
    edge += rules.lost_response_rate;
    if u < edge {
        return Some(Fault::LostResponse);
    }
    None
}

/// Counts for one operation.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpStats {
    /// Requests received (including faulted ones).
    pub requests: u64,
    /// Throttling errors answered.
    pub throttled: u64,
    /// HTTP 500s answered.
    pub error500: u64,
    /// Requests carried out whose answer was then withheld.
    pub lost_responses: u64,
    /// Fabricated `Failed` entries (SQS) or unprocessed items/keys (DynamoDB).
    pub failed_entries: u64,
    /// Of `failed_entries`, those with `SenderFault: true`.
    pub sender_fault_entries: u64,
    /// Entries (batch entries, items, statements) of the requests answered with a whole-request
    /// fault (throttling, 500) or whose answer was lost: what the client may have to redo.
    pub faulted_entries: u64,
    /// Requests whose client stopped waiting before the answer (its own timeout, or it was
    /// killed): carried out or not, the client does not know.
    pub abandoned: u64,
    /// Messages a backend stored for a request whose client had stopped waiting
    /// (`SendMessage`/`SendMessageBatch`): each may come back as a copy.
    pub abandoned_entries: u64,
    /// Requests refused whole (throttling, 500) whose identical request was not carried out
    /// since: writes that may never have happened (the client gave up on them).
    pub unrecovered: u64,
    /// The most requests of this operation inside fake-aws at once (waiting or served).
    pub peak_in_flight: u64,
    /// Sum over requests of the requests in flight each found on arrival (itself included):
    /// divided by `requests`, the load a request typically met.
    pub in_flight_seen: u64,
}

impl OpStats {
    /// Every injected fault, whole-request or per entry.
    pub fn faults(&self) -> u64 {
        self.throttled + self.error500 + self.lost_responses + self.failed_entries
    }

    /// The mean number of requests in flight a request found on arrival.
    pub fn mean_in_flight(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.in_flight_seen as f64 / self.requests as f64
        }
    }
}

/// Counts by operation name.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaultStats {
    pub ops: BTreeMap<String, OpStats>,
}

impl FaultStats {
    /// The counts for one operation (zero if it was never called).
    pub fn op(&self, op: &str) -> OpStats {
        self.ops.get(op).cloned().unwrap_or_default()
    }

    /// The sums over all operations.
    pub fn total(&self) -> OpStats {
        self.ops.values().fold(OpStats::default(), |mut t, s| {
            t.requests += s.requests;
            t.throttled += s.throttled;
            t.error500 += s.error500;
            t.lost_responses += s.lost_responses;
            t.failed_entries += s.failed_entries;
            t.sender_fault_entries += s.sender_fault_entries;
            t.faulted_entries += s.faulted_entries;
            t.abandoned += s.abandoned;
            t.abandoned_entries += s.abandoned_entries;
            t.peak_in_flight = t.peak_in_flight.max(s.peak_in_flight);
            t.in_flight_seen += s.in_flight_seen;
            t
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn draws(seed: u64, op: &str, rules: &OpRules, n: u64) -> Vec<Option<Fault>> {
        (0..n)
            .map(|i| choose_fault(rules, &mut request_rng(seed, op, i)))
            .collect()
    }

    fn five_percent_each() -> OpRules {
        OpRules {
            throttle_rate: 0.05,
            error500_rate: 0.05,
            lost_response_rate: 0.05,
            ..OpRules::default()
        }
    }

    /// SplitMix64 from seed 0 gives the published reference outputs.
    #[test]
    fn splitmix64_matches_reference_vector() {
        let mut r = SplitMix64::new(0);
        assert_eq!(r.next_u64(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(r.next_u64(), 0x6E78_9E6A_A1B9_65F4);
        assert_eq!(r.next_u64(), 0x06C4_5D18_8009_454F);
    }

    /// The same seed, operation and request number always draw the same fault.
    #[test]
    fn fault_choice_is_deterministic_for_a_seed() {
        let r = five_percent_each();
        assert_eq!(
            draws(42, "PutItem", &r, 2000),
            draws(42, "PutItem", &r, 2000)
        );
    }

    /// Different seeds give different fault sequences.
    #[test]
    fn fault_choice_differs_between_seeds() {
        let r = five_percent_each();
        assert_ne!(draws(1, "PutItem", &r, 2000), draws(2, "PutItem", &r, 2000));
    }

    /// Operations draw from separate streams, so one operation's traffic cannot shift another's.
    #[test]
    fn fault_choice_differs_between_operations() {
        let r = five_percent_each();
        assert_ne!(
            draws(7, "PutItem", &r, 2000),
            draws(7, "SendMessageBatch", &r, 2000)
        );
    }

    /// Over many requests each fault kind turns up at close to its rate.
    #[test]
    fn fault_rates_are_respected_over_many_requests() {
        let r = five_percent_each();
        let d = draws(9, "SendMessageBatch", &r, 20_000);
        for kind in [Fault::Throttle, Fault::Error500, Fault::LostResponse] {
            let n = d.iter().filter(|f| **f == Some(kind)).count();
            assert!((800..1200).contains(&n), "{kind:?}: {n} of 20000");
        }
    }

    /// Zero rates never inject anything.
    #[test]
    fn zero_rates_inject_nothing() {
        assert!(draws(3, "GetItem", &OpRules::default(), 5000)
            .iter()
            .all(Option::is_none));
    }

    /// An operation without its own rule takes the `*` rule.
    #[test]
    fn wildcard_rule_applies_to_other_operations() {
        let any = OpRules {
            latency_ms: 5,
            ..OpRules::default()
        };
        let put = OpRules {
            latency_ms: 9,
            ..OpRules::default()
        };
        let rules = Rules::none()
            .with("*", any.clone())
            .with("PutItem", put.clone());
        assert_eq!(rules.for_op("PutItem"), put);
        assert_eq!(rules.for_op("GetItem"), any);
    }

    /// Rates outside 0..=1, whole-request rates summing above 1, and delays over an hour are
    /// refused.
    #[test]
    fn invalid_rules_are_rejected() {
        let bad = Rules::none().with(
            "PutItem",
            OpRules {
                throttle_rate: 1.5,
                ..OpRules::default()
            },
        );
        assert!(bad.validate().is_err());
        let too_much = Rules::none().with(
            "PutItem",
            OpRules {
                throttle_rate: 0.6,
                error500_rate: 0.6,
                ..OpRules::default()
            },
        );
        assert!(too_much.validate().is_err());
        let too_slow = Rules::none().with(
            "PutItem",
            OpRules {
                latency_ms: u64::MAX,
                ..OpRules::default()
            },
        );
        assert!(too_slow.validate().is_err());
        assert!(Rules::none()
            .with("*", five_percent_each())
            .validate()
            .is_ok());
    }

    /// The DynamoDB throttling error is read from JSON by name, and defaults to either.
    #[test]
    fn dynamodb_throttle_reads_from_json() {
        let r: Rules = serde_json::from_str(
            r#"{"PutItem":{"throttle_rate":0.7,"dynamodb_throttle":"provisioned_throughput"}}"#,
        )
        .unwrap();
        assert_eq!(
            r.for_op("PutItem").dynamodb_throttle,
            DynamoThrottle::ProvisionedThroughput
        );
        assert_eq!(
            r.for_op("GetItem").dynamodb_throttle,
            DynamoThrottle::Either
        );
        assert!(serde_json::from_str::<Rules>(r#"{"PutItem":{"dynamodb_throttle":"x"}}"#).is_err());
    }

    /// Rules read from JSON with unknown fields are refused rather than ignored.
    #[test]
    fn rules_json_rejects_unknown_fields() {
        let ok: Rules = serde_json::from_str(r#"{"PutItem":{"throttle_rate":0.1}}"#).unwrap();
        assert_eq!(ok.for_op("PutItem").throttle_rate, 0.1);
        assert!(serde_json::from_str::<Rules>(r#"{"PutItem":{"throtle_rate":0.1}}"#).is_err());
    }
}
