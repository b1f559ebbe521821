//! Per-entry faults in batch calls, moto's wire fix-ups, and the SQS acceptance log: pure
//! functions over request and response JSON, shared by both backends.

use serde::{Deserialize, Serialize};
use std::collections::HashMap;

use serde_json::{json, Map, Value};

use super::rules::{OpRules, SplitMix64};

/// One message a backend acknowledged (`Successful` entry, or a `SendMessage` answer).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Accepted {
    /// The `QueueUrl` the client sent.
    pub queue_url: String,
    /// Its last path segment.
    pub queue_name: String,
    /// The batch entry id; `None` for `SendMessage`.
    pub entry_id: Option<String>,
    /// The `MessageId` the backend gave it.
    pub message_id: String,
    pub body: String,
    /// `MessageAttributes` as sent (`Null` when none).
    pub message_attributes: Value,
    /// FIFO `MessageGroupId`, if any.
    pub group_id: Option<String>,
    /// Unix time in ms when the backend's answer reached the proxy (the acceptance is no later).
    pub at_ms: u64,
    /// True when the client never got the answer (a lost-response fault).
    pub response_lost: bool,
}

/// A batch request with some entries held back, and what to answer for them.
#[derive(Debug, PartialEq)]
pub struct Split {
    /// The request to forward; `None` when every entry was held back.
    pub forward: Option<Value>,
    /// `Failed` entries (SQS), or `UnprocessedItems` / `UnprocessedKeys` (DynamoDB).
    pub held: Value,
    pub held_count: u64,
    pub sender_faults: u64,
}

fn sqs_failure(id: &str, rules: &OpRules, rng: &mut SplitMix64) -> (Value, bool) {
    let sender = rng.chance(rules.sender_fault_share);
    let (code, message) = if sender {
        (
            "InvalidParameterValue",
            "Injected by fake-aws: the entry was refused (sender fault).",
        )
    } else if rng.next_u64() & 1 == 0 {
        (
            "InternalError",
            "Injected by fake-aws: internal error, retry the entry.",
        )
    } else {
        (
            "ServiceUnavailable",
            "Injected by fake-aws: service unavailable, retry the entry.",
        )
    };
    (
        json!({"Id": id, "SenderFault": sender, "Code": code, "Message": message}),
        sender,
    )
}

/// Holds back `SendMessageBatch` entries at `partial_failure_rate`. `None` when nothing is held
/// or the request is not a well-formed batch (then the backend judges it whole).
pub fn split_sqs_batch(body: &Value, rules: &OpRules, rng: &mut SplitMix64) -> Option<Split> {
    let entries = body.get("Entries")?.as_array()?;
    let ids: Vec<&str> = entries
        .iter()
        .map(|e| e.get("Id").and_then(Value::as_str))
        .collect::<Option<_>>()?;
    let distinct: std::collections::HashSet<&&str> = ids.iter().collect();
    if entries.is_empty() || entries.len() > 10 || distinct.len() != ids.len() {
        return None;
    }
    let mut keep = Vec::new();
    let mut failed = Vec::new();
    let mut sender_faults = 0;
    for (e, id) in entries.iter().zip(ids) {
        if rng.chance(rules.partial_failure_rate) {
            let (f, sender) = sqs_failure(id, rules, rng);
            sender_faults += u64::from(sender);
            failed.push(f);
        } else {
            keep.push(e.clone());
        }
    }
    if failed.is_empty() {
        return None;
    }
    let forward = (!keep.is_empty()).then(|| {
        let mut b = body.clone();
        b["Entries"] = Value::Array(keep);
        b
    });
    Some(Split {
        forward,
        held_count: failed.len() as u64,
        held: Value::Array(failed),
        sender_faults,
    })
}

