//! In-memory SQS: queues (standard and FIFO), send, receive, delete, attributes.
//!
//! Validation follows the real service where moto does not: the character set, the
//! 10-attribute limit, per-entry size failures inside a batch, entry ids, batch size.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use md5::{Digest, Md5};
use serde::Serialize;
use serde_json::{json, Map, Value};
use sha2::Sha256;
use tokio::time::Instant;

use super::super::rules::SplitMix64;
use super::super::wire::AwsError;
use super::{base64_decode, lock};

/// A batch request is at most 1 MiB, as is a message unless the queue says less.
const MAX_BATCH_BYTES: usize = 1024 * 1024;
const MAX_ATTRIBUTES: usize = 10;
const FIFO_DEDUP_WINDOW: Duration = Duration::from_secs(300);
/// The longest `WaitTimeSeconds` honoured; SQS allows 20.
const MAX_WAIT: Duration = Duration::from_secs(20);

/// A message as a test sees it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct QueueMessage {
    pub message_id: String,
    pub body: String,
    /// `MessageAttributes` as sent (`{"name": {"DataType": "String", "StringValue": "v"}}`).
    pub attributes: Value,
    pub group_id: Option<String>,
    pub dedup_id: Option<String>,
    /// FIFO only.
    pub sequence_number: Option<String>,
    /// How many times `ReceiveMessage` has handed it out.
    pub receive_count: u32,
}

#[derive(Debug)]
struct Stored {
    msg: QueueMessage,
    /// Hidden until then (delay or visibility timeout).
    visible_at: Instant,
    /// The latest receipt handle; deleting needs it.
    receipt: Option<String>,
    /// Whether it has been received and not deleted since (FIFO groups block on it).
    in_flight: bool,
}

#[derive(Debug)]
pub struct Queue {
    pub name: String,
    pub url: String,
    fifo: bool,
    content_dedup: bool,
    /// `MaximumMessageSize`; 1 MiB unless set.
    max_size: usize,
    visibility: Duration,
    /// Attributes as given at creation, to tell an identical re-creation from a conflict.
    given: BTreeMap<String, String>,
    messages: VecDeque<Stored>,
    /// FIFO deduplication id → (message id, when it stops deduplicating).
    dedup: HashMap<String, (String, Instant)>,
    next_seq: u64,
}

impl Queue {
    /// Copies of every message, oldest first.
    pub fn snapshot(&self) -> Vec<QueueMessage> {
        self.messages.iter().map(|s| s.msg.clone()).collect()
    }
}

#[derive(Debug)]
pub struct SqsState {
    base_url: String,
    queues: BTreeMap<String, Queue>,
    ids: SplitMix64,
    receipts: u64,
}

impl SqsState {
    pub fn new(base_url: &str, seed: u64) -> Self {
        Self {
            base_url: base_url.trim_end_matches('/').to_owned(),
            queues: BTreeMap::new(),
            ids: SplitMix64::new(seed ^ 0x5153_5f49_4453),
            receipts: 0,
        }
    }

    /// A queue by name or by URL (its last path segment).
    pub fn queue(&self, name_or_url: &str) -> Option<&Queue> {
        self.queues.get(queue_name(name_or_url))
    }

    fn queue_mut(&mut self, body: &Value) -> Result<&mut Queue, AwsError> {
        let url = str_field(body, "QueueUrl")?;
        self.queues
            .get_mut(queue_name(url))
            .ok_or_else(AwsError::sqs_no_queue)
    }
}

fn new_message_id(ids: &mut SplitMix64) -> String {
    let (a, b) = (ids.next_u64(), ids.next_u64());
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xfff,
        0x8000 | ((b >> 48) & 0x3fff),
        b & 0xffff_ffff_ffff
    )
}

fn queue_name(name_or_url: &str) -> &str {
    name_or_url
        .trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or(name_or_url)
}

fn str_field<'a>(body: &'a Value, name: &str) -> Result<&'a str, AwsError> {
    body.get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| AwsError::sqs_missing_parameter(name))
}

