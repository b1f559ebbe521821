//! Configuration from the environment, read and validated once at start into one typed struct.
//! A missing or bad value is an error naming the variable (and never echoing a secret).

use crate::relay::archive::ArchiveLocation;
use std::time::Duration;

use url::{Host, Url};

use crate::relay::body::FifoGroupBy;
use crate::relay::Mode;
use crate::top::{Secret, SignMethod};

/// Every variable the code reads (besides the standard `AWS_*`, `RUST_LOG` and Lambda ones).
/// The template test checks the SAM template sets exactly these.
pub const ENV_VARS: &[&str] = &[
    "TOP_APP_KEY",
    "TOP_APP_SECRET",
    "TOP_APP_SECRET_ARN",
    "TOP_ENDPOINT",
    "TOP_SIGN_METHOD",
    "TOP_ALLOW_INSECURE_HTTP",
    "TMC_GROUP_NAMES",
    "TMC_QUANTITY",
    "TMC_MODE",
    "TMC_CONCURRENCY",
    "TMC_EMPTY_BACKOFF_MS",
    "RELAY_QUEUE_URL",
    "PARKING_QUEUE_URL",
    "DEDUP_TABLE_NAME",
    "DEDUP_RETENTION_DAYS",
    "FIFO_GROUP_BY",
    "RELAY_PARALLELISM",
    "MAX_CLOCK_OFFSET_MS",
    "ARCHIVE_URL",
];

pub const DEFAULT_ENDPOINT: &str = "https://eco.taobao.com/router/rest";

/// Where the app secret comes from.
#[derive(Clone, Debug, PartialEq)]
pub enum SecretSource {
    /// `TOP_APP_SECRET`: local runs and tests.
    Inline(Secret),
    /// `TOP_APP_SECRET_ARN`: read from Secrets Manager once per cold start.
    Arn(String),
}

/// What talking to TOP needs; all the admin commands need.
#[derive(Clone, Debug, PartialEq)]
pub struct TopEnv {
    pub app_key: String,
    pub secret: SecretSource,
    /// The TOP gateway.
    pub endpoint: Url,
    pub sign_method: SignMethod,
}

/// The validated configuration. `Debug` is safe to log: the secret is redacted.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub top: TopEnv,
    /// TMC groups to drain; `[""]` is the app's default group.
    pub groups: Vec<String>,
    /// Messages per consume (10..=200).
    pub quantity: u32,
    pub mode: Mode,
    /// Consume loops per group.
    pub concurrency: u32,
    /// Pause after an empty poll in follow mode; the platform asks for at least 100 ms.
    pub empty_backoff: Duration,
    pub relay_queue_url: String,
    pub parking_queue_url: String,
    pub table: String,
    /// Dedup record lifetime; longer than TMC's one-day redelivery window.
    pub retention: Duration,
    pub fifo_group_by: FifoGroupBy,
    /// Concurrent DynamoDB claims and SQS requests per batch: high for AWS, low for a slow
    /// local emulator.
    pub parallelism: usize,
    /// How far the host clock may be from DynamoDB's: leases are compared across hosts, so a
    /// pass does not start on a host certainly further off.
    pub max_clock_offset: Duration,
    /// Where every consumed batch is archived (`ARCHIVE_URL`, `s3://bucket/prefix/`); `None`
    /// when it is empty or unset: no archive.
    pub archive: Option<ArchiveLocation>,
}

/// A configuration problem, naming the variable.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("configuration error: {var}: {problem}")]
pub struct ConfigError {
    pub var: &'static str,
    pub problem: String,
}

fn bad(var: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError {
        var,
        problem: problem.into(),
    }
}

impl Config {
    /// Reads the process environment.
    pub fn from_env() -> Result<Config, ConfigError> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// Reads through `get` (tests pass a map).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let opt = |k: &'static str| {
            get(k)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let req = |k: &'static str| opt(k).ok_or_else(|| bad(k, "is required but not set"));

