//! Throttling costs speed, never copies (issue 19), over real wire protocols: the relay built
//! as the Lambda builds it (default settings, a scheduled pass's budget) drains the simulator
//! (TMC) into a fresh queue and table in ministack, reached through fake-aws. For the whole
//! first pass fake-aws refuses DynamoDB requests; later passes run without faults, the
//! simulator's clock moved past its lease before each so that TMC redelivers what is
//! unconfirmed, until TMC has nothing left.
//!
//! `make test` runs p = 0.7 (`THROTTLE_P=0.5` picks another rate) and the outage;
//! `make throttle-table` runs p = 0.5, 0.7 and 0.9 and the outage and prints the performance guide's
//! table. `THROTTLE_MESSAGES` changes the size (2,000); `THROTTLE_FIGURES=<file>` appends
//! each case's figures to a file as a JSON line.

mod support;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write as _;
use std::time::Duration;

use fake_aws::inspect::live_claim_ids;
use fake_aws::{DynamoThrottle, FakeAws, FakeAwsConfig, OpRules, Rules};
use serde_json::{json, Value};
use support::{sim, Env};
use tmc_relay::invocation::Overrides;
use tmc_relay::relay::ports::DedupStore;
use tmc_relay::relay::RelaySettings;
use tmc_relay::wiring::App;
use tmc_sim::SimServer;
use tokio::time::Instant;

/// A scheduled pass's budget: template.yaml's default function `Timeout`, handed to the pass
/// as the Lambda hands it its deadline.
const PASS_BUDGET: Duration = Duration::from_secs(60);

/// How long TMC keeps a consumed, unconfirmed message hidden (the simulator's default: public
/// consumers see about five minutes). Its clock is moved past it before every later pass.
const SIM_LEASE: Duration = Duration::from_secs(300);

/// How long the later passes may take at most: the longest lease a batch can have (the
/// relay's lease ceiling) plus room for the passes. Claims of the first pass's batches whose
/// receipts failed are held by the relay's own lease (wall clock) until it lapses.
const PATIENCE: Duration = Duration::from_secs(600 + 180);

/// The DynamoDB writes the relay makes: batch records and receipts, lease renewals, claims.
const WRITES: [&str; 3] = ["PutItem", "UpdateItem", "BatchExecuteStatement"];

/// Every DynamoDB operation (the relay's reads are `BatchGetItem`).
const DYNAMODB: [&str; 9] = [
    "PutItem",
    "UpdateItem",
    "BatchExecuteStatement",
    "BatchGetItem",
    "GetItem",
    "DeleteItem",
    "BatchWriteItem",
    "ExecuteStatement",
    "Query",
];

/// The outage begins once this many `SendMessageBatch` requests arrived: the first batch
/// (20 requests) is through and settled, later ones are at work.
const OUTAGE_AFTER_SENDS: u64 = 30;

