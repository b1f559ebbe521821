//! Realistic generated messages: the platform's topics, content with 64-bit business ids,
//! Chinese nicks and bursts of changes to one trade. Deterministic for a seed.

use serde_json::json;

use super::rng::SplitMix64;

/// A small set of sellers, so several messages concern one shop: (user_id, nick).
pub(crate) const SELLERS: [(u64, &str); 5] = [
    (2_206_512_345_678, "海风数码旗舰店"),
    (3_937_219_480, "sim_shop_ascii"),
    (1_172_200_053, "小米官方旗舰店-sim"),
    (2_200_781_234_567, "tmc测试店铺 A&B"),
    (880_000_000_001, "Global Buyer Co"),
];

const BUYERS: [&str; 6] = [
    "tb_buyer_8812",
    "买家小王",
    "张三丰",
    "lucy_0214",
    "t**1",
    "顾客 100%满意",
];

/// The topics generated, with relative weights (trade changes dominate real traffic).
pub const TOPICS: [(&str, u64); 9] = [
    ("taobao_trade_TradeCreate", 15),
    ("taobao_trade_TradeBuyerPay", 12),
    ("taobao_trade_TradeChanged", 25),
    ("taobao_trade_TradeSuccess", 8),
    ("taobao_trade_TradeClose", 5),
    ("taobao_refund_RefundCreated", 7),
    ("taobao_item_ItemUpdate", 10),
    ("taobao_item_ItemStockChanged", 13),
    ("icbu_trade_OrderNotify", 5),
];

/// Where assigned ids start: the captured real id, well above 2^53.
const FIRST_ID: u64 = 7_104_300_007_405_429_232;
const TWO_POW_53: u64 = 1 << 53;

/// Stream tags for `SplitMix64::stream`.
const IDS: u64 = 1;
const CONTENT: u64 = 2;

/// One generated message, before it gets an id and a publish time.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Generated {
    /// One of [`TOPICS`].
    pub topic: String,
    /// The topic's JSON document, as a string.
    pub content: String,
    /// The seller the event concerns.
    pub user_id: u64,
    /// That seller's nick (several are Chinese).
    pub user_nick: String,
}

#[derive(Debug)]
pub(crate) struct Generator {
    ids: SplitMix64,
    content: SplitMix64,
    next_id: u64,
    /// The last trade generated (tid, oid, seller, buyer), for bursts of `TradeChanged`.
    last_trade: Option<(u64, u64, usize, usize)>,
}

impl Generator {
    pub(crate) fn new(seed: u64) -> Self {
        let mut ids = SplitMix64::stream(seed, IDS);
        let next_id = FIRST_ID + ids.below(1_000_000);
        Self {
            ids,
            content: SplitMix64::stream(seed, CONTENT),
            next_id,
            last_trade: None,
        }
    }

    /// A fresh id: increasing by a pseudo-random step, skipping ids `taken` says are in use.
    pub(crate) fn next_id(&mut self, taken: impl Fn(u64) -> bool) -> u64 {
        loop {
            let id = self.next_id;
            self.next_id = self.next_id.wrapping_add(1 + self.ids.below(4096));
            // Real ids are Java longs above 2^53.
            if self.next_id <= TWO_POW_53 || self.next_id > i64::MAX as u64 {
                self.next_id = FIRST_ID;
            }
            if !taken(id) {
                return id;
            }
        }
    }

