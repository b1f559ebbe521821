//! Fault rules per operation, the seeded choice of faults, and the counts of what was injected.
//!
//! The n-th request of an operation always draws the same faults for a given seed, whatever the
//! other operations do: each request gets its own SplitMix64 stream keyed by (seed, operation, n).
//!
//! Besides those independent faults, *storms* and *stalls* are correlated ones: time windows,
//! drawn from the seed, during which a set of operations is throttled (storm) or held without an
//! answer for longer than a lease, then answered or dropped (stall). Real outages look like
//! that: a partition throttled for seconds, a request stuck inside the service for a minute.

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
/// [`ANY_OPERATION`] (`"*"`) for the rest, plus the storms and stalls. JSON:
/// `{"SendMessageBatch": {"latency_ms": 10}, "storms": [...], "stalls": [...]}`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Rules {
    /// Independent faults, by operation.
    #[serde(flatten)]
    pub ops: BTreeMap<String, OpRules>,
    /// Windows of throttling (and added latency) over a set of operations.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub storms: Vec<Storm>,
    /// Windows in which requests are held without an answer, then answered or dropped.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stalls: Vec<Stall>,
}

impl Rules {
    /// No faults, no latency.
    pub fn none() -> Self {
        Self::default()
    }

    /// Adds or replaces the rule for one operation (or [`ANY_OPERATION`]).
    pub fn with(mut self, op: &str, rules: OpRules) -> Self {
        self.ops.insert(op.to_owned(), rules);
        self
    }

    /// Adds a storm.
    pub fn with_storm(mut self, storm: Storm) -> Self {
        self.storms.push(storm);
        self
    }

    /// Adds a stall.
    pub fn with_stall(mut self, stall: Stall) -> Self {
        self.stalls.push(stall);
        self
    }

    /// The rule in force for `op`.
    pub fn for_op(&self, op: &str) -> OpRules {
        self.rule_for(op).1
    }

    /// The rule in force for `op` and the key it is stored under (`op` or `"*"`): requests
    /// under one key share its capacity.
    pub fn rule_for(&self, op: &str) -> (String, OpRules) {
        match self.ops.get(op) {
            Some(r) => (op.to_owned(), r.clone()),
            None => (
                ANY_OPERATION.to_owned(),
                self.ops.get(ANY_OPERATION).cloned().unwrap_or_default(),
            ),
        }
    }

    /// Rejects rates outside `0..=1`, delays over [`MAX_DELAY_MS`], schedules that never
    /// advance, and storms or stalls without a name of their own (their windows are drawn by
    /// name).
    pub fn validate(&self) -> Result<(), String> {
        self.ops.iter().try_for_each(|(op, r)| r.check(op))?;
        let mut names = std::collections::BTreeSet::new();
        for s in &self.storms {
            check_episode(EpisodeKind::Storm, &s.name, &s.when, &mut names)?;
            for (op, e) in &s.ops {
                check_rate(
                    &format!("storm {}: {op}.throttle_rate", s.name),
                    e.throttle_rate,
                )?;
                check_delay(&format!("storm {}: {op}.latency_ms", s.name), e.latency_ms)?;
            }
        }
        for s in &self.stalls {
            check_episode(EpisodeKind::Stall, &s.name, &s.when, &mut names)?;
            for (op, e) in &s.ops {
                check_rate(&format!("stall {}: {op}.rate", s.name), e.rate)?;
                check_rate(
                    &format!("stall {}: {op}.answer_share", s.name),
                    e.answer_share,
                )?;
                check_delay(&format!("stall {}: {op}.hold_ms", s.name), e.hold_ms)?;
            }
        }
        Ok(())
    }

    /// Every storm and stall window that starts before `horizon_ms` (after the rules were set),
    /// as fake-aws draws them for `seed`: the harness plans around the same windows.
    pub fn windows(&self, seed: u64, horizon_ms: u64) -> Vec<Window> {
        let storms = self
            .storms
            .iter()
            .map(|s| (EpisodeKind::Storm, &s.name, &s.when));
        let stalls = self
            .stalls
            .iter()
            .map(|s| (EpisodeKind::Stall, &s.name, &s.when));
        let mut all: Vec<Window> = storms
            .chain(stalls)
            .flat_map(|(kind, name, when)| {
                WindowIter::new(seed, kind, name, when).take_while(move |w| w.start_ms < horizon_ms)
            })
            .collect();
        all.sort_by_key(|w| (w.start_ms, w.end_ms));
        all
    }
}

