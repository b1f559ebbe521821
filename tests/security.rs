//! Security: the app secret and seller session keys never reach any output (logs at debug and
//! trace, reports, errors, `Debug`, the Lambda's responses); plain http only to loopback unless
//! allowed by a setting named insecure; the client never follows the gateway elsewhere.
//!
//! Review-level checks that are not tests (recorded here so they are re-checked on change):
//! Rust's formatting macros only take literal format strings, so nothing from upstream can be
//! a format string; no code under `src/top`, `src/relay`, `src/aws`, `src/config.rs`,
//! `src/invocation.rs` or `src/wiring.rs` builds a filesystem path at all.

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::{Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::Child;
use tokio::sync::{mpsc, Mutex};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use url::Url;

use support::{sim, unique, Env, APP_KEY, SECRET};
use tmc_relay::config::{parse_endpoint, Config};
use tmc_relay::relay::RelaySettings;
use tmc_relay::top::api::USER_PERMIT;
use tmc_relay::top::{RetryPolicy, Secret, TopClient, TopConfig, TopError};
use tmc_relay::wiring::{App, WiringError};
use tmc_sim::{Faults, MethodFaults, NewMessage, Scripted};

/// A seller session key; like the app secret, it must never be printed.
const SESSION: &str = "seller-session-7f3a9c-XYZ";
/// A wrong app secret an operator typed: not the real one, still a secret.
const WRONG_SECRET: &str = "typo-secret-5d1e-QRS";

/// Fails naming the credential and where it appeared, with a little context.
fn assert_clean(what: &str, text: &str) {
    for (name, secret) in [
        ("the app secret", SECRET),
        ("the seller session key", SESSION),
        ("the wrong app secret", WRONG_SECRET),
    ] {
        if let Some(at) = text.find(secret) {
            let start = text[..at]
                .char_indices()
                .rev()
                .nth(80)
                .map_or(0, |(i, _)| i);
            panic!(
                "{name} appeared in {what}: ...{}",
                &text[start..at.saturating_add(secret.len())]
            );
        }
    }
}

fn assert_output_clean(what: &str, out: &Output) {
    assert_clean(
        &format!("{what} (stdout)"),
        &String::from_utf8_lossy(&out.stdout),
    );
    assert_clean(
        &format!("{what} (stderr)"),
        &String::from_utf8_lossy(&out.stderr),
    );
}

/// The operator's command line, with exactly these variables.
async fn tmc_relay(vars: &HashMap<String, String>, args: &[&str]) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_tmc-relay"))
        .env_clear()
        .envs(vars)
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .args(args)
        .output()
        .await
        .unwrap()
}

/// What the admin commands need: the app, the gateway, no AWS lookups.
fn admin_vars(gateway: &str, log: &str) -> HashMap<String, String> {
    HashMap::from([
        ("TOP_APP_KEY".into(), APP_KEY.into()),
        ("TOP_APP_SECRET".into(), SECRET.into()),
        ("TOP_ENDPOINT".into(), gateway.into()),
        ("TOP_SESSION".into(), SESSION.into()),
        ("AWS_REGION".into(), "us-east-1".into()),
        ("AWS_ACCESS_KEY_ID".into(), "test".into()),
        ("AWS_SECRET_ACCESS_KEY".into(), "test".into()),
        ("AWS_EC2_METADATA_DISABLED".into(), "true".into()),
        ("RUST_LOG".into(), log.into()),
    ])
}

/// A local port nothing listens on.
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

fn top_config(gateway: &str, secret: &str) -> TopConfig {
    let mut cfg = TopConfig::new(Url::parse(gateway).unwrap(), APP_KEY, Secret::new(secret));
    cfg.retry = RetryPolicy {
        max_attempts: 1,
        base: Duration::from_millis(1),
        cap: Duration::from_millis(1),
    };
    cfg
}

fn soon() -> Instant {
    Instant::now() + Duration::from_secs(10)
}

fn assert_error_clean(label: &str, e: &TopError) {
    assert_clean(&format!("{label} Display"), &e.to_string());
    assert_clean(&format!("{label} Debug"), &format!("{e:?}"));
    assert_clean(&format!("{label} Debug (alternate)"), &format!("{e:#?}"));
}

