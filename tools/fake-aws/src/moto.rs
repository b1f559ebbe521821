//! Forwarding to moto: same method, path, headers (signature included) and body.
//!
//! moto does not check SigV4 signatures, so a rewritten body (a batch with entries held back)
//! is accepted under the original signature.

use axum::http::{HeaderMap, HeaderName, Method};
use bytes::Bytes;
use std::time::Duration;

use super::wire::Answer;

/// moto's answers are small; this only guards against a runaway upstream.
const MAX_ANSWER_BYTES: usize = 64 * 1024 * 1024;

/// Headers that belong to one hop, or that a rewritten body would make wrong.
const HOP: &[&str] = &[
    "host",
    "content-length",
    "connection",
    "keep-alive",
    "transfer-encoding",
    "te",
    "upgrade",
    "expect",
    "proxy-connection",
];

/// Response headers dropped because the body may be rewritten.
const BODY_BOUND: &[&str] = &[
    "content-length",
    "transfer-encoding",
    "connection",
    "x-amz-crc32",
];

#[derive(Clone, Debug)]
pub struct Moto {
    client: reqwest::Client,
    /// moto's base URL; the request's path and query are appended.
    upstream: url::Url,
}

impl Moto {
    pub fn new(upstream: url::Url) -> std::io::Result<Self> {
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(120))
            .build()
            .map_err(std::io::Error::other)?;
        Ok(Self { client, upstream })
    }

    /// Sends the request to moto and returns its answer, or a 502 naming the failure.
    pub async fn forward(
        &self,
        method: Method,
        path_and_query: &str,
        headers: &HeaderMap,
        body: Bytes,
    ) -> Answer {
        let mut url = self.upstream.clone();
        let (path, query) = path_and_query
            .split_once('?')
            .map_or((path_and_query, None), |(p, q)| (p, Some(q)));
        url.set_path(path);
        url.set_query(query);
        let mut out = HeaderMap::new();
        for (k, v) in headers {
            if !HOP.contains(&k.as_str()) {
                out.append(k.clone(), v.clone());
            }
        }
        let sent = self
            .client
            .request(method, url)
            .headers(out)
            .body(body)
            .send()
            .await;
        let resp = match sent {
            Ok(r) => r,
            Err(e) => return unreachable_upstream(&e.to_string()),
        };
        let status = resp.status().as_u16();
        let headers: Vec<(String, String)> = resp
            .headers()
            .iter()
            .filter(|(k, _)| !BODY_BOUND.contains(&k.as_str()))
            .filter_map(|(k, v)| Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned())))
            .collect();
        if resp
            .content_length()
            .is_some_and(|l| l > MAX_ANSWER_BYTES as u64)
        {
            return unreachable_upstream("moto's answer is larger than 64 MiB");
        }
        match resp.bytes().await {
            Ok(body) => Answer {
                status,
                headers,
                body,
            },
            Err(e) => unreachable_upstream(&e.to_string()),
        }
    }
}

fn unreachable_upstream(why: &str) -> Answer {
    let body = serde_json::json!({
        "__type": "FakeAwsUpstreamError",
        "message": format!("fake-aws could not get an answer from moto: {why}"),
    });
    Answer::json(502, &body, Vec::new())
}

/// A header name for `x-amz-target`, to read it from requests.
pub const TARGET: HeaderName = HeaderName::from_static("x-amz-target");
