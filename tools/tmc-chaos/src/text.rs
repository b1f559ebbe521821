//! The text output: the [`Outcome`] rendered for whoever reads the log, one line per figure
//! with its verdict.

use fake_aws::rules::EpisodeKind;

use crate::figures::{DrainFigures, Outcome, Settings};

impl Outcome {
    pub(crate) fn text(&self) -> String {
        use std::fmt::Write as _;
        let s = &self.settings;
        let mut o = String::new();
        let ok = |b: bool| if b { "ok" } else { "FAILED" };
        let check = |phase: &str, name: &str| {
            self.checks
                .iter()
                .find(|c| c.phase == phase && c.name == name)
                .map(|c| c.passed)
        };
        let _ = writeln!(
            o,
            "tmc-chaos: seed {}, {} messages, backend {:?}, fault rate {}, {} crashes requested, \
             lease {} s, quantity {}, {} process(es) of {} loop(s), passes of {} s",
            s.seed,
            s.messages,
            s.backend,
            s.fault_rate,
            s.crashes_requested,
            s.lease_secs,
            s.quantity,
            s.processes,
            s.loops,
            s.pass_seconds
        );
        let _ = writeln!(o, "  ({})", self.note);
        if let Some(d) = &self.main {
            let _ = writeln!(o, "main phase: independent faults and SIGKILLs");
            drain_text(&mut o, "main", d, s, &check);
        }
        if let Some(st) = &self.storm {
            let count = |kind: EpisodeKind, name: &str| {
                st.windows
                    .iter()
                    .filter(|w| w.kind == kind && w.name == name)
                    .count()
            };
            let renewal = st
                .windows
                .iter()
                .find(|w| w.kind == EpisodeKind::Storm && w.name == "renewals")
                .map_or("none".to_owned(), |w| {
                    format!(
                        "{:.0}-{:.0} s",
                        w.start_ms as f64 / 1e3,
                        w.end_ms as f64 / 1e3
                    )
                });
            let _ = writeln!(
                o,
                "storm phase: {} messages over {} s, the same faults plus {} storms on DynamoDB \
                 writes (throttle rate {}), a renewal storm of {} s with SendMessageBatch at {} \
                 ms ({renewal}), {} + {} stall windows holding DynamoDB writes / sends {} s \
                 (lease floor {} s), {} SIGKILLs due at {:?} s, an extra pass at {} s",
                st.drain.messages,
                st.seconds,
                count(EpisodeKind::Storm, "ddb-writes"),
                st.throttle_rate,
                st.renewal_storm_ms / 1000,
                st.sqs_latency_ms,
                count(EpisodeKind::Stall, "ddb-writes"),
                count(EpisodeKind::Stall, "sqs-sends"),
                st.stall_hold_ms / 1000,
                st.lease_floor_ms / 1000,
                s.storm_crashes,
                st.kills_at_ms
                    .iter()
                    .map(|ms| ms / 1000)
                    .collect::<Vec<_>>(),
                st.fresh_pass_at_ms
                    .map_or("-".to_owned(), |ms| (ms / 1000).to_string()),
            );
            let spans: Vec<String> = st
                .windows
                .iter()
                .map(|w| {
                    format!(
                        "{}/{} {:.1}-{:.1}",
                        w.kind.as_str(),
                        w.name,
                        w.start_ms as f64 / 1e3,
                        w.end_ms as f64 / 1e3
                    )
                })
                .collect();
            let _ = writeln!(o, "                  windows (s): {}", spans.join(", "));
            for (name, e) in &st.episodes {
                let _ = writeln!(
                    o,
                    "                  {name}: {} requests in its windows, {} throttled, {} \
                     slowed, {} held ({} answered late, {} dropped)",
                    e.requests, e.throttled, e.delayed, e.stalled, e.answered, e.dropped
                );
            }
            let _ = writeln!(
                o,
                "                  storms and stalls struck   {}",
                ok(check("storm", "storms_and_stalls_struck").unwrap_or(false))
            );
            drain_text(&mut o, "storm", &st.drain, s, &check);
        }
        if let Some(c) = &self.concurrency {
            let _ = writeln!(
                o,
                "concurrency       {} messages, {} passes at once ({} in all), lease {} ms, \
                 batch latency {} ms: {} redeliveries, {} held elsewhere, {} enqueued twice, \
                 {} lost   {}",
                c.messages,
                c.passes_at_once,
                c.passes,
                c.lease_ms,
                c.batch_latency_ms.map_or("?".to_owned(), |v| v.to_string()),
                c.redeliveries,
                c.held_elsewhere,
                c.enqueued_twice,
                c.lost,
                ok(
                    check("concurrency", "concurrency_no_double_enqueue").unwrap_or(false)
                        && check("concurrency", "concurrency_exercised").unwrap_or(false)
                )
            );
        }
        if let Some(l) = &self.long_pass {
            let _ = writeln!(
                o,
                "long pass killed  {} messages, a --max-seconds 3600 pass SIGKILLed after {} \
                 handed out: all relayed {} s later (lease ceiling {} s) in {} passes, {} held \
                 elsewhere, {} taken over, {} copies, {} lost   {}",
                l.messages,
                l.delivered_at_kill,
                l.freed_after_s,
                l.lease_ceiling_s,
                l.passes,
                l.held_elsewhere,
                l.taken_over,
                l.copies,
                l.lost,
                ok(
                    check("long_pass", "long_pass_frees_its_messages_within_a_lease")
                        .unwrap_or(false)
                )
            );
        }
        let tm = &self.time;
        let _ = writeln!(
            o,
            "time              {} s (faults and crashes {} s, clean drain {} s, checks {} s, \
             storm phase {} s, concurrency {} s, long pass {} s)",
            tm.total_s,
            tm.faults_and_crashes_s,
            tm.clean_drain_s,
            tm.checks_s,
            tm.storm_s,
            tm.concurrency_s,
            tm.long_pass_s
        );
        for f in &self.failures {
            let _ = writeln!(o, "FAILED            {f}");
        }
        let _ = writeln!(
            o,
            "result            {}",
            if self.passed { "PASS" } else { "FAIL" }
        );
        o
    }
}

