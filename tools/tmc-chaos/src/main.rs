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
//! - duplicates: within a bound computed from the events that can cause them (see [`Bound`]);
//! - concurrency: four passes at once on one group, with a TMC lease shorter than a batch takes,
//!   enqueue no id twice.
//!
//! Exit status: 0 when every check passed, 1 when one failed, 2 when the harness could not run.
//! The app secret goes to the children through the environment only and is never printed; the
//! children's output is searched for it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_config::{BehaviorVersion, Region};
use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType,
    TimeToLiveSpecification,
};
use aws_sdk_sqs::config::Credentials;
use aws_sdk_sqs::types::SendMessageBatchRequestEntry;
use clap::Parser;
use serde::Serialize;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use fake_aws::rules::{EpisodeKind, SplitMix64};
use fake_aws::{
    Accepted, EpisodeStats, FakeAws, FakeAwsConfig, OpRules, OpStats, Rules, Schedule, Stall,
    StallEffect, Storm, StormEffect, Window,
};
use tmc_relay::relay::RelaySettings;
use tmc_relay::top::{Secret, TopClient, TopConfig};
use tmc_sim::{Faults, MethodFaults, SimConfig, SimServer, SimState};

/// The app key the simulator knows and the children use.
const APP_KEY: &str = "12345678";
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
/// The dedup write of a batch's receipt (and of its lease, and of takeovers): a receipt that
/// is never written leaves its batch unconfirmed, and each message it lists may come back as a
/// copy. A lease or a takeover that is never written sends nothing.
const RECORD_WRITE: &str = "PutItem";
/// At most this many rounds of the concurrency phase, until the race it needs happened.
const CONCURRENCY_ROUNDS: usize = 3;
/// How often the supervisor looks at the simulator and the children.
const TICK: Duration = Duration::from_millis(50);
/// What the README and the output say about moto at size.
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
// The figures.

/// Everything the run found; printed as text or JSON.
#[derive(Debug, Serialize)]
struct Outcome {
    /// Every check passed.
    passed: bool,
    settings: Settings,
    /// The main phase (independent faults and SIGKILLs), when it ran: its figures stand at the
    /// top level.
    #[serde(flatten)]
    main: Option<DrainFigures>,
    /// The storm phase, when it ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    storm: Option<StormFigures>,
    #[serde(skip_serializing_if = "Option::is_none")]
    concurrency: Option<Concurrency>,
    #[serde(skip_serializing_if = "Option::is_none")]
    long_pass: Option<LongPass>,
    checks: Vec<Check>,
    /// One line per failed check: its phase, what failed and by how much.
    failures: Vec<String>,
    time: Times,
    note: String,
}

/// What one faulted drain found (the main phase, the storm phase).
#[derive(Debug, Serialize)]
struct DrainFigures {
    /// Published, and confirmed at the end.
    messages: u64,
    confirmed: u64,
    /// SIGKILLs delivered.
    crashes: u32,
    /// Relay processes still running when the harness stopped waiting for them at the end,
    /// SIGKILLed then (not counted as crashes: they should have had nothing left to do).
    end_kills: u64,
    /// Relay processes started, ended on their own, and ended with a fatal error.
    passes: u64,
    passes_completed: u64,
    passes_fatal: u64,
    /// The mean of the passes' own consume-to-confirm batch latency.
    batch_latency_ms: Option<u64>,
    /// The first fatal error a pass reported (secret-free: the relay never prints it).
    #[serde(skip_serializing_if = "Option::is_none")]
    first_fatal_error: Option<String>,
    faults: FaultFigures,
    /// Published ids in neither queue.
    lost: u64,
    lost_sample: Vec<String>,
    /// Published ids the simulator still holds unconfirmed.
    unconfirmed: u64,
    /// Ids confirmed before SQS first accepted them (or never accepted).
    early_confirms: u64,
    early_confirm_sample: Vec<String>,
    duplicates: Duplicates,
    /// Batch receipts given up on: each a failure, never an allowance.
    receipts: Receipts,
    parked: Parked,
    /// Messages left for redelivery, summed over the passes that ended on their own.
    deferred: u64,
    /// The relay's own counts, summed over the passes that ended on their own.
    relay_counts: BTreeMap<String, u64>,
    /// Lines of child output that contained the app secret.
    secret_leaks: u64,
}

/// The storm phase: its plan and what its storms and stalls hit.
#[derive(Debug, Serialize)]
struct StormFigures {
    #[serde(flatten)]
    drain: DrainFigures,
    seconds: u64,
    /// Storms throttle with this probability.
    throttle_rate: f64,
    /// How long a stall holds a request, and the renewal storm lasts: both longer than the
    /// relay's shortest lease.
    stall_hold_ms: u64,
    renewal_storm_ms: u64,
    lease_floor_ms: u64,
    /// SendMessageBatch's latency during the renewal storm.
    sqs_latency_ms: u64,
    /// When the SIGKILLs were due, ms into the phase.
    kills_at_ms: Vec<u64>,
    /// When the extra pass started inside the renewal storm, ms into the phase.
    fresh_pass_at_ms: Option<u64>,
    windows: Vec<Window>,
    /// What each storm and stall hit (fake-aws's counts).
    episodes: BTreeMap<String, EpisodeStats>,
}

/// Batch receipts the relay gave up on. A receipt that is never written leaves its batch
/// unconfirmed while SQS holds its messages: their redeliveries are copies nobody can explain
/// but a relay that stopped trying. So each is a failure of the run.
#[derive(Debug, Default, Serialize)]
struct Receipts {
    /// Messages the relay itself reported `unsettled`, summed over the passes that ended on
    /// their own, and how many passes reported some.
    unsettled: u64,
    unsettled_passes: u64,
    /// Receipt writes (`PutItem` with `settled`) that fake-aws refused (throttled, 500, a
    /// stall that dropped them) and never saw carried out afterwards, by passes that were not
    /// SIGKILLed, and the messages they list.
    refused_never_redone: u64,
    refused_never_redone_messages: u64,
    /// The same by passes that were SIGKILLed: explained by the crash (its allowance covers
    /// the messages a killed process holds).
    refused_by_killed_passes: u64,
    /// The relay's `lease_lost` count (a relay that counts it), summed like `unsettled`.
    lease_lost: u64,
    /// The ids the receipts given up list (accepted or held).
    #[serde(skip)]
    listed_ids: HashSet<String>,
}

