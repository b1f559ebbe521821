//! What goes on the queue: the relay message body, its attributes, parking records and batch
//! packing. Pure functions with exact expectations.

use serde::Serialize;
use serde_json::Value;

use super::biz_key::biz_key;
use super::ports::Outgoing;
use crate::top::clock::pub_time_rfc3339;
use crate::top::TmcMessage;

/// SQS's per-batch entry limit.
pub const MAX_BATCH_ENTRIES: usize = 10;
/// SQS's per-request payload limit (all entries together).
pub const MAX_BATCH_BYTES: usize = 1024 * 1024;
/// SQS's limit on message attributes per message (moto does not enforce it).
pub const MAX_MESSAGE_ATTRIBUTES: usize = 10;

/// How FIFO message groups are chosen.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FifoGroupBy {
    /// One group per order, refund or item (the business key), falling back to the seller,
    /// then the topic: ordering per business object, parallelism across them.
    #[default]
    BizKey,
    /// One group per seller: ordering per shop, one lane per shop.
    UserId,
    /// One group per topic.
    Topic,
}

impl std::str::FromStr for FifoGroupBy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "biz_key" => Ok(FifoGroupBy::BizKey),
            "user_id" => Ok(FifoGroupBy::UserId),
            "topic" => Ok(FifoGroupBy::Topic),
            other => Err(format!(
                "unknown FIFO grouping {other:?}: expected biz_key, user_id or topic"
            )),
        }
    }
}

/// Why a message cannot go to the relay queue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Defect {
    /// Machine-readable, e.g. `missing_topic`.
    pub code: &'static str,
    /// For humans.
    pub reason: String,
}

/// Builds the relay queue entry for a message, or says why it must be parked.
pub fn relay_entry(
    msg: &TmcMessage,
    group: &str,
    fifo: Option<FifoGroupBy>,
    max_bytes: usize,
) -> Result<Outgoing, Defect> {
    let id = msg.id.ok_or_else(|| Defect {
        code: "invalid_id",
        reason: msg
            .id_problem
            .clone()
            .unwrap_or_else(|| "message has no id".into()),
    })?;
    let topic = msg
        .topic
        .as_deref()
        .filter(|t| !t.is_empty())
        .ok_or_else(|| Defect {
            code: "missing_topic",
            reason: "message has no topic".into(),
        })?;
    let content = msg.content.as_deref().ok_or_else(|| Defect {
        code: "missing_content",
        reason: "message has no content string".into(),
    })?;
    let key = biz_key(topic, content);
    let id_text = id.to_string();
    let user_id = msg.user_id.map(|u| u.to_string());
    let body = relay_body(&RelayBody {
        id: &id_text,
        topic,
        pub_time: msg
            .pub_time
            .as_deref()
            .and_then(pub_time_rfc3339)
            .as_deref(),
        pub_app_key: msg.pub_app_key.as_deref(),
        user_id: user_id.as_deref(),
        user_nick: msg.user_nick.as_deref(),
        group_name: group,
        biz_key: key.as_deref(),
        content,
    });
    // At most 4 of SQS's 10 attributes.
    let mut attributes = vec![("topic", sqs_safe_text(topic)), ("tmc_id", id_text.clone())];
    if let Some(u) = user_id {
        attributes.push(("user_id", u));
    }
    if let Some(k) = &key {
        attributes.push(("biz_key", k.clone()));
    }
    let (group_id, dedup_id) = match fifo {
        None => (None, None),
        Some(by) => {
            let g = match (by, &key, msg.user_id) {
                (FifoGroupBy::BizKey, Some(k), _) => k.clone(),
                (FifoGroupBy::BizKey | FifoGroupBy::UserId, _, Some(u)) => u.to_string(),
                _ => sqs_safe_text(topic),
            };
            (Some(truncate_chars(&g, 128)), Some(id_text.clone()))
        }
    };
    let out = Outgoing {
        id: id_text,
        body,
        attributes,
        group_id,
        dedup_id,
    };
    if out.wire_size() > max_bytes {
        return Err(Defect {
            code: "too_large",
            reason: format!(
                "message is {} bytes, over the queue's {} byte limit",
                out.wire_size(),
                max_bytes
            ),
        });
    }
    Ok(out)
}

