//! The parking queue as the `parked` commands see it: receive (and so hold), extend a hold,
//! delete, release.
//! The SQS adapter is `super::sqs`; `MemoryParking` is for unit tests.

use std::collections::HashSet;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::relay::ports::{PortError, Severity};

/// One parked message as received. SQS hides it from every other receiver until this receive
/// deletes or releases it, or `hold_for` runs out: that is what keeps two concurrent commands
/// off the same message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Held {
    /// SQS's MessageId: the same on every receive, and the only name of a record without a
    /// TMC id.
    pub message_id: String,
    /// This receive's handle, needed to delete or release the message.
    pub receipt: String,
    /// The parking record, as the relay wrote it.
    pub body: String,
    /// SQS's SentTimestamp (epoch ms): the parking time when the record has none.
    pub sent_at_ms: Option<u64>,
}

/// The parking queue.
pub trait ParkingQueue: Send + Sync {
    /// Receives up to `max` (at most 10) visible messages and hides them for `hold_for`. An
    /// empty answer means none is visible.
    fn receive(
        &self,
        max: u32,
        hold_for: Duration,
    ) -> impl Future<Output = Result<Vec<Held>, PortError>> + Send;

    /// Deletes by receipt; one answer per receipt, in order: `None` when deleted, or why not.
    fn delete(
        &self,
        receipts: &[String],
    ) -> impl Future<Output = Result<Vec<Option<String>>, PortError>> + Send;

    /// Holds these messages for `hold_for` from now (SQS ChangeMessageVisibility); one answer
    /// per receipt, in order: `None` when extended, or why not. Only a hold that has not run out
    /// can be extended.
    fn extend(
        &self,
        receipts: &[String],
        hold_for: Duration,
    ) -> impl Future<Output = Result<Vec<Option<String>>, PortError>> + Send;

    /// Makes held messages visible again at once (best effort: a message not released
    /// reappears when its hold runs out anyway).
    fn release(&self, receipts: &[String]) -> impl Future<Output = ()> + Send;
}

/// One message in `MemoryParking`.
#[derive(Clone, Debug)]
struct Stored {
    /// Stands for SQS's MessageId.
    message_id: String,
    /// The parking record.
    body: String,
    /// The latest receive's receipt, if any (only it deletes, extends or releases the message),
    /// and until when that receive hides it.
    held_by: Option<(String, Instant)>,
}

impl Stored {
    fn held_now(&self, now: Instant) -> bool {
        self.held_by.as_ref().is_some_and(|(_, until)| *until > now)
    }

    fn receipt(&self) -> Option<&str> {
        self.held_by.as_ref().map(|(r, _)| r.as_str())
    }
}

