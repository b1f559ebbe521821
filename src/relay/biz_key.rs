//! The business key of a message: the order, refund or item it is about, as the official Java
//! client's `DuplicateRemoverTmcHandler` names it (`trade_<tid>`, `refund_<refund_id>`,
//! `item_<num_iid>`). Consumers order and collapse events by it; a FIFO relay queue can group
//! by it. Pure functions with exact expectations.

use serde::Deserialize;
use serde_json::Value;

use crate::top::message::parse_u64;

/// Topics starting with `topic_prefix` carry their business id in the content field `field`;
/// the key is `key_prefix` followed by the id's exact decimal digits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rule {
    /// E.g. `taobao_trade_`: every trade topic (`TradeCreate`, `TradeBuyerPay`, ...).
    pub topic_prefix: &'static str,
    /// The content field holding the 64-bit business id.
    pub field: &'static str,
    /// What the key starts with, so ids of different kinds never collide.
    pub key_prefix: &'static str,
}

/// The rules, first match wins. The first three are the Java client's. ICBU (Alibaba.com)
/// trades are their own id space, so their keys get their own prefix rather than `trade_`.
/// Any other topic has no business key (a FIFO queue then groups by user id, then topic).
pub const RULES: &[Rule] = &[
    Rule {
        topic_prefix: "taobao_trade_",
        field: "tid",
        key_prefix: "trade_",
    },
    Rule {
        topic_prefix: "taobao_refund_",
        field: "refund_id",
        key_prefix: "refund_",
    },
    Rule {
        topic_prefix: "taobao_item_",
        field: "num_iid",
        key_prefix: "item_",
    },
    Rule {
        topic_prefix: "icbu_trade_",
        field: "trade_id",
        key_prefix: "icbu_trade_",
    },
];

/// Just the fields the rules read; everything else in `content` is skipped without being
/// built. `Value` keeps integers as `u64`/`i64` (never `f64` when they fit), so ids above
/// 2^53 stay exact; an integer beyond `u64` becomes `f64` and is refused by `parse_u64`.
#[derive(Deserialize)]
struct Ids {
    /// `taobao_trade_*`.
    tid: Option<Value>,
    /// `taobao_refund_*`.
    refund_id: Option<Value>,
    /// `taobao_item_*`.
    num_iid: Option<Value>,
    /// `icbu_trade_*`.
    trade_id: Option<Value>,
}

impl Ids {
    fn get(&self, field: &str) -> Option<&Value> {
        match field {
            "tid" => self.tid.as_ref(),
            "refund_id" => self.refund_id.as_ref(),
            "num_iid" => self.num_iid.as_ref(),
            "trade_id" => self.trade_id.as_ref(),
            _ => None,
        }
    }
}

