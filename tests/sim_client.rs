//! The TOP client against the strict local gateway: every typed call, every signature method
//! and shape, the refusals, the queue semantics and every fault kind.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use proptest::prelude::*;
use tmc_sim::{verify_request, RequestParams};

use tmc_relay::top::api::{CONFIRM, CONSUME, GROUP_ADD};
use tmc_relay::top::{ErrorClass, RetryPolicy, Secret, SignMethod, TopClient, TopConfig, TopError};
use tmc_sim::{Faults, InjectedError, MethodFaults, NewMessage, Scripted, SimConfig, SimServer};
use tokio::time::Instant;
use url::Url;

const LEASE: Duration = Duration::from_secs(300);

async fn sim() -> SimServer {
    SimServer::start("127.0.0.1:0".parse().unwrap(), SimConfig::default())
        .await
        .unwrap()
}

fn config(sim: &SimServer, sign_method: SignMethod, simplify: bool) -> TopConfig {
    let mut cfg = TopConfig::new(
        Url::parse(&sim.gateway_url()).unwrap(),
        &sim.config().app_key,
        Secret::new(sim.config().app_secret.clone()),
    );
    cfg.sign_method = sign_method;
    cfg.simplify = simplify;
    cfg.retry = fast_retry(3);
    cfg
}

fn fast_retry(max_attempts: u32) -> RetryPolicy {
    RetryPolicy {
        max_attempts,
        base: Duration::from_millis(1),
        cap: Duration::from_millis(5),
    }
}

fn client(sim: &SimServer) -> TopClient {
    TopClient::new(config(sim, SignMethod::HmacSha256, true)).unwrap()
}

fn client_with_attempts(sim: &SimServer, attempts: u32) -> TopClient {
    let mut cfg = config(sim, SignMethod::HmacSha256, true);
    cfg.retry = fast_retry(attempts);
    TopClient::new(cfg).unwrap()
}

fn deadline() -> Instant {
    Instant::now() + Duration::from_secs(10)
}

