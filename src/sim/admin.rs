//! The admin API under `/_sim/`: what tests and scripts in other languages use to drive the
//! simulator. Bodies are JSON; bad input is a 400 with `{"error": "..."}`.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::json;

use super::{Faults, NewMessage, Scripted, Sim};

/// Largest `count` one generate call accepts, so a typo cannot exhaust memory.
const MAX_GENERATE: usize = 5_000_000;

pub(crate) fn routes() -> Router<Arc<Sim>> {
    Router::new()
        .route("/publish", post(publish))
        .route("/generate", post(generate))
        .route("/faults", post(faults))
        .route("/script", post(script))
        .route("/advance", post(advance))
        .route("/reset", post(reset))
        .route("/groups", post(groups))
        .route("/state", get(state))
}

fn bad(why: impl Into<String>) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(json!({ "error": why.into() })),
    )
        .into_response()
}

fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, Response> {
    serde_json::from_slice(body).map_err(|e| bad(format!("invalid JSON body: {e}")))
}

fn ids_json(ids: Vec<u64>) -> Response {
    let ids: Vec<String> = ids.iter().map(u64::to_string).collect();
    Json(json!({ "ids": ids })).into_response()
}

fn group_name(g: Option<String>) -> Result<Option<String>, Response> {
    match g {
        Some(g) if g.trim().is_empty() || g.contains(',') => {
            Err(bad("group_name must be non-empty and without commas"))
        }
        other => Ok(other),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishBody {
    #[serde(default)]
    group_name: Option<String>,
    messages: Vec<NewMessage>,
}

async fn publish(State(sim): State<Arc<Sim>>, body: Bytes) -> Response {
    let run = || -> Result<Response, Response> {
        let b: PublishBody = parse(&body)?;
        let group = group_name(b.group_name)?;
        Ok(ids_json(sim.publish(group.as_deref(), b.messages)))
    };
    run().unwrap_or_else(|e| e)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GenerateBody {
    #[serde(default)]
    group_name: Option<String>,
    count: usize,
}

async fn generate(State(sim): State<Arc<Sim>>, body: Bytes) -> Response {
    let run = || -> Result<Response, Response> {
        let b: GenerateBody = parse(&body)?;
        let group = group_name(b.group_name)?;
        if b.count > MAX_GENERATE {
            return Err(bad(format!("count must be at most {MAX_GENERATE}")));
        }
        Ok(ids_json(sim.generate(group.as_deref(), b.count)))
    };
    run().unwrap_or_else(|e| e)
}

async fn faults(State(sim): State<Arc<Sim>>, body: Bytes) -> Response {
    let run = || -> Result<Response, Response> {
        let f: Faults = parse(&body)?;
        f.validate().map_err(bad)?;
        sim.set_faults(f);
        Ok(Json(json!({ "ok": true })).into_response())
    };
    run().unwrap_or_else(|e| e)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ScriptBody {
    method: String,
    responses: Vec<Scripted>,
}

async fn script(State(sim): State<Arc<Sim>>, body: Bytes) -> Response {
    let run = || -> Result<Response, Response> {
        let b: ScriptBody = parse(&body)?;
        if b.method.is_empty() {
            return Err(bad("method must be non-empty"));
        }
        for s in &b.responses {
            s.validate().map_err(bad)?;
        }
        let n = b.responses.len();
        sim.script(&b.method, b.responses);
        Ok(Json(json!({ "ok": true, "queued": n })).into_response())
    };
    run().unwrap_or_else(|e| e)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AdvanceBody {
    seconds: f64,
}

async fn advance(State(sim): State<Arc<Sim>>, body: Bytes) -> Response {
    let run = || -> Result<Response, Response> {
        let b: AdvanceBody = parse(&body)?;
        let by = Duration::try_from_secs_f64(b.seconds)
            .map_err(|_| bad("seconds must be a finite, non-negative number"))?;
        let now_ms = sim.advance(by);
        Ok(Json(json!({ "ok": true, "now_ms": now_ms })).into_response())
    };
    run().unwrap_or_else(|e| e)
}

async fn reset(State(sim): State<Arc<Sim>>) -> Response {
    sim.reset();
    Json(json!({ "ok": true })).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GroupBody {
    name: String,
}

async fn groups(State(sim): State<Arc<Sim>>, body: Bytes) -> Response {
    let run = || -> Result<Response, Response> {
        let b: GroupBody = parse(&body)?;
        let name = group_name(Some(b.name))?.unwrap_or_default();
        let created = sim.create_group(&name);
        Ok(Json(json!({ "ok": true, "created": created })).into_response())
    };
    run().unwrap_or_else(|e| e)
}

#[derive(Deserialize)]
struct StateQuery {
    /// `false` leaves out the per-message map.
    #[serde(default)]
    messages: Option<bool>,
}

async fn state(
    State(sim): State<Arc<Sim>>,
    q: Result<Query<StateQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    match q {
        Ok(Query(q)) => Json(sim.state(q.messages.unwrap_or(true))).into_response(),
        Err(e) => bad(format!("invalid query: {e}")),
    }
}
