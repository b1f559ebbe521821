//! The Lambda: build clients once per cold start, then serve invocations.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lambda_runtime::{service_fn, Diagnostic, Error, LambdaEvent};
use serde_json::Value;
use tokio::time::Instant;

use tmc_relay::config::{Config, ConfigError};
use tmc_relay::invocation::{budget_from_deadline, Overrides, PayloadError};
use tmc_relay::telemetry;
use tmc_relay::wiring::{lambda_worker_threads, App, WiringError};

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

/// Why the function failed, as Lambda reports it: `errorType` is the class a caller (or an
/// alarm, or `make backfill`) can act on, `errorMessage` says what to fix. Never the secret:
/// every message here comes from an error type that redacts it.
#[derive(Debug, thiserror::Error)]
enum Failure {
    /// A setting is missing or wrong: nothing will work until it is fixed.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The secret could not be read (permission, ARN, shape) or a client not built.
    #[error(transparent)]
    Startup(WiringError),
    /// The invocation payload was refused; nothing was consumed.
    #[error(transparent)]
    Payload(#[from] PayloadError),
    /// The pass stopped on a fatal error (credentials, permissions, a missing queue or table);
    /// what was safe to confirm was confirmed.
    #[error("{0}")]
    Fatal(String),
    /// The report could not be serialised (a bug, not an operating condition).
    #[error("could not serialise the report: {0}")]
    Internal(#[from] serde_json::Error),
}

impl From<WiringError> for Failure {
    fn from(e: WiringError) -> Failure {
        match e {
            WiringError::Config(c) => Failure::Config(c),
            other => Failure::Startup(other),
        }
    }
}

impl Failure {
    fn error_type(&self) -> &'static str {
        match self {
            Failure::Config(_) => "ConfigError",
            Failure::Startup(WiringError::Secret { .. }) => "SecretError",
            Failure::Startup(_) => "StartupError",
            Failure::Payload(_) => "PayloadError",
            Failure::Fatal(_) => "FatalError",
            Failure::Internal(_) => "InternalError",
        }
    }
}

impl From<Failure> for Diagnostic {
    fn from(f: Failure) -> Diagnostic {
        Diagnostic {
            error_type: f.error_type().to_owned(),
            error_message: f.to_string(),
        }
    }
}

async fn serve() -> Result<(), Error> {
    telemetry::init();
    let app = match start().await {
        Ok(app) => Arc::new(app),
        Err(f) => {
            tracing::error!(error = %f, error_type = f.error_type(), "cannot start");
            report_init_error(&f).await;
            return Err(f.into());
        }
    };
    let function_name =
        std::env::var("AWS_LAMBDA_FUNCTION_NAME").unwrap_or_else(|_| "tmc-relay".into());
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| {
        let (app, function_name) = (Arc::clone(&app), function_name.clone());
        async move { handle(&app, &function_name, event).await }
    }))
    .await
}

async fn start() -> Result<App, Failure> {
    let config = Config::from_env()?;
    Ok(App::build(config).await?)
}

/// Tells Lambda why the start failed (`/runtime/init/error`), so the invocation that caused
/// the cold start fails with this class and message instead of "Runtime exited". Lambda
/// retries the start on the next invocation. Best effort: without a Runtime API (a local run)
/// or when it does not answer, the log line and the exit status still say what went wrong.
async fn report_init_error(f: &Failure) {
    let Ok(api) = std::env::var("AWS_LAMBDA_RUNTIME_API") else {
        return;
    };
    let base = if api.starts_with("http://") || api.starts_with("https://") {
        api
    } else {
        format!("http://{api}")
    };
    let body = serde_json::json!({"errorType": f.error_type(), "errorMessage": f.to_string()});
    let sent = reqwest::Client::new()
        .post(format!("{base}/2018-06-01/runtime/init/error"))
        .header("Lambda-Runtime-Function-Error-Type", f.error_type())
        .header("Content-Type", "application/json")
        .body(body.to_string())
        .timeout(Duration::from_secs(2))
        .send()
        .await;
    if let Err(e) = sent {
        tracing::warn!(error = %e, "could not report the start failure to the Runtime API");
    }
}

async fn handle(
    app: &App,
    function_name: &str,
    event: LambdaEvent<Value>,
) -> Result<Value, Failure> {
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
        return Err(Failure::Fatal(err));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each failure reaches Lambda as its class, with the message that says what to fix.
    #[test]
    fn failures_are_reported_by_class() {
        let config = Failure::from(WiringError::Config(
            Config::from_lookup(|_| None).unwrap_err(),
        ));
        let d = Diagnostic::from(config);
        assert_eq!(d.error_type, "ConfigError");
        assert!(
            d.error_message.contains("TOP_APP_KEY"),
            "{}",
            d.error_message
        );

        let secret = Failure::from(WiringError::Secret {
            arn: "arn:aws:secretsmanager:us-east-1:1:secret:x".into(),
            detail: "AccessDenied".into(),
        });
        assert_eq!(Diagnostic::from(secret).error_type, "SecretError");

        let payload = Overrides::from_event(&serde_json::json!({"max_batch": 1})).unwrap_err();
        let d = Diagnostic::from(Failure::from(payload));
        assert_eq!(d.error_type, "PayloadError");
        assert!(d.error_message.contains("max_batch"), "{}", d.error_message);

        let d = Diagnostic::from(Failure::Fatal(
            "signature invalid. Check TOP_APP_SECRET.".into(),
        ));
        assert_eq!(
            (d.error_type.as_str(), d.error_message.as_str()),
            ("FatalError", "signature invalid. Check TOP_APP_SECRET.")
        );
    }
}
