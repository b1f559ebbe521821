//! The `bootstrap` Lambda served through a real Lambda Runtime API emulator (`cargo lambda
//! watch --only-lambda-apis`, from PyPI), invoked over the Lambda Invoke API with a scheduled
//! event and a backfill payload.

mod support;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use support::{sim, Env};
use tmc_sim::NewMessage;
use tokio::process::{Child, Command};

/// The project's cargo-lambda, installed by `make test` into the virtualenv.
fn cargo_lambda() -> PathBuf {
    if let Ok(p) = std::env::var("CARGO_LAMBDA") {
        return PathBuf::from(p);
    }
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/cargo-lambda");
    assert!(
        p.exists(),
        "{} is missing: run the tests with `make test`, which installs cargo-lambda",
        p.display()
    );
    p
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Kills the child when the test ends, however it ends; when the test failed, shows what the
/// child printed.
struct Guard {
    name: &'static str,
    child: Child,
    log: tempfile::NamedTempFile,
}

impl Guard {
    /// Starts `cmd` with stdout and stderr going to one temporary file.
    fn spawn(name: &'static str, cmd: &mut Command) -> Guard {
        let log = tempfile::NamedTempFile::new().unwrap();
        let child = cmd
            .stdout(Stdio::from(log.reopen().unwrap()))
            .stderr(Stdio::from(log.reopen().unwrap()))
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("could not start {name}: {e}"));
        Guard { name, child, log }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        if std::thread::panicking() {
            let out = std::fs::read_to_string(self.log.path()).unwrap_or_default();
            eprintln!(
                "--- {} output ---\n{out}--- end of {} output ---",
                self.name, self.name
            );
        }
    }
}

async fn wait_for_port(port: u16) {
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the Lambda emulator did not listen on {port}");
}

fn message(i: u64) -> NewMessage {
    NewMessage {
        id: None,
        topic: "taobao_item_ItemStockChanged".into(),
        content: format!(r#"{{"num_iid":{},"num":{}}}"#, 15_380_658_823u64 + i, i),
        user_id: 123_456_789,
        user_nick: "usernick".into(),
        pub_time: None,
        pub_app_key: None,
    }
}

async fn invoke(port: u16, payload: &str) -> (u16, serde_json::Value) {
    let url = format!("http://127.0.0.1:{port}/2015-03-31/functions/_/invocations");
    let r = reqwest::Client::new()
        .post(url)
        .body(payload.to_owned())
        .timeout(Duration::from_secs(60))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)),
    )
}

/// A scheduled event runs with the defaults; a backfill payload's limits are honoured; a bad
/// payload fails the invocation with the field named, and consumes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lambda_serves_scheduled_and_backfill_invocations() {
    let sim = sim(Duration::from_secs(300)).await;
    let env = Env::new(false).await;
    sim.publish(None, (0..30).map(message).collect());
    let port = free_port();
    let _emulator = Guard::spawn(
        "cargo lambda watch",
        Command::new(cargo_lambda())
            .args([
                "lambda",
                "watch",
                "--only-lambda-apis",
                "-A",
                "127.0.0.1",
                "-P",
                &port.to_string(),
            ])
            .current_dir(env!("CARGO_MANIFEST_DIR")),
    );
    wait_for_port(port).await;
    let _function = Guard::spawn(
        "bootstrap",
        Command::new(env!("CARGO_BIN_EXE_bootstrap"))
            .envs(env.vars(&sim.gateway_url()))
            .env(
                "AWS_LAMBDA_RUNTIME_API",
                format!("http://127.0.0.1:{port}/.rt"),
            )
            .env("AWS_LAMBDA_FUNCTION_NAME", "_")
            .env("AWS_LAMBDA_FUNCTION_VERSION", "1")
            .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "256"),
    );

    // A backfill limited to one batch of 10.
    let (status, report) = invoke(port, r#"{"quantity": 10, "max_batches": 1}"#).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["consumed"], 10, "{report}");
    assert_eq!(report["stop_reason"], "max_batches");

    // An EventBridge Scheduler event drains the rest with the defaults.
    let scheduled = r#"{"version":"0","id":"e","detail-type":"Scheduled Event","source":"aws.scheduler","account":"123456789012","time":"2026-11-22T00:00:00Z","region":"us-east-1","resources":[],"detail":"{}"}"#;
    let (status, report) = invoke(port, scheduled).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["enqueued"], 20, "{report}");
    assert_eq!(report["stop_reason"], "empty");

    // An unknown field fails the invocation and consumes nothing.
    let calls = sim.state().consume_calls;
    let (_, err) = invoke(port, r#"{"max_batch": 1}"#).await;
    assert!(
        err.to_string().contains("unknown field `max_batch`"),
        "{err}"
    );
    assert_eq!(sim.state().consume_calls, calls);
    assert_eq!(env.drain(&env.queue_url).await.len(), 30);
}
