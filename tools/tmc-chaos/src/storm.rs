//! The storm phase: the independent faults plus throttle storms on DynamoDB writes, a renewal
//! storm longer than a lease, stalls longer than a lease and SIGKILLs inside them, all planned
//! from the seed ([`StormPlan`]); checked as the main phase is, and for having struck at all.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::time::Instant;

use fake_aws::rules::{EpisodeKind, SplitMix64};
use fake_aws::{
    FakeAws, FakeAwsConfig, Rules, Schedule, Stall, StallEffect, Storm, StormEffect, Window,
};
use tmc_sim::Faults;

use crate::aws::Aws;
use crate::drain_checks::{drain_checks, DrainInput};
use crate::faults::{chaos_rules, tmc_faults};
use crate::figures::{Check, StormFigures};
use crate::fleet::Ticker;
use crate::main_phase::clean_drain;
use crate::{phase_fleet, phase_sim, Args, Phase, TICK};

/// The DynamoDB writes of the relay: its lease, claims, takeovers and receipt (`PutItem`,
/// `BatchExecuteStatement`) and its renewals (`UpdateItem`).
const DDB_WRITES: [&str; 3] = ["PutItem", "UpdateItem", "BatchExecuteStatement"];
/// A storm throttles nearly every request, not all: the odd one gets through, as in a real
/// throttling episode.
const STORM_THROTTLE_RATE: f64 = 0.97;
/// SendMessageBatch's latency during the renewal storm: under the relay's 10 s attempt-timeout
/// floor, so sends are slow without timing out, and a batch lasts longer than its lease while
/// its renewals are refused.
const STORM_SQS_LATENCY_MS: u64 = 8_000;
/// How much longer than the relay's shortest lease a stall holds a request, and the renewal
/// storm lasts.
const STALL_BEYOND_LEASE: Duration = Duration::from_secs(15);
const RENEWAL_BEYOND_LEASE: Duration = Duration::from_secs(20);
/// The renewal storm ends between 5 and 10 s before the phase does.
const RENEWAL_LEAD: Duration = Duration::from_secs(10);
/// A storm-phase pass's budget ends at least this long after the last storm or stall: a
/// receipt that meets a storm in its pass's last seconds cannot be written by any relay, so
/// the phase does not ask for that.
const PASS_END_CLEARANCE: Duration = Duration::from_secs(20);
/// The share of the phase over which its messages are published.
const STORM_PUBLISH_SHARE: f64 = 0.75;

