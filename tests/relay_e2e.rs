//! End to end: the relay built as the binaries build it, against the simulator (TMC) and moto
//! (SQS, DynamoDB), over their real wire protocols.

mod support;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use aws_sdk_dynamodb::types::AttributeValue;
use fake_aws::{FakeAws, FakeAwsConfig, OpRules, Rules};
use support::{sim, Env};
use tmc_relay::invocation::Overrides;
use tmc_relay::relay::{RelaySettings, StopReason};
use tmc_sim::{Faults, MethodFaults, NewMessage, SimServer};

fn message(i: u64) -> NewMessage {
    NewMessage {
        id: None,
        topic: "taobao_trade_TradeChanged".into(),
        // Large integers and non-ASCII text inside content must survive byte for byte.
        content: format!(
            r#"{{"tid":{},"oid":{},"seller_nick":"旗舰店{}","status":"WAIT_SELLER_SEND_GOODS","payment":"15.70"}}"#,
            9_007_199_254_740_993u64 + i,
            7_104_300_007_405_429_232u64 - i,
            i % 7
        ),
        user_id: 2_200_000_000_000_000_000 + (i % 5),
        user_nick: format!("店铺{}", i % 5),
        pub_time: None,
        pub_app_key: Some("12345678".into()),
    }
}

/// Confirms answer is_success=false: every message stays unconfirmed and will be redelivered.
fn refuse_confirms(sim: &SimServer) {
    sim.set_faults(Faults::none().with(
        "taobao.tmc.messages.confirm",
        MethodFaults {
            confirm_false_rate: 1.0,
            ..Default::default()
        },
    ));
}

fn run_opts(max_seconds: u64) -> Overrides {
    Overrides {
        max_seconds: Some(max_seconds),
        ..Overrides::default()
    }
}

async fn publish(sim: &SimServer, n: u64) -> (Vec<u64>, HashMap<String, String>) {
    let msgs: Vec<NewMessage> = (0..n).map(message).collect();
    let contents: Vec<String> = msgs.iter().map(|m| m.content.clone()).collect();
    let ids = sim.publish(None, msgs);
    let by_id = ids
        .iter()
        .zip(contents)
        .map(|(id, c)| (id.to_string(), c))
        .collect();
    (ids, by_id)
}

/// 3,000 messages are drained into moto in one pass with the default settings while a consumer
/// reads the queue, as SQS consumers do: every id reaches the queue exactly once with its exact
/// id and content, and is confirmed; nothing is deferred, timed out or of unknown outcome.
/// (The queue stays shallow as in production: moto's SQS, unlike SQS, slows with its depth,
/// which made a test that filled it measure moto and the machine. A slow AWS is
/// `tests/slow_aws.rs`'s, on fake-aws.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drains_three_thousand_messages_exactly_once_with_the_defaults() {
    const N: usize = 3000;
    let sim = sim(Duration::from_secs(300)).await;
    let env = Env::on(&support::moto_bulk(), false).await;
    let (ids, contents) = publish(&sim, N as u64).await;
    assert!(
        ids.iter().all(|&i| i > 1 << 53),
        "the simulator's ids exceed 2^53"
    );
    let app = env.app(&sim.gateway_url()).await;
    let consumer = env.consume_as_they_come(&env.queue_url, 4);
    let started = std::time::Instant::now();
    let report = app.run(&run_opts(900), None, Default::default()).await;
    eprintln!(
        "3,000 through moto with the defaults: {:?}; flow {:?}",
        started.elapsed(),
        report.flow
    );
    let got = consumer.finish().await;
    assert_eq!(report.stop_reason, StopReason::Empty, "{report:?}");
    let c = &report.counts;
    assert_eq!(
        (
            c.consumed,
            c.enqueued,
            c.confirmed,
            c.deferred,
            c.unknown_outcome
        ),
        (N as u64, N as u64, N as u64, 0, 0),
        "{report:?}"
    );
    assert_eq!(report.timeouts, 0, "{:?}", report.flow);
    assert!(
        report.usage.sqs_requests <= (N as u64) / 10 + 10,
        "one SQS request per 10 messages: {}",
        report.usage.sqs_requests
    );
    let state = sim.state();
    assert_eq!(
        (
            state.confirmed,
            state.pending,
            state.inflight,
            state.deliveries
        ),
        (N as u64, 0, 0, N as u64)
    );

    let mut seen = HashSet::new();
    for m in &got {
        let body = m.json();
        let id = body["id"].as_str().unwrap().to_owned();
        assert!(seen.insert(id.clone()), "id {id} enqueued twice");
        assert_eq!(
            body["content"].as_str().unwrap(),
            contents[&id],
            "content of {id}"
        );
        assert_eq!(m.attributes["tmc_id"], id);
        assert_eq!(m.attributes["topic"], "taobao_trade_TradeChanged");
        assert_eq!(body["user_id"].as_str().unwrap(), m.attributes["user_id"]);
        assert_eq!(body["biz_key"].as_str().unwrap(), m.attributes["biz_key"]);
        assert!(body["pub_time"].as_str().unwrap().ends_with("+08:00"));
        assert_eq!(body["group_name"], "default");
    }
    let expected: HashSet<String> = ids.iter().map(u64::to_string).collect();
    assert_eq!(seen, expected, "every id once, none other");
    assert_eq!(got.len(), N, "no copies");
    assert_eq!(
        env.status(&ids[0].to_string()).await.as_deref(),
        Some("done")
    );
}