/// Holds back requests of a `BatchWriteItem` (`"WriteRequests"`) or keys of a `BatchGetItem`
/// (`"Keys"`), returned as `UnprocessedItems` / `UnprocessedKeys` in the same shape.
fn split_dynamo(
    body: &Value,
    rules: &OpRules,
    rng: &mut SplitMix64,
    max: usize,
    get: bool,
) -> Option<Split> {
    let requests = body.get("RequestItems")?.as_object()?;
    let list_of = |v: &Value| -> Option<Vec<Value>> {
        if get {
            v.get("Keys")?.as_array().cloned()
        } else {
            v.as_array().cloned()
        }
    };
    let total: usize = requests
        .values()
        .map(|v| list_of(v).map_or(0, |l| l.len()))
        .sum();
    if total == 0 || total > max {
        return None;
    }
    let mut forward = Map::new();
    let mut held = Map::new();
    let mut held_count = 0;
    for (table, v) in requests {
        let list = list_of(v)?;
        let (mut keep, mut drop) = (Vec::new(), Vec::new());
        for item in list {
            if rng.chance(rules.partial_failure_rate) {
                drop.push(item);
            } else {
                keep.push(item);
            }
        }
        held_count += drop.len() as u64;
        let rebuild = |items: Vec<Value>| {
            if get {
                let mut r = v.clone();
                r["Keys"] = Value::Array(items);
                r
            } else {
                Value::Array(items)
            }
        };
        if !keep.is_empty() {
            forward.insert(table.clone(), rebuild(keep));
        }
        if !drop.is_empty() {
            held.insert(table.clone(), rebuild(drop));
        }
    }
    if held_count == 0 {
        return None;
    }
    let forward = (!forward.is_empty()).then(|| {
        let mut b = body.clone();
        b["RequestItems"] = Value::Object(forward);
        b
    });
    Some(Split {
        forward,
        held: Value::Object(held),
        held_count,
        sender_faults: 0,
    })
}

pub fn split_batch_write(body: &Value, rules: &OpRules, rng: &mut SplitMix64) -> Option<Split> {
    split_dynamo(body, rules, rng, 25, false)
}

pub fn split_batch_get(body: &Value, rules: &OpRules, rng: &mut SplitMix64) -> Option<Split> {
    split_dynamo(body, rules, rng, 100, true)
}

/// Fails `BatchExecuteStatement` statements on their own at `partial_failure_rate`, with a
/// throttling or internal-error code, as DynamoDB does. `held` lists each held statement's
/// position and error; `merge_held` puts them back in place, since answers are positional.
pub fn split_statements(body: &Value, rules: &OpRules, rng: &mut SplitMix64) -> Option<Split> {
    let statements = body.get("Statements")?.as_array()?;
    if statements.is_empty() || statements.len() > 25 {
        return None;
    }
    let (mut keep, mut held) = (Vec::new(), Vec::new());
    for (i, st) in statements.iter().enumerate() {
        if rng.chance(rules.partial_failure_rate) {
            let (code, message) = if rng.next_u64() & 1 == 0 {
                (
                    "ThrottlingError",
                    "Injected by fake-aws: throughput exceeds the current capacity.",
                )
            } else {
                (
                    "InternalServerError",
                    "Injected by fake-aws: internal server error.",
                )
            };
            held.push(json!({"Position": i, "Error": {"Code": code, "Message": message}}));
        } else {
            keep.push(st.clone());
        }
    }
    if held.is_empty() {
        return None;
    }
    let held_count = held.len() as u64;
    let forward = (!keep.is_empty()).then(|| {
        let mut f = body.clone();
        f["Statements"] = Value::Array(keep);
        f
    });
    Some(Split {
        forward,
        held: Value::Array(held),
        held_count,
        sender_faults: 0,
    })
}

/// Puts held statements' errors back at their positions among the backend's answers.
fn merge_statements(obj: &mut Map<String, Value>, held: Value) {
    let Value::Array(held) = held else { return };
    let answered: Vec<Value> = obj
        .get("Responses")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut answered = answered.into_iter();
    let total = answered.len() + held.len();
    let mut by_pos: HashMap<u64, Value> = held
        .into_iter()
        .filter_map(|h| {
            Some((
                h.get("Position")?.as_u64()?,
                json!({"Error": h.get("Error")?}),
            ))
        })
        .collect();
    let merged: Vec<Value> = (0..total as u64)
        .map(|i| {
            by_pos
                .remove(&i)
                .or_else(|| answered.next())
                .unwrap_or(Value::Null)
        })
        .collect();
    obj.insert("Responses".into(), Value::Array(merged));
}