        let top = TopEnv::from_lookup(&get)?;
        let groups = parse_groups(opt("TMC_GROUP_NAMES").as_deref().unwrap_or(""))?;
        let quantity = parse_num("TMC_QUANTITY", opt("TMC_QUANTITY"), 200, 10, 200)? as u32;
        let mode = match opt("TMC_MODE") {
            None => Mode::Drain,
            Some(v) => v.parse().map_err(|e: String| bad("TMC_MODE", e))?,
        };
        let concurrency = parse_num("TMC_CONCURRENCY", opt("TMC_CONCURRENCY"), 1, 1, 16)? as u32;
        let empty_backoff_ms = parse_num(
            "TMC_EMPTY_BACKOFF_MS",
            opt("TMC_EMPTY_BACKOFF_MS"),
            1000,
            100,
            60_000,
        )?;
        let relay_queue_url = parse_queue_url("RELAY_QUEUE_URL", &req("RELAY_QUEUE_URL")?)?;
        let parking_queue_url = parse_parking_queue_url(&req("PARKING_QUEUE_URL")?)?;
        let table = req("DEDUP_TABLE_NAME")?;
        if !(3..=255).contains(&table.len())
            || !table
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
        {
            return Err(bad(
                "DEDUP_TABLE_NAME",
                format!("{table:?} is not a DynamoDB table name (3-255 of A-Z a-z 0-9 _ . -)"),
            ));
        }
        let days = parse_num(
            "DEDUP_RETENTION_DAYS",
            opt("DEDUP_RETENTION_DAYS"),
            7,
            2,
            365,
        )?;
        let fifo_group_by = parse_fifo_group_by(opt("FIFO_GROUP_BY"))?;
        let parallelism =
            parse_num("RELAY_PARALLELISM", opt("RELAY_PARALLELISM"), 32, 1, 256)? as usize;
        // Up to 10 s: the lease fence keeps twice this back from the shortest lease (60 s).
        let max_clock_offset_ms = parse_num(
            "MAX_CLOCK_OFFSET_MS",
            opt("MAX_CLOCK_OFFSET_MS"),
            2000,
            500,
            10_000,
        )?;
        let archive = opt("ARCHIVE_URL")
            .map(|url| ArchiveLocation::parse(&url).map_err(|e| bad("ARCHIVE_URL", e)))
            .transpose()?;
        Ok(Config {
            top,
            parallelism,
            groups,
            quantity,
            mode,
            concurrency,
            empty_backoff: Duration::from_millis(empty_backoff_ms),
            relay_queue_url,
            parking_queue_url,
            table,
            retention: Duration::from_secs(days * 86_400),
            fifo_group_by,
            max_clock_offset: Duration::from_millis(max_clock_offset_ms),
            archive,
        })
    }
}

impl TopEnv {
    /// Reads the process environment.
    pub fn from_env() -> Result<TopEnv, ConfigError> {
        Self::from_lookup(&|k: &str| std::env::var(k).ok())
    }

