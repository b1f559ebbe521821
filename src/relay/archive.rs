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

use serde_json::Value;
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

/// One archived line. Text borrowed from the message: nothing is copied to write it.
#[derive(serde::Serialize)]
struct Line<'a> {
    id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    id_problem: Option<&'a str>,
    topic: Option<&'a str>,
    user_id: Option<String>,
    user_nick: Option<&'a str>,
    pub_time: Option<&'a str>,
    pub_app_key: Option<&'a str>,
    content: Option<&'a str>,
    group_name: &'a str,
    consumed_at: &'a str,
    batch: &'a str,
    rest: String,
}

/// The batch as gzip JSON Lines: one object per consumed message, in consume order.
///
/// Columns: `id`, `topic`, `user_id`, `user_nick`, `pub_time`, `pub_app_key`, `content` (as
/// TMC sent them; ids as exact decimal strings), `group_name`, `consumed_at` (RFC 3339, UTC),
/// `batch`, and `rest`: every other field of the message as TMC sent it (its id and user id
/// as exact numbers among them), as JSON text, so fields this relay does not know survive. A
/// message without a valid id has `id` null and its defect in `id_problem`.
pub fn batch_object(msgs: &[TmcMessage], group: &str, consumed_at: &str, batch: &str) -> Vec<u8> {
    // The lines first, then one pass of the compressor: serde writes token by token, and each
    // small write into the encoder would cost a trip through it.
    let mut text = Vec::with_capacity(msgs.len() * 512);
    for m in msgs {
        let line = Line {
            id: m.id_string(),
            id_problem: m.id_problem.as_deref(),
            topic: m.topic.as_deref(),
            user_id: m.user_id.map(|u| u.to_string()),
            user_nick: m.user_nick.as_deref(),
            pub_time: m.pub_time.as_deref(),
            pub_app_key: m.pub_app_key.as_deref(),
            content: m.content.as_deref(),
            group_name: group,
            consumed_at,
            batch,
            rest: m.rest().to_string(),
        };
        // Serialising these types into memory cannot fail.
        serde_json::to_writer(&mut text, &line).expect("a line serialises into memory");
        text.push(b'\n');
    }
    let mut enc = flate2::write::GzEncoder::new(
        Vec::with_capacity(text.len() / 4),
        flate2::Compression::fast(),
    );
    enc.write_all(&text)
        .and_then(|()| enc.finish())
        .expect("writing into memory cannot fail")
}

/// The message an archived line holds, as the relay received it.
pub fn message_of(line: &Value) -> Option<TmcMessage> {
    let rest: Value = serde_json::from_str(line["rest"].as_str()?).ok()?;
    let text = |name: &str| line[name].as_str();
    Some(TmcMessage::from_parts(
        rest,
        text("topic"),
        text("content"),
        text("pub_time"),
        text("user_nick"),
    ))
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
        let body = batch_object(&msgs, "default", "2026-12-03T04:00:05Z", "b-1");
        let mut text = String::new();
        flate2::read::GzDecoder::new(body.as_slice())
            .read_to_string(&mut text)
            .unwrap();
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
        let rest = a["rest"].as_str().unwrap();
        assert!(rest.contains("\"id\":7104300007405429232"), "{rest}");
        assert!(
            rest.contains("\"outgoing_time\":\"2026-12-03 12:00:01\""),
            "{rest}"
        );
        assert!(
            !rest.contains("content"),
            "the text fields are columns: {rest}"
        );
        // The line gives back the message as received.
        assert_eq!(message_of(a).unwrap(), msgs[0]);
        assert_eq!(message_of(a).unwrap().original(), msgs[0].original());
        assert_eq!(lines[1]["id"], Value::Null);
        assert_eq!(lines[1]["id_problem"], "message has no id");
    }
}
