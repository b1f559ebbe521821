//! The relay processes: real `tmc-relay run` children started, watched and SIGKILLed against
//! one simulator and one set of resources ([`Fleet`]), what each left behind ([`Pass`]), where
//! the main phase's SIGKILLs fall, and the progress line on stderr.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use fake_aws::rules::SplitMix64;
use tmc_sim::SimState;

use crate::aws::Resources;
use crate::{APP_KEY, TICK};

/// Whether a child's log showed the secret, and its last noteworthy lines.
#[derive(Clone, Debug, Default)]
pub(crate) struct ChildLog {
    pub(crate) secret_lines: u64,
    /// The last lines that were not routine warnings, secret removed, for diagnosis.
    tail: Vec<String>,
}

impl ChildLog {
    fn scan(&mut self, line: &str, secret: &str) {
        if line.contains(secret) {
            self.secret_lines += 1;
        }
        let keep = match serde_json::from_str::<Value>(line) {
            Ok(v) => v.get("level").and_then(Value::as_str) == Some("ERROR"),
            Err(_) => !line.trim().is_empty(),
        };
        if keep {
            if self.tail.len() == 8 {
                self.tail.remove(0);
            }
            self.tail.push(line.replace(secret, "***"));
        }
    }
}

/// One relay process that ended.
#[derive(Debug)]
pub(crate) struct Pass {
    /// Its `AWS_SDK_UA_APP_ID`: fake-aws names the caller of a refused request by it.
    pub(crate) app_id: String,
    /// SIGKILLed (a crash, or stopped at the end of a phase).
    pub(crate) killed: bool,
    /// None when killed by a signal.
    exit_code: Option<i32>,
    /// The JSON report it printed (absent when killed).
    pub(crate) report: Option<Value>,
    pub(crate) log: ChildLog,
    pub(crate) stdout_secret: bool,
}

impl Pass {
    pub(crate) fn count(&self, key: &str) -> u64 {
        self.report
            .as_ref()
            .and_then(|r| r.get(key))
            .and_then(Value::as_u64)
            .unwrap_or(0)
    }

    pub(crate) fn fatal_error(&self) -> Option<String> {
        let r = self.report.as_ref()?;
        (r.get("stop_reason").and_then(Value::as_str) == Some("fatal")).then(|| {
            r.get("error")
                .and_then(Value::as_str)
                .unwrap_or("fatal error")
                .to_owned()
        })
    }
}

/// A relay process that is running.
pub(crate) struct Running {
    child: Child,
    app_id: String,
    pub(crate) started: Instant,
    /// When its budget ends.
    ends_by: Instant,
    /// When the supervisor will SIGKILL it.
    pub(crate) kill_at: Option<Instant>,
    stdout: JoinHandle<String>,
    stderr: JoinHandle<ChildLog>,
}

