//! The Lambda: build clients once per cold start, then serve invocations.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use lambda_runtime::{service_fn, Error, LambdaEvent};
use serde_json::Value;
use tokio::time::Instant;

use tmc_relay::config::Config;
use tmc_relay::invocation::{budget_from_deadline, Overrides};
use tmc_relay::telemetry;
use tmc_relay::wiring::{lambda_worker_threads, App};

fn main() -> Result<(), Error> {
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    runtime.enable_all();
    // TOKIO_WORKER_THREADS, when set, wins (tokio reads it); otherwise one worker per vCPU.
    if std::env::var_os("TOKIO_WORKER_THREADS").is_none() {
        let memory_mb = std::env::var("AWS_LAMBDA_FUNCTION_MEMORY_SIZE")
            .ok()
            .and_then(|v| v.parse().ok());
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        runtime.worker_threads(lambda_worker_threads(memory_mb, cores));
    }
    runtime.build()?.block_on(serve())
}

async fn serve() -> Result<(), Error> {
    telemetry::init();
    let config = Config::from_env().inspect_err(|e| tracing::error!(error = %e, "cannot start"))?;
    let app = Arc::new(
        App::build(config)
            .await
            .inspect_err(|e| tracing::error!(error = %e, "cannot start"))?,
    );
    let function_name =
        std::env::var("AWS_LAMBDA_FUNCTION_NAME").unwrap_or_else(|_| "tmc-relay".into());
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| {
        let (app, function_name) = (Arc::clone(&app), function_name.clone());
        async move { handle(&app, &function_name, event).await }
    }))
    .await
}

async fn handle(app: &App, function_name: &str, event: LambdaEvent<Value>) -> Result<Value, Error> {
    let overrides = Overrides::from_event(&event.payload)
        .inspect_err(|e| tracing::error!(error = %e, "refused the invocation"))?;
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let budget = budget_from_deadline(event.context.deadline, now_ms);
    tracing::info!(request_id = %event.context.request_id, budget_ms = budget.as_millis() as u64, "invocation");
    let hard_deadline = Instant::now() + budget;
    let report = app
        .run(&overrides, Some(hard_deadline), Default::default())
        .await;
    // One EMF line per pass, on stdout where Lambda's log capture reads it.
    println!("{}", telemetry::emf(&report, function_name, now_ms));
    let value = serde_json::to_value(&report)?;
    tracing::info!(report = %value, "pass finished");
    if let Some(err) = report
        .error
        .filter(|_| report.stop_reason == tmc_relay::relay::StopReason::Fatal)
    {
        return Err(err.into());
    }
    Ok(value)
}
