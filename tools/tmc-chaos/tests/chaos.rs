//! The chaos harness, small: real `tmc-relay run` processes drain through 5 % faults on every
//! TMC and AWS call and SIGKILLs, then four concurrent passes race on a short lease; and,
//! apart, through throttle storms and stalls longer than a lease. The full size runs with
//! `make chaos`.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use serde_json::Value;

/// The `tmc-relay` binary the harness runs: beside `tmc-chaos` in the same target directory.
/// It belongs to another package, so Cargo does not build it for this test by itself (it does
/// under `cargo test --workspace`, which `make test` runs); when it is absent, this builds it
/// with the same Cargo and profile.
fn relay_bin() -> &'static str {
    static BIN: OnceLock<String> = OnceLock::new();
    BIN.get_or_init(|| {
        let chaos = PathBuf::from(env!("CARGO_BIN_EXE_tmc-chaos"));
        let dir = chaos.parent().expect("tmc-chaos has a directory");
        let relay = dir.join("tmc-relay");
        if !relay.exists() {
            let mut build = Command::new(env!("CARGO"));
            build.args(["build", "--package", "tmc-relay", "--bin", "tmc-relay"]);
            if dir.file_name().is_some_and(|p| p == "release") {
                build.arg("--release");
            }
            let status = build.status().expect("cargo runs");
            assert!(status.success(), "cargo build --bin tmc-relay failed");
        }
        assert!(relay.exists(), "no tmc-relay at {}", relay.display());
        relay.to_string_lossy().into_owned()
    })
}

