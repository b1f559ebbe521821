//! One consumed batch's way through the pass: triage, claim, enqueue, park, settle (the
//! receipt), confirm. The pass ([`super`]) consumes; this decides what of a batch is safe to
//! confirm, and confirms only that.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::relay::archive;
use crate::relay::body::{parking_entry, relay_entry, Defect};
use crate::relay::lease::{BatchLease, Leases};
use crate::relay::ports::Severity;
use crate::relay::ports::{DedupStore, Outgoing, PortError, Queue, Tmc};
use crate::relay::report::Counts;
use crate::relay::send::{backoff_capped, send_all, Gate, SendPolicy, Sent};

use super::{display_group, unique_token, PassShared, Relay};

use crate::top::clock::{epoch_millis, parse_wire_time};
use crate::top::{ErrorClass, TmcMessage};

/// How long one archive write may take before it is tried again.
const ARCHIVE_ATTEMPT: Duration = Duration::from_secs(10);

impl<T: Tmc, Q: Queue, D: DedupStore> Relay<T, Q, D> {
    /// One consumed batch through its verbs. Confirms only ids that are in SQS (now or from an
    /// earlier delivery) or parked, and only once the batch's receipt says so.
    pub(super) async fn process_batch(
        &self,
        shared: &PassShared,
        group_name: &str,
        msgs: Vec<TmcMessage>,
        places: Places,
    ) -> Counts {
        let group = display_group(group_name);
        let mut counts = Counts::default();
        note_oldest(shared, &msgs);
        let policy = self.lease_policy();
        let leases = Leases {
            store: &self.store,
            limiter: &self.flow.dynamodb,
            policy: &policy,
            clock: &self.settings.clock,
        };
        let deadline = shared.opts.deadline;
        // Claims and sends stop in time for the receipt: what SQS accepted is then on record
        // even when the pass runs out of time, instead of coming back as copies.
        let until = deadline
            .checked_sub(self.receipt_reserve())
            .unwrap_or_else(Instant::now);

        let open = || Some(until);
        let scope = Scope {
            shared,
            group,
            until,
            fence: &open,
        };

        let token = unique_token("b");
        // The archive object is built before triage takes the messages; it is written beside
        // the batch's work, and the batch confirms nothing unless it was.
        let archive = self.archive_object(group, &msgs, &token);
        let triage = self.triage(group, msgs, &mut counts);
        let archived = async {
            match archive {
                None => true,
                Some((key, body)) => self.write_archive(shared, group, key, body, until).await,
            }
        };
        let work = self.lease_and_work(&scope, &leases, token, triage, &places, &mut counts);
        let (mut confirm_ids, archived) = tokio::join!(work, archived);
        if !archived {
            counts.archive_failed += confirm_ids.len() as u64;
            confirm_ids.clear();
        }
        shared
            .progress
            .enqueued
            .fetch_add(counts.enqueued, Ordering::Relaxed);

        // The messages are done with: trade the batch's place for a confirm place, so the
        // next consume can start.
        let _confirming = places.confirms.acquire_owned().await;
        drop(places.batch);
        self.confirm(shared, group_name, &confirm_ids, &mut counts)
            .await;
        tracing::info!(
            group,
            enqueued = counts.enqueued,
            duplicates = counts.duplicates,
            parked = counts.parked,
            deferred = counts.deferred,
            unknown_outcome = counts.unknown_outcome,
            unsettled = counts.unsettled,
            invalid = counts.invalid,
            archive_failed = counts.archive_failed,
            confirmed = counts.confirmed,
            confirm_failed = counts.confirm_failed,
            "batch done"
        );
        counts
    }

