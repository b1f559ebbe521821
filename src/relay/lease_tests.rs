//! The lease protocol: its rules, and every crash point of a batch, on the in-memory store
//! with a manual clock.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::*;
use crate::relay::memory::{EventLog, MemoryQueue, MemoryStore, MemoryTmc};
use crate::relay::ports::{Outgoing, Queue};
use crate::relay::tests::{
    assert_confirmed_after_acceptance, batch, confirmed, msg, opts, TestRelay,
};
use crate::relay::{PassOptions, Relay, RelaySettings};

const NOW: u64 = 1_795_300_000_000;
const LEASE: Duration = Duration::from_secs(60);

fn item(id: u64, batch: Option<&str>, legacy: Option<&str>, lease_until_ms: u64) -> ClaimItem {
    ClaimItem {
        id,
        batch: batch.map(str::to_owned),
        legacy_status: legacy.map(str::to_owned),
        lease_until_ms,
        expires_at: NOW / 1000 + 86_400,
    }
}

fn record(lease_until_ms: u64, settled: bool, accepted: &[u64], held: &[u64]) -> BatchRecord {
    BatchRecord {
        token: "other".into(),
        lease_until_ms,
        expires_at: NOW / 1000 + 86_400,
        accepted: accepted.to_vec(),
        held: held.to_vec(),
        hold_until_ms: NOW + 30_000,
        settled,
        fenced: false,
    }
}

#[test]
fn the_rules() {
    use Decision::*;
    let other = Some("other");
    let live = NOW + 1;
    let dead = NOW - 1;
    let cases: Vec<(ClaimItem, Option<BatchRecord>, Decision)> = vec![
        // Ours: a retried insert.
        (item(1, Some("mine"), None, live), None, Mine),
        // No record (gone with its TTL): take over.
        (item(1, other, None, live), None, TakeOver),
        // Accepted, settled or not yet renewed: done.
        (
            item(1, other, None, live),
            Some(record(dead, true, &[1], &[])),
            Done,
        ),
        // Lease live, not settled: held.
        (
            item(1, other, None, live),
            Some(record(live, false, &[], &[])),
            Held,
        ),
        // Lease dead, not settled: take over.
        (
            item(1, other, None, live),
            Some(record(dead, false, &[], &[])),
            TakeOver,
        ),
        // Settled without it: take over at once.
        (
            item(1, other, None, live),
            Some(record(dead, true, &[2], &[])),
            TakeOver,
        ),
        // Unknown outcome: held while the hold lasts (hold_until = NOW + 30 s).
        (
            item(1, other, None, live),
            Some(record(dead, true, &[], &[1])),
            Held,
        ),
        // The previous version's items.
        (item(1, None, Some("done"), 0), None, Done),
        (item(1, None, Some("parked"), 0), None, Done),
        (item(1, None, Some("claimed"), live), None, Held),
        (item(1, None, Some("claimed"), dead), None, TakeOver),
        // Fenced by a batch taking it over: never held again, however live its time.
        (
            item(1, other, None, live),
            Some(BatchRecord {
                fenced: true,
                ..record(live, false, &[], &[])
            }),
            TakeOver,
        ),
        // A receipt written after a fence still says what SQS accepted.
        (
            item(1, other, None, live),
            Some(BatchRecord {
                fenced: true,
                ..record(dead, true, &[1], &[])
            }),
            Done,
        ),
    ];
    for (i, (it, rec, want)) in cases.into_iter().enumerate() {
        assert_eq!(decide(&it, rec.as_ref(), "mine", NOW), want, "case {i}");
    }
    // Expired items count as absent, whatever they say.
    let mut expired = item(1, None, Some("done"), 0);
    expired.expires_at = NOW / 1000 - 1;
    assert_eq!(decide(&expired, None, "mine", NOW), TakeOver);
    // A hold that ended: take over.
    assert_eq!(
        decide(
            &item(1, other, None, live),
            Some(&record(dead, true, &[], &[1])),
            "mine",
            NOW + 31_000
        ),
        TakeOver
    );
}

