//! The seeded independent faults of a faulted drain: fake-aws's rules for every AWS call, and
//! the simulator's for TMC consume and confirm.

use std::time::Duration;

use fake_aws::{OpRules, Rules};
use tmc_sim::{Faults, MethodFaults};

/// fake-aws rules: every operation faulted at `rate` (throttling, 500s and lost responses in
/// equal parts), and each batch entry failing alone at `rate`.
pub(crate) fn chaos_rules(rate: f64, sender_fault_share: f64) -> Rules {
    let whole = OpRules {
        latency_jitter_ms: 2,
        throttle_rate: rate / 3.0,
        error500_rate: rate / 3.0,
        lost_response_rate: rate / 3.0,
        ..OpRules::default()
    };
    Rules::none()
        .with("*", whole.clone())
        .with(
            "SendMessageBatch",
            OpRules {
                partial_failure_rate: rate,
                sender_fault_share,
                ..whole.clone()
            },
        )
        .with(
            "BatchGetItem",
            OpRules {
                partial_failure_rate: rate,
                ..whole.clone()
            },
        )
        .with(
            "BatchExecuteStatement",
            OpRules {
                partial_failure_rate: rate,
                ..whole
            },
        )
}

/// Simulator faults: consume and confirm faulted at `rate`, split across the transient kinds
/// (isp errors, short call-limit bans, 502s, bodies cut in half and dropped connections after
/// the work was done, confirms answering is_success=false), plus a little latency.
pub(crate) fn tmc_faults(rate: f64) -> Faults {
    let consume = MethodFaults {
        latency: Duration::from_millis(5),
        error_rate: rate / 5.0,
        ban_rate: rate / 5.0,
        ban_secs: 1,
        http502_rate: rate / 5.0,
        malformed_rate: rate / 5.0,
        reset_rate: rate / 5.0,
        ..MethodFaults::default()
    };
    let confirm = MethodFaults {
        latency: Duration::from_millis(5),
        error_rate: rate / 5.0,
        http502_rate: rate / 5.0,
        malformed_rate: rate / 5.0,
        reset_rate: rate / 5.0,
        confirm_false_rate: rate / 5.0,
        ..MethodFaults::default()
    };
    Faults::none()
        .with("taobao.tmc.messages.consume", consume)
        .with("taobao.tmc.messages.confirm", confirm)
}
