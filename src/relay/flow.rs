//! Flow control: how many requests one AWS service gets at once, and how long each may take.
//!
//! A slow endpoint (throttling, a brownout, a VPC endpoint, an emulator that serves one request
//! at a time) must cost speed, never copies. On a standard SQS queue every send that times out
//! after SQS stored it is one more copy, so the relay answers slowness with fewer requests in
//! flight and more patience, not with more requests and blind resends.
//!
//! - [`Limiter`]: an adaptive concurrency limit per service, in the spirit of TCP Vegas and
//!   Netflix's concurrency-limits. It grows while latency stays near the lowest latency seen
//!   (the endpoint is not queueing), and shrinks when latency rises with load, on throttling and
//!   on timeouts. `RELAY_PARALLELISM` is its ceiling.
//! - The attempt timeout follows the observed latency (TCP's RTO: smoothed latency plus four
//!   deviations), with a generous floor, and the caller's deadline as its ceiling.
//! - [`Limiter::drain_time`] says how long the requests already waiting will take, so the
//!   consume loop can wait for the stages behind it instead of piling work up in memory.
//!
//! tower's limit layers are static (`ConcurrencyLimit`) or rate-based, and the SDK's retry
//! modes react only to throttling errors, not to latency; neither bounds what a slow endpoint
//! costs. So this is written here, small, with exact tests on paused time.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use super::ports::PortError;

/// How a limiter starts and where it stays.
#[derive(Clone, Debug)]
pub struct LimitConfig {
    /// Requests in flight before anything was measured. Low, like TCP's slow start: the first
    /// windows then show the endpoint's latency without queueing, which the limit measures
    /// everything after against; it grows to the ceiling within a few dozen answers.
    pub initial: usize,
    /// Never more than this (`RELAY_PARALLELISM`).
    pub ceiling: usize,
    /// No attempt times out sooner than this, however fast the endpoint usually answers: a
    /// timeout is the last resort, and on a standard queue it can cost a copy.
    pub timeout_floor: Duration,
    /// The lowest latency is remembered over two epochs of this length, so a lasting change of
    /// the endpoint (a new region, a deeper queue) is learnt, and a burst of load is not.
    pub floor_epoch: Duration,
}

impl LimitConfig {
    /// The production settings for a ceiling of `parallelism`.
    pub fn new(parallelism: usize) -> Self {
        let ceiling = parallelism.max(1);
        Self {
            initial: ceiling.min(2),
            ceiling,
            timeout_floor: Duration::from_secs(10),
            floor_epoch: Duration::from_secs(60),
        }
    }
}

/// How one request ended, as far as flow control cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    /// An answer came (success or an ordinary error): its latency is a sample.
    Answered,
    /// The service said slow down.
    Throttled,
    /// No answer within the attempt timeout.
    TimedOut,
}

impl Signal {
    /// What a port call's result says about the endpoint.
    pub fn of<T>(r: &Result<T, PortError>) -> Signal {
        match r {
            Ok(_) => Signal::Answered,
            Err(e) if e.timed_out => Signal::TimedOut,
            Err(e) if e.throttled => Signal::Throttled,
            Err(_) => Signal::Answered,
        }
    }
}

/// What one limiter did, for the report and the EMF line.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct LimiterReport {
    /// Requests in flight allowed at the end.
    pub limit: usize,
    /// The most requests that were in flight at once.
    pub peak_in_flight: usize,
    /// Requests answered (or timed out).
    pub requests: u64,
    /// Attempts that got no answer within their timeout.
    pub timeouts: u64,
    /// Attempts the service throttled.
    pub throttles: u64,
    /// Smoothed latency, ms.
    pub latency_ms: Option<u64>,
    /// The lowest latency remembered, ms: what the endpoint answers in when it is not queueing.
    pub floor_ms: Option<u64>,
    /// The attempt timeout at the end, ms.
    pub timeout_ms: u64,
}

/// One service's adaptive concurrency limit. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct Limiter {
    name: &'static str,
    cfg: LimitConfig,
    /// One permit per request allowed in flight; shrinking forgets permits as they come back.
    permits: Arc<Semaphore>,
    state: Mutex<State>,
    /// Woken whenever a request finishes, so waiters for room can look again.
    changed: Notify,
}

