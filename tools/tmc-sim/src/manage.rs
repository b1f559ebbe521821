//! The management methods: seller subscriptions (`tmc.user.*`), groups, queue figures and
//! Jushita MQ users, with just enough state to answer like the platform.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use super::gateway::{comma_list, parse_uint, ApiError, RequestParams, Shape};
use super::generate::{SELLERS, TOPICS};
use super::handlers::group_not_exist;
use super::rng::fnv1a;
use super::state::DEFAULT_GROUP;
use super::{wire_at, Inner};

/// Broker name reported by queue.get.
const BROKER: &str = "sim-broker-0";
const PLATFORMS: [&str; 3] = ["tbUIC", "icbu", "ae"];
const USER_FIELDS: [&str; 8] = [
    "user_nick",
    "user_id",
    "topics",
    "is_valid",
    "group_name",
    "created",
    "modified",
    "user_platform",
];

#[derive(Clone, Debug)]
struct TmcUser {
    user_id: u64,
    topics: Vec<String>,
    group_name: String,
    created: String,
    modified: String,
}

#[derive(Clone, Debug)]
struct OnsUser {
    topic_names: Vec<String>,
    created: String,
    modified: String,
}

/// Subscribed sellers and Jushita MQ users, by nick.
#[derive(Debug, Default)]
pub(crate) struct Directory {
    users: BTreeMap<String, TmcUser>,
    ons: BTreeMap<String, OnsUser>,
}

/// The seller a session key belongs to: `sess-<nick>` is `<nick>`; any other key is the first
/// seller of the generated set.
pub(crate) fn nick_of_session(session: &str) -> String {
    session
        .strip_prefix("sess-")
        .filter(|n| !n.is_empty())
        .unwrap_or(SELLERS[0].1)
        .to_owned()
}

/// A stable user id per nick (the generated sellers keep theirs).
pub(crate) fn user_id_of_nick(nick: &str) -> u64 {
    SELLERS
        .iter()
        .find(|(_, n)| *n == nick)
        .map(|(id, _)| *id)
        .unwrap_or_else(|| 1_000_000_000 + fnv1a(nick.as_bytes()) % 1_000_000_000_000)
}

fn is_success(ok: bool) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("is_success".into(), json!(ok));
    m
}

fn required<'a>(p: &'a RequestParams, name: &str) -> Result<&'a str, ApiError> {
    p.get(name).ok_or_else(|| ApiError::missing(name))
}

