//! The concurrency phase: four passes at once on one group, with a TMC lease shorter than a
//! batch takes, must enqueue no id twice, lose none and leave none unconfirmed.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use serde_json::Value;
use tokio::time::Instant;

use fake_aws::{OpRules, Rules};
use tmc_sim::{SimConfig, SimServer};

use crate::aws::queue_bodies;
use crate::drain_checks::{accepted_id, body_id, sample};
use crate::figures::{Check, Concurrency};
use crate::fleet::{drained, mean_batch_latency, Fleet, Ticker};
use crate::{secs, Phase, APP_KEY, TICK};

/// Passes running at once in the concurrency phase.
const CONCURRENT_PASSES: usize = 4;
/// The concurrency phase's TMC lease: shorter than one batch takes there.
const CONCURRENCY_LEASE: Duration = Duration::from_secs(1);
/// Added to every `SendMessageBatch` in the concurrency phase, so a batch outlives its lease.
const CONCURRENCY_SQS_LATENCY_MS: u64 = 1500;
/// Passes of the concurrency phase start at least this far apart: started together they run in
/// step, each consuming again only once its first batch is recorded, when the others' are
/// too, so a redelivery would rarely meet a batch at work. Out of step, one pass's next
/// consume falls inside another's batch.
const CONCURRENCY_STAGGER: Duration = Duration::from_secs(1);
/// Each pass's budget in the concurrency phase (long: a pass only ends at an empty poll).
const CONCURRENCY_PASS_SECONDS: u64 = 30;
/// At most this many rounds of the concurrency phase, until the race it needs happened.
const CONCURRENCY_ROUNDS: usize = 3;

