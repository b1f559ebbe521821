//! The Lambda event and the manual (backfill) payload, and how they override configuration.

use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;
use tokio::time::Instant;

use crate::config::Config;
use crate::relay::{Mode, PassOptions};

/// Time kept back from the Lambda deadline for the report and metrics.
pub const MAX_SAFETY_MARGIN: Duration = Duration::from_secs(5);
/// Time kept back from the Lambda deadline for the report alone: receipts may use the rest of
/// the safety margin.
pub const REPORT_TIME: Duration = Duration::from_millis(500);
/// The command line's budget when `--max-seconds` is not given.
pub const DEFAULT_CLI_SECONDS: u64 = 300;

/// The time left in an invocation. Lambda sends `Lambda-Runtime-Deadline-Ms` as epoch
/// milliseconds; some local emulators send a relative budget instead (e.g. `600000`). A value
/// that cannot be an epoch time of this century is read as a relative budget.
pub fn budget_from_deadline(deadline_ms: u64, now_ms: u64) -> Duration {
    const YEAR_2001_MS: u64 = 978_307_200_000;
    if deadline_ms < YEAR_2001_MS {
        return Duration::from_millis(deadline_ms);
    }
    Duration::from_millis(deadline_ms.saturating_sub(now_ms))
}

/// What a manual invocation may override. Unknown fields are refused.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Overrides {
    pub group_names: Option<Vec<String>>,
    pub quantity: Option<u32>,
    pub mode: Option<Mode>,
    pub max_batches: Option<u64>,
    pub max_messages: Option<u64>,
    pub max_seconds: Option<u64>,
    pub concurrency: Option<u32>,
}

/// A refused invocation payload: nothing is consumed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid invocation payload: {0}")]
pub struct PayloadError(pub String);

impl Overrides {
    /// Reads an invocation payload. Scheduler and EventBridge events (including `{}`, `null` and
    /// events whose `detail` is the string `"{}"`) mean "run with the configured defaults".
    pub fn from_event(event: &Value) -> Result<Overrides, PayloadError> {
        let obj = match event {
            Value::Null => return Ok(Overrides::default()),
            Value::Object(o) => o,
            other => return Err(PayloadError(format!("expected a JSON object, got {other}"))),
        };
        if obj.contains_key("detail-type")
            || (obj.contains_key("source") && obj.contains_key("detail"))
        {
            return Ok(Overrides::default());
        }
        let ov: Overrides =
            serde_json::from_value(event.clone()).map_err(|e| PayloadError(e.to_string()))?;
        ov.validate()?;
        Ok(ov)
    }

    pub fn validate(&self) -> Result<(), PayloadError> {
        if let Some(q) = self.quantity {
            if !(10..=200).contains(&q) {
                return Err(PayloadError(format!("quantity must be 10..=200, got {q}")));
            }
        }
        if let Some(c) = self.concurrency {
            if !(1..=16).contains(&c) {
                return Err(PayloadError(format!("concurrency must be 1..=16, got {c}")));
            }
        }
        for (name, v) in [
            ("max_batches", self.max_batches),
            ("max_messages", self.max_messages),
            ("max_seconds", self.max_seconds),
        ] {
            if v == Some(0) {
                return Err(PayloadError(format!("{name} must be at least 1")));
            }
        }
        if self.max_seconds.is_some_and(|s| s > 86_400) {
            return Err(PayloadError("max_seconds must be at most 86400".into()));
        }
        if let Some(groups) = &self.group_names {
            if groups.iter().any(|g| g.chars().count() > 32) {
                return Err(PayloadError("group names are at most 32 characters".into()));
            }
        }
        Ok(())
    }

