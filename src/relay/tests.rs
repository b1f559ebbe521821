//! The pass's behaviour against in-memory ports: the invariants of the relay, one test each.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::time::Instant;

use super::memory::{throttled, Event, EventLog, MemoryQueue, MemoryStore, MemoryTmc};
use super::ports::{EntryOutcome, PortError, Severity};
use super::*;
use crate::top::{TmcMessage, TopError};

pub(super) type TestRelay = Relay<MemoryTmc, MemoryQueue, MemoryStore>;

pub(super) fn msg(id: u64) -> TmcMessage {
    TmcMessage::from_value(json!({
        "id": id, "topic": "taobao_trade_TradeChanged", "user_id": 42, "user_nick": "shop",
        "pub_time": "2026-01-01 12:00:00", "content": format!("{{\"tid\":{id}}}")
    }))
}

pub(super) fn relay() -> (Arc<TestRelay>, EventLog) {
    let log = EventLog::default();
    let r = Relay::new(
        MemoryTmc::new(log.clone()),
        MemoryQueue::new("relay", log.clone()),
        MemoryQueue::new("parking", log.clone()),
        MemoryStore::new(),
        RelaySettings {
            max_send_attempts: 3,
            ..RelaySettings::default()
        },
    );
    (Arc::new(r), log)
}

pub(super) fn opts() -> PassOptions {
    PassOptions {
        stop: Stop::never(),
        groups: vec![String::new()],
        quantity: 200,
        mode: Mode::Drain,
        concurrency: 1,
        max_batches: None,
        max_messages: None,
        deadline: Instant::now() + Duration::from_secs(20),
        empty_backoff: Duration::from_millis(100),
        receipt_deadline: None,
    }
}

pub(super) fn confirmed(log: &EventLog) -> Vec<u64> {
    log.lock()
        .unwrap()
        .iter()
        .filter_map(|e| {
            if let Event::Confirmed(i) = e {
                Some(*i)
            } else {
                None
            }
        })
        .collect()
}

/// Every id confirmed was accepted by a queue earlier in the event log (invariant 1).
pub(super) fn assert_confirmed_after_acceptance(log: &EventLog) {
    let log = log.lock().unwrap();
    for (i, e) in log.iter().enumerate() {
        if let Event::Confirmed(id) = e {
            let id = id.to_string();
            assert!(
                log[..i]
                    .iter()
                    .any(|p| matches!(p, Event::Accepted(_, a) if *a == id)),
                "id {id} confirmed before any queue accepted it"
            );
        }
    }
}

/// A batch is enqueued, recorded as done and confirmed, in that order.
#[tokio::test]
async fn relays_a_batch_and_confirms_after_acceptance() {
    let (r, log) = relay();
    r.tmc.push(Ok((1..=25).map(msg).collect()));
    let rep = r.run(opts()).await;
    assert_eq!(
        (
            rep.counts.consumed,
            rep.counts.enqueued,
            rep.counts.confirmed
        ),
        (25, 25, 25)
    );
    assert_eq!(rep.stop_reason, StopReason::Empty);
    assert_eq!(rep.counts.batches, 1);
    assert_eq!(rep.counts.empty_polls, 1);
    assert_eq!(r.queue.ids().len(), 25);
    assert_eq!(
        *r.queue.calls.lock().unwrap(),
        3,
        "25 messages take 3 SQS requests"
    );
    assert_eq!(r.store.status(7), Some("done"));
    assert_confirmed_after_acceptance(&log);
}

/// A redelivered message already recorded as done is confirmed without a second enqueue (invariant 2).
#[tokio::test]
async fn redelivery_is_confirmed_not_reenqueued() {
    let (r, log) = relay();
    r.tmc.push(Ok(vec![msg(1), msg(2)]));
    r.tmc.push(Ok(vec![msg(2), msg(3)]));
    let rep = r.run(opts()).await;
    assert_eq!(r.queue.ids(), vec!["1", "2", "3"]);
    assert_eq!(rep.counts.duplicates, 1);
    assert_eq!(rep.counts.confirmed, 4);
    assert_eq!(confirmed(&log).iter().filter(|&&i| i == 2).count(), 2);
}

