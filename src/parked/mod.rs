//! The `tmc-relay parked` commands: list, show, redrive and purge what the relay parked.
//!
//! - `record`: parking records, filters, and the relay message a record becomes (pure).
//! - `port`: the parking queue port, and an in-memory adapter for tests.
//! - `sqs`: the SQS adapter (ReceiveMessage, DeleteMessageBatch, ChangeMessageVisibilityBatch).
//!
//! SQS has no "peek": every command receives the messages, which hides them from everyone
//! else for `hold_for`, and releases what it did not delete when it is done. That hold is what
//! makes concurrent runs safe: a message one run holds, no other run sees. A redrive sends a
//! round of at most 10 messages to the relay queue and deletes from the parking queue only
//! what SQS accepted, so nothing is deleted before its copy is safe.
//!
//! Large records go one per request, so a round on a slow relay queue can outlast its hold.
//! Before each send, every message the round still holds must keep its hold past the send's
//! deadline plus a margin; a hold that would not is extended while it is surely still ours, and
//! a message whose hold cannot be kept is skipped (neither sent nor deleted), since another run
//! may have it by then. What SQS accepted is deleted right after its send, while its hold is
//! still ours.
//!
//! A crash (or a lost delete) between the send and the delete leaves the message parked as
//! well as relayed: the next redrive sends it again, which a FIFO relay queue drops if it comes
//! within 5 minutes (its MessageDeduplicationId is the TMC id) and a standard queue delivers
//! twice.

pub mod port;
pub mod record;
pub mod sqs;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;
use tokio::time::Instant;

use crate::relay::body::{pack, FifoGroupBy};
use crate::relay::ports::{EntryOutcome, Outgoing, PortError, Queue, Severity};
pub use port::{Held, MemoryParking, ParkingQueue};
pub use record::{fmt_age, rebuild, Filter, ParkingRecord, REASON_CODES, UNREADABLE};

/// How long a command holds what it received. Long enough for a whole scan of a parking queue
/// of tens of thousands of messages; short enough that what a crashed run held comes back
/// soon, and that a redrive rerun right after a crash falls within a FIFO queue's 5-minute
/// deduplication window.
pub const HOLD_FOR: Duration = Duration::from_secs(120);

/// A held message is sent, extended or released only while at least this much of its hold is
/// left by our clock: past that, another run may hold it, and our stale receipt could act on
/// the message that run is handling (a release would expose it to a third).
const HOLD_MARGIN: Duration = Duration::from_secs(15);

/// A redrive's send gives up after this (its attempt deadline), so a hold that outlasts it plus
/// [`HOLD_MARGIN`] cannot run out while the send is under way.
const SEND_WITHIN: Duration = Duration::from_secs(30);

// A fresh hold must outlast a send and an extension that came just in time.
const _: () = assert!(HOLD_FOR.as_secs() > HOLD_MARGIN.as_secs() + 2 * SEND_WITHIN.as_secs());

/// Rounds in a row that bring only messages already seen (their hold ran out during a long
/// scan) before a scan stops.
const STALE_ROUNDS: u32 = 3;

/// Live counts for the progress line.
#[derive(Debug, Default)]
pub struct Progress {
    /// Messages received so far.
    pub scanned: AtomicU64,
    /// Of those, the ones the filter selected.
    pub selected: AtomicU64,
    /// Redriven or purged.
    pub done: AtomicU64,
}

/// What a command works on: the filter, at most how many, and whether only to say what it
/// would do.
#[derive(Clone, Debug, Default)]
pub struct Selection {
    /// Which parked messages.
    pub filter: Filter,
    /// Stop after selecting this many.
    pub max: Option<u64>,
    /// Change nothing; report what would be done.
    pub dry_run: bool,
}

impl Selection {
    fn full(&self, selected: u64) -> bool {
        self.max.is_some_and(|m| selected >= m)
    }
}

