//! CPU per message as instructions: `tmc-relay run` under valgrind's callgrind, with no
//! injected latency, over N and 2N messages; (I(2N) - I(N)) / N leaves start-up out.

use std::path::Path;
use std::process::{Command, Stdio};

use crate::report::Table;
use crate::stand::{check_json, Bins, Stand};
use crate::{progress, Args, Plan};

/// Counts the instructions per message, adds the row and the note, and returns the count for
/// the cost section.
pub(crate) async fn measure(
    stand: &Stand,
    bins: &Bins,
    plan: &Plan,
    args: &Args,
    t: &mut Table,
    notes: &mut Vec<String>,
) -> Result<f64, String> {
    progress("callgrind (valgrind runs the relay ~50× slower)");
    let n = plan.callgrind;
    let i1 = stand
        .callgrind_run(&bins.relay, n, args.profile_dir.as_deref())
        .await?;
    let i2 = stand
        .callgrind_run(&bins.relay, 2 * n, args.profile_dir.as_deref())
        .await?;
    let per = i2.saturating_sub(i1) as f64 / n as f64;
    // The same with every batch archived (gzip JSON Lines, one S3 PutObject per batch).
    stand
        .archive
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let a1 = stand.callgrind_run(&bins.relay, n, None).await;
    let a2 = stand.callgrind_run(&bins.relay, 2 * n, None).await;
    stand
        .archive
        .store(false, std::sync::atomic::Ordering::Relaxed);
    let archived = a2?.saturating_sub(a1?) as f64 / n as f64;
    notes.push(
        "Callgrind: valgrind hides SHA-NI, so the SHA-256 of the SDK's SigV4 signatures runs \
         the portable code under it (about a third of the instructions counted); natively and on \
         Graviton it runs in hardware. The rest is mostly malloc/free, JSON and the SDK's \
         per-request orchestration (--profile-dir keeps the profiles)."
            .to_owned(),
    );
    t.row(
        &format!("CPU per message, callgrind (I({}) − I({n})) / {n}", 2 * n),
        format!(
            "{:.0} k instructions/msg (I({n}) = {:.1} M)",
            per / 1e3,
            i1 as f64 / 1e6
        ),
        "≤ 250 k",
        Some(per <= 250e3),
    );
    t.row(
        "CPU per message with the archive on (same measure)",
        format!(
            "{:.0} k instructions/msg ({:.2} × without)",
            archived / 1e3,
            archived / per
        ),
        "≤ 1.15 × without",
        Some(archived <= 1.15 * per),
    );
    Ok(per)
}

impl Stand {
    /// Instructions `tmc-relay run` executes relaying `n` generated messages, under callgrind,
    /// with no injected latency; the profile is kept in `keep` when given.
    async fn callgrind_run(
        &self,
        bin: &Path,
        n: usize,
        keep: Option<&Path>,
    ) -> Result<u64, String> {
        self.set_latency(false).await?;
        let names = self.fresh().await?;
        self.generate(&names.group, n).await?;
        let dir = std::env::temp_dir().join(format!("tmc-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let log = dir.join(format!("valgrind-{n}.log"));
        let mut cmd = Command::new("valgrind");
        cmd.arg("--tool=callgrind")
            .arg(format!(
                "--callgrind-out-file={}",
                dir.join("callgrind.out").display()
            ))
            .arg(format!("--log-file={}", log.display()))
            .arg(bin)
            .args(["run", "--max-seconds", "600"])
            .env_clear()
            .envs(self.env(&names, 1))
            .env("PATH", std::env::var("PATH").unwrap_or_default());
        let out = tokio::task::spawn_blocking(move || {
            cmd.stdin(Stdio::null())
                .stderr(Stdio::null())
                .output()
                .map_err(|e| format!("cannot run valgrind: {e}"))
        })
        .await
        .map_err(|e| e.to_string())??;
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(keep) = keep {
            std::fs::create_dir_all(keep)
                .and_then(|()| {
                    std::fs::copy(
                        dir.join("callgrind.out"),
                        keep.join(format!("callgrind.{n}.out")),
                    )
                })
                .map_err(|e| format!("cannot keep the profile in {}: {e}", keep.display()))?;
        }
        let _ = std::fs::remove_dir_all(&dir);
        self.set_latency(true).await?;
        check_json(&String::from_utf8_lossy(&out.stdout), n)?;
        text.lines()
            .find_map(|l| {
                l.split_once("Collected :")
                    .map(|(_, n)| n.trim().to_owned())
            })
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| format!("no instruction count in valgrind's log: {text}"))
    }
}