/// Every `TopError` variant, produced by a real failure of a call carrying the app secret and a
/// session key, shows neither in `Display` or `Debug`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_top_error_variant_hides_the_secret_and_session() {
    let sim = sim(Duration::from_secs(300)).await;
    let session = Secret::new(SESSION);
    let client = TopClient::new(top_config(&sim.gateway_url(), SECRET)).unwrap();
    let mut seen = Vec::new();

    sim.script(
        USER_PERMIT,
        vec![Scripted::json(
            r#"{"error_response":{"code":27,"msg":"Invalid session","sub_code":"isv.session-expired"}}"#,
        )],
    );
    let e = client
        .user_permit(&session, None, soon())
        .await
        .unwrap_err();
    assert!(matches!(e, TopError::Api { code: 27, .. }), "{e:?}");
    seen.push(("Api", e));

    sim.script(USER_PERMIT, vec![Scripted::status(502, "bad gateway")]);
    let e = client
        .user_permit(&session, None, soon())
        .await
        .unwrap_err();
    assert!(matches!(e, TopError::Http { status: 502, .. }), "{e:?}");
    seen.push(("Http", e));

    sim.script(USER_PERMIT, vec![Scripted::json("<html>login</html>")]);
    let e = client
        .user_permit(&session, None, soon())
        .await
        .unwrap_err();
    assert!(matches!(e, TopError::Decode { .. }), "{e:?}");
    seen.push(("Decode", e));

    let mut small = top_config(&sim.gateway_url(), SECRET);
    small.max_body_bytes = 16;
    let e = TopClient::new(small)
        .unwrap()
        .user_permit(&session, None, soon())
        .await
        .unwrap_err();
    assert!(matches!(e, TopError::TooLarge { .. }), "{e:?}");
    seen.push(("TooLarge", e));

    let nowhere = format!("http://127.0.0.1:{}/router/rest", closed_port());
    let e = TopClient::new(top_config(&nowhere, SECRET))
        .unwrap()
        .user_permit(&session, None, soon())
        .await
        .unwrap_err();
    assert!(matches!(e, TopError::Transport { .. }), "{e:?}");
    seen.push(("Transport (refused)", e));

    sim.set_faults(Faults::none().with(
        USER_PERMIT,
        MethodFaults {
            latency: Duration::from_secs(2),
            ..Default::default()
        },
    ));
    let mut slow = top_config(&sim.gateway_url(), SECRET);
    slow.request_timeout = Duration::from_millis(200);
    let e = TopClient::new(slow)
        .unwrap()
        .user_permit(&session, None, soon())
        .await
        .unwrap_err();
    assert!(
        matches!(e, TopError::Transport { timeout: true, .. }),
        "{e:?}"
    );
    seen.push(("Transport (timeout)", e));

    let e = client
        .user_permit(&Secret::new(""), None, soon())
        .await
        .unwrap_err();
    assert!(matches!(e, TopError::InvalidRequest { .. }), "{e:?}");
    seen.push(("InvalidRequest", e));

    let e = client
        .user_permit(&session, None, Instant::now())
        .await
        .unwrap_err();
    assert!(matches!(e, TopError::Deadline { .. }), "{e:?}");
    seen.push(("Deadline", e));

    for (label, e) in &seen {
        assert_error_clean(label, e);
    }
}