/// A live claim held by another pass stops this pass from enqueueing or confirming (invariant 3).
#[tokio::test]
async fn live_claim_elsewhere_blocks_enqueue_and_confirm() {
    let (r, log) = relay();
    let far = crate::top::clock::epoch_millis(std::time::SystemTime::now()) + 60_000;
    r.store.put_legacy(5, "claimed", far, far / 1000 + 86_400);
    r.tmc.push(Ok(vec![msg(5), msg(6)]));
    let rep = r.run(opts()).await;
    assert_eq!(r.queue.ids(), vec!["6"]);
    assert_eq!(rep.counts.held_elsewhere, 1);
    assert_eq!(confirmed(&log), vec![6]);
}

/// A claim whose lease has ended (its holder died) is taken over (invariant 3).
#[tokio::test]
async fn expired_claim_is_taken_over() {
    let (r, _) = relay();
    let past = crate::top::clock::epoch_millis(std::time::SystemTime::now()) - 1_000;
    r.store.put_legacy(5, "claimed", past, past / 1000 + 86_400);
    r.tmc.push(Ok(vec![msg(5)]));
    let rep = r.run(opts()).await;
    assert_eq!(r.queue.ids(), vec!["5"]);
    assert_eq!(rep.counts.enqueued, 1);
}

/// A done record past its expiry that TTL has not deleted yet counts as absent (invariant 4).
#[tokio::test]
async fn expired_done_record_counts_as_absent() {
    let (r, _) = relay();
    r.store.put_legacy(9, "done", 0, 1);
    r.tmc.push(Ok(vec![msg(9)]));
    let rep = r.run(opts()).await;
    assert_eq!(rep.counts.enqueued, 1);
    assert_eq!(r.store.status(9), Some("done"));
    let exp = r.store.claims.lock().unwrap()[&9].expires_at;
    let week = crate::top::clock::epoch_secs(std::time::SystemTime::now()) + 7 * 86_400;
    assert!(exp.abs_diff(week) < 5, "record expires after the retention");
}

/// An entry SQS keeps failing with SenderFault=false is deferred: not confirmed, and free for
/// its redelivery to take over,
/// while the rest of its batch goes through (invariants 1 and 5).
#[tokio::test]
async fn retryable_failures_defer_without_blocking_others() {
    let (r, log) = relay();
    let retry = EntryOutcome::Retry {
        code: "InternalError".into(),
        message: "x".into(),
    };
    r.queue.rule(
        "2",
        vec![retry.clone(), retry.clone(), retry.clone(), retry],
    );
    r.tmc.push(Ok(vec![msg(1), msg(2), msg(3)]));
    let rep = r.run(opts()).await;
    assert_eq!(rep.counts.deferred, 1);
    assert_eq!(rep.counts.enqueued, 2);
    assert_eq!(confirmed(&log), vec![1, 3]);
    assert_eq!(
        r.store.status(2),
        Some("free"),
        "the receipt does not list it: the redelivery takes it over"
    );
}

fn time_out_sends(r: &TestRelay, n: usize) {
    for _ in 0..n {
        r.queue
            .request_failures
            .lock()
            .unwrap()
            .push_back(PortError::ambiguous("SendMessageBatch", "timed out"));
    }
}

/// A send whose outcome is unknown (timeout) keeps its claim: a redelivery inside the lease is
/// not enqueued again, and nothing is confirmed. On a standard queue it is sent again once, not
/// on every attempt: each blind resend may be one more copy.
#[tokio::test]
async fn unknown_outcome_keeps_the_claim() {
    let (r, log) = relay();
    time_out_sends(&r, 3);
    r.tmc.push(Ok(vec![msg(1)]));
    let rep = r.run(opts()).await;
    assert_eq!(rep.counts.deferred, 1);
    assert!(confirmed(&log).is_empty());
    assert_eq!(
        r.store.status(1),
        Some("claimed"),
        "claim kept, not released"
    );
    let held: Vec<Vec<u64>> = r
        .store
        .batches
        .lock()
        .unwrap()
        .values()
        .map(|b| b.held.clone())
        .collect();
    assert_eq!(
        held,
        vec![vec![1]],
        "the receipt holds it for one more lease"
    );
    assert_eq!(*r.queue.calls.lock().unwrap(), 2, "one blind resend");
}