/// Runs `tmc-chaos --json` with `args`; returns its exit code and parsed figures.
fn chaos(args: &[&str]) -> (i32, Value) {
    let out = Command::new(env!("CARGO_BIN_EXE_tmc-chaos"))
        .args(["--relay-bin", relay_bin(), "--json"])
        // A bound on a hung run, not on speed: a loaded machine takes longer.
        .args(["--timeout-secs", "1200"])
        .args(args)
        .output()
        .expect("tmc-chaos runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let figures: Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("tmc-chaos printed no JSON ({e}):\n{stdout}\n{stderr}"));
    (out.status.code().unwrap_or(-1), figures)
}

fn n(v: &Value, path: &[&str]) -> u64 {
    let mut cur = v;
    for p in path {
        cur = &cur[*p];
    }
    cur.as_u64()
        .unwrap_or_else(|| panic!("{} is not a number in {v:#}", path.join(".")))
}

fn failed_checks(v: &Value) -> Vec<String> {
    v["checks"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["passed"] != true)
        .map(|c| format!("{}: {}", c["name"], c["detail"]))
        .collect()
}

/// Asserts what every healthy run shows: nothing lost or confirmed early, duplicates within
/// their bound, the crashes and faults really happened, and no id enqueued twice by
/// concurrent passes.
fn assert_sound(code: i32, v: &Value, crashes: u64) {
    assert_eq!(failed_checks(v), Vec::<String>::new(), "{v:#}");
    assert_eq!(code, 0, "{v:#}");
    assert_eq!(v["passed"], true);
    assert_eq!(n(v, &["lost"]), 0);
    assert_eq!(n(v, &["early_confirms"]), 0);
    assert_eq!(n(v, &["unconfirmed"]), 0);
    assert!(n(v, &["duplicates", "count"]) <= n(v, &["duplicates", "bound", "total"]));
    assert_eq!(n(v, &["crashes"]), crashes, "the crashes happened");
    assert!(
        n(v, &["faults", "aws_total", "lost_responses"]) > 0
            && n(v, &["faults", "aws_total", "throttled"]) > 0
            && n(v, &["faults", "aws_total", "failed_entries"]) > 0,
        "AWS faults were injected: {v:#}"
    );
    assert_eq!(n(v, &["secret_leaks"]), 0);
    assert_eq!(n(v, &["concurrency", "enqueued_twice"]), 0);
    assert_eq!(n(v, &["concurrency", "lost"]), 0);
    assert!(
        n(v, &["concurrency", "held_elsewhere"]) > 0,
        "the lease was shorter than a batch"
    );
}

/// 1,500 messages through 5 % faults and 3 SIGKILLs on the in-memory backend: no loss, no
/// early confirm, duplicates within the bound; then 4 concurrent passes enqueue nothing twice.
#[test]
fn memory_backend_survives_faults_crashes_and_concurrency() {
    let (code, v) = chaos(&[
        "--messages",
        "1500",
        "--crashes",
        "3",
        "--fault-rate",
        "0.05",
        "--seed",
        "11",
        "--processes",
        "2",
        "--pass-seconds",
        "8",
        "--concurrency-messages",
        "600",
        "--long-pass-messages",
        "600",
        // The storms have a case of their own below.
        "--storm-messages",
        "0",
    ]);
    assert_sound(code, &v, 3);
    assert!(
        n(&v, &["long_pass", "taken_over"]) > 0,
        "the killed long pass's claims were taken over: {v:#}"
    );
    assert_eq!(n(&v, &["long_pass", "lost"]), 0);
    assert!(
        n(&v, &["faults", "tmc_consume_calls"]) > 0 && n(&v, &["faults", "tmc_confirm_calls"]) > 0
    );
}

/// The same through fake-aws in front of moto (small: moto slows down with queue depth), with
/// some injected SenderFault=true failures so the parking path is exercised too.
#[test]
fn moto_backend_survives_faults_crashes_and_concurrency() {
    let (code, v) = chaos(&[
        "--backend",
        "moto",
        "--messages",
        "300",
        "--crashes",
        "2",
        "--fault-rate",
        "0.05",
        "--sender-fault-share",
        "0.5",
        "--seed",
        "12",
        "--processes",
        "2",
        "--quantity",
        "50",
        "--pass-seconds",
        "8",
        "--concurrency-messages",
        "200",
        // The long-pass phase runs on the in-memory backend above and on ministack
        // (tests/leases.rs).
        "--long-pass-messages",
        "0",
        "--storm-messages",
        "0",
    ]);
    assert_sound(code, &v, 2);
    assert!(
        n(&v, &["parked", "count"]) > 0,
        "SenderFault=true entries were parked: {v:#}"
    );
}

/// The checks catch a relay that confirms what it never enqueued and one that enqueues twice:
/// confirming 3 ids behind the relay's back and adding 3 extra copies fails the run.
#[test]
fn checks_fail_on_confirm_without_enqueue_and_on_unexplained_duplicates() {
    let (code, v) = chaos(&[
        "--messages",
        "200",
        "--crashes",
        "0",
        "--fault-rate",
        "0",
        "--seed",
        "13",
        "--concurrency-messages",
        "0",
        "--long-pass-messages",
        "0",
        "--storm-messages",
        "0",
        "--sabotage",
        "3",
    ]);
    assert_eq!(code, 1, "{v:#}");
    assert_eq!(v["passed"], false);
    assert_eq!(n(&v, &["lost"]), 3);
    assert_eq!(n(&v, &["early_confirms"]), 3);
    assert_eq!(n(&v, &["duplicates", "count"]), 3);
    assert_eq!(n(&v, &["duplicates", "bound", "total"]), 0);
    let failed = failed_checks(&v).join("\n");
    for check in ["no_loss", "no_early_confirm", "duplicates_within_bound"] {
        assert!(failed.contains(check), "{check} did not fail:\n{failed}");
    }
}

/// 1,500 messages through 5 % faults plus seconds-long throttle storms on every DynamoDB
/// write, a renewal storm longer than a lease while SQS is slow, DynamoDB writes and SQS sends
/// stalled longer than a lease, and 3 SIGKILLs inside them, with the relay's default leases
/// and timeouts: nothing lost or confirmed early, no receipt given up, and copies only as many
/// as the crashes and the lost SQS answers explain.
#[test]
fn memory_backend_survives_storms_stalls_and_crashes() {
    let (code, v) = chaos(&[
        "--messages",
        "0",
        "--concurrency-messages",
        "0",
        "--long-pass-messages",
        "0",
        "--storm-messages",
        "1500",
        "--storm-seconds",
        "120",
        "--storm-crashes",
        "3",
        "--fault-rate",
        "0.05",
        "--seed",
        "14",
        "--processes",
        "2",
        "--pass-seconds",
        "8",
    ]);
    let s = &v["storm"];
    assert_eq!(
        failed_checks(&v),
        Vec::<String>::new(),
        "{:#}\nduplicates {:#}\nreceipts {:#}\nrelay counts {:#}",
        v["failures"],
        s["duplicates"],
        s["receipts"],
        s["relay_counts"]
    );
    assert_eq!(code, 0, "{v:#}");
    assert_eq!(n(s, &["lost"]), 0);
    assert_eq!(n(s, &["early_confirms"]), 0);
    assert_eq!(n(s, &["unconfirmed"]), 0);
    assert_eq!(n(s, &["receipts", "unsettled"]), 0);
    assert_eq!(n(s, &["receipts", "refused_never_redone"]), 0);
    assert!(n(s, &["duplicates", "count"]) <= n(s, &["duplicates", "bound", "total"]));
    assert_eq!(n(s, &["crashes"]), 3, "the crashes happened");
    assert!(
        n(s, &["episodes", "storm/ddb-writes", "throttled"]) > 0
            && n(s, &["episodes", "storm/renewals", "by_op", "UpdateItem"]) > 0
            && n(s, &["episodes", "stall/ddb-writes", "stalled"]) > 0
            && n(s, &["episodes", "stall/sqs-sends", "stalled"]) > 0,
        "the storms and stalls met the relay's requests: {:#}",
        s["episodes"]
    );
    assert!(
        n(s, &["stall_hold_ms"]) > n(s, &["lease_floor_ms"])
            && n(s, &["renewal_storm_ms"]) > n(s, &["lease_floor_ms"]),
        "stalls and the renewal storm outlast the relay's shortest lease"
    );
    assert_eq!(n(s, &["secret_leaks"]), 0);
}
