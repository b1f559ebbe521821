//! `tmc-chaos`: the harness that proves the relay loses nothing under faults, crashes and
//! concurrency (issue 5).
//!
//! In this process it starts the TMC simulator (short lease, so redelivery happens during the
//! run) and fake-aws (in memory, or in front of moto), creates the relay queue, parking queue and
//! dedup table, and publishes N messages. It then drains them with the real `tmc-relay run` as
//! child processes, through seeded faults on every TMC and AWS call, SIGKILLing them at random
//! moments until C crashes happened; turns the faults off and drains cleanly; and checks:
//!
//! - no loss: every published id is in the relay queue or the parking queue (with its reason);
//! - no early confirm: no id was confirmed (simulator) before SQS first accepted it (fake-aws's
//!   acceptance log);
//! - duplicates: within a bound computed from the events that can cause them (see
//!   [`Bound`](drain_checks::Bound));
//! - concurrency: four passes at once on one group, with a TMC lease shorter than a batch takes,
//!   enqueue no id twice.
//!
//! Exit status: 0 when every check passed, 1 when one failed, 2 when the harness could not run.
//! The app secret goes to the children through the environment only and is never printed; the
//! children's output is searched for it.
//!
//! Here: the arguments, the run (phase after phase, then the verdict) and what the phases
//! share. The phases are [`main_phase`](mod@main_phase), [`storm`], [`concurrency`] and
//! [`long_pass`]; the checks of a faulted drain are in [`drain_checks`], the relay processes
//! in [`fleet`], the AWS side in [`aws`], the fault rules in [`faults`], and the figures and
//! their text in [`figures`] and [`text`].

mod aws;
mod concurrency;
mod drain_checks;
mod faults;
mod figures;
mod fleet;
mod long_pass;
mod main_phase;
mod storm;
mod text;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Parser;
use serde::Serialize;
use tokio::time::Instant;

use fake_aws::{FakeAws, FakeAwsConfig};
use tmc_relay::relay::RelaySettings;
use tmc_sim::{SimConfig, SimServer};

use aws::{Aws, Resources};
use concurrency::concurrency_phase;
use figures::{Check, Outcome, Settings, Times};
use fleet::Fleet;
use long_pass::long_pass_phase;
use main_phase::main_phase;
use storm::{storm_phase, StormPlan};

/// The app key the simulator knows and the children use.
const APP_KEY: &str = "12345678";
/// How often the supervisor looks at the simulator and the children.
const TICK: Duration = Duration::from_millis(50);
/// What the performance guide and the output say about moto at size.
const MOTO_NOTE: &str = "moto's SQS slows down linearly with queue depth (about 30 ms per \
SendMessageBatch on an empty queue, 620 ms at 2,000 deep), so large runs are only practical \
with --backend memory, fake-aws's in-memory SQS/DynamoDB stand-in";

/// Where fake-aws carries out requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
enum BackendKind {
    /// fake-aws's in-memory SQS and DynamoDB (fast; the only practical way at 100,000).
    Memory,
    /// A running moto server (MOTO_ENDPOINT), behind fake-aws.
    Moto,
}