#[derive(Debug)]
struct State {
    /// The estimated limit; fractional so it can grow by less than one per window.
    limit: f64,
    /// Permits handed out by the semaphore that the limit no longer covers: forgotten on return.
    debt: usize,
    in_flight: usize,
    waiting: usize,
    peak_in_flight: usize,
    /// Smoothed latency and its mean deviation (RFC 6298), for the timeout.
    srtt: Option<Duration>,
    rttvar: Duration,
    /// Doubles on every timeout, back to 1 on the next answer (Karn's rule: a timeout says the
    /// estimate is too low).
    backoff: u32,
    /// The lowest latency of this epoch and of the one before.
    floor_now: Option<Duration>,
    floor_before: Option<Duration>,
    epoch_started: Instant,
    window: Window,
    requests: u64,
    timeouts: u64,
    throttles: u64,
    /// When the service last throttled a request.
    last_throttle: Option<Instant>,
    /// Urgent writes (receipts, renewals) still trying: while the service throttles, other
    /// requests wait for them.
    urgent: usize,
}

/// How long after a throttle the service counts as throttling: while it does, no new batch
/// is consumed and claims wait for the urgent writes.
pub const THROTTLE_MEMORY: Duration = Duration::from_secs(1);

/// Samples since the limit last moved.
#[derive(Debug, Default)]
struct Window {
    samples: u32,
    /// Samples that were answers (their latencies are in `total`).
    answered: u32,
    total: Duration,
    /// A throttle or a timeout was seen: the limit goes down whatever the latency says.
    dropped: bool,
    /// The most requests in flight seen by this window: a limit that is not used is not grown.
    peak_in_flight: usize,
}

/// A place in flight. Give it back with [`Permit::finish`]; dropping it frees the place
/// without a sample (the caller gave up).
#[derive(Debug)]
pub struct Permit<'a> {
    limiter: &'a Limiter,
    /// `None` for an urgent request that went over the limit (or once given back).
    permit: Option<OwnedSemaphorePermit>,
    started: Instant,
    /// Finished with a sample: the sample took it out of the requests in flight.
    finished: bool,
}

impl Limiter {
    pub fn new(name: &'static str, cfg: LimitConfig) -> Self {
        let initial = cfg.initial.clamp(1, cfg.ceiling.max(1));
        Self {
            name,
            permits: Arc::new(Semaphore::new(initial)),
            state: Mutex::new(State {
                limit: initial as f64,
                debt: 0,
                in_flight: 0,
                waiting: 0,
                peak_in_flight: 0,
                srtt: None,
                rttvar: Duration::ZERO,
                backoff: 1,
                floor_now: None,
                floor_before: None,
                epoch_started: Instant::now(),
                window: Window::default(),
                requests: 0,
                timeouts: 0,
                throttles: 0,
                last_throttle: None,
                urgent: 0,
            }),
            changed: Notify::new(),
            cfg,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Requests allowed in flight now.
    pub fn limit(&self) -> usize {
        self.lock().limit as usize
    }

    /// Requests in flight now.
    pub fn in_flight(&self) -> usize {
        self.lock().in_flight
    }

    /// Waits for a place in flight until `deadline`; `None` when the deadline came first.
    pub async fn acquire(&self, deadline: Instant) -> Option<Permit<'_>> {
        self.lock().waiting += 1;
        let got =
            tokio::time::timeout_at(deadline, Arc::clone(&self.permits).acquire_owned()).await;
        self.lock().waiting -= 1;
        let permit = got.ok()?.ok()?;
        Some(self.enter(Some(permit)))
    }

    /// Counts a request in flight, with or without a place.
    fn enter(&self, permit: Option<OwnedSemaphorePermit>) -> Permit<'_> {
        let mut st = self.lock();
        st.in_flight += 1;
        st.peak_in_flight = st.peak_in_flight.max(st.in_flight);
        st.window.peak_in_flight = st.window.peak_in_flight.max(st.in_flight);
        Permit {
            limiter: self,
            permit,
            started: Instant::now(),
            finished: false,
        }
    }

