//! Shared end-to-end test support: moto and ministack (started by `make test`), the in-process
//! simulator, fresh queues and tables per test, and reading queues back.
#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use aws_config::{BehaviorVersion, Region};
use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType,
};
use aws_sdk_sqs::config::Credentials;
use aws_sdk_sqs::types::{MessageSystemAttributeName, QueueAttributeName};

use tmc_relay::config::Config;
use tmc_relay::relay::RelaySettings;
use tmc_relay::wiring::App;
use tmc_sim::{SimConfig, SimServer};

/// The app secret every test uses; the secrecy tests look for it in all output.
pub const SECRET: &str = "sim-secret-0xC0FFEE";
pub const APP_KEY: &str = "12345678";

/// moto's endpoint, exported by `make test`. Without it the test fails: it is never skipped.
pub fn moto() -> String {
    std::env::var("MOTO_ENDPOINT").unwrap_or_else(|_| {
        panic!("MOTO_ENDPOINT is not set: run the end-to-end tests with `make test`, which starts moto")
    })
}

/// A moto of its own for the test that relays thousands of messages: moto serves one request
/// at a time, so its few thousand requests would queue ahead of every other test's. Exported
/// by `make test`.
pub fn moto_bulk() -> String {
    std::env::var("MOTO_BULK_ENDPOINT").unwrap_or_else(|_| {
        panic!("MOTO_BULK_ENDPOINT is not set: run the end-to-end tests with `make test`, which starts it")
    })
}

/// ministack's endpoint, exported by `make test` (a local AWS whose SQS stays fast at any depth
/// and which models PartiQL writes). Without it the test fails: it is never skipped.
pub fn ministack() -> String {
    std::env::var("MINISTACK_ENDPOINT").unwrap_or_else(|_| {
        panic!("MINISTACK_ENDPOINT is not set: run the end-to-end tests with `make test`, which starts ministack")
    })
}

/// AWS configuration pointing at `endpoint` with dummy credentials. The attempt timeout is a
/// hang bound, not a speed bound: a `ReceiveMessage` on a deep moto queue beside a build took
/// over 10 s. (The relay sets its own timeouts on top of this configuration.)
pub async fn sdk(endpoint: &str) -> aws_config::SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("test", "test", None, None, "test"))
        .endpoint_url(endpoint)
        .timeout_config(
            aws_config::timeout::TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(2))
                .operation_attempt_timeout(Duration::from_secs(300))
                .build(),
        )
        .load()
        .await
}

/// A unique name per call, per process.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "{prefix}-{}-{}-{nanos}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

/// The AWS resources one test uses.
pub struct Env {
    /// The AWS endpoint the resources live on (moto unless made with `on`/`ministack`).
    pub endpoint: String,
    pub sdk: aws_config::SdkConfig,
    pub sqs: aws_sdk_sqs::Client,
    pub ddb: aws_sdk_dynamodb::Client,
    pub queue_url: String,
    pub parking_url: String,
    pub table: String,
}

impl Env {
    /// Fresh queues and table on moto (a FIFO relay queue when `fifo`).
    pub async fn new(fifo: bool) -> Env {
        Self::on(&moto(), fifo).await
    }

    /// Fresh queues and table on ministack.
    pub async fn ministack(fifo: bool) -> Env {
        Self::on(&ministack(), fifo).await
    }

    /// Fresh queues and table at `endpoint`.
    pub async fn on(endpoint: &str, fifo: bool) -> Env {
        let sdk = sdk(endpoint).await;
        let sqs = aws_sdk_sqs::Client::new(&sdk);
        let ddb = aws_sdk_dynamodb::Client::new(&sdk);
        let name = unique("relay");
        let queue_url = if fifo {
            sqs.create_queue()
                .queue_name(format!("{name}.fifo"))
                .attributes(QueueAttributeName::FifoQueue, "true")
                .send()
                .await
                .unwrap()
        } else {
            sqs.create_queue().queue_name(&name).send().await.unwrap()
        }
        .queue_url()
        .unwrap()
        .to_owned();
        let parking_url = sqs
            .create_queue()
            .queue_name(unique("parking"))
            .send()
            .await
            .unwrap()
            .queue_url()
            .unwrap()
            .to_owned();
        let table = unique("dedup");
        create_table(&ddb, &table).await;
        Env {
            endpoint: endpoint.to_owned(),
            sdk,
            sqs,
            ddb,
            queue_url,
            parking_url,
            table,
        }
    }

    /// The relay's environment variables for this test's resources and simulator.
    pub fn vars(&self, gateway: &str) -> HashMap<String, String> {
        HashMap::from([
            ("TOP_APP_KEY".into(), APP_KEY.into()),
            ("TOP_APP_SECRET".into(), SECRET.into()),
            ("TOP_ENDPOINT".into(), gateway.into()),
            ("RELAY_QUEUE_URL".into(), self.queue_url.clone()),
            ("PARKING_QUEUE_URL".into(), self.parking_url.clone()),
            ("DEDUP_TABLE_NAME".into(), self.table.clone()),
            ("AWS_ENDPOINT_URL".into(), self.endpoint.clone()),
            ("AWS_ACCESS_KEY_ID".into(), "test".into()),
            ("AWS_SECRET_ACCESS_KEY".into(), "test".into()),
            ("AWS_REGION".into(), "us-east-1".into()),
        ])
    }

