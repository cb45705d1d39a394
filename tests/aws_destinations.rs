//! The deliver function's handler on moto's SQS and DynamoDB, against fake destinations: a
//! failed attempt stays on the queue, hidden for its backoff (ChangeMessageVisibility) and named
//! in the partial batch answer; the next receive delivers it with the same `webhook-id`; an
//! exhausted delivery goes to the dead-letter queue; `replay --destination` on SQS moves back
//! only that destination's deliveries; attempts are JSON lines with EMF metrics.

mod common;

use std::sync::Arc;

use aws_lambda_events::sqs::SqsEvent;
use aws_sdk_sqs::types::{MessageSystemAttributeName, QueueAttributeName};
use bluehook::delivery::sqs::SqsDeliveries;
use bluehook::delivery::{Deliver, Deliverer, DeliveryMessage};
use bluehook::destinations::Destination;
use bluehook::event::{Event, EventKind};
use bluehook::idempotency::dynamodb::DynamoIdempotency;
use bluehook::metrics::MemoryMetrics;
use common::fake::FakeHttp;
use common::proxy::Proxy;

fn event(key: &str) -> Event {
    Event::new(
        "partner",
        "standard-webhooks",
        EventKind::MessageReceived,
        key.into(),
        chrono::Utc::now(),
        r#"{"type":"message.received"}"#.into(),
    )
}

async fn destination(name: &str, settings: &str) -> Destination {
    let v: toml::Value = toml::from_str(settings).unwrap();
    Destination::from_config(name, &v, None).await.unwrap()
}

/// Up to ten messages of `url` as Lambda hands them to the function (not deleted).
async fn receive(sqs: &aws_sdk_sqs::Client, url: &str) -> (SqsEvent, Vec<String>) {
    let got = sqs
        .receive_message()
        .queue_url(url)
        .max_number_of_messages(10)
        .wait_time_seconds(1)
        .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
        .send()
        .await
        .unwrap()
        .messages
        .unwrap_or_default();
    let receipts = got
        .iter()
        .map(|m| m.receipt_handle.clone().unwrap())
        .collect();
    let records = got.iter().map(|m| common::sqs_record_of(m, "deliveries"));
    (
        serde_json::from_value(common::sqs_event(records)).unwrap(),
        receipts,
    )
}

/// What Lambda does after a batch: delete every record not named for retry.
async fn delete_done(
    sqs: &aws_sdk_sqs::Client,
    url: &str,
    event: &SqsEvent,
    receipts: &[String],
    failed: &[String],
) {
    for (m, receipt) in event.records.iter().zip(receipts) {
        if !failed.contains(m.message_id.as_ref().unwrap()) {
            sqs.delete_message()
                .queue_url(url)
                .receipt_handle(receipt)
                .send()
                .await
                .unwrap();
        }
    }
}

