//! The in-memory stand-in: enough of SQS and DynamoDB, validated like the real services, to run
//! the relay and its benchmarks without moto.

pub mod dynamo;
pub mod expr;
pub mod sqs;

use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::Value;

use super::wire::{AwsError, Service};
pub use dynamo::TableKey;
pub use sqs::QueueMessage;

/// The state of both services. Cloning shares it.
#[derive(Clone, Debug)]
pub struct Memory {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// Queues by name; URLs are built on `base_url`.
    sqs: Mutex<sqs::SqsState>,
    /// Tables by name.
    ddb: Mutex<dynamo::DdbState>,
}

/// Locks a mutex, recovering it if a panicking thread poisoned it (state stays usable in tests).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Memory {
    /// `base_url` is the server's endpoint (queue URLs hang off it); `seed` makes message ids
    /// reproducible.
    pub fn new(base_url: &str, seed: u64) -> Self {
        Self {
            inner: Arc::new(Inner {
                sqs: Mutex::new(sqs::SqsState::new(base_url, seed)),
                ddb: Mutex::new(dynamo::DdbState::default()),
            }),
        }
    }

    /// Carries out one AWS JSON request.
    pub async fn call(&self, service: Service, op: &str, body: &Value) -> Result<Value, AwsError> {
        match service {
            Service::Sqs if op == "ReceiveMessage" => sqs::receive(&self.inner.sqs, body).await,
            Service::Sqs => sqs::call(&mut lock(&self.inner.sqs), op, body),
            Service::DynamoDb => dynamo::call(&mut lock(&self.inner.ddb), op, body),
            Service::Other => Err(AwsError::sqs_unsupported(op)),
        }
    }

    /// Creates a queue (or returns the existing one's URL). A name ending `.fifo` makes a FIFO
    /// queue with content-based deduplication off.
    pub fn create_queue(&self, name: &str) -> Result<String, String> {
        let fifo = name.ends_with(".fifo");
        let mut attrs = serde_json::Map::new();
        if fifo {
            attrs.insert("FifoQueue".into(), "true".into());
        }
        let req = serde_json::json!({"QueueName": name, "Attributes": attrs});
        sqs::call(&mut lock(&self.inner.sqs), "CreateQueue", &req)
            .map_err(|e| e.message)
            .map(|v| v["QueueUrl"].as_str().unwrap_or_default().to_owned())
    }

    /// The URL of a queue, by name.
    pub fn queue_url(&self, name: &str) -> Option<String> {
        lock(&self.inner.sqs).queue(name).map(|q| q.url.clone())
    }

    /// Every message in a queue (by name or URL), in flight or not, oldest first.
    pub fn messages(&self, queue: &str) -> Option<Vec<QueueMessage>> {
        lock(&self.inner.sqs).queue(queue).map(|q| q.snapshot())
    }

    /// Creates a table. `key` is the hash key, then optionally the range key, each with its type
    /// (`"S"`, `"N"` or `"B"`).
    pub fn create_table(&self, name: &str, key: &[(&str, &str)]) -> Result<(), String> {
        let schema: Vec<Value> = key
            .iter()
            .zip(["HASH", "RANGE"])
            .map(|((n, _), kt)| serde_json::json!({"AttributeName": n, "KeyType": kt}))
            .collect();
        let defs: Vec<Value> = key
            .iter()
            .map(|(n, t)| serde_json::json!({"AttributeName": n, "AttributeType": t}))
            .collect();
        let req = serde_json::json!({"TableName": name, "KeySchema": schema,
            "AttributeDefinitions": defs, "BillingMode": "PAY_PER_REQUEST"});
        dynamo::call(&mut lock(&self.inner.ddb), "CreateTable", &req)
            .map(|_| ())
            .map_err(|e| e.message)
    }

    /// One item by its key (`{"pk": {"S": "1"}}`).
    pub fn item(&self, table: &str, key: &Value) -> Option<Value> {
        let req = serde_json::json!({"TableName": table, "Key": key, "ConsistentRead": true});
        dynamo::call(&mut lock(&self.inner.ddb), "GetItem", &req)
            .ok()
            .and_then(|mut v| v.get_mut("Item").map(Value::take))
    }

    /// Every item of a table, in key order.
    pub fn items(&self, table: &str) -> Option<Vec<Value>> {
        lock(&self.inner.ddb).items(table)
    }
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding, as AWS JSON carries blobs.
pub fn base64_encode(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(B64[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Not base64.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotBase64;

/// Decodes standard base64 (padding optional); `Err` on any other character.
pub fn base64_decode(s: &str) -> Result<Vec<u8>, NotBase64> {
    let s = s.trim_end_matches('=');
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.bytes() {
        let v = B64.iter().position(|&x| x == c).ok_or(NotBase64)? as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    if bits >= 6 {
        return Err(NotBase64);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Base64 round-trips and matches RFC 4648 vectors.
    #[test]
    fn base64_matches_rfc4648() {
        for (raw, enc) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64_encode(raw.as_bytes()), enc);
            assert_eq!(base64_decode(enc).unwrap(), raw.as_bytes());
        }
        assert!(base64_decode("Zm9v!").is_err());
        assert!(base64_decode("Z").is_err());
    }
}
