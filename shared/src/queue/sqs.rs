//! Amazon SQS. Bodies are the event JSON; sends go in batches (at most ten messages and 256 KiB
//! each). A packing queue (a sink's, [`SqsQueue::packing`]) puts what one send hands it into as
//! few messages as fit in [`super::PACK_BYTES`] and [`super::PACK_EVENTS`] each
//! ([`super::pack`]): SQS bills per request and per 64 KiB, and the sink's event source mapping
//! then receives, deletes and invokes per pack.

use async_trait::async_trait;
use aws_sdk_sqs::error::DisplayErrorContext;
use aws_sdk_sqs::types::{
    DeleteMessageBatchRequestEntry, MessageSystemAttributeName, SendMessageBatchRequestEntry,
};
use aws_sdk_sqs::Client;
use std::time::Duration;

use super::{Delivery, OutgoingMessage, Queue, QueueError};

#[derive(Clone, Debug)]
pub struct SqsQueue {
    client: Client,
    url: String,
    packing: bool,
}

/// The most one `SendMessageBatch` carries: ten messages, 256 KiB of bodies.
const BATCH_MESSAGES: usize = 10;
const BATCH_BYTES: usize = 256 * 1024;

/// `bodies` in runs that each fit one `SendMessageBatch`.
fn batches(bodies: &[String]) -> Vec<&[String]> {
    let mut out = Vec::new();
    let (mut start, mut size) = (0, 0);
    for (i, b) in bodies.iter().enumerate() {
        if i > start && (i - start == BATCH_MESSAGES || size + b.len() > BATCH_BYTES) {
            out.push(&bodies[start..i]);
            (start, size) = (i, 0);
        }
        size += b.len();
    }
    if start < bodies.len() {
        out.push(&bodies[start..]);
    }
    out
}

impl SqsQueue {
    pub fn new(client: Client, url: impl Into<String>) -> SqsQueue {
        SqsQueue {
            client,
            url: url.into(),
            packing: false,
        }
    }

    /// A sink's queue: each send's events packed ([`super::pack`]); its consumer reads packs
    /// and single events alike.
    pub fn packing(client: Client, url: impl Into<String>) -> SqsQueue {
        SqsQueue {
            packing: true,
            ..SqsQueue::new(client, url)
        }
    }

    pub fn url(&self) -> &str {
        &self.url
    }
}

fn qerr<E: std::error::Error + 'static, R: std::fmt::Debug>(
    e: aws_sdk_sqs::error::SdkError<E, R>,
) -> QueueError {
    QueueError(DisplayErrorContext(e).to_string())
}

#[async_trait]
impl Queue for SqsQueue {
    fn max_send(&self) -> usize {
        // Packed, a batch's events share as few messages as they fit in.
        if self.packing {
            usize::MAX
        } else {
            BATCH_MESSAGES
        }
    }

    async fn send(&self, messages: &[OutgoingMessage]) -> Result<(), QueueError> {
        let bodies: Vec<String> = if self.packing {
            super::pack(
                messages.iter().map(|m| m.body.as_str()),
                super::PACK_BYTES,
                super::PACK_EVENTS,
            )
        } else {
            messages.iter().map(|m| m.body.clone()).collect()
        };
        if let [one] = bodies.as_slice() {
            self.client
                .send_message()
                .queue_url(&self.url)
                .message_body(one)
                .send()
                .await
                .map_err(qerr)?;
            return Ok(());
        }
        for chunk in batches(&bodies) {
            let entries = chunk
                .iter()
                .enumerate()
                .map(|(i, body)| {
                    SendMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .message_body(body)
                        .build()
                        .map_err(|e| QueueError(e.to_string()))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let out = self
                .client
                .send_message_batch()
                .queue_url(&self.url)
                .set_entries(Some(entries))
                .send()
                .await
                .map_err(qerr)?;
            if !out.failed.is_empty() {
                let reasons: Vec<String> = out
                    .failed
                    .iter()
                    .map(|f| format!("{}: {}", f.code, f.message.as_deref().unwrap_or("")))
                    .collect();
                return Err(QueueError(format!(
                    "{} of {} messages not sent: {}",
                    out.failed.len(),
                    chunk.len(),
                    reasons.join("; ")
                )));
            }
        }
        Ok(())
    }

    async fn receive(&self, max: usize, wait: Duration) -> Result<Vec<Delivery>, QueueError> {
        let out = self
            .client
            .receive_message()
            .queue_url(&self.url)
            .max_number_of_messages(max.clamp(1, 10) as i32)
            .wait_time_seconds(wait.as_secs().min(20) as i32)
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .send()
            .await
            .map_err(qerr)?;
        Ok(out
            .messages
            .unwrap_or_default()
            .into_iter()
            .map(|m| Delivery {
                receive_count: m
                    .attributes
                    .as_ref()
                    .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(1),
                message_id: m.message_id.unwrap_or_default(),
                body: m.body.unwrap_or_default(),
                receipt: m.receipt_handle.unwrap_or_default(),
            })
            .collect())
    }

    async fn delete(&self, receipts: &[String]) -> Result<(), QueueError> {
        for chunk in receipts.chunks(10) {
            let entries = chunk
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    DeleteMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .receipt_handle(r)
                        .build()
                        .map_err(|e| QueueError(e.to_string()))
                })
                .collect::<Result<Vec<_>, _>>()?;
            self.client
                .delete_message_batch()
                .queue_url(&self.url)
                .set_entries(Some(entries))
                .send()
                .await
                .map_err(qerr)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_holds_at_most_ten_messages_and_256_kib() {
        let small: Vec<String> = (0..23).map(|i| i.to_string()).collect();
        let sizes: Vec<usize> = batches(&small).iter().map(|b| b.len()).collect();
        assert_eq!(sizes, vec![10, 10, 3]);
        let big: Vec<String> = (0..6).map(|_| "x".repeat(60 * 1024)).collect();
        let sizes: Vec<usize> = batches(&big).iter().map(|b| b.len()).collect();
        assert_eq!(sizes, vec![4, 2]);
        let huge = vec!["x".repeat(300 * 1024), "y".into()];
        let sizes: Vec<usize> = batches(&huge).iter().map(|b| b.len()).collect();
        assert_eq!(sizes, vec![1, 1]);
        assert!(batches(&[]).is_empty());
    }
}