fn opt_str<'a>(body: &'a Value, name: &str) -> Option<&'a str> {
    body.get(name).and_then(Value::as_str)
}

fn opt_u64(body: &Value, name: &str) -> Result<Option<u64>, AwsError> {
    match body.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_u64().map(Some).ok_or_else(|| {
            AwsError::sqs_invalid_parameter(&format!("{name} must be a non-negative integer"))
        }),
    }
}

/// Carries out one SQS operation other than `ReceiveMessage`.
pub fn call(st: &mut SqsState, op: &str, body: &Value) -> Result<Value, AwsError> {
    match op {
        "CreateQueue" => create_queue(st, body),
        "GetQueueUrl" => {
            let name = str_field(body, "QueueName")?;
            st.queues
                .get(name)
                .map(|q| json!({"QueueUrl": q.url}))
                .ok_or_else(AwsError::sqs_no_queue)
        }
        "DeleteQueue" => {
            let name = queue_name(str_field(body, "QueueUrl")?).to_owned();
            st.queues
                .remove(&name)
                .map(|_| json!({}))
                .ok_or_else(AwsError::sqs_no_queue)
        }
        "ListQueues" => {
            let prefix = opt_str(body, "QueueNamePrefix").unwrap_or("");
            let urls: Vec<&str> = st
                .queues
                .values()
                .filter(|q| q.name.starts_with(prefix))
                .map(|q| q.url.as_str())
                .collect();
            Ok(json!({"QueueUrls": urls}))
        }
        "PurgeQueue" => {
            st.queue_mut(body)?.messages.clear();
            Ok(json!({}))
        }
        "GetQueueAttributes" => get_attributes(st, body),
        "SendMessage" => send_message(st, body),
        "SendMessageBatch" => send_batch(st, body),
        "DeleteMessage" => {
            let receipt = str_field(body, "ReceiptHandle")?.to_owned();
            delete(st.queue_mut(body)?, &receipt)?;
            Ok(json!({}))
        }
        "DeleteMessageBatch" => delete_batch(st, body),
        "ChangeMessageVisibilityBatch" => change_visibility_batch(st, body),
        _ => Err(AwsError::sqs_unsupported(op)),
    }
}

fn valid_queue_name(name: &str, fifo: bool) -> bool {
    let stem = if fifo {
        name.strip_suffix(".fifo")
    } else {
        Some(name)
    };
    stem.is_some_and(|s| {
        !name.is_empty()
            && name.len() <= 80
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    })
}

fn create_queue(st: &mut SqsState, body: &Value) -> Result<Value, AwsError> {
    let name = str_field(body, "QueueName")?;
    let given: BTreeMap<String, String> = body
        .get("Attributes")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                .collect()
        })
        .unwrap_or_default();
    let fifo = given.get("FifoQueue").is_some_and(|v| v == "true");
    if !valid_queue_name(name, fifo) {
        return Err(AwsError::sqs_invalid_parameter(
            "Can only include alphanumeric characters, hyphens, or underscores. 1 to 80 in length. FIFO queue names end with .fifo",
        ));
    }
    if let Some(q) = st.queues.get(name) {
        return if q.given == given {
            Ok(json!({"QueueUrl": q.url}))
        } else {
            Err(AwsError::sqs_queue_exists(&format!(
                "A queue already exists with the same name and a different value for attribute(s) {}",
                given.keys().cloned().collect::<Vec<_>>().join(", ")
            )))
        };
    }
    let num =
        |k: &str, default: u64, range: std::ops::RangeInclusive<u64>| -> Result<u64, AwsError> {
            match given.get(k) {
                None => Ok(default),
                Some(v) => v
                    .parse::<u64>()
                    .ok()
                    .filter(|n| range.contains(n))
                    .ok_or_else(|| {
                        AwsError::sqs_invalid_parameter(&format!(
                            "Invalid value for the parameter {k}."
                        ))
                    }),
            }
        };
    let max_size = num(
        "MaximumMessageSize",
        MAX_BATCH_BYTES as u64,
        1024..=MAX_BATCH_BYTES as u64,
    )?;
    let visibility = num("VisibilityTimeout", 30, 0..=43_200)?;
    let url = format!("{}/000000000000/{name}", st.base_url);
    st.queues.insert(
        name.to_owned(),
        Queue {
            name: name.to_owned(),
            url: url.clone(),
            fifo,
            content_dedup: given
                .get("ContentBasedDeduplication")
                .is_some_and(|v| v == "true"),
            max_size: max_size as usize,
            visibility: Duration::from_secs(visibility),
            given,
            messages: VecDeque::new(),
            dedup: HashMap::new(),
            next_seq: 1,
        },
    );
    Ok(json!({"QueueUrl": url}))
}