    /// How long one attempt may wait for its answer, given the caller's `deadline`: the
    /// observed latency's RTO (doubled for every timeout in a row), at least the floor, at most
    /// what is left.
    pub fn attempt_deadline(&self, deadline: Instant) -> Instant {
        let timeout = self.timeout();
        Instant::now()
            .checked_add(timeout)
            .map_or(deadline, |t| t.min(deadline))
    }

    /// TCP's retransmission timeout of the observed latency (smoothed latency plus four
    /// deviations); `None` before the first answer.
    pub fn rto(&self) -> Option<Duration> {
        let st = self.lock();
        st.srtt
            .map(|srtt| srtt.saturating_add(st.rttvar.saturating_mul(4)))
    }

    /// The attempt timeout before the caller's deadline caps it.
    pub fn timeout(&self) -> Duration {
        timeout_of(&self.lock(), &self.cfg)
    }

    /// How long the requests waiting for a place will take to get one, at the current limit
    /// and latency. Zero when nothing waits.
    pub fn drain_time(&self) -> Duration {
        let st = self.lock();
        if st.waiting == 0 {
            return Duration::ZERO;
        }
        let per_wave = st.srtt.unwrap_or(Duration::from_millis(10));
        let waves = st.waiting.div_ceil((st.limit as usize).max(1));
        per_wave.saturating_mul(u32::try_from(waves).unwrap_or(u32::MAX))
    }

    /// Runs one attempt of a port call within the limit: waits for a place (until `deadline`),
    /// gives the call its attempt deadline, and learns from how it ended. A call that got no
    /// place before the deadline was not sent.
    pub async fn call<T, F, Fut>(
        &self,
        operation: &'static str,
        deadline: Instant,
        f: F,
    ) -> Result<T, PortError>
    where
        F: FnOnce(Instant) -> Fut,
        Fut: Future<Output = Result<T, PortError>>,
    {
        self.yield_to_urgent(deadline).await;
        let Some(permit) = self.acquire(deadline).await else {
            return Err(PortError::new(
                operation,
                super::ports::Severity::Retryable,
                format!("no {} capacity before the pass deadline", self.name),
            ));
        };
        self.attempt(permit, operation, deadline, f).await
    }

    /// Like [`Limiter::call`], but never waits for a place: for a batch's receipt, the one
    /// write that keeps its messages from coming back as copies. It takes a free place when
    /// there is one and otherwise goes over the limit, by at most one request per batch in
    /// flight; its answer teaches the limiter like any other.
    pub async fn call_urgent<T, F, Fut>(
        &self,
        operation: &'static str,
        deadline: Instant,
        f: F,
    ) -> Result<T, PortError>
    where
        F: FnOnce(Instant) -> Fut,
        Fut: Future<Output = Result<T, PortError>>,
    {
        let permit = self.enter(Arc::clone(&self.permits).try_acquire_owned().ok());
        self.attempt(permit, operation, deadline, f).await
    }

    async fn attempt<T, F, Fut>(
        &self,
        permit: Permit<'_>,
        operation: &'static str,
        deadline: Instant,
        f: F,
    ) -> Result<T, PortError>
    where
        F: FnOnce(Instant) -> Fut,
        Fut: Future<Output = Result<T, PortError>>,
    {
        let attempt_deadline = self.attempt_deadline(deadline);
        let r = match tokio::time::timeout_at(attempt_deadline, f(attempt_deadline)).await {
            Ok(r) => r,
            Err(_) => Err(PortError::timed_out(
                operation,
                attempt_deadline.saturating_duration_since(permit.started),
            )),
        };
        permit.finish(Signal::of(&r));
        r
    }

    /// True while the service throttles (a throttle within [`THROTTLE_MEMORY`]).
    pub fn throttling(&self) -> bool {
        self.lock()
            .last_throttle
            .is_some_and(|t| t.elapsed() < THROTTLE_MEMORY)
    }