    /// The batch under its lease: claim, send, park, settle. Returns the ids its receipt (or
    /// an earlier delivery) makes safe to confirm.
    async fn lease_and_work(
        &self,
        scope: &Scope<'_>,
        leases: &Leases<'_, D>,
        token: String,
        triage: Triage,
        places: &Places,
        counts: &mut Counts,
    ) -> Vec<u64> {
        let (shared, group, until) = (scope.shared, scope.group, scope.until);
        let receipt_deadline = shared.opts.receipt_deadline();
        let mut confirm_ids = Vec::new();
        match leases.begin(token, places.lease, until).await {
            Ok(lease) => {
                let fence = || leases.send_until(&lease);
                let scope = Scope {
                    fence: &fence,
                    ..*scope
                };
                // The heartbeat keeps the lease while the batch works and until its receipt
                // is written; it ends early only when the lease is lost.
                let work = async {
                    let sent = self
                        .claim_and_send(&scope, leases, &lease, triage, counts)
                        .await;
                    let mut ids = sent.already_done;
                    let settled = self
                        .settle(&scope, leases, &lease, sent.accepted, sent.held, counts)
                        .await;
                    ids.extend(settled);
                    ids
                };
                tokio::pin!(work);
                confirm_ids = tokio::select! {
                    ids = &mut work => ids,
                    () = leases.heartbeat(&lease, receipt_deadline) => work.await,
                };
            }
            Err(e) => {
                shared.note_port_error(&e);
                tracing::warn!(group, error = %e, "could not write the batch's lease: leaving it for redelivery");
                counts.deferred += triage.valid.len() as u64;
                if e.maybe_applied {
                    counts.unknown_outcome += triage.valid.len() as u64;
                }
                self.park(scope, Vec::new(), triage.invalid, counts).await;
            }
        }
        confirm_ids
    }

    /// The batch's archive object (key and gzip body), when the archive is on.
    fn archive_object(
        &self,
        group: &str,
        msgs: &[TmcMessage],
        batch: &str,
    ) -> Option<(String, Vec<u8>)> {
        let (_, location) = self.archive.as_ref()?;
        let now = time::OffsetDateTime::now_utc();
        let consumed_at = now
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        let body = archive::batch_object(msgs, group, &consumed_at, batch);
        Some((location.object_key(now, batch), body))
    }

    /// Writes the batch's archive object, retrying what goes away with time until `until`.
    /// False when it could not: the batch then confirms nothing.
    async fn write_archive(
        &self,
        shared: &PassShared,
        group: &str,
        key: String,
        body: Vec<u8>,
        until: Instant,
    ) -> bool {
        let Some((archive, _)) = &self.archive else {
            return true;
        };
        let mut round = 0;
        loop {
            let attempt_until = (Instant::now() + ARCHIVE_ATTEMPT).min(until);
            let err = match archive.put(key.clone(), body.clone(), attempt_until).await {
                Ok(()) => return true,
                Err(e) => e,
            };
            shared.note_port_error(&err);
            let pause = backoff_capped(round, Duration::from_secs(1));
            round += 1;
            if err.severity != Severity::Retryable || Instant::now() + pause >= until {
                tracing::warn!(group, key, error = %err, "could not archive the batch: confirming none of it, TMC redelivers it");
                return false;
            }
            tokio::time::sleep(pause).await;
        }
    }

    /// Claim, enqueue, park, all before the scope's `until`: what the batch's receipt will say.
    async fn claim_and_send(
        &self,
        scope: &Scope<'_>,
        leases: &Leases<'_, D>,
        lease: &BatchLease,
        triage: Triage,
        counts: &mut Counts,
    ) -> SentBatch {
        let claims = self.claim(scope, leases, lease, triage.valid, counts).await;
        let enqueued = self.enqueue(scope, claims.to_send, counts).await;
        let mut to_park = claims.to_park;
        to_park.extend(enqueued.rejected);
        let parked = self.park(scope, to_park, triage.invalid, counts).await;
        let mut held = enqueued.unknown;
        held.extend(parked.unknown);
        SentBatch {
            already_done: claims.already_done,
            accepted: enqueued
                .accepted
                .into_iter()
                .chain(parked.accepted)
                .collect(),
            held,
        }
    }

