//! The checks of a faulted drain (the main and storm phases): no loss, no early confirm,
//! duplicates within their [`Bound`], no batch receipt given up ([`Receipts`]), drained, the
//! SIGKILLs happened, the acceptance log covers the queues, and the secret never printed; with
//! the helpers that read ids out of queue bodies and fake-aws's logs.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::Serialize;
use serde_json::Value;

use fake_aws::{Accepted, FakeAws};
use tmc_relay::relay::RelaySettings;
use tmc_sim::SimServer;

use crate::aws::{queue_bodies, sqs_err, Aws, Resources};
use crate::figures::{Check, DrainFigures, Duplicates, FaultFigures, Parked};
use crate::fleet::{mean_batch_latency, Fleet, Pass};
use crate::{Args, BackendKind};

/// The dedup write of a batch's receipt (and of its lease, and of takeovers): a receipt that
/// is never written leaves its batch unconfirmed, and each message it lists may come back as a
/// copy. A lease or a takeover that is never written sends nothing.
const RECORD_WRITE: &str = "PutItem";

/// What the checks of a faulted drain read.
pub(crate) struct DrainInput<'a> {
    pub(crate) phase: &'static str,
    pub(crate) args: &'a Args,
    pub(crate) sim: &'a SimServer,
    pub(crate) fake: &'a FakeAws,
    pub(crate) via_fake: &'a Aws,
    pub(crate) moto: Option<&'a Aws>,
    pub(crate) res: &'a Resources,
    pub(crate) ids: &'a [u64],
    pub(crate) fleet: &'a Fleet,
    pub(crate) crashes_requested: u32,
}

