//! The deployed topology, measured: the five built bootstraps run through a Lambda runtime API
//! server against moto (real DynamoDB, SQS and S3 wire protocol) behind a counting proxy, with a
//! fake CRM, a fake Twilio, a destination's receiver and a CDN. A mixed workload of unique
//! Sendblue webhooks goes through ingress (one invocation each) and, in batches as the
//! template's SQS triggers deliver them, router, crm-sync, sms-fallback, analytics, deliver (the
//! fixture configuration's destination `hook`, which takes every message event) and media (the
//! attachments of 2% of the webhooks).
//!
//! Reports per function: invocations, duration (median, p99), CPU per event, events/s, and the
//! AWS requests per event by action; then the cost per million webhooks at AWS list prices from
//! those figures (see docs/cost.md).
//!
//!     scripts/bench-aws.sh [events]      # starts moto, builds the bootstraps, runs this

#[path = "../tests/common/cdn.rs"]
mod cdn;
#[allow(dead_code)]
#[path = "../tests/common/fake.rs"]
mod fake;
#[allow(dead_code)]
#[path = "../tests/common/proxy.rs"]
mod proxy;
#[allow(dead_code)]
#[path = "../tests/common/runtime.rs"]
mod runtime;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType,
};
use runtime::{start_binary, Kill, RuntimeApi};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// The template's BatchSize: 100 for the router, 1 for crm-sync (a pack of events each), 10
/// for sms-fallback and deliver, 100 for analytics, 1 for media.
const ROUTER_BATCH: usize = 100;
const CRM_BATCH: usize = 1;
const BATCH: usize = 10;
const ANALYTICS_BATCH: usize = 100;
const MEDIA_BATCH: usize = 1;

/// AWS list prices, us-east-1, USD (public price pages, 2025).
mod price {
    /// HTTP API, per million requests (first 300 million a month).
    pub const HTTP_API_PER_M: f64 = 1.00;
    /// Lambda, per million requests.
    pub const LAMBDA_REQUESTS_PER_M: f64 = 0.20;
    /// Lambda duration per GB-second, arm64 (first 6 billion GB-s a month).
    pub const LAMBDA_GB_S_ARM: f64 = 0.000_013_333_4;
    /// SQS standard queue, per million requests (each 64 KB chunk of a payload is a request).
    pub const SQS_PER_M: f64 = 0.40;
    /// DynamoDB on-demand, per million write request units (1 KB each).
    pub const DDB_WRITE_PER_M: f64 = 0.625;
    /// DynamoDB on-demand, per million read request units (4 KB each, strongly consistent).
    pub const DDB_READ_PER_M: f64 = 0.125;
    /// S3 Standard PUT/POST, per million.
    pub const S3_PUT_PER_M: f64 = 5.00;
    /// CloudWatch Logs ingestion per GB.
    pub const LOGS_PER_GB: f64 = 0.50;
}
const MEMORY_GB: f64 = 128.0 / 1024.0;
/// START, END and REPORT lines Lambda writes per invocation.
const PLATFORM_LOG_BYTES: f64 = 350.0;

struct Args {
    endpoint: String,
    bootstraps: PathBuf,
    events: usize,
}

fn args() -> anyhow::Result<Args> {
    let mut a = Args {
        endpoint: std::env::var("BLUEHOOK_TEST_AWS_ENDPOINT").unwrap_or_default(),
        bootstraps: Path::new(ROOT).join("target/lambda"),
        events: 1000,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it
            .next()
            .ok_or_else(|| anyhow::anyhow!("{flag} needs a value"))?;
        match flag.as_str() {
            "--endpoint" => a.endpoint = value,
            "--bootstraps" => a.bootstraps = value.into(),
            "--events" => a.events = value.parse()?,
            _ => {
                anyhow::bail!("unknown flag {flag} (--endpoint URL, --bootstraps DIR, --events N)")
            }
        }
    }
    anyhow::ensure!(
        !a.endpoint.is_empty(),
        "--endpoint (moto's URL) is required"
    );
    Ok(a)
}