#[test]
fn leases_follow_the_slowest_batch_within_bounds() {
    let p = LeasePolicy::default();
    assert_eq!(p.lease_for(Duration::ZERO), Duration::from_secs(60));
    assert_eq!(
        p.lease_for(Duration::from_secs(30)),
        Duration::from_secs(90)
    );
    assert_eq!(
        p.lease_for(Duration::from_secs(3600)),
        Duration::from_secs(600)
    );
    assert_eq!(p.lease_for(Duration::MAX), Duration::from_secs(600));
}

/// A relay whose leases read `clock`, on `store`.
fn relay_on(clock: &Clock, store: MemoryStore) -> (Arc<TestRelay>, EventLog) {
    let log = EventLog::default();
    let r = Relay::new(
        MemoryTmc::new(log.clone()),
        MemoryQueue::new("relay", log.clone()),
        MemoryQueue::new("parking", log.clone()),
        store,
        RelaySettings {
            max_send_attempts: 3,
            clock: clock.clone(),
            ..RelaySettings::default()
        },
    );
    (Arc::new(r), log)
}

/// A batch of another process that began, claimed `ids`, and (when `accepted`) wrote its
/// receipt, then died: what it left in `store`.
async fn dead_batch(store: &MemoryStore, clock: &Clock, ids: &[u64], accepted: Option<&[u64]>) {
    let limiter =
        crate::relay::flow::Limiter::new("dynamodb", crate::relay::flow::LimitConfig::new(8));
    let policy = LeasePolicy::default();
    let leases = Leases {
        store,
        limiter: &limiter,
        policy: &policy,
        clock,
    };
    let far = Instant::now() + Duration::from_secs(10);
    let lease = leases.begin("dead".into(), LEASE, far).await.unwrap();
    let claimed = leases.claim(&lease, ids, far).await;
    assert_eq!(claimed.mine.len(), ids.len());
    if let Some(acc) = accepted {
        leases
            .settle(&lease, acc.to_vec(), Vec::new(), far)
            .await
            .unwrap();
    }
}

fn entry(id: u64) -> Outgoing {
    Outgoing {
        id: id.to_string(),
        body: format!("{{\"id\":{id}}}"),
        attributes: Vec::new(),
        group_id: None,
        dedup_id: None,
    }
}

/// Crash after the claims, before any send: a redelivery within the lease is held (neither
/// sent nor confirmed); after it, taken over, sent and confirmed.
#[tokio::test]
async fn crash_after_the_claims() {
    let clock = Clock::manual(NOW);
    let (r, log) = relay_on(&clock, MemoryStore::new());
    dead_batch(&r.store, &clock, &[1, 2], None).await;
    r.tmc.push(Ok(vec![msg(1), msg(2)]));
    let rep = r.run(opts()).await;
    assert_eq!((rep.counts.held_elsewhere, rep.counts.enqueued), (2, 0));
    assert!(confirmed(&log).is_empty());

    clock.advance(LEASE + Duration::from_secs(1));
    r.tmc.push(Ok(vec![msg(1), msg(2)]));
    let rep = r.run(opts()).await;
    assert_eq!((rep.counts.taken_over, rep.counts.enqueued), (2, 2));
    assert_eq!(confirmed(&log), vec![1, 2]);
    assert_eq!(r.queue.ids(), vec!["1", "2"]);
}

/// Crash after SQS accepted, before the receipt: the redelivery after the lease sends again.
/// A copy, never a loss.
#[tokio::test]
async fn crash_after_sqs_accepted() {
    let clock = Clock::manual(NOW);
    let (r, log) = relay_on(&clock, MemoryStore::new());
    dead_batch(&r.store, &clock, &[1, 2], None).await;
    let far = Instant::now() + Duration::from_secs(5);
    r.queue
        .send_batch(&[entry(1), entry(2)], far)
        .await
        .unwrap();

    clock.advance(LEASE + Duration::from_secs(1));
    r.tmc.push(Ok(vec![msg(1), msg(2)]));
    let rep = r.run(opts()).await;
    assert_eq!(rep.counts.enqueued, 2);
    assert_eq!(r.queue.ids(), vec!["1", "2", "1", "2"], "one copy each");
    assert_eq!(confirmed(&log), vec![1, 2]);
}

