//! The archive in the pass, against in-memory ports: every confirmed id is in an archive
//! object written before its confirm, and a batch whose object could not be written confirms
//! nothing (its redelivery archives and confirms it, without a second enqueue).

use std::sync::Arc;

use super::archive::ArchiveLocation;
use super::memory::{Event, EventLog, MemoryArchive};
use super::ports::{PortError, Severity};
use super::tests::{confirmed, msg, opts, relay, TestRelay};
use crate::top::TmcMessage;

fn archived_relay() -> (Arc<TestRelay>, EventLog, Arc<MemoryArchive>) {
    let (r, log) = relay();
    let archive = Arc::new(MemoryArchive::new(log.clone()));
    let r = Arc::try_unwrap(r).ok().expect("the only handle");
    let location = ArchiveLocation::parse("s3://archive-bucket/tmc/").unwrap();
    let r = r.with_archive(archive.clone(), location);
    (Arc::new(r), log, archive)
}

/// Each confirmed id was in an object the archive stored before the confirm.
fn assert_confirmed_after_archive(log: &EventLog) {
    let log = log.lock().unwrap();
    for (i, e) in log.iter().enumerate() {
        if let Event::Confirmed(id) = e {
            let id = Some(id.to_string());
            assert!(
                log[..i]
                    .iter()
                    .any(|p| matches!(p, Event::Archived(ids) if ids.contains(&id))),
                "id {id:?} confirmed before the archive held it"
            );
        }
    }
}

#[tokio::test]
async fn every_consumed_message_is_archived_before_its_confirm() {
    let (r, log, archive) = archived_relay();
    let mut batch: Vec<TmcMessage> = (1..=25).map(msg).collect();
    batch.push(TmcMessage::from_value(
        serde_json::json!({"topic": "taobao_trade_TradeChanged"}),
    ));
    r.tmc.push(Ok(batch));
    let rep = r.run(opts()).await;
    assert_eq!((rep.counts.confirmed, rep.counts.archive_failed), (25, 0));
    let objects = archive.objects.lock().unwrap().clone();
    assert_eq!(objects.len(), 1, "one object per batch");
    let key = &objects[0].0;
    assert!(
        key.starts_with("tmc/dt=") && key.contains("/hour=") && key.ends_with(".jsonl.gz"),
        "{key}"
    );
    let ids = archive.ids();
    assert_eq!(ids.len(), 26, "the message without an id is archived too");
    assert_eq!(ids.iter().filter(|i| i.is_none()).count(), 1);
    assert_confirmed_after_archive(&log);
}

/// An archive that refuses the write: the batch still reaches SQS and its receipt, but
/// nothing is confirmed; the redelivery is archived and confirmed, not enqueued again.
#[tokio::test]
async fn a_failed_archive_write_confirms_nothing_and_loses_nothing() {
    let (r, log, archive) = archived_relay();
    archive.failures.lock().unwrap().push_back(PortError::new(
        "PutObject",
        Severity::Permanent,
        "InvalidRequest: refused",
    ));
    r.tmc.push(Ok((1..=10).map(msg).collect()));
    let first = r.run(opts()).await;
    assert_eq!(first.counts.enqueued, 10);
    assert_eq!(first.counts.confirmed, 0);
    assert_eq!(first.counts.archive_failed, 10);
    assert!(confirmed(&log).is_empty());

    r.tmc.push(Ok((1..=10).map(msg).collect()));
    let again = r.run(opts()).await;
    assert_eq!(
        again.counts.enqueued, 0,
        "the dedup table stops a second enqueue"
    );
    assert_eq!(again.counts.duplicates, 10);
    assert_eq!(again.counts.confirmed, 10);
    assert_eq!(r.queue.ids().len(), 10);
    assert_confirmed_after_archive(&log);
}

/// Throttling and 5xx answers are retried within the batch's time.
#[tokio::test]
async fn transient_archive_failures_are_retried() {
    let (r, log, archive) = archived_relay();
    for _ in 0..2 {
        archive
            .failures
            .lock()
            .unwrap()
            .push_back(PortError::throttled(
                "PutObject",
                "SlowDown: reduce your request rate",
            ));
    }
    r.tmc.push(Ok((1..=10).map(msg).collect()));
    let rep = r.run(opts()).await;
    assert_eq!((rep.counts.confirmed, rep.counts.archive_failed), (10, 0));
    assert_eq!(*archive.calls.lock().unwrap(), 3);
    assert_confirmed_after_archive(&log);
}

/// A missing bucket or a refused permission stops the pass (what is already consumed ahead
/// may finish), and the batch whose write failed confirms nothing.
#[tokio::test]
async fn a_fatal_archive_error_stops_the_pass() {
    let (r, log, archive) = archived_relay();
    archive.failures.lock().unwrap().push_back(PortError::new(
        "PutObject",
        Severity::Fatal,
        "NoSuchBucket: The specified bucket does not exist",
    ));
    r.tmc.push(Ok((1..=10).map(msg).collect()));
    r.tmc.push(Ok((11..=20).map(msg).collect()));
    let rep = r.run(opts()).await;
    assert!(rep.is_fatal(), "{rep:?}");
    assert!(
        rep.error.as_deref().unwrap_or("").contains("ARCHIVE_URL"),
        "{rep:?}"
    );
    assert!(rep.counts.archive_failed >= 10, "{rep:?}");
    let confirmed = confirmed(&log);
    assert!(confirmed.iter().all(|id| *id > 10), "{confirmed:?}");
    assert_confirmed_after_archive(&log);
}
