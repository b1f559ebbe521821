//! The throughput runs: the limit one consume loop cannot beat (200 messages per consume round
//! trip), the relay's rate beside it naive, pipelined and with more loops, and the AWS usage
//! per message of the pipelined 1-loop run that the cost is worked out from.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use tmc_relay::config::Config;
use tmc_relay::invocation::Overrides;
use tmc_relay::relay::{Progress, RelaySettings, Report};
use tmc_relay::top::{Secret, TopClient, TopConfig};
use tmc_relay::wiring::App;

use crate::cost::Usage;
use crate::report::Table;
use crate::stand::{machine_cpu, self_cpu, Stand};
use crate::{median, plural, progress, Plan, APP_KEY, QUANTITY, SECRET};

/// Measures the limit and the throughput runs, adds their rows and notes, and returns the
/// limit line for the report's header and the AWS usage per message for the cost.
pub(crate) async fn measure(
    stand: &Stand,
    plan: &Plan,
    settings: &RelaySettings,
    cores: usize,
    t: &mut Table,
    notes: &mut Vec<String>,
) -> Result<(String, Usage), String> {
    // One consume loop cannot beat 200 messages per consume round trip.
    progress("measuring the consume round trip");
    let (l, confirm_rt) = stand.round_trips(plan.limit_consumes).await?;
    let limit = f64::from(QUANTITY) / l.as_secs_f64();
    let limit_line = format!(
        "Limit: L = {:.1} ms, the median round trip of {} consume calls of 200 messages \
         (confirm: {:.1} ms), so one loop can do at most 200 / L = {limit:.0} msgs/s.",
        l.as_secs_f64() * 1e3,
        plan.limit_consumes,
        confirm_rt.as_secs_f64() * 1e3,
    );
    // (loops, runtime worker threads: None = this process's runtime, one per core).
    let configs: [(u32, Option<usize>); 5] =
        [(1, None), (2, None), (4, None), (1, Some(1)), (4, Some(1))];
    let mut naive = Vec::new();
    let mut piped: Vec<Vec<Run>> = vec![Vec::new(); configs.len()];
    for _ in 0..plan.repeats {
        progress("throughput: naive, 1 loop");
        let s = RelaySettings {
            pipeline_depth: 0,
            ..settings.clone()
        };
        naive.push(stand.relay_run(1, s, plan.naive, None, None).await?);
        for (i, (loops, threads)) in configs.into_iter().enumerate() {
            progress(&format!(
                "throughput: pipelined, {loops} loop(s){}",
                threads.map_or(String::new(), |k| format!(", {k} runtime thread(s)"))
            ));
            let n = plan.per_loop * loops as usize;
            let run = stand
                .relay_run(loops, settings.clone(), n, None, threads)
                .await?;
            piped[i].push(run);
        }
    }
    // One loop again, every batch archived (one S3 PutObject each, into fake-aws's sink).
    let mut archived = Vec::new();
    stand
        .archive
        .store(true, std::sync::atomic::Ordering::Relaxed);
    for _ in 0..plan.repeats {
        progress("throughput: pipelined, 1 loop, archive on");
        let run = stand
            .relay_run(1, settings.clone(), plan.per_loop, None, None)
            .await;
        if run.is_err() {
            stand
                .archive
                .store(false, std::sync::atomic::Ordering::Relaxed);
        }
        archived.push(run?);
    }
    stand
        .archive
        .store(false, std::sync::atomic::Ordering::Relaxed);
    let archived = median_run(archived);
    let sequential = if plan.sequential > 0 {
        progress("throughput: fully sequential, 1 loop");
        let s = RelaySettings {
            pipeline_depth: 0,
            ..settings.clone()
        };
        Some(
            stand
                .relay_run(1, s, plan.sequential, Some(1), None)
                .await?,
        )
    } else {
        None
    };
    let naive = median_run(naive);
    let piped: Vec<Run> = piped.into_iter().map(median_run).collect();
    let one = piped[0].clone();
    let busy = |r: &Run| {
        let of = |x: f64| x * 100.0 / (r.wall * cores as f64);
        format!(
            "CPU: relay {:.0}%, sim {:.0}%, aws {:.0}%, machine {:.0}% of {cores} cores",
            of(r.cpu.relay),
            of(r.cpu.sim),
            of(r.cpu.aws),
            r.cpu.machine * 100.0
        )
    };
    t.row(
        "Throughput, pipelined, 1 loop, archive on",
        format!(
            "{:.0} msgs/s ({:.2} of limit)",
            archived.rate,
            archived.rate / limit
        ),
        "≥ 0.90 of limit",
        Some(archived.rate / limit >= 0.9),
    );
    t.row(
        "Throughput, naive (pipeline_depth 0), 1 loop",
        format!(
            "{:.0} msgs/s ({:.2} of limit)",
            naive.rate,
            naive.rate / limit
        ),
        "",
        None,
    );
    if let Some(s) = &sequential {
        t.row(
            "Throughput, fully sequential (depth 0, parallelism 1), 1 loop",
            format!("{:.0} msgs/s ({:.3} of limit)", s.rate, s.rate / limit),
            "",
            None,
        );
    }
    for (run, (loops, threads)) in piped.iter().zip(configs) {
        let of_limit = run.rate / (limit * f64::from(loops));
        let (target, ok) = if loops == 1 && threads.is_none() {
            ("≥ 0.90 of limit", Some(of_limit >= 0.9))
        } else {
            ("", None)
        };
        let on = match threads {
            None => String::new(),
            Some(k) => format!(", on {k} runtime thread (TOKIO_WORKER_THREADS={k})"),
        };
        t.row(
            &format!("Throughput, pipelined, {loops} loop{}{on}", plural(loops)),
            format!(
                "{:.0} msgs/s ({of_limit:.2} of {loops}×limit; whole pass {:.0}; batch {} ms; {})",
                run.rate,
                run.pass_rate,
                run.report.batch_latency_ms.unwrap_or(0),
                busy(run)
            ),
            target,
            ok,
        );
    }
    let four = piped[2].rate / one.rate;
    t.row(
        "Scaling, 4 loops vs 1 loop",
        format!(
            "{four:.2}× (on 1 runtime thread: {:.2}×)",
            piped[4].rate / piped[3].rate
        ),
        "≥ 3.5×",
        Some(four >= 3.5),
    );
    notes.push(format!(
        "4 loops vs 1: at 4 × the limit ({:.0} msgs/s) the relay alone would need {:.1} \
         cores at its measured CPU per message, the AWS stand-in {:.1} more; this machine \
         has {cores}. The \"machine\" share shows the CPU running out as loops are added.",
        4.0 * limit,
        4.0 * limit * one.cpu.relay / one.messages as f64,
        4.0 * limit * one.cpu.aws / one.messages as f64,
    ));
    let vs_naive = one.rate / naive.rate;
    if let Some(b) = naive.report.batch_latency_ms {
        let ceiling = b as f64 / (l.as_secs_f64() * 1e3);
        notes.push(format!(
            "Pipelined vs naive: the naive loop spends a whole batch ({b} ms: the consume, then \
             claims, SQS, completion record and confirm) per 200 messages, the pipelined one \
             at best one consume round trip ({:.1} ms); with these latencies pipelining can \
             gain at most {ceiling:.1}×. 5× would need processing to take 4 round trips \
             or more; the fully sequential row is the relay with no concurrency at all.",
            l.as_secs_f64() * 1e3
        ));
    }
    t.row(
        "Pipelined vs naive (depth 0), 1 loop",
        format!("{vs_naive:.2}×"),
        "≥ 5×",
        Some(vs_naive >= 5.0),
    );
    if let Some(s) = &sequential {
        let vs = one.rate / s.rate;
        t.row(
            "Pipelined vs fully sequential, 1 loop",
            format!("{vs:.1}×"),
            "≥ 5×",
            Some(vs >= 5.0),
        );
    }
    let relay_cpu = one.cpu.relay / one.messages as f64;
    t.row(
        "Relay CPU time per message (pipelined 1 loop)",
        format!("{:.1} µs", relay_cpu * 1e6),
        "",
        None,
    );
    let u = &one.report.usage;
    let per = |x: f64| x / one.messages as f64;
    let used = Usage {
        sqs: per(u.sqs_requests as f64),
        wru: per(u.dynamodb_write_units),
        rru: per(u.dynamodb_read_units),
        ddb_requests: per(u.dynamodb_requests as f64),
        top: per(one.top_calls as f64),
        rate: one.rate,
        relay_cpu,
    };
    t.row(
        "SQS requests per message",
        format!("{:.4}", used.sqs),
        "≤ 0.11",
        Some(used.sqs <= 0.11),
    );
    t.row(
        "DynamoDB write units per message (ReturnConsumedCapacity)",
        format!("{:.4}", used.wru),
        "≤ 1.05",
        Some(used.wru <= 1.05),
    );
    t.row(
        "DynamoDB requests per message",
        format!("{:.4}", used.ddb_requests),
        "≤ 0.06",
        Some(used.ddb_requests <= 0.06),
    );
    t.row(
        "DynamoDB read units per message (a clean drain reads nothing)",
        format!("{:.4}", used.rru),
        "",
        None,
    );
    t.row(
        "TOP calls per message (consume + confirm)",
        format!("{:.4}", used.top),
        "",
        None,
    );
    Ok((limit_line, used))
}

