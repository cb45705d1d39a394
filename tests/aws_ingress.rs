//! The ingress on its AWS adapters, over the real DynamoDB and SQS wire protocols (moto).

mod common;

use std::sync::Arc;

use aws_sdk_dynamodb::types::AttributeValue;
use bluehook::config::{Config, IngressConfig};
use bluehook::event::Event;
use bluehook::idempotency::dynamodb::DynamoIdempotency;
use bluehook::ingress::{build_sources, Ingress, IngressRequest, RequestBody};
use bluehook::metrics::MemoryMetrics;
use bluehook::queue::sqs::SqsQueue;
use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};

const SECRET: &str = "whsec-test-aws-ingress";
const OUTBOUND: &str = include_str!("../shared/testdata/sendblue/outbound.json");

struct Env {
    ddb: aws_sdk_dynamodb::Client,
    sqs: aws_sdk_sqs::Client,
    table: String,
    queue_url: String,
}

async fn env() -> Env {
    let conf = common::aws_config(&common::moto_endpoint()).await;
    let ddb = aws_sdk_dynamodb::Client::new(&conf);
    let sqs = aws_sdk_sqs::Client::new(&conf);
    let table = common::unique("idem");
    common::create_idempotency_table(&ddb, &table).await;
    let queue_url = common::create_queue(&sqs, &common::unique("events")).await;
    Env {
        ddb,
        sqs,
        table,
        queue_url,
    }
}

async fn ingress_with(env: &Env, sqs: aws_sdk_sqs::Client) -> Ingress {
    let config = Config::from_toml(&format!(
        "[sources.sendblue]\nprovider = \"sendblue\"\nsecrets = [\"{SECRET}\"]\n"
    ))
    .unwrap();
    Ingress::new(
        build_sources(&config, None).await.unwrap(),
        Arc::new(DynamoIdempotency::new(env.ddb.clone(), &env.table)),
        Arc::new(SqsQueue::new(sqs, &env.queue_url)),
        Arc::new(MemoryMetrics::default()),
        IngressConfig::default(),
    )
}

fn post(body: &str) -> IngressRequest {
    let mut headers = HeaderMap::new();
    headers.insert("sb-signing-secret", SECRET.parse().unwrap());
    headers.insert("content-type", "application/json".parse().unwrap());
    IngressRequest {
        method: Method::POST,
        path: "/webhooks/sendblue/outbound".into(),
        query: None,
        headers,
        body: RequestBody::Complete(Bytes::from(body.to_owned())),
    }
}

fn with_handle(handle: &str) -> String {
    OUTBOUND.replace("5a17319e-cbcf-443e-897e-d8b0c04b1b09", handle)
}

async fn claim_item(
    env: &Env,
    key: &str,
) -> Option<std::collections::HashMap<String, AttributeValue>> {
    env.ddb
        .get_item()
        .table_name(&env.table)
        .key("pk", AttributeValue::S(key.into()))
        .consistent_read(true)
        .send()
        .await
        .unwrap()
        .item
}

#[tokio::test]
async fn dynamodb_adapter_keeps_the_idempotency_contract() {
    let env = env().await;
    let store = DynamoIdempotency::new(env.ddb.clone(), &env.table);
    bluehook::idempotency::contract::run(&store, "ddb").await;
}

#[tokio::test]
async fn accepted_event_is_one_sqs_message_and_a_completed_claim_and_a_duplicate_adds_none() {
    let env = env().await;
    let ingress = ingress_with(&env, env.sqs.clone()).await;
    let handle = uuid::Uuid::new_v4().to_string();
    let body = with_handle(&handle);

    let r = ingress.handle(post(&body)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let answer: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(answer["status"], "accepted");
    let id = answer["events"][0].as_str().unwrap().to_owned();

    let key = format!("sendblue:msg:{handle}:SENT");
    let item = claim_item(&env, &key).await.expect("claim item");
    assert_eq!(item["state"].as_s().unwrap(), "completed");
    assert_eq!(item["event_id"].as_s().unwrap(), &id);
    let expires: i64 = item["expires_at"].as_n().unwrap().parse().unwrap();
    let now = chrono::Utc::now().timestamp();
    assert!((expires - now - 72 * 3600).abs() < 60, "TTL 72 h from now");

    let r = ingress.handle(post(&body)).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body, r#"{"status":"duplicate"}"#);

    // A new status of the same message is a new event.
    let r = ingress
        .handle(post(&body.replace("\"SENT\"", "\"DELIVERED\"")))
        .await;
    assert!(r.body.contains("accepted"), "{}", r.body);

    let bodies = common::drain_queue(&env.sqs, &env.queue_url).await;
    assert_eq!(bodies.len(), 2, "one message per distinct event");
    let first = Event::from_json(&bodies[0]).unwrap();
    assert_eq!(first.id, id);
    assert_eq!(first.raw_body, body, "the raw body travels whole");
}

#[tokio::test]
async fn sqs_unreachable_answers_503_releases_the_claim_and_the_retry_succeeds() {
    let env = env().await;
    // An SQS client aimed at a port where nothing listens.
    let dead = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        common::aws_config(&format!("http://127.0.0.1:{port}")).await
    };
    let broken = ingress_with(&env, aws_sdk_sqs::Client::new(&dead)).await;
    let handle = uuid::Uuid::new_v4().to_string();
    let body = with_handle(&handle);

    let r = broken.handle(post(&body)).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.body);
    assert!(r.retry_after.is_some());
    assert!(r.body.contains("\"error\":\"unavailable\""));
    assert!(
        claim_item(&env, &format!("sendblue:msg:{handle}:SENT"))
            .await
            .is_none(),
        "claim released"
    );

    let healthy = ingress_with(&env, env.sqs.clone()).await;
    let r = healthy.handle(post(&body)).await;
    assert!(
        r.body.contains("accepted"),
        "the provider's retry succeeds: {}",
        r.body
    );
    assert_eq!(common::drain_queue(&env.sqs, &env.queue_url).await.len(), 1);
}

