//! The one place where configuration becomes real clients and a relay. Both binaries call it.

use std::sync::Arc;
use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::BehaviorVersion;
use tokio::time::Instant;

use crate::aws::dynamo::DynamoStore;
use crate::aws::s3::{S3Archive, S3Reader};
use crate::aws::sqs::SqsQueue;
use crate::config::{Config, ParkedEnv, ReplayEnv, SecretSource, TopEnv};
use crate::invocation::Overrides;
use crate::parked::sqs::SqsParking;
use crate::parked::{Parked, HOLD_FOR};
use crate::relay::{Progress, Relay, RelaySettings, Report, Stop};
use crate::top::{Secret, TopClient, TopConfig};

/// The production relay's concrete types.
pub type AwsRelay = Relay<TopClient, SqsQueue, DynamoStore>;

/// Why the relay could not be built.
#[derive(Debug, thiserror::Error)]
pub enum WiringError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("could not read the app secret from Secrets Manager ({arn}): {detail}. Check TOP_APP_SECRET_ARN and the function's secretsmanager:GetSecretValue permission")]
    Secret { arn: String, detail: String },
    #[error("could not build the HTTP client: {0}")]
    Http(String),
}

/// A built relay plus what it was built from. Built once per cold start.
pub struct App {
    pub config: Config,
    pub relay: Arc<AwsRelay>,
}

/// Loads the shared AWS configuration with timeouts (the SDK has no operation timeout by
/// default). These serve the secret's one read; SQS and DynamoDB get [`relay_clients`].
pub async fn aws_config() -> aws_config::SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(CONNECT_TIMEOUT)
                .operation_attempt_timeout(Duration::from_secs(5))
                .operation_timeout(Duration::from_secs(12))
                .build(),
        )
        .retry_config(RetryConfig::standard().with_max_attempts(3))
        .load()
        .await
}

/// A connection that is not up by then was never sent anything: safe to retry.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// The SQS and DynamoDB clients the relay sends through. They make one attempt per call and
/// have no attempt timeout of their own: the relay's flow control gives every attempt its
/// deadline from the latency it observes, and retries with its own budget-aware backoff.
/// SDK retries or a fixed timeout here would resend what a slow endpoint already stored (one
/// more copy on a standard queue) and add requests exactly when the endpoint is slowest.
/// The archive's S3 client: one attempt per call, like the others (the relay retries), and
/// path-style addresses on an endpoint of its own (a local S3 has no bucket subdomains).
pub fn s3_client(sdk: &aws_config::SdkConfig) -> aws_sdk_s3::Client {
    let timeouts = TimeoutConfig::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .disable_operation_attempt_timeout()
        .disable_operation_timeout()
        .build();
    let conf = aws_sdk_s3::config::Builder::from(sdk)
        .retry_config(RetryConfig::standard().with_max_attempts(1))
        .timeout_config(timeouts)
        .force_path_style(
            sdk.endpoint_url().is_some() || std::env::var_os("AWS_ENDPOINT_URL_S3").is_some(),
        )
        .build();
    aws_sdk_s3::Client::from_conf(conf)
}

pub fn relay_clients(
    sdk: &aws_config::SdkConfig,
) -> (aws_sdk_sqs::Client, aws_sdk_dynamodb::Client) {
    let timeouts = TimeoutConfig::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .disable_operation_attempt_timeout()
        .disable_operation_timeout()
        .build();
    let once = RetryConfig::standard().with_max_attempts(1);
    let sqs = aws_sdk_sqs::config::Builder::from(sdk)
        .retry_config(once.clone())
        .timeout_config(timeouts.clone())
        .build();
    let ddb = aws_sdk_dynamodb::config::Builder::from(sdk)
        .retry_config(once)
        .timeout_config(timeouts)
        .build();
    (
        aws_sdk_sqs::Client::from_conf(sqs),
        aws_sdk_dynamodb::Client::from_conf(ddb),
    )
}

impl App {
    /// Builds every client from configuration: AWS config, the secret, the TOP client.
    pub async fn build(config: Config) -> Result<App, WiringError> {
        let sdk = aws_config().await;
        Self::build_with(config, &sdk, RelaySettings::default()).await
    }

