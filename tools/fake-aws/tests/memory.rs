//! The fake AWS endpoint's memory backend, driven by the real AWS SDK for Rust clients.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::operation::put_item::PutItemError;
use aws_sdk_dynamodb::types::{
    AttributeValue, KeySchemaElement, KeyType, PutRequest, ReturnConsumedCapacity,
    ReturnValuesOnConditionCheckFailure, ScalarAttributeType, WriteRequest,
};
use aws_sdk_sqs::error::ProvideErrorMetadata;
use aws_sdk_sqs::operation::send_message_batch::SendMessageBatchError;
use aws_sdk_sqs::types::{MessageAttributeValue, SendMessageBatchRequestEntry};
use aws_smithy_runtime_api::client::result::SdkError;
use fake_aws::{
    DynamoThrottle, FakeAws, FakeAwsConfig, OpRules, Rules, Schedule, Stall, StallEffect, Storm,
    StormEffect,
};
use serde_json::json;

const ANY_PORT: &str = "127.0.0.1:0";

fn any_port() -> SocketAddr {
    ANY_PORT.parse().unwrap()
}

async fn memory(seed: u64) -> FakeAws {
    FakeAws::start(any_port(), FakeAwsConfig::memory().with_seed(seed))
        .await
        .unwrap()
}

/// SDK retries: `attempts` tries with a 1 ms initial backoff (1 means no retry).
fn retries(attempts: u32) -> aws_sdk_sqs::config::retry::RetryConfig {
    aws_sdk_sqs::config::retry::RetryConfig::standard()
        .with_max_attempts(attempts)
        .with_initial_backoff(Duration::from_millis(1))
}

fn timeouts() -> aws_sdk_sqs::config::timeout::TimeoutConfig {
    aws_sdk_sqs::config::timeout::TimeoutConfig::builder()
        .operation_attempt_timeout(Duration::from_secs(5))
        .build()
}