async fn depth(sqs: &aws_sdk_sqs::Client, url: &str) -> u64 {
    let a = sqs
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
        .send()
        .await
        .unwrap()
        .attributes
        .unwrap();
    let n = |k: &QueueAttributeName| a[k].parse::<u64>().unwrap();
    n(&QueueAttributeName::ApproximateNumberOfMessages)
        + n(&QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backoff_partial_failures_dead_letters_and_replay_on_sqs() {
    let moto = common::moto_endpoint();
    let conf = common::aws_config(&moto).await;
    let (sqs, ddb) = (
        aws_sdk_sqs::Client::new(&conf),
        aws_sdk_dynamodb::Client::new(&conf),
    );
    let table = common::unique("idem");
    common::create_idempotency_table(&ddb, &table).await;
    let dlq = common::create_queue(&sqs, &common::unique("deliveries-dlq")).await;
    let dlq_arn = sqs
        .get_queue_attributes()
        .queue_url(&dlq)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .unwrap()
        .attributes
        .unwrap()[&QueueAttributeName::QueueArn]
        .clone();
    let name = common::unique("deliveries");
    let queue = sqs
        .create_queue()
        .queue_name(&name)
        .attributes(QueueAttributeName::VisibilityTimeout, "30")
        .attributes(
            QueueAttributeName::RedrivePolicy,
            serde_json::json!({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": 100}).to_string(),
        )
        .send()
        .await
        .unwrap()
        .queue_url
        .unwrap();

    // flaky: 500 once, then 200; ok: 200; down: always 503, one attempt only.
    let flaky = FakeHttp::start(|_, n| {
        if n == 0 {
            (500, "no".into())
        } else {
            (200, "{}".into())
        }
    })
    .await;
    let ok = FakeHttp::start(|_, _| (200, "{}".into())).await;
    let down = FakeHttp::start(|_, _| (503, "down".into())).await;
    let proxy = Proxy::start(&moto, false).await;
    let via_proxy = aws_sdk_sqs::Client::new(&common::aws_config(&proxy.url).await);
    let effects: Arc<dyn bluehook::idempotency::IdempotencyStore> =
        Arc::new(DynamoIdempotency::new(ddb.clone(), &table));
    let deliverer = |d: Destination| -> Arc<dyn Deliver> {
        Arc::new(Deliverer::new(
            d,
            effects.clone(),
            Arc::new(MemoryMetrics::default()),
        ))
    };
    let handler = SqsDeliveries::new(
        vec![
            deliverer(
                destination(
                    "flaky",
                    &format!(
                        "url = \"{}/f\"\nretry_delay_secs = 1\nmax_retry_delay_secs = 1",
                        flaky.url
                    ),
                )
                .await,
            ),
            deliverer(destination("ok", &format!("url = \"{}/o\"", ok.url)).await),
            deliverer(
                destination(
                    "down",
                    &format!("url = \"{}/d\"\nmax_attempts = 1", down.url),
                )
                .await,
            ),
        ],
        via_proxy,
        queue.clone(),
        dlq.clone(),
    );

    let e = event("partner:id:aws-dest-1");
    for d in ["flaky", "ok", "down"] {
        let m = DeliveryMessage {
            destination: d.into(),
            event: e.clone(),
        };
        sqs.send_message()
            .queue_url(&queue)
            .message_body(m.to_json())
            .send()
            .await
            .unwrap();
    }
    // A record that is not a delivery: dead-lettered, never retried forever.
    sqs.send_message()
        .queue_url(&queue)
        .message_body("not a delivery")
        .send()
        .await
        .unwrap();

    let mut seen = 0;
    let (batch, receipts) = loop {
        let (batch, receipts) = receive(&sqs, &queue).await;
        seen += batch.records.len();
        if seen > 0 {
            break (batch, receipts);
        }
    };
    let answer = handler.handle(batch.clone()).await;
    let failed: Vec<String> = answer
        .batch_item_failures
        .iter()
        .map(|f| f.item_identifier.clone())
        .collect();
    delete_done(&sqs, &queue, &batch, &receipts, &failed).await;
    // Whatever the first receive held, every record ends up handled: keep going until the
    // queue holds only the flaky retry, then until it is delivered.
    let mut failed_total = failed.len();
    let deadline = std::time::Instant::now() + common::PATIENCE;
    loop {
        assert!(
            std::time::Instant::now() < deadline,
            "the deliveries queue never emptied"
        );
        let (batch, receipts) = receive(&sqs, &queue).await;
        if batch.records.is_empty() {
            if depth(&sqs, &queue).await == 0 {
                break;
            }
            continue;
        }
        let answer = handler.handle(batch.clone()).await;
        let failed: Vec<String> = answer
            .batch_item_failures
            .iter()
            .map(|f| f.item_identifier.clone())
            .collect();
        failed_total += failed.len();
        delete_done(&sqs, &queue, &batch, &receipts, &failed).await;
    }
    assert_eq!(
        failed_total, 1,
        "only flaky's first attempt was left for retry"
    );
    // The retry waited by visibility, not by a redrive: one ChangeMessageVisibility.
    assert_eq!(proxy.counts()["AmazonSQS.ChangeMessageVisibility"], 1);
    let got = flaky.requests();
    assert_eq!(got.len(), 2);
    assert!(got.iter().all(|c| c.headers["webhook-id"] == e.id));
    assert_eq!(ok.requests().len(), 1);
    assert_eq!(down.requests().len(), 1);
    // The exhausted delivery and the unreadable record are in the dead-letter queue.
    assert_eq!(depth(&sqs, &dlq).await, 2);

    // replay --destination down on SQS: only that destination's delivery moves back.
    let moved = bluehook::replay::replay_sqs_where(&sqs, &name, 10, |body| {
        serde_json::from_str::<DeliveryMessage>(body).is_ok_and(|d| d.destination == "down")
    })
    .await
    .unwrap();
    assert_eq!(moved, 1);
    assert_eq!(depth(&sqs, &dlq).await, 1, "the unreadable record stays");
    let (batch, _) = receive(&sqs, &queue).await;
    assert_eq!(batch.records.len(), 1);
    let back: DeliveryMessage =
        serde_json::from_str(batch.records[0].body.as_ref().unwrap()).unwrap();
    assert_eq!(
        (back.destination.as_str(), back.event.id.as_str()),
        ("down", e.id.as_str())
    );
}