/// Reads both queues, the acceptance log, the dedup table and the simulator, and runs the
/// checks of a faulted drain.
pub(crate) async fn drain_checks(i: &DrainInput<'_>) -> Result<(DrainFigures, Vec<Check>), String> {
    let DrainInput {
        phase,
        args,
        sim,
        fake,
        via_fake,
        moto,
        res,
        ids,
        fleet,
        crashes_requested,
    } = *i;
    let relay_bodies = queue_bodies(fake, moto, &res.relay_name, &res.relay_url).await?;
    let parking_bodies = queue_bodies(fake, moto, &res.parking_name, &res.parking_url).await?;
    let accepted = fake.accepted();
    let state = sim.state();

    // The relay queue: copies per id.
    let mut in_relay: HashMap<String, u64> = HashMap::new();
    let mut unreadable = 0u64;
    for b in &relay_bodies {
        match serde_json::from_str::<Value>(b)
            .ok()
            .and_then(|v| body_id(&v))
        {
            Some(id) => *in_relay.entry(id).or_default() += 1,
            None => unreadable += 1,
        }
    }
    // The parking queue: reason per id.
    let mut parked = Parked::default();
    let mut in_parking: HashMap<String, u64> = HashMap::new();
    for b in &parking_bodies {
        let Ok(v) = serde_json::from_str::<Value>(b) else {
            unreadable += 1;
            continue;
        };
        let Some(id) = body_id(&v) else { continue };
        // A parked message counts as kept only with its reason: without one nobody can act on it.
        if v.get("reason_code").and_then(Value::as_str).is_none() {
            continue;
        }
        let n = in_parking.entry(id.clone()).or_default();
        *n += 1;
        if *n == 1 {
            let reason = v
                .get("reason_code")
                .and_then(Value::as_str)
                .unwrap_or_default();
            *parked.by_reason.entry(reason.to_owned()).or_default() += 1;
            parked.also_enqueued += u64::from(in_relay.contains_key(&id));
        }
    }
    parked.count = in_parking.len() as u64;
    parked.duplicates = in_parking.values().map(|n| n - 1).sum();

    let published: Vec<String> = ids.iter().map(u64::to_string).collect();
    let lost: Vec<String> = published
        .iter()
        .filter(|id| !in_relay.contains_key(*id) && !in_parking.contains_key(*id))
        .cloned()
        .collect();

    // First acceptance per id, in either queue; lost answers on the relay queue.
    let mut first: HashMap<String, u64> = HashMap::new();
    let mut relay_accepted = 0u64;
    let mut lost_entries = 0u64;
    let mut lost_ids: HashSet<String> = HashSet::new();
    for a in &accepted {
        let relay = a.queue_name == res.relay_name;
        if !relay && a.queue_name != res.parking_name {
            continue;
        }
        let id = accepted_id(a);
        if relay {
            relay_accepted += 1;
            if a.response_lost {
                lost_entries += 1;
                lost_ids.extend(id.clone());
            }
        }
        if let Some(id) = id {
            let t = first.entry(id).or_insert(a.at_ms);
            *t = (*t).min(a.at_ms);
        }
    }
    // The early-confirm check needs a logged acceptance for every id in the queues. In front of
    // moto an extra copy can go unlogged: a client that disconnects mid-request (SIGKILL, its
    // own timeout) cancels fake-aws's handler after moto carried the request out.
    let unlogged_ids: Vec<&String> = in_relay
        .keys()
        .chain(in_parking.keys())
        .filter(|id| !first.contains_key(*id))
        .collect();
    let unlogged_copies = (relay_bodies.len() as u64).saturating_sub(relay_accepted);
    let mut early = Vec::new();
    let mut unconfirmed = 0u64;
    for id in &published {
        match state.messages.get(id).and_then(|m| m.confirmed_at_ms) {
            None => unconfirmed += 1,
            Some(at) if first.get(id).is_none_or(|&acc| at < acc) => early.push(id.clone()),
            Some(_) => {}
        }
    }

    // Duplicates and their bound.
    let dup_ids: Vec<String> = in_relay
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(id, _)| id.clone())
        .collect();
    let dup_count: u64 = in_relay.values().map(|n| n - 1).sum();
    let after_lost_response: u64 = in_relay
        .iter()
        .filter(|(id, n)| **n > 1 && lost_ids.contains(*id))
        .map(|(_, n)| n - 1)
        .sum();
    let depth = RelaySettings::default().pipeline_depth as u64;
    let per_crash = u64::from(args.loops) * (depth + 1) * u64::from(args.quantity);
    let bound = Bound::new(u64::from(fleet.crashes), per_crash, lost_entries);
    let over = dup_count.saturating_sub(bound.total);

    let receipts = receipts_given_up(fake, via_fake, res, &fleet.passes).await?;
    let after_receipt_given_up: u64 = in_relay
        .iter()
        .filter(|(id, n)| **n > 1 && receipts.listed_ids.contains(*id))
        .map(|(_, n)| n - 1)
        .sum();

    let mut relay_counts: BTreeMap<String, u64> = BTreeMap::new();
    for p in fleet.passes.iter().filter(|p| p.report.is_some()) {
        for key in [
            "consumed",
            "enqueued",
            "duplicates",
            "parked",
            "deferred",
            "unknown_outcome",
            "held_elsewhere",
            "taken_over",
            "unsettled",
            "lease_lost",
            "invalid",
            "confirmed",
            "confirm_failed",
        ] {
            *relay_counts.entry(key.to_owned()).or_default() += p.count(key);
        }
    }
    let fatal: Vec<String> = fleet.passes.iter().filter_map(Pass::fatal_error).collect();
    let secret_leaks: u64 = fleet
        .passes
        .iter()
        .map(|p| p.log.secret_lines + u64::from(p.stdout_secret))
        .sum();

    let given_up = receipts.given_up();
    let checks = vec![
        Check::new(
            phase,
            "no_loss",
            lost.is_empty(),
            lost.len() as u64,
            format!(
                "{} of {} published ids in neither the relay queue nor the parking queue (with a reason)",
                lost.len(),
                published.len()
            ),
        ),
        Check::new(
            phase,
            "no_early_confirm",
            early.is_empty(),
            early.len() as u64,
            format!(
                "{} ids confirmed before SQS first accepted them",
                early.len()
            ),
        ),
        Check::new(
            phase,
            "duplicates_within_bound",
            over == 0,
            over,
            format!(
                "{dup_count} extra copies of {} ids, bound {} ({} SIGKILLs × {per_crash} + {} SQS \
                 acceptances whose answer was lost): {over} over the bound; {after_lost_response} \
                 of the copies follow a lost answer, {after_receipt_given_up} are of messages \
                 listed in receipts given up",
                dup_ids.len(),
                bound.total,
                bound.crashes,
                bound.unanswered_acceptances
            ),
        ),
        Check::new(
            phase,
            "no_receipt_given_up",
            given_up == 0,
            given_up,
            format!(
                "the relay reported {} messages unsettled in {} passes (receipts it could not \
                 write); fake-aws refused {} receipt writes that were never carried out \
                 afterwards, by passes that were not killed, listing {} messages ({} more by \
                 SIGKILLed passes, explained by their crash)",
                receipts.unsettled,
                receipts.unsettled_passes,
                receipts.refused_never_redone,
                receipts.refused_never_redone_messages,
                receipts.refused_by_killed_passes
            ),
        ),
        Check::new(
            phase,
            "drained",
            unconfirmed == 0,
            unconfirmed,
            format!("{unconfirmed} published ids still unconfirmed at the end"),
        ),
        Check::new(
            phase,
            "crashes_happened",
            fleet.crashes == crashes_requested,
            u64::from(crashes_requested.abs_diff(fleet.crashes)),
            format!(
                "{} SIGKILLs of {crashes_requested} requested",
                fleet.crashes
            ),
        ),
        Check::new(
            phase,
            "acceptance_log_covers_queues",
            unlogged_ids.is_empty()
                && unreadable == 0
                && (args.backend == BackendKind::Moto || unlogged_copies == 0),
            unlogged_ids.len() as u64 + unreadable + unlogged_copies,
            format!(
                "{} ids in the queues without a logged acceptance, {unreadable} unreadable \
                 bodies; fake-aws logged {relay_accepted} acceptances into the relay queue, \
                 which holds {}",
                unlogged_ids.len(),
                relay_bodies.len()
            ),
        ),
        Check::new(
            phase,
            "secret_never_printed",
            secret_leaks == 0,
            secret_leaks,
            format!("{secret_leaks} lines of relay output contained the app secret"),
        ),
    ];

    let stats = fake.stats();
    let figures = DrainFigures {
        messages: published.len() as u64,
        confirmed: published.len() as u64 - unconfirmed,
        crashes: fleet.crashes,
        end_kills: fleet.end_kills,
        passes: fleet.passes.len() as u64,
        passes_completed: fleet.passes.iter().filter(|p| !p.killed).count() as u64,
        passes_fatal: fatal.len() as u64,
        batch_latency_ms: mean_batch_latency(&fleet.passes),
        first_fatal_error: fatal.first().map(|e| e.replace(&fleet.secret, "***")),
        faults: FaultFigures {
            tmc: state.faults_injected.clone(),
            tmc_consume_calls: state.consume_calls,
            tmc_confirm_calls: state.confirm_calls,
            aws: stats
                .ops
                .iter()
                .filter(|(_, s)| s.faults() > 0)
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            aws_total: stats.total(),
        },
        lost: lost.len() as u64,
        lost_sample: sample(lost),
        unconfirmed,
        early_confirms: early.len() as u64,
        early_confirm_sample: sample(early),
        duplicates: Duplicates {
            count: dup_count,
            ids: dup_ids.len() as u64,
            after_lost_response,
            after_receipt_given_up,
            unlogged_copies,
            sample: sample(dup_ids),
            bound,
            over,
        },
        receipts,
        parked,
        deferred: relay_counts.get("deferred").copied().unwrap_or(0),
        relay_counts,
        secret_leaks,
    };
    Ok((figures, checks))
}

