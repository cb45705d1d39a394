//! An HTTP proxy for tests and benchmarks, put between a client and a service (moto, a fake
//! Twilio or CRM): it forwards every request, counts them by AWS action, and on command injects
//! a fault into the requests that match: refuse the connection, delay, answer 5xx, or cut the
//! response in the middle. On command it also passes DynamoDB's writes to the service one at a
//! time ([`Proxy::serialize_dynamodb_writes`]).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

type ProxyBody = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

/// What to do to a matching request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Close the connection without answering.
    Refuse,
    /// Forward after a pause.
    Delay(Duration),
    /// Answer this status without forwarding (an AWS-style JSON error body).
    Status(u16),
    /// Forward, then send the response head and half its body and close the connection.
    Cut,
    /// Neither forward nor answer: the request never reaches the service.
    Hang,
}

struct Rule {
    /// Matches the request's action (`DynamoDB_20120810.PutItem`, `AmazonSQS.SendMessage`,
    /// `S3 PUT`, `POST /path`); empty matches everything.
    action: String,
    fault: Fault,
    /// How many more requests it applies to; `None`: until cleared.
    remaining: Option<usize>,
}

#[derive(Default)]
struct State {
    counts: Mutex<BTreeMap<String, u64>>,
    /// SQS requests as billed: each 64 KiB of a request's or its answer's payload is one.
    sqs_billed: std::sync::atomic::AtomicU64,
    rules: Mutex<Vec<Rule>>,
    faults: Mutex<u64>,
    serialize_dynamodb_writes: AtomicBool,
    dynamodb_write: tokio::sync::Mutex<()>,
}

pub struct Proxy {
    pub url: String,
    state: Arc<State>,
    _task: tokio::task::JoinHandle<()>,
}

/// The action a request stands for: the `X-Amz-Target` of JSON-protocol AWS calls, otherwise
/// `S3 <METHOD>` for S3-shaped paths or `<METHOD> <path>`.
fn action(req: &hyper::Request<hyper::body::Incoming>, s3: bool) -> String {
    if let Some(t) = req
        .headers()
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
    {
        return t.to_owned();
    }
    if s3 {
        return format!("S3 {}", req.method());
    }
    format!("{} {}", req.method(), req.uri().path())
}

fn aws_error(status: u16) -> hyper::Response<ProxyBody> {
    let body = serde_json::json!({
        "__type": "com.amazonaws#InternalFailure",
        "message": "injected by the test proxy"
    })
    .to_string();
    let mut r = hyper::Response::new(
        Full::new(Bytes::from(body))
            .map_err(|never| match never {})
            .boxed(),
    );
    *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
    r.headers_mut().insert(
        "content-type",
        "application/x-amz-json-1.0".parse().unwrap(),
    );
    r
}

impl Proxy {
    /// A proxy forwarding to `upstream` (`http://host:port`). `s3`: name plain requests
    /// `S3 <METHOD>` in the counts.
    pub async fn start(upstream: &str, s3: bool) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let state: Arc<State> = Arc::default();
        let upstream = upstream.trim_end_matches('/').to_owned();
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(64)
            .build()
            .unwrap();
        let st = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (st, upstream, client) = (st.clone(), upstream.clone(), client.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let (st, upstream, client) = (st.clone(), upstream.clone(), client.clone());
                        async move { forward(st, &upstream, &client, s3, req).await }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Proxy {
            url,
            state,
            _task: task,
        }
    }

    /// From now on, forwards one DynamoDB write at a time, each after the previous one's answer.
    /// DynamoDB applies the writes to an item one after the other, each condition checked
    /// against the item as the previous write left it; moto's server handles requests on
    /// concurrent threads without a lock, so two conditional updates of one item racing there
    /// can both pass their conditions against the same old item, the later write winning. A test
    /// that runs writes to one item concurrently (a batch's events of one message) asks for
    /// this, so that it checks bluehook and not that race.
    pub fn serialize_dynamodb_writes(&self) {
        self.state
            .serialize_dynamodb_writes
            .store(true, Ordering::SeqCst);
    }

    /// Applies `fault` to the next `times` requests whose action contains `action` (all of them
    /// with `None`).
    pub fn inject(&self, action: &str, fault: Fault, times: Option<usize>) {
        self.state.rules.lock().unwrap().push(Rule {
            action: action.to_owned(),
            fault,
            remaining: times,
        });
    }

    /// Removes every fault.
    pub fn clear(&self) {
        self.state.rules.lock().unwrap().clear();
    }

    /// How many requests were forwarded or faulted, by action.
    pub fn counts(&self) -> BTreeMap<String, u64> {
        self.state.counts.lock().unwrap().clone()
    }

