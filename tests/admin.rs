//! The admin commands of `tmc-relay` (permit, user, groups, backlog, jms) against the simulator:
//! what each prints as text and with `--json`, and errors that name their cause.

mod support;

use std::collections::HashMap;
use std::process::Output;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::time::Instant;
use url::Url;

use support::{sim, APP_KEY, SECRET};
use tmc_relay::top::api::{GROUPS_GET, JMS_USER_ADD, USER_PERMIT};
use tmc_relay::top::{Secret, TopClient, TopConfig};
use tmc_sim::{Faults, InjectedError, MethodFaults, NewMessage, SimServer};

/// The simulator reads `sess-<nick>` as the session of seller `<nick>`.
const SESSION: &str = "sess-shopA";
const NICK: &str = "shopA";
const TOPICS: &str = "taobao_trade_TradeCreate,taobao_refund_RefundCreated";

fn vars(sim: &SimServer) -> HashMap<String, String> {
    HashMap::from([
        ("TOP_APP_KEY".into(), APP_KEY.into()),
        ("TOP_APP_SECRET".into(), SECRET.into()),
        ("TOP_ENDPOINT".into(), sim.gateway_url()),
        ("AWS_REGION".into(), "us-east-1".into()),
        ("AWS_ACCESS_KEY_ID".into(), "test".into()),
        ("AWS_SECRET_ACCESS_KEY".into(), "test".into()),
        ("AWS_EC2_METADATA_DISABLED".into(), "true".into()),
    ])
}

/// Runs `tmc-relay` with the test app's variables, `extra` on top (an empty value removes one).
async fn admin(sim: &SimServer, extra: &[(&str, &str)], args: &[&str]) -> Output {
    let mut env = vars(sim);
    for (k, v) in extra {
        if v.is_empty() {
            env.remove(*k);
        } else {
            env.insert((*k).into(), (*v).into());
        }
    }
    let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_tmc-relay"))
        .env_clear()
        .envs(env)
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .args(args)
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("tmc-relay exited within 30 s")
        .unwrap()
}

