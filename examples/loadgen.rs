//! A small HTTP load generator for `bluehook dev`: posts correctly signed, unique Sendblue
//! webhooks over keep-alive connections and reports throughput and ack latency.
//!
//! ```text
//! cargo run --release --example loadgen -- --url http://127.0.0.1:3000/webhooks/sendblue/outbound \
//!     --secret "$(cat .bluehook/dev-secret)" --connections 64 --duration 10 [--rate 2000] [--timeout 30]
//! ```
//! Without `--rate` each connection sends as fast as it is answered (closed loop, the maximum).
//! With `--rate` requests are scheduled at fixed times and latency is measured from the
//! scheduled time, so a stall is not hidden by the requests it delayed.

use std::time::{Duration, Instant};

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

const OUTBOUND: &str = include_str!("../shared/testdata/sendblue/outbound.json");

#[derive(Default)]
struct Tally {
    accepted: u64,
    duplicate: u64,
    errors: u64,
    latencies_us: Vec<u64>,
    /// The slowest answer: its latency and when it was scheduled (µs since the start).
    worst: (u64, u64),
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let url = arg(&args, "--url").expect("--url");
    let secret = arg(&args, "--secret").expect("--secret");
    let connections: usize = arg(&args, "--connections").map_or(64, |v| v.parse().unwrap());
    let duration =
        Duration::from_secs_f64(arg(&args, "--duration").map_or(10.0, |v| v.parse().unwrap()));
    let rate: Option<f64> = arg(&args, "--rate").map(|v| v.parse().unwrap());
    // How long one request may take before it counts as an error.
    let timeout = Duration::from_secs(arg(&args, "--timeout").map_or(30, |v| v.parse().unwrap()));
    let run = uuid::Uuid::new_v4().simple().to_string();
    // Pad the sample to about 1 KB, a typical Sendblue webhook.
    let template = OUTBOUND.replace(
        "\"Hello world!\"",
        &format!("\"{}\"", "x".repeat(1024 - OUTBOUND.len())),
    );

    // One client (one connection) per worker, all built before the clock starts: building one
    // loads the TLS roots, a few milliseconds each, which would otherwise count as the
    // server's latency for the first requests of a paced run.
    let clients: Vec<reqwest::Client> = (0..connections)
        .map(|_| {
            reqwest::Client::builder()
                .pool_max_idle_per_host(1)
                .timeout(timeout)
                .build()
                .unwrap()
        })
        .collect();
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (worker, client) in clients.into_iter().enumerate() {
        let (url, secret, run, template) =
            (url.clone(), secret.clone(), run.clone(), template.clone());
        let interval = rate.map(|r| Duration::from_secs_f64(connections as f64 / r));
        tasks.push(tokio::spawn(async move {
            let mut tally = Tally::default();
            // Spread the workers' schedules over one interval.
            let offset = interval.map_or(Duration::ZERO, |i| {
                i.mul_f64(worker as f64 / connections as f64)
            });
            let mut i: u64 = 0;
            loop {
                let scheduled = match interval {
                    Some(iv) => start + offset + iv.mul_f64(i as f64),
                    None => Instant::now(),
                };
                if scheduled.duration_since(start) >= duration {
                    break;
                }
                if let Some(wait) = scheduled.checked_duration_since(Instant::now()) {
                    tokio::time::sleep(wait).await;
                }
                let handle = format!("lg-{run}-{worker}-{i}");
                let body = template.replace("5a17319e-cbcf-443e-897e-d8b0c04b1b09", &handle);
                let result = client
                    .post(&url)
                    .header("sb-signing-secret", &secret)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await;
                match result {
                    Ok(r) if r.status().is_success() => {
                        let text = r.text().await.unwrap_or_default();
                        if text.contains("\"accepted\"") {
                            tally.accepted += 1;
                        } else {
                            tally.duplicate += 1;
                        }
                    }
                    _ => tally.errors += 1,
                }
                let latency = scheduled.elapsed().as_micros() as u64;
                tally.latencies_us.push(latency);
                if latency > tally.worst.0 {
                    tally.worst = (latency, scheduled.duration_since(start).as_micros() as u64);
                }
                i += 1;
            }
            tally
        }));
    }
    let mut total = Tally::default();
    for t in tasks {
        let t = t.await.unwrap();
        total.accepted += t.accepted;
        total.duplicate += t.duplicate;
        total.errors += t.errors;
        total.latencies_us.extend(t.latencies_us);
        total.worst = total.worst.max(t.worst);
    }
    let elapsed = start.elapsed().as_secs_f64();
    total.latencies_us.sort_unstable();
    let pct = |p: f64| -> f64 {
        let v = &total.latencies_us;
        if v.is_empty() {
            return 0.0;
        }
        v[((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1] as f64 / 1000.0
    };
    let report = serde_json::json!({
        "requests": total.latencies_us.len(),
        "accepted": total.accepted,
        "duplicate": total.duplicate,
        "errors": total.errors,
        "seconds": elapsed,
        "accepted_per_sec": total.accepted as f64 / elapsed,
        "target_rate": rate,
        "connections": connections,
        "latency_ms": {"p50": pct(0.50), "p90": pct(0.90), "p99": pct(0.99), "max": pct(1.0)},
        // When the slowest request was due, seconds after the start: where to look for a stall.
        "max_at_s": total.worst.1 as f64 / 1e6,
    });
    println!("{report}");
}
