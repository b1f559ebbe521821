//! `tmc-bench`: measures the relay against its limit and the Lambda's running cost, and prints
//! a table with the targets beside the figures (`make bench`, or `make bench QUICK=1`).
//!
//! The TMC simulator and the in-memory AWS stand-in run as child processes (the release
//! `tmc-sim` and `fake-aws` binaries), so the CPU each side spends can be told apart. The
//! throughput runs build the relay in this process exactly as the binaries do; cold start,
//! peak memory and instructions per message run the release `bootstrap` / `tmc-relay`
//! binaries as children. Every run gets its own TMC group, queues and table.

mod callgrind;
mod cost;
mod memory;
mod report;
mod stand;
mod startup;
mod sys;
mod throughput;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use tmc_relay::relay::RelaySettings;

use report::Findings;
use stand::{Bins, Stand};

const APP_KEY: &str = "12345678";
/// Not a real secret: the simulator and the relay share it.
const SECRET: &str = "bench-secret-not-real";
const QUANTITY: u32 = 200;
const CONSUME: &str = "taobao.tmc.messages.consume";
const CONFIRM: &str = "taobao.tmc.messages.confirm";

/// Injected round trips (the example figures).
const CONSUME_MS: u64 = 30;
const CONFIRM_MS: u64 = 30;
const SQS_MS: u64 = 10;
const DYNAMODB_MS: u64 = 8;

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

/// Starts the stand, runs the chosen sections in order, stops the stand and prints the
/// report.
async fn bench(args: &Args) -> Result<(), String> {
    let plan = if args.quick { &QUICK } else { &FULL };
    let only = |s: Section| args.only.is_empty() || args.only.contains(&s);
    let bins = Bins::find(&args.bin_dir)?;
    let started = std::time::Instant::now();
    let stand = Stand::start(&bins, args.parallelism).await?;
    let mut found = Findings::default();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let settings = RelaySettings {
        pipeline_depth: args
            .pipeline_depth
            .unwrap_or(RelaySettings::default().pipeline_depth),
        ..RelaySettings::default()
    };
    stand.set_latency(true).await?;

    // Throughput against the limit, and what it costs in AWS requests.
    if only(Section::Throughput) {
        let (limit_line, usage) = throughput::measure(
            &stand,
            plan,
            &settings,
            cores,
            &mut found.table,
            &mut found.notes,
        )
        .await?;
        found.limit_line = Some(limit_line);
        found.usage = Some(usage);
    }
    if only(Section::Cold) {
        startup::cold(&stand, &bins, plan, &mut found.table)?;
    }
    if only(Section::Size) {
        startup::sizes(&bins, args, &mut found.table);
    }
    if only(Section::Memory) {
        memory::measure(&stand, &bins, plan, cores, &mut found.table).await?;
    }
    if only(Section::Callgrind) {
        found.instr_per_msg = Some(
            callgrind::measure(
                &stand,
                &bins,
                plan,
                args,
                &mut found.table,
                &mut found.notes,
            )
            .await?,
        );
    }
    stand.stop();

    report::print(args, plan, cores, &settings, &found, started);
    Ok(())
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

/// The middle of `xs` (the upper one of an even count).
fn median(mut xs: Vec<Duration>) -> Duration {
    xs.sort();
    xs.get(xs.len() / 2).copied().unwrap_or_default()
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
