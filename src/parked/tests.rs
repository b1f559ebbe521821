//! The parked commands against the in-memory parking queue and relay queue: what is sent,
//! what is deleted and when, and what stays parked and why.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use serde_json::{json, Value};

use super::*;
use crate::relay::body::{parking_entry, relay_entry, Defect};
use crate::relay::memory::MemoryQueue;
use crate::relay::ports::EntryOutcome;
use crate::top::TmcMessage;

const PARKED_AT: &str = "2026-11-22T00:00:00Z";
/// 2026-11-22T00:00:00Z plus one hour and five minutes.
const NOW_MS: u64 = 1_795_305_600_000 + 3_900_000;

/// A trade message as TMC sends it, ids above 2^53 as bare numbers.
fn trade(id: u64, topic: &str) -> Value {
    json!({"id": id, "topic": topic,
           "content": format!(r#"{{"tid":{},"seller_nick":"旗舰店"}}"#, id + 1),
           "pub_time": "2026-11-21 23:59:00", "pub_app_key": "12499723",
           "user_id": 2200000000000000001u64, "user_nick": "店铺"})
}

fn defect(code: &'static str) -> Defect {
    Defect {
        code,
        reason: format!("parked as {code}"),
    }
}

/// The parking record the relay itself writes.
fn record(raw: Value, code: &'static str) -> String {
    let m = TmcMessage::from_value(raw);
    parking_entry(&m, "default", &defect(code), PARKED_AT, 1 << 20, "p").body
}

/// What the relay would have sent for `raw`.
fn relayed(raw: Value, fifo: Option<FifoGroupBy>) -> Outgoing {
    relay_entry(&TmcMessage::from_value(raw), "default", fifo, 1 << 20).unwrap()
}

fn tools(bodies: Vec<String>) -> Parked<MemoryParking, MemoryQueue> {
    Parked {
        parking: MemoryParking::with(bodies),
        relay: Some(MemoryQueue::new("relay", Arc::default())),
        fifo_group_by: FifoGroupBy::BizKey,
        hold_for: HOLD_FOR,
    }
}

fn relay(t: &Parked<MemoryParking, MemoryQueue>) -> &MemoryQueue {
    t.relay.as_ref().unwrap()
}

fn accepted(t: &Parked<MemoryParking, MemoryQueue>) -> Vec<Outgoing> {
    relay(t).accepted.lock().unwrap().clone()
}

fn all() -> Selection {
    Selection::default()
}

fn outcomes(r: &RunReport) -> Vec<(Option<String>, Outcome)> {
    r.messages
        .iter()
        .map(|d| (d.id.clone(), d.outcome))
        .collect()
}

const A: u64 = 7_104_300_007_405_429_232;
const B: u64 = 7_104_300_007_405_429_299;

/// A redrive sends exactly what the relay would have sent, then deletes the parked record;
/// nothing is left held.
#[tokio::test]
async fn redrive_sends_what_the_relay_would_have_sent_then_deletes() {
    let t = tools(vec![record(
        trade(A, "taobao_trade_TradeCreate"),
        "sqs_rejected",
    )]);
    let r = t.redrive(&all(), &Progress::default()).await;
    assert_eq!(outcomes(&r), vec![(Some(A.to_string()), Outcome::Redriven)]);
    assert!(r.is_complete(), "{r:?}");
    assert_eq!(
        accepted(&t),
        vec![relayed(trade(A, "taobao_trade_TradeCreate"), None)]
    );
    assert!(t.parking.ids().is_empty());
    assert_eq!((r.scanned, r.selected), (1, 1));
    assert_eq!(r.outcomes, BTreeMap::from([("redriven", 1)]));
}

/// On a FIFO relay queue a redriven message gets the relay's group (the business key) and
/// deduplication id (the TMC id).
#[tokio::test]
async fn fifo_redrive_gets_the_relays_group_and_dedup_ids() {
    let mut t = tools(vec![record(
        trade(A, "taobao_trade_TradeCreate"),
        "sqs_rejected",
    )]);
    t.relay.as_mut().unwrap().fifo = true;
    t.redrive(&all(), &Progress::default()).await;
    let sent = accepted(&t);
    assert_eq!(
        sent,
        vec![relayed(
            trade(A, "taobao_trade_TradeCreate"),
            Some(FifoGroupBy::BizKey)
        )]
    );
    assert_eq!(
        sent[0].group_id.as_deref(),
        Some(format!("trade_{}", A + 1).as_str())
    );
    assert_eq!(sent[0].dedup_id.as_deref(), Some(A.to_string().as_str()));
}

/// A send that fails deletes nothing: the record stays parked, visible again, and the
/// outcome says to run again.
#[tokio::test]
async fn a_failed_send_deletes_nothing() {
    let t = tools(vec![record(trade(A, "t_x"), "sqs_rejected")]);
    relay(&t)
        .request_failures
        .lock()
        .unwrap()
        .push_back(PortError::new(
            "SendMessageBatch",
            Severity::Retryable,
            "ThrottlingException",
        ));
    let r = t.redrive(&all(), &Progress::default()).await;
    assert_eq!(outcomes(&r), vec![(Some(A.to_string()), Outcome::Failed)]);
    assert!(!r.is_complete());
    assert!(accepted(&t).is_empty());
    assert_eq!(t.parking.ids(), vec!["m0"]);
    assert_eq!(t.parking.held(), 0);
}

/// A send with no answer may have landed: the record stays parked and the report says a
/// rerun may relay it twice.
#[tokio::test]
async fn an_unknown_send_outcome_stays_parked_and_says_so() {
    let t = tools(vec![record(trade(A, "t_x"), "sqs_rejected")]);
    relay(&t)
        .request_failures
        .lock()
        .unwrap()
        .push_back(PortError::ambiguous("SendMessageBatch", "timed out"));
    let r = t.redrive(&all(), &Progress::default()).await;
    assert_eq!(r.messages[0].outcome, Outcome::Failed);
    let detail = r.messages[0].detail.as_deref().unwrap();
    assert!(
        detail.contains("unknown") && detail.contains("twice"),
        "{detail}"
    );
    assert_eq!(t.parking.ids(), vec!["m0"]);
}

/// SQS refusing the message again (SenderFault) keeps it parked, with SQS's words.
#[tokio::test]
async fn sqs_refusing_again_keeps_it_parked() {
    let t = tools(vec![record(trade(A, "t_x"), "sqs_rejected")]);
    relay(&t).rule(
        &A.to_string(),
        vec![EntryOutcome::Rejected {
            code: "InvalidMessageContents".into(),
            message: "bad char".into(),
        }],
    );
    let r = t.redrive(&all(), &Progress::default()).await;
    assert_eq!(r.messages[0].outcome, Outcome::Kept);
    assert_eq!(
        r.messages[0].detail.as_deref(),
        Some("sqs_rejected: SQS refused it again (InvalidMessageContents: bad char)")
    );
    assert_eq!(t.parking.ids(), vec!["m0"]);
    assert_eq!(t.parking.held(), 0);
}

/// Records that still cannot be relayed stay parked, each with its reason: content cut when
/// parked, no topic, no valid id, a body that is not a parking record.
#[tokio::test]
async fn unrelayable_records_stay_parked_with_the_reason() {
    let mut huge = trade(A, "taobao_trade_TradeCreate");
    huge["content"] = Value::String("x".repeat(2 * 1024 * 1024));
    let t = tools(vec![
        record(huge, "too_large"),
        record(json!({"id": B, "content": "c"}), "missing_topic"),
        record(
            json!({"id": "abc", "topic": "t", "content": "c"}),
            "invalid_id",
        ),
        "hand-written note".into(),
    ]);
    let r = t.redrive(&all(), &Progress::default()).await;
    let kept: Vec<(&str, &str)> = r
        .messages
        .iter()
        .map(|d| {
            assert_eq!(d.outcome, Outcome::Kept);
            let detail = d.detail.as_deref().unwrap();
            (d.reason_code.as_str(), detail.split(':').next().unwrap())
        })
        .collect();
    assert_eq!(
        kept,
        vec![
            ("too_large", "content_truncated"),
            ("missing_topic", "missing_topic"),
            ("invalid_id", "invalid_id"),
            ("unreadable", "unreadable"),
        ]
    );
    assert!(accepted(&t).is_empty());
    assert_eq!(t.parking.ids(), vec!["m0", "m1", "m2", "m3"]);
    assert_eq!(t.parking.held(), 0);
    assert!(!r.is_complete());
}

/// A delete lost after the send leaves the message relayed and still parked, reported as
/// such; the next redrive sends it again (the one duplicate a crash there costs) and then
/// deletes it.
#[tokio::test]
async fn a_lost_delete_is_reported_and_costs_one_copy_on_the_next_run() {
    let t = tools(vec![record(trade(A, "t_x"), "sqs_rejected")]);
    t.parking
        .fail_delete
        .lock()
        .unwrap()
        .insert("m0".to_owned());
    let r = t.redrive(&all(), &Progress::default()).await;
    assert_eq!(r.messages[0].outcome, Outcome::SentNotDeleted);
    assert!(r.messages[0]
        .detail
        .as_deref()
        .unwrap()
        .contains("sends it again"));
    assert_eq!(t.parking.ids(), vec!["m0"]);
    t.parking.fail_delete.lock().unwrap().clear();
    let again = t.redrive(&all(), &Progress::default()).await;
    assert_eq!(again.messages[0].outcome, Outcome::Redriven);
    assert_eq!(accepted(&t).len(), 2);
    assert!(t.parking.ids().is_empty());
}

/// Filters and `--max` choose what is redriven; everything else stays parked and visible.
#[tokio::test]
async fn filters_and_max_choose_what_is_redriven() {
    let t = tools(vec![
        record(trade(A, "taobao_item_ItemUpdate"), "sqs_rejected"),
        record(trade(A + 1, "taobao_trade_TradeCreate"), "missing_content"),
        record(trade(A + 2, "taobao_trade_TradeCreate"), "sqs_rejected"),
        record(trade(A + 3, "taobao_trade_TradeSuccess"), "sqs_rejected"),
    ]);
    let sel = Selection {
        filter: Filter {
            reasons: vec!["sqs_rejected".into()],
            topics: vec!["taobao_trade_*".into()],
            ids: vec![],
        },
        max: Some(1),
        dry_run: false,
    };
    let r = t.redrive(&sel, &Progress::default()).await;
    assert_eq!(
        outcomes(&r),
        vec![(Some((A + 2).to_string()), Outcome::Redriven)]
    );
    assert_eq!(t.parking.ids(), vec!["m0", "m1", "m3"]);
    assert_eq!(t.parking.held(), 0);
    let by_id = Selection {
        filter: Filter {
            ids: vec!["m3".into()],
            ..Filter::default()
        },
        ..Selection::default()
    };
    let r = t.redrive(&by_id, &Progress::default()).await;
    assert_eq!(
        outcomes(&r),
        vec![(Some((A + 3).to_string()), Outcome::Redriven)]
    );
    assert_eq!(t.parking.ids(), vec!["m0", "m1"]);
}

/// `--dry-run` sends and deletes nothing, and says what it would do.
#[tokio::test]
async fn dry_run_changes_nothing() {
    let t = tools(vec![
        record(trade(A, "t_x"), "sqs_rejected"),
        record(json!({"id": B, "content": "c"}), "missing_topic"),
    ]);
    let sel = Selection {
        dry_run: true,
        ..Selection::default()
    };
    let r = t.redrive(&sel, &Progress::default()).await;
    assert_eq!(
        outcomes(&r),
        vec![
            (Some(A.to_string()), Outcome::WouldRedrive),
            (Some(B.to_string()), Outcome::Kept)
        ]
    );
    assert!(accepted(&t).is_empty());
    assert_eq!(t.parking.ids(), vec!["m0", "m1"]);
    assert_eq!(t.parking.held(), 0);
    let p = t.purge(&sel, &Progress::default()).await;
    assert_eq!(p.outcomes, BTreeMap::from([("would_purge", 2)]));
    assert_eq!(t.parking.ids(), vec!["m0", "m1"]);
}

/// A second redrive finds nothing left to send: running twice relays once.
#[tokio::test]
async fn running_twice_relays_once() {
    let t = tools(vec![
        record(trade(A, "t_x"), "sqs_rejected"),
        record(trade(B, "t_x"), "sqs_rejected"),
    ]);
    let first = t.redrive(&all(), &Progress::default()).await;
    assert_eq!(first.outcomes, BTreeMap::from([("redriven", 2)]));
    let second = t.redrive(&all(), &Progress::default()).await;
    assert_eq!((second.scanned, second.selected), (0, 0));
    assert!(second.is_complete());
    assert_eq!(accepted(&t).len(), 2);
}

/// Two parked records of one TMC id are the same message: it is relayed once and both go.
#[tokio::test]
async fn two_records_of_one_id_are_relayed_once() {
    let t = tools(vec![
        record(trade(A, "t_x"), "sqs_rejected"),
        record(trade(A, "t_x"), "sqs_rejected"),
    ]);
    let r = t.redrive(&all(), &Progress::default()).await;
    assert_eq!(r.outcomes, BTreeMap::from([("redriven", 2)]));
    assert!(r.messages[1]
        .detail
        .as_deref()
        .unwrap()
        .contains("another record"));
    assert_eq!(accepted(&t).len(), 1);
    assert!(t.parking.ids().is_empty());
}

/// A fatal error (a missing relay queue) stops the run; nothing unsent is deleted.
#[tokio::test]
async fn a_fatal_error_stops_the_run_and_deletes_nothing() {
    let bodies = (0..15)
        .map(|i| record(trade(A + i, "t_x"), "sqs_rejected"))
        .collect();
    let t = tools(bodies);
    *relay(&t).fail_after.lock().unwrap() = Some((
        0,
        PortError::new(
            "SendMessageBatch",
            Severity::Fatal,
            "AWS.SimpleQueueService.NonExistentQueue",
        ),
    ));
    let r = t.redrive(&all(), &Progress::default()).await;
    assert!(r.error.as_deref().unwrap().contains("NonExistentQueue"));
    assert_eq!(r.scanned, 10, "stopped after the first round");
    assert_eq!(r.outcomes, BTreeMap::from([("failed", 10)]));
    assert_eq!(t.parking.ids().len(), 15);
    assert_eq!(t.parking.held(), 0);
}

/// Without a relay queue, redrive refuses to start.
#[tokio::test]
async fn redrive_needs_a_relay_queue() {
    let mut t = tools(vec![record(trade(A, "t_x"), "sqs_rejected")]);
    t.relay = None;
    let r = t.redrive(&all(), &Progress::default()).await;
    assert!(r.error.as_deref().unwrap().contains("RELAY_QUEUE_URL"));
    assert_eq!(t.parking.ids(), vec!["m0"]);
}

/// Purge deletes what is selected, and nothing else; a failed delete is reported.
#[tokio::test]
async fn purge_deletes_only_what_is_selected() {
    let t = tools(vec![
        record(trade(A, "t_x"), "sqs_rejected"),
        record(json!({"id": B, "content": "c"}), "missing_topic"),
        "not a record".into(),
    ]);
    let sel = |reasons: &[&str]| Selection {
        filter: Filter {
            reasons: reasons.iter().map(|s| s.to_string()).collect(),
            ..Filter::default()
        },
        ..Selection::default()
    };
    let progress = Progress::default();
    let r = t
        .purge(&sel(&["missing_topic", "unreadable"]), &progress)
        .await;
    assert_eq!(r.outcomes, BTreeMap::from([("purged", 2)]));
    assert_eq!(progress.done.load(Ordering::Relaxed), 2);
    assert_eq!(t.parking.ids(), vec!["m0"]);
    assert_eq!(t.parking.held(), 0);
    t.parking
        .fail_delete
        .lock()
        .unwrap()
        .insert("m0".to_owned());
    let r = t.purge(&all(), &Progress::default()).await;
    assert_eq!(r.messages[0].outcome, Outcome::Failed);
    assert_eq!(t.parking.ids(), vec!["m0"]);
}

/// `list` gives reason, ids, topic, group and age, oldest first, and leaves everything
/// parked and visible.
#[tokio::test]
async fn list_shows_each_record_and_releases_everything() {
    let older = {
        let m = TmcMessage::from_value(json!({"id": B, "content": "c"}));
        parking_entry(
            &m,
            "vip",
            &defect("missing_topic"),
            "2026-11-21T00:00:00Z",
            1 << 20,
            "p",
        )
        .body
    };
    let t = tools(vec![
        record(trade(A, "taobao_trade_TradeCreate"), "sqs_rejected"),
        older,
        "{}".into(),
    ]);
    let got = t.list(&all(), NOW_MS, &Progress::default()).await.unwrap();
    assert_eq!(
        got,
        vec![
            Listed {
                message_id: "m1".into(),
                reason_code: "missing_topic".into(),
                reason: "parked as missing_topic".into(),
                id: Some(B.to_string()),
                topic: None,
                group_name: Some("vip".into()),
                parked_at: Some("2026-11-21T00:00:00Z".into()),
                age_seconds: Some(86_400 + 3_900),
                content_truncated: false,
            },
            Listed {
                message_id: "m0".into(),
                reason_code: "sqs_rejected".into(),
                reason: "parked as sqs_rejected".into(),
                id: Some(A.to_string()),
                topic: Some("taobao_trade_TradeCreate".into()),
                group_name: Some("default".into()),
                parked_at: Some(PARKED_AT.into()),
                age_seconds: Some(3_900),
                content_truncated: false,
            },
            Listed {
                message_id: "m2".into(),
                reason_code: "unreadable".into(),
                reason: "the body has no reason_code, so it is not a parking record".into(),
                id: None,
                topic: None,
                group_name: None,
                parked_at: None,
                age_seconds: None,
                content_truncated: false,
            },
        ]
    );
    assert_eq!(t.parking.held(), 0);
    assert_eq!(t.parking.ids().len(), 3);
    let one = Selection {
        max: Some(1),
        ..Selection::default()
    };
    assert_eq!(
        t.list(&one, NOW_MS, &Progress::default())
            .await
            .unwrap()
            .len(),
        1
    );
}

/// A scan longer than its hold sees messages again; it still ends, and lists each once.
#[tokio::test]
async fn a_scan_outliving_its_hold_ends_and_lists_each_once() {
    let bodies = (0..25)
        .map(|i| record(trade(A + i, "t_x"), "sqs_rejected"))
        .collect();
    let t = tools(bodies);
    t.parking.holds_expire.store(true, Ordering::Relaxed);
    let got = t.list(&all(), NOW_MS, &Progress::default()).await.unwrap();
    assert_eq!(got.len(), 25);
    let r = t.redrive(&all(), &Progress::default()).await;
    assert_eq!(r.outcomes, BTreeMap::from([("redriven", 25)]));
    assert_eq!(accepted(&t).len(), 25, "each sent once");
}

/// `show` finds a record by TMC id or by SQS message id, as stored, ids exact.
#[tokio::test]
async fn show_finds_a_record_by_either_id() {
    let t = tools(vec![
        record(trade(A, "taobao_trade_TradeCreate"), "sqs_rejected"),
        "odd body".into(),
    ]);
    let got = t.show(&A.to_string(), NOW_MS).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].message_id, "m0");
    assert_eq!(got[0].age_seconds, Some(3_900));
    assert_eq!(got[0].record["original"]["id"].as_u64(), Some(A));
    let odd = t.show("m1", NOW_MS).await.unwrap();
    assert_eq!(odd[0].record, Value::String("odd body".into()));
    assert!(t.show("42", NOW_MS).await.unwrap().is_empty());
    assert_eq!(t.parking.held(), 0);
}