/// One line of `list`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Listed {
    /// SQS's id for the message: names it for `show`, `--id` and purge when it has no TMC id.
    pub message_id: String,
    /// Why it was parked (`unreadable` when the body is not a parking record).
    pub reason_code: String,
    /// The cause in words.
    pub reason: String,
    /// The TMC id, exact digits.
    pub id: Option<String>,
    /// The original message's topic.
    pub topic: Option<String>,
    /// The TMC group it came from.
    pub group_name: Option<String>,
    /// When it was parked, RFC 3339.
    pub parked_at: Option<String>,
    /// Seconds since it was parked.
    pub age_seconds: Option<u64>,
    /// Only part of the message was kept: it can never be redriven.
    pub content_truncated: bool,
}

/// One record found by `show`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Shown {
    /// SQS's id for the message.
    pub message_id: String,
    /// Seconds since it was parked.
    pub age_seconds: Option<u64>,
    /// The parking record as stored (a JSON string when the body is not JSON).
    pub record: Value,
}

/// What happened to one selected message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Accepted by the relay queue and deleted from the parking queue.
    Redriven,
    /// `--dry-run`: would be sent to the relay queue.
    WouldRedrive,
    /// Deleted for good.
    Purged,
    /// `--dry-run`: would be deleted.
    WouldPurge,
    /// Still cannot be relayed (the detail says why): stays parked.
    Kept,
    /// A failure that may pass (throttling, a network error): stays parked; run again.
    Failed,
    /// In the relay queue, but still parked too: the next redrive sends it again.
    SentNotDeleted,
    /// Not sent: this run's hold on it could not be kept until its send would end, so another
    /// run may have it. Stays parked; run again.
    Skipped,
}

impl Outcome {
    fn name(self) -> &'static str {
        match self {
            Outcome::Redriven => "redriven",
            Outcome::WouldRedrive => "would_redrive",
            Outcome::Purged => "purged",
            Outcome::WouldPurge => "would_purge",
            Outcome::Kept => "kept",
            Outcome::Failed => "failed",
            Outcome::SentNotDeleted => "sent_not_deleted",
            Outcome::Skipped => "skipped",
        }
    }

    fn succeeded(self) -> bool {
        matches!(
            self,
            Outcome::Redriven | Outcome::WouldRedrive | Outcome::Purged | Outcome::WouldPurge
        )
    }
}

/// One selected message and its outcome.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Done {
    /// SQS's id for the parked message.
    pub message_id: String,
    /// The TMC id.
    pub id: Option<String>,
    /// The original topic.
    pub topic: Option<String>,
    /// Why it was parked.
    pub reason_code: String,
    /// What happened now.
    pub outcome: Outcome,
    /// Why it was kept or failed: `<code>: <reason>`.
    pub detail: Option<String>,
}

/// The result of `redrive` or `purge`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RunReport {
    /// `redrive` or `purge`.
    pub command: &'static str,
    /// Nothing was changed.
    pub dry_run: bool,
    /// Messages received.
    pub scanned: u64,
    /// Messages the filter selected (at most `--max`).
    pub selected: u64,
    /// Selected messages by outcome.
    pub outcomes: BTreeMap<&'static str, u64>,
    /// Every selected message, in the order they were handled.
    pub messages: Vec<Done>,
    /// What stopped the run early (a missing queue, denied access), if anything did.
    pub error: Option<String>,
}

impl RunReport {
    fn new(command: &'static str, dry_run: bool) -> Self {
        Self {
            command,
            dry_run,
            ..Self::default()
        }
    }

    /// True when every selected message was handled as asked and nothing stopped the run.
    pub fn is_complete(&self) -> bool {
        self.error.is_none() && self.messages.iter().all(|d| d.outcome.succeeded())
    }

    fn push(&mut self, held: &Held, record: &Result<ParkingRecord, String>, outcome: Outcome) {
        self.push_with(held, record, outcome, None);
    }