/// Crash after the receipt, before the confirm: the redelivery is confirmed, not sent.
#[tokio::test]
async fn crash_after_the_receipt() {
    let clock = Clock::manual(NOW);
    let (r, log) = relay_on(&clock, MemoryStore::new());
    dead_batch(&r.store, &clock, &[1, 2], Some(&[1, 2])).await;
    r.tmc.push(Ok(vec![msg(1), msg(2)]));
    let rep = r.run(opts()).await;
    assert_eq!((rep.counts.duplicates, rep.counts.enqueued), (2, 0));
    assert_eq!(confirmed(&log), vec![1, 2]);
    assert!(r.queue.ids().is_empty());
}

/// After the confirm, TMC may still redeliver (a confirm whose answer was lost): confirmed
/// again, not sent again.
#[tokio::test]
async fn redelivery_after_the_confirm() {
    let clock = Clock::manual(NOW);
    let (r, log) = relay_on(&clock, MemoryStore::new());
    r.tmc.push(Ok(vec![msg(1), msg(2)]));
    r.run(opts()).await;
    clock.advance(Duration::from_secs(3600));
    r.tmc.push(Ok(vec![msg(1), msg(2)]));
    let rep = r.run(opts()).await;
    assert_eq!((rep.counts.duplicates, rep.counts.enqueued), (2, 0));
    assert_eq!(confirmed(&log), vec![1, 2, 1, 2]);
    assert_eq!(r.queue.ids(), vec!["1", "2"]);
}

/// Makes the store throttle every request of this kind.
fn throttle(store: &MemoryStore, kind: &'static str) {
    store
        .failures
        .lock()
        .unwrap()
        .insert(kind, crate::relay::memory::throttled("PutItem"));
}

/// A receipt that cannot be written before the deadline: nothing of the batch is confirmed.
/// Its redelivery is held while the lease lasts, then sent again: a copy, never a loss.
#[tokio::test(start_paused = true)]
async fn unwritable_receipt_confirms_nothing() {
    let clock = Clock::manual(NOW);
    let (r, log) = relay_on(&clock, MemoryStore::new());
    throttle(&r.store, "settle");
    r.tmc.push(Ok(vec![msg(1), msg(2)]));
    let rep = r.run(opts()).await;
    assert_eq!((rep.counts.enqueued, rep.counts.unsettled), (2, 2));
    assert!(
        confirmed(&log).is_empty(),
        "nothing confirmed without a receipt"
    );
    r.store.failures.lock().unwrap().clear();

    r.tmc.push(Ok(vec![msg(1), msg(2)]));
    let rep = r.run(opts()).await;
    assert_eq!(rep.counts.held_elsewhere, 2, "the lease still stands");
    assert!(confirmed(&log).is_empty());

    clock.advance(LEASE + Duration::from_secs(1));
    r.tmc.push(Ok(vec![msg(1), msg(2)]));
    let rep = r.run(opts()).await;
    assert_eq!((rep.counts.taken_over, rep.counts.enqueued), (2, 2));
    assert_eq!(confirmed(&log), vec![1, 2]);
    assert_eq!(r.queue.ids(), vec!["1", "2", "1", "2"]);
    assert_confirmed_after_acceptance(&log);
}

/// A lease that cannot be written: nothing is claimed, sent or confirmed.
#[tokio::test]
async fn unwritable_lease_defers_the_batch() {
    let clock = Clock::manual(NOW);
    let (r, log) = relay_on(&clock, MemoryStore::new());
    throttle(&r.store, "put_batch");
    r.tmc.push(Ok(vec![msg(1), msg(2)]));
    let rep = r.run(opts()).await;
    assert_eq!((rep.counts.deferred, rep.counts.enqueued), (2, 0));
    assert_eq!(r.store.requests_of("insert"), 0);
    assert!(confirmed(&log).is_empty());
}

