//! The `tmc-relay` binary as an operator runs it: report on stdout, logs on stderr, exit codes,
//! refused input that consumes nothing, no secret in any output, and SIGINT.

mod support;

use std::collections::{BTreeSet, HashMap};
use std::process::{Output, Stdio};
use std::time::Duration;

use fake_aws::{FakeAws, FakeAwsConfig, OpRules, Rules};
use support::{sim, Env, SECRET};
use tmc_sim::NewMessage;

fn msg(i: u64) -> NewMessage {
    NewMessage {
        id: None,
        topic: "taobao_refund_RefundCreated".into(),
        content: format!(
            r#"{{"refund_id":{},"tid":{}}}"#,
            9_007_199_254_740_993u64 + i,
            1_172_200_053_212_681_005u64 + i
        ),
        user_id: 42,
        user_nick: "退款店".into(),
        pub_time: None,
        pub_app_key: None,
    }
}

async fn relay(env: &Env, gateway: &str, extra_env: &[(&str, &str)], args: &[&str]) -> Output {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_tmc-relay"));
    cmd.env_clear()
        .envs(env.vars(gateway))
        .env("RUST_LOG", "debug")
        .env("PATH", std::env::var("PATH").unwrap_or_default());
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    cmd.args(args).output().await.unwrap()
}

fn assert_no_secret(out: &Output) {
    for (name, stream) in [("stdout", &out.stdout), ("stderr", &out.stderr)] {
        let text = String::from_utf8_lossy(stream);
        assert!(!text.contains(SECRET), "the app secret appeared in {name}");
        assert!(
            !text.contains("seller-session-XYZ"),
            "a session key appeared in {name}"
        );
    }
}

/// `run` prints the JSON report on stdout, logs on stderr, exits 0, and never prints the secret
/// even at debug level.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_prints_the_report_and_exits_zero() {
    let sim = sim(Duration::from_secs(300)).await;
    let env = Env::new(false).await;
    sim.publish(None, (0..25).map(msg).collect());
    let out = relay(
        &env,
        &sim.gateway_url(),
        &[],
        &["run", "--max-seconds", "30", "--pipeline-depth", "1"],
    )
    .await;
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("stdout is the JSON report");
    assert_eq!(report["enqueued"], 25);
    assert_eq!(report["confirmed"], 25);
    assert_eq!(report["stop_reason"], "empty");
    assert!(String::from_utf8_lossy(&out.stderr).contains("batch done"));
    assert_no_secret(&out);
}

/// A bad flag value is refused before anything is consumed, with the problem named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_options_consume_nothing() {
    let sim = sim(Duration::from_secs(300)).await;
    let env = Env::new(false).await;
    sim.publish(None, vec![msg(1)]);
    for (args, needle) in [
        (vec!["run", "--quantity", "5"], "quantity"),
        (vec!["run", "--max-batches", "0"], "max_batches"),
        (vec!["run", "--max-batches", "-1"], "-1"),
        (vec!["run", "--mode", "fast"], "fast"),
        (vec!["run", "--concurrency", "99"], "concurrency"),
        (vec!["run", "--pipeline-depth", "17"], "pipeline-depth"),
    ] {
        let out = relay(&env, &sim.gateway_url(), &[], &args).await;
        assert!(!out.status.success(), "{args:?} was accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    assert_eq!(sim.state().consume_calls, 0);
}

/// A bad environment value is refused with the variable named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_configuration_names_the_variable() {
    let sim = sim(Duration::from_secs(300)).await;
    let env = Env::new(false).await;
    for (var, value) in [
        ("TMC_QUANTITY", "500"),
        ("TOP_SIGN_METHOD", "sha1"),
        ("RELAY_QUEUE_URL", "not-a-url"),
        ("TOP_ENDPOINT", "gateway"),
    ] {
        let out = relay(&env, &sim.gateway_url(), &[(var, value)], &["run"]).await;
        assert_eq!(out.status.code(), Some(2), "{var}={value}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(var),
            "{var}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_no_secret(&out);
    }
    assert_eq!(sim.state().consume_calls, 0);
}

/// A fatal error exits 1 with a message saying what to fix, and the report is still printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fatal_error_exits_one_and_says_what_to_fix() {
    let sim = sim(Duration::from_secs(300)).await;
    let env = Env::new(false).await;
    sim.publish(None, vec![msg(1)]);
    let out = relay(
        &env,
        &sim.gateway_url(),
        &[("TOP_APP_KEY", "99999999")],
        &["run", "--max-seconds", "10"],
    )
    .await;
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("TOP_APP_KEY"), "{err}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["stop_reason"], "fatal");
    assert_no_secret(&out);
}

