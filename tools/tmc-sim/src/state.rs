//! Queue semantics: publish order, leases, redelivery with the same id, retention, confirm.
//!
//! Pure data driven by `now_ms` (the simulator's clock), so the rules are unit-tested without
//! HTTP or sleeping. Every operation on a group first settles it: messages past retention are
//! expired and ended leases return to the visible set. Settling touches only what changed, so
//! a consume costs O(quantity · log n) however deep the queue is.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::{Deserialize, Serialize};

/// The group a consume or confirm without `group_name` uses.
pub const DEFAULT_GROUP: &str = "default";

/// A message to put on a group's queue (in-process `publish` and `POST /_sim/publish`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NewMessage {
    /// The id to use; `None` assigns a fresh one (unique, above 2^53 like the platform's).
    #[serde(default, with = "opt_u64_text")]
    pub id: Option<u64>,
    /// E.g. `taobao_trade_TradeChanged`.
    pub topic: String,
    /// The payload, usually a JSON document as a string; sent byte for byte.
    pub content: String,
    /// The seller's user id; a number on the wire, exact beyond 2^53.
    #[serde(default = "default_user_id", with = "u64_text")]
    pub user_id: u64,
    /// The seller's nick.
    #[serde(default = "default_user_nick")]
    pub user_nick: String,
    /// `yyyy-MM-dd HH:mm:ss` in GMT+8 as it should appear; `None` means the simulator's now.
    /// Sent as given, so tests can feed malformed times to the relay.
    #[serde(default)]
    pub pub_time: Option<String>,
    /// The publishing app; `None` means the platform's own app key, `12497914`.
    #[serde(default)]
    pub pub_app_key: Option<String>,
}

impl NewMessage {
    /// A message for the default seller with a fresh id and `pub_time` now.
    pub fn new(topic: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            id: None,
            topic: topic.into(),
            content: content.into(),
            user_id: default_user_id(),
            user_nick: default_user_nick(),
            pub_time: None,
            pub_app_key: None,
        }
    }

    /// The same message with a fixed id.
    pub fn with_id(mut self, id: u64) -> Self {
        self.id = Some(id);
        self
    }
}

fn default_user_id() -> u64 {
    crate::generate::SELLERS[0].0
}

fn default_user_nick() -> String {
    crate::generate::SELLERS[0].1.to_owned()
}

/// The platform's own app key, which publishes the `taobao_*` topics.
pub const PLATFORM_APP_KEY: &str = "12497914";

/// Counters and per-message history, as `state()` and `GET /_sim/state` return them. Times are
/// epoch milliseconds of the simulator's clock (wall clock plus `advance`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SimState {
    /// The simulator's clock when the snapshot was taken, to compare the other times with.
    pub now_ms: u64,
    /// Messages ever put on a queue (a republished id counts again).
    pub published: u64,
    /// Visible now: the next consume of their group may hand them out.
    pub pending: u64,
    /// Handed out and not confirmed; hidden until their lease ends.
    pub inflight: u64,
    /// Removed by a confirm.
    pub confirmed: u64,
    /// Dropped unconfirmed after the retention period.
    pub expired: u64,
    /// Dropped unconfirmed because their group was deleted.
    pub dropped: u64,
    /// Messages handed out by consume, redeliveries included.
    pub deliveries: u64,
    /// Verified `taobao.tmc.messages.confirm` calls, faulted and scripted ones included.
    pub confirm_calls: u64,
    /// Verified `taobao.tmc.messages.consume` calls, faulted and scripted ones included.
    pub consume_calls: u64,
    /// Confirmed ids that were unknown, already confirmed, expired or in another group.
    pub unknown_confirms: u64,
    /// Verified calls per API method, so tests can prove what a client did not call.
    pub calls: BTreeMap<String, u64>,
    /// Requests refused before reaching a method, per error code (signature, timestamp, ...).
    pub rejected: BTreeMap<String, u64>,
    /// Injected faults by kind: `error`, `ban`, `banned` (calls refused during a ban),
    /// `http502`, `malformed`, `reset`, `confirm_false`, `scripted`.
    pub faults_injected: BTreeMap<String, u64>,
    /// The groups that exist, `default` included.
    pub groups: Vec<String>,
    /// Every message the simulator has seen, keyed by the decimal id (exact beyond 2^53).
    pub messages: BTreeMap<String, MessageState>,
}

