//! Fault injection on the AWS path: a proxy between bluehook and moto (and between a sink and
//! its CRM) refuses connections, answers 5xx or cuts responses in the middle on command; each
//! scenario checks its invariant by counting messages, items and pushes.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use aws_lambda_events::event::sqs::SqsEvent;
use aws_sdk_dynamodb::types::AttributeValue;
use bluehook::config::{Config, IngressConfig};
use bluehook::delivery::sqs::SqsDeliveries;
use bluehook::delivery::{Deliverer, RetryPolicy};
use bluehook::event::Event;
use bluehook::idempotency::dynamodb::DynamoIdempotency;
use bluehook::ingress::{build_sources, Ingress, IngressRequest, RequestBody};
use bluehook::metrics::MemoryMetrics;
use bluehook::queue::sqs::SqsQueue;
use bluehook::sinks::crm::{CrmAdapter, CrmSync};
use bluehook::state::dynamodb::DynamoState;
use bytes::Bytes;
use common::fake::FakeHttp;
use common::proxy::{Fault, Proxy};
use http::{HeaderMap, Method, StatusCode};

const SECRET: &str = "sb-signing-F4ULTS-9d2c61a7e0";
/// The CRM's signing key, and a token in its URL's path (URLs with a token in them are common).
const CRM_SECRET: &str = "whsec_ZmF1bHRzLWNybS1obWFjLWtleS04MWMz";
const CRM_PATH_TOKEN: &str = "T0KEN-faults-crm-path-5e8b";
/// Every secret a scenario here configures: none may show in a log line or an answer.
const SECRETS: &[&str] = &[SECRET, CRM_SECRET, CRM_PATH_TOKEN];
const OUTBOUND: &str = include_str!("../shared/testdata/sendblue/outbound.json");

/// AWS clients as the functions build them (standard retries: three attempts), through `via`.
async fn clients(via: &str) -> (aws_sdk_dynamodb::Client, aws_sdk_sqs::Client) {
    let conf = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .endpoint_url(via)
        .credentials_provider(aws_sdk_dynamodb::config::Credentials::new(
            "testing", "testing", None, None, "tests",
        ))
        .timeout_config(
            aws_config::timeout::TimeoutConfig::builder()
                .operation_attempt_timeout(Duration::from_secs(2))
                .build(),
        )
        .load()
        .await;
    (
        aws_sdk_dynamodb::Client::new(&conf),
        aws_sdk_sqs::Client::new(&conf),
    )
}

struct Setup {
    proxy: Proxy,
    ingress: Ingress,
    /// Direct to moto, for checking.
    ddb: aws_sdk_dynamodb::Client,
    sqs: aws_sdk_sqs::Client,
    table: String,
    queue_url: String,
}

async fn setup(lease_secs: u64) -> Setup {
    common::leaks::capture_logs();
    let moto = common::moto_endpoint();
    let conf = common::aws_config(&moto).await;
    let (ddb, sqs) = (
        aws_sdk_dynamodb::Client::new(&conf),
        aws_sdk_sqs::Client::new(&conf),
    );
    let table = common::unique("idem");
    common::create_idempotency_table(&ddb, &table).await;
    let queue_url = common::create_queue(&sqs, &common::unique("events")).await;
    let proxy = Proxy::start(&moto, false).await;
    let (pddb, psqs) = clients(&proxy.url).await;
    let config = Config::from_toml(&format!(
        "[sources.sendblue]\nprovider = \"sendblue\"\nsecrets = [\"{SECRET}\"]\n"
    ))
    .unwrap();
    let ingress = Ingress::new(
        build_sources(&config, None).await.unwrap(),
        Arc::new(DynamoIdempotency::new(pddb, &table)),
        Arc::new(SqsQueue::new(psqs, &queue_url)),
        Arc::new(MemoryMetrics::default()),
        IngressConfig {
            claim_lease_secs: lease_secs,
            ..IngressConfig::default()
        },
    );
    Setup {
        proxy,
        ingress,
        ddb,
        sqs,
        table,
        queue_url,
    }
}

fn post(handle: &str) -> IngressRequest {
    let mut headers = HeaderMap::new();
    headers.insert("sb-signing-secret", SECRET.parse().unwrap());
    headers.insert("content-type", "application/json".parse().unwrap());
    IngressRequest {
        method: Method::POST,
        path: "/webhooks/sendblue/outbound".into(),
        query: None,
        headers,
        body: RequestBody::Complete(Bytes::from(
            OUTBOUND.replace("5a17319e-cbcf-443e-897e-d8b0c04b1b09", handle),
        )),
    }
}

