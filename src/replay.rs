//! `tmc-relay replay`: archived messages sent again, rebuilt exactly as the relay builds them,
//! to the relay queue or another queue. Each id at most once per replay, each marked with the
//! `tmc_replayed_at` attribute so consumers can tell a replay from a first delivery.

use std::collections::HashSet;
use std::future::Future;
use std::io::Read as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;
use time::OffsetDateTime;
use tokio::time::Instant;

use crate::relay::archive::{message_of, ArchiveLocation};
use crate::relay::biz_key::biz_key;
use crate::relay::body::{relay_entry, FifoGroupBy};
use crate::relay::ports::{EntryOutcome, Outgoing, PortError, Queue};
use crate::relay::send::backoff_capped;

/// The attribute that marks a replayed message: the replay's start, RFC 3339.
pub const REPLAYED_AT: &str = "tmc_replayed_at";

/// Attempts of one SQS request before its entries count as failed.
const SEND_ATTEMPTS: u32 = 5;

/// Reading the archive.
pub trait ArchiveReader: Send + Sync {
    /// Every key under `prefix`.
    fn list(&self, prefix: &str) -> impl Future<Output = Result<Vec<String>, PortError>> + Send;
    /// One object's bytes.
    fn get(&self, key: &str) -> impl Future<Output = Result<Vec<u8>, PortError>> + Send;
}

/// Which archived messages to replay.
#[derive(Clone, Debug, Default)]
pub struct Selection {
    /// Consumed at or after this.
    pub since: Option<OffsetDateTime>,
    /// Consumed before this.
    pub until: Option<OffsetDateTime>,
    pub topics: Vec<String>,
    pub biz_keys: Vec<String>,
    pub user_ids: Vec<String>,
    pub groups: Vec<String>,
    pub ids: Vec<String>,
}

impl Selection {
    fn matches(&self, line: &Value) -> bool {
        let field = |name: &str| line[name].as_str().unwrap_or_default();
        let any =
            |wanted: &[String], value: &str| wanted.is_empty() || wanted.iter().any(|w| w == value);
        let consumed = OffsetDateTime::parse(
            field("consumed_at"),
            &time::format_description::well_known::Rfc3339,
        );
        let in_range = match consumed {
            Ok(t) => self.since.is_none_or(|s| t >= s) && self.until.is_none_or(|u| t < u),
            Err(_) => false,
        };
        in_range
            && any(&self.topics, field("topic"))
            && any(&self.user_ids, field("user_id"))
            && any(&self.groups, field("group_name"))
            && any(&self.ids, field("id"))
            && (self.biz_keys.is_empty()
                || biz_key(field("topic"), field("content"))
                    .is_some_and(|k| self.biz_keys.contains(&k)))
    }

    /// The hour partitions that may hold the range: `dt=.../hour=.../` prefixes.
    fn hours(&self, location: &ArchiveLocation) -> Result<Vec<String>, String> {
        let (Some(since), Some(until)) = (self.since, self.until) else {
            return Err("a replay needs --since and --until".into());
        };
        if until <= since {
            return Err(format!("--until ({until}) must be after --since ({since})"));
        }
        if until - since > time::Duration::days(400) {
            return Err("a replay covers at most 400 days".into());
        }
        let utc = |t: OffsetDateTime| t.to_offset(time::UtcOffset::UTC);
        let start = utc(since);
        let mut hour = start.replace_time(
            time::Time::from_hms(start.hour(), 0, 0).expect("an hour of the day is a time"),
        );
        let mut out = Vec::new();
        while hour < utc(until) {
            out.push(format!(
                "{}dt={:04}-{:02}-{:02}/hour={:02}/",
                location.prefix,
                hour.year(),
                u8::from(hour.month()),
                hour.day(),
                hour.hour()
            ));
            hour += time::Duration::hours(1);
        }
        Ok(out)
    }
}

/// How to replay.
#[derive(Clone, Debug)]
pub struct Options {
    /// Send nothing; count what would be sent.
    pub dry_run: bool,
    /// Messages per second at most.
    pub rate: u32,
    /// The target queue's FIFO grouping, as the relay groups (FIFO queues only).
    pub fifo_group_by: FifoGroupBy,
}