/// The relay message body's fields (documented in docs/consuming.md), in their order on the wire.
/// Ids are strings: JSON consumers in JavaScript or via `f64` would corrupt 64-bit integers.
#[cfg_attr(test, derive(Serialize))]
struct RelayBody<'a> {
    id: &'a str,
    topic: &'a str,
    pub_time: Option<&'a str>,
    pub_app_key: Option<&'a str>,
    user_id: Option<&'a str>,
    user_nick: Option<&'a str>,
    group_name: &'a str,
    /// Also an attribute; in the body too because a consumer sees attributes only when it asks
    /// for them, and would otherwise have to parse `content` with a big-integer-safe parser.
    biz_key: Option<&'a str>,
    content: &'a str,
}

/// The body as `serde_json` would serialise [`RelayBody`] (`null` for what is absent), made
/// SQS-safe as [`sqs_safe_json`] does, but written in one pass into one buffer: every message
/// goes through here, and serialising, validating and scanning it for U+FFFE/U+FFFF as three
/// passes was a tenth of the relay's CPU per message.
fn relay_body(b: &RelayBody<'_>) -> String {
    let fields: [(&str, Option<&str>); 9] = [
        ("id", Some(b.id)),
        ("topic", Some(b.topic)),
        ("pub_time", b.pub_time),
        ("pub_app_key", b.pub_app_key),
        ("user_id", b.user_id),
        ("user_nick", b.user_nick),
        ("group_name", Some(b.group_name)),
        ("biz_key", b.biz_key),
        ("content", Some(b.content)),
    ];
    // Escaping grows content by a few percent; the other fields take under 512 bytes.
    let mut out = String::with_capacity(b.content.len() + b.content.len() / 8 + 512);
    out.push('{');
    for (i, (name, value)) in fields.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push('"');
        out.push_str(name);
        out.push_str("\":");
        match value {
            Some(v) => push_json_string(&mut out, v),
            None => out.push_str("null"),
        }
    }
    out.push('}');
    out
}

/// Appends `s` as a JSON string literal, escaped as `serde_json` escapes (`\"`, `\\`, the
/// short forms of `\b \f \n \r \t`, `\u00xx` for other controls), plus `\ufffe` and `\uffff`,
/// which SQS refuses raw. Runs that need no escape are copied whole.
fn push_json_string(out: &mut String, s: &str) {
    let bytes = s.as_bytes();
    out.push('"');
    let (mut start, mut i) = (0, 0);
    while i < bytes.len() {
        if !LOOK[usize::from(bytes[i])] {
            i += 1;
            continue;
        }
        // Escapes are ASCII or start at a lead byte, so `start` and `i` are char boundaries.
        let (escape, len) = match bytes[i..] {
            [b'"', ..] => ("\\\"", 1),
            [b'\\', ..] => ("\\\\", 1),
            [b'\n', ..] => ("\\n", 1),
            [b'\r', ..] => ("\\r", 1),
            [b'\t', ..] => ("\\t", 1),
            [0x08, ..] => ("\\b", 1),
            [0x0C, ..] => ("\\f", 1),
            [c @ 0x00..=0x1F, ..] => (CONTROL_ESCAPES[usize::from(c)], 1),
            // U+FFFE and U+FFFF are EF BF BE and EF BF BF.
            [0xEF, 0xBF, 0xBE, ..] => ("\\ufffe", 3),
            [0xEF, 0xBF, 0xBF, ..] => ("\\uffff", 3),
            _ => {
                i += 1;
                continue;
            }
        };
        out.push_str(&s[start..i]);
        out.push_str(escape);
        i += len;
        start = i;
    }
    out.push_str(&s[start..]);
    out.push('"');
}

/// The bytes [`push_json_string`] looks at: controls, `"`, `\` and 0xEF (which starts U+FFFE
/// and U+FFFF, and a few other characters).
const LOOK: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 0x20 {
        t[b] = true;
        b += 1;
    }
    t[b'"' as usize] = true;
    t[b'\\' as usize] = true;
    t[0xEF] = true;
    t
};

/// `\u00xx` for each control character, as serde_json writes them (lowercase hex).
const CONTROL_ESCAPES: [&str; 32] = [
    "\\u0000", "\\u0001", "\\u0002", "\\u0003", "\\u0004", "\\u0005", "\\u0006", "\\u0007",
    "\\u0008", "\\u0009", "\\u000a", "\\u000b", "\\u000c", "\\u000d", "\\u000e", "\\u000f",
    "\\u0010", "\\u0011", "\\u0012", "\\u0013", "\\u0014", "\\u0015", "\\u0016", "\\u0017",
    "\\u0018", "\\u0019", "\\u001a", "\\u001b", "\\u001c", "\\u001d", "\\u001e", "\\u001f",
];

