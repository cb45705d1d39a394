//! crm-sync and sms-fallback on their AWS adapters (DynamoDB state and effect keys on moto),
//! talking to local fakes of a CRM endpoint and of Twilio: each effect happens once, even
//! when SQS redelivers the batch or the far side fails for a while.

mod common;

use std::sync::Arc;
use std::time::Duration;

use aws_lambda_events::sqs::SqsEvent;
use bluehook::delivery::sqs::{Redrive, SqsDeliveries};
use bluehook::delivery::{Deliverer, RetryPolicy};
use bluehook::event::{Direction, Event, EventKind, MessageStatus, Service};
use bluehook::idempotency::dynamodb::DynamoIdempotency;
use bluehook::metrics::MemoryMetrics;
use bluehook::sinks::crm::{CrmAdapter, CrmSync};
use bluehook::sinks::sms::{SmsFallback, SmsSender};
use bluehook::state::dynamodb::DynamoState;
use common::fake::{twilio_ok, FakeHttp};

const CRM_SECRET: &str = "whsec_YXdzLXNpbmtzLWNybS1rZXktM2Y5ZA==";
/// A token in the CRM endpoint's path, as many webhook URLs carry one.
const CRM_PATH_TOKEN: &str = "T0KEN-aws-sinks-crm-path-2c7e";
const TWILIO_TOKEN: &str = "tw-auth-T0KEN-77a1b3c9d0";
/// No secret, and no message text either, in any log line.
const NEVER_SHOWN: &[&str] = &[CRM_SECRET, CRM_PATH_TOKEN, TWILIO_TOKEN, "Dinner at 8?"];

fn event(handle: &str, status: MessageStatus, raw: &str, content: Option<&str>) -> Event {
    let mut e = Event::new(
        "sendblue",
        "sendblue",
        EventKind::MessageStatus,
        format!("sendblue:msg:{handle}:{raw}"),
        chrono::Utc::now(),
        "{}".into(),
    );
    e.status = Some(status);
    e.raw_status = Some(raw.into());
    e.direction = Some(Direction::Outbound);
    e.service = Some(Service::IMessage);
    e.message_handle = Some(handle.into());
    e.content = content.map(str::to_owned);
    e.contact_number = Some("+19998887777".into());
    e.line_number = Some("+18649820355".into());
    e
}

fn sqs_event(events: &[Event]) -> SqsEvent {
    let records = events
        .iter()
        .enumerate()
        .map(|(i, e)| common::sqs_record(&format!("m{i}"), &format!("r{i}"), &e.to_json(), 1, "q"));
    serde_json::from_value(common::sqs_event(records)).unwrap()
}

struct Tables {
    ddb: aws_sdk_dynamodb::Client,
    state: String,
    effects: String,
}

async fn tables() -> Tables {
    common::leaks::capture_logs();
    let conf = common::aws_config(&common::moto_endpoint()).await;
    let ddb = aws_sdk_dynamodb::Client::new(&conf);
    let (state, effects) = (common::unique("state"), common::unique("idem"));
    common::create_idempotency_table(&ddb, &state).await;
    common::create_idempotency_table(&ddb, &effects).await;
    Tables {
        ddb,
        state,
        effects,
    }
}

fn retry() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 5,
        first_delay: Duration::from_secs(1),
        max_delay: Duration::from_secs(1),
    }
}

async fn crm_sync(t: &Tables, url: &str) -> SqsDeliveries<Redrive> {
    crm_sync_with(t, url, "").await
}