    /// Like `build`, with an explicit AWS configuration and relay settings (tests, benchmarks).
    pub async fn build_with(
        config: Config,
        sdk: &aws_config::SdkConfig,
        mut settings: RelaySettings,
    ) -> Result<App, WiringError> {
        let tmc = top_client(&config.top, sdk).await?;
        let (sqs, ddb) = relay_clients(sdk);
        settings.retention = config.retention;
        settings.fifo_group_by = config.fifo_group_by;
        settings.parallelism = config.parallelism;
        settings.max_clock_offset = config.max_clock_offset;
        // The leases' clock is the one measured against DynamoDB's.
        let mut store =
            DynamoStore::new(ddb, &config.table).measuring_clock(settings.clock.clone());
        if custom_dynamodb_endpoint(sdk) {
            store = store.probe_before_first_claim();
        }
        let mut relay = Relay::new(
            tmc,
            SqsQueue::new(sqs.clone(), &config.relay_queue_url),
            SqsQueue::new(sqs, &config.parking_queue_url),
            store,
            settings,
        );
        if let Some(location) = &config.archive {
            let archive = S3Archive::new(s3_client(sdk), location);
            relay = relay.with_archive(Arc::new(archive), location.clone());
        }
        Ok(App {
            config,
            relay: Arc::new(relay),
        })
    }

    /// Runs one pass with these overrides within `hard_deadline` (the Lambda deadline, if any).
    pub async fn run(
        &self,
        ov: &Overrides,
        hard_deadline: Option<Instant>,
        progress: Arc<Progress>,
    ) -> Report {
        self.run_stoppable(ov, hard_deadline, progress, Stop::never())
            .await
    }

    /// Like `run`, and stops consuming when `stop` fires (the command line's SIGINT/SIGTERM).
    pub async fn run_stoppable(
        &self,
        ov: &Overrides,
        hard_deadline: Option<Instant>,
        progress: Arc<Progress>,
        stop: Stop,
    ) -> Report {
        let mut opts = ov.pass_options(&self.config, Instant::now(), hard_deadline);
        opts.stop = stop;
        let before = self.usage();
        let mut report = self.relay.run_with_progress(opts, progress).await;
        let after = self.usage();
        report.usage = crate::relay::ports::Usage {
            sqs_requests: after.sqs_requests - before.sqs_requests,
            dynamodb_requests: after.dynamodb_requests - before.dynamodb_requests,
            dynamodb_write_units: after.dynamodb_write_units - before.dynamodb_write_units,
            dynamodb_read_units: after.dynamodb_read_units - before.dynamodb_read_units,
        };
        report
    }

    fn usage(&self) -> crate::relay::ports::Usage {
        crate::aws::usage(
            &[&self.relay.queue.meter, &self.relay.parking.meter],
            &self.relay.store.meter,
        )
    }
}

/// The `parked` commands' concrete types.
pub type AwsParked = Parked<SqsParking, SqsQueue>;

/// The `parked` commands against the configured queues. Sends to the relay queue get one
/// attempt, as in the relay: a retried send that had in fact landed is a second copy, while
/// a failed one simply stays parked for the next run.
pub fn parked(env: &ParkedEnv, sdk: &aws_config::SdkConfig) -> AwsParked {
    let once = aws_sdk_sqs::config::Builder::from(sdk)
        .retry_config(RetryConfig::standard().with_max_attempts(1))
        .build();
    Parked {
        parking: SqsParking::new(aws_sdk_sqs::Client::new(sdk), &env.parking_queue_url),
        relay: env
            .relay_queue_url
            .as_ref()
            .map(|url| SqsQueue::new(aws_sdk_sqs::Client::from_conf(once), url)),
        fifo_group_by: env.fifo_group_by,
        hold_for: HOLD_FOR,
    }
}

/// What `tmc-relay replay` reads and sends with: one attempt per SQS call (replay retries).
pub fn replay(env: &ReplayEnv, sdk: &aws_config::SdkConfig) -> (S3Reader, SqsQueue) {
    let once = aws_sdk_sqs::config::Builder::from(sdk)
        .retry_config(RetryConfig::standard().with_max_attempts(1))
        .build();
    (
        S3Reader::new(s3_client(sdk), &env.archive),
        SqsQueue::new(aws_sdk_sqs::Client::from_conf(once), &env.queue_url),
    )
}

/// Builds the TOP client, reading the secret from Secrets Manager when configured so.
pub async fn top_client(
    env: &TopEnv,
    sdk: &aws_config::SdkConfig,
) -> Result<TopClient, WiringError> {
    let secret = match &env.secret {
        SecretSource::Inline(s) => s.clone(),
        SecretSource::Arn(arn) => fetch_secret(sdk, arn).await?,
    };
    let mut top = TopConfig::new(env.endpoint.clone(), env.app_key.clone(), secret);
    top.sign_method = env.sign_method;
    TopClient::new(top).map_err(|e| WiringError::Http(e.to_string()))
}

