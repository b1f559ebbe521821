//! In-memory adapters for the relay's ports: for unit tests of the pass logic, with a shared
//! event log so tests can check the order of acceptance and confirmation.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use tokio::sync::OwnedSemaphorePermit;

use super::archive::{Archive, ArchiveFuture};
use super::ports::{
    BatchRecord, ClaimItem, DedupStore, EntryOutcome, InsertOutcome, Key, NewClaim, Outgoing,
    PortError, Queue, Renewal, Settle, Stored, TakeOver, Tmc, INSERT_CHUNK,
};
use crate::top::api::ConfirmChunk;
use crate::top::{TmcMessage, TopError};

/// Something that happened, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A queue (by name) accepted the entry with this id.
    Accepted(&'static str, String),
    /// TMC confirmed this id.
    Confirmed(u64),
    /// The archive stored an object holding these ids (`None` for a message without one).
    Archived(Vec<Option<String>>),
}

/// The ordered record shared by the memory adapters.
pub type EventLog = Arc<Mutex<Vec<Event>>>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Waits for one of the `workers`, when there are any.
async fn serve(
    workers: &Mutex<Option<Arc<tokio::sync::Semaphore>>>,
) -> Option<tokio::sync::OwnedSemaphorePermit> {
    let w = lock(workers).clone()?;
    w.acquire_owned().await.ok()
}

async fn answer_after(latency: &Mutex<Duration>) {
    let l = *lock(latency);
    if !l.is_zero() {
        tokio::time::sleep(l).await;
    }
}

/// A TMC that hands out scripted batches (or errors) and records confirms.
#[derive(Default)]
pub struct MemoryTmc {
    /// What successive consumes return; empty polls once it runs out.
    pub script: Mutex<VecDeque<Result<Vec<TmcMessage>, TopError>>>,
    /// Confirm answers `is_success=false` for these ids.
    pub refuse_confirm: Mutex<Vec<u64>>,
    pub log: EventLog,
    pub consumes: Mutex<u32>,
}

impl MemoryTmc {
    pub fn new(log: EventLog) -> Self {
        Self {
            log,
            ..Default::default()
        }
    }

    pub fn push(&self, batch: Result<Vec<TmcMessage>, TopError>) {
        lock(&self.script).push_back(batch);
    }
}

impl Tmc for MemoryTmc {
    async fn consume(
        &self,
        _group: Option<&str>,
        _quantity: u32,
        _deadline: Instant,
    ) -> Result<Vec<TmcMessage>, TopError> {
        *lock(&self.consumes) += 1;
        lock(&self.script).pop_front().unwrap_or(Ok(Vec::new()))
    }

    async fn confirm(
        &self,
        _group: Option<&str>,
        ids: &[u64],
        _deadline: Instant,
    ) -> Vec<ConfirmChunk> {
        let refuse = lock(&self.refuse_confirm).clone();
        if ids.iter().any(|i| refuse.contains(i)) {
            return vec![ConfirmChunk {
                ids: ids.to_vec(),
                result: Ok(false),
            }];
        }
        let mut log = lock(&self.log);
        log.extend(ids.iter().map(|&i| Event::Confirmed(i)));
        vec![ConfirmChunk {
            ids: ids.to_vec(),
            result: Ok(true),
        }]
    }
}

/// A queue that accepts everything except what its rules say.
pub struct MemoryQueue {
    pub name: &'static str,
    pub log: EventLog,
    /// Accepted entries, in order.
    pub accepted: Mutex<Vec<Outgoing>>,
    /// Per entry id: the outcomes to give on successive attempts (then `Accepted`).
    pub entry_rules: Mutex<HashMap<String, VecDeque<EntryOutcome>>>,
    /// Whole-request failures for the next calls.
    pub request_failures: Mutex<VecDeque<PortError>>,
    /// Every call after the first N fails with this error (a queue deleted mid-pass).
    pub fail_after: Mutex<Option<(u32, PortError)>>,
    /// How long each request takes to answer once a worker serves it (tests on paused time).
    pub latency: Mutex<Duration>,
    /// When set, requests are served by this many workers at once and the rest wait: latency
    /// grows with the requests in flight beyond the capacity, as on a real queueing server.
    pub workers: Mutex<Option<Arc<tokio::sync::Semaphore>>>,
    pub fifo: bool,
    pub max_bytes: usize,
    pub calls: Mutex<u32>,
}