/// CPU seconds spent by each process during a run.
#[derive(Clone, Copy, Debug, Default)]
struct Cpu {
    relay: f64,
    sim: f64,
    aws: f64,
    /// Share of the whole machine's CPU time that was busy (anything, not only the bench).
    machine: f64,
}

/// One throughput run.
#[derive(Clone, Debug)]
struct Run {
    report: Report,
    messages: u64,
    /// Pass time, seconds.
    wall: f64,
    /// Messages per second, steady state: while the 10th to the 90th percent of the messages
    /// were confirmed (pipeline fill, the last batches and the final empty poll left out).
    rate: f64,
    /// Messages per second over the whole pass.
    pass_rate: f64,
    cpu: Cpu,
    /// consume + confirm calls the simulator saw.
    top_calls: u64,
}

fn median_run(mut runs: Vec<Run>) -> Run {
    runs.sort_by(|a, b| a.rate.total_cmp(&b.rate));
    let mid = runs.len() / 2;
    runs.swap_remove(mid)
}

impl Stand {
    /// Median consume and confirm round trips, 200 messages each, as the relay's client sees
    /// them on a warm connection.
    async fn round_trips(&self, consumes: usize) -> Result<(Duration, Duration), String> {
        let names = self.fresh().await?;
        self.generate(&names.group, (consumes + 1) * QUANTITY as usize)
            .await?;
        let endpoint = url::Url::parse(&self.sim.url).map_err(|e| e.to_string())?;
        let top = TopClient::new(TopConfig::new(endpoint, APP_KEY, Secret::new(SECRET)))
            .map_err(|e| e.to_string())?;
        let deadline = Instant::now() + Duration::from_secs(300);
        let group = Some(names.group.as_str());
        let (mut consume, mut confirm) = (Vec::new(), Vec::new());
        for i in 0..=consumes {
            let t = Instant::now();
            let msgs = top
                .consume(group, QUANTITY, deadline)
                .await
                .map_err(|e| format!("consume: {e}"))?;
            let took = t.elapsed();
            if msgs.len() != QUANTITY as usize {
                return Err(format!("consume returned {} messages", msgs.len()));
            }
            let ids: Vec<u64> = msgs.iter().filter_map(|m| m.id).collect();
            let t = Instant::now();
            for c in top.confirm(group, &ids, deadline).await {
                c.result.map_err(|e| format!("confirm: {e}"))?;
            }
            // The first call also opens the connection.
            if i > 0 {
                consume.push(took);
                confirm.push(t.elapsed());
            }
        }
        Ok((median(consume), median(confirm)))
    }