fn msg(topic: &str) -> NewMessage {
    NewMessage::new(topic, r#"{"tid":4000000000000000001}"#)
}

fn ids_of(msgs: &[tmc_relay::top::TmcMessage]) -> Vec<u64> {
    msgs.iter().map(|m| m.id.unwrap()).collect()
}

fn faults(method: &str, f: MethodFaults) -> Faults {
    Faults::none().with(method, f)
}

fn api_code(e: &TopError) -> i64 {
    e.code().unwrap_or_else(|| panic!("not an API error: {e}"))
}

/// consume returns what was published, in order, and confirm removes it.
#[tokio::test]
async fn consume_then_confirm_round_trip() {
    let sim = sim().await;
    let c = client(&sim);
    let ids = sim.publish(
        None,
        vec![
            msg("taobao_trade_TradeCreate"),
            msg("taobao_trade_TradeChanged"),
        ],
    );
    let got = c.consume(None, 10, deadline()).await.unwrap();
    assert_eq!(ids_of(&got), ids);
    assert_eq!(got[0].topic.as_deref(), Some("taobao_trade_TradeCreate"));
    assert_eq!(got[0].pub_app_key.as_deref(), Some("12497914"));
    assert!(got[0].pub_time.is_some());
    let chunks = c.confirm(None, &ids, deadline()).await;
    assert_eq!(chunks.len(), 1);
    assert!(matches!(chunks[0].result, Ok(true)));
    let st = sim.state();
    assert_eq!((st.confirmed, st.pending, st.inflight), (2, 0, 0));
    assert!(st.messages[&ids[0].to_string()].confirmed_at_ms.is_some());
}

/// All three signature methods, simplified and plain, are accepted and decode the same.
#[tokio::test]
async fn every_sign_method_and_shape_is_accepted() {
    let sim = sim().await;
    for m in SignMethod::ALL {
        for simplify in [true, false] {
            let c = TopClient::new(config(&sim, m, simplify)).unwrap();
            let ids = sim.publish(None, vec![msg("taobao_item_ItemUpdate")]);
            let got = c.consume(None, 10, deadline()).await.unwrap();
            assert_eq!(ids_of(&got), ids, "{m} simplify={simplify}");
            assert!(c.confirm_chunk(None, &ids, deadline()).await.unwrap());
            assert!(c.consume(None, 10, deadline()).await.unwrap().is_empty());
            let groups = c.groups_get(None, None, None, deadline()).await.unwrap();
            assert_eq!(groups.groups, ["default"]);
        }
    }
    assert!(sim.state().rejected.is_empty());
}

/// permit subscribes the session's seller; get reads it back; cancel removes it.
#[tokio::test]
async fn user_permit_get_and_cancel() {
    let sim = sim().await;
    let c = client(&sim);
    let session = Secret::new("sess-商家A");
    let topics = vec![
        "taobao_trade_TradeChanged".to_owned(),
        "taobao_refund_RefundCreated".to_owned(),
    ];
    assert!(c
        .user_permit(&session, Some(&topics), deadline())
        .await
        .unwrap());
    let u = c
        .user_get("商家A", None, deadline())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(u.user_nick.as_deref(), Some("商家A"));
    assert_eq!(u.topics, topics);
    assert_eq!(u.is_valid, Some(true));
    assert_eq!(u.group_name.as_deref(), Some("default"));
    assert!(u.user_id.is_some() && u.created.is_some());
    // Without topics: every topic of the app.
    assert!(c.user_permit(&session, None, deadline()).await.unwrap());
    let u = c
        .user_get("商家A", None, deadline())
        .await
        .unwrap()
        .unwrap();
    assert!(u.topics.len() > 2);
    assert!(c
        .user_cancel("商家A", Some("tbUIC"), deadline())
        .await
        .unwrap());
    assert_eq!(c.user_get("商家A", None, deadline()).await.unwrap(), None);
    assert!(!c.user_cancel("商家A", None, deadline()).await.unwrap());
}

/// A missing or revoked session is refused with 26 / 27, fatal.
#[tokio::test]
async fn session_errors_are_fatal() {
    let sim = sim().await;
    let c = client(&sim);
    let e = c
        .call("taobao.tmc.user.permit", &[], None, deadline())
        .await
        .unwrap_err();
    assert_eq!(api_code(&e), 26);
    let e = c
        .user_permit(&Secret::new("invalid-session"), None, deadline())
        .await
        .unwrap_err();
    assert_eq!(api_code(&e), 27);
    assert!(matches!(e.class(), ErrorClass::Fatal { .. }));
}

/// group.add creates a group, groups.get lists it, group.delete removes it and its messages.
#[tokio::test]
async fn groups_add_list_and_delete() {
    let sim = sim().await;
    let c = client(&sim);
    let created = c
        .group_add("orders", &["nick_a".to_owned()], deadline())
        .await
        .unwrap();
    assert!(created.is_some());
    let page = c.groups_get(None, None, None, deadline()).await.unwrap();
    assert_eq!(page.groups, ["default", "orders"]);
    assert_eq!(page.total_results, Some(2));
    let page = c
        .groups_get(Some(&["orders".to_owned()]), Some(1), Some(10), deadline())
        .await
        .unwrap();
    assert_eq!(page.groups, ["orders"]);
    // Adding it again breaks a business rule: permanent.
    let e = c
        .group_add("orders", &["nick_a".to_owned()], deadline())
        .await
        .unwrap_err();
    assert_eq!(api_code(&e), 15);
    assert_eq!(e.class(), ErrorClass::Permanent);
    // Removing sellers keeps the group.
    assert!(c
        .group_delete("orders", &["nick_a".to_owned()], deadline())
        .await
        .unwrap());
    assert_eq!(
        c.groups_get(None, None, None, deadline())
            .await
            .unwrap()
            .groups
            .len(),
        2
    );
    sim.publish(Some("orders"), vec![msg("taobao_trade_TradeCreate")]);
    assert!(c.group_delete("orders", &[], deadline()).await.unwrap());
    assert_eq!(sim.state().dropped, 1);
    let page = c.groups_get(None, None, None, deadline()).await.unwrap();
    assert_eq!(page.groups, ["default"]);
    let e = c.consume(Some("orders"), 10, deadline()).await.unwrap_err();
    assert_eq!(api_code(&e), 15);
}

/// Group names starting with "default" are refused by the client and, sent raw, with 41.
#[tokio::test]
async fn default_prefixed_group_names_are_refused() {
    let sim = sim().await;
    let c = client(&sim);
    let e = c
        .group_add("default2", &["n".to_owned()], deadline())
        .await
        .unwrap_err();
    assert!(matches!(e, TopError::InvalidRequest { .. }));
    let e = c
        .call(
            GROUP_ADD,
            &[("group_name", "default2".into()), ("nicks", "n".into())],
            None,
            deadline(),
        )
        .await
        .unwrap_err();
    assert_eq!(api_code(&e), 41);
}

/// queue.get reports what went in and out of a group's queue.
#[tokio::test]
async fn queue_get_reports_totals() {
    let sim = sim().await;
    let c = client(&sim);
    sim.create_group("orders");
    sim.generate(Some("orders"), 15);
    c.consume(Some("orders"), 10, deadline()).await.unwrap();
    for simplify in [true, false] {
        let c = TopClient::new(config(&sim, SignMethod::Md5, simplify)).unwrap();
        let q = c.queue_get("orders", deadline()).await.unwrap();
        assert_eq!(q.len(), 1);
        assert_eq!(q[0].name.as_deref(), Some("orders"));
        assert!(q[0].broker_name.is_some());
        assert_eq!((q[0].put_total, q[0].get_total), (Some(15), Some(10)));
    }
    let e = c.queue_get("nope", deadline()).await.unwrap_err();
    assert_eq!(api_code(&e), 15);
}

/// Jushita MQ users: add with a session, get by nick, delete.
#[tokio::test]
async fn jms_user_add_get_and_delete() {
    let sim = sim().await;
    let c = client(&sim);
    let topics = vec!["taobao_trade_TradeChanged".to_owned()];
    assert!(c
        .jms_user_add(&Secret::new("sess-shop1"), &topics, deadline())
        .await
        .unwrap());
    let u = c.jms_user_get("shop1", deadline()).await.unwrap().unwrap();
    assert_eq!(u.user_nick.as_deref(), Some("shop1"));
    assert_eq!(u.topic_names, topics);
    assert!(c.jms_user_delete("shop1", deadline()).await.unwrap());
    assert!(c.jms_user_get("shop1", deadline()).await.unwrap().is_none());
    assert!(!c.jms_user_delete("shop1", deadline()).await.unwrap());
}

/// A wrong secret is refused with 25, classified fatal, naming TOP_APP_SECRET.
#[tokio::test]
async fn wrong_secret_is_fatal_signature_error() {
    let sim = sim().await;
    let mut cfg = config(&sim, SignMethod::HmacSha256, true);
    cfg.secret = Secret::new("not-the-secret");
    let c = TopClient::new(cfg).unwrap();
    let e = c.consume(None, 10, deadline()).await.unwrap_err();
    assert_eq!(api_code(&e), 25);
    match e.class() {
        ErrorClass::Fatal { check } => assert!(check.contains("TOP_APP_SECRET"), "{check}"),
        other => panic!("{other:?}"),
    }
    let st = sim.state();
    assert_eq!(
        st.consume_calls, 0,
        "a fatal error is not retried or served"
    );
    assert_eq!(st.rejected["25"], 1);
}

/// A client clock 11 minutes off is refused with 31; 9 minutes is tolerated.
#[tokio::test]
async fn skewed_client_clock_is_refused() {
    let sim = sim().await;
    let skewed = |by: Duration| client(&sim).with_clock(Arc::new(move || SystemTime::now() - by));
    let e = skewed(Duration::from_secs(11 * 60))
        .consume(None, 10, deadline())
        .await
        .unwrap_err();
    assert_eq!(api_code(&e), 31);
    assert!(matches!(e.class(), ErrorClass::Fatal { check } if check.contains("clock")));
    assert!(skewed(Duration::from_secs(9 * 60))
        .consume(None, 10, deadline())
        .await
        .is_ok());
}

/// quantity 9 and 201 never leave the client; sent raw, the gateway answers 41.
#[tokio::test]
async fn quantity_out_of_range_is_refused() {
    let sim = sim().await;
    let c = client(&sim);
    for q in [9, 201] {
        let e = c.consume(None, q, deadline()).await.unwrap_err();
        assert!(matches!(e, TopError::InvalidRequest { .. }), "{e}");
    }
    assert_eq!(sim.state().consume_calls, 0);
    for q in ["9", "201"] {
        let e = c
            .call(CONSUME, &[("quantity", q.into())], None, deadline())
            .await
            .unwrap_err();
        assert_eq!(api_code(&e), 41);
        assert_eq!(e.class(), ErrorClass::Permanent);
    }
}

/// 201 ids in one confirm: the client refuses, the gateway answers 41.
#[tokio::test]
async fn confirm_of_201_ids_is_refused() {
    let sim = sim().await;
    let c = client(&sim);
    let ids: Vec<u64> = (1..=201).collect();
    let e = c.confirm_chunk(None, &ids, deadline()).await.unwrap_err();
    assert!(matches!(e, TopError::InvalidRequest { .. }));
    let joined = ids.iter().map(u64::to_string).collect::<Vec<_>>().join(",");
    let e = c
        .call(CONFIRM, &[("s_message_ids", joined)], None, deadline())
        .await
        .unwrap_err();
    assert_eq!(api_code(&e), 41);
    // The typed call splits them into chunks of 200 instead.
    let chunks = c.confirm(None, &ids, deadline()).await;
    assert_eq!(chunks.len(), 2);
    assert!(chunks.iter().all(|ch| matches!(ch.result, Ok(true))));
    assert_eq!(sim.state().unknown_confirms, 201);
}

/// An unconfirmed message is hidden for the lease, then redelivered with the same id.
#[tokio::test]
async fn unconfirmed_message_is_redelivered_with_the_same_id() {
    let sim = sim().await;
    let c = client(&sim);
    let ids = sim.publish(None, vec![msg("taobao_trade_TradeChanged")]);
    assert_eq!(ids_of(&c.consume(None, 10, deadline()).await.unwrap()), ids);
    assert!(c.consume(None, 10, deadline()).await.unwrap().is_empty());
    sim.advance(LEASE + Duration::from_secs(1));
    assert_eq!(ids_of(&c.consume(None, 10, deadline()).await.unwrap()), ids);
    let key = ids[0].to_string();
    assert_eq!(sim.state().messages[&key].deliveries, 2);
    assert!(c.confirm_chunk(None, &ids, deadline()).await.unwrap());
    sim.advance(LEASE + Duration::from_secs(1));
    assert!(c.consume(None, 10, deadline()).await.unwrap().is_empty());
    let st = sim.state();
    assert_eq!(
        (st.confirmed, st.deliveries, st.pending, st.inflight),
        (1, 2, 0, 0)
    );
}

/// A message unconfirmed for the retention period is dropped and counted as expired.
#[tokio::test]
async fn unconfirmed_message_expires_after_retention() {
    let sim = sim().await;
    let c = client(&sim);
    let ids = sim.publish(None, vec![msg("taobao_trade_TradeClose")]);
    c.consume(None, 10, deadline()).await.unwrap();
    sim.advance(Duration::from_secs(24 * 60 * 60));
    assert!(c.consume(None, 10, deadline()).await.unwrap().is_empty());
    let st = sim.state();
    assert_eq!(st.expired, 1);
    assert!(st.messages[&ids[0].to_string()].expired);
    // Confirming it now is accepted but counted as unknown.
    assert!(c.confirm_chunk(None, &ids, deadline()).await.unwrap());
    assert_eq!(sim.state().unknown_confirms, 1);
}

/// Four consumers polling one group concurrently never get the same message.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_consumers_get_disjoint_messages() {
    let sim = sim().await;
    let published = sim.generate(None, 2000);
    // A little latency, outside the lock, makes the polls overlap.
    sim.set_faults(faults(
        CONSUME,
        MethodFaults {
            latency: Duration::from_millis(2),
            ..MethodFaults::default()
        },
    ));
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let c = client(&sim);
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::new();
            loop {
                let batch = c.consume(None, 50, deadline()).await.unwrap();
                if batch.is_empty() {
                    return got;
                }
                got.extend(ids_of(&batch));
            }
        }));
    }
    let mut seen = HashSet::new();
    let mut total = 0;
    for t in tasks {
        let got = t.await.unwrap();
        total += got.len();
        seen.extend(got);
    }
    assert_eq!(total, published.len());
    assert_eq!(seen, published.into_iter().collect::<HashSet<_>>());
    assert_eq!(sim.state().deliveries, 2000);
}

