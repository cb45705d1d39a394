//! The delivery engine for destinations: one attempt at a time, each claimed with an effect key
//! (so a redelivered queue message never delivers twice), recorded, and judged: delivered, try
//! again after a backoff (or the destination's `Retry-After`), or dead-lettered after
//! `max_attempts`. The queue backend (SQLite locally, SQS on AWS) carries out the verdict.

pub mod local;
#[cfg(feature = "lambda")]
pub mod sqs;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::destinations::{AttemptResult, Destination};
use crate::event::Event;
use crate::idempotency::{Claim, IdempotencyStore};
use crate::metrics::Metrics;
use crate::sinks::Effects;

/// A queued delivery: one event for one destination.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeliveryMessage {
    pub destination: String,
    pub event: Event,
}

impl DeliveryMessage {
    pub fn to_json(&self) -> String {
        Self::envelope(&self.destination, &self.event.to_json())
    }

    /// The message for `destination` around an event already in JSON (the queue record's
    /// body), without parsing or serialising the event again.
    pub fn envelope(destination: &str, event_json: &str) -> String {
        let name = serde_json::to_string(destination).expect("a string serialises");
        format!("{{\"destination\":{name},\"event\":{event_json}}}")
    }
}

/// What to do with a delivery after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Delivered,
    /// Delivered before (its effect key is done): nothing sent.
    AlreadyDelivered,
    RetryIn(Duration),
    DeadLetter,
}

impl Verdict {
    /// The delivery's state after this verdict, as `events` and `stats` show it.
    pub fn state(self) -> &'static str {
        match self {
            Verdict::Delivered | Verdict::AlreadyDelivered => "delivered",
            Verdict::RetryIn(_) => "retrying",
            Verdict::DeadLetter => "dead_lettered",
        }
    }
}

/// One attempt, as recorded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttemptRecord {
    pub event_id: String,
    pub destination: String,
    pub attempt: u32,
    #[serde(with = "chrono::serde::ts_milliseconds")]
    pub at: DateTime<Utc>,
    /// The HTTP status, when the destination answered.
    pub status: Option<u16>,
    /// `timeout`, `connect` or `reset` when it did not.
    pub error: Option<String>,
    pub duration_ms: u64,
    /// The delivery's state after this attempt.
    pub state: String,
}

/// Where attempts are recorded: a table locally, a JSON log line (and metrics) on AWS.
#[async_trait]
pub trait AttemptLog: Send + Sync {
    async fn record(&self, attempt: &AttemptRecord);
}

/// Runs attempts for one destination.
pub struct Deliverer {
    pub destination: Arc<Destination>,
    effects: Effects,
    log: Arc<dyn AttemptLog>,
    metrics: Arc<dyn Metrics>,
}

impl Deliverer {
    pub fn new(
        destination: Arc<Destination>,
        effects_store: Arc<dyn IdempotencyStore>,
        log: Arc<dyn AttemptLog>,
        metrics: Arc<dyn Metrics>,
    ) -> Deliverer {
        let effects = Effects {
            store: effects_store,
            sink: "destination",
            // An attempt holds its claim for at most its timeout; a crash mid-attempt frees it
            // soon after.
            lease: destination.timeout + Duration::from_secs(30),
            ttl: Duration::from_secs(7 * 24 * 3600),
        };
        Deliverer {
            destination,
            effects,
            log,
            metrics,
        }
    }

    fn key(&self, event: &Event) -> String {
        format!("{}:{}", self.destination.name, event.id)
    }

    /// Attempt number `attempt` (1-based) at delivering `event`.
    pub async fn deliver(&self, event: &Event, attempt: u32) -> Verdict {
        let name = &self.destination.name;
        let key = self.key(event);
        let token = match self.effects.claim(&key, &event.id).await {
            Ok(Claim::Acquired(t)) => t,
            Ok(Claim::Completed) => {
                self.metrics
                    .incr(&format!("destination.{name}.duplicates"), 1);
                return Verdict::AlreadyDelivered;
            }
            // Another copy of this delivery is under way: look again once its lease could end.
            Ok(Claim::InProgress { retry_after }) => return Verdict::RetryIn(retry_after),
            Err(e) => {
                tracing::error!(destination = %name, event_id = %event.id, error = %e, "effect claim failed");
                return Verdict::RetryIn(self.destination.retry.first_delay);
            }
        };
        let at = Utc::now();
        let (result, took) = self.destination.attempt(event).await;
        let verdict = if result.delivered() {
            self.effects.complete(&key, &token, None).await;
            Verdict::Delivered
        } else {
            self.effects.release(&key, &token).await;
            if attempt >= self.destination.retry.max_attempts {
                Verdict::DeadLetter
            } else {
                Verdict::RetryIn(self.destination.retry.delay_after(
                    attempt,
                    result.retry_after(),
                    rand::random::<f64>(),
                ))
            }
        };
        let record = AttemptRecord {
            event_id: event.id.clone(),
            destination: name.clone(),
            attempt,
            at,
            status: result.status(),
            error: result.error_class().map(str::to_owned),
            duration_ms: took.as_millis() as u64,
            state: verdict.state().to_owned(),
        };
        self.observe(&record, &result, verdict);
        self.log.record(&record).await;
        verdict
    }

