//! Per-batch leases and receipts: the dedup protocol over the [`DedupStore`] port.
//!
//! A batch first writes its record `b#<token>` with a short lease, then claims each message
//! with one small item naming the batch (`INSERT`, 25 to a request). While the batch works, a
//! heartbeat moves the lease on; once its sends settle, the record lists the ids SQS or the
//! parking queue accepted (the receipt) and the lease ends. One write per message, a few per
//! batch.
//!
//! A claim that meets an existing item decides by the batch record the item names:
//! accepted → done (confirm); lease live, or unknown outcome still held → held elsewhere;
//! otherwise the claim is taken over, conditioned on the old item. Expired items count as
//! absent; items of the previous version (`status` = `done`/`parked`/`claimed`) keep their
//! meaning.
//!
//! Crash points, each tested below: a batch that dies after its claims, after SQS accepted,
//! or with its receipt unwritten leaves nothing confirmed, and a redelivery after its lease
//! takes the claims over (at worst a duplicate, never a loss); after the receipt, a
//! redelivery is confirmed without being sent again.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::stream::{self, StreamExt};
use tokio::time::Instant;

use super::flow::Limiter;
use super::ports::{
    BatchRecord, ClaimItem, DedupStore, InsertOutcome, Key, NewClaim, PortError, Renewal, Settle,
    Severity, Stored, TakeOver, READ_CHUNK,
};
use super::send::{backoff, backoff_capped};
use crate::top::clock::epoch_millis;

/// Wall-clock epoch milliseconds: the system clock, or a manual one for tests.
#[derive(Clone, Default)]
pub struct Clock(Option<Arc<AtomicU64>>);

impl Clock {
    pub fn system() -> Self {
        Self(None)
    }

    /// A clock that stands still at `start_ms` until advanced.
    pub fn manual(start_ms: u64) -> Self {
        Self(Some(Arc::new(AtomicU64::new(start_ms))))
    }

    pub fn now_ms(&self) -> u64 {
        match &self.0 {
            Some(t) => t.load(Ordering::SeqCst),
            None => epoch_millis(SystemTime::now()),
        }
    }

    /// Moves a manual clock on (the system clock moves by itself).
    pub fn advance(&self, by: Duration) {
        if let Some(t) = &self.0 {
            t.fetch_add(millis(by), Ordering::SeqCst);
        }
    }
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() { "manual" } else { "system" })
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// How long leases last, and how hard the protocol tries.
#[derive(Clone, Debug)]
pub struct LeasePolicy {
    /// The shortest lease: long enough for a heartbeat or two to fail without losing it.
    pub floor: Duration,
    /// The longest lease, however slow batches get: a dead batch frees its messages within it.
    pub ceiling: Duration,
    /// Attempts per request for retryable failures.
    pub max_attempts: u32,
    /// How long items live (TTL): must outlast TMC's one-day redelivery window.
    pub retention: Duration,
    /// Requests in flight per batch at most (the flow limit decides below it).
    pub parallelism: usize,
    /// How far a host's clock may be from the servers' (`MAX_CLOCK_OFFSET_MS`, checked at
    /// start). Two hosts may then differ by twice this, so a holder stops sending that much
    /// before its lease ends by its own clock.
    pub clock_allowance: Duration,
}

impl Default for LeasePolicy {
    fn default() -> Self {
        Self {
            floor: Duration::from_secs(60),
            ceiling: Duration::from_secs(600),
            max_attempts: 4,
            retention: Duration::from_secs(7 * 24 * 3600),
            parallelism: 32,
            clock_allowance: DEFAULT_CLOCK_ALLOWANCE,
        }
    }
}

/// The default `clock_allowance`.
pub const DEFAULT_CLOCK_ALLOWANCE: Duration = Duration::from_secs(2);

/// A send is not started with less than this left of the lease (after the allowance).
const LEAST_SEND_TIME: Duration = Duration::from_millis(500);

impl LeasePolicy {
    /// A batch's lease: three times the slowest batch seen, within the floor and ceiling. The
    /// heartbeat renews it every third of it.
    pub fn lease_for(&self, slowest_batch: Duration) -> Duration {
        slowest_batch
            .saturating_mul(3)
            .clamp(self.floor, self.ceiling.max(self.floor))
    }
}

/// What an existing claim item means for a new delivery of its message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Our own claim (a retried insert whose first answer was lost).
    Mine,
    /// Safely in SQS or parked by an earlier delivery: confirm without sending.
    Done,
    /// A live batch holds it, or its send outcome is unknown for a while yet: leave it.
    Held,
    /// Its holder died or let it go: take the claim over.
    TakeOver,
}

