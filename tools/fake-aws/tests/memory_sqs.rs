//! The fake AWS endpoint's memory backend as SQS, driven by the real AWS SDK for Rust clients:
//! batches and their MD5s, message attributes, injected partial failures, throttling, HTTP 500s,
//! lost responses, latency, refused characters, receive and delete.

mod common;

use std::time::{Duration, Instant};

use aws_sdk_sqs::error::ProvideErrorMetadata;
use aws_sdk_sqs::operation::send_message_batch::SendMessageBatchError;
use aws_sdk_sqs::types::{MessageAttributeValue, SendMessageBatchRequestEntry};
use aws_smithy_runtime_api::client::result::SdkError;
use fake_aws::OpRules;

use common::{create_queue, entries, memory, only, retries, sqs};

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
