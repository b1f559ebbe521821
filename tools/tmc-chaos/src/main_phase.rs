//! The main phase: N messages drained through independent faults on every call and SIGKILLs
//! at random moments, then a clean drain (shared with the storm phase) and the checks; and the
//! hidden `--sabotage` self-test that the checks catch what they should.

use std::time::Duration;

use tokio::time::Instant;

use fake_aws::rules::SplitMix64;
use fake_aws::Rules;
use tmc_relay::top::{Secret, TopClient, TopConfig};
use tmc_sim::{Faults, SimServer};

use crate::aws::{Aws, Resources};
use crate::drain_checks::{drain_checks, DrainInput};
use crate::faults::{chaos_rules, tmc_faults};
use crate::figures::{Check, DrainFigures};
use crate::fleet::{drained, kill_points, Fleet, Ticker};
use crate::{phase_fleet, phase_sim, secs, Args, Phase, APP_KEY, TICK};

/// The main phase: N messages through independent faults on every call and SIGKILLs at
/// random moments, then a clean drain and the checks. Returns the seconds of its three parts.
pub(crate) async fn main_phase(
    p: &Phase<'_>,
) -> Result<(DrainFigures, Vec<Check>, (f64, f64, f64)), String> {
    let args = p.args;
    let started = Instant::now();
    let sim = phase_sim(p, Duration::from_secs(args.lease_secs), args.seed).await?;
    p.fake.set_rules(Rules::none())?;
    let res = p.via_fake.create(p.tag).await?;
    let ids: Vec<u64> = sim.generate(None, args.messages);
    if args.sabotage > 0 {
        sabotage(args, &sim, p.secret, p.via_fake, &res, &ids).await?;
    }

    // Faults and crashes.
    p.fake
        .set_rules(chaos_rules(args.fault_rate, args.sender_fault_share))?;
    sim.set_faults(tmc_faults(args.fault_rate));
    let mut fleet = phase_fleet(p, "main", &sim, p.fake, &res, args.loops);
    let mut rng = SplitMix64::new(args.seed ^ 0x00C0_FFEE_C4A0_5000);
    let points = kill_points(&mut rng, args.crashes, ids.len() as u64);
    let fault_until = ids.len() as u64 * 9 / 10;
    let mut ticker = Ticker::new(started);
    loop {
        if Instant::now() >= p.hard_deadline {
            return Err(format!("gave up after {} s", args.timeout_secs));
        }
        fleet.reap().await?;
        let s = sim.counters();
        // Faults hold for most of the run, whatever the number of crashes; the rest drains
        // cleanly.
        let faulted_enough = s.confirmed >= fault_until;
        if (fleet.crashes >= args.crashes && faulted_enough) || drained(&s) {
            break;
        }
        while (fleet.running.len() as u64) < args.processes {
            fleet.spawn("follow", args.pass_seconds)?;
        }
        let pending_kill = fleet.running.iter().any(|r| r.kill_at.is_some());
        if let Some(&point) = points.get(fleet.crashes as usize) {
            if s.confirmed >= point && !pending_kill {
                // One of the processes, somewhere in the next 0.8 s, but not before it is up.
                let i = rng.up_to(fleet.running.len() as u64 - 1) as usize;
                if let Some(r) = fleet.running.get_mut(i) {
                    let from = Instant::now().max(r.started + Duration::from_millis(300));
                    r.kill_at = Some(from + Duration::from_millis(rng.up_to(800)));
                }
            }
        }
        ticker.tick("faults and crashes", &s, ids.len(), &fleet);
        tokio::time::sleep(TICK).await;
    }
    let chaos_done = Instant::now();

    // Faults off: drain, waiting out the leases of messages and of dead passes' claims.
    p.fake.set_rules(Rules::none())?;
    sim.set_faults(Faults::none());
    clean_drain(p, &mut fleet, &sim, &mut ticker, ids.len(), "clean drain").await?;
    let drain_done = Instant::now();

    let out = drain_checks(&DrainInput {
        phase: "main",
        args,
        sim: &sim,
        fake: p.fake,
        via_fake: p.via_fake,
        moto: p.moto,
        res: &res,
        ids: &ids,
        fleet: &fleet,
        crashes_requested: args.crashes,
    })
    .await?;
    if let Some(m) = p.moto {
        m.delete(&res).await;
    }
    sim.shutdown().await;
    let t = (
        secs(chaos_done - started),
        secs(drain_done - chaos_done),
        secs(drain_done.elapsed()),
    );
    Ok((out.0, out.1, t))
}

/// Faults off: passes in drain mode until the simulator has nothing left (the leases of
/// messages and of dead passes' claims run out), then every pass ends.
pub(crate) async fn clean_drain(
    p: &Phase<'_>,
    fleet: &mut Fleet,
    sim: &SimServer,
    ticker: &mut Ticker,
    total: usize,
    label: &str,
) -> Result<(), String> {
    let args = p.args;
    let mut next_spawn = Instant::now();
    loop {
        if Instant::now() >= p.hard_deadline {
            break; // the checks say what is missing
        }
        fleet.reap().await?;
        let s = sim.counters();
        if drained(&s) {
            fleet.wait_budgets(Duration::from_secs(10)).await?;
            break;
        }
        // A pass that found nothing to do (messages still leased, or claimed by a dead pass):
        // pause before the next rather than spin.
        if fleet.reaped_idle {
            fleet.reaped_idle = false;
            next_spawn = Instant::now() + Duration::from_millis(300);
        }
        if Instant::now() >= next_spawn {
            while (fleet.running.len() as u64) < args.processes {
                fleet.spawn("drain", args.pass_seconds)?;
            }
        }
        ticker.tick(label, &s, total, fleet);
        tokio::time::sleep(TICK).await;
    }
    fleet.wait_all(Duration::from_secs(1)).await
}

/// Confirms `k` ids behind the relay's back and enqueues `k` extra copies of others: the
/// checks must report them as lost, confirmed early and duplicated.
async fn sabotage(
    args: &Args,
    sim: &SimServer,
    secret: &str,
    aws: &Aws,
    res: &Resources,
    ids: &[u64],
) -> Result<(), String> {
    let k = args.sabotage.min(ids.len() / 2);
    let endpoint = url::Url::parse(&sim.gateway_url()).map_err(|e| e.to_string())?;
    let top = TopClient::new(TopConfig::new(endpoint, APP_KEY, Secret::new(secret)))
        .map_err(|e| e.to_string())?;
    let deadline = Instant::now() + Duration::from_secs(30);
    for chunk in top.confirm(None, &ids[..k], deadline).await {
        if chunk.result.ok() != Some(true) {
            return Err("the sabotage's confirm failed".into());
        }
    }
    let copies: Vec<String> = ids[k..2 * k]
        .iter()
        .map(|id| serde_json::json!({ "id": id.to_string(), "sabotage": true }).to_string())
        .collect();
    aws.send_bodies(&res.relay_url, &copies).await
}
