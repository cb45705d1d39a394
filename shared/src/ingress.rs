//! The ingress handler: route, verify, normalise, claim, enqueue, complete, answer. One handler
//! serves both the Lambda function (lambda_http) and the local HTTP server; each adapter only
//! turns its request type into an [`IngressRequest`] and the [`IngressResponse`] back.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::Utc;
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use serde::Serialize;

use crate::config::{
    resolve_secrets, valid_source_name, Config, ConfigError, IngressConfig, SsmReader,
};
use crate::event::Event;
use crate::idempotency::{Accepted, AtomicAccept, Claim, ClaimTimes, IdempotencyStore};
use crate::metrics::{self, Metrics};
use crate::provider::{self, AuthError, Parsed, Provider, WebhookRequest};
use crate::queue::{OutgoingMessage, Queue};

/// Most bytes of header names and values a webhook may carry (providers send a few hundred).
pub const MAX_HEADER_BYTES: usize = 32 * 1024;

/// The body as the transport adapter could read it.
#[derive(Debug, Clone)]
pub enum RequestBody {
    Complete(Bytes),
    /// Longer than the configured limit (declared or counted while reading).
    TooLarge,
    /// The client did not send the whole body in time.
    TimedOut,
}

#[derive(Debug, Clone)]
pub struct IngressRequest {
    pub method: Method,
    pub path: String,
    pub query: Option<String>,
    pub headers: HeaderMap,
    pub body: RequestBody,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IngressResponse {
    pub status: StatusCode,
    /// Seconds, for 503 answers.
    pub retry_after: Option<u64>,
    /// For 405 answers.
    pub allow: Option<&'static str>,
    pub body: String,
    /// The stable error code, for error answers.
    pub error_code: Option<&'static str>,
    /// Why a webhook was not authenticated (`bad_signature`, ...), for 401 answers.
    pub reason: Option<&'static str>,
    /// The ids of the request's events that were accepted or found to be duplicates.
    pub event_ids: Vec<String>,
}

impl IngressResponse {
    fn json(status: StatusCode, body: &impl Serialize) -> IngressResponse {
        IngressResponse {
            status,
            retry_after: None,
            allow: None,
            body: serde_json::to_string(body).expect("answers serialise"),
            error_code: None,
            reason: None,
            event_ids: Vec::new(),
        }
    }

    /// An error answer: `{"status":"error","error":"<code>","message":"..."}`.
    pub fn error(
        status: StatusCode,
        code: &'static str,
        message: impl AsRef<str>,
    ) -> IngressResponse {
        let mut r = IngressResponse::json(
            status,
            &ErrorAnswer {
                status: "error",
                error: code,
                message: message.as_ref(),
            },
        );
        r.error_code = Some(code);
        r
    }

    pub fn into_http(self) -> http::Response<String> {
        let mut r = http::Response::new(self.body);
        *r.status_mut() = self.status;
        let h = r.headers_mut();
        h.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Some(s) = self.retry_after {
            h.insert(http::header::RETRY_AFTER, HeaderValue::from(s));
        }
        if let Some(a) = self.allow {
            h.insert(http::header::ALLOW, HeaderValue::from_static(a));
        }
        r
    }
}

/// The configured sources, by name.
pub type Sources = HashMap<String, Arc<dyn Provider>>;

/// Builds every configured source, resolving its secrets (`ssm` is used only for `ssm:` ones).
pub async fn build_sources(
    config: &Config,
    ssm: Option<&dyn SsmReader>,
) -> Result<Sources, ConfigError> {
    let mut sources = Sources::new();
    for (name, source) in &config.sources {
        let secrets = resolve_secrets(name, &source.secrets, ssm).await?;
        if secrets.is_empty() {
            tracing::warn!(source = %name, "source has no secret: every delivery will be refused 401");
        }
        sources.insert(name.clone(), provider::build(name, source, secrets)?);
    }
    Ok(sources)
}

pub struct Ingress {
    sources: Sources,
    idempotency: Arc<dyn IdempotencyStore>,
    queue: Arc<dyn Queue>,
    metrics: Arc<dyn Metrics>,
    limits: IngressConfig,
    /// Claim, enqueue and complete in one step, where the backend can.
    atomic: Option<Arc<dyn AtomicAccept>>,
}

/// What happened to one event of a request.
enum Outcome {
    Queued,
    Duplicate,
    /// The answer for the whole request (503).
    Stop(IngressResponse),
}

/// A request's route, once the path has been read.
enum Route<'a> {
    Health,
    Webhook {
        source: &'a str,
        type_hint: Option<&'a str>,
    },
}