    /// Writes the receipt and returns the ids it makes confirmable. Until it is written a
    /// redelivery could not tell they are in SQS, so if it cannot be, none is confirmed and
    /// their redelivery is at worst a copy.
    async fn settle(
        &self,
        scope: &Scope<'_>,
        leases: &Leases<'_, D>,
        lease: &BatchLease,
        accepted: Vec<u64>,
        held: Vec<u64>,
        counts: &mut Counts,
    ) -> Vec<u64> {
        let n = accepted.len() as u64;
        match leases
            .settle(
                lease,
                accepted.clone(),
                held,
                scope.shared.opts.receipt_deadline(),
            )
            .await
        {
            Ok(settled) => {
                if settled.late {
                    tracing::warn!(group = scope.group, count = n, "the batch's receipt was written after its lease could have lapsed: another pass may have sent its messages again");
                    counts.lease_lost += n;
                }
                accepted
            }
            Err(e) => {
                scope.shared.note_port_error(&e);
                tracing::warn!(group = scope.group, count = n, error = %e, "could not write the batch's receipt before the deadline: leaving its messages unconfirmed (a redelivery may be a copy)");
                counts.unsettled += n;
                Vec::new()
            }
        }
    }

    /// Sorts a batch: messages without a usable id (never confirmable), repeats within the
    /// batch (counted as duplicates), and the rest with their relay entry or defect.
    fn triage(&self, group: &str, msgs: Vec<TmcMessage>, counts: &mut Counts) -> Triage {
        let fifo = self.queue.is_fifo().then_some(self.settings.fifo_group_by);
        let max_bytes = self.queue.max_message_bytes();
        let mut seen = HashSet::new();
        let mut t = Triage::default();
        for m in msgs {
            let Some(id) = m.id else {
                let d = Defect {
                    code: "invalid_id",
                    reason: m.id_problem.clone().unwrap_or_default(),
                };
                tracing::warn!(group, reason = %d.reason, "message without a valid id: cannot be confirmed");
                t.invalid.push((m, d));
                continue;
            };
            if !seen.insert(id) {
                counts.duplicates += 1;
                continue;
            }
            let entry = relay_entry(&m, group, fifo, max_bytes);
            t.valid.push(Valid { id, msg: m, entry });
        }
        counts.invalid = t.invalid.len() as u64;
        t
    }

    /// Claims every valid message for the batch. What is ours goes on to be sent or parked;
    /// what is done already is confirmed; what a live batch holds is left to it; what could not
    /// be claimed is deferred.
    async fn claim(
        &self,
        scope: &Scope<'_>,
        leases: &Leases<'_, D>,
        lease: &BatchLease,
        valid: Vec<Valid>,
        counts: &mut Counts,
    ) -> Claims {
        let Scope { shared, group, .. } = *scope;
        let ids: Vec<u64> = valid.iter().map(|v| v.id).collect();
        let decided = leases.claim(lease, &ids, scope.until).await;
        counts.duplicates += decided.done.len() as u64;
        counts.held_elsewhere += decided.held.len() as u64;
        counts.taken_over += decided.taken_over;
        for (id, e) in &decided.failed {
            shared.note_port_error(e);
            tracing::warn!(group, id, error = %e, "claim failed: leaving the message for redelivery");
            counts.deferred += 1;
            if e.maybe_applied {
                // The claim may stand: it frees itself when the batch's lease ends.
                counts.unknown_outcome += 1;
            }
        }
        let mine: HashSet<u64> = decided.mine.into_iter().collect();
        let done: HashSet<u64> = decided.done.into_iter().collect();
        let mut c = Claims::default();
        // In the batch's order, whatever order the store answered in.
        for Valid { id, msg, entry } in valid {
            if done.contains(&id) {
                c.already_done.push(id);
            }
            if !mine.contains(&id) {
                continue;
            }
            let m = Mine { id, msg };
            match entry {
                Ok(e) => c.to_send.push((m, e)),
                Err(d) => c.to_park.push((m, d)),
            }
        }
        c
    }