/// Live counters for a progress line.
#[derive(Debug, Default)]
pub struct Progress {
    pub objects: AtomicU64,
    pub matched: AtomicU64,
    pub sent: AtomicU64,
}

/// What a replay did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Outcome {
    /// Archive objects read.
    pub objects: u64,
    /// Lines read from them.
    pub lines: u64,
    /// Lines the selection chose, copies of an id included.
    pub matched: u64,
    /// Distinct ids among them: what is sent.
    pub unique: u64,
    /// Accepted by the queue (0 in a dry run).
    pub sent: u64,
    /// Refused by the queue or not sent after retries: name them with --id to try again.
    pub failed: Vec<String>,
    /// Archived messages the relay could not build a message from (no id, topic or content;
    /// too large), by id or line.
    pub unsendable: Vec<String>,
    pub dry_run: bool,
}

/// Replays the selection from the archive at `location` into `queue`.
pub async fn replay(
    reader: &impl ArchiveReader,
    location: &ArchiveLocation,
    queue: &impl Queue,
    sel: &Selection,
    opts: &Options,
    progress: &Progress,
) -> Result<Outcome, String> {
    let hours = sel.hours(location)?;
    let replayed_at = OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let fifo = queue.is_fifo().then_some(opts.fifo_group_by);
    let mut out = Outcome {
        dry_run: opts.dry_run,
        ..Outcome::default()
    };
    let mut seen = HashSet::new();
    let mut pending: Vec<Outgoing> = Vec::new();
    let pace = Pace::new(opts.rate);
    for hour in hours {
        let keys = reader.list(&hour).await.map_err(|e| explain(&e))?;
        for key in keys.iter().filter(|k| k.ends_with(".jsonl.gz")) {
            let body = reader.get(key).await.map_err(|e| explain(&e))?;
            out.objects += 1;
            progress.objects.fetch_add(1, Ordering::Relaxed);
            let text = gunzip(&body).map_err(|e| format!("archive object {key}: {e}"))?;
            for (n, line) in text.lines().enumerate() {
                out.lines += 1;
                let Ok(line) = serde_json::from_str::<Value>(line) else {
                    out.unsendable.push(format!("{key} line {}", n + 1));
                    continue;
                };
                if !sel.matches(&line) {
                    continue;
                }
                out.matched += 1;
                progress.matched.fetch_add(1, Ordering::Relaxed);
                let id = line["id"].as_str().unwrap_or_default().to_owned();
                if !id.is_empty() && !seen.insert(id.clone()) {
                    continue;
                }
                let Some(entry) = rebuild(&line, fifo, queue.max_message_bytes(), &replayed_at)
                else {
                    out.unsendable.push(if id.is_empty() {
                        format!("{key} line {}", n + 1)
                    } else {
                        id
                    });
                    continue;
                };
                out.unique += 1;
                pending.push(entry);
                if pending.len() == 10 {
                    flush(queue, &mut pending, opts, &pace, &mut out, progress).await;
                }
            }
        }
    }
    flush(queue, &mut pending, opts, &pace, &mut out, progress).await;
    Ok(out)
}

/// The relay's message for an archived line, plus the replay mark.
fn rebuild(
    line: &Value,
    fifo: Option<FifoGroupBy>,
    max_bytes: usize,
    replayed_at: &str,
) -> Option<Outgoing> {
    let msg = message_of(line)?;
    let group = line["group_name"].as_str().unwrap_or("default");
    let mut entry = relay_entry(&msg, group, fifo, max_bytes).ok()?;
    entry.attributes.push((REPLAYED_AT, replayed_at.to_owned()));
    (entry.wire_size() <= max_bytes).then_some(entry)
}