/// Ids and user ids above 2^53, up to the largest Java long, come back and confirm with every
/// digit intact.
#[tokio::test]
async fn ids_beyond_2_pow_53_round_trip_exactly() {
    let sim = sim().await;
    let big = [
        (1u64 << 53) + 1,
        7_104_300_007_405_429_232,
        1_172_200_053_212_681_005,
        i64::MAX as u64,
    ];
    let msgs = big
        .iter()
        .map(|&id| NewMessage {
            user_id: id - 1,
            ..msg("taobao_trade_TradeBuyerPay").with_id(id)
        })
        .collect();
    assert_eq!(sim.publish(None, msgs), big);
    for simplify in [true, false] {
        let c = TopClient::new(config(&sim, SignMethod::Hmac, simplify)).unwrap();
        let got = c.consume(None, 10, deadline()).await.unwrap();
        assert_eq!(ids_of(&got), big);
        for m in &got {
            assert_eq!(m.user_id, Some(m.id.unwrap() - 1));
            assert!(m
                .content
                .as_deref()
                .unwrap()
                .contains("4000000000000000001"));
        }
        sim.advance(LEASE);
    }
    let c = client(&sim);
    assert!(c.confirm_chunk(None, &big, deadline()).await.unwrap());
    let st = sim.state();
    assert_eq!((st.confirmed, st.unknown_confirms), (4, 0));
}