/// An in-memory parking queue: receive hides a message until its receipt releases or deletes
/// it, or its hold runs out (on tokio's clock, so tests pause and advance it).
#[derive(Debug, Default)]
pub struct MemoryParking {
    /// Messages still in the queue, in sending order.
    stored: Mutex<Vec<Stored>>,
    /// Receipts handed out so far, to make each one unique.
    receipts: Mutex<u64>,
    /// Messages pushed so far, to make each message id unique.
    pushed: Mutex<u64>,
    /// Deletes of these message ids fail (a delete lost after the send succeeded).
    pub fail_delete: Mutex<HashSet<String>>,
    /// Receives fail with this error (a missing queue, denied access).
    pub fail_receive: Mutex<Option<PortError>>,
    /// Every hold runs out at once: a receive returns held messages again (a scan longer
    /// than its hold).
    pub holds_expire: AtomicBool,
    /// Extends fail with this error (throttling, denied access).
    pub fail_extend: Mutex<Option<PortError>>,
    /// Holds extended so far.
    pub extended: AtomicU64,
    /// How long deletes and extends take to answer, after they are carried out.
    pub latency: Mutex<Duration>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl MemoryParking {
    /// A queue holding these bodies, with message ids `m0`, `m1`, ...
    pub fn with(bodies: impl IntoIterator<Item = String>) -> Self {
        let q = Self::default();
        for b in bodies {
            q.push(b);
        }
        q
    }

    /// Adds a message; returns its message id.
    pub fn push(&self, body: String) -> String {
        let mut pushed = lock(&self.pushed);
        let message_id = format!("m{pushed}");
        *pushed += 1;
        lock(&self.stored).push(Stored {
            message_id: message_id.clone(),
            body,
            held_by: None,
        });
        message_id
    }

    /// Message ids still in the queue (held or not).
    pub fn ids(&self) -> Vec<String> {
        lock(&self.stored)
            .iter()
            .map(|s| s.message_id.clone())
            .collect()
    }

    /// How many messages are held by a receive that has not released them.
    pub fn held(&self) -> usize {
        let now = Instant::now();
        lock(&self.stored)
            .iter()
            .filter(|s| s.held_now(now))
            .count()
    }

    /// Until when a receive holds the message, if one does now.
    pub fn hold_until(&self, message_id: &str) -> Option<Instant> {
        let now = Instant::now();
        lock(&self.stored)
            .iter()
            .find(|s| s.message_id == message_id && s.held_now(now))
            .and_then(|s| s.held_by.as_ref().map(|(_, until)| *until))
    }

    async fn answer_after_latency(&self) {
        let latency = *lock(&self.latency);
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
    }
}

impl ParkingQueue for MemoryParking {
    async fn receive(&self, max: u32, hold_for: Duration) -> Result<Vec<Held>, PortError> {
        if let Some(e) = lock(&self.fail_receive).clone() {
            return Err(e);
        }
        let now = Instant::now();
        let mut stored = lock(&self.stored);
        let mut n = lock(&self.receipts);
        // Visible messages first; with `holds_expire`, held ones fill up the answer.
        let expire = self.holds_expire.load(Ordering::Relaxed);
        let (visible, held): (Vec<&mut Stored>, Vec<&mut Stored>) =
            stored.iter_mut().partition(|s| !s.held_now(now));
        let mut out = Vec::new();
        let candidates = visible
            .into_iter()
            .chain(held.into_iter().filter(|_| expire));
        for s in candidates {
            if out.len() == max.min(10) as usize {
                break;
            }
            *n += 1;
            let receipt = format!("r{n}");
            s.held_by = Some((receipt.clone(), now + hold_for));
            out.push(Held {
                message_id: s.message_id.clone(),
                receipt,
                body: s.body.clone(),
                sent_at_ms: None,
            });
        }
        Ok(out)
    }

    async fn delete(&self, receipts: &[String]) -> Result<Vec<Option<String>>, PortError> {
        let fail = lock(&self.fail_delete).clone();
        let answers = {
            let mut stored = lock(&self.stored);
            receipts
                .iter()
                .map(|r| {
                    // The latest receipt deletes even after its hold ran out, as in SQS.
                    let Some(i) = stored.iter().position(|s| s.receipt() == Some(r.as_str()))
                    else {
                        return Some(format!("ReceiptHandleIsInvalid: {r}"));
                    };
                    if fail.contains(&stored[i].message_id) {
                        return Some("InternalError: injected".into());
                    }
                    stored.remove(i);
                    None
                })
                .collect()
        };
        self.answer_after_latency().await;
        Ok(answers)
    }

    async fn extend(
        &self,
        receipts: &[String],
        hold_for: Duration,
    ) -> Result<Vec<Option<String>>, PortError> {
        if let Some(e) = lock(&self.fail_extend).clone() {
            return Err(e);
        }
        let now = Instant::now();
        let answers = {
            let mut stored = lock(&self.stored);
            receipts
                .iter()
                .map(|r| {
                    let Some(s) = stored.iter_mut().find(|s| s.receipt() == Some(r.as_str()))
                    else {
                        return Some(format!("ReceiptHandleIsInvalid: {r}"));
                    };
                    if !s.held_now(now) {
                        return Some(format!("MessageNotInflight: {r}"));
                    }
                    s.held_by = Some((r.clone(), now + hold_for));
                    self.extended.fetch_add(1, Ordering::Relaxed);
                    None
                })
                .collect()
        };
        self.answer_after_latency().await;
        Ok(answers)
    }

    async fn release(&self, receipts: &[String]) {
        for s in lock(&self.stored).iter_mut() {
            if s.receipt().is_some_and(|r| receipts.iter().any(|x| x == r)) {
                s.held_by = None;
            }
        }
    }
}

/// A fatal error for tests: what a missing queue looks like.
pub fn missing_queue() -> PortError {
    PortError::new(
        "ReceiveMessage",
        Severity::Fatal,
        "AWS.SimpleQueueService.NonExistentQueue: no such queue",
    )
}