#[tokio::test]
async fn twenty_concurrent_identical_deliveries_make_exactly_one_message() {
    let env = env().await;
    // DynamoDB checks each conditional write against the item as the previous write to it left
    // it; moto's threads do not, so its writes reach it one at a time through this proxy. (A
    // claim made by reading and then writing would still race: reads are not held back.)
    let proxy = common::proxy::Proxy::start(&common::moto_endpoint(), false).await;
    proxy.serialize_dynamodb_writes();
    let via_proxy = Env {
        ddb: aws_sdk_dynamodb::Client::new(&common::aws_config(&proxy.url).await),
        sqs: env.sqs.clone(),
        table: env.table.clone(),
        queue_url: env.queue_url.clone(),
    };
    let ingress = Arc::new(ingress_with(&via_proxy, env.sqs.clone()).await);
    let body = with_handle(&uuid::Uuid::new_v4().to_string());
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let ingress = ingress.clone();
        let body = body.clone();
        tasks.push(tokio::spawn(
            async move { ingress.handle(post(&body)).await },
        ));
    }
    let mut accepted = 0;
    for t in tasks {
        let r = t.await.unwrap();
        match r.status {
            StatusCode::OK if r.body.contains("accepted") => accepted += 1,
            StatusCode::OK => assert_eq!(r.body, r#"{"status":"duplicate"}"#),
            // Another copy held the claim at that moment: the provider retries later.
            StatusCode::SERVICE_UNAVAILABLE => {
                assert!(r.body.contains("in_progress"), "{}", r.body)
            }
            other => panic!("unexpected {other}: {}", r.body),
        }
    }
    assert_eq!(accepted, 1);
    // The copies told to retry now get `duplicate`.
    let r = ingress.handle(post(&body)).await;
    assert_eq!(r.body, r#"{"status":"duplicate"}"#);
    assert_eq!(common::drain_queue(&env.sqs, &env.queue_url).await.len(), 1);
}

#[tokio::test]
async fn api_gateway_http_event_goes_through_the_lambda_adapter() {
    let env = env().await;
    let ingress = ingress_with(&env, env.sqs.clone()).await;
    let body = with_handle(&uuid::Uuid::new_v4().to_string());
    let event = serde_json::json!({
        "version": "2.0",
        "routeKey": "POST /webhooks/{source}/{type}",
        "rawPath": "/webhooks/sendblue/outbound",
        "rawQueryString": "",
        "headers": {"content-type": "application/json", "sb-signing-secret": SECRET},
        "requestContext": {
            "accountId": "123456789012", "apiId": "api", "domainName": "x.execute-api.us-east-1.amazonaws.com",
            "domainPrefix": "x", "requestId": "r1", "routeKey": "POST /webhooks/{source}/{type}",
            "stage": "$default", "time": "23/Nov/2026:00:00:00 +0000", "timeEpoch": 1795000000000i64,
            "http": {"method": "POST", "path": "/webhooks/sendblue/outbound", "protocol": "HTTP/1.1",
                     "sourceIp": "203.0.113.1", "userAgent": "Sendblue"}
        },
        "pathParameters": {"source": "sendblue", "type": "outbound"},
        "body": body,
        "isBase64Encoded": false
    });
    let req = lambda_http::request::from_str(&event.to_string()).unwrap();
    let req = bluehook::lambda::ingress_request(req, ingress.max_body_bytes());
    let r = bluehook::lambda::lambda_response(ingress.handle(req).await);
    assert_eq!(r.status(), 200);
    assert_eq!(common::drain_queue(&env.sqs, &env.queue_url).await.len(), 1);
}