/// A send of unknown outcome is held one more lease (SQS may have it), then taken over.
#[tokio::test]
async fn unknown_outcome_is_held_one_lease() {
    let clock = Clock::manual(NOW);
    let (r, log) = relay_on(&clock, MemoryStore::new());
    for _ in 0..3 {
        r.queue.request_failures.lock().unwrap().push_back(
            crate::relay::ports::PortError::ambiguous("SendMessageBatch", "timed out"),
        );
    }
    r.tmc.push(Ok(vec![msg(1)]));
    let rep = r.run(opts()).await;
    assert_eq!(rep.counts.unknown_outcome, 1);

    clock.advance(LEASE - Duration::from_secs(1));
    r.tmc.push(Ok(vec![msg(1)]));
    assert_eq!(r.run(opts()).await.counts.held_elsewhere, 1);

    clock.advance(Duration::from_secs(2));
    r.tmc.push(Ok(vec![msg(1)]));
    let rep = r.run(opts()).await;
    assert_eq!((rep.counts.taken_over, rep.counts.enqueued), (1, 1));
    assert_eq!(confirmed(&log), vec![1]);
}

/// A store that only says an item exists (ministack's `DuplicateItem` has no item) costs a
/// read, and decides the same.
#[tokio::test]
async fn without_old_items_the_claims_read_them() {
    let clock = Clock::manual(NOW);
    let (r, log) = relay_on(&clock, MemoryStore::default());
    r.tmc.push(Ok(vec![msg(1), msg(2)]));
    r.tmc.push(Ok(vec![msg(2), msg(3)]));
    let rep = r.run(opts()).await;
    assert_eq!(r.queue.ids(), vec!["1", "2", "3"]);
    assert_eq!(rep.counts.duplicates, 1);
    assert_eq!(confirmed(&log), vec![1, 2, 2, 3]);
    assert_eq!(
        r.store.requests_of("read"),
        2,
        "the claim item, then its batch"
    );
}

/// A clean batch of 200 costs 8 claim requests, the lease and the receipt: no reads, no
/// takeovers, no per-message write besides the claim.
#[tokio::test]
async fn a_clean_batch_costs_ten_requests() {
    let clock = Clock::manual(NOW);
    let (r, _) = relay_on(&clock, MemoryStore::new());
    r.tmc.push(Ok(batch(1_000, 200)));
    let rep = r.run(opts()).await;
    assert_eq!(rep.counts.confirmed, 200);
    let s = &r.store;
    assert_eq!(
        [
            "insert",
            "put_batch",
            "settle",
            "read",
            "take_over",
            "renew"
        ]
        .map(|k| s.requests_of(k)),
        [8, 1, 1, 0, 0, 0]
    );
}

/// The heartbeat keeps a batch's lease while it works, however long past the first lease.
#[tokio::test(start_paused = true)]
async fn the_heartbeat_keeps_a_slow_batch_alive() {
    let clock = Clock::manual(NOW);
    let store = MemoryStore::new();
    let limiter =
        crate::relay::flow::Limiter::new("dynamodb", crate::relay::flow::LimitConfig::new(8));
    let policy = LeasePolicy::default();
    let leases = Leases {
        store: &store,
        limiter: &limiter,
        policy: &policy,
        clock: &clock,
    };
    let far = Instant::now() + Duration::from_secs(3600);
    let lease = leases.begin("slow".into(), LEASE, far).await.unwrap();
    let work = async {
        for _ in 0..10 {
            tokio::time::sleep(LEASE / 2).await;
            clock.advance(LEASE / 2);
        }
    };
    tokio::select! {
        () = work => {}
        () = leases.heartbeat(&lease, far) => unreachable!(),
    }
    let r = store.batches.lock().unwrap()["slow"].clone();
    assert!(
        r.lease_until_ms > clock.now_ms(),
        "lease still live after 5 leases' time: {} <= {}",
        r.lease_until_ms,
        clock.now_ms()
    );
    assert!(store.requests_of("renew") >= 14);
}

