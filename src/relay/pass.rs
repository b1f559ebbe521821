//! One relay pass: consume → claim → enqueue → complete → confirm, for every configured group,
//! with `concurrency` consume loops per group, until a stop condition.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use futures::stream::{self, StreamExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::body::{pack, parking_entry, relay_entry, Defect, FifoGroupBy};
use super::ports::{
    Claim, ClaimOutcome, DedupStore, EntryOutcome, Outgoing, PortError, Queue, Severity, Tmc,
};
use super::report::{Counts, GroupReport, Report, StopReason};
use crate::top::clock::{epoch_millis, epoch_secs, parse_wire_time};
use crate::top::{ErrorClass, TmcMessage, TopError};

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
    /// Added to the pass deadline to form a claim's lease, so a claim outlives its holder's
    /// last call but frees itself soon after the holder is certainly gone.
    pub claim_grace: Duration,
    /// SQS attempts per entry for retryable failures (SenderFault=false, throttling, 5xx).
    pub max_send_attempts: u32,
    /// Concurrent DynamoDB claims and SQS batches per batch of messages.
    pub parallelism: usize,
    /// Batches processed at once per consume loop while the next consume runs; 0 turns
    /// pipelining off (consume, then process, then consume: the naive baseline). At most
    /// `pipeline_depth + 1` batches of messages per loop are in memory. A batch gives up its
    /// place once its messages are in SQS and recorded, then confirms in one of as many
    /// confirm places: a confirm holds up consuming only when confirms lag.
    pub pipeline_depth: usize,
}

impl Default for RelaySettings {
    fn default() -> Self {
        Self {
            retention: Duration::from_secs(7 * 24 * 3600),
            fifo_group_by: FifoGroupBy::default(),
            claim_grace: Duration::from_secs(10),
            max_send_attempts: 4,
            parallelism: 32,
            // Claims in waves of `parallelism`, SQS and the completion record take three to
            // four consume round trips: fewer places leave the consume waiting (see
            // `make bench`); each place can hold a batch of messages in memory.
            pipeline_depth: 4,
        }
    }
}

/// What one pass should do; built from configuration and the invocation payload.
#[derive(Clone, Debug)]
pub struct PassOptions {
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
}

/// The relay: three ports and its settings.
pub struct Relay<T, Q, D> {
    pub tmc: T,
    pub queue: Q,
    pub parking: Q,
    pub store: D,
    pub settings: RelaySettings,
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
    owner: String,
    /// Set on the first fatal error: every loop stops consuming.
    fatal: AtomicBool,
    fatal_error: Mutex<Option<String>>,
    /// Wall-clock deadline, for claim leases.
    wall_deadline: SystemTime,
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
}

