//! `tmc-relay parked` end to end: the binary against moto's SQS (and the fault proxy in front
//! of it), on parking records the relay itself wrote.

mod support;

use std::collections::{HashMap, HashSet};
use std::process::Output;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::time::Instant;

use fake_aws::{FakeAws, FakeAwsConfig, OpRules, Rules};
use support::{moto, sim, Env, SECRET};
use tmc_relay::aws::sqs::SqsQueue;
use tmc_relay::invocation::Overrides;
use tmc_relay::parked::sqs::SqsParking;
use tmc_relay::parked::ParkingQueue;
use tmc_relay::relay::body::{pack, parking_entry, relay_entry, Defect, FifoGroupBy};
use tmc_relay::relay::ports::Queue;
use tmc_relay::top::TmcMessage;
use tmc_sim::NewMessage;

/// A trade message as TMC sends it: ids above 2^53 as bare JSON numbers.
fn trade(id: u64) -> Value {
    json!({"id": id, "topic": "taobao_trade_TradeBuyerPay",
           "content": format!(r#"{{"tid":{},"oid":{},"seller_nick":"旗舰店","payment":"15.70"}}"#, id + 7, id + 7),
           "pub_time": "2026-11-21 23:59:00", "pub_app_key": "12499723",
           "user_id": 2200000000000000001u64, "user_nick": "店铺"})
}

const FIRST: u64 = 7_104_300_007_405_429_232;

/// Parks `raw` messages as `sqs_rejected`, writing exactly what the relay writes.
async fn park_rejected(env: &Env, raws: Vec<Value>) {
    let parking = SqsQueue::new(env.sqs.clone(), &env.parking_url);
    let defect = Defect {
        code: "sqs_rejected",
        reason: "InvalidMessageContents: the message contains characters outside the allowed set"
            .into(),
    };
    let entries = raws
        .into_iter()
        .enumerate()
        .map(|(i, raw)| {
            let m = TmcMessage::from_value(raw);
            parking_entry(
                &m,
                "default",
                &defect,
                "2026-11-22T00:00:00Z",
                1 << 20,
                &format!("e{i}"),
            )
        })
        .collect();
    for batch in pack(entries) {
        let outcomes = parking
            .send_batch(&batch, Instant::now() + Duration::from_secs(30))
            .await
            .unwrap();
        assert!(outcomes
            .iter()
            .all(|o| *o == tmc_relay::relay::ports::EntryOutcome::Accepted));
    }
}

/// The variables an operator sets: the queues and AWS, and no TOP credentials except a secret
/// that must never show.
fn vars(env: &Env, endpoint: &str) -> HashMap<String, String> {
    HashMap::from([
        ("PARKING_QUEUE_URL".into(), env.parking_url.clone()),
        ("RELAY_QUEUE_URL".into(), env.queue_url.clone()),
        ("AWS_ENDPOINT_URL".into(), endpoint.to_owned()),
        ("AWS_ACCESS_KEY_ID".into(), "test".into()),
        ("AWS_SECRET_ACCESS_KEY".into(), "test".into()),
        ("AWS_REGION".into(), "us-east-1".into()),
        ("AWS_EC2_METADATA_DISABLED".into(), "true".into()),
        ("TOP_APP_SECRET".into(), SECRET.into()),
    ])
}

/// Runs `tmc-relay` with exactly `vars` (and PATH).
async fn cli(vars: &HashMap<String, String>, args: &[&str]) -> Output {
    let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_tmc-relay"))
        .env_clear()
        .envs(vars)
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .args(args)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("tmc-relay exited within 120 s")
        .unwrap();
    for text in [&out.stdout, &out.stderr] {
        let text = String::from_utf8_lossy(text);
        assert!(!text.contains(SECRET), "the app secret was printed: {text}");
        // The progress line is for terminals only.
        assert!(!text.contains('\r'), "a progress line on a pipe: {text:?}");
    }
    out
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn json_of(out: &Output) -> Value {
    serde_json::from_str(&stdout(out))
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", stdout(out)))
}

/// What the relay would have sent for `raw`, to the queue `env` made.
fn relayed_body(raw: Value, fifo: Option<FifoGroupBy>) -> String {
    relay_entry(&TmcMessage::from_value(raw), "default", fifo, 1 << 20)
        .unwrap()
        .body
}

/// Parked by a real relay pass (no topic; content too large) plus two SQS rejections: `list`
/// shows them without TOP credentials; `redrive` relays the two exactly as the relay builds
/// them, attributes included, deletes them, and keeps the other two parked saying why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redrive_relays_what_can_be_relayed_and_keeps_the_rest_parked() {
    let sim = sim(Duration::from_secs(300)).await;
    let env = Env::new(false).await;
    let message = |topic: &str, content: String| NewMessage {
        id: None,
        topic: topic.into(),
        content,
        user_id: 42,
        user_nick: "shop".into(),
        pub_time: None,
        pub_app_key: None,
    };
    let ids = sim.publish(
        None,
        vec![
            message("", r#"{"tid":1}"#.into()),
            message(
                "taobao_trade_TradeCreate",
                format!(r#"{{"blob":"{}"}}"#, "x".repeat(2 * 1024 * 1024)),
            ),
        ],
    );
    let app = env.app(&sim.gateway_url()).await;
    let ov = Overrides {
        max_seconds: Some(60),
        ..Overrides::default()
    };
    assert_eq!(
        app.run(&ov, None, Default::default()).await.counts.parked,
        2
    );
    park_rejected(&env, vec![trade(FIRST), trade(FIRST + 1)]).await;

    let mut v = vars(&env, &moto());
    v.remove("RELAY_QUEUE_URL");
    let list = cli(&v, &["parked", "list", "--json"]).await;
    assert!(list.status.success(), "{}", stderr(&list));
    let listed = json_of(&list);
    let mut seen: Vec<(String, String)> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["reason_code"].as_str().unwrap().to_owned(),
                l["id"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        vec![
            ("missing_topic".into(), ids[0].to_string()),
            ("sqs_rejected".into(), FIRST.to_string()),
            ("sqs_rejected".into(), (FIRST + 1).to_string()),
            ("too_large".into(), ids[1].to_string()),
        ]
    );
    let table = stdout(&cli(&v, &["parked", "list"]).await);
    assert!(table.starts_with("REASON"), "{table}");
    assert!(table.contains("4 parked: sqs_rejected 2"), "{table}");

    let dry = cli(
        &vars(&env, &moto()),
        &["--json", "parked", "redrive", "--dry-run"],
    )
    .await;
    assert_eq!(
        json_of(&dry)["outcomes"],
        json!({"would_redrive": 2, "kept": 2})
    );
    assert!(
        env.drain(&env.queue_url).await.is_empty(),
        "a dry run sends nothing"
    );

    let out = cli(&vars(&env, &moto()), &["parked", "redrive"]).await;
    assert_eq!(
        out.status.code(),
        Some(1),
        "two stayed parked: {}",
        stderr(&out)
    );
    let text = stdout(&out);
    assert!(
        text.contains("redrive: scanned 4, selected 4: kept 2, redriven 2"),
        "{text}"
    );
    assert!(
        text.lines().any(|l| l.starts_with("kept ")
            && l.contains(&ids[0].to_string())
            && l.contains("missing_topic: message has no topic")),
        "{text}"
    );
    assert!(text.contains("content_truncated"), "{text}");

    let mut got = env.drain(&env.queue_url).await;
    got.sort_by_key(|m| m.id());
    assert_eq!(got.len(), 2);
    for (m, id) in got.iter().zip([FIRST, FIRST + 1]) {
        assert_eq!(m.body, relayed_body(trade(id), None));
        assert_eq!(m.attributes["tmc_id"], id.to_string());
        assert_eq!(m.attributes["biz_key"], format!("trade_{}", id + 7));
        assert_eq!(m.attributes["topic"], "taobao_trade_TradeBuyerPay");
        assert_eq!(m.attributes["user_id"], "2200000000000000001");
    }
    let left: HashSet<String> = env
        .drain(&env.parking_url)
        .await
        .iter()
        .map(|m| m.json()["reason_code"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        left,
        HashSet::from(["missing_topic".to_owned(), "too_large".to_owned()])
    );
}

/// Two redrives at once relay every parked message exactly once: what one run holds, the
/// other does not see.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_redrives_relay_each_message_once() {
    let env = Env::new(false).await;
    park_rejected(&env, (0..40).map(|i| trade(FIRST + i * 10)).collect()).await;
    let v = vars(&env, &moto());
    let (a, b) = tokio::join!(
        cli(&v, &["--json", "parked", "redrive"]),
        cli(&v, &["--json", "parked", "redrive"])
    );
    assert!(
        a.status.success() && b.status.success(),
        "{} / {}",
        stderr(&a),
        stderr(&b)
    );
    let count = |o: &Output| json_of(o)["outcomes"]["redriven"].as_u64().unwrap_or(0);
    assert_eq!(count(&a) + count(&b), 40);
    let got = env.drain(&env.queue_url).await;
    let unique: HashSet<String> = got.iter().map(|m| m.id()).collect();
    assert_eq!(got.len(), 40, "every message relayed once, none twice");
    assert_eq!(unique.len(), 40);
    assert!(env.drain(&env.parking_url).await.is_empty());
}

/// A delete that fails after the send leaves the message both relayed and parked, and the
/// command says so; on a FIFO relay queue the rerun's copy has the same
/// MessageDeduplicationId, so SQS drops it within 5 minutes and consumers see one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_delete_is_reported_and_a_fifo_rerun_is_deduplicated() {
    let env = Env::new(true).await;
    park_rejected(&env, vec![trade(FIRST)]).await;
    let upstream = url::Url::parse(&moto()).unwrap();
    let proxy = FakeAws::start(
        "127.0.0.1:0".parse().unwrap(),
        FakeAwsConfig::moto(upstream).with_rules(Rules::none().with(
            "DeleteMessageBatch",
            OpRules {
                error500_rate: 1.0,
                ..OpRules::default()
            },
        )),
    )
    .await
    .unwrap();
    let out = cli(
        &vars(&env, &proxy.endpoint()),
        &["--json", "parked", "redrive"],
    )
    .await;
    assert_eq!(out.status.code(), Some(1));
    let report = json_of(&out);
    assert_eq!(report["outcomes"], json!({"sent_not_deleted": 1}));
    assert!(report["messages"][0]["detail"]
        .as_str()
        .unwrap()
        .contains("a later redrive sends it again"));

    let again = cli(&vars(&env, &moto()), &["--json", "parked", "redrive"]).await;
    assert!(again.status.success(), "{}", stderr(&again));
    assert_eq!(json_of(&again)["outcomes"], json!({"redriven": 1}));
    let got = env.drain(&env.queue_url).await;
    assert_eq!(got.len(), 1, "SQS dropped the second copy");
    assert_eq!(
        got[0].body,
        relayed_body(trade(FIRST), Some(FifoGroupBy::BizKey))
    );
    assert_eq!(
        got[0].system["MessageGroupId"],
        format!("trade_{}", FIRST + 7)
    );
    assert_eq!(got[0].system["MessageDeduplicationId"], FIRST.to_string());
    assert!(env.drain(&env.parking_url).await.is_empty());
}

/// `show` prints a record in full by TMC id, exact digits; an unknown id exits 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn show_prints_a_record_by_id() {
    let env = Env::new(false).await;
    park_rejected(&env, vec![trade(FIRST)]).await;
    let mut v = vars(&env, &moto());
    v.remove("RELAY_QUEUE_URL");
    let out = cli(&v, &["--json", "parked", "show", &FIRST.to_string()]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let shown = json_of(&out);
    assert_eq!(shown[0]["record"]["original"]["id"].as_u64(), Some(FIRST));
    assert_eq!(shown[0]["record"]["reason_code"], "sqs_rejected");
    let text = stdout(&cli(&v, &["parked", "show", &FIRST.to_string()]).await);
    assert!(text.contains(&format!("\"id\": {FIRST}")), "{text}");
    let missing = cli(&v, &["parked", "show", "42"]).await;
    assert_eq!(missing.status.code(), Some(1));
    assert!(stderr(&missing).contains("\"42\""), "{}", stderr(&missing));
    assert_eq!(
        env.drain(&env.parking_url).await.len(),
        1,
        "show deletes nothing"
    );
}

/// Purge refuses without its confirmation flag or a selection, deleting nothing; with them it
/// deletes exactly the selection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_needs_confirmation_and_deletes_only_the_selection() {
    let env = Env::new(false).await;
    park_rejected(&env, vec![trade(FIRST), trade(FIRST + 1)]).await;
    let mut v = vars(&env, &moto());
    v.remove("RELAY_QUEUE_URL");
    let id = FIRST.to_string();
    for (args, says) in [
        (vec!["parked", "purge", "--id", &id], "--confirm"),
        (vec!["parked", "purge", "--confirm"], "--all"),
        (
            vec!["parked", "purge", "--reason", "too_big", "--confirm"],
            "too_big",
        ),
    ] {
        let out = cli(&v, &args).await;
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(stderr(&out).contains(says), "{args:?}: {}", stderr(&out));
    }
    let out = cli(&v, &["--json", "parked", "purge", "--id", &id, "--confirm"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(json_of(&out)["outcomes"], json!({"purged": 1}));
    let left = env.drain(&env.parking_url).await;
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].json()["id"], (FIRST + 1).to_string());
}

/// Each command asks only for the settings it uses, and names a missing or unsafe one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_are_named_when_missing_or_unsafe() {
    let env = Env::new(false).await;
    let mut v = vars(&env, &moto());
    v.remove("RELAY_QUEUE_URL");
    let out = cli(&v, &["parked", "redrive"]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("RELAY_QUEUE_URL"), "{}", stderr(&out));
    let empty = cli(&v, &["parked", "list"]).await;
    assert!(empty.status.success(), "{}", stderr(&empty));
    assert_eq!(stdout(&empty), "no parked messages\n");
    v.remove("PARKING_QUEUE_URL");
    let out = cli(&v, &["parked", "list"]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("PARKING_QUEUE_URL"),
        "{}",
        stderr(&out)
    );
    let mut v = vars(&env, "http://10.255.255.1:4566");
    v.remove("RELAY_QUEUE_URL");
    let out = cli(&v, &["parked", "list"]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("AWS_ENDPOINT_URL"),
        "{}",
        stderr(&out)
    );
}