/// One message's history.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MessageState {
    /// The group whose queue holds it.
    pub group: String,
    /// Its topic, to check routing without looking up the content.
    pub topic: String,
    /// When it was put on the queue (retention counts from here).
    pub published_ms: u64,
    /// How many times consume handed it out; above 1 means redelivered.
    pub deliveries: u64,
    /// The first hand-out, if any.
    pub first_delivered_ms: Option<u64>,
    /// The latest hand-out, if any.
    pub last_delivered_ms: Option<u64>,
    /// While handed out and unconfirmed: when it becomes visible again.
    pub leased_until_ms: Option<u64>,
    /// When a confirm removed it.
    pub confirmed_at_ms: Option<u64>,
    /// Dropped unconfirmed after the retention period.
    pub expired: bool,
    /// Dropped unconfirmed because its group was deleted.
    pub dropped: bool,
}

/// A message as the gateway hands it out: the `tmc_message` fields, defaults filled in.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Delivered {
    /// The handle the client confirms with.
    pub id: u64,
    /// E.g. `taobao_trade_TradeChanged`.
    pub topic: String,
    /// The payload, byte for byte as published.
    pub content: String,
    /// The seller's id (a bare JSON number on the wire).
    pub user_id: u64,
    /// The seller's nick.
    pub user_nick: String,
    /// As published (GMT+8 wire time unless a test chose otherwise).
    pub pub_time: String,
    /// The publishing app.
    pub pub_app_key: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Status {
    Visible,
    Leased { until_ms: u64 },
    Confirmed { at_ms: u64 },
    Expired,
    Dropped,
}

#[derive(Debug)]
struct Stored {
    msg: Delivered,
    group: String,
    seq: u64,
    published_ms: u64,
    status: Status,
    deliveries: u64,
    first_delivered_ms: Option<u64>,
    last_delivered_ms: Option<u64>,
}

/// One group's queue. `live` holds every unconfirmed message in publish order (for retention);
/// it is the union of `visible` and the leased messages in `leases`.
#[derive(Debug, Default)]
pub(crate) struct Group {
    visible: BTreeMap<u64, u64>,
    leases: BTreeSet<(u64, u64)>,
    live: BTreeMap<u64, u64>,
    /// Messages handed out since the simulator started (queue.get `get_total`).
    pub get_total: u64,
    /// Messages put on the queue (queue.get `put_toal`).
    pub put_total: u64,
    /// Sellers moved into the group by group.add.
    pub nicks: BTreeSet<String>,
}

/// What a confirm did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct ConfirmOutcome {
    /// Ids removed from the queue.
    pub confirmed: u64,
    /// Ids that changed nothing (unknown, repeated, expired, other group).
    pub unknown: u64,
}

#[derive(Debug, Default)]
struct Counters {
    published: u64,
    confirmed: u64,
    expired: u64,
    dropped: u64,
    deliveries: u64,
    unknown_confirms: u64,
}

/// Every group's queue and every message's history.
#[derive(Debug)]
pub(crate) struct Store {
    lease_ms: u64,
    retention_ms: u64,
    messages: HashMap<u64, Stored>,
    groups: BTreeMap<String, Group>,
    next_seq: u64,
    last_published_ms: u64,
    counters: Counters,
}

impl Store {
    pub(crate) fn new(lease_ms: u64, retention_ms: u64) -> Self {
        let mut groups = BTreeMap::new();
        groups.insert(DEFAULT_GROUP.to_owned(), Group::default());
        Self {
            lease_ms,
            retention_ms,
            messages: HashMap::new(),
            groups,
            next_seq: 0,
            last_published_ms: 0,
            counters: Counters::default(),
        }
    }

    pub(crate) fn contains_id(&self, id: u64) -> bool {
        self.messages.contains_key(&id)
    }

    pub(crate) fn group(&self, name: &str) -> Option<&Group> {
        self.groups.get(name)
    }

    pub(crate) fn group_mut(&mut self, name: &str) -> Option<&mut Group> {
        self.groups.get_mut(name)
    }

