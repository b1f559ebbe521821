//! The fake AWS endpoint as a fault-injecting proxy in front of moto, driven by the real SDK.
//!
//! Needs a running moto at `MOTO_ENDPOINT` (`make test` starts one and exports it). Without it
//! these tests fail, on purpose: a skipped proxy test would hide a broken fault harness.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_sdk_dynamodb::operation::put_item::PutItemError;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType, PutRequest,
    ReturnValuesOnConditionCheckFailure, ScalarAttributeType, WriteRequest,
};
use aws_sdk_sqs::error::ProvideErrorMetadata;
use aws_sdk_sqs::types::SendMessageBatchRequestEntry;
use aws_smithy_runtime_api::client::result::SdkError;
use fake_aws::{FakeAws, FakeAwsConfig, OpRules, Rules};

fn moto_endpoint() -> String {
    match std::env::var("MOTO_ENDPOINT") {
        Ok(v) if !v.is_empty() => v,
        _ => panic!(
            "MOTO_ENDPOINT is not set: these tests need a running moto server. Run them via \
             `make test`, which starts moto and exports MOTO_ENDPOINT=http://127.0.0.1:PORT"
        ),
    }
}

async fn proxy(seed: u64) -> FakeAws {
    let upstream = url::Url::parse(&moto_endpoint()).expect("MOTO_ENDPOINT is a URL");
    let listen: SocketAddr = "127.0.0.1:0".parse().unwrap();
    FakeAws::start(listen, FakeAwsConfig::moto(upstream).with_seed(seed))
        .await
        .unwrap()
}

/// A name no other test (or earlier run against the same moto) uses.
fn unique(prefix: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        nanos % 1_000_000_000_000
    )
}

fn retries(attempts: u32) -> aws_sdk_sqs::config::retry::RetryConfig {
    aws_sdk_sqs::config::retry::RetryConfig::standard()
        .with_max_attempts(attempts)
        .with_initial_backoff(Duration::from_millis(1))
}

fn timeouts() -> aws_sdk_sqs::config::timeout::TimeoutConfig {
    aws_sdk_sqs::config::timeout::TimeoutConfig::builder()
        .operation_attempt_timeout(Duration::from_secs(10))
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
                .message_body(format!("body-{i}"))
                .build()
                .unwrap()
        })
        .collect()
}

fn only(op: &str, rules: OpRules) -> Rules {
    Rules::none().with(op, rules)
}

/// Creates a queue through `client`; returns its URL.
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

/// Every body in the queue, read straight from moto (and deleted, to keep moto fast).
async fn drain_from_moto(queue: &str) -> BTreeSet<String> {
    let moto = sqs(&moto_endpoint(), 1);
    let url = moto
        .get_queue_url()
        .queue_name(queue)
        .send()
        .await
        .unwrap()
        .queue_url()
        .unwrap()
        .to_owned();
    let mut bodies = BTreeSet::new();
    loop {
        let got = moto
            .receive_message()
            .queue_url(&url)
            .max_number_of_messages(10)
            .send()
            .await
            .unwrap();
        if got.messages().is_empty() {
            break;
        }
        for m in got.messages() {
            bodies.insert(m.body().unwrap().to_owned());
            moto.delete_message()
                .queue_url(&url)
                .receipt_handle(m.receipt_handle().unwrap())
                .send()
                .await
                .unwrap();
        }
    }
    bodies
}

async fn create_table(client: &aws_sdk_dynamodb::Client, name: &str) {
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
            AttributeDefinition::builder()
                .attribute_name("pk")
                .attribute_type(ScalarAttributeType::S)
                .build()
                .unwrap(),
        )
        .billing_mode(BillingMode::PayPerRequest)
        .send()
        .await
        .unwrap();
}

fn s(v: &str) -> AttributeValue {
    AttributeValue::S(v.to_owned())
}

