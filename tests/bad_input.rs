//! Bad input, end to end on the simulator and moto: whatever TMC, an operator or a payload sends,
//! the relay never panics, never confirms what it did not secure in SQS, and says what was
//! wrong (in the report, the parking record or the log).
//!
//! Cases already covered elsewhere, not repeated here: duplicate ids in one batch
//! (`relay::tests::duplicate_ids_in_a_batch`), 2 MiB content parked as `too_large`
//! (`relay_e2e::defective_messages_are_parked_and_confirmed`), confirm answering
//! `is_success=false` (`relay_e2e::redelivery_is_confirmed_without_second_enqueue`), envelope
//! shapes of error responses (`top::envelope::tests::error_responses`), invocation payloads
//! (`invocation::tests::bad_payloads_are_refused`, `lambda`, `cli::bad_options_consume_nothing`)
//! and configuration values (`config::tests`, `cli::bad_configuration_names_the_variable`).

mod support;

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use url::Url;

use support::{sim, Env, Received, APP_KEY, SECRET};
use tmc_relay::relay::body::sqs_allowed;
use tmc_relay::relay::{Mode, PassOptions, Relay, RelaySettings, Report, Stop, StopReason};
use tmc_relay::top::api::{CONFIRM, CONSUME};
use tmc_relay::top::{RetryPolicy, Secret, TopClient, TopConfig, TopError};
use tmc_relay::wiring::AwsRelay;
use tmc_sim::{NewMessage, Scripted, SimServer};

// ---------------------------------------------------------------------------------------------
// Support: captured logs, a relay with a hand-built TOP client, reading queues back.

/// Every log line of this process (nextest runs each test in its own process).
fn logs() -> &'static Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&buf);
        let _ = tracing_subscriber::fmt()
            .with_env_filter("info,tmc_relay=debug")
            .with_ansi(false)
            .with_writer(move || LogWriter(Arc::clone(&sink)))
            .try_init();
        buf
    })
}

struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl Write for LogWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn log_text() -> String {
    String::from_utf8_lossy(&logs().lock().unwrap()).into_owned()
}

/// A simulator, fresh AWS resources, and a relay whose TOP client the test shapes.
struct Rig {
    sim: SimServer,
    env: Env,
    relay: Arc<AwsRelay>,
}

fn top_config(gateway: &str) -> TopConfig {
    let mut cfg = TopConfig::new(Url::parse(gateway).unwrap(), APP_KEY, Secret::new(SECRET));
    cfg.retry = RetryPolicy {
        max_attempts: ATTEMPTS,
        base: Duration::from_millis(1),
        cap: Duration::from_millis(5),
    };
    cfg
}

/// TOP attempts per call in these tests: a bad body is scripted this many times to outlast them.
const ATTEMPTS: u32 = 2;

impl Rig {
    async fn new() -> Rig {
        Self::with_client(|cfg| TopClient::new(cfg).unwrap(), Duration::from_secs(300)).await
    }

    /// `client` builds the TOP client from the test's configuration; `lease` is the simulator's.
    async fn with_client(client: impl FnOnce(TopConfig) -> TopClient, lease: Duration) -> Rig {
        logs();
        let sim = sim(lease).await;
        let env = Env::new(false).await;
        let app = env.app(&sim.gateway_url()).await;
        let relay = Arc::new(Relay::new(
            client(top_config(&sim.gateway_url())),
            app.relay.queue.clone(),
            app.relay.parking.clone(),
            app.relay.store.clone(),
            // One batch at a time: a scripted consume is processed and confirmed before the
            // next consume reaches the simulator's real queue.
            RelaySettings {
                pipeline_depth: 0,
                ..RelaySettings::default()
            },
        ));
        Rig { sim, env, relay }
    }

    async fn run(&self) -> Report {
        self.relay
            .run(PassOptions {
                stop: Stop::never(),
                groups: vec![String::new()],
                quantity: 100,
                mode: Mode::Drain,
                concurrency: 1,
                max_batches: None,
                max_messages: None,
                deadline: Instant::now() + Duration::from_secs(30),
                empty_backoff: Duration::from_millis(100),
                receipt_deadline: None,
            })
            .await
    }