/// The storm phase's rules, windows, SIGKILL moments and publishing, all from the seed.
#[derive(Debug)]
pub(crate) struct StormPlan {
    seconds: u64,
    messages: usize,
    rules: Rules,
    windows: Vec<Window>,
    /// When each SIGKILL is due, after the rules were set; sorted.
    kills: Vec<Duration>,
    last_end: Duration,
    /// One extra pass starts then, inside the renewal storm once the leases of the batches
    /// caught in it have lapsed: the passes already running are stuck behind slow SQS and
    /// consume nothing, as a scheduled invocation arriving then would not be.
    fresh_pass_at: Option<Duration>,
    hold_ms: u64,
    renewal_ms: u64,
    lease_floor_ms: u64,
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl StormPlan {
    /// The relay's shortest lease, with its defaults: what stalls and the renewal storm outlast.
    fn lease_floor() -> Duration {
        tmc_relay::relay::lease::LeasePolicy::default().floor
    }

    /// The shortest phase that holds the stalls, then the renewal storm.
    pub(crate) fn min_seconds() -> u64 {
        (Self::lease_floor() + RENEWAL_BEYOND_LEASE + RENEWAL_LEAD + Duration::from_secs(15))
            .as_secs()
    }

    fn new(args: &Args, seed: u64) -> StormPlan {
        let span = args.storm_seconds * 1000;
        let floor = millis(Self::lease_floor());
        let hold_ms = floor + millis(STALL_BEYOND_LEASE);
        let renewal_ms = floor + millis(RENEWAL_BEYOND_LEASE);
        let effects = |ops: &[&str], e: StormEffect| -> BTreeMap<String, StormEffect> {
            ops.iter().map(|op| ((*op).to_owned(), e.clone())).collect()
        };
        let throttle = |rate| StormEffect {
            throttle_rate: rate,
            latency_ms: 0,
        };
        // Seconds-long throttling of every DynamoDB write, again and again.
        let writes = Storm {
            name: "ddb-writes".into(),
            when: Schedule {
                after_ms: 2_000,
                gap_ms: [4_000, 12_000],
                lasting_ms: [2_000, 5_000],
                count: 0,
                until_ms: span,
            },
            ops: effects(&DDB_WRITES, throttle(STORM_THROTTLE_RATE)),
        };
        // Every renewal refused for longer than a lease, while SQS is slow enough that batches
        // outlive their lease. Last, give or take 5 s: it stalls every running pass, so the
        // stalls go before it, where requests still flow.
        let renewal_from = span.saturating_sub(renewal_ms + millis(RENEWAL_LEAD));
        let mut renewal_ops = effects(&["UpdateItem"], throttle(1.0));
        renewal_ops.insert(
            "SendMessageBatch".into(),
            StormEffect {
                throttle_rate: 0.0,
                latency_ms: STORM_SQS_LATENCY_MS,
            },
        );
        let renewals = Storm {
            name: "renewals".into(),
            when: Schedule {
                after_ms: renewal_from,
                gap_ms: [0, 5_000],
                lasting_ms: [renewal_ms, renewal_ms],
                count: 1,
                until_ms: span,
            },
            ops: renewal_ops,
        };
        // Requests stuck inside the service for longer than a lease, then carried out late or
        // dropped: half of each.
        let stall_when = |count| Schedule {
            after_ms: 3_000,
            gap_ms: [2_000, 6_000],
            lasting_ms: [1_000, 3_000],
            count,
            until_ms: renewal_from,
        };
        let stalled = StallEffect {
            rate: 0.5,
            hold_ms,
            answer_share: 0.5,
        };
        let stall_ops = |ops: &[&str]| -> BTreeMap<String, StallEffect> {
            ops.iter()
                .map(|op| ((*op).to_owned(), stalled.clone()))
                .collect()
        };
        let rules = chaos_rules(args.fault_rate, args.sender_fault_share)
            .with_storm(writes)
            .with_storm(renewals)
            .with_stall(Stall {
                name: "ddb-writes".into(),
                when: stall_when(3),
                ops: stall_ops(&DDB_WRITES),
            })
            .with_stall(Stall {
                name: "sqs-sends".into(),
                when: stall_when(2),
                ops: stall_ops(&["SendMessageBatch"]),
            });
        let windows = rules.windows(seed, span);
        let mut rng = SplitMix64::new(seed ^ 0x5707_4C1A_55E5_0003);
        let mut kills: Vec<Duration> = (0..args.storm_crashes)
            .filter_map(|_| {
                let w = windows.get(rng.up_to(windows.len().max(1) as u64 - 1) as usize)?;
                let at = w.start_ms + rng.up_to(w.end_ms - w.start_ms - 1);
                Some(Duration::from_millis(at))
            })
            .collect();
        kills.sort_unstable();
        let last_end = Duration::from_millis(windows.iter().map(|w| w.end_ms).max().unwrap_or(0));
        let fresh_pass_at = windows
            .iter()
            .find(|w| w.kind == EpisodeKind::Storm && w.name == "renewals")
            .map(|w| Duration::from_millis(w.start_ms + floor + 10_000));
        StormPlan {
            seconds: args.storm_seconds,
            messages: args.storm_messages,
            rules,
            windows,
            kills,
            last_end,
            fresh_pass_at,
            hold_ms,
            renewal_ms,
            lease_floor_ms: floor,
        }
    }

    /// How many messages are published `t` into the phase.
    fn published_by(&self, t: Duration) -> usize {
        let over = self.seconds as f64 * STORM_PUBLISH_SHARE;
        let share = (t.as_secs_f64() / over).min(1.0);
        ((self.messages as f64 * share).ceil() as usize).min(self.messages)
    }

    /// The budget of a pass started `t` into the phase: `base`, or longer, so that it ends
    /// clear of every storm and stall.
    fn budget_at(&self, t: Duration, base: u64) -> u64 {
        let clear = (self.last_end + PASS_END_CLEARANCE).saturating_sub(t);
        base.max(clear.as_secs() + 1)
    }
}

/// Storms and stalls with the independent faults and SIGKILLs: seconds-long throttling of
/// every DynamoDB write, a renewal storm longer than a lease while SQS is slow (and a fresh
/// pass arriving once the leases caught in it lapsed), DynamoDB writes and SQS sends held
/// longer than a lease, then carried out late or dropped, and SIGKILLs at moments inside them. Its own simulator and fake-aws; messages published over the first
/// three quarters of the phase so traffic meets every window. Checked as the main phase is,
/// with the same allowance: crashes and lost SQS answers only.
pub(crate) async fn storm_phase(p: &Phase<'_>) -> Result<(StormFigures, Vec<Check>), String> {
    let args = p.args;
    let seed = args.seed.wrapping_add(3);
    let started = Instant::now();
    let sim = phase_sim(p, Duration::from_secs(args.lease_secs), seed).await?;
    let cfg = match p.moto_url {
        None => FakeAwsConfig::memory(),
        Some(u) => FakeAwsConfig::moto(u.clone()),
    };
    let fake = FakeAws::start(([127, 0, 0, 1], 0).into(), cfg.with_seed(seed))
        .await
        .map_err(|e| format!("cannot start the storm phase's fake-aws: {e}"))?;
    let via_fake = Aws::new(&fake.endpoint()).await;
    let res = via_fake.create(&format!("{}-s", p.tag)).await?;
    let plan = StormPlan::new(args, seed);
    let mut fleet = phase_fleet(p, "storm", &sim, &fake, &res, args.loops);
    let mut rng = SplitMix64::new(seed ^ 0x00C0_FFEE_C4A0_5003);
    let mut ticker = Ticker::new(started);
    let mut ids: Vec<u64> = Vec::new();
    let mut fresh_pass_at = None;

    sim.set_faults(tmc_faults(args.fault_rate));
    // The windows count from here.
    fake.set_rules(plan.rules.clone())?;
    let t0 = Instant::now();
    let span = Duration::from_secs(plan.seconds);
    loop {
        if Instant::now() >= p.hard_deadline {
            return Err(format!("gave up after {} s", args.timeout_secs));
        }
        fleet.reap().await?;
        let t = t0.elapsed();
        let due = plan.published_by(t);
        if due > ids.len() {
            ids.extend(sim.generate(None, due - ids.len()));
        }
        if t >= span && ids.len() == plan.messages && fleet.crashes >= args.storm_crashes {
            break;
        }
        while (fleet.running.len() as u64) < args.processes {
            fleet.spawn("follow", plan.budget_at(t0.elapsed(), args.pass_seconds))?;
        }
        if fresh_pass_at.is_none() && plan.fresh_pass_at.is_some_and(|at| t >= at) {
            fleet.spawn("follow", plan.budget_at(t0.elapsed(), args.pass_seconds))?;
            fresh_pass_at = Some(millis(t));
        }
        let pending_kill = fleet.running.iter().any(|r| r.kill_at.is_some());
        if let Some(&at) = plan.kills.get(fleet.crashes as usize) {
            if t >= at && !pending_kill {
                let up: Vec<usize> = (0..fleet.running.len())
                    .filter(|&i| fleet.running[i].started.elapsed() >= Duration::from_millis(300))
                    .collect();
                if !up.is_empty() {
                    let i = up[rng.up_to(up.len() as u64 - 1) as usize];
                    fleet.running[i].kill_at = Some(Instant::now());
                }
            }
        }
        let s = sim.counters();
        ticker.tick("storms and stalls", &s, plan.messages, &fleet);
        tokio::time::sleep(TICK).await;
    }

    fake.set_rules(Rules::none())?;
    sim.set_faults(Faults::none());
    clean_drain(
        p,
        &mut fleet,
        &sim,
        &mut ticker,
        ids.len(),
        "storm phase, clean drain",
    )
    .await?;
    // A held request may still be carried out (a late send is one more copy, logged as an
    // acceptance whose answer was lost): wait for the stalls to end before reading anything.
    while fake.stalls_pending() > 0 && Instant::now() < p.hard_deadline {
        tokio::time::sleep(TICK).await;
    }

    let (drain, mut checks) = drain_checks(&DrainInput {
        phase: "storm",
        args,
        sim: &sim,
        fake: &fake,
        via_fake: &via_fake,
        moto: p.moto,
        res: &res,
        ids: &ids,
        fleet: &fleet,
        crashes_requested: args.storm_crashes,
    })
    .await?;
    let stats = fake.stats();
    checks.push(storm_exercised(&stats, fake.stalls_pending()));
    if let Some(m) = p.moto {
        m.delete(&res).await;
    }
    sim.shutdown().await;
    fake.shutdown().await;
    let figures = StormFigures {
        drain,
        seconds: plan.seconds,
        throttle_rate: STORM_THROTTLE_RATE,
        stall_hold_ms: plan.hold_ms,
        renewal_storm_ms: plan.renewal_ms,
        lease_floor_ms: plan.lease_floor_ms,
        sqs_latency_ms: STORM_SQS_LATENCY_MS,
        kills_at_ms: plan.kills.iter().map(|d| millis(*d)).collect(),
        fresh_pass_at_ms: fresh_pass_at,
        windows: plan.windows,
        episodes: stats.episodes,
    };
    Ok((figures, checks))
}

/// The storm phase proves something only if its storms and stalls met the relay's requests:
/// write storms threw throttles, the renewal storm met renewals and slowed sends, both stalls
/// held requests, and every stall ended before the checks.
fn storm_exercised(stats: &fake_aws::FaultStats, pending: u64) -> Check {
    let get = |k: &str| stats.episodes.get(k).cloned().unwrap_or_default();
    let (writes, renewals) = (get("storm/ddb-writes"), get("storm/renewals"));
    let (ddb_stall, sqs_stall) = (get("stall/ddb-writes"), get("stall/sqs-sends"));
    let renewals_met = renewals.by_op.get("UpdateItem").copied().unwrap_or(0);
    let passed = writes.throttled > 0
        && renewals_met > 0
        && renewals.delayed > 0
        && ddb_stall.stalled > 0
        && sqs_stall.stalled > 0
        && pending == 0;
    Check::new(
        "storm",
        "storms_and_stalls_struck",
        passed,
        1,
        format!(
            "DynamoDB write storms threw {} throttles; the renewal storm met {renewals_met} \
             renewals and slowed {} sends; stalls held {} DynamoDB writes and {} sends ({} \
             answered after the hold, {} dropped); {pending} still held at the checks",
            writes.throttled,
            renewals.delayed,
            ddb_stall.stalled,
            sqs_stall.stalled,
            ddb_stall.answered + sqs_stall.answered,
            ddb_stall.dropped + sqs_stall.dropped,
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn storm_args(extra: &[&str]) -> Args {
        let mut argv = vec!["tmc-chaos"];
        argv.extend_from_slice(extra);
        Args::parse_from(argv)
    }

    /// The storm plan: every window inside the phase, the renewal storm and the stalls longer
    /// than the relay's shortest lease, each SIGKILL inside a window, every pass budget ending
    /// clear of the windows, and all messages published by three quarters of the phase.
    #[test]
    fn storm_plan_puts_storms_stalls_and_kills_where_they_bite() {
        let args = storm_args(&["--storm-seconds", "120", "--storm-crashes", "6"]);
        let plan = StormPlan::new(&args, 7);
        let floor = millis(StormPlan::lease_floor());
        assert_eq!(floor, 60_000, "the relay's default lease floor");
        assert!(plan.hold_ms > floor && plan.renewal_ms > floor);
        assert!(plan.windows.iter().all(|w| w.end_ms <= 120_000));
        let of = |kind, name: &str| {
            plan.windows
                .iter()
                .filter(|w| w.kind == kind && w.name == name)
                .cloned()
                .collect::<Vec<_>>()
        };
        let renewal = of(EpisodeKind::Storm, "renewals");
        assert_eq!(renewal.len(), 1);
        assert_eq!(renewal[0].end_ms - renewal[0].start_ms, plan.renewal_ms);
        let stalls: Vec<Window> = plan
            .windows
            .iter()
            .filter(|w| w.kind == EpisodeKind::Stall)
            .cloned()
            .collect();
        assert!(
            stalls.iter().all(|w| w.end_ms <= renewal[0].start_ms),
            "the stalls come before the renewal storm, while requests flow: {stalls:?}"
        );
        let fresh = millis(plan.fresh_pass_at.unwrap());
        assert!(renewal[0].contains(fresh) && fresh > renewal[0].start_ms + floor);
        assert!(of(EpisodeKind::Storm, "ddb-writes").len() >= 5);
        assert!(!of(EpisodeKind::Stall, "ddb-writes").is_empty());
        assert!(!of(EpisodeKind::Stall, "sqs-sends").is_empty());
        assert_eq!(plan.kills.len(), 6);
        for k in &plan.kills {
            let at = millis(*k);
            assert!(plan.windows.iter().any(|w| w.contains(at)), "{at}");
        }
        for t in (0..130).map(Duration::from_secs) {
            let end = t + Duration::from_secs(plan.budget_at(t, 20));
            assert!(end >= plan.last_end + PASS_END_CLEARANCE, "{t:?}");
        }
        assert_eq!(plan.budget_at(Duration::from_secs(500), 20), 20);
        assert_eq!(plan.published_by(Duration::ZERO), 0);
        assert_eq!(plan.published_by(Duration::from_secs(90)), 2000);
        assert!(plan.published_by(Duration::from_secs(45)) < 2000);
        assert_eq!(
            StormPlan::new(&args, 7).windows,
            plan.windows,
            "the same seed, the same plan"
        );
        assert_ne!(StormPlan::new(&args, 8).windows, plan.windows);
    }
}
