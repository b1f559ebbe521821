//! Peak memory: the Lambda binary serving one invocation at the template's 256 MB, behind a
//! stand-in Runtime API, and `tmc-relay run` with one and four loops.

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::sync::Arc;

use crate::report::Table;
use crate::stand::{check_json, Bins, Stand};
use crate::{plural, progress, sys, Plan};

/// Measures the peak memory runs and adds their rows.
pub(crate) async fn measure(
    stand: &Stand,
    bins: &Bins,
    plan: &Plan,
    cores: usize,
    t: &mut Table,
) -> Result<(), String> {
    // The deployed function: the Lambda binary at the template's 256 MB, one invocation.
    progress("peak memory, the Lambda (bootstrap at 256 MB)");
    let mut peaks = Vec::new();
    let mut cpu = 0.0;
    for _ in 0..plan.memory_runs {
        let m = stand
            .lambda_memory_run(&bins.bootstrap, plan.memory)
            .await?;
        peaks.push(m.peak_kib as f64 / 1024.0);
        cpu += m.cpu_secs / plan.memory_runs as f64;
    }
    let max = peaks.iter().copied().fold(0.0, f64::max);
    let min = peaks.iter().copied().fold(f64::MAX, f64::min);
    t.row(
        &format!(
            "Peak memory (VmHWM), the Lambda: bootstrap at 256 MB (1 runtime worker), one \
             invocation, 1 loop, {} msgs of 4 KiB",
            plan.memory
        ),
        format!(
            "{max:.1} MiB{} (process CPU {:.0} µs/msg incl. start-up)",
            if plan.memory_runs > 1 {
                format!(", max of {} runs (min {min:.1})", plan.memory_runs)
            } else {
                String::new()
            },
            cpu * 1e6 / plan.memory as f64
        ),
        "≤ 40 MiB",
        Some(max <= 40.0),
    );
    // The command line, with tokio's default of one worker per core.
    for loops in [1u32, 4] {
        progress(&format!("peak memory, tmc-relay run, {loops} loop(s)"));
        let m = stand
            .memory_run(&bins.relay, loops, plan.memory, &[])
            .await?;
        t.row(
            &format!(
                "Peak memory (VmHWM), tmc-relay run ({cores} runtime workers), {loops} loop{}, {} msgs of 4 KiB",
                plural(loops),
                plan.memory
            ),
            format!(
                "{:.1} MiB (process CPU {:.0} µs/msg incl. start-up)",
                m.peak_kib as f64 / 1024.0,
                m.cpu_secs * 1e6 / plan.memory as f64
            ),
            "",
            None,
        );
    }
    Ok(())
}

/// Peak memory and CPU of one child run.
struct Measured {
    peak_kib: u64,
    cpu_secs: f64,
}

impl Stand {
    /// `tmc-relay run` as a child over `n` messages of 4 KiB: its peak RSS.
    async fn memory_run(
        &self,
        bin: &Path,
        loops: u32,
        n: usize,
        extra: &[(&str, &str)],
    ) -> Result<Measured, String> {
        let names = self.fresh().await?;
        self.publish_4k(&names.group, n).await?;
        let mut cmd = Command::new(bin);
        cmd.args(["run", "--max-seconds", "600"])
            .env_clear()
            .envs(self.env(&names, loops))
            .envs(extra.iter().copied());
        let (out, usage) = tokio::task::spawn_blocking(move || sys::run_measured(cmd))
            .await
            .map_err(|e| e.to_string())??;
        check_json(&out, n)?;
        Ok(Measured {
            peak_kib: usage.peak_kib,
            cpu_secs: usage.cpu_secs,
        })
    }

    /// Peak memory and CPU of the Lambda binary serving one invocation that relays `n`
    /// messages of 4 KiB, behind a stand-in Lambda Runtime API; the process is killed once it
    /// has posted its answer and asked for the next event.
    async fn lambda_memory_run(&self, bootstrap: &Path, n: usize) -> Result<Measured, String> {
        use axum::routing::{get, post};

        let names = self.fresh().await?;
        self.publish_4k(&names.group, n).await?;
        let (answer_tx, answer_rx) = mpsc::channel::<Result<String, String>>();
        let handed_out = Arc::new(AtomicU32::new(0));
        let next = move || {
            let handed_out = Arc::clone(&handed_out);
            async move {
                if handed_out.fetch_add(1, Ordering::SeqCst) > 0 {
                    // One invocation only: the next one never comes.
                    std::future::pending::<()>().await;
                }
                let deadline = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_millis()
                    + 600_000;
                (
                    [
                        ("lambda-runtime-aws-request-id", "bench-1".to_owned()),
                        ("lambda-runtime-deadline-ms", deadline.to_string()),
                        (
                            "lambda-runtime-invoked-function-arn",
                            "arn:aws:lambda:us-east-1:123456789012:function:tmc-relay".to_owned(),
                        ),
                    ],
                    "{}",
                )
            }
        };
        let posted =
            move |axum::extract::Path((_id, kind)): axum::extract::Path<(String, String)>,
                  body: String| {
                let answer_tx = answer_tx.clone();
                async move {
                    let _ = answer_tx.send(if kind == "response" {
                        Ok(body)
                    } else {
                        Err(format!("the function answered {kind}: {body}"))
                    });
                    "{}"
                }
            };
        let api = axum::Router::new()
            .route("/2018-06-01/runtime/invocation/next", get(next))
            .route("/2018-06-01/runtime/invocation/{id}/{kind}", post(posted));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| e.to_string())?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let server = tokio::spawn(async move { axum::serve(listener, api).await });

        let mut cmd = Command::new(bootstrap);
        cmd.env_clear()
            .envs(self.lambda_env(&names))
            .env("AWS_LAMBDA_RUNTIME_API", addr.to_string());
        let measured =
            tokio::task::spawn_blocking(move || sys::run_measured_until(cmd, &answer_rx)).await;
        server.abort();
        let (out, usage) = measured.map_err(|e| e.to_string())??;
        check_json(&out, n)?;
        Ok(Measured {
            peak_kib: usage.peak_kib,
            cpu_secs: usage.cpu_secs,
        })
    }
}