/// An id above i64::MAX is no TMC id: it comes back without an id (and why), and the client
/// refuses to put it in a confirm, where it would fail the whole call.
#[tokio::test]
async fn ids_above_a_java_long_are_invalid() {
    let sim = sim().await;
    let above = i64::MAX as u64 + 1;
    sim.publish(None, vec![msg("taobao_trade_TradeBuyerPay").with_id(above)]);
    let c = client(&sim);
    let got = c.consume(None, 10, deadline()).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].id, None);
    assert!(
        got[0]
            .id_problem
            .as_deref()
            .unwrap()
            .contains("largest TMC id"),
        "{:?}",
        got[0].id_problem
    );
    let e = c
        .confirm_chunk(None, &[7_104_300_007_405_429_232, above], deadline())
        .await
        .unwrap_err();
    assert!(matches!(e, TopError::InvalidRequest { .. }), "{e:?}");
    assert_eq!(sim.state().confirm_calls, 0, "nothing was sent");
}

/// HTTP 502 is transient: retried up to the policy, then reported with its status.
#[tokio::test]
async fn bad_gateway_is_transient_and_retried() {
    let sim = sim().await;
    sim.set_faults(faults(
        CONSUME,
        MethodFaults {
            http502_rate: 1.0,
            ..MethodFaults::default()
        },
    ));
    let e = client(&sim)
        .consume(None, 10, deadline())
        .await
        .unwrap_err();
    assert!(matches!(e, TopError::Http { status: 502, .. }), "{e}");
    assert_eq!(e.class(), ErrorClass::Transient);
    let st = sim.state();
    assert_eq!((st.consume_calls, st.faults_injected["http502"]), (3, 3));
}