/// Starts, watches and kills `tmc-relay run` processes pointed at one simulator and one set of
/// resources.
pub(crate) struct Fleet {
    /// The phase, in the children's names and log files.
    phase: &'static str,
    bin: PathBuf,
    /// The whole environment of a child (it inherits nothing), the secret included.
    env: Vec<(&'static str, String)>,
    pub(crate) secret: String,
    quantity: u32,
    loops: u32,
    pub(crate) running: Vec<Running>,
    pub(crate) passes: Vec<Pass>,
    pub(crate) crashes: u32,
    /// Processes SIGKILLed because they were still running when the phase stopped waiting.
    pub(crate) end_kills: u64,
    /// Where to keep the children's logs, if anywhere, and how many were started.
    pub(crate) keep_logs: Option<PathBuf>,
    started: u64,
    /// Set when a process ended on its own having consumed nothing.
    pub(crate) reaped_idle: bool,
}

impl Fleet {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        phase: &'static str,
        bin: &Path,
        gateway: &str,
        aws_endpoint: &str,
        res: &Resources,
        secret: &str,
        quantity: u32,
        loops: u32,
    ) -> Fleet {
        let env = vec![
            ("TOP_APP_KEY", APP_KEY.to_owned()),
            ("TOP_APP_SECRET", secret.to_owned()),
            ("TOP_ENDPOINT", gateway.to_owned()),
            ("RELAY_QUEUE_URL", res.relay_url.clone()),
            ("PARKING_QUEUE_URL", res.parking_url.clone()),
            ("DEDUP_TABLE_NAME", res.table.clone()),
            ("AWS_ENDPOINT_URL", aws_endpoint.to_owned()),
            ("AWS_ACCESS_KEY_ID", "test".to_owned()),
            ("AWS_SECRET_ACCESS_KEY", "test".to_owned()),
            ("AWS_REGION", "us-east-1".to_owned()),
            ("AWS_EC2_METADATA_DISABLED", "true".to_owned()),
            ("RUST_LOG", "warn".to_owned()),
            // Structured logs: the harness reads the relay's warnings about failed writes.
            ("AWS_LAMBDA_LOG_FORMAT", "json".to_owned()),
        ];
        Fleet {
            phase,
            bin: bin.to_owned(),
            env,
            secret: secret.to_owned(),
            quantity,
            loops,
            running: Vec::new(),
            passes: Vec::new(),
            crashes: 0,
            end_kills: 0,
            keep_logs: None,
            started: 0,
            reaped_idle: false,
        }
    }

