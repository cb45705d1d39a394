//! `bluehook dev` as a real process over real HTTP: acked events survive kill -9, counts
//! survive restarts, bad input is refused with its code, Ctrl-C stops cleanly.

mod common;

use std::collections::HashMap;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bluehook::local::event_log;
use common::{stats, DevProcess};

const OUTBOUND: &str = include_str!("../shared/testdata/sendblue/outbound.json");

fn body(handle: &str, status: &str) -> String {
    OUTBOUND
        .replace("5a17319e-cbcf-443e-897e-d8b0c04b1b09", handle)
        .replace("\"SENT\"", &format!("\"{status}\""))
}

fn secret(dir: &std::path::Path) -> String {
    std::fs::read_to_string(dir.join("dev-secret"))
        .unwrap()
        .trim()
        .to_owned()
}

async fn post(
    client: &reqwest::Client,
    url: &str,
    secret: &str,
    body: String,
) -> reqwest::Result<(u16, serde_json::Value)> {
    let r = client
        .post(url)
        .header("sb-signing-secret", secret)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await?;
    let status = r.status().as_u16();
    let v = r.json().await.unwrap_or(serde_json::Value::Null);
    Ok((status, v))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acked_events_survive_kill_9_and_reach_every_destination_once() {
    let dir = tempfile::tempdir().unwrap();
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let counter = Arc::new(AtomicUsize::new(0));
    // Three kill -9s under load, each at a different (pseudo-random) moment.
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as usize;
    for round in 0..3 {
        let dev = DevProcess::start(dir.path(), &[]);
        let url = format!("{}/webhooks/sendblue/outbound", dev.base_url);
        let secret = secret(dir.path());
        let start = acked.lock().unwrap().len();
        let kill_after = start + 150 + (seed >> (round * 5)) % 300;
        let mut senders = Vec::new();
        for _ in 0..8 {
            let (acked, counter, url, secret) =
                (acked.clone(), counter.clone(), url.clone(), secret.clone());
            senders.push(tokio::spawn(async move {
                let client = reqwest::Client::new();
                loop {
                    let n = counter.fetch_add(1, Ordering::SeqCst);
                    if n >= 20_000 {
                        return;
                    }
                    match post(&client, &url, &secret, body(&format!("h-{n}"), "DELIVERED")).await {
                        Ok((200, v)) if v["status"] == "accepted" => {
                            acked
                                .lock()
                                .unwrap()
                                .push(v["events"][0].as_str().unwrap().to_owned());
                        }
                        Ok((status, v)) => panic!("unexpected answer {status} {v}"),
                        // The process was killed under us: this request was never acked.
                        Err(_) => return,
                    }
                }
            }));
        }
        while acked.lock().unwrap().len() < kill_after {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        dev.kill9();
        for s in senders {
            s.await.unwrap();
        }
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= 450);

    let dev = DevProcess::start(dir.path(), &[]);
    let s = common::wait_until_drained(dir.path());
    // The event log (the router): every acked event, once.
    let logged = event_log::read_all(&dir.path().join("events.ndjson")).unwrap();
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for e in &logged {
        *seen.entry(e.id.as_str()).or_default() += 1;
    }
    assert!(seen.values().all(|&n| n == 1), "no event logged twice");
    for id in &acked {
        assert_eq!(
            seen.get(id.as_str()),
            Some(&1),
            "acked event {id} is in the log"
        );
    }
    assert!(s["accepted"].as_u64().unwrap() >= acked.len() as u64, "{s}");
    assert_eq!(s["dead_lettered"], 0);
    // The CRM (outbox): one push per message, none twice.
    let key_of: HashMap<&str, &str> = logged
        .iter()
        .map(|e| (e.id.as_str(), e.idempotency_key.as_str()))
        .collect();
    let db = rusqlite::Connection::open(dir.path().join("bluehook.db")).unwrap();
    let mut pushes: HashMap<String, usize> = HashMap::new();
    let mut stmt = db
        .prepare("SELECT key FROM outbox WHERE sink = 'crm'")
        .unwrap();
    for key in stmt.query_map([], |r| r.get::<_, String>(0)).unwrap() {
        *pushes.entry(key.unwrap()).or_default() += 1;
    }
    for id in &acked {
        assert_eq!(
            pushes.get(key_of[id.as_str()]),
            Some(&1),
            "CRM push of {id}"
        );
    }
    // The analytics archive: every acked event (copies of a redelivered batch are dropped by
    // readers, by event id).
    let archived: std::collections::HashSet<String> =
        bluehook::analytics::read_archive(&dir.path().join(bluehook::local::ANALYTICS_DIR))
            .into_iter()
            .map(|e| e.id)
            .collect();
    for id in &acked {
        assert!(archived.contains(id), "acked event {id} is archived");
    }

    // Idempotency keys survived too: a provider retry of an acked event is a duplicate.
    let secret = secret(dir.path());
    let client = reqwest::Client::new();
    let url = format!("{}/webhooks/sendblue/outbound", dev.base_url);
    let (status, v) = post(&client, &url, &secret, body("h-0", "DELIVERED"))
        .await
        .unwrap();
    assert_eq!((status, v["status"].as_str()), (200, Some("duplicate")));
    assert!(dev.interrupt().success());
}

#[tokio::test]
async fn bad_input_over_http_is_refused_with_its_code_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let dev = DevProcess::start(dir.path(), &[]);
    let base = dev.base_url.clone();
    let secret = secret(dir.path());
    let client = reqwest::Client::new();
    let url = format!("{base}/webhooks/sendblue");

    let cases: Vec<(reqwest::RequestBuilder, u16, &str)> = vec![
        (
            client
                .post(&url)
                .header("sb-signing-secret", "wrong")
                .body(OUTBOUND),
            401,
            "unauthorized",
        ),
        (client.post(&url).body(OUTBOUND), 401, "unauthorized"),
        (
            client
                .post(&url)
                .header("sb-signing-secret", &secret)
                .body("not json"),
            400,
            "bad_request",
        ),
        (
            client
                .post(&url)
                .header("sb-signing-secret", &secret)
                .body(vec![b'{'; 300 * 1024]),
            413,
            "too_large",
        ),
        (
            client.post(format!("{base}/webhooks/nosuch")).body("{}"),
            404,
            "unknown_source",
        ),
        (client.get(&url), 405, "method_not_allowed"),
        (client.put(&url).body("{}"), 405, "method_not_allowed"),
    ];
    for (req, status, code) in cases {
        let r = req.send().await.unwrap();
        assert_eq!(r.status().as_u16(), status);
        assert_eq!(r.headers()["content-type"], "application/json");
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(v["status"], "error");
        assert_eq!(v["error"], code);
    }
    let health = client.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(health.status().as_u16(), 200);

    // A body at exactly the limit is read (and then judged on its content).
    let at_limit = format!("{{\"pad\": \"{}\"}}", "x".repeat(256 * 1024 - 11));
    assert_eq!(at_limit.len(), 256 * 1024);
    let r = client
        .post(&url)
        .header("sb-signing-secret", &secret)
        .body(at_limit)
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status().as_u16(),
        200,
        "a verified unknown shape is accepted"
    );

    common::wait_until_drained(dir.path());
    assert!(dev.interrupt().success());
    let s = stats(dir.path());
    assert_eq!(s["rejected"]["unauthorized"], 2);
    assert_eq!(s["rejected"]["bad_request"], 1);
    assert_eq!(s["rejected"]["too_large"], 1);
    assert_eq!(s["rejected"]["unknown_source"], 1);
    assert_eq!(s["rejected"]["method_not_allowed"], 2);
    assert_eq!(s["auth_failures"]["bad_signature"], 1);
    assert_eq!(s["auth_failures"]["missing_signature"], 1);
    assert_eq!(s["accepted"], 1);
    assert_eq!(s["received"], 8);
    let log = std::fs::read_to_string(dir.path().join("events.ndjson")).unwrap();
    assert_eq!(log.lines().count(), 1, "nothing refused reached the queue");
}