/// A platform error (isp.* or code 10) is transient and retried.
#[tokio::test]
async fn platform_error_is_transient_and_retried() {
    let sim = sim().await;
    sim.set_faults(faults(
        CONSUME,
        MethodFaults {
            error_rate: 1.0,
            ..MethodFaults::default()
        },
    ));
    let e = client(&sim)
        .consume(None, 10, deadline())
        .await
        .unwrap_err();
    assert!([10, 15].contains(&api_code(&e)), "{e}");
    assert_eq!(e.class(), ErrorClass::Transient);
    assert_eq!(sim.state().consume_calls, 3);
}

/// Truncated JSON is transient; the lost response's messages come back after the lease.
#[tokio::test]
async fn malformed_response_is_transient_and_its_messages_come_back() {
    let sim = sim().await;
    let ids = sim.publish(None, vec![msg("a"), msg("b")]);
    sim.set_faults(faults(
        CONSUME,
        MethodFaults {
            malformed_rate: 1.0,
            ..MethodFaults::default()
        },
    ));
    let e = client_with_attempts(&sim, 1)
        .consume(None, 10, deadline())
        .await
        .unwrap_err();
    assert!(matches!(e, TopError::Decode { status: 200, .. }), "{e}");
    assert_eq!(e.class(), ErrorClass::Transient);
    assert_eq!(sim.state().inflight, 2);
    sim.set_faults(Faults::none());
    let c = client(&sim);
    assert!(c.consume(None, 10, deadline()).await.unwrap().is_empty());
    sim.advance(LEASE);
    assert_eq!(ids_of(&c.consume(None, 10, deadline()).await.unwrap()), ids);
}

/// A dropped connection is a transient transport error and retried.
#[tokio::test]
async fn dropped_connection_is_transient_and_retried() {
    let sim = sim().await;
    sim.set_faults(faults(
        CONSUME,
        MethodFaults {
            reset_rate: 1.0,
            ..MethodFaults::default()
        },
    ));
    let e = client(&sim)
        .consume(None, 10, deadline())
        .await
        .unwrap_err();
    assert!(matches!(e, TopError::Transport { .. }), "{e}");
    assert_eq!(e.class(), ErrorClass::Transient);
    assert_eq!(sim.state().consume_calls, 3);
}

