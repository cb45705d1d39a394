//! The delivery engine: every per-event effect bluehook has (a POST to a destination, a CRM
//! push, a fallback SMS) is a [`Target`], and one engine runs them all the same way: the
//! target plans what the event needs, the engine claims the effect's key (so a redelivered
//! queue message never repeats it), the target performs it, and the engine judges the outcome
//! (delivered, try again after a backoff or the receiver's `Retry-After`, or dead-lettered after
//! `max_attempts`) and records the attempt. A carrier then settles the verdict on its queue:
//! SQLite locally ([`local`]: the effect's completion, the attempt and the queue change in one
//! transaction), SQS on AWS ([`sqs`]).

pub mod local;
#[cfg(feature = "lambda")]
pub mod sqs;

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::event::Event;
use crate::idempotency::{Claim, ClaimTimes, ClaimToken, IdempotencyStore};
use crate::metrics::Metrics;
use crate::sinks::Effects;

/// When to try again, and how often.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    /// Before the second attempt; doubles for each one after.
    pub first_delay: Duration,
    /// No wait is longer, a `Retry-After` included.
    pub max_delay: Duration,
}

impl RetryPolicy {
    /// The wait after failed attempt number `attempt` (1-based): `first_delay * 2^(attempt-1)`,
    /// capped, with jitter (between half and all of it, so that a burst of failures does not
    /// come back as one burst). A `Retry-After` the receiver gave wins, capped too.
    pub fn delay_after(
        &self,
        attempt: u32,
        retry_after: Option<Duration>,
        jitter: f64,
    ) -> Duration {
        if let Some(asked) = retry_after {
            return asked.min(self.max_delay);
        }
        let exp = attempt.saturating_sub(1).min(30);
        let full = self
            .first_delay
            .saturating_mul(1u32 << exp)
            .min(self.max_delay);
        full.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0))
    }

    /// After failed attempt number `attempt`: dead-lettered once the attempts are used up,
    /// otherwise retried after [`RetryPolicy::delay_after`].
    pub fn verdict_after(&self, attempt: u32, retry_after: Option<Duration>) -> Verdict {
        if attempt >= self.max_attempts {
            Verdict::DeadLetter
        } else {
            Verdict::RetryIn(self.delay_after(attempt, retry_after, rand::random::<f64>()))
        }
    }
}

/// How a target's effects are kept once-only and retried.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    pub retry: RetryPolicy,
    /// The effect keys' namespace: `effect:<effects>:<key>`.
    pub effects: &'static str,
    /// How long a claim holds while its effect is under way (or of unknown outcome).
    pub lease: Duration,
    /// How long a done effect is remembered.
    pub ttl: Duration,
    /// When an attempt may or may not have had its effect (a timeout after the request went
    /// out, a cut answer): `true` tries again (the receiver drops a copy by its `webhook-id`);
    /// `false` keeps the claim and dead-letters the delivery for a person (an SMS is never
    /// sent twice).
    pub repeat_unknown: bool,
    /// At most this many attempts a second.
    pub rate_limit_per_sec: Option<u32>,
}

/// What a target decided an event needs.
pub enum Planned<W> {
    /// One effect, claimed under `key` (within the target's namespace) before `work` is done.
    Effect { key: String, work: W },
    /// One effect without an effect key: the target records it done itself (on the state item
    /// its plan just updated, which is also how it knows a repeat: [`Planned::AlreadyDone`]).
    /// Two copies under way at the same moment can both do it; a target uses this only where
    /// the far side drops a copy (the CRM receiver, by `webhook-id`).
    Unclaimed { work: W },
    /// The target's own record says this event's effect is done.
    AlreadyDone,
    /// Nothing to do for this event, and why (`stale`, `not_a_failure`, ...).
    Skip(&'static str),
}

/// How one attempt at an effect ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Done. `status`: the HTTP answer, when there was one; `result`: what the effect produced
    /// (a provider's message id), kept with its effect key.
    Done {
        status: Option<u16>,
        result: Option<String>,
    },
    Failed {
        /// The HTTP status, when the other side answered.
        status: Option<u16>,
        /// `timeout`, `connect` or `reset` when it did not.
        error: Option<&'static str>,
        /// A short reason, free of secrets (no URL path or query, no credential).
        detail: Option<String>,
        /// The other side's `Retry-After`.
        retry_after: Option<Duration>,
        /// The effect certainly did not happen.
        definite: bool,
    },
}