/// crm-sync with the `http` adapter, `extra` added to its section.
async fn crm_sync_with(t: &Tables, url: &str, extra: &str) -> SqsDeliveries<Redrive> {
    let section: toml::Value = toml::from_str(&format!(
        "adapter = \"http\"\nurl = \"{url}/hooks/{CRM_PATH_TOKEN}\"\nsecret = \"{CRM_SECRET}\"\n{extra}"
    ))
    .unwrap();
    SqsDeliveries::sink(Arc::new(Deliverer::new(
        CrmSync::new(
            Arc::new(DynamoState::new(t.ddb.clone(), &t.state)),
            CrmAdapter::from_config(&section, None, None).await.unwrap(),
            Arc::new(MemoryMetrics::default()),
            retry(),
        ),
        Arc::new(DynamoIdempotency::new(t.ddb.clone(), &t.effects)),
        Arc::new(MemoryMetrics::default()),
    )))
}

async fn sms_fallback(t: &Tables, url: &str) -> SqsDeliveries<Redrive> {
    let section: toml::Value = toml::from_str(&format!(
        "adapter = \"twilio\"\nbase_url = \"{url}\"\naccount_sid = \"AC123\"\nauth_token = \"{TWILIO_TOKEN}\"\nfrom = \"+15550001111\""
    ))
    .unwrap();
    SqsDeliveries::sink(Arc::new(Deliverer::new(
        SmsFallback::new(
            Some(Arc::new(DynamoState::new(t.ddb.clone(), &t.state))),
            Arc::new(SmsSender::from_config(&section, None, None).await.unwrap()),
            Arc::new(MemoryMetrics::default()),
            retry(),
        ),
        Arc::new(DynamoIdempotency::new(t.ddb.clone(), &t.effects)),
        Arc::new(MemoryMetrics::default()),
    )))
}

#[tokio::test]
async fn a_redelivered_batch_pushes_no_second_crm_update_and_sends_no_second_sms() {
    // ERROR and FAILED of one message are written concurrently: one at a time on the way to
    // moto, as DynamoDB applies them (`Proxy::serialize_dynamodb_writes`).
    let (t, proxy) = counted_tables().await;
    proxy.serialize_dynamodb_writes();
    let crm_server = FakeHttp::start(|_, _| (200, "{}".into())).await;
    let twilio = FakeHttp::start(twilio_ok).await;
    let crm = crm_sync(&t, &crm_server.url).await;
    let sms = sms_fallback(&t, &twilio.url).await;

    let sent = event("h1", MessageStatus::Sent, "SENT", Some("Dinner at 8?"));
    // The failure webhook carries no content: the SMS takes it from the state.
    let failed = event("h1", MessageStatus::Failed, "ERROR", None);
    let failed_again = event("h1", MessageStatus::Failed, "FAILED", None);
    let delivered_other = event("h2", MessageStatus::Delivered, "DELIVERED", Some("hi"));
    let crm_batch = [sent.clone(), delivered_other.clone()];
    for _ in 0..2 {
        assert!(crm
            .handle(sqs_event(&crm_batch))
            .await
            .batch_item_failures
            .is_empty());
    }
    let sms_batch = [failed.clone(), failed_again.clone()];
    for round in 0..3 {
        assert!(crm
            .handle(sqs_event(&sms_batch))
            .await
            .batch_item_failures
            .is_empty());
        let retried = sms
            .handle(sqs_event(&sms_batch))
            .await
            .batch_item_failures
            .len();
        // In the first round the two failure events of h1 race for the one effect key: the
        // loser is retried, and later finds the SMS already sent.
        assert!(
            retried <= usize::from(round == 0),
            "round {round}: {retried} retried"
        );
    }

    let pushes = crm_server.requests();
    let ids: Vec<&str> = pushes
        .iter()
        .map(|r| r.headers["webhook-id"].as_str())
        .collect();
    // SENT, DELIVERED of h2, and ERROR; FAILED does not move h1 past ERROR.
    assert_eq!(pushes.len(), 3, "{ids:?}");
    // The batch's events are handled concurrently: compare as sets.
    let mut got: Vec<&str> = ids.clone();
    got.sort_unstable();
    let mut want = vec![
        sent.idempotency_key.as_str(),
        delivered_other.idempotency_key.as_str(),
    ];
    let failure_pushed: Vec<&str> = got
        .iter()
        .copied()
        .filter(|id| id.starts_with("sendblue:msg:h1:") && !id.ends_with(":SENT"))
        .collect();
    assert_eq!(
        failure_pushed.len(),
        1,
        "one of ERROR / FAILED (same rank) is the change: {ids:?}"
    );
    want.push(failure_pushed[0]);
    want.sort_unstable();
    assert_eq!(got, want);
    // Each push verifies as a Standard Webhooks delivery under the CRM's secret.
    let verifier = bluehook::provider::standard_webhooks::StandardWebhooks::new(
        &[bluehook::config::Secret::new(CRM_SECRET)],
        300,
    )
    .unwrap();
    for r in &pushes {
        let mut h = http::HeaderMap::new();
        for k in ["webhook-id", "webhook-timestamp", "webhook-signature"] {
            h.insert(k, r.headers[k].parse().unwrap());
        }
        let req = bluehook::provider::WebhookRequest {
            source: "crm",
            type_hint: None,
            headers: &h,
            query: None,
            body: r.body.as_bytes(),
            received_at: chrono::Utc::now(),
        };
        use bluehook::provider::Provider;
        verifier.verify(&req).unwrap();
        assert_eq!(r.path, format!("/hooks/{CRM_PATH_TOKEN}"));
    }

    let sms_requests = twilio.requests();
    assert_eq!(
        sms_requests.len(),
        1,
        "one fallback SMS per original message, ever"
    );
    let r = &sms_requests[0];
    assert_eq!(r.path, "/2010-04-01/Accounts/AC123/Messages.json");
    let form = r.form();
    assert_eq!(form["To"], "+19998887777");
    assert_eq!(form["From"], "+15550001111");
    assert_eq!(form["Body"], "Dinner at 8?");
    use base64::Engine;
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("AC123:{TWILIO_TOKEN}"));
    assert_eq!(r.headers["authorization"], format!("Basic {auth}"));
    common::leaks::assert_no_secret(NEVER_SHOWN);
}

