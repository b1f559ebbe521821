//! The one place where a gateway response becomes `Ok(object)` or a `TopError`.

use serde_json::{Map, Value};

use super::error::{body_head, TopError};
use super::message::type_name;

/// How much of an undecodable body an error keeps as evidence.
pub const BODY_HEAD: usize = 256;

/// `taobao.tmc.messages.consume` → `tmc_messages_consume_response`.
pub fn response_key(method: &str) -> String {
    let name = method.strip_prefix("taobao.").unwrap_or(method);
    format!("{}_response", name.replace('.', "_"))
}

/// Decodes a body in either the plain (`<name>_response` root) or the simplified shape.
pub fn decode(
    method: &'static str,
    status: u16,
    body: &[u8],
) -> Result<Map<String, Value>, TopError> {
    let ok_status = (200..300).contains(&status);
    let fail = |reason: String| {
        if ok_status {
            TopError::Decode {
                method,
                status,
                reason,
                body_head: body_head(body, BODY_HEAD),
            }
        } else {
            TopError::Http {
                method,
                status,
                body_head: body_head(body, BODY_HEAD),
            }
        }
    };
    let value: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        // One message with a lone surrogate escape must not make the whole batch unreadable.
        Err(e) => match repair_lone_surrogates(body) {
            Some(fixed) => {
                tracing::warn!(
                    method,
                    "response held lone UTF-16 surrogate escapes; replaced them with U+FFFD"
                );
                serde_json::from_slice(&fixed).map_err(|_| fail(format!("not JSON ({e})")))?
            }
            None => return Err(fail(format!("not JSON ({e})"))),
        },
    };
    // An empty poll may come as a bare `[]` (protocol notes: accept every empty shape); the
    // typed call then finds no messages. Any other non-object is an error.
    let value = match value {
        Value::Array(a) if a.is_empty() && ok_status => Value::Object(Map::new()),
        other => other,
    };
    let Value::Object(mut root) = value else {
        return Err(fail(format!(
            "expected a JSON object, got {}",
            type_name(&value)
        )));
    };
    if let Some(err) = root.remove("error_response") {
        return Err(api_error(method, &err));
    }
    if !ok_status {
        return Err(fail(String::new()));
    }
    match root.remove(&response_key(method)) {
        Some(Value::Object(inner)) => Ok(inner),
        Some(other) => Err(fail(format!(
            "{} is {}, not an object",
            response_key(method),
            type_name(&other)
        ))),
        None => Ok(root),
    }
}

fn api_error(method: &'static str, err: &Value) -> TopError {
    let text = |name: &str| match err.get(name) {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    };
    let code = match err.get("code") {
        Some(Value::Number(n)) => n.as_i64().unwrap_or(-1),
        Some(Value::String(s)) => s.trim().parse().unwrap_or(-1),
        _ => -1,
    };
    TopError::Api {
        method,
        code,
        msg: text("msg").unwrap_or_default(),
        sub_code: text("sub_code"),
        sub_msg: text("sub_msg"),
        request_id: text("request_id"),
    }
}