/// `WiringError` (a bad Secrets Manager value, a configuration conflict) names what to fix and
/// never the secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wiring_errors_show_no_secret() {
    let env = Env::new(false).await;
    let sm = aws_sdk_secretsmanager::Client::new(&env.sdk);
    let arn = sm
        .create_secret()
        .name(unique("tmc-app-secret"))
        .secret_string(format!(r#"{{"not_app_secret":"{SECRET}"}}"#))
        .send()
        .await
        .unwrap()
        .arn()
        .unwrap()
        .to_owned();
    let mut vars = env.vars("http://127.0.0.1:1/router/rest");
    vars.remove("TOP_APP_SECRET");
    vars.insert("TOP_APP_SECRET_ARN".into(), arn.clone());
    let cfg = Config::from_lookup(|k| vars.get(k).cloned()).unwrap();
    let err = match App::build_with(cfg, &env.sdk, RelaySettings::default()).await {
        Ok(_) => panic!("a secret without app_secret was accepted"),
        Err(e) => e,
    };
    assert!(matches!(err, WiringError::Secret { .. }), "{err:?}");
    assert!(err.to_string().contains("TOP_APP_SECRET_ARN"), "{err}");
    assert_clean("WiringError::Secret Display", &err.to_string());
    assert_clean("WiringError::Secret Debug", &format!("{err:?}"));

    vars.insert("TOP_APP_SECRET".into(), SECRET.into());
    let conflict = Config::from_lookup(|k| vars.get(k).cloned()).unwrap_err();
    let err = WiringError::from(conflict);
    assert!(err.to_string().contains("TOP_APP_SECRET"), "{err}");
    assert_clean("WiringError::Config Display", &err.to_string());
    assert_clean("WiringError::Config Debug", &format!("{err:?}"));
}

/// `tmc-relay run` at debug level prints neither the secret nor a wrong secret on its error
/// paths: a wrong secret, a missing queue, a missing table, an unreachable gateway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_run_error_paths_never_print_the_secret() {
    let sim = sim(Duration::from_secs(300)).await;
    let env = Env::new(false).await;
    sim.publish(
        None,
        vec![NewMessage::new("taobao_trade_TradeCreate", r#"{"tid":1}"#)],
    );
    let missing_queue = format!("{}/000000000000/no-such-queue", support::moto());
    let nowhere = format!("http://127.0.0.1:{}/router/rest", closed_port());
    let cases: [(&str, &str, &str); 4] = [
        ("wrong secret", "TOP_APP_SECRET", WRONG_SECRET),
        ("missing queue", "RELAY_QUEUE_URL", &missing_queue),
        ("missing table", "DEDUP_TABLE_NAME", "no-such-table"),
        ("unreachable gateway", "TOP_ENDPOINT", &nowhere),
    ];
    for (label, var, value) in cases {
        let mut vars = env.vars(&sim.gateway_url());
        vars.insert("RUST_LOG".into(), "debug".into());
        vars.insert(var.into(), value.into());
        let out = tmc_relay(&vars, &["run", "--max-seconds", "3"]).await;
        assert!(!out.stderr.is_empty(), "{label}: no logs captured");
        assert_output_clean(label, &out);
    }
    assert_eq!(sim.state().confirmed, 0);
}

/// The admin commands, run with the session in `TOP_SESSION` and logs at trace level, never
/// print the session key or the secret: on success, with `--json`, with a wrong secret, with
/// a revoked session answer, and when the gateway cannot be reached.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_commands_never_print_the_session_or_secret() {
    let sim = sim(Duration::from_secs(300)).await;
    let vars = admin_vars(&sim.gateway_url(), "trace");
    for args in [
        vec!["permit"],
        vec!["--json", "permit", "--topics", "taobao_trade_TradeCreate"],
        vec!["jms", "add", "--topics", "taobao_trade_TradeCreate"],
        vec!["--json", "jms", "add"],
    ] {
        let out = tmc_relay(&vars, &args).await;
        assert!(out.status.success(), "{args:?}: {out:?}");
        assert_output_clean(&format!("{args:?}"), &out);
    }

    let mut wrong = vars.clone();
    wrong.insert("TOP_APP_SECRET".into(), WRONG_SECRET.into());
    let out = tmc_relay(&wrong, &["permit"]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("TOP_APP_SECRET"));
    assert_output_clean("permit with a wrong secret", &out);

    sim.script(
        USER_PERMIT,
        vec![Scripted::json(
            r#"{"error_response":{"code":27,"msg":"Invalid session"}}"#,
        )],
    );
    let out = tmc_relay(&vars, &["permit"]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("session"));
    assert_output_clean("permit with a revoked session", &out);

    let mut unreachable = vars.clone();
    unreachable.insert(
        "TOP_ENDPOINT".into(),
        format!("http://127.0.0.1:{}/router/rest", closed_port()),
    );
    for args in [vec!["permit"], vec!["jms", "add"]] {
        let out = tmc_relay(&unreachable, &args).await;
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("transport error"),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_output_clean(&format!("{args:?} against a closed port"), &out);
    }
}

/// A stand-in for the Lambda Runtime API: hands out queued events, collects what the function
/// posts back.
struct Runtime {
    addr: SocketAddr,
    events: mpsc::UnboundedSender<(String, String)>,
    results: mpsc::UnboundedReceiver<(String, String)>,
    seq: usize,
}

struct RuntimeState {
    events: Mutex<mpsc::UnboundedReceiver<(String, String)>>,
    results: mpsc::UnboundedSender<(String, String)>,
}

async fn next_event(State(s): State<Arc<RuntimeState>>) -> Response {
    let Some((id, payload)) = s.events.lock().await.recv().await else {
        return Response::builder().status(500).body(Body::empty()).unwrap();
    };
    let deadline = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_millis()
        + 60_000;
    Response::builder()
        .header("lambda-runtime-aws-request-id", id)
        .header("lambda-runtime-deadline-ms", deadline.to_string())
        .header(
            "lambda-runtime-invoked-function-arn",
            "arn:aws:lambda:us-east-1:123456789012:function:tmc-relay",
        )
        .body(Body::from(payload))
        .unwrap()
}

async fn posted(
    State(s): State<Arc<RuntimeState>>,
    Path((_id, kind)): Path<(String, String)>,
    body: Bytes,
) -> &'static str {
    let _ = s
        .results
        .send((kind, String::from_utf8_lossy(&body).into_owned()));
    "{}"
}