    /// Marks an urgent write as trying until the guard is dropped (see [`Limiter::call`]).
    pub fn urgent(&self) -> Urgent<'_> {
        self.lock().urgent += 1;
        Urgent { limiter: self }
    }

    /// While the service throttles and urgent writes are still trying, a normal request waits
    /// (until `deadline`): the few writes that keep messages from coming back as copies get
    /// the capacity first.
    async fn yield_to_urgent(&self, deadline: Instant) {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let wait = {
                let st = self.lock();
                st.urgent > 0
                    && st
                        .last_throttle
                        .is_some_and(|t| t.elapsed() < THROTTLE_MEMORY)
            };
            if !wait || Instant::now() >= deadline {
                return;
            }
            tokio::select! {
                _ = &mut changed => {}
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                _ = tokio::time::sleep_until(deadline) => return,
            }
        }
    }

    /// A snapshot for the report.
    pub fn report(&self) -> LimiterReport {
        let st = self.lock();
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        LimiterReport {
            limit: st.limit as usize,
            peak_in_flight: st.peak_in_flight,
            requests: st.requests,
            timeouts: st.timeouts,
            throttles: st.throttles,
            latency_ms: st.srtt.map(ms),
            floor_ms: floor(&st).map(ms),
            timeout_ms: ms(timeout_of(&st, &self.cfg)),
        }
    }

    /// Starts a new peak: the report's `peak_in_flight` is per pass.
    pub fn reset_peak(&self) {
        let mut st = self.lock();
        st.peak_in_flight = st.in_flight;
    }

    fn learn(&self, started: Instant, signal: Signal) {
        let latency = started.elapsed();
        let mut st = self.lock();
        st.in_flight = st.in_flight.saturating_sub(1);
        st.requests += 1;
        match signal {
            Signal::Answered => {
                st.backoff = 1;
                learn_latency(&mut st, latency);
                st.window.samples += 1;
                st.window.answered += 1;
                st.window.total = st.window.total.saturating_add(latency);
            }
            Signal::Throttled => {
                st.throttles += 1;
                st.last_throttle = Some(Instant::now());
                st.window.dropped = true;
                st.window.samples += 1;
            }
            Signal::TimedOut => {
                st.timeouts += 1;
                st.backoff = st.backoff.saturating_mul(2).min(8);
                st.window.dropped = true;
                st.window.samples += 1;
            }
        }
        let wanted = (st.limit / 2.0).max(4.0) as u32;
        if st.window.samples >= wanted {
            let before = st.limit;
            st.limit = next_limit(&st, self.cfg.ceiling);
            // The floor is the lowest window mean, not the lowest sample: a lucky fast answer
            // on a jittery endpoint is not its no-load latency.
            if !st.window.dropped && st.window.answered > 0 {
                let mean = st.window.total / st.window.answered;
                let now = Instant::now();
                if now.saturating_duration_since(st.epoch_started) >= self.cfg.floor_epoch {
                    st.floor_before = st.floor_now.take();
                    st.epoch_started = now;
                }
                st.floor_now = Some(st.floor_now.map_or(mean, |f| f.min(mean)));
            }
            st.window = Window {
                peak_in_flight: st.in_flight,
                ..Window::default()
            };
            self.resize(&mut st, before);
        }
    }

    /// Moves the semaphore to the new limit: new permits for growth, debt for shrinking.
    fn resize(&self, st: &mut State, before: f64) {
        let (old, new) = (before as usize, st.limit as usize);
        if new > old {
            let mut grow = new - old;
            let repaid = grow.min(st.debt);
            st.debt -= repaid;
            grow -= repaid;
            self.permits.add_permits(grow);
        } else if new < old {
            let mut shrink = old - new;
            // Take idle permits away at once; the rest are forgotten as they come back.
            while shrink > 0 {
                match Arc::clone(&self.permits).try_acquire_owned() {
                    Ok(p) => {
                        p.forget();
                        shrink -= 1;
                    }
                    Err(_) => break,
                }
            }
            st.debt += shrink;
        }
        if new != old {
            tracing::debug!(
                service = self.name,
                limit = new,
                in_flight = st.in_flight,
                "concurrency limit changed"
            );
        }
    }
}