    pub fn reset_counts(&self) {
        self.state.counts.lock().unwrap().clear();
        self.state.sqs_billed.store(0, Ordering::SeqCst);
    }

    /// SQS requests as AWS bills them since the last reset: each 64 KiB of the payload sent or
    /// answered is one request.
    pub fn sqs_billed(&self) -> u64 {
        self.state.sqs_billed.load(Ordering::SeqCst)
    }

    /// DynamoDB writes counted (PutItem, UpdateItem, DeleteItem, BatchWriteItem,
    /// TransactWriteItems).
    pub fn dynamodb_writes(&self) -> u64 {
        self.counts()
            .iter()
            .filter(|(action, _)| is_dynamodb_write(action))
            .map(|(_, n)| n)
            .sum()
    }

    /// How many requests got a fault.
    pub fn faults(&self) -> u64 {
        *self.state.faults.lock().unwrap()
    }
}

fn is_dynamodb_write(action: &str) -> bool {
    action.strip_prefix("DynamoDB_20120810.").is_some_and(|op| {
        matches!(
            op,
            "PutItem" | "UpdateItem" | "DeleteItem" | "BatchWriteItem" | "TransactWriteItems"
        )
    })
}

fn take_fault(state: &State, action: &str) -> Option<Fault> {
    let mut rules = state.rules.lock().unwrap();
    let i = rules
        .iter()
        .position(|r| action.contains(&r.action) && r.remaining != Some(0))?;
    let rule = &mut rules[i];
    if let Some(n) = &mut rule.remaining {
        *n -= 1;
    }
    *state.faults.lock().unwrap() += 1;
    Some(rule.fault.clone())
}

async fn forward(
    state: Arc<State>,
    upstream: &str,
    client: &reqwest::Client,
    s3: bool,
    req: hyper::Request<hyper::body::Incoming>,
) -> std::io::Result<hyper::Response<ProxyBody>> {
    let action = action(&req, s3);
    *state
        .counts
        .lock()
        .unwrap()
        .entry(action.clone())
        .or_default() += 1;
    let fault = take_fault(&state, &action);
    match fault {
        Some(Fault::Refuse) => return Err(std::io::Error::other("refused by the test proxy")),
        Some(Fault::Status(code)) => return Ok(aws_error(code)),
        Some(Fault::Delay(d)) => tokio::time::sleep(d).await,
        Some(Fault::Hang) => std::future::pending::<()>().await,
        Some(Fault::Cut) | None => {}
    }
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map_err(std::io::Error::other)?
        .to_bytes();
    let _one_at_a_time =
        if state.serialize_dynamodb_writes.load(Ordering::SeqCst) && is_dynamodb_write(&action) {
            Some(state.dynamodb_write.lock().await)
        } else {
            None
        };
    let url = format!(
        "{upstream}{}",
        parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/")
    );
    let sent = body.len();
    let mut out = client.request(parts.method.clone(), &url).body(body);
    for (k, v) in &parts.headers {
        if k != hyper::header::HOST && k != hyper::header::CONTENT_LENGTH {
            out = out.header(k, v);
        }
    }
    let answer = out.send().await.map_err(std::io::Error::other)?;
    let status = answer.status();
    let headers = answer.headers().clone();
    let bytes = answer.bytes().await.map_err(std::io::Error::other)?;
    if action.starts_with("AmazonSQS.") {
        let chunks = sent.max(bytes.len()).div_ceil(64 * 1024).max(1);
        state.sqs_billed.fetch_add(chunks as u64, Ordering::SeqCst);
    }
    let body: ProxyBody = if fault == Some(Fault::Cut) {
        // Half the body, then an error: the connection closes before the declared length.
        let half = bytes.slice(..bytes.len() / 2);
        let frames: Vec<Result<Frame<Bytes>, std::io::Error>> = vec![
            Ok(Frame::data(half)),
            Err(std::io::Error::other("cut by the test proxy")),
        ];
        StreamBody::new(futures_util::stream::iter(frames)).boxed()
    } else {
        Full::new(bytes.clone())
            .map_err(|never| match never {})
            .boxed()
    };
    let mut r = hyper::Response::new(body);
    *r.status_mut() = status;
    for (k, v) in &headers {
        if k != hyper::header::TRANSFER_ENCODING && k != hyper::header::CONNECTION {
            r.headers_mut().insert(k, v.clone());
        }
    }
    if fault == Some(Fault::Cut) {
        r.headers_mut().insert(
            hyper::header::CONTENT_LENGTH,
            bytes.len().to_string().parse().unwrap(),
        );
    }
    Ok(r)
}
