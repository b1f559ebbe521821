//! Test support: a server speaking the AWS JSON 1.0 wire protocol of SQS and DynamoDB, which
//! either proxies to moto or serves from memory, injecting faults per operation.
//!
//! # Layout
//!
//! - [`rules`]: per-operation fault rules, the seeded SplitMix64 choice of faults, fault counts.
//! - [`wire`]: targets (`X-Amz-Target`), error answers in each service's spelling.
//! - [`batch`]: per-entry faults in batch calls, moto fix-ups, the SQS acceptance log.
//! - [`moto`]: forwarding to moto byte for byte.
//! - [`memory`]: the in-memory SQS and DynamoDB, with a small exact expression evaluator.
//! - `server`: the HTTP handler, admin paths (`/_fake/rules`, `/_fake/stats`,
//!   `/_fake/accepted`), and connections that can be dropped unanswered.
//!
//! # Rules
//!
//! By operation name as in `X-Amz-Target`, `"*"` for the others; every field optional:
//!
//! ```json
//! {"SendMessageBatch": {"latency_ms": 10, "latency_jitter_ms": 2, "throttle_rate": 0.05,
//!                       "error500_rate": 0.05, "lost_response_rate": 0.05,
//!                       "lost_response_delay_ms": 0, "partial_failure_rate": 0.05,
//!                       "sender_fault_share": 0.2},
//!  "*": {"latency_ms": 8},
//!  "storms": [{"name": "writes", "when": {"after_ms": 2000, "gap_ms": [5000, 15000],
//!                                         "lasting_ms": [2000, 5000], "until_ms": 120000},
//!              "ops": {"PutItem": {"throttle_rate": 0.97}, "UpdateItem": {"throttle_rate": 0.97}}}],
//!  "stalls": [{"name": "writes", "when": {"gap_ms": [10000, 30000], "lasting_ms": [1000, 3000],
//!                                         "count": 2},
//!              "ops": {"PutItem": {"rate": 0.5, "hold_ms": 75000, "answer_share": 0.5}}}]}
//! ```
//!
//! Storms and stalls are windows in time after the rules were set, drawn from the seed and
//! the episode's name ([`rules::Schedule`]). In a storm window a request to one of its
//! operations is throttled with the operation's `throttle_rate` (DynamoDB answers
//! `ProvisionedThroughputExceededException`, as it does under sustained overload) or, let
//! through, waits `latency_ms` more. In a stall window a request is held with the share
//! `rate` for `hold_ms` without an answer, then carried out and answered (`answer_share`) or
//! dropped, never carried out. `GET /_fake/stats` counts both per operation and per episode,
//! and `stalls_pending` says how many requests are still held.
//!
//! # Admin paths
//!
//! `GET`/`POST /_fake/rules` (replace the rules), `GET /_fake/stats` ([`FaultStats`]),
//! `GET /_fake/accepted?from=N` (the acceptance log from entry N). AWS requests are all
//! `POST /` with `X-Amz-Target`, so these cannot clash.
//!
//! # Why
//!
//! moto never returns `UnprocessedItems`, writes `SenderFault` as a string the Rust SDK cannot
//! parse, and takes ~30 ms per `SendMessageBatch`. The relay's guarantees must hold under
//! partial batch failures, throttling, 500s and lost responses, and its speed must be measured
//! against endpoints that are not the bottleneck.

pub mod batch;
pub mod inspect;
pub mod memory;
pub mod moto;
pub mod rules;
mod server;
pub mod wire;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use batch::Accepted;
pub use memory::{Memory, QueueMessage};
pub use rules::{
    DynamoThrottle, EpisodeStats, FaultStats, OpRules, OpStats, Rules, Schedule, Stall,
    StallEffect, Storm, StormEffect, Window,
};
pub use server::Refused;

/// Where requests are carried out.
#[derive(Clone, Debug)]
pub enum Backend {
    /// A running moto server (`moto_server -H 127.0.0.1 -p PORT`).
    Moto { upstream: url::Url },
    /// In memory, in this process.
    Memory,
}

/// How to start a [`FakeAws`].
#[derive(Clone, Debug)]
pub struct FakeAwsConfig {
    pub backend: Backend,
    /// Seeds fault selection (and memory message ids): the same seed gives the same faults for
    /// the same sequence of requests per operation.
    pub seed: u64,
    /// Faults and latency by operation; changeable later with [`FakeAws::set_rules`].
    pub rules: Rules,
}

