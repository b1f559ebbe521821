//! The archive: every consumed batch as one compressed JSON Lines object in S3, written before
//! any of the batch may be confirmed, under Hive-style `dt=`/`hour=` partitions so Athena (or
//! DuckDB, or Spark) queries it without a crawler.
//!
//! TMC forgets a message once it is confirmed and SQS once a consumer deletes it; the archive
//! is what answers "did Taobao ever send us the event for order X?" and what `tmc-relay replay`
//! sends again. A redelivered message is archived again with its new batch: queries and replay
//! take each id once.

use std::fmt;
use std::future::Future;
use std::io::Write as _;
use std::pin::Pin;

use serde_json::{Map, Value};
use time::OffsetDateTime;
use tokio::time::Instant;

use super::ports::PortError;
use crate::top::TmcMessage;

/// A future the archive port returns (boxed: one write per batch, and the relay holds the
/// port as a trait object, so the pass stays generic over three ports, not four).
pub type ArchiveFuture<'a> = Pin<Box<dyn Future<Output = Result<(), PortError>> + Send + 'a>>;

/// Where batches are written: one object per batch.
pub trait Archive: Send + Sync + 'static {
    /// Writes one object whole, or fails; never leaves a partial object readable.
    fn put(&self, key: String, body: Vec<u8>, deadline: Instant) -> ArchiveFuture<'_>;
}

/// The archive's place, from `ARCHIVE_URL` (`s3://bucket/prefix/`).
#[derive(Clone, PartialEq, Eq)]
pub struct ArchiveLocation {
    pub bucket: String,
    /// Empty, or ends with `/`.
    pub prefix: String,
}

impl fmt::Debug for ArchiveLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "s3://{}/{}", self.bucket, self.prefix)
    }
}

impl fmt::Display for ArchiveLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

impl ArchiveLocation {
    /// Reads `s3://bucket/prefix/`; the prefix may be empty, and gets a trailing `/`.
    pub fn parse(url: &str) -> Result<Self, String> {
        let rest = url.strip_prefix("s3://").ok_or_else(|| {
            format!("ARCHIVE_URL {url:?} must start with s3:// (s3://bucket/prefix/)")
        })?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let bucket_ok = (3..=63).contains(&bucket.len())
            && bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
            && !bucket.starts_with(['-', '.'])
            && !bucket.ends_with(['-', '.']);
        if !bucket_ok {
            return Err(format!(
                "ARCHIVE_URL {url:?}: {bucket:?} is not an S3 bucket name (3-63 lower-case \
                 letters, digits, dots and hyphens)"
            ));
        }
        if prefix.starts_with('/') || prefix.contains("//") {
            return Err(format!(
                "ARCHIVE_URL {url:?}: the prefix must not start with / or hold an empty segment"
            ));
        }
        let prefix = if prefix.is_empty() || prefix.ends_with('/') {
            prefix.to_owned()
        } else {
            format!("{prefix}/")
        };
        Ok(Self {
            bucket: bucket.to_owned(),
            prefix,
        })
    }

    /// The batch's object: `<prefix>dt=YYYY-MM-DD/hour=HH/<batch>.jsonl.gz`, by the consume
    /// time in UTC.
    pub fn object_key(&self, consumed_at: OffsetDateTime, batch: &str) -> String {
        let t = consumed_at.to_offset(time::UtcOffset::UTC);
        format!(
            "{}dt={:04}-{:02}-{:02}/hour={:02}/{batch}.jsonl.gz",
            self.prefix,
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour()
        )
    }
}

/// The batch's lines: one JSON object per consumed message, in consume order.
///
/// Columns: `id`, `topic`, `user_id`, `user_nick`, `pub_time`, `pub_app_key`, `content` (as
/// TMC sent them; ids as exact decimal strings), `group_name`, `consumed_at` (RFC 3339, UTC),
/// `batch`, and `raw`: the message object exactly as received, as JSON text, so fields this
/// relay does not know survive too. A message without a valid id has `id` null and its
/// defect in `id_problem`.
pub fn batch_lines(msgs: &[TmcMessage], group: &str, consumed_at: &str, batch: &str) -> String {
    let mut out = String::new();
    for m in msgs {
        let mut line = Map::new();
        let text = |s: &Option<String>| s.clone().map_or(Value::Null, Value::String);
        line.insert(
            "id".into(),
            m.id_string().map_or(Value::Null, Value::String),
        );
        if let Some(why) = &m.id_problem {
            line.insert("id_problem".into(), Value::String(why.clone()));
        }
        line.insert("topic".into(), text(&m.topic));
        line.insert(
            "user_id".into(),
            m.user_id
                .map_or(Value::Null, |u| Value::String(u.to_string())),
        );
        line.insert("user_nick".into(), text(&m.user_nick));
        line.insert("pub_time".into(), text(&m.pub_time));
        line.insert("pub_app_key".into(), text(&m.pub_app_key));
        line.insert("content".into(), text(&m.content));
        line.insert("group_name".into(), Value::String(group.to_owned()));
        line.insert("consumed_at".into(), Value::String(consumed_at.to_owned()));
        line.insert("batch".into(), Value::String(batch.to_owned()));
        line.insert("raw".into(), Value::String(m.original().to_string()));
        out.push_str(&Value::Object(line).to_string());
        out.push('\n');
    }
    out
}