/// The id a queue body carries (`"id"`, a decimal string in relay and parking bodies).
pub(crate) fn body_id(body: &Value) -> Option<String> {
    match body.get("id")? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

pub(crate) fn accepted_id(a: &Accepted) -> Option<String> {
    a.entry_id
        .clone()
        .filter(|e| e.bytes().all(|b| b.is_ascii_digit()))
        .or_else(|| {
            serde_json::from_str::<Value>(&a.body)
                .ok()
                .and_then(|b| body_id(&b))
        })
}

pub(crate) fn sample(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v.truncate(10);
    v
}

/// The most extra copies the events of the run can explain, every term counted by the harness
/// itself (its SIGKILLs, fake-aws's log), never taken from the relay's own output. Only two
/// events can put a message in SQS without the dedup table knowing before it comes back:
/// - a SIGKILL strands at most what its process had in flight: a loop holds up to
///   pipeline depth + 1 batches (the one being consumed and `depth` behind it), so
///   loops × (depth + 1) × quantity;
/// - an SQS acceptance whose answer the relay never got (a lost response, a request the relay
///   stopped waiting for, a stalled send carried out after its client left): one extra copy
///   each, from fake-aws's acceptance log.
///
/// A receipt the relay gave up on is not an allowance: it is a failure of its own
/// ([`Receipts`]). Nor is throttling or a stall of DynamoDB shorter than a lease.
#[derive(Debug, Default, Serialize)]
pub(crate) struct Bound {
    pub(crate) total: u64,
    pub(crate) crashes: u64,
    pub(crate) per_crash: u64,
    pub(crate) unanswered_acceptances: u64,
}

impl Bound {
    fn new(crashes: u64, per_crash: u64, unanswered_acceptances: u64) -> Self {
        Self {
            total: crashes * per_crash + unanswered_acceptances,
            crashes,
            per_crash,
            unanswered_acceptances,
        }
    }
}

/// Batch receipts the relay gave up on. A receipt that is never written leaves its batch
/// unconfirmed while SQS holds its messages: their redeliveries are copies nobody can explain
/// but a relay that stopped trying. So each is a failure of the run.
#[derive(Debug, Default, Serialize)]
pub(crate) struct Receipts {
    /// Messages the relay itself reported `unsettled`, summed over the passes that ended on
    /// their own, and how many passes reported some.
    pub(crate) unsettled: u64,
    pub(crate) unsettled_passes: u64,
    /// Receipt writes (`PutItem` with `settled`) that fake-aws refused (throttled, 500, a
    /// stall that dropped them) and never saw carried out afterwards, by passes that were not
    /// SIGKILLed, and the messages they list.
    pub(crate) refused_never_redone: u64,
    pub(crate) refused_never_redone_messages: u64,
    /// The same by passes that were SIGKILLed: explained by the crash (its allowance covers
    /// the messages a killed process holds).
    pub(crate) refused_by_killed_passes: u64,
    /// The relay's `lease_lost` count (a relay that counts it), summed like `unsettled`.
    pub(crate) lease_lost: u64,
    /// The ids the receipts given up list (accepted or held).
    #[serde(skip)]
    listed_ids: HashSet<String>,
}

impl Receipts {
    /// Receipts given up on, as the relay reported them (messages) or as fake-aws saw them
    /// (messages listed in receipt writes never carried out): whichever says more.
    fn given_up(&self) -> u64 {
        let seen = self
            .refused_never_redone_messages
            .max(self.refused_never_redone);
        self.unsettled.max(seen)
    }
}

/// The ids a receipt write lists as accepted or held.
fn receipt_ids(body: &Value) -> Vec<String> {
    let Some(item) = body.get("Item") else {
        return Vec::new();
    };
    ["accepted", "held"]
        .iter()
        .filter_map(|name| item.get(*name)?.get("NS")?.as_array())
        .flatten()
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect()
}

/// The messages a refused `PutItem` body lists as accepted or held, when it is a batch's
/// receipt (`settled`); `None` for the other dedup writes.
fn receipt_listed(body: &Value) -> Option<u64> {
    let item = body.get("Item")?;
    item.get("settled")?;
    let listed = |name: &str| {
        item.get(name)
            .and_then(|a| a.get("NS"))
            .and_then(Value::as_array)
            .map_or(0, |ns| ns.len() as u64)
    };
    Some(listed("accepted") + listed("held"))
}

/// The batch token (`b#...`) a receipt write is for, when `body` is one for `table`.
fn receipt_key(body: &Value, table: &str) -> Option<String> {
    if body.get("TableName").and_then(Value::as_str) != Some(table) {
        return None;
    }
    receipt_listed(body)?;
    body.get("Item")?
        .get("pk")?
        .get("S")?
        .as_str()
        .map(str::to_owned)
}

/// Counts the receipts given up on: the relay's own `unsettled`, and the receipt writes
/// fake-aws refused and never saw carried out afterwards. A refused write whose batch record
/// is settled anyway was redone with another body (a receipt retried with a new hold time):
/// not given up. Refused writes of SIGKILLed passes are the crash's.
async fn receipts_given_up(
    fake: &FakeAws,
    via_fake: &Aws,
    res: &Resources,
    passes: &[Pass],
) -> Result<Receipts, String> {
    let mut r = Receipts::default();
    for p in passes.iter().filter(|p| p.report.is_some()) {
        let u = p.count("unsettled");
        r.unsettled += u;
        r.unsettled_passes += u64::from(u > 0);
        r.lease_lost += p.count("lease_lost");
    }
    let killed: HashSet<&str> = passes
        .iter()
        .filter(|p| p.killed)
        .map(|p| p.app_id.as_str())
        .collect();
    for refused in fake.unrecovered(RECORD_WRITE) {
        let Some(key) = receipt_key(&refused.body, &res.table) else {
            continue;
        };
        if refused
            .caller
            .as_deref()
            .is_some_and(|c| killed.contains(c))
        {
            r.refused_by_killed_passes += 1;
            continue;
        }
        let now = via_fake
            .ddb
            .get_item()
            .table_name(&res.table)
            .key(
                "pk",
                aws_sdk_dynamodb::types::AttributeValue::S(key.clone()),
            )
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| sqs_err("GetItem", e))?;
        if now.item().is_some_and(|i| i.contains_key("settled")) {
            continue;
        }
        r.refused_never_redone += 1;
        r.refused_never_redone_messages += receipt_listed(&refused.body).unwrap_or(0);
        r.listed_ids.extend(receipt_ids(&refused.body));
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A receipt's accepted and held messages count; a lease, a takeover or an empty receipt
    /// list none; only receipts of the phase's own table are keyed.
    #[test]
    fn receipts_are_recognised_by_settled_and_table() {
        let receipt = json!({"TableName": "t", "Item": {"pk": {"S": "b#x"}, "settled": {"BOOL": true},
            "accepted": {"NS": ["1", "2", "3"]}, "held": {"NS": ["4"]}}});
        assert_eq!(receipt_listed(&receipt), Some(4));
        assert_eq!(receipt_ids(&receipt), ["1", "2", "3", "4"]);
        assert_eq!(receipt_key(&receipt, "t").as_deref(), Some("b#x"));
        assert_eq!(receipt_key(&receipt, "other"), None);
        let empty = json!({"Item": {"pk": {"S": "b#y"}, "settled": {"BOOL": true}}});
        assert_eq!(receipt_listed(&empty), Some(0));
        let lease =
            json!({"TableName": "t", "Item": {"pk": {"S": "b#z"}, "lease_until": {"N": "5"}}});
        assert_eq!(receipt_listed(&lease), None);
        assert_eq!(receipt_key(&lease, "t"), None);
        let takeover =
            json!({"Item": {"pk": {"S": "7"}, "b": {"S": "z"}}, "ConditionExpression": "b = :old"});
        assert_eq!(receipt_listed(&takeover), None);
    }

    /// The bound is crashes times what a process holds plus lost SQS answers: nothing else.
    #[test]
    fn bound_allows_only_crashes_and_lost_answers() {
        let b = Bound::new(3, 500, 41);
        assert_eq!(b.total, 1_541);
        assert_eq!(Bound::new(0, 500, 0).total, 0);
    }

    /// A receipt given up counts whether the relay reported it or only fake-aws saw it; a
    /// killed pass's refused receipt alone does not.
    #[test]
    fn receipts_given_up_count_from_either_side() {
        let none = Receipts {
            refused_by_killed_passes: 5,
            ..Receipts::default()
        };
        assert_eq!(none.given_up(), 0);
        let reported = Receipts {
            unsettled: 120,
            unsettled_passes: 2,
            ..Receipts::default()
        };
        assert_eq!(reported.given_up(), 120);
        let seen = Receipts {
            refused_never_redone: 1,
            ..Receipts::default()
        };
        assert_eq!(seen.given_up(), 1, "an empty receipt given up still counts");
    }
}
