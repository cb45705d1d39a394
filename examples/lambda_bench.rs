//! The Lambda functions' cold start, warm per-invocation time and memory, measured on the built
//! bootstraps through a Lambda runtime API server (the one the tests use).
//!
//! - init: process start → first `GET /runtime/invocation/next`, with the configuration parsed
//!   and every AWS SDK client built (configuration inline in `BLUEHOOK_CONFIG`, so no network
//!   call; on AWS the template's SSM parameter adds one GetParameter round trip).
//! - warm: the event handed out on `/next` → its `/response` arriving at the runtime API (what
//!   Lambda bills), i.e. the runtime loop plus the handler. The AWS calls go to a local
//!   stand-in that answers at once; a Blue Replies ping and a badly signed webhook (no AWS call
//!   at all) show the overhead alone.
//! - peak RSS: `VmHWM` of the function process after the warm runs.
//!
//! ```text
//! scripts/bench-lambda.sh             # builds the bootstraps, runs this
//! cargo run --release --example lambda_bench -- --bootstraps target/lambda --starts 20 --invocations 2000
//! ```

#[allow(dead_code)]
#[path = "../tests/common/runtime.rs"]
mod runtime;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use runtime::{start_binary, Kill, RuntimeApi};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

struct Args {
    bootstraps: PathBuf,
    starts: usize,
    invocations: usize,
}

fn args() -> anyhow::Result<Args> {
    let mut a = Args {
        bootstraps: Path::new(ROOT).join("target/lambda"),
        starts: 20,
        invocations: 2000,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it
            .next()
            .ok_or_else(|| anyhow::anyhow!("{flag} needs a value"))?;
        match flag.as_str() {
            "--bootstraps" => a.bootstraps = value.into(),
            "--starts" => a.starts = value.parse()?,
            "--invocations" => a.invocations = value.parse()?,
            _ => {
                anyhow::bail!("unknown flag {flag} (--bootstraps DIR, --starts N, --invocations N)")
            }
        }
    }
    Ok(a)
}

/// Answers the DynamoDB and SQS calls of the ingress and the router at once, as a service that
/// always succeeds would.
async fn fake_aws() -> anyhow::Result<(String, Arc<AtomicU64>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let calls = Arc::new(AtomicU64::new(0));
    let counted = calls.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let counted = counted.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let counted = counted.clone();
                    async move {
                        counted.fetch_add(1, Ordering::Relaxed);
                        let target = req
                            .headers()
                            .get("x-amz-target")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("")
                            .to_owned();
                        let body = req.into_body().collect().await?.to_bytes();
                        let answer = match target.as_str() {
                            "AmazonSQS.SendMessage" => serde_json::json!({
                                "MessageId": uuid::Uuid::new_v4().to_string(),
                                "MD5OfMessageBody": "00000000000000000000000000000000"
                            }),
                            "AmazonSQS.SendMessageBatch" => {
                                let request: serde_json::Value =
                                    serde_json::from_slice(&body).unwrap_or_default();
                                let ok: Vec<_> = request["Entries"]
                                    .as_array()
                                    .into_iter()
                                    .flatten()
                                    .map(|e| {
                                        serde_json::json!({
                                            "Id": e["Id"],
                                            "MessageId": uuid::Uuid::new_v4().to_string(),
                                            "MD5OfMessageBody": "00000000000000000000000000000000"
                                        })
                                    })
                                    .collect();
                                serde_json::json!({ "Successful": ok, "Failed": [] })
                            }
                            _ => serde_json::json!({}),
                        };
                        let mut r =
                            hyper::Response::new(Full::new(Bytes::from(answer.to_string())));
                        r.headers_mut().insert(
                            "content-type",
                            "application/x-amz-json-1.0".parse().unwrap(),
                        );
                        Ok::<_, hyper::Error>(r)
                    }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok((url, calls))
}

fn fixture(kind: &str, name: &str) -> anyhow::Result<serde_json::Value> {
    let path = Path::new(ROOT).join("tests/fixtures").join(kind).join(name);
    Ok(serde_json::from_str(&std::fs::read_to_string(&path)?)?)
}

/// Peak resident set (VmHWM) of a live process, in KiB.
fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn summary(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (
        percentile(&v, 0.5),
        percentile(&v, 0.99),
        percentile(&v, 1.0),
    )
}

