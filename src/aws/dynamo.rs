//! The dedup table on DynamoDB.
//!
//! One item per message id: `pk` (S, the id), `status` (`claimed` | `done` | `parked`), `owner`
//! and `lease_until` (epoch ms) while claimed, `expires_at` (epoch s, the TTL attribute).
//! TTL deletes late, so every condition also treats `expires_at < now` as absent.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_dynamodb::operation::put_item::PutItemError;
use aws_sdk_dynamodb::types::{
    AttributeValue, ConsumedCapacity, PutRequest, ReturnConsumedCapacity,
    ReturnValuesOnConditionCheckFailure, WriteRequest,
};
use futures::future::join_all;
use tokio::time::Instant;

use super::errors::port_error;
use super::Meter;
use crate::relay::ports::{Claim, ClaimOutcome, DedupStore, PortError, Severity};

/// `BatchWriteItem` takes at most 25 requests.
const WRITE_CHUNK: usize = 25;

/// The claim condition: no live record. A record is dead when expired, or when it is a claim
/// whose lease has ended (its holder died).
pub const CLAIM_CONDITION: &str =
    "attribute_not_exists(pk) OR expires_at < :now_s OR (#st = :claimed AND lease_until < :now_ms)";

#[derive(Clone, Debug)]
pub struct DynamoStore {
    client: aws_sdk_dynamodb::Client,
    /// The table name, validated at configuration time.
    table: String,
    /// Requests and capacity used, for the report and the cost model.
    pub meter: Arc<Meter>,
}

impl DynamoStore {
    pub fn new(client: aws_sdk_dynamodb::Client, table: impl Into<String>) -> Self {
        Self {
            client,
            table: table.into(),
            meter: Arc::default(),
        }
    }

    fn record(&self, cc: Option<&ConsumedCapacity>) {
        if let Some(c) = cc {
            self.meter.capacity(
                c.write_capacity_units()
                    .or(c.capacity_units())
                    .unwrap_or(0.0),
                c.read_capacity_units().unwrap_or(0.0),
            );
        }
    }
}

/// A token no other claim call will produce: time, process, a counter and per-process
/// randomness.
fn claim_token() -> String {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.write_u32(std::process::id());
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    h.write_u64(n);
    format!("{:016x}-{n}", h.finish())
}

fn s(v: &str) -> AttributeValue {
    AttributeValue::S(v.to_owned())
}

fn n(v: u64) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

impl DedupStore for DynamoStore {
    async fn claim(&self, c: Claim<'_>) -> Result<ClaimOutcome, PortError> {
        // Unique to this call: if the SDK retries after a lost answer and finds our own first
        // attempt's item, the token says it is ours (the owner alone cannot: one pass may meet
        // the same id twice when TMC redelivers it mid-pass).
        let token = claim_token();
        let mut item = HashMap::from([
            ("pk".to_owned(), s(c.id)),
            ("status".to_owned(), s("claimed")),
            ("owner".to_owned(), s(c.owner)),
            ("claim_token".to_owned(), s(&token)),
            ("lease_until".to_owned(), n(c.lease_until_ms)),
            ("expires_at".to_owned(), n(c.expires_at)),
        ]);
        if !c.topic.is_empty() {
            item.insert("topic".to_owned(), s(c.topic));
        }
        if !c.group.is_empty() {
            item.insert("group_name".to_owned(), s(c.group));
        }
        self.meter.request();
        let r = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression(CLAIM_CONDITION)
            .expression_attribute_names("#st", "status")
            .expression_attribute_values(":now_s", n(c.now_ms / 1000))
            .expression_attribute_values(":now_ms", n(c.now_ms))
            .expression_attribute_values(":claimed", s("claimed"))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .return_consumed_capacity(ReturnConsumedCapacity::Total)
            .send()
            .await;
        match r {
            Ok(out) => {
                self.record(out.consumed_capacity());
                Ok(ClaimOutcome::Claimed)
            }
            Err(e) => {
                if let Some(PutItemError::ConditionalCheckFailedException(cf)) =
                    e.as_service_error()
                {
                    // A failed conditional write still consumes a write unit.
                    self.meter.capacity(1.0, 0.0);
                    let old = |name: &str| {
                        cf.item()
                            .and_then(|i| i.get(name))
                            .and_then(|v| v.as_s().ok())
                            .map(String::as_str)
                    };
                    if old("claim_token") == Some(token.as_str()) {
                        return Ok(ClaimOutcome::Claimed);
                    }
                    return Ok(match old("status") {
                        Some("done") => ClaimOutcome::AlreadyDone { parked: false },
                        Some("parked") => ClaimOutcome::AlreadyDone { parked: true },
                        _ => ClaimOutcome::HeldElsewhere,
                    });
                }
                Err(port_error("PutItem", &e))
            }
        }
    }