/// Real topics are short names; a longer one is cut in the `topic` attribute so that it cannot
/// crowd the record out of the queue's limit (the record's `original` keeps what fits of it).
const MAX_TOPIC_ATTRIBUTE: usize = 256;

/// A parking record: the reason and the message's original fields. The whole message is kept
/// whenever the record (body and attributes, as SQS counts them) fits the parking queue's
/// `max_bytes`; otherwise as much of the content as fits, with its full size and a note.
pub fn parking_entry(
    msg: &TmcMessage,
    group: &str,
    defect: &Defect,
    parked_at: &str,
    max_bytes: usize,
    entry_id: &str,
) -> Outgoing {
    #[derive(Serialize)]
    struct Parked<'a> {
        reason_code: &'a str,
        reason: &'a str,
        id: Option<String>,
        group_name: &'a str,
        parked_at: &'a str,
        original: Value,
        #[serde(skip_serializing_if = "Option::is_none")]
        content_bytes: Option<usize>,
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        content_truncated: bool,
    }
    let mut attributes = vec![("reason_code", defect.code.to_owned())];
    if let Some(id) = msg.id {
        attributes.push(("tmc_id", id.to_string()));
    }
    if let Some(t) = msg.topic.as_deref().filter(|t| !t.is_empty()) {
        attributes.push((
            "topic",
            sqs_safe_text(truncate_bytes(t, MAX_TOPIC_ATTRIBUTE)),
        ));
    }
    let entry = |record: &Parked<'_>| Outgoing {
        id: entry_id.to_owned(),
        body: sqs_safe_json(record, 0),
        attributes: attributes.clone(),
        group_id: None,
        dedup_id: None,
    };
    let mut record = Parked {
        reason_code: defect.code,
        reason: &defect.reason,
        id: msg.id_string(),
        group_name: group,
        parked_at,
        original: msg.original(),
        content_bytes: None,
        content_truncated: false,
    };
    let whole = entry(&record);
    if whole.wire_size() <= max_bytes {
        return whole;
    }
    record.content_truncated = true;
    if let Some(content) = msg.content.as_deref() {
        record.content_bytes = Some(content.len());
        // The record less its content, then as much content as fills the room left.
        set_content(&mut record.original, "");
        let rest = entry(&record).wire_size();
        if rest <= max_bytes {
            set_content(&mut record.original, json_prefix(content, max_bytes - rest));
            return entry(&record);
        }
    }
    // Something other than content is huge: keep as much of the message's JSON as fits.
    record.original = Value::String(String::new());
    let rest = entry(&record).wire_size();
    let text = msg.original().to_string();
    record.original = Value::String(json_prefix(&text, max_bytes.saturating_sub(rest)).to_owned());
    entry(&record)
}

fn set_content(original: &mut Value, content: &str) {
    if let Some(o) = original.as_object_mut() {
        o.insert("content".to_owned(), Value::String(content.to_owned()));
    }
}

/// The longest prefix of `s` that takes at most `room` bytes inside a JSON string as
/// [`sqs_safe_json`] writes it.
fn json_prefix(s: &str, room: usize) -> &str {
    let mut used = 0;
    for (i, c) in s.char_indices() {
        used += json_len(c);
        if used > room {
            return &s[..i];
        }
    }
    s
}

/// The bytes `c` takes inside a JSON string as [`sqs_safe_json`] writes it: serde_json's
/// escapes, and `\ufffe`/`\uffff` for the two characters SQS refuses raw.
fn json_len(c: char) -> usize {
    match c {
        '"' | '\\' | '\n' | '\r' | '\t' | '\u{8}' | '\u{c}' => 2,
        '\u{0}'..='\u{1f}' | '\u{FFFE}' | '\u{FFFF}' => 6,
        c => c.len_utf8(),
    }
}

