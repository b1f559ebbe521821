//! A strict local TMC gateway: the platform's `router/rest` for the `taobao.tmc.*` and
//! `taobao.jushita.jms.*` methods, with real queue semantics, fault injection and an admin API.
//! Tests, the demo and benchmarks stand on it, so it refuses whatever the platform refuses.
//!
//! # Layout
//!
//! - this file: the public, in-process API ([`SimServer`], [`SimConfig`]) and the shared core.
//! - `state`: queue semantics (publish order, leases, redelivery, retention, confirm).
//! - `gateway`: parameters, the system checks and their error codes, response shapes.
//! - `handlers`: one request end to end (scripts, bans, faults) and the TMC method handlers.
//! - `manage`: the management methods (users, groups, queues, Jushita MQ users).
//! - `faults`: fault and script definitions and the seeded draw.
//! - `generate`: realistic messages, deterministic for a seed.
//! - `http`: the HTTP server, including dropping a connection on purpose.
//! - `admin`: the `/_sim/*` admin API.
//!
//! The queue runs on the simulator's clock: the wall clock plus whatever [`SimServer::advance`]
//! added, so tests move leases and retention forward without sleeping. Request timestamps are
//! checked against the real wall clock only.

mod admin;
mod faults;
mod gateway;
mod generate;
mod handlers;
mod http;
mod manage;
mod rng;
pub mod signature;
mod state;
pub mod wire;

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::wire::{epoch_millis, wire_timestamp};

pub use faults::{Faults, InjectedError, MethodFaults, Scripted};
pub use gateway::{
    verify_request, ApiError, RequestParams, Verified, INVALID_SESSION, KNOWN_METHODS,
};
pub use generate::TOPICS;
pub use state::{MessageState, NewMessage, SimState, DEFAULT_GROUP, PLATFORM_APP_KEY};

use generate::Generator;
use manage::Directory;
use rng::SplitMix64;
use state::{Delivered, Store};

/// Stream tag of the fault draws (see `SplitMix64::stream`).
const FAULT_STREAM: u64 = 3;

/// How the simulator behaves; plain data, set once at start.
#[derive(Clone)]
pub struct SimConfig {
    /// The only app key the gateway knows (others get error 29).
    pub app_key: String,
    /// The gateway's copy of the app secret, to verify signatures. Never logged.
    pub app_secret: String,
    /// How long a consumed, unconfirmed message stays hidden before it is handed out again.
    pub lease: Duration,
    /// Unconfirmed messages older than this (since publish) are dropped and counted expired.
    pub retention: Duration,
    /// Seeds faults and generated messages, so a run can be replayed.
    pub seed: u64,
    /// How far a request's timestamp may be from the real wall clock (error 31 beyond).
    pub max_skew: Duration,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            app_key: "sim-app".to_owned(),
            app_secret: "sim-secret".to_owned(),
            lease: Duration::from_secs(300),
            retention: Duration::from_secs(24 * 60 * 60),
            seed: 1,
            max_skew: Duration::from_secs(600),
        }
    }
}

impl fmt::Debug for SimConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimConfig")
            .field("app_key", &self.app_key)
            .field("app_secret", &"***")
            .field("lease", &self.lease)
            .field("retention", &self.retention)
            .field("seed", &self.seed)
            .field("max_skew", &self.max_skew)
            .finish()
    }
}

/// Everything that changes, behind one lock (consumers of one group must never share a lease).
#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) store: Store,
    pub(crate) directory: Directory,
    pub(crate) faults: Faults,
    pub(crate) scripts: HashMap<String, VecDeque<Scripted>>,
    pub(crate) fault_rng: SplitMix64,
    pub(crate) generator: Generator,
    /// What `advance` added to the wall clock.
    pub(crate) offset_ms: u64,
    pub(crate) request_seq: u64,
    /// Method → end of its call-limit ban, simulator clock.
    pub(crate) bans: HashMap<String, u64>,
    pub(crate) calls: BTreeMap<String, u64>,
    pub(crate) rejected: BTreeMap<String, u64>,
    pub(crate) faults_injected: BTreeMap<String, u64>,
    pub(crate) consume_calls: u64,
    pub(crate) confirm_calls: u64,
    seed: u64,
}

impl Inner {
    fn new(cfg: &SimConfig, offset_ms: u64) -> Self {
        Self {
            store: Store::new(
                cfg.lease.as_millis() as u64,
                cfg.retention.as_millis() as u64,
            ),
            directory: Directory::default(),
            faults: Faults::none(),
            scripts: HashMap::new(),
            fault_rng: SplitMix64::stream(cfg.seed, FAULT_STREAM),
            generator: Generator::new(cfg.seed),
            offset_ms,
            request_seq: 0,
            bans: HashMap::new(),
            calls: BTreeMap::new(),
            rejected: BTreeMap::new(),
            faults_injected: BTreeMap::new(),
            consume_calls: 0,
            confirm_calls: 0,
            seed: cfg.seed,
        }
    }