/// A parking queue that cannot be read is an error for list, and stops redrive and purge.
#[tokio::test]
async fn an_unreadable_parking_queue_is_an_error() {
    let t = tools(vec![record(trade(A, "t_x"), "sqs_rejected")]);
    *t.parking.fail_receive.lock().unwrap() = Some(port::missing_queue());
    let e = t
        .list(&all(), NOW_MS, &Progress::default())
        .await
        .unwrap_err();
    assert_eq!(e.severity, Severity::Fatal);
    let r = t.redrive(&all(), &Progress::default()).await;
    assert!(r.error.as_deref().unwrap().contains("NonExistentQueue"));
    assert!(!r.is_complete());
    let p = t.purge(&all(), &Progress::default()).await;
    assert!(p.error.is_some());
    assert_eq!(t.parking.ids(), vec!["m0"]);
}

/// The parking queue shared by two runs.
#[derive(Clone, Default)]
struct SharedParking(Arc<MemoryParking>);

impl ParkingQueue for SharedParking {
    async fn receive(&self, max: u32, hold_for: Duration) -> Result<Vec<Held>, PortError> {
        self.0.receive(max, hold_for).await
    }
    async fn delete(&self, receipts: &[String]) -> Result<Vec<Option<String>>, PortError> {
        self.0.delete(receipts).await
    }
    async fn extend(
        &self,
        receipts: &[String],
        hold_for: Duration,
    ) -> Result<Vec<Option<String>>, PortError> {
        self.0.extend(receipts, hold_for).await
    }
    async fn release(&self, receipts: &[String]) {
        self.0.release(receipts).await
    }
}