/// On a terminal, a long run shows a progress line on stderr; piped, it shows none (the
/// terminal comes from `script`, which runs the command on a pseudo-terminal).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_line_only_on_a_terminal() {
    let sim = sim(Duration::from_secs(300)).await;
    let env = Env::new(false).await;
    sim.set_faults(tmc_sim::Faults::none().with(
        "taobao.tmc.messages.consume",
        tmc_sim::MethodFaults {
            latency: Duration::from_millis(400),
            ..Default::default()
        },
    ));
    sim.publish(None, (0..40).map(msg).collect());
    let command = format!(
        "{} run --max-seconds 30 --quantity 10",
        env!("CARGO_BIN_EXE_tmc-relay")
    );
    let out = tokio::process::Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .env_clear()
        .envs(env.vars(&sim.gateway_url()))
        .env("RUST_LOG", "warn")
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .output()
        .await
        .expect("script (util-linux) runs");
    assert!(out.status.success(), "{out:?}");
    let screen = String::from_utf8_lossy(&out.stdout);
    assert!(
        screen.contains("consumed") && screen.contains("confirmed"),
        "no progress line on the terminal: {screen}"
    );
    assert!(screen.contains(r#""enqueued": 40"#), "{screen}");
    assert_no_secret(&out);

    sim.publish(None, (40..60).map(msg).collect());
    let piped = relay(
        &env,
        &sim.gateway_url(),
        &[("RUST_LOG", "warn")],
        &["run", "--max-seconds", "30", "--quantity", "10"],
    )
    .await;
    assert!(piped.status.success());
    assert!(
        !String::from_utf8_lossy(&piped.stderr).contains("consumed"),
        "progress written to a pipe"
    );
}

/// A `tmc-relay run` against the simulator and the in-memory fake-aws, whose stderr lines the
/// test can wait for.
struct Running {
    child: tokio::process::Child,
    stderr: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

/// The fake-aws, its relay queue's name, and the relay's environment against it.
async fn fake_aws(send_latency: Duration) -> (FakeAws, HashMap<&'static str, String>) {
    let fake = FakeAws::start(
        "127.0.0.1:0".parse().unwrap(),
        FakeAwsConfig::memory().with_rules(Rules::none().with(
            "SendMessageBatch",
            OpRules {
                latency_ms: u64::try_from(send_latency.as_millis()).unwrap(),
                ..OpRules::default()
            },
        )),
    )
    .await
    .unwrap();
    let mem = fake.memory().unwrap();
    let vars = HashMap::from([
        ("RELAY_QUEUE_URL", mem.create_queue("relay").unwrap()),
        ("PARKING_QUEUE_URL", mem.create_queue("parking").unwrap()),
        ("DEDUP_TABLE_NAME", "dedup".to_owned()),
        ("AWS_ENDPOINT_URL", fake.endpoint()),
        ("AWS_ACCESS_KEY_ID", "test".to_owned()),
        ("AWS_SECRET_ACCESS_KEY", "test".to_owned()),
        ("AWS_REGION", "us-east-1".to_owned()),
    ]);
    mem.create_table("dedup", &[("pk", "S")]).unwrap();
    (fake, vars)
}

impl Running {
    fn start(
        sim: &tmc_sim::SimServer,
        aws: &HashMap<&'static str, String>,
        args: &[&str],
    ) -> Running {
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_tmc-relay"))
            .env_clear()
            .envs(aws)
            .env("TOP_APP_KEY", support::APP_KEY)
            .env("TOP_APP_SECRET", SECRET)
            .env("TOP_ENDPOINT", sim.gateway_url())
            .env("RUST_LOG", "info")
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let pipe = child.stderr.take().unwrap();
        let lines = std::sync::Arc::clone(&stderr);
        tokio::spawn(async move {
            use tokio::io::AsyncBufReadExt;
            let mut reader = tokio::io::BufReader::new(pipe).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                lines.lock().unwrap().push(line);
            }
        });
        Running { child, stderr }
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }

    /// Sends SIGINT (`kill -INT`: the test crate has no signal API of its own).
    async fn interrupt(&self) {
        let pid = self.child.id().expect("still running");
        let status = tokio::process::Command::new("kill")
            .args(["-INT", &pid.to_string()])
            .status()
            .await
            .unwrap();
        assert!(status.success());
    }

    /// Waits (hang guard: `within`) until stderr has a line containing `needle`.
    async fn wait_for_stderr(&self, needle: &str, within: Duration) {
        let started = tokio::time::Instant::now();
        while !self
            .stderr
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains(needle))
        {
            assert!(
                started.elapsed() < within,
                "no {needle:?} on stderr: {}",
                self.stderr()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits (hang guard: `within`) for the exit; the status and stdout.
    async fn finish(self, within: Duration) -> (std::process::ExitStatus, String, String) {
        let stderr = std::sync::Arc::clone(&self.stderr);
        let out = tokio::time::timeout(within, self.child.wait_with_output())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "still running after {within:?}: {}",
                    stderr.lock().unwrap().join("\n")
                )
            })
            .unwrap();
        // The reader has the last lines once the pipe closed.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let err = stderr.lock().unwrap().join("\n");
        (
            out.status,
            String::from_utf8_lossy(&out.stdout).into_owned(),
            err,
        )
    }
}