/// Publishes N messages, drains them through faults and SIGKILLs with real `tmc-relay run`
/// processes, drains cleanly, and checks that nothing was lost or confirmed early and that
/// duplicates stay within their bound.
#[derive(Parser, Debug)]
#[command(name = "tmc-chaos", version)]
struct Args {
    /// Messages to publish and relay in the main phase (independent faults and SIGKILLs); 0
    /// skips it.
    #[arg(long, default_value_t = 2000)]
    messages: usize,
    /// SIGKILLs of the running relay process, at random moments spread over the run.
    #[arg(long, default_value_t = 3)]
    crashes: u32,
    /// Probability that a TMC or AWS call is faulted (split evenly across the fault kinds that
    /// apply to it); each entry of a batch call also fails on its own with this probability.
    #[arg(long, default_value_t = 0.05)]
    fault_rate: f64,
    /// Seeds message ids and contents, both fault streams and the crash schedule.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Where SQS and DynamoDB requests are carried out.
    #[arg(long, value_enum, default_value_t = BackendKind::Memory)]
    backend: BackendKind,
    /// moto's URL, for --backend moto.
    #[arg(long, env = "MOTO_ENDPOINT")]
    moto_endpoint: Option<url::Url>,
    /// How long TMC hides a consumed, unconfirmed message: short, so redelivery happens
    /// during the run.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=300))]
    lease_secs: u64,
    /// Messages per consume (the relay's --quantity).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(10..=200))]
    quantity: u32,
    /// Consume loops per relay process (the relay's --concurrency).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=16))]
    loops: u32,
    /// Relay processes running at once on the group (a SIGKILL hits one of them).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=16))]
    processes: u64,
    /// Each relay process's time budget (the relay's --max-seconds).
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(2..=3600))]
    pass_seconds: u64,
    /// Messages for the concurrency phase; 0 skips it.
    #[arg(long, default_value_t = 2000)]
    concurrency_messages: usize,
    /// Messages for the long-pass phase: a `--max-seconds 3600` pass SIGKILLed a third into
    /// its drain, then passes one after another until TMC has nothing left; 0 skips it.
    #[arg(long, default_value_t = 1200)]
    long_pass_messages: usize,
    /// Messages for the storm phase: the same independent faults, plus throttle storms on
    /// DynamoDB writes, a renewal storm longer than a lease, stalls longer than a lease, and
    /// SIGKILLs inside them; 0 skips it.
    #[arg(long, default_value_t = 2000)]
    storm_messages: usize,
    /// How long the storm phase publishes and its storms and stalls strike (its messages are
    /// published over the first three quarters): at least the renewal storm plus 25 s.
    #[arg(long, default_value_t = 120, value_parser = clap::value_parser!(u64).range(1..=3600))]
    storm_seconds: u64,
    /// SIGKILLs in the storm phase, each at a moment inside a storm or stall.
    #[arg(long, default_value_t = 4)]
    storm_crashes: u32,
    /// Among injected SendMessageBatch entry failures, the share with SenderFault=true (the
    /// relay parks those). 0 keeps to retryable partial failures.
    #[arg(long, default_value_t = 0.0)]
    sender_fault_share: f64,
    /// The relay binary; by default `tmc-relay` next to this one.
    #[arg(long)]
    relay_bin: Option<PathBuf>,
    /// Give up, and fail, after this many seconds.
    #[arg(long, default_value_t = 3600)]
    timeout_secs: u64,
    /// Print the figures as JSON on stdout.
    #[arg(long)]
    json: bool,
    /// Also write every relay process's log (secret removed) to DIR/pass-N.log, for diagnosis.
    #[arg(long)]
    keep_logs: Option<PathBuf>,
    /// Self-test of the checks: confirm K ids behind the relay's back and enqueue K extra
    /// copies of others, which must show as lost, early confirms and duplicates.
    #[arg(long, default_value_t = 0, hide = true)]
    sabotage: usize,
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .with_target(false)
        .compact()
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tmc-chaos: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(args)) {
        Ok((outcome, json)) => {
            if json {
                match serde_json::to_string_pretty(&outcome) {
                    Ok(s) => println!("{s}"),
                    Err(e) => {
                        eprintln!("tmc-chaos: {e}");
                        return ExitCode::from(2);
                    }
                }
            } else {
                print!("{}", outcome.text());
            }
            if json {
                // The JSON is for programs; the verdict is for whoever reads the log.
                for f in &outcome.failures {
                    eprintln!("tmc-chaos: FAILED {f}");
                }
            }
            if outcome.passed {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("tmc-chaos: {e}");
            ExitCode::from(2)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The run.

fn fresh_secret() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(now_ms() as u128);
    h.write_u32(std::process::id());
    let a = h.finish();
    h.write_u64(a);
    format!("chaos-{a:016x}{:016x}", h.finish())
}

fn relay_bin(args: &Args) -> Result<PathBuf, String> {
    let bin = match &args.relay_bin {
        Some(p) => p.clone(),
        None => std::env::current_exe()
            .map_err(|e| format!("cannot locate this binary: {e}"))?
            .with_file_name("tmc-relay"),
    };
    if !bin.exists() {
        return Err(format!(
            "{} does not exist: build it (cargo build --bins) or pass --relay-bin",
            bin.display()
        ));
    }
    Ok(bin)
}

async fn run(args: Args) -> Result<(Outcome, bool), String> {
    if !(0.0..=1.0).contains(&args.fault_rate) || !(0.0..=1.0).contains(&args.sender_fault_share) {
        return Err("--fault-rate and --sender-fault-share must be within 0..=1".into());
    }
    if args.messages == 0
        && args.storm_messages == 0
        && args.concurrency_messages == 0
        && args.long_pass_messages == 0
    {
        return Err("nothing to run: every phase has 0 messages".into());
    }
    if args.sabotage > 0 && args.messages == 0 {
        return Err("--sabotage needs the main phase (--messages)".into());
    }
    if args.storm_messages > 0 && args.storm_seconds < StormPlan::min_seconds() {
        return Err(format!(
            "--storm-seconds must be at least {} (the renewal storm outlasts a lease)",
            StormPlan::min_seconds()
        ));
    }
    let bin = relay_bin(&args)?;
    let started = Instant::now();
    let hard_deadline = started + Duration::from_secs(args.timeout_secs);
    let secret = fresh_secret();
    let loopback: SocketAddr = ([127, 0, 0, 1], 0).into();
    let moto_url = match args.backend {
        BackendKind::Memory => None,
        BackendKind::Moto => Some(
            args.moto_endpoint
                .clone()
                .ok_or("--backend moto needs MOTO_ENDPOINT or --moto-endpoint")?,
        ),
    };
    if args.backend == BackendKind::Moto && args.messages.max(args.storm_messages) > 2000 {
        eprintln!("tmc-chaos: warning: {MOTO_NOTE}");
    }
    if let Some(dir) = &args.keep_logs {
        std::fs::create_dir_all(dir).map_err(|e| format!("--keep-logs {}: {e}", dir.display()))?;
    }

    let fake_cfg = match &moto_url {
        None => FakeAwsConfig::memory(),
        Some(u) => FakeAwsConfig::moto(u.clone()),
    };
    let fake = FakeAws::start(loopback, fake_cfg.with_seed(args.seed))
        .await
        .map_err(|e| format!("cannot start fake-aws: {e}"))?;
    let via_fake = Aws::new(&fake.endpoint()).await;
    let moto = match &moto_url {
        Some(u) => Some(Aws::new(u.as_str()).await),
        None => None,
    };
    let tag = format!(
        "{}-{}-{}",
        args.seed,
        std::process::id(),
        now_ms() % 1_000_000
    );
    let phase = Phase {
        args: &args,
        bin: &bin,
        secret: &secret,
        fake: &fake,
        via_fake: &via_fake,
        moto: moto.as_ref(),
        moto_url: moto_url.as_ref(),
        tag: &tag,
        hard_deadline,
    };
    let mut checks = Vec::new();
    let mut times = Times::default();

    let main = if args.messages > 0 {
        let (figures, mut c, t) = main_phase(&phase).await?;
        checks.append(&mut c);
        times.faults_and_crashes_s = t.0;
        times.clean_drain_s = t.1;
        times.checks_s = t.2;
        Some(figures)
    } else {
        None
    };
    let mark = Instant::now();
    let storm = if args.storm_messages > 0 {
        let (figures, mut c) = storm_phase(&phase).await?;
        checks.append(&mut c);
        Some(figures)
    } else {
        None
    };
    times.storm_s = secs(mark.elapsed());
    let mark = Instant::now();
    let concurrency = if args.concurrency_messages > 0 {
        let (conc, mut c) = concurrency_phase(&phase).await?;
        checks.append(&mut c);
        Some(conc)
    } else {
        None
    };
    times.concurrency_s = secs(mark.elapsed());
    let mark = Instant::now();
    let long_pass = if args.long_pass_messages > 0 {
        let (long, mut c) = long_pass_phase(&phase).await?;
        checks.append(&mut c);
        Some(long)
    } else {
        None
    };
    times.long_pass_s = secs(mark.elapsed());
    times.total_s = secs(started.elapsed());
    fake.shutdown().await;

    let failures: Vec<String> = checks
        .iter()
        .filter(|c| !c.passed)
        .map(Check::failure)
        .collect();
    let outcome = Outcome {
        passed: failures.is_empty(),
        settings: Settings {
            seed: args.seed,
            backend: args.backend,
            messages: args.messages,
            crashes_requested: args.crashes,
            fault_rate: args.fault_rate,
            lease_secs: args.lease_secs,
            quantity: args.quantity,
            processes: args.processes,
            loops: args.loops,
            pass_seconds: args.pass_seconds,
            pipeline_depth: RelaySettings::default().pipeline_depth,
            sender_fault_share: args.sender_fault_share,
            sabotage: args.sabotage,
            storm_messages: args.storm_messages,
            storm_seconds: args.storm_seconds,
            storm_crashes: args.storm_crashes,
        },
        main,
        storm,
        concurrency,
        long_pass,
        checks,
        failures,
        time: times,
        note: match args.backend {
            BackendKind::Memory => format!("backend memory: {MOTO_NOTE}"),
            BackendKind::Moto => format!("backend moto (behind fake-aws): {MOTO_NOTE}"),
        },
    };
    Ok((outcome, args.json))
}

/// What the phases after the main run share.
#[derive(Clone, Copy)]
struct Phase<'a> {
    args: &'a Args,
    bin: &'a Path,
    secret: &'a str,
    fake: &'a FakeAws,
    via_fake: &'a Aws,
    moto: Option<&'a Aws>,
    moto_url: Option<&'a url::Url>,
    tag: &'a str,
    hard_deadline: Instant,
}

/// A fresh simulator for one phase, with the run's app key and secret.
async fn phase_sim(p: &Phase<'_>, lease: Duration, seed: u64) -> Result<SimServer, String> {
    SimServer::start(
        ([127, 0, 0, 1], 0).into(),
        SimConfig {
            app_key: APP_KEY.into(),
            app_secret: p.secret.to_owned(),
            lease,
            seed,
            ..SimConfig::default()
        },
    )
    .await
    .map_err(|e| format!("cannot start a simulator: {e}"))
}

fn phase_fleet(
    p: &Phase<'_>,
    name: &'static str,
    sim: &SimServer,
    fake: &FakeAws,
    res: &Resources,
    loops: u32,
) -> Fleet {
    let mut fleet = Fleet::new(
        name,
        p.bin,
        &sim.gateway_url(),
        &fake.endpoint(),
        res,
        p.secret,
        p.args.quantity,
        loops,
    );
    fleet.keep_logs = p.args.keep_logs.clone();
    fleet
}

fn secs(d: Duration) -> f64 {
    (d.as_secs_f64() * 10.0).round() / 10.0
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// Every flag has a help line, and clap finds the command line consistent.
    #[test]
    fn every_flag_has_help() {
        let cmd = super::Args::command();
        cmd.clone().debug_assert();
        let missing: Vec<&str> = cmd
            .get_arguments()
            .filter(|a| !matches!(a.get_id().as_str(), "help" | "version"))
            .filter(|a| a.get_help().is_none_or(|h| h.to_string().trim().is_empty()))
            .map(|a| a.get_id().as_str())
            .collect();
        assert!(missing.is_empty(), "flags without help: {missing:?}");
    }
}
