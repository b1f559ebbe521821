//! The HTTP side: one handler for every AWS request (faults, then the backend), the admin
//! paths under `/_fake/`, and a listener whose connections a handler can drop unanswered.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::connect_info::Connected;
use axum::extract::{ConnectInfo, Query, Request, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use bytes::Bytes;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::batch::{self, Accepted, Split};
use super::memory::Memory;
use super::moto::{Moto, TARGET};
use super::rules::{
    choose_fault, effect_for, request_rng, DynamoThrottle, EpisodeKind, EpisodeStats, Fault,
    FaultStats, OpRules, Rules, SplitMix64, StallEffect, StormEffect, WindowCache, WindowIter,
};
use super::wire::{parse_target, Answer, AwsError, Service};

/// Requests larger than this are refused; SQS and DynamoDB requests stay far below it.
const MAX_REQUEST_BYTES: usize = 16 * 1024 * 1024;

#[derive(Debug)]
pub(crate) enum Upstream {
    Moto(Moto),
    Memory(Memory),
}

/// Storms and stalls in force: their windows count from `epoch`, when the rules were set.
#[derive(Debug)]
pub(crate) struct Episodes {
    epoch: std::time::Instant,
    storms: Vec<(String, BTreeMap<String, StormEffect>, WindowCache)>,
    stalls: Vec<(String, BTreeMap<String, StallEffect>, WindowCache)>,
}

impl Episodes {
    pub fn new(rules: &Rules, seed: u64) -> Self {
        let cache =
            |kind, name: &str, when| WindowCache::new(WindowIter::new(seed, kind, name, when));
        Self {
            epoch: std::time::Instant::now(),
            storms: rules
                .storms
                .iter()
                .map(|s| {
                    let c = cache(EpisodeKind::Storm, &s.name, &s.when);
                    (s.name.clone(), s.ops.clone(), c)
                })
                .collect(),
            stalls: rules
                .stalls
                .iter()
                .map(|s| {
                    let c = cache(EpisodeKind::Stall, &s.name, &s.when);
                    (s.name.clone(), s.ops.clone(), c)
                })
                .collect(),
        }
    }

    /// What the storms and stalls do to a request to `op` arriving now.
    fn active(&mut self, op: &str) -> Active {
        let t = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        let mut a = Active::default();
        for (name, ops, windows) in &mut self.storms {
            if let Some(e) = effect_for(ops, op) {
                if windows.covering(t).is_some() {
                    a.storms.push((format!("storm/{name}"), e.clone()));
                }
            }
        }
        for (name, ops, windows) in &mut self.stalls {
            if let Some(e) = effect_for(ops, op) {
                if windows.covering(t).is_some() {
                    a.stalls.push((format!("stall/{name}"), e.clone()));
                }
            }
        }
        a
    }
}

/// The storms and stalls a request arrived in.
#[derive(Debug, Default)]
struct Active {
    storms: Vec<(String, StormEffect)>,
    stalls: Vec<(String, StallEffect)>,
}

/// A request refused whole (throttling, a 500, a stall that dropped it) and not carried out
/// since: its body and the `app/` name in its user agent (`AWS_SDK_UA_APP_ID`), if any.
#[derive(Clone, Debug, PartialEq)]
pub struct Refused {
    pub body: Value,
    pub caller: Option<String>,
}

/// State shared by every connection.
#[derive(Debug)]
pub(crate) struct Shared {
    pub upstream: Upstream,
    pub rules: RwLock<Rules>,
    /// Seeds every request's fault stream.
    pub seed: u64,
    /// Requests seen per operation: the n in each request's stream.
    pub counters: Mutex<HashMap<String, u64>>,
    pub stats: Mutex<FaultStats>,
    pub accepted: Mutex<Vec<Accepted>>,
    /// Flips to true at shutdown, ending injected delays early.
    pub stopping: watch::Receiver<bool>,
    /// The workers of rules with a capacity, by rule key and capacity.
    pub pools: Mutex<HashMap<(String, u32), Arc<tokio::sync::Semaphore>>>,
    /// Requests inside fake-aws now, per operation.
    pub in_flight: Mutex<HashMap<String, u64>>,
    /// Requests refused whole (throttling, 500, dropped stalls) and not carried out since, by
    /// operation, by the digest of their canonical JSON.
    pub refused: Mutex<HashMap<String, HashMap<u64, Refused>>>,
    /// The storms and stalls of the rules in force.
    pub episodes: Mutex<Episodes>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    pub fn rules(&self) -> Rules {
        self.rules.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn set_rules(&self, rules: Rules) -> Result<(), String> {
        rules.validate()?;
        // The new storms' and stalls' windows count from now.
        *lock(&self.episodes) = Episodes::new(&rules, self.seed);
        *self.rules.write().unwrap_or_else(|p| p.into_inner()) = rules;
        Ok(())
    }

    pub fn stats(&self) -> FaultStats {
        lock(&self.stats).clone()
    }

    fn count_episode(&self, name: &str, op: &str, f: impl FnOnce(&mut EpisodeStats)) {
        let mut all = lock(&self.stats);
        let e = all.episodes.entry(name.to_owned()).or_default();
        *e.by_op.entry(op.to_owned()).or_default() += 1;
        e.requests += 1;
        f(e);
    }

    fn stopping_now(&self) -> bool {
        *self.stopping.borrow()
    }

    /// Counts a held request until the guard drops.
    fn hold(self: &Arc<Self>) -> Held {
        lock(&self.stats).stalls_pending += 1;
        Held(Arc::clone(self))
    }

    pub fn accepted(&self) -> Vec<Accepted> {
        lock(&self.accepted).clone()
    }

    /// The `op` requests refused whole and not carried out since.
    pub fn unrecovered(&self, op: &str) -> Vec<Refused> {
        lock(&self.refused)
            .get(op)
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Notes a request refused whole (`refused`), or carried out: a refused request whose
    /// identical retry was carried out since is recovered.
    fn note_refusal(&self, op: &str, body: Option<&Value>, refused: bool, caller: Option<&str>) {
        let Some(b) = body else { return };
        let digest = {
            use std::hash::{Hash, Hasher};
            // serde_json's maps are sorted: the text is canonical whatever the client's order.
            let mut h = std::collections::hash_map::DefaultHasher::new();
            b.to_string().hash(&mut h);
            h.finish()
        };
        let changed = {
            let mut all = lock(&self.refused);
            let set = all.entry(op.to_owned()).or_default();
            if refused {
                let r = Refused {
                    body: b.clone(),
                    caller: caller.map(str::to_owned),
                };
                set.insert(digest, r).is_none()
            } else {
                set.remove(&digest).is_some()
            }
        };
        if changed {
            self.count(op, |s| {
                if refused {
                    s.unrecovered += 1;
                } else {
                    s.unrecovered = s.unrecovered.saturating_sub(1);
                }
            });
        }
    }

    fn count(&self, op: &str, f: impl FnOnce(&mut super::rules::OpStats)) {
        f(lock(&self.stats).ops.entry(op.to_owned()).or_default());
    }

    /// Counts a request in; the guard counts it out.
    fn enter(self: &Arc<Self>, op: &str) -> InFlight {
        let now = {
            let mut m = lock(&self.in_flight);
            let n = m.entry(op.to_owned()).or_default();
            *n += 1;
            *n
        };
        self.count(op, |s| {
            s.peak_in_flight = s.peak_in_flight.max(now);
            s.in_flight_seen += now;
        });
        InFlight {
            shared: Arc::clone(self),
            op: op.to_owned(),
        }
    }

    /// A worker of the rule's pool, when the rule has a capacity.
    async fn worker(&self, key: &str, capacity: u32) -> Option<tokio::sync::OwnedSemaphorePermit> {
        if capacity == 0 {
            return None;
        }
        let pool = Arc::clone(
            lock(&self.pools)
                .entry((key.to_owned(), capacity))
                .or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(capacity as usize))),
        );
        let mut stop = self.stopping.clone();
        tokio::select! {
            w = pool.acquire_owned() => w.ok(),
            _ = stop.wait_for(|s| *s) => None,
        }
    }

    /// Sleeps, or returns early at shutdown.
    async fn pause(&self, ms: u64) {
        if ms == 0 {
            return;
        }
        let mut stop = self.stopping.clone();
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(ms)) => {}
            _ = stop.wait_for(|s| *s) => {}
        }
    }
}

