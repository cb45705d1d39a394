//! A fake media CDN over real HTTP: files of any size generated on the fly (never held whole in
//! memory), with or without a Content-Length, slow or fast, behind Basic auth, missing, or
//! failing a number of times before answering.
//!
//! `GET /<anything>?size=N[&ct=TYPE][&chunked=1][&delay_ms=D][&fail=K][&status=S][&auth=USER:PASS]`

#![allow(dead_code)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use sha2::{Digest, Sha256};

const CHUNK: u64 = 64 * 1024;

/// Byte `i` of every generated file.
pub fn byte_at(i: u64) -> u8 {
    (i.wrapping_mul(2_654_435_761) >> 11) as u8
}

fn chunk(from: u64, len: u64) -> Bytes {
    (from..from + len).map(byte_at).collect::<Vec<u8>>().into()
}

/// The SHA-256 (hex) of the generated file of `size` bytes.
pub fn sha256_of(size: u64) -> String {
    let mut h = Sha256::new();
    let mut at = 0;
    while at < size {
        let n = (size - at).min(1024 * 1024);
        h.update(chunk(at, n));
        at += n;
    }
    hex::encode(h.finalize())
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

pub struct Cdn {
    pub url: String,
    /// Requests per path.
    hits: Arc<Mutex<HashMap<String, usize>>>,
    _task: tokio::task::JoinHandle<()>,
}

impl Cdn {
    pub async fn start() -> Cdn {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let hits: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
        let h = hits.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let h = h.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        let h = h.clone();
                        async move { Ok::<_, Infallible>(answer(req, &h)) }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Cdn {
            url,
            hits,
            _task: task,
        }
    }

    /// Requests made for `path` so far.
    pub fn hits(&self, path: &str) -> usize {
        self.hits.lock().unwrap().get(path).copied().unwrap_or(0)
    }
}

fn answer(
    req: hyper::Request<hyper::body::Incoming>,
    hits: &Mutex<HashMap<String, usize>>,
) -> hyper::Response<BoxBody<Bytes, Infallible>> {
    let path = req.uri().path().to_owned();
    let q: HashMap<String, String> = req
        .uri()
        .query()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default();
    let n = {
        let mut hits = hits.lock().unwrap();
        let e = hits.entry(path).or_default();
        *e += 1;
        *e
    };
    let status = |s: u16| {
        hyper::Response::builder()
            .status(s)
            .body(Full::new(Bytes::from_static(b"no")).boxed())
            .unwrap()
    };
    if let Some(auth) = q.get("auth") {
        let expected = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(auth)
        );
        let given = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        if given != Some(expected.as_str()) {
            return status(401);
        }
    }
    if let Some(s) = q.get("status").and_then(|s| s.parse().ok()) {
        return status(s);
    }
    let fail: usize = q.get("fail").and_then(|f| f.parse().ok()).unwrap_or(0);
    if n <= fail {
        return status(500);
    }
    let size: u64 = q.get("size").and_then(|s| s.parse().ok()).unwrap_or(0);
    let delay = Duration::from_millis(q.get("delay_ms").and_then(|d| d.parse().ok()).unwrap_or(0));
    let stream = futures_util::stream::unfold(0u64, move |at| async move {
        if at >= size {
            return None;
        }
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let len = (size - at).min(CHUNK);
        Some((Ok::<_, Infallible>(Frame::data(chunk(at, len))), at + len))
    });
    let mut b = hyper::Response::builder().status(200);
    if let Some(ct) = q.get("ct") {
        b = b.header("content-type", ct);
    }
    if !q.contains_key("chunked") {
        b = b.header("content-length", size.to_string());
    }
    b.body(BodyExt::boxed(StreamBody::new(stream))).unwrap()
}
