//! One relay pass: consume → claim → enqueue → park → record → confirm, for every configured
//! group, with `concurrency` consume loops per group, until a stop condition. This module runs
//! the pass and its consume loops; each consumed batch goes its way in [`batch`].

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::archive::{Archive, ArchiveLocation};
use super::body::FifoGroupBy;
use super::flow::Flow;
use super::lease::{Clock, LeasePolicy, DEFAULT_CLOCK_ALLOWANCE};
use super::ports::{DedupStore, PortError, Queue, Severity, Tmc};
use super::report::{Counts, GroupReport, Report, StopReason};
use crate::top::clock::epoch_millis;
use crate::top::{ErrorClass, TopError};

mod batch;

use batch::Places;

/// `drain` stops at the first empty poll; `follow` keeps polling until the budget ends.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    #[default]
    Drain,
    Follow,
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "drain" => Ok(Mode::Drain),
            "follow" => Ok(Mode::Follow),
            other => Err(format!("unknown mode {other:?}: expected drain or follow")),
        }
    }
}

/// Settings that hold for every pass of a deployment.
#[derive(Clone, Debug)]
pub struct RelaySettings {
    /// How long dedup records live (TTL); must outlast TMC's one-day redelivery window.
    pub retention: Duration,
    /// FIFO message grouping (used only when the relay queue is FIFO).
    pub fifo_group_by: FifoGroupBy,
    /// A batch's lease is three times the slowest batch so far, within these bounds, and a
    /// heartbeat renews it while the batch works: a batch that dies frees its messages within
    /// one lease, whatever the pass's budget.
    pub lease_floor: Duration,
    pub lease_ceiling: Duration,
    /// The wall clock leases are read against (manual in tests).
    pub clock: Clock,
    /// How far this host's clock may be from the servers' (`MAX_CLOCK_OFFSET_MS`): a holder
    /// stops sending twice this before its lease ends.
    pub max_clock_offset: Duration,
    /// Attempts per request for retryable failures (SQS entries, claims, records).
    pub max_send_attempts: u32,
    /// The most DynamoDB or SQS requests in flight (`RELAY_PARALLELISM`): the ceiling of the
    /// adaptive limits, which find what the endpoints sustain below it.
    pub parallelism: usize,
    /// Batches processed at once per consume loop while the next consume runs; 0 turns
    /// pipelining off (consume, then process, then consume: the naive baseline). At most
    /// `pipeline_depth + 1` batches of messages per loop are in memory. A batch gives up its
    /// place once its messages are in SQS and recorded, then confirms in one of as many
    /// confirm places: a confirm holds up consuming only when confirms lag. Whatever the
    /// depth, the next consume waits while AWS is backlogged (see `flow`).
    pub pipeline_depth: usize,
}

impl Default for RelaySettings {
    fn default() -> Self {
        Self {
            retention: Duration::from_secs(7 * 24 * 3600),
            fifo_group_by: FifoGroupBy::default(),
            lease_floor: LeasePolicy::default().floor,
            lease_ceiling: LeasePolicy::default().ceiling,
            clock: Clock::system(),
            max_clock_offset: DEFAULT_CLOCK_ALLOWANCE,
            max_send_attempts: 4,
            parallelism: 32,
            // Claims, SQS and the completion record take three to four consume round trips:
            // fewer places leave the consume waiting (see `make bench`); each place can hold a
            // batch of messages in memory.
            pipeline_depth: 4,
        }
    }
}