struct Function {
    name: &'static str,
    env: Vec<(&'static str, String)>,
    /// Warm workloads: a label and the events invoked in turn.
    warm: Vec<(&'static str, Vec<serde_json::Value>)>,
}

fn functions(aws: &str, config: &str) -> anyhow::Result<Vec<Function>> {
    let common = |extra: &[(&'static str, &str)]| {
        let mut env = vec![
            ("BLUEHOOK_CONFIG", config.to_owned()),
            ("AWS_ENDPOINT_URL", aws.to_owned()),
            ("BLUEHOOK_LOG", "warn".to_owned()),
        ];
        env.extend(extra.iter().map(|(k, v)| (*k, (*v).to_owned())));
        env
    };
    let accepted = fixture("apigw", "sendblue.receive.json")?;
    let mut tampered = accepted.clone();
    tampered["headers"]["sb-signing-secret"] = "not-the-secret".into();
    let ping = fixture("apigw", "bluereplies.ping.json")?;
    // A batch of ten different events, as the router's SQS trigger delivers them.
    let mut records = Vec::new();
    for entry in std::fs::read_dir(Path::new(ROOT).join("tests/fixtures/sqs"))? {
        let e: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(entry?.path())?)?;
        records.push(e["Records"][0].clone());
        if records.len() == 10 {
            break;
        }
    }
    let batch = serde_json::json!({ "Records": records });
    Ok(vec![
        Function {
            name: "ingress",
            env: common(&[
                ("BLUEHOOK_IDEMPOTENCY_TABLE", "bench-idempotency"),
                (
                    "BLUEHOOK_EVENTS_QUEUE_URL",
                    &format!("{aws}/123456789012/bench-events"),
                ),
            ]),
            warm: vec![
                ("ping (no AWS call)", vec![ping]),
                ("bad signature, 401 (no AWS call)", vec![tampered]),
                (
                    "accepted (claim + enqueue + complete on a stand-in)",
                    vec![accepted],
                ),
            ],
        },
        Function {
            name: "router",
            env: common(&[
                (
                    "BLUEHOOK_CRM_QUEUE_URL",
                    &format!("{aws}/123456789012/bench-crm"),
                ),
                (
                    "BLUEHOOK_SMS_FALLBACK_QUEUE_URL",
                    &format!("{aws}/123456789012/bench-sms"),
                ),
                (
                    "BLUEHOOK_ANALYTICS_QUEUE_URL",
                    &format!("{aws}/123456789012/bench-analytics"),
                ),
            ]),
            warm: vec![("batch of 10 (sends on a stand-in)", vec![batch])],
        },
        Function {
            name: "crm-sync",
            env: common(&[
                ("BLUEHOOK_STATE_TABLE", "bench-state"),
                ("BLUEHOOK_IDEMPOTENCY_TABLE", "bench-idempotency"),
            ]),
            warm: vec![],
        },
        Function {
            name: "sms-fallback",
            env: common(&[
                ("BLUEHOOK_STATE_TABLE", "bench-state"),
                ("BLUEHOOK_IDEMPOTENCY_TABLE", "bench-idempotency"),
            ]),
            warm: vec![],
        },
        Function {
            name: "analytics",
            env: common(&[("BLUEHOOK_ANALYTICS_BUCKET", "bench-archive")]),
            warm: vec![],
        },
    ])
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = args()?;
    let (aws, _calls) = fake_aws().await?;
    let config = std::fs::read_to_string(Path::new(ROOT).join("tests/fixtures/bluehook.toml"))?;
    println!(
        "bootstraps in {}; {} cold starts and {} warm invocations per workload; times in ms",
        args.bootstraps.display(),
        args.starts,
        args.invocations
    );
    println!();
    println!("| function | bootstrap | init median | init p99 | init max | peak RSS |");
    println!("|---|---:|---:|---:|---:|---:|");
    let mut warm_rows = Vec::new();
    for f in functions(&aws, &config)? {
        let bootstrap = args.bootstraps.join(f.name).join("bootstrap");
        let size = std::fs::metadata(&bootstrap)
            .map_err(|e| {
                anyhow::anyhow!(
                    "{}: {e} (cargo lambda build --release)",
                    bootstrap.display()
                )
            })?
            .len();
        let mut inits = Vec::new();
        let mut peak = 0;
        for start in 0..args.starts {
            let api = RuntimeApi::start().await;
            let t0 = Instant::now();
            let child = Kill(vec![start_binary(&bootstrap, f.name, &api, &f.env)]);
            let first = loop {
                if let Some(t) = api.first_poll() {
                    break t;
                }
                if let Some(e) = api.init_error() {
                    anyhow::bail!("{}: init failed: {e}", f.name);
                }
                anyhow::ensure!(
                    t0.elapsed() < Duration::from_secs(10),
                    "{}: no poll in 10 s",
                    f.name
                );
                tokio::time::sleep(Duration::from_micros(200)).await;
            };
            inits.push(first.duration_since(t0).as_secs_f64() * 1e3);
            // The warm workloads run in the last started process.
            if start + 1 == args.starts {
                for (label, events) in &f.warm {
                    for i in 0..args.invocations + 50 {
                        if i == 50 {
                            api.take_durations(); // the first 50 warm the connections up
                        }
                        let event = &events[i % events.len()];
                        if let Err(e) = api.invoke(event).await {
                            anyhow::bail!("{} {label}: invocation failed: {e}", f.name);
                        }
                    }
                    let times = api
                        .take_durations()
                        .iter()
                        .map(|d| d.as_secs_f64() * 1e3)
                        .collect();
                    warm_rows.push((f.name, *label, summary(times)));
                }
                peak = peak_rss_kib(child.0[0].id()).unwrap_or(0);
            }
            drop(child);
        }
        let (p50, p99, max) = summary(inits);
        println!(
            "| {} | {:.1} MiB | {p50:.1} | {p99:.1} | {max:.1} | {:.1} MiB |",
            f.name,
            size as f64 / 1048576.0,
            peak as f64 / 1024.0
        );
    }
    println!();
    println!("| function | warm workload | median µs | p99 µs | max µs |");
    println!("|---|---|---:|---:|---:|");
    let mut by_fn: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for (name, label, (p50, p99, max)) in warm_rows {
        by_fn.entry(name).or_default().push(format!(
            "| {name} | {label} | {:.0} | {:.0} | {:.0} |",
            p50 * 1e3,
            p99 * 1e3,
            max * 1e3
        ));
    }
    for rows in by_fn.values() {
        for r in rows {
            println!("{r}");
        }
    }
    Ok(())
}