    pub fn config(&self, gateway: &str, extra: &[(&str, &str)]) -> Config {
        let mut vars = self.vars(gateway);
        for (k, v) in extra {
            vars.insert((*k).to_owned(), (*v).to_owned());
        }
        Config::from_lookup(|k| vars.get(k).cloned()).unwrap()
    }

    /// A relay built exactly as the binaries build it, against `aws_endpoint`.
    pub async fn app_via(
        &self,
        gateway: &str,
        aws_endpoint: &str,
        extra: &[(&str, &str)],
        settings: RelaySettings,
    ) -> App {
        let sdk = sdk(aws_endpoint).await;
        App::build_with(self.config(gateway, extra), &sdk, settings)
            .await
            .unwrap()
    }

    pub async fn app(&self, gateway: &str) -> App {
        self.app_via(gateway, &self.endpoint, &[], RelaySettings::default())
            .await
    }

    /// Messages in a queue, visible or not.
    pub async fn depth(&self, url: &str) -> u64 {
        let a = self
            .sqs
            .get_queue_attributes()
            .queue_url(url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesDelayed)
            .send()
            .await
            .unwrap();
        a.attributes()
            .map(|m| m.values().filter_map(|v| v.parse::<u64>().ok()).sum())
            .unwrap_or(0)
    }

    /// Receives (without deleting) up to `n` messages, hidden for 12 hours (SQS's most), so a
    /// slow read of a deep queue never sees a message twice.
    pub async fn receive(&self, url: &str, n: usize) -> Vec<Received> {
        let mut out = Vec::new();
        while out.len() < n {
            let got = receive_ten(&self.sqs, url, 43_200).await;
            if got.is_empty() {
                break;
            }
            out.extend(got.iter().map(received));
        }
        out
    }

    /// Receives and deletes everything in a queue: (body, attributes by name).
    pub async fn drain(&self, url: &str) -> Vec<Received> {
        let mut out = Vec::new();
        let mut empty = 0;
        while empty < 2 {
            let got = receive_and_delete(&self.sqs, url).await;
            if got.is_empty() {
                empty += 1;
            }
            out.extend(got);
        }
        out
    }

    /// Starts `readers` consumers that read and delete a queue's messages as they arrive, the
    /// way an SQS consumer fleet keeps a queue shallow; `Consumer::finish` returns every
    /// message they read, once each (by SQS message id: like SQS, moto may hand one message to
    /// two concurrent readers).
    pub fn consume_as_they_come(&self, url: &str, readers: usize) -> Consumer {
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let tasks = (0..readers.max(1))
            .map(|_| {
                let (sqs, url, mut stopped) = (self.sqs.clone(), url.to_owned(), stopped.clone());
                tokio::spawn(async move {
                    let mut out = Vec::new();
                    loop {
                        // Told to stop before this read began: an empty read means all was read.
                        let last = *stopped.borrow();
                        let got = receive_and_delete(&sqs, &url).await;
                        if got.is_empty() {
                            // All read only when nothing is in flight either: a receive whose
                            // answer went astray hides its messages until their visibility ends.
                            if last && in_queue(&sqs, &url).await == 0 {
                                return out;
                            }
                            // Nothing yet: wait a little, or until told the sender is done.
                            let _ =
                                tokio::time::timeout(Duration::from_millis(200), stopped.changed())
                                    .await;
                        }
                        out.extend(got);
                    }
                })
            })
            .collect();
        Consumer { stop, tasks }
    }

    /// What the dedup table says of an id: `done` (in its batch's receipt: SQS or the
    /// parking queue accepted it), `claimed` (its batch is still at work), `held` (its send
    /// outcome unknown), `free` (its batch let it go), or the previous version's `status`.
    pub async fn status(&self, id: &str) -> Option<String> {
        use aws_sdk_dynamodb::types::AttributeValue as Av;
        let get = |pk: String| async move {
            self.ddb
                .get_item()
                .table_name(&self.table)
                .key("pk", Av::S(pk))
                .consistent_read(true)
                .send()
                .await
                .unwrap()
                .item()
                .cloned()
        };
        let item = get(id.to_owned()).await?;
        let Some(batch) = item.get("b").and_then(|v| v.as_s().ok()) else {
            return item.get("status").and_then(|v| v.as_s().ok()).cloned();
        };
        let Some(record) = get(format!("b#{batch}")).await else {
            return Some("free".into());
        };
        let listed = |name: &str| {
            record
                .get(name)
                .and_then(|v| v.as_ns().ok())
                .is_some_and(|ns| ns.iter().any(|n| n == id))
        };
        let settled = record.contains_key("settled");
        Some(
            if listed("accepted") {
                "done"
            } else if listed("held") {
                "held"
            } else if !settled {
                "claimed"
            } else {
                "free"
            }
            .into(),
        )
    }
}