/// The ingress's answer to `req`, kept for the secrets check.
async fn handle(s: &Setup, req: IngressRequest) -> bluehook::ingress::IngressResponse {
    let r = s.ingress.handle(req).await;
    common::leaks::record("an answer", &r.body);
    r
}

fn answer(r: &bluehook::ingress::IngressResponse) -> serde_json::Value {
    serde_json::from_str(&r.body).unwrap()
}

async fn claims(s: &Setup) -> Vec<std::collections::HashMap<String, AttributeValue>> {
    s.ddb
        .scan()
        .table_name(&s.table)
        .send()
        .await
        .unwrap()
        .items
        .unwrap_or_default()
}

fn ids(bodies: &[String]) -> Vec<String> {
    bodies
        .iter()
        .map(|b| Event::from_json(b).unwrap().id)
        .collect()
}

#[tokio::test]
async fn sqs_refusing_during_ingress_is_a_503_with_the_claim_released_then_one_message() {
    let s = setup(30).await;
    s.proxy.inject("AmazonSQS.SendMessage", Fault::Refuse, None);
    let r = handle(&s, post("fault-sqs-refuses")).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(answer(&r)["error"], "unavailable");
    assert!(r.retry_after.is_some());
    assert!(claims(&s).await.is_empty(), "the claim was released");
    assert!(s.proxy.faults() >= 1);

    s.proxy.clear();
    let r = handle(&s, post("fault-sqs-refuses")).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(answer(&r)["status"], "accepted");
    assert_eq!(common::drain_queue(&s.sqs, &s.queue_url).await.len(), 1);
    common::leaks::assert_no_secret(SECRETS);
}

#[tokio::test]
async fn dynamodb_failing_the_claim_is_a_503_and_nothing_is_queued() {
    let s = setup(30).await;
    s.proxy
        .inject("DynamoDB_20120810.PutItem", Fault::Status(500), None);
    let r = handle(&s, post("fault-claim-fails")).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    // The SDK's own retries ran first: three attempts, all refused.
    assert_eq!(s.proxy.counts()["DynamoDB_20120810.PutItem"], 3);
    assert!(common::drain_queue(&s.sqs, &s.queue_url).await.is_empty());
    assert!(
        !s.proxy.counts().contains_key("AmazonSQS.SendMessage"),
        "nothing was sent"
    );

    s.proxy.clear();
    let r = handle(&s, post("fault-claim-fails")).await;
    assert_eq!(answer(&r)["status"], "accepted");
    assert_eq!(common::drain_queue(&s.sqs, &s.queue_url).await.len(), 1);
    common::leaks::assert_no_secret(SECRETS);
}

#[tokio::test]
async fn a_transient_5xx_is_absorbed_by_the_sdk_retry() {
    let s = setup(30).await;
    s.proxy
        .inject("DynamoDB_20120810.PutItem", Fault::Status(500), Some(1));
    s.proxy
        .inject("AmazonSQS.SendMessage", Fault::Status(503), Some(1));
    let r = handle(&s, post("fault-transient")).await;
    assert_eq!(answer(&r)["status"], "accepted");
    assert_eq!(s.proxy.faults(), 2);
    assert_eq!(common::drain_queue(&s.sqs, &s.queue_url).await.len(), 1);
    common::leaks::assert_no_secret(SECRETS);
}

/// The claim lease of the scenarios that wait for one to run out.
const LEASE: Duration = Duration::from_secs(15);