/// The business key of a message with this topic and content, or `None` when the topic has no
/// rule, or the content is not a JSON object holding a valid id in the rule's field. An id is a
/// positive 64-bit integer, as a JSON number or a string of digits (`519` and `"0519"` give
/// the same key).
pub fn biz_key(topic: &str, content: &str) -> Option<String> {
    let rule = RULES.iter().find(|r| topic.starts_with(r.topic_prefix))?;
    let ids: Ids = serde_json::from_str(content).ok()?;
    let id = parse_u64(ids.get(rule.field)?).ok()?;
    Some(format!("{}{id}", rule.key_prefix))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Trades, refunds and items get the Java client's keys, with every digit of ids above 2^53.
    #[test]
    fn taobao_topics_get_the_java_clients_keys() {
        assert_eq!(
            biz_key(
                "taobao_trade_TradeBuyerPay",
                r#"{"buyer_nick":"b","payment":"15.70","oid":9007199254740993,"tid":9007199254740993,"type":"guarantee_trade"}"#
            )
            .as_deref(),
            Some("trade_9007199254740993")
        );
        assert_eq!(
            biz_key(
                "taobao_refund_RefundCreated",
                r#"{"refund_id":7104300007405429232,"tid":1,"oid":1,"refund_fee":"1.00"}"#
            )
            .as_deref(),
            Some("refund_7104300007405429232")
        );
        assert_eq!(
            biz_key(
                "taobao_item_ItemStockChanged",
                r#"{"nick":"n","num":502,"num_iid":18446744073709551615}"#
            )
            .as_deref(),
            Some("item_18446744073709551615")
        );
    }

    /// `icbu_trade_OrderNotify` keys by `trade_id`, in a namespace of its own.
    #[test]
    fn icbu_trades_have_their_own_namespace() {
        assert_eq!(
            biz_key(
                "icbu_trade_OrderNotify",
                r#"{"trade_id":1172200053212681005,"status":"paid"}"#
            )
            .as_deref(),
            Some("icbu_trade_1172200053212681005")
        );
        // A tid in an icbu message is not what the rule reads.
        assert_eq!(biz_key("icbu_trade_OrderNotify", r#"{"tid":5}"#), None);
    }

    /// An id sent as a string of digits gives the same key as the number.
    #[test]
    fn string_ids_give_the_same_key_as_numbers() {
        let number = biz_key("taobao_trade_TradeCreate", r#"{"tid":519847211351083}"#);
        assert_eq!(number.as_deref(), Some("trade_519847211351083"));
        assert_eq!(
            biz_key("taobao_trade_TradeCreate", r#"{"tid":"519847211351083"}"#),
            number
        );
        assert_eq!(
            biz_key("taobao_trade_TradeCreate", r#"{"tid":"0519847211351083"}"#),
            number
        );
    }

    /// The rule's field is read wherever it sits, whatever else the content holds.
    #[test]
    fn other_fields_and_nesting_do_not_matter() {
        assert_eq!(
            biz_key(
                "taobao_trade_TradeChanged",
                r#"{"orders":[{"tid":1,"oid":2}],"seller_nick":"旗舰店","extra":{"tid":3},"tid":42}"#
            )
            .as_deref(),
            Some("trade_42")
        );
    }

    /// Topics without a rule have no key, even when their content holds a familiar id.
    #[test]
    fn other_topics_have_no_key() {
        for topic in [
            "taobao_fenxiao_FxOrderCreate",
            "tmall_trade_Whatever",
            "taobao_tradeX",
            "",
        ] {
            assert_eq!(biz_key(topic, r#"{"tid":1,"num_iid":2}"#), None, "{topic}");
        }
    }

    /// Content that is not an object with a usable id gives no key rather than a wrong one.
    #[test]
    fn unusable_ids_give_no_key() {
        let t = "taobao_trade_TradeCreate";
        for content in [
            "",
            "not json",
            "[1,2]",
            r#""tid""#,
            "{}",
            r#"{"oid":1}"#,
            r#"{"tid":null}"#,
            r#"{"tid":0}"#,
            r#"{"tid":-5}"#,
            r#"{"tid":1.5}"#,
            r#"{"tid":9007199254740993.0}"#,
            // Beyond u64 serde_json falls back to f64: refused, not rounded.
            r#"{"tid":18446744073709551616}"#,
            r#"{"tid":"12a"}"#,
            r#"{"tid":""}"#,
            r#"{"tid":true}"#,
            r#"{"tid":[1]}"#,
            r#"{"tid":1,"tid":2}"#,
            r#"{"tid":1"#,
        ] {
            assert_eq!(biz_key(t, content), None, "{content}");
        }
    }

    /// Every key fits a FIFO MessageGroupId (at most 128 characters of `[A-Za-z0-9_]`).
    #[test]
    fn keys_fit_a_message_group_id() {
        for r in RULES {
            let key = biz_key(
                &format!("{}X", r.topic_prefix),
                &format!(r#"{{"{}":{}}}"#, r.field, u64::MAX),
            )
            .unwrap();
            assert!(key.len() <= 128, "{key}");
            assert!(key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
        }
    }
}
