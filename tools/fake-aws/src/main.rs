//! `fake-aws`: the fault-injecting SQS/DynamoDB endpoint as a process, in front of moto or in
//! memory. The first line on stdout is the endpoint URL; logs go to stderr. Runs until SIGTERM
//! or SIGINT. Rules can be changed at runtime with `POST /_fake/rules`.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{ArgGroup, Parser};
use fake_aws::{Backend, FakeAws, FakeAwsConfig, Rules};

/// A fake SQS + DynamoDB endpoint (AWS JSON protocol) that injects faults per operation.
#[derive(Parser, Debug)]
#[command(name = "fake-aws", version)]
#[command(group(ArgGroup::new("backend").required(true).args(["upstream", "memory"])))]
struct Args {
    /// Address to bind; port 0 picks a free port. Only this address is bound.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Proxy to the moto server at this URL (e.g. http://127.0.0.1:5000).
    #[arg(long)]
    upstream: Option<url::Url>,
    /// Serve from memory instead of proxying.
    #[arg(long)]
    memory: bool,
    /// Seed of fault selection and message ids.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// A JSON file of rules by operation: {"SendMessageBatch": {"partial_failure_rate": 0.05}},
    /// with "storms" and "stalls" beside them (see the crate documentation).
    #[arg(long)]
    rules: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_target(false)
        .compact()
        .init();
    let rules = match &args.rules {
        None => Rules::none(),
        Some(path) => match read_rules(path) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("fake-aws: --rules {}: {e}", path.display());
                return ExitCode::from(2);
            }
        },
    };
    let backend = match args.upstream.clone() {
        Some(upstream) if matches!(upstream.scheme(), "http" | "https") => {
            Backend::Moto { upstream }
        }
        Some(other) => {
            eprintln!("fake-aws: --upstream must be an http(s) URL, got {other}");
            return ExitCode::from(2);
        }
        None => Backend::Memory,
    };
    let cfg = FakeAwsConfig {
        backend,
        seed: args.seed,
        rules,
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("fake-aws: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(args.listen, cfg))
}

fn read_rules(path: &PathBuf) -> Result<Rules, String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let rules: Rules = serde_json::from_str(&text).map_err(|e| e.to_string())?;
    rules.validate()?;
    Ok(rules)
}

async fn run(listen: SocketAddr, cfg: FakeAwsConfig) -> ExitCode {
    let fake = match FakeAws::start(listen, cfg).await {
        Ok(f) => f,
        Err(e) => {
            eprintln!("fake-aws: cannot listen on {listen}: {e}");
            return ExitCode::FAILURE;
        }
    };
    {
        let mut out = std::io::stdout().lock();
        if writeln!(out, "{}", fake.endpoint())
            .and_then(|()| out.flush())
            .is_err()
        {
            eprintln!("fake-aws: cannot write the endpoint to stdout");
            return ExitCode::FAILURE;
        }
    }
    if let Err(e) = stop_signal().await {
        eprintln!("fake-aws: cannot wait for signals: {e}");
        fake.shutdown().await;
        return ExitCode::FAILURE;
    }
    let total = fake.stats().total();
    tracing::info!(
        requests = total.requests,
        faults = total.faults(),
        accepted = fake.accepted().len(),
        "stopping"
    );
    fake.shutdown().await;
    ExitCode::SUCCESS
}

/// Resolves on SIGINT or SIGTERM.
async fn stop_signal() -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// Every flag has a help line, and clap finds the command line consistent.
    #[test]
    fn every_flag_has_help() {
        let cmd = super::Args::command();
        cmd.clone().debug_assert();
        let missing: Vec<&str> = cmd
            .get_arguments()
            .filter(|a| !matches!(a.get_id().as_str(), "help" | "version"))
            .filter(|a| a.get_help().is_none_or(|h| h.to_string().trim().is_empty()))
            .map(|a| a.get_id().as_str())
            .collect();
        assert!(missing.is_empty(), "flags without help: {missing:?}");
    }
}