#[test]
fn bluehook_send_posts_every_sendblue_sample_and_duplicates_are_answered() {
    let dir = tempfile::tempdir().unwrap();
    let dev = DevProcess::start(dir.path(), &[]);
    let url = format!("{}/webhooks/sendblue", dev.base_url);
    let send = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_bluehook"))
            .arg("send")
            .args(args)
            .args(["--url", &url, "--data-dir"])
            .arg(dir.path())
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    for sample in [
        "receive",
        "outbound",
        "typing_indicator",
        "call_log",
        "line_blocked",
        "line_assigned",
        "contact_created",
    ] {
        let (ok, out) = send(&[&format!("sendblue.{sample}")]);
        assert!(ok, "{sample}: {out}");
        assert!(out.contains("\"status\":\"accepted\""), "{sample}: {out}");
        assert!(
            out.contains(&format!("/webhooks/sendblue/{sample}")),
            "{out}"
        );
    }
    let args = [
        "sendblue.outbound",
        "--handle",
        "fixed-1",
        "--status",
        "READ",
        "--content",
        "hello",
    ];
    assert!(send(&args).1.contains("accepted"));
    assert!(send(&args).1.contains("\"status\":\"duplicate\""));
    let (ok, out) = send(&["sendblue.outbound", "--secret", "wrong"]);
    assert!(!ok);
    assert!(out.contains("401"), "{out}");

    common::wait_until_drained(dir.path());
    assert!(dev.interrupt().success());
    let log = event_log::read_all(&dir.path().join("events.ndjson")).unwrap();
    let kinds: Vec<&str> = log.iter().map(|e| e.kind.as_str()).collect();
    for k in [
        "message.received",
        "message.status",
        "typing",
        "call_log",
        "line_blocked",
        "line_assigned",
        "contact_created",
    ] {
        assert!(kinds.contains(&k), "{k} in {kinds:?}");
    }
    let read = log
        .iter()
        .find(|e| e.message_handle.as_deref() == Some("fixed-1"))
        .unwrap();
    assert_eq!(read.raw_status.as_deref(), Some("READ"));
    assert_eq!(read.content.as_deref(), Some("hello"));
}