    /// The pass options: configuration overridden by this payload, within `hard_deadline`
    /// (the Lambda deadline, when there is one) less a safety margin.
    pub fn pass_options(
        &self,
        cfg: &Config,
        now: Instant,
        hard_deadline: Option<Instant>,
    ) -> PassOptions {
        let mut deadline = match hard_deadline {
            Some(d) => {
                let total = d.saturating_duration_since(now);
                d - (total / 10).min(MAX_SAFETY_MARGIN)
            }
            None => now + Duration::from_secs(self.max_seconds.unwrap_or(DEFAULT_CLI_SECONDS)),
        };
        if let Some(s) = self.max_seconds {
            deadline = deadline.min(now + Duration::from_secs(s));
        }
        let groups = match &self.group_names {
            Some(g) if !g.is_empty() => {
                let mut out: Vec<String> = Vec::new();
                for name in g.iter().map(|s| s.trim()) {
                    let name = if name == "default" {
                        String::new()
                    } else {
                        name.to_owned()
                    };
                    if !out.contains(&name) {
                        out.push(name);
                    }
                }
                out
            }
            _ => cfg.groups.clone(),
        };
        PassOptions {
            stop: crate::relay::Stop::never(),
            groups,
            quantity: self.quantity.unwrap_or(cfg.quantity),
            mode: self.mode.unwrap_or(cfg.mode),
            concurrency: self.concurrency.unwrap_or(cfg.concurrency),
            max_batches: self.max_batches,
            max_messages: self.max_messages,
            deadline,
            empty_backoff: cfg.empty_backoff,
            // The safety margin is the receipts' too, less what the report needs.
            receipt_deadline: hard_deadline.map(|d| {
                let total = d.saturating_duration_since(now);
                d - (total / 20).min(REPORT_TIME)
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The sample events in infra/events/ mean what their names say.
    #[test]
    fn sample_events_parse_as_documented() {
        let read = |name: &str| -> Value {
            let path = format!("{}/infra/events/{name}", env!("CARGO_MANIFEST_DIR"));
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
        };
        for scheduled in ["scheduled.json", "eventbridge-rule.json"] {
            assert_eq!(
                Overrides::from_event(&read(scheduled)).unwrap(),
                Overrides::default(),
                "{scheduled}"
            );
        }
        let backfill = Overrides::from_event(&read("backfill.json")).unwrap();
        assert_eq!(backfill.max_batches, Some(50));
        assert_eq!(backfill.concurrency, Some(2));
        assert_eq!(backfill.mode, Some(Mode::Drain));
        let e = Overrides::from_event(&read("backfill-unknown-field.json")).unwrap_err();
        assert!(e.0.contains("unknown field `max_batch`"), "{e}");
    }

    /// Epoch deadlines give the time left; an emulator's relative budget is taken as is.
    #[test]
    fn deadline_header_gives_the_budget() {
        let now = 1_795_309_525_000;
        assert_eq!(
            budget_from_deadline(now + 60_000, now),
            Duration::from_secs(60)
        );
        assert_eq!(budget_from_deadline(now - 5, now), Duration::ZERO);
        assert_eq!(budget_from_deadline(600_000, now), Duration::from_secs(600));
    }

    /// Scheduled events of every shape run with defaults.
    #[test]
    fn scheduled_events_mean_defaults() {
        for e in [
            json!({}),
            Value::Null,
            json!({"version":"0","id":"x","detail-type":"Scheduled Event","source":"aws.scheduler","account":"1","time":"2026-01-01T00:00:00Z","region":"us-east-1","resources":[],"detail":"{}"}),
            json!({"source":"aws.events","detail":{}}),
        ] {
            assert_eq!(
                Overrides::from_event(&e).unwrap(),
                Overrides::default(),
                "{e}"
            );
        }
    }

    /// A backfill payload overrides the configured values.
    #[test]
    fn backfill_payload() {
        let ov = Overrides::from_event(&json!({"group_names":["vip"],"quantity":50,"mode":"follow","max_batches":3,"max_messages":100,"max_seconds":30,"concurrency":4})).unwrap();
        assert_eq!(ov.group_names, Some(vec!["vip".to_owned()]));
        assert_eq!(
            (ov.quantity, ov.mode, ov.concurrency),
            (Some(50), Some(Mode::Follow), Some(4))
        );
    }

    /// Wrong types, negative or zero limits, unknown fields and huge numbers are refused with the field named.
    #[test]
    fn bad_payloads_are_refused() {
        let err = |v: Value| Overrides::from_event(&v).unwrap_err().0;
        assert!(err(json!({"quantity":"200"})).contains("invalid type"));
        assert!(err(json!({"max_batches":-1})).contains("-1"));
        assert!(err(json!({"max_batches":0})).contains("max_batches"));
        assert!(err(json!({"max_messages":1e30})).contains("invalid type"));
        assert!(err(json!({"quantity":99999999999u64})).contains("invalid value"));
        assert!(err(json!({"quantity":500})).contains("quantity"));
        assert!(err(json!({"concurrency":0})).contains("concurrency"));
        assert!(err(json!({"grup_names":["x"]})).contains("unknown field `grup_names`"));
        assert!(err(json!({"mode":"fast"})).contains("unknown variant"));
        assert!(err(json!([1, 2])).contains("expected a JSON object"));
        assert!(err(json!("run")).contains("expected a JSON object"));
        assert!(err(json!({"max_seconds": 100000})).contains("max_seconds"));
    }

    fn cfg() -> Config {
        Config::from_lookup(|k| {
            Some(match k {
                "TOP_APP_KEY" => "1".into(),
                "TOP_APP_SECRET" => "s".into(),
                "RELAY_QUEUE_URL" => "http://127.0.0.1:1/1/q".into(),
                "PARKING_QUEUE_URL" => "http://127.0.0.1:1/1/p".into(),
                "DEDUP_TABLE_NAME" => "table".into(),
                "TMC_GROUP_NAMES" => "a,b".into(),
                _ => return None,
            })
        })
        .unwrap()
    }

    /// The budget is the Lambda deadline less a margin, capped by max_seconds.
    #[test]
    fn budget_is_the_deadline_less_a_margin() {
        let now = Instant::now();
        let o = Overrides::default().pass_options(&cfg(), now, Some(now + Duration::from_secs(60)));
        assert_eq!(o.deadline, now + Duration::from_secs(55));
        let o = Overrides::default().pass_options(&cfg(), now, Some(now + Duration::from_secs(10)));
        assert_eq!(o.deadline, now + Duration::from_secs(9));
        let o = Overrides {
            max_seconds: Some(3),
            ..Default::default()
        }
        .pass_options(&cfg(), now, Some(now + Duration::from_secs(60)));
        assert_eq!(o.deadline, now + Duration::from_secs(3));
        let o = Overrides::default().pass_options(&cfg(), now, None);
        assert_eq!(o.deadline, now + Duration::from_secs(DEFAULT_CLI_SECONDS));
        assert_eq!(o.groups, vec!["a".to_owned(), "b".to_owned()]);
        let o = Overrides {
            group_names: Some(vec!["default".into()]),
            ..Default::default()
        }
        .pass_options(&cfg(), now, None);
        assert_eq!(o.groups, vec![String::new()]);
    }
}
