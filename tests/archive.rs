//! The archive on a real wire protocol (moto's S3, SQS and DynamoDB): every confirmed message
//! is in the archive's objects; and through a storm of S3 errors on the archive writes, the
//! batches are deferred (in SQS and recorded, nothing confirmed), then archived and confirmed
//! by their redelivery, with no message lost and none enqueued twice.

mod support;

use std::collections::{HashMap, HashSet};
use std::io::Read as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::Response;
use support::{sim, Env};
use tmc_relay::invocation::Overrides;
use tmc_relay::relay::RelaySettings;

/// A proxy in front of moto that answers S3 `PutObject` with 503 SlowDown while `storm` is on.
struct Proxy {
    upstream: String,
    http: reqwest::Client,
    storm: AtomicBool,
    refused: AtomicU64,
}

async fn forward(
    State(p): State<Arc<Proxy>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    // Path-style S3 writes are PUTs; SQS and DynamoDB are POSTs to `/`.
    if method == Method::PUT && p.storm.load(Ordering::SeqCst) {
        p.refused.fetch_add(1, Ordering::SeqCst);
        let xml = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>SlowDown</Code>\
                   <Message>Please reduce your request rate.</Message></Error>";
        return Response::builder()
            .status(StatusCode::SERVICE_UNAVAILABLE)
            .header("content-type", "application/xml")
            .body(Body::from(xml))
            .unwrap();
    }
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let mut req = p
        .http
        .request(method, format!("{}{path}", p.upstream))
        .body(body);
    for (name, value) in &headers {
        if name != "host" && name != "content-length" {
            req = req.header(name, value);
        }
    }
    let answer = req.send().await.expect("moto answers");
    let mut out = Response::builder().status(answer.status().as_u16());
    for (name, value) in answer.headers() {
        if name != "content-length" && name != "transfer-encoding" {
            out = out.header(name.as_str(), value.as_bytes());
        }
    }
    out.body(Body::from(answer.bytes().await.unwrap())).unwrap()
}

async fn start_proxy(upstream: &str) -> (Arc<Proxy>, String) {
    let proxy = Arc::new(Proxy {
        upstream: upstream.trim_end_matches('/').to_owned(),
        http: reqwest::Client::new(),
        storm: AtomicBool::new(false),
        refused: AtomicU64::new(0),
    });
    let app = axum::Router::new()
        .fallback(forward)
        .with_state(proxy.clone());
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (proxy, url)
}

/// A fresh bucket on moto.
async fn bucket(env: &Env) -> (aws_sdk_s3::Client, String) {
    let conf = aws_sdk_s3::config::Builder::from(&env.sdk)
        .force_path_style(true)
        .build();
    let s3 = aws_sdk_s3::Client::from_conf(conf);
    let name = support::unique("archive")
        .to_ascii_lowercase()
        .replace('_', "-");
    s3.create_bucket().bucket(&name).send().await.unwrap();
    (s3, name)
}

/// Every id in the archive's objects, with how many objects hold it.
async fn archived(s3: &aws_sdk_s3::Client, bucket: &str) -> HashMap<String, u32> {
    let listed = s3
        .list_objects_v2()
        .bucket(bucket)
        .prefix("tmc/")
        .send()
        .await
        .unwrap();
    let mut ids = HashMap::new();
    for obj in listed.contents() {
        let key = obj.key().unwrap();
        assert!(
            key.starts_with("tmc/dt=") && key.contains("/hour=") && key.ends_with(".jsonl.gz"),
            "{key}"
        );
        let got = s3
            .get_object()
            .bucket(bucket)
            .key(key)
            .send()
            .await
            .unwrap();
        let bytes = got.body.collect().await.unwrap().into_bytes();
        let mut text = String::new();
        flate2::read::GzDecoder::new(&bytes[..])
            .read_to_string(&mut text)
            .unwrap();
        for line in text.lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let id = v["id"].as_str().expect("ids are strings").to_owned();
            *ids.entry(id).or_insert(0) += 1;
        }
    }
    ids
}

