//! Logging setup and the one CloudWatch Embedded Metric Format line per pass.

use serde_json::{json, Map, Value};
use tracing_subscriber::EnvFilter;

use crate::relay::Report;

/// EMF namespace the template's alarms and dashboard read.
pub const NAMESPACE: &str = "TmcRelay";

/// Logs to stderr: JSON when Lambda asks for it (`AWS_LAMBDA_LOG_FORMAT=JSON`), text otherwise.
/// Level from `RUST_LOG`, else `AWS_LAMBDA_LOG_LEVEL`, else `info`.
pub fn init() {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .or_else(|| {
            std::env::var("AWS_LAMBDA_LOG_LEVEL")
                .ok()
                .map(|l| l.to_ascii_lowercase())
        })
        .unwrap_or_else(|| "info".to_owned());
    let filter = EnvFilter::try_new(&filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("AWS_LAMBDA_LOG_FORMAT").is_ok_and(|v| v.eq_ignore_ascii_case("json"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    let _ = if json {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init()
    } else {
        builder.compact().try_init()
    };
}

/// The EMF document for a pass: counts, the oldest message's age and batch latency, under the
/// `FunctionName` dimension.
pub fn emf(report: &Report, function_name: &str, timestamp_ms: u64) -> Value {
    let c = &report.counts;
    let counts: [(&str, u64); 20] = [
        ("Consumed", c.consumed),
        ("Enqueued", c.enqueued),
        ("Duplicates", c.duplicates),
        ("Parked", c.parked),
        ("Deferred", c.deferred),
        ("Confirmed", c.confirmed),
        ("ConfirmFailed", c.confirm_failed),
        ("Invalid", c.invalid),
        ("Batches", c.batches),
        ("EmptyPolls", c.empty_polls),
        ("HeldElsewhere", c.held_elsewhere),
        ("UnknownOutcome", c.unknown_outcome),
        ("Unsettled", c.unsettled),
        ("LeaseLost", c.lease_lost),
        ("TakenOver", c.taken_over),
        ("ArchiveFailed", c.archive_failed),
        ("Timeouts", report.timeouts),
        ("Throttles", report.throttles),
        (
            "RateLimited",
            u64::from(report.stop_reason == crate::relay::StopReason::RateLimited),
        ),
        ("Fatal", u64::from(report.is_fatal())),
    ];
    let mut metrics = Vec::new();
    let mut doc = Map::new();
    doc.insert(
        "FunctionName".into(),
        Value::String(function_name.to_owned()),
    );
    for (name, v) in counts {
        metrics.push(json!({"Name": name, "Unit": "Count"}));
        doc.insert(name.into(), json!(v));
    }
    metrics.push(json!({"Name": "ElapsedMs", "Unit": "Milliseconds"}));
    doc.insert("ElapsedMs".into(), json!(report.elapsed_ms));
    if let Some(age) = report.oldest_message_age_seconds {
        metrics.push(json!({"Name": "OldestMessageAgeSeconds", "Unit": "Seconds"}));
        doc.insert("OldestMessageAgeSeconds".into(), json!(age));
    }
    for (name, latency) in [
        ("SqsLatencyMs", report.flow.sqs.latency_ms),
        ("DynamoDbLatencyMs", report.flow.dynamodb.latency_ms),
    ] {
        if let Some(ms) = latency {
            metrics.push(json!({"Name": name, "Unit": "Milliseconds"}));
            doc.insert(name.into(), json!(ms));
        }
    }
    if let Some(l) = report.batch_latency_ms {
        metrics.push(json!({"Name": "BatchLatencyMs", "Unit": "Milliseconds"}));
        doc.insert("BatchLatencyMs".into(), json!(l));
    }
    doc.insert("stop_reason".into(), json!(report.stop_reason));
    doc.insert(
        "_aws".into(),
        json!({
            "Timestamp": timestamp_ms,
            "CloudWatchMetrics": [{"Namespace": NAMESPACE, "Dimensions": [["FunctionName"]], "Metrics": metrics}]
        }),
    );
    Value::Object(doc)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::relay::{Counts, StopReason};

    /// Every metric declared has a value, under the FunctionName dimension.
    #[test]
    fn emf_document_is_consistent() {
        let r = Report {
            counts: Counts {
                consumed: 5,
                enqueued: 4,
                parked: 1,
                confirmed: 5,
                batches: 1,
                ..Counts::default()
            },
            stop_reason: StopReason::Empty,
            ban_seconds: None,
            error: None,
            elapsed_ms: 120,
            oldest_message_age_seconds: Some(7),
            batch_latency_ms: Some(40),
            timeouts: 3,
            throttles: 0,
            flow: Default::default(),
            usage: Default::default(),
            groups: vec![],
        };
        let v = emf(&r, "fn", 1_700_000_000_000);
        let m = &v["_aws"]["CloudWatchMetrics"][0];
        assert_eq!(m["Namespace"], "TmcRelay");
        assert_eq!(m["Dimensions"], json!([["FunctionName"]]));
        for metric in m["Metrics"].as_array().unwrap() {
            let name = metric["Name"].as_str().unwrap();
            assert!(
                v.get(name).is_some_and(|x| x.is_number()),
                "{name} has no value"
            );
        }
        assert_eq!(v["Consumed"], 5);
        assert_eq!(v["Parked"], 1);
        assert_eq!(v["OldestMessageAgeSeconds"], 7);
        assert_eq!(v["Timeouts"], 3);
        assert_eq!(v["UnknownOutcome"], 0);
        assert_eq!(v["FunctionName"], "fn");
    }
}
