//! In-memory adapters for the relay's ports: for unit tests of the pass logic, with a shared
//! event log so tests can check the order of acceptance and confirmation.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::ports::{
    Claim, ClaimOutcome, DedupStore, EntryOutcome, Outgoing, PortError, Queue, Tmc,
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

/// One dedup record.
#[derive(Clone, Debug, PartialEq)]
pub struct Record {
    pub status: &'static str,
    pub owner: String,
    /// The claim's token (empty for done records).
    pub token: String,
    pub lease_until_ms: u64,
    pub expires_at: u64,
}

/// The dedup table in memory, with the same conditions as the DynamoDB adapter.
#[derive(Default)]
pub struct MemoryStore {
    pub records: Mutex<HashMap<String, Record>>,
    /// Claims fail with this error (e.g. throttling, missing table).
    pub fail_claims: Mutex<Option<PortError>>,
    /// Claims released so far.
    pub releases: Mutex<u32>,
    /// How long each request takes to answer once a worker serves it.
    pub latency: Mutex<Duration>,
    /// When set, this many requests are served at once; the rest wait.
    pub workers: Mutex<Option<Arc<tokio::sync::Semaphore>>>,
}

impl MemoryStore {
    pub fn status(&self, id: &str) -> Option<&'static str> {
        lock(&self.records).get(id).map(|r| r.status)
    }

    fn claim_now(&self, c: &Claim<'_>) -> ClaimOutcome {
        let mut records = lock(&self.records);
        if let Some(r) = records.get(c.id) {
            if r.token == c.token {
                return ClaimOutcome::Claimed;
            }
            let expired = r.expires_at * 1000 < c.now_ms;
            if !expired {
                match r.status {
                    "done" => return ClaimOutcome::AlreadyDone { parked: false },
                    "parked" => return ClaimOutcome::AlreadyDone { parked: true },
                    _ if r.lease_until_ms >= c.now_ms => return ClaimOutcome::HeldElsewhere,
                    _ => {}
                }
            }
        }
        records.insert(
            c.id.to_owned(),
            Record {
                status: "claimed",
                owner: c.owner.to_owned(),
                token: c.token.to_owned(),
                lease_until_ms: c.lease_until_ms,
                expires_at: c.expires_at,
            },
        );
        ClaimOutcome::Claimed
    }
}

impl DedupStore for MemoryStore {
    async fn claim(&self, c: Claim<'_>, _deadline: Instant) -> Result<ClaimOutcome, PortError> {
        let _worker = serve(&self.workers).await;
        if let Some(e) = lock(&self.fail_claims).clone() {
            return Err(e);
        }
        let outcome = self.claim_now(&c);
        answer_after(&self.latency).await;
        Ok(outcome)
    }

    async fn complete(
        &self,
        ids: &[(String, bool)],
        expires_at: u64,
        _deadline: Instant,
    ) -> Result<Vec<String>, PortError> {
        let _worker = serve(&self.workers).await;
        let mut records = lock(&self.records);
        for (id, parked) in ids {
            records.insert(
                id.clone(),
                Record {
                    status: if *parked { "parked" } else { "done" },
                    owner: String::new(),
                    token: String::new(),
                    lease_until_ms: 0,
                    expires_at,
                },
            );
        }
        Ok(Vec::new())
    }

    async fn release(&self, id: &str, token: &str, _deadline: Instant) -> Result<(), PortError> {
        *lock(&self.releases) += 1;
        let mut records = lock(&self.records);
        if records
            .get(id)
            .is_some_and(|r| r.status == "claimed" && r.token == token)
        {
            records.remove(id);
        }
        Ok(())
    }
}

/// A throttling error, for rules.
pub fn throttled(op: &'static str) -> PortError {
    PortError::throttled(op, "ThrottlingException: Rate exceeded")
}

/// A pause small enough for unit tests.
pub const TICK: Duration = Duration::from_millis(1);
