//! The simulator's admin API under `/_sim/`, driven over HTTP the way scripts in other
//! languages drive it.

use std::time::Duration;

use serde_json::{json, Value};
use tmc_relay::top::{RetryPolicy, Secret, TopClient, TopConfig, TopError};
use tmc_sim::{SimConfig, SimServer, SimState};
use tokio::time::Instant;
use url::Url;

async fn sim() -> SimServer {
    SimServer::start("127.0.0.1:0".parse().unwrap(), SimConfig::default())
        .await
        .unwrap()
}

fn client(sim: &SimServer) -> TopClient {
    let mut cfg = TopConfig::new(
        Url::parse(&sim.gateway_url()).unwrap(),
        "sim-app",
        Secret::new("sim-secret"),
    );
    cfg.retry = RetryPolicy {
        max_attempts: 1,
        base: Duration::from_millis(1),
        cap: Duration::from_millis(1),
    };
    TopClient::new(cfg).unwrap()
}

fn deadline() -> Instant {
    Instant::now() + Duration::from_secs(10)
}

/// POSTs raw text to an admin path; returns the status and the parsed body.
async fn post(sim: &SimServer, path: &str, body: &str) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .post(format!("{}/_sim/{path}", sim.base_url()))
        .header("Content-Type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

async fn state(sim: &SimServer, query: &str) -> SimState {
    let text = reqwest::Client::new()
        .get(format!("{}/_sim/state{query}", sim.base_url()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    serde_json::from_str(&text).unwrap()
}

/// Published messages keep ids given as strings or numbers, and ids come back as strings.
#[tokio::test]
async fn publish_accepts_string_and_number_ids() {
    let sim = sim().await;
    let body = json!({
        "group_name": "orders",
        "messages": [
            {"id": "7104300007405429232", "topic": "taobao_trade_TradeCreate", "content": "{}"},
            {"id": 42, "topic": "t", "content": "x", "user_id": "9007199254740993", "user_nick": "商家"},
            {"topic": "t", "content": "fresh id"}
        ]
    });
    let (status, v) = post(&sim, "publish", &body.to_string()).await;
    assert_eq!(status, 200, "{v}");
    let ids = v["ids"].as_array().unwrap();
    assert_eq!(ids[0], "7104300007405429232");
    assert_eq!(ids[1], "42");
    assert!(ids[2].as_str().unwrap().parse::<u64>().unwrap() > 1 << 53);
    let got = client(&sim)
        .consume(Some("orders"), 10, deadline())
        .await
        .unwrap();
    assert_eq!(got[0].id, Some(7_104_300_007_405_429_232));
    assert_eq!(got[1].user_id, Some(9_007_199_254_740_993));
    assert_eq!(got[1].user_nick.as_deref(), Some("商家"));
}

/// generate, advance and state work together: a lease ends after advancing past it.
#[tokio::test]
async fn generate_advance_and_state() {
    let sim = sim().await;
    let (status, v) = post(&sim, "generate", r#"{"count": 30}"#).await;
    assert_eq!(status, 200);
    assert_eq!(v["ids"].as_array().unwrap().len(), 30);
    client(&sim).consume(None, 10, deadline()).await.unwrap();
    let st = state(&sim, "").await;
    assert_eq!((st.pending, st.inflight, st.messages.len()), (20, 10, 30));
    let (status, v) = post(&sim, "advance", r#"{"seconds": 300}"#).await;
    assert_eq!(status, 200);
    assert!(v["now_ms"].as_u64().unwrap() >= st.now_ms + 300_000);
    let st = state(&sim, "?messages=false").await;
    assert_eq!((st.pending, st.inflight), (30, 0));
    assert!(st.messages.is_empty(), "messages=false leaves the map out");
}

/// Faults and scripts set over HTTP take effect; reset clears them.
#[tokio::test]
async fn faults_script_and_reset() {
    let sim = sim().await;
    let (status, _) = post(
        &sim,
        "faults",
        r#"{"per_method":{"taobao.tmc.messages.consume":{"http502_rate":1.0}}}"#,
    )
    .await;
    assert_eq!(status, 200);
    let e = client(&sim)
        .consume(None, 10, deadline())
        .await
        .unwrap_err();
    assert!(matches!(e, TopError::Http { status: 502, .. }), "{e}");
    let (status, _) = post(&sim, "reset", "").await;
    assert_eq!(status, 200);
    let (status, v) = post(
        &sim,
        "script",
        r#"{"method":"taobao.tmc.messages.consume","responses":[{"status":200,"body":"{\"error_response\":{\"code\":11,\"msg\":\"Insufficient isv permissions\"}}"}]}"#,
    )
    .await;
    assert_eq!((status, v["queued"].as_u64()), (200, Some(1)));
    let e = client(&sim)
        .consume(None, 10, deadline())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(11));
    assert!(client(&sim).consume(None, 10, deadline()).await.is_ok());
    let st = state(&sim, "").await;
    assert_eq!(
        st.faults_injected.get("http502"),
        None,
        "reset cleared counters"
    );
    assert_eq!(st.faults_injected["scripted"], 1);
}

/// A group created over HTTP can be consumed from.
#[tokio::test]
async fn groups_creates_a_group() {
    let sim = sim().await;
    let (status, v) = post(&sim, "groups", r#"{"name":"g1"}"#).await;
    assert_eq!((status, v["created"].as_bool()), (200, Some(true)));
    assert!(client(&sim)
        .consume(Some("g1"), 10, deadline())
        .await
        .is_ok());
    assert!(state(&sim, "").await.groups.contains(&"g1".to_owned()));
}

/// Bad admin input is a 400 that says what is wrong.
#[tokio::test]
async fn bad_admin_input_is_a_clear_400() {
    let sim = sim().await;
    for (path, body, needle) in [
        ("publish", "not json", "invalid JSON"),
        ("publish", r#"{"messages":[{"topic":"t"}]}"#, "content"),
        (
            "publish",
            r#"{"messages":[{"id":"12x","topic":"t","content":""}]}"#,
            "decimal",
        ),
        ("publish", r#"{"messages":[],"oops":1}"#, "oops"),
        ("generate", r#"{"count":-1}"#, "invalid JSON"),
        (
            "faults",
            r#"{"per_method":{"m":{"error_rate":2}}}"#,
            "error_rate",
        ),
        (
            "faults",
            r#"{"per_method":{"m":{"eror_rate":1}}}"#,
            "eror_rate",
        ),
        (
            "script",
            r#"{"method":"m","responses":[{"status":99}]}"#,
            "status",
        ),
        ("advance", r#"{"seconds":-5}"#, "seconds"),
        ("groups", r#"{"name":""}"#, "group_name"),
    ] {
        let (status, v) = post(&sim, path, body).await;
        assert_eq!(status, 400, "{path} {body}: {v}");
        let msg = v["error"].as_str().unwrap_or_default();
        assert!(msg.contains(needle), "{path} {body}: {msg}");
    }
}

/// Unknown paths are 404 and the gateway path does not answer other verbs.
#[tokio::test]
async fn unknown_paths_are_404() {
    let sim = sim().await;
    let http = reqwest::Client::new();
    let r = http
        .get(format!("{}/_sim/nope", sim.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);
    let r = http.put(sim.gateway_url()).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 405);
}
