//! The figures: everything a run found ([`Outcome`]), phase by phase, and the named checks
//! ([`Check`]). Serialized as they stand for `--json`; rendered as text in `text.rs`.

use std::collections::BTreeMap;

use serde::Serialize;

use fake_aws::{EpisodeStats, OpStats, Window};

use crate::drain_checks::{Bound, Receipts};
use crate::BackendKind;

/// Everything the run found; printed as text or JSON.
#[derive(Debug, Serialize)]
pub(crate) struct Outcome {
    /// Every check passed.
    pub(crate) passed: bool,
    pub(crate) settings: Settings,
    /// The main phase (independent faults and SIGKILLs), when it ran: its figures stand at the
    /// top level.
    #[serde(flatten)]
    pub(crate) main: Option<DrainFigures>,
    /// The storm phase, when it ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) storm: Option<StormFigures>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) concurrency: Option<Concurrency>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) long_pass: Option<LongPass>,
    pub(crate) checks: Vec<Check>,
    /// One line per failed check: its phase, what failed and by how much.
    pub(crate) failures: Vec<String>,
    pub(crate) time: Times,
    pub(crate) note: String,
}

/// What was asked for.
#[derive(Debug, Serialize)]
pub(crate) struct Settings {
    pub(crate) seed: u64,
    pub(crate) backend: BackendKind,
    pub(crate) messages: usize,
    pub(crate) crashes_requested: u32,
    pub(crate) fault_rate: f64,
    pub(crate) lease_secs: u64,
    pub(crate) quantity: u32,
    pub(crate) processes: u64,
    pub(crate) loops: u32,
    pub(crate) pass_seconds: u64,
    pub(crate) pipeline_depth: usize,
    pub(crate) sender_fault_share: f64,
    pub(crate) sabotage: usize,
    pub(crate) storm_messages: usize,
    pub(crate) storm_seconds: u64,
    pub(crate) storm_crashes: u32,
}

/// What one faulted drain found (the main phase, the storm phase).
#[derive(Debug, Serialize)]
pub(crate) struct DrainFigures {
    /// Published, and confirmed at the end.
    pub(crate) messages: u64,
    pub(crate) confirmed: u64,
    /// SIGKILLs delivered.
    pub(crate) crashes: u32,
    /// Relay processes still running when the harness stopped waiting for them at the end,
    /// SIGKILLed then (not counted as crashes: they should have had nothing left to do).
    pub(crate) end_kills: u64,
    /// Relay processes started, ended on their own, and ended with a fatal error.
    pub(crate) passes: u64,
    pub(crate) passes_completed: u64,
    pub(crate) passes_fatal: u64,
    /// The mean of the passes' own consume-to-confirm batch latency.
    pub(crate) batch_latency_ms: Option<u64>,
    /// The first fatal error a pass reported (secret-free: the relay never prints it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) first_fatal_error: Option<String>,
    pub(crate) faults: FaultFigures,
    /// Published ids in neither queue.
    pub(crate) lost: u64,
    pub(crate) lost_sample: Vec<String>,
    /// Published ids the simulator still holds unconfirmed.
    pub(crate) unconfirmed: u64,
    /// Ids confirmed before SQS first accepted them (or never accepted).
    pub(crate) early_confirms: u64,
    pub(crate) early_confirm_sample: Vec<String>,
    pub(crate) duplicates: Duplicates,
    /// Batch receipts given up on: each a failure, never an allowance.
    pub(crate) receipts: Receipts,
    pub(crate) parked: Parked,
    /// Messages left for redelivery, summed over the passes that ended on their own.
    pub(crate) deferred: u64,
    /// The relay's own counts, summed over the passes that ended on their own.
    pub(crate) relay_counts: BTreeMap<String, u64>,
    /// Lines of child output that contained the app secret.
    pub(crate) secret_leaks: u64,
}

/// Faults injected, by kind, from both sides' own counters.
#[derive(Debug, Serialize)]
pub(crate) struct FaultFigures {
    /// The simulator's `faults_injected` (error, ban, banned, http502, malformed, reset,
    /// confirm_false).
    pub(crate) tmc: BTreeMap<String, u64>,
    /// Verified consume and confirm calls the faults were drawn over.
    pub(crate) tmc_consume_calls: u64,
    pub(crate) tmc_confirm_calls: u64,
    /// fake-aws's counts per operation (operations without faults left out).
    pub(crate) aws: BTreeMap<String, OpStats>,
    pub(crate) aws_total: OpStats,
}

/// Relay-queue duplicates and their bound.
#[derive(Debug, Serialize)]
pub(crate) struct Duplicates {
    /// Extra copies in the relay queue (an id there three times counts 2).
    pub(crate) count: u64,
    /// Ids there more than once.
    pub(crate) ids: u64,
    /// Extra copies of ids one of whose acceptances lost its answer; the rest must come from
    /// crashes.
    pub(crate) after_lost_response: u64,
    /// Extra copies of ids listed in a receipt the relay gave up on (evidence, not an
    /// allowance).
    pub(crate) after_receipt_given_up: u64,
    /// Relay-queue copies without a logged acceptance (moto only; see the acceptance check).
    pub(crate) unlogged_copies: u64,
    pub(crate) sample: Vec<String>,
    pub(crate) bound: Bound,
    /// Extra copies beyond the bound (0 when within it).
    pub(crate) over: u64,
}