fn get_attributes(st: &mut SqsState, body: &Value) -> Result<Value, AwsError> {
    let q = st.queue_mut(body)?;
    let now = Instant::now();
    let visible = q.messages.iter().filter(|m| m.visible_at <= now).count();
    let all: Vec<(&str, String)> = vec![
        (
            "QueueArn",
            format!("arn:aws:sqs:us-east-1:000000000000:{}", q.name),
        ),
        ("ApproximateNumberOfMessages", visible.to_string()),
        (
            "ApproximateNumberOfMessagesNotVisible",
            (q.messages.len() - visible).to_string(),
        ),
        ("VisibilityTimeout", q.visibility.as_secs().to_string()),
        ("MaximumMessageSize", q.max_size.to_string()),
        ("FifoQueue", q.fifo.to_string()),
        ("ContentBasedDeduplication", q.content_dedup.to_string()),
    ];
    let wanted: Vec<&str> = body
        .get("AttributeNames")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let attrs: Map<String, Value> = all
        .into_iter()
        .filter(|(k, _)| wanted.iter().any(|w| *w == "All" || w == k))
        .filter(|(k, _)| q.fifo || !matches!(*k, "FifoQueue" | "ContentBasedDeduplication"))
        .map(|(k, v)| (k.to_owned(), Value::String(v)))
        .collect();
    Ok(json!({"Attributes": attrs}))
}

/// Why one entry was refused: `(code, message)`, always the sender's fault.
type EntryError = (&'static str, String);

/// Only `#x9 #xA #xD #x20-#xD7FF #xE000-#xFFFD #x10000-#x10FFFF` may appear in a message.
pub fn valid_sqs_chars(s: &str) -> bool {
    s.chars().all(|c| {
        matches!(c, '\u{9}' | '\u{A}' | '\u{D}' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..='\u{10FFFF}')
    })
}

/// The decoded bytes of a message attribute value, and its transport type (1 string, 2 binary).
fn attribute_value(a: &Value) -> Result<(Vec<u8>, u8), EntryError> {
    let bad = |m: &str| ("InvalidParameterValue", m.to_owned());
    let data_type = a
        .get("DataType")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("The message attribute must have a DataType."))?;
    if data_type.starts_with("Binary") {
        let b = a
            .get("BinaryValue")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("A Binary message attribute must have a BinaryValue."))?;
        let bytes = base64_decode(b).map_err(|_| bad("BinaryValue is not valid base64."))?;
        Ok((bytes, 2))
    } else if data_type.starts_with("String") || data_type.starts_with("Number") {
        let s = a
            .get("StringValue")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("A String or Number message attribute must have a StringValue."))?;
        if !valid_sqs_chars(s) {
            return Err((
                "InvalidMessageContents",
                "Invalid characters in a message attribute value.".to_owned(),
            ));
        }
        Ok((s.as_bytes().to_vec(), 1))
    } else {
        Err(bad(
            "The message attribute DataType must be String, Number or Binary.",
        ))
    }
}