/// What was asked for.
#[derive(Debug, Serialize)]
struct Settings {
    seed: u64,
    backend: BackendKind,
    messages: usize,
    crashes_requested: u32,
    fault_rate: f64,
    lease_secs: u64,
    quantity: u32,
    processes: u64,
    loops: u32,
    pass_seconds: u64,
    pipeline_depth: usize,
    sender_fault_share: f64,
    sabotage: usize,
    storm_messages: usize,
    storm_seconds: u64,
    storm_crashes: u32,
}

/// Faults injected, by kind, from both sides' own counters.
#[derive(Debug, Serialize)]
struct FaultFigures {
    /// The simulator's `faults_injected` (error, ban, banned, http502, malformed, reset,
    /// confirm_false).
    tmc: BTreeMap<String, u64>,
    /// Verified consume and confirm calls the faults were drawn over.
    tmc_consume_calls: u64,
    tmc_confirm_calls: u64,
    /// fake-aws's counts per operation (operations without faults left out).
    aws: BTreeMap<String, OpStats>,
    aws_total: OpStats,
}

/// Relay-queue duplicates and their bound.
#[derive(Debug, Serialize)]
struct Duplicates {
    /// Extra copies in the relay queue (an id there three times counts 2).
    count: u64,
    /// Ids there more than once.
    ids: u64,
    /// Extra copies of ids one of whose acceptances lost its answer; the rest must come from
    /// crashes.
    after_lost_response: u64,
    /// Extra copies of ids listed in a receipt the relay gave up on (evidence, not an
    /// allowance).
    after_receipt_given_up: u64,
    /// Relay-queue copies without a logged acceptance (moto only; see the acceptance check).
    unlogged_copies: u64,
    sample: Vec<String>,
    bound: Bound,
    /// Extra copies beyond the bound (0 when within it).
    over: u64,
}

/// The ids a receipt write lists as accepted or held.
fn receipt_ids(body: &Value) -> Vec<String> {
    let Some(item) = body.get("Item") else {
        return Vec::new();
    };
    ["accepted", "held"]
        .iter()
        .filter_map(|name| item.get(*name)?.get("NS")?.as_array())
        .flatten()
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect()
}

/// The messages a refused `PutItem` body lists as accepted or held, when it is a batch's
/// receipt (`settled`); `None` for the other dedup writes.
fn receipt_listed(body: &Value) -> Option<u64> {
    let item = body.get("Item")?;
    item.get("settled")?;
    let listed = |name: &str| {
        item.get(name)
            .and_then(|a| a.get("NS"))
            .and_then(Value::as_array)
            .map_or(0, |ns| ns.len() as u64)
    };
    Some(listed("accepted") + listed("held"))
}

/// The most extra copies the events of the run can explain, every term counted by the harness
/// itself (its SIGKILLs, fake-aws's log), never taken from the relay's own output. Only two
/// events can put a message in SQS without the dedup table knowing before it comes back:
/// - a SIGKILL strands at most what its process had in flight: a loop holds up to
///   pipeline depth + 1 batches (the one being consumed and `depth` behind it), so
///   loops × (depth + 1) × quantity;
/// - an SQS acceptance whose answer the relay never got (a lost response, a request the relay
///   stopped waiting for, a stalled send carried out after its client left): one extra copy
///   each, from fake-aws's acceptance log.
///
/// A receipt the relay gave up on is not an allowance: it is a failure of its own
/// ([`Receipts`]). Nor is throttling or a stall of DynamoDB shorter than a lease.
#[derive(Debug, Default, Serialize)]
struct Bound {
    total: u64,
    crashes: u64,
    per_crash: u64,
    unanswered_acceptances: u64,
}

/// The parking queue.
#[derive(Debug, Default, Serialize)]
struct Parked {
    /// Distinct ids parked.
    count: u64,
    by_reason: BTreeMap<String, u64>,
    /// Parked ids that are also in the relay queue (a lost answer, then a refusal).
    also_enqueued: u64,
    /// Extra copies in the parking queue.
    duplicates: u64,
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

/// The concurrency phase.
#[derive(Debug, Serialize)]
struct Concurrency {
    messages: u64,
    passes_at_once: usize,
    passes: u64,
    lease_ms: u64,
    sqs_latency_ms: u64,
    /// Mean time from consume to confirm reported by the passes: longer than the lease.
    batch_latency_ms: Option<u64>,
    /// Deliveries beyond the first: redeliveries while another pass held the message.
    redeliveries: u64,
    held_elsewhere: u64,
    enqueued_twice: u64,
    enqueued_twice_sample: Vec<String>,
    lost: u64,
    unconfirmed: u64,
    seconds: f64,
}

/// One named check.
#[derive(Debug, Serialize)]
struct Check {
    /// `main`, `storm`, `concurrency` or `long_pass`.
    phase: &'static str,
    name: &'static str,
    passed: bool,
    /// How far off a failed check is (copies over the bound, ids lost, receipts given up...);
    /// 0 when it passed.
    by: u64,
    detail: String,
}

impl Check {
    fn new(phase: &'static str, name: &'static str, passed: bool, by: u64, detail: String) -> Self {
        Self {
            phase,
            name,
            passed,
            by: if passed { 0 } else { by.max(1) },
            detail,
        }
    }