/// Serialises to JSON that contains only characters SQS accepts. serde_json already escapes
/// U+0000–U+001F; U+FFFE and U+FFFF are legal in a Rust string and JSON but not in SQS, and can
/// only occur inside JSON strings, so they are rewritten as `\uXXXX` escapes.
///
/// `size_hint` is the expected length: the buffer is allocated once instead of regrown.
pub fn sqs_safe_json<T: Serialize>(value: &T, size_hint: usize) -> String {
    let mut buf = Vec::with_capacity(size_hint);
    let s = serde_json::to_writer(&mut buf, value)
        .map_err(|e| e.to_string())
        // serde_json writes only UTF-8.
        .and_then(|()| String::from_utf8(buf).map_err(|e| e.to_string()))
        .unwrap_or_else(|e| format!("{{\"serialisation_error\":{e:?}}}"));
    // Two memchr-backed scans; a two-character pattern would decode every character.
    if !s.contains('\u{FFFE}') && !s.contains('\u{FFFF}') {
        return s;
    }
    let mut out = String::with_capacity(s.len() + 16);
    for c in s.chars() {
        match c {
            '\u{FFFE}' => out.push_str("\\ufffe"),
            '\u{FFFF}' => out.push_str("\\uffff"),
            c => out.push(c),
        }
    }
    out
}

/// True for characters SQS accepts: `#x9 #xA #xD #x20-#xD7FF #xE000-#xFFFD #x10000-#x10FFFF`.
pub fn sqs_allowed(c: char) -> bool {
    matches!(c as u32, 0x9 | 0xA | 0xD | 0x20..=0xD7FF | 0xE000..=0xFFFD | 0x10000..=0x10FFFF)
}

/// Attribute values are raw text, not JSON: replace what SQS refuses with U+FFFD.
pub fn sqs_safe_text(s: &str) -> String {
    if s.chars().all(sqs_allowed) {
        return s.to_owned();
    }
    s.chars()
        .map(|c| if sqs_allowed(c) { c } else { '\u{FFFD}' })
        .collect()
}

/// Groups entries into SQS batches: at most 10 entries and 1 MiB per request, order kept.
pub fn pack(entries: Vec<Outgoing>) -> Vec<Vec<Outgoing>> {
    let mut batches = Vec::new();
    let mut cur: Vec<Outgoing> = Vec::new();
    let mut cur_bytes = 0;
    for e in entries {
        let size = e.wire_size();
        if !cur.is_empty() && (cur.len() == MAX_BATCH_ENTRIES || cur_bytes + size > MAX_BATCH_BYTES)
        {
            batches.push(std::mem::take(&mut cur));
            cur_bytes = 0;
        }
        cur_bytes += size;
        cur.push(e);
    }
    if !cur.is_empty() {
        batches.push(cur);
    }
    batches
}