/// The parking queue.
#[derive(Debug, Default, Serialize)]
pub(crate) struct Parked {
    /// Distinct ids parked.
    pub(crate) count: u64,
    pub(crate) by_reason: BTreeMap<String, u64>,
    /// Parked ids that are also in the relay queue (a lost answer, then a refusal).
    pub(crate) also_enqueued: u64,
    /// Extra copies in the parking queue.
    pub(crate) duplicates: u64,
}

/// The storm phase: its plan and what its storms and stalls hit.
#[derive(Debug, Serialize)]
pub(crate) struct StormFigures {
    #[serde(flatten)]
    pub(crate) drain: DrainFigures,
    pub(crate) seconds: u64,
    /// Storms throttle with this probability.
    pub(crate) throttle_rate: f64,
    /// How long a stall holds a request, and the renewal storm lasts: both longer than the
    /// relay's shortest lease.
    pub(crate) stall_hold_ms: u64,
    pub(crate) renewal_storm_ms: u64,
    pub(crate) lease_floor_ms: u64,
    /// SendMessageBatch's latency during the renewal storm.
    pub(crate) sqs_latency_ms: u64,
    /// When the SIGKILLs were due, ms into the phase.
    pub(crate) kills_at_ms: Vec<u64>,
    /// When the extra pass started inside the renewal storm, ms into the phase.
    pub(crate) fresh_pass_at_ms: Option<u64>,
    pub(crate) windows: Vec<Window>,
    /// What each storm and stall hit (fake-aws's counts).
    pub(crate) episodes: BTreeMap<String, EpisodeStats>,
}

/// The concurrency phase.
#[derive(Debug, Serialize)]
pub(crate) struct Concurrency {
    pub(crate) messages: u64,
    pub(crate) passes_at_once: usize,
    pub(crate) passes: u64,
    pub(crate) lease_ms: u64,
    pub(crate) sqs_latency_ms: u64,
    /// Mean time from consume to confirm reported by the passes: longer than the lease.
    pub(crate) batch_latency_ms: Option<u64>,
    /// Deliveries beyond the first: redeliveries while another pass held the message.
    pub(crate) redeliveries: u64,
    pub(crate) held_elsewhere: u64,
    pub(crate) enqueued_twice: u64,
    pub(crate) enqueued_twice_sample: Vec<String>,
    pub(crate) lost: u64,
    pub(crate) unconfirmed: u64,
    pub(crate) seconds: f64,
}

/// The long-pass phase.
#[derive(Debug, Default, Serialize)]
pub(crate) struct LongPass {
    pub(crate) messages: u64,
    /// Handed out when the long pass was killed.
    pub(crate) delivered_at_kill: u64,
    pub(crate) confirmed_at_kill: u64,
    /// From the SIGKILL to the last message confirmed.
    pub(crate) freed_after_s: f64,
    /// The longest a batch's lease can be: what a dead pass may hold messages for.
    pub(crate) lease_ceiling_s: u64,
    pub(crate) passes: u64,
    pub(crate) held_elsewhere: u64,
    pub(crate) taken_over: u64,
    pub(crate) lost: u64,
    pub(crate) unconfirmed: u64,
    pub(crate) copies: u64,
}

#[derive(Debug, Default, Serialize)]
pub(crate) struct Times {
    pub(crate) total_s: f64,
    pub(crate) faults_and_crashes_s: f64,
    pub(crate) clean_drain_s: f64,
    pub(crate) checks_s: f64,
    pub(crate) storm_s: f64,
    pub(crate) concurrency_s: f64,
    pub(crate) long_pass_s: f64,
}

/// One named check.
#[derive(Debug, Serialize)]
pub(crate) struct Check {
    /// `main`, `storm`, `concurrency` or `long_pass`.
    pub(crate) phase: &'static str,
    pub(crate) name: &'static str,
    pub(crate) passed: bool,
    /// How far off a failed check is (copies over the bound, ids lost, receipts given up...);
    /// 0 when it passed.
    by: u64,
    detail: String,
}

impl Check {
    pub(crate) fn new(
        phase: &'static str,
        name: &'static str,
        passed: bool,
        by: u64,
        detail: String,
    ) -> Self {
        Self {
            phase,
            name,
            passed,
            by: if passed { 0 } else { by.max(1) },
            detail,
        }
    }

    /// The failure line: phase, check, by how much, and the detail.
    pub(crate) fn failure(&self) -> String {
        format!(
            "[{}] {} (off by {}): {}",
            self.phase, self.name, self.by, self.detail
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A failed check says its phase and how far off it is; a passed one is off by nothing.
    #[test]
    fn a_failed_check_names_its_phase_and_margin() {
        let c = Check::new("storm", "duplicates_within_bound", false, 812, "x".into());
        assert_eq!(
            c.failure(),
            "[storm] duplicates_within_bound (off by 812): x"
        );
        assert_eq!(Check::new("main", "drained", true, 9, String::new()).by, 0);
        assert_eq!(
            Check::new("main", "exercised", false, 0, String::new()).by,
            1
        );
    }
}
