//! A TMC message as received, with its 64-bit ids kept exact.

use serde_json::Value;

/// One `tmc_message`. Every field is optional because upstream may omit or garble any of them;
/// the relay decides what a defect means (park, skip, or pass through).
#[derive(Clone, Debug, PartialEq)]
pub struct TmcMessage {
    /// The handle to confirm; `None` when absent or not a valid 64-bit id.
    pub id: Option<u64>,
    /// Why `id` is `None`, in words fit for a log or a parking record.
    pub id_problem: Option<String>,
    /// E.g. `taobao_trade_TradeChanged`.
    pub topic: Option<String>,
    /// The event payload: a string that usually holds JSON, forwarded byte for byte.
    pub content: Option<String>,
    /// `yyyy-MM-dd HH:mm:ss` in GMT+8, as sent.
    pub pub_time: Option<String>,
    /// The publishing app's key (number or string upstream; kept as text).
    pub pub_app_key: Option<String>,
    /// The seller's user id, exact.
    pub user_id: Option<u64>,
    pub user_nick: Option<String>,
    /// The message as received, less the text fields moved into the fields above (moved, not
    /// copied: every message passes through here); [`TmcMessage::original`] puts them back.
    rest: Value,
}

/// The text fields moved out of the received object.
const MOVED: [&str; 4] = ["topic", "content", "pub_time", "user_nick"];

impl TmcMessage {
    /// Reads one message object. Never fails: defects are recorded in the fields.
    pub fn from_value(mut v: Value) -> TmcMessage {
        let mut take = |name: &str| match v.as_object_mut() {
            Some(o) if o.get(name).is_some_and(Value::is_string) => match o.remove(name) {
                Some(Value::String(s)) => Some(s),
                _ => None,
            },
            _ => None,
        };
        let [topic, content, pub_time, user_nick] = MOVED.map(&mut take);
        let obj = v.as_object();
        let field = |name: &str| obj.and_then(|o| o.get(name)).filter(|v| !v.is_null());
        let (id, id_problem) = match field("id").map(parse_id) {
            None => (None, Some("message has no id".to_owned())),
            Some(Ok(id)) => (Some(id), None),
            Some(Err(why)) => (None, Some(why)),
        };
        let pub_app_key = field("pub_app_key").and_then(scalar_text);
        let user_id = field("user_id").and_then(|v| parse_u64(v).ok());
        TmcMessage {
            id,
            id_problem,
            topic,
            content,
            pub_time,
            pub_app_key,
            user_id,
            user_nick,
            rest: v,
        }
    }

    /// The message as received (re-serialised), so a parked message keeps its original
    /// fields, with the text fields as they are now.
    pub fn original(&self) -> Value {
        let mut v = self.rest.clone();
        if let Some(o) = v.as_object_mut() {
            let fields = [&self.topic, &self.content, &self.pub_time, &self.user_nick];
            for (name, field) in MOVED.iter().zip(fields) {
                if let Some(text) = field {
                    o.insert((*name).to_owned(), Value::String(text.clone()));
                }
            }
        }
        v
    }

    /// The id as the exact decimal string that is stored, forwarded and confirmed.
    pub fn id_string(&self) -> Option<String> {
        self.id.map(|id| id.to_string())
    }

    /// The message as received less its text fields (`topic`, `content`, `pub_time`,
    /// `user_nick`): with them, [`TmcMessage::original`]. The archive keeps it beside them.
    pub fn rest(&self) -> &Value {
        &self.rest
    }

    /// A message from `rest` and its text fields, as [`TmcMessage::original`] would give them.
    pub fn from_parts(
        rest: Value,
        topic: Option<&str>,
        content: Option<&str>,
        pub_time: Option<&str>,
        user_nick: Option<&str>,
    ) -> TmcMessage {
        let mut v = rest;
        if let Some(o) = v.as_object_mut() {
            for (name, field) in MOVED.iter().zip([topic, content, pub_time, user_nick]) {
                if let Some(text) = field {
                    o.insert((*name).to_owned(), Value::String(text.to_owned()));
                }
            }
        }
        TmcMessage::from_value(v)
    }
}

/// The largest TMC id: the platform's SDKs hold ids as Java `Long`s, and one larger number
/// in `s_message_ids` can fail its whole confirm call.
pub const MAX_ID: u64 = i64::MAX as u64;

/// A valid message id is a JSON integer in `1..=i64::MAX`, or a string of such digits.
pub fn parse_id(v: &Value) -> Result<u64, String> {
    let id = parse_u64(v)?;
    if id > MAX_ID {
        return Err(format!(
            "id {id} is above the largest TMC id ({MAX_ID}, a Java long)"
        ));
    }
    Ok(id)
}