/// With every transient fault at a rate below 1, the client's retries get through.
#[tokio::test]
async fn retries_get_through_transient_faults() {
    let sim = sim().await;
    sim.set_faults(faults(
        "*",
        MethodFaults {
            error_rate: 0.15,
            http502_rate: 0.15,
            malformed_rate: 0.15,
            reset_rate: 0.15,
            ..MethodFaults::default()
        },
    ));
    let c = client_with_attempts(&sim, 30);
    sim.generate(None, 500);
    let mut consumed = 0;
    for _ in 0..20 {
        consumed += c.consume(None, 200, deadline()).await.unwrap().len();
        c.groups_get(None, None, None, deadline()).await.unwrap();
    }
    assert!(consumed > 0);
    let st = sim.state();
    for kind in ["error", "http502", "malformed", "reset"] {
        assert!(
            st.faults_injected.get(kind).copied().unwrap_or(0) > 0,
            "{kind}"
        );
    }
}

/// An injected permission error (11) is fatal and not retried; an `isv.*` refusal under 15 is
/// permanent and not retried; an unknown code is neither retried nor taken for transient.
#[tokio::test]
async fn injected_error_codes_are_classified_and_not_retried() {
    let sim = sim().await;
    let cases = [
        (11, Some("isv.permission-api-package-limit"), "fatal"),
        (15, Some("isv.invalid-parameter"), "permanent"),
        (9999, None, "permanent"),
    ];
    for (code, sub_code, want) in cases {
        let error = InjectedError {
            code,
            msg: None,
            sub_code: sub_code.map(str::to_owned),
            sub_msg: None,
        };
        sim.reset();
        sim.set_faults(faults(
            CONSUME,
            MethodFaults {
                error_rate: 1.0,
                error: Some(error),
                ..MethodFaults::default()
            },
        ));
        let e = client_with_attempts(&sim, 5)
            .consume(None, 10, deadline())
            .await
            .unwrap_err();
        assert_eq!(api_code(&e), code);
        let class = match e.class() {
            ErrorClass::Fatal { .. } => "fatal",
            ErrorClass::Permanent => "permanent",
            other => panic!("code {code}: {other:?}"),
        };
        assert_eq!((code, class), (code, want));
        assert_eq!(sim.state().consume_calls, 1, "code {code} was retried");
    }
}

/// Retries of a transient error stop at the caller's deadline, however many attempts the
/// policy would still allow.
#[tokio::test]
async fn retries_stop_at_the_deadline() {
    let sim = sim().await;
    sim.set_faults(faults(
        CONSUME,
        MethodFaults {
            http502_rate: 1.0,
            ..MethodFaults::default()
        },
    ));
    let mut cfg = config(&sim, SignMethod::HmacSha256, true);
    cfg.retry = RetryPolicy {
        max_attempts: 50,
        base: Duration::from_millis(200),
        cap: Duration::from_millis(200),
    };
    let client = TopClient::new(cfg).unwrap();
    let e = client
        .consume(None, 10, Instant::now() + Duration::from_millis(500))
        .await
        .unwrap_err();
    assert_eq!(e.class(), ErrorClass::Transient);
    // The policy allowed 50 attempts (10 s of pauses): stopping well short of them is the
    // deadline at work.
    let calls = sim.state().consume_calls;
    assert!((1..50).contains(&calls), "{calls} calls");
}

/// A call-limit ban is classified with the gateway's ban length and not retried.
#[tokio::test]
async fn ban_is_rate_limited_and_not_retried() {
    let sim = sim().await;
    sim.set_faults(faults(
        CONSUME,
        MethodFaults {
            ban_rate: 1.0,
            ban_secs: 31,
            ..MethodFaults::default()
        },
    ));
    let e = client(&sim)
        .consume(None, 10, deadline())
        .await
        .unwrap_err();
    assert_eq!(api_code(&e), 7);
    assert_eq!(
        e.class(),
        ErrorClass::RateLimited {
            ban: Duration::from_secs(31)
        }
    );
    assert_eq!(sim.state().consume_calls, 1);
    // The ban holds on the simulator's clock, then lifts.
    sim.set_faults(Faults::none());
    sim.advance(Duration::from_secs(31));
    assert!(client(&sim).consume(None, 10, deadline()).await.is_ok());
}

/// confirm answering is_success=false is Ok(false), and nothing is confirmed.
#[tokio::test]
async fn confirm_false_is_ok_false_and_not_applied() {
    let sim = sim().await;
    let c = client(&sim);
    let ids = sim.publish(None, vec![msg("a")]);
    c.consume(None, 10, deadline()).await.unwrap();
    sim.set_faults(faults(
        CONFIRM,
        MethodFaults {
            confirm_false_rate: 1.0,
            ..MethodFaults::default()
        },
    ));
    assert!(!c.confirm_chunk(None, &ids, deadline()).await.unwrap());
    let st = sim.state();
    assert_eq!((st.confirmed, st.inflight), (0, 1));
    assert_eq!(st.faults_injected["confirm_false"], 1);
}

