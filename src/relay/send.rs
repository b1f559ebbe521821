//! The SQS stage: send entries to a queue with bounded, per-entry retries, within the flow
//! limit, and say for each entry whether it is in the queue, never will be, or may be.

use std::collections::HashMap;
use std::time::Duration;

use futures::stream::{self, StreamExt};
use tokio::time::Instant;

use super::body::pack;
use super::flow::Limiter;
use super::ports::{EntryOutcome, Outgoing, PortError, Queue, Severity};

/// How many times, in one pass, an entry is sent again after a send that may have stored it
/// (no answer) on a standard queue. Each resend of a stored message is one more copy, and
/// resending into a queue too slow to answer makes it slower still. FIFO queues drop a repeat
/// of a MessageDeduplicationId, so there every attempt is allowed.
pub const MAX_BLIND_RESENDS: u32 = 1;

/// Where one entry ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Sent {
    /// The queue holds it.
    Accepted,
    /// The queue will never accept it (SenderFault, an invalid entry).
    Rejected(String),
    /// Retryable failures outlived the attempts or the budget; the queue does not hold it.
    Failed(String),
    /// Like `Failed`, but some attempt got no answer: the queue may hold it.
    Unknown(String),
}

/// How the stage behaves.
#[derive(Clone, Copy, Debug)]
pub struct SendPolicy {
    /// Attempts per entry for retryable failures.
    pub max_attempts: u32,
    /// Requests prepared at once (the limiter decides how many are in flight).
    pub parallelism: usize,
}

/// One entry and what has happened to it so far.
struct Pending {
    out: Outgoing,
    /// Attempts that failed retryably (a whole-request rejection that only splits the batch
    /// does not count).
    attempts: u32,
    /// Attempts that got no answer: the queue may hold the entry.
    unanswered: u32,
    /// Sent on its own, because a batch holding it was refused as a whole.
    solo: bool,
    last_error: String,
}

impl Pending {
    fn give_up(self) -> (String, Sent) {
        let why = self.last_error;
        let sent = if self.unanswered > 0 {
            Sent::Unknown(why)
        } else {
            Sent::Failed(why)
        };
        (self.out.id, sent)
    }
}

/// What a whole-request failure means for the entries of that request.
enum RequestFailure {
    /// Retry them.
    Retry,
    /// The request was refused as a whole: send each entry on its own.
    Split,
    /// This entry will never be accepted.
    Reject,
    /// Nothing will work: stop.
    Fatal,
}

fn request_failure(e: &PortError, entries: usize) -> RequestFailure {
    match e.severity {
        Severity::Retryable => RequestFailure::Retry,
        Severity::Permanent if entries > 1 => RequestFailure::Split,
        Severity::Permanent => RequestFailure::Reject,
        Severity::Fatal => RequestFailure::Fatal,
    }
}

/// What decides whether the stage may go on sending.
pub struct Gate<F, L, O> {
    /// Whether the pass hit a fatal error (checked before every round).
    pub fatal: F,
    /// Until when a request may be in flight (checked before every request; its attempt ends
    /// by then), or `None` to send nothing more: the batch's lease fence.
    pub fence: L,
    /// Told of a fatal request error.
    pub on_fatal: O,
}