    pub fn from_lookup(get: &impl Fn(&str) -> Option<String>) -> Result<TopEnv, ConfigError> {
        let opt = |k: &'static str| {
            get(k)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let req = |k: &'static str| opt(k).ok_or_else(|| bad(k, "is required but not set"));
        let app_key = req("TOP_APP_KEY")?;
        if app_key.len() > 64 || app_key.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(bad("TOP_APP_KEY", format!("{app_key:?} is not an app key")));
        }
        // The secret's value is never trimmed or echoed.
        let inline = get("TOP_APP_SECRET").filter(|v| !v.is_empty());
        let secret = match (inline, opt("TOP_APP_SECRET_ARN")) {
            (Some(s), None) => SecretSource::Inline(Secret::new(s)),
            (None, Some(arn)) => {
                if !arn.starts_with("arn:")
                    || arn.split(':').count() < 7
                    || !arn.contains(":secretsmanager:")
                {
                    return Err(bad(
                        "TOP_APP_SECRET_ARN",
                        format!("{arn:?} is not a Secrets Manager secret ARN"),
                    ));
                }
                SecretSource::Arn(arn)
            }
            (Some(_), Some(_)) => {
                return Err(bad(
                    "TOP_APP_SECRET",
                    "set either TOP_APP_SECRET or TOP_APP_SECRET_ARN, not both",
                ))
            }
            (None, None) => {
                return Err(bad(
                    "TOP_APP_SECRET_ARN",
                    "is required (or TOP_APP_SECRET for local runs)",
                ))
            }
        };
        let switch = |var: &'static str| match opt(var) {
            None => Ok(false),
            Some(v) => {
                parse_bool(&v).ok_or_else(|| bad(var, format!("{v:?} is not true or false")))
            }
        };
        let insecure = switch("TOP_ALLOW_INSECURE_HTTP")?;
        check_aws_endpoints(get)?;
        let endpoint = parse_endpoint(
            &opt("TOP_ENDPOINT").unwrap_or_else(|| DEFAULT_ENDPOINT.to_owned()),
            insecure,
        )?;
        let sign_method = match opt("TOP_SIGN_METHOD") {
            None => SignMethod::HmacSha256,
            Some(v) => v.parse().map_err(|e: String| bad("TOP_SIGN_METHOD", e))?,
        };
        Ok(TopEnv {
            app_key,
            secret,
            endpoint,
            sign_method,
        })
    }
}

/// What the `tmc-relay parked` commands need: the parking queue, and for `redrive` the relay
/// queue and its FIFO grouping. No TOP credentials and no dedup table: an operator reading the
/// parking queue needs neither.
#[derive(Clone, Debug, PartialEq)]
pub struct ParkedEnv {
    /// `PARKING_QUEUE_URL`: what the commands read.
    pub parking_queue_url: String,
    /// `RELAY_QUEUE_URL`: where `redrive` sends; `None` for the commands that never send.
    pub relay_queue_url: Option<String>,
    /// `FIFO_GROUP_BY`, so a redriven message is grouped as the relay would have grouped it
    /// (read for `redrive` only; the default otherwise).
    pub fifo_group_by: FifoGroupBy,
}

impl ParkedEnv {
    /// Reads the process environment; `with_relay` for `redrive`.
    pub fn from_env(with_relay: bool) -> Result<ParkedEnv, ConfigError> {
        Self::from_lookup(&|k: &str| std::env::var(k).ok(), with_relay)
    }

    /// Reads through `get`, with the relay's own rules for each variable.
    pub fn from_lookup(
        get: &impl Fn(&str) -> Option<String>,
        with_relay: bool,
    ) -> Result<ParkedEnv, ConfigError> {
        let opt = |k: &'static str| {
            get(k)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let req = |k: &'static str| opt(k).ok_or_else(|| bad(k, "is required but not set"));
        check_aws_endpoints(get)?;
        let parking_queue_url = parse_parking_queue_url(&req("PARKING_QUEUE_URL")?)?;
        if !with_relay {
            return Ok(ParkedEnv {
                parking_queue_url,
                relay_queue_url: None,
                fifo_group_by: FifoGroupBy::default(),
            });
        }
        Ok(ParkedEnv {
            parking_queue_url,
            relay_queue_url: Some(parse_queue_url(
                "RELAY_QUEUE_URL",
                &req("RELAY_QUEUE_URL")?,
            )?),
            fifo_group_by: parse_fifo_group_by(opt("FIFO_GROUP_BY"))?,
        })
    }
}

/// What `tmc-relay replay` needs: the archive to read and the queue to send to, with the
/// relay's FIFO grouping. No TOP credentials and no dedup table.
#[derive(Clone, Debug, PartialEq)]
pub struct ReplayEnv {
    /// `--archive-url`, else `ARCHIVE_URL`.
    pub archive: ArchiveLocation,
    /// `--queue-url`, else `RELAY_QUEUE_URL`.
    pub queue_url: String,
    pub fifo_group_by: FifoGroupBy,
}