/// Latency past the client's request timeout is a timeout, after the messages were leased.
#[tokio::test]
async fn latency_beyond_the_timeout_is_a_transport_timeout() {
    let sim = sim().await;
    sim.publish(None, vec![msg("a")]);
    sim.set_faults(faults(
        CONSUME,
        MethodFaults {
            latency: Duration::from_millis(400),
            ..MethodFaults::default()
        },
    ));
    let mut cfg = config(&sim, SignMethod::Md5, true);
    cfg.request_timeout = Duration::from_millis(100);
    cfg.retry = fast_retry(1);
    let e = TopClient::new(cfg)
        .unwrap()
        .consume(None, 10, deadline())
        .await
        .unwrap_err();
    assert!(
        matches!(e, TopError::Transport { timeout: true, .. }),
        "{e}"
    );
    assert_eq!(sim.state().inflight, 1);
}

/// Scripted answers replace the next calls in order; then normal handling resumes.
#[tokio::test]
async fn scripted_answers_replace_the_next_calls() {
    let sim = sim().await;
    let ids = sim.publish(None, vec![msg("a")]);
    sim.script(
        CONSUME,
        vec![
            Scripted {
                status: 503,
                body: "<html>busy</html>".into(),
                content_type: Some("text/html".into()),
                reset_connection: false,
            },
            Scripted::reset(),
        ],
    );
    let got = client(&sim).consume(None, 10, deadline()).await.unwrap();
    assert_eq!(ids_of(&got), ids);
    let st = sim.state();
    assert_eq!((st.consume_calls, st.faults_injected["scripted"]), (3, 2));
}

/// reset() clears messages, faults and counters.
#[tokio::test]
async fn reset_clears_everything() {
    let sim = sim().await;
    sim.generate(None, 10);
    sim.create_group("g1");
    sim.set_faults(faults(
        "*",
        MethodFaults {
            error_rate: 1.0,
            ..MethodFaults::default()
        },
    ));
    sim.reset();
    let c = client(&sim);
    assert!(c.consume(None, 10, deadline()).await.unwrap().is_empty());
    let st = sim.state();
    assert_eq!((st.published, st.consume_calls), (0, 1));
    assert_eq!(st.groups, ["default"]);
    assert!(st.messages.is_empty());
}

/// Parameter values with every awkward character sign and verify over real HTTP.
#[tokio::test]
async fn awkward_values_sign_and_verify_over_http() {
    let sim = sim().await;
    let values = [
        "商家测试帐号17",
        "a b&c=d+e%20f",
        "100%",
        "+",
        "=&=&",
        " leading and trailing ",
        "emoji 😀 and é",
        "line\nbreak",
    ];
    for m in SignMethod::ALL {
        for simplify in [true, false] {
            let c = TopClient::new(config(&sim, m, simplify)).unwrap();
            for v in values {
                let r = c
                    .call(
                        "taobao.tmc.groups.get",
                        &[("x_note", v.to_owned()), ("Zed", v.to_owned())],
                        Some(&Secret::new(format!("sess-{v}"))),
                        deadline(),
                    )
                    .await;
                assert!(r.is_ok(), "{m} {v:?}: {r:?}");
            }
        }
    }
    assert!(sim.state().rejected.is_empty());
}

/// Business parameter names that are not system parameters.
fn business_name() -> impl Strategy<Value = String> {
    "[A-Za-z][A-Za-z0-9_.]{0,11}".prop_filter("not a system parameter", |n| {
        ![
            "method",
            "app_key",
            "timestamp",
            "format",
            "v",
            "sign",
            "sign_method",
            "session",
            "simplify",
            "partner_id",
            "target_app_key",
        ]
        .contains(&n.as_str())
    })
}

/// Values full of what breaks naive encoders: Chinese, spaces, `&`, `=`, `+`, `%`, emoji.
fn awkward_value() -> impl Strategy<Value = String> {
    prop_oneof!["[ &=+%a-z0-9中文商家测试帐号😀]{0,12}", "\\PC{0,12}",]
}

/// Secrets with multi-byte and reserved characters. Building a client costs ~30 ms in a debug
/// build, so the property draws from these few and reuses one client per combination.
const SECRETS: [&str; 4] = ["sim-secret", "商家密钥-17", "a b&c=d+e%f", "😀é\u{7f}"];