    /// The failure line: phase, check, by how much, and the detail.
    fn failure(&self) -> String {
        format!(
            "[{}] {} (off by {}): {}",
            self.phase, self.name, self.by, self.detail
        )
    }
}

#[derive(Debug, Default, Serialize)]
struct Times {
    total_s: f64,
    faults_and_crashes_s: f64,
    clean_drain_s: f64,
    checks_s: f64,
    storm_s: f64,
    concurrency_s: f64,
    long_pass_s: f64,
}

/// The long-pass phase.
#[derive(Debug, Default, Serialize)]
struct LongPass {
    messages: u64,
    /// Handed out when the long pass was killed.
    delivered_at_kill: u64,
    confirmed_at_kill: u64,
    /// From the SIGKILL to the last message confirmed.
    freed_after_s: f64,
    /// The longest a batch's lease can be: what a dead pass may hold messages for.
    lease_ceiling_s: u64,
    passes: u64,
    held_elsewhere: u64,
    taken_over: u64,
    lost: u64,
    unconfirmed: u64,
    copies: u64,
}

fn secs(d: Duration) -> f64 {
    (d.as_secs_f64() * 10.0).round() / 10.0
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

// ---------------------------------------------------------------------------------------------
// AWS resources, created through fake-aws (so both backends take one path).

/// SDK clients for one endpoint, with dummy credentials.
struct Aws {
    sqs: aws_sdk_sqs::Client,
    ddb: aws_sdk_dynamodb::Client,
}

/// The queues and table of one phase.
#[derive(Clone, Debug)]
struct Resources {
    relay_name: String,
    relay_url: String,
    parking_name: String,
    parking_url: String,
    table: String,
}

fn sqs_err<E, R>(what: &str, e: aws_sdk_sqs::error::SdkError<E, R>) -> String
where
    E: std::error::Error + 'static,
    R: std::fmt::Debug,
{
    format!("{what}: {}", aws_sdk_sqs::error::DisplayErrorContext(e))
}

impl Aws {
    async fn new(endpoint: &str) -> Aws {
        let sdk = aws_config::defaults(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .credentials_provider(Credentials::new("test", "test", None, None, "tmc-chaos"))
            .endpoint_url(endpoint)
            .timeout_config(
                aws_config::timeout::TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(5))
                    .operation_attempt_timeout(Duration::from_secs(60))
                    .build(),
            )
            .load()
            .await;
        Aws {
            sqs: aws_sdk_sqs::Client::new(&sdk),
            ddb: aws_sdk_dynamodb::Client::new(&sdk),
        }
    }

    /// A relay queue, a parking queue and a dedup table shaped as the relay expects (key `pk`
    /// S, TTL on `expires_at`).
    async fn create(&self, tag: &str) -> Result<Resources, String> {
        let relay_name = format!("chaos-relay-{tag}");
        let parking_name = format!("chaos-parking-{tag}");
        let table = format!("chaos-dedup-{tag}");
        let mut urls = Vec::new();
        for name in [&relay_name, &parking_name] {
            let out = self
                .sqs
                .create_queue()
                .queue_name(name)
                .send()
                .await
                .map_err(|e| sqs_err("CreateQueue", e))?;
            urls.push(
                out.queue_url()
                    .ok_or("CreateQueue answered without a QueueUrl")?
                    .to_owned(),
            );
        }
        let attr = AttributeDefinition::builder()
            .attribute_name("pk")
            .attribute_type(ScalarAttributeType::S)
            .build()
            .map_err(|e| e.to_string())?;
        let key = KeySchemaElement::builder()
            .attribute_name("pk")
            .key_type(KeyType::Hash)
            .build()
            .map_err(|e| e.to_string())?;
        self.ddb
            .create_table()
            .table_name(&table)
            .billing_mode(BillingMode::PayPerRequest)
            .attribute_definitions(attr)
            .key_schema(key)
            .send()
            .await
            .map_err(|e| sqs_err("CreateTable", e))?;
        let ttl = TimeToLiveSpecification::builder()
            .attribute_name("expires_at")
            .enabled(true)
            .build()
            .map_err(|e| e.to_string())?;
        self.ddb
            .update_time_to_live()
            .table_name(&table)
            .time_to_live_specification(ttl)
            .send()
            .await
            .map_err(|e| sqs_err("UpdateTimeToLive", e))?;
        let parking_url = urls.pop().unwrap_or_default();
        let relay_url = urls.pop().unwrap_or_default();
        Ok(Resources {
            relay_name,
            relay_url,
            parking_name,
            parking_url,
            table,
        })
    }

    /// Best effort: moto keeps what it is given until it stops.
    async fn delete(&self, r: &Resources) {
        for url in [&r.relay_url, &r.parking_url] {
            let _ = self.sqs.delete_queue().queue_url(url).send().await;
        }
        let _ = self.ddb.delete_table().table_name(&r.table).send().await;
    }

    /// Receives and deletes every message of a queue; returns the bodies.
    async fn receive_all(&self, url: &str) -> Result<Vec<String>, String> {
        let mut bodies = Vec::new();
        let mut empty = 0;
        while empty < 3 {
            let out = self
                .sqs
                .receive_message()
                .queue_url(url)
                .max_number_of_messages(10)
                .visibility_timeout(900)
                .send()
                .await
                .map_err(|e| sqs_err("ReceiveMessage", e))?;
            let msgs = out.messages();
            if msgs.is_empty() {
                empty += 1;
                continue;
            }
            empty = 0;
            let mut del = self.sqs.delete_message_batch().queue_url(url);
            for (i, m) in msgs.iter().enumerate() {
                bodies.push(m.body().unwrap_or_default().to_owned());
                let entry = aws_sdk_sqs::types::DeleteMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(m.receipt_handle().unwrap_or_default())
                    .build()
                    .map_err(|e| e.to_string())?;
                del = del.entries(entry);
            }
            del.send()
                .await
                .map_err(|e| sqs_err("DeleteMessageBatch", e))?;
        }
        Ok(bodies)
    }

    /// Sends bodies in batches of 10 (the sabotage's extra copies).
    async fn send_bodies(&self, url: &str, bodies: &[String]) -> Result<(), String> {
        for chunk in bodies.chunks(10) {
            let mut req = self.sqs.send_message_batch().queue_url(url);
            for (i, b) in chunk.iter().enumerate() {
                let e = SendMessageBatchRequestEntry::builder()
                    .id(format!("s{i}"))
                    .message_body(b)
                    .build()
                    .map_err(|e| e.to_string())?;
                req = req.entries(e);
            }
            let out = req
                .send()
                .await
                .map_err(|e| sqs_err("SendMessageBatch", e))?;
            if !out.failed().is_empty() {
                return Err("the sabotage's extra copies were refused".into());
            }
        }
        Ok(())
    }
}

/// The bodies in a queue: read from memory, or received from moto directly.
async fn queue_bodies(
    fake: &FakeAws,
    moto: Option<&Aws>,
    name: &str,
    url: &str,
) -> Result<Vec<String>, String> {
    match (fake.memory(), moto) {
        (Some(mem), _) => mem
            .messages(name)
            .map(|msgs| msgs.into_iter().map(|m| m.body).collect())
            .ok_or_else(|| format!("queue {name} is missing from memory")),
        (None, Some(aws)) => aws.receive_all(url).await,
        (None, None) => Err("no way to read the queues".into()),
    }
}

// ---------------------------------------------------------------------------------------------
// Faults.

/// fake-aws rules: every operation faulted at `rate` (throttling, 500s and lost responses in
/// equal parts), and each batch entry failing alone at `rate`.
fn chaos_rules(rate: f64, sender_fault_share: f64) -> Rules {
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
fn tmc_faults(rate: f64) -> Faults {
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

// ---------------------------------------------------------------------------------------------
// Relay processes.

/// Whether a child's log showed the secret, and its last noteworthy lines.
#[derive(Clone, Debug, Default)]
struct ChildLog {
    secret_lines: u64,
    /// The last lines that were not routine warnings, secret removed, for diagnosis.
    tail: Vec<String>,
}

impl ChildLog {
    fn scan(&mut self, line: &str, secret: &str) {
        if line.contains(secret) {
            self.secret_lines += 1;
        }
        let keep = match serde_json::from_str::<Value>(line) {
            Ok(v) => v.get("level").and_then(Value::as_str) == Some("ERROR"),
            Err(_) => !line.trim().is_empty(),
        };
        if keep {
            if self.tail.len() == 8 {
                self.tail.remove(0);
            }
            self.tail.push(line.replace(secret, "***"));
        }
    }
}

/// One relay process that ended.
#[derive(Debug)]
struct Pass {
    /// Its `AWS_SDK_UA_APP_ID`: fake-aws names the caller of a refused request by it.
    app_id: String,
    /// SIGKILLed (a crash, or stopped at the end of a phase).
    killed: bool,
    /// None when killed by a signal.
    exit_code: Option<i32>,
    /// The JSON report it printed (absent when killed).
    report: Option<Value>,
    log: ChildLog,
    stdout_secret: bool,
}

impl Pass {
    fn count(&self, key: &str) -> u64 {
        self.report
            .as_ref()
            .and_then(|r| r.get(key))
            .and_then(Value::as_u64)
            .unwrap_or(0)
    }

    fn fatal_error(&self) -> Option<String> {
        let r = self.report.as_ref()?;
        (r.get("stop_reason").and_then(Value::as_str) == Some("fatal")).then(|| {
            r.get("error")
                .and_then(Value::as_str)
                .unwrap_or("fatal error")
                .to_owned()
        })
    }
}

/// A relay process that is running.
struct Running {
    child: Child,
    app_id: String,
    started: Instant,
    /// When its budget ends.
    ends_by: Instant,
    /// When the supervisor will SIGKILL it.
    kill_at: Option<Instant>,
    stdout: JoinHandle<String>,
    stderr: JoinHandle<ChildLog>,
}

/// Starts, watches and kills `tmc-relay run` processes pointed at one simulator and one set of
/// resources.
struct Fleet {
    /// The phase, in the children's names and log files.
    phase: &'static str,
    bin: PathBuf,
    /// The whole environment of a child (it inherits nothing), the secret included.
    env: Vec<(&'static str, String)>,
    secret: String,
    quantity: u32,
    loops: u32,
    running: Vec<Running>,
    passes: Vec<Pass>,
    crashes: u32,
    /// Processes SIGKILLed because they were still running when the phase stopped waiting.
    end_kills: u64,
    /// Where to keep the children's logs, if anywhere, and how many were started.
    keep_logs: Option<PathBuf>,
    started: u64,
    /// Set when a process ended on its own having consumed nothing.
    reaped_idle: bool,
}

impl Fleet {
    #[allow(clippy::too_many_arguments)]
    fn new(
        phase: &'static str,
        bin: &Path,
        gateway: &str,
        aws_endpoint: &str,
        res: &Resources,
        secret: &str,
        quantity: u32,
        loops: u32,
    ) -> Fleet {
        let env = vec![
            ("TOP_APP_KEY", APP_KEY.to_owned()),
            ("TOP_APP_SECRET", secret.to_owned()),
            ("TOP_ENDPOINT", gateway.to_owned()),
            ("RELAY_QUEUE_URL", res.relay_url.clone()),
            ("PARKING_QUEUE_URL", res.parking_url.clone()),
            ("DEDUP_TABLE_NAME", res.table.clone()),
            ("AWS_ENDPOINT_URL", aws_endpoint.to_owned()),
            ("AWS_ACCESS_KEY_ID", "test".to_owned()),
            ("AWS_SECRET_ACCESS_KEY", "test".to_owned()),
            ("AWS_REGION", "us-east-1".to_owned()),
            ("AWS_EC2_METADATA_DISABLED", "true".to_owned()),
            ("RUST_LOG", "warn".to_owned()),
            // Structured logs: the harness reads the relay's warnings about failed writes.
            ("AWS_LAMBDA_LOG_FORMAT", "json".to_owned()),
        ];
        Fleet {
            phase,
            bin: bin.to_owned(),
            env,
            secret: secret.to_owned(),
            quantity,
            loops,
            running: Vec::new(),
            passes: Vec::new(),
            crashes: 0,
            end_kills: 0,
            keep_logs: None,
            started: 0,
            reaped_idle: false,
        }
    }

    fn spawn(&mut self, mode: &str, seconds: u64) -> Result<(), String> {
        self.started += 1;
        let app_id = format!("chaos-{}-{}", self.phase, self.started);
        let mut cmd = Command::new(&self.bin);
        cmd.env_clear()
            .envs(self.env.iter().map(|(k, v)| (*k, v.as_str())))
            // In its user agent: fake-aws names the caller of every refused request by it.
            .env("AWS_SDK_UA_APP_ID", &app_id)
            .args(["run", "--mode", mode])
            .args(["--max-seconds", &seconds.to_string()])
            .args(["--quantity", &self.quantity.to_string()])
            .args(["--concurrency", &self.loops.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", self.bin.display()))?;
        let mut out = child.stdout.take().ok_or("child without stdout")?;
        let err = child.stderr.take().ok_or("child without stderr")?;
        let stdout = tokio::spawn(async move {
            let mut s = String::new();
            let _ = out.read_to_string(&mut s).await;
            s
        });
        let secret = self.secret.clone();
        let keep = self
            .keep_logs
            .as_ref()
            .map(|d| d.join(format!("{app_id}.log")));
        let stderr = tokio::spawn(async move {
            let mut log = ChildLog::default();
            let mut kept = String::new();
            let mut lines = BufReader::new(err).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                log.scan(&line, &secret);
                if keep.is_some() {
                    kept.push_str(&line.replace(&secret, "***"));
                    kept.push('\n');
                }
            }
            if let Some(path) = keep {
                let _ = tokio::fs::write(path, kept).await;
            }
            log
        });
        self.running.push(Running {
            child,
            app_id,
            started: Instant::now(),
            ends_by: Instant::now() + Duration::from_secs(seconds),
            kill_at: None,
            stdout,
            stderr,
        });
        Ok(())
    }

    async fn finish(&mut self, mut r: Running, killed: bool) -> Result<(), String> {
        if killed {
            // SIGKILL: no chance to finish a batch, complete or confirm.
            r.child
                .start_kill()
                .map_err(|e| format!("cannot kill a relay process: {e}"))?;
        }
        let status = r
            .child
            .wait()
            .await
            .map_err(|e| format!("cannot wait for a relay process: {e}"))?;
        let stdout = r.stdout.await.unwrap_or_default();
        let log = r.stderr.await.unwrap_or_default();
        let pass = Pass {
            app_id: r.app_id,
            killed,
            exit_code: status.code(),
            report: serde_json::from_str(&stdout).ok(),
            stdout_secret: stdout.contains(&self.secret),
            log,
        };
        if killed {
            self.crashes += 1;
        } else if pass.count("consumed") == 0 {
            self.reaped_idle = true;
        }
        if !killed && pass.exit_code == Some(2) {
            // The relay refused its configuration or arguments: nothing will work.
            return Err(format!(
                "tmc-relay exited with status 2: {}",
                pass.log.tail.join(" | ")
            ));
        }
        self.passes.push(pass);
        Ok(())
    }

    /// Collects the processes that ended; SIGKILLs those whose moment has come.
    async fn reap(&mut self) -> Result<(), String> {
        let now = Instant::now();
        let mut i = 0;
        while i < self.running.len() {
            let r = &mut self.running[i];
            let ended = r
                .child
                .try_wait()
                .map_err(|e| format!("cannot watch a relay process: {e}"))?
                .is_some();
            let due = r.kill_at.is_some_and(|t| t <= now);
            if ended || due {
                let r = self.running.swap_remove(i);
                self.finish(r, !ended).await?;
            } else {
                i += 1;
            }
        }
        Ok(())
    }

    /// Waits for every running process to end on its own, for at most `limit`; then stops
    /// (SIGKILL) the rest, which by then should have nothing left to do. They are recorded as
    /// killed passes, but not as crashes.
    async fn wait_all(&mut self, limit: Duration) -> Result<(), String> {
        let until = Instant::now() + limit;
        while !self.running.is_empty() {
            self.reap().await?;
            if Instant::now() >= until {
                for r in std::mem::take(&mut self.running) {
                    self.finish(r, true).await?;
                    self.crashes -= 1;
                    self.end_kills += 1;
                }
                break;
            }
            tokio::time::sleep(TICK).await;
        }
        Ok(())
    }

    /// Waits for every running process to end on its own, each until its budget is over and
    /// a grace after it; then stops the rest as [`Fleet::wait_all`] does.
    async fn wait_budgets(&mut self, grace: Duration) -> Result<(), String> {
        let last = self.running.iter().map(|r| r.ends_by).max();
        let limit = last.map_or(Duration::ZERO, |t| {
            t.saturating_duration_since(Instant::now())
        });
        self.wait_all(limit + grace).await
    }
}

fn mean_batch_latency(passes: &[Pass]) -> Option<u64> {
    let all: Vec<u64> = passes
        .iter()
        .filter_map(|p| p.report.as_ref()?.get("batch_latency_ms")?.as_u64())
        .collect();
    (!all.is_empty()).then(|| all.iter().sum::<u64>() / all.len() as u64)
}

fn drained(s: &SimState) -> bool {
    s.pending == 0 && s.inflight == 0
}

/// Progress points (confirmed messages) at which the next SIGKILL is scheduled: uniform over
/// 5–85 % of the run, sorted, so the crashes spread over it whatever the throughput.
fn kill_points(rng: &mut SplitMix64, crashes: u32, messages: u64) -> Vec<u64> {
    let mut points: Vec<u64> = (0..crashes)
        .map(|_| ((0.05 + 0.80 * rng.next_f64()) * messages as f64) as u64)
        .collect();
    points.sort_unstable();
    points
}

/// A progress line on stderr every few seconds.
struct Ticker {
    started: Instant,
    last: Instant,
}

impl Ticker {
    fn new(started: Instant) -> Self {
        Self {
            started,
            last: Instant::now(),
        }
    }

    fn tick(&mut self, phase: &str, s: &SimState, total: usize, fleet: &Fleet) {
        if self.last.elapsed() < Duration::from_secs(5) {
            return;
        }
        self.last = Instant::now();
        eprintln!(
            "[{:>5.0}s] {phase}: confirmed {}/{total}, pending {}, in flight {}, crashes {}, passes {}",
            self.started.elapsed().as_secs_f64(),
            s.confirmed,
            s.pending,
            s.inflight,
            fleet.crashes,
            fleet.passes.len() + fleet.running.len()
        );
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

/// The main phase: N messages through independent faults on every call and SIGKILLs at
/// random moments, then a clean drain and the checks. Returns the seconds of its three parts.
async fn main_phase(p: &Phase<'_>) -> Result<(DrainFigures, Vec<Check>, (f64, f64, f64)), String> {
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
async fn clean_drain(
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

/// The id a queue body carries (`"id"`, a decimal string in relay and parking bodies).
fn body_id(body: &Value) -> Option<String> {
    match body.get("id")? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn accepted_id(a: &Accepted) -> Option<String> {
    a.entry_id
        .clone()
        .filter(|e| e.bytes().all(|b| b.is_ascii_digit()))
        .or_else(|| {
            serde_json::from_str::<Value>(&a.body)
                .ok()
                .and_then(|b| body_id(&b))
        })
}

fn sample(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v.truncate(10);
    v
}

/// What the checks of a faulted drain read.
struct DrainInput<'a> {
    phase: &'static str,
    args: &'a Args,
    sim: &'a SimServer,
    fake: &'a FakeAws,
    via_fake: &'a Aws,
    moto: Option<&'a Aws>,
    res: &'a Resources,
    ids: &'a [u64],
    fleet: &'a Fleet,
    crashes_requested: u32,
}

/// Reads both queues, the acceptance log, the dedup table and the simulator, and runs the
/// checks of a faulted drain.
async fn drain_checks(i: &DrainInput<'_>) -> Result<(DrainFigures, Vec<Check>), String> {
    let DrainInput {
        phase,
        args,
        sim,
        fake,
        via_fake,
        moto,
        res,
        ids,
        fleet,
        crashes_requested,
    } = *i;
    let relay_bodies = queue_bodies(fake, moto, &res.relay_name, &res.relay_url).await?;
    let parking_bodies = queue_bodies(fake, moto, &res.parking_name, &res.parking_url).await?;
    let accepted = fake.accepted();
    let state = sim.state();

    // The relay queue: copies per id.
    let mut in_relay: HashMap<String, u64> = HashMap::new();
    let mut unreadable = 0u64;
    for b in &relay_bodies {
        match serde_json::from_str::<Value>(b)
            .ok()
            .and_then(|v| body_id(&v))
        {
            Some(id) => *in_relay.entry(id).or_default() += 1,
            None => unreadable += 1,
        }
    }
    // The parking queue: reason per id.
    let mut parked = Parked::default();
    let mut in_parking: HashMap<String, u64> = HashMap::new();
    for b in &parking_bodies {
        let Ok(v) = serde_json::from_str::<Value>(b) else {
            unreadable += 1;
            continue;
        };
        let Some(id) = body_id(&v) else { continue };
        // A parked message counts as kept only with its reason: without one nobody can act on it.
        if v.get("reason_code").and_then(Value::as_str).is_none() {
            continue;
        }
        let n = in_parking.entry(id.clone()).or_default();
        *n += 1;
        if *n == 1 {
            let reason = v
                .get("reason_code")
                .and_then(Value::as_str)
                .unwrap_or_default();
            *parked.by_reason.entry(reason.to_owned()).or_default() += 1;
            parked.also_enqueued += u64::from(in_relay.contains_key(&id));
        }
    }
    parked.count = in_parking.len() as u64;
    parked.duplicates = in_parking.values().map(|n| n - 1).sum();

    let published: Vec<String> = ids.iter().map(u64::to_string).collect();
    let lost: Vec<String> = published
        .iter()
        .filter(|id| !in_relay.contains_key(*id) && !in_parking.contains_key(*id))
        .cloned()
        .collect();

    // First acceptance per id, in either queue; lost answers on the relay queue.
    let mut first: HashMap<String, u64> = HashMap::new();
    let mut relay_accepted = 0u64;
    let mut lost_entries = 0u64;
    let mut lost_ids: HashSet<String> = HashSet::new();
    for a in &accepted {
        let relay = a.queue_name == res.relay_name;
        if !relay && a.queue_name != res.parking_name {
            continue;
        }
        let id = accepted_id(a);
        if relay {
            relay_accepted += 1;
            if a.response_lost {
                lost_entries += 1;
                lost_ids.extend(id.clone());
            }
        }
        if let Some(id) = id {
            let t = first.entry(id).or_insert(a.at_ms);
            *t = (*t).min(a.at_ms);
        }
    }
    // The early-confirm check needs a logged acceptance for every id in the queues. In front of
    // moto an extra copy can go unlogged: a client that disconnects mid-request (SIGKILL, its
    // own timeout) cancels fake-aws's handler after moto carried the request out.
    let unlogged_ids: Vec<&String> = in_relay
        .keys()
        .chain(in_parking.keys())
        .filter(|id| !first.contains_key(*id))
        .collect();
    let unlogged_copies = (relay_bodies.len() as u64).saturating_sub(relay_accepted);
    let mut early = Vec::new();
    let mut unconfirmed = 0u64;
    for id in &published {
        match state.messages.get(id).and_then(|m| m.confirmed_at_ms) {
            None => unconfirmed += 1,
            Some(at) if first.get(id).is_none_or(|&acc| at < acc) => early.push(id.clone()),
            Some(_) => {}
        }
    }

    // Duplicates and their bound.
    let dup_ids: Vec<String> = in_relay
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(id, _)| id.clone())
        .collect();
    let dup_count: u64 = in_relay.values().map(|n| n - 1).sum();
    let after_lost_response: u64 = in_relay
        .iter()
        .filter(|(id, n)| **n > 1 && lost_ids.contains(*id))
        .map(|(_, n)| n - 1)
        .sum();
    let depth = RelaySettings::default().pipeline_depth as u64;
    let per_crash = u64::from(args.loops) * (depth + 1) * u64::from(args.quantity);
    let bound = Bound::new(u64::from(fleet.crashes), per_crash, lost_entries);
    let over = dup_count.saturating_sub(bound.total);

    let receipts = receipts_given_up(fake, via_fake, res, &fleet.passes).await?;
    let after_receipt_given_up: u64 = in_relay
        .iter()
        .filter(|(id, n)| **n > 1 && receipts.listed_ids.contains(*id))
        .map(|(_, n)| n - 1)
        .sum();

    let mut relay_counts: BTreeMap<String, u64> = BTreeMap::new();
    for p in fleet.passes.iter().filter(|p| p.report.is_some()) {
        for key in [
            "consumed",
            "enqueued",
            "duplicates",
            "parked",
            "deferred",
            "unknown_outcome",
            "held_elsewhere",
            "taken_over",
            "unsettled",
            "lease_lost",
            "invalid",
            "confirmed",
            "confirm_failed",
        ] {
            *relay_counts.entry(key.to_owned()).or_default() += p.count(key);
        }
    }
    let fatal: Vec<String> = fleet.passes.iter().filter_map(Pass::fatal_error).collect();
    let secret_leaks: u64 = fleet
        .passes
        .iter()
        .map(|p| p.log.secret_lines + u64::from(p.stdout_secret))
        .sum();

    let given_up = receipts.given_up();
    let checks = vec![
        Check::new(
            phase,
            "no_loss",
            lost.is_empty(),
            lost.len() as u64,
            format!(
                "{} of {} published ids in neither the relay queue nor the parking queue (with a reason)",
                lost.len(),
                published.len()
            ),
        ),
        Check::new(
            phase,
            "no_early_confirm",
            early.is_empty(),
            early.len() as u64,
            format!(
                "{} ids confirmed before SQS first accepted them",
                early.len()
            ),
        ),
        Check::new(
            phase,
            "duplicates_within_bound",
            over == 0,
            over,
            format!(
                "{dup_count} extra copies of {} ids, bound {} ({} SIGKILLs × {per_crash} + {} SQS \
                 acceptances whose answer was lost): {over} over the bound; {after_lost_response} \
                 of the copies follow a lost answer, {after_receipt_given_up} are of messages \
                 listed in receipts given up",
                dup_ids.len(),
                bound.total,
                bound.crashes,
                bound.unanswered_acceptances
            ),
        ),
        Check::new(
            phase,
            "no_receipt_given_up",
            given_up == 0,
            given_up,
            format!(
                "the relay reported {} messages unsettled in {} passes (receipts it could not \
                 write); fake-aws refused {} receipt writes that were never carried out \
                 afterwards, by passes that were not killed, listing {} messages ({} more by \
                 SIGKILLed passes, explained by their crash)",
                receipts.unsettled,
                receipts.unsettled_passes,
                receipts.refused_never_redone,
                receipts.refused_never_redone_messages,
                receipts.refused_by_killed_passes
            ),
        ),
        Check::new(
            phase,
            "drained",
            unconfirmed == 0,
            unconfirmed,
            format!("{unconfirmed} published ids still unconfirmed at the end"),
        ),
        Check::new(
            phase,
            "crashes_happened",
            fleet.crashes == crashes_requested,
            u64::from(crashes_requested.abs_diff(fleet.crashes)),
            format!(
                "{} SIGKILLs of {crashes_requested} requested",
                fleet.crashes
            ),
        ),
        Check::new(
            phase,
            "acceptance_log_covers_queues",
            unlogged_ids.is_empty()
                && unreadable == 0
                && (args.backend == BackendKind::Moto || unlogged_copies == 0),
            unlogged_ids.len() as u64 + unreadable + unlogged_copies,
            format!(
                "{} ids in the queues without a logged acceptance, {unreadable} unreadable \
                 bodies; fake-aws logged {relay_accepted} acceptances into the relay queue, \
                 which holds {}",
                unlogged_ids.len(),
                relay_bodies.len()
            ),
        ),
        Check::new(
            phase,
            "secret_never_printed",
            secret_leaks == 0,
            secret_leaks,
            format!("{secret_leaks} lines of relay output contained the app secret"),
        ),
    ];

    let stats = fake.stats();
    let figures = DrainFigures {
        messages: published.len() as u64,
        confirmed: published.len() as u64 - unconfirmed,
        crashes: fleet.crashes,
        end_kills: fleet.end_kills,
        passes: fleet.passes.len() as u64,
        passes_completed: fleet.passes.iter().filter(|p| !p.killed).count() as u64,
        passes_fatal: fatal.len() as u64,
        batch_latency_ms: mean_batch_latency(&fleet.passes),
        first_fatal_error: fatal.first().map(|e| e.replace(&fleet.secret, "***")),
        faults: FaultFigures {
            tmc: state.faults_injected.clone(),
            tmc_consume_calls: state.consume_calls,
            tmc_confirm_calls: state.confirm_calls,
            aws: stats
                .ops
                .iter()
                .filter(|(_, s)| s.faults() > 0)
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            aws_total: stats.total(),
        },
        lost: lost.len() as u64,
        lost_sample: sample(lost),
        unconfirmed,
        early_confirms: early.len() as u64,
        early_confirm_sample: sample(early),
        duplicates: Duplicates {
            count: dup_count,
            ids: dup_ids.len() as u64,
            after_lost_response,
            after_receipt_given_up,
            unlogged_copies,
            sample: sample(dup_ids),
            bound,
            over,
        },
        receipts,
        parked,
        deferred: relay_counts.get("deferred").copied().unwrap_or(0),
        relay_counts,
        secret_leaks,
    };
    Ok((figures, checks))
}

impl Bound {
    fn new(crashes: u64, per_crash: u64, unanswered_acceptances: u64) -> Self {
        Self {
            total: crashes * per_crash + unanswered_acceptances,
            crashes,
            per_crash,
            unanswered_acceptances,
        }
    }
}

impl Receipts {
    /// Receipts given up on, as the relay reported them (messages) or as fake-aws saw them
    /// (messages listed in receipt writes never carried out): whichever says more.
    fn given_up(&self) -> u64 {
        let seen = self
            .refused_never_redone_messages
            .max(self.refused_never_redone);
        self.unsettled.max(seen)
    }
}

/// The batch token (`b#...`) a receipt write is for, when `body` is one for `table`.
fn receipt_key(body: &Value, table: &str) -> Option<String> {
    if body.get("TableName").and_then(Value::as_str) != Some(table) {
        return None;
    }
    receipt_listed(body)?;
    body.get("Item")?
        .get("pk")?
        .get("S")?
        .as_str()
        .map(str::to_owned)
}

/// Counts the receipts given up on: the relay's own `unsettled`, and the receipt writes
/// fake-aws refused and never saw carried out afterwards. A refused write whose batch record
/// is settled anyway was redone with another body (a receipt retried with a new hold time):
/// not given up. Refused writes of SIGKILLed passes are the crash's.
async fn receipts_given_up(
    fake: &FakeAws,
    via_fake: &Aws,
    res: &Resources,
    passes: &[Pass],
) -> Result<Receipts, String> {
    let mut r = Receipts::default();
    for p in passes.iter().filter(|p| p.report.is_some()) {
        let u = p.count("unsettled");
        r.unsettled += u;
        r.unsettled_passes += u64::from(u > 0);
        r.lease_lost += p.count("lease_lost");
    }
    let killed: HashSet<&str> = passes
        .iter()
        .filter(|p| p.killed)
        .map(|p| p.app_id.as_str())
        .collect();
    for refused in fake.unrecovered(RECORD_WRITE) {
        let Some(key) = receipt_key(&refused.body, &res.table) else {
            continue;
        };
        if refused
            .caller
            .as_deref()
            .is_some_and(|c| killed.contains(c))
        {
            r.refused_by_killed_passes += 1;
            continue;
        }
        let now = via_fake
            .ddb
            .get_item()
            .table_name(&res.table)
            .key(
                "pk",
                aws_sdk_dynamodb::types::AttributeValue::S(key.clone()),
            )
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| sqs_err("GetItem", e))?;
        if now.item().is_some_and(|i| i.contains_key("settled")) {
            continue;
        }
        r.refused_never_redone += 1;
        r.refused_never_redone_messages += receipt_listed(&refused.body).unwrap_or(0);
        r.listed_ids.extend(receipt_ids(&refused.body));
    }
    Ok(r)
}

// ---------------------------------------------------------------------------------------------
// The storm phase.

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
struct StormPlan {
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
    fn min_seconds() -> u64 {
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
async fn storm_phase(p: &Phase<'_>) -> Result<(StormFigures, Vec<Check>), String> {
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

/// Four passes at once on one group, with a TMC lease shorter than a batch takes (SQS answers
/// slowly), no other faults: TMC hands held messages to other passes, which must neither enqueue
/// nor confirm them.
async fn concurrency_phase(p: &Phase<'_>) -> Result<(Concurrency, Vec<Check>), String> {
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

/// A backfill (`--max-seconds 3600`) SIGKILLed a third into its drain, then passes one after
/// another, as the schedule runs them: what it held must be relayed once its batches' leases
/// end, not after its budget.
async fn long_pass_phase(p: &Phase<'_>) -> Result<(LongPass, Vec<Check>), String> {
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

// ---------------------------------------------------------------------------------------------
// Text output.

impl Outcome {
    fn text(&self) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A receipt's accepted and held messages count; a lease, a takeover or an empty receipt
    /// list none; only receipts of the phase's own table are keyed.
    #[test]
    fn receipts_are_recognised_by_settled_and_table() {
        let receipt = json!({"TableName": "t", "Item": {"pk": {"S": "b#x"}, "settled": {"BOOL": true},
            "accepted": {"NS": ["1", "2", "3"]}, "held": {"NS": ["4"]}}});
        assert_eq!(receipt_listed(&receipt), Some(4));
        assert_eq!(receipt_ids(&receipt), ["1", "2", "3", "4"]);
        assert_eq!(receipt_key(&receipt, "t").as_deref(), Some("b#x"));
        assert_eq!(receipt_key(&receipt, "other"), None);
        let empty = json!({"Item": {"pk": {"S": "b#y"}, "settled": {"BOOL": true}}});
        assert_eq!(receipt_listed(&empty), Some(0));
        let lease =
            json!({"TableName": "t", "Item": {"pk": {"S": "b#z"}, "lease_until": {"N": "5"}}});
        assert_eq!(receipt_listed(&lease), None);
        assert_eq!(receipt_key(&lease, "t"), None);
        let takeover =
            json!({"Item": {"pk": {"S": "7"}, "b": {"S": "z"}}, "ConditionExpression": "b = :old"});
        assert_eq!(receipt_listed(&takeover), None);
    }

    /// The bound is crashes times what a process holds plus lost SQS answers: nothing else.
    #[test]
    fn bound_allows_only_crashes_and_lost_answers() {
        let b = Bound::new(3, 500, 41);
        assert_eq!(b.total, 1_541);
        assert_eq!(Bound::new(0, 500, 0).total, 0);
    }

    /// A receipt given up counts whether the relay reported it or only fake-aws saw it; a
    /// killed pass's refused receipt alone does not.
    #[test]
    fn receipts_given_up_count_from_either_side() {
        let none = Receipts {
            refused_by_killed_passes: 5,
            ..Receipts::default()
        };
        assert_eq!(none.given_up(), 0);
        let reported = Receipts {
            unsettled: 120,
            unsettled_passes: 2,
            ..Receipts::default()
        };
        assert_eq!(reported.given_up(), 120);
        let seen = Receipts {
            refused_never_redone: 1,
            ..Receipts::default()
        };
        assert_eq!(seen.given_up(), 1, "an empty receipt given up still counts");
    }

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