#[test]
fn with_a_config_file_it_serves_the_configured_sources_and_rotated_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("custom.toml");
    std::fs::write(
        &config,
        "[ingress]\nmax_body_bytes = 4096\n\n[sources.sb-main]\nprovider = \"sendblue\"\nsecrets = [\"env:BLUEHOOK_TEST_ROTATED\", \"old-secret\"]\n",
    )
    .unwrap();
    std::env::set_var("BLUEHOOK_TEST_ROTATED", "new-secret");
    let dev = DevProcess::start(dir.path(), &["--config", config.to_str().unwrap()]);
    let url = format!("{}/webhooks/sb-main/outbound", dev.base_url);
    let client = reqwest::blocking_client();
    for (secret, want) in [("new-secret", 200), ("old-secret", 200), ("other", 401)] {
        let r = client(
            &url,
            secret,
            &body(&uuid::Uuid::new_v4().to_string(), "SENT"),
        );
        assert_eq!(r, want, "{secret}");
    }
    let big = format!("{{\"pad\": \"{}\"}}", "x".repeat(5000));
    assert_eq!(
        client(&url, "new-secret", &big),
        413,
        "the configured limit applies"
    );
    assert!(
        !dir.path().join("dev-secret").exists(),
        "no dev secret with a config file"
    );
    assert!(dev.interrupt().success());
}

mod reqwest {
    pub use ::reqwest::*;

    /// A tiny blocking POST for the synchronous tests.
    pub fn blocking_client() -> impl Fn(&str, &str, &str) -> u16 {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let client = Client::new();
        move |url, secret, body| {
            rt.block_on(async {
                client
                    .post(url)
                    .header("sb-signing-secret", secret)
                    .body(body.to_owned())
                    .send()
                    .await
                    .unwrap()
                    .status()
                    .as_u16()
            })
        }
    }
}