/// MD5 of message attributes as SQS documents it: names sorted; for each, length-prefixed
/// (4-byte big-endian) name, length-prefixed data type, one transport byte (1 string/number,
/// 2 binary), length-prefixed value.
pub fn md5_of_attributes(attrs: &Map<String, Value>) -> Result<String, EntryError> {
    let mut names: Vec<&String> = attrs.keys().collect();
    names.sort();
    let mut h = Md5::new();
    let put = |h: &mut Md5, bytes: &[u8]| {
        h.update((bytes.len() as u32).to_be_bytes());
        h.update(bytes);
    };
    for name in names {
        let a = &attrs[name];
        let (value, transport) = attribute_value(a)?;
        put(&mut h, name.as_bytes());
        let data_type = a
            .get("DataType")
            .and_then(Value::as_str)
            .unwrap_or_default();
        put(&mut h, data_type.as_bytes());
        h.update([transport]);
        put(&mut h, &value);
    }
    Ok(hex(&h.finalize()))
}

pub fn md5_hex(data: &[u8]) -> String {
    hex(&Md5::digest(data))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A validated entry, ready to store.
struct Entry<'a> {
    body: &'a str,
    attributes: Map<String, Value>,
    md5_attrs: Option<String>,
    group_id: Option<String>,
    dedup_id: Option<String>,
    delay: u64,
}

/// The bytes SQS counts against the size limit: body plus attribute names, types and values.
fn entry_size(e: &Value) -> usize {
    let body = e
        .get("MessageBody")
        .and_then(Value::as_str)
        .map_or(0, str::len);
    let attrs = e
        .get("MessageAttributes")
        .and_then(Value::as_object)
        .map_or(0, |m| {
            m.iter()
                .map(|(k, a)| {
                    k.len()
                        + a.get("DataType")
                            .and_then(Value::as_str)
                            .map_or(0, str::len)
                        + a.get("StringValue")
                            .and_then(Value::as_str)
                            .map_or(0, str::len)
                        + a.get("BinaryValue")
                            .and_then(Value::as_str)
                            .map_or(0, |b| b.len() * 3 / 4)
                })
                .sum()
        });
    body + attrs
}

fn check_entry<'a>(q: &Queue, e: &'a Value) -> Result<Entry<'a>, EntryError> {
    let bad = |m: String| ("InvalidParameterValue", m);
    let body = e
        .get("MessageBody")
        .and_then(Value::as_str)
        .filter(|b| !b.is_empty())
        .ok_or((
            "MissingParameter",
            "The request must contain the parameter MessageBody.".to_owned(),
        ))?;
    if !valid_sqs_chars(body) {
        return Err((
            "InvalidMessageContents",
            "Invalid characters found. Valid unicode characters are #x9 | #xA | #xD | #x20 to #xD7FF | #xE000 to #xFFFD | #x10000 to #x10FFFF".to_owned(),
        ));
    }
    let attributes = match e.get("MessageAttributes") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m.clone(),
        Some(_) => return Err(bad("MessageAttributes must be a map.".to_owned())),
    };
    if attributes.len() > MAX_ATTRIBUTES {
        return Err(bad(format!(
            "Number of message attributes [{}] exceeds the allowed maximum [{MAX_ATTRIBUTES}].",
            attributes.len()
        )));
    }
    let md5_attrs = if attributes.is_empty() {
        None
    } else {
        Some(md5_of_attributes(&attributes)?)
    };
    let size = entry_size(e);
    if size > q.max_size {
        return Err(bad(format!(
            "One or more parameters are invalid. Reason: Message must be shorter than {} bytes.",
            q.max_size
        )));
    }
    let group_id = opt_str(e, "MessageGroupId").map(str::to_owned);
    let mut dedup_id = opt_str(e, "MessageDeduplicationId").map(str::to_owned);
    let delay = e.get("DelaySeconds").and_then(Value::as_u64).unwrap_or(0);
    if delay > 900 {
        return Err(bad("DelaySeconds must be at most 900.".to_owned()));
    }
    if q.fifo {
        if group_id.is_none() {
            return Err((
                "MissingParameter",
                "The request must contain the parameter MessageGroupId.".to_owned(),
            ));
        }
        if delay > 0 {
            return Err(bad("Value for parameter DelaySeconds is invalid. Reason: The request include parameter that is not valid for this queue type.".to_owned()));
        }
        if dedup_id.is_none() {
            if !q.content_dedup {
                return Err(bad("The queue should either have ContentBasedDeduplication enabled or MessageDeduplicationId provided explicitly".to_owned()));
            }
            dedup_id = Some(hex(&Sha256::digest(body.as_bytes())));
        }
    } else if dedup_id.is_some() {
        return Err(bad("Value for parameter MessageDeduplicationId is invalid. Reason: The request includes a parameter that is not valid for this queue type.".to_owned()));
    }
    Ok(Entry {
        body,
        attributes,
        md5_attrs,
        group_id,
        dedup_id,
        delay,
    })
}