fn run(max_seconds: u64) -> Overrides {
    Overrides {
        max_seconds: Some(max_seconds),
        ..Overrides::default()
    }
}

/// With the archive on, every confirmed message is in the archive, with its exact id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_confirmed_message_is_in_the_archive() {
    let env = Env::new(false).await;
    let (s3, name) = bucket(&env).await;
    let sim = sim(Duration::from_secs(60)).await;
    let ids: HashSet<String> = sim.generate(None, 450).iter().map(u64::to_string).collect();
    let url = format!("s3://{name}/tmc/");
    let app = env
        .app_via(
            &sim.gateway_url(),
            &env.endpoint,
            &[("ARCHIVE_URL", url.as_str())],
            RelaySettings::default(),
        )
        .await;
    let report = app.run(&run(120), None, Default::default()).await;
    assert_eq!(
        (report.counts.confirmed, report.counts.archive_failed),
        (450, 0),
        "{report:?}"
    );
    let archived = archived(&s3, &name).await;
    let missing: Vec<&String> = ids.iter().filter(|i| !archived.contains_key(*i)).collect();
    assert!(
        missing.is_empty(),
        "confirmed but not archived: {missing:?}"
    );
    assert_eq!(archived.len(), 450);
    // The archive's size per message, for the cost figures (docs/performance.md).
    let listed = s3.list_objects_v2().bucket(&name).send().await.unwrap();
    let (objects, bytes) = listed
        .contents()
        .iter()
        .fold((0, 0), |(n, b), o| (n + 1, b + o.size().unwrap_or(0)));
    eprintln!(
        "archive: {objects} objects, {bytes} bytes for 450 messages: {:.0} bytes per message",
        bytes as f64 / 450.0
    );
    assert_eq!(env.drain(&env.queue_url).await.len(), 450);
}

/// A storm of S3 503s on every archive write for a whole pass: nothing of it is confirmed
/// (its messages are in SQS and recorded); once S3 answers again, the redelivery is archived
/// and confirmed without a second enqueue. Nothing lost, nothing copied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_s3_storm_defers_the_batches_and_loses_nothing() {
    let env = Env::new(false).await;
    let (s3, name) = bucket(&env).await;
    let (proxy, via) = start_proxy(&env.endpoint).await;
    let sim = sim(Duration::from_secs(3)).await;
    let ids: HashSet<String> = sim.generate(None, 300).iter().map(u64::to_string).collect();
    let url = format!("s3://{name}/tmc/");
    let app = env
        .app_via(
            &sim.gateway_url(),
            &via,
            &[("ARCHIVE_URL", url.as_str())],
            RelaySettings::default(),
        )
        .await;

    proxy.storm.store(true, Ordering::SeqCst);
    let stormy = app.run(&run(15), None, Default::default()).await;
    assert!(proxy.refused.load(Ordering::SeqCst) > 0);
    assert_eq!(stormy.counts.confirmed, 0, "{stormy:?}");
    assert!(stormy.counts.archive_failed > 0, "{stormy:?}");
    assert_eq!(sim.state().confirmed, 0);

    proxy.storm.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(4)).await; // the simulator's lease: redelivery
    let calm = app.run(&run(120), None, Default::default()).await;
    assert_eq!(calm.counts.archive_failed, 0, "{calm:?}");
    assert_eq!(sim.state().confirmed, 300, "{calm:?}");

    let archived = archived(&s3, &name).await;
    let missing: Vec<&String> = ids.iter().filter(|i| !archived.contains_key(*i)).collect();
    assert!(
        missing.is_empty(),
        "confirmed but not archived: {missing:?}"
    );
    let relayed = env.drain(&env.queue_url).await;
    let mut seen = HashSet::new();
    for m in &relayed {
        assert!(seen.insert(m.id()), "{} enqueued twice", m.id());
    }
    assert_eq!(seen, ids, "every message in SQS once");
}

