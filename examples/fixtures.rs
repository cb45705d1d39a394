//! Writes `tests/fixtures/`: for every sample of every provider, the API Gateway v2 (HTTP API)
//! event the ingress function receives (`apigw/<provider>.<event>.json`) and, for samples that
//! are queued, the SQS event the processors receive (`sqs/<provider>.<event>.json`).
//!
//! Each request is signed for `tests/fixtures/bluehook.toml` and checked on the way: it goes
//! through the lambda_http adapter and the ingress (in memory), and the SQS body is exactly what
//! the ingress queued.
//!
//! ```text
//! cargo run --example fixtures            # rewrites tests/fixtures/{apigw,sqs}
//! ```

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use base64::Engine;
use bluehook::config::{resolve_secrets, Config};
use bluehook::idempotency::memory::MemoryIdempotency;
use bluehook::ingress::{build_sources, Ingress};
use bluehook::lambda::ingress_request;
use bluehook::metrics::MemoryMetrics;
use bluehook::provider::{self, SampleOptions, SAMPLES};
use bluehook::queue::{Delivery, OutgoingMessage, Queue, QueueError};

/// The API's host in every fixture (Twilio's `public_url` in the fixtures' config uses it).
const HOST: &str = "fixtures.execute-api.us-east-1.amazonaws.com";

#[derive(Default)]
struct Captured(Mutex<Vec<OutgoingMessage>>);

#[async_trait]
impl Queue for Captured {
    async fn send(&self, messages: &[OutgoingMessage]) -> Result<(), QueueError> {
        self.0.lock().unwrap().extend_from_slice(messages);
        Ok(())
    }
    async fn receive(&self, _: usize, _: Duration) -> Result<Vec<Delivery>, QueueError> {
        Ok(Vec::new())
    }
    async fn delete(&self, _: &[String]) -> Result<(), QueueError> {
        Ok(())
    }
}

fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// The HTTP API (payload format 2.0) event for a signed sample request.
fn http_api_event(req: &provider::SampleRequest, n: usize) -> anyhow::Result<serde_json::Value> {
    let url = req
        .url
        .strip_prefix(&format!("https://{HOST}"))
        .context("sample URL")?;
    let (path, query) = url.split_once('?').unwrap_or((url, ""));
    let mut headers = serde_json::Map::new();
    headers.insert("content-type".into(), req.content_type.into());
    headers.insert("content-length".into(), req.body.len().to_string().into());
    headers.insert("host".into(), HOST.into());
    headers.insert("user-agent".into(), "bluehook-fixtures".into());
    headers.insert("x-forwarded-for".into(), "203.0.113.9".into());
    headers.insert("x-forwarded-port".into(), "443".into());
    headers.insert("x-forwarded-proto".into(), "https".into());
    for (k, v) in &req.headers {
        headers.insert(k.to_ascii_lowercase(), v.clone().into());
    }
    let segments = path
        .trim_start_matches("/webhooks/")
        .split('/')
        .collect::<Vec<_>>();
    let (route_key, path_parameters) = match segments.as_slice() {
        [source] => (
            "POST /webhooks/{source}",
            serde_json::json!({ "source": source }),
        ),
        [source, kind] => (
            "POST /webhooks/{source}/{type}",
            serde_json::json!({ "source": source, "type": kind }),
        ),
        _ => anyhow::bail!("unexpected sample path {path}"),
    };
    // HTTP APIs hand JSON over as text and form posts base64-encoded; the fixtures do the same.
    let (body, base64) = if req.content_type.starts_with("application/json") {
        (String::from_utf8(req.body.clone())?, false)
    } else {
        (
            base64::engine::general_purpose::STANDARD.encode(&req.body),
            true,
        )
    };
    let epoch = 1_795_410_000_000_i64 + n as i64;
    Ok(serde_json::json!({
        "version": "2.0",
        "routeKey": route_key,
        "rawPath": path,
        "rawQueryString": query,
        "headers": headers,
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "fixtures",
            "domainName": HOST,
            "domainPrefix": "fixtures",
            "http": {
                "method": "POST",
                "path": path,
                "protocol": "HTTP/1.1",
                "sourceIp": "203.0.113.9",
                "userAgent": "bluehook-fixtures"
            },
            "requestId": format!("fixture-{n:04}"),
            "routeKey": route_key,
            "stage": "$default",
            "time": "23/Nov/2026:05:00:00 +0000",
            "timeEpoch": epoch
        },
        "pathParameters": path_parameters,
        "body": body,
        "isBase64Encoded": base64
    }))
}

