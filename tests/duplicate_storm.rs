//! A duplicate storm against `bluehook dev` (default config: every sink on, recording into the
//! outbox): 10,000 deliveries of which 30% are duplicates (sequential repeats, concurrent
//! copies racing each other, and late copies after everything was processed), with READ
//! arriving before DELIVERED for a third of the messages. Every unique event is accepted once,
//! every CRM effect happens once, and each message ends in its latest status.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use bluehook::local::event_log;
use common::{stats, DevProcess};
use tokio::sync::Semaphore;

const OUTBOUND: &str = include_str!("../shared/testdata/sendblue/outbound.json");
const MESSAGES: usize = 2_333;
const UNIQUE: usize = MESSAGES * 3;
const TOTAL: usize = 10_000;

fn body(handle: &str, status: &str) -> String {
    OUTBOUND
        .replace("5a17319e-cbcf-443e-897e-d8b0c04b1b09", handle)
        .replace("\"SENT\"", &format!("\"{status}\""))
}

/// Posts until the answer is final (a 503 `in_progress` is retried, as a provider would).
async fn deliver(client: &reqwest::Client, url: &str, secret: &str, body: String) -> String {
    loop {
        let r = client
            .post(url)
            .header("sb-signing-secret", secret)
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .expect("the server answers");
        let status = r.status().as_u16();
        let v: serde_json::Value = r.json().await.unwrap();
        match status {
            200 => return v["status"].as_str().unwrap().to_owned(),
            503 => tokio::time::sleep(Duration::from_millis(20)).await,
            other => panic!("unexpected {other} {v}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_thousand_deliveries_with_thirty_percent_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let dev = DevProcess::start(dir.path(), &[]);
    let url = format!("{}/webhooks/sendblue/outbound", dev.base_url);
    let secret = std::fs::read_to_string(dir.path().join("dev-secret"))
        .unwrap()
        .trim()
        .to_owned();

    // The unique events: SENT, DELIVERED, READ of each message; every third message has its
    // READ before its DELIVERED.
    let mut unique = Vec::with_capacity(UNIQUE);
    for m in 0..MESSAGES {
        let handle = format!("storm-{m:05}");
        let order: [&str; 3] = if m % 3 == 0 {
            ["SENT", "READ", "DELIVERED"]
        } else {
            ["SENT", "DELIVERED", "READ"]
        };
        for status in order {
            unique.push(body(&handle, status));
        }
    }
    let duplicates = TOTAL - UNIQUE; // 3,001
    let repeats = duplicates / 3;
    let concurrent = duplicates / 3;
    let late = duplicates - repeats - concurrent;

    // Phase 1: every unique event once; `repeats` of them again right after; `concurrent` of
    // them sent as two racing copies.
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()
        .unwrap();
    let limit = Arc::new(Semaphore::new(32));
    let mut tasks = Vec::new();
    for (i, b) in unique.iter().enumerate() {
        let copies = if i % 7 == 1 && i / 7 < concurrent {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let (client, url, secret, b, limit) = (
                client.clone(),
                url.clone(),
                secret.clone(),
                b.clone(),
                limit.clone(),
            );
            tasks.push(tokio::spawn(async move {
                let _permit = limit.acquire_owned().await.unwrap();
                let first = deliver(&client, &url, &secret, b.clone()).await;
                let again = if i % 7 == 3 && i / 7 < repeats {
                    Some(deliver(&client, &url, &secret, b).await)
                } else {
                    None
                };
                (first, again)
            }));
        }
    }
    let mut answers: HashMap<String, usize> = HashMap::new();
    let mut sent = 0;
    for t in tasks {
        let (first, again) = t.await.unwrap();
        sent += 1;
        *answers.entry(first).or_default() += 1;
        if let Some(a) = again {
            sent += 1;
            assert_eq!(a, "duplicate", "a repeat after an ack is a duplicate");
            *answers.entry(a).or_default() += 1;
        }
    }
    // Let the sinks catch up, then the late copies.
    common::wait_until_async("the pipeline to drain", || stats(dir.path())["queued"] == 0).await;
    for b in unique.iter().rev().take(late) {
        assert_eq!(
            deliver(&client, &url, &secret, b.clone()).await,
            "duplicate"
        );
        sent += 1;
        *answers.entry("duplicate".into()).or_default() += 1;
    }
    assert_eq!(sent, TOTAL, "the storm's size");
    assert_eq!(answers["accepted"], UNIQUE, "{answers:?}");
    assert_eq!(answers["duplicate"], TOTAL - UNIQUE, "{answers:?}");

    assert!(dev.interrupt().success());
    let s = stats(dir.path());
    assert_eq!(s["accepted"], UNIQUE as u64, "{s}");
    assert_eq!(s["duplicates"], (TOTAL - UNIQUE) as u64, "{s}");
    assert_eq!(s["dead_lettered"], 0, "{s}");

    // Every unique event reached the event log once.
    let logged = event_log::read_all(&dir.path().join("events.ndjson")).unwrap();
    assert_eq!(logged.len(), UNIQUE);
    let ids: HashSet<&str> = logged.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids.len(), UNIQUE, "no event logged twice");

    // Every CRM effect once, and each message in its latest status.
    let db = rusqlite::Connection::open(dir.path().join("bluehook.db")).unwrap();
    let (effects, distinct): (i64, i64) = db
        .query_row(
            "SELECT count(*), count(DISTINCT key) FROM outbox WHERE sink = 'crm'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(effects, distinct, "no CRM effect twice");
    assert!(
        effects >= MESSAGES as i64,
        "at least one CRM push per message: {effects}"
    );
    let not_read: i64 = db
        .query_row(
            "SELECT count(*) FROM message_state WHERE handle LIKE 'storm-%' AND status <> 'read'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let tracked: i64 = db
        .query_row(
            "SELECT count(*) FROM message_state WHERE handle LIKE 'storm-%'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(tracked, MESSAGES as i64);
    assert_eq!(
        not_read, 0,
        "a READ is never overwritten by a later DELIVERED"
    );
}