    fn push_with(
        &mut self,
        held: &Held,
        record: &Result<ParkingRecord, String>,
        outcome: Outcome,
        detail: Option<String>,
    ) {
        let (reason_code, id, topic) = match record {
            Ok(r) => (
                r.reason_code.clone(),
                r.id.clone(),
                r.topic().map(str::to_owned),
            ),
            Err(_) => (UNREADABLE.to_owned(), None, None),
        };
        *self.outcomes.entry(outcome.name()).or_default() += 1;
        self.messages.push(Done {
            message_id: held.message_id.clone(),
            id,
            topic,
            reason_code,
            outcome,
            detail,
        });
    }
}

/// The parked commands, against a parking queue `P` and (for redrive) a relay queue `Q`.
pub struct Parked<P, Q> {
    /// Where the relay parks messages.
    pub parking: P,
    /// Where `redrive` sends them; `None` for the commands that never send (and so need no
    /// `RELAY_QUEUE_URL`).
    pub relay: Option<Q>,
    /// The relay's FIFO grouping, so a redriven message gets the MessageGroupId the relay
    /// would have given it.
    pub fifo_group_by: FifoGroupBy,
    /// How long received messages stay hidden from other runs ([`HOLD_FOR`]).
    pub hold_for: Duration,
}

/// Receives a queue round by round, remembering what it holds, so each message is handled
/// once per run and whatever was not deleted is released at the end.
struct Scan<'a, P> {
    /// The queue scanned.
    parking: &'a P,
    /// How long each receive hides what it got.
    hold_for: Duration,
    /// Every message id received in this run.
    seen: HashSet<String>,
    /// Held and not deleted: the latest receipt, and when the hold began by our clock (before
    /// the request that began it, so our hold never ends after SQS's).
    held: HashMap<String, (String, Instant)>,
}

impl<'a, P: ParkingQueue> Scan<'a, P> {
    fn new(parking: &'a P, hold_for: Duration) -> Self {
        Self {
            parking,
            hold_for,
            seen: HashSet::new(),
            held: HashMap::new(),
        }
    }

    /// The next messages not seen before in this run; `None` when the queue shows no more.
    async fn next(&mut self) -> Result<Option<Vec<Held>>, PortError> {
        let mut stale = 0;
        loop {
            let asked = Instant::now();
            let got = self.parking.receive(10, self.hold_for).await?;
            if got.is_empty() {
                return Ok(None);
            }
            let mut fresh = Vec::new();
            for h in got {
                self.held
                    .insert(h.message_id.clone(), (h.receipt.clone(), asked));
                if self.seen.insert(h.message_id.clone()) {
                    fresh.push(h);
                }
            }
            if !fresh.is_empty() {
                return Ok(Some(fresh));
            }
            stale += 1;
            if stale >= STALE_ROUNDS {
                return Ok(None);
            }
        }
    }

    /// The message was deleted: nothing to release.
    fn deleted(&mut self, message_id: &str) {
        self.held.remove(message_id);
    }

    /// When this run's hold on a message ends, by our clock.
    fn hold_end(&self, message_id: &str) -> Option<Instant> {
        self.held.get(message_id).map(|(_, at)| *at + self.hold_for)
    }