#[tokio::test]
async fn dynamodb_failing_the_complete_step_still_acks_and_a_retry_is_caught_downstream() {
    // The lease is long enough that the retry below comes inside it on any machine (the
    // first delivery's failing complete step takes a few seconds of SDK retries).
    let s = setup(LEASE.as_secs()).await;
    s.proxy
        .inject("DynamoDB_20120810.UpdateItem", Fault::Status(500), None);
    let first = handle(&s, post("fault-complete-fails")).await;
    // The claim was made at the start of that delivery: its lease runs out before this + LEASE.
    let claimed_by = std::time::Instant::now();
    assert_eq!(first.status, StatusCode::OK, "queued durably: still an ack");
    let id = answer(&first)["events"][0].as_str().unwrap().to_owned();
    s.proxy.clear();

    // Within the claim's lease the retry is told to come back later...
    let during = handle(&s, post("fault-complete-fails")).await;
    assert_eq!(during.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(answer(&during)["error"], "in_progress");
    // ...after it, the retry is accepted again: a second copy with the same event id, which
    // the sinks' effect keys drop (see aws_sinks.rs).
    tokio::time::sleep((LEASE + Duration::from_millis(200)).saturating_sub(claimed_by.elapsed()))
        .await;
    let after = handle(&s, post("fault-complete-fails")).await;
    assert_eq!(after.status, StatusCode::OK);
    let queued = ids(&common::drain_queue(&s.sqs, &s.queue_url).await);
    assert_eq!(queued, vec![id.clone(), id], "two copies, one event id");
    // And now the key is completed: the next retry is a plain duplicate.
    let again = handle(&s, post("fault-complete-fails")).await;
    assert_eq!(answer(&again)["status"], "duplicate");
    common::leaks::assert_no_secret(SECRETS);
}

#[tokio::test]
async fn an_sqs_answer_cut_mid_response_is_a_503_and_the_retry_copy_has_the_same_id() {
    let s = setup(30).await;
    s.proxy.inject("AmazonSQS.SendMessage", Fault::Cut, None);
    let r = handle(&s, post("fault-cut")).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(claims(&s).await.is_empty(), "the claim was released");
    s.proxy.clear();
    let r = handle(&s, post("fault-cut")).await;
    assert_eq!(answer(&r)["status"], "accepted");
    // SQS did store the message(s) whose answers were cut: copies with the one event id.
    let queued = ids(&common::drain_queue(&s.sqs, &s.queue_url).await);
    assert!(queued.len() >= 2, "{queued:?}");
    assert!(queued.iter().all(|q| *q == queued[0]));
    common::leaks::assert_no_secret(SECRETS);
}

#[tokio::test]
async fn a_slow_dynamodb_beyond_the_attempt_timeout_is_a_503_not_a_hang() {
    let s = setup(30).await;
    // Every attempt would take a minute; the 2 s attempt timeout (three attempts) answers
    // long before the first of them could.
    s.proxy.inject(
        "DynamoDB_20120810.PutItem",
        Fault::Delay(Duration::from_secs(60)),
        None,
    );
    let t = std::time::Instant::now();
    let r = handle(&s, post("fault-slow")).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(t.elapsed() < Duration::from_secs(50), "{:?}", t.elapsed());
    s.proxy.clear();
    common::leaks::assert_no_secret(SECRETS);
}

/// A sink that never recovers: after maxReceiveCount receives the message is in the DLQ; once
/// the CRM is fixed, `replay` brings it back and it is pushed exactly once.
#[tokio::test]
async fn a_sink_that_never_recovers_dead_letters_and_replay_delivers_once() {
    common::leaks::capture_logs();
    let conf = common::aws_config(&common::moto_endpoint()).await;
    let (ddb, sqs) = (
        aws_sdk_dynamodb::Client::new(&conf),
        aws_sdk_sqs::Client::new(&conf),
    );
    let (state, idem) = (common::unique("state"), common::unique("idem"));
    common::create_idempotency_table(&ddb, &state).await;
    common::create_idempotency_table(&ddb, &idem).await;
    let dlq = common::create_queue(&sqs, &common::unique("crm-dlq")).await;
    let dlq_arn = sqs
        .get_queue_attributes()
        .queue_url(&dlq)
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::QueueArn)
        .send()
        .await
        .unwrap()
        .attributes
        .unwrap()[&aws_sdk_sqs::types::QueueAttributeName::QueueArn]
        .clone();
    let name = common::unique("crm");
    let queue = sqs
        .create_queue()
        .queue_name(&name)
        .attributes(
            aws_sdk_sqs::types::QueueAttributeName::VisibilityTimeout,
            "1",
        )
        .attributes(
            aws_sdk_sqs::types::QueueAttributeName::RedrivePolicy,
            serde_json::json!({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": 2}).to_string(),
        )
        .send()
        .await
        .unwrap()
        .queue_url
        .unwrap();

    let healthy = Arc::new(AtomicBool::new(false));
    let h = healthy.clone();
    let crm = FakeHttp::start(move |_, _| {
        if h.load(Ordering::SeqCst) {
            (200, "{}".into())
        } else {
            (500, "down".into())
        }
    })
    .await;
    let section: toml::Value = toml::from_str(&format!(
        "adapter = \"http\"\nurl = \"{}/crm/{CRM_PATH_TOKEN}\"\nsecret = \"{CRM_SECRET}\"\n",
        crm.url
    ))
    .unwrap();
    let sink = SqsDeliveries::sink(Arc::new(Deliverer::new(
        CrmSync::new(
            Arc::new(DynamoState::new(ddb.clone(), state)),
            CrmAdapter::from_config(&section, None, None).await.unwrap(),
            Arc::new(MemoryMetrics::default()),
            RetryPolicy {
                max_attempts: 3,
                first_delay: Duration::from_secs(1),
                max_delay: Duration::from_secs(1),
            },
        ),
        Arc::new(DynamoIdempotency::new(ddb.clone(), idem)),
        Arc::new(MemoryMetrics::default()),
    )));
    let body = OUTBOUND.replace("5a17319e-cbcf-443e-897e-d8b0c04b1b09", "fault-dlq");
    let ingress_event = {
        let config = Config::from_toml(&format!(
            "[sources.sendblue]\nprovider = \"sendblue\"\nsecrets = [\"{SECRET}\"]\n"
        ))
        .unwrap();
        let sources = build_sources(&config, None).await.unwrap();
        let provider = sources.get("sendblue").unwrap().clone();
        let mut headers = HeaderMap::new();
        headers.insert("sb-signing-secret", SECRET.parse().unwrap());
        let req = bluehook::provider::WebhookRequest {
            source: "sendblue",
            type_hint: Some("outbound"),
            headers: &headers,
            query: None,
            body: body.as_bytes(),
            received_at: chrono::Utc::now(),
        };
        match provider.parse(&req).unwrap() {
            bluehook::provider::Parsed::Events(mut e) => e.remove(0),
            _ => unreachable!(),
        }
    };
    sqs.send_message()
        .queue_url(&queue)
        .message_body(ingress_event.to_json())
        .send()
        .await
        .unwrap();

    // Lambda's event source mapping, by hand: receive, invoke, delete what succeeded.
    let deliver = |sqs: aws_sdk_sqs::Client, queue: String| async move {
        let msgs = sqs
            .receive_message()
            .queue_url(&queue)
            .max_number_of_messages(10)
            .wait_time_seconds(1)
            .message_system_attribute_names(aws_sdk_sqs::types::MessageSystemAttributeName::All)
            .send()
            .await
            .unwrap()
            .messages
            .unwrap_or_default();
        let records = msgs.iter().map(|m| common::sqs_record_of(m, "q"));
        let event: SqsEvent = serde_json::from_value(common::sqs_event(records)).unwrap();
        (msgs, event)
    };
    for _ in 0..6 {
        let (msgs, event) = deliver(sqs.clone(), queue.clone()).await;
        if msgs.is_empty() {
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        }
        let failures = sink.handle(event).await;
        assert_eq!(
            failures.batch_item_failures.len(),
            msgs.len(),
            "the CRM is down"
        );
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    assert!(crm.requests().len() >= 2, "retried while down");
    let dead = sqs
        .get_queue_attributes()
        .queue_url(&dlq)
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessages)
        .send()
        .await
        .unwrap()
        .attributes
        .unwrap()[&aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessages]
        .clone();
    assert_eq!(dead, "1", "the message is in the dead-letter queue");

    healthy.store(true, Ordering::SeqCst);
    let moved = bluehook::replay::replay_sqs(&sqs, &name, u64::MAX)
        .await
        .unwrap();
    assert_eq!(moved, 1);
    let before = crm.requests().len();
    let (msgs, event) = deliver(sqs.clone(), queue.clone()).await;
    assert_eq!(msgs.len(), 1, "replayed");
    let failures = sink.handle(event).await;
    assert!(failures.batch_item_failures.is_empty());
    for m in msgs {
        sqs.delete_message()
            .queue_url(&queue)
            .receipt_handle(m.receipt_handle.unwrap())
            .send()
            .await
            .unwrap();
    }
    let pushed_ok = crm.requests().len() - before;
    assert_eq!(pushed_ok, 1, "delivered exactly once after the replay");
    // Replaying the same event again (a second replay of a copy) pushes nothing more.
    sqs.send_message()
        .queue_url(&queue)
        .message_body(ingress_event.to_json())
        .send()
        .await
        .unwrap();
    let (_, event) = deliver(sqs.clone(), queue.clone()).await;
    assert!(sink.handle(event).await.batch_item_failures.is_empty());
    assert_eq!(crm.requests().len() - before, 1, "no second push");
    common::leaks::assert_no_secret(SECRETS);
}

/// The function process dies (kill -9) after its claim, while its send to SQS has not reached
/// SQS: the claim's lease runs out, the provider's retry (to a new process) is accepted, and
/// exactly one message is queued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_function_killed_between_claim_and_enqueue_loses_nothing() {
    use common::runtime::{start_function, RuntimeApi};
    let s = setup(30).await;
    let config = format!(
        "[ingress]\nclaim_lease_secs = {}\n\n[sources.sendblue]\nprovider = \"sendblue\"\nsecrets = [\"{SECRET}\"]\n",
        LEASE.as_secs()
    );
    let env = |proxy: &str| {
        vec![
            ("BLUEHOOK_CONFIG", config.clone()),
            ("BLUEHOOK_IDEMPOTENCY_TABLE", s.table.clone()),
            ("BLUEHOOK_EVENTS_QUEUE_URL", s.queue_url.clone()),
            ("AWS_ENDPOINT_URL", proxy.to_owned()),
            ("BLUEHOOK_LOG", "trace".to_owned()),
        ]
    };
    let event = |handle: &str| {
        let body = OUTBOUND.replace("5a17319e-cbcf-443e-897e-d8b0c04b1b09", handle);
        serde_json::json!({
            "version": "2.0", "routeKey": "POST /webhooks/{source}/{type}",
            "rawPath": "/webhooks/sendblue/outbound", "rawQueryString": "",
            "headers": {"content-type": "application/json", "sb-signing-secret": SECRET},
            "requestContext": {"accountId": "123456789012", "apiId": "api", "domainName": "api.example.com",
                "domainPrefix": "api", "requestId": "r1", "routeKey": "POST /webhooks/{source}/{type}",
                "stage": "$default", "time": "23/Nov/2026:05:00:00 +0000", "timeEpoch": 1795410000000i64,
                "http": {"method": "POST", "path": "/webhooks/sendblue/outbound", "protocol": "HTTP/1.1",
                    "sourceIp": "203.0.113.9", "userAgent": "Sendblue"}},
            "body": body, "isBase64Encoded": false
        })
    };

    s.proxy.inject("AmazonSQS.SendMessage", Fault::Hang, None);
    let first_api = Arc::new(RuntimeApi::start().await);
    let mut doomed = start_function("ingress", &first_api, &env(&s.proxy.url));
    let pending = {
        let (api, e) = (first_api.clone(), event("fault-kill"));
        tokio::spawn(async move { api.invoke(&e).await })
    };
    common::wait_until_async("the send to start", || {
        s.proxy.counts().contains_key("AmazonSQS.SendMessage")
    })
    .await;
    // The claim came before the send: its lease runs out before this + LEASE.
    let claimed_by = std::time::Instant::now();
    // Claimed, the send under way: kill -9.
    assert_eq!(claims(&s).await.len(), 1, "the claim is held");
    doomed.kill().unwrap();
    doomed.wait().unwrap();
    pending.abort();
    s.proxy.clear();

    let api = RuntimeApi::start().await;
    let mut fresh = start_function("ingress", &api, &env(&s.proxy.url));
    let during = api.invoke(&event("fault-kill")).await.unwrap();
    assert_eq!(during["statusCode"], 503, "the lease still holds: {during}");
    tokio::time::sleep((LEASE + Duration::from_millis(200)).saturating_sub(claimed_by.elapsed()))
        .await;
    let after = api.invoke(&event("fault-kill")).await.unwrap();
    assert_eq!(after["statusCode"], 200, "{after}");
    let _ = fresh.kill();
    let _ = fresh.wait();
    assert_eq!(common::drain_queue(&s.sqs, &s.queue_url).await.len(), 1);
    common::leaks::record("the functions' output", &common::runtime::function_logs());
    common::leaks::record("the runtime API", &first_api.posted());
    common::leaks::record("the runtime API", &api.posted());
    common::leaks::assert_no_secret(SECRETS);
}