#[tokio::test]
async fn a_crm_failing_for_a_while_gets_the_push_once_it_recovers() {
    let t = tables().await;
    let crm_server = FakeHttp::start(|_, n| {
        if n < 2 {
            (500, "{}".into())
        } else {
            (200, "{}".into())
        }
    })
    .await;
    let crm = crm_sync(&t, &crm_server.url).await;
    let batch = [
        event("h9", MessageStatus::Read, "READ", None),
        event("h10", MessageStatus::Sent, "SENT", Some("x")),
    ];
    // First delivery: both fail (500s); then the CRM recovers.
    let first = crm.handle(sqs_event(&batch)).await;
    assert_eq!(first.batch_item_failures.len(), 2);
    // SQS redelivers only the failed records: each is pushed once now.
    assert!(crm
        .handle(sqs_event(&batch))
        .await
        .batch_item_failures
        .is_empty());
    assert!(crm
        .handle(sqs_event(&batch))
        .await
        .batch_item_failures
        .is_empty());
    let ok: Vec<_> = crm_server.requests().into_iter().skip(2).collect();
    assert_eq!(ok.len(), 2);
    common::leaks::assert_no_secret(NEVER_SHOWN);
}

#[tokio::test]
async fn a_rejected_sms_is_retried_and_sent_once() {
    let t = tables().await;
    let twilio = FakeHttp::start(|c, n| {
        if n == 0 {
            (400, "{\"message\":\"busy\"}".into())
        } else {
            twilio_ok(c, n)
        }
    })
    .await;
    let sms = sms_fallback(&t, &twilio.url).await;
    let failed = [event(
        "h20",
        MessageStatus::Failed,
        "ERROR",
        Some("call me"),
    )];
    assert_eq!(
        sms.handle(sqs_event(&failed))
            .await
            .batch_item_failures
            .len(),
        1
    );
    assert!(sms
        .handle(sqs_event(&failed))
        .await
        .batch_item_failures
        .is_empty());
    assert!(sms
        .handle(sqs_event(&failed))
        .await
        .batch_item_failures
        .is_empty());
    assert_eq!(
        twilio.requests().len(),
        2,
        "one refused, one sent, none after"
    );
    // The provider's answer is recorded with the effect key.
    let item = t
        .ddb
        .get_item()
        .table_name(&t.effects)
        .key(
            "pk",
            aws_sdk_dynamodb::types::AttributeValue::S("effect:sms:sendblue:h20".into()),
        )
        .send()
        .await
        .unwrap()
        .item
        .unwrap();
    assert_eq!(item["state"].as_s().unwrap(), "completed");
    assert!(item["result"].as_s().unwrap().starts_with("SM"));
    common::leaks::assert_no_secret(NEVER_SHOWN);
}