    async fn relayed(&self) -> Vec<Received> {
        self.env.drain(&self.env.queue_url).await
    }

    async fn parked(&self) -> Vec<Received> {
        self.env.drain(&self.env.parking_url).await
    }

    /// Publishes one ordinary message and returns its id.
    fn publish_one(&self, content: &str) -> u64 {
        self.sim
            .publish(None, vec![NewMessage::new(TOPIC, content)])
            .remove(0)
    }

    /// Ids the simulator has seen confirmed.
    fn confirmed_ids(&self) -> HashSet<String> {
        self.sim
            .state()
            .messages
            .into_iter()
            .filter(|(_, m)| m.confirmed_at_ms.is_some())
            .map(|(id, _)| id)
            .collect()
    }
}

const TOPIC: &str = "taobao_trade_TradeChanged";

/// A well-formed simplified `tmc_message` for `id`.
fn good(id: u64) -> String {
    format!(
        r#"{{"id":{id},"topic":"{TOPIC}","content":"{{\"tid\":{id}}}","pub_time":"2026-01-01 12:00:00","user_id":42,"user_nick":"shop"}}"#
    )
}

fn consume_body(items: &[String]) -> String {
    format!(r#"{{"messages":[{}],"request_id":"r"}}"#, items.join(","))
}

fn ids(got: &[Received]) -> Vec<String> {
    got.iter().map(Received::id).collect()
}

fn assert_sqs_legal(m: &Received) {
    assert!(
        m.body.chars().all(sqs_allowed),
        "a character SQS refuses in {:?}",
        m.body
    );
    for (k, v) in &m.attributes {
        assert!(v.chars().all(sqs_allowed), "attribute {k}: {v:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// Consume bodies that cannot be read.

/// `bad` is served for every attempt of one consume call; the messages queued behind it are
/// then relayed normally, nothing is confirmed from the bad body, and the log names the defect.
async fn unreadable_consume_body(bad: Scripted, needles: &[&str]) {
    let rig = Rig::new().await;
    let id = rig.publish_one(r#"{"tid":1}"#);
    rig.sim.script(CONSUME, vec![bad; ATTEMPTS as usize]);
    let report = rig.run().await;
    assert_eq!(report.stop_reason, StopReason::Empty, "{report:?}");
    assert_eq!(
        (
            report.counts.consumed,
            report.counts.enqueued,
            report.counts.confirmed,
            report.counts.invalid
        ),
        (1, 1, 1, 0),
        "{report:?}"
    );
    let got = rig.relayed().await;
    assert_eq!(ids(&got), vec![id.to_string()]);
    assert_eq!(got[0].json()["content"], r#"{"tid":1}"#);
    let state = rig.sim.state();
    assert_eq!((state.confirmed, state.unknown_confirms), (1, 0));
    assert_eq!(state.consume_calls, u64::from(ATTEMPTS) + 2);
    // Under plain `cargo test` other tests share the log: look for a line with every needle.
    let logs = log_text();
    assert!(
        logs.lines()
            .any(|l| l.contains("consume failed after retries")
                && needles.iter().all(|n| l.contains(n))),
        "no warning with {needles:?} in the log: {logs}"
    );
}

/// An HTML page served with status 200 (a proxy's login page) is logged with its first bytes and
/// confirms nothing; the queue behind it is relayed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn html_consume_body_confirms_nothing_and_is_logged() {
    let html = Scripted {
        content_type: Some("text/html".into()),
        ..Scripted::json("<html><body>Please log in</body></html>")
    };
    unreadable_consume_body(html, &["undecodable response", "<html><body>Please log in"]).await;
}

/// An empty consume body confirms nothing and is logged as not JSON.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_consume_body_confirms_nothing_and_is_logged() {
    unreadable_consume_body(Scripted::json(""), &["undecodable response", "not JSON"]).await;
}

/// A truncated body, cut inside a message whose id is readable, confirms nothing: that message
/// is relayed whole from the next consume.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_consume_body_confirms_nothing_and_is_logged() {
    let cut = r#"{"messages":[{"id":7104300007405429232,"topic":"taobao_trade_TradeChanged","content":"{\"tid\":"#;
    unreadable_consume_body(
        Scripted::json(cut),
        &["not JSON", "EOF while parsing", "7104300007405429232"],
    )
    .await;
}

/// A body whose root is an array (not an object) holding messages confirms none of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consume_body_that_is_not_an_object_confirms_nothing_and_is_logged() {
    let array = format!("[{}]", good(7_104_300_007_405_429_232));
    unreadable_consume_body(
        Scripted::json(array),
        &["expected a JSON object, got array"],
    )
    .await;
}

/// Reads one HTTP/1.1 request (headers and a Content-Length body).
async fn read_request(s: &mut TcpStream) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = s.read(&mut chunk).await.unwrap_or(0);
        if n == 0 {
            return;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            while buf.len() < end + 4 + len {
                match s.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            return;
        }
    }
}

/// A gateway announcing a 1 GiB body and streaming it until the client hangs up; returns how
/// many body bytes it managed to write.
async fn endless_gateway() -> (SocketAddr, tokio::task::JoinHandle<u64>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        read_request(&mut s).await;
        let head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1073741824\r\n\r\n{\"messages\":[";
        s.write_all(head.as_bytes()).await.unwrap();
        let chunk = vec![b' '; 64 * 1024];
        let written = AtomicU64::new(0);
        while written.load(Ordering::Relaxed) < 1 << 30 {
            if s.write_all(&chunk).await.is_err() {
                break;
            }
            written.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        }
        written.load(Ordering::Relaxed)
    });
    (addr, task)
}