/// Sends `entries` to `queue` within `gate`. Every entry gets exactly one result.
pub async fn send_all<Q: Queue>(
    queue: &Q,
    limiter: &Limiter,
    policy: SendPolicy,
    entries: Vec<Outgoing>,
    deadline: Instant,
    gate: Gate<impl Fn() -> bool, impl Fn() -> Option<Instant>, impl Fn(&PortError)>,
) -> Vec<(String, Sent)> {
    let Gate {
        fatal,
        fence,
        on_fatal,
    } = gate;
    let mut results: Vec<(String, Sent)> = Vec::with_capacity(entries.len());
    let mut pending: Vec<Pending> = entries
        .into_iter()
        .map(|out| Pending {
            out,
            attempts: 0,
            unanswered: 0,
            solo: false,
            last_error: String::new(),
        })
        .collect();
    let mut round = 0u32;
    while !pending.is_empty() {
        round += 1;
        if fatal() {
            results.extend(pending.into_iter().map(|mut p| {
                p.last_error = "the pass hit a fatal error".into();
                p.give_up()
            }));
            break;
        }
        let mut by_id: HashMap<String, Pending> = HashMap::with_capacity(pending.len());
        let (singles, grouped): (Vec<Pending>, Vec<Pending>) =
            pending.drain(..).partition(|p| p.solo);
        let mut requests = pack(
            grouped
                .into_iter()
                .map(|p| {
                    let out = p.out.clone();
                    by_id.insert(out.id.clone(), p);
                    out
                })
                .collect(),
        );
        for p in singles {
            requests.push(vec![p.out.clone()]);
            by_id.insert(p.out.id.clone(), p);
        }
        let fence = &fence;
        let replies = stream::iter(requests.into_iter().map(|batch| async move {
            // Not sent (`None`) once the batch's lease may have lapsed.
            let r = match fence() {
                Some(until) => Some(
                    limiter
                        .call("SendMessageBatch", until.min(deadline), |d| {
                            queue.send_batch(&batch, d)
                        })
                        .await,
                ),
                None => None,
            };
            (batch, r)
        }))
        .buffer_unordered(policy.parallelism.max(1))
        .collect::<Vec<_>>()
        .await;

        let mut again: Vec<Pending> = Vec::new();
        for (batch, reply) in replies {
            let mut take = |id: &str| by_id.remove(id);
            let Some(reply) = reply else {
                for e in &batch {
                    let Some(mut p) = take(&e.id) else { continue };
                    p.last_error = "the batch's lease may have lapsed: not sent".into();
                    results.push(p.give_up());
                }
                continue;
            };
            match reply {
                Ok(outcomes) if outcomes.len() == batch.len() => {
                    for (e, o) in batch.iter().zip(outcomes) {
                        let Some(mut p) = take(&e.id) else { continue };
                        match o {
                            EntryOutcome::Accepted => results.push((p.out.id, Sent::Accepted)),
                            EntryOutcome::Rejected { code, message } => results.push((
                                p.out.id,
                                Sent::Rejected(format!(
                                    "SQS rejected the message: {code}: {message}"
                                )),
                            )),
                            EntryOutcome::Retry { code, message } => {
                                p.attempts += 1;
                                p.last_error = format!("{code}: {message}");
                                again.push(p);
                            }
                        }
                    }
                }
                Ok(outcomes) => {
                    let why = format!(
                        "SQS answered {} results for {} entries",
                        outcomes.len(),
                        batch.len()
                    );
                    for e in &batch {
                        let Some(mut p) = take(&e.id) else { continue };
                        p.attempts += 1;
                        p.last_error = why.clone();
                        again.push(p);
                    }
                }
                Err(err) => {
                    let failure = request_failure(&err, batch.len());
                    if matches!(failure, RequestFailure::Fatal) {
                        on_fatal(&err);
                    }
                    for e in &batch {
                        let Some(mut p) = take(&e.id) else { continue };
                        p.last_error = err.to_string();
                        match failure {
                            RequestFailure::Retry => {
                                p.attempts += 1;
                                p.unanswered += u32::from(err.maybe_applied);
                                again.push(p);
                            }
                            RequestFailure::Split => {
                                p.solo = true;
                                again.push(p);
                            }
                            RequestFailure::Reject => {
                                results.push((p.out.id, Sent::Rejected(err.to_string())))
                            }
                            RequestFailure::Fatal => results.push(p.give_up()),
                        }
                    }
                }
            }
        }
        for p in again {
            let blind = !queue.is_fifo() && p.unanswered > MAX_BLIND_RESENDS;
            if blind || p.attempts >= policy.max_attempts {
                // A standard queue keeps every copy: past the cap, the entry is left to the
                // claim's lease and TMC's redelivery instead of being sent again blind.
                results.push(p.give_up());
            } else {
                pending.push(p);
            }
        }
        if pending.is_empty() {
            break;
        }
        let pause = backoff(round);
        let room = Instant::now()
            .checked_add(pause + Duration::from_millis(100))
            .is_some_and(|t| t < deadline);
        if !room {
            results.extend(pending.drain(..).map(Pending::give_up));
            break;
        }
        tokio::time::sleep(pause).await;
    }
    results
}

