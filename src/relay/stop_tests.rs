//! A stopped pass (SIGINT/SIGTERM on the command line): it consumes no more, wakes from its
//! pauses, and finishes the batches in hand within the stop's grace.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::tests::{assert_confirmed_after_acceptance, confirmed, msg, opts, relay};
use super::*;
use crate::top::TopError;

/// A follow-mode pass with a long budget and a long pause after empty polls.
fn follow(stop: &Stop) -> PassOptions {
    PassOptions {
        stop: stop.clone(),
        mode: Mode::Follow,
        deadline: Instant::now() + Duration::from_secs(600),
        empty_backoff: Duration::from_secs(60),
        ..opts()
    }
}

/// Stopped while its batch is in SQS's hands, a pass consumes no more, and the batch still
/// gets its receipt and its confirms.
#[tokio::test(start_paused = true)]
async fn a_stop_mid_pass_consumes_no_more_and_finishes_the_batch_in_hand() {
    let (r, log) = relay();
    *r.queue.latency.lock().unwrap() = Duration::from_secs(5);
    for first in [1, 26, 51] {
        r.tmc.push(Ok((first..first + 25).map(msg).collect()));
    }
    let stop = Stop::default();
    let started = Instant::now();
    let pass = tokio::spawn({
        let (r, opts) = (Arc::clone(&r), follow(&stop));
        async move { r.run(opts).await }
    });
    // 1 s in: the first batch waits for SQS's answers (5 s each), the second (consumed
    // while the first works) waits behind it, and the loop waits for a place for a third.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!r.queue.ids().is_empty(), "a batch is at SQS");
    assert!(confirmed(&log).is_empty(), "and not done yet");
    stop.fire();
    let consumes_at_stop = *r.tmc.consumes.lock().unwrap();
    let rep = pass.await.unwrap();

    assert_eq!(*r.tmc.consumes.lock().unwrap(), consumes_at_stop);
    assert_eq!(rep.stop_reason, StopReason::Stopped);
    let c = &rep.counts;
    assert_eq!(c.batches, u64::from(consumes_at_stop), "{c:?}");
    // The batches in hand went through whole: receipts written, every id confirmed.
    assert_eq!(
        (
            c.enqueued,
            c.confirmed,
            c.deferred,
            c.unsettled,
            c.abandoned
        ),
        (c.consumed, c.consumed, 0, 0, 0),
        "{c:?}"
    );
    for id in confirmed(&log) {
        assert_eq!(r.store.status(id), Some("done"), "id {id}");
    }
    assert_confirmed_after_acceptance(&log);
    // The last batch was never consumed: it stays with TMC.
    assert_eq!(r.tmc.script.lock().unwrap().len(), 1);
    assert_eq!(c.consumed, 50, "{c:?}");
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "{:?}",
        started.elapsed()
    );
}

/// A stop wakes a loop from its pause after an empty poll at once.
#[tokio::test(start_paused = true)]
async fn a_stop_wakes_the_empty_poll_pause() {
    let (r, _) = relay();
    let stop = Stop::default();
    let started = Instant::now();
    let pass = tokio::spawn({
        let (r, opts) = (Arc::clone(&r), follow(&stop));
        async move { r.run(opts).await }
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.fire();
    let rep = pass.await.unwrap();
    assert_eq!(rep.stop_reason, StopReason::Stopped);
    assert_eq!(rep.counts.empty_polls, 1);
    assert_eq!(started.elapsed(), Duration::from_secs(1));
}

/// A stop wakes a loop waiting out a TOP ban that fits the budget.
#[tokio::test(start_paused = true)]
async fn a_stop_wakes_the_ban_wait() {
    let (r, _) = relay();
    r.tmc.push(Err(TopError::Api {
        method: "taobao.tmc.messages.consume",
        code: 7,
        msg: "App Call Limited".into(),
        sub_code: None,
        sub_msg: Some("This ban will last for 300 more seconds".into()),
        request_id: None,
    }));
    r.tmc.push(Ok(vec![msg(1)]));
    let stop = Stop::default();
    let started = Instant::now();
    let pass = tokio::spawn({
        let (r, opts) = (Arc::clone(&r), follow(&stop));
        async move { r.run(opts).await }
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.fire();
    let rep = pass.await.unwrap();
    assert_eq!(rep.stop_reason, StopReason::Stopped);
    assert_eq!(
        *r.tmc.consumes.lock().unwrap(),
        1,
        "no consume after the ban"
    );
    assert_eq!(started.elapsed(), Duration::from_secs(1));
}

/// A pass stopped before it starts consumes nothing.
#[tokio::test(start_paused = true)]
async fn a_stop_before_the_pass_consumes_nothing() {
    let (r, _) = relay();
    r.tmc.push(Ok(vec![msg(1)]));
    let stop = Stop::default();
    stop.fire();
    let rep = r.run(follow(&stop)).await;
    assert_eq!(rep.stop_reason, StopReason::Stopped);
    assert_eq!(*r.tmc.consumes.lock().unwrap(), 0);
}

/// When the grace runs out, the batches still at work are dropped as in a crash: the pass
/// ends after the grace, confirms none of them and counts them as abandoned.
#[tokio::test(start_paused = true)]
async fn when_the_grace_runs_out_the_batch_is_abandoned_unconfirmed() {
    let (r, log) = relay();
    // SQS carries each request out at once and answers after 1,000 s.
    *r.queue.latency.lock().unwrap() = Duration::from_secs(1000);
    r.tmc.push(Ok((1..=25).map(msg).collect()));
    let stop = Stop::new(Duration::from_secs(30));
    let started = Instant::now();
    let pass = tokio::spawn({
        let (r, opts) = (Arc::clone(&r), follow(&stop));
        async move { r.run(opts).await }
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!r.queue.ids().is_empty(), "SQS holds some of the batch");
    stop.fire();
    let rep = pass.await.unwrap();
    assert_eq!(started.elapsed(), Duration::from_secs(31));
    assert_eq!(rep.stop_reason, StopReason::Stopped);
    assert_eq!(rep.groups[0].stop_reason, StopReason::Stopped);
    let c = &rep.counts;
    assert_eq!((c.consumed, c.abandoned, c.confirmed), (25, 25, 0), "{c:?}");
    assert!(confirmed(&log).is_empty());
    // No receipt: a redelivery takes the claims over once the lease ends (a copy, no loss).
    assert_eq!(r.store.status(1), Some("claimed"));
}