async fn init_error(State(s): State<Arc<RuntimeState>>, body: Bytes) -> &'static str {
    let _ = s.results.send((
        "init_error".into(),
        String::from_utf8_lossy(&body).into_owned(),
    ));
    "{}"
}

impl Runtime {
    async fn start() -> Runtime {
        let (events, events_rx) = mpsc::unbounded_channel();
        let (results_tx, results) = mpsc::unbounded_channel();
        let state = Arc::new(RuntimeState {
            events: Mutex::new(events_rx),
            results: results_tx,
        });
        let app = Router::new()
            .route("/2018-06-01/runtime/invocation/next", get(next_event))
            .route("/2018-06-01/runtime/invocation/{id}/{kind}", post(posted))
            .route("/2018-06-01/runtime/init/error", post(init_error))
            .with_state(state);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Runtime {
            addr,
            events,
            results,
            seq: 0,
        }
    }

    /// Invokes the function once: ("response" | "error", body). When it does not answer within
    /// a minute, fails with its output.
    async fn invoke(&mut self, function: &mut Option<Function>, payload: &str) -> (String, String) {
        self.seq += 1;
        self.events
            .send((format!("req-{}", self.seq), payload.to_owned()))
            .unwrap();
        match tokio::time::timeout(Duration::from_secs(60), self.results.recv()).await {
            Ok(Some(answer)) => answer,
            _ => {
                let (_, stderr) = function.take().unwrap().stop().await;
                panic!("the function did not answer {payload}: {stderr}");
            }
        }
    }

    /// Starts the bootstrap binary against this runtime, its output captured.
    fn spawn_function(&self, vars: &HashMap<String, String>) -> Option<Function> {
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_bootstrap"))
            .env_clear()
            .envs(vars)
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("AWS_LAMBDA_RUNTIME_API", format!("http://{}", self.addr))
            .env("AWS_LAMBDA_FUNCTION_NAME", "tmc-relay")
            .env("AWS_LAMBDA_FUNCTION_VERSION", "1")
            .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "256")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        // Read as it is written: a full pipe would block the function mid-pass.
        let mut out = child.stdout.take().unwrap();
        let mut err = child.stderr.take().unwrap();
        Some(Function {
            child,
            stdout: tokio::spawn(async move {
                let mut buf = Vec::new();
                let _ = out.read_to_end(&mut buf).await;
                buf
            }),
            stderr: tokio::spawn(async move {
                let mut buf = Vec::new();
                let _ = err.read_to_end(&mut buf).await;
                buf
            }),
        })
    }
}

/// A running `bootstrap` and everything it has printed.
struct Function {
    child: Child,
    stdout: JoinHandle<Vec<u8>>,
    stderr: JoinHandle<Vec<u8>>,
}