/// One kind of per-event effect: an HTTP destination, the CRM push, the fallback SMS. A new
/// kind is one module implementing this; the engine does the rest.
#[async_trait]
pub trait Target: Send + Sync + 'static {
    /// What [`Target::plan`] hands [`Target::perform`].
    type Work: Send + Sync;
    /// The name routes, attempts and stats know it by (`crm`, `sms_fallback`, `bot`).
    fn name(&self) -> &str;
    fn policy(&self) -> Policy;
    /// Decides what `event` needs, reading or updating state as it must (each call for the
    /// same event decides the same). An error means "cannot tell now": retried.
    async fn plan(&self, event: &Event) -> Result<Planned<Self::Work>, String>;
    /// Does the effect, once its key is claimed.
    async fn perform(&self, event: &Event, work: &Self::Work) -> Outcome;
    /// After the effect was done (once per effect key): the target's own metrics.
    fn done(&self, _event: &Event, _work: &Self::Work) {}
    /// After a plan that needed nothing.
    fn skipped(&self, _event: &Event, _reason: &'static str) {}
    /// What a done effect leads to, from what it produced (`result` of [`Outcome::Done`]).
    fn follow_on(&self, _event: &Event, _result: Option<&str>) -> Option<FollowOn> {
        None
    }
}

/// What to do with a delivery after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Delivered,
    /// Delivered before (its effect key is done): nothing sent.
    AlreadyDelivered,
    /// The event needed nothing from this target.
    Skipped,
    RetryIn(Duration),
    DeadLetter,
}

impl Verdict {
    /// The delivery's state after this verdict, as `events` and `stats` show it.
    pub fn state(self) -> &'static str {
        match self {
            Verdict::Delivered | Verdict::AlreadyDelivered => "delivered",
            Verdict::Skipped => "skipped",
            Verdict::RetryIn(_) => "retrying",
            Verdict::DeadLetter => "dead_lettered",
        }
    }

    /// The message leaves the queue.
    pub fn finished(self) -> bool {
        matches!(
            self,
            Verdict::Delivered | Verdict::AlreadyDelivered | Verdict::Skipped
        )
    }
}

/// The detail of a delivery found done before (another copy of the event, or another event
/// with the same effect, had it): recorded, not counted as an attempt.
pub const ALREADY_DONE: &str = "already_done";

/// One attempt, as recorded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttemptRecord {
    pub event_id: String,
    /// The destination or sink.
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
    /// Why: a skip's reason, a failure's short message, [`ALREADY_DONE`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// An effect done, whose key the carrier completes when it settles the delivery.
#[derive(Debug, Clone)]
pub struct Completion {
    /// The whole key (`effect:<namespace>:<key>`).
    pub key: String,
    pub token: ClaimToken,
    pub ttl: Duration,
    pub result: Option<String>,
}

impl Completion {
    /// The claim times of a completion made now.
    pub fn times(&self) -> ClaimTimes {
        ClaimTimes {
            now_ms: Utc::now().timestamp_millis(),
            lease: Duration::ZERO,
            ttl: self.ttl,
        }
    }

    /// Completes the key in `store` (a carrier that does not fold it into its own write).
    pub async fn apply(&self, store: &dyn IdempotencyStore) {
        let done = store
            .complete_with_result(&self.key, &self.token, self.times(), self.result.as_deref())
            .await;
        if let Err(e) = done {
            tracing::warn!(error = %e, "effect done but its key could not be completed");
        }
    }
}