/// A group's budget of batches and messages, shared by its loops.
struct GroupShared {
    name: String,
    batches: AtomicU64,
    messages: AtomicU64,
    counts: Mutex<Counts>,
    /// The last consume failure that was retried away, for the report.
    last_error: Mutex<Option<String>>,
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

/// How many times, in one pass, an entry is sent again after a send that may have stored it
/// (no answer) on a standard queue. Each resend of a stored message is one more copy, and
/// resending into a queue too slow to answer makes it slower still (an SQS brownout; moto at
/// depth turned 3,000 messages into 5,000 copies this way). FIFO queues drop a repeat of a
/// MessageDeduplicationId, so there every attempt is allowed.
const MAX_BLIND_RESENDS: u32 = 1;

/// The lowest lease estimate for a batch before any was timed.
const FIRST_BATCH_ESTIMATE: Duration = Duration::from_millis(500);

impl<T: Tmc, Q: Queue, D: DedupStore> Relay<T, Q, D> {
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
        let remaining = opts.deadline.saturating_duration_since(started);
        let shared = Arc::new(PassShared {
            owner: pass_owner(),
            fatal: AtomicBool::new(false),
            fatal_error: Mutex::new(None),
            wall_deadline: SystemTime::now() + remaining,
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
        while let Some(joined) = loops.join_next().await {
            match joined {
                Ok((gi, end)) => {
                    ends[gi].push(end);
                    group_elapsed_ms[gi] = started.elapsed().as_millis() as u64;
                }
                Err(e) => shared.set_fatal(format!("a consume loop crashed: {e}")),
            }
        }
        let elapsed_ms = started.elapsed().as_millis() as u64;
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
            usage: Default::default(),
            groups: group_reports,
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
        let end = loop {
            if shared.is_fatal() {
                break LoopEnd {
                    reason: StopReason::Fatal,
                    ban: None,
                };
            }
            estimate = estimate.max(Duration::from_millis(slowest.load(Ordering::Relaxed)));
            let remaining = opts.deadline.saturating_duration_since(Instant::now());
            if remaining < estimate + estimate / 5 {
                break LoopEnd {
                    reason: StopReason::Budget,
                    ban: None,
                };
            }
            // Reserve a batch (and its messages) before consuming, so concurrent loops never
            // overshoot the limits.
            if let Some(max) = opts.max_batches {
                if g.batches.fetch_add(1, Ordering::SeqCst) >= max {
                    break LoopEnd {
                        reason: StopReason::MaxBatches,
                        ban: None,
                    };
                }
            }
            let mut quantity = opts.quantity;
            if let Some(max) = opts.max_messages {
                let taken = g.messages.fetch_add(u64::from(quantity), Ordering::SeqCst);
                if taken >= max {
                    break LoopEnd {
                        reason: StopReason::MaxMessages,
                        ban: None,
                    };
                }
                let left = (max - taken).min(u64::from(quantity)) as u32;
                quantity = left.max(crate::top::api::MIN_QUANTITY);
            }
            let permit = match Arc::clone(&in_flight).acquire_owned().await {
                Ok(p) => p,
                Err(_) => {
                    break LoopEnd {
                        reason: StopReason::Fatal,
                        ban: None,
                    }
                }
            };
            // Waiting for a pipeline slot may have taken a while: look again.
            if shared.is_fatal() {
                break LoopEnd {
                    reason: StopReason::Fatal,
                    ban: None,
                };
            }
            let consumed_at = Instant::now();
            let msgs = match self.tmc.consume(group, quantity, opts.deadline).await {
                Ok(m) => m,
                Err(e) => match self.on_consume_error(shared, g, &e).await {
                    Some(end) => break end,
                    None => continue,
                },
            };
            if msgs.is_empty() {
                g.add(&Counts {
                    empty_polls: 1,
                    ..Counts::default()
                });
                if opts.mode == Mode::Drain {
                    break LoopEnd {
                        reason: StopReason::Empty,
                        ban: None,
                    };
                }
                let pause = opts.empty_backoff.max(Duration::from_millis(100));
                if Instant::now() + pause >= opts.deadline {
                    break LoopEnd {
                        reason: StopReason::Budget,
                        ban: None,
                    };
                }
                tokio::time::sleep(pause).await;
                continue;
            }
            let n = msgs.len() as u64;
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
            };
            let work = async move {
                let counts = relay.process_batch(&shared2, &g2.name, msgs, places).await;
                g2.add(&counts);
                // The first batch went through: open the other places (depth >= 2 here).
                if !shared2.is_fatal() && !widened2.swap(true, Ordering::SeqCst) {
                    in_flight2.add_permits(depth - 1);
                }
                let took = consumed_at.elapsed();
                slowest2.fetch_max(took.as_millis() as u64, Ordering::Relaxed);
                shared2
                    .latency_total_ms
                    .fetch_add(took.as_millis() as u64, Ordering::Relaxed);
                shared2.latency_batches.fetch_add(1, Ordering::Relaxed);
            };
            if depth == 0 {
                work.await;
            } else {
                tasks.spawn(work);
            }
            if let Some(max) = opts.max_messages {
                if g.counts.lock().unwrap_or_else(|p| p.into_inner()).consumed >= max {
                    break LoopEnd {
                        reason: StopReason::MaxMessages,
                        ban: None,
                    };
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
                if Instant::now() + ban + FIRST_BATCH_ESTIMATE < deadline {
                    tracing::warn!(
                        ban_secs = ban.as_secs(),
                        "TOP call limit: waiting out the ban within the budget"
                    );
                    tokio::time::sleep(ban).await;
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
                Some(LoopEnd {
                    reason: StopReason::Fatal,
                    ban: None,
                })
            }
            ErrorClass::Permanent => {
                shared.set_fatal(format!("{e}. Check TMC_GROUP_NAMES and TMC_QUANTITY."));
                Some(LoopEnd {
                    reason: StopReason::Fatal,
                    ban: None,
                })
            }
            ErrorClass::Transient => {
                // The client already retried; pause once more, then let the budget decide.
                tracing::warn!(error = %e, "consume failed after retries");
                *g.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
                let pause = Duration::from_secs(1);
                if Instant::now() + pause + FIRST_BATCH_ESTIMATE >= deadline {
                    return Some(LoopEnd {
                        reason: StopReason::Budget,
                        ban: None,
                    });
                }
                tokio::time::sleep(pause).await;
                None
            }
        }
    }

    /// Claims, enqueues, parks, completes and confirms one consumed batch. Confirms only ids
    /// that are in SQS (now or from an earlier delivery) or parked.
    async fn process_batch(
        &self,
        shared: &PassShared,
        group_name: &str,
        msgs: Vec<TmcMessage>,
        places: Places,
    ) -> Counts {
        let opts = &shared.opts;
        let deadline = opts.deadline;
        let group = display_group(group_name);
        let mut counts = Counts::default();
        let now = SystemTime::now();
        let now_ms = epoch_millis(now);
        for m in &msgs {
            if let Some(t) = m.pub_time.as_deref().and_then(parse_wire_time) {
                shared
                    .oldest_pub_ms
                    .fetch_min(epoch_millis(t), Ordering::Relaxed);
            }
        }

        // 1. Triage: ids that cannot be confirmed, repeats inside the batch, defects.
        let fifo = self.queue.is_fifo().then_some(self.settings.fifo_group_by);
        let max_bytes = self.queue.max_message_bytes();
        let mut seen = HashSet::new();
        let mut candidates: Vec<(TmcMessage, Result<Outgoing, Defect>)> = Vec::new();
        let mut invalid: Vec<(TmcMessage, Defect)> = Vec::new();
        for m in msgs {
            let Some(id) = m.id else {
                let d = Defect {
                    code: "invalid_id",
                    reason: m.id_problem.clone().unwrap_or_default(),
                };
                tracing::warn!(group, reason = %d.reason, "message without a valid id: cannot be confirmed");
                invalid.push((m, d));
                continue;
            };
            if !seen.insert(id) {
                counts.duplicates += 1;
                continue;
            }
            let entry = relay_entry(&m, group, fifo, max_bytes);
            candidates.push((m, entry));
        }
        counts.invalid = invalid.len() as u64;

        // 2. Claim every candidate (conditional writes, concurrently).
        let lease_until_ms = epoch_millis(shared.wall_deadline + self.settings.claim_grace);
        let expires_at = epoch_secs(now + self.settings.retention);
        let claim_inputs: Vec<(String, String)> = candidates
            .iter()
            .map(|(m, _)| {
                (
                    m.id.map(|i| i.to_string()).unwrap_or_default(),
                    m.topic.clone().unwrap_or_default(),
                )
            })
            .collect();
        let owner = shared.owner.as_str();
        let mut claims = stream::iter(claim_inputs.into_iter().enumerate().map(
            |(i, (id, topic))| async move {
                let claim = self.store.claim(Claim {
                    id: &id,
                    owner,
                    lease_until_ms,
                    now_ms,
                    expires_at,
                    topic: &topic,
                    group,
                });
                let r = match tokio::time::timeout_at(deadline, claim).await {
                    Ok(r) => r,
                    Err(_) => Err(PortError::new(
                        "PutItem",
                        Severity::Retryable,
                        "no answer before the pass deadline",
                    )),
                };
                (i, id, r)
            },
        ))
        // Unordered: a slow answer must not hold up the next claims behind it.
        .buffer_unordered(self.settings.parallelism.max(1))
        .collect::<Vec<_>>()
        .await;
        claims.sort_unstable_by_key(|(i, _, _)| *i);

        let mut confirm_ids: Vec<u64> = Vec::new();
        let mut to_send: Vec<Outgoing> = Vec::new();
        let mut to_park: Vec<(TmcMessage, Defect)> = Vec::new();
        let mut by_id: HashMap<String, TmcMessage> = HashMap::new();
        for ((m, entry), (_, id, claim)) in candidates.into_iter().zip(claims) {
            match claim {
                Ok(ClaimOutcome::Claimed) => match entry {
                    Ok(e) => {
                        by_id.insert(id, m);
                        to_send.push(e);
                    }
                    Err(d) => to_park.push((m, d)),
                },
                Ok(ClaimOutcome::AlreadyDone { .. }) => {
                    tracing::debug!(group, id, "already enqueued: confirming without enqueueing");
                    counts.duplicates += 1;
                    confirm_ids.extend(m.id);
                }
                Ok(ClaimOutcome::HeldElsewhere) => {
                    tracing::debug!(group, id, "claimed by another live pass");
                    counts.held_elsewhere += 1;
                }
                Err(e) => {
                    self.note_port_error(shared, &e);
                    tracing::warn!(group, id, error = %e, "claim failed: leaving the message for redelivery");
                    counts.deferred += 1;
                }
            }
        }

        // 3. Enqueue what we claimed.
        let mut done: Vec<(String, bool)> = Vec::new();
        let mut to_release: Vec<String> = Vec::new();
        let sent = self.send_all(shared, &self.queue, to_send, deadline).await;
        for (id, result) in sent {
            let Some(m) = by_id.remove(&id) else { continue };
            match result {
                Sent::Accepted => {
                    counts.enqueued += 1;
                    confirm_ids.extend(m.id);
                    done.push((id, false));
                }
                Sent::Rejected(reason) => {
                    to_park.push((
                        m,
                        Defect {
                            code: "sqs_rejected",
                            reason,
                        },
                    ));
                }
                Sent::Failed(reason) => {
                    tracing::warn!(
                        group,
                        id,
                        reason,
                        "enqueue failed: releasing the claim for redelivery"
                    );
                    to_release.push(id);
                    counts.deferred += 1;
                }
                Sent::Unknown(reason) => {
                    // SQS may hold it: keep the claim, so a redelivery within its lease is not
                    // enqueued again; after the lease a redelivery takes the claim over.
                    tracing::warn!(
                        group,
                        id,
                        reason,
                        "enqueue outcome unknown: keeping the claim until its lease ends"
                    );
                    counts.deferred += 1;
                }
            }
        }

        // 4. Park what can never be enqueued (and, for inspection, what has no valid id).
        let parked_at = rfc3339_now();
        let park_max = self.parking.max_message_bytes();
        let mut parking: Vec<Outgoing> = Vec::new();
        let mut parked_msgs: HashMap<String, (TmcMessage, bool)> = HashMap::new();
        let tagged = to_park
            .into_iter()
            .map(|x| (true, x))
            .chain(invalid.into_iter().map(|x| (false, x)));
        for (claimed, (m, d)) in tagged {
            let entry_id =
                m.id.map(|x| x.to_string())
                    .unwrap_or_else(|| format!("noid-{}", parking.len()));
            tracing::warn!(group, id = entry_id, reason_code = d.code, reason = %d.reason, "parking message");
            parking.push(parking_entry(
                &m, group, &d, &parked_at, park_max, &entry_id,
            ));
            parked_msgs.insert(entry_id, (m, claimed));
        }
        for (id, result) in self
            .send_all(shared, &self.parking, parking, deadline)
            .await
        {
            let Some((m, claimed)) = parked_msgs.remove(&id) else {
                continue;
            };
            if !claimed {
                continue; // no valid id: counted as invalid, never confirmed
            }
            match result {
                Sent::Accepted => {
                    counts.parked += 1;
                    confirm_ids.extend(m.id);
                    done.push((id, true));
                }
                Sent::Rejected(reason) | Sent::Failed(reason) => {
                    tracing::error!(
                        group,
                        id,
                        reason,
                        "parking failed: leaving the message for redelivery"
                    );
                    to_release.push(id);
                    counts.deferred += 1;
                }
                Sent::Unknown(reason) => {
                    tracing::error!(
                        group,
                        id,
                        reason,
                        "parking outcome unknown: keeping the claim until its lease ends"
                    );
                    counts.deferred += 1;
                }
            }
        }

        self.release_all(to_release, &shared.owner, deadline).await;

        // 5. Record completion. A failure here only weakens dedup for a redelivery; the
        //    messages are safe in SQS, so they are still confirmed.
        if !done.is_empty() {
            match self.store.complete(&done, expires_at, deadline).await {
                Ok(failed) if !failed.is_empty() => {
                    tracing::warn!(
                        group,
                        count = failed.len(),
                        "could not record some ids as done; a redelivery may be enqueued again"
                    )
                }
                Ok(_) => {}
                Err(e) => {
                    self.note_port_error(shared, &e);
                    tracing::warn!(group, error = %e, "could not record ids as done; a redelivery may be enqueued again");
                }
            }
        }
        shared
            .progress
            .enqueued
            .fetch_add(counts.enqueued, Ordering::Relaxed);

        // 6. Confirm exactly what is safe. The messages are done with: trade the batch's
        //    place for a confirm place, so the next consume can start.
        drop((by_id, parked_msgs));
        let _confirming = places.confirms.acquire_owned().await;
        drop(places.batch);
        if !confirm_ids.is_empty() {
            tracing::debug!(group, ids = ?confirm_ids, "confirming");
            let group_param = (!group_name.is_empty()).then_some(group_name);
            for chunk in self.tmc.confirm(group_param, &confirm_ids, deadline).await {
                match chunk.result {
                    Ok(true) => counts.confirmed += chunk.ids.len() as u64,
                    Ok(false) => {
                        tracing::warn!(
                            group,
                            count = chunk.ids.len(),
                            "confirm answered is_success=false: TMC will redeliver"
                        );
                        counts.confirm_failed += chunk.ids.len() as u64;
                    }
                    Err(e) => {
                        tracing::warn!(group, count = chunk.ids.len(), error = %e, "confirm failed: TMC will redeliver");
                        if let ErrorClass::Fatal { check } = e.class() {
                            shared.set_fatal(format!("{e}. Check {check}."));
                        }
                        counts.confirm_failed += chunk.ids.len() as u64;
                    }
                }
            }
        }
        shared
            .progress
            .confirmed
            .fetch_add(counts.confirmed, Ordering::Relaxed);
        tracing::info!(
            group,
            enqueued = counts.enqueued,
            duplicates = counts.duplicates,
            parked = counts.parked,
            deferred = counts.deferred,
            invalid = counts.invalid,
            confirmed = counts.confirmed,
            confirm_failed = counts.confirm_failed,
            "batch done"
        );
        counts
    }

    /// Sends entries with bounded retries; isolates entries when a whole batch is refused.
    async fn send_all(
        &self,
        shared: &PassShared,
        queue: &Q,
        entries: Vec<Outgoing>,
        deadline: Instant,
    ) -> Vec<(String, Sent)> {
        let mut results: Vec<(String, Sent)> = Vec::with_capacity(entries.len());
        let mut pending = entries;
        let mut solo: HashSet<String> = HashSet::new();
        // Entries some attempt of which got no answer: SQS may hold them already. The count is
        // how many such attempts each had.
        let mut unknown: HashMap<String, u32> = HashMap::new();
        let mut attempt = 0u32;
        while !pending.is_empty() {
            attempt += 1;
            if shared.is_fatal() {
                results.extend(
                    pending
                        .drain(..)
                        .map(|e| (e.id, Sent::Failed("the pass hit a fatal error".into()))),
                );
                break;
            }
            let (singles, grouped): (Vec<Outgoing>, Vec<Outgoing>) =
                pending.drain(..).partition(|e| solo.contains(&e.id));
            let mut batches = pack(grouped);
            batches.extend(singles.into_iter().map(|e| vec![e]));
            let replies = stream::iter(batches.into_iter().map(|batch| async move {
                let r = queue.send_batch(&batch, deadline).await;
                (batch, r)
            }))
            .buffer_unordered(self.settings.parallelism.max(1))
            .collect::<Vec<_>>()
            .await;
            let mut retry: Vec<(Outgoing, String)> = Vec::new();
            for (batch, reply) in replies {
                match reply {
                    Ok(outcomes) if outcomes.len() == batch.len() => {
                        for (e, o) in batch.into_iter().zip(outcomes) {
                            match o {
                                EntryOutcome::Accepted => results.push((e.id, Sent::Accepted)),
                                EntryOutcome::Rejected { code, message } => results.push((
                                    e.id,
                                    Sent::Rejected(format!(
                                        "SQS rejected the message: {code}: {message}"
                                    )),
                                )),
                                EntryOutcome::Retry { code, message } => {
                                    retry.push((e, format!("{code}: {message}")))
                                }
                            }
                        }
                    }
                    Ok(outcomes) => {
                        let why = format!(
                            "SQS answered {} results for {} entries",
                            outcomes.len(),
                            batch.len()
                        );
                        retry.extend(batch.into_iter().map(|e| (e, why.clone())));
                    }
                    Err(err) => match err.severity {
                        Severity::Retryable => {
                            if err.maybe_applied {
                                for e in &batch {
                                    *unknown.entry(e.id.clone()).or_default() += 1;
                                }
                            }
                            retry.extend(batch.into_iter().map(|e| (e, err.to_string())))
                        }
                        Severity::Permanent if batch.len() > 1 => {
                            // One bad entry can fail a whole request: resend one by one.
                            for e in batch {
                                solo.insert(e.id.clone());
                                retry.push((e, err.to_string()));
                            }
                            attempt = attempt.saturating_sub(1);
                        }
                        Severity::Permanent => results.extend(
                            batch
                                .into_iter()
                                .map(|e| (e.id, Sent::Rejected(err.to_string()))),
                        ),
                        Severity::Fatal => {
                            self.note_port_error(shared, &err);
                            results.extend(
                                batch
                                    .into_iter()
                                    .map(|e| (e.id, Sent::Failed(err.to_string()))),
                            );
                        }
                    },
                }
            }
            if !queue.is_fifo() {
                // A standard queue keeps every copy: past the cap, leave the entry to the
                // claim's lease and TMC's redelivery instead of sending it again blind.
                let (blind, again): (Vec<_>, Vec<_>) = retry
                    .into_iter()
                    .partition(|(e, _)| unknown.get(&e.id).is_some_and(|n| *n > MAX_BLIND_RESENDS));
                results.extend(blind.into_iter().map(|(e, why)| (e.id, Sent::Unknown(why))));
                retry = again;
            }
            if retry.is_empty() {
                break;
            }
            let pause = backoff(attempt);
            if attempt >= self.settings.max_send_attempts
                || Instant::now() + pause + Duration::from_millis(100) >= deadline
            {
                results.extend(retry.into_iter().map(|(e, why)| {
                    let sent = if unknown.contains_key(&e.id) {
                        Sent::Unknown(why)
                    } else {
                        Sent::Failed(why)
                    };
                    (e.id, sent)
                }));
                break;
            }
            tokio::time::sleep(pause).await;
            pending = retry.into_iter().map(|(e, _)| e).collect();
        }
        results
    }

    /// Gives up the claims of messages that failed, concurrently and within the pass deadline:
    /// a release that cannot happen in time is replaced by the claim's lease running out.
    async fn release_all(&self, ids: Vec<String>, owner: &str, deadline: Instant) {
        if ids.is_empty() {
            return;
        }
        let until = deadline.min(Instant::now() + Duration::from_secs(3));
        stream::iter(ids)
            .for_each_concurrent(self.settings.parallelism.max(1), |id| async move {
                let r = match tokio::time::timeout_at(until, self.store.release(&id, owner)).await
                {
                    Ok(r) => r,
                    Err(_) => Err(PortError::new(
                        "DeleteItem",
                        Severity::Retryable,
                        "no answer before the pass deadline",
                    )),
                };
                if let Err(e) = r {
                    tracing::warn!(id, error = %e, "could not release claim; it expires with its lease");
                }
            })
            .await;
    }

    fn note_port_error(&self, shared: &PassShared, e: &PortError) {
        if e.severity == Severity::Fatal {
            shared.set_fatal(format!("{e}. Check RELAY_QUEUE_URL, PARKING_QUEUE_URL, DEDUP_TABLE_NAME and the function's IAM permissions."));
        }
    }
}

/// A batch's place in its loop's pipeline, and where it confirms.
struct Places {
    /// Taken before the consume; given up once the messages are in SQS and recorded.
    batch: OwnedSemaphorePermit,
    /// Bounds the confirms in flight, so confirms that lag still slow consuming down.
    confirms: Arc<Semaphore>,
}

enum Sent {
    Accepted,
    /// Will never be accepted by this queue.
    Rejected(String),
    /// Retryable failure that outlived its attempts or the budget.
    Failed(String),
    /// Like `Failed`, but some attempt got no answer: the queue may hold the message.
    Unknown(String),
}

fn backoff(attempt: u32) -> Duration {
    let base = 50u64 << attempt.min(6);
    let jitter = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0) as u64)
        % (base + 1);
    Duration::from_millis(base / 2 + jitter / 2)
}

/// The group name reports and bodies use.
pub fn display_group(name: &str) -> &str {
    if name.is_empty() {
        "default"
    } else {
        name
    }
}

fn pass_owner() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.write_u32(std::process::id());
    format!("pass-{:016x}", h.finish())
}

fn rfc3339_now() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}