    /// Makes sure each of these held messages stays held for `need` more plus the margin,
    /// extending the holds that would not while they are surely still ours. Returns the
    /// messages whose hold could not be kept, with why.
    async fn keep(&mut self, message_ids: &[&str], need: Duration) -> HashMap<String, String> {
        let mut lost = HashMap::new();
        let now = Instant::now();
        let mut extend: Vec<(String, String)> = Vec::new();
        let mut answer_by: Option<Instant> = None;
        for &id in message_ids {
            let Some((receipt, at)) = self.held.get(id) else {
                lost.insert(id.to_owned(), "this run does not hold it".to_owned());
                continue;
            };
            let end = *at + self.hold_for;
            if now + HOLD_MARGIN + need < end {
                continue;
            }
            if now + HOLD_MARGIN < end {
                extend.push((id.to_owned(), receipt.clone()));
                let by = end - HOLD_MARGIN;
                answer_by = Some(answer_by.map_or(by, |b| b.min(by)));
            } else {
                lost.insert(
                    id.to_owned(),
                    "its hold on the parking queue ran out before its turn, so another run may have it".to_owned(),
                );
            }
        }
        let Some(by) = answer_by else {
            return lost;
        };
        let receipts: Vec<String> = extend.iter().map(|(_, r)| r.clone()).collect();
        let asked = Instant::now();
        // An extension answered after `by` may have met a hold that was no longer ours.
        let answers = match tokio::time::timeout_at(
            by,
            self.parking.extend(&receipts, self.hold_for),
        )
        .await
        {
            Ok(Ok(a)) => a,
            Ok(Err(e)) => vec![Some(e.to_string()); receipts.len()],
            Err(_) => vec![
                Some(format!(
                    "no answer within {} ms",
                    by.saturating_duration_since(asked).as_millis()
                ));
                receipts.len()
            ],
        };
        let now = Instant::now();
        for (i, (id, _)) in extend.into_iter().enumerate() {
            let why = match answers.get(i) {
                Some(None) => {
                    if let Some(h) = self.held.get_mut(&id) {
                        h.1 = asked;
                    }
                    if now + HOLD_MARGIN + need < asked + self.hold_for {
                        continue;
                    }
                    "extended, but not by enough to outlast the send".to_owned()
                }
                Some(Some(why)) => why.clone(),
                None => "no answer for it".to_owned(),
            };
            lost.insert(
                id,
                format!("its hold on the parking queue could not be extended ({why})"),
            );
        }
        lost
    }

    /// Makes what this run still holds visible again.
    async fn finish(self) {
        let receipts: Vec<String> = self
            .held
            .into_values()
            .filter(|(_, at)| at.elapsed() + HOLD_MARGIN < self.hold_for)
            .map(|(r, _)| r)
            .collect();
        if !receipts.is_empty() {
            self.parking.release(&receipts).await;
        }
    }
}

fn listed(held: &Held, record: Result<ParkingRecord, String>, now_ms: u64) -> Listed {
    let sent_age = held.sent_at_ms.map(|t| now_ms.saturating_sub(t) / 1000);
    match record {
        Ok(r) => Listed {
            message_id: held.message_id.clone(),
            age_seconds: r.age_secs(now_ms).or(sent_age),
            topic: r.topic().map(str::to_owned),
            reason_code: r.reason_code,
            reason: r.reason,
            id: r.id,
            group_name: r.group_name,
            parked_at: r.parked_at,
            content_truncated: r.content_truncated,
        },
        Err(why) => Listed {
            message_id: held.message_id.clone(),
            reason_code: UNREADABLE.to_owned(),
            reason: why,
            id: None,
            topic: None,
            group_name: None,
            parked_at: None,
            age_seconds: sent_age,
            content_truncated: false,
        },
    }
}

/// Why a second record of a TMC id goes with the first.
fn another_record_note(id: &str) -> String {
    format!("another record of TMC id {id} was redriven in this run")
}

/// A selected message not yet sent or settled: its TMC id, the message, its record.
type Waiting = (String, Held, Result<ParkingRecord, String>);

/// Takes out of `list` the messages in `lost`, in order.
fn take_lost(list: &mut Vec<Waiting>, lost: &HashMap<String, String>) -> Vec<Waiting> {
    let (out, keep) = std::mem::take(list)
        .into_iter()
        .partition(|(_, h, _)| lost.contains_key(&h.message_id));
    *list = keep;
    out
}

/// Takes out of `list` the records of TMC id `id`, in order.
fn take_id(list: &mut Vec<Waiting>, id: &str) -> Vec<Waiting> {
    let (out, keep) = std::mem::take(list)
        .into_iter()
        .partition(|(i, _, _)| i == id);
    *list = keep;
    out
}

/// Second records of ids that could not be redriven stay parked with the first.
fn push_repeats_failed(report: &mut RunReport, repeats: Vec<Waiting>) {
    for (id, held, record) in repeats {
        report.push_with(
            &held,
            &record,
            Outcome::Failed,
            Some(format!(
                "another record of TMC id {id} could not be redriven; run redrive again"
            )),
        );
    }
}