/// Reads the app secret: the SecretString itself, or JSON `{"app_secret": "..."}`.
async fn fetch_secret(sdk: &aws_config::SdkConfig, arn: &str) -> Result<Secret, WiringError> {
    let client = aws_sdk_secretsmanager::Client::new(sdk);
    let fail = |detail: String| WiringError::Secret {
        arn: arn.to_owned(),
        detail,
    };
    let out = client
        .get_secret_value()
        .secret_id(arn)
        .send()
        .await
        .map_err(|e| fail(aws_sdk_secretsmanager::error::DisplayErrorContext(&e).to_string()))?;
    let raw = out
        .secret_string()
        .ok_or_else(|| fail("the secret has no SecretString".into()))?;
    secret_from_string(raw).ok_or_else(|| {
        fail("the SecretString is empty or JSON without a non-empty \"app_secret\"".into())
    })
}

/// Lambda gives a function the equivalent of one vCPU per 1,769 MB of memory.
pub const LAMBDA_MB_PER_VCPU: u64 = 1769;

/// Runtime worker threads for a Lambda with `memory_mb` of memory on a machine showing
/// `cores`: one per vCPU the memory buys (rounded, at least one, at most `cores`). A 256 MB
/// function gets about 0.15 vCPU: a second worker only adds an allocator arena and
/// cross-thread wake-ups (`make bench`: ~15 MiB more peak memory, more CPU per message).
pub fn lambda_worker_threads(memory_mb: Option<u64>, cores: usize) -> usize {
    let cores = cores.max(1);
    match memory_mb {
        Some(mb) => {
            let vcpus = (mb.saturating_mul(2) + LAMBDA_MB_PER_VCPU) / (2 * LAMBDA_MB_PER_VCPU);
            (vcpus as usize).clamp(1, cores)
        }
        None => cores,
    }
}

/// The two accepted SecretString shapes.
pub fn secret_from_string(raw: &str) -> Option<Secret> {
    let trimmed = raw.trim();
    if trimmed.starts_with('{') {
        let v: serde_json::Value = serde_json::from_str(trimmed).ok()?;
        return v
            .get("app_secret")?
            .as_str()
            .filter(|s| !s.is_empty())
            .map(Secret::new);
    }
    (!trimmed.is_empty()).then(|| Secret::new(trimmed))
}

/// An endpoint other than AWS's own (an emulator, or a proxy in front of one): it may not
/// model every call the relay makes, so the store probes it.
fn custom_dynamodb_endpoint(sdk: &aws_config::SdkConfig) -> bool {
    sdk.endpoint_url().is_some()
        || ["AWS_ENDPOINT_URL_DYNAMODB", "AWS_ENDPOINT_URL"]
            .iter()
            .any(|v| std::env::var_os(v).is_some_and(|x| !x.is_empty()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Plain and JSON secret strings are accepted; empty ones are not.
    #[test]
    fn secret_string_shapes() {
        assert_eq!(secret_from_string("abc").unwrap().expose(), "abc");
        assert_eq!(
            secret_from_string(r#"{"app_secret":"xyz"}"#)
                .unwrap()
                .expose(),
            "xyz"
        );
        assert!(secret_from_string("").is_none());
        assert!(secret_from_string(r#"{"other":"x"}"#).is_none());
    }

    /// One worker per vCPU the function's memory buys, at least one, at most the cores seen.
    #[test]
    fn worker_threads_follow_lambda_memory() {
        assert_eq!(lambda_worker_threads(Some(128), 2), 1);
        assert_eq!(lambda_worker_threads(Some(256), 2), 1);
        assert_eq!(lambda_worker_threads(Some(1769), 2), 1);
        assert_eq!(lambda_worker_threads(Some(3008), 2), 2);
        assert_eq!(lambda_worker_threads(Some(3538), 6), 2);
        assert_eq!(lambda_worker_threads(Some(10_240), 6), 6);
        assert_eq!(lambda_worker_threads(Some(10_240), 2), 2);
        assert_eq!(lambda_worker_threads(None, 4), 4);
        assert_eq!(lambda_worker_threads(Some(0), 0), 1);
    }
}