    pub(crate) fn group_names(&self) -> impl Iterator<Item = &String> {
        self.groups.keys()
    }

    /// Creates the group if it does not exist; true when it was created.
    pub(crate) fn create_group(&mut self, name: &str) -> bool {
        if self.groups.contains_key(name) {
            return false;
        }
        self.groups.insert(name.to_owned(), Group::default());
        true
    }

    /// Puts messages at the back of `group`'s queue (creating the group). An id that is
    /// still unconfirmed somewhere is left as it is; a confirmed or expired id is published
    /// afresh, which is how a test makes the platform send a duplicate.
    pub(crate) fn publish(&mut self, group: &str, msgs: Vec<(u64, Delivered)>, now_ms: u64) {
        self.create_group(group);
        // Publish times never go backwards, so publish order is also retention order.
        let published_ms = now_ms.max(self.last_published_ms);
        self.last_published_ms = published_ms;
        for (id, msg) in msgs {
            if let Some(old) = self.messages.get(&id) {
                if matches!(old.status, Status::Visible | Status::Leased { .. }) {
                    tracing::debug!(id, "publish of an id that is still queued: ignored");
                    continue;
                }
            }
            let seq = self.next_seq;
            self.next_seq += 1;
            let Some(g) = self.groups.get_mut(group) else {
                continue;
            };
            g.visible.insert(seq, id);
            g.live.insert(seq, id);
            g.put_total += 1;
            self.counters.published += 1;
            self.messages.insert(
                id,
                Stored {
                    msg,
                    group: group.to_owned(),
                    seq,
                    published_ms,
                    status: Status::Visible,
                    deliveries: 0,
                    first_delivered_ms: None,
                    last_delivered_ms: None,
                },
            );
        }
    }

    /// Expires what is past retention and makes ended leases visible again, in `group` only.
    fn settle(&mut self, group: &str, now_ms: u64) {
        let Some(g) = self.groups.get_mut(group) else {
            return;
        };
        while let Some((&seq, &id)) = g.live.first_key_value() {
            let Some(m) = self.messages.get_mut(&id) else {
                g.live.remove(&seq);
                continue;
            };
            if m.published_ms.saturating_add(self.retention_ms) > now_ms {
                break;
            }
            g.live.remove(&seq);
            match m.status {
                Status::Visible => {
                    g.visible.remove(&seq);
                }
                Status::Leased { until_ms } => {
                    g.leases.remove(&(until_ms, seq));
                }
                _ => {}
            }
            m.status = Status::Expired;
            self.counters.expired += 1;
        }
        while let Some(&(until_ms, seq)) = g.leases.first() {
            if until_ms > now_ms {
                break;
            }
            g.leases.remove(&(until_ms, seq));
            if let Some(&id) = g.live.get(&seq) {
                if let Some(m) = self.messages.get_mut(&id) {
                    m.status = Status::Visible;
                }
                g.visible.insert(seq, id);
            }
        }
    }

    fn settle_all(&mut self, now_ms: u64) {
        let names: Vec<String> = self.groups.keys().cloned().collect();
        for name in names {
            self.settle(&name, now_ms);
        }
    }

    /// Hands out up to `quantity` visible messages of `group` in publish order and hides each
    /// until `now + lease`. `None` when the group does not exist.
    pub(crate) fn consume(
        &mut self,
        group: &str,
        quantity: usize,
        now_ms: u64,
    ) -> Option<Vec<Delivered>> {
        self.settle(group, now_ms);
        let until_ms = now_ms.saturating_add(self.lease_ms);
        let g = self.groups.get_mut(group)?;
        let mut out = Vec::with_capacity(quantity.min(g.visible.len()));
        while out.len() < quantity {
            let Some((seq, id)) = g.visible.pop_first() else {
                break;
            };
            let Some(m) = self.messages.get_mut(&id) else {
                g.live.remove(&seq);
                continue;
            };
            m.status = Status::Leased { until_ms };
            m.deliveries += 1;
            m.first_delivered_ms.get_or_insert(now_ms);
            m.last_delivered_ms = Some(now_ms);
            g.leases.insert((until_ms, seq));
            out.push(m.msg.clone());
        }
        g.get_total += out.len() as u64;
        self.counters.deliveries += out.len() as u64;
        Some(out)
    }

