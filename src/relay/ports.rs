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
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
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

/// A message's claim item as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClaimItem {
    pub id: u64,
    /// The batch whose record decides the claim; `None` for items the previous version wrote.
    pub batch: Option<String>,
    /// Items of the previous version: `done`, `parked` or `claimed`.
    pub legacy_status: Option<String>,
    /// The claim's own lease, epoch ms: what the previous version reads, so a rollback takes
    /// claims over once it ends (duplicates, never loss).
    pub lease_until_ms: u64,
    /// Epoch seconds; TTL deletes the item some time after.
    pub expires_at: u64,
}

/// A claim to write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewClaim {
    pub id: u64,
    /// The batch token.
    pub batch: String,
    /// The batch's lease when the claim was made (for a rollback's sake).
    pub lease_until_ms: u64,
    pub expires_at: u64,
}

/// A batch's record: its lease, and once its sends settled, its receipt.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BatchRecord {
    pub token: String,
    /// The batch works on its messages until then, epoch ms; a heartbeat moves it on.
    pub lease_until_ms: u64,
    pub expires_at: u64,
    /// The receipt: ids SQS or the parking queue accepted.
    pub accepted: Vec<u64>,
    /// Ids whose send outcome is unknown, held until `hold_until_ms`.
    pub held: Vec<u64>,
    pub hold_until_ms: u64,
    /// The receipt is written: the lease is over.
    pub settled: bool,
    /// Another batch judged the lease lapsed and is taking the claims over: the lease can
    /// never be renewed again.
    pub fenced: bool,
}

/// A settled batch's receipt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settle {
    pub token: String,
    pub accepted: Vec<u64>,
    pub held: Vec<u64>,
    pub hold_until_ms: u64,
    /// Now: the lease ends.
    pub lease_until_ms: u64,
    pub expires_at: u64,
}

/// What the store said about one insert.
#[derive(Clone, Debug, PartialEq)]
pub enum InsertOutcome {
    /// Written: the claim is ours.
    Inserted,
    /// An item exists for the id; the store may hand it back with the failure.
    Exists(Option<ClaimItem>),
    /// This statement failed (throttled, invalid...); the others stand on their own.
    Failed(PortError),
}

/// What a lease renewal found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Renewal {
    /// The lease was live and now runs to the new time.
    Renewed,
    /// The receipt is written (a renewal still on the wire when the batch settled).
    Settled,
    /// The lease had lapsed or was fenced by a batch taking the claims over: it is gone.
    Lost,
}

/// What a takeover found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TakeOver {
    /// The old item was still there: the claim is ours now.
    Taken,
    /// Someone changed it first; this is what is there now (if the store says).
    Changed(Option<ClaimItem>),
}

/// A key of the dedup table.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Key {
    Claim(u64),
    Batch(String),
}

impl Key {
    pub fn claim_id(&self) -> Option<u64> {
        match self {
            Key::Claim(id) => Some(*id),
            Key::Batch(_) => None,
        }
    }
}

/// An item read back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stored {
    Claim(ClaimItem),
    Batch(BatchRecord),
}

/// At most this many inserts per request (`BatchExecuteStatement`).
pub const INSERT_CHUNK: usize = 25;
/// At most this many keys per read (`BatchGetItem`).
pub const READ_CHUNK: usize = 100;

/// The dedup table's storage: one request per method. The protocol that uses it (leases,
/// receipts, takeovers) is `relay::lease`; the pass paces and retries through it.
pub trait DedupStore: Send + Sync + 'static {
    /// Claims per `insert_claims` request: [`INSERT_CHUNK`] where the store batches them,
    /// 1 where each is its own conditional write.
    fn insert_chunk(&self) -> usize {
        INSERT_CHUNK
    }

    /// Anything the store must find out before its first claim (once per process).
    fn ready(&self, _deadline: Instant) -> impl Future<Output = ()> + Send {
        async {}
    }

    /// The host clock's offset from the store's (leases compare wall clocks across hosts),
    /// measured from the store's answers; a store with none to go by yet makes one cheap
    /// request. `Ok(None)`: the store does not tell its time. A store on the host's own
    /// clock (memory) is off by nothing.
    fn clock_offset(
        &self,
        _deadline: Instant,
    ) -> impl Future<Output = Result<Option<super::offset::ClockOffset>, PortError>> + Send {
        async { Ok(Some(super::offset::ClockOffset::ZERO)) }
    }

    /// The request `insert_claims` makes, for flow control and logs.
    fn insert_operation(&self) -> &'static str {
        "BatchExecuteStatement"
    }

    /// Writes up to [`INSERT_CHUNK`] claims, each only if no item exists for its id. One
    /// outcome per claim, in order.
    fn insert_claims(
        &self,
        claims: &[NewClaim],
        deadline: Instant,
    ) -> impl Future<Output = Result<Vec<InsertOutcome>, PortError>> + Send;

    /// Reads up to [`READ_CHUNK`] keys, strongly consistent. Returns what was found and the
    /// keys left unprocessed (to read again); a key in neither has no item.
    fn read(
        &self,
        keys: &[Key],
        deadline: Instant,
    ) -> impl Future<Output = Result<(Vec<Stored>, Vec<Key>), PortError>> + Send;

    /// Replaces `old` with `new`, only if the item is still exactly `old`.
    fn take_over(
        &self,
        new: &NewClaim,
        old: &ClaimItem,
        deadline: Instant,
    ) -> impl Future<Output = Result<TakeOver, PortError>> + Send;

    /// Writes a batch's record (a new one: live lease, no receipt), only if none exists: a
    /// late first attempt can never overwrite the receipt written after it. The token is
    /// unique, so an existing record is an earlier attempt's: that counts as written.
    fn put_batch(
        &self,
        record: &BatchRecord,
        deadline: Instant,
    ) -> impl Future<Output = Result<(), PortError>> + Send;

    /// Moves a batch's lease on to `lease_until_ms`, only while it is live at `now_ms` (never
    /// reviving a lapsed lease), not fenced and not settled.
    fn renew_batch(
        &self,
        token: &str,
        lease_until_ms: u64,
        now_ms: u64,
        deadline: Instant,
    ) -> impl Future<Output = Result<Renewal, PortError>> + Send;

    /// Fences a batch's record before its claims are taken over, only if it is still exactly
    /// as judged: unsettled, with this lease. `Ok(false)`: it changed (renewed, settled):
    /// decide again.
    fn fence_batch(
        &self,
        token: &str,
        judged_lease_until_ms: u64,
        deadline: Instant,
    ) -> impl Future<Output = Result<bool, PortError>> + Send;

    /// Writes a batch's receipt and ends its lease.
    fn settle_batch(
        &self,
        settle: &Settle,
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