fn truncate_bytes(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn truncate_chars(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn msg(v: Value) -> TmcMessage {
        TmcMessage::from_value(v)
    }

    fn real() -> TmcMessage {
        msg(
            json!({"user_id":123456789u64,"user_nick":"usernick","content":"{\"num_iid\":15380658823}","id":7104300007405429232u64,"pub_time":"2013-10-05 10:55:58","pub_app_key":"12499723","topic":"taobao_item_ItemStockChanged"}),
        )
    }

    /// The body has the documented fields, exact id digits, RFC 3339 time, the business key and
    /// the content verbatim.
    #[test]
    fn builds_the_documented_body() {
        let e = relay_entry(&real(), "default", None, 1 << 20).unwrap();
        assert_eq!(
            e.body,
            r#"{"id":"7104300007405429232","topic":"taobao_item_ItemStockChanged","pub_time":"2013-10-05T10:55:58+08:00","pub_app_key":"12499723","user_id":"123456789","user_nick":"usernick","group_name":"default","biz_key":"item_15380658823","content":"{\"num_iid\":15380658823}"}"#
        );
        assert_eq!(e.id, "7104300007405429232");
        assert_eq!(
            e.attributes,
            vec![
                ("topic", "taobao_item_ItemStockChanged".to_owned()),
                ("tmc_id", "7104300007405429232".to_owned()),
                ("user_id", "123456789".to_owned()),
                ("biz_key", "item_15380658823".to_owned())
            ]
        );
        assert!(e.attributes.len() <= MAX_MESSAGE_ATTRIBUTES);
        assert_eq!((e.group_id, e.dedup_id), (None, None));
        let back: Value = serde_json::from_str(&e.body).unwrap();
        assert_eq!(back["content"], "{\"num_iid\":15380658823}");
    }

    /// FIFO entries group by business key by default, falling back to user id, then topic;
    /// `user_id` and `topic` group as named; all dedup by message id.
    #[test]
    fn fifo_fields() {
        let by = |m: &TmcMessage, g: FifoGroupBy| {
            relay_entry(m, "g", Some(g), 1 << 20)
                .unwrap()
                .group_id
                .unwrap()
        };
        let e = relay_entry(&real(), "g", Some(FifoGroupBy::default()), 1 << 20).unwrap();
        assert_eq!(e.group_id.as_deref(), Some("item_15380658823"));
        assert_eq!(e.dedup_id.as_deref(), Some("7104300007405429232"));
        assert_eq!(by(&real(), FifoGroupBy::UserId), "123456789");
        assert_eq!(
            by(&real(), FifoGroupBy::Topic),
            "taobao_item_ItemStockChanged"
        );
        let mut no_key = real();
        no_key.content = Some(r#"{"nick":"n"}"#.into());
        assert_eq!(by(&no_key, FifoGroupBy::BizKey), "123456789");
        no_key.user_id = None;
        assert_eq!(
            by(&no_key, FifoGroupBy::BizKey),
            "taobao_item_ItemStockChanged"
        );
        assert_eq!(
            by(&no_key, FifoGroupBy::UserId),
            "taobao_item_ItemStockChanged"
        );
        let mut no_user = real();
        no_user.user_id = None;
        assert_eq!(by(&no_user, FifoGroupBy::BizKey), "item_15380658823");
    }

    /// A message without a business key has no `biz_key` attribute and `null` in the body.
    #[test]
    fn no_business_key_is_null_and_no_attribute() {
        let mut m = real();
        m.topic = Some("taobao_fenxiao_FxOrderCreate".into());
        let e = relay_entry(&m, "g", None, 1 << 20).unwrap();
        assert!(e.body.contains(r#""biz_key":null"#), "{}", e.body);
        assert!(e.attributes.iter().all(|(n, _)| *n != "biz_key"));
    }

    /// The grouping names parse, and an unknown one is refused naming the choices.
    #[test]
    fn fifo_grouping_names() {
        assert_eq!("biz_key".parse(), Ok(FifoGroupBy::BizKey));
        assert_eq!("user_id".parse(), Ok(FifoGroupBy::UserId));
        assert_eq!("topic".parse(), Ok(FifoGroupBy::Topic));
        let e = "shop".parse::<FifoGroupBy>().unwrap_err();
        assert!(e.contains("biz_key, user_id or topic"), "{e}");
    }

    /// Characters SQS refuses never reach the wire raw, and the content still round-trips.
    #[test]
    fn bodies_are_sqs_safe() {
        let content = "a\u{0}b\u{1f}c\u{FFFE}d\u{FFFF}e😀f\u{FFFD}";
        let mut m = real();
        m.content = Some(content.to_owned());
        let e = relay_entry(&m, "g", None, 1 << 20).unwrap();
        assert!(e.body.chars().all(sqs_allowed), "{:?}", e.body);
        let back: Value = serde_json::from_str(&e.body).unwrap();
        assert_eq!(back["content"].as_str().unwrap(), content);
        assert_eq!(sqs_safe_text("t\u{0}\u{FFFF}"), "t\u{FFFD}\u{FFFD}");
    }

    /// Text that leans on what needs escaping: controls, quotes, backslashes, U+FFFE/U+FFFF,
    /// 0xEF-led characters that are not them, and anything else.
    fn tricky_text() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        proptest::collection::vec(
            prop_oneof![
                any::<char>(),
                (0u8..0x20).prop_map(char::from),
                Just('"'),
                Just('\\'),
                Just('\u{FFFE}'),
                Just('\u{FFFF}'),
                Just('\u{FFFD}'),
                Just('\u{F000}'),
                Just('旗'),
            ],
            0..24,
        )
        .prop_map(|cs| cs.into_iter().collect())
    }

    proptest::proptest! {
        /// The one-pass body is byte for byte what serde_json writes for the same fields, made
        /// SQS-safe the generic way.
        #[test]
        fn the_body_is_serde_jsons_made_sqs_safe(
            id in tricky_text(),
            content in tricky_text(),
            nick in proptest::option::of(tricky_text()),
            key in proptest::option::of(tricky_text()),
        ) {
            let b = RelayBody {
                id: &id,
                topic: "taobao_trade_TradeChanged",
                pub_time: None,
                pub_app_key: Some("12497914"),
                user_id: Some("2200000000000000000"),
                user_nick: nick.as_deref(),
                group_name: "vip",
                biz_key: key.as_deref(),
                content: &content,
            };
            let body = relay_body(&b);
            proptest::prop_assert_eq!(&body, &sqs_safe_json(&b, 0));
            proptest::prop_assert!(body.chars().all(sqs_allowed));
            let back: Value = serde_json::from_str(&body).unwrap();
            proptest::prop_assert_eq!(back["content"].as_str(), Some(content.as_str()));
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 64, ..Default::default() })]
        /// A parking record never exceeds the queue's limit; it keeps the whole message when that
        /// fits, and otherwise a prefix of the content so long that one more character would not
        /// fit (the longest escape is 6 bytes).
        #[test]
        fn a_parking_record_never_exceeds_the_limit_and_keeps_what_fits(
            piece in tricky_text(),
            repeat in 1usize..4000,
            nick in 0usize..6000,
            max_bytes in 2048usize..40_000,
        ) {
            let content = piece.repeat(repeat);
            let mut m = real();
            m.content = Some(content.clone());
            m.user_nick = Some("n".repeat(nick));
            let d = Defect { code: "sqs_rejected", reason: "r".into() };
            let p = parking_entry(&m, "vip", &d, "T", max_bytes, "p0");
            proptest::prop_assert!(p.wire_size() <= max_bytes, "{} > {max_bytes}", p.wire_size());
            proptest::prop_assert!(p.body.chars().all(sqs_allowed));
            let v: Value = serde_json::from_str(&p.body).unwrap();
            match v["original"]["content"].as_str() {
                Some(kept) if v.get("content_truncated").is_none() => {
                    proptest::prop_assert_eq!(kept, content.as_str());
                }
                Some(kept) => {
                    proptest::prop_assert!(content.starts_with(kept));
                    proptest::prop_assert_eq!(v["content_bytes"].as_u64(), Some(content.len() as u64));
                    proptest::prop_assert!(p.wire_size() + 6 > max_bytes, "{} left unused", max_bytes - p.wire_size());
                }
                None => {
                    let text = v["original"].as_str().unwrap();
                    proptest::prop_assert!(m.original().to_string().starts_with(text));
                    proptest::prop_assert!(p.wire_size() + 6 > max_bytes);
                }
            }
        }
    }

    /// Missing id, topic or content are defects with codes; a null pub_time is not.
    #[test]
    fn defects() {
        let code = |v: Value| relay_entry(&msg(v), "g", None, 1 << 20).unwrap_err().code;
        assert_eq!(code(json!({"topic":"t","content":"c"})), "invalid_id");
        assert_eq!(
            code(json!({"id":-1,"topic":"t","content":"c"})),
            "invalid_id"
        );
        assert_eq!(code(json!({"id":5,"content":"c"})), "missing_topic");
        assert_eq!(
            code(json!({"id":5,"topic":null,"content":"c"})),
            "missing_topic"
        );
        assert_eq!(code(json!({"id":5,"topic":"t"})), "missing_content");
        let ok = relay_entry(
            &msg(json!({"id":5,"topic":"t","content":"c","pub_time":null})),
            "g",
            None,
            1 << 20,
        )
        .unwrap();
        assert!(ok.body.contains("\"pub_time\":null"));
    }

    /// Content over the queue's limit is a `too_large` defect; its parking record keeps as much
    /// of it as fills the queue's limit exactly, with its full size and the mark.
    #[test]
    fn oversized_content_is_parked_cut_to_fill_the_limit() {
        let mut m = real();
        m.content = Some("x".repeat(2 * 1024 * 1024));
        let d = relay_entry(&m, "g", None, 1 << 20).unwrap_err();
        assert_eq!(d.code, "too_large");
        let p = parking_entry(&m, "g", &d, "2026-01-01T00:00:00Z", 1 << 20, "p0");
        assert_eq!(
            p.wire_size(),
            1 << 20,
            "one more byte of content would not fit"
        );
        let v: Value = serde_json::from_str(&p.body).unwrap();
        assert_eq!(v["content_bytes"], 2 * 1024 * 1024);
        assert_eq!(v["content_truncated"], true);
        assert_eq!(v["original"]["id"].as_u64(), Some(7104300007405429232));
        let kept = v["original"]["content"].as_str().unwrap();
        assert!(kept.len() > 1000 * 1024 && m.content.unwrap().starts_with(kept));
    }

    /// A 900 KiB content parks whole into a 1 MiB queue: nothing cut, nothing marked, and the
    /// record rebuilds the very message the relay would have sent.
    #[test]
    fn a_900_kib_content_parks_whole_into_a_1_mib_queue() {
        let mut m = real();
        let content = format!(
            r#"{{"num_iid":15380658823,"blob":"{}"}}"#,
            "旗".repeat(300 * 1024)
        );
        assert!(content.len() >= 900 * 1024);
        m.content = Some(content.clone());
        let d = Defect {
            code: "sqs_rejected",
            reason: "InvalidMessageContents".into(),
        };
        let p = parking_entry(&m, "g", &d, "2026-01-01T00:00:00Z", 1 << 20, "p0");
        assert!(p.wire_size() <= 1 << 20);
        let v: Value = serde_json::from_str(&p.body).unwrap();
        let kept = v["original"]["content"].as_str().unwrap_or_default();
        assert!(
            kept == content,
            "kept {} of {} bytes",
            kept.len(),
            content.len()
        );
        assert!(v.get("content_bytes").is_none() && v.get("content_truncated").is_none());
        let record = crate::parked::ParkingRecord::parse(&p.body).unwrap();
        let rebuilt = crate::parked::rebuild(&record, None, 1 << 20).unwrap();
        assert!(rebuilt == relay_entry(&m, "g", None, 1 << 20).unwrap());
    }

    /// Content that escapes to twice its size is cut by what it takes in the record, not by
    /// its length: the record ends within one escaped character of the limit.
    #[test]
    fn escaped_content_is_cut_by_its_escaped_size() {
        let mut m = real();
        m.content = Some("\"".repeat(600 * 1024));
        let d = Defect {
            code: "sqs_rejected",
            reason: "r".into(),
        };
        let p = parking_entry(&m, "g", &d, "T", 1 << 20, "p0");
        assert!(
            (1 << 20) - 1 <= p.wire_size() && p.wire_size() <= 1 << 20,
            "{}",
            p.wire_size()
        );
        let v: Value = serde_json::from_str(&p.body).unwrap();
        assert_eq!(v["content_bytes"], 600 * 1024);
        assert_eq!(v["content_truncated"], true);
    }

    /// When a field other than content is too large, the record keeps as much of the message's
    /// JSON as fits, as text, marked, within the limit.
    #[test]
    fn a_huge_other_field_keeps_the_messages_json_cut_to_fit() {
        let mut m = real();
        m.user_nick = Some("n".repeat(2 * 1024 * 1024));
        let d = Defect {
            code: "sqs_rejected",
            reason: "r".into(),
        };
        let p = parking_entry(&m, "g", &d, "T", 1 << 20, "p0");
        assert_eq!(p.wire_size(), 1 << 20);
        let v: Value = serde_json::from_str(&p.body).unwrap();
        assert_eq!(v["content_truncated"], true);
        let kept = v["original"].as_str().unwrap();
        assert!(m.original().to_string().starts_with(kept));
    }

    /// A parking record keeps the reason and the original fields.
    #[test]
    fn parking_record() {
        let m = msg(json!({"id":42,"content":"c","user_id":7}));
        let d = relay_entry(&m, "g", None, 1 << 20).unwrap_err();
        let p = parking_entry(&m, "g", &d, "T", 1 << 20, "42");
        let v: Value = serde_json::from_str(&p.body).unwrap();
        assert_eq!(v["reason_code"], "missing_topic");
        assert_eq!(v["id"], "42");
        assert_eq!(v["original"], json!({"id":42,"content":"c","user_id":7}));
        assert!(p
            .attributes
            .contains(&("reason_code", "missing_topic".to_owned())));
    }

    /// Packing respects 10 entries and 1 MiB per batch, in order.
    #[test]
    fn packing() {
        let e = |i: usize, size: usize| Outgoing {
            id: i.to_string(),
            body: "x".repeat(size),
            attributes: vec![],
            group_id: None,
            dedup_id: None,
        };
        let batches = pack((0..25).map(|i| e(i, 10)).collect());
        assert_eq!(
            batches.iter().map(Vec::len).collect::<Vec<_>>(),
            vec![10, 10, 5]
        );
        let batches = pack((0..5).map(|i| e(i, 400 * 1024)).collect());
        assert_eq!(
            batches.iter().map(Vec::len).collect::<Vec<_>>(),
            vec![2, 2, 1]
        );
        assert_eq!(batches[2][0].id, "4");
        assert!(pack(vec![]).is_empty());
    }
}
