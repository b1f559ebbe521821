//! The dedup table on DynamoDB.
//!
//! One item per message id: `pk` (S, the id), `status` (`claimed` | `done` | `parked`), `owner`,
//! `claim_token` and `lease_until` (epoch ms) while claimed, `expires_at` (epoch s, the TTL
//! attribute). Each method is one request; the pass paces and retries them.
//! TTL deletes late, so every condition also treats `expires_at < now` as absent.

use std::collections::HashMap;
use std::sync::Arc;

use aws_sdk_dynamodb::operation::put_item::PutItemError;
use aws_sdk_dynamodb::types::{
    AttributeValue, ConsumedCapacity, PutRequest, ReturnConsumedCapacity,
    ReturnValuesOnConditionCheckFailure, WriteRequest,
};
use tokio::time::Instant;

use super::errors::port_error;
use super::within;
use super::Meter;
use crate::relay::ports::{Claim, ClaimOutcome, DedupStore, PortError, Severity, COMPLETE_CHUNK};

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

fn s(v: &str) -> AttributeValue {
    AttributeValue::S(v.to_owned())
}

fn n(v: u64) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

impl DedupStore for DynamoStore {
    async fn claim(&self, c: Claim<'_>, deadline: Instant) -> Result<ClaimOutcome, PortError> {
        // Only what the claim needs: a fixed, small item, whatever the message holds.
        let item = HashMap::from([
            ("pk".to_owned(), s(c.id)),
            ("status".to_owned(), s("claimed")),
            ("owner".to_owned(), s(c.owner)),
            ("claim_token".to_owned(), s(c.token)),
            ("lease_until".to_owned(), n(c.lease_until_ms)),
            ("expires_at".to_owned(), n(c.expires_at)),
        ]);
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
            .send();
        let r = within(deadline, "PutItem", r).await?;
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
                    // Our own earlier attempt, whose answer was lost.
                    if old("claim_token") == Some(c.token) {
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
        let mut requests: Vec<WriteRequest> = Vec::with_capacity(ids.len());
        for (id, parked) in ids.iter().take(COMPLETE_CHUNK) {
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
        self.meter.request();
        let call = self
            .client
            .batch_write_item()
            .request_items(&self.table, requests)
            .return_consumed_capacity(ReturnConsumedCapacity::Total)
            .send();
        let out = within(deadline, "BatchWriteItem", call)
            .await?
            .map_err(|e| port_error("BatchWriteItem", &e))?;
        for cc in out.consumed_capacity() {
            self.record(Some(cc));
        }
        Ok(out
            .unprocessed_items()
            .and_then(|u| u.get(&self.table))
            .map(|reqs| {
                reqs.iter()
                    .filter_map(|w| {
                        w.put_request()
                            .and_then(|p| p.item().get("pk"))
                            .and_then(|v| v.as_s().ok())
                            .cloned()
                    })
                    .collect()
            })
            .unwrap_or_default())
    }

    async fn release(&self, id: &str, token: &str, deadline: Instant) -> Result<(), PortError> {
        self.meter.request();
        // Conditioned on this claim's token, not on the pass: a retried delete must never
        // remove a fresh claim of the same id that a sibling batch made since.
        let call = self
            .client
            .delete_item()
            .table_name(&self.table)
            .key("pk", s(id))
            .condition_expression("#tk = :mine AND #st = :claimed")
            .expression_attribute_names("#tk", "claim_token")
            .expression_attribute_names("#st", "status")
            .expression_attribute_values(":mine", s(token))
            .expression_attribute_values(":claimed", s("claimed"))
            .return_consumed_capacity(ReturnConsumedCapacity::Total)
            .send();
        let r = within(deadline, "DeleteItem", call).await?;
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