/// Stdout of a successful run.
fn text(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn json_of(out: &Output) -> Value {
    serde_json::from_str(&text(out)).expect("stdout is JSON")
}

/// Stderr of a failed run (exit code 2: nothing was done).
fn failure(out: &Output) -> String {
    assert_eq!(
        out.status.code(),
        Some(2),
        "stdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn client(sim: &SimServer) -> TopClient {
    TopClient::new(TopConfig::new(
        Url::parse(&sim.gateway_url()).unwrap(),
        APP_KEY,
        Secret::new(SECRET),
    ))
    .unwrap()
}

fn soon() -> Instant {
    Instant::now() + Duration::from_secs(10)
}

fn topics() -> Vec<String> {
    TOPICS.split(',').map(str::to_owned).collect()
}

async fn subscribe(sim: &SimServer) {
    assert!(client(sim)
        .user_permit(&Secret::new(SESSION), Some(&topics()), soon())
        .await
        .unwrap());
}

fn calls(sim: &SimServer, method: &str) -> u64 {
    sim.state().calls.get(method).copied().unwrap_or(0)
}

/// `permit` subscribes the session's seller to the given topics and says so, as text and JSON.
/// The timestamp is GMT+8 whatever the process's zone: the gateway refuses a clock more than
/// 10 minutes off with 31, so a client formatting local time fails in every zone but one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_calls_are_accepted_from_any_host_time_zone() {
    let sim = sim(Duration::from_secs(300)).await;
    for tz in [
        "UTC",
        "America/New_York",
        "Asia/Kolkata",
        "Pacific/Kiritimati",
    ] {
        let out = admin(&sim, &[("TZ", tz)], &["--json", "groups", "list"]).await;
        let v = json_of(&out);
        assert!(v["groups"].is_array(), "TZ={tz}: {v}");
    }
    let rejected = sim.state().rejected;
    assert!(rejected.is_empty(), "{rejected:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permit_subscribes_the_sessions_seller() {
    let sim = sim(Duration::from_secs(300)).await;
    let session = [("TOP_SESSION", SESSION)];
    let out = admin(&sim, &session, &["permit", "--topics", TOPICS]).await;
    assert_eq!(text(&out), "permitted: yes\n");
    let out = admin(&sim, &session, &["permit", "--json"]).await;
    assert_eq!(json_of(&out), json!({"is_success": true}));
    let user = client(&sim).user_get(NICK, None, soon()).await.unwrap();
    assert!(!user.unwrap().topics.is_empty());
    assert_eq!(calls(&sim, USER_PERMIT), 2);
}

/// `user get` shows a subscription, or says the seller is not subscribed (`null` in JSON).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_get_shows_a_subscription_or_its_absence() {
    let sim = sim(Duration::from_secs(300)).await;
    subscribe(&sim).await;
    let out = admin(&sim, &[], &["user", "get", "--nick", NICK]).await;
    assert_eq!(
        text(&out),
        format!("{NICK}: topics {TOPICS}; valid yes; group default; platform tbUIC\n")
    );
    let v = json_of(&admin(&sim, &[], &["--json", "user", "get", "--nick", NICK]).await);
    assert_eq!(v["user_nick"], NICK);
    assert_eq!(v["topics"], json!(topics()));
    assert_eq!(
        (&v["is_valid"], &v["group_name"]),
        (&json!(true), &json!("default"))
    );
    let out = admin(&sim, &[], &["user", "get", "--nick", "nobody"]).await;
    assert_eq!(text(&out), "nobody: not subscribed\n");
    let out = admin(&sim, &[], &["--json", "user", "get", "--nick", "nobody"]).await;
    assert_eq!(json_of(&out), Value::Null);
}

/// `user cancel` removes a subscription; a second cancel says there is no such user.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_cancel_removes_a_subscription() {
    let sim = sim(Duration::from_secs(300)).await;
    subscribe(&sim).await;
    let out = admin(&sim, &[], &["user", "cancel", "--nick", NICK]).await;
    assert_eq!(text(&out), format!("{NICK}: cancelled\n"));
    let out = admin(&sim, &[], &["user", "cancel", "--nick", NICK]).await;
    assert_eq!(text(&out), format!("{NICK}: no such user\n"));
    subscribe(&sim).await;
    let out = admin(
        &sim,
        &[],
        &[
            "user",
            "cancel",
            "--nick",
            NICK,
            "--json",
            "--platform",
            "tbUIC",
        ],
    )
    .await;
    assert_eq!(json_of(&out), json!({"is_success": true}));
    assert!(client(&sim)
        .user_get(NICK, None, soon())
        .await
        .unwrap()
        .is_none());
}

/// `groups add` creates a group and prints when.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_add_creates_a_group() {
    let sim = sim(Duration::from_secs(300)).await;
    let out = admin(
        &sim,
        &[],
        &["groups", "add", "--name", "vip", "--nicks", NICK],
    )
    .await;
    let line = text(&out);
    assert!(line.starts_with("group vip created 20"), "{line}");
    let v = json_of(
        &admin(
            &sim,
            &[],
            &[
                "--json", "groups", "add", "--name", "bulk", "--nicks", "a,b",
            ],
        )
        .await,
    );
    assert_eq!(v["group_name"], "bulk");
    assert!(v["created"].as_str().unwrap().starts_with("20"), "{v}");
    let mut groups = sim.state().groups;
    groups.sort();
    assert_eq!(groups, ["bulk", "default", "vip"]);
}

/// `groups list` prints one group per line; JSON has the names and the total.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_list_lists_the_groups() {
    let sim = sim(Duration::from_secs(300)).await;
    sim.create_group("vip");
    let out = admin(&sim, &[], &["groups", "list"]).await;
    let mut lines: Vec<String> = text(&out).lines().map(str::to_owned).collect();
    lines.sort();
    assert_eq!(lines, ["default", "vip"]);
    let v = json_of(&admin(&sim, &[], &["--json", "groups", "list", "--page-size", "1"]).await);
    assert_eq!(v["groups"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v["total_results"], 2);
    assert_eq!(calls(&sim, GROUPS_GET), 2);
}