impl MemoryQueue {
    pub fn new(name: &'static str, log: EventLog) -> Self {
        Self {
            name,
            log,
            accepted: Mutex::default(),
            entry_rules: Mutex::default(),
            request_failures: Mutex::default(),
            fail_after: Mutex::default(),
            latency: Mutex::new(Duration::ZERO),
            workers: Mutex::default(),
            fifo: false,
            max_bytes: 1024 * 1024,
            calls: Mutex::new(0),
        }
    }

    pub fn rule(&self, id: &str, outcomes: Vec<EntryOutcome>) {
        lock(&self.entry_rules).insert(id.to_owned(), outcomes.into());
    }

    pub fn ids(&self) -> Vec<String> {
        lock(&self.accepted).iter().map(|e| e.id.clone()).collect()
    }
}

impl MemoryQueue {
    fn carry_out(&self, entries: &[Outgoing]) -> Vec<EntryOutcome> {
        let mut out = Vec::new();
        for e in entries {
            let o = lock(&self.entry_rules)
                .get_mut(&e.id)
                .and_then(VecDeque::pop_front)
                .unwrap_or(EntryOutcome::Accepted);
            if o == EntryOutcome::Accepted {
                lock(&self.accepted).push(e.clone());
                lock(&self.log).push(Event::Accepted(self.name, e.id.clone()));
            }
            out.push(o);
        }
        out
    }
}

impl Queue for MemoryQueue {
    async fn send_batch(
        &self,
        entries: &[Outgoing],
        _deadline: Instant,
    ) -> Result<Vec<EntryOutcome>, PortError> {
        let _worker = serve(&self.workers).await;
        let call = {
            let mut calls = lock(&self.calls);
            *calls += 1;
            *calls
        };
        assert!(entries.len() <= 10, "more than 10 entries in one batch");
        if let Some(e) = lock(&self.request_failures).pop_front() {
            return Err(e);
        }
        if let Some((after, e)) = lock(&self.fail_after).as_ref() {
            if call > *after {
                return Err(e.clone());
            }
        }
        // Carried out before the answer is on its way: a caller that stops waiting during
        // the latency leaves the messages stored, as SQS would.
        let out = self.carry_out(entries);
        answer_after(&self.latency).await;
        Ok(out)
    }

    fn is_fifo(&self) -> bool {
        self.fifo
    }

    fn max_message_bytes(&self) -> usize {
        self.max_bytes
    }
}

/// The dedup table in memory, with the same conditions as the DynamoDB adapter.
#[derive(Default)]
pub struct MemoryStore {
    /// Claims by id, batch records by token.
    pub claims: Mutex<HashMap<u64, ClaimItem>>,
    pub batches: Mutex<HashMap<String, BatchRecord>>,
    /// Requests of this kind fail with this error: `insert`, `read`, `take_over`,
    /// `put_batch`, `renew`, `fence` or `settle`.
    pub failures: Mutex<HashMap<&'static str, PortError>>,
    /// Storms: requests of this kind fail with this error from the first time until the
    /// second (tokio time).
    #[allow(clippy::type_complexity)]
    pub storms: Mutex<Vec<(&'static str, Instant, Instant, PortError)>>,
    /// Called before a fence is carried out (to change the record under it, as a racing
    /// renewal would).
    #[allow(clippy::type_complexity)]
    pub before_fence: Mutex<Option<Box<dyn Fn(&mut BatchRecord) + Send>>>,
    /// Requests made, by kind.
    pub requests: Mutex<HashMap<&'static str, u32>>,
    /// Hand the existing item back with a failed insert (DynamoDB's `ALL_OLD`); when false,
    /// only say it exists (as ministack does).
    pub return_old: bool,
    /// How long each request takes to answer once a worker serves it.
    pub latency: Mutex<Duration>,
    /// When set, this many requests are served at once; the rest wait.
    pub workers: Mutex<Option<Arc<tokio::sync::Semaphore>>>,
}

impl MemoryStore {
    /// A store that hands old items back with failed inserts.
    pub fn new() -> Self {
        Self {
            return_old: true,
            ..Self::default()
        }
    }