/// What one pass should do; built from configuration and the invocation payload.
#[derive(Clone, Debug)]
pub struct PassOptions {
    /// Stops consuming when fired (SIGINT/SIGTERM on the command line); the batches in hand
    /// get its grace to finish. The Lambda's never fires.
    pub stop: super::stop::Stop,
    /// TMC groups; the empty string is the app's default group.
    pub groups: Vec<String>,
    /// Messages per consume, 10..=200.
    pub quantity: u32,
    pub mode: Mode,
    /// Consume loops per group.
    pub concurrency: u32,
    pub max_batches: Option<u64>,
    pub max_messages: Option<u64>,
    /// The pass stops consuming when another batch would not finish before this, and every
    /// call is bounded by it.
    pub deadline: Instant,
    /// Pause after an empty poll in follow mode (at least 100 ms).
    pub empty_backoff: Duration,
    /// Receipts (and the heartbeats that keep their leases) may be written until then: the
    /// Lambda's deadline less what the report needs. `None` (the command line): `deadline`
    /// plus [`RECEIPT_GRACE`].
    pub receipt_deadline: Option<Instant>,
}

/// How long past its deadline a pass without a hard one (the command line) may go on
/// writing the receipts of the batches in hand.
pub const RECEIPT_GRACE: Duration = Duration::from_secs(30);

impl PassOptions {
    /// Until when receipts may be written.
    pub fn receipt_deadline(&self) -> Instant {
        self.receipt_deadline.unwrap_or_else(|| {
            self.deadline
                .checked_add(RECEIPT_GRACE)
                .unwrap_or(self.deadline)
        })
    }
}

/// The relay: three ports, its settings, and the flow control of its AWS requests.
pub struct Relay<T, Q, D> {
    pub tmc: T,
    pub queue: Q,
    pub parking: Q,
    pub store: D,
    pub settings: RelaySettings,
    /// The adaptive limits of SQS and DynamoDB requests; kept across the passes of a warm
    /// Lambda, so a later pass starts from what the endpoints sustained.
    pub flow: Flow,
    /// Where every consumed batch is archived before any of it is confirmed; `None`: off.
    pub archive: Option<(Arc<dyn Archive>, ArchiveLocation)>,
}

/// Live counters shared by a group's loops (the CLI's progress line reads them too).
#[derive(Default)]
pub struct Progress {
    pub consumed: AtomicU64,
    pub enqueued: AtomicU64,
    pub confirmed: AtomicU64,
}

/// State shared by every loop of a pass.
struct PassShared {
    opts: PassOptions,
    /// Set on the first fatal error: every loop stops consuming.
    fatal: AtomicBool,
    fatal_error: Mutex<Option<String>>,
    /// The host clock was checked against the store's: once per pass, before its first
    /// consume (so before its first lease write).
    clock_checked: tokio::sync::Mutex<bool>,
    oldest_pub_ms: AtomicU64,
    latency_total_ms: AtomicU64,
    latency_batches: AtomicU64,
    progress: Arc<Progress>,
}

impl PassShared {
    fn set_fatal(&self, why: String) {
        let mut slot = self.fatal_error.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            tracing::error!(error = %why, "fatal error: stopping the pass");
            *slot = Some(why);
        }
        self.fatal.store(true, Ordering::SeqCst);
    }

    fn is_fatal(&self) -> bool {
        self.fatal.load(Ordering::SeqCst)
    }

    /// Stops the pass when an AWS error says the configuration is wrong.
    fn note_port_error(&self, e: &PortError) {
        if e.severity == Severity::Fatal {
            self.set_fatal(format!("{e}. Check RELAY_QUEUE_URL, PARKING_QUEUE_URL, DEDUP_TABLE_NAME, ARCHIVE_URL and the function's IAM permissions."));
        }
    }
}

/// A group's budget of batches and messages, shared by its loops.
struct GroupShared {
    name: String,
    batches: AtomicU64,
    messages: AtomicU64,
    counts: Mutex<Counts>,
    /// The last consume failure that was retried away, for the report.
    last_error: Mutex<Option<String>>,
    /// Messages of batches consumed and not yet done with: what a stop's grace abandons.
    in_hand: AtomicU64,
}

impl GroupShared {
    fn add(&self, c: &Counts) {
        self.counts.lock().unwrap_or_else(|p| p.into_inner()).add(c);
    }
}