    /// Sends the claimed messages to the relay queue.
    async fn enqueue(
        &self,
        scope: &Scope<'_>,
        to_send: Vec<(Mine, Outgoing)>,
        counts: &mut Counts,
    ) -> Enqueued {
        let group = scope.group;
        let mut mine: std::collections::HashMap<String, Mine> = std::collections::HashMap::new();
        let entries: Vec<Outgoing> = to_send
            .into_iter()
            .map(|(m, e)| {
                mine.insert(e.id.clone(), m);
                e
            })
            .collect();
        let mut out = Enqueued::default();
        for (id, sent) in self.send(scope, &self.queue, entries).await {
            let Some(m) = mine.remove(&id) else { continue };
            match sent {
                Sent::Accepted => {
                    counts.enqueued += 1;
                    out.accepted.push(m.id);
                }
                Sent::Rejected(reason) => out.rejected.push((
                    m,
                    Defect {
                        code: "sqs_rejected",
                        reason,
                    },
                )),
                Sent::Failed(reason) => {
                    tracing::warn!(
                        group,
                        id,
                        reason,
                        "enqueue failed: the receipt lets the redelivery take the claim over"
                    );
                    counts.deferred += 1;
                }
                Sent::Unknown(reason) => {
                    // SQS may hold it: the receipt holds the claim for one more lease, so a
                    // redelivery soon after is not enqueued again; after that it is taken over.
                    tracing::warn!(
                        group,
                        id,
                        reason,
                        "enqueue outcome unknown: holding the claim for one more lease"
                    );
                    counts.deferred += 1;
                    counts.unknown_outcome += 1;
                    out.unknown.push(m.id);
                }
            }
        }
        out
    }

    /// Parks what can never be enqueued, with the reason, and (for inspection only) what has
    /// no valid id.
    async fn park(
        &self,
        scope: &Scope<'_>,
        to_park: Vec<(Mine, Defect)>,
        invalid: Vec<(TmcMessage, Defect)>,
        counts: &mut Counts,
    ) -> ParkedOut {
        let group = scope.group;
        let parked_at = rfc3339_now();
        let park_max = self.parking.max_message_bytes();
        let mut claimed: std::collections::HashMap<String, Mine> = std::collections::HashMap::new();
        let mut entries: Vec<Outgoing> = Vec::new();
        for (m, d) in &to_park {
            let entry_id = m.id.to_string();
            tracing::warn!(group, id = entry_id, reason_code = d.code, reason = %d.reason, "parking message");
            entries.push(parking_entry(
                &m.msg, group, d, &parked_at, park_max, &entry_id,
            ));
        }
        for (i, (m, d)) in invalid.iter().enumerate() {
            let entry_id = format!("noid-{i}");
            tracing::warn!(group, id = entry_id, reason_code = d.code, reason = %d.reason, "parking message");
            entries.push(parking_entry(m, group, d, &parked_at, park_max, &entry_id));
        }
        for (m, _) in to_park {
            claimed.insert(m.id.to_string(), m);
        }
        let mut out = ParkedOut::default();
        for (id, sent) in self.send(scope, &self.parking, entries).await {
            // No valid id: counted as invalid, never confirmed.
            let Some(m) = claimed.remove(&id) else {
                continue;
            };
            match sent {
                Sent::Accepted => {
                    counts.parked += 1;
                    out.accepted.push(m.id);
                }
                Sent::Rejected(reason) | Sent::Failed(reason) => {
                    tracing::error!(
                        group,
                        id,
                        reason,
                        "parking failed: leaving the message for redelivery"
                    );
                    counts.deferred += 1;
                }
                Sent::Unknown(reason) => {
                    tracing::error!(
                        group,
                        id,
                        reason,
                        "parking outcome unknown: holding the claim for one more lease"
                    );
                    counts.deferred += 1;
                    counts.unknown_outcome += 1;
                    out.unknown.push(m.id);
                }
            }
        }
        out
    }

    async fn send(
        &self,
        scope: &Scope<'_>,
        queue: &Q,
        entries: Vec<Outgoing>,
    ) -> Vec<(String, Sent)> {
        let Scope {
            shared,
            until,
            fence,
            ..
        } = *scope;
        if entries.is_empty() {
            return Vec::new();
        }
        let policy = SendPolicy {
            max_attempts: self.settings.max_send_attempts,
            parallelism: self.settings.parallelism,
        };
        send_all(
            queue,
            &self.flow.sqs,
            policy,
            entries,
            until,
            Gate {
                fatal: || shared.is_fatal(),
                fence,
                on_fatal: |e: &PortError| shared.note_port_error(e),
            },
        )
        .await
    }