/// One request inside fake-aws, counted out when dropped.
struct InFlight {
    shared: Arc<Shared>,
    op: String,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(n) = lock(&self.shared.in_flight).get_mut(&self.op) {
            *n = n.saturating_sub(1);
        }
    }
}

/// A request a stall holds, counted out when dropped.
struct Held(Arc<Shared>);

impl Drop for Held {
    fn drop(&mut self) {
        let mut s = lock(&self.0.stats);
        s.stalls_pending = s.stalls_pending.saturating_sub(1);
    }
}

/// The name a client gave itself with `AWS_SDK_UA_APP_ID`: the `app/<name>` of its user agent.
fn caller_of(headers: &HeaderMap) -> Option<String> {
    ["x-amz-user-agent", "user-agent"].iter().find_map(|h| {
        headers
            .get(*h)?
            .to_str()
            .ok()?
            .split(' ')
            .find_map(|t| t.strip_prefix("app/"))
            .map(str::to_owned)
    })
}

/// Set when the client stops waiting for an answer (hyper drops the handler).
struct Waiting {
    gone: Arc<AtomicBool>,
    shared: Arc<Shared>,
    op: String,
    answered: bool,
}

impl Drop for Waiting {
    fn drop(&mut self) {
        if !self.answered {
            self.gone.store(true, Ordering::SeqCst);
            self.shared.count(&self.op, |s| s.abandoned += 1);
        }
    }
}