    /// Removes the listed ids from `group`. Ids that are unknown, already confirmed, expired or
    /// in another group change nothing and are counted as unknown.
    pub(crate) fn confirm(&mut self, group: &str, ids: &[u64], now_ms: u64) -> ConfirmOutcome {
        self.settle(group, now_ms);
        let mut out = ConfirmOutcome::default();
        for id in ids {
            let confirmed = match (self.messages.get_mut(id), self.groups.get_mut(group)) {
                (Some(m), Some(g)) if m.group == group => match m.status {
                    Status::Visible => {
                        g.visible.remove(&m.seq);
                        g.live.remove(&m.seq);
                        m.status = Status::Confirmed { at_ms: now_ms };
                        true
                    }
                    Status::Leased { until_ms } => {
                        g.leases.remove(&(until_ms, m.seq));
                        g.live.remove(&m.seq);
                        m.status = Status::Confirmed { at_ms: now_ms };
                        true
                    }
                    _ => false,
                },
                _ => false,
            };
            if confirmed {
                out.confirmed += 1;
            } else {
                out.unknown += 1;
            }
        }
        self.counters.confirmed += out.confirmed;
        self.counters.unknown_confirms += out.unknown;
        out
    }

    /// Deletes a group and drops its unconfirmed messages. False when there is no such group.
    pub(crate) fn delete_group(&mut self, group: &str) -> bool {
        let Some(g) = self.groups.remove(group) else {
            return false;
        };
        for id in g.live.values() {
            if let Some(m) = self.messages.get_mut(id) {
                m.status = Status::Dropped;
                self.counters.dropped += 1;
            }
        }
        true
    }

    /// Visible and leased message counts of one group, settled at `now_ms`.
    pub(crate) fn backlog(&mut self, group: &str, now_ms: u64) -> Option<(u64, u64)> {
        self.settle(group, now_ms);
        let g = self.groups.get(group)?;
        Some((g.visible.len() as u64, g.leases.len() as u64))
    }

    /// Fills the queue part of a snapshot; `with_messages` false skips the per-message map,
    /// which is large on a deep queue.
    pub(crate) fn snapshot(&mut self, now_ms: u64, with_messages: bool, into: &mut SimState) {
        self.settle_all(now_ms);
        let c = &self.counters;
        into.now_ms = now_ms;
        into.published = c.published;
        into.confirmed = c.confirmed;
        into.expired = c.expired;
        into.dropped = c.dropped;
        into.deliveries = c.deliveries;
        into.unknown_confirms = c.unknown_confirms;
        into.pending = self.groups.values().map(|g| g.visible.len() as u64).sum();
        into.inflight = self.groups.values().map(|g| g.leases.len() as u64).sum();
        into.groups = self.groups.keys().cloned().collect();
        if !with_messages {
            return;
        }
        into.messages = self
            .messages
            .iter()
            .map(|(id, m)| {
                let state = MessageState {
                    group: m.group.clone(),
                    topic: m.msg.topic.clone(),
                    published_ms: m.published_ms,
                    deliveries: m.deliveries,
                    first_delivered_ms: m.first_delivered_ms,
                    last_delivered_ms: m.last_delivered_ms,
                    leased_until_ms: match m.status {
                        Status::Leased { until_ms } => Some(until_ms),
                        _ => None,
                    },
                    confirmed_at_ms: match m.status {
                        Status::Confirmed { at_ms } => Some(at_ms),
                        _ => None,
                    },
                    expired: m.status == Status::Expired,
                    dropped: m.status == Status::Dropped,
                };
                (id.to_string(), state)
            })
            .collect();
    }
}

/// `u64` as a JSON number or a decimal string: admin clients in JavaScript cannot write ids
/// above 2^53 as numbers.
pub(crate) mod u64_text {
    use serde::{Deserialize, Deserializer, Serializer};

    #[derive(Deserialize)]
    #[serde(untagged)]
    pub(crate) enum NumOrText {
        Num(u64),
        Text(String),
    }