/// A consume body over `max_body_bytes` is refused as too large after reading about the cap,
/// not the gigabyte the gateway offers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consume_body_over_the_cap_is_refused_without_reading_it_all() {
    let (addr, written) = endless_gateway().await;
    let mut cfg = top_config(&format!("http://{addr}/router/rest"));
    cfg.max_body_bytes = 1024 * 1024;
    cfg.retry.max_attempts = 1;
    let e = TopClient::new(cfg)
        .unwrap()
        .consume(None, 10, Instant::now() + Duration::from_secs(20))
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            TopError::TooLarge {
                limit: 1_048_576,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(e.to_string().contains("larger than 1048576 bytes"), "{e}");
    let written = tokio::time::timeout(Duration::from_secs(10), written)
        .await
        .expect("the gateway saw the client hang up")
        .unwrap();
    assert!(
        written < 32 * 1024 * 1024,
        "the gateway wrote {written} bytes before the client hung up"
    );
}

// ---------------------------------------------------------------------------------------------
// Messages with defects, next to a good one.

/// Messages whose id is missing, null, negative, zero, above u64::MAX, a non-numeric or empty
/// string, a float or a boolean are counted invalid, parked with the reason, never confirmed;
/// the good message beside them is enqueued and confirmed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_with_bad_ids_are_invalid_parked_and_never_confirmed() {
    let rig = Rig::new().await;
    let id = rig.publish_one("x");
    let bad = [
        (r#""user_id":1"#, "no id", "message has no id"),
        (r#""id":null"#, "null id", "message has no id"),
        (r#""id":-5"#, "negative", "id is negative (-5)"),
        (r#""id":0"#, "zero", "id is 0"),
        (
            r#""id":18446744073709551616"#,
            "above max",
            "not a 64-bit integer",
        ),
        (r#""id":"abc""#, "string", "non-numeric string"),
        (r#""id":"""#, "empty string", "non-numeric string"),
        (r#""id":1.5"#, "float", "not a 64-bit integer"),
        (
            r#""id":7104300007405429232.0"#,
            "integral float",
            "not a 64-bit integer",
        ),
        (r#""id":true"#, "boolean", "wrong type (boolean)"),
    ];
    let mut items: Vec<String> = bad
        .iter()
        .map(|(id_field, marker, _)| {
            format!(r#"{{{id_field},"topic":"{TOPIC}","content":"{marker}"}}"#)
        })
        .collect();
    items.insert(3, good(id));
    rig.sim
        .script(CONSUME, vec![Scripted::json(consume_body(&items))]);
    let report = rig.run().await;
    assert_eq!(report.stop_reason, StopReason::Empty, "{report:?}");
    let c = &report.counts;
    assert_eq!(
        (
            c.consumed,
            c.invalid,
            c.enqueued,
            c.parked,
            c.confirmed,
            c.confirm_failed
        ),
        (11, 10, 1, 0, 1, 0),
        "{report:?}"
    );
    assert_eq!(ids(&rig.relayed().await), vec![id.to_string()]);
    let parked = rig.parked().await;
    let reasons: HashMap<String, (String, String)> = parked
        .iter()
        .map(|m| {
            let v = m.json();
            assert_eq!(v["reason_code"], "invalid_id");
            assert_eq!(v["id"], Value::Null);
            (
                v["original"]["content"].as_str().unwrap().to_owned(),
                (v["reason"].as_str().unwrap().to_owned(), m.body.clone()),
            )
        })
        .collect();
    assert_eq!(reasons.len(), bad.len(), "{reasons:?}");
    for (_, marker, why) in bad {
        let (reason, _) = &reasons[marker];
        assert!(reason.contains(why), "{marker}: {reason:?} lacks {why:?}");
    }
    assert_eq!(rig.confirmed_ids(), HashSet::from([id.to_string()]));
    let state = rig.sim.state();
    assert_eq!((state.confirm_calls, state.unknown_confirms), (1, 0));
}

/// Items of the message list that are not objects (number, string, null, array, boolean) are
/// counted invalid and parked as received; the good message beside them is relayed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_items_that_are_not_objects_are_invalid_and_never_confirmed() {
    let rig = Rig::new().await;
    let id = rig.publish_one("x");
    let odd = ["5", r#""x""#, "null", "[1,2]", "true"];
    let mut items: Vec<String> = odd.iter().map(|s| (*s).to_owned()).collect();
    items.push(good(id));
    rig.sim
        .script(CONSUME, vec![Scripted::json(consume_body(&items))]);
    let report = rig.run().await;
    assert_eq!(report.stop_reason, StopReason::Empty, "{report:?}");
    assert_eq!(
        (
            report.counts.invalid,
            report.counts.enqueued,
            report.counts.confirmed
        ),
        (5, 1, 1),
        "{report:?}"
    );
    let originals: HashSet<String> = rig
        .parked()
        .await
        .iter()
        .map(|m| m.json()["original"].to_string())
        .collect();
    let expected: HashSet<String> = odd.iter().map(|s| (*s).replace(' ', "")).collect();
    assert_eq!(originals, expected);
    assert_eq!(rig.confirmed_ids(), HashSet::from([id.to_string()]));
    assert_eq!(rig.sim.state().unknown_confirms, 0);
}

/// Missing or null topic, and missing, null or non-string content, park the message with a
/// reason code; a parked message is secured, so it is confirmed and marked parked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn null_or_missing_topic_or_content_is_parked_and_confirmed() {
    let rig = Rig::new().await;
    let published: Vec<u64> = (0..5).map(|i| rig.publish_one(&i.to_string())).collect();
    let items = [
        (
            format!(r#"{{"id":{},"content":"c"}}"#, published[0]),
            "missing_topic",
        ),
        (
            format!(r#"{{"id":{},"topic":null,"content":"c"}}"#, published[1]),
            "missing_topic",
        ),
        (
            format!(r#"{{"id":{},"topic":"{TOPIC}"}}"#, published[2]),
            "missing_content",
        ),
        (
            format!(
                r#"{{"id":{},"topic":"{TOPIC}","content":null}}"#,
                published[3]
            ),
            "missing_content",
        ),
        (
            format!(
                r#"{{"id":{},"topic":"{TOPIC}","content":{{"tid":1}}}}"#,
                published[4]
            ),
            "missing_content",
        ),
    ];
    let bodies: Vec<String> = items.iter().map(|(b, _)| b.clone()).collect();
    rig.sim
        .script(CONSUME, vec![Scripted::json(consume_body(&bodies))]);
    let report = rig.run().await;
    assert_eq!(report.stop_reason, StopReason::Empty, "{report:?}");
    assert_eq!(
        (
            report.counts.parked,
            report.counts.enqueued,
            report.counts.confirmed
        ),
        (5, 0, 5),
        "{report:?}"
    );
    let codes: HashMap<String, String> = rig
        .parked()
        .await
        .iter()
        .map(|m| {
            let v = m.json();
            (
                v["id"].as_str().unwrap().to_owned(),
                v["reason_code"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    for (id, (_, code)) in published.iter().zip(items.iter()) {
        assert_eq!(codes[&id.to_string()], *code, "id {id}");
        assert_eq!(
            rig.env.status(&id.to_string()).await.as_deref(),
            Some("done")
        );
    }
    assert!(rig.relayed().await.is_empty());
    assert_eq!(rig.sim.state().confirmed, 5);
}

/// A missing or null pub_time does not stop a message: it is enqueued with `pub_time: null`
/// and confirmed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_or_null_pub_time_is_enqueued_with_a_null_time() {
    let rig = Rig::new().await;
    let a = rig.publish_one("a");
    let b = rig.publish_one("b");
    let items = [
        format!(r#"{{"id":{a},"topic":"{TOPIC}","content":"a"}}"#),
        format!(r#"{{"id":{b},"topic":"{TOPIC}","content":"b","pub_time":null}}"#),
    ];
    rig.sim
        .script(CONSUME, vec![Scripted::json(consume_body(&items))]);
    let report = rig.run().await;
    assert_eq!(
        (report.counts.enqueued, report.counts.confirmed),
        (2, 2),
        "{report:?}"
    );
    let got = rig.relayed().await;
    assert_eq!(got.len(), 2);
    for m in &got {
        assert_eq!(m.json()["pub_time"], Value::Null, "{}", m.body);
    }
    assert_eq!(rig.sim.state().confirmed, 2);
}

// ---------------------------------------------------------------------------------------------
// Content: forwarded exactly, and only with characters SQS accepts.

/// Content that is not JSON (or is JSON with odd spacing, or empty) reaches SQS byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_that_is_not_json_is_forwarded_byte_for_byte() {
    let rig = Rig::new().await;
    let contents = [
        "not json {",
        "",
        "  {\"tid\" : 7104300007405429232 }  ",
        "<xml a='1'>&amp;</xml>",
        "line1\nline2\r\n\ttabbed",
        "\"just a string\"",
        "123456789012345678901234567890.000",
        "\\u0041 is not unescaped",
    ];
    let sent: HashMap<String, &str> = contents
        .iter()
        .map(|c| (rig.publish_one(c).to_string(), *c))
        .collect();
    let report = rig.run().await;
    assert_eq!(
        (report.counts.enqueued, report.counts.confirmed),
        (8, 8),
        "{report:?}"
    );
    let got = rig.relayed().await;
    assert_eq!(got.len(), contents.len());
    for m in &got {
        assert_eq!(m.json()["content"], sent[&m.id()], "id {}", m.id());
    }
}

/// Content and nick with U+0000, other controls, U+FFFE, U+FFFF and 4-byte characters reach SQS
/// with only characters SQS accepts (moto does not check, so this test does) and decode back to
/// the original text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn characters_sqs_refuses_are_escaped_and_round_trip() {
    let rig = Rig::new().await;
    let content = "nul\u{0} ctl\u{1}\u{8}\u{b}\u{c}\u{1b}\u{1f}\u{7f} fffe\u{FFFE} ffff\u{FFFF} \
                   edges\u{D7FF}\u{E000}\u{FFFD} astral😀𝄞\u{10FFFF} cr\r lf\n tab\t";
    let nick = "店\u{0}铺\u{FFFF}😀";
    let id = rig.sim.publish(
        None,
        vec![NewMessage {
            user_nick: nick.into(),
            ..NewMessage::new(TOPIC, content)
        }],
    )[0];
    let report = rig.run().await;
    assert_eq!(
        (report.counts.enqueued, report.counts.confirmed),
        (1, 1),
        "{report:?}"
    );
    let got = rig.relayed().await;
    assert_eq!(ids(&got), vec![id.to_string()]);
    assert_sqs_legal(&got[0]);
    let body = got[0].json();
    assert_eq!(body["content"].as_str().unwrap(), content);
    assert_eq!(body["user_nick"].as_str().unwrap(), nick);
}

/// Lone UTF-16 surrogate escapes in content become U+FFFD; pairs, escaped backslashes and the
/// rest of the text survive, and the body is SQS-legal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lone_surrogate_escapes_become_replacement_characters() {
    let rig = Rig::new().await;
    let id = rig.publish_one("x");
    let item = format!(
        r#"{{"id":{id},"topic":"{TOPIC}","content":"a\ud800b\udc00c\ud83d\ude00d\\ud800e\ud800","user_id":42}}"#
    );
    rig.sim
        .script(CONSUME, vec![Scripted::json(consume_body(&[item]))]);
    let report = rig.run().await;
    assert_eq!(
        (report.counts.enqueued, report.counts.confirmed),
        (1, 1),
        "{report:?}"
    );
    let got = rig.relayed().await;
    assert_sqs_legal(&got[0]);
    assert_eq!(
        got[0].json()["content"].as_str().unwrap(),
        "a\u{FFFD}b\u{FFFD}c😀d\\ud800e\u{FFFD}"
    );
    assert!(log_text().contains("lone UTF-16 surrogate"));
}

// ---------------------------------------------------------------------------------------------
// Answers from TMC that are errors.

/// A confirm answered with an error is not counted confirmed; after the lease the redelivery is
/// confirmed without a second enqueue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirm_error_is_not_counted_and_the_redelivery_is_confirmed_once() {
    let rig = Rig::with_client(|cfg| TopClient::new(cfg).unwrap(), Duration::from_secs(60)).await;
    let published: HashSet<String> = (0..3)
        .map(|i| rig.publish_one(&i.to_string()).to_string())
        .collect();
    rig.sim.script(
        CONFIRM,
        vec![Scripted::json(
            r#"{"error_response":{"code":15,"msg":"Remote service error","sub_code":"isv.invalid-parameter"}}"#,
        )],
    );
    let first = rig.run().await;
    assert_eq!(first.stop_reason, StopReason::Empty, "{first:?}");
    let c = &first.counts;
    assert_eq!(
        (c.enqueued, c.confirmed, c.confirm_failed),
        (3, 0, 3),
        "{first:?}"
    );
    assert!(log_text().contains("confirm failed: TMC will redeliver"));
    assert_eq!(rig.sim.state().confirmed, 0);

    rig.sim.advance(Duration::from_secs(61));
    let second = rig.run().await;
    let c = &second.counts;
    assert_eq!(
        (c.consumed, c.enqueued, c.duplicates, c.confirmed),
        (3, 0, 3, 3),
        "{second:?}"
    );
    let got = rig.relayed().await;
    assert_eq!(ids(&got).into_iter().collect::<HashSet<_>>(), published);
    assert_eq!(got.len(), 3, "enqueued once each");
    assert_eq!(rig.confirmed_ids(), published);
}

/// An error response with an unknown code sent as a string and no `msg` stops the pass as
/// fatal, names the code, consumes and confirms nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_with_unknown_string_code_and_no_msg_is_fatal_and_names_the_code() {
    let rig = Rig::new().await;
    rig.publish_one("x");
    rig.sim.script(
        CONSUME,
        vec![Scripted::json(r#"{"error_response":{"code":"9999"}}"#)],
    );
    let report = rig.run().await;
    assert_eq!(report.stop_reason, StopReason::Fatal, "{report:?}");
    let err = report.error.as_deref().unwrap();
    assert!(err.contains("TOP error 9999"), "{err}");
    assert_eq!(report.counts.consumed, 0);
    let state = rig.sim.state();
    assert_eq!((state.consume_calls, state.confirm_calls), (1, 0));
    assert_eq!(state.pending, 1);
}

/// A client clock 20 minutes off, either way, is refused with 31: the pass stops as fatal,
/// says to check the clock, and consumes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clock_twenty_minutes_off_is_fatal_and_says_to_check_the_clock() {
    for ahead in [true, false] {
        let skew = Duration::from_secs(20 * 60);
        let rig = Rig::with_client(
            |cfg| {
                TopClient::new(cfg).unwrap().with_clock(Arc::new(move || {
                    if ahead {
                        SystemTime::now() + skew
                    } else {
                        SystemTime::now() - skew
                    }
                }))
            },
            Duration::from_secs(300),
        )
        .await;
        rig.publish_one("x");
        let report = rig.run().await;
        assert_eq!(report.stop_reason, StopReason::Fatal, "{report:?}");
        let err = report.error.as_deref().unwrap();
        assert!(
            err.contains("TOP error 31") && err.contains("Check the host clock"),
            "{err}"
        );
        let state = rig.sim.state();
        assert_eq!(state.rejected.get("31"), Some(&1), "ahead {ahead}");
        assert_eq!((state.pending, state.deliveries), (1, 0));
    }
}

// ---------------------------------------------------------------------------------------------
// Bad invocations and configuration through the binaries.

async fn binary(path: &str, vars: &HashMap<String, String>, args: &[&str]) -> std::process::Output {
    let run = tokio::process::Command::new(path)
        .env_clear()
        .envs(vars)
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .args(args)
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("the binary exited within 30 s")
        .unwrap()
}

/// `tmc-relay run` refuses wrong types, huge numbers, out-of-range values and misspelt flags,
/// naming the flag or value, before consuming anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_refuses_wrong_types_and_huge_numbers_before_consuming() {
    let sim = sim(Duration::from_secs(300)).await;
    let env = Env::new(false).await;
    sim.publish(None, vec![NewMessage::new(TOPIC, "x")]);
    let long_group = "g".repeat(33);
    let cases: [(Vec<&str>, &str); 9] = [
        (vec!["--quantity", "abc"], "--quantity"),
        (vec!["--quantity", "99999999999"], "99999999999 is not in"),
        (
            vec!["--max-messages", "18446744073709551616"],
            "--max-messages",
        ),
        (vec!["--max-messages", "1e3"], "--max-messages"),
        (vec!["--max-seconds=-5"], "--max-seconds"),
        (vec!["--max-seconds", "100000"], "max_seconds"),
        (vec!["--group-names", &long_group], "32 characters"),
        (vec!["--concurrency", "0"], "concurrency"),
        (vec!["--qantity", "10"], "--qantity"),
    ];
    for (flags, needle) in cases {
        let mut args = vec!["run"];
        args.extend(flags.iter().copied());
        let out = binary(
            env!("CARGO_BIN_EXE_tmc-relay"),
            &env.vars(&sim.gateway_url()),
            &args,
        )
        .await;
        assert!(!out.status.success(), "{args:?} was accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    assert_eq!(sim.state().consume_calls, 0);
}

/// The `bootstrap` Lambda refuses to start on a bad configuration value, naming the variable,
/// before any call to TMC.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstrap_refuses_bad_configuration_naming_the_variable() {
    let sim = sim(Duration::from_secs(300)).await;
    let good: HashMap<String, String> = [
        ("TOP_APP_KEY", APP_KEY),
        ("TOP_APP_SECRET", SECRET),
        ("RELAY_QUEUE_URL", "http://127.0.0.1:9/000000000000/relay"),
        (
            "PARKING_QUEUE_URL",
            "http://127.0.0.1:9/000000000000/parking",
        ),
        ("DEDUP_TABLE_NAME", "tmc-dedup"),
        ("AWS_REGION", "us-east-1"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
        ("AWS_LAMBDA_FUNCTION_NAME", "tmc-relay"),
        ("AWS_LAMBDA_FUNCTION_VERSION", "1"),
        ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "256"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .chain([("TOP_ENDPOINT".to_owned(), sim.gateway_url())])
    .collect();
    for (var, value) in [
        ("TOP_ENDPOINT", "gateway"),
        ("TOP_SIGN_METHOD", "sha1"),
        ("TMC_QUANTITY", "0"),
        ("TMC_QUANTITY", "500"),
        (
            "RELAY_QUEUE_URL",
            "https://sqs.us-east-1.amazonaws.com/only-one",
        ),
        ("DEDUP_RETENTION_DAYS", "-1"),
    ] {
        let mut vars = good.clone();
        vars.insert(var.into(), value.into());
        let out = binary(env!("CARGO_BIN_EXE_bootstrap"), &vars, &[]).await;
        assert!(!out.status.success(), "{var}={value} was accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(var), "{var}={value}: {err}");
        assert!(
            !err.contains(SECRET),
            "{var}={value}: the secret was printed"
        );
    }
    assert_eq!(sim.state().consume_calls, 0);
}
