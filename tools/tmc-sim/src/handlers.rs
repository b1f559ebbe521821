//! One gateway request end to end: parse, verify, then scripts, bans and faults, then the
//! method itself. Synchronous under the lock; the HTTP layer only waits out the latency.

use std::time::{Duration, SystemTime};

use serde_json::{json, Map, Value};

use crate::wire::method as api;

use super::faults::{draw, truncate_half, Fault, Scripted, BAD_GATEWAY_HTML};
use super::gateway::{
    comma_list, parse_uint, verify_request, ApiError, RequestParams, Shape, Verified,
};
use super::manage;
use super::state::{Delivered, DEFAULT_GROUP};
use super::{Inner, Sim};

pub(crate) const JSON: &str = "application/json;charset=UTF-8";

/// `quantity` when consume is called without one, and its bounds.
const DEFAULT_QUANTITY: u64 = 100;
const QUANTITY: std::ops::RangeInclusive<u64> = 10..=200;
/// At most this many ids per confirm.
const MAX_CONFIRM_IDS: usize = 200;

/// What the HTTP layer sends back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Reply {
    Http {
        status: u16,
        content_type: String,
        body: String,
    },
    /// Drop the connection without a response.
    Reset,
}

impl Reply {
    fn json(body: String) -> Self {
        Reply::Http {
            status: 200,
            content_type: JSON.to_owned(),
            body,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Outcome {
    /// The answer, or a dropped connection.
    pub reply: Reply,
    /// Injected latency, waited out before replying.
    pub delay: Duration,
}

impl Sim {
    /// Answers one `router/rest` request. `form_body` is the body when it is form-encoded.
    pub(crate) fn answer(&self, query: Option<&str>, form_body: Option<&[u8]>) -> Outcome {
        let wall_now = SystemTime::now();
        let checked = RequestParams::parse(query, form_body)
            .and_then(|p| verify_request(&p, &self.cfg, wall_now).map(|v| (p, v)));
        let mut inner = self.lock();
        let request_id = inner.next_request_id();
        match checked {
            Ok((params, verified)) => inner.handle(&params, &verified, &request_id),
            Err(e) => {
                tracing::debug!(code = e.code, error = %e, "request refused");
                *inner.rejected.entry(e.code.to_string()).or_default() += 1;
                Outcome {
                    reply: Reply::json(e.body(&request_id)),
                    delay: Duration::ZERO,
                }
            }
        }
    }
}

impl Inner {
    fn handle(&mut self, p: &RequestParams, v: &Verified, request_id: &str) -> Outcome {
        let now_ms = self.now_ms();
        let method = v.method.as_str();
        *self.calls.entry(method.to_owned()).or_default() += 1;
        match method {
            api::CONSUME => self.consume_calls += 1,
            api::CONFIRM => self.confirm_calls += 1,
            _ => {}
        }
        if let Some(s) = self.scripts.get_mut(method).and_then(|q| q.pop_front()) {
            self.count_fault("scripted");
            tracing::debug!(
                method,
                status = s.status,
                reset = s.reset_connection,
                "scripted answer"
            );
            return Outcome {
                reply: scripted(s),
                delay: Duration::ZERO,
            };
        }
        let faults = self.faults.for_method(method).cloned();
        let delay = faults.as_ref().map(|f| f.latency).unwrap_or_default();
        let done = |reply| Outcome { reply, delay };
        if let Some(&until) = self.bans.get(method) {
            if until > now_ms {
                self.count_fault("banned");
                let left = (until - now_ms).div_ceil(1000);
                return done(Reply::json(ban(left).body(request_id)));
            }
            self.bans.remove(method);
        }
        let fault = faults
            .as_ref()
            .and_then(|f| draw(f, method == api::CONFIRM, &mut self.fault_rng));
        if let Some(f) = fault {
            self.count_fault(f.kind());
            tracing::debug!(method, fault = f.kind(), "fault injected");
        }
        let shape = if v.simplify {
            Shape::Simplified
        } else {
            Shape::Plain
        };
        if let (Some(Fault::Error { .. }), Some(e)) =
            (fault, faults.as_ref().and_then(|f| f.error.as_ref()))
        {
            let err = ApiError {
                code: e.code,
                msg: e.msg.clone().unwrap_or_else(|| "Injected error".to_owned()),
                sub_code: e.sub_code.clone(),
                sub_msg: e.sub_msg.clone(),
            };
            return done(Reply::json(err.body(request_id)));
        }
        match fault {
            Some(Fault::Error { code10: true }) => done(Reply::json(
                ApiError::new(10, "Service currently unavailable").body(request_id),
            )),
            Some(Fault::Error { code10: false }) => done(Reply::json(
                ApiError::new(15, "Remote service error")
                    .sub(
                        "isp.top-remote-connection-timeout",
                        "the platform's backend did not answer in time",
                    )
                    .body(request_id),
            )),
            Some(Fault::Ban { secs }) => {
                if secs > 0 {
                    self.bans
                        .insert(method.to_owned(), now_ms.saturating_add(secs * 1000));
                }
                done(Reply::json(ban(secs).body(request_id)))
            }
            Some(Fault::Http502) => done(Reply::Http {
                status: 502,
                content_type: "text/html".to_owned(),
                body: BAD_GATEWAY_HTML.to_owned(),
            }),
            _ => {
                let apply = fault != Some(Fault::ConfirmFalse);
                let body = match self.dispatch(method, p, v, shape, now_ms, apply) {
                    Ok(fields) => shape.body(method, fields, request_id),
                    Err(e) => {
                        tracing::debug!(method, error = %e, "method error");
                        e.body(request_id)
                    }
                };
                match fault {
                    Some(Fault::Malformed) => done(Reply::json(truncate_half(&body))),
                    Some(Fault::Reset) => done(Reply::Reset),
                    _ => done(Reply::json(body)),
                }
            }
        }
    }

    fn dispatch(
        &mut self,
        method: &str,
        p: &RequestParams,
        v: &Verified,
        shape: Shape,
        now_ms: u64,
        apply: bool,
    ) -> Result<Map<String, Value>, ApiError> {
        let session = v.session.as_deref().unwrap_or_default();
        match method {
            api::CONSUME => self.consume(p, shape, now_ms),
            api::CONFIRM => self.confirm(p, now_ms, apply),
            api::USER_PERMIT => manage::user_permit(self, p, session, now_ms),
            api::USER_CANCEL => manage::user_cancel(self, p),
            api::USER_GET => manage::user_get(self, p),
            api::GROUPS_GET => manage::groups_get(self, p, shape),
            api::GROUP_ADD => manage::group_add(self, p, now_ms),
            api::GROUP_DELETE => manage::group_delete(self, p),
            api::QUEUE_GET => manage::queue_get(self, p, shape, now_ms),
            api::JMS_USER_ADD => manage::jms_user_add(self, p, session, now_ms),
            api::JMS_USER_GET => manage::jms_user_get(self, p),
            api::JMS_USER_DELETE => manage::jms_user_delete(self, p),
            // verify_request only lets known methods through.
            other => Err(ApiError::new(22, "Invalid method").detail(format!("no method {other}"))),
        }
    }

    /// The group a consume or confirm names (the default group when absent); it must exist.
    pub(crate) fn existing_group<'a>(&self, p: &'a RequestParams) -> Result<&'a str, ApiError> {
        let group = p.get("group_name").unwrap_or(DEFAULT_GROUP);
        if self.store.group(group).is_none() {
            return Err(group_not_exist(group));
        }
        Ok(group)
    }

    fn consume(
        &mut self,
        p: &RequestParams,
        shape: Shape,
        now_ms: u64,
    ) -> Result<Map<String, Value>, ApiError> {
        let quantity = match p.get("quantity") {
            None => DEFAULT_QUANTITY,
            Some(raw) => parse_uint("quantity", raw)?,
        };
        if !QUANTITY.contains(&quantity) {
            return Err(ApiError::invalid(
                "quantity",
                format!("quantity must be within 10..=200, got {quantity}"),
            ));
        }
        let group = self.existing_group(p)?;
        let msgs = self
            .store
            .consume(group, quantity as usize, now_ms)
            .ok_or_else(|| group_not_exist(group))?;
        tracing::debug!(group, count = msgs.len(), "consumed");
        let mut out = Map::new();
        // The plain shape leaves an empty list out, as the platform does.
        if shape == Shape::Simplified || !msgs.is_empty() {
            let items = msgs.iter().map(message_json).collect();
            out.insert("messages".into(), shape.list("tmc_message", items));
        }
        Ok(out)
    }

    fn confirm(
        &mut self,
        p: &RequestParams,
        now_ms: u64,
        apply: bool,
    ) -> Result<Map<String, Value>, ApiError> {
        let raw = p
            .get("s_message_ids")
            .ok_or_else(|| ApiError::missing("s_message_ids"))?;
        let mut ids = Vec::new();
        for item in comma_list("s_message_ids", raw, MAX_CONFIRM_IDS)? {
            let id = parse_uint("s_message_ids", item)?;
            if id == 0 {
                return Err(ApiError::invalid(
                    "s_message_ids",
                    "message id 0 is not valid",
                ));
            }
            // The platform reads ids as Java longs: a larger number fails the whole call.
            if id > i64::MAX as u64 {
                return Err(ApiError::invalid(
                    "s_message_ids",
                    "message id is not a valid long",
                ));
            }
            ids.push(id);
        }
        let group = self.existing_group(p)?;
        if apply {
            let out = self.store.confirm(group, &ids, now_ms);
            tracing::debug!(
                group,
                confirmed = out.confirmed,
                unknown = out.unknown,
                "confirmed"
            );
        }
        let mut m = Map::new();
        m.insert("is_success".into(), json!(apply));
        Ok(m)
    }
}

pub(crate) fn group_not_exist(group: &str) -> ApiError {
    ApiError::business(
        "isv.group-not-exist",
        format!("group {group} does not exist"),
    )
}

fn ban(secs: u64) -> ApiError {
    ApiError::new(7, "App Call Limited").sub(
        "accesscontrol.limited-by-app-access-count",
        format!("This ban will last for {secs} more seconds"),
    )
}

fn scripted(s: Scripted) -> Reply {
    if s.reset_connection {
        return Reply::Reset;
    }
    Reply::Http {
        status: if (200..=599).contains(&s.status) {
            s.status
        } else {
            500
        },
        content_type: s.content_type.unwrap_or_else(|| JSON.to_owned()),
        body: s.body,
    }
}

/// A `tmc_message`: ids are bare JSON numbers, exact beyond 2^53.
fn message_json(m: &Delivered) -> Value {
    json!({
        "user_id": m.user_id,
        "user_nick": m.user_nick,
        "content": m.content,
        "id": m.id,
        "pub_time": m.pub_time,
        "pub_app_key": m.pub_app_key,
        "topic": m.topic,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signature::{self, Algorithm};
    use crate::wire::wire_timestamp;
    use crate::{Faults, MethodFaults, NewMessage, SimConfig};

    fn sim() -> Sim {
        Sim::new(SimConfig::default())
    }

    /// A signed request (md5, simplified unless `simplify` is "false").
    fn request(sim: &Sim, method: &str, business: &[(&str, &str)]) -> (u16, Value) {
        let ts = wire_timestamp(SystemTime::now());
        let mut pairs: Vec<(&str, &str)> = vec![
            ("method", method),
            ("app_key", "sim-app"),
            ("timestamp", &ts),
            ("format", "json"),
            ("v", "2.0"),
            ("sign_method", "md5"),
        ];
        pairs.extend_from_slice(business);
        let owned: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let s = signature::expected(&owned, "sim-secret", Algorithm::Md5);
        pairs.push(("sign", &s));
        let q = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(pairs)
            .finish();
        match sim.answer(Some(&q), None).reply {
            Reply::Http { status, body, .. } => (
                status,
                serde_json::from_str(&body).unwrap_or(Value::String(body)),
            ),
            Reply::Reset => (0, Value::Null),
        }
    }

    fn error_code(v: &Value) -> Option<i64> {
        v["error_response"]["code"].as_i64()
    }

    /// Consume answers both shapes; the plain one wraps the list by item type.
    #[test]
    fn consume_shapes() {
        let s = sim();
        s.publish(
            None,
            vec![NewMessage::new("t", "{}").with_id(9_007_199_254_740_993)],
        );
        let (_, plain) = request(&s, api::CONSUME, &[("simplify", "false")]);
        let m = &plain["tmc_messages_consume_response"]["messages"]["tmc_message"][0];
        assert_eq!(m["id"].as_u64(), Some(9_007_199_254_740_993));
        assert!(plain["tmc_messages_consume_response"]["request_id"].is_string());
        // Empty poll, plain: no messages key. Simplified: an empty array.
        let (_, empty) = request(&s, api::CONSUME, &[]);
        assert_eq!(empty["tmc_messages_consume_response"].get("messages"), None);
        let (_, empty) = request(&s, api::CONSUME, &[("simplify", "true")]);
        assert_eq!(empty["messages"], json!([]));
        assert!(empty["request_id"].is_string());
    }

    /// Bad consume and confirm arguments answer 40/41/15 with the parameter named.
    #[test]
    fn method_argument_errors() {
        let s = sim();
        for q in ["9", "201", "ten", "-10", " 10"] {
            let (_, v) = request(&s, api::CONSUME, &[("quantity", q)]);
            assert_eq!(error_code(&v), Some(41), "{q}");
            assert_eq!(
                v["error_response"]["sub_code"],
                "isv.invalid-parameter:quantity"
            );
        }
        let (_, v) = request(&s, api::CONSUME, &[("group_name", "nope")]);
        assert_eq!(error_code(&v), Some(15));
        assert_eq!(v["error_response"]["sub_code"], "isv.group-not-exist");
        let (_, v) = request(&s, api::CONFIRM, &[]);
        assert_eq!(error_code(&v), Some(40));
        assert_eq!(
            v["error_response"]["sub_code"],
            "isv.missing-parameter:s_message_ids"
        );
        let many = (1..=201)
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(",");
        for ids in [
            many.as_str(),
            "1,x",
            "1,,2",
            "0",
            "18446744073709551616",
            "18446744073709551615",
            "5,9223372036854775808",
        ] {
            let (_, v) = request(&s, api::CONFIRM, &[("s_message_ids", ids)]);
            assert_eq!(error_code(&v), Some(41), "{ids}");
        }
        let (_, v) = request(
            &s,
            api::CONFIRM,
            &[
                ("s_message_ids", "9223372036854775807"),
                ("simplify", "true"),
            ],
        );
        assert_eq!(v["is_success"], true);
        assert_eq!(s.state(false).unknown_confirms, 1);
    }

    /// Scripts override normal handling in order; the queue is untouched.
    #[test]
    fn scripts_come_first() {
        let s = sim();
        s.publish(None, vec![NewMessage::new("t", "{}")]);
        s.script(
            api::CONSUME,
            vec![Scripted::status(503, "busy"), Scripted::reset()],
        );
        assert_eq!(request(&s, api::CONSUME, &[]).0, 503);
        assert_eq!(request(&s, api::CONSUME, &[]).0, 0);
        let (_, v) = request(&s, api::CONSUME, &[("simplify", "true")]);
        assert_eq!(v["messages"].as_array().unwrap().len(), 1);
        let st = s.state(false);
        assert_eq!(st.faults_injected["scripted"], 2);
        assert_eq!(st.consume_calls, 3);
        assert_eq!(st.deliveries, 1);
    }

    /// A ban fault starts a ban that refuses later calls until it ends on the sim clock.
    #[test]
    fn ban_lasts_its_seconds() {
        let s = sim();
        s.set_faults(Faults::none().with(
            api::CONSUME,
            MethodFaults {
                ban_rate: 1.0,
                ban_secs: 31,
                ..MethodFaults::default()
            },
        ));
        let (_, v) = request(&s, api::CONSUME, &[]);
        assert_eq!(error_code(&v), Some(7));
        assert_eq!(
            v["error_response"]["sub_msg"],
            "This ban will last for 31 more seconds"
        );
        s.lock().faults = Faults::none();
        let (_, v) = request(&s, api::CONSUME, &[]);
        assert_eq!(error_code(&v), Some(7));
        s.advance(Duration::from_secs(31));
        let (_, v) = request(&s, api::CONSUME, &[]);
        assert_eq!(error_code(&v), None);
        let st = s.state(false);
        assert_eq!(
            (st.faults_injected["ban"], st.faults_injected["banned"]),
            (1, 1)
        );
    }

    /// Malformed and reset faults on consume happen after the messages were leased.
    #[test]
    fn lossy_faults_lease_first() {
        for (f, expect_status) in [
            (
                MethodFaults {
                    malformed_rate: 1.0,
                    ..MethodFaults::default()
                },
                200,
            ),
            (
                MethodFaults {
                    reset_rate: 1.0,
                    ..MethodFaults::default()
                },
                0,
            ),
        ] {
            let s = sim();
            s.publish(None, vec![NewMessage::new("t", "{}")]);
            s.set_faults(Faults::none().with(api::CONSUME, f));
            let (status, v) = request(&s, api::CONSUME, &[]);
            assert_eq!(status, expect_status);
            assert!(!v.is_object());
            let st = s.state(false);
            assert_eq!((st.inflight, st.deliveries), (1, 1));
        }
    }

    /// Error, ban and 502 faults change nothing; confirm_false confirms nothing.
    #[test]
    fn refusing_faults_change_nothing() {
        let s = sim();
        let ids = s.publish(None, vec![NewMessage::new("t", "{}")]);
        for f in [
            MethodFaults {
                error_rate: 1.0,
                ..MethodFaults::default()
            },
            MethodFaults {
                http502_rate: 1.0,
                ..MethodFaults::default()
            },
        ] {
            s.set_faults(Faults::none().with("*", f));
            let (status, _) = request(&s, api::CONSUME, &[]);
            assert!(status == 200 || status == 502);
        }
        assert_eq!(s.state(false).deliveries, 0);
        s.set_faults(Faults::none().with(
            api::CONFIRM,
            MethodFaults {
                confirm_false_rate: 1.0,
                ..MethodFaults::default()
            },
        ));
        let id = ids[0].to_string();
        let (_, v) = request(
            &s,
            api::CONFIRM,
            &[("s_message_ids", &id), ("simplify", "true")],
        );
        assert_eq!(v["is_success"], false);
        assert_eq!(s.state(false).confirmed, 0);
    }

    /// Refused requests are counted by code and never reach a method.
    #[test]
    fn refusals_are_counted() {
        let s = sim();
        let (_, v) = request(&s, "taobao.tmc.nope", &[]);
        assert_eq!(error_code(&v), Some(22));
        let st = s.state(false);
        assert_eq!(st.rejected["22"], 1);
        assert!(st.calls.is_empty());
    }
}