/// The relay queue shared by two runs: slow, giving up at the deadline as the SQS adapter
/// does, and noting every send whose deadline is not the margin inside its message's hold.
#[derive(Clone)]
struct SlowRelay {
    queue: Arc<MemoryQueue>,
    parking: Arc<MemoryParking>,
    /// TMC id → parking message id.
    message_of: Arc<HashMap<String, String>>,
    /// Sends that could outlive a hold, described.
    unsafe_sends: Arc<std::sync::Mutex<Vec<String>>>,
}

impl Queue for SlowRelay {
    async fn send_batch(
        &self,
        entries: &[Outgoing],
        deadline: Instant,
    ) -> Result<Vec<EntryOutcome>, PortError> {
        let now = Instant::now();
        for e in entries {
            let until = self
                .message_of
                .get(&e.id)
                .and_then(|m| self.parking.hold_until(m));
            if deadline > now + SEND_WITHIN || until.is_none_or(|u| deadline + HOLD_MARGIN > u) {
                self.unsafe_sends.lock().unwrap().push(format!(
                    "{} at {:?}: deadline {:?}, held until {:?}",
                    e.id,
                    now.elapsed(),
                    deadline - now,
                    until.map(|u| u - now)
                ));
            }
        }
        tokio::time::timeout_at(deadline, self.queue.send_batch(entries, deadline))
            .await
            .unwrap_or_else(|_| Err(PortError::timed_out("SendMessageBatch", deadline - now)))
    }