impl ReplayEnv {
    /// Reads the flags' values, then the process environment for what they leave out.
    pub fn from_env(archive: Option<&str>, queue: Option<&str>) -> Result<ReplayEnv, ConfigError> {
        Self::from_lookup(&|k: &str| std::env::var(k).ok(), archive, queue)
    }

    pub fn from_lookup(
        get: &impl Fn(&str) -> Option<String>,
        archive: Option<&str>,
        queue: Option<&str>,
    ) -> Result<ReplayEnv, ConfigError> {
        let opt = |k: &'static str| {
            get(k)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        check_aws_endpoints(get)?;
        let archive = match archive {
            Some(url) => ArchiveLocation::parse(url).map_err(|e| bad("--archive-url", e))?,
            None => {
                let url = opt("ARCHIVE_URL").ok_or_else(|| {
                    bad(
                        "ARCHIVE_URL",
                        "is required (or --archive-url): the archive to replay from",
                    )
                })?;
                ArchiveLocation::parse(&url).map_err(|e| bad("ARCHIVE_URL", e))?
            }
        };
        let queue_url = match queue {
            Some(url) => parse_queue_url("--queue-url", url)?,
            None => parse_queue_url(
                "RELAY_QUEUE_URL",
                &opt("RELAY_QUEUE_URL").ok_or_else(|| {
                    bad(
                        "RELAY_QUEUE_URL",
                        "is required (or --queue-url): where to replay to",
                    )
                })?,
            )?,
        };
        Ok(ReplayEnv {
            archive,
            queue_url,
            fifo_group_by: parse_fifo_group_by(opt("FIFO_GROUP_BY"))?,
        })
    }
}

/// The SDK reads the endpoint overrides itself; they get the same rule as the gateway, with
/// their own switch, so order data never goes to a remote host in plain text by accident.
fn check_aws_endpoints(get: &impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
    let opt = |k: &'static str| {
        get(k)
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    };
    let aws_insecure = match opt(AWS_INSECURE_SWITCH) {
        None => false,
        Some(v) => parse_bool(&v)
            .ok_or_else(|| bad(AWS_INSECURE_SWITCH, format!("{v:?} is not true or false")))?,
    };
    for var in AWS_ENDPOINT_VARS {
        if let Some(v) = opt(var) {
            checked_url(var, &v, aws_insecure, AWS_INSECURE_SWITCH)?;
        }
    }
    Ok(())
}

/// Parked entries carry no MessageGroupId, so a FIFO parking queue would refuse every one,
/// and those messages would be redelivered all day instead of parked.
fn parse_parking_queue_url(v: &str) -> Result<String, ConfigError> {
    let url = parse_queue_url("PARKING_QUEUE_URL", v)?;
    if url.ends_with(".fifo") {
        return Err(bad(
            "PARKING_QUEUE_URL",
            "must be a standard queue, not FIFO (parked messages have no order to keep)",
        ));
    }
    Ok(url)
}

fn parse_fifo_group_by(v: Option<String>) -> Result<FifoGroupBy, ConfigError> {
    match v {
        None => Ok(FifoGroupBy::default()),
        Some(v) => v.parse().map_err(|e: String| bad("FIFO_GROUP_BY", e)),
    }
}

fn parse_bool(v: &str) -> Option<bool> {
    match v.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" => Some(true),
        "false" | "0" | "no" => Some(false),
        _ => None,
    }
}

fn parse_num(
    var: &'static str,
    v: Option<String>,
    default: u64,
    min: u64,
    max: u64,
) -> Result<u64, ConfigError> {
    let Some(v) = v else { return Ok(default) };
    let n: u64 = v
        .parse()
        .map_err(|_| bad(var, format!("{v:?} is not a whole number")))?;
    if !(min..=max).contains(&n) {
        return Err(bad(var, format!("{n} is outside {min}..={max}")));
    }
    Ok(n)
}