#[tokio::test]
async fn secrets_and_message_content_never_reach_the_log_at_any_level() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bluehook.toml");
    let configured = "cfg-secret-Zq81xTTq";
    std::env::set_var("BLUEHOOK_TEST_LOG_SECRET", "env-secret-Kw07pPLm");
    std::fs::write(
        &config,
        format!("[sources.sendblue]\nprovider = \"sendblue\"\nsecrets = [\"{configured}\", \"env:BLUEHOOK_TEST_LOG_SECRET\"]\n"),
    )
    .unwrap();
    let (dev, log_path) = DevProcess::start_tracing(dir.path(), &config);
    let url = format!("{}/webhooks/sendblue/outbound", dev.base_url);
    let client = reqwest::Client::new();
    let content = "private-message-text-Hh5s";
    let with_content = body("h-log", "SENT").replace("Hello world!", content);
    for secret in [configured, "env-secret-Kw07pPLm", "attacker-guess-Pp3e"] {
        let _ = post(&client, &url, secret, with_content.clone())
            .await
            .unwrap();
    }
    let _ = post(&client, &url, configured, "not json".into())
        .await
        .unwrap();
    assert!(dev.interrupt().success());
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(
        log.contains("accepted"),
        "the log is written at trace: {log}"
    );
    for needle in [
        configured,
        "env-secret-Kw07pPLm",
        "attacker-guess-Pp3e",
        content,
    ] {
        assert!(!log.contains(needle), "`{needle}` leaked into the log");
    }
    let stats_text = serde_json::to_string(&stats(dir.path())).unwrap();
    assert!(!stats_text.contains(configured));
}

const RECEIVE: &str = include_str!("../shared/testdata/sendblue/receive.json");

fn wait_for(
    dir: &std::path::Path,
    what: &str,
    cond: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let mut last = serde_json::Value::Null;
    common::wait_until(what, || {
        last = stats(dir);
        cond(&last)
    });
    last
}