/// Stores a validated entry; returns the result fields (`MessageId`, MD5s, `SequenceNumber`).
fn store(ids: &mut SplitMix64, q: &mut Queue, e: Entry<'_>) -> Map<String, Value> {
    let now = Instant::now();
    let mut out = Map::new();
    out.insert("MD5OfMessageBody".into(), md5_hex(e.body.as_bytes()).into());
    if let Some(m) = &e.md5_attrs {
        out.insert("MD5OfMessageAttributes".into(), m.clone().into());
    }
    if let Some(d) = &e.dedup_id {
        q.dedup.retain(|_, (_, until)| *until > now);
        if let Some((id, _)) = q.dedup.get(d) {
            // A duplicate within the window is acknowledged but not stored again.
            out.insert("MessageId".into(), id.clone().into());
            return out;
        }
    }
    let id = new_message_id(ids);
    let seq = q.fifo.then(|| {
        q.next_seq += 1;
        format!("{:020}", q.next_seq)
    });
    if let Some(d) = &e.dedup_id {
        q.dedup
            .insert(d.clone(), (id.clone(), now + FIFO_DEDUP_WINDOW));
    }
    out.insert("MessageId".into(), id.clone().into());
    if let Some(s) = &seq {
        out.insert("SequenceNumber".into(), s.clone().into());
    }
    q.messages.push_back(Stored {
        msg: QueueMessage {
            message_id: id,
            body: e.body.to_owned(),
            attributes: Value::Object(e.attributes),
            group_id: e.group_id,
            dedup_id: e.dedup_id,
            sequence_number: seq,
            receive_count: 0,
        },
        visible_at: now + Duration::from_secs(e.delay),
        receipt: None,
        in_flight: false,
    });
    out
}

/// The queue a request names, and the id generator, borrowed apart.
fn queue_and_ids<'s>(
    st: &'s mut SqsState,
    body: &Value,
) -> Result<(&'s mut Queue, &'s mut SplitMix64), AwsError> {
    let url = str_field(body, "QueueUrl")?;
    let SqsState { queues, ids, .. } = st;
    let q = queues
        .get_mut(queue_name(url))
        .ok_or_else(AwsError::sqs_no_queue)?;
    Ok((q, ids))
}

fn send_message(st: &mut SqsState, body: &Value) -> Result<Value, AwsError> {
    let (q, ids) = queue_and_ids(st, body)?;
    let entry = check_entry(q, body).map_err(|(code, msg)| match code {
        "InvalidMessageContents" => AwsError::sqs_invalid_contents(),
        "MissingParameter" => AwsError::sqs_missing_parameter(
            msg.trim_start_matches("The request must contain the parameter ")
                .trim_end_matches('.'),
        ),
        _ => AwsError::sqs_invalid_parameter(&msg),
    })?;
    Ok(Value::Object(store(ids, q, entry)))
}

fn valid_entry_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 80
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Checks what makes SQS refuse a whole batch request: count, ids, total size.
fn check_batch(entries: &[Value], total_bytes: Option<usize>) -> Result<(), AwsError> {
    if entries.is_empty() {
        return Err(AwsError::sqs_empty_batch());
    }
    if entries.len() > 10 {
        return Err(AwsError::sqs_too_many_entries());
    }
    let mut seen = std::collections::HashSet::new();
    for e in entries {
        let id = e.get("Id").and_then(Value::as_str).unwrap_or_default();
        if !valid_entry_id(id) {
            return Err(AwsError::sqs_invalid_entry_id(id));
        }
        if !seen.insert(id) {
            return Err(AwsError::sqs_ids_not_distinct());
        }
    }
    if let Some(total) = total_bytes {
        if total > MAX_BATCH_BYTES {
            return Err(AwsError::sqs_batch_too_long(total));
        }
    }
    Ok(())
}