/// Rewrites `\uD800`-style escapes that are not part of a surrogate pair as `\uFFFD` (JSON
/// strings only; escaped backslashes are respected). `None` when there was nothing to repair.
pub fn repair_lone_surrogates(body: &[u8]) -> Option<Vec<u8>> {
    fn hex4(b: &[u8]) -> Option<u16> {
        let s = std::str::from_utf8(b.get(..4)?).ok()?;
        u16::from_str_radix(s, 16).ok()
    }
    let mut out = Vec::with_capacity(body.len());
    let mut changed = false;
    let mut in_string = false;
    let mut i = 0;
    while i < body.len() {
        let b = body[i];
        if !in_string {
            in_string = b == b'"';
            out.push(b);
            i += 1;
            continue;
        }
        match b {
            b'"' => {
                in_string = false;
                out.push(b);
                i += 1;
            }
            b'\\' if body.get(i + 1) == Some(&b'u') => {
                let Some(cu) = hex4(&body[i + 2..]) else {
                    out.push(b);
                    i += 1;
                    continue;
                };
                let paired = (0xD800..=0xDBFF).contains(&cu)
                    && body.get(i + 6) == Some(&b'\\')
                    && body.get(i + 7) == Some(&b'u')
                    && hex4(&body[i + 8..]).is_some_and(|lo| (0xDC00..=0xDFFF).contains(&lo));
                if paired {
                    out.extend_from_slice(&body[i..i + 12]);
                    i += 12;
                } else if (0xD800..=0xDFFF).contains(&cu) {
                    out.extend_from_slice(b"\\uFFFD");
                    changed = true;
                    i += 6;
                } else {
                    out.extend_from_slice(&body[i..i + 6]);
                    i += 6;
                }
            }
            b'\\' => {
                out.extend_from_slice(&body[i..(i + 2).min(body.len())]);
                i += 2;
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    changed.then_some(out)
}

/// Reads a list in any of the shapes the gateway uses: absent or null (empty), a plain array
/// (simplified), an object wrapping one array by item type (`{"tmc_message":[...]}`), an empty
/// object, or an object wrapping a single item.
pub fn list(v: Option<&Value>) -> Result<Vec<Value>, String> {
    into_list(v.cloned()).map_err(|(why, _)| why)
}

/// [`list`], taking the value instead of copying its items (consume's up to 200 messages). On
/// error the value comes back with the reason, so the caller can still quote it.
pub fn into_list(v: Option<Value>) -> Result<Vec<Value>, (String, Option<Value>)> {
    match v {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => Ok(items),
        Some(Value::Object(o)) if o.is_empty() => Ok(Vec::new()),
        Some(Value::Object(o)) if o.len() == 1 => match o.into_iter().next() {
            Some((_, Value::Array(items))) => Ok(items),
            Some((_, item @ Value::Object(_))) => Ok(vec![item]),
            Some((key, other)) if !other.is_null() => Err((
                format!("list wrapper holds {}", type_name(&other)),
                Some(Value::Object(Map::from_iter([(key, other)]))),
            )),
            _ => Ok(Vec::new()),
        },
        Some(other) => Err((
            format!("expected a list, got {}", type_name(&other)),
            Some(other),
        )),
    }
}

/// Reads a boolean sent as `true`/`false` or `"true"`/`"false"`.
pub fn boolean(v: Option<&Value>) -> Option<bool> {
    match v? {
        Value::Bool(b) => Some(*b),
        Value::String(s) if s.eq_ignore_ascii_case("true") => Some(true),
        Value::String(s) if s.eq_ignore_ascii_case("false") => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::top::error::ErrorClass;
    use std::time::Duration;

    const CONSUME: &str = "taobao.tmc.messages.consume";

    /// Response keys follow the platform's naming rule.
    #[test]
    fn response_keys() {
        assert_eq!(response_key(CONSUME), "tmc_messages_consume_response");
        assert_eq!(
            response_key("taobao.jushita.jms.user.add"),
            "jushita_jms_user_add_response"
        );
    }

    /// The captured plain response decodes, and its id survives exactly.
    #[test]
    fn decodes_the_real_plain_response() {
        let body = br#"{"tmc_messages_consume_response":{"messages":{"tmc_message":[{"user_id":123456789,"user_nick":"usernick","content":"{\"nick\":\"usernick\",\"increment\":1,\"num\":502,\"changed_fields\":\"num\",\"num_iid\":15380658823}","id":7104300007405429232,"pub_time":"2013-10-05 10:55:58","pub_app_key":"12499723","topic":"taobao_item_ItemStockChanged"}]}}}"#;
        let inner = decode(CONSUME, 200, body).unwrap();
        let items = list(inner.get("messages")).unwrap();
        assert_eq!(items.len(), 1);
        assert_eq!(items[0]["id"].as_u64(), Some(7_104_300_007_405_429_232));
    }

    /// The simplified shape has no root wrapper and plain arrays.
    #[test]
    fn decodes_simplified() {
        let inner = decode(CONSUME, 200, br#"{"messages":[{"id":1}],"request_id":"r"}"#).unwrap();
        assert_eq!(list(inner.get("messages")).unwrap().len(), 1);
    }

    /// Every empty-poll shape in the notes is an empty list.
    #[test]
    fn empty_polls() {
        for body in [
            r#"{}"#,
            r#"{"tmc_messages_consume_response":{}}"#,
            r#"{"messages":{}}"#,
            r#"{"messages":{"tmc_message":[]}}"#,
            r#"{"messages":[]}"#,
            r#"{"messages":null}"#,
            r#"{"tmc_messages_consume_response":{"messages":{"tmc_message":[]}}}"#,
            r#"[]"#,
        ] {
            let inner = decode(CONSUME, 200, body.as_bytes()).unwrap();
            assert_eq!(
                list(inner.get("messages")).unwrap(),
                Vec::<Value>::new(),
                "{body}"
            );
        }
    }

    /// A `messages` of the wrong shape is an error that names the shape and still quotes it;
    /// every list shape gives its messages, in order.
    #[test]
    fn wrong_list_shapes_are_named_and_quoted() {
        use crate::top::api::consume_messages;
        for (body, why) in [
            (
                r#"{"messages":"nope"}"#,
                "messages: expected a list, got string",
            ),
            (
                r#"{"messages":{"tmc_message":7}}"#,
                "messages: list wrapper holds number",
            ),
        ] {
            let inner = decode(CONSUME, 200, body.as_bytes()).unwrap();
            match consume_messages(inner) {
                Err(TopError::Decode {
                    reason, body_head, ..
                }) => {
                    assert_eq!(reason, why);
                    assert!(body_head.contains("messages"), "{body_head}");
                }
                other => panic!("{body}: {other:?}"),
            }
        }
        for (body, want) in [
            (r#"{"messages":{"tmc_message":{"id":1}}}"#, vec![Some(1)]),
            (
                r#"{"messages":{"tmc_message":[{"id":1},{"id":2}]}}"#,
                vec![Some(1), Some(2)],
            ),
            (r#"{"messages":[{"id":1}]}"#, vec![Some(1)]),
            (r#"{"messages":{"tmc_message":null}}"#, vec![]),
        ] {
            let inner = decode(CONSUME, 200, body.as_bytes()).unwrap();
            let ids: Vec<_> = consume_messages(inner)
                .unwrap()
                .iter()
                .map(|m| m.id)
                .collect();
            assert_eq!(ids, want, "{body}");
        }
    }

    /// error_response with a numeric code, a string code, no msg; classification follows.
    #[test]
    fn error_responses() {
        let e = decode(CONSUME, 200, br#"{"error_response":{"code":7,"msg":"App Call Limited","sub_code":"accesscontrol.limited-by-app-access-count","sub_msg":"This ban will last for 31 more seconds","request_id":"x"}}"#).unwrap_err();
        assert_eq!(
            e.class(),
            ErrorClass::RateLimited {
                ban: Duration::from_secs(31)
            }
        );
        let e = decode(
            CONSUME,
            200,
            br#"{"error_response":{"code":"25","msg":"Invalid signature"}}"#,
        )
        .unwrap_err();
        assert_eq!(e.code(), Some(25));
        assert!(matches!(e.class(), ErrorClass::Fatal { .. }));
        let e = decode(CONSUME, 200, br#"{"error_response":{"code":"oops"}}"#).unwrap_err();
        assert_eq!(e.code(), Some(-1));
        assert_eq!(e.class(), ErrorClass::Permanent);
        // An error envelope on a 5xx is still the API error.
        let e = decode(
            CONSUME,
            500,
            br#"{"error_response":{"code":10,"msg":"Service currently unavailable"}}"#,
        )
        .unwrap_err();
        assert_eq!(e.code(), Some(10));
    }

    /// HTML, truncated JSON and non-objects keep the status and the start of the body.
    #[test]
    fn undecodable_bodies_keep_evidence() {
        let html = b"<html><body>502 Bad Gateway</body></html>";
        match decode(CONSUME, 502, html).unwrap_err() {
            TopError::Http {
                status, body_head, ..
            } => {
                assert_eq!(status, 502);
                assert!(body_head.starts_with("<html>"));
            }
            other => panic!("{other:?}"),
        }
        match decode(CONSUME, 200, br#"{"messages":[{"id":71043"#).unwrap_err() {
            TopError::Decode {
                status,
                reason,
                body_head,
                ..
            } => {
                assert_eq!(status, 200);
                assert!(reason.contains("not JSON"), "{reason}");
                assert!(body_head.starts_with("{\"messages\""));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            decode(CONSUME, 200, b"[1]").unwrap_err(),
            TopError::Decode { .. }
        ));
        assert!(matches!(
            decode(CONSUME, 200, b"").unwrap_err(),
            TopError::Decode { .. }
        ));
        let e = decode(CONSUME, 200, br#"{"tmc_messages_consume_response":5}"#).unwrap_err();
        assert!(matches!(e, TopError::Decode { .. }));
        let long = vec![b'x'; 10_000];
        match decode(CONSUME, 200, &long).unwrap_err() {
            TopError::Decode { body_head, .. } => assert_eq!(body_head.len(), BODY_HEAD),
            other => panic!("{other:?}"),
        }
    }

    /// A lone surrogate escape in one message does not make the batch unreadable; valid pairs,
    /// escaped backslashes and double-escaped content are left alone.
    #[test]
    fn lone_surrogates_are_repaired() {
        let body = br#"{"messages":[{"id":1,"content":"a\ud800b"},{"id":2,"content":"\ud83d\ude00 and \\ud800 and \udc00"}]}"#;
        let inner = decode(CONSUME, 200, body).unwrap();
        let items = list(inner.get("messages")).unwrap();
        assert_eq!(items[0]["content"], "a\u{FFFD}b");
        assert_eq!(items[1]["content"], "😀 and \\ud800 and \u{FFFD}");
        assert_eq!(
            repair_lone_surrogates(br#"{"a":"\ud83d\ude00 \\ud800"}"#),
            None
        );
    }

    /// Lists of the wrong type are refused, not silently emptied.
    #[test]
    fn wrong_list_types() {
        assert!(list(Some(&serde_json::json!("x"))).is_err());
        assert!(list(Some(&serde_json::json!({"tmc_message": 5}))).is_err());
    }

    /// Booleans come as JSON booleans or strings.
    #[test]
    fn booleans() {
        assert_eq!(boolean(Some(&serde_json::json!(true))), Some(true));
        assert_eq!(boolean(Some(&serde_json::json!("false"))), Some(false));
        assert_eq!(boolean(Some(&serde_json::json!(1))), None);
        assert_eq!(boolean(None), None);
    }
}