/// The SQS adapter extends the holds of what it received, one answer per receipt across
/// batches of 10, naming a receipt SQS refused; an extended message stays hidden until
/// released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sqs_adapter_extends_holds_and_names_a_refused_receipt() {
    let env = Env::new(false).await;
    park_rejected(&env, (0..12).map(|i| trade(FIRST + i)).collect()).await;
    let parking = SqsParking::new(env.sqs.clone(), &env.parking_url);
    let hold = Duration::from_secs(60);
    let mut receipts = Vec::new();
    for _ in 0..20 {
        if receipts.len() == 12 {
            break;
        }
        let got = parking.receive(10, hold).await.unwrap();
        receipts.extend(got.into_iter().map(|h| h.receipt));
    }
    assert_eq!(receipts.len(), 12);
    receipts.insert(5, "not-a-receipt".to_owned());
    let answers = parking.extend(&receipts, hold).await.unwrap();
    assert_eq!(answers.len(), 13);
    for (i, a) in answers.iter().enumerate() {
        match (i, a) {
            (5, Some(why)) => assert!(why.starts_with("ReceiptHandleIsInvalid"), "{why}"),
            (5, None) => panic!("a bogus receipt was extended"),
            (_, a) => assert_eq!(*a, None, "receipt {i}"),
        }
    }
    assert!(parking.receive(10, hold).await.unwrap().is_empty());
    receipts.remove(5);
    parking.release(&receipts).await;
    assert_eq!(env.drain(&env.parking_url).await.len(), 12);
}
