//! The relay and parking queues on SQS.

use std::sync::Arc;

use aws_sdk_sqs::types::{MessageAttributeValue, SendMessageBatchRequestEntry};
use tokio::time::Instant;

use super::errors::port_error;
use super::within;
use super::Meter;
use crate::relay::ports::{EntryOutcome, Outgoing, PortError, Queue, Severity};

/// One SQS queue. FIFO-ness is read from the URL (`.fifo` suffix), as SQS requires.
#[derive(Clone, Debug)]
pub struct SqsQueue {
    client: aws_sdk_sqs::Client,
    /// The queue URL, validated at configuration time.
    url: String,
    fifo: bool,
    /// Requests sent, for the report and the cost model.
    pub meter: Arc<Meter>,
}

impl SqsQueue {
    pub fn new(client: aws_sdk_sqs::Client, url: impl Into<String>) -> Self {
        let url = url.into();
        let fifo = url.ends_with(".fifo");
        Self {
            client,
            url,
            fifo,
            meter: Arc::default(),
        }
    }

    pub fn url(&self) -> &str {
        &self.url
    }
}

fn entry(e: &Outgoing) -> Result<SendMessageBatchRequestEntry, PortError> {
    let mut b = SendMessageBatchRequestEntry::builder()
        .id(&e.id)
        .message_body(&e.body);
    for (name, value) in &e.attributes {
        let v = MessageAttributeValue::builder()
            .data_type("String")
            .string_value(value)
            .build()
            .map_err(|err| {
                PortError::new("SendMessageBatch", Severity::Permanent, err.to_string())
            })?;
        b = b.message_attributes(*name, v);
    }
    if let Some(g) = &e.group_id {
        b = b.message_group_id(g);
    }
    if let Some(d) = &e.dedup_id {
        b = b.message_deduplication_id(d);
    }
    b.build()
        .map_err(|err| PortError::new("SendMessageBatch", Severity::Permanent, err.to_string()))
}

impl Queue for SqsQueue {
    async fn send_batch(
        &self,
        entries: &[Outgoing],
        deadline: Instant,
    ) -> Result<Vec<EntryOutcome>, PortError> {
        let built = entries.iter().map(entry).collect::<Result<Vec<_>, _>>()?;
        self.meter.request();
        let call = self
            .client
            .send_message_batch()
            .queue_url(&self.url)
            .set_entries(Some(built))
            .send();
        let out = within(deadline, "SendMessageBatch", call)
            .await?
            .map_err(|e| port_error("SendMessageBatch", &e))?;
        let mut outcomes: Vec<Option<EntryOutcome>> = vec![None; entries.len()];
        let index = |id: &str| entries.iter().position(|e| e.id == id);
        for ok in out.successful() {
            if let Some(i) = index(ok.id()) {
                outcomes[i] = Some(EntryOutcome::Accepted);
            }
        }
        for f in out.failed() {
            if let Some(i) = index(f.id()) {
                let (code, message) = (
                    f.code().to_owned(),
                    f.message().unwrap_or_default().to_owned(),
                );
                outcomes[i] = Some(if f.sender_fault() {
                    EntryOutcome::Rejected { code, message }
                } else {
                    EntryOutcome::Retry { code, message }
                });
            }
        }
        // An entry SQS did not mention was not accepted: retry it.
        Ok(outcomes
            .into_iter()
            .map(|o| {
                o.unwrap_or(EntryOutcome::Retry {
                    code: "Missing".into(),
                    message: "no result for this entry".into(),
                })
            })
            .collect())
    }

    fn is_fifo(&self) -> bool {
        self.fifo
    }
}