fn topic_names(name: &str, raw: &str, max: usize) -> Result<Vec<String>, ApiError> {
    let items = comma_list(name, raw, max)?;
    if let Some(bad) = items
        .iter()
        .find(|t| !t.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
    {
        return Err(ApiError::invalid(
            name,
            format!("{bad:?} is not a topic name"),
        ));
    }
    Ok(items.into_iter().map(str::to_owned).collect())
}

fn platform(p: &RequestParams) -> Result<(), ApiError> {
    match p.get("user_platform") {
        Some(v) if !PLATFORMS.contains(&v) => Err(ApiError::invalid(
            "user_platform",
            "user_platform must be tbUIC, icbu or ae",
        )),
        _ => Ok(()),
    }
}

pub(crate) fn user_permit(
    inner: &mut Inner,
    p: &RequestParams,
    session: &str,
    now_ms: u64,
) -> Result<Map<String, Value>, ApiError> {
    let topics = match p.get("topics") {
        Some(raw) => topic_names("topics", raw, 100)?,
        None => TOPICS.iter().map(|(t, _)| (*t).to_owned()).collect(),
    };
    let nick = nick_of_session(session);
    let now = wire_at(now_ms);
    let user = inner
        .directory
        .users
        .entry(nick.clone())
        .or_insert_with(|| TmcUser {
            user_id: user_id_of_nick(&nick),
            topics: Vec::new(),
            group_name: DEFAULT_GROUP.to_owned(),
            created: now.clone(),
            modified: now.clone(),
        });
    user.topics = topics;
    user.modified = now;
    Ok(is_success(true))
}

pub(crate) fn user_cancel(
    inner: &mut Inner,
    p: &RequestParams,
) -> Result<Map<String, Value>, ApiError> {
    let nick = required(p, "nick")?;
    platform(p)?;
    Ok(is_success(inner.directory.users.remove(nick).is_some()))
}

pub(crate) fn user_get(
    inner: &mut Inner,
    p: &RequestParams,
) -> Result<Map<String, Value>, ApiError> {
    let fields = comma_list("fields", required(p, "fields")?, 20)?;
    if !fields.contains(&"topics") {
        return Err(ApiError::invalid("fields", "fields must include topics"));
    }
    let nick = required(p, "nick")?;
    platform(p)?;
    let mut out = Map::new();
    let Some(u) = inner.directory.users.get(nick) else {
        return Ok(out);
    };
    let mut user = Map::new();
    for f in fields.iter().filter(|f| USER_FIELDS.contains(f)) {
        let v = match *f {
            "user_nick" => json!(nick),
            "user_id" => json!(u.user_id),
            "topics" => json!(u.topics.join(",")),
            "is_valid" => json!(true),
            "group_name" => json!(u.group_name),
            "created" => json!(u.created),
            "modified" => json!(u.modified),
            _ => json!("tbUIC"),
        };
        user.insert((*f).to_owned(), v);
    }
    out.insert("tmc_user".into(), Value::Object(user));
    Ok(out)
}

pub(crate) fn groups_get(
    inner: &mut Inner,
    p: &RequestParams,
    shape: Shape,
) -> Result<Map<String, Value>, ApiError> {
    let wanted = match p.get("group_names") {
        Some(raw) => Some(comma_list("group_names", raw, 100)?),
        None => None,
    };
    let page_no = match p.get("page_no") {
        Some(raw) => parse_uint("page_no", raw)?,
        None => 1,
    };
    let page_size = match p.get("page_size") {
        Some(raw) => parse_uint("page_size", raw)?,
        None => 40,
    };
    if page_no == 0 {
        return Err(ApiError::invalid("page_no", "page_no starts at 1"));
    }
    if !(1..=100).contains(&page_size) {
        return Err(ApiError::invalid(
            "page_size",
            "page_size must be within 1..=100",
        ));
    }
    let names: Vec<&String> = inner
        .store
        .group_names()
        .filter(|g| wanted.as_ref().is_none_or(|w| w.contains(&g.as_str())))
        .collect();
    let total = names.len();
    let skip = ((page_no - 1) * page_size).min(total as u64) as usize;
    let items = names
        .iter()
        .skip(skip)
        .take(page_size as usize)
        .map(|g| json!({ "name": g }))
        .collect();
    let mut out = Map::new();
    out.insert("groups".into(), shape.list("tmc_group", items));
    out.insert("total_results".into(), json!(total));
    Ok(out)
}

pub(crate) fn group_add(
    inner: &mut Inner,
    p: &RequestParams,
    now_ms: u64,
) -> Result<Map<String, Value>, ApiError> {
    let name = required(p, "group_name")?;
    if name.chars().count() > 32 || name.starts_with("default") || name.contains(',') {
        return Err(ApiError::invalid(
            "group_name",
            "group_name must be at most 32 characters, without commas, and not start with default",
        ));
    }
    let nicks = comma_list("nicks", required(p, "nicks")?, 200)?;
    if !inner.store.create_group(name) {
        return Err(ApiError::business(
            "isv.group-already-exist",
            format!("group {name} already exists"),
        ));
    }
    if let Some(g) = inner.store.group_mut(name) {
        g.nicks = nicks.iter().map(|n| (*n).to_owned()).collect();
    }
    for nick in &nicks {
        if let Some(u) = inner.directory.users.get_mut(*nick) {
            u.group_name = name.to_owned();
        }
    }
    let mut out = Map::new();
    out.insert("created".into(), json!(wire_at(now_ms)));
    out.insert("group_name".into(), json!(name));
    Ok(out)
}

pub(crate) fn group_delete(
    inner: &mut Inner,
    p: &RequestParams,
) -> Result<Map<String, Value>, ApiError> {
    let name = required(p, "group_name")?;
    let nicks = match p.get("nicks") {
        Some(raw) => comma_list("nicks", raw, 20)?,
        None => Vec::new(),
    };
    if name == DEFAULT_GROUP {
        return Err(ApiError::invalid(
            "group_name",
            "the default group cannot be deleted",
        ));
    }
    let Some(group) = inner.store.group_mut(name) else {
        return Err(group_not_exist(name));
    };
    let moved: Vec<String> = if nicks.is_empty() {
        group.nicks.iter().cloned().collect()
    } else {
        for n in &nicks {
            group.nicks.remove(*n);
        }
        nicks.iter().map(|n| (*n).to_owned()).collect()
    };
    for nick in &moved {
        if let Some(u) = inner.directory.users.get_mut(nick) {
            if u.group_name == name {
                u.group_name = DEFAULT_GROUP.to_owned();
            }
        }
    }
    if nicks.is_empty() {
        inner.store.delete_group(name);
        tracing::debug!(group = name, "group deleted with its unconsumed messages");
    }
    Ok(is_success(true))
}

pub(crate) fn queue_get(
    inner: &mut Inner,
    p: &RequestParams,
    shape: Shape,
    now_ms: u64,
) -> Result<Map<String, Value>, ApiError> {
    let name = required(p, "group_name")?;
    if inner.store.backlog(name, now_ms).is_none() {
        return Err(group_not_exist(name));
    }
    let Some(g) = inner.store.group(name) else {
        return Err(group_not_exist(name));
    };
    // `put_toal` is the platform's spelling.
    let info = json!({
        "name": name,
        "broker_name": BROKER,
        "get_total": g.get_total,
        "put_toal": g.put_total,
    });
    let mut out = Map::new();
    out.insert("datas".into(), shape.list("tmc_queue_info", vec![info]));
    Ok(out)
}

pub(crate) fn jms_user_add(
    inner: &mut Inner,
    p: &RequestParams,
    session: &str,
    now_ms: u64,
) -> Result<Map<String, Value>, ApiError> {
    let topic_names = match p.get("topic_names") {
        Some(raw) => topic_names("topic_names", raw, 20)?,
        None => Vec::new(),
    };
    let now = wire_at(now_ms);
    let user = inner
        .directory
        .ons
        .entry(nick_of_session(session))
        .or_insert_with(|| OnsUser {
            topic_names: Vec::new(),
            created: now.clone(),
            modified: now.clone(),
        });
    user.topic_names = topic_names;
    user.modified = now;
    Ok(is_success(true))
}

pub(crate) fn jms_user_get(
    inner: &mut Inner,
    p: &RequestParams,
) -> Result<Map<String, Value>, ApiError> {
    let nick = required(p, "user_nick")?;
    let mut out = Map::new();
    if let Some(u) = inner.directory.ons.get(nick) {
        out.insert(
            "ons_user".into(),
            json!({
                "user_nick": nick,
                "topic_names": u.topic_names.join(","),
                "created": u.created,
                "modified": u.modified,
            }),
        );
    }
    Ok(out)
}

pub(crate) fn jms_user_delete(
    inner: &mut Inner,
    p: &RequestParams,
) -> Result<Map<String, Value>, ApiError> {
    let nick = required(p, "user_nick")?;
    Ok(is_success(inner.directory.ons.remove(nick).is_some()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Session keys map to nicks deterministically.
    #[test]
    fn sessions_name_sellers() {
        assert_eq!(nick_of_session("sess-商家A"), "商家A");
        assert_eq!(nick_of_session("anything"), SELLERS[0].1);
        assert_eq!(nick_of_session("sess-"), SELLERS[0].1);
        assert_eq!(user_id_of_nick("x"), user_id_of_nick("x"));
        assert_eq!(user_id_of_nick(SELLERS[1].1), SELLERS[1].0);
    }
}