    fn is_fifo(&self) -> bool {
        false
    }
}

/// `n` parked records too large to share a batch (each one send), in a queue both runs share,
/// and a relay queue taking `latency` per send.
fn slow_setup(n: u64, latency: Duration) -> (SharedParking, SlowRelay) {
    let parking = Arc::new(MemoryParking::default());
    let mut message_of = HashMap::new();
    for i in 0..n {
        let mut raw = trade(A + i, "taobao_trade_TradeCreate");
        raw["content"] = Value::String("x".repeat(520 * 1024));
        let id = parking.push(record(raw, "sqs_rejected"));
        message_of.insert((A + i).to_string(), id);
    }
    let queue = Arc::new(MemoryQueue::new("relay", Arc::default()));
    *queue.latency.lock().unwrap() = latency;
    let relay = SlowRelay {
        queue,
        parking: parking.clone(),
        message_of: Arc::new(message_of),
        unsafe_sends: Arc::default(),
    };
    (SharedParking(parking), relay)
}

fn run_on(parking: &SharedParking, relay: &SlowRelay) -> Parked<SharedParking, SlowRelay> {
    Parked {
        parking: parking.clone(),
        relay: Some(relay.clone()),
        fifo_group_by: FifoGroupBy::BizKey,
        hold_for: HOLD_FOR,
    }
}