/// Only the entries that survive an injected partial failure reach moto; the fabricated
/// failures parse in the SDK with boolean SenderFault.
#[tokio::test]
async fn moto_partial_failure_forwards_only_survivors() {
    let fake = proxy(21).await;
    let client = sqs(&fake.endpoint(), 1);
    let queue = unique("partial");
    let url = create_queue(&client, &queue).await;
    fake.set_rules(only(
        "SendMessageBatch",
        OpRules {
            partial_failure_rate: 0.5,
            sender_fault_share: 0.5,
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
    assert!(
        !out.successful().is_empty() && !out.failed().is_empty(),
        "{out:?}"
    );
    assert_eq!(out.successful().len() + out.failed().len(), 10);
    for f in out.failed() {
        assert_eq!(
            f.sender_fault(),
            f.code() == "InvalidParameterValue",
            "{f:?}"
        );
    }
    let expected: BTreeSet<String> = out
        .successful()
        .iter()
        .map(|ok| format!("body-{}", ok.id().trim_start_matches('e')))
        .collect();
    assert_eq!(drain_from_moto(&queue).await, expected);
    let accepted: BTreeSet<String> = fake.accepted().into_iter().map(|a| a.body).collect();
    assert_eq!(accepted, expected);
    fake.shutdown().await;
}

/// A lost response: moto has the message, the SDK call failed, and the acceptance is logged.
#[tokio::test]
async fn moto_lost_response_leaves_message_in_moto() {
    let fake = proxy(22).await;
    let client = sqs(&fake.endpoint(), 1);
    let queue = unique("lost");
    let url = create_queue(&client, &queue).await;
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
        .set_entries(Some(entries(1)))
        .send()
        .await
        .unwrap_err();
    assert!(matches!(err, SdkError::DispatchFailure(_)), "{err:?}");
    assert_eq!(
        drain_from_moto(&queue).await,
        BTreeSet::from(["body-0".to_owned()])
    );
    let acc = fake.accepted();
    assert_eq!(acc.len(), 1);
    assert!(acc[0].response_lost);
    assert_eq!(acc[0].queue_name, queue);
    fake.shutdown().await;
}

/// An injected throttle never reaches moto, and the SDK sees `RequestThrottled`.
#[tokio::test]
async fn moto_throttle_never_reaches_moto() {
    let fake = proxy(23).await;
    let client = sqs(&fake.endpoint(), 1);
    let queue = unique("throttle");
    let url = create_queue(&client, &queue).await;
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
    assert_eq!(err.code(), Some("RequestThrottled"));
    assert!(drain_from_moto(&queue).await.is_empty());
    assert!(fake.accepted().is_empty());
    fake.shutdown().await;
}

/// A real per-entry failure from moto passes through the proxy and parses in the SDK.
#[tokio::test]
async fn moto_own_failed_entries_parse_through_proxy() {
    let fake = proxy(24).await;
    let client = sqs(&fake.endpoint(), 1);
    let queue = unique("ownfail");
    let url = create_queue(&client, &queue).await;
    let bad = SendMessageBatchRequestEntry::builder()
        .id("bad")
        .message_body("late")
        .delay_seconds(1000)
        .build()
        .unwrap();
    let mut list = entries(1);
    list.push(bad);
    let out = client
        .send_message_batch()
        .queue_url(&url)
        .set_entries(Some(list))
        .send()
        .await
        .unwrap();
    let f = out.failed().iter().find(|f| f.id() == "bad").unwrap();
    assert!(f.sender_fault());
    assert_eq!(f.code(), "InvalidParameterValue");
    assert!(drain_from_moto(&queue).await.contains("body-0"));
    fake.shutdown().await;
}

/// A conditional claim through the proxy fails the second time with the old item from moto.
#[tokio::test]
async fn moto_conditional_put_returns_old_item_through_proxy() {
    let fake = proxy(25).await;
    let client = ddb(&fake.endpoint(), 1);
    let table = unique("dedup");
    create_table(&client, &table).await;
    let put = |owner: &'static str| {
        client
            .put_item()
            .table_name(&table)
            .item("pk", s("m1"))
            .item("owner", s(owner))
            .condition_expression("attribute_not_exists(pk)")
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
    };
    put("a").await.unwrap();
    let err = put("b").await.unwrap_err();
    let Some(PutItemError::ConditionalCheckFailedException(cf)) = err.as_service_error() else {
        panic!("expected ConditionalCheckFailed, got {err:?}");
    };
    assert_eq!(cf.item().unwrap()["owner"], s("a"));
    fake.shutdown().await;
}

/// Held-back `BatchWriteItem` requests come back as `UnprocessedItems`, and only the rest are
/// written to moto.
#[tokio::test]
async fn moto_batch_write_partial_failure_returns_unprocessed_items() {
    let fake = proxy(26).await;
    let client = ddb(&fake.endpoint(), 1);
    let table = unique("batch");
    create_table(&client, &table).await;
    fake.set_rules(only(
        "BatchWriteItem",
        OpRules {
            partial_failure_rate: 0.5,
            ..OpRules::default()
        },
    ))
    .unwrap();
    let requests: Vec<WriteRequest> = (0..20)
        .map(|i| {
            let put = PutRequest::builder()
                .item("pk", s(&i.to_string()))
                .build()
                .unwrap();
            WriteRequest::builder().put_request(put).build()
        })
        .collect();
    let out = client
        .batch_write_item()
        .request_items(&table, requests)
        .send()
        .await
        .unwrap();
    let unprocessed = out
        .unprocessed_items()
        .and_then(|u| u.get(&table))
        .map_or(0, Vec::len);
    let moto = ddb(&moto_endpoint(), 1);
    let scanned = moto.scan().table_name(&table).send().await.unwrap();
    let written = scanned.count() as usize;
    assert!(unprocessed > 0 && written > 0, "{unprocessed} {written}");
    assert_eq!(unprocessed + written, 20);
    fake.shutdown().await;
}
