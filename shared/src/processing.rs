//! Batch processing shared by every SQS-triggered stage (router, sinks): a [`Processor`] takes
//! a batch of records and names the ones to retry; the Lambda adapter turns that into
//! `ReportBatchItemFailures`, the local worker into "delete the others". One bad message never
//! blocks or repeats the rest of its batch.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
#[cfg(feature = "lambda")]
use aws_lambda_events::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent};
use tokio::sync::watch;

use crate::event::Event;
use crate::queue::{Queue, SqliteQueue};
use crate::router::Router;

/// One message of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Identifies the record in the answer (the SQS message id).
    pub id: String,
    pub body: String,
    pub receive_count: u32,
}

#[async_trait]
pub trait Processor: Send + Sync {
    /// A short name for logs and counters (`router`, `analytics`, ...).
    fn name(&self) -> &'static str;
    /// Handles `batch`; returns the ids of the records that must be retried.
    async fn process(&self, batch: Vec<Record>) -> Vec<String>;
}

#[cfg(feature = "lambda")]
/// Records of an SQS event, as Lambda delivers them.
pub fn records_from_sqs(event: SqsEvent) -> Vec<Record> {
    event
        .records
        .into_iter()
        .map(|m| Record {
            receive_count: m
                .attributes
                .get("ApproximateReceiveCount")
                .and_then(|v| v.parse().ok())
                .unwrap_or(1),
            id: m.message_id.unwrap_or_default(),
            body: m.body.unwrap_or_default(),
        })
        .collect()
}

#[cfg(feature = "lambda")]
/// The partial-batch answer naming the records to retry.
pub fn sqs_batch_response(failed: Vec<String>) -> SqsBatchResponse {
    let mut response = SqsBatchResponse::default();
    response.batch_item_failures = failed
        .into_iter()
        .map(|id| {
            let mut f = BatchItemFailure::default();
            f.item_identifier = id;
            f
        })
        .collect();
    response
}

#[cfg(feature = "lambda")]
/// Runs a processor as a Lambda function handler body: SQS event in, partial batch answer out.
pub async fn handle_sqs_event(processor: &dyn Processor, event: SqsEvent) -> SqsBatchResponse {
    let records = records_from_sqs(event);
    let total = records.len();
    let failed = processor.process(records).await;
    if !failed.is_empty() {
        tracing::warn!(
            stage = processor.name(),
            failed = failed.len(),
            total,
            "some records will be retried"
        );
    }
    sqs_batch_response(failed)
}

/// How long a local worker keeps draining its queue after the stop signal.
const DRAIN_ON_STOP: Duration = Duration::from_secs(5);

/// Feeds a local queue to a processor until `shutdown`: what it processed is deleted (and
/// counted as `processed.<queue>` in the same transaction); what it names for retry comes back
/// after the visibility timeout and, past the maximum receives, moves to the dead-letter queue.
pub async fn run_local_worker(
    queue: SqliteQueue,
    processor: Arc<dyn Processor>,
    batch_size: usize,
    mut shutdown: watch::Receiver<bool>,
) {
    let counter: &'static str = Box::leak(format!("processed.{}", queue.name()).into_boxed_str());
    // After the stop signal, what is already queued is still processed, for a bounded time, so
    // that a clean stop leaves nothing behind that was ready to go.
    let mut drain_until: Option<tokio::time::Instant> = None;
    loop {
        if drain_until.is_none() && *shutdown.borrow() {
            drain_until = Some(tokio::time::Instant::now() + DRAIN_ON_STOP);
        }
        let deliveries = match drain_until {
            Some(deadline) if tokio::time::Instant::now() >= deadline => return,
            Some(_) => queue.receive(batch_size, Duration::ZERO).await,
            None => {
                // A receive that has begun may already have taken messages: on a stop it is
                // finished, not dropped, and what it took is processed.
                let receive = queue.receive(batch_size, Duration::from_secs(1));
                tokio::pin!(receive);
                tokio::select! {
                    got = &mut receive => got,
                    _ = shutdown.changed() => receive.await,
                }
            }
        };
        let deliveries = match deliveries {
            Ok(d) if d.is_empty() && drain_until.is_some() => return,
            Ok(d) if d.is_empty() => continue,
            Ok(d) => d,
            Err(e) => {
                tracing::error!(queue = queue.name(), error = %e, "receive failed");
                if drain_until.is_some() {
                    return;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let records = deliveries
            .iter()
            .map(|d| Record {
                id: d.receipt.clone(),
                body: d.body.clone(),
                receive_count: d.receive_count,
            })
            .collect();
        let failed = processor.process(records).await;
        let done: Vec<String> = deliveries
            .into_iter()
            .map(|d| d.receipt)
            .filter(|r| !failed.contains(r))
            .collect();
        if !failed.is_empty() {
            tracing::warn!(
                queue = queue.name(),
                failed = failed.len(),
                "records left for retry"
            );
        }
        if let Err(e) = queue.delete_counted(&done, counter).await {
            tracing::error!(queue = queue.name(), error = %e, "delete failed");
        }
    }
}

/// A stage that handles one event at a time; as a [`Processor`] it handles a batch's events
/// concurrently and names for retry the records that are not events and the events it
/// answered `false` for.
#[async_trait]
pub trait EventSink: Send + Sync {
    fn name(&self) -> &'static str;
    /// Handles one event; `false` means retry it.
    async fn handle(&self, event: &Event) -> bool;
}

#[async_trait]
impl<T: EventSink> Processor for T {
    fn name(&self) -> &'static str {
        EventSink::name(self)
    }

    async fn process(&self, batch: Vec<Record>) -> Vec<String> {
        let (events, mut failed) = Router::parse_batch(&batch);
        let outcomes = futures_util::future::join_all(
            events
                .iter()
                .map(|(r, e)| async move { (r.id.clone(), self.handle(e).await) }),
        )
        .await;
        failed.extend(outcomes.into_iter().filter(|(_, ok)| !ok).map(|(id, _)| id));
        failed
    }
}

/// Sends `bodies` to `queue` in batches of ten; the ids of the records whose send failed.
pub async fn send_all(
    queue: &dyn Queue,
    items: &[(String, crate::queue::OutgoingMessage)],
) -> Vec<String> {
    let mut failed = Vec::new();
    for chunk in items.chunks(10) {
        let messages: Vec<_> = chunk.iter().map(|(_, m)| m.clone()).collect();
        if let Err(e) = queue.send(&messages).await {
            tracing::error!(error = %e, "send to a destination queue failed");
            failed.extend(chunk.iter().map(|(id, _)| id.clone()));
        }
    }
    failed
}

#[cfg(all(test, feature = "lambda"))]
mod tests {
    use super::*;

    #[test]
    fn sqs_event_records_and_partial_answer() {
        let event: SqsEvent = serde_json::from_value(serde_json::json!({"Records": [
            {"messageId": "m1", "receiptHandle": "r1", "body": "{}", "attributes": {"ApproximateReceiveCount": "3"},
             "messageAttributes": {}, "md5OfBody": "", "eventSource": "aws:sqs", "eventSourceARN": "arn:aws:sqs:us-east-1:1:q", "awsRegion": "us-east-1"}
        ]}))
        .unwrap();
        let records = records_from_sqs(event);
        assert_eq!(
            records,
            vec![Record {
                id: "m1".into(),
                body: "{}".into(),
                receive_count: 3
            }]
        );
        let answer = serde_json::to_value(sqs_batch_response(vec!["m1".into()])).unwrap();
        assert_eq!(
            answer,
            serde_json::json!({"batchItemFailures": [{"itemIdentifier": "m1"}]})
        );
    }
}
