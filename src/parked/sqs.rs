//! The parking queue on SQS. Kept out of `crate::aws` on purpose: these calls are the
//! operator's (ReceiveMessage, DeleteMessage, ChangeMessageVisibility), not the function's,
//! whose role the template test holds to exactly what `crate::aws` calls.

use std::time::Duration;

use aws_sdk_sqs::types::{
    ChangeMessageVisibilityBatchRequestEntry, DeleteMessageBatchRequestEntry,
    MessageSystemAttributeName,
};

use super::port::{Held, ParkingQueue};
use crate::aws::errors::port_error;
use crate::relay::ports::{PortError, Severity};

/// SQS's limit on entries per batch request.
const BATCH: usize = 10;

/// The parking queue, by URL.
#[derive(Clone, Debug)]
pub struct SqsParking {
    /// With the SDK's standard retries: receiving, deleting and releasing again is harmless.
    client: aws_sdk_sqs::Client,
    /// `PARKING_QUEUE_URL`, validated at configuration time.
    url: String,
}

impl SqsParking {
    pub fn new(client: aws_sdk_sqs::Client, url: impl Into<String>) -> Self {
        Self {
            client,
            url: url.into(),
        }
    }
}

fn build_error(op: &'static str, e: impl std::fmt::Display) -> PortError {
    PortError::new(op, Severity::Permanent, e.to_string())
}

impl ParkingQueue for SqsParking {
    async fn receive(&self, max: u32, hold_for: Duration) -> Result<Vec<Held>, PortError> {
        let out = self
            .client
            .receive_message()
            .queue_url(&self.url)
            .max_number_of_messages(max.clamp(1, BATCH as u32) as i32)
            .visibility_timeout(hold_for.as_secs().min(43_200) as i32)
            // Long polling asks every SQS server, so an empty answer means an empty queue
            // (short polling samples a few and may answer empty while messages remain).
            .wait_time_seconds(1)
            .message_system_attribute_names(MessageSystemAttributeName::SentTimestamp)
            .send()
            .await
            .map_err(|e| port_error("ReceiveMessage", &e))?;
        Ok(out
            .messages()
            .iter()
            .filter_map(|m| {
                Some(Held {
                    message_id: m.message_id()?.to_owned(),
                    receipt: m.receipt_handle()?.to_owned(),
                    body: m.body().unwrap_or_default().to_owned(),
                    sent_at_ms: m
                        .attributes()
                        .and_then(|a| a.get(&MessageSystemAttributeName::SentTimestamp))
                        .and_then(|t| t.parse().ok()),
                })
            })
            .collect())
    }

    async fn delete(&self, receipts: &[String]) -> Result<Vec<Option<String>>, PortError> {
        let mut answers = Vec::with_capacity(receipts.len());
        for chunk in receipts.chunks(BATCH) {
            let entries = chunk
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    DeleteMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .receipt_handle(r)
                        .build()
                        .map_err(|e| build_error("DeleteMessageBatch", e))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let out = match self
                .client
                .delete_message_batch()
                .queue_url(&self.url)
                .set_entries(Some(entries))
                .send()
                .await
            {
                Ok(out) => out,
                Err(e) => {
                    let e = port_error("DeleteMessageBatch", &e);
                    answers.extend(chunk.iter().map(|_| Some(e.to_string())));
                    continue;
                }
            };
            let mut chunk_answers = vec![Some("no result for this entry".to_owned()); chunk.len()];
            for ok in out.successful() {
                if let Some(a) = ok
                    .id()
                    .parse::<usize>()
                    .ok()
                    .and_then(|i| chunk_answers.get_mut(i))
                {
                    *a = None;
                }
            }
            for f in out.failed() {
                if let Some(a) = f
                    .id()
                    .parse::<usize>()
                    .ok()
                    .and_then(|i| chunk_answers.get_mut(i))
                {
                    *a = Some(format!("{}: {}", f.code(), f.message().unwrap_or_default()));
                }
            }
            answers.extend(chunk_answers);
        }
        Ok(answers)
    }

    async fn release(&self, receipts: &[String]) {
        for chunk in receipts.chunks(BATCH) {
            let entries: Vec<_> = chunk
                .iter()
                .enumerate()
                .filter_map(|(i, r)| {
                    ChangeMessageVisibilityBatchRequestEntry::builder()
                        .id(i.to_string())
                        .receipt_handle(r)
                        .visibility_timeout(0)
                        .build()
                        .ok()
                })
                .collect();
            let sent = self
                .client
                .change_message_visibility_batch()
                .queue_url(&self.url)
                .set_entries(Some(entries))
                .send()
                .await;
            if let Err(e) = sent {
                // Harmless: the messages reappear when their hold runs out.
                tracing::warn!(error = %port_error("ChangeMessageVisibilityBatch", &e), "could not release held parked messages");
            }
        }
    }
}