/// What one call of the engine came to: the verdict, the attempt to record (none when nothing
/// was attempted), the effect key to complete.
#[derive(Debug, Clone)]
pub struct Attempted {
    pub verdict: Verdict,
    pub record: Option<AttemptRecord>,
    pub completion: Option<Completion>,
    /// What the done effect leads to, queued with its completion.
    pub follow_on: Option<FollowOn>,
}

/// A message a done effect leads to (a bot's reply to send to the contact): the carrier queues
/// it in the same step that completes the effect, so it is queued exactly when the effect is
/// recorded done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FollowOn {
    /// The local queue (on AWS: the queue the function's environment names for it).
    pub queue: &'static str,
    /// What `bluehook events` lists among the event's routes for it (`reply`).
    pub route: &'static str,
    pub body: String,
}

impl Attempted {
    fn bare(verdict: Verdict) -> Attempted {
        Attempted {
            verdict,
            record: None,
            completion: None,
            follow_on: None,
        }
    }
}

/// The engine as carriers see it, whatever the target.
#[async_trait]
pub trait Deliver: Send + Sync {
    fn name(&self) -> &str;
    fn policy(&self) -> Policy;
    /// Where effect keys are claimed (a carrier completing them itself writes there).
    fn effects_store(&self) -> &Arc<dyn IdempotencyStore>;
    /// Attempt number `attempt` (1-based) at `event`. The effect's key is left for the
    /// carrier to complete ([`Attempted::completion`]).
    async fn deliver(&self, event: &Event, attempt: u32) -> Attempted;

    /// [`Deliver::deliver`], the effect's key completed at once (a carrier that does not fold
    /// the completion into its own write).
    async fn deliver_completed(&self, event: &Event, attempt: u32) -> Attempted {
        let attempted = self.deliver(event, attempt).await;
        if let Some(done) = &attempted.completion {
            done.apply(self.effects_store().as_ref()).await;
        }
        attempted
    }
}

/// Runs a target's attempts.
pub struct Deliverer<T: Target> {
    pub target: T,
    effects: Effects,
    metrics: Arc<dyn Metrics>,
}

impl<T: Target> Deliverer<T> {
    pub fn new(
        target: T,
        effects_store: Arc<dyn IdempotencyStore>,
        metrics: Arc<dyn Metrics>,
    ) -> Deliverer<T> {
        let policy = target.policy();
        let effects = Effects {
            store: effects_store,
            sink: policy.effects,
            lease: policy.lease,
            ttl: policy.ttl,
        };
        Deliverer {
            target,
            effects,
            metrics,
        }
    }

    fn retry_or_dead(&self, attempt: u32, retry_after: Option<Duration>) -> Verdict {
        self.target
            .policy()
            .retry
            .verdict_after(attempt, retry_after)
    }

    fn observe(&self, a: &AttemptRecord, verdict: Verdict) {
        let name = self.target.name();
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
        // The latency is the attempt's own record (its log line's EMF `Latency` on Lambda): no
        // second metric of it.
        match (verdict, &a.error) {
            (Verdict::Delivered, _) => tracing::debug!(
                destination = %name, event_id = %a.event_id, attempt = a.attempt,
                status = a.status, duration_ms = a.duration_ms, "delivered"
            ),
            (_, Some(class)) => tracing::warn!(
                destination = %name, event_id = %a.event_id, attempt = a.attempt,
                error = %class, detail = a.detail.as_deref(), state = verdict.state(),
                "delivery attempt failed"
            ),
            _ => tracing::warn!(
                destination = %name, event_id = %a.event_id, attempt = a.attempt,
                status = a.status, detail = a.detail.as_deref(), state = verdict.state(),
                "delivery attempt refused"
            ),
        }
    }
}

#[async_trait]
impl<T: Target> Deliver for Deliverer<T> {
    fn name(&self) -> &str {
        self.target.name()
    }