/// The recovery: messages relayed and confirmed, then deleted from SQS by a consumer;
/// a replay of the time range restores them into a fresh queue, each exactly once, rebuilt as
/// the relay built them and marked as replayed. A dry run first sends nothing; the command
/// line's dry run says the same and exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_restores_deleted_messages_into_a_fresh_queue_exactly_once() {
    use tmc_relay::config::ReplayEnv;
    use tmc_relay::replay::{self, Options, Progress, Selection, REPLAYED_AT};

    let env = Env::new(false).await;
    let (_s3, name) = bucket(&env).await;
    let sim = sim(Duration::from_secs(60)).await;
    let before = time::OffsetDateTime::now_utc() - time::Duration::seconds(5);
    let ids: HashSet<String> = sim.generate(None, 240).iter().map(u64::to_string).collect();
    let url = format!("s3://{name}/tmc/");
    let app = env
        .app_via(
            &sim.gateway_url(),
            &env.endpoint,
            &[("ARCHIVE_URL", url.as_str())],
            RelaySettings::default(),
        )
        .await;
    let report = app.run(&run(120), None, Default::default()).await;
    assert_eq!(report.counts.confirmed, 240, "{report:?}");
    // A consumer read and deleted them all: SQS forgot them, TMC too.
    let originals: HashMap<String, String> = env
        .drain(&env.queue_url)
        .await
        .into_iter()
        .map(|m| (m.id(), m.body))
        .collect();
    assert_eq!(originals.len(), 240);
    let after = time::OffsetDateTime::now_utc() + time::Duration::seconds(5);

    let fresh = env
        .sqs
        .create_queue()
        .queue_name(support::unique("replayed"))
        .send()
        .await
        .unwrap()
        .queue_url()
        .unwrap()
        .to_owned();
    let vars: HashMap<String, String> = env.vars(&sim.gateway_url());
    let renv =
        ReplayEnv::from_lookup(&|k: &str| vars.get(k).cloned(), Some(&url), Some(&fresh)).unwrap();
    let (reader, queue) = tmc_relay::wiring::replay(&renv, &env.sdk);
    let sel = Selection {
        since: Some(before),
        until: Some(after),
        ..Selection::default()
    };
    let opts = |dry_run| Options {
        dry_run,
        rate: 1000,
        fifo_group_by: renv.fifo_group_by,
    };
    let dry = replay::replay(
        &reader,
        &renv.archive,
        &queue,
        &sel,
        &opts(true),
        &Progress::default(),
    )
    .await
    .unwrap();
    assert_eq!((dry.unique, dry.sent), (240, 0), "{dry:?}");
    assert_eq!(env.depth(&fresh).await, 0);

    let done = replay::replay(
        &reader,
        &renv.archive,
        &queue,
        &sel,
        &opts(false),
        &Progress::default(),
    )
    .await
    .unwrap();
    assert_eq!((done.unique, done.sent), (240, 240), "{done:?}");
    assert!(
        done.failed.is_empty() && done.unsendable.is_empty(),
        "{done:?}"
    );
    let replayed = env.drain(&fresh).await;
    let mut seen = HashSet::new();
    for m in &replayed {
        assert!(seen.insert(m.id()), "{} replayed twice", m.id());
        assert_eq!(
            m.body,
            originals[&m.id()],
            "rebuilt exactly as the relay built it"
        );
        assert!(m.attributes.contains_key(REPLAYED_AT), "{:?}", m.attributes);
    }
    assert_eq!(seen, ids);

    // Only one seller's messages, and the command line's dry run.
    let one = replayed[0].json()["user_id"].as_str().unwrap().to_owned();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_tmc-relay"))
        .args([
            "--json",
            "replay",
            "--dry-run",
            "--user-id",
            &one,
            "--queue-url",
            &fresh,
        ])
        .args([
            "--since",
            &before
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap(),
        ])
        .args([
            "--until",
            &after
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap(),
        ])
        .env_clear()
        .envs(&vars)
        .env("ARCHIVE_URL", &url)
        .output()
        .await
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let of_one = replayed
        .iter()
        .filter(|m| m.json()["user_id"].as_str() == Some(one.as_str()))
        .count() as u64;
    assert_eq!(printed["unique"], of_one);
    assert_eq!(printed["sent"], 0);
    assert_eq!(env.depth(&fresh).await, 0);
}
