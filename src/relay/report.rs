//! The pass report: what happened, per group and in total. Serialised as the invocation result.

use serde::Serialize;

use super::flow::FlowReport;
use super::ports::Usage;

/// Why a consume loop stopped. Ordered by how much an operator needs to know (worst last).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// Drain mode met an empty poll: the queue is drained.
    Empty,
    /// `max_messages` reached.
    MaxMessages,
    /// `max_batches` reached.
    MaxBatches,
    /// Not enough time left to finish another batch.
    Budget,
    /// Stopped by SIGINT or SIGTERM (the command line): no more consumes; the batches in hand
    /// finished, or were left for redelivery when the stop's grace ran out (`abandoned`).
    Stopped,
    /// TOP banned the app for longer than the remaining budget.
    RateLimited,
    /// Configuration is wrong; see `error`.
    Fatal,
}

/// Message counts. Every consumed message with a valid id ends in exactly one of
/// enqueued / duplicates / parked / deferred / held_elsewhere (or, when a stop's grace ran
/// out, abandoned).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Counts {
    /// Messages handed out by `consume`.
    pub consumed: u64,
    /// Accepted by the relay queue in this pass.
    pub enqueued: u64,
    /// Already enqueued earlier (redeliveries, or repeated inside one batch): confirmed only.
    pub duplicates: u64,
    /// Sent to the parking queue with a reason, then confirmed.
    pub parked: u64,
    /// Left unconfirmed for TMC to redeliver (retryable failures that outlived the budget).
    pub deferred: u64,
    /// Of `deferred`, those whose last request got no answer, so SQS may hold them: their
    /// claims are kept until the lease ends, and a redelivery after that may be a copy.
    pub unknown_outcome: u64,
    /// Claimed by another live pass, which will confirm them.
    pub held_elsewhere: u64,
    /// Of `enqueued` and `parked`, those whose batch receipt could not be written: left
    /// unconfirmed, so TMC redelivers them and a later pass sends them again (a copy).
    pub unsettled: u64,
    /// Of `enqueued` and `parked`, those whose receipt was written only after the batch's
    /// lease could have lapsed (DynamoDB refused the renewals and the receipt for a whole
    /// lease): another pass may have taken them over and sent them again (a copy).
    pub lease_lost: u64,
    /// Claims taken over from a batch that died or let them go (redeliveries).
    pub taken_over: u64,
    /// Without a valid id: cannot be confirmed; logged and parked for inspection.
    pub invalid: u64,
    /// Ids TMC acknowledged.
    pub confirmed: u64,
    /// Ids whose confirm failed (TMC will redeliver them; the dedup table stops a re-enqueue).
    pub confirm_failed: u64,
    /// Non-empty consumes.
    pub batches: u64,
    /// Consumes that returned nothing.
    pub empty_polls: u64,
    /// Of `consumed`, those of batches still at work when a stop's grace ran out: dropped as
    /// in a crash and counted nowhere else. A batch confirms only what its receipt holds, so
    /// TMC redelivers whatever of them was not confirmed (a copy if SQS had accepted it).
    pub abandoned: u64,
    /// Of the batches' confirmable ids, those left unconfirmed because the batch's archive
    /// object could not be written: TMC redelivers them, the dedup table stops a re-enqueue,
    /// and the redelivery's batch archives them.
    pub archive_failed: u64,
}

impl Counts {
    pub fn add(&mut self, o: &Counts) {
        self.consumed += o.consumed;
        self.enqueued += o.enqueued;
        self.duplicates += o.duplicates;
        self.parked += o.parked;
        self.deferred += o.deferred;
        self.unknown_outcome += o.unknown_outcome;
        self.held_elsewhere += o.held_elsewhere;
        self.unsettled += o.unsettled;
        self.lease_lost += o.lease_lost;
        self.taken_over += o.taken_over;
        self.invalid += o.invalid;
        self.confirmed += o.confirmed;
        self.confirm_failed += o.confirm_failed;
        self.batches += o.batches;
        self.empty_polls += o.empty_polls;
        self.abandoned += o.abandoned;
        self.archive_failed += o.archive_failed;
    }
}

/// One group's outcome.
#[derive(Clone, Debug, Serialize)]
pub struct GroupReport {
    /// The TMC group (`default` when none is configured).
    pub group: String,
    #[serde(flatten)]
    pub counts: Counts,
    pub stop_reason: StopReason,
    /// The ban TOP announced, when the pass stopped for one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ban_seconds: Option<u64>,
    /// What to fix, when the pass stopped on a fatal error.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The last consume failure that retries could not clear (HTML from a proxy, timeouts...),
    /// so a pass that stopped on `budget` or `empty` still says what went wrong.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    pub elapsed_ms: u64,
}

/// The whole pass.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    #[serde(flatten)]
    pub counts: Counts,
    /// The worst of the groups' stop reasons.
    pub stop_reason: StopReason,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ban_seconds: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub elapsed_ms: u64,
    /// Age of the oldest consumed message (now − pub_time), seconds.
    pub oldest_message_age_seconds: Option<u64>,
    /// Mean time from a batch's consume to its confirm.
    pub batch_latency_ms: Option<u64>,
    /// AWS request attempts that got no answer within their timeout: an operator sees a slow
    /// AWS here before it costs copies.
    pub timeouts: u64,
    /// AWS request attempts the services throttled.
    pub throttles: u64,
    /// What flow control did per service: limits, peak requests in flight, latency.
    pub flow: FlowReport,
    /// AWS requests and DynamoDB capacity used by this pass.
    pub usage: Usage,
    pub groups: Vec<GroupReport>,
}

impl Report {
    pub fn is_fatal(&self) -> bool {
        self.stop_reason == StopReason::Fatal
    }
}