/// One timeout is resent and goes through on a standard queue; on a FIFO queue, which drops a
/// repeated MessageDeduplicationId, every attempt is used.
#[tokio::test]
async fn unknown_outcome_resends_once_on_standard_all_attempts_on_fifo() {
    let (r, log) = relay();
    time_out_sends(&r, 1);
    r.tmc.push(Ok(vec![msg(1)]));
    let rep = r.run(opts()).await;
    assert_eq!((rep.counts.enqueued, rep.counts.deferred), (1, 0));
    assert_eq!(confirmed(&log), vec![1]);

    let log = EventLog::default();
    let mut queue = MemoryQueue::new("relay", log.clone());
    queue.fifo = true;
    let fifo = Relay::new(
        MemoryTmc::new(log.clone()),
        queue,
        MemoryQueue::new("parking", log.clone()),
        MemoryStore::new(),
        RelaySettings {
            max_send_attempts: 3,
            ..RelaySettings::default()
        },
    );
    let fifo = Arc::new(fifo);
    time_out_sends(&fifo, 2);
    fifo.tmc.push(Ok(vec![msg(1)]));
    let rep = fifo.run(opts()).await;
    assert_eq!((rep.counts.enqueued, rep.counts.deferred), (1, 0));
    assert_eq!(*fifo.queue.calls.lock().unwrap(), 3);
    assert_eq!(confirmed(&log), vec![1]);
}

/// A definite retryable failure (throttling answered by SQS) leaves the claim free.
#[tokio::test]
async fn definite_failure_leaves_the_claim_free() {
    let (r, _) = relay();
    for _ in 0..3 {
        r.queue
            .request_failures
            .lock()
            .unwrap()
            .push_back(throttled("SendMessageBatch"));
    }
    r.tmc.push(Ok(vec![msg(1)]));
    let rep = r.run(opts()).await;
    assert_eq!(rep.counts.deferred, 1);
    assert_eq!(r.store.status(1), Some("free"));
}

/// A transient failure that clears within the attempts is retried to success.
#[tokio::test]
async fn retryable_failure_then_success() {
    let (r, log) = relay();
    r.queue.rule(
        "2",
        vec![EntryOutcome::Retry {
            code: "InternalError".into(),
            message: "x".into(),
        }],
    );
    r.queue
        .request_failures
        .lock()
        .unwrap()
        .push_back(throttled("SendMessageBatch"));
    r.tmc.push(Ok(vec![msg(1), msg(2)]));
    let rep = r.run(opts()).await;
    assert_eq!(rep.counts.enqueued, 2);
    assert_eq!(rep.counts.deferred, 0);
    assert_eq!(confirmed(&log).len(), 2);
}

/// SenderFault=true parks the message with its reason, then confirms it.
#[tokio::test]
async fn sender_fault_parks_and_confirms() {
    let (r, log) = relay();
    r.queue.rule(
        "2",
        vec![EntryOutcome::Rejected {
            code: "InvalidParameterValue".into(),
            message: "bad".into(),
        }],
    );
    r.tmc.push(Ok(vec![msg(1), msg(2)]));
    let rep = r.run(opts()).await;
    assert_eq!((rep.counts.enqueued, rep.counts.parked), (1, 1));
    let parked = r.parking.accepted.lock().unwrap().clone();
    let body: serde_json::Value = serde_json::from_str(&parked[0].body).unwrap();
    assert_eq!(body["reason_code"], "sqs_rejected");
    assert!(body["reason"]
        .as_str()
        .unwrap()
        .contains("InvalidParameterValue"));
    assert_eq!(body["original"]["id"], 2);
    assert_eq!(r.store.status(2), Some("done"));
    let mut c = confirmed(&log);
    c.sort();
    assert_eq!(c, vec![1, 2]);
    assert_confirmed_after_acceptance(&log);
}