fn check_rate(what: &str, v: f64) -> Result<(), String> {
    if (0.0..=1.0).contains(&v) {
        Ok(())
    } else {
        Err(format!("{what} must be within 0..=1, got {v}"))
    }
}

fn check_delay(what: &str, v: u64) -> Result<(), String> {
    if v <= MAX_DELAY_MS {
        Ok(())
    } else {
        Err(format!("{what} must be at most {MAX_DELAY_MS} ms, got {v}"))
    }
}

fn check_episode(
    kind: EpisodeKind,
    name: &str,
    when: &Schedule,
    names: &mut std::collections::BTreeSet<String>,
) -> Result<(), String> {
    let label = format!("{}/{name}", kind.as_str());
    if name.is_empty() {
        return Err(format!("every {} needs a name", kind.as_str()));
    }
    if !names.insert(label.clone()) {
        return Err(format!("{label} is named twice"));
    }
    let [glo, ghi] = when.gap_ms;
    let [llo, lhi] = when.lasting_ms;
    if glo > ghi || llo > lhi {
        return Err(format!(
            "{label}: gap_ms and lasting_ms are [low, high] ranges"
        ));
    }
    if llo == 0 {
        return Err(format!("{label}: lasting_ms must be at least 1"));
    }
    for (what, v) in [
        ("after_ms", when.after_ms),
        ("gap_ms", ghi),
        ("lasting_ms", lhi),
    ] {
        check_delay(&format!("{label}: {what}"), v)?;
    }
    Ok(())
}

/// Storms or stalls.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EpisodeKind {
    Storm,
    Stall,
}

impl EpisodeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EpisodeKind::Storm => "storm",
            EpisodeKind::Stall => "stall",
        }
    }
}

/// When a storm or stall strikes, in ms after the rules were set. Window k starts a gap after
/// window k−1 ended (the first a gap after `after_ms`) and lasts `lasting_ms`; gaps and
/// lengths are drawn uniformly from their `[low, high]` ranges, from the seed and the
/// episode's name, so the same seed gives the same windows.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Schedule {
    /// Nothing starts before this.
    pub after_ms: u64,
    /// The quiet time before each window.
    pub gap_ms: [u64; 2],
    /// Each window's length.
    pub lasting_ms: [u64; 2],
    /// At most this many windows; 0: as many as fit.
    pub count: u32,
    /// No window reaches past this (the last one is cut short); 0: no end.
    pub until_ms: u64,
}

/// One window of a storm or stall, in ms after the rules were set.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Window {
    pub kind: EpisodeKind,
    pub name: String,
    /// Its number within its episode, from 0.
    pub index: u32,
    pub start_ms: u64,
    /// Exclusive.
    pub end_ms: u64,
}

impl Window {
    pub fn contains(&self, t_ms: u64) -> bool {
        self.start_ms <= t_ms && t_ms < self.end_ms
    }
}

/// The windows of one episode, in order, drawn lazily.
#[derive(Clone, Debug)]
pub struct WindowIter {
    rng: SplitMix64,
    kind: EpisodeKind,
    name: String,
    when: Schedule,
    next: u32,
    /// Where the next gap starts.
    from_ms: u64,
}

impl WindowIter {
    pub fn new(seed: u64, kind: EpisodeKind, name: &str, when: &Schedule) -> Self {
        let key = fnv1a(kind.as_str()) ^ fnv1a(name).rotate_left(29);
        Self {
            rng: SplitMix64::new(seed ^ key),
            kind,
            name: name.to_owned(),
            when: when.clone(),
            next: 0,
            from_ms: when.after_ms,
        }
    }
}

impl Iterator for WindowIter {
    type Item = Window;