fn route(path: &str) -> Option<Route<'_>> {
    let path = path.strip_suffix('/').unwrap_or(path);
    if path == "/healthz" {
        return Some(Route::Health);
    }
    let rest = path.strip_prefix("/webhooks/")?;
    let mut parts = rest.split('/');
    let source = parts.next()?;
    let type_hint = parts.next();
    if parts.next().is_some() || type_hint == Some("") {
        return None;
    }
    Some(Route::Webhook { source, type_hint })
}

impl Ingress {
    pub fn new(
        sources: Sources,
        idempotency: Arc<dyn IdempotencyStore>,
        queue: Arc<dyn Queue>,
        metrics: Arc<dyn Metrics>,
        limits: IngressConfig,
    ) -> Ingress {
        Ingress {
            sources,
            idempotency,
            queue,
            metrics,
            limits,
            atomic: None,
        }
    }

    /// Accepts each event with one atomic step of `atomic` instead of the three-step protocol
    /// (the embedded database, whose keys and queue share a transaction).
    pub fn with_atomic_accept(mut self, atomic: Arc<dyn AtomicAccept>) -> Ingress {
        self.atomic = Some(atomic);
        self
    }

    pub fn max_body_bytes(&self) -> usize {
        self.limits.max_body_bytes
    }

    pub fn source_names(&self) -> impl Iterator<Item = &str> {
        self.sources.keys().map(String::as_str)
    }

    /// Answers one HTTP request.
    pub async fn handle(&self, req: IngressRequest) -> IngressResponse {
        let Some(route) = route(&req.path) else {
            return IngressResponse::error(StatusCode::NOT_FOUND, "not_found", "no such route");
        };
        match route {
            Route::Health => {
                if req.method == Method::GET || req.method == Method::HEAD {
                    IngressResponse::json(
                        StatusCode::OK,
                        &Answer {
                            status: "ok",
                            events: None,
                        },
                    )
                } else {
                    let mut r = IngressResponse::error(
                        StatusCode::METHOD_NOT_ALLOWED,
                        "method_not_allowed",
                        "use GET",
                    );
                    r.allow = Some("GET, HEAD");
                    r
                }
            }
            Route::Webhook { source, type_hint } => {
                self.metrics.incr(metrics::RECEIVED, 1);
                let response = self.webhook(&req, source, type_hint).await;
                if let Some(code) = response.error_code {
                    self.metrics
                        .incr(&format!("{}{code}", metrics::REJECTED_PREFIX), 1);
                }
                response
            }
        }
    }