/// Gzip of `text`: what Athena reads by the `.gz` suffix.
pub fn gzip(text: &str) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(
        Vec::with_capacity(text.len() / 4),
        flate2::Compression::fast(),
    );
    // Writing into a Vec cannot fail.
    enc.write_all(text.as_bytes())
        .expect("writing into memory cannot fail");
    enc.finish().expect("writing into memory cannot fail")
}

#[cfg(test)]
mod tests {
    use std::io::Read as _;

    use serde_json::json;

    use super::*;

    fn msg(v: Value) -> TmcMessage {
        TmcMessage::from_value(v)
    }

    #[test]
    fn parses_locations() {
        let l = ArchiveLocation::parse("s3://my-archive/tmc/relay").unwrap();
        assert_eq!(
            (l.bucket.as_str(), l.prefix.as_str()),
            ("my-archive", "tmc/relay/")
        );
        let l = ArchiveLocation::parse("s3://my-archive/").unwrap();
        assert_eq!(l.prefix, "");
        let l = ArchiveLocation::parse("s3://my-archive").unwrap();
        assert_eq!(l.prefix, "");
        assert_eq!(l.to_string(), "s3://my-archive/");
        for bad in [
            "my-archive/x",
            "https://my-archive/x",
            "s3://My_Archive/x",
            "s3://ab/x",
            "s3://-ab/x",
            "s3://bucket//x",
            "s3://bucket/a//b",
        ] {
            let e = ArchiveLocation::parse(bad).unwrap_err();
            assert!(e.contains("ARCHIVE_URL"), "{bad}: {e}");
        }
    }

    #[test]
    fn keys_are_hive_partitions_in_utc() {
        let l = ArchiveLocation::parse("s3://b-1/tmc/").unwrap();
        // 2026-12-03 07:30 at GMT+8 is 2026-12-02 23:30 UTC.
        let at = time::macros::datetime!(2026-12-03 07:30:00 +8);
        assert_eq!(
            l.object_key(at, "b-00ff-1"),
            "tmc/dt=2026-12-02/hour=23/b-00ff-1.jsonl.gz"
        );
    }

    /// Ids above 2^53 stay exact, unknown fields survive in `raw`, and a message without an id
    /// is archived with its defect.
    #[test]
    fn lines_keep_ids_exact_and_every_field() {
        let msgs = [
            msg(json!({
                "id": 7104300007405429232u64,
                "topic": "taobao_trade_TradeSuccess",
                "user_id": 9007199254740993u64,
                "user_nick": "商家A",
                "pub_time": "2026-12-03 12:00:00",
                "pub_app_key": 12497914,
                "content": "{\"tid\":4242424242424242424}",
                "outgoing_time": "2026-12-03 12:00:01"
            })),
            msg(json!({"topic": "taobao_trade_TradeChanged"})),
        ];
        let text = batch_lines(&msgs, "default", "2026-12-03T04:00:05Z", "b-1");
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        let a = &lines[0];
        assert_eq!(a["id"], "7104300007405429232");
        assert_eq!(a["user_id"], "9007199254740993");
        assert_eq!(a["pub_app_key"], "12497914");
        assert_eq!(a["content"], "{\"tid\":4242424242424242424}");
        assert_eq!(a["group_name"], "default");
        assert_eq!(a["batch"], "b-1");
        let raw = a["raw"].as_str().unwrap();
        assert!(raw.contains("\"id\":7104300007405429232"), "{raw}");
        assert!(
            raw.contains("\"outgoing_time\":\"2026-12-03 12:00:01\""),
            "{raw}"
        );
        assert_eq!(lines[1]["id"], Value::Null);
        assert_eq!(lines[1]["id_problem"], "message has no id");
    }

    #[test]
    fn gzip_round_trips() {
        let text = "{\"id\":\"1\"}\n".repeat(200);
        let packed = gzip(&text);
        assert!(packed.len() < text.len() / 10, "{}", packed.len());
        let mut back = String::new();
        flate2::read::GzDecoder::new(packed.as_slice())
            .read_to_string(&mut back)
            .unwrap();
        assert_eq!(back, text);
    }
}
