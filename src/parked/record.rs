//! Parking records as the relay writes them (`relay::body::parking_entry`), which of them an
//! operator selected, and the relay message each one becomes again. Pure functions.

use serde::Deserialize;
use serde_json::Value;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::relay::body::{relay_entry, Defect, FifoGroupBy};
use crate::relay::ports::Outgoing;
use crate::top::TmcMessage;

/// The reason codes the relay parks with, plus `unreadable` for a body that is not a parking
/// record at all (written by hand, or by something else).
pub const REASON_CODES: &[&str] = &[
    "missing_topic",
    "missing_content",
    "too_large",
    "sqs_rejected",
    "invalid_id",
    UNREADABLE,
];

/// The reason code given to a body that is not a parking record.
pub const UNREADABLE: &str = "unreadable";

/// One parking record. `original` is kept as parsed: serde_json holds its integers as
/// `u64`/`i64`, so the 64-bit ids in it stay exact.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct ParkingRecord {
    /// Machine-readable cause, e.g. `too_large`: what `--reason` selects on.
    pub reason_code: String,
    /// The cause for humans, shown by `list --json` and `show`.
    #[serde(default)]
    pub reason: String,
    /// The TMC id as exact digits; `None` when the message had no valid id.
    #[serde(default)]
    pub id: Option<String>,
    /// The group the message came from (`default` for the default group), which the relay
    /// puts in the body it builds.
    #[serde(default)]
    pub group_name: Option<String>,
    /// When it was parked (RFC 3339); the age in `list` is measured from it.
    #[serde(default)]
    pub parked_at: Option<String>,
    /// The message's fields as TMC sent them: what a redrive rebuilds the relay message from.
    #[serde(default)]
    pub original: Value,
    /// The content's full size, when it was too large to keep whole.
    #[serde(default)]
    pub content_bytes: Option<u64>,
    /// True when the record holds only part of the message: it can never be relayed from here.
    #[serde(default)]
    pub content_truncated: bool,
}

impl ParkingRecord {
    /// Reads a parking queue message body, or says why it is not a parking record.
    pub fn parse(body: &str) -> Result<ParkingRecord, String> {
        let value: Value = serde_json::from_str(body)
            .map_err(|e| format!("the body is not JSON ({e}), so not a parking record"))?;
        if !value.is_object() {
            return Err("the body is JSON but not an object, so not a parking record".into());
        }
        if !value.get("reason_code").is_some_and(Value::is_string) {
            return Err("the body has no reason_code, so it is not a parking record".into());
        }
        serde_json::from_value(value).map_err(|e| format!("the parking record is malformed: {e}"))
    }

    /// The original message's topic, when it had one.
    pub fn topic(&self) -> Option<&str> {
        self.original
            .get("topic")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
    }

    /// Seconds between `parked_at` and `now_ms` (epoch milliseconds).
    pub fn age_secs(&self, now_ms: u64) -> Option<u64> {
        let at = OffsetDateTime::parse(self.parked_at.as_deref()?, &Rfc3339).ok()?;
        let at_ms = u64::try_from(at.unix_timestamp_nanos() / 1_000_000).ok()?;
        Some(now_ms.saturating_sub(at_ms) / 1000)
    }
}

/// Which parked messages a command acts on. Within one kind any value matches; across kinds
/// all must: `--reason too_large --topic t` selects too-large messages of topic `t`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    /// Reason codes (`REASON_CODES`).
    pub reasons: Vec<String>,
    /// Topics; a trailing `*` matches a prefix (`taobao_trade_*`).
    pub topics: Vec<String>,
    /// TMC ids, or SQS message ids (the only name of a record without a TMC id).
    pub ids: Vec<String>,
}

impl Filter {
    /// Checks the values, naming the first bad one.
    pub fn validate(&self) -> Result<(), String> {
        for r in &self.reasons {
            if !REASON_CODES.contains(&r.as_str()) {
                return Err(format!(
                    "--reason {r:?} is not a reason code; expected one of {}",
                    REASON_CODES.join(", ")
                ));
            }
        }
        for (flag, values) in [("--topic", &self.topics), ("--id", &self.ids)] {
            if let Some(v) = values
                .iter()
                .find(|v| v.is_empty() || v.contains(char::is_whitespace))
            {
                return Err(format!("{flag} {v:?} is empty or has whitespace"));
            }
        }
        Ok(())
    }

    /// True when nothing narrows the selection.
    pub fn is_empty(&self) -> bool {
        self.reasons.is_empty() && self.topics.is_empty() && self.ids.is_empty()
    }

    /// Whether the message `message_id`, whose body read as `record`, is selected.
    pub fn matches(&self, message_id: &str, record: &Result<ParkingRecord, String>) -> bool {
        let (reason, topic, id) = match record {
            Ok(r) => (r.reason_code.as_str(), r.topic(), r.id.as_deref()),
            Err(_) => (UNREADABLE, None, None),
        };
        let reason_ok = self.reasons.is_empty() || self.reasons.iter().any(|r| r == reason);
        let topic_ok = self.topics.is_empty()
            || topic.is_some_and(|t| {
                self.topics.iter().any(|f| match f.strip_suffix('*') {
                    Some(prefix) => t.starts_with(prefix),
                    None => t == f,
                })
            });
        let id_ok = self.ids.is_empty()
            || self
                .ids
                .iter()
                .any(|f| f == message_id || Some(f.as_str()) == id);
        reason_ok && topic_ok && id_ok
    }
}