/// One receive of up to 10 messages with all their attributes, hidden for `visibility` seconds.
async fn receive_ten(
    sqs: &aws_sdk_sqs::Client,
    url: &str,
    visibility: i32,
) -> Vec<aws_sdk_sqs::types::Message> {
    sqs.receive_message()
        .queue_url(url)
        .max_number_of_messages(10)
        .message_attribute_names("All")
        .message_system_attribute_names(MessageSystemAttributeName::All)
        .visibility_timeout(visibility)
        .send()
        .await
        .unwrap()
        .messages
        .unwrap_or_default()
}

/// Messages in a queue, visible or in flight.
async fn in_queue(sqs: &aws_sdk_sqs::Client, url: &str) -> u64 {
    use aws_sdk_sqs::types::QueueAttributeName as A;
    let got = sqs
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(A::ApproximateNumberOfMessages)
        .attribute_names(A::ApproximateNumberOfMessagesNotVisible)
        .send()
        .await
        .unwrap();
    let attrs = got.attributes().cloned().unwrap_or_default();
    [
        A::ApproximateNumberOfMessages,
        A::ApproximateNumberOfMessagesNotVisible,
    ]
    .iter()
    .map(|a| {
        attrs
            .get(a)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    })
    .sum()
}

/// One receive of up to 10 messages (hidden for 30 s, so one whose answer went astray comes
/// back soon), each deleted once read.
async fn receive_and_delete(sqs: &aws_sdk_sqs::Client, url: &str) -> Vec<Received> {
    let msgs = receive_ten(sqs, url, 30).await;
    if msgs.is_empty() {
        return Vec::new();
    }
    let mut del = sqs.delete_message_batch().queue_url(url);
    for (i, m) in msgs.iter().enumerate() {
        del = del.entries(
            aws_sdk_sqs::types::DeleteMessageBatchRequestEntry::builder()
                .id(i.to_string())
                .receipt_handle(m.receipt_handle().unwrap_or_default())
                .build()
                .unwrap(),
        );
    }
    let deleted = del.send().await.unwrap();
    assert!(
        deleted.failed().is_empty(),
        "deletes failed: {:?}",
        deleted.failed()
    );
    msgs.iter().map(received).collect()
}

/// A consumer reading a queue in the background (`Env::consume_as_they_come`).
pub struct Consumer {
    stop: tokio::sync::watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<Vec<Received>>>,
}

impl Consumer {
    /// Reads what is left until the queue is empty, stops, and returns every message read.
    pub async fn finish(self) -> Vec<Received> {
        let _ = self.stop.send(true);
        let mut out = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for t in self.tasks {
            for m in t.await.unwrap() {
                if seen.insert(m.message_id.clone()) {
                    out.push(m);
                }
            }
        }
        out
    }
}

fn received(m: &aws_sdk_sqs::types::Message) -> Received {
    Received {
        message_id: m.message_id().unwrap_or_default().to_owned(),
        body: m.body().unwrap_or_default().to_owned(),
        attributes: m
            .message_attributes()
            .map(|a| {
                a.iter()
                    .map(|(k, v)| (k.clone(), v.string_value().unwrap_or_default().to_owned()))
                    .collect()
            })
            .unwrap_or_default(),
        system: m
            .attributes()
            .map(|a| {
                a.iter()
                    .map(|(k, v)| (k.as_str().to_owned(), v.clone()))
                    .collect()
            })
            .unwrap_or_default(),
    }
}

/// A message read back from SQS.
#[derive(Clone, Debug)]
pub struct Received {
    /// SQS's id of the stored message: a repeated delivery of one message has the same one, a
    /// second enqueue a new one.
    pub message_id: String,
    pub body: String,
    pub attributes: HashMap<String, String>,
    /// System attributes (MessageGroupId, MessageDeduplicationId...).
    pub system: HashMap<String, String>,
}

impl Received {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap()
    }

    pub fn id(&self) -> String {
        self.json()["id"].as_str().unwrap().to_owned()
    }
}

pub async fn create_table(ddb: &aws_sdk_dynamodb::Client, table: &str) {
    ddb.create_table()
        .table_name(table)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name("pk")
                .attribute_type(ScalarAttributeType::S)
                .build()
                .unwrap(),
        )
        .key_schema(
            KeySchemaElement::builder()
                .attribute_name("pk")
                .key_type(KeyType::Hash)
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
}

/// A simulator on a free loopback port with the test app's credentials.
pub async fn sim(lease: Duration) -> SimServer {
    let cfg = SimConfig {
        app_key: APP_KEY.into(),
        app_secret: SECRET.into(),
        lease,
        ..SimConfig::default()
    };
    SimServer::start("127.0.0.1:0".parse().unwrap(), cfg)
        .await
        .unwrap()
}
