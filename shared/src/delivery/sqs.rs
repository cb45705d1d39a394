//! The delivery engine on AWS. Destinations: the router puts one message per (event,
//! destination) on the deliveries queue; the deliver function attempts each and carries out the
//! verdict on SQS itself. A retry stays on the queue, hidden for its backoff
//! (`ChangeMessageVisibility`, reported as a batch item failure so Lambda does not delete it);
//! an exhausted delivery is sent to the dead-letter queue and deleted. Sinks (crm-sync,
//! sms-fallback): the same engine on their own queues, whose redrive policy does the retrying.
//! Each attempt is one JSON log line that is also a CloudWatch EMF document (Attempts,
//! Delivered, Failed, Latency per destination or sink).

use std::collections::BTreeMap;
use std::sync::Arc;

use aws_lambda_events::sqs::{SqsBatchResponse, SqsEvent};
use aws_sdk_sqs::error::DisplayErrorContext;

use super::{AttemptRecord, Deliver, Format, RateLimiter, Verdict};
use crate::processing::sqs_batch_response;

/// The attempt's log line (and EMF document), at `now_ms`: one per attempt on stdout.
pub fn attempt_line(a: &AttemptRecord, now_ms: i64) -> String {
    // A skip (the event needed nothing) and a delivery found done before are recorded, not
    // counted as attempts.
    let counted = a.state != "skipped" && a.detail.as_deref() != Some(super::ALREADY_DONE);
    let attempts = u8::from(counted);
    let delivered = u8::from(counted && a.state == "delivered");
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
        "Attempts": attempts,
        "Delivered": delivered,
        "Failed": failed,
        "Latency": a.duration_ms,
        "event_id": a.event_id,
        "attempt": a.attempt,
        "status": a.status,
        "error": a.error,
        "state": a.state,
        "detail": a.detail,
    })
    .to_string()
}

/// Where the verdicts that keep a message on its queue go: a retry, a dead-letter.
#[async_trait::async_trait]
pub trait Settle: Send + Sync {
    /// Hides the message for `delay`; `true`: leave it on the queue (a batch item failure).
    async fn retry(&self, id: &str, receipt: &str, delay: std::time::Duration) -> bool;
    /// Moves the message to the dead-letter queue; `true`: leave it on the queue.
    async fn dead_letter(&self, id: &str, body: String) -> bool;
}

/// The destinations' queue: a retry is hidden for its backoff with `ChangeMessageVisibility`,
/// the exhausted are sent to the dead-letter queue and deleted.
pub struct Backoff {
    sqs: aws_sdk_sqs::Client,
    queue_url: String,
    dlq_url: String,
}

#[async_trait::async_trait]
impl Settle for Backoff {
    async fn retry(&self, id: &str, receipt: &str, delay: std::time::Duration) -> bool {
        let hidden = self
            .sqs
            .change_message_visibility()
            .queue_url(&self.queue_url)
            .receipt_handle(receipt)
            .visibility_timeout(delay.as_secs().clamp(1, 43_200) as i32)
            .send()
            .await;
        if let Err(e) = hidden {
            tracing::warn!(record = %id, error = %DisplayErrorContext(e), "backoff not set; retried after the visibility timeout");
        }
        true
    }

    async fn dead_letter(&self, id: &str, body: String) -> bool {
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
}

/// A sink's queue: a retry or a dead-letter verdict leaves the message to the queue's own
/// visibility timeout and redrive policy (`maxReceiveCount`, which the sink's retry policy
/// mirrors). No SQS client: the sink functions do not link one.
pub struct Redrive;

#[async_trait::async_trait]
impl Settle for Redrive {
    async fn retry(&self, _: &str, _: &str, _: std::time::Duration) -> bool {
        true
    }

    async fn dead_letter(&self, _: &str, _: String) -> bool {
        true
    }
}

/// A target and its rate limiter, if it has one.
type Limited = (Arc<dyn Deliver>, Option<Arc<RateLimiter>>);

/// The SQS carrier of the delivery engine: the deliver function's handler (every destination,
/// [`super::DeliveryMessage`] envelopes) and the crm-sync and sms-fallback functions' (one sink, bare
/// events).
pub struct SqsDeliveries<S: Settle = Backoff> {
    targets: BTreeMap<String, Limited>,
    format: Format,
    settle: S,
    /// Where what a done effect leads to goes (bot replies: the replies queue).
    follow_ons: Option<Arc<dyn crate::queue::Queue>>,
}

impl SqsDeliveries<Backoff> {
    /// The deliver function: every destination, from the deliveries queue.
    pub fn new(
        targets: Vec<Arc<dyn Deliver>>,
        sqs: aws_sdk_sqs::Client,
        queue_url: String,
        dlq_url: String,
    ) -> SqsDeliveries {
        SqsDeliveries {
            targets: Self::by_name(targets),
            format: Format::Envelope,
            settle: Backoff {
                sqs,
                queue_url,
                dlq_url,
            },
            follow_ons: None,
        }
    }
}

impl SqsDeliveries<Redrive> {
    /// A sink function: one target, from its own queue.
    pub fn sink(target: Arc<dyn Deliver>) -> SqsDeliveries<Redrive> {
        SqsDeliveries {
            targets: Self::by_name(vec![target]),
            format: Format::Event,
            settle: Redrive,
            follow_ons: None,
        }
    }
}

impl<S: Settle> SqsDeliveries<S> {
    /// Queues what a done effect leads to (a bot's reply) on `queue` before the effect is
    /// recorded done.
    pub fn with_follow_ons(mut self, queue: Option<Arc<dyn crate::queue::Queue>>) -> Self {
        self.follow_ons = queue;
        self
    }

