//! Typed calls: one function per API method, its parameters validated before anything is sent.

use serde::Serialize;
use serde_json::{Map, Value};
use tokio::time::Instant;

use super::client::TopClient;
use super::envelope::{boolean, into_list, list};
use super::error::TopError;
use super::message::TmcMessage;
use super::Secret;

pub const CONSUME: &str = "taobao.tmc.messages.consume";
pub const CONFIRM: &str = "taobao.tmc.messages.confirm";
pub const USER_PERMIT: &str = "taobao.tmc.user.permit";
pub const USER_CANCEL: &str = "taobao.tmc.user.cancel";
pub const USER_GET: &str = "taobao.tmc.user.get";
pub const GROUPS_GET: &str = "taobao.tmc.groups.get";
pub const GROUP_ADD: &str = "taobao.tmc.group.add";
pub const GROUP_DELETE: &str = "taobao.tmc.group.delete";
pub const QUEUE_GET: &str = "taobao.tmc.queue.get";
pub const JMS_USER_ADD: &str = "taobao.jushita.jms.user.add";
pub const JMS_USER_GET: &str = "taobao.jushita.jms.user.get";
pub const JMS_USER_DELETE: &str = "taobao.jushita.jms.user.delete";

/// `quantity` bounds of `consume`.
pub const MIN_QUANTITY: u32 = 10;
pub const MAX_QUANTITY: u32 = 200;
/// At most this many ids per `confirm`.
pub const CONFIRM_CHUNK: usize = 200;

/// The result of confirming one chunk of ids.
#[derive(Debug)]
pub struct ConfirmChunk {
    pub ids: Vec<u64>,
    /// `Ok(true)`: confirmed. `Ok(false)` or `Err`: treat as not confirmed (redelivered later).
    pub result: Result<bool, TopError>,
}

/// A seller's subscription (`tmc_user`).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct TmcUser {
    pub user_nick: Option<String>,
    pub user_id: Option<u64>,
    pub topics: Vec<String>,
    pub is_valid: Option<bool>,
    pub group_name: Option<String>,
    pub created: Option<String>,
    pub modified: Option<String>,
    pub user_platform: Option<String>,
}

/// One page of `groups.get`.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct GroupsPage {
    pub groups: Vec<String>,
    pub total_results: Option<u64>,
}

/// One queue's figures from `queue.get` (`tmc_queue_info`).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct QueueInfo {
    pub name: Option<String>,
    pub broker_name: Option<String>,
    /// Messages read from the queue today.
    pub get_total: Option<i64>,
    /// Messages written to the queue today (`put_toal` on the wire, sic).
    pub put_total: Option<i64>,
}

/// A Jushita MQ sync user (`ons_user`).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct OnsUser {
    pub user_nick: Option<String>,
    pub topic_names: Vec<String>,
    pub raw: Value,
}

fn invalid(method: &'static str, reason: impl Into<String>) -> TopError {
    TopError::InvalidRequest {
        method,
        reason: reason.into(),
    }
}

fn undecodable(method: &'static str, reason: String, inner: &Map<String, Value>) -> TopError {
    TopError::Decode {
        method,
        status: 200,
        reason,
        body_head: super::error::body_head(
            Value::Object(inner.clone()).to_string().as_bytes(),
            super::envelope::BODY_HEAD,
        ),
    }
}