/// The pass runs out of time while SQS is slow: its sends stop in time for the receipt, so
/// what SQS accepted is confirmed and what was in flight is held, instead of the whole batch
/// coming back as copies. Its redelivery sends only what was in flight, after the hold.
#[tokio::test(start_paused = true)]
async fn a_pass_out_of_time_still_writes_its_receipt() {
    let clock = Clock::manual(NOW);
    let (r, log) = relay_on(&clock, MemoryStore::new());
    // One request at a time, 2 s each: 25 messages take 6 s; the pass has 5.5 s, so the
    // third request is still in flight when the pass ends.
    *r.queue.latency.lock().unwrap() = Duration::from_secs(2);
    *r.queue.workers.lock().unwrap() = Some(Arc::new(tokio::sync::Semaphore::new(1)));
    *r.store.latency.lock().unwrap() = Duration::from_millis(50);
    r.tmc.push(Ok((1..=25).map(msg).collect()));
    let rep = r
        .run(PassOptions {
            deadline: Instant::now() + Duration::from_millis(5500),
            ..opts()
        })
        .await;
    let c = &rep.counts;
    assert_eq!((c.enqueued, c.confirmed, c.unsettled), (20, 20, 0), "{c:?}");
    assert_eq!(c.unknown_outcome, 5, "{c:?}");
    assert_eq!(confirmed(&log), (1..=20).collect::<Vec<_>>());
    assert_confirmed_after_acceptance(&log);

    *r.queue.latency.lock().unwrap() = Duration::ZERO;
    clock.advance(LEASE + Duration::from_secs(1));
    r.tmc.push(Ok((1..=25).map(msg).collect()));
    let rep = r.run(opts()).await;
    assert_eq!(
        (
            rep.counts.duplicates,
            rep.counts.taken_over,
            rep.counts.enqueued
        ),
        (20, 5, 5)
    );
    let sent = r.queue.ids();
    assert_eq!(
        sent.len(),
        30,
        "one copy of each of the 5 in flight, none of the 20"
    );
    assert_eq!(confirmed(&log).len(), 45);
}

/// Moves a manual clock along with tokio's (paused) time, as a host's wall clock would.
fn follow_tokio_time(clock: &Clock) -> tokio::task::JoinHandle<()> {
    let clock = clock.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            clock.advance(Duration::from_millis(100));
        }
    })
}

/// Makes the store throttle every request of this kind from `from_now` for `how_long`.
fn storm(store: &MemoryStore, kind: &'static str, from_now: Duration, how_long: Duration) {
    let start = Instant::now() + from_now;
    store.storms.lock().unwrap().push((
        kind,
        start,
        start + how_long,
        crate::relay::memory::throttled("PutItem"),
    ));
}

/// The lease store's record of a batch.
fn record_of(store: &MemoryStore, token_prefix: &str) -> BatchRecord {
    store
        .batches
        .lock()
        .unwrap()
        .values()
        .find(|r| r.token.starts_with(token_prefix))
        .cloned()
        .expect("a batch record")
}

/// A throttling storm on the receipt's write costs time, not copies: the receipt is retried
/// until the storm ends, within the pass's deadline, and the batch is confirmed.
#[tokio::test(start_paused = true)]
async fn a_receipt_outlasts_a_throttle_storm() {
    let clock = Clock::manual(NOW);
    let (r, log) = relay_on(&clock, MemoryStore::new());
    storm(&r.store, "settle", Duration::ZERO, Duration::from_secs(20));
    r.tmc.push(Ok(vec![msg(1), msg(2)]));
    let rep = r.run(opts()).await;
    let c = &rep.counts;
    assert_eq!((c.enqueued, c.unsettled, c.confirmed), (2, 0, 2), "{c:?}");
    assert!(
        r.store.requests_of("settle") > 4,
        "retried through the storm"
    );
    assert_eq!(confirmed(&log), vec![1, 2]);
    assert_confirmed_after_acceptance(&log);
}

/// While a receipt is held up for longer than a lease, the heartbeat keeps the lease: a
/// redelivery meanwhile is held, not taken over and sent again.
#[tokio::test(start_paused = true)]
async fn the_heartbeat_runs_until_the_receipt_is_written() {
    let clock = Clock::manual(NOW);
    let _time = follow_tokio_time(&clock);
    let (r, log) = relay_on(&clock, MemoryStore::new());
    storm(&r.store, "settle", Duration::ZERO, Duration::from_secs(100));
    r.tmc.push(Ok(vec![msg(1), msg(2)]));
    let pass = {
        let r = Arc::clone(&r);
        tokio::spawn(async move {
            r.run(PassOptions {
                deadline: Instant::now() + Duration::from_secs(120),
                ..opts()
            })
            .await
        })
    };
    tokio::time::sleep(LEASE + Duration::from_secs(20)).await;
    let rec = record_of(&r.store, "b-");
    assert!(!rec.settled);
    assert!(
        rec.lease_until_ms > clock.now_ms(),
        "the lease lapsed while its receipt was retried: {} <= {}",
        rec.lease_until_ms,
        clock.now_ms()
    );
    let rep = pass.await.unwrap();
    assert_eq!((rep.counts.unsettled, rep.counts.lease_lost), (0, 0));
    assert_eq!(confirmed(&log), vec![1, 2]);
}