async fn sdk(endpoint: &str) -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(aws_sdk_dynamodb::config::Credentials::new(
            "testing", "testing", None, None, "bench",
        ))
        .load()
        .await
}

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..10]
    )
}

async fn table(ddb: &aws_sdk_dynamodb::Client, name: &str) -> anyhow::Result<()> {
    ddb.create_table()
        .table_name(name)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name("pk")
                .attribute_type(ScalarAttributeType::S)
                .build()?,
        )
        .key_schema(
            KeySchemaElement::builder()
                .attribute_name("pk")
                .key_type(KeyType::Hash)
                .build()?,
        )
        .send()
        .await?;
    Ok(())
}

/// The workload: unique Sendblue webhooks, 40% inbound messages, 30% outbound SENT, 28% their
/// DELIVERED, 2% failed outbound iMessages (which the SMS fallback sends).
fn workload(n: usize, cdn: &str) -> anyhow::Result<Vec<serde_json::Value>> {
    let load = |name: &str| -> anyhow::Result<serde_json::Value> {
        let path = Path::new(ROOT).join("tests/fixtures/apigw").join(name);
        Ok(serde_json::from_str(&std::fs::read_to_string(path)?)?)
    };
    let (receive, outbound) = (
        load("sendblue.receive.json")?,
        load("sendblue.outbound.json")?,
    );
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let (template, status) = match i % 50 {
            0..=19 => (&receive, None),
            20..=34 => (&outbound, Some("SENT")),
            35..=48 => (&outbound, Some("DELIVERED")),
            _ => (&outbound, Some("ERROR")),
        };
        let mut body: serde_json::Value = serde_json::from_str(template["body"].as_str().unwrap())?;
        // DELIVERED follows the SENT of the same message, 15 webhooks earlier.
        let handle_of = if status == Some("DELIVERED") {
            i - 15
        } else {
            i
        };
        body["message_handle"] = format!("bench-{handle_of:08}").into();
        // One inbound message in 50 carries a 20 KB picture.
        if i % 50 == 0 {
            body["media_url"] = format!("{cdn}/media/{i}.jpg?size=20000").into();
        }
        if let Some(s) = status {
            body["status"] = s.into();
            if s == "ERROR" {
                body["error_code"] = 4001.into();
                body["error_message"] = "not delivered as iMessage".into();
            }
        }
        let mut event = template.clone();
        event["body"] = body.to_string().into();
        event["headers"]["content-length"] = body.to_string().len().to_string().into();
        out.push(event);
    }
    Ok(out)
}

/// CPU seconds (user + system) a process has used so far.
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // Fields 14 and 15 of /proc/pid/stat (utime, stime), counted from after the name.
    (ticks(11) + ticks(12)) / 100.0
}

struct Stage {
    name: &'static str,
    invocations: usize,
    events: usize,
    durations_ms: Vec<f64>,
    cpu_secs: f64,
    wall_secs: f64,
    requests: BTreeMap<String, u64>,
    /// The function's own SQS requests, as billed (each 64 KiB of payload is one).
    sqs_billed: u64,
    /// The event source mapping's: a ReceiveMessage per ten messages (billed by their bytes)
    /// and a DeleteMessageBatch per ten of each invocation's.
    mapping_sqs: u64,
}

/// The SQS requests an event source mapping makes to hand over `invocations` (see [`Stage`]).
fn mapping_sqs(invocations: &[serde_json::Value]) -> u64 {
    let records = |p: &serde_json::Value| p["Records"].as_array().cloned().unwrap_or_default();
    let bytes: Vec<usize> = invocations
        .iter()
        .flat_map(records)
        .map(|r| r["body"].as_str().map_or(0, str::len))
        .collect();
    let receives: usize = bytes
        .chunks(10)
        .map(|c| c.iter().sum::<usize>().div_ceil(64 * 1024).max(1))
        .sum();
    let deletes: usize = invocations
        .iter()
        .map(|p| records(p).len().div_ceil(10))
        .sum();
    (receives + deletes) as u64
}

