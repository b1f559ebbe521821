//! `tmc-bench`: measures the relay against its limit and the Lambda's running cost, and prints
//! a table with the targets beside the figures (`make bench`, or `make bench QUICK=1`).
//!
//! The TMC simulator and the in-memory AWS stand-in run as child processes (the release
//! `tmc-sim` and `fake-aws` binaries), so the CPU each side spends can be told apart. The
//! throughput runs build the relay in this process exactly as the binaries do; cold start,
//! peak memory and instructions per message run the release `bootstrap` / `tmc-relay`
//! binaries as children. Every run gets its own TMC group, queues and table.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use aws_config::{BehaviorVersion, Region};
use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType,
};
use aws_sdk_sqs::config::Credentials;
use clap::Parser;
use serde_json::{json, Value};
use tokio::time::Instant;

use fake_aws::{OpRules, Rules};
use tmc_relay::config::Config;
use tmc_relay::invocation::Overrides;
use tmc_relay::relay::{Progress, RelaySettings, Report};
use tmc_relay::top::{Secret, TopClient, TopConfig};
use tmc_relay::wiring::App;
use tmc_sim::{Faults, MethodFaults};

const APP_KEY: &str = "12345678";
/// Not a real secret: the simulator and the relay share it.
const SECRET: &str = "bench-secret-not-real";
const QUANTITY: u32 = 200;
const CONSUME: &str = "taobao.tmc.messages.consume";
const CONFIRM: &str = "taobao.tmc.messages.confirm";

/// Injected round trips (the issue's example figures).
const CONSUME_MS: u64 = 30;
const CONFIRM_MS: u64 = 30;
const SQS_MS: u64 = 10;
const DYNAMODB_MS: u64 = 8;

/// The deployed function's memory setting (template.yaml `MemorySize`).
const LAMBDA_MB: f64 = 256.0;

/// List prices, us-east-1, on-demand (USD).
const PRICE_DATE: &str =
    "us-east-1 list prices, on-demand, checked 2026-11 (DynamoDB: since the 2024-11-01 cut)";
const SQS_PER_M_REQUESTS: f64 = 0.40;
const DDB_PER_M_WRU: f64 = 0.625;
const DDB_PER_M_RRU: f64 = 0.125;
const LAMBDA_ARM_PER_GB_S: f64 = 0.000_013_333_4;
const LAMBDA_PER_M_REQUESTS: f64 = 0.20;
const SCHEDULER_PER_M: f64 = 1.00;

/// Measures throughput against the TMC limit, cold start, binary sizes, peak memory,
/// instructions per message and AWS usage, and prints them beside the targets.
#[derive(Parser, Debug)]
#[command(name = "tmc-bench")]
struct Args {
    /// Smaller workloads and fewer repeats: under a minute.
    #[arg(long)]
    quick: bool,
    /// Where the release binaries are (tmc-sim, fake-aws, tmc-relay, bootstrap).
    #[arg(long, default_value = "target/release")]
    bin_dir: PathBuf,
    /// The arm64 Lambda binary from `cargo lambda build --release --arm64` (`make build`).
    #[arg(
        long,
        default_value = "target/aarch64-unknown-linux-gnu/release/bootstrap"
    )]
    arm64_bin: PathBuf,
    /// The Lambda deployment package `make build` writes.
    #[arg(long, default_value = "target/lambda/bootstrap/bootstrap.zip")]
    lambda_zip: PathBuf,
    /// Measure only these sections (comma-separated); all when not given.
    #[arg(long, value_enum, value_delimiter = ',')]
    only: Vec<Section>,
    /// Pipeline depth of the in-process throughput runs (experiments; the child binaries use
    /// the built-in default).
    #[arg(long)]
    pipeline_depth: Option<usize>,
    /// RELAY_PARALLELISM for every run (experiments; the deployed default otherwise).
    #[arg(long)]
    parallelism: Option<usize>,
    /// Keep the callgrind profiles here (`callgrind.<n>.out`, for `callgrind_annotate`).
    #[arg(long)]
    profile_dir: Option<PathBuf>,
}

/// The parts of the bench.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Section {
    /// The limit, throughput, AWS usage and cost.
    Throughput,
    /// Cold start of the release bootstrap.
    Cold,
    /// Binary sizes.
    Size,
    /// Peak memory of `tmc-relay run`.
    Memory,
    /// Instructions per message.
    Callgrind,
}

/// Workload sizes for one bench run.
struct Plan {
    label: &'static str,
    /// Timed consume calls for the limit (after one warm-up call).
    limit_consumes: usize,
    /// Messages per consume loop in a throughput run.
    per_loop: usize,
    /// Messages in a naive (unpipelined) run.
    naive: usize,
    /// Messages in the fully sequential run (depth 0, one claim at a time); 0 leaves it out.
    sequential: usize,
    /// Throughput runs per configuration (the median counts).
    repeats: usize,
    cold_starts: usize,
    /// Messages of 4 KiB contents in the peak-memory runs (the peak grows with the run
    /// length until about 24,000, as the allocator's arenas settle).
    memory: usize,
    /// Peak-memory runs of the deployed default (the largest peak counts).
    memory_runs: usize,
    /// N in (I(2N) - I(N)) / N.
    callgrind: usize,
}

const QUICK: Plan = Plan {
    label: "quick",
    limit_consumes: 15,
    per_loop: 6_000,
    naive: 1_000,
    sequential: 0,
    repeats: 1,
    cold_starts: 7,
    memory: 4_000,
    memory_runs: 1,
    callgrind: 400,
};

