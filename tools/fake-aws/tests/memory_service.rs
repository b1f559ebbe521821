//! The fake AWS endpoint's memory backend as a service, driven by the real AWS SDK for Rust
//! clients: its admin paths, shutdown, the `fake-aws` binary, and the timed fault episodes
//! (storms and stalls) across SQS and DynamoDB.

mod common;

use std::time::{Duration, Instant};

use aws_sdk_sqs::error::ProvideErrorMetadata;
use aws_smithy_runtime_api::client::result::SdkError;
use fake_aws::{FakeAws, Rules, Schedule, Stall, StallEffect, Storm, StormEffect};

use common::{create_queue, ddb, dedup_table, entries, memory, s, sqs, ANY_PORT};

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