/// A redelivered message that was already enqueued is confirmed without a second enqueue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redelivery_is_confirmed_without_second_enqueue() {
    let sim = sim(Duration::from_secs(60)).await;
    let env = Env::new(false).await;
    let (ids, _) = publish(&sim, 30).await;
    let app = env.app(&sim.gateway_url()).await;
    refuse_confirms(&sim);
    let first = app.run(&run_opts(30), None, Default::default()).await;
    assert_eq!(
        (
            first.counts.enqueued,
            first.counts.confirmed,
            first.counts.confirm_failed
        ),
        (30, 0, 30)
    );
    sim.set_faults(Faults::default());
    sim.advance(Duration::from_secs(61));
    let second = app.run(&run_opts(30), None, Default::default()).await;
    assert_eq!(
        (
            second.counts.consumed,
            second.counts.enqueued,
            second.counts.duplicates
        ),
        (30, 0, 30)
    );
    assert_eq!(second.counts.confirmed, 30);
    assert_eq!(env.drain(&env.queue_url).await.len(), ids.len());
    assert_eq!(sim.state().confirmed, 30);
}

/// Concurrent passes on one group, with a TMC lease shorter than a batch takes, never enqueue
/// a message twice; afterwards everything is confirmed.
async fn concurrent_passes(passes: usize) {
    let sim = sim(Duration::from_millis(300)).await;
    let env = Env::new(false).await;
    let (ids, _) = publish(&sim, 400).await;
    let mut apps = Vec::new();
    for _ in 0..passes {
        apps.push(env.app(&sim.gateway_url()).await);
    }
    let ov = Overrides {
        quantity: Some(50),
        max_seconds: Some(30),
        ..Overrides::default()
    };
    let reports =
        futures::future::join_all(apps.iter().map(|a| a.run(&ov, None, Default::default()))).await;
    assert!(
        reports.iter().all(|r| r.stop_reason != StopReason::Fatal),
        "{reports:?}"
    );
    // Finish what leases left behind, then check.
    for _ in 0..20 {
        let s = sim.state();
        if s.pending == 0 && s.inflight == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(400)).await;
        apps[0].run(&ov, None, Default::default()).await;
    }
    let got = env.drain(&env.queue_url).await;
    let mut seen = HashSet::new();
    for m in &got {
        assert!(seen.insert(m.id()), "id {} enqueued twice", m.id());
    }
    assert_eq!(seen, ids.iter().map(u64::to_string).collect::<HashSet<_>>());
    let s = sim.state();
    assert_eq!(
        (s.pending, s.inflight),
        (0, 0),
        "everything confirmed in the end"
    );
    assert!(
        s.deliveries > 400,
        "the short lease caused redeliveries ({})",
        s.deliveries
    );
    let held: u64 = reports.iter().map(|r| r.counts.held_elsewhere).sum();
    let dupes: u64 = reports.iter().map(|r| r.counts.duplicates).sum();
    assert!(
        held + dupes > 0,
        "the passes never met on one id, so the test proved nothing"
    );
}

/// Two concurrent passes never double-enqueue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_concurrent_passes_never_double_enqueue() {
    concurrent_passes(2).await;
}

/// Four concurrent passes never double-enqueue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_concurrent_passes_never_double_enqueue() {
    concurrent_passes(4).await;
}