/// When parking fails too, the message is not confirmed and its claim is left free.
#[tokio::test]
async fn failed_parking_is_not_confirmed() {
    let (r, log) = relay();
    r.queue.rule(
        "2",
        vec![EntryOutcome::Rejected {
            code: "InvalidParameterValue".into(),
            message: "bad".into(),
        }],
    );
    r.parking.rule(
        "2",
        vec![EntryOutcome::Rejected {
            code: "X".into(),
            message: "nope".into(),
        }],
    );
    r.tmc.push(Ok(vec![msg(1), msg(2)]));
    let rep = r.run(opts()).await;
    assert_eq!((rep.counts.parked, rep.counts.deferred), (0, 1));
    assert_eq!(confirmed(&log), vec![1]);
    assert_eq!(r.store.status(2), Some("free"));
}

/// Missing topic or content is parked and confirmed; a missing id is counted, parked for
/// inspection, and never confirmed.
#[tokio::test]
async fn defective_messages() {
    let (r, log) = relay();
    r.tmc.push(Ok(vec![
        TmcMessage::from_value(json!({"id": 10, "content": "c"})),
        TmcMessage::from_value(json!({"id": 11, "topic": "t"})),
        TmcMessage::from_value(json!({"topic": "t", "content": "c"})),
        TmcMessage::from_value(json!({"id": -3, "topic": "t", "content": "c"})),
        msg(12),
    ]));
    let rep = r.run(opts()).await;
    assert_eq!(rep.counts.parked, 2);
    assert_eq!(rep.counts.invalid, 2);
    assert_eq!(rep.counts.enqueued, 1);
    let mut c = confirmed(&log);
    c.sort();
    assert_eq!(c, vec![10, 11, 12]);
    assert_eq!(r.parking.accepted.lock().unwrap().len(), 4);
}

/// Two copies of one id in a batch are enqueued once and confirmed once.
#[tokio::test]
async fn duplicate_ids_in_a_batch() {
    let (r, log) = relay();
    r.tmc.push(Ok(vec![msg(1), msg(1), msg(2)]));
    let rep = r.run(opts()).await;
    assert_eq!(r.queue.ids(), vec!["1", "2"]);
    assert_eq!(rep.counts.duplicates, 1);
    assert_eq!(confirmed(&log), vec![1, 2]);
}

/// A message too large for SQS is parked (cut) and confirmed.
#[tokio::test]
async fn oversized_message_is_parked() {
    let (r, log) = relay();
    let mut big = msg(1);
    big.content = Some("x".repeat(2 * 1024 * 1024));
    r.tmc.push(Ok(vec![big, msg(2)]));
    let rep = r.run(opts()).await;
    assert_eq!((rep.counts.parked, rep.counts.enqueued), (1, 1));
    assert_eq!(confirmed(&log).len(), 2);
}

/// A whole-request permanent failure is isolated entry by entry.
#[tokio::test]
async fn whole_batch_rejection_is_isolated() {
    let (r, _) = relay();
    r.queue
        .request_failures
        .lock()
        .unwrap()
        .push_back(PortError::new(
            "SendMessageBatch",
            Severity::Permanent,
            "InvalidParameterValue",
        ));
    r.tmc.push(Ok(vec![msg(1), msg(2)]));
    let rep = r.run(opts()).await;
    assert_eq!(rep.counts.enqueued, 2);
}

/// Confirm answering is_success=false is counted; the message stays done in the table.
#[tokio::test]
async fn confirm_refused_is_counted() {
    let (r, _) = relay();
    r.tmc.refuse_confirm.lock().unwrap().push(1);
    r.tmc.push(Ok(vec![msg(1)]));
    let rep = r.run(opts()).await;
    assert_eq!((rep.counts.confirmed, rep.counts.confirm_failed), (0, 1));
    assert_eq!(r.store.status(1), Some("done"));
}

/// A missing table stops the pass as fatal, enqueues nothing, confirms nothing.
#[tokio::test]
async fn fatal_store_error_stops_the_pass() {
    let (r, log) = relay();
    r.store.failures.lock().unwrap().insert(
        "insert",
        PortError::new(
            "BatchExecuteStatement",
            Severity::Fatal,
            "ResourceNotFoundException: Requested resource not found",
        ),
    );
    for i in 1..=10 {
        r.tmc.push(Ok(vec![msg(i)]));
    }
    let rep = r.run(opts()).await;
    assert_eq!(rep.stop_reason, StopReason::Fatal);
    assert!(
        rep.error.as_deref().unwrap().contains("DEDUP_TABLE_NAME"),
        "{:?}",
        rep.error
    );
    assert!(r.queue.ids().is_empty());
    assert!(confirmed(&log).is_empty());
    // The pipelined next consume (depth 2) may already be under way when the first batch fails.
    assert!(
        *r.tmc.consumes.lock().unwrap() <= 2,
        "consuming stops after the fatal error"
    );
}