impl Function {
    /// Kills the function: (stdout, stderr).
    async fn stop(mut self) -> (String, String) {
        self.child.start_kill().unwrap();
        let _ = self.child.wait().await;
        let text = |b: Vec<u8>| String::from_utf8_lossy(&b).into_owned();
        (
            text(self.stdout.await.unwrap()),
            text(self.stderr.await.unwrap()),
        )
    }
}

/// The `bootstrap` Lambda, reading its secret from Secrets Manager and logging at debug level,
/// prints no secret in its logs, its EMF line or its answers: a scheduled pass, a refused
/// payload, and a pass failing on a wrong secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstrap_lambda_never_prints_the_secret() {
    let sim = sim(Duration::from_secs(300)).await;
    let env = Env::new(false).await;
    sim.publish(
        None,
        (0..5)
            .map(|i| NewMessage::new("taobao_trade_TradeCreate", format!(r#"{{"tid":{i}}}"#)))
            .collect(),
    );
    let sm = aws_sdk_secretsmanager::Client::new(&env.sdk);
    let mut arn_of = HashMap::new();
    for value in [SECRET, WRONG_SECRET] {
        let arn = sm
            .create_secret()
            .name(unique("tmc-app-secret"))
            .secret_string(value)
            .send()
            .await
            .unwrap()
            .arn()
            .unwrap()
            .to_owned();
        arn_of.insert(value, arn);
    }
    let vars_for = |secret: &str| {
        let mut v = env.vars(&sim.gateway_url());
        v.remove("TOP_APP_SECRET");
        v.insert("TOP_APP_SECRET_ARN".into(), arn_of[secret].clone());
        v.insert("RUST_LOG".into(), "debug".into());
        v
    };
    let mut rt = Runtime::start().await;

    let mut function = rt.spawn_function(&vars_for(SECRET));
    let scheduled = r#"{"source":"aws.scheduler","detail-type":"Scheduled Event","detail":"{}"}"#;
    let (kind, body) = rt.invoke(&mut function, scheduled).await;
    assert_eq!(kind, "response", "{body}");
    assert!(body.contains(r#""enqueued":5"#), "{body}");
    assert_clean("the scheduled invocation's answer", &body);
    let (kind, body) = rt.invoke(&mut function, r#"{"quantity":"lots"}"#).await;
    assert_eq!(kind, "error", "{body}");
    assert_clean("the refused invocation's answer", &body);
    let (stdout, stderr) = function.unwrap().stop().await;
    assert!(stdout.contains("_aws"), "no EMF line on stdout: {stdout}");
    assert!(stderr.contains("DEBUG"), "no debug logs captured");
    assert_clean("bootstrap's stdout", &stdout);
    assert_clean("bootstrap's stderr", &stderr);

    sim.publish(
        None,
        vec![NewMessage::new("taobao_trade_TradeCreate", r#"{"tid":9}"#)],
    );
    let mut function = rt.spawn_function(&vars_for(WRONG_SECRET));
    let (kind, body) = rt.invoke(&mut function, "{}").await;
    assert_eq!(kind, "error", "{body}");
    assert!(body.contains("TOP_APP_SECRET"), "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["errorType"], "FatalError", "{body}");
    assert_clean("the failed invocation's answer", &body);
    let (stdout, stderr) = function.unwrap().stop().await;
    assert_clean("bootstrap's stdout (wrong secret)", &stdout);
    assert_clean("bootstrap's stderr (wrong secret)", &stderr);
}

/// A bad setting stops the `bootstrap` at start: it posts `ConfigError`, naming the variable,
/// to the Runtime API's `/init/error` (what Lambda shows the invoker), and prints no secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstrap_reports_a_bad_setting_to_init_error() {
    let vars: HashMap<String, String> = [
        ("TOP_APP_KEY", APP_KEY),
        ("TOP_APP_SECRET", SECRET),
        ("RELAY_QUEUE_URL", "http://127.0.0.1:9/000000000000/relay"),
        (
            "PARKING_QUEUE_URL",
            "http://127.0.0.1:9/000000000000/parking",
        ),
        ("DEDUP_TABLE_NAME", "tmc-dedup"),
        ("TMC_QUANTITY", "5"),
        ("AWS_REGION", "us-east-1"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let mut rt = Runtime::start().await;
    let function = rt.spawn_function(&vars);
    let (kind, body) = tokio::time::timeout(Duration::from_secs(60), rt.results.recv())
        .await
        .expect("the function reported nothing within a minute")
        .unwrap();
    assert_eq!(kind, "init_error", "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["errorType"], "ConfigError", "{body}");
    assert!(
        answer["errorMessage"]
            .as_str()
            .unwrap()
            .contains("TMC_QUANTITY"),
        "{body}"
    );
    assert_clean("the init error", &body);
    let (stdout, stderr) = function.unwrap().stop().await;
    assert_clean("bootstrap's stdout (bad setting)", &stdout);
    assert_clean("bootstrap's stderr (bad setting)", &stderr);
}

/// With `AWS_LAMBDA_LOG_FORMAT=JSON` every log line of the Lambda is a JSON object, and each
/// pass prints exactly one EMF document on stdout, whose metrics carry the report's counts and
/// the age of the oldest message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstrap_logs_json_and_one_emf_line_per_pass() {
    let sim = sim(Duration::from_secs(300)).await;
    let env = Env::new(false).await;
    let mut old = NewMessage::new("taobao_trade_TradeCreate", r#"{"tid":1}"#);
    old.pub_time = Some(tmc_relay::top::clock::wire_timestamp(
        SystemTime::now() - Duration::from_secs(7200),
    ));
    sim.publish(None, vec![old]);
    sim.publish(
        None,
        (2..5)
            .map(|i| NewMessage::new("taobao_trade_TradeCreate", format!(r#"{{"tid":{i}}}"#)))
            .collect(),
    );
    let mut vars = env.vars(&sim.gateway_url());
    vars.insert("AWS_LAMBDA_LOG_FORMAT".into(), "JSON".into());
    vars.insert("RUST_LOG".into(), "debug".into());
    let mut rt = Runtime::start().await;
    let mut function = rt.spawn_function(&vars);
    for _ in 0..2 {
        let (kind, body) = rt.invoke(&mut function, "{}").await;
        assert_eq!(kind, "response", "{body}");
    }
    let (stdout, stderr) = function.unwrap().stop().await;

    let logs: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(logs.len() > 3, "too few log lines: {stderr}");
    for line in &logs {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("log line is not JSON ({e}): {line}"));
        assert!(v["level"].is_string(), "{line}");
    }

    let emf: Vec<serde_json::Value> = stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v.get("_aws").is_some())
        .collect();
    assert_eq!(emf.len(), 2, "one EMF line per pass: {stdout}");
    let first = &emf[0];
    let declared = &first["_aws"]["CloudWatchMetrics"][0];
    assert_eq!(declared["Namespace"], "TmcRelay");
    assert_eq!(first["Enqueued"], 4);
    assert_eq!(first["Confirmed"], 4);
    let age = first["OldestMessageAgeSeconds"].as_u64().unwrap();
    assert!(
        (7200..7300).contains(&age),
        "the message published two hours ago is the oldest: {age}"
    );
    assert_eq!(
        (emf[1]["Consumed"].as_u64(), emf[1]["EmptyPolls"].as_u64()),
        (Some(0), Some(1))
    );
}

/// Hosts that only look like loopback, and plain http with the switch set to anything but true,
/// are refused; real loopback forms are accepted.
#[test]
fn plain_http_needs_true_loopback_or_the_insecure_switch() {
    for v in [
        "http://localhost.evil.example/router/rest",
        "http://127.0.0.1.nip.io/router/rest",
        "http://0.0.0.0:8080/router/rest",
        "http://[::ffff:127.0.0.1]/router/rest",
        "http://gw.api.taobao.com/router/rest",
    ] {
        let e = parse_endpoint(v, false).unwrap_err();
        assert_eq!(e.var, "TOP_ENDPOINT", "{v}");
        assert!(
            e.problem.contains("TOP_ALLOW_INSECURE_HTTP=true"),
            "{v}: {e}"
        );
    }
    for v in [
        "http://127.0.0.1:8080/router/rest",
        "http://127.9.9.9/router/rest",
        "http://[::1]:8080/router/rest",
        "http://LOCALHOST:8080/router/rest",
        "https://eco.taobao.com/router/rest",
    ] {
        assert!(parse_endpoint(v, false).is_ok(), "{v}");
    }
    let lookup = |allow: &'static str| {
        move |k: &str| {
            Some(
                match k {
                    "TOP_APP_KEY" => "12345678",
                    "TOP_APP_SECRET" => SECRET,
                    "TOP_ENDPOINT" => "http://gw.api.taobao.com/router/rest",
                    "TOP_ALLOW_INSECURE_HTTP" => allow,
                    "RELAY_QUEUE_URL" => "https://sqs.us-east-1.amazonaws.com/1/q",
                    "PARKING_QUEUE_URL" => "https://sqs.us-east-1.amazonaws.com/1/p",
                    "DEDUP_TABLE_NAME" => "tmc-dedup",
                    _ => return None,
                }
                .to_owned(),
            )
        }
    };
    assert_eq!(
        Config::from_lookup(lookup("false")).unwrap_err().var,
        "TOP_ENDPOINT"
    );
    assert_eq!(
        Config::from_lookup(lookup("maybe")).unwrap_err().var,
        "TOP_ALLOW_INSECURE_HTTP"
    );
    assert!(Config::from_lookup(lookup("true")).is_ok());
}

/// The binaries refuse a plain-http, non-loopback gateway before any request, naming the switch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binaries_refuse_plain_http_to_a_remote_gateway() {
    let remote_gateway = admin_vars("http://gw.api.taobao.com/router/rest", "debug");
    // The same for an AWS endpoint override, with its own switch.
    let mut remote_aws = admin_vars("http://127.0.0.1:9/router/rest", "debug");
    remote_aws.insert("AWS_ENDPOINT_URL".into(), "http://sqs.example.com".into());
    for (vars, var, switch) in [
        (remote_gateway, "TOP_ENDPOINT", "TOP_ALLOW_INSECURE_HTTP"),
        (
            remote_aws,
            "AWS_ENDPOINT_URL",
            "AWS_ENDPOINT_ALLOW_INSECURE_HTTP",
        ),
    ] {
        for args in [vec!["groups", "list"], vec!["run", "--max-seconds", "1"]] {
            let out = tmc_relay(&vars, &args).await;
            assert_eq!(out.status.code(), Some(2), "{args:?}");
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(err.contains(var) && err.contains(switch), "{args:?}: {err}");
        }
    }
}

/// Reads one HTTP/1.1 request (headers and a Content-Length body).
async fn read_request(s: &mut TcpStream) -> Vec<u8> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = s.read(&mut chunk).await.unwrap_or(0);
        if n == 0 {
            return buf;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            while buf.len() < end + 4 + len {
                let n = s.read(&mut chunk).await.unwrap_or(0);
                if n == 0 {
                    break;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            return buf;
        }
    }
}

/// Serves every connection with `reply`, counting requests.
async fn serve(reply: String) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&hits);
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let (reply, counter) = (reply.clone(), Arc::clone(&counter));
            tokio::spawn(async move {
                read_request(&mut s).await;
                counter.fetch_add(1, Ordering::SeqCst);
                let _ = s.write_all(reply.as_bytes()).await;
                let _ = s.shutdown().await;
            });
        }
    });
    (addr, hits)
}

/// A gateway answering with a redirect is not followed: the request (with its signature and
/// business parameters) goes nowhere but the configured endpoint, and the error says so.
#[tokio::test]
async fn redirects_are_not_followed() {
    let body = r#"{"messages":[]}"#;
    let (elsewhere, elsewhere_hits) = serve(format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    ))
    .await;
    let (gateway, gateway_hits) = serve(format!(
        "HTTP/1.1 307 Temporary Redirect\r\nLocation: http://{elsewhere}/router/rest\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    ))
    .await;
    let client =
        TopClient::new(top_config(&format!("http://{gateway}/router/rest"), SECRET)).unwrap();
    let result = client.consume(None, 10, soon()).await;
    assert_eq!(gateway_hits.load(Ordering::SeqCst), 1);
    assert_eq!(
        elsewhere_hits.load(Ordering::SeqCst),
        0,
        "the client followed the redirect"
    );
    let e = result.unwrap_err();
    assert!(e.to_string().contains("307"), "{e}");
    assert!(
        matches!(e.class(), tmc_relay::top::ErrorClass::Fatal { check } if check.contains("TOP_ENDPOINT")),
        "{:?}",
        e.class()
    );
}