async fn redrive_all(run: &Parked<SharedParking, SlowRelay>) -> RunReport {
    run.redrive(&all(), &Progress::default()).await
}

/// TMC ids the relay queue accepted, and how many times each.
fn copies(relay: &SlowRelay) -> BTreeMap<String, usize> {
    let mut n = BTreeMap::new();
    for id in relay.queue.ids() {
        *n.entry(id).or_default() += 1;
    }
    n
}

fn details(r: &RunReport, outcome: Outcome) -> Vec<String> {
    r.messages
        .iter()
        .filter(|d| d.outcome == outcome)
        .map(|d| d.detail.clone().unwrap_or_default())
        .collect()
}

/// Two redrives at once over a slow relay queue (25 s a send, one large record a send, so a
/// round of 10 takes 250 s, twice the hold): the first extends its holds as it goes, so the
/// second never receives what the first has yet to send, and each message is sent once, each
/// send ending the margin inside its message's hold.
#[tokio::test(start_paused = true)]
async fn two_redrives_over_slow_sends_send_each_message_once() {
    let (parking, relay) = slow_setup(15, Duration::from_secs(25));
    let (a, b) = (run_on(&parking, &relay), run_on(&parking, &relay));
    let (ra, rb) = tokio::join!(redrive_all(&a), redrive_all(&b));
    let copies = copies(&relay);
    assert_eq!(copies.len(), 15);
    assert!(copies.values().all(|&n| n == 1), "{copies:?}");
    assert_eq!(
        (ra.outcomes.get("redriven"), rb.outcomes.get("redriven")),
        (Some(&10), Some(&5))
    );
    assert!(ra.is_complete() && rb.is_complete(), "{ra:?} {rb:?}");
    assert!(parking.0.ids().is_empty());
    assert!(parking.0.extended.load(Ordering::Relaxed) > 0);
    assert_eq!(*relay.unsafe_sends.lock().unwrap(), Vec::<String>::new());
}

