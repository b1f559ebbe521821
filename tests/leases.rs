//! A pass killed in the middle of a drain strands nothing for its budget: the operating
//! guide's backfill (`tmc-relay run --max-seconds 3600`) SIGKILLed a few seconds in, then scheduled
//! passes. Once the dead batches' leases end (a minute or so, not the hour), the next
//! redelivery takes their claims over. On ministack, which models the PartiQL claims.

mod support;

use std::collections::HashMap;
use std::process::Stdio;
use std::time::Duration;

use fake_aws::inspect::live_claims;
use support::{sim, Env};
use tokio::time::Instant;

/// How long the test waits at most: the longest lease a batch can have, plus room for the
/// passes that follow. The previous design held the messages for the whole budget (an hour).
const PATIENCE: Duration = Duration::from_secs(600 + 180);

fn relay(env: &Env, gateway: &str, args: &[&str]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_tmc-relay"));
    cmd.env_clear()
        .envs(env.vars(gateway))
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .args(args)
        .stdin(Stdio::null());
    cmd
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_long_pass_frees_its_messages_within_a_lease() {
    // TMC redelivers what is not confirmed five seconds after handing it out.
    let sim = sim(Duration::from_secs(5)).await;
    let env = Env::ministack(false).await;
    let gateway = sim.gateway_url();
    let ids = sim.generate(None, 1_200);

    let mut long = relay(&env, &gateway, &["run", "--max-seconds", "3600"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Kill it while it holds claims: a batch claimed and not settled.
    let started = Instant::now();
    let mut held_at_kill = 0;
    while started.elapsed() < Duration::from_secs(300) {
        held_at_kill = live_claims(&env.ddb, &env.table).await.unwrap();
        if held_at_kill > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    long.start_kill().unwrap(); // SIGKILL
    long.wait().await.unwrap();
    let killed_at = Instant::now();
    let at_kill = sim.state();
    assert!(
        held_at_kill > 0,
        "the pass held claims when killed: {at_kill:?}"
    );
    assert!(
        at_kill.confirmed < 1_200,
        "killed before it finished: {at_kill:?}"
    );

    // The schedule's passes, one after another, until TMC has nothing left.
    let (mut passes, mut held, mut taken_over) = (0, 0, 0);
    loop {
        let st = sim.state();
        if st.pending + st.inflight == 0 || killed_at.elapsed() > PATIENCE {
            break;
        }
        let out = relay(&env, &gateway, &["run", "--max-seconds", "60"])
            .output()
            .await
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        passes += 1;
        held += r["held_elsewhere"].as_u64().unwrap();
        taken_over += r["taken_over"].as_u64().unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let took = killed_at.elapsed();
    let end = sim.state();
    assert_eq!(
        end.pending + end.inflight,
        0,
        "messages still unrelayed {took:?} after the kill: {end:?}"
    );
    assert!(taken_over > 0, "the dead pass's claims were taken over");

    // Every id is in SQS; copies only from what the dead pass had in flight.
    let got = env.receive(&env.queue_url, 3_000).await;
    let mut copies: HashMap<u64, u64> = HashMap::new();
    for m in &got {
        let body: serde_json::Value = serde_json::from_str(&m.body).unwrap();
        let id: u64 = body["id"].as_str().unwrap().parse().unwrap();
        *copies.entry(id).or_default() += 1;
    }
    for id in &ids {
        assert!(copies.contains_key(id), "id {id} never reached SQS");
    }
    let extra: u64 = copies.values().map(|n| n - 1).sum();
    let depth = tmc_relay::relay::RelaySettings::default().pipeline_depth as u64;
    assert!(
        extra <= (depth + 1) * 200,
        "{extra} copies: more than one loop's batches in flight"
    );
    eprintln!(
        "killed holding {held_at_kill} claims; relayed all 1,200 {:.0} s after the kill, in \
         {passes} passes: {held} redeliveries met a live lease, {taken_over} claims taken over, \
         {extra} copies",
        took.as_secs_f64()
    );
}
