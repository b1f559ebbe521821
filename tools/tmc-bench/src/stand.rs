//! The bench's stand: the release binaries, the TMC simulator and the in-memory AWS stand-in as
//! child processes, a fresh group, queues and table for every run, and the environment the relay
//! runs with. The measuring runs themselves are `impl Stand` blocks beside their sections.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use aws_config::{BehaviorVersion, Region};
use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType,
};
use aws_sdk_sqs::config::Credentials;
use serde_json::{json, Value};

use fake_aws::{OpRules, Rules};
use tmc_sim::{Faults, MethodFaults};

use crate::{APP_KEY, CONFIRM, CONFIRM_MS, CONSUME, CONSUME_MS, DYNAMODB_MS, SECRET, SQS_MS};

/// The release binaries the bench runs.
pub(crate) struct Bins {
    pub(crate) sim: PathBuf,
    pub(crate) aws: PathBuf,
    pub(crate) relay: PathBuf,
    pub(crate) bootstrap: PathBuf,
}

impl Bins {
    pub(crate) fn find(dir: &Path) -> Result<Bins, String> {
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

/// A child process that is killed when dropped.
pub(crate) struct Server {
    child: Child,
    _stdout: BufReader<ChildStdout>,
    pub(crate) url: String,
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
    pub(crate) fn cpu(&self) -> f64 {
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
pub(crate) fn machine_cpu() -> (f64, f64) {
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

/// CPU seconds this process (and so the in-process relay) has used so far.
pub(crate) fn self_cpu() -> f64 {
    proc_cpu("/proc/self/stat")
}

/// The simulator and the AWS stand-in as child processes, plus clients to drive them.
pub(crate) struct Stand {
    pub(crate) sim: Server,
    pub(crate) aws: Server,
    http: reqwest::Client,
    pub(crate) sdk: aws_config::SdkConfig,
    /// RELAY_PARALLELISM for every run, when not the default.
    parallelism: Option<usize>,
    /// Runs archive every batch (ARCHIVE_URL into fake-aws's S3 sink) while this is on.
    pub(crate) archive: std::sync::atomic::AtomicBool,
}

/// Where the archive-on runs archive: fake-aws's memory backend accepts and counts the PUTs.
pub(crate) const BENCH_ARCHIVE: &str = "s3://tmc-bench-archive/tmc/";

static RUN: AtomicU32 = AtomicU32::new(0);

/// One run's names: TMC group, queues, table.
pub(crate) struct Names {
    pub(crate) group: String,
    relay_queue_url: String,
    parking_queue_url: String,
    table: String,
}

impl Stand {
    pub(crate) async fn start(bins: &Bins, parallelism: Option<usize>) -> Result<Stand, String> {
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
            archive: std::sync::atomic::AtomicBool::new(false),
        })
    }

    pub(crate) fn stop(self) {
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
    pub(crate) async fn set_latency(&self, on: bool) -> Result<(), String> {
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
    pub(crate) async fn fresh(&self) -> Result<Names, String> {
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
    pub(crate) async fn generate(&self, group: &str, n: usize) -> Result<(), String> {
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
    pub(crate) async fn publish_4k(&self, group: &str, n: usize) -> Result<(), String> {
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

    pub(crate) async fn top_calls(&self) -> Result<u64, String> {
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
    pub(crate) fn env(&self, names: &Names, loops: u32) -> HashMap<String, String> {
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
        if self.archive.load(std::sync::atomic::Ordering::Relaxed) {
            env.insert("ARCHIVE_URL".into(), BENCH_ARCHIVE.into());
        }
        env
    }

    /// Names for the cold-start runs, which never reach AWS.
    pub(crate) fn cold_names(&self) -> Names {
        Names {
            group: "cold".into(),
            relay_queue_url: format!("{}/000000000000/cold-relay", self.aws.url),
            parking_queue_url: format!("{}/000000000000/cold-parking", self.aws.url),
            table: "cold-dedup".into(),
        }
    }

    /// The environment Lambda gives the bootstrap (at the template's 256 MB).
    pub(crate) fn lambda_env(&self, names: &Names) -> HashMap<String, String> {
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
}

/// A child's JSON report says every message was enqueued and confirmed, or the figures mean
/// nothing.
pub(crate) fn check_json(stdout: &str, n: usize) -> Result<(), String> {
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