/// Endpoint overrides the AWS SDK reads from the environment (checked, not used, here).
pub const AWS_ENDPOINT_VARS: [&str; 5] = [
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_SQS",
    "AWS_ENDPOINT_URL_DYNAMODB",
    "AWS_ENDPOINT_URL_SECRETS_MANAGER",
    "AWS_ENDPOINT_URL_S3",
];
/// Allows plain http to a non-loopback AWS endpoint (local emulators on another host).
pub const AWS_INSECURE_SWITCH: &str = "AWS_ENDPOINT_ALLOW_INSECURE_HTTP";

/// The gateway URL: https, or http to a loopback host (or anywhere, when explicitly allowed by
/// `TOP_ALLOW_INSECURE_HTTP`, whose name says what it does).
pub fn parse_endpoint(v: &str, allow_insecure: bool) -> Result<Url, ConfigError> {
    checked_url("TOP_ENDPOINT", v, allow_insecure, "TOP_ALLOW_INSECURE_HTTP")
}

/// An endpoint URL in `var`: https, or http to a loopback host, or http anywhere when the
/// setting `switch` allows it.
fn checked_url(
    var: &'static str,
    v: &str,
    allow_insecure: bool,
    switch: &str,
) -> Result<Url, ConfigError> {
    let url = Url::parse(v).map_err(|e| bad(var, format!("{v:?} is not a URL ({e})")))?;
    if url.host().is_none() {
        return Err(bad(var, format!("{v:?} has no host")));
    }
    match url.scheme() {
        "https" => Ok(url),
        "http" if is_loopback(&url) || allow_insecure => Ok(url),
        "http" => Err(bad(
            var,
            format!("{v:?} is plain http to a non-loopback host; use https or set {switch}=true"),
        )),
        other => Err(bad(var, format!("scheme {other:?} is not http or https"))),
    }
}

fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(Host::Ipv4(ip)) => ip.is_loopback(),
        Some(Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

fn parse_queue_url(var: &'static str, v: &str) -> Result<String, ConfigError> {
    let url = Url::parse(v).map_err(|e| bad(var, format!("{v:?} is not a URL ({e})")))?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err(bad(var, format!("{v:?} is not an http(s) queue URL")));
    }
    let segments: Vec<&str> = url
        .path_segments()
        .map(|s| s.filter(|x| !x.is_empty()).collect())
        .unwrap_or_default();
    let name = match segments.as_slice() {
        [_account, name] => *name,
        _ => {
            return Err(bad(
                var,
                format!("{v:?} is not a queue URL (expected .../<account>/<queue-name>)"),
            ))
        }
    };
    let base = name.strip_suffix(".fifo").unwrap_or(name);
    if base.is_empty()
        || base.len() > 80
        || !base
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(bad(var, format!("{name:?} is not a valid queue name")));
    }
    Ok(v.to_owned())
}