    fn observe(&self, a: &AttemptRecord, result: &AttemptResult, verdict: Verdict) {
        let name = &self.destination.name;
        self.metrics
            .incr(&format!("destination.{name}.attempts"), 1);
        match verdict {
            Verdict::Delivered => self
                .metrics
                .incr(&format!("destination.{name}.delivered"), 1),
            Verdict::DeadLetter => {
                self.metrics.incr(&format!("destination.{name}.failed"), 1);
                self.metrics
                    .incr(&format!("destination.{name}.dead_lettered"), 1);
            }
            _ => {}
        }
        self.metrics
            .observe_ms(&format!("destination.{name}.latency"), a.duration_ms as i64);
        match result.error_class() {
            // Only the origin: a URL's path and query may hold a token.
            Some(class) => tracing::warn!(
                destination = %name, origin = %self.destination.origin(), event_id = %a.event_id,
                attempt = a.attempt, error = class, state = verdict.state(), "delivery attempt failed"
            ),
            None if !result.delivered() => tracing::warn!(
                destination = %name, origin = %self.destination.origin(), event_id = %a.event_id,
                attempt = a.attempt, status = a.status, state = verdict.state(), "delivery attempt refused"
            ),
            None => tracing::debug!(
                destination = %name, event_id = %a.event_id, attempt = a.attempt,
                status = a.status, duration_ms = a.duration_ms, "delivered"
            ),
        }
    }
}

/// At most `per_sec` starts in any one-second window: starts are spaced `1/per_sec` apart.
pub struct RateLimiter {
    interval: Duration,
    next: tokio::sync::Mutex<tokio::time::Instant>,
}

impl RateLimiter {
    pub fn new(per_sec: u32) -> RateLimiter {
        RateLimiter {
            interval: Duration::from_secs(1) / per_sec.max(1),
            next: tokio::sync::Mutex::new(tokio::time::Instant::now()),
        }
    }

    /// Waits for this caller's turn.
    pub async fn acquire(&self) {
        let at = self.reserve().await;
        tokio::time::sleep_until(at).await;
    }

    /// The next free start time, taken.
    async fn reserve(&self) -> tokio::time::Instant {
        let mut next = self.next.lock().await;
        let at = (*next).max(tokio::time::Instant::now());
        *next = at + self.interval;
        at
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_envelope_round_trips() {
        let e = Event::new(
            "s",
            "p",
            crate::event::EventKind::Unknown,
            "k".into(),
            Utc::now(),
            "{\"a\": \"\\\"quoted\\\"\"}".into(),
        );
        let m = DeliveryMessage {
            destination: "bot \"one\"".into(),
            event: e,
        };
        let back: DeliveryMessage = serde_json::from_str(&m.to_json()).unwrap();
        assert_eq!(back, m);
    }

    #[tokio::test]
    async fn the_rate_limiter_spaces_starts_exactly() {
        let limiter = RateLimiter::new(5);
        let mut at = Vec::new();
        for _ in 0..12 {
            at.push(limiter.reserve().await);
        }
        // Back to back, each a fifth of a second after the one before: at most five in any
        // one-second window.
        for w in at.windows(2) {
            assert!(w[1] - w[0] >= Duration::from_millis(200), "{at:?}");
        }
        for i in 0..at.len() - 5 {
            assert!(at[i + 5] - at[i] >= Duration::from_secs(1));
        }
        // After a pause, the next start is not owed a burst.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let later = limiter.reserve().await;
        assert!(later >= at[11] + Duration::from_millis(200));
    }
}
