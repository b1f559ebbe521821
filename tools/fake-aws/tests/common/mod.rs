//! Helpers the fake-aws memory-backend test files share: a fake-aws on the memory backend, SDK
//! clients pointed at it, and small builders for queues, tables, batches and items.

// Each test file compiles its own copy of this module and uses only part of it.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use aws_sdk_dynamodb::types::{AttributeValue, KeySchemaElement, KeyType, ScalarAttributeType};
use aws_sdk_sqs::types::SendMessageBatchRequestEntry;
use fake_aws::{FakeAws, FakeAwsConfig, OpRules, Rules};

pub const ANY_PORT: &str = "127.0.0.1:0";

pub fn any_port() -> SocketAddr {
    ANY_PORT.parse().unwrap()
}

pub async fn memory(seed: u64) -> FakeAws {
    FakeAws::start(any_port(), FakeAwsConfig::memory().with_seed(seed))
        .await
        .unwrap()
}

/// SDK retries: `attempts` tries with a 1 ms initial backoff (1 means no retry).
pub fn retries(attempts: u32) -> aws_sdk_sqs::config::retry::RetryConfig {
    aws_sdk_sqs::config::retry::RetryConfig::standard()
        .with_max_attempts(attempts)
        .with_initial_backoff(Duration::from_millis(1))
}

pub fn timeouts() -> aws_sdk_sqs::config::timeout::TimeoutConfig {
    aws_sdk_sqs::config::timeout::TimeoutConfig::builder()
        .operation_attempt_timeout(Duration::from_secs(5))
        .build()
}

pub fn sqs(endpoint: &str, attempts: u32) -> aws_sdk_sqs::Client {
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

pub fn ddb(endpoint: &str, attempts: u32) -> aws_sdk_dynamodb::Client {
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

pub fn entries(n: usize) -> Vec<SendMessageBatchRequestEntry> {
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

pub async fn create_queue(client: &aws_sdk_sqs::Client, name: &str) -> String {
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

pub fn only(op: &str, rules: OpRules) -> Rules {
    Rules::none().with(op, rules)
}

pub async fn dedup_table(client: &aws_sdk_dynamodb::Client, name: &str) {
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

pub fn s(v: &str) -> AttributeValue {
    AttributeValue::S(v.to_owned())
}

pub fn n(v: u64) -> AttributeValue {
    AttributeValue::N(v.to_string())
}