fn sqs(endpoint: &str, attempts: u32) -> aws_sdk_sqs::Client {
    let conf = aws_sdk_sqs::config::Builder::new()
        .behavior_version(aws_sdk_sqs::config::BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(aws_sdk_sqs::config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_sqs::config::Credentials::new(
            "x", "x", None, None, "test",
        ))
        .retry_config(retries(attempts))
        .timeout_config(timeouts())
        .build();
    aws_sdk_sqs::Client::from_conf(conf)
}

fn ddb(endpoint: &str, attempts: u32) -> aws_sdk_dynamodb::Client {
    let conf = aws_sdk_dynamodb::config::Builder::new()
        .behavior_version(aws_sdk_dynamodb::config::BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(aws_sdk_dynamodb::config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_dynamodb::config::Credentials::new(
            "x", "x", None, None, "test",
        ))
        .retry_config(retries(attempts))
        .timeout_config(timeouts())
        .build();
    aws_sdk_dynamodb::Client::from_conf(conf)
}

fn entries(n: usize) -> Vec<SendMessageBatchRequestEntry> {
    (0..n)
        .map(|i| {
            SendMessageBatchRequestEntry::builder()
                .id(format!("e{i}"))
                .message_body(format!("{{\"id\":{i}}}"))
                .build()
                .unwrap()
        })
        .collect()
}

async fn create_queue(client: &aws_sdk_sqs::Client, name: &str) -> String {
    client
        .create_queue()
        .queue_name(name)
        .send()
        .await
        .unwrap()
        .queue_url()
        .unwrap()
        .to_owned()
}

fn only(op: &str, rules: OpRules) -> Rules {
    Rules::none().with(op, rules)
}

async fn dedup_table(client: &aws_sdk_dynamodb::Client, name: &str) {
    client
        .create_table()
        .table_name(name)
        .key_schema(
            KeySchemaElement::builder()
                .attribute_name("pk")
                .key_type(KeyType::Hash)
                .build()
                .unwrap(),
        )
        .attribute_definitions(
            aws_sdk_dynamodb::types::AttributeDefinition::builder()
                .attribute_name("pk")
                .attribute_type(ScalarAttributeType::S)
                .build()
                .unwrap(),
        )
        .billing_mode(aws_sdk_dynamodb::types::BillingMode::PayPerRequest)
        .send()
        .await
        .unwrap();
}

fn s(v: &str) -> AttributeValue {
    AttributeValue::S(v.to_owned())
}

fn n(v: u64) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

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

/// A batch of ten is accepted whole, with correct MD5s, and every message is in the queue.
#[tokio::test]
async fn send_message_batch_of_ten_is_all_successful() {
    let fake = memory(1).await;
    let client = sqs(&fake.endpoint(), 1);
    let url = create_queue(&client, "relay-q").await;
    let out = client
        .send_message_batch()
        .queue_url(&url)
        .set_entries(Some(entries(10)))
        .send()
        .await
        .unwrap();
    assert_eq!(out.successful().len(), 10);
    assert!(out.failed().is_empty());
    let first = out.successful().iter().find(|e| e.id() == "e0").unwrap();
    // MD5 of the body {"id":0}.
    assert_eq!(first.md5_of_message_body(), md5_hex(b"{\"id\":0}"));
    let stored = fake.memory().unwrap().messages("relay-q").unwrap();
    assert_eq!(stored.len(), 10);
    assert_eq!(fake.accepted().len(), 10);
    fake.shutdown().await;
}

fn md5_hex(data: &[u8]) -> String {
    use md5::Digest;
    md5::Md5::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Message attributes come back with the MD5 SQS documents, and survive a receive.
#[tokio::test]
async fn message_attributes_round_trip_with_md5() {
    let fake = memory(2).await;
    let client = sqs(&fake.endpoint(), 1);
    let url = create_queue(&client, "attrs-q").await;
    let attr = MessageAttributeValue::builder()
        .data_type("String")
        .string_value("trade")
        .build()
        .unwrap();
    let entry = SendMessageBatchRequestEntry::builder()
        .id("a")
        .message_body("x")
        .message_attributes("topic", attr)
        .build()
        .unwrap();
    let out = client
        .send_message_batch()
        .queue_url(&url)
        .entries(entry)
        .send()
        .await
        .unwrap();
    let sent_md5 = out.successful()[0]
        .md5_of_message_attributes()
        .unwrap()
        .to_owned();
    // name "topic", type "String", transport 1, value "trade", each length-prefixed.
    let mut buf = Vec::new();
    for part in [&b"topic"[..], b"String"] {
        buf.extend((part.len() as u32).to_be_bytes());
        buf.extend(part);
    }
    buf.push(1);
    buf.extend(5u32.to_be_bytes());
    buf.extend(b"trade");
    assert_eq!(sent_md5, md5_hex(&buf));
    let got = client
        .receive_message()
        .queue_url(&url)
        .message_attribute_names("All")
        .send()
        .await
        .unwrap();
    let m = &got.messages()[0];
    assert_eq!(m.md5_of_message_attributes(), Some(sent_md5.as_str()));
    assert_eq!(
        m.message_attributes().unwrap()["topic"].string_value(),
        Some("trade")
    );
    fake.shutdown().await;
}

/// Injected partial failures reach the SDK as parsed `Failed` entries with boolean SenderFault
/// of both kinds, and only the surviving entries are stored.
#[tokio::test]
async fn partial_failures_parse_with_sender_fault_both_ways() {
    let fake = memory(3).await;
    let client = sqs(&fake.endpoint(), 1);
    let url = create_queue(&client, "partial-q").await;
    fake.set_rules(only(
        "SendMessageBatch",
        OpRules {
            partial_failure_rate: 0.6,
            sender_fault_share: 0.5,
            ..OpRules::default()
        },
    ))
    .unwrap();
    let (mut ok, mut sender, mut retryable) = (0, 0, 0);
    for _ in 0..5 {
        let out = client
            .send_message_batch()
            .queue_url(&url)
            .set_entries(Some(entries(10)))
            .send()
            .await
            .unwrap();
        assert_eq!(out.successful().len() + out.failed().len(), 10);
        ok += out.successful().len();
        for f in out.failed() {
            if f.sender_fault() {
                assert_eq!(f.code(), "InvalidParameterValue");
                sender += 1;
            } else {
                assert!(
                    matches!(f.code(), "InternalError" | "ServiceUnavailable"),
                    "{f:?}"
                );
                retryable += 1;
            }
        }
    }
    assert!(
        ok > 0 && sender > 0 && retryable > 0,
        "{ok} {sender} {retryable}"
    );
    assert_eq!(
        fake.memory().unwrap().messages("partial-q").unwrap().len(),
        ok
    );
    assert_eq!(fake.accepted().len(), ok);
    let stats = fake.stats().op("SendMessageBatch");
    assert_eq!(stats.failed_entries as usize, sender + retryable);
    assert_eq!(stats.sender_fault_entries as usize, sender);
    fake.shutdown().await;
}

/// When every entry is held back, each is reported failed exactly once and none is stored.
#[tokio::test]
async fn whole_batch_held_back_reports_each_entry_once() {
    let fake = memory(31).await;
    let client = sqs(&fake.endpoint(), 1);
    let url = create_queue(&client, "all-held-q").await;
    fake.set_rules(only(
        "SendMessageBatch",
        OpRules {
            partial_failure_rate: 1.0,
            ..OpRules::default()
        },
    ))
    .unwrap();
    let out = client
        .send_message_batch()
        .queue_url(&url)
        .set_entries(Some(entries(10)))
        .send()
        .await
        .unwrap();
    assert!(out.successful().is_empty());
    let mut ids: Vec<&str> = out.failed().iter().map(|f| f.id()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!((out.failed().len(), ids.len()), (10, 10));
    assert!(fake
        .memory()
        .unwrap()
        .messages("all-held-q")
        .unwrap()
        .is_empty());
    assert!(fake.accepted().is_empty());
    fake.shutdown().await;
}

/// The same seed injects the same per-entry failures on the same sequence of requests.
#[tokio::test]
async fn same_seed_fails_the_same_entries() {
    let mut runs = Vec::new();
    for _ in 0..2 {
        let fake = memory(77).await;
        let client = sqs(&fake.endpoint(), 1);
        let url = create_queue(&client, "seeded-q").await;
        fake.set_rules(only(
            "SendMessageBatch",
            OpRules {
                partial_failure_rate: 0.3,
                sender_fault_share: 0.5,
                ..OpRules::default()
            },
        ))
        .unwrap();
        let mut failed = Vec::new();
        for _ in 0..3 {
            let out = client
                .send_message_batch()
                .queue_url(&url)
                .set_entries(Some(entries(10)))
                .send()
                .await
                .unwrap();
            failed.push(
                out.failed()
                    .iter()
                    .map(|f| (f.id().to_owned(), f.sender_fault()))
                    .collect::<Vec<_>>(),
            );
        }
        runs.push(failed);
        fake.shutdown().await;
    }
    assert_eq!(runs[0], runs[1]);
}

/// An SQS throttling answer is classified as throttling: the SDK retries it, then surfaces
/// `RequestThrottled`.
#[tokio::test]
async fn sqs_throttling_is_retried_then_surfaces_as_request_throttled() {
    let fake = memory(4).await;
    let client = sqs(&fake.endpoint(), 3);
    let url = create_queue(&client, "throttle-q").await;
    fake.set_rules(only(
        "SendMessageBatch",
        OpRules {
            throttle_rate: 1.0,
            ..OpRules::default()
        },
    ))
    .unwrap();
    let err = client
        .send_message_batch()
        .queue_url(&url)
        .set_entries(Some(entries(2)))
        .send()
        .await
        .unwrap_err();
    let se = err.as_service_error().expect("a service error");
    assert!(
        matches!(se, SendMessageBatchError::RequestThrottled(_)),
        "{se:?}"
    );
    assert_eq!(se.code(), Some("RequestThrottled"));
    let stats = fake.stats().op("SendMessageBatch");
    assert_eq!(stats.requests, 3, "the SDK retried the throttled call");
    assert_eq!(stats.throttled, 3);
    assert!(fake
        .memory()
        .unwrap()
        .messages("throttle-q")
        .unwrap()
        .is_empty());
    fake.shutdown().await;
}

/// A throttled SQS call succeeds once the SDK's retry gets through.
#[tokio::test]
async fn sqs_throttling_once_is_absorbed_by_sdk_retry() {
    let fake = memory(5).await;
    let client = sqs(&fake.endpoint(), 3);
    let url = create_queue(&client, "absorb-q").await;
    // With 30% throttled and three attempts per call, nearly every call gets through.
    fake.set_rules(only(
        "SendMessageBatch",
        OpRules {
            throttle_rate: 0.3,
            ..OpRules::default()
        },
    ))
    .unwrap();
    let mut succeeded = 0;
    for _ in 0..10 {
        if client
            .send_message_batch()
            .queue_url(&url)
            .set_entries(Some(entries(1)))
            .send()
            .await
            .is_ok()
        {
            succeeded += 1;
        }
    }
    let stats = fake.stats().op("SendMessageBatch");
    assert!(stats.throttled > 0, "{stats:?}");
    // Every throttle is retried, except the last attempt of a call that failed.
    assert_eq!(stats.requests, 10 + stats.throttled - (10 - succeeded));
    assert!(succeeded >= 9, "{succeeded} of 10");
    fake.shutdown().await;
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

/// An injected HTTP 500 is retried by the SDK and surfaces as `InternalError`.
#[tokio::test]
async fn error500_is_retried_then_surfaces() {
    let fake = memory(7).await;
    let client = sqs(&fake.endpoint(), 2);
    let url = create_queue(&client, "err500-q").await;
    fake.set_rules(only(
        "SendMessageBatch",
        OpRules {
            error500_rate: 1.0,
            ..OpRules::default()
        },
    ))
    .unwrap();
    let err = client
        .send_message_batch()
        .queue_url(&url)
        .set_entries(Some(entries(1)))
        .send()
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("InternalError"));
    assert_eq!(err.raw_response().map(|r| r.status().as_u16()), Some(500));
    assert_eq!(fake.stats().op("SendMessageBatch").error500, 2);
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

/// A lost response: the message is stored and logged as accepted, but the SDK call fails.
#[tokio::test]
async fn lost_response_fails_the_call_but_records_acceptance() {
    let fake = memory(10).await;
    let client = sqs(&fake.endpoint(), 1);
    let url = create_queue(&client, "lost-q").await;
    fake.set_rules(only(
        "SendMessageBatch",
        OpRules {
            lost_response_rate: 1.0,
            ..OpRules::default()
        },
    ))
    .unwrap();
    let err = client
        .send_message_batch()
        .queue_url(&url)
        .set_entries(Some(entries(3)))
        .send()
        .await
        .unwrap_err();
    assert!(matches!(err, SdkError::DispatchFailure(_)), "{err:?}");
    let acc = fake.accepted();
    assert_eq!(acc.len(), 3);
    assert!(acc
        .iter()
        .all(|a| a.response_lost && a.queue_name == "lost-q"));
    assert_eq!(acc[0].body, "{\"id\":0}");
    assert_eq!(fake.memory().unwrap().messages("lost-q").unwrap().len(), 3);
    assert_eq!(fake.stats().op("SendMessageBatch").lost_responses, 1);
    fake.shutdown().await;
}

/// A lost response held open longer than the client's timeout shows up as a timeout.
#[tokio::test]
async fn delayed_lost_response_times_the_client_out() {
    let fake = memory(11).await;
    let conf = aws_sdk_sqs::config::Builder::new()
        .behavior_version(aws_sdk_sqs::config::BehaviorVersion::latest())
        .endpoint_url(fake.endpoint())
        .region(aws_sdk_sqs::config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_sqs::config::Credentials::new(
            "x", "x", None, None, "test",
        ))
        .retry_config(retries(1))
        .timeout_config(
            aws_sdk_sqs::config::timeout::TimeoutConfig::builder()
                .operation_timeout(Duration::from_millis(300))
                .build(),
        )
        .build();
    let client = aws_sdk_sqs::Client::from_conf(conf);
    let url = create_queue(&client, "slow-lost-q").await;
    fake.set_rules(only(
        "SendMessageBatch",
        OpRules {
            lost_response_rate: 1.0,
            lost_response_delay_ms: 5_000,
            ..OpRules::default()
        },
    ))
    .unwrap();
    let err = client
        .send_message_batch()
        .queue_url(&url)
        .set_entries(Some(entries(1)))
        .send()
        .await
        .unwrap_err();
    // The client's own timeout fired first: the connection was still open and silent.
    assert!(matches!(err, SdkError::TimeoutError(_)), "{err:?}");
    assert_eq!(fake.accepted().len(), 1);
    fake.shutdown().await;
}

/// Latency is added before answering.
#[tokio::test]
async fn latency_is_added_before_answering() {
    let fake = memory(12).await;
    let client = sqs(&fake.endpoint(), 1);
    let url = create_queue(&client, "slow-q").await;
    fake.set_rules(only(
        "SendMessageBatch",
        OpRules {
            latency_ms: 80,
            ..OpRules::default()
        },
    ))
    .unwrap();
    let started = Instant::now();
    client
        .send_message_batch()
        .queue_url(&url)
        .set_entries(Some(entries(1)))
        .send()
        .await
        .unwrap();
    assert!(started.elapsed() >= Duration::from_millis(80));
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

/// Characters SQS refuses fail their entry alone, with SenderFault true.
#[tokio::test]
async fn invalid_characters_fail_only_their_entry() {
    let fake = memory(15).await;
    let client = sqs(&fake.endpoint(), 1);
    let url = create_queue(&client, "chars-q").await;
    let bad = SendMessageBatchRequestEntry::builder()
        .id("bad")
        .message_body("nul \u{0} here")
        .build()
        .unwrap();
    let good = SendMessageBatchRequestEntry::builder()
        .id("good")
        .message_body("fine")
        .build()
        .unwrap();
    let out = client
        .send_message_batch()
        .queue_url(&url)
        .entries(bad)
        .entries(good)
        .send()
        .await
        .unwrap();
    assert_eq!(out.successful().len(), 1);
    let f = &out.failed()[0];
    assert_eq!(
        (f.id(), f.sender_fault(), f.code()),
        ("bad", true, "InvalidMessageContents")
    );
    fake.shutdown().await;
}

/// Receive hides a message for its visibility timeout; delete removes it.
#[tokio::test]
async fn receive_then_delete_drains_the_queue() {
    let fake = memory(16).await;
    let client = sqs(&fake.endpoint(), 1);
    let url = create_queue(&client, "drain-q").await;
    client
        .send_message_batch()
        .queue_url(&url)
        .set_entries(Some(entries(3)))
        .send()
        .await
        .unwrap();
    let got = client
        .receive_message()
        .queue_url(&url)
        .max_number_of_messages(10)
        .send()
        .await
        .unwrap();
    assert_eq!(got.messages().len(), 3);
    let again = client
        .receive_message()
        .queue_url(&url)
        .send()
        .await
        .unwrap();
    assert!(
        again.messages().is_empty(),
        "in flight messages stay hidden"
    );
    for m in got.messages() {
        client
            .delete_message()
            .queue_url(&url)
            .receipt_handle(m.receipt_handle().unwrap())
            .send()
            .await
            .unwrap();
    }
    assert!(fake
        .memory()
        .unwrap()
        .messages("drain-q")
        .unwrap()
        .is_empty());
    fake.shutdown().await;
}

/// A missing queue is the SDK's QueueDoesNotExist.
#[tokio::test]
async fn missing_queue_is_queue_does_not_exist() {
    let fake = memory(17).await;
    let client = sqs(&fake.endpoint(), 1);
    let err = client
        .send_message_batch()
        .queue_url(format!("{}/000000000000/nope", fake.endpoint()))
        .set_entries(Some(entries(1)))
        .send()
        .await
        .unwrap_err();
    assert!(
        matches!(
            err.as_service_error(),
            Some(SendMessageBatchError::QueueDoesNotExist(_))
        ),
        "{err:?}"
    );
    fake.shutdown().await;
}

/// Rules set through the admin path take effect, and stats and acceptances are served.
#[tokio::test]
async fn admin_paths_set_rules_and_report() {
    let fake = memory(18).await;
    let http = reqwest::Client::new();
    let base = fake.endpoint();
    let bad = http
        .post(format!("{base}/_fake/rules"))
        .body(r#"{"SendMessageBatch": {"throttle_rate": 2}}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status().as_u16(), 400);
    let ok = http
        .post(format!("{base}/_fake/rules"))
        .body(r#"{"SendMessageBatch": {"throttle_rate": 1}}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status().as_u16(), 200);
    assert_eq!(fake.rules().for_op("SendMessageBatch").throttle_rate, 1.0);
    let client = sqs(&base, 1);
    let url = create_queue(&client, "admin-q").await;
    let _ = client
        .send_message_batch()
        .queue_url(&url)
        .set_entries(Some(entries(1)))
        .send()
        .await;
    let stats: serde_json::Value = http
        .get(format!("{base}/_fake/stats"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .map(|b| serde_json::from_slice(&b).unwrap())
        .unwrap();
    assert_eq!(stats["ops"]["SendMessageBatch"]["throttled"], 1);
    let accepted: Vec<serde_json::Value> = http
        .get(format!("{base}/_fake/accepted?from=0"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .map(|b| serde_json::from_slice(&b).unwrap())
        .unwrap();
    assert!(accepted.is_empty());
    fake.shutdown().await;
}

/// Shutdown returns promptly and frees the port.
#[tokio::test]
async fn shutdown_is_prompt() {
    let fake = memory(19).await;
    let addr = fake.local_addr();
    let client = sqs(&fake.endpoint(), 1);
    create_queue(&client, "bye-q").await;
    fake.shutdown().await;
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

/// The binary prints its endpoint first, serves the SDK, and exits on SIGTERM.
#[tokio::test]
async fn binary_prints_endpoint_and_stops_on_sigterm() {
    use tokio::io::AsyncBufReadExt;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_fake-aws"))
        .args(["--listen", ANY_PORT, "--memory", "--seed", "3"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let endpoint = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(endpoint.starts_with("http://127.0.0.1:"), "{endpoint}");
    let client = sqs(&endpoint, 1);
    let url = create_queue(&client, "bin-q").await;
    let out = client
        .send_message_batch()
        .queue_url(&url)
        .set_entries(Some(entries(2)))
        .send()
        .await
        .unwrap();
    assert_eq!(out.successful().len(), 2);
    let pid = child.id().unwrap().to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = tokio::time::timeout(Duration::from_secs(5), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status:?}");
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

/// One window from `after_ms`, `lasting_ms` long.
fn window(after_ms: u64, lasting_ms: u64) -> Schedule {
    Schedule {
        after_ms,
        gap_ms: [0, 0],
        lasting_ms: [lasting_ms, lasting_ms],
        count: 1,
        until_ms: 0,
    }
}

fn storm(name: &str, when: Schedule, ops: &[&str], throttle_rate: f64) -> Storm {
    let effect = StormEffect {
        throttle_rate,
        latency_ms: 0,
    };
    Storm {
        name: name.into(),
        when,
        ops: ops
            .iter()
            .map(|op| ((*op).to_owned(), effect.clone()))
            .collect(),
    }
}

/// A DynamoDB client that names itself `app` in its user agent, as `AWS_SDK_UA_APP_ID` does.
fn ddb_named(endpoint: &str, app: &str) -> aws_sdk_dynamodb::Client {
    let conf = ddb(endpoint, 1)
        .config()
        .to_builder()
        .app_name(aws_sdk_dynamodb::config::AppName::new(app.to_owned()).unwrap())
        .build();
    aws_sdk_dynamodb::Client::from_conf(conf)
}

/// In a storm window a DynamoDB write is refused as DynamoDB refuses it under sustained
/// overload (HTTP 400, `ProvisionedThroughputExceededException` in its JSON shape), reads pass,
/// the refused writes are listed as never carried out with the caller's name, and once the
/// window is over the writes go through.
#[tokio::test]
async fn storm_throttles_its_operations_with_dynamodbs_answer() {
    let fake = memory(30).await;
    let client = ddb_named(&fake.endpoint(), "chaos-p7");
    dedup_table(&client, "dedup-storm").await;
    fake.set_rules(Rules::none().with_storm(storm(
        "writes",
        window(0, 600_000),
        &["PutItem", "UpdateItem"],
        1.0,
    )))
    .unwrap();
    let err = client
        .put_item()
        .table_name("dedup-storm")
        .item("pk", s("a"))
        .send()
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Some("ProvisionedThroughputExceededException"),
        "{err:?}"
    );
    // The wire shape itself, as DynamoDB writes it.
    let raw = reqwest::Client::new()
        .post(fake.endpoint())
        .header("content-type", "application/x-amz-json-1.0")
        .header("x-amz-target", "DynamoDB_20120810.PutItem")
        .body(r#"{"TableName":"dedup-storm","Item":{"pk":{"S":"b"}}}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status().as_u16(), 400);
    let body: serde_json::Value = serde_json::from_str(&raw.text().await.unwrap()).unwrap();
    assert_eq!(
        body["__type"],
        "com.amazonaws.dynamodb.v20120810#ProvisionedThroughputExceededException"
    );
    assert!(body["message"]
        .as_str()
        .unwrap()
        .contains("provisioned throughput"));
    // Reads are not in the storm.
    let got = client
        .get_item()
        .table_name("dedup-storm")
        .key("pk", s("a"))
        .send()
        .await
        .unwrap();
    assert!(
        got.item().is_none(),
        "the refused write was not carried out"
    );
    let stats = fake.stats();
    assert_eq!(stats.op("PutItem").storm_throttled, 2);
    assert_eq!(stats.op("PutItem").throttled, 2);
    assert_eq!(stats.op("GetItem").throttled, 0);
    let ep = &stats.episodes["storm/writes"];
    assert_eq!((ep.requests, ep.throttled), (2, 2));
    let refused = fake.unrecovered("PutItem");
    assert_eq!(refused.len(), 2);
    let callers: Vec<Option<&str>> = refused.iter().map(|r| r.caller.as_deref()).collect();
    assert!(callers.contains(&Some("chaos-p7")), "{callers:?}");
    assert!(callers.contains(&None), "the raw request named nobody");

    // The next storm is ten minutes away: the same write now goes through, and is no longer
    // listed as refused.
    fake.set_rules(Rules::none().with_storm(storm(
        "writes",
        window(600_000, 1_000),
        &["PutItem"],
        1.0,
    )))
    .unwrap();
    client
        .put_item()
        .table_name("dedup-storm")
        .item("pk", s("a"))
        .send()
        .await
        .unwrap();
    assert_eq!(fake.unrecovered("PutItem").len(), 1);
    fake.shutdown().await;
}

/// A storm's latency slows the requests it lets through, and leaves other operations alone.
#[tokio::test]
async fn storm_latency_slows_what_it_lets_through() {
    let fake = memory(31).await;
    let client = sqs(&fake.endpoint(), 1);
    let url = create_queue(&client, "brownout-q").await;
    let mut slow = storm("brownout", window(0, 600_000), &["SendMessageBatch"], 0.0);
    slow.ops.get_mut("SendMessageBatch").unwrap().latency_ms = 300;
    fake.set_rules(Rules::none().with_storm(slow)).unwrap();
    let started = Instant::now();
    client
        .send_message_batch()
        .queue_url(&url)
        .set_entries(Some(entries(2)))
        .send()
        .await
        .unwrap();
    assert!(started.elapsed() >= Duration::from_millis(300));
    let stats = fake.stats();
    assert_eq!(stats.op("SendMessageBatch").storm_delayed, 1);
    assert_eq!(stats.episodes["storm/brownout"].delayed, 1);
    assert_eq!(stats.op("CreateQueue").storm_delayed, 0);
    fake.shutdown().await;
}

/// Waits until fake-aws holds no stalled request (a bound on a hang, not on speed).
async fn until_no_stall(fake: &FakeAws) {
    let guard = Instant::now() + Duration::from_secs(120);
    while fake.stalls_pending() > 0 {
        assert!(Instant::now() < guard, "a stall never ended");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn stall(name: &str, op: &str, hold_ms: u64, answer_share: f64) -> Stall {
    Stall {
        name: name.into(),
        when: window(0, 600_000),
        ops: [(
            op.to_owned(),
            StallEffect {
                rate: 1.0,
                hold_ms,
                answer_share,
            },
        )]
        .into_iter()
        .collect(),
    }
}

/// A stall holds a request past its client's timeout. Answered, it is carried out only at the
/// end of the hold, and the SQS acceptance is logged as one whose answer the client never got;
/// dropped, it is never carried out and is listed as refused. `stalls_pending` counts held
/// requests until they end.
#[tokio::test]
async fn stall_holds_past_the_timeout_then_answers_or_drops() {
    let fake = memory(32).await;
    let conf = sqs(&fake.endpoint(), 1)
        .config()
        .to_builder()
        .timeout_config(
            aws_sdk_sqs::config::timeout::TimeoutConfig::builder()
                .operation_timeout(Duration::from_millis(200))
                .build(),
        )
        .build();
    let client = aws_sdk_sqs::Client::from_conf(conf);
    let url = create_queue(&client, "stalled-q").await;
    fake.set_rules(Rules::none().with_stall(stall("answered", "SendMessageBatch", 3_000, 1.0)))
        .unwrap();
    let err = client
        .send_message_batch()
        .queue_url(&url)
        .set_entries(Some(entries(2)))
        .send()
        .await
        .unwrap_err();
    assert!(matches!(err, SdkError::TimeoutError(_)), "{err:?}");
    assert_eq!(fake.stalls_pending(), 1);
    assert!(
        fake.memory()
            .unwrap()
            .messages("stalled-q")
            .unwrap()
            .is_empty(),
        "not carried out while held"
    );
    until_no_stall(&fake).await;
    assert_eq!(
        fake.memory().unwrap().messages("stalled-q").unwrap().len(),
        2
    );
    let acc = fake.accepted();
    assert_eq!(acc.len(), 2);
    assert!(acc.iter().all(|a| a.response_lost), "{acc:?}");

    fake.set_rules(Rules::none().with_stall(stall("dropped", "SendMessageBatch", 500, 0.0)))
        .unwrap();
    let err = client
        .send_message_batch()
        .queue_url(&url)
        .set_entries(Some(entries(3)))
        .send()
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            SdkError::TimeoutError(_) | SdkError::DispatchFailure(_)
        ),
        "{err:?}"
    );
    until_no_stall(&fake).await;
    assert_eq!(
        fake.memory().unwrap().messages("stalled-q").unwrap().len(),
        2
    );
    assert_eq!(fake.unrecovered("SendMessageBatch").len(), 1);
    let st = fake.stats();
    let op = st.op("SendMessageBatch");
    assert_eq!((op.stalled, op.stall_answered, op.stall_dropped), (2, 1, 1));
    assert_eq!(st.episodes["stall/answered"].answered, 1);
    assert_eq!(st.episodes["stall/dropped"].dropped, 1);
    assert_eq!(st.stalls_pending, 0);
    fake.shutdown().await;
}