/// A hold that must be extended but cannot be (throttled) is not sent and not deleted: the
/// run reports it skipped, saying why, and lets it go; a second run that receives it after
/// the first one's hold would have ended sends it, once.
#[tokio::test(start_paused = true)]
async fn a_hold_that_cannot_be_extended_is_skipped_not_sent() {
    let (parking, relay) = slow_setup(6, Duration::from_secs(25));
    *parking.0.fail_extend.lock().unwrap() = Some(PortError::throttled(
        "ChangeMessageVisibilityBatch",
        "ThrottlingException",
    ));
    let (a, b) = (run_on(&parking, &relay), run_on(&parking, &relay));
    let (ra, rb) = tokio::join!(redrive_all(&a), async {
        tokio::time::sleep(Duration::from_secs(122)).await;
        redrive_all(&b).await
    });
    let copies = copies(&relay);
    assert_eq!(copies.len(), 6);
    assert!(copies.values().all(|&n| n == 1), "{copies:?}");
    assert_eq!(
        ra.outcomes,
        BTreeMap::from([("redriven", 3), ("skipped", 3)])
    );
    for d in details(&ra, Outcome::Skipped) {
        assert!(
            d.starts_with("not sent: its hold on the parking queue could not be extended")
                && d.contains("ThrottlingException")
                && d.ends_with("run redrive again"),
            "{d}"
        );
    }
    assert!(!ra.is_complete());
    assert_eq!(rb.outcomes, BTreeMap::from([("redriven", 3)]));
    assert!(parking.0.ids().is_empty());
    assert_eq!(*relay.unsafe_sends.lock().unwrap(), Vec::<String>::new());
}

/// A hold that ran out while the run waited (a delete answering after 130 s) is not sent,
/// even though its receipt still names it: another run received it meanwhile and sends it.
#[tokio::test(start_paused = true)]
async fn a_hold_that_ran_out_is_not_sent() {
    let (parking, relay) = slow_setup(2, Duration::ZERO);
    *parking.0.latency.lock().unwrap() = Duration::from_secs(130);
    let (a, b) = (run_on(&parking, &relay), run_on(&parking, &relay));
    let (ra, rb) = tokio::join!(redrive_all(&a), async {
        tokio::time::sleep(Duration::from_secs(121)).await;
        redrive_all(&b).await
    });
    assert_eq!(
        ra.outcomes,
        BTreeMap::from([("redriven", 1), ("skipped", 1)])
    );
    assert_eq!(
        details(&ra, Outcome::Skipped),
        vec!["not sent: its hold on the parking queue ran out before its turn, so another run may have it; run redrive again"]
    );
    assert_eq!(rb.outcomes, BTreeMap::from([("redriven", 1)]));
    assert_eq!(copies(&relay).values().sum::<usize>(), 2);
    assert!(parking.0.ids().is_empty());
}