/// Throttled claims defer the message without failing the pass.
#[tokio::test]
async fn throttled_claims_defer() {
    let (r, log) = relay();
    r.store
        .failures
        .lock()
        .unwrap()
        .insert("insert", throttled("BatchExecuteStatement"));
    r.tmc.push(Ok(vec![msg(1)]));
    let rep = r.run(opts()).await;
    assert_eq!(rep.counts.deferred, 1);
    assert_eq!(rep.stop_reason, StopReason::Empty);
    assert!(confirmed(&log).is_empty());
}

/// A ban longer than the budget stops the pass with rate_limited and the ban length.
#[tokio::test]
async fn ban_stops_the_pass() {
    let (r, _) = relay();
    r.tmc.push(Err(TopError::Api {
        method: "taobao.tmc.messages.consume",
        code: 7,
        msg: "App Call Limited".into(),
        sub_code: Some("accesscontrol.limited-by-app-access-count".into()),
        sub_msg: Some("This ban will last for 3600 more seconds".into()),
        request_id: None,
    }));
    let rep = r.run(opts()).await;
    assert_eq!(rep.stop_reason, StopReason::RateLimited);
    assert_eq!(rep.ban_seconds, Some(3600));
}

/// A short ban that fits the budget is waited out, then the pass continues.
#[tokio::test(start_paused = true)]
async fn short_ban_is_waited_out() {
    let (r, _) = relay();
    r.tmc.push(Err(TopError::Api {
        method: "taobao.tmc.messages.consume",
        code: 7,
        msg: "App Call Limited".into(),
        sub_code: None,
        sub_msg: Some("This ban will last for 2 more seconds".into()),
        request_id: None,
    }));
    r.tmc.push(Ok(vec![msg(1)]));
    let rep = r.run(opts()).await;
    assert_eq!(rep.stop_reason, StopReason::Empty);
    assert_eq!(rep.counts.enqueued, 1);
}

/// A consume failure the client could not retry away is named in the group's report.
#[tokio::test(start_paused = true)]
async fn transient_consume_failure_is_reported() {
    let (r, _) = relay();
    r.tmc.push(Err(TopError::Http {
        method: "taobao.tmc.messages.consume",
        status: 502,
        body_head: "<html>".into(),
    }));
    r.tmc.push(Ok(vec![msg(1)]));
    let rep = r.run(opts()).await;
    assert_eq!(rep.counts.enqueued, 1);
    assert!(
        rep.groups[0]
            .last_error
            .as_deref()
            .unwrap()
            .contains("HTTP 502"),
        "{:?}",
        rep.groups[0].last_error
    );
}

/// A signature error is fatal and the report says which setting to check.
#[tokio::test]
async fn signature_error_is_fatal() {
    let (r, _) = relay();
    r.tmc.push(Err(TopError::Api {
        method: "taobao.tmc.messages.consume",
        code: 25,
        msg: "Invalid signature".into(),
        sub_code: None,
        sub_msg: None,
        request_id: None,
    }));
    let rep = r.run(opts()).await;
    assert_eq!(rep.stop_reason, StopReason::Fatal);
    assert!(rep.error.unwrap().contains("TOP_APP_SECRET"));
}

/// max_batches and max_messages stop the pass where asked.
#[tokio::test]
async fn limits_stop_the_pass() {
    let (r, _) = relay();
    for i in 0..5 {
        r.tmc
            .push(Ok((i * 10 + 1..=i * 10 + 10).map(msg).collect()));
    }
    let rep = r
        .run(PassOptions {
            max_batches: Some(2),
            ..opts()
        })
        .await;
    assert_eq!(
        (rep.counts.batches, rep.stop_reason),
        (2, StopReason::MaxBatches)
    );
    let rep = r
        .run(PassOptions {
            max_messages: Some(10),
            ..opts()
        })
        .await;
    assert_eq!(
        (rep.counts.consumed, rep.stop_reason),
        (10, StopReason::MaxMessages)
    );
}