    fn policy(&self) -> Policy {
        self.target.policy()
    }

    fn effects_store(&self) -> &Arc<dyn IdempotencyStore> {
        &self.effects.store
    }

    async fn deliver(&self, event: &Event, attempt: u32) -> Attempted {
        let name = self.target.name();
        let at = Utc::now();
        let started = Instant::now();
        let record = |verdict: Verdict,
                      status: Option<u16>,
                      error: Option<&str>,
                      detail: Option<String>| AttemptRecord {
            event_id: event.id.clone(),
            destination: name.to_owned(),
            attempt,
            at,
            status,
            error: error.map(str::to_owned),
            duration_ms: started.elapsed().as_millis() as u64,
            state: verdict.state().to_owned(),
            detail,
        };
        // Done before (the target's own record, or its effect key): recorded, so the event's
        // state is known, not counted as an attempt.
        let already_done = || {
            self.metrics
                .incr(&format!("destination.{name}.duplicates"), 1);
            let verdict = Verdict::AlreadyDelivered;
            Attempted {
                verdict,
                record: Some(record(verdict, None, None, Some(ALREADY_DONE.to_owned()))),
                completion: None,
                follow_on: None,
            }
        };
        let (key, work) = match self.target.plan(event).await {
            Ok(Planned::Effect { key, work }) => (Some(key), work),
            Ok(Planned::Unclaimed { work }) => (None, work),
            Ok(Planned::AlreadyDone) => return already_done(),
            Ok(Planned::Skip(reason)) => {
                self.target.skipped(event, reason);
                tracing::debug!(destination = %name, event_id = %event.id, reason, "nothing to deliver");
                return Attempted {
                    verdict: Verdict::Skipped,
                    record: Some(record(
                        Verdict::Skipped,
                        None,
                        None,
                        Some(reason.to_owned()),
                    )),
                    completion: None,
                    follow_on: None,
                };
            }
            Err(e) => {
                tracing::error!(destination = %name, event_id = %event.id, error = %e, "cannot decide now; retried");
                let verdict = self.retry_or_dead(attempt, None);
                return Attempted {
                    verdict,
                    record: Some(record(verdict, None, Some("internal"), Some(e))),
                    completion: None,
                    follow_on: None,
                };
            }
        };
        let claimed = match &key {
            Some(key) => self.effects.claim(key, &event.id).await.map(Some),
            None => Ok(None),
        };
        let token = match claimed {
            Ok(None) => None,
            Ok(Some(Claim::Acquired(t))) => Some(t),
            Ok(Some(Claim::Completed)) => return already_done(),
            // Another copy of this delivery is under way, or its outcome is unknown: look again
            // once its lease could end, until the attempts run out.
            Ok(Some(Claim::InProgress { retry_after })) => {
                tracing::warn!(destination = %name, event_id = %event.id, "this effect is under way or of unknown outcome");
                return Attempted::bare(self.retry_or_dead(attempt, Some(retry_after)));
            }
            Err(e) => {
                tracing::error!(destination = %name, event_id = %event.id, error = %e, "effect claim failed");
                return Attempted::bare(self.retry_or_dead(attempt, None));
            }
        };
        let outcome = self.target.perform(event, &work).await;
        let attempted = match outcome {
            Outcome::Done { status, result } => {
                self.target.done(event, &work);
                let follow_on = self.target.follow_on(event, result.as_deref());
                Attempted {
                    follow_on,
                    verdict: Verdict::Delivered,
                    record: Some(record(Verdict::Delivered, status, None, None)),
                    completion: key.zip(token).map(|(key, token)| Completion {
                        key: self.effects.full_key(&key),
                        token,
                        ttl: self.effects.ttl,
                        result,
                    }),
                }
            }
            Outcome::Failed {
                status,
                error,
                detail,
                retry_after,
                definite,
            } => {
                let verdict = if definite || self.target.policy().repeat_unknown || key.is_none() {
                    if let Some((key, token)) = key.as_ref().zip(token.as_ref()) {
                        self.effects.release(key, token).await;
                    }
                    self.retry_or_dead(attempt, retry_after)
                } else {
                    // It may have happened: the claim stays, so it never happens twice, and a
                    // person decides.
                    tracing::error!(destination = %name, event_id = %event.id, "outcome unknown; not repeated, dead-lettered");
                    Verdict::DeadLetter
                };
                Attempted {
                    verdict,
                    record: Some(record(verdict, status, error, detail)),
                    completion: None,
                    follow_on: None,
                }
            }
        };
        if let Some(r) = &attempted.record {
            self.observe(r, attempted.verdict);
        }
        attempted
    }
}

