//! Property tests: whatever the gateway sends, decoding a consume answer and reading a ban
//! never panic, and every id the relay goes on with is a valid TMC id.

use proptest::prelude::*;
use serde_json::{json, Map, Value};

use super::api::{consume_messages, CONSUME};
use super::envelope::decode;
use super::error::{classify_api, parse_ban, ErrorClass};
use super::message::MAX_ID;

/// JSON numbers and strings of the kinds ids come as: small, around 2^53, around the 64-bit
/// limits, negative, fractional, exponents, digit strings, garbage.
fn id_like() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<u64>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        (0u64..4096).prop_map(|d| Value::from((1u64 << 53) + d)),
        (0u64..4096).prop_map(|d| Value::from(MAX_ID - 2048 + d)),
        "[0-9]{0,25}".prop_map(Value::String),
        ".{0,12}".prop_map(Value::String),
        Just(Value::Null),
        Just(json!(true)),
        Just(json!([1, 2])),
        Just(json!({"id": 1})),
    ]
}

/// Any JSON, a few levels deep.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        id_like(),
        ".{0,20}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(
                prop_oneof![
                    Just("id".to_owned()),
                    Just("topic".to_owned()),
                    Just("content".to_owned()),
                    Just("messages".to_owned()),
                    Just("tmc_message".to_owned()),
                    Just("user_id".to_owned()),
                    "[a-z_]{1,12}",
                ],
                inner,
                0..6
            )
            .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// A message object with arbitrary values in its fields.
fn message() -> impl Strategy<Value = Value> {
    (id_like(), any_json(), any_json(), id_like(), any_json()).prop_map(
        |(id, topic, content, user_id, pub_time)| {
            json!({"id": id, "topic": topic, "content": content, "user_id": user_id,
                   "pub_time": pub_time, "user_nick": "n", "pub_app_key": 5})
        },
    )
}

/// A consume body in one of the gateway's shapes, wrapping arbitrary messages.
fn consume_body() -> impl Strategy<Value = Value> {
    let msgs = prop::collection::vec(message(), 0..8);
    (msgs, 0u8..6, any_json()).prop_map(|(msgs, shape, junk)| match shape {
        0 => json!({"messages": msgs, "request_id": "r"}),
        1 => json!({"tmc_messages_consume_response": {"messages": {"tmc_message": msgs}}}),
        2 => json!({"messages": {"tmc_message": msgs[0..msgs.len().min(1)].first()}}),
        3 => json!({"error_response": {"code": junk, "sub_msg": "This ban will last for 99999999999999999999999 more seconds"}}),
        4 => json!({"messages": junk}),
        _ => junk,
    })
}

fn check_decoded(status: u16, body: &[u8]) {
    if let Ok(inner) = decode(CONSUME, status, body) {
        if let Ok(msgs) = consume_messages(inner) {
            for m in msgs {
                match m.id {
                    Some(id) => {
                        assert!((1..=MAX_ID).contains(&id), "id {id} accepted");
                        assert_eq!(m.id_string(), Some(id.to_string()));
                        assert!(m.id_problem.is_none());
                    }
                    None => assert!(m.id_problem.is_some(), "an invalid id says why"),
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Arbitrary bytes with any status never panic the consume decoder.
    #[test]
    fn consume_decoder_takes_any_bytes(status in 0u16..1000, body in prop::collection::vec(any::<u8>(), 0..512)) {
        check_decoded(status, &body);
    }

    /// Arbitrary JSON in the gateway's shapes decodes without panicking, and every id kept is
    /// in 1..=i64::MAX with its exact digits.
    #[test]
    fn consume_decoder_takes_any_json(status in prop_oneof![Just(200u16), 0u16..600], body in consume_body()) {
        let text = body.to_string();
        check_decoded(status, text.as_bytes());
        // Cut anywhere (a truncated answer) and with lone surrogate escapes spliced in.
        let cut = text.len() / 2;
        if text.is_char_boundary(cut) {
            check_decoded(status, &text.as_bytes()[..cut]);
        }
        let spliced = text.replacen("\"n\"", "\"\\ud800x\\udc00\\u12\"", 1);
        check_decoded(status, spliced.as_bytes());
    }

    /// Any ban text parses to a duration or nothing, never panics, and a number too large for
    /// 64 bits saturates.
    #[test]
    fn ban_parser_takes_any_text(text in ".{0,80}", digits in "[0-9]{1,60}") {
        let _ = parse_ban(&text);
        let _ = classify_api(7, Some("accesscontrol.x"), Some(&text));
        let msg = format!("This ban will last for {digits} more seconds");
        let got = parse_ban(&msg).unwrap().as_secs();
        match digits.parse::<u64>() {
            Ok(n) => prop_assert_eq!(got, n),
            Err(_) => prop_assert_eq!(got, u64::MAX),
        }
        let rate_limited = matches!(classify_api(7, None, Some(&msg)), ErrorClass::RateLimited { .. });
        prop_assert!(rate_limited, "code 7 is a call limit");
    }
}
