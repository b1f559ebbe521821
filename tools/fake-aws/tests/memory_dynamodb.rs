//! The fake AWS endpoint's memory backend as DynamoDB, driven by the real AWS SDK for Rust
//! clients: the conditional claim, condition expressions, batch writes and throttling.

mod common;

use std::collections::HashMap;

use aws_sdk_dynamodb::operation::put_item::PutItemError;
use aws_sdk_dynamodb::types::{
    PutRequest, ReturnConsumedCapacity, ReturnValuesOnConditionCheckFailure, WriteRequest,
};
use aws_sdk_sqs::error::ProvideErrorMetadata;
use aws_smithy_runtime_api::client::result::SdkError;
use fake_aws::{DynamoThrottle, OpRules};
use serde_json::json;

use common::{ddb, dedup_table, memory, n, only, s};

/// The previous version's claim condition (what a rollback would run against the table).
const PREVIOUS_CLAIM_CONDITION: &str =
    "attribute_not_exists(pk) OR expires_at < :now_s OR (#st = :claimed AND lease_until < :now_ms)";

/// The previous version's claim: no live record (absent, expired, or a claim whose lease ended).
async fn claim(
    client: &aws_sdk_dynamodb::Client,
    table: &str,
    id: &str,
    owner: &str,
    now_ms: u64,
) -> Result<
    aws_sdk_dynamodb::operation::put_item::PutItemOutput,
    SdkError<PutItemError, aws_smithy_runtime_api::http::Response>,
> {
    client
        .put_item()
        .table_name(table)
        .item("pk", s(id))
        .item("status", s("claimed"))
        .item("owner", s(owner))
        .item("lease_until", n(now_ms + 60_000))
        .item("expires_at", n(now_ms / 1000 + 86_400))
        .condition_expression(PREVIOUS_CLAIM_CONDITION)
        .expression_attribute_names("#st", "status")
        .expression_attribute_values(":now_s", n(now_ms / 1000))
        .expression_attribute_values(":now_ms", n(now_ms))
        .expression_attribute_values(":claimed", s("claimed"))
        .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
        .return_consumed_capacity(ReturnConsumedCapacity::Total)
        .send()
        .await
}

/// DynamoDB throttling (`ProvisionedThroughputExceededException` or `ThrottlingException`) is
/// retried by the SDK and then surfaced with its code.
#[tokio::test]
async fn dynamodb_throttling_is_retried_then_surfaces() {
    let fake = memory(6).await;
    let client = ddb(&fake.endpoint(), 3);
    dedup_table(&client, "dedup-throttle").await;
    fake.set_rules(only(
        "PutItem",
        OpRules {
            throttle_rate: 1.0,
            ..OpRules::default()
        },
    ))
    .unwrap();
    let err = claim(&client, "dedup-throttle", "1", "me", 1_000_000)
        .await
        .unwrap_err();
    let se = err.as_service_error().expect("a service error");
    assert!(
        matches!(
            se,
            PutItemError::ProvisionedThroughputExceededException(_)
                | PutItemError::ThrottlingException(_)
        ),
        "{se:?}"
    );
    assert_eq!(fake.stats().op("PutItem").requests, 3);
    fake.shutdown().await;
}

/// A rule can pin DynamoDB throttling to `ProvisionedThroughputExceededException`, the error
/// a table's writes get: every throttled answer is that shape, HTTP 400, in DynamoDB's
/// namespace.
#[tokio::test]
async fn dynamodb_throttling_can_be_pinned_to_provisioned_throughput() {
    let fake = memory(8).await;
    let client = ddb(&fake.endpoint(), 1);
    dedup_table(&client, "dedup-ptee").await;
    fake.set_rules(only(
        "PutItem",
        OpRules {
            throttle_rate: 1.0,
            dynamodb_throttle: DynamoThrottle::ProvisionedThroughput,
            ..OpRules::default()
        },
    ))
    .unwrap();
    for i in 0..20 {
        let err = claim(&client, "dedup-ptee", &i.to_string(), "me", 1_000_000)
            .await
            .unwrap_err();
        let SdkError::ServiceError(se) = &err else {
            panic!("not a service error: {err:?}")
        };
        assert_eq!(se.raw().status().as_u16(), 400);
        assert!(
            matches!(
                se.err(),
                PutItemError::ProvisionedThroughputExceededException(_)
            ),
            "{:?}",
            se.err()
        );
    }
    assert_eq!(fake.stats().op("PutItem").throttled, 20);
    fake.shutdown().await;
}