/// Waits (hang guard) until the relay has sent a first SQS request: a batch is in hand.
async fn until_a_batch_is_at_sqs(fake: &FakeAws, run: &Running) {
    let started = tokio::time::Instant::now();
    while fake.stats().op("SendMessageBatch").requests == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no SQS request: {}",
            run.stderr()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The ids in the in-memory relay queue, and the ids the simulator saw confirmed.
fn in_sqs_and_confirmed(
    fake: &FakeAws,
    sim: &tmc_sim::SimServer,
) -> (BTreeSet<String>, BTreeSet<String>) {
    let in_sqs = fake
        .memory()
        .unwrap()
        .messages("relay")
        .unwrap()
        .iter()
        .map(|m| {
            let body: serde_json::Value = serde_json::from_str(&m.body).unwrap();
            body["id"].as_str().unwrap().to_owned()
        })
        .collect();
    let confirmed = sim
        .state()
        .messages
        .into_iter()
        .filter(|(_, m)| m.confirmed_at_ms.is_some())
        .map(|(id, _)| id)
        .collect();
    (in_sqs, confirmed)
}

/// A `run` that would go on polling for ten minutes: only a signal ends it early.
const FOLLOWING_RUN: &[&str] = &[
    "run",
    "--mode",
    "follow",
    "--max-seconds",
    "600",
    "--quantity",
    "50",
];

/// SIGINT to a following `run --max-seconds 600` while a batch is at SQS: it consumes no
/// more, the batches in hand are enqueued, recorded and confirmed, the report is printed and
/// the exit code is 3. What SQS holds is exactly what was confirmed: every message consumed
/// and enqueued is confirmed, and nothing confirmed is missing from SQS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_stops_a_following_run_after_its_batches_in_hand() {
    let sim = sim(Duration::from_secs(300)).await;
    sim.generate(None, 500);
    // Each SQS request takes 2 s: the signal comes while a batch waits for SQS.
    let (fake, aws) = fake_aws(Duration::from_secs(2)).await;
    let run = Running::start(&sim, &aws, FOLLOWING_RUN);
    until_a_batch_is_at_sqs(&fake, &run).await;
    let consumes_at_signal = sim.state().consume_calls;
    run.interrupt().await;
    let (status, stdout, stderr) = run.finish(Duration::from_secs(120)).await;

    assert_eq!(status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("SIGINT: stopping"), "{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).expect("the JSON report");
    assert_eq!(report["stop_reason"], "stopped", "{report}");
    assert_eq!(report["abandoned"], 0, "{report}");
    let consumed = report["consumed"].as_u64().unwrap();
    assert!(consumed > 0, "{report}");
    assert_eq!(report["confirmed"].as_u64(), Some(consumed), "{report}");
    // A consume already on the wire may complete; none starts after the signal.
    let st = sim.state();
    assert!(
        st.consume_calls <= consumes_at_signal + 1,
        "{} consumes after the signal",
        st.consume_calls - consumes_at_signal
    );
    assert!(st.pending > 0, "it stopped before draining the group");
    let (in_sqs, confirmed) = in_sqs_and_confirmed(&fake, &sim);
    assert_eq!(confirmed.len() as u64, consumed);
    assert_eq!(in_sqs, confirmed);
    fake.shutdown().await;
}

/// A second SIGINT while the batches in hand still wait for SQS exits at once with 130 (not
/// the grace's end, which would be 3 with a report): no report, and nothing confirmed that
/// is not in SQS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sigint_exits_at_once() {
    let sim = sim(Duration::from_secs(300)).await;
    sim.generate(None, 500);
    // SQS answers after 10 minutes: the batch in hand cannot finish within the grace.
    let (fake, aws) = fake_aws(Duration::from_secs(600)).await;
    let run = Running::start(&sim, &aws, FOLLOWING_RUN);
    until_a_batch_is_at_sqs(&fake, &run).await;
    run.interrupt().await;
    // Only once the first was seen: two signals in a row may be taken for one.
    run.wait_for_stderr("SIGINT: stopping", Duration::from_secs(60))
        .await;
    run.interrupt().await;
    let (status, stdout, stderr) = run.finish(Duration::from_secs(120)).await;

    assert_eq!(status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("SIGINT again: exiting now"), "{stderr}");
    assert!(stdout.trim().is_empty(), "no report: {stdout}");
    let (in_sqs, confirmed) = in_sqs_and_confirmed(&fake, &sim);
    assert!(confirmed.is_subset(&in_sqs), "{confirmed:?} vs {in_sqs:?}");
    assert!(
        confirmed.is_empty(),
        "no receipt was written: {confirmed:?}"
    );
    fake.shutdown().await;
}