/// The rules, pure. `record` is the batch record `item` names, if it exists.
pub fn decide(
    item: &ClaimItem,
    record: Option<&BatchRecord>,
    my_batch: &str,
    now_ms: u64,
) -> Decision {
    if item.expires_at.saturating_mul(1000) < now_ms {
        return Decision::TakeOver;
    }
    let Some(batch) = item.batch.as_deref() else {
        // The previous version's items.
        return match item.legacy_status.as_deref() {
            Some("done" | "parked") => Decision::Done,
            _ if item.lease_until_ms >= now_ms => Decision::Held,
            _ => Decision::TakeOver,
        };
    };
    if batch == my_batch {
        return Decision::Mine;
    }
    let Some(r) = record else {
        // The record went with its TTL (or was never written: a batch writes it first).
        return Decision::TakeOver;
    };
    if r.accepted.contains(&item.id) {
        Decision::Done
    } else if (!r.settled && !r.fenced && r.lease_until_ms >= now_ms)
        || (r.settled && r.held.contains(&item.id) && r.hold_until_ms >= now_ms)
    {
        // A live batch's, or its send outcome unknown for a while yet.
        Decision::Held
    } else {
        Decision::TakeOver
    }
}

/// A batch's lease, once its record is written.
#[derive(Clone, Debug)]
pub struct BatchLease {
    pub token: String,
    pub lease: Duration,
    pub expires_at: u64,
    /// What the holder knows of its lease: shared by its sends (the fence) and its heartbeat.
    pub state: Arc<LeaseState>,
}

/// How long a lease is surely its holder's, by the holder's clock.
#[derive(Debug, Default)]
pub struct LeaseState {
    /// Epoch ms: when the last write of the lease that is known to hold was sent, plus the
    /// lease. The stored lease ends no earlier (a write only moves it forward).
    valid_until_ms: AtomicU64,
    /// A renewal found the lease lapsed or fenced by a takeover: it is gone for good.
    lost: AtomicBool,
}

impl LeaseState {
    fn extend_to(&self, until_ms: u64) {
        self.valid_until_ms.fetch_max(until_ms, Ordering::SeqCst);
    }

    fn lose(&self) {
        self.lost.store(true, Ordering::SeqCst);
    }

    /// True once a renewal found the lease gone.
    pub fn is_lost(&self) -> bool {
        self.lost.load(Ordering::SeqCst)
    }

    /// The epoch ms until which the lease is known to hold.
    pub fn valid_until_ms(&self) -> u64 {
        self.valid_until_ms.load(Ordering::SeqCst)
    }
}

/// A written receipt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settled {
    /// Written after the batch's lease could have lapsed (or after it was lost): its accepted
    /// ids may have been taken over and sent again by another batch.
    pub late: bool,
}

/// What the claims of a batch decided, by id.
#[derive(Debug, Default, PartialEq)]
pub struct Claimed {
    /// Ours: send (or park) them.
    pub mine: Vec<u64>,
    /// Done by an earlier delivery: confirm only.
    pub done: Vec<u64>,
    /// Held by a live batch: neither send nor confirm.
    pub held: Vec<u64>,
    /// Could not be claimed: left for redelivery, with the last error.
    pub failed: Vec<(u64, PortError)>,
    /// Claims that had to take an existing item over.
    pub taken_over: u64,
}

/// The protocol, over one store and the flow limit of its requests.
pub struct Leases<'a, D> {
    pub store: &'a D,
    pub limiter: &'a Limiter,
    pub policy: &'a LeasePolicy,
    pub clock: &'a Clock,
}