    fn next(&mut self) -> Option<Window> {
        let w = &self.when;
        if w.count > 0 && self.next >= w.count {
            return None;
        }
        let [glo, ghi] = w.gap_ms;
        let [llo, lhi] = w.lasting_ms;
        let gap = glo.saturating_add(self.rng.up_to(ghi.saturating_sub(glo)));
        let lasting = llo
            .saturating_add(self.rng.up_to(lhi.saturating_sub(llo)))
            .max(1);
        let start = self.from_ms.saturating_add(gap);
        let mut end = start.saturating_add(lasting);
        if w.until_ms > 0 {
            if start >= w.until_ms {
                return None;
            }
            end = end.min(w.until_ms);
        }
        self.from_ms = end;
        let index = self.next;
        self.next += 1;
        Some(Window {
            kind: self.kind,
            name: self.name.clone(),
            index,
            start_ms: start,
            end_ms: end,
        })
    }
}

/// The windows of one episode drawn so far, to answer "is `t` inside one?" cheaply.
#[derive(Clone, Debug)]
pub struct WindowCache {
    iter: WindowIter,
    known: Vec<Window>,
    exhausted: bool,
}

impl WindowCache {
    pub fn new(iter: WindowIter) -> Self {
        Self {
            iter,
            known: Vec::new(),
            exhausted: false,
        }
    }

    /// The window containing `t_ms`, if any.
    pub fn covering(&mut self, t_ms: u64) -> Option<&Window> {
        while !self.exhausted && self.known.last().is_none_or(|w| w.start_ms <= t_ms) {
            match self.iter.next() {
                Some(w) => self.known.push(w),
                None => self.exhausted = true,
            }
        }
        // Windows are ordered and disjoint: the last that starts by `t` is the only candidate.
        let i = self.known.partition_point(|w| w.start_ms <= t_ms);
        self.known[..i].last().filter(|w| w.contains(t_ms))
    }
}

/// A storm: in each window, requests to `ops` are throttled with their `throttle_rate` (DynamoDB
/// answers `ProvisionedThroughputExceededException`, SQS `RequestThrottled`), and those let
/// through wait `latency_ms` more. JSON:
/// `{"name": "writes", "when": {"after_ms": 2000, "gap_ms": [5000, 15000], "lasting_ms": [2000,
/// 5000]}, "ops": {"PutItem": {"throttle_rate": 0.97}, "UpdateItem": {"throttle_rate": 0.97}}}`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Storm {
    /// Unique among the storms; its windows are drawn from it.
    pub name: String,
    pub when: Schedule,
    /// By operation, `"*"` for every other.
    pub ops: BTreeMap<String, StormEffect>,
}

/// What a storm does to one operation's requests.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StormEffect {
    pub throttle_rate: f64,
    /// Added before answering a request that was not throttled (a brownout).
    pub latency_ms: u64,
}

/// A stall: in each window, requests to `ops` are held, without an answer, for `hold_ms`.
/// Then each is either answered (carried out only then, as a request stuck inside the service
/// is) or dropped (the connection closes, the request never carried out).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Stall {
    /// Unique among the stalls; its windows are drawn from it.
    pub name: String,
    pub when: Schedule,
    /// By operation, `"*"` for every other.
    pub ops: BTreeMap<String, StallEffect>,
}

/// What a stall does to one operation's requests.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StallEffect {
    /// The share of requests arriving in a window that are held.
    pub rate: f64,
    pub hold_ms: u64,
    /// The share of held requests answered (carried out at the end of the hold); the rest are
    /// dropped without being carried out.
    pub answer_share: f64,
}

impl Default for StallEffect {
    fn default() -> Self {
        Self {
            rate: 1.0,
            hold_ms: 0,
            answer_share: 0.5,
        }
    }
}