    impl NumOrText {
        pub(crate) fn value<E: serde::de::Error>(self) -> Result<u64, E> {
            match self {
                NumOrText::Num(n) => Ok(n),
                NumOrText::Text(s) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => s
                    .parse()
                    .map_err(|_| E::custom(format!("{s:?} is above u64::MAX"))),
                NumOrText::Text(s) => Err(E::custom(format!("{s:?} is not a decimal id"))),
            }
        }
    }

    pub(crate) fn serialize<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&v.to_string())
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        NumOrText::deserialize(d)?.value()
    }
}

/// `Option<u64>` as a JSON number, a decimal string or null.
pub(crate) mod opt_u64_text {
    use serde::{Deserialize, Deserializer, Serializer};

    use super::u64_text::NumOrText;

    pub(crate) fn serialize<S: Serializer>(v: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(v) => s.serialize_str(&v.to_string()),
            None => s.serialize_none(),
        }
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        match Option::<NumOrText>::deserialize(d)? {
            Some(v) => v.value().map(Some),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEASE: u64 = 300_000;
    const RETENTION: u64 = 86_400_000;
    const T0: u64 = 1_700_000_000_000;

    fn msg(id: u64) -> (u64, Delivered) {
        (
            id,
            Delivered {
                id,
                topic: "taobao_trade_TradeChanged".into(),
                content: "{}".into(),
                user_id: 1,
                user_nick: "n".into(),
                pub_time: "2024-01-01 00:00:00".into(),
                pub_app_key: PLATFORM_APP_KEY.into(),
            },
        )
    }

    fn store_with(ids: &[u64]) -> Store {
        let mut s = Store::new(LEASE, RETENTION);
        s.publish(DEFAULT_GROUP, ids.iter().map(|&i| msg(i)).collect(), T0);
        s
    }

    fn ids(v: Option<Vec<Delivered>>) -> Vec<u64> {
        v.unwrap().into_iter().map(|m| m.id).collect()
    }

    fn state(s: &mut Store, now: u64) -> SimState {
        let mut st = SimState::default();
        s.snapshot(now, true, &mut st);
        st
    }

    /// Consume hands messages out in publish order, at most `quantity` at a time.
    #[test]
    fn consume_is_in_publish_order() {
        let mut s = store_with(&[30, 10, 20, 50, 40]);
        assert_eq!(ids(s.consume(DEFAULT_GROUP, 3, T0)), [30, 10, 20]);
        assert_eq!(ids(s.consume(DEFAULT_GROUP, 3, T0)), [50, 40]);
        assert_eq!(ids(s.consume(DEFAULT_GROUP, 3, T0)), Vec::<u64>::new());
    }

    /// A leased message stays hidden until the lease ends, then comes back with the same id.
    #[test]
    fn lease_hides_then_redelivers_same_id() {
        let mut s = store_with(&[7, 8]);
        assert_eq!(ids(s.consume(DEFAULT_GROUP, 10, T0)), [7, 8]);
        assert!(ids(s.consume(DEFAULT_GROUP, 10, T0 + LEASE - 1)).is_empty());
        s.confirm(DEFAULT_GROUP, &[8], T0 + 1);
        assert_eq!(ids(s.consume(DEFAULT_GROUP, 10, T0 + LEASE)), [7]);
        let st = state(&mut s, T0 + LEASE);
        assert_eq!(st.messages["7"].deliveries, 2);
        assert_eq!(st.messages["7"].first_delivered_ms, Some(T0));
        assert_eq!(st.messages["7"].last_delivered_ms, Some(T0 + LEASE));
        assert_eq!(st.messages["8"].confirmed_at_ms, Some(T0 + 1));
        assert_eq!(st.deliveries, 3);
        assert_eq!(st.inflight, 1);
    }

    /// A redelivered message keeps its place: it comes before messages published after it.
    #[test]
    fn redelivery_keeps_publish_order() {
        let mut s = store_with(&[1]);
        s.consume(DEFAULT_GROUP, 10, T0);
        s.publish(DEFAULT_GROUP, vec![msg(2)], T0 + 1);
        assert_eq!(ids(s.consume(DEFAULT_GROUP, 10, T0 + LEASE + 5)), [1, 2]);
    }

    /// Unconfirmed messages are dropped and counted once retention has passed since publish.
    #[test]
    fn expiry_after_retention() {
        let mut s = store_with(&[1, 2]);
        s.consume(DEFAULT_GROUP, 10, T0);
        s.publish(DEFAULT_GROUP, vec![msg(3)], T0 + 1000);
        assert!(ids(s.consume(DEFAULT_GROUP, 10, T0 + RETENTION)).contains(&3));
        let st = state(&mut s, T0 + RETENTION);
        assert_eq!(st.expired, 2);
        assert!(st.messages["1"].expired);
        assert_eq!((st.pending, st.inflight), (0, 1));
        // Confirming an expired id changes nothing and is counted.
        assert_eq!(
            s.confirm(DEFAULT_GROUP, &[1], T0 + RETENTION),
            ConfirmOutcome {
                confirmed: 0,
                unknown: 1
            }
        );
    }

    /// Unknown, repeated and other-group ids are accepted and counted, and change nothing.
    #[test]
    fn confirm_of_unknown_ids_is_counted() {
        let mut s = store_with(&[1, 2]);
        s.create_group("g1");
        s.publish("g1", vec![msg(9)], T0);
        let out = s.confirm(DEFAULT_GROUP, &[1, 1, 404, 9], T0);
        assert_eq!(
            out,
            ConfirmOutcome {
                confirmed: 1,
                unknown: 3
            }
        );
        let st = state(&mut s, T0);
        assert_eq!(st.unknown_confirms, 3);
        assert_eq!(st.confirmed, 1);
        assert_eq!(st.pending, 2);
        assert_eq!(ids(s.consume("g1", 10, T0)), [9]);
    }

    /// Groups are separate queues; an unknown group is refused.
    #[test]
    fn groups_are_separate() {
        let mut s = store_with(&[1]);
        s.publish("g1", vec![msg(2)], T0);
        assert_eq!(ids(s.consume("g1", 10, T0)), [2]);
        assert_eq!(ids(s.consume(DEFAULT_GROUP, 10, T0)), [1]);
        assert!(s.consume("nope", 10, T0).is_none());
    }

    /// Republishing a queued id is ignored; republishing a confirmed one queues it again.
    #[test]
    fn republish_rules() {
        let mut s = store_with(&[1]);
        s.publish(DEFAULT_GROUP, vec![msg(1)], T0);
        assert_eq!(state(&mut s, T0).published, 1);
        s.confirm(DEFAULT_GROUP, &[1], T0);
        s.publish(DEFAULT_GROUP, vec![msg(1)], T0);
        assert_eq!(ids(s.consume(DEFAULT_GROUP, 10, T0)), [1]);
        assert_eq!(state(&mut s, T0).published, 2);
    }

    /// Deleting a group drops its unconfirmed messages.
    #[test]
    fn delete_group_drops_messages() {
        let mut s = Store::new(LEASE, RETENTION);
        s.publish("g1", vec![msg(1), msg(2)], T0);
        s.consume("g1", 10, T0);
        s.publish("g1", vec![msg(3)], T0);
        assert!(s.delete_group("g1"));
        let st = state(&mut s, T0);
        assert_eq!((st.dropped, st.pending, st.inflight), (3, 0, 0));
        assert!(st.messages["1"].dropped);
        assert!(!s.delete_group("g1"));
    }

    /// A deep queue: 100,000 messages are handed out exactly once, and come back in order when
    /// their leases end. (Its speed is measured by `make bench`.)
    #[test]
    fn deep_queue_consume_hands_out_everything() {
        let mut s = Store::new(LEASE, RETENTION);
        s.publish(DEFAULT_GROUP, (1..=100_000).map(msg).collect(), T0);
        let mut n = 0;
        for i in 0..500 {
            n += s.consume(DEFAULT_GROUP, 200, T0 + i).unwrap().len();
        }
        assert_eq!(n, 100_000);
        // Every lease ends at once: they all become visible again in order.
        assert_eq!(
            ids(s.consume(DEFAULT_GROUP, 3, T0 + 500 + LEASE)),
            [1, 2, 3]
        );
    }
}