/// `groups delete` removes a group, as text and JSON.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_delete_removes_a_group() {
    let sim = sim(Duration::from_secs(300)).await;
    sim.create_group("vip");
    sim.create_group("bulk");
    let out = admin(&sim, &[], &["groups", "delete", "--name", "vip"]).await;
    assert_eq!(text(&out), "group vip deleted: yes\n");
    let out = admin(&sim, &[], &["--json", "groups", "delete", "--name", "bulk"]).await;
    assert_eq!(json_of(&out), json!({"is_success": true}));
    assert_eq!(sim.state().groups, ["default"]);
}

/// `backlog` shows a group's queue figures; the default group unless `--group` says otherwise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backlog_reports_the_groups_queue() {
    let sim = sim(Duration::from_secs(300)).await;
    sim.publish(
        None,
        (0..3)
            .map(|i| NewMessage::new("taobao_trade_TradeCreate", i.to_string()))
            .collect(),
    );
    sim.publish(
        Some("vip"),
        vec![NewMessage::new("taobao_trade_TradeCreate", "v")],
    );
    let out = admin(&sim, &[], &["backlog"]).await;
    assert_eq!(
        text(&out),
        "default (sim-broker-0): put today 3, read today 0\n"
    );
    let out = admin(&sim, &[], &["--json", "backlog", "--group", "vip"]).await;
    assert_eq!(
        json_of(&out),
        json!([{"name": "vip", "broker_name": "sim-broker-0", "get_total": 0, "put_total": 1}])
    );
}

/// `jms add` adds the session's seller to Jushita MQ sync, as text and JSON.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jms_add_adds_the_sessions_seller() {
    let sim = sim(Duration::from_secs(300)).await;
    let session = [("TOP_SESSION", SESSION)];
    let out = admin(&sim, &session, &["jms", "add", "--topics", TOPICS]).await;
    assert_eq!(text(&out), "added: yes\n");
    let out = admin(&sim, &session, &["--json", "jms", "add"]).await;
    assert_eq!(json_of(&out), json!({"is_success": true}));
    assert_eq!(calls(&sim, JMS_USER_ADD), 2);
    assert!(client(&sim)
        .jms_user_get(NICK, soon())
        .await
        .unwrap()
        .is_some());
}

/// `jms get` shows a sync user's topics, or says the seller is not one (`null` in JSON).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jms_get_shows_a_sync_user_or_its_absence() {
    let sim = sim(Duration::from_secs(300)).await;
    assert!(client(&sim)
        .jms_user_add(&Secret::new(SESSION), &topics(), soon())
        .await
        .unwrap());
    let out = admin(&sim, &[], &["jms", "get", "--nick", NICK]).await;
    assert_eq!(text(&out), format!("{NICK}: topics {TOPICS}\n"));
    let v = json_of(&admin(&sim, &[], &["--json", "jms", "get", "--nick", NICK]).await);
    assert_eq!(
        (&v["user_nick"], &v["topic_names"]),
        (&json!(NICK), &json!(topics()))
    );
    let out = admin(&sim, &[], &["jms", "get", "--nick", "nobody"]).await;
    assert_eq!(text(&out), "nobody: not a Jushita MQ sync user\n");
    let out = admin(&sim, &[], &["--json", "jms", "get", "--nick", "nobody"]).await;
    assert_eq!(json_of(&out), Value::Null);
}

/// `jms delete` removes a sync user; deleting one that does not exist says no.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jms_delete_removes_a_sync_user() {
    let sim = sim(Duration::from_secs(300)).await;
    assert!(client(&sim)
        .jms_user_add(&Secret::new(SESSION), &topics(), soon())
        .await
        .unwrap());
    let out = admin(&sim, &[], &["jms", "delete", "--nick", NICK]).await;
    assert_eq!(text(&out), "deleted: yes\n");
    let out = admin(&sim, &[], &["--json", "jms", "delete", "--nick", NICK]).await;
    assert_eq!(json_of(&out), json!({"is_success": false}));
}