/// The SQS event delivering `body` (one record, as a queue trigger with batch size 1 would).
fn sqs_event(body: &str, n: usize) -> serde_json::Value {
    serde_json::json!({
        "Records": [{
            "messageId": format!("00000000-0000-4000-8000-{n:012}"),
            "receiptHandle": format!("fixture-receipt-{n:04}"),
            "body": body,
            "attributes": {
                "ApproximateReceiveCount": "1",
                "SentTimestamp": "1795410000000",
                "SenderId": "AIDAFIXTURES",
                "ApproximateFirstReceiveTimestamp": "1795410000001"
            },
            "messageAttributes": {},
            "eventSource": "aws:sqs",
            "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:bluehook-events",
            "awsRegion": "us-east-1"
        }]
    })
}

fn write_json(path: &Path, value: &serde_json::Value) -> anyhow::Result<()> {
    std::fs::write(path, serde_json::to_string_pretty(value)? + "\n")
        .with_context(|| format!("cannot write {}", path.display()))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let dir = fixtures_dir();
    let config = Config::from_file(&dir.join("bluehook.toml"))?;
    let queue = Arc::new(Captured::default());
    let ingress = Ingress::new(
        build_sources(&config, None).await?,
        Arc::new(MemoryIdempotency::default()),
        queue.clone(),
        Arc::new(MemoryMetrics::default()),
        config.ingress.clone(),
    );
    for sub in ["apigw", "sqs"] {
        let _ = std::fs::remove_dir_all(dir.join(sub));
        std::fs::create_dir_all(dir.join(sub))?;
    }
    // Every sample as `bluehook send` makes it, plus a failed outbound iMessage (what the SMS
    // fallback acts on).
    let mut samples: Vec<(&str, &str, Option<&str>)> = SAMPLES
        .iter()
        .flat_map(|(p, events)| events.iter().map(move |e| (*p, *e, None)))
        .collect();
    samples.push(("sendblue", "outbound", Some("ERROR")));
    let (mut apigw, mut sqs) = (0, 0);
    for (n, (source_name, event, status)) in samples.into_iter().enumerate() {
        let source = config
            .sources
            .get(source_name)
            .with_context(|| format!("tests/fixtures/bluehook.toml has no source {source_name}"))?;
        let secrets = resolve_secrets(source_name, &source.secrets, None).await?;
        let signer = provider::build(source_name, source, secrets)?;
        let sample = signer
            .sample(
                event,
                &SampleOptions {
                    status: status.map(str::to_owned),
                    ..SampleOptions::default()
                },
                &format!("https://{HOST}/webhooks/{source_name}"),
            )
            .map_err(anyhow::Error::msg)?;
        let api_event = http_api_event(&sample, n)?;
        let file = match status {
            Some(s) => format!("{source_name}.{event}.{}.json", s.to_ascii_lowercase()),
            None => format!("{source_name}.{event}.json"),
        };

        // Check it the way the function reads it: lambda_http's adapter, then the ingress.
        let request = lambda_http::request::from_str(&api_event.to_string())
            .map_err(|e| anyhow::anyhow!("{file}: not an HTTP API event: {e}"))?;
        let before = queue.0.lock().unwrap().len();
        let answer = ingress
            .handle(ingress_request(request, config.ingress.max_body_bytes))
            .await;
        anyhow::ensure!(
            answer.status.is_success(),
            "{file}: the ingress answered {} {}",
            answer.status,
            answer.body
        );
        write_json(&dir.join("apigw").join(&file), &api_event)?;
        apigw += 1;
        let queued = queue.0.lock().unwrap()[before..].to_vec();
        if let Some(first) = queued.first() {
            write_json(&dir.join("sqs").join(&file), &sqs_event(&first.body, n))?;
            sqs += 1;
        }
    }
    println!(
        "wrote {apigw} API Gateway events and {sqs} SQS events into {}",
        dir.display()
    );
    Ok(())
}