thread_local! {
    static CLIENTS: std::cell::RefCell<std::collections::HashMap<(usize, SignMethod, bool), TopClient>> =
        Default::default();
}

fn cached_client(secret: usize, m: SignMethod, simplify: bool) -> TopClient {
    CLIENTS.with(|c| {
        c.borrow_mut()
            .entry((secret, m, simplify))
            .or_insert_with(|| {
                let mut top = TopConfig::new(
                    Url::parse("http://127.0.0.1:9/router/rest").unwrap(),
                    "sim-app",
                    Secret::new(SECRETS[secret]),
                );
                top.sign_method = m;
                top.simplify = simplify;
                TopClient::new(top).unwrap()
            })
            .clone()
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Whatever the client signs, the gateway verifies, for all three methods; and any change
    /// to a signed value is caught.
    #[test]
    fn client_signatures_verify_in_the_gateway(
        business in prop::collection::btree_map(business_name(), awkward_value(), 0..8),
        secret in 0..SECRETS.len(),
        session in prop::option::of("\\PC{1,10}"),
        simplify in any::<bool>(),
    ) {
        let cfg = SimConfig { app_secret: SECRETS[secret].to_owned(), ..SimConfig::default() };
        let business: Vec<(&str, String)> =
            business.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
        let session = session.map(Secret::new);
        for m in SignMethod::ALL {
            let client = cached_client(secret, m, simplify);
            let now = SystemTime::now();
            let (url, body) = client.build("taobao.tmc.groups.get", &business, session.as_ref(), now);
            let params = RequestParams::parse(url.query(), Some(body.as_bytes())).unwrap();
            let verified = verify_request(&params, &cfg, now);
            prop_assert!(verified.is_ok(), "{m}: {verified:?}");
            prop_assert_eq!(verified.unwrap().sign_method.wire_name(), m.as_str());
            for (k, v) in &business {
                let want = if v.is_empty() { None } else { Some(v.as_str()) };
                prop_assert_eq!(params.get(k), want);
            }
            // Tamper with one sent value: the signature no longer matches.
            if let Some((k, v)) = business.iter().find(|(_, v)| !v.is_empty()) {
                let tampered = RequestParams::from_pairs(params.pairs().iter().map(|(n, x)| {
                    if n == k { (n.clone(), format!("{v}x")) } else { (n.clone(), x.clone()) }
                }));
                let e = verify_request(&tampered, &cfg, now).unwrap_err();
                prop_assert_eq!(e.code, 25);
            }
        }
    }
}

/// With 100,000 messages queued, consumes of 200 hand out the oldest first, each once. (How
/// fast they stay is measured by `make bench`, not here.)
#[tokio::test]
async fn deep_queue_consume_hands_out_in_order() {
    let sim = sim().await;
    let ids = sim.publish(None, (0..100_000).map(|_| msg("a")).collect());
    let c = client(&sim);
    let mut got = Vec::new();
    for _ in 0..20 {
        let batch = c.consume(None, 200, deadline()).await.unwrap();
        assert_eq!(batch.len(), 200);
        got.extend(batch.iter().map(|m| m.id.unwrap()));
    }
    assert_eq!(got, ids[..4000]);
}

/// Parameters are accepted in the query, in the form body, or split between them, and GET
/// works; a body that is not form-encoded is not read.
#[tokio::test]
async fn parameters_in_query_body_or_both_are_accepted() {
    let sim = sim().await;
    let c = client(&sim);
    let http = reqwest::Client::new();
    let (url, body) = c.build(
        "taobao.tmc.groups.get",
        &[("group_names", "default,其他".to_owned())],
        None,
        SystemTime::now(),
    );
    let all: String = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(url.query_pairs())
        .extend_pairs(form_urlencoded::parse(body.as_bytes()))
        .finish();
    let mut bare = url.clone();
    bare.set_query(None);
    let mut everything_in_query = url.clone();
    everything_in_query.set_query(Some(&all));
    let form = "application/x-www-form-urlencoded;charset=utf-8";
    let requests = [
        http.post(url.clone())
            .header("Content-Type", form)
            .body(body.clone()),
        http.post(bare.clone())
            .header("Content-Type", form)
            .body(all.clone()),
        http.get(everything_in_query),
    ];
    for r in requests {
        let text = r.send().await.unwrap().text().await.unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["groups"][0]["name"], "default", "{text}");
    }
    let text = http
        .post(bare)
        .header("Content-Type", "application/json")
        .body(all)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains("\"code\":21"), "{text}");
}