/// Twilio's answer to a send is cut in the middle (the SMS may have gone out): the fallback must
/// not send it again. The record fails (it goes to the DLQ for a person), and redeliveries do
/// not call Twilio a second time.
#[tokio::test]
async fn an_sms_whose_answer_was_cut_is_never_sent_twice() {
    use common::proxy::{Fault, Proxy};
    let t = tables().await;
    let twilio = FakeHttp::start(twilio_ok).await;
    let proxy = Proxy::start(&twilio.url, false).await;
    proxy.inject("POST", Fault::Cut, Some(1));
    let sms = sms_fallback(&t, &proxy.url).await;
    let failed = [event(
        "h30",
        MessageStatus::Failed,
        "ERROR",
        Some("call me"),
    )];
    for _ in 0..3 {
        assert_eq!(
            sms.handle(sqs_event(&failed))
                .await
                .batch_item_failures
                .len(),
            1,
            "an unknown outcome stays failed, for the dead-letter queue"
        );
    }
    assert_eq!(
        twilio.requests().len(),
        1,
        "Twilio was called once, never again"
    );
    assert_eq!(proxy.faults(), 1);
    common::leaks::assert_no_secret(NEVER_SHOWN);
}

/// The CRM endpoint is unreachable (connections refused by the proxy), then back: the push is
/// retried and made once.
#[tokio::test]
async fn a_crm_behind_refused_connections_gets_the_push_once_it_is_reachable() {
    use common::proxy::{Fault, Proxy};
    let t = tables().await;
    let crm = FakeHttp::start(|_, _| (200, "{}".into())).await;
    let proxy = Proxy::start(&crm.url, false).await;
    proxy.inject("POST", Fault::Refuse, Some(2));
    let sync = crm_sync(&t, &proxy.url).await;
    let sent = [event("h31", MessageStatus::Sent, "SENT", Some("hello"))];
    for _ in 0..2 {
        assert_eq!(
            sync.handle(sqs_event(&sent))
                .await
                .batch_item_failures
                .len(),
            1
        );
    }
    for _ in 0..2 {
        assert!(sync
            .handle(sqs_event(&sent))
            .await
            .batch_item_failures
            .is_empty());
    }
    assert_eq!(crm.requests().len(), 1, "pushed once, after the refusals");
    common::leaks::assert_no_secret(NEVER_SHOWN);
}

/// Hands `events` to crm-sync one batch each: every one handled, each costing `writes`
/// DynamoDB writes.
async fn each_costs(
    crm: &SqsDeliveries<Redrive>,
    proxy: &common::proxy::Proxy,
    events: &[Event],
    writes: u64,
) {
    for (i, e) in events.iter().enumerate() {
        proxy.reset_counts();
        assert!(crm
            .handle(sqs_event(std::slice::from_ref(e)))
            .await
            .batch_item_failures
            .is_empty());
        assert_eq!(
            proxy.dynamodb_writes(),
            writes,
            "event {i}: {:?}",
            proxy.counts()
        );
    }
}