/// Jittered exponential backoff between rounds: half the ceiling plus up to half again.
pub fn backoff(round: u32) -> Duration {
    let ceiling = 50u64 << round.min(6);
    let jitter = u64::from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0),
    ) % (ceiling + 1);
    Duration::from_millis(ceiling / 2 + jitter / 2)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::relay::flow::{LimitConfig, Limiter};
    use std::sync::Mutex;

    /// A queue answering by rule: `retry` ids always get SenderFault=false; a request of more
    /// than one entry holding a `poison` id is refused as a whole; `lose` answers are lost
    /// (the queue stores the entries and the caller hears nothing); `fatal_after` calls, every
    /// call fails as if the queue were deleted.
    #[derive(Default)]
    struct Scripted {
        retry: Vec<&'static str>,
        poison: Vec<&'static str>,
        lose: Mutex<u32>,
        fatal_after: Option<u32>,
        fifo: bool,
        /// Every request, as its entry ids.
        requests: Mutex<Vec<Vec<String>>>,
    }

    impl Queue for Scripted {
        async fn send_batch(
            &self,
            entries: &[Outgoing],
            _deadline: Instant,
        ) -> Result<Vec<EntryOutcome>, PortError> {
            let ids: Vec<String> = entries.iter().map(|e| e.id.clone()).collect();
            let n = {
                let mut r = self.requests.lock().unwrap();
                r.push(ids.clone());
                r.len() as u32
            };
            if self.fatal_after.is_some_and(|after| n > after) {
                return Err(PortError::new(
                    "SendMessageBatch",
                    Severity::Fatal,
                    "AWS.SimpleQueueService.NonExistentQueue",
                ));
            }
            {
                let mut lose = self.lose.lock().unwrap();
                if *lose > 0 {
                    *lose -= 1;
                    return Err(PortError::ambiguous("SendMessageBatch", "connection reset"));
                }
            }
            if ids.len() > 1 && ids.iter().any(|i| self.poison.contains(&i.as_str())) {
                return Err(PortError::new(
                    "SendMessageBatch",
                    Severity::Permanent,
                    "InvalidParameterValue",
                ));
            }
            Ok(ids
                .iter()
                .map(|i| {
                    if self.retry.contains(&i.as_str()) {
                        EntryOutcome::Retry {
                            code: "InternalError".into(),
                            message: "try again".into(),
                        }
                    } else {
                        EntryOutcome::Accepted
                    }
                })
                .collect())
        }

        fn is_fifo(&self) -> bool {
            self.fifo
        }
    }

    fn entry(id: &str) -> Outgoing {
        Outgoing {
            id: id.to_owned(),
            body: "{}".into(),
            attributes: vec![],
            group_id: None,
            dedup_id: None,
        }
    }

    async fn run(q: &Scripted, ids: &[&str]) -> Vec<(String, Sent)> {
        let limiter = Limiter::new("SQS", LimitConfig::new(8));
        let policy = SendPolicy {
            max_attempts: 3,
            parallelism: 8,
        };
        let mut out = send_all(
            q,
            &limiter,
            policy,
            ids.iter().map(|i| entry(i)).collect(),
            Instant::now() + Duration::from_secs(600),
            open_gate(),
        )
        .await;
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    fn open_gate() -> Gate<impl Fn() -> bool, impl Fn() -> Option<Instant>, impl Fn(&PortError)> {
        Gate {
            fatal: || false,
            fence: || Some(Instant::now() + Duration::from_secs(600)),
            on_fatal: |_: &PortError| {},
        }
    }

    fn sends_of(q: &Scripted, id: &str) -> usize {
        let r = q.requests.lock().unwrap();
        r.iter().filter(|req| req.iter().any(|i| i == id)).count()
    }

    /// An entry gets exactly `max_attempts` retryable attempts, whatever batches around it are
    /// split: a whole-request refusal elsewhere never hands it another try.
    #[tokio::test(start_paused = true)]
    async fn attempts_are_counted_per_entry() {
        let q = Scripted {
            retry: vec!["a"],
            poison: vec!["p"],
            ..Scripted::default()
        };
        let ids = [
            "a", "b1", "b2", "b3", "b4", "b5", "b6", "b7", "b8", "b9", "p", "q",
        ];
        let out = run(&q, &ids).await;
        assert_eq!(sends_of(&q, "a"), 3);
        assert!(
            matches!(&out[0], (id, Sent::Failed(_)) if id == "a"),
            "{out:?}"
        );
        assert!(
            out[1..].iter().all(|(_, s)| *s == Sent::Accepted),
            "{out:?}"
        );
        assert_eq!(sends_of(&q, "p"), 2, "refused in its batch, then alone");
    }

    /// An entry whose send got no answer ends as Unknown, never Failed: its claim must be kept,
    /// even when the pass then fails on a fatal error.
    #[tokio::test(start_paused = true)]
    async fn unknown_stays_unknown_when_a_fatal_error_follows() {
        let q = Scripted {
            lose: Mutex::new(1),
            fatal_after: Some(1),
            ..Scripted::default()
        };
        let out = run(&q, &["1", "2"]).await;
        assert!(
            out.iter().all(|(_, s)| matches!(s, Sent::Unknown(_))),
            "{out:?}"
        );
    }

    /// Fatal-error check before a round: what was unanswered is Unknown, the rest Failed.
    #[tokio::test(start_paused = true)]
    async fn the_pass_stopping_keeps_unknown_entries_unknown() {
        let q = Scripted {
            lose: Mutex::new(1),
            ..Scripted::default()
        };
        let limiter = Limiter::new("SQS", LimitConfig::new(8));
        let calls = std::sync::atomic::AtomicU32::new(0);
        let out = send_all(
            &q,
            &limiter,
            SendPolicy {
                max_attempts: 3,
                parallelism: 8,
            },
            vec![entry("1")],
            Instant::now() + Duration::from_secs(600),
            Gate {
                fatal: || calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst) >= 1,
                fence: || Some(Instant::now() + Duration::from_secs(600)),
                on_fatal: |_: &PortError| {},
            },
        )
        .await;
        assert!(matches!(&out[..], [(_, Sent::Unknown(_))]), "{out:?}");
    }

    /// Once the fence closes (the batch's lease may have lapsed), no request is sent: the
    /// entries left are Failed, never Unknown, and the queue never sees them.
    #[tokio::test(start_paused = true)]
    async fn a_closed_fence_sends_nothing_more() {
        let q = Scripted {
            retry: vec!["1"],
            ..Scripted::default()
        };
        let limiter = Limiter::new("SQS", LimitConfig::new(8));
        let checks = std::sync::atomic::AtomicU32::new(0);
        let out = send_all(
            &q,
            &limiter,
            SendPolicy {
                max_attempts: 5,
                parallelism: 8,
            },
            vec![entry("1")],
            Instant::now() + Duration::from_secs(600),
            Gate {
                fatal: || false,
                // Open for the first request only.
                fence: || {
                    (checks.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0)
                        .then(|| Instant::now() + Duration::from_secs(60))
                },
                on_fatal: |_: &PortError| {},
            },
        )
        .await;
        assert!(matches!(&out[..], [(_, Sent::Failed(_))]), "{out:?}");
        assert_eq!(sends_of(&q, "1"), 1);
    }

    /// On a standard queue an unanswered entry is resent once; on FIFO, every attempt is used.
    #[tokio::test(start_paused = true)]
    async fn blind_resends_are_capped_on_standard_queues() {
        let q = Scripted {
            lose: Mutex::new(5),
            ..Scripted::default()
        };
        let out = run(&q, &["1"]).await;
        assert!(matches!(&out[..], [(_, Sent::Unknown(_))]), "{out:?}");
        assert_eq!(sends_of(&q, "1"), 1 + MAX_BLIND_RESENDS as usize);
        let fifo = Scripted {
            lose: Mutex::new(2),
            fifo: true,
            ..Scripted::default()
        };
        let out = run(&fifo, &["1"]).await;
        assert_eq!(out, vec![("1".to_owned(), Sent::Accepted)]);
        assert_eq!(sends_of(&fifo, "1"), 3);
    }
}
