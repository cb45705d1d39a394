//! Destinations on AWS: the router puts one message per (event, destination) on the deliveries
//! queue; the deliver function attempts each and carries out the verdict on SQS itself. A retry
//! stays on the queue, hidden for its backoff (`ChangeMessageVisibility`, reported as a batch
//! item failure so Lambda does not delete it); an exhausted delivery is sent to the dead-letter
//! queue and deleted. Each attempt is one JSON log line that is also a CloudWatch EMF document
//! (Attempts, Delivered, Failed, Latency per destination).

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use aws_lambda_events::sqs::{SqsBatchResponse, SqsEvent};
use aws_sdk_sqs::error::DisplayErrorContext;

use super::{AttemptLog, AttemptRecord, Deliverer, DeliveryMessage, RateLimiter, Verdict};
use crate::processing::sqs_batch_response;

/// One line per attempt on stdout: the attempt's fields, and the metrics as EMF.
#[derive(Debug, Default, Clone, Copy)]
pub struct EmfAttempts;

/// The attempt's log line (and EMF document), at `now_ms`.
pub fn attempt_line(a: &AttemptRecord, now_ms: i64) -> String {
    let delivered = u8::from(a.state == "delivered");
    let failed = u8::from(a.state == "dead_lettered");
    serde_json::json!({
        "_aws": {
            "Timestamp": now_ms,
            "CloudWatchMetrics": [{
                "Namespace": "bluehook",
                "Dimensions": [["Destination"]],
                "Metrics": [
                    {"Name": "Attempts", "Unit": "Count"},
                    {"Name": "Delivered", "Unit": "Count"},
                    {"Name": "Failed", "Unit": "Count"},
                    {"Name": "Latency", "Unit": "Milliseconds"}
                ]
            }]
        },
        "message": "delivery attempt",
        "Destination": a.destination,
        "Attempts": 1,
        "Delivered": delivered,
        "Failed": failed,
        "Latency": a.duration_ms,
        "event_id": a.event_id,
        "attempt": a.attempt,
        "status": a.status,
        "error": a.error,
        "state": a.state,
    })
    .to_string()
}

#[async_trait]
impl AttemptLog for EmfAttempts {
    async fn record(&self, a: &AttemptRecord) {
        println!("{}", attempt_line(a, chrono::Utc::now().timestamp_millis()));
    }
}

/// The deliver function's handler.
pub struct SqsDeliveries {
    deliverers: BTreeMap<String, (Arc<Deliverer>, Option<Arc<RateLimiter>>)>,
    sqs: aws_sdk_sqs::Client,
    queue_url: String,
    dlq_url: String,
}

impl SqsDeliveries {
    pub fn new(
        deliverers: Vec<Deliverer>,
        sqs: aws_sdk_sqs::Client,
        queue_url: String,
        dlq_url: String,
    ) -> SqsDeliveries {
        let deliverers = deliverers
            .into_iter()
            .map(|d| {
                // Per function instance: with the event source mapping's maximum concurrency
                // N, a destination sees at most N times its rate (see the README).
                let limiter = d
                    .destination
                    .rate_limit_per_sec
                    .map(|n| Arc::new(RateLimiter::new(n)));
                (d.destination.name.clone(), (Arc::new(d), limiter))
            })
            .collect();
        SqsDeliveries {
            deliverers,
            sqs,
            queue_url,
            dlq_url,
        }
    }

    /// Attempts every record of the batch at once; answers the records to leave on the queue.
    pub async fn handle(&self, event: SqsEvent) -> SqsBatchResponse {
        let attempts = event.records.into_iter().map(|m| async move {
            let id = m.message_id.clone().unwrap_or_default();
            let receive_count = m
                .attributes
                .get("ApproximateReceiveCount")
                .and_then(|v| v.parse().ok())
                .unwrap_or(1);
            let body = m.body.unwrap_or_default();
            let receipt = m.receipt_handle.unwrap_or_default();
            let delivery = serde_json::from_str::<DeliveryMessage>(&body).ok();
            let verdict = match delivery
                .as_ref()
                .and_then(|d| self.deliverers.get(&d.destination).map(|x| (d, x)))
            {
                Some((d, (deliverer, limiter))) => {
                    if let Some(l) = limiter {
                        l.acquire().await;
                    }
                    deliverer.deliver(&d.event, receive_count).await
                }
                None => {
                    tracing::error!(record = %id, "not a delivery to a configured destination; dead-lettered");
                    Verdict::DeadLetter
                }
            };
            let keep = match verdict {
                Verdict::Delivered | Verdict::AlreadyDelivered => false,
                Verdict::RetryIn(delay) => {
                    let hidden = self
                        .sqs
                        .change_message_visibility()
                        .queue_url(&self.queue_url)
                        .receipt_handle(&receipt)
                        .visibility_timeout(delay.as_secs().clamp(1, 43_200) as i32)
                        .send()
                        .await;
                    if let Err(e) = hidden {
                        tracing::warn!(record = %id, error = %DisplayErrorContext(e), "backoff not set; retried after the visibility timeout");
                    }
                    true
                }
                Verdict::DeadLetter => {
                    let sent = self
                        .sqs
                        .send_message()
                        .queue_url(&self.dlq_url)
                        .message_body(body)
                        .send()
                        .await;
                    match sent {
                        Ok(_) => false,
                        Err(e) => {
                            tracing::error!(record = %id, error = %DisplayErrorContext(e), "dead-lettering failed; retried");
                            true
                        }
                    }
                }
            };
            keep.then_some(id)
        });
        let keep: Vec<String> = futures_util::future::join_all(attempts)
            .await
            .into_iter()
            .flatten()
            .collect();
        sqs_batch_response(keep)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_attempt_is_one_json_line_and_an_emf_document_per_destination() {
        let a = AttemptRecord {
            event_id: "evt_1".into(),
            destination: "bot".into(),
            attempt: 2,
            at: chrono::Utc::now(),
            status: Some(200),
            error: None,
            duration_ms: 12,
            state: "delivered".into(),
        };
        let v: serde_json::Value = serde_json::from_str(&attempt_line(&a, 5)).unwrap();
        assert_eq!(
            v["_aws"]["CloudWatchMetrics"][0]["Dimensions"][0][0],
            "Destination"
        );
        assert_eq!(
            (v["Destination"].as_str(), v["Delivered"].as_u64()),
            (Some("bot"), Some(1))
        );
        assert_eq!(
            (v["Failed"].as_u64(), v["Latency"].as_u64()),
            (Some(0), Some(12))
        );
        assert_eq!(
            (v["attempt"].as_u64(), v["status"].as_u64()),
            (Some(2), Some(200))
        );
    }
}