struct LoopEnd {
    reason: StopReason,
    ban: Option<Duration>,
}

impl LoopEnd {
    fn because(reason: StopReason) -> Self {
        Self { reason, ban: None }
    }
}

/// What the clock check says to a consume loop.
enum ClockCheck {
    /// Checked (now or earlier in the pass): consume.
    Passed,
    /// Not measured yet (the store did not answer); the pause is over: try again.
    Retry,
    /// The loop ends (a host clock beyond the limit, a fatal error, no budget left).
    End(LoopEnd),
}

/// Waits for the consume loops, handing each end to `ended`. Once the pass is stopped, the
/// batches in hand get the stop's grace; after it, the loops and their batches are dropped
/// as in a crash: a batch confirms only what its receipt holds, so TMC redelivers the rest.
/// True when that happened.
async fn join_loops(
    shared: &PassShared,
    loops: &mut JoinSet<(usize, LoopEnd)>,
    mut ended: impl FnMut(usize, LoopEnd),
) -> bool {
    let stop = &shared.opts.stop;
    let grace_over = async {
        stop.fired().await;
        tokio::time::sleep(stop.grace()).await;
    };
    tokio::pin!(grace_over);
    let mut abandoned = false;
    loop {
        let next = tokio::select! {
            joined = loops.join_next() => Some(joined),
            () = &mut grace_over, if !abandoned => None,
        };
        match next {
            None => {
                tracing::warn!(
                    grace_secs = stop.grace().as_secs(),
                    "the stop's grace ran out: leaving the batches still at work for redelivery"
                );
                abandoned = true;
                loops.abort_all();
            }
            Some(None) => return abandoned,
            Some(Some(Ok((gi, end)))) => ended(gi, end),
            Some(Some(Err(e))) if e.is_cancelled() => {}
            Some(Some(Err(e))) => shared.set_fatal(format!("a consume loop crashed: {e}")),
        }
    }
}

/// The least and the most time kept back for a batch's receipt (see `receipt_reserve`).
const RECEIPT_RESERVE: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(10));

/// The lowest lease estimate for a batch before any was timed.
const FIRST_BATCH_ESTIMATE: Duration = Duration::from_millis(500);