    /// The simulator's clock: wall clock plus `advance`.
    pub(crate) fn now_ms(&self) -> u64 {
        epoch_millis(SystemTime::now()).saturating_add(self.offset_ms)
    }

    pub(crate) fn count_fault(&mut self, kind: &str) {
        *self.faults_injected.entry(kind.to_owned()).or_default() += 1;
    }

    /// Request ids look like the platform's (13 base-36 characters), deterministic per seed.
    pub(crate) fn next_request_id(&mut self) -> String {
        self.request_seq += 1;
        let mut n = SplitMix64::new(self.seed ^ self.request_seq.rotate_left(32)).next_u64();
        let mut out = String::with_capacity(13);
        for _ in 0..13 {
            let d = (n % 36) as u32;
            n /= 36;
            out.push(char::from_digit(d, 36).unwrap_or('0'));
        }
        out
    }
}

/// The shared core behind the HTTP server and the in-process API.
pub(crate) struct Sim {
    pub(crate) cfg: SimConfig,
    inner: Mutex<Inner>,
}

/// Wire time of a simulator-clock instant.
pub(crate) fn wire_at(ms: u64) -> String {
    wire_timestamp(UNIX_EPOCH + Duration::from_millis(ms))
}

impl Sim {
    pub(crate) fn new(cfg: SimConfig) -> Self {
        let inner = Mutex::new(Inner::new(&cfg, 0));
        Self { cfg, inner }
    }

    /// A panic while holding the lock cannot leave the queue half-updated in a way that
    /// matters more than stopping every test, so a poisoned lock is simply taken.
    pub(crate) fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn publish(&self, group: Option<&str>, msgs: Vec<NewMessage>) -> Vec<u64> {
        let group = group.filter(|g| !g.is_empty()).unwrap_or(DEFAULT_GROUP);
        let mut guard = self.lock();
        let inner = &mut *guard;
        let now_ms = inner.now_ms();
        let mut batch = Vec::with_capacity(msgs.len());
        let mut ids = Vec::with_capacity(msgs.len());
        let mut in_batch = HashSet::with_capacity(msgs.len());
        for m in msgs {
            let id = match m.id {
                Some(id) => id,
                None => inner
                    .generator
                    .next_id(|id| inner.store.contains_id(id) || in_batch.contains(&id)),
            };
            in_batch.insert(id);
            ids.push(id);
            batch.push((
                id,
                Delivered {
                    id,
                    topic: m.topic,
                    content: m.content,
                    user_id: m.user_id,
                    user_nick: m.user_nick,
                    pub_time: m.pub_time.unwrap_or_else(|| wire_at(now_ms)),
                    pub_app_key: m.pub_app_key.unwrap_or_else(|| PLATFORM_APP_KEY.to_owned()),
                },
            ));
        }
        inner.store.publish(group, batch, now_ms);
        tracing::debug!(group, count = ids.len(), "published");
        ids
    }

    pub(crate) fn generate(&self, group: Option<&str>, count: usize) -> Vec<u64> {
        let msgs = {
            let mut inner = self.lock();
            (0..count)
                .map(|_| {
                    let g = inner.generator.message();
                    NewMessage {
                        id: None,
                        topic: g.topic,
                        content: g.content,
                        user_id: g.user_id,
                        user_nick: g.user_nick,
                        pub_time: None,
                        pub_app_key: None,
                    }
                })
                .collect()
        };
        self.publish(group, msgs)
    }

    pub(crate) fn set_faults(&self, faults: Faults) {
        let mut inner = self.lock();
        inner.faults = faults.clamped();
        // New faults start from a clean slate: a ban from the old set would outlive it.
        inner.bans.clear();
    }

    pub(crate) fn script(&self, method: &str, responses: Vec<Scripted>) {
        self.lock()
            .scripts
            .entry(method.to_owned())
            .or_default()
            .extend(responses);
    }

    pub(crate) fn advance(&self, by: Duration) -> u64 {
        let mut inner = self.lock();
        inner.offset_ms = inner.offset_ms.saturating_add(by.as_millis() as u64);
        inner.now_ms()
    }

    pub(crate) fn state(&self, with_messages: bool) -> SimState {
        let mut guard = self.lock();
        let inner = &mut *guard;
        let now_ms = inner.now_ms();
        let mut st = SimState {
            consume_calls: inner.consume_calls,
            confirm_calls: inner.confirm_calls,
            calls: inner.calls.clone(),
            rejected: inner.rejected.clone(),
            faults_injected: inner.faults_injected.clone(),
            ..SimState::default()
        };
        inner.store.snapshot(now_ms, with_messages, &mut st);
        st
    }

    /// Back to a fresh start (same seed, so the same faults and messages follow), except the
    /// clock: time never goes backwards.
    pub(crate) fn reset(&self) {
        let mut inner = self.lock();
        let offset_ms = inner.offset_ms;
        *inner = Inner::new(&self.cfg, offset_ms);
    }

    pub(crate) fn create_group(&self, name: &str) -> bool {
        self.lock().store.create_group(name)
    }
}