fn messages() -> usize {
    std::env::var("THROTTLE_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000)
}

/// The throttling rate of the p case: `THROTTLE_P`, 0.7 when unset (the rate of the issue).
fn rate() -> f64 {
    match std::env::var("THROTTLE_P") {
        Ok(v) => v
            .parse()
            .ok()
            .filter(|p| (0.0..1.0).contains(p))
            .unwrap_or_else(|| panic!("THROTTLE_P must be a rate in 0..1, got {v:?}")),
        Err(_) => 0.7,
    }
}

/// DynamoDB writes answered `ProvisionedThroughputExceededException` (HTTP 400) at rate `p`.
fn throttled_writes(p: f64) -> Rules {
    WRITES.iter().fold(Rules::none(), |rules, op| {
        rules.with(
            op,
            OpRules {
                throttle_rate: p,
                dynamodb_throttle: DynamoThrottle::ProvisionedThroughput,
                ..OpRules::default()
            },
        )
    })
}

/// Every DynamoDB request refused: half throttled, half HTTP 500.
fn outage() -> Rules {
    DYNAMODB.iter().fold(Rules::none(), |rules, op| {
        rules.with(
            op,
            OpRules {
                throttle_rate: 0.5,
                dynamodb_throttle: DynamoThrottle::ProvisionedThroughput,
                error500_rate: 0.5,
                ..OpRules::default()
            },
        )
    })
}

/// What the first pass meets.
#[derive(Clone, Copy, Debug)]
enum FirstPass {
    /// DynamoDB writes throttled at this rate from its start to its end.
    Throttled(f64),
    /// Every DynamoDB request refused from [`OUTAGE_AFTER_SENDS`] on, until after its end.
    Outage,
}

/// What the harness saw when the outage began, and after the first pass.
#[derive(Debug, Default)]
struct AtOutage {
    /// Ids TMC had handed out and not had confirmed when the outage began.
    unconfirmed: HashSet<u64>,
    /// Ids claimed by batches without a receipt after the first pass: the batches in flight
    /// when the outage began (read from ministack directly, not through fake-aws).
    in_flight: HashSet<u64>,
}

/// One case's run, everything the checks and the table need.
struct Outcome {
    case: String,
    messages: usize,
    /// The first pass's report, as the CLI prints it.
    first: Value,
    first_pass: Duration,
    /// Passes after the first until TMC had nothing left, and their time.
    later_passes: u32,
    later: Duration,
    later_unsettled: u64,
    /// DynamoDB answers fake-aws refused in the first pass.
    refused: u64,
    /// Messages read from SQS, and those beyond one per id, by id.
    in_sqs: usize,
    copies: BTreeMap<u64, u64>,
    /// Published ids never read from SQS.
    missing: Vec<u64>,
    /// Published ids TMC never had confirmed.
    unconfirmed: Vec<u64>,
    /// Claims went as PartiQL batches, as on DynamoDB.
    partiql: bool,
    outage: Option<AtOutage>,
}

impl Outcome {
    fn copies(&self) -> u64 {
        self.copies.values().sum()
    }

    fn count(&self, name: &str) -> Option<u64> {
        self.first.get(name).and_then(Value::as_u64)
    }

    /// The figures line for the performance guide's table.
    fn figures(&self) -> Value {
        json!({
            "case": self.case,
            "messages": self.messages,
            "first_pass_s": (self.first_pass.as_secs_f64() * 10.0).round() / 10.0,
            "first_stop": self.first["stop_reason"],
            "unsettled": self.count("unsettled"),
            "lease_lost": self.count("lease_lost"),
            "deferred": self.count("deferred"),
            "throttles": self.count("throttles"),
            "refused_by_fake_aws": self.refused,
            "copies": self.copies(),
            "in_sqs": self.in_sqs,
            "missing": self.missing.len(),
            "unconfirmed": self.unconfirmed.len(),
            "later_passes": self.later_passes,
            "later_s": self.later.as_secs(),
            "later_unsettled": self.later_unsettled,
            "in_flight_at_outage": self.outage.as_ref().map(|o| o.in_flight.len()),
            "unconfirmed_at_outage": self.outage.as_ref().map(|o| o.unconfirmed.len()),
        })
    }

    fn record(&self) {
        let line = self.figures().to_string();
        eprintln!("throttle figures: {line}");
        if let Ok(path) = std::env::var("THROTTLE_FIGURES") {
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .unwrap_or_else(|e| panic!("THROTTLE_FIGURES={path}: {e}"));
            writeln!(f, "{line}").unwrap();
        }
    }
}

async fn report_of(app: &App, budget: Duration) -> Value {
    let r = app
        .run(
            &Overrides::default(),
            Some(Instant::now() + budget),
            Default::default(),
        )
        .await;
    serde_json::to_value(&r).unwrap()
}

fn ids_of(sim: &SimServer, pred: impl Fn(&tmc_sim::MessageState) -> bool) -> HashSet<u64> {
    sim.state()
        .messages
        .iter()
        .filter(|(_, m)| pred(m))
        .filter_map(|(id, _)| id.parse().ok())
        .collect()
}

/// Drains `n` messages: the first pass meets `first`, the later ones nothing.
async fn drain(case: &str, n: usize, first: FirstPass) -> Outcome {
    let sim = sim(SIM_LEASE).await;
    let env = Env::ministack(false).await;
    let ids = sim.generate(None, n);
    let fake = FakeAws::start(
        "127.0.0.1:0".parse().unwrap(),
        FakeAwsConfig::moto(support::ministack().parse().unwrap()).with_seed(19),
    )
    .await
    .unwrap();
    let app = env
        .app_via(
            &sim.gateway_url(),
            &fake.endpoint(),
            &[],
            RelaySettings::default(),
        )
        .await;
    assert_eq!(app.config.parallelism, 32, "the default ceiling");
    // An emulator's endpoint is probed before the first claim (on DynamoDB it is not): done
    // here, before the faults, so claims go as PartiQL batches as they do on DynamoDB.
    app.relay
        .store
        .ready(Instant::now() + Duration::from_secs(30))
        .await;
    let partiql = app.relay.store.batches_claims();
    let consumer = env.consume_as_they_come(&env.queue_url, 2);

    // The first pass.
    let refused_so_far = |fake: &FakeAws| {
        let s = fake.stats();
        DYNAMODB
            .iter()
            .map(|op| s.op(op).throttled + s.op(op).error500)
            .sum::<u64>()
    };
    let started = Instant::now();
    let mut at_outage = None;
    let report = match first {
        FirstPass::Throttled(p) => {
            fake.set_rules(throttled_writes(p)).unwrap();
            report_of(&app, PASS_BUDGET).await
        }
        FirstPass::Outage => {
            let run = report_of(&app, PASS_BUDGET);
            tokio::pin!(run);
            let mut began = false;
            loop {
                tokio::select! {
                    r = &mut run => break r,
                    () = tokio::time::sleep(Duration::from_millis(2)), if !began => {
                        if fake.stats().op("SendMessageBatch").requests >= OUTAGE_AFTER_SENDS {
                            fake.set_rules(outage()).unwrap();
                            began = true;
                            at_outage = Some(AtOutage {
                                unconfirmed: ids_of(&sim, |m| {
                                    m.deliveries > 0 && m.confirmed_at_ms.is_none()
                                }),
                                ..AtOutage::default()
                            });
                        }
                    }
                }
            }
        }
    };
    let first_pass = started.elapsed();
    let refused = refused_so_far(&fake);
    if let Some(o) = at_outage.as_mut() {
        o.in_flight = live_claim_ids(&env.ddb, &env.table).await.unwrap();
    }
    fake.set_rules(Rules::none()).unwrap();
    assert_ne!(report["stop_reason"], "fatal", "{report}");

    // Later passes until TMC has nothing left to redeliver.
    let later_started = Instant::now();
    let (mut later_passes, mut later_unsettled) = (0, 0);
    loop {
        let st = sim.counters();
        if st.pending + st.inflight == 0 || later_started.elapsed() > PATIENCE {
            break;
        }
        sim.advance(SIM_LEASE + Duration::from_secs(1));
        let r = report_of(&app, PASS_BUDGET).await;
        assert_ne!(r["stop_reason"], "fatal", "{r}");
        later_passes += 1;
        later_unsettled += r["unsettled"].as_u64().unwrap_or(0);
        if r["confirmed"].as_u64() == Some(0) {
            // Held by a first-pass batch's lease (the relay's wall clock): wait for it.
            tokio::time::sleep(Duration::from_secs(3)).await;
        }
    }
    let later = later_started.elapsed();

    let got = consumer.finish().await;
    let mut per_id: HashMap<u64, u64> = HashMap::new();
    for m in &got {
        *per_id.entry(m.id().parse().unwrap()).or_default() += 1;
    }
    let confirmed = ids_of(&sim, |m| m.confirmed_at_ms.is_some());
    fake.shutdown().await;
    Outcome {
        case: case.to_owned(),
        messages: n,
        first: report,
        first_pass,
        later_passes,
        later,
        later_unsettled,
        refused,
        in_sqs: got.len(),
        copies: per_id
            .iter()
            .filter(|(_, c)| **c > 1)
            .map(|(id, c)| (*id, c - 1))
            .collect(),
        missing: ids
            .iter()
            .filter(|i| !per_id.contains_key(i))
            .copied()
            .collect(),
        unconfirmed: ids
            .iter()
            .filter(|i| !confirmed.contains(i))
            .copied()
            .collect(),
        partiql,
        outage: at_outage,
    }
}

/// A few ids of a list, for a failure message.
fn some<T: std::fmt::Debug>(items: impl IntoIterator<Item = T>) -> String {
    let v: Vec<T> = items.into_iter().take(5).collect();
    format!("{v:?}")
}

/// What every case must show: each id in SQS and confirmed in the end.
fn nothing_lost(o: &Outcome, failures: &mut Vec<String>) {
    if !o.missing.is_empty() {
        failures.push(format!(
            "{} ids never reached SQS (e.g. {})",
            o.missing.len(),
            some(&o.missing)
        ));
    }
    if !o.unconfirmed.is_empty() {
        failures.push(format!(
            "{} ids still unconfirmed at TMC after {} later passes in {:?} (e.g. {})",
            o.unconfirmed.len(),
            o.later_passes,
            o.later,
            some(&o.unconfirmed)
        ));
    }
}

fn fail_with(o: &Outcome, failures: &[String]) {
    assert!(
        failures.is_empty(),
        "{} over {} messages: {}.\nfirst pass ({:.1} s): {}",
        o.case,
        o.messages,
        failures.join("; "),
        o.first_pass.as_secs_f64(),
        o.first
    );
}

/// DynamoDB writes throttled at p = 0.7 (`THROTTLE_P`) for a whole pass cost time, never
/// copies: every id reaches SQS exactly once and is confirmed, and the pass reports
/// `unsettled: 0`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttled_dynamodb_writes_cost_time_not_copies() {
    let p = rate();
    let o = drain(&format!("p={p}"), messages(), FirstPass::Throttled(p)).await;
    o.record();
    // The faults took effect, on the path DynamoDB itself would take.
    assert!(o.partiql, "claims fell back to PutItem: the probe failed");
    assert!(
        o.refused > 0 && o.count("throttles").unwrap_or(0) > 0,
        "nothing was throttled: {}",
        o.first
    );

    let mut failures = Vec::new();
    let unsettled = o.count("unsettled").unwrap_or(0);
    if unsettled > 0 {
        failures.push(format!("the first pass reported unsettled: {unsettled}"));
    }
    if o.copies() > 0 {
        failures.push(format!(
            "{} copies in SQS: {} messages for {} ids (e.g. {})",
            o.copies(),
            o.in_sqs,
            o.messages,
            some(o.copies.keys())
        ));
    }
    nothing_lost(&o, &mut failures);
    fail_with(&o, &failures);
}