/// The relay message a parking record becomes, built by `relay_entry` from the record's
/// original fields exactly as the relay would have built it; or why it must stay parked.
pub fn rebuild(
    record: &ParkingRecord,
    fifo: Option<FifoGroupBy>,
    max_bytes: usize,
) -> Result<Outgoing, Defect> {
    if record.content_truncated || !record.original.is_object() {
        return Err(Defect {
            code: "content_truncated",
            reason: match record.content_bytes {
                Some(n) => format!(
                    "the record keeps only part of the message (content was {n} bytes): inspect it with `show`, then purge it"
                ),
                None => "the record keeps only part of the message: inspect it with `show`, then purge it".into(),
            },
        });
    }
    let group = record
        .group_name
        .as_deref()
        .filter(|g| !g.is_empty())
        .ok_or_else(|| Defect {
            code: "no_group_name",
            reason: "the record has no group_name, so the relay body cannot be rebuilt".into(),
        })?;
    let msg = TmcMessage::from_value(record.original.clone());
    relay_entry(&msg, group, fifo, max_bytes)
}

/// An age as a short human figure: `45s`, `12m`, `3h05m`, `2d04h`.
pub fn fmt_age(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m", s / 60),
        s if s < 86_400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        s => format!("{}d{:02}h", s / 86_400, s % 86_400 / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::relay::body::parking_entry;
    use serde_json::json;

    const TRADE: &str = r#"{"tid":9007199254740993,"oid":9007199254740993,"seller_nick":"旗舰店"}"#;

    /// A message as TMC sends it: ids as bare numbers above 2^53.
    fn original(topic: &str) -> Value {
        json!({"id": 7104300007405429232u64, "topic": topic, "content": TRADE,
               "pub_time": "2013-10-05 10:55:58", "pub_app_key": "12499723",
               "user_id": 2200000000000000001u64, "user_nick": "店铺"})
    }

    /// The record the relay itself writes for `raw`, parked for `defect`.
    fn parked(raw: Value, defect: &Defect) -> String {
        let m = TmcMessage::from_value(raw);
        parking_entry(&m, "vip", defect, "2026-11-22T00:00:00Z", 1 << 20, "p").body
    }

    fn rejected() -> Defect {
        Defect {
            code: "sqs_rejected",
            reason: "InvalidMessageContents".into(),
        }
    }

    /// A record the relay wrote reads back field by field, ids exact.
    #[test]
    fn reads_the_relays_own_record() {
        let r = ParkingRecord::parse(&parked(original("taobao_trade_TradeCreate"), &rejected()))
            .unwrap();
        assert_eq!(r.reason_code, "sqs_rejected");
        assert_eq!(r.reason, "InvalidMessageContents");
        assert_eq!(r.id.as_deref(), Some("7104300007405429232"));
        assert_eq!(r.group_name.as_deref(), Some("vip"));
        assert_eq!(r.topic(), Some("taobao_trade_TradeCreate"));
        assert_eq!(r.original["id"].as_u64(), Some(7104300007405429232));
        assert_eq!(r.original["user_id"].as_u64(), Some(2200000000000000001));
        assert!(!r.content_truncated);
        assert_eq!(r.age_secs(1_795_305_600_000 + 90_500), Some(90));
    }

    /// Bodies that are not parking records are refused with the reason.
    #[test]
    fn other_bodies_are_not_records() {
        for (body, why) in [
            ("hello", "not JSON"),
            ("[1]", "not an object"),
            (r#"{"id":"1"}"#, "no reason_code"),
            (r#"{"reason_code":5}"#, "no reason_code"),
            (r#"{"reason_code":"x","id":5}"#, "malformed"),
        ] {
            let e = ParkingRecord::parse(body).unwrap_err();
            assert!(e.contains(why), "{body}: {e}");
        }
    }

    /// Rebuilding gives byte for byte the entry the relay builds from the same message,
    /// FIFO fields included.
    #[test]
    fn rebuild_is_exactly_what_the_relay_builds() {
        let raw = original("taobao_trade_TradeCreate");
        let r = ParkingRecord::parse(&parked(raw.clone(), &rejected())).unwrap();
        let m = TmcMessage::from_value(raw);
        for fifo in [None, Some(FifoGroupBy::BizKey), Some(FifoGroupBy::UserId)] {
            let want = relay_entry(&m, "vip", fifo, 1 << 20).unwrap();
            assert_eq!(rebuild(&r, fifo, 1 << 20).unwrap(), want);
        }
        let e = rebuild(&r, Some(FifoGroupBy::BizKey), 1 << 20).unwrap();
        assert_eq!(e.group_id.as_deref(), Some("trade_9007199254740993"));
        assert!(e.body.contains(r#""id":"7104300007405429232""#));
        assert!(e.body.contains(r#""group_name":"vip""#));
    }

    /// A record whose content was cut stays parked, even when the cut content would fit.
    #[test]
    fn truncated_content_is_never_redriven() {
        let mut raw = original("taobao_trade_TradeCreate");
        raw["content"] = Value::String("x".repeat(2 * 1024 * 1024));
        let too_large = Defect {
            code: "too_large",
            reason: "big".into(),
        };
        let r = ParkingRecord::parse(&parked(raw, &too_large)).unwrap();
        assert!(r.content_truncated);
        let d = rebuild(&r, None, 1 << 20).unwrap_err();
        assert_eq!(d.code, "content_truncated");
        assert!(d.reason.contains("2097152 bytes"), "{}", d.reason);
    }

    /// Records that are still defective stay parked with the relay's own reason.
    #[test]
    fn still_defective_records_say_why() {
        let code = |raw: Value| {
            let d =
                relay_entry(&TmcMessage::from_value(raw.clone()), "g", None, 1 << 20).unwrap_err();
            let r = ParkingRecord::parse(&parked(raw, &d)).unwrap();
            rebuild(&r, None, 1 << 20).unwrap_err().code
        };
        assert_eq!(code(json!({"id": 5, "content": "c"})), "missing_topic");
        assert_eq!(code(json!({"id": 5, "topic": "t"})), "missing_content");
        assert_eq!(
            code(json!({"id": "x", "topic": "t", "content": "c"})),
            "invalid_id"
        );
        let mut r = ParkingRecord::parse(&parked(original("t"), &rejected())).unwrap();
        r.group_name = None;
        assert_eq!(
            rebuild(&r, None, 1 << 20).unwrap_err().code,
            "no_group_name"
        );
        // Over the relay queue's limit now: too_large, whatever the record was parked for.
        let r = ParkingRecord::parse(&parked(original("t"), &rejected())).unwrap();
        assert_eq!(rebuild(&r, None, 100).unwrap_err().code, "too_large");
    }

    /// Filters: any value within a kind, every kind given; ids match TMC or SQS ids; a
    /// trailing `*` is a topic prefix; unreadable bodies match only `unreadable` and their
    /// SQS id.
    #[test]
    fn filter_matching() {
        let rec = ParkingRecord::parse(&parked(original("taobao_trade_TradeCreate"), &rejected()));
        let bad: Result<ParkingRecord, String> = Err("not JSON".into());
        let f = |reasons: &[&str], topics: &[&str], ids: &[&str]| Filter {
            reasons: reasons.iter().map(|s| s.to_string()).collect(),
            topics: topics.iter().map(|s| s.to_string()).collect(),
            ids: ids.iter().map(|s| s.to_string()).collect(),
        };
        let yes = |f: Filter| f.matches("m-1", &rec);
        assert!(yes(f(&[], &[], &[])));
        assert!(yes(f(&["too_large", "sqs_rejected"], &[], &[])));
        assert!(!yes(f(&["too_large"], &[], &[])));
        assert!(yes(f(&[], &["taobao_trade_TradeCreate"], &[])));
        assert!(yes(f(&[], &["taobao_trade_*"], &[])));
        assert!(!yes(f(&[], &["taobao_trade_"], &[])));
        assert!(!yes(f(&[], &["taobao_item_*"], &[])));
        assert!(yes(f(&[], &[], &["7104300007405429232"])));
        assert!(yes(f(&[], &[], &["m-1"])));
        assert!(!yes(f(&[], &[], &["7104300007405429233"])));
        assert!(!yes(f(&["sqs_rejected"], &["taobao_item_*"], &[])));
        assert!(f(&["unreadable"], &[], &[]).matches("m-2", &bad));
        assert!(f(&[], &[], &["m-2"]).matches("m-2", &bad));
        assert!(!f(&[], &["*"], &[]).matches("m-2", &bad));
        assert!(!f(&["sqs_rejected"], &[], &[]).matches("m-2", &bad));
    }

    /// Unknown reason codes and blank values are refused, naming the flag.
    #[test]
    fn filter_validation() {
        let mut f = Filter::default();
        assert!(f.validate().is_ok() && f.is_empty());
        f.reasons = vec!["too_big".into()];
        let e = f.validate().unwrap_err();
        assert!(
            e.contains("--reason \"too_big\"") && e.contains("too_large"),
            "{e}"
        );
        f.reasons = vec!["unreadable".into()];
        f.ids = vec!["1 2".into()];
        assert!(f.validate().unwrap_err().contains("--id"));
        assert!(!f.is_empty());
    }

    /// Ages print in their largest useful units.
    #[test]
    fn ages() {
        assert_eq!(fmt_age(0), "0s");
        assert_eq!(fmt_age(59), "59s");
        assert_eq!(fmt_age(61), "1m");
        assert_eq!(fmt_age(3 * 3600 + 5 * 60 + 9), "3h05m");
        assert_eq!(fmt_age(2 * 86_400 + 4 * 3600), "2d04h");
    }
}