/// A batch whose renewals all fail lets its lease lapse: it stops sending before the lease
/// ends (less the clock allowance), leaves the rest for redelivery, and counts what it sent
/// as at risk of a copy.
#[tokio::test(start_paused = true)]
async fn a_holder_whose_lease_lapsed_sends_no_more() {
    let clock = Clock::manual(NOW);
    let _time = follow_tokio_time(&clock);
    let (r, log) = relay_on(&clock, MemoryStore::new());
    storm(&r.store, "renew", Duration::ZERO, Duration::from_secs(3600));
    // One request at a time, 10 s each: 20 requests would take 200 s.
    *r.queue.latency.lock().unwrap() = Duration::from_secs(10);
    *r.queue.workers.lock().unwrap() = Some(Arc::new(tokio::sync::Semaphore::new(1)));
    r.tmc.push(Ok(batch(1_000, 200)));
    let rep = r
        .run(PassOptions {
            deadline: Instant::now() + Duration::from_secs(600),
            ..opts()
        })
        .await;
    let c = &rep.counts;
    // The lease (60 s) less twice the allowance (2 s) and a second leaves 55 s: at most 6
    // requests of 10.
    assert!(c.enqueued <= 60, "sent past the lease: {c:?}");
    assert!(c.enqueued >= 10, "{c:?}");
    assert_eq!(c.enqueued + c.deferred, 200, "{c:?}");
    // A request cut off at the fence may have been stored: its entries are of unknown outcome
    // (held in the receipt, never confirmed).
    assert_eq!(
        r.queue.ids().len() as u64,
        c.enqueued + c.unknown_outcome,
        "{c:?}"
    );
    assert_eq!(c.lease_lost, c.enqueued, "{c:?}");
    assert_eq!(c.confirmed, c.enqueued, "{c:?}");
    assert_confirmed_after_acceptance(&log);
}

/// A renewal that fails is retried within its tick, so a short storm does not eat a third
/// of the lease.
#[tokio::test(start_paused = true)]
async fn a_renewal_is_retried_within_its_tick() {
    let clock = Clock::manual(NOW);
    let _time = follow_tokio_time(&clock);
    let (r, _) = relay_on(&clock, MemoryStore::new());
    // The first renewal (at 20 s) meets a storm until 25 s.
    storm(
        &r.store,
        "renew",
        Duration::from_secs(19),
        Duration::from_secs(6),
    );
    *r.queue.latency.lock().unwrap() = Duration::from_secs(10);
    *r.queue.workers.lock().unwrap() = Some(Arc::new(tokio::sync::Semaphore::new(1)));
    r.tmc.push(Ok(batch(1_000, 60)));
    let pass = {
        let r = Arc::clone(&r);
        tokio::spawn(async move { r.run(opts_for(Duration::from_secs(600))).await })
    };
    tokio::time::sleep(Duration::from_secs(32)).await;
    let rec = record_of(&r.store, "b-");
    let left = rec.lease_until_ms.saturating_sub(clock.now_ms());
    assert!(
        left > 45_000,
        "not renewed after the storm: {left} ms of the lease left"
    );
    pass.await.unwrap();
}

fn opts_for(budget: Duration) -> PassOptions {
    PassOptions {
        deadline: Instant::now() + budget,
        ..opts()
    }
}