/// A connection's switch: once set, reads and writes fail and the connection closes unanswered.
#[derive(Clone, Debug)]
pub(crate) struct Conn {
    killed: Arc<AtomicBool>,
}

/// A TCP stream that can be cut from the handler serving it.
#[derive(Debug)]
pub(crate) struct CuttableStream {
    inner: TcpStream,
    killed: Arc<AtomicBool>,
}

fn cut() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionReset,
        "response dropped by fake-aws",
    )
}

impl AsyncRead for CuttableStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.killed.load(Ordering::SeqCst) {
            return Poll::Ready(Err(cut()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for CuttableStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.killed.load(Ordering::SeqCst) {
            return Poll::Ready(Err(cut()));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.killed.load(Ordering::SeqCst) {
            return Poll::Ready(Err(cut()));
        }
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A TCP listener handing out cuttable streams, with Nagle off (small answers, low latency).
#[derive(Debug)]
pub(crate) struct CuttableListener(pub TcpListener);

impl axum::serve::Listener for CuttableListener {
    type Io = CuttableStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.0.accept().await {
                Ok((s, addr)) => {
                    // Nagle plus delayed ACKs would add tens of ms to small answers.
                    let _ = s.set_nodelay(true);
                    let io = CuttableStream {
                        inner: s,
                        killed: Arc::new(AtomicBool::new(false)),
                    };
                    return (io, addr);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "fake-aws accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.0.local_addr()
    }
}

impl Connected<axum::serve::IncomingStream<'_, CuttableListener>> for Conn {
    fn connect_info(stream: axum::serve::IncomingStream<'_, CuttableListener>) -> Self {
        Conn {
            killed: stream.io().killed.clone(),
        }
    }
}

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/_fake/rules", get(get_rules).post(post_rules))
        .route("/_fake/stats", get(get_stats))
        .route("/_fake/accepted", get(get_accepted))
        .fallback(aws)
        .with_state(shared)
}

async fn get_rules(State(st): State<Arc<Shared>>) -> Json<Rules> {
    Json(st.rules())
}

async fn post_rules(State(st): State<Arc<Shared>>, body: Bytes) -> Response {
    let parsed = serde_json::from_slice::<Rules>(&body).map_err(|e| e.to_string());
    match parsed.and_then(|r| st.set_rules(r)) {
        Ok(()) => Json(st.rules()).into_response(),
        Err(e) => (StatusCode::BAD_REQUEST, format!("invalid rules: {e}\n")).into_response(),
    }
}

async fn get_stats(State(st): State<Arc<Shared>>) -> Json<FaultStats> {
    Json(st.stats())
}

#[derive(serde::Deserialize)]
struct Page {
    /// Skip the first `from` acceptances, to page through a long log.
    from: Option<usize>,
}

async fn get_accepted(State(st): State<Arc<Shared>>, Query(q): Query<Page>) -> Json<Vec<Accepted>> {
    let all = lock(&st.accepted);
    let from = q.from.unwrap_or(0).min(all.len());
    Json(all[from..].to_vec())
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn respond(a: Answer) -> Response {
    let mut b = Response::builder().status(a.status);
    for (k, v) in &a.headers {
        b = b.header(k, v);
    }
    b.body(Body::from(a.body)).unwrap_or_else(|_| {
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            "fake-aws built an invalid response",
        )
            .into_response()
    })
}

/// Every AWS request.
async fn aws(
    State(st): State<Arc<Shared>>,
    ConnectInfo(conn): ConnectInfo<Conn>,
    req: Request,
) -> Response {
    let (parts, body) = req.into_parts();
    let body = match axum::body::to_bytes(body, MAX_REQUEST_BYTES).await {
        Ok(b) => b,
        Err(_) => {
            return (
                StatusCode::PAYLOAD_TOO_LARGE,
                "request too large for fake-aws",
            )
                .into_response()
        }
    };
    let target = parts.headers.get(TARGET).and_then(|v| v.to_str().ok());
    // S3 PutObject (a path-style PUT /bucket/key) on the memory backend: accepted and counted,
    // not kept. A sink for the relay's archive writes in benchmarks, not an S3.
    if parts.method == Method::PUT && target.is_none() && matches!(st.upstream, Upstream::Memory(_))
    {
        st.count("PutObject", |s| s.requests += 1);
        return (StatusCode::OK, [("etag", "\"fake-aws\"")]).into_response();
    }
    let (service, op) = parse_target(target);
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    // Run the work in its own task: if the client disconnects (killed, or its own timeout),
    // hyper drops this handler, but a request the backend already carried out must still be
    // logged as accepted, as unanswered.
    let gone = Arc::new(AtomicBool::new(false));
    let mut waiting = Waiting {
        gone: Arc::clone(&gone),
        shared: Arc::clone(&st),
        op: op.clone(),
        answered: false,
    };
    let work = {
        let st = Arc::clone(&st);
        let (method, headers) = (parts.method, parts.headers);
        tokio::spawn(async move {
            let _inside = st.enter(&op);
            handle(&st, service, &op, method, &path, &headers, body, &gone).await
        })
    };
    let joined = work.await;
    waiting.answered = true;
    let outcome = match joined {
        Ok(outcome) => outcome,
        Err(_) => {
            return (StatusCode::INTERNAL_SERVER_ERROR, "fake-aws handler failed").into_response()
        }
    };
    match outcome {
        Outcome::Answer(a) => respond(a),
        Outcome::Lost { delay_ms } => {
            st.pause(delay_ms).await;
            conn.killed.store(true, Ordering::SeqCst);
            // Never written: the connection fails on its first write and closes.
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

enum Outcome {
    Answer(Answer),
    /// Carried out, answer withheld: close the connection after `delay_ms`.
    Lost {
        delay_ms: u64,
    },
}

fn throttle(service: Service, rules: &OpRules, rng: &mut SplitMix64) -> AwsError {
    // Drawn whatever the rule, so a rule's choice never shifts the later draws.
    let coin = rng.next_u64() & 1 == 0;
    match (service, rules.dynamodb_throttle) {
        (Service::DynamoDb, DynamoThrottle::ProvisionedThroughput) => AwsError::ddb_throughput(),
        (Service::DynamoDb, DynamoThrottle::Throttling) => AwsError::ddb_throttling(),
        (Service::DynamoDb, DynamoThrottle::Either) if coin => AwsError::ddb_throughput(),
        (Service::DynamoDb, DynamoThrottle::Either) => AwsError::ddb_throttling(),
        _ => AwsError::sqs_throttled(),
    }
}

/// A storm's throttling, as each service sends it under sustained overload.
fn storm_throttle(service: Service) -> AwsError {
    match service {
        Service::DynamoDb => AwsError::ddb_throughput(),
        _ => AwsError::sqs_throttled(),
    }
}

/// Storms and stalls draw from a stream of their own, so adding them leaves every independent
/// fault where it was.
const EPISODE_STREAM: u64 = 0x5707_A11E_D0C5_0001;

fn server_error(service: Service) -> AwsError {
    match service {
        Service::DynamoDb => AwsError::ddb_internal(),
        _ => AwsError::sqs_internal(),
    }
}

fn split(op: &str, body: &Value, rules: &OpRules, rng: &mut SplitMix64) -> Option<Split> {
    if rules.partial_failure_rate <= 0.0 {
        return None;
    }
    match op {
        "SendMessageBatch" => batch::split_sqs_batch(body, rules, rng),
        "BatchWriteItem" => batch::split_batch_write(body, rules, rng),
        "BatchGetItem" => batch::split_batch_get(body, rules, rng),
        "BatchExecuteStatement" => batch::split_statements(body, rules, rng),
        _ => None,
    }
}

#[allow(clippy::too_many_arguments)]
async fn handle(
    st: &Arc<Shared>,
    service: Service,
    op: &str,
    method: Method,
    path: &str,
    headers: &HeaderMap,
    body: Bytes,
    client_gone: &AtomicBool,
) -> Outcome {
    // Storms and stalls are windows in time: what counts is when the request arrived.
    let active = lock(&st.episodes).active(op);
    let caller = caller_of(headers);
    let (key, rules) = st.rules().rule_for(op);
    // An overloaded server: wait for a worker, who then takes the latency.
    let worker = st.worker(&key, rules.capacity).await;
    let n = {
        let mut c = lock(&st.counters);
        let slot = c.entry(op.to_owned()).or_default();
        *slot += 1;
        *slot - 1
    };
    let mut rng = request_rng(st.seed, op, n);
    let fault = choose_fault(&rules, &mut rng);
    let jitter = rng.up_to(rules.latency_jitter_ms);
    st.count(op, |s| s.requests += 1);
    let episode = draw_episode(st, op, n, &active);
    st.pause(rules.latency_ms.saturating_add(jitter)).await;

    let parsed: Option<Value> = serde_json::from_slice(&body).ok();
    let entries = || parsed.as_ref().map_or(1, |b| batch::entries_of(op, b));
    // A stall's request, once held, is answered as if nothing else had happened to it.
    let mut fault = fault;
    let mut _held = None;
    match episode {
        Episode::Throttled => {
            let n = entries();
            st.count(op, |s| {
                s.faulted_entries += n;
                s.throttled += 1;
                s.storm_throttled += 1;
            });
            st.note_refusal(op, parsed.as_ref(), true, caller.as_deref());
            return Outcome::Answer(storm_throttle(service).answer(service));
        }
        Episode::Stalled { hold_ms, answer } => {
            // Held requests wait outside any worker: a stuck request does not serve others.
            drop(worker);
            let n = entries();
            st.count(op, |s| {
                s.faulted_entries += n;
                s.stalled += 1;
                if answer {
                    s.stall_answered += 1;
                } else {
                    s.stall_dropped += 1;
                }
            });
            let held = st.hold();
            if !answer {
                // Never carried out: the same as a refusal the client cannot see.
                st.note_refusal(op, parsed.as_ref(), true, caller.as_deref());
                st.pause(hold_ms).await;
                drop(held);
                return Outcome::Lost { delay_ms: 0 };
            }
            st.pause(hold_ms).await;
            if st.stopping_now() {
                // Shutting down: nothing is carried out any more.
                return Outcome::Lost { delay_ms: 0 };
            }
            fault = None;
            _held = Some(held);
        }
        Episode::Delayed(ms) => {
            st.count(op, |s| s.storm_delayed += 1);
            st.pause(ms).await;
        }
        Episode::None => {}
    }

    if fault.is_some() {
        let n = entries();
        st.count(op, |s| s.faulted_entries += n);
    }
    match fault {
        Some(Fault::Throttle) => {
            st.count(op, |s| s.throttled += 1);
            st.note_refusal(op, parsed.as_ref(), true, caller.as_deref());
            return Outcome::Answer(throttle(service, &rules, &mut rng).answer(service));
        }
        Some(Fault::Error500) => {
            st.count(op, |s| s.error500 += 1);
            st.note_refusal(op, parsed.as_ref(), true, caller.as_deref());
            return Outcome::Answer(server_error(service).answer(service));
        }
        _ => st.note_refusal(op, parsed.as_ref(), false, None),
    }

    let split = parsed.as_ref().and_then(|b| split(op, b, &rules, &mut rng));
    if let Some(h) = &split {
        st.count(op, |s| {
            s.failed_entries += h.held_count;
            s.sender_fault_entries += h.sender_faults;
        });
    }
    // The request the backend sees (rewritten when entries were held back), and what to add
    // to its answer.
    let (rewritten, mut held) = match split {
        Some(Split { forward, held, .. }) => (forward, Some(held)),
        None => (None, None),
    };
    let sent: Option<&Value> = if held.is_some() {
        rewritten.as_ref()
    } else {
        parsed.as_ref()
    };

    let mut answer = if held.is_some() && sent.is_none() {
        // Every entry held back: nothing to forward, and nothing left to merge afterwards.
        let req = parsed.as_ref().unwrap_or(&Value::Null);
        Answer::ok(&batch::all_held(op, req, held.take().unwrap_or_default()))
    } else {
        let out_body = match (&held, sent) {
            (Some(_), Some(v)) => Bytes::from(v.to_string()),
            _ => body,
        };
        call_upstream(st, service, op, method, path, headers, out_body, sent).await
    };

    let lost = fault == Some(Fault::LostResponse);
    if answer.is_success() {
        let gone = client_gone.load(Ordering::SeqCst);
        answer = post_process(st, op, answer, sent, held, lost, gone);
    }
    if lost {
        st.count(op, |s| s.lost_responses += 1);
        return Outcome::Lost {
            delay_ms: rules.lost_response_delay_ms,
        };
    }
    Outcome::Answer(answer)
}

/// What the storms and stalls a request arrived in do to it.
#[derive(Debug, PartialEq)]
enum Episode {
    None,
    /// A storm throttles it.
    Throttled,
    /// A storm slows it down by this many ms.
    Delayed(u64),
    /// A stall holds it, then answers it (carried out then) or drops it.
    Stalled {
        hold_ms: u64,
        answer: bool,
    },
}

/// Draws, for the `n`-th request of `op`, what its storms and stalls do: a throttling storm
/// first (refused at once), then a stall, then the longest storm latency. A fixed number of
/// draws per episode keeps the stream the same whatever the outcome.
fn draw_episode(st: &Shared, op: &str, n: u64, active: &Active) -> Episode {
    if active.storms.is_empty() && active.stalls.is_empty() {
        return Episode::None;
    }
    let mut rng = request_rng(st.seed ^ EPISODE_STREAM, op, n);
    let storms: Vec<bool> = active
        .storms
        .iter()
        .map(|(_, e)| rng.next_f64() < e.throttle_rate)
        .collect();
    let stalls: Vec<(bool, bool)> = active
        .stalls
        .iter()
        .map(|(_, e)| (rng.next_f64() < e.rate, rng.next_f64() < e.answer_share))
        .collect();
    // Which episode decides: the first storm that throttles, else the first stall that holds.
    let thrower = storms.iter().position(|hit| *hit);
    let holder = thrower
        .is_none()
        .then(|| stalls.iter().position(|(held, _)| *held))
        .flatten();
    let latency = active
        .storms
        .iter()
        .map(|(_, e)| e.latency_ms)
        .max()
        .unwrap_or(0);
    let slowed = thrower.is_none() && holder.is_none() && latency > 0;
    for (i, (name, e)) in active.storms.iter().enumerate() {
        st.count_episode(name, op, |s| {
            if thrower == Some(i) {
                s.throttled += 1;
            } else if slowed && e.latency_ms > 0 {
                s.delayed += 1;
            }
        });
    }
    for (i, (name, _)) in active.stalls.iter().enumerate() {
        let answer = stalls[i].1;
        st.count_episode(name, op, |s| {
            if holder == Some(i) {
                s.stalled += 1;
                if answer {
                    s.answered += 1;
                } else {
                    s.dropped += 1;
                }
            }
        });
    }
    match (thrower, holder) {
        (Some(_), _) => Episode::Throttled,
        (None, Some(i)) => Episode::Stalled {
            hold_ms: active.stalls[i].1.hold_ms,
            answer: stalls[i].1,
        },
        (None, None) if slowed => Episode::Delayed(latency),
        (None, None) => Episode::None,
    }
}

#[allow(clippy::too_many_arguments)]
async fn call_upstream(
    st: &Shared,
    service: Service,
    op: &str,
    method: Method,
    path: &str,
    headers: &HeaderMap,
    body: Bytes,
    parsed: Option<&Value>,
) -> Answer {
    match &st.upstream {
        Upstream::Moto(m) => m.forward(method, path, headers, body).await,
        Upstream::Memory(mem) => {
            let Some(req) = parsed else {
                return AwsError {
                    status: 400,
                    shape: "SerializationException",
                    query_code: None,
                    sender: true,
                    message: "The request body is not valid JSON.".to_owned(),
                    extra: None,
                }
                .answer(service);
            };
            match mem.call(service, op, req).await {
                Ok(v) => Answer::ok(&v),
                Err(e) => e.answer(service),
            }
        }
    }
}

/// Records acceptances (unanswered when the answer was lost or the client had gone), adds
/// held-back entries, fixes moto's SenderFault strings.
#[allow(clippy::too_many_arguments)]
fn post_process(
    st: &Shared,
    op: &str,
    mut answer: Answer,
    sent: Option<&Value>,
    held: Option<Value>,
    lost: bool,
    client_gone: bool,
) -> Answer {
    let mut changed = false;
    let mut json: Value = match serde_json::from_slice(&answer.body) {
        Ok(v) => v,
        Err(e) => {
            if matches!(op, "SendMessage" | "SendMessageBatch") || held.is_some() {
                tracing::warn!(op, error = %e, "fake-aws could not read the backend's answer");
            }
            return answer;
        }
    };
    if let Some(req) = sent {
        let acc = batch::accepted_from(op, req, &json, now_ms(), lost || client_gone);
        if !acc.is_empty() {
            if client_gone {
                let n = acc.len() as u64;
                st.count(op, |s| s.abandoned_entries += n);
            }
            lock(&st.accepted).extend(acc);
        }
    }
    if let Some(h) = held {
        batch::merge_held(op, &mut json, h);
        changed = true;
    }
    changed |= batch::fix_sender_fault(&mut json);
    if changed {
        answer.body = Bytes::from(json.to_string());
    }
    answer
}