fn median_p99(mut v: Vec<f64>) -> (f64, f64) {
    if v.is_empty() {
        return (0.0, 0.0);
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let at = |p: f64| v[((v.len() - 1) as f64 * p).round() as usize];
    (at(0.5), at(0.99))
}

/// Everything on a queue, as SQS event batches of up to `batch` (the template's BatchSize).
async fn batches(
    sqs: &aws_sdk_sqs::Client,
    url: &str,
    batch: usize,
) -> anyhow::Result<Vec<serde_json::Value>> {
    let mut records = Vec::new();
    loop {
        let out = sqs
            .receive_message()
            .queue_url(url)
            .max_number_of_messages(10)
            .send()
            .await?;
        let msgs = out.messages.unwrap_or_default();
        if msgs.is_empty() {
            break;
        }
        let receipts: Vec<_> = msgs
            .iter()
            .filter_map(|m| m.receipt_handle.clone())
            .collect();
        for m in msgs {
            records.push(serde_json::json!({
                "messageId": m.message_id, "receiptHandle": m.receipt_handle, "body": m.body,
                "attributes": {"ApproximateReceiveCount": "1", "SentTimestamp": "1795410000000"},
                "messageAttributes": {}, "eventSource": "aws:sqs",
                "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:bench", "awsRegion": "us-east-1"
            }));
        }
        for r in receipts {
            sqs.delete_message()
                .queue_url(url)
                .receipt_handle(r)
                .send()
                .await?;
        }
    }
    Ok(records
        .chunks(batch)
        .map(|c| serde_json::json!({ "Records": c }))
        .collect())
}

async fn run_stage(
    name: &'static str,
    bootstrap: &Path,
    env: &[(&str, String)],
    proxy: &proxy::Proxy,
    invocations: &[serde_json::Value],
) -> anyhow::Result<Stage> {
    let api = RuntimeApi::start().await;
    let child = Kill(vec![start_binary(bootstrap, name, &api, env)]);
    while api.first_poll().is_none() {
        if let Some(e) = api.init_error() {
            anyhow::bail!("{name}: {e}");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    proxy.reset_counts();
    let cpu0 = cpu_secs(child.0[0].id());
    let t0 = Instant::now();
    let mut durations_ms = Vec::with_capacity(invocations.len());
    let mut events = 0;
    for payload in invocations {
        // A record of a sink's queue can be a pack: a JSON array of events.
        events += payload["Records"].as_array().map_or(1, |records| {
            records
                .iter()
                .map(|r| match r["body"].as_str() {
                    Some(b) if bluehook::queue::is_pack(b) => {
                        serde_json::from_str::<Vec<serde_json::Value>>(b)
                            .map_or(1, |events| events.len())
                    }
                    _ => 1,
                })
                .sum()
        });
        let t = Instant::now();
        let answer = api
            .invoke(payload)
            .await
            .map_err(|e| anyhow::anyhow!("{name}: invocation failed: {e}"))?;
        durations_ms.push(t.elapsed().as_secs_f64() * 1e3);
        let failures = answer["batchItemFailures"].as_array().map_or(0, Vec::len);
        anyhow::ensure!(
            failures == 0,
            "{name}: {failures} batch item failures: {answer}"
        );
        if name == "ingress" {
            anyhow::ensure!(answer["statusCode"] == 200, "ingress answered {answer}");
        }
    }
    let wall_secs = t0.elapsed().as_secs_f64();
    let cpu = cpu_secs(child.0[0].id()) - cpu0;
    drop(child);
    Ok(Stage {
        name,
        invocations: invocations.len(),
        events,
        durations_ms,
        cpu_secs: cpu,
        wall_secs,
        requests: proxy.counts(),
        sqs_billed: proxy.sqs_billed(),
        mapping_sqs: mapping_sqs(invocations),
    })
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = args()?;
    let conf = sdk(&args.endpoint).await;
    let (ddb, sqs) = (
        aws_sdk_dynamodb::Client::new(&conf),
        aws_sdk_sqs::Client::new(&conf),
    );
    let s3 = aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&conf)
            .force_path_style(true)
            .build(),
    );
    let (idem, state, bucket) = (unique("idem"), unique("state"), unique("archive"));
    table(&ddb, &idem).await?;
    table(&ddb, &state).await?;
    s3.create_bucket().bucket(&bucket).send().await?;
    let mut queues = BTreeMap::new();
    for q in [
        "events",
        "crm",
        "sms",
        "analytics",
        "deliveries",
        "deliveries-dlq",
        "media",
    ] {
        let url = sqs
            .create_queue()
            .queue_name(unique(q))
            .send()
            .await?
            .queue_url
            .unwrap_or_default();
        queues.insert(q, url);
    }
    let crm = fake::FakeHttp::start(|_, _| (200, "{}".into())).await;
    let twilio = fake::FakeHttp::start(fake::twilio_ok).await;
    let hook = fake::FakeHttp::start(|_, _| (200, "{}".into())).await;
    let cdn = cdn::Cdn::start().await;
    let mut config: toml::Table = toml::from_str(&std::fs::read_to_string(
        Path::new(ROOT).join("tests/fixtures/bluehook.toml"),
    )?)?;
    let sinks = config["sinks"].as_table_mut().unwrap();
    sinks["crm"].as_table_mut().unwrap()["url"] = format!("{}/crm", crm.url).into();
    sinks["sms_fallback"].as_table_mut().unwrap()["base_url"] = twilio.url.clone().into();
    // The CDN is on loopback, which the media sink refuses on AWS unless told otherwise.
    let mut media = toml::Table::new();
    media.insert("allow_private_addresses".into(), true.into());
    sinks.insert("media".into(), media.into());
    config["destinations"].as_table_mut().unwrap()["hook"]
        .as_table_mut()
        .unwrap()["url"] = format!("{}/hook", hook.url).into();
    let mut media_route = toml::Table::new();
    media_route.insert("to".into(), "media".into());
    config["routes"]
        .as_array_mut()
        .unwrap()
        .push(media_route.into());
    let config = toml::to_string(&config)?;

    let proxy = proxy::Proxy::start(&args.endpoint, true).await;
    let env = |extra: Vec<(&'static str, String)>| {
        let mut env = vec![
            ("BLUEHOOK_CONFIG", config.clone()),
            ("AWS_ENDPOINT_URL", proxy.url.clone()),
            ("BLUEHOOK_S3_PATH_STYLE", "1".to_owned()),
            ("BLUEHOOK_LOG", "warn".to_owned()),
        ];
        env.extend(extra);
        env
    };
    let bin = |name: &str| args.bootstraps.join(name).join("bootstrap");

    let webhooks = workload(args.events, &cdn.url)?;
    let mut stages = Vec::new();
    stages.push(
        run_stage(
            "ingress",
            &bin("ingress"),
            &env(vec![
                ("BLUEHOOK_IDEMPOTENCY_TABLE", idem.clone()),
                ("BLUEHOOK_EVENTS_QUEUE_URL", queues["events"].clone()),
            ]),
            &proxy,
            &webhooks,
        )
        .await?,
    );
    let events = batches(&sqs, &queues["events"], ROUTER_BATCH).await?;
    stages.push(
        run_stage(
            "router",
            &bin("router"),
            &env(vec![
                ("BLUEHOOK_CRM_QUEUE_URL", queues["crm"].clone()),
                ("BLUEHOOK_SMS_FALLBACK_QUEUE_URL", queues["sms"].clone()),
                ("BLUEHOOK_ANALYTICS_QUEUE_URL", queues["analytics"].clone()),
                (
                    "BLUEHOOK_DELIVERIES_QUEUE_URL",
                    queues["deliveries"].clone(),
                ),
                ("BLUEHOOK_MEDIA_QUEUE_URL", queues["media"].clone()),
            ]),
            &proxy,
            &events,
        )
        .await?,
    );
    let sink_env = vec![
        ("BLUEHOOK_STATE_TABLE", state.clone()),
        ("BLUEHOOK_IDEMPOTENCY_TABLE", idem.clone()),
    ];
    for (name, queue, batch, extra) in [
        ("crm-sync", "crm", CRM_BATCH, sink_env.clone()),
        ("sms-fallback", "sms", BATCH, sink_env.clone()),
        (
            "analytics",
            "analytics",
            ANALYTICS_BATCH,
            vec![("BLUEHOOK_ANALYTICS_BUCKET", bucket.clone())],
        ),
        (
            "deliver",
            "deliveries",
            BATCH,
            vec![
                ("BLUEHOOK_IDEMPOTENCY_TABLE", idem.clone()),
                (
                    "BLUEHOOK_DELIVERIES_QUEUE_URL",
                    queues["deliveries"].clone(),
                ),
                (
                    "BLUEHOOK_DELIVERIES_DLQ_URL",
                    queues["deliveries-dlq"].clone(),
                ),
            ],
        ),
        ("media", "media", MEDIA_BATCH, {
            let mut env = sink_env.clone();
            env.push(("BLUEHOOK_MEDIA_BUCKET", bucket.clone()));
            env
        }),
    ] {
        let batches = batches(&sqs, &queues[queue], batch).await?;
        stages.push(run_stage(name, &bin(name), &env(extra), &proxy, &batches).await?);
    }
    anyhow::ensure!(
        !crm.requests().is_empty() && !twilio.requests().is_empty(),
        "the sinks reached neither the CRM nor Twilio"
    );
    let attachments = webhooks.len().div_ceil(50);
    // Every webhook of the workload is a message event: one delivery each. The CRM gets at most
    // one push per event: a status overtaken before it was applied (a SENT handled after its
    // message's DELIVERED, the two in one pack at once) is stale and pushes nothing.
    anyhow::ensure!(
        hook.requests().len() == webhooks.len(),
        "the destination got {} deliveries for {} message events",
        hook.requests().len(),
        webhooks.len()
    );
    anyhow::ensure!(
        crm.requests().len() <= webhooks.len(),
        "{} CRM pushes for {} message events",
        crm.requests().len(),
        webhooks.len()
    );
    let archived = (0..webhooks.len())
        .step_by(50)
        .filter(|i| cdn.hits(&format!("/media/{i}.jpg")) == 1)
        .count();
    anyhow::ensure!(
        archived == attachments,
        "{archived} of {attachments} attachments fetched once"
    );
    report(
        &args,
        &stages,
        crm.requests().len(),
        twilio.requests().len(),
    );
    Ok(())
}

fn report(args: &Args, stages: &[Stage], crm_pushes: usize, sms_sent: usize) {
    let n = args.events as f64;
    println!(
        "{} unique webhooks; SQS batches as the template sets them (router {ROUTER_BATCH}, crm-sync {CRM_BATCH} pack, sms-fallback and deliver {BATCH}, analytics {ANALYTICS_BATCH}, media {MEDIA_BATCH}); moto behind a counting proxy; {crm_pushes} CRM pushes, {sms_sent} SMS sent",
        args.events
    );
    println!();
    println!("| function | invocations | events | median ms | p99 ms | CPU µs/event | events/s | AWS requests per event | SQS billed per webhook (own + mapping) |");
    println!("|---|---:|---:|---:|---:|---:|---:|---|---:|");
    for s in stages {
        let (p50, p99) = median_p99(s.durations_ms.clone());
        let reqs: Vec<String> = s
            .requests
            .iter()
            .map(|(a, c)| format!("{} {:.2}", short(a), *c as f64 / s.events as f64))
            .collect();
        println!(
            "| {} | {} | {} | {p50:.1} | {p99:.1} | {:.0} | {:.0} | {} | {:.3} + {:.3} |",
            s.name,
            s.invocations,
            s.events,
            s.cpu_secs * 1e6 / s.events as f64,
            s.events as f64 / s.wall_secs,
            reqs.join(", "),
            s.sqs_billed as f64 / n,
            if s.name == "ingress" {
                0.0
            } else {
                s.mapping_sqs as f64 / n
            },
        );
    }
    println!();

    // Cost per million webhooks.
    let per_webhook = |count: u64| count as f64 / n;
    let mut lambda_requests = 0.0;
    let mut gb_s = 0.0;
    let (mut sqs_reqs, mut ddb_writes, mut ddb_reads, mut s3_puts) = (0.0, 0.0, 0.0, 0.0);
    for s in stages {
        let invocations = s.invocations as f64 / n;
        lambda_requests += invocations;
        // Billed duration: the measured median, rounded up to the next millisecond.
        let (p50, _) = median_p99(s.durations_ms.clone());
        gb_s += invocations * p50.ceil() / 1000.0 * MEMORY_GB;
        for (action, count) in &s.requests {
            let r = per_webhook(*count);
            match action.as_str() {
                a if a.ends_with(".PutItem")
                    || a.ends_with(".UpdateItem")
                    || a.ends_with(".DeleteItem") =>
                {
                    ddb_writes += r
                }
                a if a.ends_with(".GetItem") || a.ends_with(".Query") => ddb_reads += r,
                "S3 PUT" => s3_puts += r,
                _ => {}
            }
        }
        // Billed by 64 KiB of payload, with the event source mapping's own receives and
        // deletes for SQS-triggered functions.
        sqs_reqs += per_webhook(s.sqs_billed);
        if s.name != "ingress" {
            sqs_reqs += per_webhook(s.mapping_sqs);
        }
    }
    let lines = [
        ("HTTP API requests", 1.0, price::HTTP_API_PER_M),
        (
            "Lambda requests",
            lambda_requests,
            price::LAMBDA_REQUESTS_PER_M,
        ),
        (
            "Lambda duration (GB-s, 128 MB arm64)",
            gb_s,
            price::LAMBDA_GB_S_ARM * 1e6,
        ),
        ("SQS requests", sqs_reqs, price::SQS_PER_M),
        ("DynamoDB write units", ddb_writes, price::DDB_WRITE_PER_M),
        ("DynamoDB read units", ddb_reads, price::DDB_READ_PER_M),
        ("S3 PUTs", s3_puts, price::S3_PUT_PER_M),
    ];
    println!("| per million webhooks | quantity per webhook | USD |");
    println!("|---|---:|---:|");
    let mut total = 0.0;
    for (label, qty, unit) in lines {
        let usd = qty * unit;
        total += usd;
        println!("| {label} | {qty:.4} | {usd:.2} |");
    }
    println!("| **total** | | **{total:.2}** |");
    println!();
    let api = price::HTTP_API_PER_M;
    // Lambda's START/END/REPORT lines: only with PlatformLogLevel=INFO (the template's
    // default, WARN, leaves them out). A KB per webhook is a GB per million webhooks.
    let platform_logs = lambda_requests * PLATFORM_LOG_BYTES / 1e3 * price::LOGS_PER_GB;
    println!(
        "Choices: a Lambda function URL instead of the HTTP API saves {api:.2} (total {:.2}); \
         one DynamoDB write per webhook at the ingress instead of two saves {:.2}; \
         PlatformLogLevel=INFO (Lambda's START/REPORT lines) adds {platform_logs:.2}.",
        total - api,
        price::DDB_WRITE_PER_M
    );
}

fn short(action: &str) -> String {
    action
        .trim_start_matches("DynamoDB_20120810.")
        .trim_start_matches("AmazonSQS.")
        .trim_start_matches("AmazonSSM.")
        .to_owned()
}