fn entries(body: &Value) -> &[Value] {
    body.get("Entries")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
}

fn send_batch(st: &mut SqsState, body: &Value) -> Result<Value, AwsError> {
    let (q, ids) = queue_and_ids(st, body)?;
    let list = entries(body);
    check_batch(list, Some(list.iter().map(entry_size).sum()))?;
    let (mut ok, mut failed) = (Vec::new(), Vec::new());
    for e in list {
        let id = e.get("Id").and_then(Value::as_str).unwrap_or_default();
        match check_entry(q, e) {
            Ok(entry) => {
                let mut r = store(ids, q, entry);
                r.insert("Id".into(), id.into());
                ok.push(Value::Object(r));
            }
            Err((code, message)) => failed.push(json!({
                "Id": id, "SenderFault": true, "Code": code, "Message": message,
            })),
        }
    }
    Ok(json!({"Successful": ok, "Failed": failed}))
}

fn delete(q: &mut Queue, receipt: &str) -> Result<(), AwsError> {
    if !receipt.contains('#') {
        return Err(AwsError::sqs_receipt_invalid());
    }
    // A stale receipt deletes nothing and still succeeds, as in SQS.
    q.messages.retain(|m| m.receipt.as_deref() != Some(receipt));
    Ok(())
}

fn delete_batch(st: &mut SqsState, body: &Value) -> Result<Value, AwsError> {
    let list = entries(body);
    check_batch(list, None)?;
    let q = st.queue_mut(body)?;
    let (mut ok, mut failed) = (Vec::new(), Vec::new());
    for e in list {
        let id = e.get("Id").and_then(Value::as_str).unwrap_or_default();
        let receipt = e
            .get("ReceiptHandle")
            .and_then(Value::as_str)
            .unwrap_or_default();
        match delete(q, receipt) {
            Ok(()) => ok.push(json!({"Id": id})),
            Err(err) => failed.push(json!({
                "Id": id, "SenderFault": true, "Code": "ReceiptHandleIsInvalid", "Message": err.message,
            })),
        }
    }
    Ok(json!({"Successful": ok, "Failed": failed}))
}

/// Hides a received message for `secs` from now (0 shows it at once). Only its latest receipt
/// does, and only while it is in flight: a receipt from before another receive, or one whose
/// hold ran out, changes nothing.
fn change_visibility(
    q: &mut Queue,
    receipt: &str,
    secs: u64,
) -> Result<(), (&'static str, String)> {
    let now = Instant::now();
    let Some(m) = q
        .messages
        .iter_mut()
        .find(|m| m.receipt.as_deref() == Some(receipt))
    else {
        return Err((
            "ReceiptHandleIsInvalid",
            "The input receipt handle is invalid.".into(),
        ));
    };
    if !(m.in_flight && m.visible_at > now) {
        return Err((
            "MessageNotInflight",
            "The message referred to isn't in flight.".into(),
        ));
    }
    m.visible_at = now + Duration::from_secs(secs);
    m.in_flight = secs > 0;
    Ok(())
}

fn change_visibility_batch(st: &mut SqsState, body: &Value) -> Result<Value, AwsError> {
    let list = entries(body);
    check_batch(list, None)?;
    let q = st.queue_mut(body)?;
    let (mut ok, mut failed) = (Vec::new(), Vec::new());
    for e in list {
        let id = e.get("Id").and_then(Value::as_str).unwrap_or_default();
        let receipt = e
            .get("ReceiptHandle")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let answer = match e.get("VisibilityTimeout").and_then(Value::as_u64) {
            Some(secs) if secs <= 43_200 => change_visibility(q, receipt, secs),
            _ => Err((
                "InvalidParameterValue",
                "VisibilityTimeout must be between 0 and 43200.".into(),
            )),
        };
        match answer {
            Ok(()) => ok.push(json!({"Id": id})),
            Err((code, message)) => failed.push(json!({
                "Id": id, "SenderFault": true, "Code": code, "Message": message,
            })),
        }
    }
    Ok(json!({"Successful": ok, "Failed": failed}))
}