    /// What the table says of an id, as an operator would read it: `done` (in a receipt, or
    /// a previous version's done/parked item), `claimed` (a live batch's), `free` (its batch
    /// let it go or died), or `None` (no item).
    pub fn status(&self, id: u64) -> Option<&'static str> {
        let item = lock(&self.claims).get(&id).cloned()?;
        let Some(b) = item.batch.as_deref() else {
            return Some(match item.legacy_status.as_deref() {
                Some("done" | "parked") => "done",
                _ => "claimed",
            });
        };
        let batches = lock(&self.batches);
        let Some(r) = batches.get(b) else {
            return Some("free");
        };
        Some(if r.accepted.contains(&id) {
            "done"
        } else if !r.settled || r.held.contains(&id) {
            "claimed"
        } else {
            "free"
        })
    }

    /// Writes a previous version's item.
    pub fn put_legacy(&self, id: u64, status: &str, lease_until_ms: u64, expires_at: u64) {
        lock(&self.claims).insert(
            id,
            ClaimItem {
                id,
                batch: None,
                legacy_status: Some(status.to_owned()),
                lease_until_ms,
                expires_at,
            },
        );
    }

    async fn request(&self, kind: &'static str) -> Result<Option<OwnedSemaphorePermit>, PortError> {
        *lock(&self.requests).entry(kind).or_default() += 1;
        let worker = serve(&self.workers).await;
        if let Some(e) = lock(&self.failures).get(kind) {
            return Err(e.clone());
        }
        let now = Instant::now();
        if let Some((_, _, _, e)) = lock(&self.storms)
            .iter()
            .find(|(k, from, until, _)| *k == kind && *from <= now && now < *until)
        {
            return Err(e.clone());
        }
        Ok(worker)
    }

    pub fn requests_of(&self, kind: &str) -> u32 {
        lock(&self.requests).get(kind).copied().unwrap_or(0)
    }
}

fn claim_item(c: &NewClaim) -> ClaimItem {
    ClaimItem {
        id: c.id,
        batch: Some(c.batch.clone()),
        legacy_status: None,
        lease_until_ms: c.lease_until_ms,
        expires_at: c.expires_at,
    }
}

impl DedupStore for MemoryStore {
    async fn insert_claims(
        &self,
        claims: &[NewClaim],
        _deadline: Instant,
    ) -> Result<Vec<InsertOutcome>, PortError> {
        let _worker = self.request("insert").await?;
        assert!(
            claims.len() <= INSERT_CHUNK,
            "more than 25 statements in one batch"
        );
        let out = {
            let mut items = lock(&self.claims);
            claims
                .iter()
                .map(|c| match items.get(&c.id) {
                    // An expired item still blocks an INSERT until TTL deletes it.
                    Some(old) => InsertOutcome::Exists(self.return_old.then(|| old.clone())),
                    None => {
                        items.insert(c.id, claim_item(c));
                        InsertOutcome::Inserted
                    }
                })
                .collect()
        };
        answer_after(&self.latency).await;
        Ok(out)
    }

    async fn read(
        &self,
        keys: &[Key],
        _deadline: Instant,
    ) -> Result<(Vec<Stored>, Vec<Key>), PortError> {
        let _worker = self.request("read").await?;
        let found = keys
            .iter()
            .filter_map(|k| match k {
                Key::Claim(id) => lock(&self.claims).get(id).cloned().map(Stored::Claim),
                Key::Batch(t) => lock(&self.batches).get(t).cloned().map(Stored::Batch),
            })
            .collect();
        answer_after(&self.latency).await;
        Ok((found, Vec::new()))
    }

    async fn take_over(
        &self,
        new: &NewClaim,
        old: &ClaimItem,
        _deadline: Instant,
    ) -> Result<TakeOver, PortError> {
        let _worker = self.request("take_over").await?;
        let out = {
            let mut items = lock(&self.claims);
            match items.get(&new.id) {
                Some(now) if now == old => {
                    items.insert(new.id, claim_item(new));
                    TakeOver::Taken
                }
                other => TakeOver::Changed(other.cloned()),
            }
        };
        answer_after(&self.latency).await;
        Ok(out)
    }