impl FakeAwsConfig {
    /// The in-memory backend, seed 0, no faults.
    pub fn memory() -> Self {
        Self {
            backend: Backend::Memory,
            seed: 0,
            rules: Rules::none(),
        }
    }

    /// Proxy to moto at `upstream`, seed 0, no faults.
    pub fn moto(upstream: url::Url) -> Self {
        Self {
            backend: Backend::Moto { upstream },
            seed: 0,
            rules: Rules::none(),
        }
    }

    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    pub fn with_rules(mut self, rules: Rules) -> Self {
        self.rules = rules;
        self
    }
}

/// A running fake SQS + DynamoDB endpoint.
#[derive(Debug)]
pub struct FakeAws {
    shared: Arc<server::Shared>,
    addr: SocketAddr,
    /// The in-memory state, when that is the backend.
    memory: Option<Memory>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl FakeAws {
    /// Binds `listen` (use port 0 for any free port) and serves until [`FakeAws::shutdown`].
    pub async fn start(listen: SocketAddr, cfg: FakeAwsConfig) -> std::io::Result<FakeAws> {
        cfg.rules
            .validate()
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        let listener = tokio::net::TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let endpoint = format!("http://{addr}");
        let (upstream, memory) = match cfg.backend {
            Backend::Moto { upstream } => {
                (server::Upstream::Moto(moto::Moto::new(upstream)?), None)
            }
            Backend::Memory => {
                let m = Memory::new(&endpoint, cfg.seed);
                (server::Upstream::Memory(m.clone()), Some(m))
            }
        };
        let (stop, stopping) = watch::channel(false);
        let episodes = server::Episodes::new(&cfg.rules, cfg.seed);
        let shared = Arc::new(server::Shared {
            upstream,
            rules: RwLock::new(cfg.rules),
            seed: cfg.seed,
            counters: Mutex::default(),
            stats: Mutex::default(),
            accepted: Mutex::default(),
            stopping: stopping.clone(),
            pools: Mutex::default(),
            in_flight: Mutex::default(),
            refused: Mutex::default(),
            episodes: Mutex::new(episodes),
        });
        let app =
            server::router(shared.clone()).into_make_service_with_connect_info::<server::Conn>();
        let mut until = stopping;
        let task = tokio::spawn(async move {
            let serve = axum::serve(server::CuttableListener(listener), app)
                .with_graceful_shutdown(async move {
                    let _ = until.wait_for(|s| *s).await;
                });
            if let Err(e) = serve.await {
                tracing::error!(error = %e, "fake-aws server stopped");
            }
        });
        Ok(FakeAws {
            shared,
            addr,
            memory,
            stop,
            task,
        })
    }

    /// `http://127.0.0.1:PORT`, for the SDK's `endpoint_url`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Replaces the rules; refuses rates outside `0..=1`.
    pub fn set_rules(&self, rules: Rules) -> Result<(), String> {
        self.shared.set_rules(rules)
    }

    pub fn rules(&self) -> Rules {
        self.shared.rules()
    }

    /// Every message a backend acknowledged so far, including those whose answer was withheld.
    pub fn accepted(&self) -> Vec<Accepted> {
        self.shared.accepted()
    }

    /// The `op` requests refused whole (throttling, 500, a stall that dropped them) whose
    /// identical request was not carried out since: writes that may never have happened. Each
    /// with the caller's `AWS_SDK_UA_APP_ID`, so a harness can tell whose they were.
    pub fn unrecovered(&self, op: &str) -> Vec<Refused> {
        self.shared.unrecovered(op)
    }

    /// Requests a stall holds now. Until it is 0 a held request may still be carried out, so
    /// whoever reads the queues and tables for a verdict waits for it.
    pub fn stalls_pending(&self) -> u64 {
        self.shared.stats().stalls_pending
    }

    /// Requests and injected faults, by operation.
    pub fn stats(&self) -> FaultStats {
        self.shared.stats()
    }

    /// The in-memory state (create queues and tables, read messages and items), if that is the
    /// backend.
    pub fn memory(&self) -> Option<&Memory> {
        self.memory.as_ref()
    }

    /// Stops accepting, ends injected delays, and waits briefly for open connections.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let mut task = self.task;
        if tokio::time::timeout(Duration::from_secs(2), &mut task)
            .await
            .is_err()
        {
            task.abort();
        }
    }
}