    fn by_name(targets: Vec<Arc<dyn Deliver>>) -> BTreeMap<String, Limited> {
        targets
            .into_iter()
            .map(|d| {
                // Per function instance: with the event source mapping's maximum concurrency
                // N, a destination sees at most N times its rate (see the README).
                let limiter = RateLimiter::of(&d.policy());
                (d.name().to_owned(), (d, limiter))
            })
            .collect()
    }

    /// The target of a message.
    fn target(&self, named: Option<&str>) -> Option<&Limited> {
        match named {
            Some(name) => self.targets.get(name),
            None if self.targets.len() == 1 => self.targets.values().next(),
            None => None,
        }
    }

    /// One delivery of a message: the event attempted by its target, what the effect leads to
    /// queued, the effect's key completed; the verdict.
    async fn attempt(
        &self,
        id: &str,
        named: Option<&str>,
        event: &crate::event::Event,
        receive_count: u32,
    ) -> Verdict {
        let Some((target, limiter)) = self.target(named) else {
            tracing::error!(record = %id, "not a delivery to a configured destination; dead-lettered");
            return Verdict::DeadLetter;
        };
        if let Some(l) = limiter {
            l.acquire().await;
        }
        let mut a = target.deliver(event, receive_count).await;
        if let Some(r) = &a.record {
            println!("{}", attempt_line(r, chrono::Utc::now().timestamp_millis()));
        }
        // What the effect leads to is queued before the effect is recorded done: if queuing
        // fails, the effect stays unfinished and the delivery is retried as a failed attempt
        // (its reply is sent once all the same: the send has its own key).
        if let Some(next) = &a.follow_on {
            let queued = match &self.follow_ons {
                Some(q) => q
                    .send(&[crate::queue::OutgoingMessage {
                        id: event.id.clone(),
                        body: next.body.clone(),
                    }])
                    .await
                    .map_err(|e| e.to_string()),
                None => Err(format!("no queue for the {}", next.route)),
            };
            if let Err(e) = queued {
                tracing::error!(event_id = %event.id, follow_on = next.route, error = %e, "not queued; the delivery is retried");
                a.completion = None;
                a.verdict = target.policy().retry.verdict_after(receive_count, None);
            }
        }
        // The effect's key is completed before the message can be deleted.
        if let Some(done) = &a.completion {
            done.apply(target.effects_store().as_ref()).await;
        }
        a.verdict
    }

    /// Attempts every delivery of the batch at once (at most [`CONCURRENCY`] at a time: a pack
    /// holds many); answers the records to leave on the queue. A message leaves the queue when
    /// every delivery it holds is finished; otherwise it stays whole (a pack's finished events
    /// find their effects done when it comes back), dead-lettered if one of them is.
    pub async fn handle(&self, event: SqsEvent) -> SqsBatchResponse {
        let permits = tokio::sync::Semaphore::new(CONCURRENCY);
        let permits = &permits;
        let messages = event.records.into_iter().map(|m| async move {
            let id = m.message_id.clone().unwrap_or_default();
            let receive_count = m
                .attributes
                .get("ApproximateReceiveCount")
                .and_then(|v| v.parse().ok())
                .unwrap_or(1);
            let body = m.body.unwrap_or_default();
            let receipt = m.receipt_handle.unwrap_or_default();
            let verdict = match self.format.parse_all(&body) {
                Ok(deliveries) if !deliveries.is_empty() => {
                    let id = &id;
                    let verdicts = deliveries.iter().map(|(named, event)| async move {
                        let _permit = permits.acquire().await;
                        self.attempt(id, named.as_deref(), event, receive_count)
                            .await
                    });
                    combined(futures_util::future::join_all(verdicts).await)
                }
                _ => {
                    tracing::error!(record = %id, "not a delivery; dead-lettered");
                    Verdict::DeadLetter
                }
            };
            let keep = match verdict {
                v if v.finished() => false,
                Verdict::RetryIn(delay) => self.settle.retry(&id, &receipt, delay).await,
                _ => self.settle.dead_letter(&id, body).await,
            };
            keep.then_some(id)
        });
        let keep: Vec<String> = futures_util::future::join_all(messages)
            .await
            .into_iter()
            .flatten()
            .collect();
        sqs_batch_response(keep)
    }
}

/// Deliveries attempted at once by one invocation: a whole pack.
pub const CONCURRENCY: usize = crate::queue::PACK_EVENTS;

/// A message's verdict from its deliveries': finished when all are, dead-lettered when one is,
/// otherwise retried after the longest backoff.
fn combined(verdicts: Vec<Verdict>) -> Verdict {
    let mut out = Verdict::Delivered;
    for v in verdicts {
        out = match (out, v) {
            (_, v) if v.finished() => out,
            (Verdict::DeadLetter, _) | (_, Verdict::DeadLetter) => Verdict::DeadLetter,
            (Verdict::RetryIn(a), Verdict::RetryIn(b)) => Verdict::RetryIn(a.max(b)),
            (_, v) => v,
        };
    }
    out
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
            detail: None,
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

    #[test]
    fn a_message_is_finished_when_each_of_its_deliveries_is() {
        use std::time::Duration;
        let s = Duration::from_secs;
        assert!(combined(vec![
            Verdict::Delivered,
            Verdict::AlreadyDelivered,
            Verdict::Skipped
        ])
        .finished());
        assert_eq!(
            combined(vec![
                Verdict::Delivered,
                Verdict::RetryIn(s(3)),
                Verdict::RetryIn(s(9))
            ]),
            Verdict::RetryIn(s(9))
        );
        assert_eq!(
            combined(vec![
                Verdict::RetryIn(s(3)),
                Verdict::DeadLetter,
                Verdict::Delivered
            ]),
            Verdict::DeadLetter
        );
    }
}
