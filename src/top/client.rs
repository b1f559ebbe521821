//! The HTTP side of the TOP client: one connection pool, signed requests, bounded retries.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde_json::{Map, Value};
use tokio::time::Instant;
use url::Url;

use super::clock::wire_timestamp;
use super::envelope;
use super::error::{ErrorClass, TopError};
use super::sign::{sign, SignMethod};
use super::Secret;

/// Where "now" comes from; tests pin or skew it.
pub type Clock = Arc<dyn Fn() -> SystemTime + Send + Sync>;

/// Bounded, jittered exponential backoff for transient errors.
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    /// Attempts in all, including the first.
    pub max_attempts: u32,
    /// The first backoff ceiling; doubles per attempt.
    pub base: Duration,
    /// No single backoff exceeds this.
    pub cap: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 4,
            base: Duration::from_millis(100),
            cap: Duration::from_secs(2),
        }
    }
}

impl RetryPolicy {
    /// Full jitter: a uniform pick in `0..=min(cap, base * 2^attempt)`.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let ceiling = self
            .base
            .saturating_mul(1u32 << attempt.min(16))
            .min(self.cap);
        let nanos = ceiling.as_nanos() as u64;
        if nanos == 0 {
            return Duration::ZERO;
        }
        Duration::from_nanos(random_u64() % (nanos + 1))
    }
}

fn random_u64() -> u64 {
    // RandomState is seeded per instance from the OS; enough for jitter, no extra crate.
    let mut h = RandomState::new().build_hasher();
    h.write_u64(0x9E37_79B9_7F4A_7C15);
    h.finish()
}

/// Everything the client needs to know; built once from configuration.
#[derive(Clone, Debug)]
pub struct TopConfig {
    /// The gateway, e.g. `https://eco.taobao.com/router/rest`.
    pub endpoint: Url,
    pub app_key: String,
    /// Redacted in `Debug`.
    pub secret: Secret,
    pub sign_method: SignMethod,
    /// `simplify=true`: flat JSON without the `<name>_response` wrapper.
    pub simplify: bool,
    /// TCP + TLS connect limit.
    pub connect_timeout: Duration,
    /// A single request's limit (further capped by the caller's deadline).
    pub request_timeout: Duration,
    pub retry: RetryPolicy,
    /// Bodies larger than this are refused without being read further.
    pub max_body_bytes: usize,
}

impl TopConfig {
    pub fn new(endpoint: Url, app_key: impl Into<String>, secret: Secret) -> Self {
        Self {
            endpoint,
            app_key: app_key.into(),
            secret,
            sign_method: SignMethod::HmacSha256,
            simplify: true,
            connect_timeout: Duration::from_secs(3),
            request_timeout: Duration::from_secs(15),
            retry: RetryPolicy::default(),
            max_body_bytes: 64 * 1024 * 1024,
        }
    }
}

/// A signed TOP client. Cheap to clone: clones share the connection pool.
#[derive(Clone)]
pub struct TopClient {
    http: reqwest::Client,
    cfg: Arc<TopConfig>,
    clock: Clock,
}

impl std::fmt::Debug for TopClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TopClient")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

