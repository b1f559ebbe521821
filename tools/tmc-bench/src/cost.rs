//! AWS usage and cost: the usage per message the throughput run measured, priced per million
//! messages at list prices, with the Lambda duration it implies.

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

/// AWS usage and speed per message, from the pipelined 1-loop run.
pub(crate) struct Usage {
    pub(crate) sqs: f64,
    pub(crate) wru: f64,
    pub(crate) rru: f64,
    pub(crate) ddb_requests: f64,
    pub(crate) top: f64,
    /// Messages per second.
    pub(crate) rate: f64,
    /// Relay CPU seconds per message.
    pub(crate) relay_cpu: f64,
}

/// Prints the cost per million messages, and the CPU per message beside it (with the
/// instruction count when callgrind ran).
pub(crate) fn print_cost(u: &Usage, instr_per_msg: Option<f64>) {
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