/// Sends what is pending (up to 10), retrying what SQS asks to retry.
async fn flush(
    queue: &impl Queue,
    pending: &mut Vec<Outgoing>,
    opts: &Options,
    pace: &Pace,
    out: &mut Outcome,
    progress: &Progress,
) {
    if pending.is_empty() {
        return;
    }
    let mut batch: Vec<Outgoing> = std::mem::take(pending);
    if opts.dry_run {
        return;
    }
    pace.wait(batch.len()).await;
    for round in 0..SEND_ATTEMPTS {
        let deadline = Instant::now() + Duration::from_secs(30);
        let retry: Vec<Outgoing> = match queue.send_batch(&batch, deadline).await {
            Ok(outcomes) => batch
                .into_iter()
                .zip(outcomes)
                .filter_map(|(e, o)| match o {
                    EntryOutcome::Accepted => {
                        out.sent += 1;
                        progress.sent.fetch_add(1, Ordering::Relaxed);
                        None
                    }
                    EntryOutcome::Rejected { .. } => {
                        out.failed.push(e.id);
                        None
                    }
                    EntryOutcome::Retry { .. } => Some(e),
                })
                .collect(),
            Err(e) if e.severity == crate::relay::ports::Severity::Retryable => batch,
            Err(e) => {
                tracing::warn!(error = %e, "the queue refused a replay request");
                out.failed.extend(batch.into_iter().map(|e| e.id));
                return;
            }
        };
        if retry.is_empty() {
            return;
        }
        batch = retry;
        tokio::time::sleep(backoff_capped(round, Duration::from_secs(2))).await;
    }
    out.failed.extend(batch.into_iter().map(|e| e.id));
}

fn gunzip(body: &[u8]) -> Result<String, String> {
    let mut text = String::new();
    flate2::read::GzDecoder::new(body)
        .read_to_string(&mut text)
        .map_err(|e| format!("not gzip JSON Lines ({e})"))?;
    Ok(text)
}

fn explain(e: &PortError) -> String {
    format!("{e}. Check ARCHIVE_URL and the operator's S3 permissions (docs/operating.md)")
}

/// Spaces sends so that at most `rate` messages go per second.
struct Pace {
    per_message: Duration,
    next: tokio::sync::Mutex<Instant>,
}

impl Pace {
    fn new(rate: u32) -> Self {
        Self {
            per_message: Duration::from_secs(1) / rate.max(1),
            next: tokio::sync::Mutex::new(Instant::now()),
        }
    }

    async fn wait(&self, messages: usize) {
        let mut next = self.next.lock().await;
        tokio::time::sleep_until(*next).await;
        *next = Instant::now().max(*next) + self.per_message * messages as u32;
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn at(s: &str) -> OffsetDateTime {
        OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).unwrap()
    }

    #[test]
    fn hours_cover_the_range_in_utc() {
        let loc = ArchiveLocation::parse("s3://b-1/tmc/").unwrap();
        let sel = Selection {
            since: Some(at("2026-12-03T07:30:00+08:00")),
            until: Some(at("2026-12-03T01:00:00Z")),
            ..Selection::default()
        };
        assert_eq!(
            sel.hours(&loc).unwrap(),
            ["tmc/dt=2026-12-02/hour=23/", "tmc/dt=2026-12-03/hour=00/"]
        );
        let backwards = Selection {
            since: sel.until,
            until: sel.since,
            ..Selection::default()
        };
        assert!(backwards.hours(&loc).unwrap_err().contains("--until"));
        assert!(Selection::default()
            .hours(&loc)
            .unwrap_err()
            .contains("--since"));
    }

    #[test]
    fn selection_filters_by_time_and_fields() {
        let line = json!({
            "id": "7104300007405429232", "topic": "taobao_trade_TradeSuccess",
            "user_id": "42", "group_name": "default", "consumed_at": "2026-12-03T00:10:00Z",
            "content": "{\"tid\":4242424242424242424}"
        });
        let base = Selection {
            since: Some(at("2026-12-03T00:00:00Z")),
            until: Some(at("2026-12-03T01:00:00Z")),
            ..Selection::default()
        };
        assert!(base.matches(&line));
        let with = |f: fn(&mut Selection)| {
            let mut s = base.clone();
            f(&mut s);
            s.matches(&line)
        };
        assert!(with(
            |s| s.biz_keys = vec!["trade_4242424242424242424".into()]
        ));
        assert!(!with(|s| s.biz_keys = vec!["4242424242424242424".into()]));
        assert!(with(|s| s.topics = vec!["taobao_trade_TradeSuccess".into()]));
        assert!(!with(
            |s| s.topics = vec!["taobao_refund_RefundCreated".into()]
        ));
        assert!(!with(|s| s.user_ids = vec!["43".into()]));
        assert!(!with(|s| s.groups = vec!["other".into()]));
        assert!(with(|s| s.ids = vec!["7104300007405429232".into()]));
        assert!(!with(|s| s.until = Some(at("2026-12-03T00:10:00Z"))));
    }
}