impl<P: ParkingQueue, Q: Queue> Parked<P, Q> {
    /// The selected parked messages, oldest first; `now_ms` is the wall clock (epoch ms).
    pub async fn list(
        &self,
        sel: &Selection,
        now_ms: u64,
        progress: &Progress,
    ) -> Result<Vec<Listed>, PortError> {
        let mut scan = Scan::new(&self.parking, self.hold_for);
        let mut out = Vec::new();
        let result = loop {
            if sel.full(out.len() as u64) {
                break Ok(());
            }
            let round = match scan.next().await {
                Ok(Some(r)) => r,
                Ok(None) => break Ok(()),
                Err(e) => break Err(e),
            };
            progress
                .scanned
                .fetch_add(round.len() as u64, Ordering::Relaxed);
            for held in round {
                let record = ParkingRecord::parse(&held.body);
                if sel.full(out.len() as u64) || !sel.filter.matches(&held.message_id, &record) {
                    continue;
                }
                progress.selected.fetch_add(1, Ordering::Relaxed);
                out.push(listed(&held, record, now_ms));
            }
        };
        scan.finish().await;
        result?;
        out.sort_by(|a, b| {
            b.age_seconds
                .cmp(&a.age_seconds)
                .then_with(|| a.message_id.cmp(&b.message_id))
        });
        Ok(out)
    }

    /// Every parked record whose TMC id or SQS message id is `id`.
    pub async fn show(&self, id: &str, now_ms: u64) -> Result<Vec<Shown>, PortError> {
        let filter = Filter {
            ids: vec![id.to_owned()],
            ..Filter::default()
        };
        let mut scan = Scan::new(&self.parking, self.hold_for);
        let mut out = Vec::new();
        let result = loop {
            let round = match scan.next().await {
                Ok(Some(r)) => r,
                Ok(None) => break Ok(()),
                Err(e) => break Err(e),
            };
            for held in round {
                let record = ParkingRecord::parse(&held.body);
                if !filter.matches(&held.message_id, &record) {
                    continue;
                }
                let sent_age = held.sent_at_ms.map(|t| now_ms.saturating_sub(t) / 1000);
                out.push(Shown {
                    message_id: held.message_id.clone(),
                    age_seconds: record
                        .as_ref()
                        .ok()
                        .and_then(|r| r.age_secs(now_ms))
                        .or(sent_age),
                    record: serde_json::from_str(&held.body)
                        .unwrap_or_else(|_| Value::String(held.body.clone())),
                });
            }
        };
        scan.finish().await;
        result.map(|()| out)
    }