/// A lease counts from when its write was sent, not from before the wait for a place.
#[tokio::test(start_paused = true)]
async fn a_lease_counts_from_when_its_write_was_sent() {
    let clock = Clock::manual(NOW);
    let _time = follow_tokio_time(&clock);
    let store = MemoryStore::new();
    let limiter =
        crate::relay::flow::Limiter::new("dynamodb", crate::relay::flow::LimitConfig::new(1));
    let policy = LeasePolicy::default();
    let leases = Leases {
        store: &store,
        limiter: &limiter,
        policy: &policy,
        clock: &clock,
    };
    let far = Instant::now() + Duration::from_secs(3600);
    // Another request holds the only place for 30 s.
    let busy = limiter.acquire(far).await.expect("a place");
    let begin = leases.begin("late".into(), LEASE, far);
    let free = async {
        tokio::time::sleep(Duration::from_secs(30)).await;
        drop(busy);
    };
    let (lease, ()) = tokio::join!(begin, free);
    let lease = lease.unwrap();
    let rec = record_of(&store, "late");
    // The follower moves the clock in 100 ms steps.
    let sent_at_least = NOW + 29_800;
    assert!(
        rec.lease_until_ms >= sent_at_least + 60_000,
        "lease counted from before the wait: {}",
        rec.lease_until_ms - NOW
    );
    assert!(lease.state.valid_until_ms() <= rec.lease_until_ms);
    assert!(lease.state.valid_until_ms() >= sent_at_least + 60_000);
}

/// A takeover judged on a record that a renewal then moved on fails: the claim is decided
/// again on the renewed record (held), never taken from a live holder.
#[tokio::test]
async fn a_takeover_fails_when_the_record_changed_since_it_was_read() {
    let clock = Clock::manual(NOW);
    let (r, log) = relay_on(&clock, MemoryStore::new());
    dead_batch(&r.store, &clock, &[1, 2], None).await;
    clock.advance(LEASE + Duration::from_secs(1));
    // The holder was only slow: its renewal lands between our read and our fence.
    let renewed_to = clock.now_ms() + LEASE.as_millis() as u64;
    *r.store.before_fence.lock().unwrap() = Some(Box::new(move |rec: &mut BatchRecord| {
        rec.lease_until_ms = renewed_to;
    }));
    r.tmc.push(Ok(vec![msg(1), msg(2)]));
    let rep = r.run(opts()).await;
    let c = &rep.counts;
    assert_eq!(
        (c.held_elsewhere, c.taken_over, c.enqueued),
        (2, 0, 0),
        "{c:?}"
    );
    assert!(r.queue.ids().is_empty());
    assert!(confirmed(&log).is_empty());
    assert!(!r.store.batches.lock().unwrap()["dead"].fenced);
}

/// A takeover of a lapsed lease fences its record first: the old holder's renewals then fail
/// (it learns it lost the lease) instead of reviving it.
#[tokio::test]
async fn a_takeover_fences_the_lapsed_record() {
    let clock = Clock::manual(NOW);
    let (r, _) = relay_on(&clock, MemoryStore::new());
    dead_batch(&r.store, &clock, &[1, 2], None).await;
    clock.advance(LEASE + Duration::from_secs(1));
    r.tmc.push(Ok(vec![msg(1), msg(2)]));
    let rep = r.run(opts()).await;
    assert_eq!((rep.counts.taken_over, rep.counts.enqueued), (2, 2));
    assert!(r.store.batches.lock().unwrap()["dead"].fenced);
    let far = Instant::now() + Duration::from_secs(5);
    // As a holder whose clock is behind would renew: only the fence can refuse it.
    let now = r.store.batches.lock().unwrap()["dead"].lease_until_ms;
    assert_eq!(
        r.store
            .renew_batch("dead", now + 60_000, now, far)
            .await
            .unwrap(),
        crate::relay::ports::Renewal::Lost
    );
}

/// A late first write of a batch record never overwrites the receipt written after it.
#[tokio::test]
async fn a_late_record_write_never_overwrites_the_receipt() {
    let clock = Clock::manual(NOW);
    let store = MemoryStore::new();
    dead_batch(&store, &clock, &[1, 2], Some(&[1, 2])).await;
    let far = Instant::now() + Duration::from_secs(5);
    let late = BatchRecord {
        token: "dead".into(),
        lease_until_ms: NOW + 60_000,
        ..BatchRecord::default()
    };
    store.put_batch(&late, far).await.unwrap();
    let rec = store.batches.lock().unwrap()["dead"].clone();
    assert!(rec.settled, "{rec:?}");
    assert_eq!(rec.accepted, vec![1, 2]);
}