    pub(crate) fn spawn(&mut self, mode: &str, seconds: u64) -> Result<(), String> {
        self.started += 1;
        let app_id = format!("chaos-{}-{}", self.phase, self.started);
        let mut cmd = Command::new(&self.bin);
        cmd.env_clear()
            .envs(self.env.iter().map(|(k, v)| (*k, v.as_str())))
            // In its user agent: fake-aws names the caller of every refused request by it.
            .env("AWS_SDK_UA_APP_ID", &app_id)
            .args(["run", "--mode", mode])
            .args(["--max-seconds", &seconds.to_string()])
            .args(["--quantity", &self.quantity.to_string()])
            .args(["--concurrency", &self.loops.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", self.bin.display()))?;
        let mut out = child.stdout.take().ok_or("child without stdout")?;
        let err = child.stderr.take().ok_or("child without stderr")?;
        let stdout = tokio::spawn(async move {
            let mut s = String::new();
            let _ = out.read_to_string(&mut s).await;
            s
        });
        let secret = self.secret.clone();
        let keep = self
            .keep_logs
            .as_ref()
            .map(|d| d.join(format!("{app_id}.log")));
        let stderr = tokio::spawn(async move {
            let mut log = ChildLog::default();
            let mut kept = String::new();
            let mut lines = BufReader::new(err).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                log.scan(&line, &secret);
                if keep.is_some() {
                    kept.push_str(&line.replace(&secret, "***"));
                    kept.push('\n');
                }
            }
            if let Some(path) = keep {
                let _ = tokio::fs::write(path, kept).await;
            }
            log
        });
        self.running.push(Running {
            child,
            app_id,
            started: Instant::now(),
            ends_by: Instant::now() + Duration::from_secs(seconds),
            kill_at: None,
            stdout,
            stderr,
        });
        Ok(())
    }

    async fn finish(&mut self, mut r: Running, killed: bool) -> Result<(), String> {
        if killed {
            // SIGKILL: no chance to finish a batch, complete or confirm.
            r.child
                .start_kill()
                .map_err(|e| format!("cannot kill a relay process: {e}"))?;
        }
        let status = r
            .child
            .wait()
            .await
            .map_err(|e| format!("cannot wait for a relay process: {e}"))?;
        let stdout = r.stdout.await.unwrap_or_default();
        let log = r.stderr.await.unwrap_or_default();
        let pass = Pass {
            app_id: r.app_id,
            killed,
            exit_code: status.code(),
            report: serde_json::from_str(&stdout).ok(),
            stdout_secret: stdout.contains(&self.secret),
            log,
        };
        if killed {
            self.crashes += 1;
        } else if pass.count("consumed") == 0 {
            self.reaped_idle = true;
        }
        if !killed && pass.exit_code == Some(2) {
            // The relay refused its configuration or arguments: nothing will work.
            return Err(format!(
                "tmc-relay exited with status 2: {}",
                pass.log.tail.join(" | ")
            ));
        }
        self.passes.push(pass);
        Ok(())
    }

    /// Collects the processes that ended; SIGKILLs those whose moment has come.
    pub(crate) async fn reap(&mut self) -> Result<(), String> {
        let now = Instant::now();
        let mut i = 0;
        while i < self.running.len() {
            let r = &mut self.running[i];
            let ended = r
                .child
                .try_wait()
                .map_err(|e| format!("cannot watch a relay process: {e}"))?
                .is_some();
            let due = r.kill_at.is_some_and(|t| t <= now);
            if ended || due {
                let r = self.running.swap_remove(i);
                self.finish(r, !ended).await?;
            } else {
                i += 1;
            }
        }
        Ok(())
    }

    /// Waits for every running process to end on its own, for at most `limit`; then stops
    /// (SIGKILL) the rest, which by then should have nothing left to do. They are recorded as
    /// killed passes, but not as crashes.
    pub(crate) async fn wait_all(&mut self, limit: Duration) -> Result<(), String> {
        let until = Instant::now() + limit;
        while !self.running.is_empty() {
            self.reap().await?;
            if Instant::now() >= until {
                for r in std::mem::take(&mut self.running) {
                    self.finish(r, true).await?;
                    self.crashes -= 1;
                    self.end_kills += 1;
                }
                break;
            }
            tokio::time::sleep(TICK).await;
        }
        Ok(())
    }

    /// Waits for every running process to end on its own, each until its budget is over and
    /// a grace after it; then stops the rest as [`Fleet::wait_all`] does.
    pub(crate) async fn wait_budgets(&mut self, grace: Duration) -> Result<(), String> {
        let last = self.running.iter().map(|r| r.ends_by).max();
        let limit = last.map_or(Duration::ZERO, |t| {
            t.saturating_duration_since(Instant::now())
        });
        self.wait_all(limit + grace).await
    }
}

pub(crate) fn mean_batch_latency(passes: &[Pass]) -> Option<u64> {
    let all: Vec<u64> = passes
        .iter()
        .filter_map(|p| p.report.as_ref()?.get("batch_latency_ms")?.as_u64())
        .collect();
    (!all.is_empty()).then(|| all.iter().sum::<u64>() / all.len() as u64)
}

pub(crate) fn drained(s: &SimState) -> bool {
    s.pending == 0 && s.inflight == 0
}

/// Progress points (confirmed messages) at which the next SIGKILL is scheduled: uniform over
/// 5–85 % of the run, sorted, so the crashes spread over it whatever the throughput.
pub(crate) fn kill_points(rng: &mut SplitMix64, crashes: u32, messages: u64) -> Vec<u64> {
    let mut points: Vec<u64> = (0..crashes)
        .map(|_| ((0.05 + 0.80 * rng.next_f64()) * messages as f64) as u64)
        .collect();
    points.sort_unstable();
    points
}

/// A progress line on stderr every few seconds.
pub(crate) struct Ticker {
    started: Instant,
    last: Instant,
}

impl Ticker {
    pub(crate) fn new(started: Instant) -> Self {
        Self {
            started,
            last: Instant::now(),
        }
    }

    pub(crate) fn tick(&mut self, phase: &str, s: &SimState, total: usize, fleet: &Fleet) {
        if self.last.elapsed() < Duration::from_secs(5) {
            return;
        }
        self.last = Instant::now();
        eprintln!(
            "[{:>5.0}s] {phase}: confirmed {}/{total}, pending {}, in flight {}, crashes {}, passes {}",
            self.started.elapsed().as_secs_f64(),
            s.confirmed,
            s.pending,
            s.inflight,
            fleet.crashes,
            fleet.passes.len() + fleet.running.len()
        );
    }
}