/// A JSON integer in `1..=u64::MAX`, or a string of such digits (user ids). serde_json reads
/// integers straight into `u64`/`i64`, never through `f64`, so the digits are exact.
pub fn parse_u64(v: &Value) -> Result<u64, String> {
    match v {
        Value::Number(n) => {
            if let Some(u) = n.as_u64() {
                if u == 0 {
                    Err("id is 0".to_owned())
                } else {
                    Ok(u)
                }
            } else if n.is_i64() {
                Err(format!("id is negative ({n})"))
            } else {
                Err(format!("id is not a 64-bit integer ({n})"))
            }
        }
        Value::String(s) => {
            if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
                return Err(format!(
                    "id is a non-numeric string ({:?})",
                    truncate(s, 40)
                ));
            }
            match s.parse::<u64>() {
                Ok(0) => Err("id is 0".to_owned()),
                Ok(u) => Ok(u),
                Err(_) => Err(format!("id is above u64::MAX ({})", truncate(s, 40))),
            }
        }
        other => Err(format!("id has the wrong type ({})", type_name(other))),
    }
}

fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

pub(crate) fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id_of(json: &str) -> Result<u64, String> {
        parse_id(&serde_json::from_str::<Value>(json).unwrap())
    }

    /// Ids around 2^53 and up to u64::MAX keep every digit.
    #[test]
    fn ids_are_exact_beyond_f64() {
        assert_eq!(id_of("9007199254740993"), Ok(9_007_199_254_740_993)); // 2^53 + 1
        assert_eq!(id_of("7104300007405429232"), Ok(7_104_300_007_405_429_232));
        assert_eq!(id_of("9223372036854775807"), Ok(i64::MAX as u64));
        assert_eq!(
            id_of("\"1172200053212681005\""),
            Ok(1_172_200_053_212_681_005)
        );
        assert_eq!(
            7_104_300_007_405_429_232u64.to_string(),
            "7104300007405429232"
        );
    }

    /// Each kind of bad id is refused with a reason.
    #[test]
    fn bad_ids_are_refused() {
        assert!(id_of("0").unwrap_err().contains("0"));
        assert!(id_of("-5").unwrap_err().contains("negative"));
        assert!(id_of("18446744073709551616")
            .unwrap_err()
            .contains("64-bit"));
        // Above a Java long: not a TMC id, and it would fail its whole confirm chunk.
        for above in [
            "9223372036854775808",
            "18446744073709551615",
            "\"9223372036854775808\"",
        ] {
            let e = id_of(above).unwrap_err();
            assert!(e.contains("largest TMC id"), "{above}: {e}");
        }
        assert!(id_of("1.5").unwrap_err().contains("64-bit"));
        assert!(id_of("7104300007405429232.0")
            .unwrap_err()
            .contains("64-bit"));
        assert!(id_of("\"abc\"").unwrap_err().contains("non-numeric"));
        assert!(id_of("\"18446744073709551616\"")
            .unwrap_err()
            .contains("above"));
        assert!(id_of("true").unwrap_err().contains("boolean"));
    }

    /// The real captured message decodes field by field.
    #[test]
    fn decodes_the_real_message() {
        let v: Value = serde_json::from_str(r#"{"user_id":123456789,"user_nick":"usernick","content":"{\"nick\":\"usernick\",\"increment\":1,\"num\":502,\"changed_fields\":\"num\",\"num_iid\":15380658823}","id":7104300007405429232,"pub_time":"2013-10-05 10:55:58","pub_app_key":"12499723","topic":"taobao_item_ItemStockChanged"}"#).unwrap();
        let m = TmcMessage::from_value(v);
        assert_eq!(m.id, Some(7_104_300_007_405_429_232));
        assert_eq!(m.id_string().as_deref(), Some("7104300007405429232"));
        assert_eq!(m.user_id, Some(123_456_789));
        assert_eq!(m.topic.as_deref(), Some("taobao_item_ItemStockChanged"));
        assert_eq!(m.pub_app_key.as_deref(), Some("12499723"));
        assert_eq!(m.pub_time.as_deref(), Some("2013-10-05 10:55:58"));
        assert!(m
            .content
            .as_deref()
            .unwrap()
            .contains("\"num_iid\":15380658823"));
    }

    /// What a parking record keeps is the message as received, whatever the field types.
    #[test]
    fn the_original_is_what_was_received() {
        for v in [
            serde_json::json!({"id": 7104300007405429232u64, "topic": "t", "content": "{\"a\":1}", "pub_time": "2013-10-05 10:55:58", "user_nick": "店", "user_id": 5, "pub_app_key": 12, "extra": [1]}),
            serde_json::json!({"id": "x", "topic": 5, "content": null, "user_nick": {"a": "b"}}),
            serde_json::json!("not an object"),
            serde_json::json!([{"topic": "t"}]),
        ] {
            assert_eq!(TmcMessage::from_value(v.clone()).original(), v);
        }
    }

    /// Missing and null fields become None; a missing id says so.
    #[test]
    fn missing_fields_are_none() {
        let m = TmcMessage::from_value(serde_json::json!({"topic": null, "content": 5}));
        assert_eq!(m.id, None);
        assert_eq!(m.id_problem.as_deref(), Some("message has no id"));
        assert_eq!(m.topic, None);
        assert_eq!(m.content, None);
    }
}