    /// One drain pass over `n` generated messages, the relay in this process.
    async fn relay_run(
        &self,
        loops: u32,
        settings: RelaySettings,
        n: usize,
        parallelism: Option<usize>,
        threads: Option<usize>,
    ) -> Result<Run, String> {
        let names = self.fresh().await?;
        self.generate(&names.group, n).await?;
        let mut env = self.env(&names, loops);
        if let Some(p) = parallelism {
            env.insert("RELAY_PARALLELISM".into(), p.to_string());
        }
        let config = Config::from_lookup(|k| env.get(k).cloned()).map_err(|e| e.to_string())?;
        let app = App::build_with(config, &self.sdk, settings)
            .await
            .map_err(|e| e.to_string())?;
        let top0 = self.top_calls().await?;
        let cpu0 = (self_cpu(), self.sim.cpu(), self.aws.cpu(), machine_cpu());
        let overrides = Overrides {
            max_seconds: Some(600),
            ..Overrides::default()
        };
        let progress = Arc::new(Progress::default());
        let sampler = {
            let p = Arc::clone(&progress);
            tokio::spawn(async move {
                let mut samples = Vec::new();
                loop {
                    samples.push((Instant::now(), p.confirmed.load(Ordering::Relaxed)));
                    if samples.last().is_some_and(|s| s.1 >= n as u64) {
                        return samples;
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
        };
        let report = match threads {
            None => app.run(&overrides, None, progress).await,
            // On a runtime of its own, as TOKIO_WORKER_THREADS=k gives the binaries.
            Some(k) => {
                let (tx, rx) = tokio::sync::oneshot::channel();
                std::thread::spawn(move || {
                    let rt = tokio::runtime::Builder::new_multi_thread()
                        .worker_threads(k)
                        .enable_all()
                        .build();
                    let _ = tx.send(rt.map(|rt| rt.block_on(app.run(&overrides, None, progress))));
                });
                match rx.await {
                    Ok(Ok(r)) => r,
                    Ok(Err(e)) => return Err(format!("cannot start a runtime: {e}")),
                    Err(_) => return Err("the relay's runtime thread died".into()),
                }
            }
        };
        let cpu = Cpu {
            relay: self_cpu() - cpu0.0,
            sim: self.sim.cpu() - cpu0.1,
            aws: self.aws.cpu() - cpu0.2,
            machine: {
                let (busy, total) = machine_cpu();
                (busy - cpu0.3 .0) / (total - cpu0.3 .1).max(0.01)
            },
        };
        let top_calls = self.top_calls().await? - top0;
        if let Err(e) = check(&report, n) {
            sampler.abort();
            return Err(e);
        }
        let samples = sampler.await.map_err(|e| e.to_string())?;
        let wall = report.elapsed_ms as f64 / 1e3;
        Ok(Run {
            messages: report.counts.enqueued,
            rate: steady_rate(&samples, n as u64),
            pass_rate: report.counts.enqueued as f64 / wall,
            wall,
            report,
            cpu,
            top_calls,
        })
    }
}

/// Confirmations per second between 10% and 90% of `n` confirmed.
fn steady_rate(samples: &[(Instant, u64)], n: u64) -> f64 {
    let at = |share: u64| samples.iter().find(|s| s.1 * 100 >= n * share);
    match (at(10), at(90)) {
        (Some(a), Some(b)) if b.0 > a.0 => (b.1 - a.1) as f64 / (b.0 - a.0).as_secs_f64(),
        _ => 0.0,
    }
}

/// Every message enqueued and confirmed exactly once, or the figures mean nothing.
fn check(report: &Report, n: usize) -> Result<(), String> {
    let c = &report.counts;
    if c.enqueued != n as u64 || c.confirmed != n as u64 || report.error.is_some() {
        return Err(format!(
            "a run did not relay all {n} messages: {}",
            serde_json::to_string(report).unwrap_or_default()
        ));
    }
    Ok(())
}