/// The tables, reached through a proxy that counts each AWS request.
async fn counted_tables() -> (Tables, common::proxy::Proxy) {
    let t = tables().await;
    let proxy = common::proxy::Proxy::start(&common::moto_endpoint(), false).await;
    let conf = common::aws_config(&proxy.url).await;
    let counted = Tables {
        ddb: aws_sdk_dynamodb::Client::new(&conf),
        state: t.state.clone(),
        effects: t.effects.clone(),
    };
    (counted, proxy)
}

/// crm-sync's DynamoDB writes, counted on the wire: an in-order message event pushed to the
/// `http` adapter costs three (its message's state, its conversation, the push recorded on the
/// message); a redelivery is answered by its state update that the push is done: no push.
#[tokio::test]
async fn an_in_order_message_event_costs_crm_sync_three_dynamodb_writes() {
    let (counted, proxy) = counted_tables().await;
    let crm_server = FakeHttp::start(|_, _| (200, "{}".into())).await;
    let crm = crm_sync(&counted, &crm_server.url).await;
    let events = [
        event("w1", MessageStatus::Sent, "SENT", Some("hello")),
        event("w1", MessageStatus::Delivered, "DELIVERED", None),
        event("w1", MessageStatus::Read, "READ", None),
    ];
    each_costs(&crm, &proxy, &events, 3).await;
    assert_eq!(crm_server.requests().len(), 3);
    proxy.reset_counts();
    assert!(crm
        .handle(sqs_event(&events[2..]))
        .await
        .batch_item_failures
        .is_empty());
    assert_eq!(
        crm_server.requests().len(),
        3,
        "a redelivery pushes nothing"
    );
    assert!(proxy.dynamodb_writes() <= 4, "{:?}", proxy.counts());
}

/// `receiver_dedupes = true`: the push is not recorded, two writes per in-order message event
/// (its message's state, its conversation). A redelivered event reaches the receiver again with
/// the same `webhook-id` (for it to drop); a stale event still pushes nothing.
#[tokio::test]
async fn a_receiver_that_dedupes_makes_it_two_dynamodb_writes_and_gets_redeliveries_by_the_same_id()
{
    let (counted, proxy) = counted_tables().await;
    let crm_server = FakeHttp::start(|_, _| (200, "{}".into())).await;
    let crm = crm_sync_with(&counted, &crm_server.url, "receiver_dedupes = true").await;
    let events = [
        event("d1", MessageStatus::Sent, "SENT", Some("hello")),
        event("d1", MessageStatus::Delivered, "DELIVERED", None),
        event("d1", MessageStatus::Read, "READ", None),
    ];
    each_costs(&crm, &proxy, &events, 2).await;
    assert_eq!(crm_server.requests().len(), 3);
    let id_of = |r: &common::fake::Captured| r.headers.get("webhook-id").cloned();

    // SQS redelivers READ: pushed again, under the id the receiver has seen.
    assert!(crm
        .handle(sqs_event(&events[2..]))
        .await
        .batch_item_failures
        .is_empty());
    let got = crm_server.requests();
    assert_eq!(got.len(), 4, "a redelivery is pushed again");
    assert!(id_of(&got[3]).is_some());
    assert_eq!(id_of(&got[3]), id_of(&got[2]), "the same webhook-id");

    // A stale SENT (READ is further on): nothing pushed.
    let stale = event("d1", MessageStatus::Sent, "SENT-again", None);
    assert!(crm
        .handle(sqs_event(&[stale]))
        .await
        .batch_item_failures
        .is_empty());
    assert_eq!(
        crm_server.requests().len(),
        4,
        "a stale event pushes nothing"
    );
}

