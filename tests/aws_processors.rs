//! The router and the analytics sink over moto's SQS and S3, through the same SQS-event entry
//! point the Lambda functions use; and `bluehook replay --aws` against moto's SQS.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use aws_lambda_events::sqs::SqsEvent;
use bluehook::analytics::Analytics;
use bluehook::event::{Direction, Event, EventKind, MessageStatus, Service};
use bluehook::metrics::MemoryMetrics;
use bluehook::objects::S3Store;
use bluehook::processing::handle_sqs_event;
use bluehook::queue::sqs::SqsQueue;
use bluehook::queue::Queue;
use bluehook::router::Router;
use bluehook::routing::{Destination, Routes};

fn event(i: usize, status: MessageStatus) -> Event {
    let mut e = Event::new(
        "sendblue",
        "sendblue",
        EventKind::MessageStatus,
        format!("sendblue:msg:h{i}:{status:?}"),
        chrono::Utc::now(),
        "{}".into(),
    );
    e.status = Some(status);
    e.service = Some(Service::IMessage);
    e.direction = Some(Direction::Outbound);
    e.message_handle = Some(format!("h{i}"));
    e
}

fn sqs_event(bodies: &[(String, String)]) -> SqsEvent {
    let records = bodies
        .iter()
        .map(|(id, body)| common::sqs_record(id, &format!("rh-{id}"), body, 1, "events"));
    serde_json::from_value(common::sqs_event(records)).unwrap()
}

#[tokio::test]
async fn router_fans_out_a_batch_and_reports_only_the_poisoned_message() {
    let conf = common::aws_config(&common::moto_endpoint()).await;
    let sqs = aws_sdk_sqs::Client::new(&conf);
    let crm = common::create_queue(&sqs, &common::unique("crm")).await;
    let sms = common::create_queue(&sqs, &common::unique("sms")).await;
    let analytics = common::create_queue(&sqs, &common::unique("analytics")).await;
    let mut queues: BTreeMap<Destination, Arc<dyn Queue>> = BTreeMap::new();
    queues.insert(Destination::Crm, Arc::new(SqsQueue::new(sqs.clone(), &crm)));
    queues.insert(
        Destination::SmsFallback,
        Arc::new(SqsQueue::new(sqs.clone(), &sms)),
    );
    queues.insert(
        Destination::Analytics,
        Arc::new(SqsQueue::new(sqs.clone(), &analytics)),
    );
    let router = Router::new(
        Routes::defaults(),
        queues,
        Arc::new(MemoryMetrics::default()),
    );

    let mut batch: Vec<(String, String)> = (0..8)
        .map(|i| {
            (
                format!("m{i}"),
                event(i, MessageStatus::Delivered).to_json(),
            )
        })
        .collect();
    batch.push(("m8".into(), event(8, MessageStatus::Failed).to_json()));
    batch.insert(
        4,
        ("poison".into(), "{\"this is\": \"not an event\"}".into()),
    );
    let answer = handle_sqs_event(&router, sqs_event(&batch)).await;
    let failed: Vec<&str> = answer
        .batch_item_failures
        .iter()
        .map(|f| f.item_identifier.as_str())
        .collect();
    assert_eq!(failed, vec!["poison"]);

    let crm_bodies = common::drain_queue(&sqs, &crm).await;
    let analytics_bodies = common::drain_queue(&sqs, &analytics).await;
    let sms_bodies = common::drain_queue(&sqs, &sms).await;
    assert_eq!(
        (crm_bodies.len(), analytics_bodies.len(), sms_bodies.len()),
        (9, 9, 1)
    );
    assert_eq!(
        Event::from_json(&sms_bodies[0])
            .unwrap()
            .message_handle
            .as_deref(),
        Some("h8")
    );
}

#[tokio::test]
async fn analytics_archives_to_s3_and_a_redelivered_batch_adds_no_row() {
    let conf = common::aws_config(&common::moto_endpoint()).await;
    let s3 = aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&conf)
            .force_path_style(true)
            .build(),
    );
    let bucket = common::unique("archive");
    s3.create_bucket().bucket(&bucket).send().await.unwrap();
    let sink = Analytics::new(
        Arc::new(S3Store::new(s3.clone(), &bucket)),
        Arc::new(MemoryMetrics::default()),
        true,
    );
    let batch: Vec<(String, String)> = (0..10)
        .map(|i| (format!("m{i}"), event(i, MessageStatus::Sent).to_json()))
        .collect();

    for _ in 0..2 {
        let answer = handle_sqs_event(&sink, sqs_event(&batch)).await;
        assert!(answer.batch_item_failures.is_empty());
    }
    let listed = s3
        .list_objects_v2()
        .bucket(&bucket)
        .prefix("events/")
        .send()
        .await
        .unwrap();
    let keys: Vec<String> = listed
        .contents()
        .iter()
        .filter_map(|o| o.key().map(str::to_owned))
        .collect();
    assert!(!keys.is_empty());
    let mut rows = 0;
    for key in &keys {
        assert!(
            key.starts_with("events/dt=") && key.contains("/hour=") && key.ends_with(".ndjson"),
            "{key}"
        );
        let obj = s3
            .get_object()
            .bucket(&bucket)
            .key(key)
            .send()
            .await
            .unwrap();
        let text = String::from_utf8(obj.body.collect().await.unwrap().to_vec()).unwrap();
        for line in text.lines() {
            Event::from_json(line).unwrap();
            rows += 1;
        }
    }
    assert_eq!(
        rows, 10,
        "a redelivered batch rewrites its object: {keys:?}"
    );
}

#[tokio::test]
async fn replay_moves_dead_lettered_messages_back_to_their_queue() {
    let conf = common::aws_config(&common::moto_endpoint()).await;
    let sqs = aws_sdk_sqs::Client::new(&conf);
    let dlq_name = common::unique("events-dlq");
    let dlq = common::create_queue(&sqs, &dlq_name).await;
    let dlq_arn = format!("arn:aws:sqs:us-east-1:123456789012:{dlq_name}");
    let name = common::unique("events");
    let url = sqs
        .create_queue()
        .queue_name(&name)
        .attributes(
            aws_sdk_sqs::types::QueueAttributeName::RedrivePolicy,
            serde_json::json!({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": 3}).to_string(),
        )
        .send()
        .await
        .unwrap()
        .queue_url
        .unwrap();
    for i in 0..3 {
        sqs.send_message()
            .queue_url(&dlq)
            .message_body(format!("dead {i}"))
            .send()
            .await
            .unwrap();
    }
    let moved = bluehook::replay::replay_sqs(&sqs, &name, 2).await.unwrap();
    assert_eq!(moved, 2);
    let moved = bluehook::replay::replay_sqs(&sqs, &url, 100).await.unwrap();
    assert_eq!(moved, 1);
    let mut back = common::drain_queue(&sqs, &url).await;
    back.sort();
    assert_eq!(back, vec!["dead 0", "dead 1", "dead 2"]);
    assert!(common::drain_queue(&sqs, &dlq).await.is_empty());
    let err = bluehook::replay::replay_sqs(&sqs, &dlq_name, 1)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no dead-letter queue"), "{err}");
}

#[tokio::test]
async fn dynamodb_state_store_keeps_the_state_contract() {
    let conf = common::aws_config(&common::moto_endpoint()).await;
    let ddb = aws_sdk_dynamodb::Client::new(&conf);
    let table = common::unique("state");
    common::create_idempotency_table(&ddb, &table).await;
    let store = bluehook::state::dynamodb::DynamoState::new(ddb, &table);
    bluehook::state::contract::run(&store, "sb").await;
}