/// The effect for `op` in an episode's map: its own, or the `"*"` one.
pub fn effect_for<'a, E>(ops: &'a BTreeMap<String, E>, op: &str) -> Option<&'a E> {
    ops.get(op).or_else(|| ops.get(ANY_OPERATION))
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
    /// Of `throttled`, those a storm threw.
    #[serde(default)]
    pub storm_throttled: u64,
    /// Requests a storm slowed down (its `latency_ms`).
    #[serde(default)]
    pub storm_delayed: u64,
    /// Requests a stall held.
    #[serde(default)]
    pub stalled: u64,
    /// Of `stalled`, those carried out and answered at the end of the hold.
    #[serde(default)]
    pub stall_answered: u64,
    /// Of `stalled`, those dropped without being carried out.
    #[serde(default)]
    pub stall_dropped: u64,
}

impl OpStats {
    /// Every injected fault, whole-request or per entry.
    pub fn faults(&self) -> u64 {
        self.throttled + self.error500 + self.lost_responses + self.failed_entries + self.stalled
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

/// What one storm or stall did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct EpisodeStats {
    /// Requests to its operations that arrived inside one of its windows.
    pub requests: u64,
    /// Storms: requests throttled, and requests slowed down.
    pub throttled: u64,
    pub delayed: u64,
    /// Stalls: requests held, then answered or dropped.
    pub stalled: u64,
    pub answered: u64,
    pub dropped: u64,
    /// Requests hit, by operation.
    pub by_op: BTreeMap<String, u64>,
}

/// Counts by operation name.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaultStats {
    pub ops: BTreeMap<String, OpStats>,
    /// By `storm/<name>` or `stall/<name>`.
    #[serde(default)]
    pub episodes: BTreeMap<String, EpisodeStats>,
    /// Requests a stall holds now: until it is 0, a held request may still be carried out.
    #[serde(default)]
    pub stalls_pending: u64,
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
            t.unrecovered += s.unrecovered;
            t.storm_throttled += s.storm_throttled;
            t.storm_delayed += s.storm_delayed;
            t.stalled += s.stalled;
            t.stall_answered += s.stall_answered;
            t.stall_dropped += s.stall_dropped;
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

    fn writes_storm() -> Storm {
        let hit = StormEffect {
            throttle_rate: 0.97,
            latency_ms: 0,
        };
        Storm {
            name: "writes".into(),
            when: Schedule {
                after_ms: 1_000,
                gap_ms: [2_000, 9_000],
                lasting_ms: [500, 4_000],
                count: 0,
                until_ms: 120_000,
            },
            ops: [("PutItem", hit.clone()), ("UpdateItem", hit)]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect(),
        }
    }

    /// A seed always draws the same windows, another seed others, each within its ranges,
    /// disjoint, in order, and none past `until_ms`.
    #[test]
    fn windows_are_drawn_from_the_seed_within_their_ranges() {
        let rules = Rules::none().with_storm(writes_storm());
        let a = rules.windows(5, u64::MAX);
        assert_eq!(a, rules.windows(5, u64::MAX));
        assert_ne!(a, rules.windows(6, u64::MAX));
        assert!(a.len() >= 120_000 / 13_000, "{a:?}");
        let mut from = 1_000;
        for w in &a {
            assert!((from + 2_000..=from + 9_000).contains(&w.start_ms), "{w:?}");
            let len = w.end_ms - w.start_ms;
            assert!(len <= 4_000 && (len >= 500 || w.end_ms == 120_000), "{w:?}");
            assert!(w.end_ms <= 120_000);
            from = w.end_ms;
        }
    }

    /// `count` caps the windows, and two episodes of different names draw different windows.
    #[test]
    fn count_caps_windows_and_names_separate_them() {
        let mut one = writes_storm();
        one.when.count = 3;
        let mut other = one.clone();
        other.name = "other".into();
        let w1 = Rules::none().with_storm(one).windows(1, u64::MAX);
        let w2 = Rules::none().with_storm(other).windows(1, u64::MAX);
        assert_eq!(w1.len(), 3);
        assert_ne!(
            w1.iter().map(|w| w.start_ms).collect::<Vec<_>>(),
            w2.iter().map(|w| w.start_ms).collect::<Vec<_>>()
        );
    }