    async fn complete(
        &self,
        ids: &[(String, bool)],
        expires_at: u64,
        deadline: Instant,
    ) -> Result<Vec<String>, PortError> {
        let chunks = ids
            .chunks(WRITE_CHUNK)
            .map(|chunk| self.write_chunk(chunk, expires_at, deadline));
        let mut failed = Vec::new();
        for r in join_all(chunks).await {
            failed.extend(r?);
        }
        Ok(failed)
    }

    async fn release(&self, id: &str, owner: &str) -> Result<(), PortError> {
        self.meter.request();
        let r = self
            .client
            .delete_item()
            .table_name(&self.table)
            .key("pk", s(id))
            .condition_expression("#ow = :me AND #st = :claimed")
            .expression_attribute_names("#ow", "owner")
            .expression_attribute_names("#st", "status")
            .expression_attribute_values(":me", s(owner))
            .expression_attribute_values(":claimed", s("claimed"))
            .return_consumed_capacity(ReturnConsumedCapacity::Total)
            .send()
            .await;
        match r {
            Ok(out) => {
                self.record(out.consumed_capacity());
                Ok(())
            }
            // Not ours any more (taken over, or completed): nothing to release.
            Err(e)
                if e.as_service_error()
                    .is_some_and(|se| se.is_conditional_check_failed_exception()) =>
            {
                Ok(())
            }
            Err(e) => Err(port_error("DeleteItem", &e)),
        }
    }
}

impl DynamoStore {
    /// Writes up to 25 completion records, retrying `UnprocessedItems` a few times.
    async fn write_chunk(
        &self,
        chunk: &[(String, bool)],
        expires_at: u64,
        deadline: Instant,
    ) -> Result<Vec<String>, PortError> {
        let mut requests: Vec<WriteRequest> = Vec::with_capacity(chunk.len());
        for (id, parked) in chunk {
            let put = PutRequest::builder()
                .item("pk", s(id))
                .item("status", s(if *parked { "parked" } else { "done" }))
                .item("expires_at", n(expires_at))
                .build()
                .map_err(|e| {
                    PortError::new("BatchWriteItem", Severity::Permanent, e.to_string())
                })?;
            requests.push(WriteRequest::builder().put_request(put).build());
        }
        for attempt in 0..4u32 {
            self.meter.request();
            let call = self
                .client
                .batch_write_item()
                .request_items(&self.table, requests.clone())
                .return_consumed_capacity(ReturnConsumedCapacity::Total)
                .send();
            let out = match tokio::time::timeout_at(deadline, call).await {
                Err(_) => {
                    return Err(PortError::new(
                        "BatchWriteItem",
                        Severity::Retryable,
                        "no answer before the pass deadline",
                    ))
                }
                Ok(Err(e)) => return Err(port_error("BatchWriteItem", &e)),
                Ok(Ok(out)) => out,
            };
            for cc in out.consumed_capacity() {
                self.record(Some(cc));
            }
            requests = out
                .unprocessed_items()
                .and_then(|u| u.get(&self.table))
                .cloned()
                .unwrap_or_default();
            if requests.is_empty() {
                return Ok(Vec::new());
            }
            let pause = Duration::from_millis(50 << attempt);
            if Instant::now() + pause >= deadline {
                break;
            }
            tokio::time::sleep(pause).await;
        }
        Ok(requests
            .iter()
            .filter_map(|w| {
                w.put_request()
                    .and_then(|p| p.item().get("pk"))
                    .and_then(|v| v.as_s().ok())
                    .cloned()
            })
            .collect())
    }
}