/// The answer when every entry was held back (nothing reached the backend).
pub fn all_held(op: &str, request: &Value, held: Value) -> Value {
    let capacity = request
        .get("ReturnConsumedCapacity")
        .and_then(Value::as_str)
        .is_some_and(|m| m != "NONE");
    let mut out = match op {
        "SendMessageBatch" => json!({"Successful": [], "Failed": held}),
        "BatchWriteItem" => json!({"UnprocessedItems": held}),
        "BatchExecuteStatement" => {
            let mut out = json!({"Responses": []});
            if let Some(obj) = out.as_object_mut() {
                merge_statements(obj, held);
            }
            out
        }
        _ => json!({"Responses": {}, "UnprocessedKeys": held}),
    };
    if capacity && op != "SendMessageBatch" {
        out["ConsumedCapacity"] = json!([]);
    }
    out
}

/// Adds held-back entries to a backend's answer.
pub fn merge_held(op: &str, response: &mut Value, held: Value) {
    let Some(obj) = response.as_object_mut() else {
        return;
    };
    match op {
        "BatchExecuteStatement" => merge_statements(obj, held),
        "SendMessageBatch" => {
            let failed = obj.entry("Failed").or_insert_with(|| json!([]));
            if let (Some(list), Value::Array(more)) = (failed.as_array_mut(), held) {
                list.extend(more);
            }
        }
        _ => {
            let key = if op == "BatchWriteItem" {
                "UnprocessedItems"
            } else {
                "UnprocessedKeys"
            };
            let slot = obj.entry(key).or_insert_with(|| json!({}));
            let (Some(slot), Value::Object(more)) = (slot.as_object_mut(), held) else {
                return;
            };
            for (table, v) in more {
                match (slot.get_mut(&table), v) {
                    (Some(Value::Array(have)), Value::Array(add)) => have.extend(add),
                    (Some(have), Value::Object(add)) if have.get("Keys").is_some() => {
                        if let (Some(Value::Array(k)), Some(Value::Array(a))) =
                            (have.get_mut("Keys"), add.get("Keys"))
                        {
                            k.extend(a.iter().cloned());
                        }
                    }
                    (_, v) => {
                        slot.insert(table, v);
                    }
                }
            }
        }
    }
}

/// moto writes `"SenderFault": "true"`; the SDK needs a boolean. Returns whether it changed.
pub fn fix_sender_fault(response: &mut Value) -> bool {
    let Some(failed) = response.get_mut("Failed").and_then(Value::as_array_mut) else {
        return false;
    };
    let mut changed = false;
    for f in failed {
        if let Some(sf) = f.get_mut("SenderFault") {
            if let Some(s) = sf.as_str() {
                *sf = Value::Bool(s.eq_ignore_ascii_case("true"));
                changed = true;
            }
        }
    }
    changed
}

/// How many entries a batch request carries (`Entries`, `RequestItems`, `Statements`); 1 for
/// any other request.
pub fn entries_of(op: &str, body: &Value) -> u64 {
    let n = match op {
        "SendMessageBatch" | "DeleteMessageBatch" => {
            body.get("Entries").and_then(Value::as_array).map(Vec::len)
        }
        "BatchWriteItem" | "BatchGetItem" => body
            .get("RequestItems")
            .and_then(Value::as_object)
            .map(|t| {
                t.values()
                    .map(|v| {
                        v.as_array()
                            .map(Vec::len)
                            .or_else(|| v.get("Keys").and_then(Value::as_array).map(Vec::len))
                            .unwrap_or(0)
                    })
                    .sum()
            }),
        "BatchExecuteStatement" => body
            .get("Statements")
            .and_then(Value::as_array)
            .map(Vec::len),
        _ => Some(1),
    };
    n.unwrap_or(0) as u64
}

fn queue_name(url: &str) -> String {
    url.trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or(url)
        .to_owned()
}