    async fn webhook(
        &self,
        req: &IngressRequest,
        source: &str,
        type_hint: Option<&str>,
    ) -> IngressResponse {
        if req.method != Method::POST {
            let mut r = IngressResponse::error(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "webhooks are delivered with POST",
            );
            r.allow = Some("POST");
            return r;
        }
        let header_bytes: usize = req
            .headers
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len())
            .sum();
        if header_bytes > MAX_HEADER_BYTES {
            return IngressResponse::error(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "headers_too_large",
                format!("headers exceed {MAX_HEADER_BYTES} bytes"),
            );
        }
        let provider = match self.sources.get(source) {
            Some(p) if valid_source_name(source) => p,
            _ => {
                return IngressResponse::error(
                    StatusCode::NOT_FOUND,
                    "unknown_source",
                    "no source of that name is configured",
                )
            }
        };
        let body = match &req.body {
            RequestBody::Complete(b) if b.len() <= self.limits.max_body_bytes => b,
            RequestBody::Complete(_) | RequestBody::TooLarge => {
                return IngressResponse::error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "too_large",
                    format!("body exceeds {} bytes", self.limits.max_body_bytes),
                )
            }
            RequestBody::TimedOut => {
                return IngressResponse::error(
                    StatusCode::REQUEST_TIMEOUT,
                    "timeout",
                    "the body was not received in time",
                )
            }
        };
        let wreq = WebhookRequest {
            source,
            type_hint,
            headers: &req.headers,
            query: req.query.as_deref(),
            body,
            received_at: Utc::now(),
        };
        if let Err(e) = provider.verify(&wreq) {
            if e == AuthError::MissingSignature && provider.is_unsigned_ping(&wreq) {
                tracing::info!(
                    source,
                    "unsigned registration ping answered; nothing queued"
                );
                return self.ping_answer();
            }
            tracing::warn!(
                source,
                reason = e.reason(),
                "webhook refused: not authenticated"
            );
            self.metrics
                .incr(&format!("{}{}", metrics::AUTH_PREFIX, e.reason()), 1);
            let mut r =
                IngressResponse::error(StatusCode::UNAUTHORIZED, "unauthorized", e.to_string());
            r.reason = Some(e.reason());
            return r;
        }
        if provider::json_nesting_exceeds(body, provider::MAX_JSON_DEPTH) {
            tracing::warn!(source, "webhook refused: JSON nested too deeply");
            return IngressResponse::error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!(
                    "JSON nested deeper than {} levels",
                    provider::MAX_JSON_DEPTH
                ),
            );
        }
        let events = match provider.parse(&wreq) {
            Ok(Parsed::Events(mut events)) => {
                let content_type = wreq
                    .headers
                    .get(http::header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                for e in &mut events {
                    e.raw_content_type.clone_from(&content_type);
                }
                events
            }
            Ok(Parsed::Ping) => {
                tracing::info!(source, "registration ping answered; nothing queued");
                return self.ping_answer();
            }
            Err(e) => {
                tracing::warn!(source, error = %e, "webhook refused: unreadable body");
                return IngressResponse::error(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    e.to_string(),
                );
            }
        };
        self.accept(source, events).await
    }

    fn ping_answer(&self) -> IngressResponse {
        self.metrics.incr(metrics::PINGS, 1);
        IngressResponse::json(
            StatusCode::OK,
            &Answer {
                status: "ok",
                events: None,
            },
        )
    }

    /// Claim, enqueue and complete each event.
    async fn accept(&self, source: &str, events: Vec<Event>) -> IngressResponse {
        let mut accepted = Vec::with_capacity(events.len());
        let mut duplicates = 0u64;
        let mut ids = Vec::with_capacity(events.len());
        for event in events {
            let times = ClaimTimes {
                now_ms: Utc::now().timestamp_millis(),
                lease: Duration::from_secs(self.limits.claim_lease_secs),
                ttl: Duration::from_secs(self.limits.idempotency_ttl_secs),
            };
            let outcome = match &self.atomic {
                Some(atomic) => {
                    self.accept_atomically(atomic.as_ref(), source, &event, times)
                        .await
                }
                None => self.accept_in_three_steps(source, &event, times).await,
            };
            match outcome {
                Outcome::Queued => {
                    tracing::info!(
                        source,
                        event_id = %event.id,
                        kind = event.kind.as_str(),
                        status = event.status.map(|s| s.as_str()),
                        "accepted"
                    );
                    ids.push(event.id.clone());
                    accepted.push(event.id);
                }
                Outcome::Duplicate => {
                    tracing::info!(source, event_id = %event.id, "duplicate");
                    self.metrics.incr(metrics::DUPLICATES, 1);
                    duplicates += 1;
                    ids.push(event.id);
                }
                Outcome::Stop(response) => return response,
            }
        }
        let mut answer = if accepted.is_empty() {
            tracing::debug!(source, duplicates, "all duplicates");
            IngressResponse::json(
                StatusCode::OK,
                &Answer {
                    status: "duplicate",
                    events: None,
                },
            )
        } else {
            IngressResponse::json(
                StatusCode::OK,
                &Answer {
                    status: "accepted",
                    events: Some(&accepted),
                },
            )
        };
        answer.event_ids = ids;
        answer
    }

    fn in_progress(retry_after: Duration) -> Outcome {
        let mut r = IngressResponse::error(
            StatusCode::SERVICE_UNAVAILABLE,
            "in_progress",
            "the same event is being accepted by another delivery; retry",
        );
        r.retry_after = Some(retry_after.as_secs());
        Outcome::Stop(r)
    }

    /// The protocol of the idempotency module: claim, enqueue, complete (release on a failed
    /// enqueue).
    async fn accept_in_three_steps(
        &self,
        source: &str,
        event: &Event,
        times: ClaimTimes,
    ) -> Outcome {
        let token = match self
            .idempotency
            .claim(&event.idempotency_key, &event.id, times)
            .await
        {
            Ok(Claim::Acquired(token)) => token,
            Ok(Claim::Completed) => return Outcome::Duplicate,
            Ok(Claim::InProgress { retry_after }) => {
                tracing::info!(source, event_id = %event.id, "same event in progress elsewhere");
                return Self::in_progress(retry_after);
            }
            Err(e) => {
                tracing::error!(source, event_id = %event.id, error = %e, "claim failed");
                return Outcome::Stop(unavailable());
            }
        };
        let message = OutgoingMessage {
            id: event.id.clone(),
            body: event.to_json(),
        };
        if let Err(e) = self.queue.send(std::slice::from_ref(&message)).await {
            tracing::error!(source, event_id = %event.id, error = %e, "enqueue failed; releasing claim");
            if let Err(e) = self
                .idempotency
                .release(&event.idempotency_key, &token)
                .await
            {
                // The lease will run out and free the key for the provider's retry.
                tracing::error!(source, event_id = %event.id, error = %e, "release failed");
            }
            return Outcome::Stop(unavailable());
        }
        // Counted before completing: the count is then never behind an acknowledged event.
        self.metrics.incr(metrics::ACCEPTED, 1);
        if let Err(e) = self
            .idempotency
            .complete(&event.idempotency_key, &token, times)
            .await
        {
            // The event is durably queued: still an ack. If the claim's lease runs out, a
            // retry may queue it once more, with the same event id for downstream to drop.
            tracing::warn!(source, event_id = %event.id, error = %e, "complete failed after enqueue");
        }
        Outcome::Queued
    }

    /// Claim, enqueue and complete as one transaction.
    async fn accept_atomically(
        &self,
        atomic: &dyn AtomicAccept,
        source: &str,
        event: &Event,
        times: ClaimTimes,
    ) -> Outcome {
        let message = OutgoingMessage {
            id: event.id.clone(),
            body: event.to_json(),
        };
        let metrics = self.metrics.clone();
        let counted = Box::new(move || metrics.incr(metrics::ACCEPTED, 1));
        match atomic
            .accept(&event.idempotency_key, &message, times, counted)
            .await
        {
            Ok(Accepted::Queued) => Outcome::Queued,
            Ok(Accepted::Duplicate) => Outcome::Duplicate,
            Ok(Accepted::InProgress { retry_after }) => {
                tracing::info!(source, event_id = %event.id, "same event in progress elsewhere");
                Self::in_progress(retry_after)
            }
            Err(e) => {
                tracing::error!(source, event_id = %event.id, error = %e, "accept failed");
                Outcome::Stop(unavailable())
            }
        }
    }
}

