//! The long-pass phase: a `--max-seconds 3600` pass SIGKILLed while it holds claims, then
//! passes one after another; what it held must be relayed within a lease, not its budget.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::Value;
use tokio::time::Instant;

use fake_aws::Rules;
use tmc_sim::{SimConfig, SimServer};

use crate::aws::queue_bodies;
use crate::drain_checks::body_id;
use crate::figures::{Check, LongPass};
use crate::fleet::{drained, Fleet, Ticker};
use crate::{secs, Phase, APP_KEY, TICK};

/// A backfill (`--max-seconds 3600`) SIGKILLed a third into its drain, then passes one after
/// another, as the schedule runs them: what it held must be relayed once its batches' leases
/// end, not after its budget.
pub(crate) async fn long_pass_phase(p: &Phase<'_>) -> Result<(LongPass, Vec<Check>), String> {
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
    let sim = SimServer::start(
        ([127, 0, 0, 1], 0).into(),
        SimConfig {
            app_key: APP_KEY.into(),
            app_secret: secret.to_owned(),
            lease: Duration::from_secs(args.lease_secs),
            seed: args.seed.wrapping_add(2),
            ..SimConfig::default()
        },
    )
    .await
    .map_err(|e| format!("cannot start the long-pass simulator: {e}"))?;
    fake.set_rules(Rules::none())?;
    let res = via_fake.create(&format!("{tag}-l")).await?;
    let mut fleet = Fleet::new(
        "long",
        bin,
        &sim.gateway_url(),
        &fake.endpoint(),
        &res,
        secret,
        args.quantity,
        1,
    );
    fleet.keep_logs = args.keep_logs.clone();
    let started = Instant::now();
    let mut ticker = Ticker::new(started);
    let ids: Vec<u64> = sim.generate(None, args.long_pass_messages);
    let total = ids.len() as u64;
    fleet.spawn("drain", 3600)?;
    // Kill it while it holds claims (a batch claimed and not settled), a third of the way in.
    loop {
        if Instant::now() >= hard_deadline {
            return Err("the long pass never held claims to kill it with".into());
        }
        fleet.reap().await?;
        if fleet.running.is_empty() {
            return Err("the long pass ended before it could be killed".into());
        }
        if sim.counters().deliveries >= total / 3
            && fake_aws::inspect::live_claims(&via_fake.ddb, &res.table).await? > 0
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    if let Some(r) = fleet.running.first_mut() {
        r.kill_at = Some(Instant::now());
    }
    while !fleet.running.is_empty() {
        fleet.reap().await?;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let killed = Instant::now();
    let at_kill = sim.counters();
    let mut next_spawn = Instant::now();
    while Instant::now() < hard_deadline {
        fleet.reap().await?;
        let s = sim.counters();
        if drained(&s) && fleet.running.is_empty() {
            break;
        }
        if fleet.reaped_idle {
            fleet.reaped_idle = false;
            next_spawn = Instant::now() + Duration::from_millis(300);
        }
        if fleet.running.is_empty() && Instant::now() >= next_spawn && !drained(&s) {
            fleet.spawn("drain", args.pass_seconds)?;
        }
        ticker.tick("long pass killed", &s, ids.len(), &fleet);
        tokio::time::sleep(TICK).await;
    }
    let freed_after = killed.elapsed();
    let in_relay = queue_bodies(fake, moto, &res.relay_name, &res.relay_url).await?;
    let mut copies: HashMap<String, u64> = HashMap::new();
    for b in &in_relay {
        if let Some(id) = serde_json::from_str::<Value>(b)
            .ok()
            .and_then(|v| body_id(&v))
        {
            *copies.entry(id).or_default() += 1;
        }
    }
    let state = sim.counters();
    let sum = |key: &str| fleet.passes.iter().map(|p| p.count(key)).sum::<u64>();
    let ceiling = tmc_relay::relay::lease::LeasePolicy::default().ceiling;
    let long = LongPass {
        messages: total,
        delivered_at_kill: at_kill.deliveries,
        confirmed_at_kill: at_kill.confirmed,
        freed_after_s: secs(freed_after),
        lease_ceiling_s: ceiling.as_secs(),
        passes: fleet.passes.len() as u64,
        held_elsewhere: sum("held_elsewhere"),
        taken_over: sum("taken_over"),
        lost: ids
            .iter()
            .filter(|id| !copies.contains_key(&id.to_string()))
            .count() as u64,
        unconfirmed: state.published.saturating_sub(state.confirmed),
        copies: copies.values().map(|n| n - 1).sum(),
    };
    // One lease at most (the ceiling, however slow the batches), plus TMC's own lease and a
    // pass's time to see the redelivery.
    let allowed = ceiling + Duration::from_secs(args.lease_secs + args.pass_seconds);
    let passed = long.lost == 0
        && long.unconfirmed == 0
        && long.confirmed_at_kill < total
        && long.taken_over > 0
        && freed_after <= allowed;
    let checks = vec![Check::new(
        "long_pass",
        "long_pass_frees_its_messages_within_a_lease",
        passed,
        long.lost + long.unconfirmed,
        format!(
            "all {} relayed {:.0} s after SIGKILLing a --max-seconds 3600 pass that had {} \
             handed out and {} confirmed (allowed {} s): {} redeliveries met its live leases, \
             {} claims taken over, {} copies, {} lost, {} unconfirmed",
            total,
            freed_after.as_secs_f64(),
            long.delivered_at_kill,
            long.confirmed_at_kill,
            allowed.as_secs(),
            long.held_elsewhere,
            long.taken_over,
            long.copies,
            long.lost,
            long.unconfirmed,
        ),
    )];
    if let Some(m) = moto {
        m.delete(&res).await;
    }
    sim.shutdown().await;
    Ok((long, checks))
}