impl TopClient {
    pub fn new(cfg: TopConfig) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .connect_timeout(cfg.connect_timeout)
            .pool_idle_timeout(Duration::from_secs(50))
            .user_agent(concat!("tmc-relay/", env!("CARGO_PKG_VERSION")))
            // The gateway never redirects; following one would re-send the request elsewhere,
            // possibly over plain http, bypassing the endpoint checks of the configuration.
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Self {
            http,
            cfg: Arc::new(cfg),
            clock: Arc::new(SystemTime::now),
        })
    }

    /// Replaces the clock (tests: skewed or pinned time).
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    pub fn config(&self) -> &TopConfig {
        &self.cfg
    }

    /// Calls `method` with business parameters, retrying transient errors with backoff until
    /// `max_attempts` or `deadline`. Rate limits, permanent and fatal errors return at once:
    /// the caller decides whether a ban fits its budget.
    pub async fn call(
        &self,
        method: &'static str,
        business: &[(&str, String)],
        session: Option<&Secret>,
        deadline: Instant,
    ) -> Result<Map<String, Value>, TopError> {
        let mut attempt = 0;
        loop {
            let result = self.call_once(method, business, session, deadline).await;
            let err = match result {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            attempt += 1;
            if err.class() != ErrorClass::Transient || attempt >= self.cfg.retry.max_attempts {
                return Err(err);
            }
            let pause = self.cfg.retry.backoff(attempt - 1);
            // Leave room for at least a short request after the pause.
            if Instant::now() + pause + Duration::from_millis(50) >= deadline {
                return Err(err);
            }
            tracing::debug!(method, attempt, pause_ms = pause.as_millis() as u64, error = %err, "retrying TOP call");
            tokio::time::sleep(pause).await;
        }
    }

    /// One signed request, no retry.
    pub async fn call_once(
        &self,
        method: &'static str,
        business: &[(&str, String)],
        session: Option<&Secret>,
        deadline: Instant,
    ) -> Result<Map<String, Value>, TopError> {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining < Duration::from_millis(20) {
            return Err(TopError::Deadline { method });
        }
        let timeout = remaining.min(self.cfg.request_timeout);
        let (url, body) = self.build(method, business, session, (self.clock)());
        // reqwest's message embeds the URL, whose query holds the signature and, for seller
        // calls, the session key: keep it out of errors and logs.
        let transport = |e: reqwest::Error| TopError::Transport {
            method,
            timeout: e.is_timeout(),
            detail: error_chain(&e.without_url()),
        };
        let work = async {
            let mut resp = self
                .http
                .post(url)
                .header(
                    "Content-Type",
                    "application/x-www-form-urlencoded;charset=utf-8",
                )
                .body(body)
                .send()
                .await
                .map_err(transport)?;
            let status = resp.status().as_u16();
            let mut buf: Vec<u8> = Vec::new();
            while let Some(chunk) = resp.chunk().await.map_err(transport)? {
                if buf.len() + chunk.len() > self.cfg.max_body_bytes {
                    return Err(TopError::TooLarge {
                        method,
                        limit: self.cfg.max_body_bytes,
                    });
                }
                buf.extend_from_slice(&chunk);
            }
            envelope::decode(method, status, &buf)
        };
        match tokio::time::timeout(timeout, work).await {
            Ok(r) => r,
            Err(_) => Err(TopError::Transport {
                method,
                timeout: true,
                detail: format!("no complete response within {} ms", timeout.as_millis()),
            }),
        }
    }

    /// Builds the URL (system parameters and `sign` in the query) and the form body (business
    /// parameters). Empty values are never sent, and so never signed.
    pub fn build(
        &self,
        method: &'static str,
        business: &[(&str, String)],
        session: Option<&Secret>,
        now: SystemTime,
    ) -> (Url, String) {
        let timestamp = wire_timestamp(now);
        let mut system: Vec<(&str, &str)> = vec![
            ("method", method),
            ("app_key", &self.cfg.app_key),
            ("timestamp", &timestamp),
            ("format", "json"),
            ("v", "2.0"),
            ("sign_method", self.cfg.sign_method.as_str()),
        ];
        if self.cfg.simplify {
            system.push(("simplify", "true"));
        }
        if let Some(s) = session.filter(|s| !s.is_empty()) {
            system.push(("session", s.expose()));
        }
        let business: Vec<(&str, &str)> = business
            .iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(k, v)| (*k, v.as_str()))
            .collect();
        let signature = sign(
            system.iter().chain(business.iter()).copied(),
            &self.cfg.secret,
            self.cfg.sign_method,
        );
        let mut url = self.cfg.endpoint.clone();
        {
            let mut q = url.query_pairs_mut();
            for (k, v) in &system {
                q.append_pair(k, v);
            }
            q.append_pair("sign", &signature);
        }
        let body = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(business)
            .finish();
        (url, body)
    }
}

/// A reqwest error with its sources, which say what actually went wrong (refused, reset...).
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(src) = cur {
        s.push_str(": ");
        s.push_str(&src.to_string());
        cur = src.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    fn client(simplify: bool) -> TopClient {
        let mut cfg = TopConfig::new(
            Url::parse("http://127.0.0.1:9/router/rest").unwrap(),
            "12345678",
            Secret::new("helloworld"),
        );
        cfg.sign_method = SignMethod::Md5;
        cfg.simplify = simplify;
        TopClient::new(cfg).unwrap()
    }

    /// System parameters and sign go in the query, business ones in the body; the signature is
    /// the documented consume vector.
    #[test]
    fn builds_the_consume_request() {
        let now = UNIX_EPOCH + Duration::from_secs(1_451_620_800); // 2016-01-01 12:00:00 GMT+8
        let (url, body) = client(true).build(
            "taobao.tmc.messages.consume",
            &[("group_name", "default".into()), ("quantity", "100".into())],
            None,
            now,
        );
        let q: Vec<(String, String)> = url.query_pairs().into_owned().collect();
        let get = |k: &str| q.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("sign"), Some("20D1D8AF228C3ED7FB3F147B33E1F12C"));
        assert_eq!(get("timestamp"), Some("2016-01-01 12:00:00"));
        assert_eq!(get("simplify"), Some("true"));
        assert_eq!(get("quantity"), None);
        assert_eq!(get("session"), None);
        assert_eq!(body, "group_name=default&quantity=100");
    }

    /// Empty business values are neither sent nor signed; simplify can be switched off.
    #[test]
    fn empty_values_are_dropped() {
        let now = UNIX_EPOCH;
        let (url, body) = client(false).build(
            "taobao.tmc.messages.consume",
            &[("group_name", String::new())],
            None,
            now,
        );
        assert_eq!(body, "");
        assert!(!url.query().unwrap().contains("group_name"));
        assert!(!url.query().unwrap().contains("simplify"));
    }

    /// The client's Debug shows no secret.
    #[test]
    fn debug_redacts_the_secret() {
        let s = format!("{:?}", client(true));
        assert!(!s.contains("helloworld"), "{s}");
    }

    /// Backoff stays within its ceiling.
    #[test]
    fn backoff_is_bounded() {
        let p = RetryPolicy {
            max_attempts: 5,
            base: Duration::from_millis(100),
            cap: Duration::from_millis(300),
        };
        for attempt in 0..10 {
            assert!(p.backoff(attempt) <= Duration::from_millis(300));
        }
        assert!(p.backoff(0) <= Duration::from_millis(100));
    }

    /// Backoff is jittered: repeated draws for one attempt are not all the same pause.
    #[test]
    fn backoff_is_jittered() {
        let p = RetryPolicy {
            max_attempts: 5,
            base: Duration::from_millis(100),
            cap: Duration::from_secs(2),
        };
        let draws: std::collections::HashSet<Duration> = (0..50).map(|_| p.backoff(3)).collect();
        assert!(draws.len() > 10, "{} distinct pauses in 50", draws.len());
    }
}
