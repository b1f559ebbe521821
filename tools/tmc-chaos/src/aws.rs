//! The AWS side: SDK clients for fake-aws (or moto behind it), the relay queue, parking queue
//! and dedup table of one phase, created through fake-aws so both backends take one path, and
//! the bodies of a queue read back for the checks.

use std::time::Duration;

use aws_config::{BehaviorVersion, Region};
use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType,
    TimeToLiveSpecification,
};
use aws_sdk_sqs::config::Credentials;
use aws_sdk_sqs::types::SendMessageBatchRequestEntry;

use fake_aws::FakeAws;

/// SDK clients for one endpoint, with dummy credentials.
pub(crate) struct Aws {
    sqs: aws_sdk_sqs::Client,
    pub(crate) ddb: aws_sdk_dynamodb::Client,
}

/// The queues and table of one phase.
#[derive(Clone, Debug)]
pub(crate) struct Resources {
    pub(crate) relay_name: String,
    pub(crate) relay_url: String,
    pub(crate) parking_name: String,
    pub(crate) parking_url: String,
    pub(crate) table: String,
}

pub(crate) fn sqs_err<E, R>(what: &str, e: aws_sdk_sqs::error::SdkError<E, R>) -> String
where
    E: std::error::Error + 'static,
    R: std::fmt::Debug,
{
    format!("{what}: {}", aws_sdk_sqs::error::DisplayErrorContext(e))
}

impl Aws {
    pub(crate) async fn new(endpoint: &str) -> Aws {
        let sdk = aws_config::defaults(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .credentials_provider(Credentials::new("test", "test", None, None, "tmc-chaos"))
            .endpoint_url(endpoint)
            .timeout_config(
                aws_config::timeout::TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(5))
                    .operation_attempt_timeout(Duration::from_secs(60))
                    .build(),
            )
            .load()
            .await;
        Aws {
            sqs: aws_sdk_sqs::Client::new(&sdk),
            ddb: aws_sdk_dynamodb::Client::new(&sdk),
        }
    }

    /// A relay queue, a parking queue and a dedup table shaped as the relay expects (key `pk`
    /// S, TTL on `expires_at`).
    pub(crate) async fn create(&self, tag: &str) -> Result<Resources, String> {
        let relay_name = format!("chaos-relay-{tag}");
        let parking_name = format!("chaos-parking-{tag}");
        let table = format!("chaos-dedup-{tag}");
        let mut urls = Vec::new();
        for name in [&relay_name, &parking_name] {
            let out = self
                .sqs
                .create_queue()
                .queue_name(name)
                .send()
                .await
                .map_err(|e| sqs_err("CreateQueue", e))?;
            urls.push(
                out.queue_url()
                    .ok_or("CreateQueue answered without a QueueUrl")?
                    .to_owned(),
            );
        }
        let attr = AttributeDefinition::builder()
            .attribute_name("pk")
            .attribute_type(ScalarAttributeType::S)
            .build()
            .map_err(|e| e.to_string())?;
        let key = KeySchemaElement::builder()
            .attribute_name("pk")
            .key_type(KeyType::Hash)
            .build()
            .map_err(|e| e.to_string())?;
        self.ddb
            .create_table()
            .table_name(&table)
            .billing_mode(BillingMode::PayPerRequest)
            .attribute_definitions(attr)
            .key_schema(key)
            .send()
            .await
            .map_err(|e| sqs_err("CreateTable", e))?;
        let ttl = TimeToLiveSpecification::builder()
            .attribute_name("expires_at")
            .enabled(true)
            .build()
            .map_err(|e| e.to_string())?;
        self.ddb
            .update_time_to_live()
            .table_name(&table)
            .time_to_live_specification(ttl)
            .send()
            .await
            .map_err(|e| sqs_err("UpdateTimeToLive", e))?;
        let parking_url = urls.pop().unwrap_or_default();
        let relay_url = urls.pop().unwrap_or_default();
        Ok(Resources {
            relay_name,
            relay_url,
            parking_name,
            parking_url,
            table,
        })
    }

    /// Best effort: moto keeps what it is given until it stops.
    pub(crate) async fn delete(&self, r: &Resources) {
        for url in [&r.relay_url, &r.parking_url] {
            let _ = self.sqs.delete_queue().queue_url(url).send().await;
        }
        let _ = self.ddb.delete_table().table_name(&r.table).send().await;
    }

    /// Receives and deletes every message of a queue; returns the bodies.
    async fn receive_all(&self, url: &str) -> Result<Vec<String>, String> {
        let mut bodies = Vec::new();
        let mut empty = 0;
        while empty < 3 {
            let out = self
                .sqs
                .receive_message()
                .queue_url(url)
                .max_number_of_messages(10)
                .visibility_timeout(900)
                .send()
                .await
                .map_err(|e| sqs_err("ReceiveMessage", e))?;
            let msgs = out.messages();
            if msgs.is_empty() {
                empty += 1;
                continue;
            }
            empty = 0;
            let mut del = self.sqs.delete_message_batch().queue_url(url);
            for (i, m) in msgs.iter().enumerate() {
                bodies.push(m.body().unwrap_or_default().to_owned());
                let entry = aws_sdk_sqs::types::DeleteMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(m.receipt_handle().unwrap_or_default())
                    .build()
                    .map_err(|e| e.to_string())?;
                del = del.entries(entry);
            }
            del.send()
                .await
                .map_err(|e| sqs_err("DeleteMessageBatch", e))?;
        }
        Ok(bodies)
    }

    /// Sends bodies in batches of 10 (the sabotage's extra copies).
    pub(crate) async fn send_bodies(&self, url: &str, bodies: &[String]) -> Result<(), String> {
        for chunk in bodies.chunks(10) {
            let mut req = self.sqs.send_message_batch().queue_url(url);
            for (i, b) in chunk.iter().enumerate() {
                let e = SendMessageBatchRequestEntry::builder()
                    .id(format!("s{i}"))
                    .message_body(b)
                    .build()
                    .map_err(|e| e.to_string())?;
                req = req.entries(e);
            }
            let out = req
                .send()
                .await
                .map_err(|e| sqs_err("SendMessageBatch", e))?;
            if !out.failed().is_empty() {
                return Err("the sabotage's extra copies were refused".into());
            }
        }
        Ok(())
    }
}

/// The bodies in a queue: read from memory, or received from moto directly.
pub(crate) async fn queue_bodies(
    fake: &FakeAws,
    moto: Option<&Aws>,
    name: &str,
    url: &str,
) -> Result<Vec<String>, String> {
    match (fake.memory(), moto) {
        (Some(mem), _) => mem
            .messages(name)
            .map(|msgs| msgs.into_iter().map(|m| m.body).collect())
            .ok_or_else(|| format!("queue {name} is missing from memory")),
        (None, Some(aws)) => aws.receive_all(url).await,
        (None, None) => Err("no way to read the queues".into()),
    }
}
