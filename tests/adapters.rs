//! The outbound adapters against local servers that speak the providers' documented APIs:
//! HubSpot (find or create the contact, log the message as a communication) and Sendblue's
//! send-message API for the SMS fallback.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bluehook::delivery::{Deliver, Deliverer, RetryPolicy};
use bluehook::event::{Direction, Event, EventKind, MessageStatus, Service};
use bluehook::idempotency::sqlite::SqliteIdempotency;
use bluehook::metrics::MemoryMetrics;
use bluehook::sinks::crm::{CrmAdapter, CrmSync};
use bluehook::sinks::sms::{SmsFallback, SmsSender};
use bluehook::sqlite::Db;
use bluehook::state::sqlite::SqliteState;
use common::fake::FakeHttp;

fn message(kind: EventKind, handle: &str, status: MessageStatus, content: &str) -> Event {
    let mut e = Event::new(
        "sendblue",
        "sendblue",
        kind,
        format!("sendblue:msg:{handle}:{status:?}"),
        chrono::Utc::now(),
        "{}".into(),
    );
    e.status = Some(status);
    e.direction = Some(if kind == EventKind::MessageReceived {
        Direction::Inbound
    } else {
        Direction::Outbound
    });
    e.service = Some(Service::IMessage);
    e.message_handle = Some(handle.into());
    e.content = Some(content.into());
    e.contact_number = Some("+19998887777".into());
    e.line_number = Some("+18649820355".into());
    e
}

fn retry() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 5,
        first_delay: Duration::from_secs(1),
        max_delay: Duration::from_secs(1),
    }
}

#[tokio::test]
async fn hubspot_finds_or_creates_the_contact_and_logs_each_message_once() {
    let created = Arc::new(AtomicBool::new(false));
    let c = created.clone();
    let hubspot = FakeHttp::start(move |req, _| match req.path.as_str() {
        "/crm/v3/objects/contacts/search" if c.load(Ordering::SeqCst) => {
            (200, r#"{"total":1,"results":[{"id":"101"}]}"#.into())
        }
        "/crm/v3/objects/contacts/search" => (200, r#"{"total":0,"results":[]}"#.into()),
        "/crm/v3/objects/contacts" => {
            c.store(true, Ordering::SeqCst);
            (201, r#"{"id":"101"}"#.into())
        }
        "/crm/v3/objects/communications" => (201, r#"{"id":"comm-1"}"#.into()),
        _ => (404, "{}".into()),
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(&dir.path().join("t.db")).unwrap();
    let section: toml::Value = toml::from_str(&format!(
        "adapter = \"hubspot\"\nbase_url = \"{}\"\ntoken = \"pat-na1-test\"",
        hubspot.url
    ))
    .unwrap();
    let crm = Deliverer::new(
        CrmSync::new(
            Arc::new(SqliteState::new(db.clone())),
            CrmAdapter::from_config(&section, None, None).await.unwrap(),
            Arc::new(MemoryMetrics::default()),
            retry(),
        ),
        Arc::new(SqliteIdempotency::new(db)),
        Arc::new(MemoryMetrics::default()),
    );
    let inbound = message(
        EventKind::MessageReceived,
        "in1",
        MessageStatus::Received,
        "Can we talk?",
    );
    let sent = message(
        EventKind::MessageStatus,
        "out1",
        MessageStatus::Sent,
        "Sure, 3pm?",
    );
    let delivered = message(
        EventKind::MessageStatus,
        "out1",
        MessageStatus::Delivered,
        "",
    );
    for e in [&inbound, &sent, &delivered, &inbound] {
        assert!(crm.deliver_completed(e, 1).await.verdict.finished());
    }
    let reqs = hubspot.requests();
    let paths: Vec<&str> = reqs.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "/crm/v3/objects/contacts/search",
            "/crm/v3/objects/contacts",
            "/crm/v3/objects/communications",
            "/crm/v3/objects/contacts/search",
            "/crm/v3/objects/communications",
        ],
        "the contact is created once, each message logged once, a delivery receipt logs nothing"
    );
    assert!(reqs
        .iter()
        .all(|r| r.headers["authorization"] == "Bearer pat-na1-test"));
    let search = reqs[0].json();
    assert_eq!(
        search["filterGroups"][0]["filters"][0]["propertyName"],
        "phone"
    );
    assert_eq!(
        search["filterGroups"][0]["filters"][0]["value"],
        "+19998887777"
    );
    assert_eq!(reqs[1].json()["properties"]["phone"], "+19998887777");
    let comm = reqs[2].json();
    assert_eq!(comm["properties"]["hs_communication_channel_type"], "SMS");
    assert_eq!(comm["properties"]["hs_communication_logged_from"], "CRM");
    assert_eq!(comm["properties"]["hs_communication_body"], "Can we talk?");
    assert_eq!(comm["associations"][0]["to"]["id"], "101");
    assert_eq!(
        reqs[4].json()["properties"]["hs_communication_body"],
        "Sure, 3pm?"
    );
}

#[tokio::test]
async fn sendblue_sends_the_fallback_through_its_send_message_api() {
    let sendblue = FakeHttp::start(|_, _| {
        (
            202,
            r#"{"message_handle":"sb-handle-1","status":"QUEUED"}"#.into(),
        )
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(&dir.path().join("t.db")).unwrap();
    let section: toml::Value = toml::from_str(&format!(
        "adapter = \"sendblue\"\nbase_url = \"{}\"\napi_key_id = \"key-id\"\napi_secret_key = \"key-secret\"\nfrom_number = \"+15550001111\"",
        sendblue.url
    ))
    .unwrap();
    let sms = Deliverer::new(
        SmsFallback::new(
            None,
            Arc::new(SmsSender::from_config(&section, None, None).await.unwrap()),
            Arc::new(MemoryMetrics::default()),
            retry(),
        ),
        Arc::new(SqliteIdempotency::new(db)),
        Arc::new(MemoryMetrics::default()),
    );
    let failed = message(
        EventKind::MessageStatus,
        "h1",
        MessageStatus::Failed,
        "Your table is ready",
    );
    for _ in 0..3 {
        assert!(sms.deliver_completed(&failed, 1).await.verdict.finished());
    }
    let reqs = sendblue.requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].path, "/api/send-message");
    assert_eq!(reqs[0].headers["sb-api-key-id"], "key-id");
    assert_eq!(reqs[0].headers["sb-api-secret-key"], "key-secret");
    let body = reqs[0].json();
    assert_eq!(body["number"], "+19998887777");
    assert_eq!(body["from_number"], "+15550001111");
    assert_eq!(body["content"], "Your table is ready");
}

#[tokio::test]
async fn sink_settings_are_checked_at_start() {
    for (text, needle) in [
        ("adapter = \"http\"", "url"),
        (
            "adapter = \"http\"\nurl = \"http://x\"\nsecret = \"s\"\ncolour = \"red\"",
            "colour",
        ),
        ("adapter = \"fax\"", "fax"),
    ] {
        let v: toml::Value = toml::from_str(text).unwrap();
        let e = CrmAdapter::from_config(&v, None, None)
            .await
            .err()
            .expect(text)
            .to_string();
        assert!(e.contains(needle) && e.contains("[sinks.crm]"), "{e}");
    }
    let v: toml::Value =
        toml::from_str("adapter = \"twilio\"\naccount_sid = \"AC1\"\nauth_token = \"t\"").unwrap();
    let e = SmsSender::from_config(&v, None, None)
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("from") && e.contains("messaging_service_sid"),
        "{e}"
    );
}
