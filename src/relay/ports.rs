//! The relay's view of the outside world: three small ports. Adapters live in `crate::aws`
//! (SQS, DynamoDB), `crate::top` (TMC) and `super::memory` (tests).

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

use crate::top::api::ConfirmChunk;
use crate::top::{TmcMessage, TopError};

/// The TMC side: pull a batch, acknowledge ids.
pub trait Tmc: Send + Sync + 'static {
    fn consume(
        &self,
        group: Option<&str>,
        quantity: u32,
        deadline: Instant,
    ) -> impl Future<Output = Result<Vec<TmcMessage>, TopError>> + Send;

    fn confirm(
        &self,
        group: Option<&str>,
        ids: &[u64],
        deadline: Instant,
    ) -> impl Future<Output = Vec<ConfirmChunk>> + Send;
}

impl Tmc for crate::top::TopClient {
    fn consume(
        &self,
        group: Option<&str>,
        quantity: u32,
        deadline: Instant,
    ) -> impl Future<Output = Result<Vec<TmcMessage>, TopError>> + Send {
        crate::top::TopClient::consume(self, group, quantity, deadline)
    }

    fn confirm(
        &self,
        group: Option<&str>,
        ids: &[u64],
        deadline: Instant,
    ) -> impl Future<Output = Vec<ConfirmChunk>> + Send {
        crate::top::TopClient::confirm(self, group, ids, deadline)
    }
}

/// How bad an AWS failure is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    /// Throttling, 5xx, timeouts, lost connections: try again later.
    Retryable,
    /// This request is wrong (e.g. the entry is invalid) and will fail again.
    Permanent,
    /// Nothing will work until configuration is fixed (missing queue or table, access denied).
    Fatal,
}

/// An AWS call that failed as a whole. Holds no credentials.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{operation} failed ({severity:?}): {detail}")]
pub struct PortError {
    pub operation: &'static str,
    pub severity: Severity,
    /// The service's error code and message, or the transport failure.
    pub detail: String,
    /// The request may have been carried out although no answer came (timeout, connection
    /// lost after sending): SQS may hold the message.
    pub maybe_applied: bool,
    /// No answer came within the attempt's timeout: the endpoint is slow (flow control).
    pub timed_out: bool,
    /// The service asked us to slow down (flow control).
    pub throttled: bool,
}

impl PortError {
    pub fn new(operation: &'static str, severity: Severity, detail: impl Into<String>) -> Self {
        Self {
            operation,
            severity,
            detail: detail.into(),
            maybe_applied: false,
            timed_out: false,
            throttled: false,
        }
    }

    /// A failure whose outcome is unknown: retryable, and possibly carried out.
    pub fn ambiguous(operation: &'static str, detail: impl Into<String>) -> Self {
        Self {
            maybe_applied: true,
            ..Self::new(operation, Severity::Retryable, detail)
        }
    }

    /// No answer within `after`: possibly carried out.
    pub fn timed_out(operation: &'static str, after: Duration) -> Self {
        Self {
            timed_out: true,
            ..Self::ambiguous(
                operation,
                format!("no answer within {} ms", after.as_millis()),
            )
        }
    }

    /// The service throttled the request: not carried out, retry later.
    pub fn throttled(operation: &'static str, detail: impl Into<String>) -> Self {
        Self {
            throttled: true,
            ..Self::new(operation, Severity::Retryable, detail)
        }
    }
}