    /// Confirms exactly what is safe.
    async fn confirm(
        &self,
        shared: &PassShared,
        group_name: &str,
        ids: &[u64],
        counts: &mut Counts,
    ) {
        if ids.is_empty() {
            return;
        }
        let group = display_group(group_name);
        tracing::debug!(group, ids = ?ids, "confirming");
        let group_param = (!group_name.is_empty()).then_some(group_name);
        for chunk in self
            .tmc
            .confirm(group_param, ids, shared.opts.deadline)
            .await
        {
            let n = chunk.ids.len() as u64;
            match chunk.result {
                Ok(true) => counts.confirmed += n,
                Ok(false) => {
                    tracing::warn!(
                        group,
                        count = n,
                        "confirm answered is_success=false: TMC will redeliver"
                    );
                    counts.confirm_failed += n;
                }
                Err(e) => {
                    tracing::warn!(group, count = n, error = %e, "confirm failed: TMC will redeliver");
                    if let ErrorClass::Fatal { check } = e.class() {
                        shared.set_fatal(format!("{e}. Check {check}."));
                    }
                    counts.confirm_failed += n;
                }
            }
        }
        shared
            .progress
            .confirmed
            .fetch_add(counts.confirmed, Ordering::Relaxed);
    }
}

/// What every step of one batch works within.
#[derive(Clone, Copy)]
struct Scope<'a> {
    shared: &'a PassShared,
    group: &'a str,
    /// Claims and sends stop here, a reserve before the pass's deadline.
    until: Instant,
    /// The batch's lease fence: until when a send may be in flight, or `None` to send no more.
    fence: &'a (dyn Fn() -> Option<Instant> + Sync),
}

/// A consumed batch, sorted.
#[derive(Default)]
struct Triage {
    /// Messages with an id, each once.
    valid: Vec<Valid>,
    /// Messages without a usable id: parked for inspection, never confirmed.
    invalid: Vec<(TmcMessage, Defect)>,
}

/// A message with an id, and its relay entry (or why it has none).
struct Valid {
    id: u64,
    msg: TmcMessage,
    entry: Result<Outgoing, Defect>,
}

/// A message this batch holds the claim of.
struct Mine {
    id: u64,
    msg: TmcMessage,
}

/// What the claims decided.
#[derive(Default)]
struct Claims {
    to_send: Vec<(Mine, Outgoing)>,
    to_park: Vec<(Mine, Defect)>,
    /// Enqueued by an earlier delivery: confirm only.
    already_done: Vec<u64>,
}

/// What the relay queue said.
#[derive(Default)]
struct Enqueued {
    accepted: Vec<u64>,
    /// Will never be accepted: park instead.
    rejected: Vec<(Mine, Defect)>,
    /// SQS may hold them: the receipt holds their claims for one more lease.
    unknown: Vec<u64>,
}

/// What the parking queue said.
#[derive(Default)]
struct ParkedOut {
    accepted: Vec<u64>,
    unknown: Vec<u64>,
}

/// What a batch's sends came to: its receipt, and what earlier deliveries did.
struct SentBatch {
    already_done: Vec<u64>,
    accepted: Vec<u64>,
    held: Vec<u64>,
}

/// A batch's place in its loop's pipeline, and where it confirms.
pub(super) struct Places {
    /// Taken before the consume; given up once the messages are in SQS and recorded.
    pub(super) batch: OwnedSemaphorePermit,
    /// Bounds the confirms in flight, so confirms that lag still slow consuming down.
    pub(super) confirms: Arc<Semaphore>,
    /// The batch's lease.
    pub(super) lease: Duration,
}

/// The oldest publish time seen, for the report's message age.
fn note_oldest(shared: &PassShared, msgs: &[TmcMessage]) {
    for m in msgs {
        if let Some(t) = m.pub_time.as_deref().and_then(parse_wire_time) {
            shared
                .oldest_pub_ms
                .fetch_min(epoch_millis(t), Ordering::Relaxed);
        }
    }
}

/// Now, as RFC 3339 (when a message was parked).
fn rfc3339_now() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}