/// A conditional claim succeeds once; the second fails with ConditionalCheckFailed carrying
/// the old item, and consumed capacity is reported.
#[tokio::test]
async fn conditional_put_claims_once_and_returns_old_item() {
    let fake = memory(8).await;
    let client = ddb(&fake.endpoint(), 1);
    dedup_table(&client, "dedup-claim").await;
    let first = claim(&client, "dedup-claim", "42", "owner-a", 1_000_000)
        .await
        .unwrap();
    let cap = first.consumed_capacity().unwrap();
    assert_eq!(cap.table_name(), Some("dedup-claim"));
    assert_eq!(cap.capacity_units(), Some(1.0));
    let err = claim(&client, "dedup-claim", "42", "owner-b", 1_000_500)
        .await
        .unwrap_err();
    let Some(PutItemError::ConditionalCheckFailedException(cf)) = err.as_service_error() else {
        panic!("expected ConditionalCheckFailed, got {err:?}");
    };
    let old = cf.item().unwrap();
    assert_eq!(old["owner"], s("owner-a"));
    assert_eq!(old["status"], s("claimed"));
    // Once the lease has ended, another owner can take it over.
    claim(&client, "dedup-claim", "42", "owner-b", 1_000_000 + 61_000)
        .await
        .unwrap();
    let item = fake
        .memory()
        .unwrap()
        .item("dedup-claim", &json!({"pk": {"S": "42"}}))
        .unwrap();
    assert_eq!(item["owner"], json!({"S": "owner-b"}));
    fake.shutdown().await;
}

/// An expression outside the supported subset is a ValidationException, not silently true.
#[tokio::test]
async fn unsupported_expression_is_a_validation_error() {
    let fake = memory(9).await;
    let client = ddb(&fake.endpoint(), 1);
    dedup_table(&client, "dedup-expr").await;
    let err = client
        .put_item()
        .table_name("dedup-expr")
        .item("pk", s("1"))
        .condition_expression("begins_with(pk, :p)")
        .expression_attribute_values(":p", s("x"))
        .send()
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("ValidationException"));
    assert!(err.message().unwrap().contains("begins_with"), "{err:?}");
    fake.shutdown().await;
}

/// `BatchWriteItem` partial failures come back as `UnprocessedItems` the SDK parses; the rest
/// are written.
#[tokio::test]
async fn batch_write_partial_failure_returns_unprocessed_items() {
    let fake = memory(13).await;
    let client = ddb(&fake.endpoint(), 1);
    dedup_table(&client, "dedup-batch").await;
    fake.set_rules(only(
        "BatchWriteItem",
        OpRules {
            partial_failure_rate: 0.5,
            ..OpRules::default()
        },
    ))
    .unwrap();
    let requests: Vec<WriteRequest> = (0..25)
        .map(|i| {
            let put = PutRequest::builder()
                .item("pk", s(&i.to_string()))
                .item("status", s("done"))
                .build()
                .unwrap();
            WriteRequest::builder().put_request(put).build()
        })
        .collect();
    let out = client
        .batch_write_item()
        .request_items("dedup-batch", requests)
        .return_consumed_capacity(ReturnConsumedCapacity::Total)
        .send()
        .await
        .unwrap();
    let unprocessed = out
        .unprocessed_items()
        .and_then(|u| u.get("dedup-batch"))
        .map_or(0, Vec::len);
    let written = fake.memory().unwrap().items("dedup-batch").unwrap().len();
    assert!(unprocessed > 0 && written > 0, "{unprocessed} {written}");
    assert_eq!(unprocessed + written, 25);
    assert_eq!(
        out.consumed_capacity()[0].capacity_units(),
        Some(written as f64)
    );
    fake.shutdown().await;
}

/// A batch write of 26 requests is refused, as DynamoDB refuses it.
#[tokio::test]
async fn batch_write_of_26_is_refused() {
    let fake = memory(14).await;
    let client = ddb(&fake.endpoint(), 1);
    dedup_table(&client, "dedup-26").await;
    let requests: Vec<WriteRequest> = (0..26)
        .map(|i| {
            let put = PutRequest::builder()
                .item("pk", s(&i.to_string()))
                .build()
                .unwrap();
            WriteRequest::builder().put_request(put).build()
        })
        .collect();
    let err = client
        .batch_write_item()
        .request_items("dedup-26", requests)
        .send()
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("ValidationException"));
    fake.shutdown().await;
}

/// Many concurrent claims of the same ids: each id is won exactly once.
#[tokio::test]
async fn concurrent_claims_win_once_per_id() {
    let fake = memory(20).await;
    let client = ddb(&fake.endpoint(), 1);
    dedup_table(&client, "dedup-race").await;
    let mut tasks = Vec::new();
    for owner in 0..8 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let mut won = Vec::new();
            for id in 0..20 {
                let r = claim(
                    &client,
                    "dedup-race",
                    &id.to_string(),
                    &owner.to_string(),
                    1_000_000,
                )
                .await;
                if r.is_ok() {
                    won.push(id);
                }
            }
            won
        }));
    }
    let mut wins: HashMap<u32, usize> = HashMap::new();
    for t in tasks {
        for id in t.await.unwrap() {
            *wins.entry(id).or_default() += 1;
        }
    }
    assert_eq!(wins.len(), 20);
    assert!(wins.values().all(|c| *c == 1), "{wins:?}");
    fake.shutdown().await;
}