/// Four passes at once on one group, with a TMC lease shorter than a batch takes (SQS answers
/// slowly), no other faults: TMC hands held messages to other passes, which must neither enqueue
/// nor confirm them.
pub(crate) async fn concurrency_phase(p: &Phase<'_>) -> Result<(Concurrency, Vec<Check>), String> {
    let Phase {
        args,
        bin,
        secret,
        fake,
        via_fake,
        moto,
        tag,
        hard_deadline,
        ..
    } = *p;
    let started = Instant::now();
    let sim = SimServer::start(
        ([127, 0, 0, 1], 0).into(),
        SimConfig {
            app_key: APP_KEY.into(),
            app_secret: secret.to_owned(),
            lease: CONCURRENCY_LEASE,
            seed: args.seed.wrapping_add(1),
            ..SimConfig::default()
        },
    )
    .await
    .map_err(|e| format!("cannot start the concurrency simulator: {e}"))?;
    fake.set_rules(Rules::none())?;
    let res = via_fake.create(&format!("{tag}-c")).await?;
    fake.set_rules(Rules::none().with(
        "SendMessageBatch",
        OpRules {
            latency_ms: CONCURRENCY_SQS_LATENCY_MS,
            ..OpRules::default()
        },
    ))?;
    let mut fleet = Fleet::new(
        "concurrency",
        bin,
        &sim.gateway_url(),
        &fake.endpoint(),
        &res,
        secret,
        args.quantity,
        1,
    );
    fleet.keep_logs = args.keep_logs.clone();
    let mut ticker = Ticker::new(started);
    let mut ids: Vec<u64> = Vec::new();
    // The race needs passes that overlap while a batch outlives its lease. On a loaded machine
    // one round may not bring that about (processes start late), so rounds are added until it
    // happened: the check below is about what the passes did when it did.
    let mut last_spawn: Option<Instant> = None;
    for _round in 0..CONCURRENCY_ROUNDS {
        ids.extend(sim.generate(None, args.concurrency_messages));
        let mut finished = false;
        while Instant::now() < hard_deadline {
            fleet.reap().await?;
            let s = sim.counters();
            if drained(&s) {
                finished = true;
                break;
            }
            if fleet.running.len() < CONCURRENT_PASSES
                && last_spawn.is_none_or(|t| t.elapsed() >= CONCURRENCY_STAGGER)
            {
                fleet.spawn("drain", CONCURRENCY_PASS_SECONDS)?;
                last_spawn = Some(Instant::now());
            }
            ticker.tick("concurrency", &s, ids.len(), &fleet);
            tokio::time::sleep(TICK).await;
        }
        fleet
            .wait_all(Duration::from_secs(if finished {
                CONCURRENCY_PASS_SECONDS + 5
            } else {
                1
            }))
            .await?;
        let held: u64 = fleet.passes.iter().map(|p| p.count("held_elsewhere")).sum();
        let redelivered = sim.counters().deliveries > ids.len() as u64;
        if !finished || (held > 0 && redelivered) {
            break;
        }
    }
    fake.set_rules(Rules::none())?;

    // Copies per id: in the relay queue itself, and in fake-aws's log (whichever says more).
    let mut logged: HashMap<String, u64> = HashMap::new();
    for a in fake.accepted() {
        if a.queue_name == res.relay_name {
            if let Some(id) = accepted_id(&a) {
                *logged.entry(id).or_default() += 1;
            }
        }
    }
    let in_relay = queue_bodies(fake, moto, &res.relay_name, &res.relay_url).await?;
    let in_parking = queue_bodies(fake, moto, &res.parking_name, &res.parking_url).await?;
    let mut copies: HashMap<String, u64> = HashMap::new();
    let mut present: HashSet<String> = HashSet::new();
    for (i, b) in in_relay.iter().chain(&in_parking).enumerate() {
        if let Some(id) = serde_json::from_str::<Value>(b)
            .ok()
            .and_then(|v| body_id(&v))
        {
            if i < in_relay.len() {
                *copies.entry(id.clone()).or_default() += 1;
            }
            present.insert(id);
        }
    }
    for (id, n) in logged {
        let c = copies.entry(id).or_default();
        *c = (*c).max(n);
    }
    let twice: Vec<String> = copies
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(id, _)| id.clone())
        .collect();
    let state = sim.counters();
    let lost = ids
        .iter()
        .filter(|id| !present.contains(&id.to_string()))
        .count() as u64;
    let sum = |key: &str| fleet.passes.iter().map(|p| p.count(key)).sum::<u64>();
    let conc = Concurrency {
        messages: ids.len() as u64,
        passes_at_once: CONCURRENT_PASSES,
        passes: fleet.passes.len() as u64,
        lease_ms: CONCURRENCY_LEASE.as_millis() as u64,
        sqs_latency_ms: CONCURRENCY_SQS_LATENCY_MS,
        batch_latency_ms: mean_batch_latency(&fleet.passes),
        redeliveries: state.deliveries.saturating_sub(ids.len() as u64),
        held_elsewhere: sum("held_elsewhere"),
        enqueued_twice: twice.len() as u64,
        enqueued_twice_sample: sample(twice),
        lost,
        unconfirmed: state.published.saturating_sub(state.confirmed),
        seconds: secs(started.elapsed()),
    };
    let leaks: u64 = fleet
        .passes
        .iter()
        .map(|p| p.log.secret_lines + u64::from(p.stdout_secret))
        .sum();
    let checks = vec![
        Check::new(
            "concurrency",
            "concurrency_no_double_enqueue",
            conc.enqueued_twice == 0 && conc.lost == 0 && conc.unconfirmed == 0,
            conc.enqueued_twice + conc.lost + conc.unconfirmed,
            format!(
                "{} ids enqueued twice, {} lost, {} unconfirmed, with {} passes at once",
                conc.enqueued_twice, conc.lost, conc.unconfirmed, CONCURRENT_PASSES
            ),
        ),
        Check::new(
            "concurrency",
            "concurrency_exercised",
            conc.redeliveries > 0 && conc.held_elsewhere > 0,
            1,
            format!(
                "{} redeliveries while a batch was in progress, {} found held by another pass",
                conc.redeliveries, conc.held_elsewhere
            ),
        ),
        Check::new(
            "concurrency",
            "concurrency_secret_never_printed",
            leaks == 0,
            leaks,
            format!("{leaks} lines of relay output contained the app secret"),
        ),
    ];
    if let Some(m) = moto {
        m.delete(&res).await;
    }
    sim.shutdown().await;
    Ok((conc, checks))
}