/// The commands that need a seller session refuse to run without one (no `TOP_SESSION`, an empty
/// one, an empty `--session`), saying a session is needed, and call nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_session_says_session_and_calls_nothing() {
    let sim = sim(Duration::from_secs(300)).await;
    for command in [vec!["permit"], vec!["jms", "add"]] {
        for (extra, flags) in [
            (vec![], vec![]),
            (vec![("TOP_SESSION", "")], vec![]),
            (vec![], vec!["--session", ""]),
        ] {
            let mut args = command.clone();
            args.extend(flags.iter().copied());
            let out = admin(&sim, &extra, &args).await;
            assert!(!out.status.success(), "{args:?} {extra:?} succeeded");
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(err.contains("session"), "{args:?} {extra:?}: {err}");
        }
    }
    assert!(sim.state().calls.is_empty(), "{:?}", sim.state().calls);
}

/// A session the platform refuses (revoked, error 27) says to check the session key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_session_says_check_the_session() {
    let sim = sim(Duration::from_secs(300)).await;
    let revoked = [("TOP_SESSION", tmc_sim::INVALID_SESSION)];
    for args in [vec!["permit"], vec!["jms", "add"]] {
        let err = failure(&admin(&sim, &revoked, &args).await);
        assert!(
            err.contains("TOP error 27") && err.contains("Check the seller's session key"),
            "{args:?}: {err}"
        );
    }
}

/// A permission refusal (error 11, e.g. the app lacks the API package or the IP whitelist)
/// says to check the app's permissions on the TOP console.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_permission_says_check_the_apps_permissions() {
    let sim = sim(Duration::from_secs(300)).await;
    sim.set_faults(Faults::none().with(
        "*",
        MethodFaults {
            error_rate: 1.0,
            error: Some(InjectedError {
                code: 11,
                msg: Some("Insufficient isv permissions".into()),
                sub_code: Some("isv.permission-api-package-limit".into()),
                sub_msg: None,
            }),
            ..MethodFaults::default()
        },
    ));
    for args in [vec!["groups", "list"], vec!["--json", "backlog"]] {
        let err = failure(&admin(&sim, &[], &args).await);
        assert!(
            err.contains("TOP error 11") && err.contains("Check the app's API permissions"),
            "{args:?}: {err}"
        );
    }
}

/// With a wrong app secret every command fails with error 25 and says to check TOP_APP_SECRET.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_secret_says_check_top_app_secret_for_every_command() {
    let sim = sim(Duration::from_secs(300)).await;
    let wrong = [
        ("TOP_APP_SECRET", "not-the-secret"),
        ("TOP_SESSION", SESSION),
    ];
    for args in [
        vec!["permit"],
        vec!["user", "get", "--nick", NICK],
        vec!["user", "cancel", "--nick", NICK],
        vec!["groups", "list"],
        vec!["groups", "add", "--name", "vip", "--nicks", NICK],
        vec!["groups", "delete", "--name", "vip"],
        vec!["backlog"],
        vec!["jms", "add"],
        vec!["jms", "get", "--nick", NICK],
        vec!["--json", "jms", "delete", "--nick", NICK],
    ] {
        let err = failure(&admin(&sim, &wrong, &args).await);
        assert!(
            err.contains("TOP error 25") && err.contains("Check TOP_APP_SECRET"),
            "{args:?}: {err}"
        );
    }
    assert!(sim.state().calls.is_empty());
}

/// A bad or missing configuration value is named before any call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_configuration_names_the_variable() {
    let sim = sim(Duration::from_secs(300)).await;
    for (var, value, named) in [
        ("TOP_ENDPOINT", "gateway", "TOP_ENDPOINT"),
        ("TOP_SIGN_METHOD", "sha1", "TOP_SIGN_METHOD"),
        ("TOP_APP_KEY", "", "TOP_APP_KEY"),
        ("TOP_APP_SECRET", "", "TOP_APP_SECRET"),
    ] {
        let err = failure(&admin(&sim, &[(var, value)], &["groups", "list"]).await);
        assert!(err.contains(named), "{var}={value:?}: {err}");
    }
    assert_eq!(sim.state().calls.len(), 0);
}
