//! The inspector: a page at `/` and a JSON API under `/_bluehook/api/` served by `bluehook dev`
//! beside the webhooks. It shows every request received (from the ring in [`ring`]), each
//! event's normalised JSON, routes and delivery attempts (the same data as `bluehook events`),
//! the dead-letter queues, and the delivery and read rates of the analytics archive; it sends
//! samples, redelivers an event to a destination and replays a dead-letter queue.
//!
//! Who may use it: on a loopback listen address anyone on this machine who names it by a
//! loopback host (a page elsewhere that rebinds its name to 127.0.0.1 is refused); on any other
//! address nobody, unless `--inspector-token` is given, and then every request needs
//! `Authorization: Bearer <token>`. Actions are POSTs refused from another origin.

pub mod ring;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, Limited, StreamBody};
use hyper::body::{Frame, Incoming};
use rusqlite::OptionalExtension;
use serde_json::{json, Value};
use tokio::sync::{broadcast, mpsc, watch};

use crate::delivery::local::{list_events, queue_name, show_event, ListFilter};
use crate::delivery::DeliveryMessage;
use crate::ingress::{IngressResponse, RequestBody};
use crate::metrics::Stats;
use crate::provider::{Provider, SampleOptions};
use crate::queue::{OutgoingMessage, Queue, SqliteQueue};
use crate::sqlite::Db;

use ring::{RequestFilter, RequestRecord};

/// The body of every answer of the local server.
pub type Body = UnsyncBoxBody<Bytes, Infallible>;

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).boxed_unsync()
}

const INDEX_HTML: &str = include_str!("index.html");
const INSPECTOR_JS: &str = include_str!("inspector.js");
const INSPECTOR_CSS: &str = include_str!("inspector.css");

/// Where the inspector's API lives.
pub const API: &str = "/_bluehook/api/";

/// Who may use the inspector.
#[derive(Clone)]
pub enum Access {
    /// Loopback listen address, no token: requests that name the server by a loopback host.
    Loopback,
    /// Every request carries `Authorization: Bearer <token>`.
    Token(String),
    /// Non-loopback listen address without a token: no inspector.
    Off,
}

impl Access {
    pub fn decide(listen: SocketAddr, token: Option<String>) -> Access {
        match token {
            Some(t) => Access::Token(t),
            None if listen.ip().is_loopback() => Access::Loopback,
            None => Access::Off,
        }
    }
}

impl std::fmt::Debug for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Access::Loopback => "Loopback",
            Access::Token(_) => "Token(<redacted>)",
            Access::Off => "Off",
        })
    }
}

/// What the inspector is built from.
pub struct InspectorParts {
    pub db: Db,
    pub access: Access,
    /// The server's own address (samples are posted to it).
    pub listen: SocketAddr,
    /// The configured sources, by name, with their providers (samples are signed with them).
    pub sources: Vec<(String, Arc<dyn Provider>)>,
    /// Header names that carry signatures for some source (beyond the usual names).
    pub secret_headers: Vec<String>,
    /// The destinations' queues, by destination name.
    pub destinations: BTreeMap<String, SqliteQueue>,
    /// The local queues of the pipeline (events and the sinks').
    pub queues: Vec<String>,
    pub analytics_dir: PathBuf,
    pub shutdown: watch::Receiver<bool>,
}

pub struct Inspector {
    parts: InspectorParts,
    live: broadcast::Sender<Bytes>,
    /// Requests to record: written in batches by one task, off the answers' path.
    recorder: mpsc::UnboundedSender<RequestRecord>,
    client: reqwest::Client,
    rates: Mutex<Option<(Instant, Value)>>,
}

type Answer = Response<Body>;