/// A 200 answer: `{"status":"accepted","events":[...]}` or `{"status":"duplicate"}`.
#[derive(Serialize)]
struct Answer<'a> {
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    events: Option<&'a [String]>,
}

/// An error answer: `{"status":"error","error":"<code>","message":"..."}`.
#[derive(Serialize)]
struct ErrorAnswer<'a> {
    status: &'a str,
    error: &'a str,
    message: &'a str,
}

fn unavailable() -> IngressResponse {
    let mut r = IngressResponse::error(
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        "the event could not be stored durably; retry",
    );
    r.retry_after = Some(1);
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;
    use crate::idempotency::memory::MemoryIdempotency;
    use crate::metrics::MemoryMetrics;
    use crate::provider::sendblue::{Sendblue, SIGNATURE_HEADER};
    use crate::queue::{Delivery, QueueError};
    use serde_json::json;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Mutex;

    #[derive(Default)]
    struct VecQueue {
        sent: Mutex<Vec<OutgoingMessage>>,
        fail: AtomicBool,
    }

    #[async_trait::async_trait]
    impl Queue for VecQueue {
        async fn send(&self, m: &[OutgoingMessage]) -> Result<(), QueueError> {
            if self.fail.load(Ordering::SeqCst) {
                return Err(QueueError("down".into()));
            }
            self.sent.lock().unwrap().extend_from_slice(m);
            Ok(())
        }
        async fn receive(&self, _: usize, _: Duration) -> Result<Vec<Delivery>, QueueError> {
            Ok(vec![])
        }
        async fn delete(&self, _: &[String]) -> Result<(), QueueError> {
            Ok(())
        }
    }

    struct Fixture {
        ingress: Ingress,
        queue: Arc<VecQueue>,
        metrics: Arc<MemoryMetrics>,
    }

    fn fixture(max_body: usize) -> Fixture {
        let mut sources: Sources = HashMap::new();
        sources.insert(
            "sendblue".into(),
            Arc::new(Sendblue::new(vec![Secret::new("s3cret")], true)),
        );
        let queue = Arc::new(VecQueue::default());
        let metrics = Arc::new(MemoryMetrics::default());
        let ingress = Ingress::new(
            sources,
            Arc::new(MemoryIdempotency::default()),
            queue.clone(),
            metrics.clone(),
            IngressConfig {
                max_body_bytes: max_body,
                ..IngressConfig::default()
            },
        );
        Fixture {
            ingress,
            queue,
            metrics,
        }
    }

    fn post(path: &str, secret: Option<&str>, body: &str) -> IngressRequest {
        let mut headers = HeaderMap::new();
        if let Some(s) = secret {
            headers.insert(SIGNATURE_HEADER, s.parse().unwrap());
        }
        IngressRequest {
            method: Method::POST,
            path: path.into(),
            query: None,
            headers,
            body: RequestBody::Complete(Bytes::from(body.to_owned())),
        }
    }

    const OUTBOUND: &str = include_str!("../testdata/sendblue/outbound.json");

    fn body_json(r: &IngressResponse) -> serde_json::Value {
        serde_json::from_str(&r.body).unwrap()
    }

    #[tokio::test]
    async fn accepted_then_duplicate() {
        let f = fixture(1024 * 1024);
        let r = f
            .ingress
            .handle(post("/webhooks/sendblue", Some("s3cret"), OUTBOUND))
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        let v = body_json(&r);
        assert_eq!(v["status"], "accepted");
        let id = v["events"][0].as_str().unwrap().to_owned();
        let sent = f.queue.sent.lock().unwrap().clone();
        assert_eq!(sent.len(), 1);
        let ev = Event::from_json(&sent[0].body).unwrap();
        assert_eq!(ev.id, id);
        assert_eq!(ev.raw_body, OUTBOUND);

        let r = f
            .ingress
            .handle(post(
                "/webhooks/sendblue/outbound",
                Some("s3cret"),
                OUTBOUND,
            ))
            .await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(body_json(&r), json!({"status": "duplicate"}));
        assert_eq!(f.queue.sent.lock().unwrap().len(), 1);
        assert_eq!(f.metrics.get("received"), 2);
        assert_eq!(f.metrics.get("accepted"), 1);
        assert_eq!(f.metrics.get("duplicates"), 1);
    }

    #[tokio::test]
    async fn bad_input_gets_its_status_and_code_and_reaches_no_queue() {
        let f = fixture(2048);
        let big = format!("{{\"content\": \"{}\"}}", "x".repeat(4096));
        let cases: Vec<(IngressRequest, StatusCode, &str)> = vec![
            (
                post("/webhooks/sendblue", Some("wrong"), OUTBOUND),
                StatusCode::UNAUTHORIZED,
                "unauthorized",
            ),
            (
                post("/webhooks/sendblue", None, OUTBOUND),
                StatusCode::UNAUTHORIZED,
                "unauthorized",
            ),
            (
                post("/webhooks/sendblue", Some("s3cret"), "not json"),
                StatusCode::BAD_REQUEST,
                "bad_request",
            ),
            (
                post("/webhooks/sendblue", Some("s3cret"), &big),
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
            ),
            (
                post("/webhooks/nosuch", Some("s3cret"), OUTBOUND),
                StatusCode::NOT_FOUND,
                "unknown_source",
            ),
            (
                post("/webhooks/..", Some("s3cret"), OUTBOUND),
                StatusCode::NOT_FOUND,
                "unknown_source",
            ),
            (
                post("/webhooks/sendblue/a/b", Some("s3cret"), OUTBOUND),
                StatusCode::NOT_FOUND,
                "not_found",
            ),
            (
                post("/elsewhere", Some("s3cret"), OUTBOUND),
                StatusCode::NOT_FOUND,
                "not_found",
            ),
            (
                IngressRequest {
                    method: Method::GET,
                    ..post("/webhooks/sendblue", None, "")
                },
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
            ),
            (
                IngressRequest {
                    body: RequestBody::TooLarge,
                    ..post("/webhooks/sendblue", Some("s3cret"), "")
                },
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
            ),
        ];
        for (req, status, code) in cases {
            let path = req.path.clone();
            let r = f.ingress.handle(req).await;
            assert_eq!(r.status, status, "{path}: {}", r.body);
            let v = body_json(&r);
            assert_eq!(v["status"], "error");
            assert_eq!(v["error"], code, "{path}");
            assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()));
            assert!(!r.body.contains("s3cret"));
        }
        assert!(f.queue.sent.lock().unwrap().is_empty());
        assert_eq!(f.metrics.get("rejected.unauthorized"), 2);
        assert_eq!(f.metrics.get("auth.bad_signature"), 1);
        assert_eq!(f.metrics.get("auth.missing_signature"), 1);
        assert_eq!(f.metrics.get("rejected.too_large"), 2);
    }

    #[tokio::test]
    async fn verified_unrecognised_json_is_accepted_as_unknown() {
        let f = fixture(4096);
        let r = f
            .ingress
            .handle(post(
                "/webhooks/sendblue",
                Some("s3cret"),
                "{\"surprise\": [1]}",
            ))
            .await;
        assert_eq!(r.status, StatusCode::OK);
        let ev = Event::from_json(&f.queue.sent.lock().unwrap()[0].body).unwrap();
        assert_eq!(ev.kind, crate::event::EventKind::Unknown);
        assert_eq!(ev.raw_body, "{\"surprise\": [1]}");
    }

    #[tokio::test]
    async fn queue_failure_answers_503_and_releases_the_claim() {
        let f = fixture(4096);
        f.queue.fail.store(true, Ordering::SeqCst);
        let r = f
            .ingress
            .handle(post("/webhooks/sendblue", Some("s3cret"), OUTBOUND))
            .await;
        assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.retry_after, Some(1));
        assert_eq!(body_json(&r)["error"], "unavailable");
        f.queue.fail.store(false, Ordering::SeqCst);
        let r = f
            .ingress
            .handle(post("/webhooks/sendblue", Some("s3cret"), OUTBOUND))
            .await;
        assert_eq!(body_json(&r)["status"], "accepted", "the retry succeeds");
        assert_eq!(f.queue.sent.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn healthz() {
        let f = fixture(10);
        let r = f
            .ingress
            .handle(IngressRequest {
                method: Method::GET,
                ..post("/healthz", None, "")
            })
            .await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(f.metrics.get("received"), 0);
    }
}