/// A queued delivery to a destination: one event for one destination (a sink's queue carries
/// the bare event: the queue names the sink).
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

/// What a queue's messages are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// The event JSON (a sink's queue).
    Event,
    /// A [`DeliveryMessage`] (the destinations' queues).
    Envelope,
}

impl Format {
    /// The destination named in `body` (`None` for a sink's queue) and its event.
    pub fn parse(self, body: &str) -> Result<(Option<String>, Event), serde_json::Error> {
        match self {
            Format::Event => Ok((None, serde_json::from_str(body)?)),
            Format::Envelope => {
                let m: DeliveryMessage = serde_json::from_str(body)?;
                Ok((Some(m.destination), m.event))
            }
        }
    }

    /// Every delivery a queue message holds: one, or on a sink's queue a pack of events
    /// ([`crate::queue::pack`]).
    pub fn parse_all(self, body: &str) -> Result<Vec<(Option<String>, Event)>, serde_json::Error> {
        match self {
            Format::Event => Ok(Event::all_from_json(body)?
                .into_iter()
                .map(|e| (None, e))
                .collect()),
            Format::Envelope => Ok(vec![self.parse(body)?]),
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

    /// The limiter a policy asks for, if any.
    pub fn of(policy: &Policy) -> Option<Arc<RateLimiter>> {
        policy
            .rate_limit_per_sec
            .map(|n| Arc::new(RateLimiter::new(n)))
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
    use crate::idempotency::memory::MemoryIdempotency;
    use crate::metrics::MemoryMetrics;
    use std::sync::Mutex;

    /// A target whose attempts end as scripted; `skip` events need nothing.
    struct Scripted {
        outcomes: Mutex<Vec<Outcome>>,
        performed: Mutex<u32>,
        repeat_unknown: bool,
    }

    #[async_trait]
    impl Target for Scripted {
        type Work = ();
        fn name(&self) -> &str {
            "scripted"
        }
        fn policy(&self) -> Policy {
            Policy {
                retry: RetryPolicy {
                    max_attempts: 3,
                    first_delay: Duration::from_secs(2),
                    max_delay: Duration::from_secs(10),
                },
                effects: "scripted",
                lease: Duration::from_secs(60),
                ttl: Duration::from_secs(3600),
                repeat_unknown: self.repeat_unknown,
                rate_limit_per_sec: None,
            }
        }
        async fn plan(&self, event: &Event) -> Result<Planned<()>, String> {
            Ok(if event.idempotency_key == "skip" {
                Planned::Skip("not_needed")
            } else {
                Planned::Effect {
                    key: event.id.clone(),
                    work: (),
                }
            })
        }
        async fn perform(&self, _: &Event, _: &()) -> Outcome {
            *self.performed.lock().unwrap() += 1;
            self.outcomes.lock().unwrap().remove(0)
        }
    }

    fn failed(definite: bool, retry_after: Option<Duration>) -> Outcome {
        Outcome::Failed {
            status: definite.then_some(503),
            error: (!definite).then_some("timeout"),
            detail: None,
            retry_after,
            definite,
        }
    }

    fn engine(outcomes: Vec<Outcome>, repeat_unknown: bool) -> Deliverer<Scripted> {
        Deliverer::new(
            Scripted {
                outcomes: Mutex::new(outcomes),
                performed: Mutex::new(0),
                repeat_unknown,
            },
            Arc::new(MemoryIdempotency::default()),
            Arc::new(MemoryMetrics::default()),
        )
    }

    fn event(key: &str) -> Event {
        Event::new(
            "s",
            "p",
            crate::event::EventKind::Unknown,
            key.into(),
            Utc::now(),
            "{}".into(),
        )
    }

    #[tokio::test]
    async fn the_engine_retries_honours_retry_after_dead_letters_and_delivers_once() {
        let d = engine(
            vec![
                failed(true, None),
                failed(true, Some(Duration::from_secs(7))),
                failed(true, None),
                Outcome::Done {
                    status: Some(200),
                    result: Some("id-1".into()),
                },
            ],
            true,
        );
        let e = event("k");
        let a = d.deliver_completed(&e, 1).await;
        let Verdict::RetryIn(wait) = a.verdict else {
            panic!("{a:?}")
        };
        assert!(wait >= Duration::from_secs(1) && wait <= Duration::from_secs(2));
        assert_eq!(a.record.as_ref().unwrap().status, Some(503));
        assert_eq!(
            d.deliver_completed(&e, 2).await.verdict,
            Verdict::RetryIn(Duration::from_secs(7)),
            "Retry-After wins"
        );
        let last = d.deliver_completed(&e, 3).await;
        assert_eq!(last.verdict, Verdict::DeadLetter);
        assert_eq!(last.record.unwrap().state, "dead_lettered");
        // Replayed: delivered, then never again.
        let done = d.deliver_completed(&e, 1).await;
        assert_eq!(done.verdict, Verdict::Delivered);
        assert_eq!(done.completion.unwrap().result.as_deref(), Some("id-1"));
        assert_eq!(
            d.deliver_completed(&e, 1).await.verdict,
            Verdict::AlreadyDelivered
        );
        assert_eq!(*d.target.performed.lock().unwrap(), 4);
    }

    #[tokio::test]
    async fn an_unknown_outcome_is_repeated_or_held_as_the_target_says() {
        let e = event("k");
        let repeat = engine(
            vec![
                failed(false, None),
                Outcome::Done {
                    status: Some(200),
                    result: None,
                },
            ],
            true,
        );
        assert!(matches!(
            repeat.deliver_completed(&e, 1).await.verdict,
            Verdict::RetryIn(_)
        ));
        assert_eq!(
            repeat.deliver_completed(&e, 2).await.verdict,
            Verdict::Delivered
        );

        let hold = engine(vec![failed(false, None)], false);
        let a = hold.deliver_completed(&e, 1).await;
        assert_eq!(a.verdict, Verdict::DeadLetter, "a person decides");
        assert_eq!(a.record.unwrap().error.as_deref(), Some("timeout"));
        // Replayed from the dead-letter queue: the claim still holds, nothing is performed.
        let again = hold.deliver_completed(&e, 1).await;
        assert!(matches!(again.verdict, Verdict::RetryIn(_)), "{again:?}");
        assert!(again.record.is_none());
        assert_eq!(
            hold.deliver_completed(&e, 3).await.verdict,
            Verdict::DeadLetter
        );
        assert_eq!(*hold.target.performed.lock().unwrap(), 1);
    }

    #[tokio::test]
    async fn a_skip_is_recorded_with_its_reason_and_claims_nothing() {
        let d = engine(vec![], true);
        let a = d.deliver_completed(&event("skip"), 1).await;
        assert_eq!(a.verdict, Verdict::Skipped);
        let r = a.record.unwrap();
        assert_eq!(
            (r.state.as_str(), r.detail.as_deref()),
            ("skipped", Some("not_needed"))
        );
        assert!(a.completion.is_none());
        assert_eq!(*d.target.performed.lock().unwrap(), 0);
    }

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
