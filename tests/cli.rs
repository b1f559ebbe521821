//! The `tmc-relay` binary as an operator runs it: report on stdout, logs on stderr, exit codes,
//! refused input that consumes nothing, and no secret in any output.

mod support;

use std::process::Output;
use std::time::Duration;

use support::{sim, Env, SECRET};
use tmc_relay::sim::NewMessage;

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
    sim.set_faults(tmc_relay::sim::Faults::none().with(
        "taobao.tmc.messages.consume",
        tmc_relay::sim::MethodFaults {
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
