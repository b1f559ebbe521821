//! The parking queue on SQS. Kept out of `crate::aws` on purpose: these calls are the
//! operator's (ReceiveMessage, DeleteMessage, ChangeMessageVisibility to extend and release a
//! hold), not the function's, whose role the template test holds to exactly what `crate::aws`
//! calls.

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

/// A hold as SQS's VisibilityTimeout: whole seconds, at most 12 hours.
fn visibility_secs(hold_for: Duration) -> i32 {
    hold_for.as_secs().min(43_200) as i32
}

/// One answer per entry of a batch of `len` (entry ids are their indexes): `None` for the
/// successful, `code: message` for the failed, and a note for any SQS did not mention.
fn per_entry<'a>(
    len: usize,
    successful: impl Iterator<Item = &'a str>,
    failed: impl Iterator<Item = (&'a str, &'a str, &'a str)>,
) -> Vec<Option<String>> {
    let mut answers = vec![Some("no result for this entry".to_owned()); len];
    for id in successful {
        if let Some(a) = id.parse::<usize>().ok().and_then(|i| answers.get_mut(i)) {
            *a = None;
        }
    }
    for (id, code, message) in failed {
        if let Some(a) = id.parse::<usize>().ok().and_then(|i| answers.get_mut(i)) {
            *a = Some(format!("{code}: {message}"));
        }
    }
    answers
}

impl ParkingQueue for SqsParking {
    async fn receive(&self, max: u32, hold_for: Duration) -> Result<Vec<Held>, PortError> {
        let out = self
            .client
            .receive_message()
            .queue_url(&self.url)
            .max_number_of_messages(max.clamp(1, BATCH as u32) as i32)
            .visibility_timeout(visibility_secs(hold_for))
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
            let sent = self
                .client
                .delete_message_batch()
                .queue_url(&self.url)
                .set_entries(Some(entries))
                .send()
                .await;
            answers.extend(match sent {
                Ok(out) => per_entry(
                    chunk.len(),
                    out.successful().iter().map(|ok| ok.id()),
                    out.failed()
                        .iter()
                        .map(|f| (f.id(), f.code(), f.message().unwrap_or_default())),
                ),
                Err(e) => {
                    let e = port_error("DeleteMessageBatch", &e);
                    vec![Some(e.to_string()); chunk.len()]
                }
            });
        }
        Ok(answers)
    }

    async fn extend(
        &self,
        receipts: &[String],
        hold_for: Duration,
    ) -> Result<Vec<Option<String>>, PortError> {
        let mut answers = Vec::with_capacity(receipts.len());
        for chunk in receipts.chunks(BATCH) {
            let entries = chunk
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    ChangeMessageVisibilityBatchRequestEntry::builder()
                        .id(i.to_string())
                        .receipt_handle(r)
                        .visibility_timeout(visibility_secs(hold_for))
                        .build()
                        .map_err(|e| build_error("ChangeMessageVisibilityBatch", e))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let out = self
                .client
                .change_message_visibility_batch()
                .queue_url(&self.url)
                .set_entries(Some(entries))
                .send()
                .await
                .map_err(|e| port_error("ChangeMessageVisibilityBatch", &e))?;
            answers.extend(per_entry(
                chunk.len(),
                out.successful().iter().map(|ok| ok.id()),
                out.failed()
                    .iter()
                    .map(|f| (f.id(), f.code(), f.message().unwrap_or_default())),
            ));
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