/// Messages without a topic, or too large for SQS, are parked with their reason and confirmed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn defective_messages_are_parked_and_confirmed() {
    let sim = sim(Duration::from_secs(300)).await;
    let env = Env::new(false).await;
    let mut no_topic = message(1);
    no_topic.topic = String::new();
    let mut huge = message(2);
    huge.content = format!(r#"{{"blob":"{}"}}"#, "x".repeat(2 * 1024 * 1024));
    let ids = sim.publish(None, vec![no_topic, huge, message(3)]);
    let app = env.app(&sim.gateway_url()).await;
    let report = app.run(&run_opts(60), None, Default::default()).await;
    assert_eq!(
        (
            report.counts.parked,
            report.counts.enqueued,
            report.counts.confirmed
        ),
        (2, 1, 3),
        "{report:?}"
    );
    let parked = env.drain(&env.parking_url).await;
    let reasons: HashMap<String, String> = parked
        .iter()
        .map(|m| {
            (
                m.json()["id"].as_str().unwrap().to_owned(),
                m.json()["reason_code"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(reasons[&ids[0].to_string()], "missing_topic");
    assert_eq!(reasons[&ids[1].to_string()], "too_large");
    let big = parked
        .iter()
        .find(|m| m.json()["reason_code"] == "too_large")
        .unwrap()
        .json();
    assert_eq!(big["content_truncated"], true);
    assert!(big["content_bytes"].as_u64().unwrap() > 2 * 1024 * 1024);
    assert_eq!(env.drain(&env.queue_url).await.len(), 1);
    assert_eq!(sim.state().confirmed, 3);
    // The receipt lists what the parking queue accepted beside what the relay queue did.
    assert_eq!(
        env.status(&ids[0].to_string()).await.as_deref(),
        Some("done")
    );
}

/// A FIFO relay queue groups by business key by default: MessageGroupId = the `biz_key`
/// attribute = `trade_<tid>` with every digit of a tid above 2^53, and MessageDeduplicationId
/// = the message id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifo_queue_groups_by_business_key_and_dedups_by_id() {
    let sim = sim(Duration::from_secs(300)).await;
    let env = Env::new(true).await;
    let ids = sim.publish(None, (0..12).map(message).collect());
    let app = env.app(&sim.gateway_url()).await;
    let report = app.run(&run_opts(30), None, Default::default()).await;
    assert_eq!(report.counts.enqueued, 12, "{report:?}");
    let got = env.drain(&env.queue_url).await;
    assert_eq!(got.len(), 12);
    let mut keys = HashSet::new();
    for m in &got {
        let body = m.json();
        let i = ids.iter().position(|x| x.to_string() == m.id()).unwrap() as u64;
        let key = format!("trade_{}", 9_007_199_254_740_993u64 + i);
        assert_eq!(m.attributes["biz_key"], key);
        assert_eq!(body["biz_key"], key.as_str());
        assert_eq!(m.system["MessageGroupId"], key);
        assert_eq!(
            m.system["MessageDeduplicationId"],
            body["id"].as_str().unwrap()
        );
        keys.insert(key);
    }
    assert_eq!(keys.len(), 12, "one group per order");
}

/// `FIFO_GROUP_BY=user_id` still groups a FIFO relay queue by seller.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifo_queue_can_group_by_user_id() {
    let sim = sim(Duration::from_secs(300)).await;
    let env = Env::new(true).await;
    sim.publish(None, (0..6).map(message).collect());
    let app = env
        .app_via(
            &sim.gateway_url(),
            &support::moto(),
            &[("FIFO_GROUP_BY", "user_id")],
            RelaySettings::default(),
        )
        .await;
    let report = app.run(&run_opts(30), None, Default::default()).await;
    assert_eq!(report.counts.enqueued, 6, "{report:?}");
    for m in env.drain(&env.queue_url).await {
        assert_eq!(
            m.system["MessageGroupId"],
            m.json()["user_id"].as_str().unwrap()
        );
    }
}

/// A wrong app secret stops the pass as fatal, names the setting, and touches nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_secret_is_fatal_and_names_the_setting() {
    let sim = sim(Duration::from_secs(300)).await;
    let env = Env::new(false).await;
    sim.publish(None, vec![message(1)]);
    let app = env
        .app_via(
            &sim.gateway_url(),
            &support::moto(),
            &[("TOP_APP_SECRET", "not-the-secret")],
            RelaySettings::default(),
        )
        .await;
    let report = app.run(&run_opts(10), None, Default::default()).await;
    assert_eq!(report.stop_reason, StopReason::Fatal);
    let err = report.error.unwrap();
    assert!(
        err.contains("TOP_APP_SECRET") && err.contains("25"),
        "{err}"
    );
    assert!(!err.contains("not-the-secret"));
    assert_eq!(sim.state().pending, 1);
}

/// A relay queue that does not exist is fatal: nothing is confirmed, the messages stay with TMC.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_queue_is_fatal_and_confirms_nothing() {
    let sim = sim(Duration::from_secs(300)).await;
    let env = Env::new(false).await;
    sim.publish(None, (0..5).map(message).collect());
    let missing = format!("{}/000000000000/no-such-queue", support::moto());
    let app = env
        .app_via(
            &sim.gateway_url(),
            &support::moto(),
            &[("RELAY_QUEUE_URL", &missing)],
            RelaySettings::default(),
        )
        .await;
    let report = app.run(&run_opts(20), None, Default::default()).await;
    assert_eq!(report.stop_reason, StopReason::Fatal, "{report:?}");
    assert!(report.error.unwrap().contains("RELAY_QUEUE_URL"));
    assert_eq!(report.counts.confirmed, 0);
    assert_eq!(sim.state().confirmed, 0);
}