/// The router packs what it sends a sink's queue: one SQS message holds many events; crm-sync
/// pushes each once, and a pack with one failed push comes back whole without the others being
/// pushed again.
#[tokio::test]
async fn routed_events_reach_crm_sync_in_packs_and_a_pack_retried_for_one_push_repeats_none() {
    use bluehook::processing::{Processor, Record};
    use bluehook::queue::{sqs::SqsQueue, Queue};
    use bluehook::router::Router;
    use bluehook::routing::{Destination, Routes};
    use std::sync::atomic::{AtomicBool, Ordering};

    // A pack's events share a conversation, written concurrently: one at a time on the way to
    // moto, as DynamoDB applies them.
    let (t, proxy) = counted_tables().await;
    proxy.serialize_dynamodb_writes();
    let sqs = aws_sdk_sqs::Client::new(&common::aws_config(&common::moto_endpoint()).await);
    let url = common::create_queue(&sqs, &common::unique("crm")).await;
    let failed_once = Arc::new(AtomicBool::new(false));
    let crm_server = FakeHttp::start({
        let failed_once = failed_once.clone();
        move |req, _| {
            if req.json()["event"]["message_handle"] == "h-bad"
                && !failed_once.swap(true, Ordering::SeqCst)
            {
                (500, "{}".into())
            } else {
                (200, "{}".into())
            }
        }
    })
    .await;
    let crm = crm_sync(&t, &crm_server.url).await;

    let mut queues: std::collections::BTreeMap<Destination, Arc<dyn Queue>> = Default::default();
    queues.insert(
        Destination::Crm,
        Arc::new(SqsQueue::packing(sqs.clone(), &url)),
    );
    let router = Router::new(
        Routes::defaults(),
        queues,
        Arc::new(MemoryMetrics::default()),
    );
    let events: Vec<Event> = (0..25)
        .map(|i| {
            let handle = if i == 7 {
                "h-bad".into()
            } else {
                format!("h-pack-{i}")
            };
            event(&handle, MessageStatus::Sent, "SENT", Some("x"))
        })
        .collect();
    let records: Vec<Record> = events
        .iter()
        .enumerate()
        .map(|(i, e)| Record {
            id: format!("in{i}"),
            body: e.to_json(),
            receive_count: 1,
        })
        .collect();
    assert!(router.process(records).await.is_empty());

    // The 25 events are one message on the crm queue.
    let queue = SqsQueue::new(sqs.clone(), &url);
    let received = queue.receive(10, Duration::from_secs(1)).await.unwrap();
    assert_eq!(received.len(), 1, "one pack");
    assert_eq!(Event::all_from_json(&received[0].body).unwrap(), events);
    let as_sqs = |count: u32| -> SqsEvent {
        let m = &received[0];
        let record = common::sqs_record(&m.message_id, &m.receipt, &m.body, count, "q");
        serde_json::from_value(common::sqs_event([record])).unwrap()
    };

    // One push fails: the pack stays on the queue, the other 24 are pushed.
    let first = crm.handle(as_sqs(1)).await;
    let kept: Vec<_> = first
        .batch_item_failures
        .iter()
        .map(|f| f.item_identifier.clone())
        .collect();
    assert_eq!(kept, vec![received[0].message_id.clone()]);
    assert_eq!(crm_server.requests().len(), 25);
    // Redelivered whole: only the failed one is pushed.
    assert!(crm.handle(as_sqs(2)).await.batch_item_failures.is_empty());
    let pushes = crm_server.requests();
    assert_eq!(pushes.len(), 26);
    assert!(pushes[25].body.contains("h-bad"));
    for e in &events {
        let handle = e.message_handle.as_deref().unwrap();
        let n = pushes
            .iter()
            .filter(|p| p.json()["event"]["message_handle"] == handle)
            .count();
        let tries = if handle == "h-bad" { 2 } else { 1 };
        assert_eq!(n, tries, "{handle}: {n} requests");
    }
    queue.delete(&[received[0].receipt.clone()]).await.unwrap();
    common::leaks::assert_no_secret(NEVER_SHOWN);
}