#[tokio::test]
async fn events_reach_the_analytics_archive_and_stats_show_rates() {
    let dir = tempfile::tempdir().unwrap();
    let dev = DevProcess::start(dir.path(), &[]);
    let url = format!("{}/webhooks/sendblue", dev.base_url);
    let secret = secret(dir.path());
    let client = reqwest::Client::new();
    let at = |secs: u32| format!("2026-01-01T10:{:02}:{:02}.000Z", secs / 60, secs % 60);
    let outbound = |handle: &str, status: &str, secs: u32| {
        body(handle, status).replace("2025-12-12T15:35:35.410Z", &at(secs))
    };
    let mut bodies = Vec::new();
    for h in ["h1", "h2", "h3", "h4"] {
        bodies.push(outbound(h, "SENT", 0));
    }
    for h in ["h1", "h2", "h3"] {
        bodies.push(outbound(h, "DELIVERED", 5));
    }
    bodies.push(outbound("h1", "READ", 10));
    // The contact answers 30 s after h1..h4 went out, on the same line.
    bodies.push(
        RECEIVE
            .replace("+15122164639", "+18649820355")
            .replace("2025-12-12T15:41:20.995Z", &at(30))
            .replace("2025-12-12T15:41:20.932Z", &at(30)),
    );
    for b in &bodies {
        let (status, v) = post(&client, &url, &secret, b.clone()).await.unwrap();
        assert_eq!(
            (status, v["status"].as_str()),
            (200, Some("accepted")),
            "{v}"
        );
    }
    let n = bodies.len() as u64;
    let s = wait_for(dir.path(), "the archive", |s| {
        s["analytics"]["events"] == n && s["queued"] == 0
    });
    assert_eq!(s["routed"]["analytics"], n);
    // With the built-in default config the CRM sink is on and records into the outbox.
    assert_eq!(s["routed"]["crm"], n);
    assert_eq!(s["queues"]["analytics"]["processed"], n);
    let a = &s["analytics"];
    assert_eq!(
        (
            a["messages_sent"].as_u64(),
            a["messages_delivered"].as_u64(),
            a["messages_read"].as_u64()
        ),
        (Some(4), Some(3), Some(1))
    );
    assert_eq!(a["delivery_rate"].as_f64(), Some(0.75));
    assert!((a["read_rate"].as_f64().unwrap() - 1.0 / 3.0).abs() < 1e-9);
    assert_eq!(a["median_response_secs"].as_f64(), Some(30.0));
    let human = Command::new(env!("CARGO_BIN_EXE_bluehook"))
        .args(["stats", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    let human = String::from_utf8(human.stdout).unwrap();
    assert!(human.contains("delivery rate  75.0%"), "{human}");
    assert!(dev.interrupt().success());
}

#[tokio::test]
async fn a_message_that_keeps_failing_is_dead_lettered_and_replay_moves_it_back() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bluehook.toml");
    std::fs::write(
        &config,
        "[queue]\nvisibility_timeout_secs = 1\nmax_receive_count = 2\n\n[sources.sendblue]\nprovider = \"sendblue\"\nsecrets = [\"s\"]\n\n[sinks.analytics]\n",
    )
    .unwrap();
    let dev = DevProcess::start(dir.path(), &["--config", config.to_str().unwrap()]);
    // A message no stage can read, put straight on the analytics queue.
    let db = bluehook::sqlite::Db::open(&dir.path().join("bluehook.db")).unwrap();
    let q = bluehook::SqliteQueue::new(db, "analytics", Duration::from_secs(1), 2);
    use bluehook::queue::Queue;
    q.send(&[bluehook::queue::OutgoingMessage {
        id: "poison".into(),
        body: "not an event".into(),
    }])
    .await
    .unwrap();
    let s = wait_for(dir.path(), "the dead-letter queue", |s| {
        s["queues"]["analytics"]["dead_lettered"] == 1
    });
    assert_eq!(s["dead_lettered"], 1);
    assert_eq!(s["queues"]["analytics"]["queued"], 0);

    let replay = |args: &[&str]| {
        let args: Vec<&str> = std::iter::once("replay")
            .chain(args.iter().copied())
            .collect();
        common::cli(dir.path(), &args)
    };
    let (ok, out) = replay(&["--queue", "analytics", "--max", "5"]);
    assert!(ok, "{out}");
    assert!(out.contains("moved 1 messages"), "{out}");
    let (ok, out) = replay(&["--queue", "nosuch"]);
    assert!(!ok && out.contains("unknown local queue"), "{out}");
    // Back on its queue, it fails again and returns to the dead-letter queue.
    wait_for(dir.path(), "the second dead-lettering", |s| {
        s["queues"]["analytics"]["dead_lettered"] == 1
    });
    assert!(dev.interrupt().success());
}

/// `bluehook cost` prices deliveries and attachments on top, per webhook, and refuses
/// attachments without the media sink.
#[test]
fn bluehook_cost_prices_deliveries_and_attachments_per_webhook() {
    let cost = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_bluehook"))
            .arg("cost")
            .args(args)
            .output()
            .unwrap()
    };
    let json = |args: &[&str]| -> serde_json::Value {
        let out = cost(args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let base = json(&["--json"]);
    let more = json(&["--json", "--deliveries", "2", "--attachments", "0.05"]);
    assert_eq!(more["deliveries_per_webhook"], 2.0);
    assert_eq!(more["attachments_per_webhook"], 0.05);
    let functions = more["functions"].as_array().unwrap();
    assert!(functions.iter().any(|f| f == "deliver"), "{more}");
    // Two deliveries at ~$1.41 per million each, 0.05 attachments at ~$7.5 per million.
    let added =
        more["usd_per_million"].as_f64().unwrap() - base["usd_per_million"].as_f64().unwrap();
    assert!((3.0..3.3).contains(&added), "{added}");
    let refused = cost(&["--sinks", "crm", "--attachments", "1"]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("media sink"));
    let refused = cost(&["--deliveries=-1"]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("0 or more"));
}