/// A dedup table that does not exist is fatal: nothing is enqueued or confirmed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_table_is_fatal_and_enqueues_nothing() {
    let sim = sim(Duration::from_secs(300)).await;
    let env = Env::new(false).await;
    sim.publish(None, (0..5).map(message).collect());
    let app = env
        .app_via(
            &sim.gateway_url(),
            &support::moto(),
            &[("DEDUP_TABLE_NAME", "no-such-table")],
            RelaySettings::default(),
        )
        .await;
    let report = app.run(&run_opts(20), None, Default::default()).await;
    assert_eq!(report.stop_reason, StopReason::Fatal, "{report:?}");
    assert!(report.error.unwrap().contains("DEDUP_TABLE_NAME"));
    assert!(env.drain(&env.queue_url).await.is_empty());
    assert_eq!(sim.state().confirmed, 0);
}

/// Several groups are drained in one pass and reported separately.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_groups_in_one_pass() {
    let sim = sim(Duration::from_secs(300)).await;
    let env = Env::new(false).await;
    sim.create_group("vip");
    sim.publish(None, (0..15).map(message).collect());
    sim.publish(Some("vip"), (100..125).map(message).collect());
    let app = env.app(&sim.gateway_url()).await;
    let ov = Overrides {
        group_names: Some(vec!["default".into(), "vip".into()]),
        max_seconds: Some(30),
        ..Overrides::default()
    };
    let report = app.run(&ov, None, Default::default()).await;
    assert_eq!(report.counts.enqueued, 40, "{report:?}");
    let by_group: HashMap<_, _> = report
        .groups
        .iter()
        .map(|g| (g.group.clone(), g.counts.enqueued))
        .collect();
    assert_eq!((by_group["default"], by_group["vip"]), (15, 25));
    let got = env.drain(&env.queue_url).await;
    assert_eq!(
        got.iter()
            .filter(|m| m.json()["group_name"] == "vip")
            .count(),
        25
    );
}

/// SQS failing every entry with SenderFault=false (through the fault proxy in front of moto):
/// the messages are deferred, their claims released and nothing confirmed; once SQS recovers,
/// TMC's redelivery is relayed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_sqs_defers_then_redelivery_is_relayed() {
    let sim = sim(Duration::from_secs(60)).await;
    let env = Env::new(false).await;
    let upstream = url::Url::parse(&support::moto()).unwrap();
    let proxy = FakeAws::start(
        "127.0.0.1:0".parse().unwrap(),
        FakeAwsConfig::moto(upstream).with_rules(Rules::none().with(
            "SendMessageBatch",
            OpRules {
                partial_failure_rate: 1.0,
                sender_fault_share: 0.0,
                ..OpRules::default()
            },
        )),
    )
    .await
    .unwrap();
    let (ids, _) = publish(&sim, 25).await;
    let app = env
        .app_via(
            &sim.gateway_url(),
            &proxy.endpoint(),
            &[],
            RelaySettings::default(),
        )
        .await;
    let first = app.run(&run_opts(30), None, Default::default()).await;
    assert_eq!(
        (
            first.counts.consumed,
            first.counts.enqueued,
            first.counts.deferred,
            first.counts.confirmed
        ),
        (25, 0, 25, 0),
        "{first:?}"
    );
    assert_ne!(first.stop_reason, StopReason::Fatal);
    assert_eq!(sim.state().confirmed, 0);
    assert!(env.drain(&env.queue_url).await.is_empty());
    for id in &ids {
        assert_eq!(
            env.status(&id.to_string()).await.as_deref(),
            Some("free"),
            "the receipt leaves {id} to its redelivery"
        );
    }

    proxy.set_rules(Rules::none()).unwrap();
    sim.advance(Duration::from_secs(61));
    let second = app.run(&run_opts(30), None, Default::default()).await;
    assert_eq!(
        (
            second.counts.enqueued,
            second.counts.confirmed,
            second.counts.taken_over
        ),
        (25, 25, 25),
        "{second:?}"
    );
    assert_eq!(env.drain(&env.queue_url).await.len(), 25);
    assert_eq!(sim.state().confirmed, 25);
}