    /// Sends each selected record to the relay queue as the relay would have built it, and
    /// deletes it from the parking queue once SQS accepted it. What cannot be relayed stays
    /// parked, with the reason.
    pub async fn redrive(&self, sel: &Selection, progress: &Progress) -> RunReport {
        let mut report = RunReport::new("redrive", sel.dry_run);
        let Some(relay) = &self.relay else {
            report.error = Some("no relay queue configured (RELAY_QUEUE_URL)".into());
            return report;
        };
        let fifo = relay.is_fifo().then_some(self.fifo_group_by);
        let max_bytes = relay.max_message_bytes();
        let mut scan = Scan::new(&self.parking, self.hold_for);
        // TMC ids redriven in this run: a second record of one id is the same message.
        let mut redriven: HashSet<String> = HashSet::new();
        while !sel.full(report.selected) {
            let round = match scan.next().await {
                Ok(Some(r)) => r,
                Ok(None) => break,
                Err(e) => {
                    report.error = Some(e.to_string());
                    break;
                }
            };
            report.scanned += round.len() as u64;
            progress
                .scanned
                .fetch_add(round.len() as u64, Ordering::Relaxed);

            // 1. Select and rebuild.
            let mut waiting: Vec<Waiting> = Vec::new();
            let mut entries: Vec<Outgoing> = Vec::new();
            let mut repeats: Vec<Waiting> = Vec::new();
            for held in round {
                let record = ParkingRecord::parse(&held.body);
                if sel.full(report.selected) || !sel.filter.matches(&held.message_id, &record) {
                    continue;
                }
                report.selected += 1;
                progress.selected.fetch_add(1, Ordering::Relaxed);
                let built = match &record {
                    Err(why) => Err(format!("{UNREADABLE}: {why}")),
                    Ok(r) => {
                        rebuild(r, fifo, max_bytes).map_err(|d| format!("{}: {}", d.code, d.reason))
                    }
                };
                match built {
                    Err(why) => report.push_with(&held, &record, Outcome::Kept, Some(why)),
                    Ok(_) if sel.dry_run => report.push(&held, &record, Outcome::WouldRedrive),
                    Ok(out)
                        if redriven.contains(&out.id) || entries.iter().any(|o| o.id == out.id) =>
                    {
                        repeats.push((out.id, held, record))
                    }
                    Ok(out) => {
                        waiting.push((out.id.clone(), held, record));
                        entries.push(out);
                    }
                }
            }
            // Records of an id relayed in an earlier round go at once.
            let (done, mut repeats): (Vec<_>, Vec<_>) = repeats
                .into_iter()
                .partition(|(id, _, _)| redriven.contains(id));
            let done = done
                .into_iter()
                .map(|(id, held, record)| (held, record, Some(another_record_note(&id))))
                .collect();
            self.delete(&mut scan, &mut report, done, progress, true)
                .await;

            // 2. Send batch by batch, each only while every hold this round still needs is
            //    sure; delete what SQS accepted at once, while its hold is still ours.
            let mut fatal = None;
            for batch in pack(entries) {
                let ids: Vec<&str> = waiting
                    .iter()
                    .chain(&repeats)
                    .map(|(_, h, _)| h.message_id.as_str())
                    .collect();
                let lost = scan.keep(&ids, SEND_WITHIN).await;
                for list in [&mut waiting, &mut repeats] {
                    for (_, held, record) in take_lost(list, &lost) {
                        let why = &lost[&held.message_id];
                        report.push_with(
                            &held,
                            &record,
                            Outcome::Skipped,
                            Some(format!("not sent: {why}; run redrive again")),
                        );
                    }
                }
                let batch: Vec<Outgoing> = batch
                    .into_iter()
                    .filter(|e| waiting.iter().any(|(id, _, _)| *id == e.id))
                    .collect();
                if batch.is_empty() {
                    continue;
                }
                // The attempt ends before any of its holds does.
                let deadline = waiting
                    .iter()
                    .filter(|(id, _, _)| batch.iter().any(|e| e.id == *id))
                    .filter_map(|(_, h, _)| scan.hold_end(&h.message_id))
                    .map(|end| end - HOLD_MARGIN)
                    .fold(Instant::now() + SEND_WITHIN, Instant::min);
                let answer = relay.send_batch(&batch, deadline).await;
                let mut to_delete = Vec::new();
                for (i, entry) in batch.iter().enumerate() {
                    let Some(at) = waiting.iter().position(|(id, _, _)| *id == entry.id) else {
                        continue;
                    };
                    let (_, held, record) = waiting.remove(at);
                    let failure = match &answer {
                        Ok(outcomes) => match outcomes.get(i) {
                            Some(EntryOutcome::Accepted) => None,
                            Some(EntryOutcome::Rejected { code, message }) => Some((
                                Outcome::Kept,
                                format!("sqs_rejected: SQS refused it again ({code}: {message})"),
                            )),
                            Some(EntryOutcome::Retry { code, message }) => Some((
                                Outcome::Failed,
                                format!("SQS answered {code}: {message}; run redrive again"),
                            )),
                            None => Some((Outcome::Failed, "SQS gave no answer for it; run redrive again".into())),
                        },
                        Err(e) if e.maybe_applied => Some((
                            Outcome::Failed,
                            format!("the send's outcome is unknown ({e}); run redrive again (the relay queue may then hold it twice)"),
                        )),
                        Err(e) => Some((Outcome::Failed, e.to_string())),
                    };
                    let same = take_id(&mut repeats, &entry.id);
                    match failure {
                        None => {
                            redriven.insert(entry.id.clone());
                            to_delete.push((held, record, None));
                            for (_, h, r) in same {
                                to_delete.push((h, r, Some(another_record_note(&entry.id))));
                            }
                        }
                        Some((outcome, why)) => {
                            report.push_with(&held, &record, outcome, Some(why));
                            push_repeats_failed(&mut report, same);
                        }
                    }
                }
                self.delete(&mut scan, &mut report, to_delete, progress, true)
                    .await;
                if let Err(e) = &answer {
                    if e.severity == Severity::Fatal {
                        fatal = Some(e.to_string());
                        break;
                    }
                }
            }
            // Whatever a fatal error kept from being sent stays parked.
            for (id, held, record) in waiting {
                report.push_with(
                    &held,
                    &record,
                    Outcome::Failed,
                    Some("not sent: the run stopped".into()),
                );
                push_repeats_failed(&mut report, take_id(&mut repeats, &id));
            }
            push_repeats_failed(&mut report, repeats);
            if let Some(e) = fatal {
                report.error = Some(e);
                break;
            }
        }
        scan.finish().await;
        report
    }

