//! Batch processing shared by every SQS-triggered stage (router, sinks): a [`Processor`] takes
//! a batch of records and names the ones to retry; the Lambda adapter turns that into
//! `ReportBatchItemFailures`, the local worker ([`crate::delivery::local::run_worker`]) into
//! "delete the others". One bad message never blocks or repeats the rest of its batch.
//! Per-event effects (sinks, destinations) run through the delivery engine instead.

use async_trait::async_trait;
#[cfg(feature = "lambda")]
use aws_lambda_events::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent};

use crate::queue::Queue;

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

/// Sends `items` to `queue`, as many at a time as it takes ([`Queue::max_send`]); the ids of
/// the records whose send failed.
pub async fn send_all(
    queue: &dyn Queue,
    items: &[(String, crate::queue::OutgoingMessage)],
) -> Vec<String> {
    let mut failed = Vec::new();
    for chunk in items.chunks(queue.max_send().max(1)) {
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