fn push_group(params: &mut Vec<(&'static str, String)>, group: Option<&str>) {
    if let Some(g) = group.filter(|g| !g.is_empty()) {
        params.push(("group_name", g.to_owned()));
    }
}

fn success(method: &'static str, inner: &Map<String, Value>) -> Result<bool, TopError> {
    boolean(inner.get("is_success"))
        .ok_or_else(|| undecodable(method, "no is_success in the response".into(), inner))
}

fn text(v: &Value, name: &str) -> Option<String> {
    match v.get(name)? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn comma_list(v: &Value, name: &str) -> Vec<String> {
    match v.get(name) {
        Some(Value::String(s)) => s
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
        Some(other @ (Value::Array(_) | Value::Object(_))) => list(Some(other))
            .unwrap_or_default()
            .iter()
            .filter_map(|x| x.as_str().map(str::to_owned))
            .collect(),
        _ => Vec::new(),
    }
}

fn check_ids_count(method: &'static str, n: usize, max: usize, what: &str) -> Result<(), TopError> {
    if n > max {
        return Err(invalid(method, format!("at most {max} {what}, got {n}")));
    }
    Ok(())
}

/// The messages of a decoded consume response (any list shape). Pure, so it can be fed
/// arbitrary bodies; a message with defects is kept with them recorded, never dropped.
pub fn consume_messages(mut inner: Map<String, Value>) -> Result<Vec<TmcMessage>, TopError> {
    match into_list(inner.remove("messages")) {
        Ok(items) => Ok(items.into_iter().map(TmcMessage::from_value).collect()),
        Err((reason, messages)) => {
            if let Some(m) = messages {
                inner.insert("messages".to_owned(), m);
            }
            Err(undecodable(CONSUME, format!("messages: {reason}"), &inner))
        }
    }
}

impl TopClient {
    /// Pulls up to `quantity` (10..=200) messages from `group` (the default group when `None`).
    pub async fn consume(
        &self,
        group: Option<&str>,
        quantity: u32,
        deadline: Instant,
    ) -> Result<Vec<TmcMessage>, TopError> {
        if !(MIN_QUANTITY..=MAX_QUANTITY).contains(&quantity) {
            return Err(invalid(
                CONSUME,
                format!("quantity must be {MIN_QUANTITY}..={MAX_QUANTITY}, got {quantity}"),
            ));
        }
        let mut params = Vec::with_capacity(2);
        push_group(&mut params, group);
        params.push(("quantity", quantity.to_string()));
        let inner = self.call(CONSUME, &params, None, deadline).await?;
        consume_messages(inner)
    }

    /// Confirms `ids` in chunks of at most 200; one result per chunk, in order.
    pub async fn confirm(
        &self,
        group: Option<&str>,
        ids: &[u64],
        deadline: Instant,
    ) -> Vec<ConfirmChunk> {
        let mut out = Vec::with_capacity(ids.len().div_ceil(CONFIRM_CHUNK));
        for chunk in ids.chunks(CONFIRM_CHUNK) {
            let result = self.confirm_chunk(group, chunk, deadline).await;
            out.push(ConfirmChunk {
                ids: chunk.to_vec(),
                result,
            });
        }
        out
    }

    /// Confirms at most 200 ids in one call.
    pub async fn confirm_chunk(
        &self,
        group: Option<&str>,
        ids: &[u64],
        deadline: Instant,
    ) -> Result<bool, TopError> {
        if ids.is_empty() {
            return Err(invalid(CONFIRM, "no ids to confirm"));
        }
        check_ids_count(CONFIRM, ids.len(), CONFIRM_CHUNK, "ids per confirm")?;
        if let Some(bad) = ids.iter().find(|&&i| i == 0 || i > super::message::MAX_ID) {
            return Err(invalid(
                CONFIRM,
                format!("{bad} is not a TMC message id (1..=i64::MAX)"),
            ));
        }
        let mut params = Vec::with_capacity(2);
        push_group(&mut params, group);
        let joined = ids.iter().map(u64::to_string).collect::<Vec<_>>().join(",");
        params.push(("s_message_ids", joined));
        let inner = self.call(CONFIRM, &params, None, deadline).await?;
        success(CONFIRM, &inner)
    }

    /// Permits the session's seller to receive `topics` (all of the app's topics when `None`).
    pub async fn user_permit(
        &self,
        session: &Secret,
        topics: Option<&[String]>,
        deadline: Instant,
    ) -> Result<bool, TopError> {
        if session.is_empty() {
            return Err(invalid(USER_PERMIT, "a seller session key is required"));
        }
        let mut params = Vec::new();
        if let Some(t) = topics {
            check_ids_count(USER_PERMIT, t.len(), 100, "topics")?;
            params.push(("topics", t.join(",")));
        }
        let inner = self
            .call(USER_PERMIT, &params, Some(session), deadline)
            .await?;
        success(USER_PERMIT, &inner)
    }

    /// Cancels a seller's subscription. `false` without an error means no such user.
    pub async fn user_cancel(
        &self,
        nick: &str,
        user_platform: Option<&str>,
        deadline: Instant,
    ) -> Result<bool, TopError> {
        if nick.is_empty() {
            return Err(invalid(USER_CANCEL, "nick is required"));
        }
        let mut params = vec![("nick", nick.to_owned())];
        if let Some(p) = user_platform {
            params.push(("user_platform", p.to_owned()));
        }
        let inner = self.call(USER_CANCEL, &params, None, deadline).await?;
        success(USER_CANCEL, &inner)
    }

    /// A seller's subscription, or `None` when the seller is not subscribed.
    pub async fn user_get(
        &self,
        nick: &str,
        user_platform: Option<&str>,
        deadline: Instant,
    ) -> Result<Option<TmcUser>, TopError> {
        if nick.is_empty() {
            return Err(invalid(USER_GET, "nick is required"));
        }
        let mut params = vec![
            (
                "fields",
                "user_nick,user_id,topics,is_valid,group_name,created,modified,user_platform"
                    .to_owned(),
            ),
            ("nick", nick.to_owned()),
        ];
        if let Some(p) = user_platform {
            params.push(("user_platform", p.to_owned()));
        }
        let inner = self.call(USER_GET, &params, None, deadline).await?;
        let Some(u) = inner.get("tmc_user").filter(|v| v.is_object()) else {
            return Ok(None);
        };
        Ok(Some(TmcUser {
            user_nick: text(u, "user_nick"),
            user_id: u
                .get("user_id")
                .and_then(|v| super::message::parse_u64(v).ok()),
            topics: comma_list(u, "topics"),
            is_valid: boolean(u.get("is_valid")),
            group_name: text(u, "group_name"),
            created: text(u, "created"),
            modified: text(u, "modified"),
            user_platform: text(u, "user_platform"),
        }))
    }

    /// Lists the app's groups.
    pub async fn groups_get(
        &self,
        group_names: Option<&[String]>,
        page_no: Option<u32>,
        page_size: Option<u32>,
        deadline: Instant,
    ) -> Result<GroupsPage, TopError> {
        let mut params = Vec::new();
        if let Some(g) = group_names {
            params.push(("group_names", g.join(",")));
        }
        if let Some(p) = page_no {
            params.push(("page_no", p.to_string()));
        }
        if let Some(p) = page_size {
            params.push(("page_size", p.to_string()));
        }
        let inner = self.call(GROUPS_GET, &params, None, deadline).await?;
        let items = list(inner.get("groups"))
            .map_err(|r| undecodable(GROUPS_GET, format!("groups: {r}"), &inner))?;
        Ok(GroupsPage {
            groups: items.iter().filter_map(|g| text(g, "name")).collect(),
            total_results: inner
                .get("total_results")
                .and_then(|v| v.as_u64().or_else(|| v.as_str()?.parse().ok())),
        })
    }

    /// Creates a group and moves `nicks` (at most 200) into it. Returns the creation time.
    pub async fn group_add(
        &self,
        group_name: &str,
        nicks: &[String],
        deadline: Instant,
    ) -> Result<Option<String>, TopError> {
        validate_group_name(GROUP_ADD, group_name)?;
        if nicks.is_empty() {
            return Err(invalid(GROUP_ADD, "at least one nick is required"));
        }
        check_ids_count(GROUP_ADD, nicks.len(), 200, "nicks")?;
        let params = vec![
            ("group_name", group_name.to_owned()),
            ("nicks", nicks.join(",")),
        ];
        let inner = self.call(GROUP_ADD, &params, None, deadline).await?;
        Ok(text(&Value::Object(inner), "created"))
    }

    /// Deletes a group (or removes `nicks`, at most 20, from it). Unconsumed messages are lost.
    pub async fn group_delete(
        &self,
        group_name: &str,
        nicks: &[String],
        deadline: Instant,
    ) -> Result<bool, TopError> {
        if group_name.is_empty() {
            return Err(invalid(GROUP_DELETE, "group_name is required"));
        }
        check_ids_count(GROUP_DELETE, nicks.len(), 20, "nicks")?;
        let mut params = vec![("group_name", group_name.to_owned())];
        if !nicks.is_empty() {
            params.push(("nicks", nicks.join(",")));
        }
        let inner = self.call(GROUP_DELETE, &params, None, deadline).await?;
        success(GROUP_DELETE, &inner)
    }

    /// The group's queue figures.
    pub async fn queue_get(
        &self,
        group_name: &str,
        deadline: Instant,
    ) -> Result<Vec<QueueInfo>, TopError> {
        if group_name.is_empty() {
            return Err(invalid(QUEUE_GET, "group_name is required"));
        }
        let inner = self
            .call(
                QUEUE_GET,
                &[("group_name", group_name.to_owned())],
                None,
                deadline,
            )
            .await?;
        let items = list(inner.get("datas"))
            .map_err(|r| undecodable(QUEUE_GET, format!("datas: {r}"), &inner))?;
        let int = |v: &Value, n: &str| {
            v.get(n)
                .and_then(|x| x.as_i64().or_else(|| x.as_str()?.parse().ok()))
        };
        Ok(items
            .iter()
            .map(|q| QueueInfo {
                name: text(q, "name"),
                broker_name: text(q, "broker_name"),
                get_total: int(q, "get_total"),
                put_total: int(q, "put_toal").or_else(|| int(q, "put_total")),
            })
            .collect())
    }

    /// Adds the session's seller to Jushita MQ sync for `topic_names` (at most 20).
    pub async fn jms_user_add(
        &self,
        session: &Secret,
        topic_names: &[String],
        deadline: Instant,
    ) -> Result<bool, TopError> {
        if session.is_empty() {
            return Err(invalid(JMS_USER_ADD, "a seller session key is required"));
        }
        check_ids_count(JMS_USER_ADD, topic_names.len(), 20, "topic names")?;
        let mut params = Vec::new();
        if !topic_names.is_empty() {
            params.push(("topic_names", topic_names.join(",")));
        }
        let inner = self
            .call(JMS_USER_ADD, &params, Some(session), deadline)
            .await?;
        success(JMS_USER_ADD, &inner)
    }

    /// A Jushita MQ sync user, or `None`.
    pub async fn jms_user_get(
        &self,
        user_nick: &str,
        deadline: Instant,
    ) -> Result<Option<OnsUser>, TopError> {
        if user_nick.is_empty() {
            return Err(invalid(JMS_USER_GET, "user_nick is required"));
        }
        let inner = self
            .call(
                JMS_USER_GET,
                &[("user_nick", user_nick.to_owned())],
                None,
                deadline,
            )
            .await?;
        Ok(inner
            .get("ons_user")
            .filter(|v| v.is_object())
            .map(|u| OnsUser {
                user_nick: text(u, "user_nick"),
                topic_names: comma_list(u, "topic_names"),
                raw: u.clone(),
            }))
    }

    /// Removes a Jushita MQ sync user.
    pub async fn jms_user_delete(
        &self,
        user_nick: &str,
        deadline: Instant,
    ) -> Result<bool, TopError> {
        if user_nick.is_empty() {
            return Err(invalid(JMS_USER_DELETE, "user_nick is required"));
        }
        let inner = self
            .call(
                JMS_USER_DELETE,
                &[("user_nick", user_nick.to_owned())],
                None,
                deadline,
            )
            .await?;
        success(JMS_USER_DELETE, &inner)
    }
}

/// Group names: 1..=32 characters, not starting with `default`.
pub fn validate_group_name(method: &'static str, name: &str) -> Result<(), TopError> {
    if name.is_empty() || name.chars().count() > 32 {
        return Err(invalid(
            method,
            format!(
                "group_name must be 1..=32 characters, got {}",
                name.chars().count()
            ),
        ));
    }
    if name.starts_with("default") {
        return Err(invalid(
            method,
            "group_name must not start with \"default\"",
        ));
    }
    Ok(())
}