/// `ReceiveMessage`, waiting up to `WaitTimeSeconds` (at most 20 s) for a message.
pub async fn receive(state: &Mutex<SqsState>, body: &Value) -> Result<Value, AwsError> {
    let wait = opt_u64(body, "WaitTimeSeconds")?.unwrap_or(0);
    let until = Instant::now() + Duration::from_secs(wait).min(MAX_WAIT);
    loop {
        let got = receive_now(&mut lock(state), body)?;
        let empty = got["Messages"].as_array().is_none_or(Vec::is_empty);
        if !empty || Instant::now() >= until {
            return Ok(got);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn receive_now(st: &mut SqsState, body: &Value) -> Result<Value, AwsError> {
    let max = opt_u64(body, "MaxNumberOfMessages")?.unwrap_or(1);
    if !(1..=10).contains(&max) {
        return Err(AwsError::sqs_invalid_parameter(
            "Value for parameter MaxNumberOfMessages is invalid. Reason: Must be between 1 and 10.",
        ));
    }
    let visibility = opt_u64(body, "VisibilityTimeout")?;
    if visibility.is_some_and(|v| v > 43_200) {
        return Err(AwsError::sqs_invalid_parameter(
            "Value for parameter VisibilityTimeout is invalid. Reason: Must be between 0 and 43200.",
        ));
    }
    let want_attrs = body
        .get("MessageAttributeNames")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    st.receipts += 1;
    let round = st.receipts;
    let q = st.queue_mut(body)?;
    let now = Instant::now();
    let hide = visibility.map_or(q.visibility, Duration::from_secs);
    let mut blocked_groups = std::collections::HashSet::new();
    let mut out = Vec::new();
    for (i, m) in q.messages.iter_mut().enumerate() {
        if out.len() as u64 >= max {
            break;
        }
        let group = m.msg.group_id.clone();
        if m.in_flight && m.visible_at > now {
            if q.fifo {
                blocked_groups.insert(group);
            }
            continue;
        }
        if m.visible_at > now || (q.fifo && blocked_groups.contains(&group)) {
            continue;
        }
        let receipt = format!("{}#{round}-{i}", m.msg.message_id);
        m.receipt = Some(receipt.clone());
        m.in_flight = true;
        m.visible_at = now + hide;
        m.msg.receive_count += 1;
        let mut r = json!({
            "MessageId": m.msg.message_id,
            "ReceiptHandle": receipt,
            "MD5OfBody": md5_hex(m.msg.body.as_bytes()),
            "Body": m.msg.body,
            "Attributes": {"ApproximateReceiveCount": m.msg.receive_count.to_string()},
        });
        if let (Some(attrs), Some(obj)) = (m.msg.attributes.as_object(), r.as_object_mut()) {
            let chosen: Map<String, Value> = attrs
                .iter()
                .filter(|(k, _)| {
                    want_attrs
                        .iter()
                        .any(|w| w == "All" || w == ".*" || w == *k)
                })
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            if !chosen.is_empty() {
                if let Ok(md5) = md5_of_attributes(&chosen) {
                    obj.insert("MD5OfMessageAttributes".into(), md5.into());
                }
                obj.insert("MessageAttributes".into(), Value::Object(chosen));
            }
        }
        if let (Some(seq), Some(obj)) = (&m.msg.sequence_number, r.as_object_mut()) {
            obj["Attributes"]["SequenceNumber"] = seq.clone().into();
            if let Some(g) = &m.msg.group_id {
                obj["Attributes"]["MessageGroupId"] = g.clone().into();
            }
        }
        out.push(r);
    }
    Ok(json!({"Messages": out}))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The attribute MD5 follows SQS's documented encoding (checked against a hand-built buffer).
    #[test]
    fn attribute_md5_uses_length_prefixed_encoding() {
        let attrs = json!({"b": {"DataType": "String", "StringValue": "x"},
                           "a": {"DataType": "Binary", "BinaryValue": "AQI="}});
        let mut buf = Vec::new();
        for (name, ty, t, val) in [
            ("a", "Binary", 2u8, &[1u8, 2][..]),
            ("b", "String", 1, b"x"),
        ] {
            buf.extend((name.len() as u32).to_be_bytes());
            buf.extend(name.as_bytes());
            buf.extend((ty.len() as u32).to_be_bytes());
            buf.extend(ty.as_bytes());
            buf.push(t);
            buf.extend((val.len() as u32).to_be_bytes());
            buf.extend(val);
        }
        assert_eq!(
            md5_of_attributes(attrs.as_object().unwrap()).unwrap(),
            md5_hex(&buf)
        );
    }

    /// The body MD5 is the plain MD5 of the UTF-8 body.
    #[test]
    fn body_md5_matches_known_value() {
        assert_eq!(md5_hex(b"hello"), "5d41402abc4b2a76b9719d911017c592");
    }

    /// Characters SQS refuses are detected; the allowed ranges pass.
    #[test]
    fn sqs_character_set_is_enforced() {
        assert!(valid_sqs_chars("tab\tnl\ncr\r 中文 😀 \u{E000}"));
        for bad in ["\u{0}", "\u{1F}", "\u{FFFE}", "\u{FFFF}", "\u{8}"] {
            assert!(!valid_sqs_chars(bad), "{bad:?}");
        }
    }

    /// Only a message's latest receipt changes its visibility, and only while it is in flight:
    /// extended, it stays hidden past its first hold; a receipt from before another receive is
    /// refused; 0 shows it at once.
    #[tokio::test(start_paused = true)]
    async fn visibility_changes_need_the_latest_receipt_in_flight() {
        let mut st = SqsState::new("http://h:1", 7);
        let url = call(&mut st, "CreateQueue", &json!({"QueueName": "p"})).unwrap()["QueueUrl"]
            .as_str()
            .unwrap()
            .to_owned();
        call(
            &mut st,
            "SendMessage",
            &json!({"QueueUrl": url, "MessageBody": "b"}),
        )
        .unwrap();
        let receive = |st: &mut SqsState| {
            let got = receive_now(st, &json!({"QueueUrl": url, "VisibilityTimeout": 10})).unwrap();
            got["Messages"][0]["ReceiptHandle"]
                .as_str()
                .map(str::to_owned)
        };
        let change = |st: &mut SqsState, receipt: &str, secs: u64| {
            let out = call(
                st,
                "ChangeMessageVisibilityBatch",
                &json!({"QueueUrl": url, "Entries": [
                    {"Id": "0", "ReceiptHandle": receipt, "VisibilityTimeout": secs}]}),
            )
            .unwrap();
            out["Failed"][0]["Code"].as_str().map(str::to_owned)
        };
        let first = receive(&mut st).unwrap();
        tokio::time::advance(Duration::from_secs(8)).await;
        assert_eq!(change(&mut st, &first, 10), None);
        tokio::time::advance(Duration::from_secs(8)).await;
        assert_eq!(receive(&mut st), None, "extended past its first hold");
        tokio::time::advance(Duration::from_secs(3)).await;
        assert_eq!(
            change(&mut st, &first, 10).as_deref(),
            Some("MessageNotInflight")
        );
        let second = receive(&mut st).unwrap();
        assert_eq!(
            change(&mut st, &first, 10).as_deref(),
            Some("ReceiptHandleIsInvalid")
        );
        assert_eq!(change(&mut st, &second, 0), None);
        assert!(receive(&mut st).is_some(), "released at once");
    }

    /// Queue names resolve from either a name or a URL.
    #[test]
    fn queue_name_comes_from_url_tail() {
        assert_eq!(queue_name("http://h:1/000000000000/q1"), "q1");
        assert_eq!(queue_name("q2.fifo"), "q2.fifo");
    }
}