/// True when `pause` (and then `after` more) still ends before `deadline`. Saturating: a pause
/// too long to add to the clock (a ban of u64::MAX seconds) does not fit.
fn fits(pause: Duration, after: Duration, deadline: Instant) -> bool {
    Instant::now()
        .checked_add(pause.saturating_add(after))
        .is_some_and(|t| t < deadline)
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl<T: Tmc, Q: Queue, D: DedupStore> Relay<T, Q, D> {
    /// A relay whose flow control is sized by `settings.parallelism`.
    pub fn new(tmc: T, queue: Q, parking: Q, store: D, settings: RelaySettings) -> Self {
        Self {
            flow: Flow::new(settings.parallelism),
            tmc,
            queue,
            parking,
            store,
            settings,
            archive: None,
        }
    }

    /// Archives every consumed batch at `location` before any of it is confirmed.
    pub fn with_archive(mut self, archive: Arc<dyn Archive>, location: ArchiveLocation) -> Self {
        self.archive = Some((archive, location));
        self
    }

    /// Runs one pass over every group and returns its report. Never panics on upstream input;
    /// a fatal error is in the report (`stop_reason: fatal`, `error`).
    pub async fn run(self: &Arc<Self>, opts: PassOptions) -> Report {
        self.run_with_progress(opts, Arc::new(Progress::default()))
            .await
    }

    pub async fn run_with_progress(
        self: &Arc<Self>,
        opts: PassOptions,
        progress: Arc<Progress>,
    ) -> Report {
        let started = Instant::now();
        self.flow.reset_peaks();
        let flow_before = self.flow.report();
        let shared = Arc::new(PassShared {
            fatal: AtomicBool::new(false),
            fatal_error: Mutex::new(None),
            clock_checked: tokio::sync::Mutex::new(false),
            oldest_pub_ms: AtomicU64::new(u64::MAX),
            latency_total_ms: AtomicU64::new(0),
            latency_batches: AtomicU64::new(0),
            progress,
            opts,
        });
        let groups: Vec<Arc<GroupShared>> = shared
            .opts
            .groups
            .iter()
            .map(|g| {
                Arc::new(GroupShared {
                    name: g.clone(),
                    batches: AtomicU64::new(0),
                    messages: AtomicU64::new(0),
                    counts: Mutex::new(Counts::default()),
                    last_error: Mutex::new(None),
                    in_hand: AtomicU64::new(0),
                })
            })
            .collect();
        let mut loops = JoinSet::new();
        for (gi, g) in groups.iter().enumerate() {
            for _ in 0..shared.opts.concurrency.max(1) {
                let (relay, shared, g) = (Arc::clone(self), Arc::clone(&shared), Arc::clone(g));
                loops.spawn(async move { (gi, relay.consume_loop(&shared, &g).await) });
            }
        }
        let mut ends: Vec<Vec<LoopEnd>> = groups.iter().map(|_| Vec::new()).collect();
        // When each group's last loop ended: groups drain at their own pace.
        let mut group_elapsed_ms: Vec<u64> = vec![0; groups.len()];
        let abandoned = join_loops(&shared, &mut loops, |gi, end| {
            ends[gi].push(end);
            group_elapsed_ms[gi] = millis(started.elapsed());
        })
        .await;
        if abandoned {
            let per_group = shared.opts.concurrency.max(1) as usize;
            for (gi, g) in groups.iter().enumerate() {
                g.add(&Counts {
                    abandoned: g.in_hand.load(Ordering::SeqCst),
                    ..Counts::default()
                });
                if ends[gi].len() < per_group {
                    ends[gi].resize_with(per_group, || LoopEnd::because(StopReason::Stopped));
                    group_elapsed_ms[gi] = millis(started.elapsed());
                }
            }
        }
        let elapsed_ms = millis(started.elapsed());
        let fatal_error = shared
            .fatal_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let mut total = Counts::default();
        let mut group_reports = Vec::new();
        for ((g, ends), group_elapsed) in groups.iter().zip(ends).zip(group_elapsed_ms) {
            let counts = g.counts.lock().unwrap_or_else(|p| p.into_inner()).clone();
            total.add(&counts);
            let mut reason = ends
                .iter()
                .map(|e| e.reason)
                .max()
                .unwrap_or(StopReason::Fatal);
            if shared.is_fatal() {
                reason = StopReason::Fatal;
            }
            let ban = ends.iter().filter_map(|e| e.ban).max();
            group_reports.push(GroupReport {
                group: display_group(&g.name).to_owned(),
                counts,
                stop_reason: reason,
                ban_seconds: (reason == StopReason::RateLimited)
                    .then(|| ban.map(|b| b.as_secs()))
                    .flatten(),
                error: (reason == StopReason::Fatal)
                    .then(|| fatal_error.clone())
                    .flatten(),
                last_error: g
                    .last_error
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone(),
                elapsed_ms: group_elapsed,
            });
        }
        let stop_reason = group_reports
            .iter()
            .map(|g| g.stop_reason)
            .max()
            .unwrap_or(StopReason::Empty);
        let oldest = shared.oldest_pub_ms.load(Ordering::Relaxed);
        let now_ms = epoch_millis(SystemTime::now());
        let batches = shared.latency_batches.load(Ordering::Relaxed);
        let flow = self.flow.report().since(&flow_before);
        Report {
            counts: total,
            stop_reason,
            ban_seconds: group_reports.iter().filter_map(|g| g.ban_seconds).max(),
            error: if stop_reason == StopReason::Fatal {
                fatal_error
            } else {
                None
            },
            elapsed_ms,
            oldest_message_age_seconds: (oldest != u64::MAX)
                .then(|| now_ms.saturating_sub(oldest) / 1000),
            batch_latency_ms: (batches > 0)
                .then(|| shared.latency_total_ms.load(Ordering::Relaxed) / batches),
            timeouts: flow.timeouts(),
            throttles: flow.throttles(),
            flow,
            usage: Default::default(),
            groups: group_reports,
        }
    }

    /// Checks the host clock against the store's, once per pass before its first consume: a
    /// host whose clock is certainly off by more than `max_clock_offset` would misjudge
    /// other hosts' leases, so the pass does not start there.
    async fn check_clock(&self, shared: &PassShared, g: &GroupShared) -> ClockCheck {
        let mut checked = shared.clock_checked.lock().await;
        if *checked {
            return ClockCheck::Passed;
        }
        let deadline = shared.opts.deadline;
        // No answer within DynamoDB's attempt timeout is no answer: try again later.
        let attempt = self.flow.dynamodb.attempt_deadline(deadline);
        match self.store.clock_offset(attempt).await {
            Ok(Some(offset)) => match offset.check(self.settings.max_clock_offset) {
                Ok(()) => {
                    tracing::debug!(
                        offset_ms = offset.estimate_ms(),
                        uncertainty_ms = offset.uncertainty_ms(),
                        "host clock checked against the dedup table's"
                    );
                    *checked = true;
                    ClockCheck::Passed
                }
                Err(why) => {
                    shared.set_fatal(why);
                    ClockCheck::End(LoopEnd::because(StopReason::Fatal))
                }
            },
            Ok(None) => {
                tracing::warn!("the dedup table's endpoint does not tell its time (no Date header): the host clock is not checked");
                *checked = true;
                ClockCheck::Passed
            }
            Err(e) => {
                shared.note_port_error(&e);
                if shared.is_fatal() {
                    return ClockCheck::End(LoopEnd::because(StopReason::Fatal));
                }
                drop(checked);
                tracing::warn!(error = %e, "could not measure the host clock's offset from the dedup table's");
                *g.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(format!(
                    "could not measure the host clock's offset from DynamoDB's: {e}"
                ));
                let pause = Duration::from_secs(1);
                if !fits(pause, FIRST_BATCH_ESTIMATE, deadline) {
                    return ClockCheck::End(LoopEnd::because(StopReason::Budget));
                }
                shared.opts.stop.sleep(pause).await;
                ClockCheck::Retry
            }
        }
    }

    async fn consume_loop(
        self: &Arc<Self>,
        shared: &Arc<PassShared>,
        g: &Arc<GroupShared>,
    ) -> LoopEnd {
        let opts = &shared.opts;
        let group = (!g.name.is_empty()).then_some(g.name.as_str());
        let depth = self.settings.pipeline_depth;
        // One place for the consume in progress, `depth` for the batches behind it. Until a
        // first batch has gone through, only one: a wrong table or queue then costs one
        // extra consume, not `depth`.
        let in_flight = Arc::new(Semaphore::new(depth.min(1) + 1));
        let widened = Arc::new(AtomicBool::new(depth <= 1));
        let confirms = Arc::new(Semaphore::new(depth + 1));
        let mut tasks = JoinSet::new();
        let mut estimate = FIRST_BATCH_ESTIMATE;
        let slowest = Arc::new(AtomicU64::new(0));
        // How long a consume takes: the lead the stages behind need to be ready in.
        let mut consume_time = Duration::ZERO;
        let end = loop {
            if shared.is_fatal() {
                break LoopEnd::because(StopReason::Fatal);
            }
            if opts.stop.is_fired() {
                break LoopEnd::because(StopReason::Stopped);
            }
            match self.check_clock(shared, g).await {
                ClockCheck::Passed => {}
                ClockCheck::Retry => continue,
                ClockCheck::End(end) => break end,
            }
            estimate = estimate.max(Duration::from_millis(slowest.load(Ordering::Relaxed)));
            let remaining = opts.deadline.saturating_duration_since(Instant::now());
            if remaining < estimate + estimate / 5 + self.receipt_reserve() {
                break LoopEnd::because(StopReason::Budget);
            }
            // Reserve a batch (and its messages) before consuming, so concurrent loops never
            // overshoot the limits.
            if let Some(max) = opts.max_batches {
                if g.batches.fetch_add(1, Ordering::SeqCst) >= max {
                    break LoopEnd::because(StopReason::MaxBatches);
                }
            }
            let mut quantity = opts.quantity;
            if let Some(max) = opts.max_messages {
                let taken = g.messages.fetch_add(u64::from(quantity), Ordering::SeqCst);
                if taken >= max {
                    break LoopEnd::because(StopReason::MaxMessages);
                }
                let left =
                    u32::try_from((max - taken).min(u64::from(quantity))).unwrap_or(quantity);
                quantity = left.max(crate::top::api::MIN_QUANTITY);
            }
            // A stop wakes the waits below: the batches in hand finish without another.
            let permit = tokio::select! {
                permit = Arc::clone(&in_flight).acquire_owned() => permit,
                () = opts.stop.fired() => break LoopEnd::because(StopReason::Stopped),
            };
            let Ok(permit) = permit else {
                break LoopEnd::because(StopReason::Fatal);
            };
            // Back-pressure: while the requests of earlier batches still wait for AWS, a new
            // batch would only wait behind them, holding its messages (and their TMC lease).
            tokio::select! {
                () = self.flow.wait_for_room(consume_time, opts.deadline) => {}
                () = opts.stop.fired() => {}
            }
            // Waiting for a pipeline slot may have taken a while: look again.
            if shared.is_fatal() {
                break LoopEnd::because(StopReason::Fatal);
            }
            if opts.stop.is_fired() {
                break LoopEnd::because(StopReason::Stopped);
            }
            let consumed_at = Instant::now();
            let msgs = match self.tmc.consume(group, quantity, opts.deadline).await {
                Ok(m) => m,
                Err(e) => match self.on_consume_error(shared, g, &e).await {
                    Some(end) => break end,
                    None => continue,
                },
            };
            let took = consumed_at.elapsed();
            consume_time = if consume_time.is_zero() {
                took
            } else {
                (consume_time * 3 + took) / 4
            };
            if msgs.is_empty() {
                g.add(&Counts {
                    empty_polls: 1,
                    ..Counts::default()
                });
                if opts.mode == Mode::Drain {
                    break LoopEnd::because(StopReason::Empty);
                }
                let pause = opts.empty_backoff.max(Duration::from_millis(100));
                if !fits(pause, Duration::ZERO, opts.deadline) {
                    break LoopEnd::because(StopReason::Budget);
                }
                opts.stop.sleep(pause).await;
                continue;
            }
            let n = msgs.len() as u64;
            g.in_hand.fetch_add(n, Ordering::SeqCst);
            shared.progress.consumed.fetch_add(n, Ordering::Relaxed);
            g.add(&Counts {
                consumed: n,
                batches: 1,
                ..Counts::default()
            });
            let (relay, shared2, g2, slowest2) = (
                Arc::clone(self),
                Arc::clone(shared),
                Arc::clone(g),
                Arc::clone(&slowest),
            );
            let (in_flight2, widened2) = (Arc::clone(&in_flight), Arc::clone(&widened));
            let places = Places {
                batch: permit,
                confirms: Arc::clone(&confirms),
                lease: self
                    .lease_policy()
                    .lease_for(Duration::from_millis(slowest.load(Ordering::Relaxed))),
            };
            let work = async move {
                let counts = relay.process_batch(&shared2, &g2.name, msgs, places).await;
                g2.add(&counts);
                g2.in_hand.fetch_sub(n, Ordering::SeqCst);
                // The first batch went through: open the other places (depth >= 2 here).
                if !shared2.is_fatal() && !widened2.swap(true, Ordering::SeqCst) {
                    in_flight2.add_permits(depth - 1);
                }
                let took = millis(consumed_at.elapsed());
                slowest2.fetch_max(took, Ordering::Relaxed);
                shared2.latency_total_ms.fetch_add(took, Ordering::Relaxed);
                shared2.latency_batches.fetch_add(1, Ordering::Relaxed);
            };
            if depth == 0 {
                work.await;
            } else {
                tasks.spawn(work);
            }
            if let Some(max) = opts.max_messages {
                if g.counts.lock().unwrap_or_else(|p| p.into_inner()).consumed >= max {
                    break LoopEnd::because(StopReason::MaxMessages);
                }
            }
        };
        while let Some(r) = tasks.join_next().await {
            if let Err(e) = r {
                shared.set_fatal(format!("a batch task crashed: {e}"));
            }
        }
        end
    }

    /// Decides what a failed consume means for the loop: `Some(end)` stops it.
    async fn on_consume_error(
        &self,
        shared: &PassShared,
        g: &GroupShared,
        e: &TopError,
    ) -> Option<LoopEnd> {
        let deadline = shared.opts.deadline;
        match e.class() {
            ErrorClass::RateLimited { ban } => {
                if fits(ban, FIRST_BATCH_ESTIMATE, deadline) {
                    tracing::warn!(
                        ban_secs = ban.as_secs(),
                        "TOP call limit: waiting out the ban within the budget"
                    );
                    shared.opts.stop.sleep(ban).await;
                    None
                } else {
                    tracing::warn!(ban_secs = ban.as_secs(), error = %e, "TOP call limit: stopping the pass");
                    Some(LoopEnd {
                        reason: StopReason::RateLimited,
                        ban: Some(ban),
                    })
                }
            }
            ErrorClass::Fatal { check } => {
                shared.set_fatal(format!("{e}. Check {check}."));
                Some(LoopEnd::because(StopReason::Fatal))
            }
            ErrorClass::Permanent => {
                shared.set_fatal(format!("{e}. Check TMC_GROUP_NAMES and TMC_QUANTITY."));
                Some(LoopEnd::because(StopReason::Fatal))
            }
            ErrorClass::Transient => {
                // The client already retried; pause once more, then let the budget decide.
                tracing::warn!(error = %e, "consume failed after retries");
                *g.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
                let pause = Duration::from_secs(1);
                if !fits(pause, FIRST_BATCH_ESTIMATE, deadline) {
                    return Some(LoopEnd::because(StopReason::Budget));
                }
                shared.opts.stop.sleep(pause).await;
                None
            }
        }
    }

    /// The time a batch keeps for writing its receipt after its claims and sends: two
    /// DynamoDB retransmission timeouts as observed, within [`RECEIPT_RESERVE`].
    fn receipt_reserve(&self) -> Duration {
        let (least, most) = RECEIPT_RESERVE;
        self.flow
            .dynamodb
            .rto()
            .map_or(least, |rto| rto.saturating_mul(2).clamp(least, most))
    }

    fn lease_policy(&self) -> LeasePolicy {
        let st = &self.settings;
        LeasePolicy {
            floor: st.lease_floor,
            ceiling: st.lease_ceiling,
            max_attempts: st.max_send_attempts,
            retention: st.retention,
            parallelism: st.parallelism,
            clock_allowance: st.max_clock_offset,
        }
    }
}

/// The group name reports and bodies use.
pub fn display_group(name: &str) -> &str {
    if name.is_empty() {
        "default"
    } else {
        name
    }
}

/// A token no other call will produce: time, process, a counter and per-process randomness.
pub fn unique_token(prefix: &str) -> String {
    use std::hash::{BuildHasher, Hasher};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.write_u32(std::process::id());
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    h.write_u64(n);
    format!("{prefix}-{:016x}-{n}", h.finish())
}
