//! The report: the results table and the Markdown `make bench` prints, with the machine, the
//! settings and the injected latencies above the figures.

use tmc_relay::relay::RelaySettings;

use crate::cost::{print_cost, Usage};
use crate::{Args, Plan, CONFIRM_MS, CONSUME_MS, DYNAMODB_MS, SQS_MS};

/// What the sections measured, for the report.
#[derive(Default)]
pub(crate) struct Findings {
    /// The results table.
    pub(crate) table: Table,
    /// Notes printed under the table.
    pub(crate) notes: Vec<String>,
    /// How the limit was worked out (the throughput section).
    pub(crate) limit_line: Option<String>,
    /// AWS usage per message (the throughput section), for the cost.
    pub(crate) usage: Option<Usage>,
    /// Instructions per message (the callgrind section).
    pub(crate) instr_per_msg: Option<f64>,
}

/// Prints the report of a finished bench.
pub(crate) fn print(
    args: &Args,
    plan: &Plan,
    cores: usize,
    settings: &RelaySettings,
    found: &Findings,
    started: std::time::Instant,
) {
    let Findings {
        table: t,
        notes,
        limit_line,
        usage,
        instr_per_msg,
    } = found;
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
    if let Some(l) = limit_line {
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
        for n in notes {
            println!("- {n}");
        }
    }
    if let Some(u) = usage {
        print_cost(u, *instr_per_msg);
    }
    println!();
    println!(
        "(bench took {:.0} s; command: make bench{})",
        started.elapsed().as_secs_f64(),
        if args.quick { " QUICK=1" } else { "" }
    );
}

/// The rows of the results table.
#[derive(Default)]
pub(crate) struct Table {
    rows: Vec<[String; 4]>,
}

impl Table {
    pub(crate) fn row(&mut self, what: &str, figure: String, target: &str, ok: Option<bool>) {
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

    pub(crate) fn print(&self) {
        println!("| Measure | Figure | Target | |");
        println!("|---|---|---|---|");
        for [a, b, c, d] in &self.rows {
            println!("| {a} | {b} | {c} | {d} |");
        }
    }
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