/// With four loops on one group, max_batches and max_messages are shared: the loops together
/// consume no more batches than allowed.
#[tokio::test]
async fn limits_hold_across_concurrent_loops() {
    let (r, _) = relay();
    for i in 0..10 {
        r.tmc
            .push(Ok((i * 10 + 1..=i * 10 + 10).map(msg).collect()));
    }
    let rep = r
        .run(PassOptions {
            concurrency: 4,
            max_batches: Some(3),
            ..opts()
        })
        .await;
    assert_eq!(
        (rep.counts.batches, rep.stop_reason),
        (3, StopReason::MaxBatches)
    );
    assert_eq!(*r.tmc.consumes.lock().unwrap(), 3);
    assert_eq!(rep.counts.enqueued, 30);

    // 25 messages at 10 per consume: three consumes (the last asks for the minimum, 10).
    let rep = r
        .run(PassOptions {
            concurrency: 4,
            quantity: 10,
            max_messages: Some(25),
            ..opts()
        })
        .await;
    assert_eq!(rep.stop_reason, StopReason::MaxMessages);
    assert_eq!(*r.tmc.consumes.lock().unwrap(), 6);
    assert_eq!(rep.counts.consumed, 30);
}

/// A fatal error stops the pass, but what was already safely enqueued is still confirmed: the
/// relay queue disappears after its first request, so one batch is in SQS and the other is not.
#[tokio::test]
async fn fatal_error_still_confirms_what_is_safe() {
    let (r, log) = relay();
    *r.queue.fail_after.lock().unwrap() = Some((
        1,
        PortError::new(
            "SendMessageBatch",
            Severity::Fatal,
            "QueueDoesNotExist: The specified queue does not exist",
        ),
    ));
    r.tmc.push(Ok((1..=10).map(msg).collect()));
    r.tmc.push(Ok((11..=20).map(msg).collect()));
    let rep = r.run(opts()).await;
    assert_eq!(rep.stop_reason, StopReason::Fatal);
    assert!(rep.error.as_deref().unwrap().contains("RELAY_QUEUE_URL"));
    assert_eq!(
        (
            rep.counts.enqueued,
            rep.counts.confirmed,
            rep.counts.deferred
        ),
        (10, 10, 10)
    );
    let mut ids: Vec<String> = confirmed(&log).iter().map(u64::to_string).collect();
    ids.sort_unstable();
    let mut accepted = r.queue.ids();
    accepted.sort_unstable();
    assert_eq!(ids, accepted);
    assert_confirmed_after_acceptance(&log);
}

/// Follow mode waits at least 100 ms after an empty poll, whatever it is configured to.
#[tokio::test(start_paused = true)]
async fn follow_mode_backs_off_at_least_100_ms() {
    let (r, _) = relay();
    let rep = r
        .run(PassOptions {
            mode: Mode::Follow,
            deadline: Instant::now() + Duration::from_secs(2),
            empty_backoff: Duration::ZERO,
            ..opts()
        })
        .await;
    assert_eq!(rep.stop_reason, StopReason::Budget);
    let polls = rep.counts.empty_polls;
    assert!((1..=20).contains(&polls), "{polls} empty polls in 2 s");
}

/// With no time left the pass stops for budget before consuming.
#[tokio::test]
async fn budget_stops_the_pass() {
    let (r, _) = relay();
    r.tmc.push(Ok(vec![msg(1)]));
    let rep = r
        .run(PassOptions {
            deadline: Instant::now() + Duration::from_millis(100),
            ..opts()
        })
        .await;
    assert_eq!(rep.stop_reason, StopReason::Budget);
    assert_eq!(*r.tmc.consumes.lock().unwrap(), 0);
}

/// Follow mode keeps polling after empty polls until the budget ends.
#[tokio::test(start_paused = true)]
async fn follow_mode_polls_until_budget() {
    let (r, _) = relay();
    r.tmc.push(Ok(vec![msg(1)]));
    let rep = r
        .run(PassOptions {
            mode: Mode::Follow,
            deadline: Instant::now() + Duration::from_secs(5),
            empty_backoff: Duration::from_secs(1),
            ..opts()
        })
        .await;
    assert_eq!(rep.stop_reason, StopReason::Budget);
    assert!(rep.counts.empty_polls >= 3, "{}", rep.counts.empty_polls);
    assert_eq!(rep.counts.enqueued, 1);
}