fn parse_groups(v: &str) -> Result<Vec<String>, ConfigError> {
    let mut groups: Vec<String> = Vec::new();
    for g in v.split(',').map(str::trim).filter(|g| !g.is_empty()) {
        if g.chars().count() > 32 {
            return Err(bad(
                "TMC_GROUP_NAMES",
                format!("group {g:?} is longer than 32 characters"),
            ));
        }
        let g = if g == "default" {
            String::new()
        } else {
            g.to_owned()
        };
        if !groups.contains(&g) {
            groups.push(g);
        }
    }
    if groups.is_empty() {
        groups.push(String::new());
    }
    Ok(groups)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn base() -> HashMap<&'static str, &'static str> {
        HashMap::from([
            ("TOP_APP_KEY", "12345678"),
            ("TOP_APP_SECRET", "s3cr3t-value"),
            (
                "RELAY_QUEUE_URL",
                "https://sqs.us-east-1.amazonaws.com/123456789012/tmc-relay",
            ),
            (
                "PARKING_QUEUE_URL",
                "http://127.0.0.1:5000/123456789012/tmc-parking",
            ),
            ("DEDUP_TABLE_NAME", "tmc-dedup"),
        ])
    }

    fn load(m: &HashMap<&'static str, &'static str>) -> Result<Config, ConfigError> {
        Config::from_lookup(|k| m.get(k).map(|v| v.to_string()))
    }

    fn err(over: &[(&'static str, &'static str)]) -> ConfigError {
        let mut m = base();
        m.extend(over.iter().copied());
        load(&m).unwrap_err()
    }

    /// The minimal environment gives the documented defaults.
    #[test]
    fn defaults() {
        let c = load(&base()).unwrap();
        assert_eq!(c.top.endpoint.as_str(), DEFAULT_ENDPOINT);
        assert_eq!(c.top.sign_method, SignMethod::HmacSha256);
        assert_eq!(c.groups, vec![String::new()]);
        assert_eq!((c.quantity, c.concurrency, c.mode), (200, 1, Mode::Drain));
        assert_eq!(c.retention, Duration::from_secs(7 * 86_400));
        assert_eq!(c.fifo_group_by, FifoGroupBy::BizKey);
        assert_eq!(c.parallelism, 32);
        assert_eq!(c.empty_backoff, Duration::from_secs(1));
        assert_eq!(c.max_clock_offset, Duration::from_secs(2));
    }

    /// ENV_VARS (which the template test holds the template to) is exactly what the code asks
    /// the environment for, so a new setting cannot miss the template.
    #[test]
    fn env_vars_lists_every_variable_read() {
        let asked = std::cell::RefCell::new(std::collections::BTreeSet::new());
        let m = base();
        Config::from_lookup(|k| {
            asked.borrow_mut().insert(k.to_owned());
            m.get(k).map(|v| v.to_string())
        })
        .unwrap();
        let listed: std::collections::BTreeSet<String> =
            ENV_VARS.iter().map(|v| v.to_string()).collect();
        let mut asked = asked.into_inner();
        // The standard AWS_* settings are checked for safety, never set by the template.
        let aws: Vec<String> = asked
            .iter()
            .filter(|v| v.starts_with("AWS_"))
            .cloned()
            .collect();
        assert!(aws.contains(&"AWS_ENDPOINT_URL".to_owned()), "{aws:?}");
        asked.retain(|v| !v.starts_with("AWS_"));
        assert_eq!(asked, listed);
    }

    /// AWS endpoint overrides follow the gateway's rule: https, loopback http, or http with the
    /// insecure switch; a bad one is named.
    #[test]
    fn aws_endpoints_need_https_off_loopback() {
        for ok in [
            "https://sqs.example.com",
            "http://127.0.0.1:5000",
            "http://localhost:4566",
            "http://[::1]:5000",
        ] {
            let mut m = base();
            m.insert("AWS_ENDPOINT_URL", ok);
            assert!(load(&m).is_ok(), "{ok}");
        }
        let e = err(&[("AWS_ENDPOINT_URL_SQS", "http://10.0.0.5:4566")]);
        assert_eq!(e.var, "AWS_ENDPOINT_URL_SQS");
        // The archive holds order data too.
        let e = err(&[("AWS_ENDPOINT_URL_S3", "http://10.0.0.5:4566")]);
        assert_eq!(e.var, "AWS_ENDPOINT_URL_S3");
        assert!(e.problem.contains(AWS_INSECURE_SWITCH), "{e}");
        assert_eq!(
            err(&[("AWS_ENDPOINT_URL", "not a url")]).var,
            "AWS_ENDPOINT_URL"
        );
        let mut m = base();
        m.insert("AWS_ENDPOINT_URL_DYNAMODB", "http://10.0.0.5:4566");
        m.insert(AWS_INSECURE_SWITCH, "true");
        assert!(load(&m).is_ok());
        assert_eq!(
            err(&[(AWS_INSECURE_SWITCH, "maybe")]).var,
            AWS_INSECURE_SWITCH
        );
    }

    /// Each bad value is refused with its variable named.
    #[test]
    fn bad_values_name_the_variable() {
        assert_eq!(err(&[("TOP_ENDPOINT", "not a url")]).var, "TOP_ENDPOINT");
        assert_eq!(
            err(&[("TOP_ENDPOINT", "ftp://example.com/x")]).var,
            "TOP_ENDPOINT"
        );
        assert_eq!(err(&[("TOP_SIGN_METHOD", "sha1")]).var, "TOP_SIGN_METHOD");
        assert_eq!(err(&[("TMC_QUANTITY", "0")]).var, "TMC_QUANTITY");
        assert_eq!(err(&[("TMC_QUANTITY", "500")]).var, "TMC_QUANTITY");
        assert_eq!(err(&[("TMC_QUANTITY", "ten")]).var, "TMC_QUANTITY");
        assert_eq!(err(&[("TMC_MODE", "fast")]).var, "TMC_MODE");
        assert_eq!(err(&[("TMC_CONCURRENCY", "0")]).var, "TMC_CONCURRENCY");
        assert_eq!(
            err(&[("TMC_EMPTY_BACKOFF_MS", "99")]).var,
            "TMC_EMPTY_BACKOFF_MS"
        );
        assert_eq!(err(&[("RELAY_QUEUE_URL", "queue")]).var, "RELAY_QUEUE_URL");
        assert_eq!(
            err(&[(
                "RELAY_QUEUE_URL",
                "https://sqs.us-east-1.amazonaws.com/only-one"
            )])
            .var,
            "RELAY_QUEUE_URL"
        );
        assert_eq!(
            err(&[("PARKING_QUEUE_URL", "https://h/1/bad name")]).var,
            "PARKING_QUEUE_URL"
        );
        let fifo_parking = err(&[(
            "PARKING_QUEUE_URL",
            "https://sqs.us-east-1.amazonaws.com/1/parked.fifo",
        )]);
        assert_eq!(fifo_parking.var, "PARKING_QUEUE_URL");
        assert!(
            fifo_parking.to_string().contains("not FIFO"),
            "{fifo_parking}"
        );
        assert_eq!(err(&[("DEDUP_TABLE_NAME", "x")]).var, "DEDUP_TABLE_NAME");
        assert_eq!(
            err(&[("DEDUP_RETENTION_DAYS", "1")]).var,
            "DEDUP_RETENTION_DAYS"
        );
        assert_eq!(err(&[("FIFO_GROUP_BY", "shop")]).var, "FIFO_GROUP_BY");
        assert_eq!(err(&[("RELAY_PARALLELISM", "0")]).var, "RELAY_PARALLELISM");
        for v in ["499", "10001", "2s"] {
            assert_eq!(
                err(&[("MAX_CLOCK_OFFSET_MS", v)]).var,
                "MAX_CLOCK_OFFSET_MS"
            );
        }
        assert_eq!(
            err(&[("TMC_GROUP_NAMES", "a-very-long-group-name-over-32-chars")]).var,
            "TMC_GROUP_NAMES"
        );
        assert_eq!(
            err(&[(
                "TOP_APP_SECRET_ARN",
                "arn:aws:secretsmanager:us-east-1:1:secret:x"
            )])
            .var,
            "TOP_APP_SECRET"
        );
    }

    /// MAX_CLOCK_OFFSET_MS is read in milliseconds.
    #[test]
    fn clock_offset_limit_is_read() {
        let mut m = base();
        m.insert("MAX_CLOCK_OFFSET_MS", "7500");
        assert_eq!(
            load(&m).unwrap().max_clock_offset,
            Duration::from_millis(7500)
        );
    }

    /// Missing required variables are named.
    #[test]
    fn missing_values_name_the_variable() {
        for var in [
            "TOP_APP_KEY",
            "RELAY_QUEUE_URL",
            "PARKING_QUEUE_URL",
            "DEDUP_TABLE_NAME",
        ] {
            let mut m = base();
            m.remove(var);
            assert_eq!(load(&m).unwrap_err().var, var);
        }
        let mut m = base();
        m.remove("TOP_APP_SECRET");
        assert_eq!(load(&m).unwrap_err().var, "TOP_APP_SECRET_ARN");
    }

    /// Plain http is only for loopback unless the insecure switch is set.
    #[test]
    fn http_needs_loopback_or_the_insecure_switch() {
        assert_eq!(
            err(&[("TOP_ENDPOINT", "http://gw.api.taobao.com/router/rest")]).var,
            "TOP_ENDPOINT"
        );
        let mut m = base();
        m.insert("TOP_ENDPOINT", "http://127.0.0.1:8080/router/rest");
        assert!(load(&m).is_ok());
        m.insert("TOP_ENDPOINT", "http://gw.api.taobao.com/router/rest");
        m.insert("TOP_ALLOW_INSECURE_HTTP", "true");
        assert!(load(&m).is_ok());
    }

    /// Groups are trimmed, deduplicated, and `default` means the default group.
    #[test]
    fn groups() {
        let mut m = base();
        m.insert("TMC_GROUP_NAMES", " vip, default ,vip,,bulk ");
        assert_eq!(
            load(&m).unwrap().groups,
            vec!["vip".to_owned(), String::new(), "bulk".to_owned()]
        );
    }

    /// The parked commands need only the parking queue (and, for redrive, the relay queue):
    /// no TOP credentials, no table; each variable is checked as the relay checks it.
    #[test]
    fn parked_commands_need_only_their_queues() {
        let parking = "http://127.0.0.1:5000/123456789012/tmc-parking";
        let relay = "https://sqs.us-east-1.amazonaws.com/123456789012/tmc-relay.fifo";
        let load = |pairs: &[(&str, &str)], with_relay: bool| {
            let m: HashMap<String, String> = pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            ParkedEnv::from_lookup(&|k: &str| m.get(k).cloned(), with_relay)
        };
        let e = load(&[("PARKING_QUEUE_URL", parking)], false).unwrap();
        assert_eq!(
            e,
            ParkedEnv {
                parking_queue_url: parking.into(),
                relay_queue_url: None,
                fifo_group_by: FifoGroupBy::BizKey,
            }
        );
        assert_eq!(
            load(&[("PARKING_QUEUE_URL", parking)], true)
                .unwrap_err()
                .var,
            "RELAY_QUEUE_URL"
        );
        let e = load(
            &[
                ("PARKING_QUEUE_URL", parking),
                ("RELAY_QUEUE_URL", relay),
                ("FIFO_GROUP_BY", "user_id"),
            ],
            true,
        )
        .unwrap();
        assert_eq!(e.relay_queue_url.as_deref(), Some(relay));
        assert_eq!(e.fifo_group_by, FifoGroupBy::UserId);
        assert_eq!(load(&[], false).unwrap_err().var, "PARKING_QUEUE_URL");
        let fifo_parking = "https://sqs.us-east-1.amazonaws.com/1/p.fifo";
        assert_eq!(
            load(&[("PARKING_QUEUE_URL", fifo_parking)], false)
                .unwrap_err()
                .var,
            "PARKING_QUEUE_URL"
        );
        let bad_grouping = [
            ("PARKING_QUEUE_URL", parking),
            ("RELAY_QUEUE_URL", relay),
            ("FIFO_GROUP_BY", "shop"),
        ];
        assert_eq!(load(&bad_grouping, true).unwrap_err().var, "FIFO_GROUP_BY");
        // Only redrive groups messages: the other commands do not read the setting.
        assert!(load(&bad_grouping, false).is_ok());
        assert_eq!(
            load(
                &[
                    ("PARKING_QUEUE_URL", parking),
                    ("AWS_ENDPOINT_URL", "http://10.0.0.5:4566")
                ],
                false
            )
            .unwrap_err()
            .var,
            "AWS_ENDPOINT_URL"
        );
    }

    /// Neither Debug nor errors show the secret.
    #[test]
    fn secret_never_shown() {
        let c = load(&base()).unwrap();
        assert!(!format!("{c:?}").contains("s3cr3t-value"));
        let e = err(&[(
            "TOP_APP_SECRET_ARN",
            "arn:aws:secretsmanager:us-east-1:1:secret:x",
        )]);
        assert!(!e.to_string().contains("s3cr3t-value"));
    }
}