    /// Deletes the selected parked messages for good.
    pub async fn purge(&self, sel: &Selection, progress: &Progress) -> RunReport {
        let mut report = RunReport::new("purge", sel.dry_run);
        let mut scan = Scan::new(&self.parking, self.hold_for);
        while !sel.full(report.selected) {
            let round = match scan.next().await {
                Ok(Some(r)) => r,
                Ok(None) => break,
                Err(e) => {
                    report.error = Some(e.to_string());
                    break;
                }
            };
            report.scanned += round.len() as u64;
            progress
                .scanned
                .fetch_add(round.len() as u64, Ordering::Relaxed);
            let mut to_delete = Vec::new();
            for held in round {
                let record = ParkingRecord::parse(&held.body);
                if sel.full(report.selected) || !sel.filter.matches(&held.message_id, &record) {
                    continue;
                }
                report.selected += 1;
                progress.selected.fetch_add(1, Ordering::Relaxed);
                if sel.dry_run {
                    report.push(&held, &record, Outcome::WouldPurge);
                } else {
                    to_delete.push((held, record, None));
                }
            }
            self.delete(&mut scan, &mut report, to_delete, progress, false)
                .await;
        }
        scan.finish().await;
        report
    }

    /// Deletes held messages, recording each outcome. `sent`: they are already in the relay
    /// queue, so a failed delete means "relayed but still parked".
    async fn delete(
        &self,
        scan: &mut Scan<'_, P>,
        report: &mut RunReport,
        items: Vec<(Held, Result<ParkingRecord, String>, Option<String>)>,
        progress: &Progress,
        sent: bool,
    ) {
        if items.is_empty() {
            return;
        }
        let receipts: Vec<String> = items.iter().map(|(h, _, _)| h.receipt.clone()).collect();
        let answers = match self.parking.delete(&receipts).await {
            Ok(a) => a,
            Err(e) => vec![Some(e.to_string()); items.len()],
        };
        for (i, (held, record, note)) in items.into_iter().enumerate() {
            match answers.get(i).cloned().unwrap_or(Some("no answer".into())) {
                None => {
                    scan.deleted(&held.message_id);
                    progress.done.fetch_add(1, Ordering::Relaxed);
                    let outcome = if sent {
                        Outcome::Redriven
                    } else {
                        Outcome::Purged
                    };
                    report.push_with(&held, &record, outcome, note);
                }
                Some(why) if sent => report.push_with(
                    &held,
                    &record,
                    Outcome::SentNotDeleted,
                    Some(format!(
                        "in the relay queue, but the parking queue did not delete it ({why}): a later redrive sends it again"
                    )),
                ),
                Some(why) => report.push_with(
                    &held,
                    &record,
                    Outcome::Failed,
                    Some(format!("not deleted ({why}); run purge again")),
                ),
            }
        }
    }
}

#[cfg(test)]
mod tests;