    pub(crate) fn message(&mut self) -> Generated {
        let total: u64 = TOPICS.iter().map(|(_, w)| w).sum();
        let mut pick = self.content.below(total);
        let mut topic = TOPICS[0].0;
        for (t, w) in TOPICS {
            if pick < w {
                topic = t;
                break;
            }
            pick -= w;
        }
        let r = &mut self.content;
        let (content, seller) = match topic {
            "taobao_refund_RefundCreated" => {
                let seller = r.below(4) as usize;
                let tid = business_id(r);
                let c = json!({
                    "refund_id": business_id(r),
                    "tid": tid,
                    "oid": tid,
                    "refund_fee": money(r),
                    "seller_nick": SELLERS[seller].1,
                    "buyer_nick": r.pick(&BUYERS),
                    "refund_phase": r.pick(&["onsale", "aftersale"]),
                    "bill_type": "refund_bill",
                });
                (c, seller)
            }
            "taobao_item_ItemUpdate" => {
                let seller = r.below(4) as usize;
                let c = json!({
                    "num_iid": business_id(r),
                    "nick": SELLERS[seller].1,
                    "changed_fields": r.pick(&["title", "price", "title,price", "desc"]),
                    "title": r.pick(&["2024新款 夏季纯棉T恤 男", "小米 充电宝 20000mAh", "Crew neck tee \"classic\""]),
                });
                (c, seller)
            }
            "taobao_item_ItemStockChanged" => {
                let seller = r.below(4) as usize;
                let increment = r.range(0, 10) as i64 - 5;
                let c = json!({
                    "nick": SELLERS[seller].1,
                    "increment": increment,
                    "num": r.range(0, 5000),
                    "changed_fields": "num",
                    "num_iid": business_id(r),
                });
                (c, seller)
            }
            "icbu_trade_OrderNotify" => {
                let c = json!({
                    "trade_id": business_id(r),
                    "status": r.pick(&["unpay", "paid", "shipped", "finished"]),
                });
                (c, 4)
            }
            _ => {
                let burst = topic == "taobao_trade_TradeChanged" && r.chance(0.4);
                let (tid, oid, seller, buyer) = match self.last_trade {
                    Some(t) if burst => t,
                    _ => {
                        let tid = business_id(r);
                        let oid = if r.chance(0.7) {
                            tid
                        } else {
                            tid + r.range(1, 99)
                        };
                        (
                            tid,
                            oid,
                            r.below(4) as usize,
                            r.below(BUYERS.len() as u64) as usize,
                        )
                    }
                };
                self.last_trade = Some((tid, oid, seller, buyer));
                let status = match topic {
                    "taobao_trade_TradeCreate" => "WAIT_BUYER_PAY",
                    "taobao_trade_TradeBuyerPay" => "WAIT_SELLER_SEND_GOODS",
                    "taobao_trade_TradeSuccess" => "TRADE_FINISHED",
                    "taobao_trade_TradeClose" => "TRADE_CLOSED_BY_TAOBAO",
                    _ => r.pick(&[
                        "WAIT_SELLER_SEND_GOODS",
                        "WAIT_BUYER_CONFIRM_GOODS",
                        "SELLER_CONSIGNED_PART",
                    ]),
                };
                let c = json!({
                    "buyer_nick": BUYERS[buyer],
                    "payment": money(r),
                    "oid": oid,
                    "tid": tid,
                    "type": r.pick(&["guarantee_trade", "fixed", "tmall_i18n"]),
                    "seller_nick": SELLERS[seller].1,
                    "status": status,
                });
                (c, seller)
            }
        };
        Generated {
            topic: topic.to_owned(),
            content: content.to_string(),
            user_id: SELLERS[seller].0,
            user_nick: SELLERS[seller].1.to_owned(),
        }
    }
}

/// Business ids: half beyond 2^53 (what breaks doubles), half in the older 15-digit range.
fn business_id(r: &mut SplitMix64) -> u64 {
    if r.chance(0.5) {
        r.range(TWO_POW_53 + 1, 4_000_000_000_000_000_000)
    } else {
        r.range(100_000_000_000_000, 999_999_999_999_999)
    }
}

fn money(r: &mut SplitMix64) -> String {
    format!("{}.{:02}", r.range(1, 9999), r.below(100))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn batch(seed: u64, n: usize) -> Vec<(u64, Generated)> {
        let mut g = Generator::new(seed);
        (0..n)
            .map(|_| (g.next_id(|_| false), g.message()))
            .collect()
    }

    /// The same seed gives the same ids and messages; another seed does not.
    #[test]
    fn deterministic_for_a_seed() {
        assert_eq!(batch(1, 200), batch(1, 200));
        assert_ne!(batch(1, 200), batch(2, 200));
    }

    /// Ids are unique, increasing and above 2^53; taken ids are skipped.
    #[test]
    fn ids_are_unique_and_large() {
        let all = batch(3, 5000);
        let ids: Vec<u64> = all.iter().map(|(id, _)| *id).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]));
        assert!(ids.iter().all(|&id| id > TWO_POW_53));
        let mut g = Generator::new(3);
        let first = ids[0];
        assert_ne!(g.next_id(|id| id == first), first);
    }

    /// Content is JSON whose 64-bit ids are exact, every topic shows up, some text is Chinese,
    /// and some trades get several changes in a row.
    #[test]
    fn content_is_realistic() {
        let all = batch(1, 2000);
        let topics: HashSet<&str> = all.iter().map(|(_, m)| m.topic.as_str()).collect();
        assert_eq!(topics.len(), TOPICS.len());
        let mut big = 0;
        let mut bursts = 0;
        let mut last_tid = None;
        for (_, m) in &all {
            let v: serde_json::Value = serde_json::from_str(&m.content).unwrap();
            for key in ["tid", "num_iid", "refund_id", "trade_id"] {
                if let Some(n) = v.get(key) {
                    let n = n.as_u64().expect("an exact u64");
                    assert!(m.content.contains(&n.to_string()));
                    if n > TWO_POW_53 {
                        big += 1;
                    }
                }
            }
            let tid = v.get("tid").and_then(|t| t.as_u64());
            if tid.is_some() && tid == last_tid {
                bursts += 1;
            }
            last_tid = tid;
        }
        assert!(big > 500, "{big}");
        assert!(bursts > 50, "{bursts}");
        assert!(all.iter().any(|(_, m)| !m.content.is_ascii()));
        assert!(all.iter().any(|(_, m)| !m.user_nick.is_ascii()));
    }
}
