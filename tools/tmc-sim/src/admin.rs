//! The admin API under `/_sim/`: what tests and scripts in other languages use to drive the
//! simulator. Bodies are JSON; bad input is a 400 with `{"error": "..."}`.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};

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

/// A 400 with `{"error": "..."}`.
struct Bad(String);

impl IntoResponse for Bad {
    fn into_response(self) -> Response {
        (StatusCode::BAD_REQUEST, Json(json!({ "error": self.0 }))).into_response()
    }
}

type Answer = Result<Json<Value>, Bad>;

fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, Bad> {
    serde_json::from_slice(body).map_err(|e| Bad(format!("invalid JSON body: {e}")))
}

fn ids_json(ids: Vec<u64>) -> Json<Value> {
    let ids: Vec<String> = ids.iter().map(u64::to_string).collect();
    Json(json!({ "ids": ids }))
}

fn group_name(g: Option<String>) -> Result<Option<String>, Bad> {
    match g {
        Some(g) if g.trim().is_empty() || g.contains(',') => Err(Bad(
            "group_name must be non-empty and without commas".to_owned(),
        )),
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

async fn publish(State(sim): State<Arc<Sim>>, body: Bytes) -> Answer {
    let b: PublishBody = parse(&body)?;
    let group = group_name(b.group_name)?;
    Ok(ids_json(sim.publish(group.as_deref(), b.messages)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GenerateBody {
    #[serde(default)]
    group_name: Option<String>,
    count: usize,
}

async fn generate(State(sim): State<Arc<Sim>>, body: Bytes) -> Answer {
    let b: GenerateBody = parse(&body)?;
    let group = group_name(b.group_name)?;
    if b.count > MAX_GENERATE {
        return Err(Bad(format!("count must be at most {MAX_GENERATE}")));
    }
    Ok(ids_json(sim.generate(group.as_deref(), b.count)))
}

async fn faults(State(sim): State<Arc<Sim>>, body: Bytes) -> Answer {
    let f: Faults = parse(&body)?;
    f.validate().map_err(Bad)?;
    sim.set_faults(f);
    Ok(Json(json!({ "ok": true })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ScriptBody {
    method: String,
    responses: Vec<Scripted>,
}

async fn script(State(sim): State<Arc<Sim>>, body: Bytes) -> Answer {
    let b: ScriptBody = parse(&body)?;
    if b.method.is_empty() {
        return Err(Bad("method must be non-empty".to_owned()));
    }
    for s in &b.responses {
        s.validate().map_err(Bad)?;
    }
    let n = b.responses.len();
    sim.script(&b.method, b.responses);
    Ok(Json(json!({ "ok": true, "queued": n })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AdvanceBody {
    seconds: f64,
}

async fn advance(State(sim): State<Arc<Sim>>, body: Bytes) -> Answer {
    let b: AdvanceBody = parse(&body)?;
    let by = Duration::try_from_secs_f64(b.seconds)
        .map_err(|_| Bad("seconds must be a finite, non-negative number".to_owned()))?;
    let now_ms = sim.advance(by);
    Ok(Json(json!({ "ok": true, "now_ms": now_ms })))
}

async fn reset(State(sim): State<Arc<Sim>>) -> Answer {
    sim.reset();
    Ok(Json(json!({ "ok": true })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GroupBody {
    name: String,
}

async fn groups(State(sim): State<Arc<Sim>>, body: Bytes) -> Answer {
    let b: GroupBody = parse(&body)?;
    let name = group_name(Some(b.name))?.unwrap_or_default();
    let created = sim.create_group(&name);
    Ok(Json(json!({ "ok": true, "created": created })))
}

#[derive(Deserialize)]
struct StateQuery {
    /// `false` leaves out the per-message map.
    #[serde(default)]
    messages: Option<bool>,
}

async fn state(
    State(sim): State<Arc<Sim>>,
    q: Result<Query<StateQuery>, QueryRejection>,
) -> Response {
    match q {
        Ok(Query(q)) => Json(sim.state(q.messages.unwrap_or(true))).into_response(),
        Err(e) => Bad(format!("invalid query: {e}")).into_response(),
    }
}
