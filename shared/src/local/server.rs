//! The local HTTP server in front of the ingress handler (hyper, HTTP/1.1). It bounds what a
//! client can make it hold: the body is read against the size limit (declared or counted), and
//! headers and body each have a read deadline.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::ingress::{Ingress, IngressRequest, RequestBody};
use crate::local::inspector::{self, Inspector};

/// How long a client has to send its headers, and then its body.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
const BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// A too-large body up to this size is read and thrown away before the 413 goes out, so that
/// an ordinary client (which writes its whole body before reading) sees the answer instead of
/// a reset connection. Beyond it the connection is closed after the answer.
const DRAIN_MAX: u64 = 4 * 1024 * 1024;

async fn read_body(mut body: Incoming, headers: &http::HeaderMap, limit: usize) -> RequestBody {
    let declared = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(n) = declared.filter(|n| *n > limit as u64) {
        if n <= DRAIN_MAX {
            drain(&mut body).await;
        }
        return RequestBody::TooLarge;
    }
    let read = tokio::time::timeout(BODY_TIMEOUT, async {
        let mut buf = bytes::BytesMut::with_capacity(declared.unwrap_or(0) as usize);
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else {
                // The client broke off mid-body.
                return RequestBody::TimedOut;
            };
            if let Some(data) = frame.data_ref() {
                if buf.len() + data.len() > limit {
                    return RequestBody::TooLarge;
                }
                buf.extend_from_slice(data);
            }
        }
        RequestBody::Complete(buf.freeze())
    })
    .await
    .unwrap_or(RequestBody::TimedOut);
    if matches!(read, RequestBody::TooLarge) {
        drain(&mut body).await;
    }
    read
}

/// Reads and discards up to [`DRAIN_MAX`] bytes of a body, within the body deadline.
async fn drain(body: &mut Incoming) {
    let _ = tokio::time::timeout(BODY_TIMEOUT, async {
        let mut seen = 0u64;
        while let Some(Ok(frame)) = body.frame().await {
            seen += frame.data_ref().map_or(0, |d| d.len() as u64);
            if seen > DRAIN_MAX {
                break;
            }
        }
    })
    .await;
}

async fn serve_one(
    ingress: Arc<Ingress>,
    inspector: Option<Arc<Inspector>>,
    req: http::Request<Incoming>,
) -> Result<http::Response<inspector::Body>, std::convert::Infallible> {
    if let Some(inspector) = inspector
        .as_ref()
        .filter(|_| Inspector::claims(req.uri().path()))
    {
        return Ok(inspector.handle(req).await);
    }
    let started = std::time::Instant::now();
    let (parts, body) = req.into_parts();
    let body = read_body(body, &parts.headers, ingress.max_body_bytes()).await;
    let webhook = parts.uri.path().starts_with("/webhooks/");
    // The inspector keeps the request (headers, body) to show beside its answer.
    let kept = inspector
        .as_ref()
        .filter(|_| webhook)
        .map(|_| (parts.headers.clone(), body.clone()));
    let request = IngressRequest {
        method: parts.method.clone(),
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().map(str::to_owned),
        headers: parts.headers,
        body,
    };
    let answer = ingress.handle(request).await;
    if let (Some(inspector), Some((headers, body))) = (&inspector, kept) {
        inspector.observe(
            &parts.method,
            &parts.uri,
            &headers,
            &body,
            &answer,
            started.elapsed(),
        );
    }
    Ok(answer.into_http().map(inspector::full))
}

/// Serves `ingress` (and the inspector, when it is on) on `listener` until `shutdown` turns
/// true, then lets in-flight requests finish (up to 10 s).
pub async fn serve(
    listener: TcpListener,
    ingress: Arc<Ingress>,
    inspector: Option<Arc<Inspector>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let graceful = GracefulShutdown::new();
    loop {
        let (stream, peer): (tokio::net::TcpStream, SocketAddr) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        let _ = stream.set_nodelay(true);
        let ingress = ingress.clone();
        let inspector = inspector.clone();
        let conn = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_TIMEOUT)
            .max_buf_size(64 * 1024)
            .serve_connection(
                TokioIo::new(stream),
                service_fn(move |req| serve_one(ingress.clone(), inspector.clone(), req)),
            );
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(Duration::from_secs(10), graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("some connections were still open after 10 s; closing them");
    }
}