fn json_answer(status: StatusCode, value: &Value) -> Answer {
    let mut r = Response::new(full(value.to_string()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn error(status: StatusCode, code: &str, message: impl AsRef<str>) -> Answer {
    json_answer(
        status,
        &json!({"status": "error", "error": code, "message": message.as_ref()}),
    )
}

fn ok(value: impl serde::Serialize) -> Answer {
    json_answer(
        StatusCode::OK,
        &serde_json::to_value(value).unwrap_or(Value::Null),
    )
}

fn internal(e: impl std::fmt::Display) -> Answer {
    tracing::error!(error = %e, "inspector request failed");
    error(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        "the data folder could not be read; see the log",
    )
}

fn asset(content_type: &'static str, body: &'static str) -> Answer {
    let mut r = Response::new(full(body));
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

/// Headers every inspector answer carries: nothing of it is cached, framed, sniffed, or allowed
/// to load or run anything but the inspector's own script and style.
fn harden(headers: &mut HeaderMap) {
    let set = |h: &mut HeaderMap, k: &'static str, v: &'static str| {
        h.insert(k, HeaderValue::from_static(v));
    };
    set(
        headers,
        "content-security-policy",
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
         img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    );
    set(headers, "x-content-type-options", "nosniff");
    set(headers, "x-frame-options", "DENY");
    set(headers, "referrer-policy", "no-referrer");
    set(headers, "cache-control", "no-store");
}

/// Whether `host` (a Host header: name and optional port) names this machine's loopback.
fn loopback_host(host: &str) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        host.rsplit_once(':').map_or(host, |(n, _)| n)
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn query_map(query: Option<&str>) -> BTreeMap<String, String> {
    form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .into_owned()
        .collect()
}

impl Inspector {
    /// The inspector, or `None` when it is off. Starts the task that tells open pages when
    /// deliveries or routed events change.
    pub fn start(parts: InspectorParts) -> Option<Arc<Inspector>> {
        if matches!(parts.access, Access::Off) {
            return None;
        }
        let (live, _) = broadcast::channel(1024);
        let (recorder, records) = mpsc::unbounded_channel();
        tokio::spawn(record_batches(parts.db.clone(), records, live.clone()));
        let inspector = Arc::new(Inspector {
            parts,
            live,
            recorder,
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("an HTTP client builds"),
            rates: Mutex::new(None),
        });
        tokio::spawn(watch_changes(inspector.clone()));
        Some(inspector)
    }

    /// Whether a request for `path` is the inspector's (never a webhook's: those are under
    /// `/webhooks/`).
    pub fn claims(path: &str) -> bool {
        path == "/" || path.starts_with("/_bluehook/")
    }

    /// Records an answered webhook request in the ring and shows it on open pages. The answer
    /// does not wait for the write: requests are written in batches, each riding the next group
    /// commit.
    pub fn observe(
        &self,
        method: &Method,
        uri: &http::Uri,
        headers: &HeaderMap,
        body: &RequestBody,
        answer: &IngressResponse,
        took: Duration,
    ) {
        let path = uri.path();
        let source = path
            .strip_prefix("/webhooks/")
            .and_then(|rest| rest.split('/').next())
            .filter(|s| !s.is_empty())
            .map(str::to_owned);
        let parsed: Value = serde_json::from_str(&answer.body).unwrap_or(Value::Null);
        let outcome = match (answer.status.as_u16(), parsed["status"].as_str()) {
            (500.., _) => "unavailable",
            (400.., _) => "refused",
            (_, Some("accepted")) => "accepted",
            (_, Some("duplicate")) => "duplicate",
            _ => "ping",
        };
        let reason = answer
            .reason
            .map(str::to_owned)
            .or_else(|| parsed["message"].as_str().map(str::to_owned));
        let extra = &self.parts.secret_headers;
        let headers: Vec<(String, String)> = headers
            .iter()
            .map(|(k, v)| {
                let value = if ring::is_secret_name(k.as_str(), extra) {
                    ring::REDACTED.to_owned()
                } else {
                    String::from_utf8_lossy(v.as_bytes()).into_owned()
                };
                (k.as_str().to_owned(), value)
            })
            .collect();
        let (kept, body_bytes) = match body {
            RequestBody::Complete(b) => (b[..b.len().min(ring::MAX_BODY)].to_vec(), b.len()),
            RequestBody::TooLarge | RequestBody::TimedOut => (Vec::new(), 0),
        };
        let record = RequestRecord {
            at_ms: chrono::Utc::now().timestamp_millis() - took.as_millis() as i64,
            method: method.as_str().to_owned(),
            path: ring::redact_query(path, uri.query()),
            source,
            status: answer.status.as_u16(),
            outcome,
            code: answer.error_code.map(str::to_owned),
            reason,
            event_ids: answer.event_ids.clone(),
            headers,
            body: kept,
            body_bytes,
            duration_us: took.as_micros() as u64,
        };
        let _ = self.recorder.send(record);
    }

    /// Answers a request for a path [`Inspector::claims`].
    pub async fn handle(&self, req: http::Request<Incoming>) -> Answer {
        let mut answer = self.guarded(req).await;
        harden(answer.headers_mut());
        answer
    }

    async fn guarded(&self, req: http::Request<Incoming>) -> Answer {
        let headers = req.headers();
        match &self.parts.access {
            Access::Off => {
                return error(StatusCode::NOT_FOUND, "not_found", "no such route");
            }
            Access::Loopback => {
                let host = headers
                    .get(header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .unwrap_or("");
                if !loopback_host(host) {
                    return error(
                        StatusCode::FORBIDDEN,
                        "forbidden_host",
                        "the inspector answers only to a loopback host name (localhost, 127.0.0.1, [::1])",
                    );
                }
            }
            Access::Token(token) => {
                let presented = headers
                    .get(header::AUTHORIZATION)
                    .and_then(|h| h.to_str().ok())
                    .and_then(|h| h.strip_prefix("Bearer "))
                    .unwrap_or("");
                let same: bool =
                    subtle::ConstantTimeEq::ct_eq(presented.as_bytes(), token.as_bytes()).into();
                if !same {
                    let mut r = error(
                        StatusCode::UNAUTHORIZED,
                        "unauthorized",
                        "the inspector needs `Authorization: Bearer <the --inspector-token>`",
                    );
                    r.headers_mut().insert(
                        header::WWW_AUTHENTICATE,
                        HeaderValue::from_static("Bearer realm=\"bluehook inspector\""),
                    );
                    return r;
                }
            }
        }
        if req.method() == Method::POST {
            if let Some(refusal) = cross_origin(headers) {
                return refusal;
            }
        }
        self.route(req).await
    }

    async fn route(&self, req: http::Request<Incoming>) -> Answer {
        let method = req.method().clone();
        let path = req.uri().path().to_owned();
        let query = query_map(req.uri().query());
        let get = method == Method::GET || method == Method::HEAD;
        let post = method == Method::POST;
        let segments: Vec<&str> = path
            .strip_prefix(API)
            .map(|p| p.split('/').collect())
            .unwrap_or_default();
        match (path.as_str(), segments.as_slice()) {
            ("/", _) if get => asset("text/html; charset=utf-8", INDEX_HTML),
            ("/_bluehook/inspector.js", _) if get => {
                asset("text/javascript; charset=utf-8", INSPECTOR_JS)
            }
            ("/_bluehook/inspector.css", _) if get => {
                asset("text/css; charset=utf-8", INSPECTOR_CSS)
            }
            (_, ["requests"]) if get => self.requests(&query).await,
            (_, ["requests", seq]) if get => match seq.parse::<i64>() {
                Ok(seq) => match ring::get(&self.parts.db, seq).await {
                    Ok(Some(d)) => ok(d),
                    Ok(None) => error(StatusCode::NOT_FOUND, "not_found", "no such request"),
                    Err(e) => internal(e),
                },
                Err(_) => error(StatusCode::NOT_FOUND, "not_found", "no such request"),
            },
            (_, ["events"]) if get => self.events(&query).await,
            (_, ["events", id]) if get => self.event(id).await,
            (_, ["events", id, "redeliver"]) if post => {
                let body = read_json(req).await;
                self.redeliver(id, body).await
            }
            (_, ["samples"]) if get => self.samples(),
            (_, ["samples", name]) if post => {
                let name = name.to_string();
                let body = read_json(req).await;
                self.send_sample(&name, body).await
            }
            (_, ["stats"]) if get => self.stats().await,
            (_, ["dlq"]) if get => self.dlq().await,
            (_, ["dlq", queue, "replay"]) if post => self.replay(queue).await,
            (_, ["rates"]) if get => self.rates(&query).await,
            (_, ["stream"]) if get => self.stream(),
            _ => {
                let known = matches!(
                    (path.as_str(), segments.as_slice()),
                    ("/", _)
                        | ("/_bluehook/inspector.js", _)
                        | ("/_bluehook/inspector.css", _)
                        | (
                            _,
                            ["requests"] | ["requests", _] | ["events"] | ["events", _]
                        )
                        | (_, ["events", _, "redeliver"] | ["samples"] | ["samples", _])
                        | (
                            _,
                            ["stats"] | ["dlq"] | ["dlq", _, "replay"] | ["rates"] | ["stream"]
                        )
                );
                if known {
                    error(
                        StatusCode::METHOD_NOT_ALLOWED,
                        "method_not_allowed",
                        "reads are GETs, actions are POSTs",
                    )
                } else {
                    error(StatusCode::NOT_FOUND, "not_found", "no such route")
                }
            }
        }
    }

    async fn requests(&self, q: &BTreeMap<String, String>) -> Answer {
        let nonempty = |k: &str| q.get(k).filter(|v| !v.is_empty()).cloned();
        let filter = RequestFilter {
            source: nonempty("source"),
            outcome: nonempty("outcome"),
            destination: nonempty("destination"),
            search: nonempty("q"),
            before: q.get("before").and_then(|v| v.parse().ok()),
            limit: q
                .get("limit")
                .and_then(|v| v.parse().ok())
                .unwrap_or(100usize)
                .min(1000),
        };
        match ring::list(&self.parts.db, filter).await {
            Ok(list) => ok(json!({ "requests": list })),
            Err(e) => internal(e),
        }
    }

    /// The same list as `bluehook events list --json`.
    async fn events(&self, q: &BTreeMap<String, String>) -> Answer {
        let nonempty = |k: &str| q.get(k).filter(|v| !v.is_empty()).cloned();
        let filter = ListFilter {
            source: nonempty("source"),
            destination: nonempty("destination"),
            failed: q.get("failed").is_some_and(|v| v == "true" || v == "1"),
            limit: q
                .get("limit")
                .and_then(|v| v.parse().ok())
                .unwrap_or(20usize)
                .min(1000),
        };
        match list_events(&self.parts.db, filter).await {
            Ok(list) => ok(list),
            Err(e) => internal(e),
        }
    }

    /// `bluehook events show --json`, with the requests that carried the event (headers
    /// redacted, the first one's raw body) and where it is now.
    async fn event(&self, id: &str) -> Answer {
        let (view, requests) = match tokio::try_join!(
            show_event(&self.parts.db, id),
            ring::of_event(&self.parts.db, id)
        ) {
            Ok(v) => v,
            Err(e) => return internal(e),
        };
        let (request, carried) = requests;
        if view.is_none() && request.is_none() {
            return error(StatusCode::NOT_FOUND, "not_found", "no event of that id");
        }
        let mut out = match &view {
            Some(v) => serde_json::to_value(v).unwrap_or(Value::Null),
            None => json!({"event": null, "routes": [], "deliveries": {}, "attempts": []}),
        };
        let state = match &view {
            None => "queued",
            Some(v) if !v.routed => "queued",
            Some(v) if v.deliveries.values().any(|s| s == "dead_lettered") => "dead_lettered",
            Some(v) if v.deliveries.values().any(|s| s == "retrying") => "retrying",
            Some(v) if v.deliveries.values().any(|s| s == "queued") => "queued",
            Some(_) => "delivered",
        };
        out["state"] = json!(state);
        out["request"] = serde_json::to_value(&request).unwrap_or(Value::Null);
        out["requests"] = serde_json::to_value(&carried).unwrap_or(Value::Null);
        out["destinations"] = json!(self.parts.destinations.keys().collect::<Vec<_>>());
        ok(out)
    }

    /// Sends event `id` to one destination again, even if it was delivered: its effect key is
    /// released and a delivery queued. Refused while a delivery of it is under way.
    async fn redeliver(&self, id: &str, body: Result<Value, Answer>) -> Answer {
        let body = match body {
            Ok(b) => b,
            Err(refusal) => return refusal,
        };
        let Some(name) = body["destination"].as_str().map(str::to_owned) else {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "send {\"destination\": \"<name>\"}",
            );
        };
        let Some(queue) = self.parts.destinations.get(&name) else {
            return error(
                StatusCode::NOT_FOUND,
                "unknown_destination",
                format!(
                    "no destination `{name}` (configured: {})",
                    self.parts
                        .destinations
                        .keys()
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            );
        };
        let (id, key) = (id.to_owned(), format!("effect:destination:{name}:{id}"));
        let dest = name.clone();
        let released = self
            .parts
            .db
            .write(move |c| {
                let Some(event) = c
                    .query_row("SELECT event FROM events_index WHERE id = ?1", [&id], |r| {
                        r.get::<_, String>(0)
                    })
                    .optional()?
                else {
                    return Ok(Err(StatusCode::NOT_FOUND));
                };
                let busy: bool = c
                    .query_row(
                        "SELECT state = 'in_progress' AND lease_until_ms > ?2 FROM idempotency
                         WHERE key = ?1",
                        rusqlite::params![key, crate::sqlite::now_ms()],
                        |r| r.get(0),
                    )
                    .optional()?
                    .unwrap_or(false);
                if busy {
                    return Ok(Err(StatusCode::CONFLICT));
                }
                c.execute("DELETE FROM idempotency WHERE key = ?1", [&key])?;
                c.execute(
                    "UPDATE events_index SET routes = routes || ',' || ?2
                     WHERE id = ?1 AND instr(',' || routes || ',', ',' || ?2 || ',') = 0",
                    [&id, &dest],
                )?;
                Ok(Ok(event))
            })
            .await;
        let event = match released {
            Ok(Ok(event)) => event,
            Ok(Err(StatusCode::NOT_FOUND)) => {
                return error(
                    StatusCode::NOT_FOUND,
                    "not_found",
                    "no routed event of that id (it may still be queued)",
                )
            }
            Ok(Err(_)) => {
                return error(
                    StatusCode::CONFLICT,
                    "delivery_in_progress",
                    format!("a delivery of this event to `{name}` is under way; try again when it has finished"),
                )
            }
            Err(e) => return internal(e),
        };
        let message = OutgoingMessage {
            id: format!(
                "{}:{name}:redeliver:{}",
                body_id(&event),
                uuid::Uuid::new_v4().simple()
            ),
            body: DeliveryMessage::envelope(&name, &event),
        };
        match queue.send(&[message]).await {
            Ok(()) => {
                tracing::info!(destination = %name, "event queued for redelivery from the inspector");
                json_answer(
                    StatusCode::ACCEPTED,
                    &json!({"status": "queued", "destination": name, "queue": queue_name(&name)}),
                )
            }
            Err(e) => internal(e),
        }
    }

    fn samples(&self) -> Answer {
        let names = crate::provider::sample_names();
        let samples: Vec<Value> = self
            .parts
            .sources
            .iter()
            .flat_map(|(source, p)| {
                let prefix = format!("{}.", p.name());
                names
                    .iter()
                    .filter(move |n| n.starts_with(&prefix))
                    .map(move |n| json!({"sample": n, "source": source}))
            })
            .collect();
        ok(json!({ "samples": samples }))
    }

    /// Signs sample `name` (`<provider>.<event>`) with a source's first secret and posts it to
    /// this server, as `bluehook send` does; answers with the server's answer.
    async fn send_sample(&self, name: &str, body: Result<Value, Answer>) -> Answer {
        let body = match body {
            Ok(b) => b,
            Err(refusal) => return refusal,
        };
        let Some((provider, event)) = name.split_once('.') else {
            return error(
                StatusCode::NOT_FOUND,
                "unknown_sample",
                "samples are named <provider>.<event>",
            );
        };
        if !crate::provider::sample_names().iter().any(|n| n == name) {
            return error(
                StatusCode::NOT_FOUND,
                "unknown_sample",
                format!("no sample `{name}`"),
            );
        }
        let wanted = body["source"].as_str();
        let source = self
            .parts
            .sources
            .iter()
            .filter(|(s, p)| p.name() == provider && wanted.is_none_or(|w| w == s))
            .min_by_key(|(s, _)| (s != provider, s.clone()));
        let Some((source, signer)) = source else {
            return error(
                StatusCode::NOT_FOUND,
                "unknown_source",
                format!("no configured `{provider}` source to send `{name}` to"),
            );
        };
        let text = |k: &str| {
            body[k]
                .as_str()
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
        };
        let opts = SampleOptions {
            status: text("status"),
            handle: text("handle"),
            content: text("content"),
        };
        let listen = self.parts.listen;
        let host = match listen.ip() {
            ip if ip.is_unspecified() && ip.is_ipv6() => "[::1]".to_owned(),
            ip if ip.is_unspecified() => "127.0.0.1".to_owned(),
            std::net::IpAddr::V6(ip) => format!("[{ip}]"),
            ip => ip.to_string(),
        };
        let url = format!("http://{host}:{}/webhooks/{source}", listen.port());
        let req = match signer.sample(event, &opts, &url) {
            Ok(r) => r,
            Err(e) => return error(StatusCode::BAD_REQUEST, "bad_request", e),
        };
        let mut builder = self
            .client
            .post(&req.url)
            .header(header::CONTENT_TYPE, req.content_type)
            .body(req.body);
        for (k, v) in &req.headers {
            builder = builder.header(k, v);
        }
        match builder.send().await {
            Ok(r) => {
                let status = r.status().as_u16();
                let text = r.text().await.unwrap_or_default();
                let answer = serde_json::from_str::<Value>(&text).unwrap_or(Value::String(text));
                ok(
                    json!({"sample": name, "source": source, "url": req.url, "status": status, "answer": answer}),
                )
            }
            Err(e) => error(
                StatusCode::BAD_GATEWAY,
                "send_failed",
                format!(
                    "posting the sample failed: {}",
                    crate::destinations::error_class(&e)
                ),
            ),
        }
    }

    fn all_queues(&self) -> Vec<String> {
        self.parts
            .queues
            .iter()
            .cloned()
            .chain(self.parts.destinations.keys().map(|d| queue_name(d)))
            .collect()
    }

    /// `bluehook stats --json` of this data folder, the destinations' queues included.
    async fn stats(&self) -> Answer {
        let queues = self.all_queues();
        let names: Vec<&str> = queues.iter().map(String::as_str).collect();
        match Stats::load(&self.parts.db, &names).await {
            Ok(s) => ok(s),
            Err(e) => internal(e),
        }
    }

    /// Every queue with its depth and its dead-letter queue's.
    async fn dlq(&self) -> Answer {
        let queues = self.all_queues();
        let names: Vec<&str> = queues.iter().map(String::as_str).collect();
        match Stats::load(&self.parts.db, &names).await {
            Ok(s) => {
                let list: Vec<Value> = s
                    .queues
                    .iter()
                    .map(|(q, st)| {
                        json!({
                            "queue": q,
                            "destination": q.strip_prefix("dest-"),
                            "queued": st.queued,
                            "dead_lettered": st.dead_lettered,
                        })
                    })
                    .collect();
                ok(json!({ "queues": list }))
            }
            Err(e) => internal(e),
        }
    }

    /// Moves every message of `<queue>-dlq` back to `queue`, as `bluehook replay` does.
    async fn replay(&self, queue: &str) -> Answer {
        let known = self.all_queues();
        if !known.iter().any(|q| q == queue) {
            return error(
                StatusCode::NOT_FOUND,
                "unknown_queue",
                format!("no queue `{queue}` (known: {})", known.join(", ")),
            );
        }
        let q = SqliteQueue::new(self.parts.db.clone(), queue, Duration::from_secs(30), 5);
        match q.dead_letter_queue().move_to(queue, u64::MAX).await {
            Ok(moved) => {
                tracing::info!(
                    queue,
                    moved,
                    "dead-letter queue replayed from the inspector"
                );
                ok(json!({"queue": queue, "moved": moved}))
            }
            Err(e) => internal(e),
        }
    }

    /// The delivery and read rates of the analytics archive over `buckets` intervals (24 by
    /// default); read again at most every five seconds.
    async fn rates(&self, q: &BTreeMap<String, String>) -> Answer {
        let buckets = q
            .get("buckets")
            .and_then(|v| v.parse().ok())
            .unwrap_or(24usize)
            .clamp(1, 200);
        if let Some((at, v)) = self.rates.lock().unwrap().as_ref() {
            if at.elapsed() < Duration::from_secs(5)
                && v["buckets"].as_array().map(Vec::len) == Some(buckets)
            {
                return ok(v.clone());
            }
        }
        let dir = self.parts.analytics_dir.clone();
        let computed = tokio::task::spawn_blocking(move || {
            let events = crate::analytics::read_archive(&dir);
            let summary = crate::analytics::summarise(&events);
            json!({
                "buckets": crate::analytics::rate_series(&events, buckets),
                "delivery_rate": summary.delivery_rate,
                "read_rate": summary.read_rate,
                "messages_sent": summary.messages_sent,
            })
        })
        .await;
        match computed {
            Ok(v) => {
                *self.rates.lock().unwrap() = Some((Instant::now(), v.clone()));
                ok(v)
            }
            Err(e) => internal(e),
        }
    }

    /// Server-sent events: `request` for each request answered, `changed` when deliveries or
    /// routed events changed; a comment every 15 s keeps the connection open.
    fn stream(&self) -> Answer {
        let mut rx = self.live.subscribe();
        let mut stop = self.parts.shutdown.clone();
        let (tx, mut out) = mpsc::channel::<Bytes>(256);
        tokio::spawn(async move {
            if tx
                .send(Bytes::from_static(b"retry: 2000\n: connected\n\n"))
                .await
                .is_err()
            {
                return;
            }
            loop {
                let next = tokio::select! {
                    m = rx.recv() => match m {
                        Ok(m) => m,
                        Err(broadcast::error::RecvError::Lagged(n)) => {
                            Bytes::from(format!("event: lagged\ndata: {n}\n\n"))
                        }
                        Err(broadcast::error::RecvError::Closed) => return,
                    },
                    _ = tokio::time::sleep(Duration::from_secs(15)) => Bytes::from_static(b": ping\n\n"),
                    _ = stop.changed() => return,
                    _ = tx.closed() => return,
                };
                if tx.send(next).await.is_err() {
                    return;
                }
            }
        });
        let frames = futures_util::stream::poll_fn(move |cx| {
            out.poll_recv(cx)
                .map(|m| m.map(|b| Ok::<_, Infallible>(Frame::data(b))))
        });
        let mut r = Response::new(StreamBody::new(frames).boxed_unsync());
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        r
    }
}

/// Writes the requests `observe` hands over, as many as are waiting in one write (up to 512),
/// then shows them on open pages.
async fn record_batches(
    db: Db,
    mut records: mpsc::UnboundedReceiver<RequestRecord>,
    live: broadcast::Sender<Bytes>,
) {
    while let Some(first) = records.recv().await {
        let mut batch = vec![first];
        while batch.len() < 512 {
            match records.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        match ring::record(&db, batch).await {
            Ok(summaries) => {
                for s in summaries {
                    let data = serde_json::to_string(&s).unwrap_or_default();
                    let _ = live.send(Bytes::from(format!("event: request\ndata: {data}\n\n")));
                }
            }
            Err(e) => tracing::warn!(error = %e, "the inspector could not record requests"),
        }
    }
}

/// The event id inside an event's JSON.
fn body_id(event_json: &str) -> String {
    serde_json::from_str::<Value>(event_json)
        .ok()
        .and_then(|v| v["id"].as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// A POST from a page of another origin (or marked cross-site by the browser) is refused.
fn cross_origin(headers: &HeaderMap) -> Option<Answer> {
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    let refused = || {
        Some(error(
            StatusCode::FORBIDDEN,
            "cross_origin",
            "inspector actions are accepted only from the inspector's own page",
        ))
    };
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("");
        let own = host.is_some_and(|h| {
            origin.eq_ignore_ascii_case(&format!("http://{h}"))
                || origin.eq_ignore_ascii_case(&format!("https://{h}"))
        });
        if !own {
            return refused();
        }
    }
    match headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
        Some("same-origin") | Some("none") | None => None,
        Some(_) => refused(),
    }
}

/// An action's JSON body (up to 64 KiB; empty means `{}`).
async fn read_json(req: http::Request<Incoming>) -> Result<Value, Answer> {
    let body = Limited::new(req.into_body(), 64 * 1024);
    let bytes = match body.collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return Err(error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                "an action's body is at most 64 KiB",
            ))
        }
    };
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(json!({}));
    }
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(v) if v.is_object() => Ok(v),
        _ => Err(error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "an action's body is a JSON object",
        )),
    }
}