/// Twice TCP's RTO (smoothed latency plus four deviations), at least the floor, times the
/// backoff of timeouts in a row.
fn timeout_of(st: &State, cfg: &LimitConfig) -> Duration {
    let rto = match st.srtt {
        None => Duration::ZERO,
        Some(srtt) => srtt.saturating_add(st.rttvar.saturating_mul(4)),
    };
    rto.saturating_mul(2)
        .max(cfg.timeout_floor)
        .saturating_mul(st.backoff)
}

fn floor(st: &State) -> Option<Duration> {
    match (st.floor_now, st.floor_before) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// RFC 6298's smoothing: srtt ← 7/8 srtt + 1/8 r, rttvar ← 3/4 rttvar + 1/4 |srtt − r|.
fn learn_latency(st: &mut State, r: Duration) {
    match st.srtt {
        None => {
            st.srtt = Some(r);
            st.rttvar = r / 2;
        }
        Some(srtt) => {
            let dev = srtt.abs_diff(r);
            st.rttvar = (st.rttvar * 3 + dev) / 4;
            st.srtt = Some((srtt * 7 + r) / 8);
        }
    }
}

/// The Vegas step at the end of a window. `queue` estimates how many of the requests in flight
/// are waiting inside the endpoint: limit × (1 − floor / latency). Few: grow; many: shrink.
fn next_limit(st: &State, ceiling: usize) -> f64 {
    let limit = st.limit;
    let log = limit.log10().max(1.0);
    let next = if st.window.dropped {
        limit / 2.0
    } else {
        let mean = st.window.total / st.window.answered.max(1);
        match floor(st) {
            // The first window sets the floor: grow from there.
            None => limit + log,
            Some(_) if mean.is_zero() => limit + log,
            Some(f) => {
                let queue = limit * (1.0 - f.as_secs_f64() / mean.as_secs_f64()).max(0.0);
                let (alpha, beta) = (2.0 * log, 4.0 * log);
                // Growth only when the limit is being used: an idle limit says nothing.
                let used = st.window.peak_in_flight as f64 >= limit / 2.0;
                if queue <= log && used {
                    limit + beta
                } else if queue < alpha && used {
                    limit + log
                } else if queue > beta {
                    limit - log
                } else {
                    limit
                }
            }
        }
    };
    next.clamp(1.0, ceiling.max(1) as f64)
}

impl Permit<'_> {
    /// Gives the place back and learns from how the request ended.
    pub fn finish(mut self, signal: Signal) {
        if let Some(p) = self.permit.take() {
            self.limiter.give_back(p);
        }
        self.finished = true;
        self.limiter.learn(self.started, signal);
        self.limiter.changed.notify_waiters();
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if let Some(p) = self.permit.take() {
            self.limiter.give_back(p);
        }
        if !self.finished {
            let mut st = self.limiter.lock();
            st.in_flight = st.in_flight.saturating_sub(1);
            drop(st);
            self.limiter.changed.notify_waiters();
        }
    }
}

impl Limiter {
    fn give_back(&self, p: OwnedSemaphorePermit) {
        let mut st = self.lock();
        if st.debt > 0 {
            st.debt -= 1;
            p.forget();
        }
    }
}

/// An urgent write that is still trying (see [`Limiter::urgent`]).
#[derive(Debug)]
pub struct Urgent<'a> {
    limiter: &'a Limiter,
}

impl Drop for Urgent<'_> {
    fn drop(&mut self) {
        let mut st = self.limiter.lock();
        st.urgent = st.urgent.saturating_sub(1);
        drop(st);
        self.limiter.changed.notify_waiters();
    }
}

/// The relay's limiters: one per AWS service it calls.
#[derive(Debug)]
pub struct Flow {
    pub sqs: Limiter,
    pub dynamodb: Limiter,
}

/// Both limiters' reports.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct FlowReport {
    pub sqs: LimiterReport,
    pub dynamodb: LimiterReport,
}

impl FlowReport {
    /// Attempts that timed out, over both services.
    pub fn timeouts(&self) -> u64 {
        self.sqs.timeouts + self.dynamodb.timeouts
    }

    /// Attempts that were throttled, over both services.
    pub fn throttles(&self) -> u64 {
        self.sqs.throttles + self.dynamodb.throttles
    }

