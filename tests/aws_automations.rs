//! Automations on AWS, on moto's DynamoDB and SQS with fake Sendblue and bot endpoints:
//! follow-up timers written by the router's observer and fired by the automations function's
//! sweep (once, and never when the contact wrote after the read, opted out, or never read; not
//! before they are due; by a sweeper built after they were set, as after a deploy); a bot's
//! reply queued by the deliver function and sent once by the automations function, whatever
//! the redeliveries.

mod common;

use std::sync::Arc;

use aws_lambda_events::sqs::SqsEvent;
use bluehook::delivery::sqs::SqsDeliveries;
use bluehook::delivery::{Deliver, Deliverer, DeliveryMessage};
use bluehook::event::{Direction, Event, EventKind, MessageStatus};
use bluehook::idempotency::dynamodb::DynamoIdempotency;
use bluehook::metrics::MemoryMetrics;
use bluehook::queue::sqs::SqsQueue;
use bluehook::queue::Queue;
use bluehook::router::Observe;
use bluehook::timers::{DynamoTimers, FollowupObserver, Sweeper};
use common::fake::{Captured, FakeHttp};
use serde_json::json;

const LINE: &str = "+15550001111";

async fn sendblue_api() -> FakeHttp {
    FakeHttp::start(|_: &Captured, n| {
        (
            200,
            json!({"message_handle": format!("sb-out-{n}"), "status": "QUEUED"}).to_string(),
        )
    })
    .await
}

fn config(sendblue: &str, bot: &str) -> bluehook::config::Config {
    bluehook::config::Config::from_toml(&format!(
        r#"
[senders.sb]
adapter = "sendblue"
api_key_id = "sb-key-id"
api_secret_key = "sb-api-secret-aws-automations"
base_url = "{sendblue}"

[sources.sendblue]
provider = "sendblue"
secrets = ["sb-webhook-secret-aws-automations"]
sender = "sb"

[destinations.bot]
url = "{bot}/bot"
reply = true

[[followups]]
name = "nudge"
after_secs = 1
content = "Still there?"
to = ["bot"]

[[followups]]
name = "tomorrow"
after_secs = 86400
content = "Checking in"
"#
    ))
    .unwrap()
}

fn message(kind: EventKind, key: &str, contact: &str, at_ms: i64) -> Event {
    let at = chrono::DateTime::from_timestamp_millis(at_ms).unwrap();
    let mut e = Event::new("sendblue", "sendblue", kind, key.into(), at, "{}".into());
    e.contact_number = Some(contact.into());
    e.line_number = Some(LINE.into());
    e
}

fn read_receipt(handle: &str, contact: &str, at_ms: i64) -> Event {
    let mut e = message(
        EventKind::MessageStatus,
        &format!("read:{handle}"),
        contact,
        at_ms,
    );
    e.status = Some(MessageStatus::Read);
    e.direction = Some(Direction::Outbound);
    e.message_handle = Some(handle.into());
    e
}

fn inbound(key: &str, contact: &str, at_ms: i64) -> Event {
    let mut e = message(EventKind::MessageReceived, key, contact, at_ms);
    e.direction = Some(Direction::Inbound);
    e.content = Some("hello there".into());
    e
}

struct Aws {
    ddb: aws_sdk_dynamodb::Client,
    sqs: aws_sdk_sqs::Client,
    timers_table: String,
    effects_table: String,
    deliveries: String,
    deliveries_dlq: String,
    replies: String,
}

async fn aws() -> Aws {
    let conf = common::aws_config(&common::moto_endpoint()).await;
    let ddb = aws_sdk_dynamodb::Client::new(&conf);
    let sqs = aws_sdk_sqs::Client::new(&conf);
    let timers_table = common::unique("timers");
    common::create_timers_table(&ddb, &timers_table).await;
    let effects_table = common::unique("effects");
    common::create_idempotency_table(&ddb, &effects_table).await;
    Aws {
        deliveries: common::create_queue(&sqs, &common::unique("deliveries")).await,
        deliveries_dlq: common::create_queue(&sqs, &common::unique("deliveries-dlq")).await,
        replies: common::create_queue(&sqs, &common::unique("replies")).await,
        ddb,
        sqs,
        timers_table,
        effects_table,
    }
}