/// A DynamoDB outage from mid-pass to past the pass's end (every request refused, receipts
/// included) loses nothing; its copies are only ids of the batches in flight when it began,
/// and the first pass's report counts them (`unsettled` + `lease_lost`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dynamodb_outage_longer_than_the_pass_loses_nothing_and_counts_its_copies() {
    let o = drain("outage", messages(), FirstPass::Outage).await;
    o.record();
    let seen = o.outage.as_ref().expect("the outage began during the pass");
    assert!(o.partiql, "claims fell back to PutItem: the probe failed");
    assert!(o.refused > 0, "nothing was refused: {}", o.first);
    assert!(
        !seen.in_flight.is_empty(),
        "no batch was in flight when the outage began: nothing to bound ({})",
        o.first
    );

    let mut failures = Vec::new();
    nothing_lost(&o, &mut failures);
    let beyond: Vec<u64> = o
        .copies
        .keys()
        .filter(|id| !seen.in_flight.contains(id))
        .copied()
        .collect();
    if !beyond.is_empty() {
        failures.push(format!(
            "{} copied ids were not claimed by a batch in flight when the outage began (e.g. {})",
            beyond.len(),
            some(&beyond)
        ));
    }
    let late: Vec<u64> = seen
        .in_flight
        .iter()
        .filter(|id| !seen.unconfirmed.contains(id))
        .copied()
        .collect();
    if !late.is_empty() {
        failures.push(format!(
            "{} ids were claimed by a batch that began after the outage did (e.g. {})",
            late.len(),
            some(&late)
        ));
    }
    let counted = o.count("unsettled").unwrap_or(0) + o.count("lease_lost").unwrap_or(0);
    if o.copies() > counted {
        failures.push(format!(
            "{} copies in SQS but the first pass counted {counted} (unsettled: {:?}, \
             lease_lost: {:?})",
            o.copies(),
            o.count("unsettled"),
            o.count("lease_lost")
        ));
    }
    fail_with(&o, &failures);
}