const FULL: Plan = Plan {
    label: "full",
    limit_consumes: 40,
    per_loop: 12_000,
    naive: 3_000,
    sequential: 600,
    repeats: 3,
    cold_starts: 21,
    memory: 24_000,
    memory_runs: 3,
    callgrind: 1_000,
};

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    match bench(&args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tmc-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn bench(args: &Args) -> Result<(), String> {
    let plan = if args.quick { &QUICK } else { &FULL };
    let only = |s: Section| args.only.is_empty() || args.only.contains(&s);
    let bins = Bins::find(&args.bin_dir)?;
    let started = std::time::Instant::now();
    let stand = Stand::start(&bins, args.parallelism).await?;
    let mut t = Table::default();
    let mut notes: Vec<String> = Vec::new();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let settings = RelaySettings {
        pipeline_depth: args
            .pipeline_depth
            .unwrap_or(RelaySettings::default().pipeline_depth),
        ..RelaySettings::default()
    };
    stand.set_latency(true).await?;

    // Throughput against the limit, and what it costs in AWS requests.
    let mut limit_line = None;
    let mut usage = None;
    if only(Section::Throughput) {
        // One consume loop cannot beat 200 messages per consume round trip.
        progress("measuring the consume round trip");
        let (l, confirm_rt) = stand.round_trips(plan.limit_consumes).await?;
        let limit = f64::from(QUANTITY) / l.as_secs_f64();
        limit_line = Some(format!(
            "Limit: L = {:.1} ms, the median round trip of {} consume calls of 200 messages \
             (confirm: {:.1} ms), so one loop can do at most 200 / L = {limit:.0} msgs/s.",
            l.as_secs_f64() * 1e3,
            plan.limit_consumes,
            confirm_rt.as_secs_f64() * 1e3,
        ));
        // (loops, runtime worker threads: None = this process's runtime, one per core).
        let configs: [(u32, Option<usize>); 5] =
            [(1, None), (2, None), (4, None), (1, Some(1)), (4, Some(1))];
        let mut naive = Vec::new();
        let mut piped: Vec<Vec<Run>> = vec![Vec::new(); configs.len()];
        for _ in 0..plan.repeats {
            progress("throughput: naive, 1 loop");
            let s = RelaySettings {
                pipeline_depth: 0,
                ..settings.clone()
            };
            naive.push(stand.relay_run(1, s, plan.naive, None, None).await?);
            for (i, (loops, threads)) in configs.into_iter().enumerate() {
                progress(&format!(
                    "throughput: pipelined, {loops} loop(s){}",
                    threads.map_or(String::new(), |k| format!(", {k} runtime thread(s)"))
                ));
                let n = plan.per_loop * loops as usize;
                let run = stand
                    .relay_run(loops, settings.clone(), n, None, threads)
                    .await?;
                piped[i].push(run);
            }
        }
        let sequential = if plan.sequential > 0 {
            progress("throughput: fully sequential, 1 loop");
            let s = RelaySettings {
                pipeline_depth: 0,
                ..settings.clone()
            };
            Some(
                stand
                    .relay_run(1, s, plan.sequential, Some(1), None)
                    .await?,
            )
        } else {
            None
        };
        let naive = median_run(naive);
        let piped: Vec<Run> = piped.into_iter().map(median_run).collect();
        let one = piped[0].clone();
        let busy = |r: &Run| {
            let of = |x: f64| x * 100.0 / (r.wall * cores as f64);
            format!(
                "CPU: relay {:.0}%, sim {:.0}%, aws {:.0}%, machine {:.0}% of {cores} cores",
                of(r.cpu.relay),
                of(r.cpu.sim),
                of(r.cpu.aws),
                r.cpu.machine * 100.0
            )
        };
        t.row(
            "Throughput, naive (pipeline_depth 0), 1 loop",
            format!(
                "{:.0} msgs/s ({:.2} of limit)",
                naive.rate,
                naive.rate / limit
            ),
            "",
            None,
        );
        if let Some(s) = &sequential {
            t.row(
                "Throughput, fully sequential (depth 0, parallelism 1), 1 loop",
                format!("{:.0} msgs/s ({:.3} of limit)", s.rate, s.rate / limit),
                "",
                None,
            );
        }
        for (run, (loops, threads)) in piped.iter().zip(configs) {
            let of_limit = run.rate / (limit * f64::from(loops));
            let (target, ok) = if loops == 1 && threads.is_none() {
                ("≥ 0.90 of limit", Some(of_limit >= 0.9))
            } else {
                ("", None)
            };
            let on = match threads {
                None => String::new(),
                Some(k) => format!(", on {k} runtime thread (TOKIO_WORKER_THREADS={k})"),
            };
            t.row(
                &format!("Throughput, pipelined, {loops} loop{}{on}", plural(loops)),
                format!(
                    "{:.0} msgs/s ({of_limit:.2} of {loops}×limit; whole pass {:.0}; batch {} ms; {})",
                    run.rate,
                    run.pass_rate,
                    run.report.batch_latency_ms.unwrap_or(0),
                    busy(run)
                ),
                target,
                ok,
            );
        }
        let four = piped[2].rate / one.rate;
        t.row(
            "Scaling, 4 loops vs 1 loop",
            format!(
                "{four:.2}× (on 1 runtime thread: {:.2}×)",
                piped[4].rate / piped[3].rate
            ),
            "≥ 3.5×",
            Some(four >= 3.5),
        );
        notes.push(format!(
            "4 loops vs 1: at 4 × the limit ({:.0} msgs/s) the relay alone would need {:.1} \
             cores at its measured CPU per message, the AWS stand-in {:.1} more; this machine \
             has {cores}. The \"machine\" share shows the CPU running out as loops are added.",
            4.0 * limit,
            4.0 * limit * one.cpu.relay / one.messages as f64,
            4.0 * limit * one.cpu.aws / one.messages as f64,
        ));
        let vs_naive = one.rate / naive.rate;
        if let Some(b) = naive.report.batch_latency_ms {
            let ceiling = b as f64 / (l.as_secs_f64() * 1e3);
            notes.push(format!(
                "Pipelined vs naive: the naive loop spends a whole batch ({b} ms: the consume, then \
                 claims, SQS, completion record and confirm) per 200 messages, the pipelined one \
                 at best one consume round trip ({:.1} ms); with these latencies pipelining can \
                 gain at most {ceiling:.1}×. 5× would need processing to take 4 round trips \
                 or more; the fully sequential row is the relay with no concurrency at all.",
                l.as_secs_f64() * 1e3
            ));
        }
        t.row(
            "Pipelined vs naive (depth 0), 1 loop",
            format!("{vs_naive:.2}×"),
            "≥ 5×",
            Some(vs_naive >= 5.0),
        );
        if let Some(s) = &sequential {
            let vs = one.rate / s.rate;
            t.row(
                "Pipelined vs fully sequential, 1 loop",
                format!("{vs:.1}×"),
                "≥ 5×",
                Some(vs >= 5.0),
            );
        }
        let relay_cpu = one.cpu.relay / one.messages as f64;
        t.row(
            "Relay CPU time per message (pipelined 1 loop)",
            format!("{:.1} µs", relay_cpu * 1e6),
            "",
            None,
        );
        let u = &one.report.usage;
        let per = |x: f64| x / one.messages as f64;
        let used = Usage {
            sqs: per(u.sqs_requests as f64),
            wru: per(u.dynamodb_write_units),
            rru: per(u.dynamodb_read_units),
            ddb_requests: per(u.dynamodb_requests as f64),
            top: per(one.top_calls as f64),
            rate: one.rate,
            relay_cpu,
        };
        t.row(
            "SQS requests per message",
            format!("{:.4}", used.sqs),
            "≤ 0.11",
            Some(used.sqs <= 0.11),
        );
        t.row(
            "DynamoDB write units per message (ReturnConsumedCapacity)",
            format!("{:.4}", used.wru),
            "≤ 1.05",
            Some(used.wru <= 1.05),
        );
        t.row(
            "DynamoDB requests per message",
            format!("{:.4}", used.ddb_requests),
            "≤ 0.06",
            Some(used.ddb_requests <= 0.06),
        );
        t.row(
            "DynamoDB read units per message (a clean drain reads nothing)",
            format!("{:.4}", used.rru),
            "",
            None,
        );
        t.row(
            "TOP calls per message (consume + confirm)",
            format!("{:.4}", used.top),
            "",
            None,
        );
        usage = Some(used);
    }

    if only(Section::Cold) {
        progress("cold start");
        let cold = cold_starts(
            &bins.bootstrap,
            &stand.lambda_env(&stand.cold_names()),
            plan.cold_starts,
        )?;
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let med = ms(median(cold.clone()));
        t.row(
            &format!(
                "Cold start to first Runtime API request (x86_64, median of {}; min {:.1}, max {:.1} ms)",
                cold.len(),
                ms(cold.iter().min().copied().unwrap_or_default()),
                ms(cold.iter().max().copied().unwrap_or_default())
            ),
            format!("{med:.1} ms"),
            "≤ 40 ms",
            Some(med <= 40.0),
        );
    }

    if only(Section::Size) {
        for (label, path) in [
            ("x86_64, cargo build --release", bins.bootstrap.clone()),
            (
                "arm64, cargo lambda build --release --arm64",
                args.arm64_bin.clone(),
            ),
        ] {
            match binary_size(&path) {
                Ok((bytes, stripped)) => t.row(
                    &format!("bootstrap binary, {label}"),
                    format!(
                        "{:.2} MiB ({bytes} B{})",
                        bytes as f64 / (1024.0 * 1024.0),
                        if stripped {
                            ", stripped"
                        } else {
                            ", NOT stripped"
                        }
                    ),
                    "≤ 10 MiB",
                    Some(bytes <= 10 * 1024 * 1024),
                ),
                Err(e) => t.row(
                    &format!("bootstrap binary, {label}"),
                    format!("not measured: {e} (make build makes it)"),
                    "≤ 10 MiB",
                    None,
                ),
            }
        }
        if let Ok(m) = std::fs::metadata(&args.lambda_zip) {
            let stale = std::fs::metadata(&args.arm64_bin)
                .and_then(|b| Ok((m.modified()?, b.modified()?)))
                .is_ok_and(|(zip, bin)| zip > bin + Duration::from_secs(60));
            t.row(
                "Lambda deployment package (bootstrap.zip, arm64)",
                format!(
                    "{:.2} MiB{}",
                    m.len() as f64 / (1024.0 * 1024.0),
                    if stale {
                        " (newer than the arm64 binary above: rebuild it)"
                    } else {
                        ""
                    }
                ),
                "",
                None,
            );
        }
    }

    if only(Section::Memory) {
        // The deployed function: the Lambda binary at the template's 256 MB, one invocation.
        progress("peak memory, the Lambda (bootstrap at 256 MB)");
        let mut peaks = Vec::new();
        let mut cpu = 0.0;
        for _ in 0..plan.memory_runs {
            let m = stand
                .lambda_memory_run(&bins.bootstrap, plan.memory)
                .await?;
            peaks.push(m.peak_kib as f64 / 1024.0);
            cpu += m.cpu_secs / plan.memory_runs as f64;
        }
        let max = peaks.iter().copied().fold(0.0, f64::max);
        let min = peaks.iter().copied().fold(f64::MAX, f64::min);
        t.row(
            &format!(
                "Peak memory (VmHWM), the Lambda: bootstrap at 256 MB (1 runtime worker), one \
                 invocation, 1 loop, {} msgs of 4 KiB",
                plan.memory
            ),
            format!(
                "{max:.1} MiB{} (process CPU {:.0} µs/msg incl. start-up)",
                if plan.memory_runs > 1 {
                    format!(", max of {} runs (min {min:.1})", plan.memory_runs)
                } else {
                    String::new()
                },
                cpu * 1e6 / plan.memory as f64
            ),
            "≤ 40 MiB",
            Some(max <= 40.0),
        );
        // The command line, with tokio's default of one worker per core.
        for loops in [1u32, 4] {
            progress(&format!("peak memory, tmc-relay run, {loops} loop(s)"));
            let m = stand
                .memory_run(&bins.relay, loops, plan.memory, &[])
                .await?;
            t.row(
                &format!(
                    "Peak memory (VmHWM), tmc-relay run ({cores} runtime workers), {loops} loop{}, {} msgs of 4 KiB",
                    plural(loops),
                    plan.memory
                ),
                format!(
                    "{:.1} MiB (process CPU {:.0} µs/msg incl. start-up)",
                    m.peak_kib as f64 / 1024.0,
                    m.cpu_secs * 1e6 / plan.memory as f64
                ),
                "",
                None,
            );
        }
    }

    let mut instr_per_msg = None;
    if only(Section::Callgrind) {
        progress("callgrind (valgrind runs the relay ~50× slower)");
        let n = plan.callgrind;
        let i1 = stand
            .callgrind_run(&bins.relay, n, args.profile_dir.as_deref())
            .await?;
        let i2 = stand
            .callgrind_run(&bins.relay, 2 * n, args.profile_dir.as_deref())
            .await?;
        let per = i2.saturating_sub(i1) as f64 / n as f64;
        instr_per_msg = Some(per);
        notes.push(
            "Callgrind: valgrind hides SHA-NI, so the SHA-256 of the SDK's SigV4 signatures runs \
             the portable code under it (about a third of the instructions counted); natively and on \
             Graviton it runs in hardware. The rest is mostly malloc/free, JSON and the SDK's \
             per-request orchestration (--profile-dir keeps the profiles)."
                .to_owned(),
        );
        t.row(
            &format!("CPU per message, callgrind (I({}) − I({n})) / {n}", 2 * n),
            format!(
                "{:.0} k instructions/msg (I({n}) = {:.1} M)",
                per / 1e3,
                i1 as f64 / 1e6
            ),
            "≤ 250 k",
            Some(per <= 250e3),
        );
    }
    stand.stop();

    println!();
    println!(
        "## tmc-relay performance ({} run, {})",
        plan.label,
        rfc3339_now()
    );
    println!();
    println!(
        "Machine: {} × {}, {}. Relay settings: pipeline_depth {}, RELAY_PARALLELISM {}.",
        cores,
        cpu_model(),
        std::env::consts::ARCH,
        settings.pipeline_depth,
        args.parallelism
            .map_or_else(|| "default".to_owned(), |p| p.to_string())
    );
    println!(
        "Injected latency: consume {CONSUME_MS} ms, confirm {CONFIRM_MS} ms (TMC simulator), \
         SQS {SQS_MS} ms and DynamoDB {DYNAMODB_MS} ms per request."
    );
    println!(
        "AWS endpoints: the in-memory fake-aws stand-in, which speaks the same AWS JSON wire \
         protocol as SQS and DynamoDB (the relay uses the real SDK clients). moto is too slow \
         for this: ~30 ms per SendMessageBatch and 100-240 conditional PutItem/s."
    );
    if let Some(l) = &limit_line {
        println!("{l}");
        println!(
            "Throughput: messages confirmed per second in the steady state (while the 10th to \
             the 90th percent were confirmed), median of {}; \"whole pass\" also counts the \
             pipeline filling, the last batches and the final empty poll; \"batch\" is the mean \
             time from a batch's consume to its confirm.",
            plan.repeats
        );
    }
    println!();
    t.print();
    if !notes.is_empty() {
        println!();
        for n in &notes {
            println!("- {n}");
        }
    }
    if let Some(u) = &usage {
        print_cost(u, instr_per_msg);
    }
    println!();
    println!(
        "(bench took {:.0} s; command: make bench{})",
        started.elapsed().as_secs_f64(),
        if args.quick { " QUICK=1" } else { "" }
    );
    Ok(())
}

/// AWS usage and speed per message, from the pipelined 1-loop run.
struct Usage {
    sqs: f64,
    wru: f64,
    rru: f64,
    ddb_requests: f64,
    top: f64,
    /// Messages per second.
    rate: f64,
    /// Relay CPU seconds per message.
    relay_cpu: f64,
}

fn print_cost(u: &Usage, instr_per_msg: Option<f64>) {
    let m = 1e6;
    let sqs_cost = u.sqs * SQS_PER_M_REQUESTS;
    let wru_cost = u.wru * DDB_PER_M_WRU;
    let rru_cost = u.rru * DDB_PER_M_RRU;
    let vcpu = LAMBDA_MB / tmc_relay::wiring::LAMBDA_MB_PER_VCPU as f64;
    let secs_measured = m / u.rate;
    let secs_cpu_bound = m * u.relay_cpu / vcpu;
    let lambda_secs = secs_measured.max(secs_cpu_bound);
    let gb_s = lambda_secs * LAMBDA_MB / 1024.0;
    let lambda_cost = gb_s * LAMBDA_ARM_PER_GB_S;
    let total = sqs_cost + wru_cost + rru_cost + lambda_cost;
    println!();
    println!("### Cost per million messages (prices: {PRICE_DATE})");
    println!();
    println!("| Item | Per million messages | Price | USD |");
    println!("|---|---:|---|---:|");
    println!(
        "| TOP calls (consume + confirm) | {:.0} | free (they count toward the app's call quota) | 0 |",
        u.top * m
    );
    println!(
        "| SQS requests | {:.0} | ${SQS_PER_M_REQUESTS:.2} / M requests | {sqs_cost:.4} |",
        u.sqs * m
    );
    println!(
        "| DynamoDB write request units | {:.0} | ${DDB_PER_M_WRU:.3} / M WRU | {wru_cost:.4} |",
        u.wru * m
    );
    println!(
        "| DynamoDB read request units | {:.0} | ${DDB_PER_M_RRU:.3} / M RRU | {rru_cost:.4} |",
        u.rru * m
    );
    println!(
        "| Lambda duration, arm64 {LAMBDA_MB:.0} MB | {gb_s:.1} GB-s ({lambda_secs:.0} s) | \
         ${LAMBDA_ARM_PER_GB_S} / GB-s | {lambda_cost:.4} |"
    );
    println!("| **Total** | | | **{total:.4}** |");
    println!();
    println!(
        "Lambda seconds: the larger of 1 M / measured 1-loop throughput ({secs_measured:.0} s) \
         and 1 M × relay CPU per message / {vcpu:.3} vCPU at {LAMBDA_MB:.0} MB \
         ({secs_cpu_bound:.0} s, assuming a Graviton core as fast as this one). SQS bills each \
         64 KiB of a request as one request: 10 messages of 4 KiB are one."
    );
    let passes = 365.25 * 24.0 * 60.0 / 12.0;
    println!(
        "Fixed, whatever the traffic: one scheduled pass a minute is {passes:.0} invocations a \
         month: ${:.4} of Lambda requests (${LAMBDA_PER_M_REQUESTS:.2} / M) and ${:.4} of \
         EventBridge Scheduler (${SCHEDULER_PER_M:.2} / M; both inside their free tiers for \
         most accounts), plus each idle pass's duration (one empty consume).",
        passes * LAMBDA_PER_M_REQUESTS / m,
        passes * SCHEDULER_PER_M / m,
    );
    let per_core = 1.0 / u.relay_cpu;
    match instr_per_msg {
        Some(i) => println!(
            "CPU: {:.0} k instructions per message under callgrind; {:.1} µs of relay CPU per \
             message natively, i.e. at most {per_core:.0} msgs/s per core, {:.0} msgs/s at \
             {LAMBDA_MB:.0} MB ({vcpu:.3} vCPU).",
            i / 1e3,
            u.relay_cpu * 1e6,
            per_core * vcpu,
        ),
        None => println!(
            "CPU: {:.1} µs of relay CPU per message, i.e. at most {per_core:.0} msgs/s per core, \
             {:.0} msgs/s at {LAMBDA_MB:.0} MB ({vcpu:.3} vCPU).",
            u.relay_cpu * 1e6,
            per_core * vcpu,
        ),
    }
}

fn plural(n: u32) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

fn progress(what: &str) {
    eprintln!("tmc-bench: {what}…");
}

/// The rows of the results table.
#[derive(Default)]
struct Table {
    rows: Vec<[String; 4]>,
}

impl Table {
    fn row(&mut self, what: &str, figure: String, target: &str, ok: Option<bool>) {
        let verdict = match ok {
            Some(true) => "met",
            Some(false) => "**missed**",
            None => "",
        };
        self.rows.push([
            what.to_owned(),
            figure,
            target.to_owned(),
            verdict.to_owned(),
        ]);
    }

    fn print(&self) {
        println!("| Measure | Figure | Target | |");
        println!("|---|---|---|---|");
        for [a, b, c, d] in &self.rows {
            println!("| {a} | {b} | {c} | {d} |");
        }
    }
}

fn median(mut xs: Vec<Duration>) -> Duration {
    xs.sort();
    xs.get(xs.len() / 2).copied().unwrap_or_default()
}

fn median_run(mut runs: Vec<Run>) -> Run {
    runs.sort_by(|a, b| a.rate.total_cmp(&b.rate));
    let mid = runs.len() / 2;
    runs.swap_remove(mid)
}

fn rfc3339_now() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

/// The release binaries the bench runs.
struct Bins {
    sim: PathBuf,
    aws: PathBuf,
    relay: PathBuf,
    bootstrap: PathBuf,
}

impl Bins {
    fn find(dir: &Path) -> Result<Bins, String> {
        let get = |name: &str| {
            let p = dir.join(name);
            if p.is_file() {
                Ok(p)
            } else {
                Err(format!(
                    "{} not found: build the release binaries first (make bench does)",
                    p.display()
                ))
            }
        };
        Ok(Bins {
            sim: get("tmc-sim")?,
            aws: get("fake-aws")?,
            relay: get("tmc-relay")?,
            bootstrap: get("bootstrap")?,
        })
    }
}

/// CPU seconds spent by each process during a run.
#[derive(Clone, Copy, Debug, Default)]
struct Cpu {
    relay: f64,
    sim: f64,
    aws: f64,
    /// Share of the whole machine's CPU time that was busy (anything, not only the bench).
    machine: f64,
}

/// One throughput run.
#[derive(Clone, Debug)]
struct Run {
    report: Report,
    messages: u64,
    /// Pass time, seconds.
    wall: f64,
    /// Messages per second, steady state: while the 10th to the 90th percent of the messages
    /// were confirmed (pipeline fill, the last batches and the final empty poll left out).
    rate: f64,
    /// Messages per second over the whole pass.
    pass_rate: f64,
    cpu: Cpu,
    /// consume + confirm calls the simulator saw.
    top_calls: u64,
}

/// Peak memory and CPU of one child run.
struct Measured {
    peak_kib: u64,
    cpu_secs: f64,
}

/// A child process that is killed when dropped.
struct Server {
    child: Child,
    _stdout: BufReader<ChildStdout>,
    url: String,
}

impl Server {
    /// Starts a server binary that prints its URL as the first line on stdout.
    fn spawn(mut cmd: Command) -> Result<Server, String> {
        let mut child = cmd
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start {cmd:?}: {e}"))?;
        let mut out = BufReader::new(child.stdout.take().ok_or("no stdout")?);
        let mut line = String::new();
        out.read_line(&mut line)
            .map_err(|e| format!("reading {cmd:?}'s URL: {e}"))?;
        let url = line.trim().to_owned();
        if url.is_empty() {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("{cmd:?} printed no URL"));
        }
        Ok(Server {
            child,
            _stdout: out,
            url,
        })
    }

    /// CPU seconds the process has used so far.
    fn cpu(&self) -> f64 {
        proc_cpu(&format!("/proc/{}/stat", self.child.id()))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Busy and total CPU time of the whole machine so far, seconds (from `/proc/stat`).
fn machine_cpu() -> (f64, f64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let f: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    let total: u64 = f.iter().take(8).sum();
    // idle and iowait
    let idle = f.get(3).copied().unwrap_or(0) + f.get(4).copied().unwrap_or(0);
    ((total - idle) as f64 / 100.0, total as f64 / 100.0)
}

/// utime + stime from a `/proc/.../stat` file, seconds (0 where there is no procfs).
fn proc_cpu(path: &str) -> f64 {
    let Ok(stat) = std::fs::read_to_string(path) else {
        return 0.0;
    };
    // Fields after the command name, which is in parentheses and may contain spaces.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    let ticks = f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0);
    // USER_HZ is 100 on every Linux this runs on.
    ticks as f64 / 100.0
}

fn self_cpu() -> f64 {
    proc_cpu("/proc/self/stat")
}

/// The simulator and the AWS stand-in as child processes, plus clients to drive them.
struct Stand {
    sim: Server,
    aws: Server,
    http: reqwest::Client,
    sdk: aws_config::SdkConfig,
    /// RELAY_PARALLELISM for every run, when not the default.
    parallelism: Option<usize>,
}

static RUN: AtomicU32 = AtomicU32::new(0);

/// One run's names: TMC group, queues, table.
struct Names {
    group: String,
    relay_queue_url: String,
    parking_queue_url: String,
    table: String,
}

impl Stand {
    async fn start(bins: &Bins, parallelism: Option<usize>) -> Result<Stand, String> {
        let mut sim = Command::new(&bins.sim);
        sim.args(["--listen", "127.0.0.1:0", "--app-key", APP_KEY])
            .env("TMC_SIM_APP_SECRET", SECRET);
        let sim = Server::spawn(sim)?;
        let mut aws = Command::new(&bins.aws);
        aws.args(["--listen", "127.0.0.1:0", "--memory"]);
        let aws = Server::spawn(aws)?;
        let sdk = sdk_config(&aws.url).await;
        Ok(Stand {
            sim,
            aws,
            http: reqwest::Client::new(),
            sdk,
            parallelism,
        })
    }

    fn stop(self) {
        drop(self);
    }

    fn base(&self) -> String {
        self.sim.url.trim_end_matches("/router/rest").to_owned()
    }

    async fn post(&self, url: &str, body: &Value) -> Result<Value, String> {
        let r = self
            .http
            .post(url)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .map_err(|e| format!("POST {url}: {e}"))?;
        let status = r.status();
        let bytes = r.bytes().await.map_err(|e| format!("POST {url}: {e}"))?;
        if !status.is_success() {
            return Err(format!(
                "POST {url}: {status}: {}",
                String::from_utf8_lossy(&bytes)
            ));
        }
        serde_json::from_slice(&bytes).map_err(|e| format!("POST {url}: {e}"))
    }

    /// Injected latency on (the throughput workload) or off (CPU counting).
    async fn set_latency(&self, on: bool) -> Result<(), String> {
        let ms = |x: u64| Duration::from_millis(if on { x } else { 0 });
        let faults = Faults::none()
            .with(
                CONSUME,
                MethodFaults {
                    latency: ms(CONSUME_MS),
                    ..MethodFaults::default()
                },
            )
            .with(
                CONFIRM,
                MethodFaults {
                    latency: ms(CONFIRM_MS),
                    ..MethodFaults::default()
                },
            );
        let faults = serde_json::to_value(&faults).map_err(|e| e.to_string())?;
        self.post(&format!("{}/_sim/faults", self.base()), &faults)
            .await?;
        let op = |x: u64| OpRules {
            latency_ms: if on { x } else { 0 },
            ..OpRules::default()
        };
        let rules = Rules::none()
            .with("SendMessageBatch", op(SQS_MS))
            .with("*", op(DYNAMODB_MS));
        let rules = serde_json::to_value(&rules).map_err(|e| e.to_string())?;
        self.post(&format!("{}/_fake/rules", self.aws.url), &rules)
            .await?;
        Ok(())
    }

    /// A fresh group, queues and table.
    async fn fresh(&self) -> Result<Names, String> {
        let k = RUN.fetch_add(1, Ordering::SeqCst);
        let sqs = aws_sdk_sqs::Client::new(&self.sdk);
        let ddb = aws_sdk_dynamodb::Client::new(&self.sdk);
        let mut urls = Vec::new();
        for name in [format!("bench-relay-{k}"), format!("bench-parking-{k}")] {
            let out = sqs
                .create_queue()
                .queue_name(&name)
                .send()
                .await
                .map_err(|e| format!("CreateQueue: {e:?}"))?;
            urls.push(out.queue_url().unwrap_or_default().to_owned());
        }
        let table = format!("bench-dedup-{k}");
        ddb.create_table()
            .table_name(&table)
            .billing_mode(BillingMode::PayPerRequest)
            .attribute_definitions(
                AttributeDefinition::builder()
                    .attribute_name("pk")
                    .attribute_type(ScalarAttributeType::S)
                    .build()
                    .map_err(|e| e.to_string())?,
            )
            .key_schema(
                KeySchemaElement::builder()
                    .attribute_name("pk")
                    .key_type(KeyType::Hash)
                    .build()
                    .map_err(|e| e.to_string())?,
            )
            .send()
            .await
            .map_err(|e| format!("CreateTable: {e:?}"))?;
        let parking_queue_url = urls.pop().unwrap_or_default();
        let relay_queue_url = urls.pop().unwrap_or_default();
        Ok(Names {
            group: format!("bench{k}"),
            relay_queue_url,
            parking_queue_url,
            table,
        })
    }

    /// Publishes `n` generated (realistic, a few hundred bytes) messages to `group`.
    async fn generate(&self, group: &str, n: usize) -> Result<(), String> {
        let url = format!("{}/_sim/generate", self.base());
        let mut left = n;
        while left > 0 {
            let count = left.min(50_000);
            self.post(&url, &json!({"group_name": group, "count": count}))
                .await?;
            left -= count;
        }
        Ok(())
    }

    /// Publishes `n` messages whose contents are 4 KiB JSON documents.
    async fn publish_4k(&self, group: &str, n: usize) -> Result<(), String> {
        let url = format!("{}/_sim/publish", self.base());
        for start in (0..n).step_by(200) {
            let msgs: Vec<Value> = (start..n.min(start + 200))
                .map(|i| {
                    let head = format!(
                        r#"{{"tid":{},"seller_nick":"旗舰店{}","status":"WAIT_SELLER_SEND_GOODS","memo":""#,
                        9_007_199_254_740_993u64 + i as u64,
                        i % 7
                    );
                    let pad = 4096 - head.len() - 2;
                    let content = format!("{head}{}\"}}", "x".repeat(pad));
                    json!({"topic": "taobao_trade_TradeChanged", "content": content,
                           "user_id": "2200000000000000000", "user_nick": "店铺"})
                })
                .collect();
            self.post(&url, &json!({"group_name": group, "messages": msgs}))
                .await?;
        }
        Ok(())
    }

    async fn top_calls(&self) -> Result<u64, String> {
        let url = format!("{}/_sim/state?messages=false", self.base());
        let v: Value = self
            .http
            .get(&url)
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .map_err(|e| format!("GET {url}: {e}"))?
            .bytes()
            .await
            .map_err(|e| format!("GET {url}: {e}"))
            .and_then(|b| serde_json::from_slice(&b).map_err(|e| format!("GET {url}: {e}")))?;
        Ok(v["consume_calls"].as_u64().unwrap_or(0) + v["confirm_calls"].as_u64().unwrap_or(0))
    }

    /// The relay's environment for `names` (what the Lambda's template sets, plus the
    /// endpoints and credentials a local run needs).
    fn env(&self, names: &Names, loops: u32) -> HashMap<String, String> {
        let mut env = HashMap::from([
            ("TOP_APP_KEY".into(), APP_KEY.into()),
            ("TOP_APP_SECRET".into(), SECRET.into()),
            ("TOP_ENDPOINT".into(), self.sim.url.clone()),
            ("TMC_GROUP_NAMES".into(), names.group.clone()),
            ("TMC_CONCURRENCY".into(), loops.to_string()),
            ("RELAY_QUEUE_URL".into(), names.relay_queue_url.clone()),
            ("PARKING_QUEUE_URL".into(), names.parking_queue_url.clone()),
            ("DEDUP_TABLE_NAME".into(), names.table.clone()),
            ("AWS_ENDPOINT_URL".into(), self.aws.url.clone()),
            ("AWS_REGION".into(), "us-east-1".into()),
            ("AWS_DEFAULT_REGION".into(), "us-east-1".into()),
            ("AWS_ACCESS_KEY_ID".into(), "bench".into()),
            ("AWS_SECRET_ACCESS_KEY".into(), "bench".into()),
            ("AWS_SESSION_TOKEN".into(), "bench".into()),
        ]);
        if let Some(p) = self.parallelism {
            env.insert("RELAY_PARALLELISM".into(), p.to_string());
        }
        env
    }

    /// Names for the cold-start runs, which never reach AWS.
    fn cold_names(&self) -> Names {
        Names {
            group: "cold".into(),
            relay_queue_url: format!("{}/000000000000/cold-relay", self.aws.url),
            parking_queue_url: format!("{}/000000000000/cold-parking", self.aws.url),
            table: "cold-dedup".into(),
        }
    }

    /// The environment Lambda gives the bootstrap (at the template's 256 MB).
    fn lambda_env(&self, names: &Names) -> HashMap<String, String> {
        let mut env = self.env(names, 1);
        for (k, v) in [
            ("AWS_LAMBDA_FUNCTION_NAME", "tmc-relay"),
            ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "256"),
            ("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST"),
            ("AWS_LAMBDA_LOG_GROUP_NAME", "/aws/lambda/tmc-relay"),
            ("AWS_LAMBDA_LOG_STREAM_NAME", "bench"),
            ("AWS_LAMBDA_INITIALIZATION_TYPE", "on-demand"),
            ("LAMBDA_TASK_ROOT", "/var/task"),
            ("TZ", ":UTC"),
            ("PATH", "/usr/local/bin:/usr/bin:/bin"),
        ] {
            env.insert(k.into(), v.into());
        }
        env
    }

    /// Median consume and confirm round trips, 200 messages each, as the relay's client sees
    /// them on a warm connection.
    async fn round_trips(&self, consumes: usize) -> Result<(Duration, Duration), String> {
        let names = self.fresh().await?;
        self.generate(&names.group, (consumes + 1) * QUANTITY as usize)
            .await?;
        let endpoint = url::Url::parse(&self.sim.url).map_err(|e| e.to_string())?;
        let top = TopClient::new(TopConfig::new(endpoint, APP_KEY, Secret::new(SECRET)))
            .map_err(|e| e.to_string())?;
        let deadline = Instant::now() + Duration::from_secs(300);
        let group = Some(names.group.as_str());
        let (mut consume, mut confirm) = (Vec::new(), Vec::new());
        for i in 0..=consumes {
            let t = Instant::now();
            let msgs = top
                .consume(group, QUANTITY, deadline)
                .await
                .map_err(|e| format!("consume: {e}"))?;
            let took = t.elapsed();
            if msgs.len() != QUANTITY as usize {
                return Err(format!("consume returned {} messages", msgs.len()));
            }
            let ids: Vec<u64> = msgs.iter().filter_map(|m| m.id).collect();
            let t = Instant::now();
            for c in top.confirm(group, &ids, deadline).await {
                c.result.map_err(|e| format!("confirm: {e}"))?;
            }
            // The first call also opens the connection.
            if i > 0 {
                consume.push(took);
                confirm.push(t.elapsed());
            }
        }
        Ok((median(consume), median(confirm)))
    }

    /// One drain pass over `n` generated messages, the relay in this process.
    async fn relay_run(
        &self,
        loops: u32,
        settings: RelaySettings,
        n: usize,
        parallelism: Option<usize>,
        threads: Option<usize>,
    ) -> Result<Run, String> {
        let names = self.fresh().await?;
        self.generate(&names.group, n).await?;
        let mut env = self.env(&names, loops);
        if let Some(p) = parallelism {
            env.insert("RELAY_PARALLELISM".into(), p.to_string());
        }
        let config = Config::from_lookup(|k| env.get(k).cloned()).map_err(|e| e.to_string())?;
        let app = App::build_with(config, &self.sdk, settings)
            .await
            .map_err(|e| e.to_string())?;
        let top0 = self.top_calls().await?;
        let cpu0 = (self_cpu(), self.sim.cpu(), self.aws.cpu(), machine_cpu());
        let overrides = Overrides {
            max_seconds: Some(600),
            ..Overrides::default()
        };
        let progress = Arc::new(Progress::default());
        let sampler = {
            let p = Arc::clone(&progress);
            tokio::spawn(async move {
                let mut samples = Vec::new();
                loop {
                    samples.push((Instant::now(), p.confirmed.load(Ordering::Relaxed)));
                    if samples.last().is_some_and(|s| s.1 >= n as u64) {
                        return samples;
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
        };
        let report = match threads {
            None => app.run(&overrides, None, progress).await,
            // On a runtime of its own, as TOKIO_WORKER_THREADS=k gives the binaries.
            Some(k) => {
                let (tx, rx) = tokio::sync::oneshot::channel();
                std::thread::spawn(move || {
                    let rt = tokio::runtime::Builder::new_multi_thread()
                        .worker_threads(k)
                        .enable_all()
                        .build();
                    let _ = tx.send(rt.map(|rt| rt.block_on(app.run(&overrides, None, progress))));
                });
                match rx.await {
                    Ok(Ok(r)) => r,
                    Ok(Err(e)) => return Err(format!("cannot start a runtime: {e}")),
                    Err(_) => return Err("the relay's runtime thread died".into()),
                }
            }
        };
        let cpu = Cpu {
            relay: self_cpu() - cpu0.0,
            sim: self.sim.cpu() - cpu0.1,
            aws: self.aws.cpu() - cpu0.2,
            machine: {
                let (busy, total) = machine_cpu();
                (busy - cpu0.3 .0) / (total - cpu0.3 .1).max(0.01)
            },
        };
        let top_calls = self.top_calls().await? - top0;
        if let Err(e) = check(&report, n) {
            sampler.abort();
            return Err(e);
        }
        let samples = sampler.await.map_err(|e| e.to_string())?;
        let wall = report.elapsed_ms as f64 / 1e3;
        Ok(Run {
            messages: report.counts.enqueued,
            rate: steady_rate(&samples, n as u64),
            pass_rate: report.counts.enqueued as f64 / wall,
            wall,
            report,
            cpu,
            top_calls,
        })
    }

    /// `tmc-relay run` as a child over `n` messages of 4 KiB: its peak RSS.
    async fn memory_run(
        &self,
        bin: &Path,
        loops: u32,
        n: usize,
        extra: &[(&str, &str)],
    ) -> Result<Measured, String> {
        let names = self.fresh().await?;
        self.publish_4k(&names.group, n).await?;
        let mut cmd = Command::new(bin);
        cmd.args(["run", "--max-seconds", "600"])
            .env_clear()
            .envs(self.env(&names, loops))
            .envs(extra.iter().copied());
        let (out, usage) = tokio::task::spawn_blocking(move || sys::run_measured(cmd))
            .await
            .map_err(|e| e.to_string())??;
        check_json(&out, n)?;
        Ok(Measured {
            peak_kib: usage.peak_kib,
            cpu_secs: usage.cpu_secs,
        })
    }

    /// Peak memory and CPU of the Lambda binary serving one invocation that relays `n`
    /// messages of 4 KiB, behind a stand-in Lambda Runtime API; the process is killed once it
    /// has posted its answer and asked for the next event.
    async fn lambda_memory_run(&self, bootstrap: &Path, n: usize) -> Result<Measured, String> {
        use axum::routing::{get, post};

        let names = self.fresh().await?;
        self.publish_4k(&names.group, n).await?;
        let (answer_tx, answer_rx) = mpsc::channel::<Result<String, String>>();
        let handed_out = Arc::new(AtomicU32::new(0));
        let next = move || {
            let handed_out = Arc::clone(&handed_out);
            async move {
                if handed_out.fetch_add(1, Ordering::SeqCst) > 0 {
                    // One invocation only: the next one never comes.
                    std::future::pending::<()>().await;
                }
                let deadline = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_millis()
                    + 600_000;
                (
                    [
                        ("lambda-runtime-aws-request-id", "bench-1".to_owned()),
                        ("lambda-runtime-deadline-ms", deadline.to_string()),
                        (
                            "lambda-runtime-invoked-function-arn",
                            "arn:aws:lambda:us-east-1:123456789012:function:tmc-relay".to_owned(),
                        ),
                    ],
                    "{}",
                )
            }
        };
        let posted =
            move |axum::extract::Path((_id, kind)): axum::extract::Path<(String, String)>,
                  body: String| {
                let answer_tx = answer_tx.clone();
                async move {
                    let _ = answer_tx.send(if kind == "response" {
                        Ok(body)
                    } else {
                        Err(format!("the function answered {kind}: {body}"))
                    });
                    "{}"
                }
            };
        let api = axum::Router::new()
            .route("/2018-06-01/runtime/invocation/next", get(next))
            .route("/2018-06-01/runtime/invocation/{id}/{kind}", post(posted));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| e.to_string())?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let server = tokio::spawn(async move { axum::serve(listener, api).await });

        let mut cmd = Command::new(bootstrap);
        cmd.env_clear()
            .envs(self.lambda_env(&names))
            .env("AWS_LAMBDA_RUNTIME_API", addr.to_string());
        let measured =
            tokio::task::spawn_blocking(move || sys::run_measured_until(cmd, &answer_rx)).await;
        server.abort();
        let (out, usage) = measured.map_err(|e| e.to_string())??;
        check_json(&out, n)?;
        Ok(Measured {
            peak_kib: usage.peak_kib,
            cpu_secs: usage.cpu_secs,
        })
    }

    /// Instructions `tmc-relay run` executes relaying `n` generated messages, under callgrind,
    /// with no injected latency; the profile is kept in `keep` when given.
    async fn callgrind_run(
        &self,
        bin: &Path,
        n: usize,
        keep: Option<&Path>,
    ) -> Result<u64, String> {
        self.set_latency(false).await?;
        let names = self.fresh().await?;
        self.generate(&names.group, n).await?;
        let dir = std::env::temp_dir().join(format!("tmc-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let log = dir.join(format!("valgrind-{n}.log"));
        let mut cmd = Command::new("valgrind");
        cmd.arg("--tool=callgrind")
            .arg(format!(
                "--callgrind-out-file={}",
                dir.join("callgrind.out").display()
            ))
            .arg(format!("--log-file={}", log.display()))
            .arg(bin)
            .args(["run", "--max-seconds", "600"])
            .env_clear()
            .envs(self.env(&names, 1))
            .env("PATH", std::env::var("PATH").unwrap_or_default());
        let out = tokio::task::spawn_blocking(move || {
            cmd.stdin(Stdio::null())
                .stderr(Stdio::null())
                .output()
                .map_err(|e| format!("cannot run valgrind: {e}"))
        })
        .await
        .map_err(|e| e.to_string())??;
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(keep) = keep {
            std::fs::create_dir_all(keep)
                .and_then(|()| {
                    std::fs::copy(
                        dir.join("callgrind.out"),
                        keep.join(format!("callgrind.{n}.out")),
                    )
                })
                .map_err(|e| format!("cannot keep the profile in {}: {e}", keep.display()))?;
        }
        let _ = std::fs::remove_dir_all(&dir);
        self.set_latency(true).await?;
        check_json(&String::from_utf8_lossy(&out.stdout), n)?;
        text.lines()
            .find_map(|l| {
                l.split_once("Collected :")
                    .map(|(_, n)| n.trim().to_owned())
            })
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| format!("no instruction count in valgrind's log: {text}"))
    }
}

/// Confirmations per second between 10% and 90% of `n` confirmed.
fn steady_rate(samples: &[(Instant, u64)], n: u64) -> f64 {
    let at = |share: u64| samples.iter().find(|s| s.1 * 100 >= n * share);
    match (at(10), at(90)) {
        (Some(a), Some(b)) if b.0 > a.0 => (b.1 - a.1) as f64 / (b.0 - a.0).as_secs_f64(),
        _ => 0.0,
    }
}

/// Every message enqueued and confirmed exactly once, or the figures mean nothing.
fn check(report: &Report, n: usize) -> Result<(), String> {
    let c = &report.counts;
    if c.enqueued != n as u64 || c.confirmed != n as u64 || report.error.is_some() {
        return Err(format!(
            "a run did not relay all {n} messages: {}",
            serde_json::to_string(report).unwrap_or_default()
        ));
    }
    Ok(())
}

fn check_json(stdout: &str, n: usize) -> Result<(), String> {
    let v: Value = serde_json::from_str(stdout.trim())
        .map_err(|e| format!("the relay's report is not JSON ({e}): {stdout}"))?;
    if v["enqueued"].as_u64() != Some(n as u64) || v["confirmed"].as_u64() != Some(n as u64) {
        return Err(format!("a child run did not relay all {n} messages: {v}"));
    }
    Ok(())
}

async fn sdk_config(endpoint: &str) -> aws_config::SdkConfig {
    // The same timeouts and retries as `wiring::aws_config`, with a local endpoint.
    aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("bench", "bench", None, None, "bench"))
        .endpoint_url(endpoint)
        .timeout_config(
            aws_config::timeout::TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(2))
                .operation_attempt_timeout(Duration::from_secs(5))
                .operation_timeout(Duration::from_secs(12))
                .build(),
        )
        .retry_config(aws_config::retry::RetryConfig::standard().with_max_attempts(3))
        .load()
        .await
}

/// Starts `bin` as Lambda would, `runs` times (after one unmeasured warm-up), and times each
/// start until its first `GET /2018-06-01/runtime/invocation/next`.
fn cold_starts(
    bin: &Path,
    env: &HashMap<String, String>,
    runs: usize,
) -> Result<Vec<Duration>, String> {
    let mut out = Vec::new();
    for i in 0..=runs {
        let took = cold_start(bin, env)?;
        if i > 0 {
            out.push(took);
        }
    }
    Ok(out)
}

fn cold_start(bin: &Path, env: &HashMap<String, String>) -> Result<Duration, String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let (tx, rx) = mpsc::channel();
    let api = std::thread::spawn(move || runtime_api(listener, tx));
    let started = std::time::Instant::now();
    let mut child = Command::new(bin)
        .env_clear()
        .envs(env)
        .env("AWS_LAMBDA_RUNTIME_API", addr.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
    let got = rx.recv_timeout(Duration::from_secs(10));
    let _ = child.kill();
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut stderr);
    }
    let _ = child.wait();
    if got.is_err() {
        // Unblock the accept.
        let _ = TcpStream::connect(addr);
    }
    let _ = api.join();
    match got {
        Ok(Ok(at)) => Ok(at.saturating_duration_since(started)),
        Ok(Err(e)) => Err(format!("runtime API: {e}; bootstrap said: {stderr}")),
        Err(_) => Err(format!(
            "the bootstrap made no Runtime API request within 10 s; it said: {stderr}"
        )),
    }
}

/// Accepts one connection and reports when its `/next` request line has arrived.
fn runtime_api(listener: TcpListener, tx: mpsc::Sender<Result<std::time::Instant, String>>) {
    let r = (|| {
        let (mut conn, _): (TcpStream, SocketAddr) =
            listener.accept().map_err(|e| e.to_string())?;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 1024];
        while !buf.windows(2).any(|w| w == b"\r\n") {
            let n = conn.read(&mut chunk).map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("connection closed before a request line".to_owned());
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        let at = std::time::Instant::now();
        let line = String::from_utf8_lossy(&buf);
        let line = line.lines().next().unwrap_or_default().to_owned();
        if !line.starts_with("GET /2018-06-01/runtime/invocation/next") {
            return Err(format!("unexpected first request: {line}"));
        }
        Ok(at)
    })();
    let _ = tx.send(r);
}

/// Size of an ELF file and whether it has no symbol table.
fn binary_size(path: &Path) -> Result<(u64, bool), String> {
    let data = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let stripped = elf_section_names(&data)
        .ok_or_else(|| format!("{} is not a 64-bit ELF file", path.display()))?
        .iter()
        .all(|n| n != ".symtab");
    Ok((data.len() as u64, stripped))
}

fn elf_section_names(d: &[u8]) -> Option<Vec<String>> {
    if d.get(..5)? != b"\x7fELF\x02" || d.get(5)? != &1 {
        return None; // 64-bit little-endian only
    }
    let u16_at = |o: usize| Some(u16::from_le_bytes(d.get(o..o + 2)?.try_into().ok()?) as usize);
    let u32_at = |o: usize| Some(u32::from_le_bytes(d.get(o..o + 4)?.try_into().ok()?) as usize);
    let u64_at = |o: usize| Some(u64::from_le_bytes(d.get(o..o + 8)?.try_into().ok()?) as usize);
    let (shoff, shentsize, shnum, shstrndx) =
        (u64_at(0x28)?, u16_at(0x3A)?, u16_at(0x3C)?, u16_at(0x3E)?);
    let strtab = u64_at(shoff + shstrndx * shentsize + 0x18)?;
    (0..shnum)
        .map(|i| {
            let name = strtab + u32_at(shoff + i * shentsize)?;
            let end = name + d.get(name..)?.iter().position(|&b| b == 0)?;
            Some(String::from_utf8_lossy(&d[name..end]).into_owned())
        })
        .collect()
}

/// A child's peak memory and CPU time (Linux; the bench measures Linux builds).
mod sys {
    use std::io::Read;
    use std::process::{Command, Stdio};
    use std::sync::mpsc;
    use std::time::Duration;

    /// How long a measured server may take to answer.
    const TIMEOUT: Duration = Duration::from_secs(600);

    /// What the bench reads of a finished child.
    pub struct Usage {
        /// `VmHWM`: the high-water mark of the child's own address space. (`ru_maxrss` would
        /// not do: Linux folds the parent's RSS at exec time into it.)
        pub peak_kib: u64,
        /// User + system CPU seconds.
        pub cpu_secs: f64,
    }

    /// `struct rusage` on 64-bit Linux: two `timeval`s, then fourteen `long`s.
    #[repr(C)]
    #[derive(Default)]
    struct RUsage {
        utime: [i64; 2],
        stime: [i64; 2],
        longs: [i64; 14],
    }

    const WNOHANG: i32 = 1;

    extern "C" {
        fn wait4(pid: i32, status: *mut i32, options: i32, rusage: *mut RUsage) -> i32;
    }

    fn vm_hwm_kib(pid: i32) -> Option<u64> {
        let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
        line.split_whitespace().nth(1)?.parse().ok()
    }

    /// Runs `cmd` to completion: its stdout, peak memory and CPU time.
    pub fn run_measured(cmd: Command) -> Result<(String, Usage), String> {
        measure(cmd, None)
    }

    /// Runs `cmd` until `answer` delivers its result (a server that never exits, such as the
    /// Lambda), then kills it: that result, peak memory and CPU time.
    pub fn run_measured_until(
        cmd: Command,
        answer: &mpsc::Receiver<Result<String, String>>,
    ) -> Result<(String, Usage), String> {
        measure(cmd, Some(answer))
    }

    fn measure(
        mut cmd: Command,
        answer: Option<&mpsc::Receiver<Result<String, String>>>,
    ) -> Result<(String, Usage), String> {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start {cmd:?}: {e}"))?;
        let pid = child.id() as i32;
        // The report is small and comes at the end; read it on the side so polling goes on.
        let stdout = child.stdout.take();
        let reader = std::thread::spawn(move || {
            let mut out = String::new();
            if let Some(mut s) = stdout {
                let _ = s.read_to_string(&mut out);
            }
            out
        });
        let mut usage = RUsage::default();
        let mut status = 0i32;
        let mut peak = 0u64;
        let mut answered: Option<Result<String, String>> = None;
        let started = std::time::Instant::now();
        loop {
            // VmHWM only grows, so the last reading before the exit is the peak.
            if let Some(kib) = vm_hwm_kib(pid) {
                peak = peak.max(kib);
            }
            if let Some(rx) = answer.filter(|_| answered.is_none()) {
                let got = match rx.try_recv() {
                    Ok(r) => Some(r),
                    Err(mpsc::TryRecvError::Empty) if started.elapsed() > TIMEOUT => {
                        Some(Err(format!("no answer within {TIMEOUT:?}")))
                    }
                    Err(mpsc::TryRecvError::Empty) => None,
                    Err(mpsc::TryRecvError::Disconnected) => {
                        Some(Err("the runtime API stand-in stopped".to_owned()))
                    }
                };
                if got.is_some() {
                    answered = got;
                    let _ = child.kill();
                }
            }
            // SAFETY: `status` and `usage` are valid for writes and laid out as wait4 expects
            // on 64-bit Linux; `pid` is our own child, which std never reaps because
            // `child.wait()` is not called.
            let r = unsafe { wait4(pid, &mut status, WNOHANG, &mut usage) };
            if r == pid {
                break;
            }
            if r < 0 {
                let err = std::io::Error::last_os_error();
                if err.kind() != std::io::ErrorKind::Interrupted {
                    return Err(format!("wait4: {err}"));
                }
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        let mut out = reader.join().unwrap_or_default();
        if let Some(a) = answered {
            out = a?;
        } else if status & 0x7f != 0 || (status >> 8) & 0xff != 0 {
            // WIFEXITED && WEXITSTATUS == 0
            return Err(format!(
                "{cmd:?} failed (wait status {status:#x}); report: {out}"
            ));
        }
        let secs = |tv: [i64; 2]| tv[0] as f64 + tv[1] as f64 / 1e6;
        let _ = usage.longs;
        Ok((
            out,
            Usage {
                peak_kib: peak,
                cpu_secs: secs(usage.utime) + secs(usage.stime),
            },
        ))
    }
}