    /// What happened since `before`: counters become differences, the rest is as now.
    pub fn since(&self, before: &FlowReport) -> FlowReport {
        let diff = |now: &LimiterReport, was: &LimiterReport| LimiterReport {
            requests: now.requests.saturating_sub(was.requests),
            timeouts: now.timeouts.saturating_sub(was.timeouts),
            throttles: now.throttles.saturating_sub(was.throttles),
            ..now.clone()
        };
        FlowReport {
            sqs: diff(&self.sqs, &before.sqs),
            dynamodb: diff(&self.dynamodb, &before.dynamodb),
        }
    }
}

impl Flow {
    pub fn new(parallelism: usize) -> Self {
        Self::with_config(LimitConfig::new(parallelism))
    }

    pub fn with_config(cfg: LimitConfig) -> Self {
        Self {
            sqs: Limiter::new("SQS", cfg.clone()),
            dynamodb: Limiter::new("DynamoDB", cfg),
        }
    }

    pub fn report(&self) -> FlowReport {
        FlowReport {
            sqs: self.sqs.report(),
            dynamodb: self.dynamodb.report(),
        }
    }

    pub fn reset_peaks(&self) {
        self.sqs.reset_peak();
        self.dynamodb.reset_peak();
    }

    /// Waits until the requests already waiting for AWS would be under way within `lead`
    /// (the time the next consume takes), or `deadline`. This is the back-pressure on
    /// consuming: a slow AWS makes the loop consume later instead of holding more messages.
    pub async fn wait_for_room(&self, lead: Duration, deadline: Instant) {
        loop {
            let sqs = self.sqs.changed.notified();
            let ddb = self.dynamodb.changed.notified();
            tokio::pin!(sqs, ddb);
            sqs.as_mut().enable();
            ddb.as_mut().enable();
            // A throttling table is back-pressure like a slow one: no new batch meanwhile.
            let throttling = self.dynamodb.throttling();
            if (!throttling && self.sqs.drain_time().max(self.dynamodb.drain_time()) <= lead)
                || Instant::now() >= deadline
            {
                return;
            }
            tokio::select! {
                _ = &mut sqs => {}
                _ = &mut ddb => {}
                _ = tokio::time::sleep(Duration::from_millis(100)), if throttling => {}
                _ = tokio::time::sleep_until(deadline) => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::relay::ports::Severity;

    /// An endpoint in paused time: `workers` requests are served at once, each for `service`;
    /// the rest queue, so latency grows with the requests in flight beyond the capacity.
    struct Server {
        workers: Arc<Semaphore>,
        service: Duration,
        /// Requests inside the server at once (queued or served), and the most seen.
        inside: Mutex<(usize, usize)>,
    }

    impl Server {
        fn new(workers: usize, service: Duration) -> Arc<Self> {
            Arc::new(Self {
                workers: Arc::new(Semaphore::new(workers)),
                service,
                inside: Mutex::new((0, 0)),
            })
        }

        async fn serve(&self) -> Result<(), PortError> {
            {
                let mut i = self.inside.lock().unwrap();
                i.0 += 1;
                i.1 = i.1.max(i.0);
            }
            let worker = self.workers.acquire().await.unwrap();
            tokio::time::sleep(self.service).await;
            drop(worker);
            self.inside.lock().unwrap().0 -= 1;
            Ok(())
        }

        fn reset_peak(&self) {
            let mut i = self.inside.lock().unwrap();
            i.1 = i.0;
        }

        fn peak(&self) -> usize {
            self.inside.lock().unwrap().1
        }
    }

    fn far() -> Instant {
        Instant::now() + Duration::from_secs(3600)
    }

    /// Runs `callers` tasks that each send `each` requests through the limiter, one after the
    /// other.
    async fn load(limiter: &Arc<Limiter>, server: &Arc<Server>, callers: usize, each: usize) {
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..callers {
            let (l, s) = (Arc::clone(limiter), Arc::clone(server));
            tasks.spawn(async move {
                for _ in 0..each {
                    l.call("Op", far(), |_| s.serve()).await.unwrap();
                }
            });
        }
        while tasks.join_next().await.is_some() {}
    }

    fn limiter(ceiling: usize) -> Arc<Limiter> {
        Arc::new(Limiter::new("Test", LimitConfig::new(ceiling)))
    }

    /// A receipt never queues behind the limit: with every place taken it goes at once, its
    /// answer is learnt from, and the count of requests in flight comes back to zero, also
    /// when an urgent request is abandoned midway.
    #[tokio::test(start_paused = true)]
    async fn urgent_requests_go_over_the_limit() {
        let l = limiter(32);
        let server = Server::new(1000, Duration::from_millis(100));
        let (a, b) = (
            l.acquire(far()).await.unwrap(),
            l.acquire(far()).await.unwrap(),
        );
        assert_eq!(l.limit(), 2);
        let started = Instant::now();
        l.call_urgent("Receipt", far(), |_| server.serve())
            .await
            .unwrap();
        assert_eq!(
            started.elapsed(),
            Duration::from_millis(100),
            "no wait for a place"
        );
        assert_eq!(l.report().peak_in_flight, 3);
        assert_eq!(l.report().requests, 1);
        drop((a, b));
        assert_eq!(l.in_flight(), 0);
        let gave_up = tokio::time::timeout(
            Duration::from_millis(10),
            l.call_urgent("Receipt", far(), |_| server.serve()),
        )
        .await;
        assert!(gave_up.is_err());
        assert_eq!(l.in_flight(), 0);
    }

    /// An endpoint whose latency does not change with load gets the whole ceiling.
    #[tokio::test(start_paused = true)]
    async fn grows_to_the_ceiling_while_latency_stays_flat() {
        let l = limiter(32);
        let server = Server::new(1000, Duration::from_millis(10));
        assert_eq!(l.limit(), 2, "starts low");
        load(&l, &server, 64, 40).await;
        assert_eq!(l.limit(), 32);
        assert_eq!(l.report().peak_in_flight, 32);
        assert_eq!(l.report().timeouts, 0);
    }

    /// Against a server with 4 workers, requests in flight settle near the capacity instead of
    /// the ceiling, and nothing times out.
    #[tokio::test(start_paused = true)]
    async fn settles_near_a_servers_capacity() {
        let l = limiter(32);
        let server = Server::new(4, Duration::from_millis(20));
        load(&l, &server, 64, 20).await;
        server.reset_peak();
        l.reset_peak();
        load(&l, &server, 64, 20).await;
        let r = l.report();
        assert!(
            (4..=12).contains(&server.peak()),
            "at most {} requests inside the server at once (capacity 4)",
            server.peak()
        );
        assert!((4..=12).contains(&r.limit), "limit {}", r.limit);
        assert_eq!(r.timeouts, 0);
    }

    /// A server that serves one request at a time (moto) gets a handful, not the ceiling.
    #[tokio::test(start_paused = true)]
    async fn a_serial_server_gets_a_handful() {
        let l = limiter(32);
        let server = Server::new(1, Duration::from_millis(30));
        load(&l, &server, 32, 10).await;
        server.reset_peak();
        load(&l, &server, 32, 10).await;
        assert!(
            server.peak() <= 8,
            "{} in the server at once",
            server.peak()
        );
        assert_eq!(l.report().timeouts, 0);
    }

    /// Throttling halves the limit, never below one.
    #[tokio::test(start_paused = true)]
    async fn throttling_shrinks_the_limit() {
        let l = Arc::new(Limiter::new(
            "Test",
            LimitConfig {
                initial: 8,
                ..LimitConfig::new(32)
            },
        ));
        assert_eq!(l.limit(), 8);
        for _ in 0..4 {
            let _ = l
                .call("Op", far(), |_| async {
                    Err::<(), _>(PortError::throttled("Op", "slow down"))
                })
                .await;
        }
        assert_eq!(l.limit(), 4);
        for _ in 0..40 {
            let _ = l
                .call("Op", far(), |_| async {
                    Err::<(), _>(PortError::throttled("Op", "slow down"))
                })
                .await;
        }
        assert_eq!(l.limit(), 1);
        assert_eq!(l.report().throttles, 44);
    }

    /// The attempt timeout is the floor for a fast endpoint, follows a slow one's latency, and
    /// never passes the caller's deadline.
    #[tokio::test(start_paused = true)]
    async fn timeout_follows_latency_above_a_floor() {
        let l = limiter(8);
        assert_eq!(l.timeout(), Duration::from_secs(10), "nothing measured yet");
        let fast = Server::new(100, Duration::from_millis(5));
        load(&l, &Arc::clone(&fast), 1, 20).await;
        assert_eq!(l.timeout(), Duration::from_secs(10));
        let slow = Server::new(100, Duration::from_secs(8));
        load(&l, &slow, 1, 30).await;
        let t = l.timeout();
        assert!(t >= Duration::from_secs(16), "{t:?} after 8 s answers");
        let soon = Instant::now() + Duration::from_secs(3);
        assert_eq!(l.attempt_deadline(soon), soon);
    }

    /// A timeout doubles the next attempt's patience until an answer comes; it is counted.
    #[tokio::test(start_paused = true)]
    async fn timeouts_back_off_and_are_counted() {
        let l = limiter(8);
        let r = l
            .call("Op", far(), |_| {
                std::future::pending::<Result<(), PortError>>()
            })
            .await
            .unwrap_err();
        assert!(r.timed_out && r.maybe_applied, "{r:?}");
        assert_eq!(r.severity, Severity::Retryable);
        assert_eq!(l.timeout(), Duration::from_secs(20));
        assert_eq!(l.report().timeouts, 1);
        l.call("Op", far(), |_| async { Ok(()) }).await.unwrap();
        assert_eq!(l.timeout(), Duration::from_secs(10));
    }

    /// A call that gets no place before its deadline is not sent, and says so.
    #[tokio::test(start_paused = true)]
    async fn no_place_before_the_deadline_is_not_sent() {
        let l = Arc::new(Limiter::new(
            "Test",
            LimitConfig {
                initial: 1,
                ..LimitConfig::new(1)
            },
        ));
        let busy = Arc::clone(&l);
        let hold = tokio::spawn(async move {
            busy.call("Op", far(), |_| {
                tokio::time::sleep(Duration::from_secs(5)).then_ok()
            })
            .await
        });
        tokio::task::yield_now().await;
        let sent = std::sync::atomic::AtomicBool::new(false);
        let e = l
            .call("Op", Instant::now() + Duration::from_secs(1), |_| async {
                sent.store(true, std::sync::atomic::Ordering::SeqCst);
                Ok(())
            })
            .await
            .unwrap_err();
        assert!(!sent.load(std::sync::atomic::Ordering::SeqCst));
        assert!(!e.maybe_applied && !e.timed_out, "{e:?}");
        assert!(e.detail.contains("no Test capacity"), "{e}");
        hold.await.unwrap().unwrap();
    }

    /// The drain time is zero with nothing waiting and grows with the waiters per place.
    #[tokio::test(start_paused = true)]
    async fn drain_time_counts_the_waiters() {
        let l = Arc::new(Limiter::new(
            "Test",
            LimitConfig {
                initial: 2,
                ..LimitConfig::new(2)
            },
        ));
        assert_eq!(l.drain_time(), Duration::ZERO);
        let server = Server::new(10, Duration::from_millis(100));
        load(&l, &server, 2, 4).await;
        let mut tasks = Vec::new();
        for _ in 0..6 {
            let (l, s) = (Arc::clone(&l), Arc::clone(&server));
            tasks.push(tokio::spawn(async move {
                l.call("Op", far(), |_| s.serve()).await
            }));
        }
        tokio::task::yield_now().await;
        // Two in flight, four waiting: two waves of ~100 ms.
        let d = l.drain_time();
        assert!(
            d >= Duration::from_millis(150) && d <= Duration::from_millis(300),
            "{d:?}"
        );
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        assert_eq!(l.drain_time(), Duration::ZERO);
    }

    trait ThenOk: Future<Output = ()> + Sized {
        async fn then_ok(self) -> Result<(), PortError> {
            self.await;
            Ok(())
        }
    }
    impl<F: Future<Output = ()>> ThenOk for F {}
}