/// The report serialises with the documented field names.
#[tokio::test]
async fn report_json_shape() {
    let (r, _) = relay();
    r.tmc.push(Ok(vec![msg(1)]));
    let rep = r.run(opts()).await;
    let v = serde_json::to_value(&rep).unwrap();
    for k in [
        "consumed",
        "enqueued",
        "duplicates",
        "parked",
        "deferred",
        "confirmed",
        "confirm_failed",
        "batches",
        "empty_polls",
        "stop_reason",
        "elapsed_ms",
        "groups",
    ] {
        assert!(v.get(k).is_some(), "missing {k}");
    }
    assert_eq!(v["stop_reason"], "empty");
    assert_eq!(v["groups"][0]["group"], "default");
    assert_eq!(v["groups"][0]["enqueued"], 1);
}

/// A batch of `n` messages with ids from `first`.
pub(super) fn batch(first: u64, n: u64) -> Vec<TmcMessage> {
    (first..first + n).map(msg).collect()
}

/// SQS and DynamoDB that serve few requests at once and slowly, with the default settings
/// (parallelism 32, depth 4): the pass takes longer, and costs no timeout, no copy and no
/// deferral. Flow control keeps the requests in flight near what the endpoints serve.
#[tokio::test(start_paused = true)]
async fn slow_aws_costs_time_not_copies() {
    let log = EventLog::default();
    let r = Arc::new(Relay::new(
        MemoryTmc::new(log.clone()),
        MemoryQueue::new("relay", log.clone()),
        MemoryQueue::new("parking", log.clone()),
        MemoryStore::new(),
        RelaySettings::default(),
    ));
    *r.queue.workers.lock().unwrap() = Some(Arc::new(tokio::sync::Semaphore::new(2)));
    *r.queue.latency.lock().unwrap() = Duration::from_millis(400);
    *r.store.workers.lock().unwrap() = Some(Arc::new(tokio::sync::Semaphore::new(4)));
    *r.store.latency.lock().unwrap() = Duration::from_millis(60);
    for b in 0..10 {
        r.tmc.push(Ok(batch(1_000 + b * 200, 200)));
    }
    let rep = r
        .run(PassOptions {
            deadline: Instant::now() + Duration::from_secs(3600),
            ..opts()
        })
        .await;
    assert_eq!(rep.stop_reason, StopReason::Empty, "{rep:?}");
    assert_eq!(
        (
            rep.counts.enqueued,
            rep.counts.confirmed,
            rep.counts.deferred
        ),
        (2000, 2000, 0)
    );
    assert_eq!((rep.timeouts, rep.counts.unknown_outcome), (0, 0));
    let ids = r.queue.ids();
    let distinct: std::collections::HashSet<&String> = ids.iter().collect();
    assert_eq!((ids.len(), distinct.len()), (2000, 2000), "each id once");
    assert!(
        rep.flow.sqs.peak_in_flight < 16 && rep.flow.dynamodb.peak_in_flight < 24,
        "in flight stayed near what the endpoints serve: {:?}",
        rep.flow
    );
    assert_confirmed_after_acceptance(&log);
}

/// A call-limit ban too long to add to the clock (u64::MAX or i64::MAX seconds, as the
/// platform's text may say) stops the pass as rate limited; nothing overflows.
#[tokio::test]
async fn absurd_bans_saturate() {
    for secs in [
        "18446744073709551615",
        "9223372036854775807",
        "99999999999999999999999",
    ] {
        let (r, _) = relay();
        r.tmc.push(Err(TopError::Api {
            method: crate::top::api::CONSUME,
            code: 7,
            msg: "App Call Limited".into(),
            sub_code: Some("accesscontrol.limited-by-app-access-count".into()),
            sub_msg: Some(format!("This ban will last for {secs} more seconds")),
            request_id: None,
        }));
        let rep = r.run(opts()).await;
        assert_eq!(rep.stop_reason, StopReason::RateLimited, "{secs}");
        assert!(rep.ban_seconds.unwrap() >= i64::MAX as u64, "{secs}");
    }
}