async fn sweeper(a: &Aws, config: &bluehook::config::Config) -> (Sweeper, Arc<MemoryMetrics>) {
    let senders = bluehook::sinks::sms::senders_from_config(&config.senders, None, None)
        .await
        .unwrap();
    let metrics = Arc::new(MemoryMetrics::default());
    let sweeper = Sweeper {
        timers: DynamoTimers::new(a.ddb.clone(), &a.timers_table),
        rules: bluehook::followups::rules_from_config(&config.followups, &["bot".into()]).unwrap(),
        senders: bluehook::sinks::reply::senders_by_source(config, &senders),
        deliveries: Some(Arc::new(SqsQueue::new(a.sqs.clone(), a.deliveries.clone()))),
        metrics: metrics.clone(),
    };
    (sweeper, metrics)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_ups_fire_once_from_the_timers_table_and_only_when_due_and_unanswered() {
    let a = aws().await;
    let sendblue = sendblue_api().await;
    let config = config(&sendblue.url, "http://127.0.0.1:9");
    let rules = bluehook::followups::rules_from_config(&config.followups, &["bot".into()]).unwrap();
    let observer = FollowupObserver {
        timers: DynamoTimers::new(a.ddb.clone(), &a.timers_table),
        rules,
        metrics: Arc::new(MemoryMetrics::default()),
    };
    let now = chrono::Utc::now().timestamp_millis();
    let read_at = now - 5_000;
    // A: read, no answer. B: read, then the contact wrote. C: read, then opted out.
    // D: delivered, never read.
    let mut events = vec![
        read_receipt("h-a", "+19990000001", read_at),
        read_receipt("h-b", "+19990000002", read_at),
        inbound("in-b", "+19990000002", read_at + 1_000),
        read_receipt("h-c", "+19990000003", read_at),
    ];
    let mut stop = inbound("stop-c", "+19990000003", read_at - 60_000);
    stop.opted_out = Some(true);
    events.push(stop);
    let mut delivered = read_receipt("h-d", "+19990000004", read_at);
    delivered.status = Some(MessageStatus::Delivered);
    events.push(delivered);
    // Every event seen twice (SQS redelivers): one timer per rule and message all the same.
    for e in events.iter().chain(events.iter()) {
        observer.observe(e).await.unwrap();
    }
    let timers = DynamoTimers::new(a.ddb.clone(), &a.timers_table);
    assert!(timers.timer("nudge:sendblue:h-a").await.unwrap().is_some());
    assert!(timers.timer("nudge:sendblue:h-d").await.unwrap().is_none());

    // A sweeper built after the timers were set (a deploy in between) fires them.
    let (sweeper, metrics) = sweeper(&a, &config).await;
    let swept = sweeper
        .sweep(chrono::Utc::now().timestamp_millis())
        .await
        .unwrap();
    assert_eq!(swept.sent, 1, "{swept:?}");
    assert_eq!(swept.skipped.get("replied"), Some(&1), "{swept:?}");
    assert_eq!(swept.skipped.get("opted_out"), Some(&1), "{swept:?}");
    assert_eq!(swept.due_events, 1, "{swept:?}");
    let sent = sendblue.requests();
    assert_eq!(sent.len(), 1);
    let body = sent[0].json();
    assert_eq!(body["number"], "+19990000001", "{body}");
    assert_eq!(body["content"], "Still there?", "{body}");
    assert_eq!(body["from_number"], LINE, "{body}");
    assert_eq!(metrics.get("followups.sent"), 1);
    let item = timers.timer("nudge:sendblue:h-a").await.unwrap().unwrap();
    assert_eq!(item["state"].as_s().unwrap(), "sent");
    assert!(
        !item.contains_key("due_bucket"),
        "a fired timer leaves the index"
    );

    // The followup.due event, for the rule's destination.
    let queued = common::drain_queue(&a.sqs, &a.deliveries).await;
    assert_eq!(queued.len(), 1, "{queued:?}");
    let m: DeliveryMessage = serde_json::from_str(&queued[0]).unwrap();
    assert_eq!(m.destination, "bot");
    let due = m.event;
    assert_eq!(due.kind, EventKind::FollowupDue);
    assert_eq!(due.provider_event.as_deref(), Some("nudge"));

    // The next sweeps: nothing twice; the day-long timers are not due yet.
    for _ in 0..2 {
        let again = sweeper
            .sweep(chrono::Utc::now().timestamp_millis())
            .await
            .unwrap();
        assert_eq!((again.fired, again.sent), (0, 0), "{again:?}");
    }
    assert_eq!(sendblue.requests().len(), 1);
    let later = timers
        .timer("tomorrow:sendblue:h-a")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(later["state"].as_s().unwrap(), "scheduled");
    // Swept a day later (the function down meanwhile: it catches up), it fires once.
    let day_later = now + 86_400_000 + 120_000;
    let swept = sweeper.sweep(day_later).await.unwrap();
    assert_eq!(swept.sent, 1, "{swept:?}");
    assert_eq!(sendblue.requests().len(), 2);
    assert_eq!(sendblue.requests()[1].json()["content"], "Checking in");
    assert!(common::drain_queue(&a.sqs, &a.deliveries).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bots_reply_is_queued_by_deliver_and_sent_once_by_automations() {
    let a = aws().await;
    let sendblue = sendblue_api().await;
    let bot = FakeHttp::start(|_: &Captured, _| {
        (200, json!({"reply": {"content": "Hi back"}}).to_string())
    })
    .await;
    let config = config(&sendblue.url, &bot.url);
    let effects = || -> Arc<dyn bluehook::idempotency::IdempotencyStore> {
        Arc::new(DynamoIdempotency::new(a.ddb.clone(), &a.effects_table))
    };
    let destinations = bluehook::destinations::from_config(&config.destinations, None)
        .await
        .unwrap();
    let targets: Vec<Arc<dyn Deliver>> = destinations
        .into_values()
        .map(|d| {
            Arc::new(Deliverer::new(
                d,
                effects(),
                Arc::new(MemoryMetrics::default()),
            )) as Arc<dyn Deliver>
        })
        .collect();
    let replies_queue: Arc<dyn Queue> = Arc::new(SqsQueue::new(a.sqs.clone(), a.replies.clone()));
    let deliver = SqsDeliveries::new(
        targets,
        a.sqs.clone(),
        a.deliveries.clone(),
        a.deliveries_dlq.clone(),
    )
    .with_follow_ons(Some(replies_queue));

    let e = inbound(
        "in-bot",
        "+19990000009",
        chrono::Utc::now().timestamp_millis(),
    );
    let envelope = DeliveryMessage::envelope("bot", &e.to_json());
    // Delivered, then redelivered (SQS at least once).
    for attempt in 1..=2 {
        let batch = sqs_event(&envelope, attempt);
        let answer = deliver.handle(batch).await;
        assert!(answer.batch_item_failures.is_empty(), "attempt {attempt}");
    }
    assert_eq!(bot.requests().len(), 1, "the bot is asked once");
    let replies = common::drain_queue(&a.sqs, &a.replies).await;
    assert_eq!(replies.len(), 1, "{replies:?}");

    // The automations function sends it, once, even when SQS hands it over twice.
    let senders = bluehook::sinks::sms::senders_from_config(&config.senders, None, None)
        .await
        .unwrap();
    let automations = SqsDeliveries::sink(Arc::new(Deliverer::new(
        bluehook::sinks::reply::Replies::new(
            bluehook::sinks::reply::senders_by_source(&config, &senders),
            Arc::new(MemoryMetrics::default()),
            bluehook::delivery::RetryPolicy {
                max_attempts: 5,
                first_delay: std::time::Duration::from_secs(1),
                max_delay: std::time::Duration::from_secs(1),
            },
        ),
        effects(),
        Arc::new(MemoryMetrics::default()),
    )));
    for attempt in 1..=2 {
        let answer = automations.handle(sqs_event(&replies[0], attempt)).await;
        assert!(answer.batch_item_failures.is_empty(), "attempt {attempt}");
    }
    let sent = sendblue.requests();
    assert_eq!(sent.len(), 1);
    let body = sent[0].json();
    assert_eq!(body["content"], "Hi back", "{body}");
    assert_eq!(body["number"], "+19990000009", "{body}");
    assert_eq!(body["from_number"], LINE, "{body}");
}

fn sqs_event(body: &str, attempt: u32) -> SqsEvent {
    let record = common::sqs_record(
        &format!("m{attempt}"),
        &format!("r{attempt}"),
        body,
        attempt,
        "q",
    );
    serde_json::from_value(common::sqs_event([record])).unwrap()
}