/// A running simulator on a local port. Dropping it stops the server too.
pub struct SimServer {
    sim: Arc<Sim>,
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl fmt::Debug for SimServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimServer")
            .field("addr", &self.addr)
            .field("cfg", &self.sim.cfg)
            .finish_non_exhaustive()
    }
}

impl SimServer {
    /// Binds exactly `listen` (pass `127.0.0.1:0` for a free port) and serves until
    /// [`SimServer::shutdown`] or drop.
    pub async fn start(listen: SocketAddr, cfg: SimConfig) -> std::io::Result<SimServer> {
        let sim = Arc::new(Sim::new(cfg));
        let (addr, stop, task) = http::serve(listen, sim.clone()).await?;
        tracing::info!(%addr, app_key = %sim.cfg.app_key, "tmc-sim listening");
        Ok(SimServer {
            sim,
            addr,
            stop: Some(stop),
            task: Some(task),
        })
    }

    /// `http://127.0.0.1:PORT/router/rest`, what a `TopConfig` points at.
    pub fn gateway_url(&self) -> String {
        format!("{}/router/rest", self.base_url())
    }

    /// `http://127.0.0.1:PORT`; the admin API is under `/_sim/`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The configuration the simulator runs with.
    pub fn config(&self) -> &SimConfig {
        &self.sim.cfg
    }

    /// Puts messages at the back of `group`'s queue (`None`: the default group; a group that
    /// does not exist is created). Returns the ids, in order. Republishing an id that is still
    /// queued is ignored; a confirmed or expired one is queued afresh (a platform duplicate).
    pub fn publish(&self, group: Option<&str>, msgs: Vec<NewMessage>) -> Vec<u64> {
        self.sim.publish(group, msgs)
    }

    /// Publishes `count` realistic messages (see [`TOPICS`]), deterministic for the seed.
    pub fn generate(&self, group: Option<&str>, count: usize) -> Vec<u64> {
        self.sim.generate(group, count)
    }

    /// Replaces every fault (rates are clamped into `0..=1`) and lifts any running ban.
    pub fn set_faults(&self, faults: Faults) {
        self.sim.set_faults(faults)
    }

    /// The next calls of `method` get these answers, in order, instead of normal handling
    /// (after signature verification). Appends to what is already scripted.
    pub fn script(&self, method: &str, responses: Vec<Scripted>) {
        self.sim.script(method, responses)
    }

    /// Moves the queue clock forward (leases, retention, bans) without sleeping.
    pub fn advance(&self, by: Duration) {
        self.sim.advance(by);
    }

    /// A snapshot of counters and every message's history.
    pub fn state(&self) -> SimState {
        self.sim.state(true)
    }

    /// The counters without the per-message map (cheap on a deep queue).
    pub fn counters(&self) -> SimState {
        self.sim.state(false)
    }

    /// Clears messages, groups, users, faults, scripts and counters; the clock stays.
    pub fn reset(&self) {
        self.sim.reset()
    }

    /// Creates a group (as `taobao.tmc.group.add` would, without the name rules).
    pub fn create_group(&self, name: &str) {
        self.sim.create_group(name);
    }

    /// Stops accepting, lets requests in flight finish (for at most 5 s), and returns.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(mut task) = self.task.take() {
            if tokio::time::timeout(Duration::from_secs(5), &mut task)
                .await
                .is_err()
            {
                task.abort();
            }
        }
    }
}

impl Drop for SimServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn generated(seed: u64) -> Vec<(u64, String, String)> {
        let sim = Sim::new(SimConfig {
            seed,
            ..SimConfig::default()
        });
        sim.generate(None, 300);
        let mut inner = sim.lock();
        let now_ms = inner.now_ms();
        inner
            .store
            .consume(DEFAULT_GROUP, 300, now_ms)
            .unwrap_or_default()
            .into_iter()
            .map(|m| (m.id, m.topic, m.content))
            .collect()
    }

    /// Two simulators with the same seed generate the same ids and messages; reset replays
    /// them too.
    #[test]
    fn generation_is_deterministic_for_a_seed() {
        let a = generated(7);
        assert_eq!(a.len(), 300);
        assert_eq!(a, generated(7));
        assert_ne!(a, generated(8));
        let sim = Sim::new(SimConfig {
            seed: 7,
            ..SimConfig::default()
        });
        let first = sim.generate(None, 5);
        sim.reset();
        assert_eq!(sim.generate(None, 5), first);
    }

    /// The configuration's Debug output never shows the secret.
    #[test]
    fn config_debug_redacts_the_secret() {
        let s = format!("{:?}", SimConfig::default());
        assert!(!s.contains("sim-secret"), "{s}");
    }

    /// Request ids are 13 base-36 characters and differ per request.
    #[test]
    fn request_ids_look_like_the_platforms() {
        let sim = Sim::new(SimConfig::default());
        let mut inner = sim.lock();
        let a = inner.next_request_id();
        let b = inner.next_request_id();
        assert_eq!(a.len(), 13);
        assert!(a
            .bytes()
            .all(|c| c.is_ascii_digit() || c.is_ascii_lowercase()));
        assert_ne!(a, b);
    }
}