impl<D: DedupStore> Leases<'_, D> {
    /// Writes the batch's record with a live lease. Nothing is claimed without it. The lease
    /// is counted from when its write was sent (the first attempt's, since a later attempt
    /// may find the first one's record), not from before the wait for a place.
    pub async fn begin(
        &self,
        token: String,
        lease: Duration,
        deadline: Instant,
    ) -> Result<BatchLease, PortError> {
        let expires_at = self.clock.now_ms() / 1000 + self.policy.retention.as_secs();
        let first_sent = AtomicU64::new(u64::MAX);
        self.retried("PutItem", deadline, |d| {
            let now = self.clock.now_ms();
            first_sent.fetch_min(now, Ordering::SeqCst);
            let record = BatchRecord {
                token: token.clone(),
                lease_until_ms: now.saturating_add(millis(lease)),
                expires_at,
                ..BatchRecord::default()
            };
            async move { self.store.put_batch(&record, d).await }
        })
        .await?;
        let state = Arc::new(LeaseState::default());
        state.extend_to(
            first_sent
                .load(Ordering::SeqCst)
                .saturating_add(millis(lease)),
        );
        Ok(BatchLease {
            token,
            lease,
            expires_at,
            state,
        })
    }

    /// How long before its lease ends by its own clock a holder stops sending: twice the
    /// allowed clock offset (two hosts may each be that far off the servers), plus a second
    /// for how well the offset is known (the servers' `Date` has whole seconds).
    fn fence_margin_ms(&self) -> u64 {
        millis(self.policy.clock_allowance.saturating_mul(2)).saturating_add(1000)
    }

    /// Until when the holder may have a send in flight: `None` once the lease is lost, or
    /// when less than [`LEAST_SEND_TIME`] is left of it before the fence margin. Checked before every send request, whose attempt
    /// ends by then: a lease that lapses stops its holder before another batch can take over.
    pub fn send_until(&self, lease: &BatchLease) -> Option<Instant> {
        if lease.state.is_lost() {
            return None;
        }
        let end = lease
            .state
            .valid_until_ms()
            .checked_sub(self.fence_margin_ms())?;
        let left = Duration::from_millis(end.checked_sub(self.clock.now_ms())?);
        if left < LEAST_SEND_TIME {
            return None;
        }
        Instant::now().checked_add(left)
    }

    /// Moves the lease on every third of it, retrying within each third, until the lease is
    /// lost or the receipt is written; run it beside the batch's work, receipt included. A
    /// renewal only extends a live lease: once it finds the lease lapsed or fenced, the lease
    /// is marked lost (the sends stop) and the heartbeat ends.
    pub async fn heartbeat(&self, lease: &BatchLease, deadline: Instant) {
        let every = lease.lease / 3;
        let mut tick = Instant::now();
        loop {
            // Ticks keep their schedule: retries within one never push the next one back.
            tick = tick.checked_add(every).unwrap_or(deadline);
            tokio::time::sleep_until(tick).await;
            let tick_end = tick
                .checked_add(every)
                .map_or(deadline, |t| t.min(deadline));
            let _urgent = self.limiter.urgent();
            let mut round = 0;
            loop {
                round += 1;
                // Urgent like the receipt: a lease that lapses while its batch works lets
                // another pass send the batch's messages again.
                let r = self
                    .limiter
                    .call_urgent("UpdateItem", tick_end, |d| {
                        let now = self.clock.now_ms();
                        let until = now.saturating_add(millis(lease.lease));
                        async move {
                            let r = self.store.renew_batch(&lease.token, until, now, d).await;
                            r.map(|renewal| (renewal, until))
                        }
                    })
                    .await;
                match r {
                    Ok((Renewal::Renewed, until)) => {
                        lease.state.extend_to(until);
                        break;
                    }
                    Ok((Renewal::Settled, _)) => return,
                    Ok((Renewal::Lost, _)) => {
                        tracing::warn!(
                            batch = lease.token,
                            "the batch's lease lapsed or was taken over: it sends no more"
                        );
                        lease.state.lose();
                        return;
                    }
                    Err(e) => {
                        let pause = urgent_backoff(round);
                        if e.severity != Severity::Retryable || !fits(pause, tick_end) {
                            tracing::warn!(batch = lease.token, error = %e, "lease renewal failed");
                            break;
                        }
                        tokio::time::sleep(pause).await;
                    }
                }
            }
        }
    }

    /// Writes the receipt and ends the lease. Until it succeeds, none of the batch's sends
    /// may be confirmed: a redelivery could not tell they are in SQS. Retried with capped,
    /// jittered backoff until `deadline` (a throttling storm is waited out, not given up on);
    /// claims of other batches yield to it meanwhile. Every attempt writes the same item.
    pub async fn settle(
        &self,
        lease: &BatchLease,
        accepted: Vec<u64>,
        held: Vec<u64>,
        deadline: Instant,
    ) -> Result<Settled, PortError> {
        let now = self.clock.now_ms();
        let (mut accepted, mut held) = (accepted, held);
        accepted.sort_unstable();
        accepted.dedup();
        held.sort_unstable();
        held.dedup();
        let settle = Settle {
            token: lease.token.clone(),
            accepted,
            held,
            hold_until_ms: now.saturating_add(millis(lease.lease)),
            lease_until_ms: now,
            expires_at: lease.expires_at,
        };
        let _urgent = self.limiter.urgent();
        let mut round = 0;
        loop {
            round += 1;
            let r = self
                .limiter
                .call_urgent("PutItem", deadline, |d| self.store.settle_batch(&settle, d))
                .await;
            match r {
                Ok(()) => {
                    // Written after the sends' fence point: another batch may have taken the
                    // claims over meanwhile and sent them again.
                    let late = lease.state.is_lost()
                        || self.clock.now_ms().saturating_add(self.fence_margin_ms())
                            >= lease.state.valid_until_ms();
                    return Ok(Settled { late });
                }
                Err(e) if e.severity == Severity::Retryable => {
                    let pause = urgent_backoff(round);
                    if !fits(pause, deadline) {
                        return Err(e);
                    }
                    tokio::time::sleep(pause).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Claims `ids` for the batch: inserts first (batched), then decides the ids that met an
    /// item by the records they name, taking over the dead ones.
    pub async fn claim(&self, lease: &BatchLease, ids: &[u64], deadline: Instant) -> Claimed {
        self.store.ready(deadline).await;
        let mut out = Claimed::default();
        let mut pending: Vec<u64> = ids.to_vec();
        let mut last_error: HashMap<u64, PortError> = HashMap::new();
        for round in 1..=self.policy.max_attempts.max(1) {
            if pending.is_empty() {
                break;
            }
            if round > 1 {
                let pause = backoff(round - 1);
                if !fits(pause, deadline) {
                    break;
                }
                tokio::time::sleep(pause).await;
            }
            let mut again = Vec::new();
            let mut existing: Vec<(u64, Option<ClaimItem>)> = Vec::new();
            for (id, outcome) in self.insert_all(lease, &pending, deadline).await {
                match outcome {
                    InsertOutcome::Inserted => {
                        last_error.remove(&id);
                        out.mine.push(id);
                    }
                    InsertOutcome::Exists(item) => existing.push((id, item)),
                    InsertOutcome::Failed(e) => {
                        let retry = e.severity == Severity::Retryable;
                        let fatal = e.severity == Severity::Fatal;
                        if retry {
                            again.push(id);
                            last_error.insert(id, e);
                        } else {
                            out.failed.push((id, e.clone()));
                            if fatal {
                                return self.give_up(out, &pending, &e);
                            }
                        }
                    }
                }
            }
            match self.resolve(lease, existing, deadline).await {
                Ok(resolved) => {
                    for (id, r) in resolved {
                        if !matches!(r, Resolved::Again(_)) {
                            last_error.remove(&id);
                        }
                        match r {
                            Resolved::Mine => out.mine.push(id),
                            Resolved::TakenOver => {
                                out.taken_over += 1;
                                out.mine.push(id);
                            }
                            Resolved::Done => out.done.push(id),
                            Resolved::Held => out.held.push(id),
                            Resolved::Again(e) => {
                                if let Some(e) = e {
                                    last_error.insert(id, e);
                                }
                                again.push(id);
                            }
                        }
                    }
                }
                Err((ids, e)) => {
                    if e.severity == Severity::Fatal {
                        let mut all = again.clone();
                        all.extend(ids);
                        return self.give_up(out, &all, &e);
                    }
                    for id in ids {
                        last_error.insert(id, e.clone());
                        again.push(id);
                    }
                }
            }
            pending = again;
        }
        for id in pending {
            let e = last_error.remove(&id).unwrap_or_else(|| {
                PortError::new(
                    "BatchExecuteStatement",
                    Severity::Retryable,
                    "no attempt left before the pass deadline",
                )
            });
            out.failed.push((id, e));
        }
        out
    }

    fn give_up(&self, mut out: Claimed, ids: &[u64], e: &PortError) -> Claimed {
        let decided: HashSet<u64> = out
            .mine
            .iter()
            .chain(&out.done)
            .chain(&out.held)
            .chain(out.failed.iter().map(|(id, _)| id))
            .copied()
            .collect();
        for id in ids {
            if !decided.contains(id) {
                out.failed.push((*id, e.clone()));
            }
        }
        out
    }

    /// One attempt at inserting every id, in chunks the store takes in one request.
    async fn insert_all(
        &self,
        lease: &BatchLease,
        ids: &[u64],
        deadline: Instant,
    ) -> Vec<(u64, InsertOutcome)> {
        let now = self.clock.now_ms();
        let claims: Vec<NewClaim> = ids
            .iter()
            .map(|&id| NewClaim {
                id,
                batch: lease.token.clone(),
                lease_until_ms: now.saturating_add(millis(lease.lease)),
                expires_at: lease.expires_at,
            })
            .collect();
        let chunk = self.store.insert_chunk().max(1);
        let op = self.store.insert_operation();
        let chunks: Vec<Vec<NewClaim>> = claims.chunks(chunk).map(<[NewClaim]>::to_vec).collect();
        let answers = stream::iter(chunks.into_iter().map(|chunk| async move {
            let r = self
                .limiter
                .call(op, deadline, |d| self.store.insert_claims(&chunk, d))
                .await;
            let outcomes = match r {
                Ok(o) if o.len() == chunk.len() => o,
                Ok(o) => vec![
                    InsertOutcome::Failed(PortError::new(
                        op,
                        Severity::Retryable,
                        format!("{} outcomes for {} claims", o.len(), chunk.len()),
                    ));
                    chunk.len()
                ],
                Err(e) => vec![InsertOutcome::Failed(e); chunk.len()],
            };
            chunk.iter().map(|c| c.id).zip(outcomes).collect::<Vec<_>>()
        }))
        .buffer_unordered(self.policy.parallelism.max(1))
        .collect::<Vec<_>>()
        .await;
        answers.into_iter().flatten().collect()
    }

    /// Decides the ids that met an item: reads what the store did not hand back (the items,
    /// then the batch records they name, consistently), then takes over the dead claims. On a
    /// read failure, returns the ids it concerned with the error.
    async fn resolve(
        &self,
        lease: &BatchLease,
        existing: Vec<(u64, Option<ClaimItem>)>,
        deadline: Instant,
    ) -> Result<Vec<(u64, Resolved)>, (Vec<u64>, PortError)> {
        if existing.is_empty() {
            return Ok(Vec::new());
        }
        let all: Vec<u64> = existing.iter().map(|(id, _)| *id).collect();
        let mut items: HashMap<u64, ClaimItem> = HashMap::new();
        let mut unknown: Vec<Key> = Vec::new();
        for (id, item) in existing {
            match item {
                Some(i) => {
                    items.insert(id, i);
                }
                None => unknown.push(Key::Claim(id)),
            }
        }
        let mut out = Vec::new();
        if !unknown.is_empty() {
            let found = self
                .read_all(unknown.clone(), deadline)
                .await
                .map_err(|e| (all.clone(), e))?;
            for s in found {
                if let Stored::Claim(i) = s {
                    items.insert(i.id, i);
                }
            }
            // Gone since the insert failed (TTL): insert again.
            for k in unknown {
                if let Some(id) = k.claim_id() {
                    if !items.contains_key(&id) {
                        out.push((id, Resolved::Again(None)));
                    }
                }
            }
        }
        let batches: Vec<Key> = items
            .values()
            .filter_map(|i| i.batch.clone())
            .filter(|b| *b != lease.token)
            .collect::<HashSet<_>>()
            .into_iter()
            .map(Key::Batch)
            .collect();
        let mut records: HashMap<String, BatchRecord> = HashMap::new();
        if !batches.is_empty() {
            for s in self
                .read_all(batches, deadline)
                .await
                .map_err(|e| (all.clone(), e))?
            {
                if let Stored::Batch(r) = s {
                    records.insert(r.token.clone(), r);
                }
            }
        }
        let now = self.clock.now_ms();
        let mut takeovers = Vec::new();
        for (id, item) in items {
            let record = item.batch.as_ref().and_then(|b| records.get(b));
            match decide(&item, record, &lease.token, now) {
                Decision::Mine => out.push((id, Resolved::Mine)),
                Decision::Done => out.push((id, Resolved::Done)),
                Decision::Held => out.push((id, Resolved::Held)),
                Decision::TakeOver => takeovers.push(item),
            }
        }
        // A live-looking record may be renewed between our read and our takeover: fence it
        // first, conditioned on exactly what we judged, so its holder can never renew (or
        // send under) that lease again. One fence per record; settled records never change.
        let to_fence: HashMap<String, u64> = takeovers
            .iter()
            .filter_map(|i| i.batch.as_ref())
            .filter_map(|b| records.get(b))
            .filter(|r| !r.settled && !r.fenced)
            .map(|r| (r.token.clone(), r.lease_until_ms))
            .collect();
        let fenced: HashMap<String, Result<bool, PortError>> =
            stream::iter(to_fence.into_iter().map(|(token, judged)| async move {
                let r = self
                    .limiter
                    .call("UpdateItem", deadline, |d| {
                        self.store.fence_batch(&token, judged, d)
                    })
                    .await;
                (token, r)
            }))
            .buffer_unordered(self.policy.parallelism.max(1))
            .collect()
            .await;
        let mut ready = Vec::with_capacity(takeovers.len());
        for item in takeovers {
            match item.batch.as_ref().and_then(|b| fenced.get(b)) {
                None | Some(Ok(true)) => ready.push(item),
                // Renewed or settled since we read it: look again next round.
                Some(Ok(false)) => out.push((item.id, Resolved::Again(None))),
                Some(Err(e)) => out.push((item.id, Resolved::Again(Some(e.clone())))),
            }
        }
        let takeovers = ready;
        let new_lease_until = now.saturating_add(millis(lease.lease));
        let taken = stream::iter(takeovers.into_iter().map(|old| async move {
            let new = NewClaim {
                id: old.id,
                batch: lease.token.clone(),
                lease_until_ms: new_lease_until,
                expires_at: lease.expires_at,
            };
            let r = self
                .limiter
                .call("PutItem", deadline, |d| self.store.take_over(&new, &old, d))
                .await;
            let resolved = match r {
                Ok(TakeOver::Taken) => Resolved::TakenOver,
                // Someone else moved first: look again next round.
                Ok(TakeOver::Changed(_)) => Resolved::Again(None),
                Err(e) => Resolved::Again(Some(e)),
            };
            (old.id, resolved)
        }))
        .buffer_unordered(self.policy.parallelism.max(1))
        .collect::<Vec<_>>()
        .await;
        out.extend(taken);
        Ok(out)
    }

    /// Reads every key, re-reading what the store left unprocessed.
    async fn read_all(&self, keys: Vec<Key>, deadline: Instant) -> Result<Vec<Stored>, PortError> {
        let mut found = Vec::new();
        for chunk in keys.chunks(READ_CHUNK) {
            let mut left = chunk.to_vec();
            let mut round = 0;
            while !left.is_empty() {
                round += 1;
                let r = self
                    .retried("BatchGetItem", deadline, |d| self.store.read(&left, d))
                    .await?;
                found.extend(r.0);
                left = r.1;
                if !left.is_empty() {
                    let pause = backoff(round);
                    if round >= self.policy.max_attempts || !fits(pause, deadline) {
                        return Err(PortError::new(
                            "BatchGetItem",
                            Severity::Retryable,
                            format!("{} keys left unprocessed", left.len()),
                        ));
                    }
                    tokio::time::sleep(pause).await;
                }
            }
        }
        Ok(found)
    }

    /// One request with retries on retryable failures, with backoff, while the budget allows.
    async fn retried<R, F, Fut>(
        &self,
        op: &'static str,
        deadline: Instant,
        attempt: F,
    ) -> Result<R, PortError>
    where
        F: Fn(Instant) -> Fut,
        Fut: std::future::Future<Output = Result<R, PortError>>,
    {
        let mut round = 0;
        loop {
            round += 1;
            let r = self.limiter.call(op, deadline, &attempt).await;
            match &r {
                Err(e) if e.severity == Severity::Retryable && round < self.policy.max_attempts => {
                    let pause = backoff(round);
                    if !fits(pause, deadline) {
                        return r;
                    }
                    tokio::time::sleep(pause).await;
                }
                _ => return r,
            }
        }
    }
}

#[derive(Debug)]
enum Resolved {
    Mine,
    TakenOver,
    Done,
    Held,
    /// Try again next round (with the error, if one caused it).
    Again(Option<PortError>),
}

/// The pause between attempts of an urgent write (a receipt, a renewal): jittered and
/// doubling like [`backoff`], but at most 1 s, so a write that a table throttles most of the
/// time still gets dozens of attempts in a pass. There is at most one such write per batch in
/// flight: a handful of requests a second.
fn urgent_backoff(round: u32) -> Duration {
    backoff_capped(round, Duration::from_secs(1))
}

fn fits(pause: Duration, deadline: Instant) -> bool {
    Instant::now()
        .checked_add(pause.saturating_add(Duration::from_millis(100)))
        .is_some_and(|t| t < deadline)
}

#[cfg(test)]
#[path = "lease_tests.rs"]
mod tests;