    /// The cache finds the window covering a moment exactly as the drawn list says, at its
    /// edges too (the end is exclusive).
    #[test]
    fn window_cache_agrees_with_the_drawn_windows() {
        let storm = writes_storm();
        let all = Rules::none().with_storm(storm.clone()).windows(9, u64::MAX);
        let mut cache = WindowCache::new(WindowIter::new(
            9,
            EpisodeKind::Storm,
            "writes",
            &storm.when,
        ));
        for t in (0..125_000).step_by(97).chain(
            all.iter()
                .flat_map(|w| [w.start_ms, w.end_ms - 1, w.end_ms]),
        ) {
            let want = all.iter().find(|w| w.contains(t));
            assert_eq!(cache.covering(t), want, "at {t}");
        }
    }

    /// Storms and stalls read from JSON beside the per-operation rules, and write back the same.
    #[test]
    fn storms_and_stalls_round_trip_through_json() {
        let text = r#"{"*": {"latency_ms": 1},
            "storms": [{"name": "w", "when": {"after_ms": 5, "gap_ms": [1, 2], "lasting_ms": [3, 4]},
                        "ops": {"PutItem": {"throttle_rate": 0.98}}}],
            "stalls": [{"name": "s", "when": {"gap_ms": [0, 0], "lasting_ms": [9, 9], "count": 1},
                        "ops": {"*": {"hold_ms": 70000}}}]}"#;
        let r: Rules = serde_json::from_str(text).unwrap();
        r.validate().unwrap();
        assert_eq!(r.for_op("GetItem").latency_ms, 1);
        assert_eq!(r.storms[0].ops["PutItem"].throttle_rate, 0.98);
        let stall = &r.stalls[0].ops["*"];
        assert_eq!(
            (stall.rate, stall.hold_ms, stall.answer_share),
            (1.0, 70_000, 0.5)
        );
        let back: Rules = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(back, r);
        assert_eq!(effect_for(&r.stalls[0].ops, "PutItem"), Some(stall));
        assert!(serde_json::from_str::<Rules>(
            r#"{"storms": [{"name": "w", "when": {"lasting": [1, 2]}}]}"#
        )
        .is_err());
    }

    /// Nameless, twice-named, empty-window, inverted-range and out-of-range episodes are refused.
    #[test]
    fn invalid_episodes_are_rejected() {
        let ok = writes_storm();
        assert!(Rules::none().with_storm(ok.clone()).validate().is_ok());
        let mut nameless = ok.clone();
        nameless.name.clear();
        let mut empty = ok.clone();
        empty.when.lasting_ms = [0, 0];
        let mut inverted = ok.clone();
        inverted.when.gap_ms = [9, 1];
        let mut rate = ok.clone();
        rate.ops.get_mut("PutItem").unwrap().throttle_rate = 1.5;
        for bad in [nameless, empty, inverted, rate] {
            assert!(
                Rules::none().with_storm(bad.clone()).validate().is_err(),
                "{bad:?}"
            );
        }
        assert!(Rules::none()
            .with_storm(ok.clone())
            .with_storm(ok.clone())
            .validate()
            .is_err());
        let stall = Stall {
            name: "writes".into(),
            when: ok.when.clone(),
            ops: [(
                "PutItem".to_owned(),
                StallEffect {
                    hold_ms: MAX_DELAY_MS + 1,
                    ..StallEffect::default()
                },
            )]
            .into_iter()
            .collect(),
        };
        assert!(Rules::none().with_stall(stall.clone()).validate().is_err());
        let mut fine = stall;
        fine.ops.get_mut("PutItem").unwrap().hold_ms = 75_000;
        // A stall may share a storm's name: they are drawn apart by kind.
        assert!(Rules::none()
            .with_storm(ok)
            .with_stall(fine)
            .validate()
            .is_ok());
    }

    /// Rules read from JSON with unknown fields are refused rather than ignored.
    #[test]
    fn rules_json_rejects_unknown_fields() {
        let ok: Rules = serde_json::from_str(r#"{"PutItem":{"throttle_rate":0.1}}"#).unwrap();
        assert_eq!(ok.for_op("PutItem").throttle_rate, 0.1);
        assert!(serde_json::from_str::<Rules>(r#"{"PutItem":{"throtle_rate":0.1}}"#).is_err());
    }
}