    async fn put_batch(&self, record: &BatchRecord, _deadline: Instant) -> Result<(), PortError> {
        let _worker = self.request("put_batch").await?;
        lock(&self.batches)
            .entry(record.token.clone())
            .or_insert_with(|| record.clone());
        answer_after(&self.latency).await;
        Ok(())
    }

    async fn renew_batch(
        &self,
        token: &str,
        lease_until_ms: u64,
        now_ms: u64,
        _deadline: Instant,
    ) -> Result<Renewal, PortError> {
        let _worker = self.request("renew").await?;
        let out = match lock(&self.batches).get_mut(token) {
            Some(r) if r.settled => Renewal::Settled,
            Some(r) if r.fenced || r.lease_until_ms < now_ms => Renewal::Lost,
            Some(r) => {
                r.lease_until_ms = r.lease_until_ms.max(lease_until_ms);
                Renewal::Renewed
            }
            None => Renewal::Lost,
        };
        answer_after(&self.latency).await;
        Ok(out)
    }

    async fn fence_batch(
        &self,
        token: &str,
        judged_lease_until_ms: u64,
        _deadline: Instant,
    ) -> Result<bool, PortError> {
        let _worker = self.request("fence").await?;
        let out = {
            let mut batches = lock(&self.batches);
            if let (Some(hook), Some(r)) = (&*lock(&self.before_fence), batches.get_mut(token)) {
                hook(r);
            }
            match batches.get_mut(token) {
                Some(r) if !r.settled && r.lease_until_ms == judged_lease_until_ms => {
                    r.fenced = true;
                    true
                }
                _ => false,
            }
        };
        answer_after(&self.latency).await;
        Ok(out)
    }

    async fn settle_batch(&self, s: &Settle, _deadline: Instant) -> Result<(), PortError> {
        let _worker = self.request("settle").await?;
        lock(&self.batches).insert(
            s.token.clone(),
            BatchRecord {
                token: s.token.clone(),
                lease_until_ms: s.lease_until_ms,
                expires_at: s.expires_at,
                accepted: s.accepted.clone(),
                held: s.held.clone(),
                hold_until_ms: s.hold_until_ms,
                settled: true,
                fenced: false,
            },
        );
        answer_after(&self.latency).await;
        Ok(())
    }
}

/// A throttling error, for rules.
pub fn throttled(op: &'static str) -> PortError {
    PortError::throttled(op, "ThrottlingException: Rate exceeded")
}

/// An archive in memory: the objects it stored, and failures to answer first.
#[derive(Default)]
pub struct MemoryArchive {
    log: EventLog,
    pub objects: Mutex<Vec<(String, Vec<u8>)>>,
    /// Answered, in order, before any write succeeds.
    pub failures: Mutex<VecDeque<PortError>>,
    pub calls: Mutex<u32>,
}

impl MemoryArchive {
    pub fn new(log: EventLog) -> Self {
        Self {
            log,
            ..Default::default()
        }
    }

    /// The ids of every stored object's lines, in order.
    pub fn ids(&self) -> Vec<Option<String>> {
        lock(&self.objects)
            .iter()
            .flat_map(|(_, body)| archived_ids(body))
            .collect()
    }
}

/// The `id` of each line of a gzip JSON Lines object.
pub fn archived_ids(body: &[u8]) -> Vec<Option<String>> {
    use std::io::Read as _;
    let mut text = String::new();
    flate2::read::GzDecoder::new(body)
        .read_to_string(&mut text)
        .expect("an archive object is gzip text");
    text.lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("a JSON line");
            v["id"].as_str().map(str::to_owned)
        })
        .collect()
}

impl Archive for MemoryArchive {
    fn put(&self, key: String, body: Vec<u8>, _deadline: Instant) -> ArchiveFuture<'_> {
        Box::pin(async move {
            *lock(&self.calls) += 1;
            if let Some(e) = lock(&self.failures).pop_front() {
                return Err(e);
            }
            let ids = archived_ids(&body);
            lock(&self.objects).push((key, body));
            lock(&self.log).push(Event::Archived(ids));
            Ok(())
        })
    }
}