/// A done record past its expiry that DynamoDB's TTL has not deleted yet counts as absent on
/// the real table: the redelivery is enqueued again instead of being confirmed as a duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_dedup_record_counts_as_absent_on_dynamodb() {
    let sim = sim(Duration::from_secs(60)).await;
    let env = Env::new(false).await;
    let (ids, _) = publish(&sim, 3).await;
    let app = env.app(&sim.gateway_url()).await;
    refuse_confirms(&sim);
    let first = app.run(&run_opts(30), None, Default::default()).await;
    assert_eq!(first.counts.enqueued, 3, "{first:?}");
    // Age one record past its expiry; the others stay live.
    let aged = ids[0].to_string();
    env.ddb
        .update_item()
        .table_name(&env.table)
        .key("pk", AttributeValue::S(aged.clone()))
        .update_expression("SET expires_at = :past")
        .expression_attribute_values(":past", AttributeValue::N("1000".into()))
        .send()
        .await
        .unwrap();
    sim.set_faults(Faults::none());
    sim.advance(Duration::from_secs(61));
    let second = app.run(&run_opts(30), None, Default::default()).await;
    assert_eq!(
        (
            second.counts.enqueued,
            second.counts.duplicates,
            second.counts.confirmed
        ),
        (1, 2, 3),
        "{second:?}"
    );
    let got = env.drain(&env.queue_url).await;
    assert_eq!(got.iter().filter(|m| m.id() == aged).count(), 2);
    assert_eq!(got.len(), 4);
}

/// Three consume loops on one group (the `concurrency` override) drain it exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_loops_in_one_pass_drain_exactly_once() {
    let sim = sim(Duration::from_secs(300)).await;
    let env = Env::new(false).await;
    let (ids, _) = publish(&sim, 300).await;
    let app = env.app(&sim.gateway_url()).await;
    let ov = Overrides {
        quantity: Some(20),
        concurrency: Some(3),
        max_seconds: Some(60),
        ..Overrides::default()
    };
    let report = app.run(&ov, None, Default::default()).await;
    assert_eq!(report.stop_reason, StopReason::Empty, "{report:?}");
    assert_eq!(
        (report.counts.enqueued, report.counts.confirmed),
        (300, 300)
    );
    let got = env.drain(&env.queue_url).await;
    let seen: HashSet<String> = got.iter().map(|m| m.id()).collect();
    assert_eq!(got.len(), seen.len(), "an id was enqueued twice");
    assert_eq!(seen, ids.iter().map(u64::to_string).collect::<HashSet<_>>());
}

/// Each group reports its own elapsed time: an empty group finishes long before a busy one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_group_reports_its_own_elapsed_time() {
    let sim = sim(Duration::from_secs(300)).await;
    let env = Env::new(false).await;
    sim.create_group("quiet");
    sim.publish(None, (0..200).map(message).collect());
    let app = env.app(&sim.gateway_url()).await;
    let ov = Overrides {
        group_names: Some(vec!["default".into(), "quiet".into()]),
        quantity: Some(10),
        max_seconds: Some(60),
        ..Overrides::default()
    };
    let report = app.run(&ov, None, Default::default()).await;
    assert_eq!(report.counts.enqueued, 200, "{report:?}");
    let elapsed: HashMap<_, _> = report
        .groups
        .iter()
        .map(|g| (g.group.as_str(), g.elapsed_ms))
        .collect();
    assert!(
        elapsed["quiet"] * 2 < elapsed["default"],
        "{elapsed:?} (pass {} ms)",
        report.elapsed_ms
    );
    assert!(elapsed["default"] <= report.elapsed_ms);
}