/// The figures of one faulted drain.
fn drain_text(
    o: &mut String,
    phase: &str,
    d: &DrainFigures,
    s: &Settings,
    check: &dyn Fn(&str, &str) -> Option<bool>,
) {
    use std::fmt::Write as _;
    let ok = |b: bool| if b { "ok" } else { "FAILED" };
    let _ = writeln!(
        o,
        "messages          {} published, {} confirmed",
        d.messages, d.confirmed
    );
    let _ = writeln!(
        o,
        "crashes           {} SIGKILLs ({} more at the end); {} relay processes, {} ended on \
         their own, {} fatal; mean batch latency {} ms",
        d.crashes,
        d.end_kills,
        d.passes,
        d.passes_completed,
        d.passes_fatal,
        d.batch_latency_ms.map_or("?".to_owned(), |v| v.to_string())
    );
    if let Some(e) = &d.first_fatal_error {
        let _ = writeln!(o, "                  first fatal error: {e}");
    }
    let tmc: Vec<String> = d
        .faults
        .tmc
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect();
    let _ = writeln!(
        o,
        "faults, TMC       {} (in {} consume and {} confirm calls)",
        if tmc.is_empty() {
            "none".to_owned()
        } else {
            tmc.join(", ")
        },
        d.faults.tmc_consume_calls,
        d.faults.tmc_confirm_calls
    );
    for (i, (op, st)) in d.faults.aws.iter().enumerate() {
        let storms = if st.storm_throttled + st.stalled > 0 {
            format!(
                " ({} by storms; {} stalled: {} answered late, {} dropped)",
                st.storm_throttled, st.stalled, st.stall_answered, st.stall_dropped
            )
        } else {
            String::new()
        };
        let _ = writeln!(
            o,
            "{}{op}: throttled {}{storms}, 500s {}, lost responses {}, failed entries {} \
             ({} SenderFault=true), of {} requests",
            if i == 0 {
                "faults, AWS       "
            } else {
                "                  "
            },
            st.throttled,
            st.error500,
            st.lost_responses,
            st.failed_entries,
            st.sender_fault_entries,
            st.requests
        );
    }
    let t = &d.faults.aws_total;
    let _ = writeln!(
        o,
        "                  total: {} faults in {} AWS requests",
        t.faults(),
        t.requests
    );
    let _ = writeln!(o, "lost              {:<40} {}", d.lost, ok(d.lost == 0));
    let _ = writeln!(
        o,
        "early confirms    {:<40} {}",
        d.early_confirms,
        ok(d.early_confirms == 0)
    );
    let dup = &d.duplicates;
    let b = &dup.bound;
    let _ = writeln!(
        o,
        "duplicates        {:<40} {}",
        format!(
            "{} extra copies of {} ids (bound {}; {} after lost answers, {} of messages in receipts given up)",
            dup.count, dup.ids, b.total, dup.after_lost_response, dup.after_receipt_given_up
        ),
        ok(check(phase, "duplicates_within_bound").unwrap_or(false))
    );
    let _ = writeln!(
        o,
        "                  bound = {} crashes × {} (loops × (pipeline depth {} + 1) × quantity) \
         + {} SQS acceptances whose answer the relay never got (both counted by the harness; \
         nothing else is allowed){}",
        b.crashes,
        b.per_crash,
        s.pipeline_depth,
        b.unanswered_acceptances,
        if dup.over > 0 {
            format!(": {} over", dup.over)
        } else {
            String::new()
        }
    );
    let r = &d.receipts;
    let _ = writeln!(
        o,
        "receipts given up {:<40} {}",
        format!(
            "{} unsettled (relay, {} passes), {} refused never redone ({} msgs)",
            r.unsettled,
            r.unsettled_passes,
            r.refused_never_redone,
            r.refused_never_redone_messages
        ),
        ok(check(phase, "no_receipt_given_up").unwrap_or(false))
    );
    if r.refused_by_killed_passes + r.lease_lost > 0 {
        let _ = writeln!(
            o,
            "                  {} refused receipts of SIGKILLed passes (the crash's); lease_lost {}",
            r.refused_by_killed_passes, r.lease_lost
        );
    }
    let rc = |k: &str| d.relay_counts.get(k).copied().unwrap_or(0);
    let _ = writeln!(
        o,
        "relay reports     enqueued {}, duplicates {}, taken over {}, held elsewhere {}, \
         unknown outcome {}, unsettled {}, confirm failed {}",
        rc("enqueued"),
        rc("duplicates"),
        rc("taken_over"),
        rc("held_elsewhere"),
        rc("unknown_outcome"),
        rc("unsettled"),
        rc("confirm_failed")
    );
    let reasons: Vec<String> = d
        .parked
        .by_reason
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect();
    let _ = writeln!(
        o,
        "parked            {}{}",
        d.parked.count,
        if reasons.is_empty() {
            String::new()
        } else {
            format!(
                " ({}; {} also in the relay queue)",
                reasons.join(", "),
                d.parked.also_enqueued
            )
        }
    );
    let _ = writeln!(
        o,
        "deferred          {} (in processes that ended on their own)",
        d.deferred
    );
    let _ = writeln!(
        o,
        "unconfirmed       {:<40} {}",
        d.unconfirmed,
        ok(d.unconfirmed == 0)
    );
    let _ = writeln!(
        o,
        "secret in output  {:<40} {}",
        format!("{} lines", d.secret_leaks),
        ok(d.secret_leaks == 0)
    );
}