/// One message to send. `id` doubles as the batch entry id (digits only, unique in a batch).
#[derive(Clone, Debug, PartialEq)]
pub struct Outgoing {
    pub id: String,
    pub body: String,
    /// String message attributes (name, value); values are never empty.
    pub attributes: Vec<(&'static str, String)>,
    /// FIFO queues only.
    pub group_id: Option<String>,
    /// FIFO queues only.
    pub dedup_id: Option<String>,
}

impl Outgoing {
    /// The size SQS counts against its limits: body plus attribute names, types and values.
    pub fn wire_size(&self) -> usize {
        self.body.len()
            + self
                .attributes
                .iter()
                .map(|(n, v)| n.len() + "String".len() + v.len())
                .sum::<usize>()
    }
}

/// What SQS said about one entry of a batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EntryOutcome {
    Accepted,
    /// `SenderFault=true`: this entry will never be accepted.
    Rejected {
        code: String,
        message: String,
    },
    /// `SenderFault=false`: try again.
    Retry {
        code: String,
        message: String,
    },
}

/// A queue: the relay queue and the parking queue are both one.
pub trait Queue: Send + Sync + 'static {
    /// Sends up to 10 entries in one request. `Ok` holds one outcome per entry, in order.
    fn send_batch(
        &self,
        entries: &[Outgoing],
        deadline: Instant,
    ) -> impl Future<Output = Result<Vec<EntryOutcome>, PortError>> + Send;

    /// True for FIFO queues, which need a group id and a deduplication id.
    fn is_fifo(&self) -> bool;

    /// The largest message (body + attributes) the queue accepts.
    fn max_message_bytes(&self) -> usize {
        1024 * 1024
    }
}

/// What a claim found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClaimOutcome {
    /// The claim is ours until its lease ends: go ahead and enqueue.
    Claimed,
    /// Already enqueued (or parked) by an earlier delivery: confirm, do not enqueue.
    AlreadyDone { parked: bool },
    /// Another live pass holds it: neither enqueue nor confirm (that pass will).
    HeldElsewhere,
}

/// A claim request.
#[derive(Clone, Debug)]
pub struct Claim<'a> {
    pub id: &'a str,
    /// Identifies the pass, for operators reading the table.
    pub owner: &'a str,
    /// Unique to this claim: a retried claim that finds its own first attempt's item knows it
    /// by the token, and only this token releases it.
    pub token: &'a str,
    /// Wall-clock ms after which the claim may be taken over (the holder is presumed dead).
    pub lease_until_ms: u64,
    /// Wall-clock now, ms.
    pub now_ms: u64,
    /// Epoch seconds when the record may be deleted by TTL.
    pub expires_at: u64,
}

/// At most this many ids per `complete` call (DynamoDB's `BatchWriteItem` limit).
pub const COMPLETE_CHUNK: usize = 25;

/// The dedup table, in the Powertools idempotency style: claim → side effect → complete,
/// releasing the claim when the side effect fails. Each method is one request; the pass
/// retries and paces them.
pub trait DedupStore: Send + Sync + 'static {
    /// Conditional write: succeeds when no live record exists for the id.
    fn claim(
        &self,
        claim: Claim<'_>,
        deadline: Instant,
    ) -> impl Future<Output = Result<ClaimOutcome, PortError>> + Send;

    /// Records up to [`COMPLETE_CHUNK`] ids as enqueued (or parked), for `expires_at` (epoch
    /// seconds). Unconditional and idempotent; returns the ids that were not processed.
    fn complete(
        &self,
        ids: &[(String, bool)],
        expires_at: u64,
        deadline: Instant,
    ) -> impl Future<Output = Result<Vec<String>, PortError>> + Send;

    /// Deletes our claim so the redelivery can be enqueued. Only the claim with this token
    /// goes: never a fresh claim of the same id made since.
    fn release(
        &self,
        id: &str,
        token: &str,
        deadline: Instant,
    ) -> impl Future<Output = Result<(), PortError>> + Send;
}

/// Counts of AWS requests and capacity, for the report and the cost model.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct Usage {
    pub sqs_requests: u64,
    pub dynamodb_requests: u64,
    pub dynamodb_write_units: f64,
    pub dynamodb_read_units: f64,
}

/// Adapters that can say what they used.
pub trait Metered {
    fn usage(&self) -> Usage {
        Usage::default()
    }
}