/// Twice a second while a page is open: tells it when attempts were recorded, events routed, or
/// dead-letter queues changed, so it refreshes what it shows (one read each, not a poll per
/// page).
async fn watch_changes(inspector: Arc<Inspector>) {
    let mut stop = inspector.parts.shutdown.clone();
    let mut last: Option<(i64, i64, i64)> = None;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = stop.changed() => return,
        }
        if inspector.live.receiver_count() == 0 {
            last = None;
            continue;
        }
        let now = inspector
            .parts
            .db
            .read(|c| {
                let max = |sql: &str| c.query_row(sql, [], |r| r.get::<_, i64>(0));
                Ok((
                    max("SELECT coalesce(max(seq), 0) FROM delivery_attempts")?,
                    max("SELECT coalesce(max(seq), 0) FROM events_index")?,
                    max("SELECT count(*) FROM queue_messages WHERE queue LIKE '%-dlq'")?,
                ))
            })
            .await;
        let Ok(now) = now else { continue };
        if last.is_some_and(|l| l != now) {
            let data = json!({"attempts": now.0, "events": now.1, "dead_lettered": now.2});
            let _ = inspector
                .live
                .send(Bytes::from(format!("event: changed\ndata: {data}\n\n")));
        }
        last = Some(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts_are_recognised_and_rebound_names_are_not() {
        for h in [
            "127.0.0.1:3000",
            "localhost:3000",
            "[::1]:3000",
            "127.0.0.2",
            "LOCALHOST",
        ] {
            assert!(loopback_host(h), "{h}");
        }
        for h in [
            "evil.example:3000",
            "10.0.0.1:3000",
            "",
            "[::2]:3000",
            "localhost.evil.example",
        ] {
            assert!(!loopback_host(h), "{h}");
        }
    }

    #[test]
    fn posts_from_other_origins_are_refused() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("127.0.0.1:3000"));
        assert!(
            cross_origin(&h).is_none(),
            "no Origin: a script, not a page"
        );
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://127.0.0.1:3000"),
        );
        assert!(cross_origin(&h).is_none());
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://evil.example"),
        );
        assert_eq!(cross_origin(&h).unwrap().status(), StatusCode::FORBIDDEN);
        h.remove(header::ORIGIN);
        h.insert("sec-fetch-site", HeaderValue::from_static("cross-site"));
        assert_eq!(cross_origin(&h).unwrap().status(), StatusCode::FORBIDDEN);
    }

    #[test]
    fn secret_headers_and_query_values_are_redacted() {
        for n in [
            "webhook-signature",
            "X-Twilio-Signature",
            "sb-signing-secret",
            "authorization",
            "x-api-key",
            "br-secret",
        ] {
            assert!(ring::is_secret_name(n, &[]), "{n}");
        }
        assert!(ring::is_secret_name("x-custom", &["x-custom".into()]));
        assert!(!ring::is_secret_name("content-type", &[]));
        assert_eq!(
            ring::redact_query("/webhooks/a", Some("token=abc&x=1")),
            "/webhooks/a?token=<redacted>&x=1"
        );
    }

    #[test]
    fn access_follows_the_listen_address_and_the_token() {
        let lo: SocketAddr = "127.0.0.1:3000".parse().unwrap();
        let any: SocketAddr = "0.0.0.0:3000".parse().unwrap();
        assert!(matches!(Access::decide(lo, None), Access::Loopback));
        assert!(matches!(Access::decide(any, None), Access::Off));
        assert!(matches!(
            Access::decide(any, Some("t".into())),
            Access::Token(_)
        ));
        assert_eq!(
            format!("{:?}", Access::Token("s3cret".into())),
            "Token(<redacted>)"
        );
    }
}
