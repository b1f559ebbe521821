//! `tmc-sim`: the strict local TMC gateway as a process, for the demo, benchmarks and tests in
//! other languages. The first line on stdout is the gateway URL; logs go to stderr.

use std::io::Write as _;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use tmc_sim::{SimConfig, SimServer};

/// A strict local Taobao TMC gateway (taobao.tmc.messages.consume / confirm and friends).
#[derive(Parser, Debug)]
#[command(name = "tmc-sim", version)]
struct Args {
    /// Address to bind; port 0 picks a free port. Only this address is bound.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// The app key the gateway accepts.
    #[arg(long, default_value = "sim-app")]
    app_key: String,
    /// The app secret signatures are checked with; `sim-secret` when not given. Prefer the
    /// environment variable, which does not show in `ps`.
    #[arg(
        long,
        env = "TMC_SIM_APP_SECRET",
        hide_env_values = true,
        default_value = "sim-secret",
        hide_default_value = true
    )]
    app_secret: String,
    /// Generate this many realistic messages at start.
    #[arg(long, default_value_t = 0)]
    preload: usize,
    /// The group the preloaded messages go to (created if needed).
    #[arg(long, default_value = "default")]
    group: String,
    /// Seconds a consumed, unconfirmed message stays hidden.
    #[arg(long, default_value_t = 300)]
    lease_secs: u64,
    /// Seconds after publishing when an unconfirmed message is dropped.
    #[arg(long, default_value_t = 86_400)]
    retention_secs: u64,
    /// Seconds of timestamp skew allowed.
    #[arg(long, default_value_t = 600)]
    max_skew_secs: u64,
    /// Seed of faults and generated messages.
    #[arg(long, default_value_t = 1)]
    seed: u64,
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
    if args.app_key.is_empty() || args.app_secret.is_empty() {
        eprintln!("tmc-sim: --app-key and --app-secret (or TMC_SIM_APP_SECRET) must be non-empty");
        return ExitCode::from(2);
    }
    if args.group.is_empty() || args.group.contains(',') {
        eprintln!("tmc-sim: --group must be non-empty and without commas");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tmc-sim: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(args))
}

async fn run(args: Args) -> ExitCode {
    let cfg = SimConfig {
        app_key: args.app_key,
        app_secret: args.app_secret,
        lease: Duration::from_secs(args.lease_secs),
        retention: Duration::from_secs(args.retention_secs),
        seed: args.seed,
        max_skew: Duration::from_secs(args.max_skew_secs),
    };
    let server = match SimServer::start(args.listen, cfg).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("tmc-sim: cannot listen on {}: {e}", args.listen);
            return ExitCode::FAILURE;
        }
    };
    if args.preload > 0 {
        server.create_group(&args.group);
        server.generate(Some(&args.group), args.preload);
        tracing::info!(count = args.preload, group = %args.group, "preloaded");
    }
    {
        let mut out = std::io::stdout().lock();
        if writeln!(out, "{}", server.gateway_url())
            .and_then(|()| out.flush())
            .is_err()
        {
            eprintln!("tmc-sim: cannot write the URL to stdout");
            return ExitCode::FAILURE;
        }
    }
    if let Err(e) = stop_signal().await {
        eprintln!("tmc-sim: cannot wait for signals: {e}");
        server.shutdown().await;
        return ExitCode::FAILURE;
    }
    tracing::info!("stopping");
    server.shutdown().await;
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