/// The messages a successful `SendMessage` / `SendMessageBatch` answer acknowledges.
pub fn accepted_from(
    op: &str,
    request: &Value,
    response: &Value,
    at_ms: u64,
    response_lost: bool,
) -> Vec<Accepted> {
    let queue_url = request
        .get("QueueUrl")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let make = |entry: &Value, entry_id: Option<String>, message_id: &str| Accepted {
        queue_url: queue_url.to_owned(),
        queue_name: queue_name(queue_url),
        entry_id,
        message_id: message_id.to_owned(),
        body: entry
            .get("MessageBody")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned(),
        message_attributes: entry
            .get("MessageAttributes")
            .cloned()
            .unwrap_or(Value::Null),
        group_id: entry
            .get("MessageGroupId")
            .and_then(Value::as_str)
            .map(str::to_owned),
        at_ms,
        response_lost,
    };
    match op {
        "SendMessage" => response
            .get("MessageId")
            .and_then(Value::as_str)
            .map(|id| vec![make(request, None, id)])
            .unwrap_or_default(),
        "SendMessageBatch" => {
            let entries = request
                .get("Entries")
                .and_then(Value::as_array)
                .map(Vec::as_slice)
                .unwrap_or_default();
            response
                .get("Successful")
                .and_then(Value::as_array)
                .map(Vec::as_slice)
                .unwrap_or_default()
                .iter()
                .filter_map(|ok| {
                    let id = ok.get("Id")?.as_str()?;
                    let mid = ok.get("MessageId")?.as_str()?;
                    let entry = entries
                        .iter()
                        .find(|e| e.get("Id").and_then(Value::as_str) == Some(id))?;
                    Some(make(entry, Some(id.to_owned()), mid))
                })
                .collect()
        }
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Held statements' errors go back to their own positions among the forwarded answers.
    #[test]
    fn held_statements_keep_their_positions() {
        let statements: Vec<Value> = (0..25)
            .map(|i| json!({"Statement": format!("INSERT {i}")}))
            .collect();
        let body = json!({"Statements": statements});
        let mut rng = SplitMix64::new(3);
        let split = split_statements(&body, &rules(0.3, 0.0), &mut rng).unwrap();
        let forwarded = split.forward.as_ref().unwrap()["Statements"]
            .as_array()
            .unwrap()
            .clone();
        assert_eq!(forwarded.len() as u64 + split.held_count, 25);
        // The backend answers each forwarded statement with its text as the table name.
        let answers: Vec<Value> = forwarded
            .iter()
            .map(|s| json!({"TableName": s["Statement"]}))
            .collect();
        let mut response = json!({"Responses": answers});
        merge_held("BatchExecuteStatement", &mut response, split.held);
        let merged = response["Responses"].as_array().unwrap();
        assert_eq!(merged.len(), 25);
        let mut errors = 0;
        for (i, r) in merged.iter().enumerate() {
            match r.get("Error") {
                Some(e) => {
                    errors += 1;
                    assert!(["ThrottlingError", "InternalServerError"]
                        .contains(&e["Code"].as_str().unwrap()));
                }
                None => assert_eq!(r["TableName"], format!("INSERT {i}")),
            }
        }
        assert_eq!(errors, split.held_count);
        assert!(errors > 0 && errors < 25);
        let all = split_statements(&body, &rules(1.0, 0.0), &mut rng).unwrap();
        assert!(all.forward.is_none());
        let answer = all_held("BatchExecuteStatement", &body, all.held);
        assert_eq!(answer["Responses"].as_array().unwrap().len(), 25);
    }

    fn batch(n: usize) -> Value {
        let entries: Vec<Value> = (0..n)
            .map(|i| json!({"Id": format!("e{i}"), "MessageBody": format!("body {i}")}))
            .collect();
        json!({"QueueUrl": "http://h/000000000000/q", "Entries": entries})
    }

    fn rules(rate: f64, share: f64) -> OpRules {
        OpRules {
            partial_failure_rate: rate,
            sender_fault_share: share,
            ..OpRules::default()
        }
    }

    /// Held-back and forwarded entries partition the batch, in order.
    #[test]
    fn sqs_split_partitions_entries() {
        let body = batch(10);
        let s = split_sqs_batch(&body, &rules(0.5, 0.5), &mut SplitMix64::new(4)).unwrap();
        let fwd: Vec<String> = s.forward.as_ref().map_or(vec![], |f| {
            f["Entries"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["Id"].as_str().unwrap().to_owned())
                .collect()
        });
        let held: Vec<String> = s
            .held
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["Id"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(fwd.len() + held.len(), 10);
        assert_eq!(held.len() as u64, s.held_count);
        assert!(fwd.iter().all(|f| !held.contains(f)));
        assert_eq!(s.forward.unwrap()["QueueUrl"], body["QueueUrl"]);
    }

    /// Fabricated failures have the real shape, with a boolean SenderFault and a matching code.
    #[test]
    fn sqs_failures_have_real_shape() {
        let s = split_sqs_batch(&batch(10), &rules(1.0, 0.5), &mut SplitMix64::new(1)).unwrap();
        assert!(s.forward.is_none());
        for f in s.held.as_array().unwrap() {
            let sender = f["SenderFault"].as_bool().unwrap();
            let code = f["Code"].as_str().unwrap();
            assert_eq!(sender, code == "InvalidParameterValue", "{f}");
            assert!(f["Message"].is_string());
        }
        assert!(s.sender_faults > 0 && s.sender_faults < 10);
    }

    /// A malformed batch (duplicate ids, too many entries) is left for the backend to refuse.
    #[test]
    fn malformed_batches_are_not_split() {
        let dup =
            json!({"Entries": [{"Id": "a", "MessageBody": "x"}, {"Id": "a", "MessageBody": "y"}]});
        assert!(split_sqs_batch(&dup, &rules(1.0, 0.0), &mut SplitMix64::new(1)).is_none());
        assert!(split_sqs_batch(&batch(11), &rules(1.0, 0.0), &mut SplitMix64::new(1)).is_none());
    }

    /// moto's string SenderFault values become booleans.
    #[test]
    fn sender_fault_strings_become_booleans() {
        let mut r = json!({"Successful": [], "Failed": [
            {"Id": "a", "SenderFault": "true", "Code": "X"},
            {"Id": "b", "SenderFault": "false", "Code": "Y"},
            {"Id": "c", "SenderFault": true, "Code": "Z"}]});
        assert!(fix_sender_fault(&mut r));
        let sf: Vec<bool> = r["Failed"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["SenderFault"].as_bool().unwrap())
            .collect();
        assert_eq!(sf, [true, false, true]);
    }

    /// Held-back entries are appended to the backend's own Failed list.
    #[test]
    fn held_entries_merge_into_failed() {
        let mut r = json!({"Successful": [{"Id": "a"}], "Failed": [{"Id": "b"}]});
        merge_held("SendMessageBatch", &mut r, json!([{"Id": "c"}]));
        assert_eq!(r["Failed"], json!([{"Id": "b"}, {"Id": "c"}]));
    }

    /// Unprocessed items merge per table with what the backend left unprocessed.
    #[test]
    fn unprocessed_items_merge_per_table() {
        let mut r =
            json!({"UnprocessedItems": {"t": [{"PutRequest": {"Item": {"pk": {"S": "1"}}}}]}});
        merge_held(
            "BatchWriteItem",
            &mut r,
            json!({"t": [{"PutRequest": {"Item": {"pk": {"S": "2"}}}}], "u": []}),
        );
        assert_eq!(r["UnprocessedItems"]["t"].as_array().unwrap().len(), 2);
        assert!(r["UnprocessedItems"]["u"].is_array());
    }

    /// BatchGetItem keys are held back with the table's other request fields kept.
    #[test]
    fn batch_get_split_keeps_request_fields() {
        let keys: Vec<Value> = (0..20)
            .map(|i| json!({"pk": {"S": i.to_string()}}))
            .collect();
        let body = json!({"RequestItems": {"t": {"Keys": keys, "ConsistentRead": true}}});
        let s = split_batch_get(&body, &rules(0.5, 0.0), &mut SplitMix64::new(3)).unwrap();
        assert_eq!(s.held["t"]["ConsistentRead"], true);
        let fwd = s.forward.unwrap();
        assert_eq!(
            fwd["RequestItems"]["t"]["Keys"].as_array().unwrap().len() as u64 + s.held_count,
            20
        );
    }

    /// Acceptances pair each Successful entry with the body that was sent under its id.
    #[test]
    fn acceptances_pair_ids_with_bodies() {
        let req = batch(3);
        let resp = json!({"Successful": [{"Id": "e2", "MessageId": "m2"}, {"Id": "e0", "MessageId": "m0"}], "Failed": []});
        let acc = accepted_from("SendMessageBatch", &req, &resp, 5, false);
        assert_eq!(acc.len(), 2);
        assert_eq!(acc[0].body, "body 2");
        assert_eq!(acc[0].message_id, "m2");
        assert_eq!(acc[0].queue_name, "q");
        assert_eq!(acc[1].entry_id.as_deref(), Some("e0"));
    }
}
