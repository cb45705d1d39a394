//! Destinations through `bluehook dev` over real HTTP, against fake endpoints: retries with
//! backoff (500, 500, 200), `Retry-After` on a 429, a destination always answering 503 going to
//! its dead-letter queue and `replay --destination` delivering it, a timeout, a refused
//! connection, raw forwarding byte for byte, Standard Webhooks signatures, the rate limit, every
//! attempt in `bluehook events`, per-destination `stats`, a `kill -9` mid-delivery, and no
//! secret of a destination (URL path and query, header values, signing key) in any output.

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bluehook::config::Secret;
use bluehook::provider::standard_webhooks::StandardWebhooks;
use bluehook::provider::{Provider, WebhookRequest};
use common::fake::{Captured, FakeHttp, Reply};
use common::{cli, stats, DevProcess};

const SB_SECRET: &str = "sb-dest-secret-6f1e0c";
const SIGNING: &str = "whsec_ZGVzdGluYXRpb25zLWUyZS1zaWduaW5nLWtleQ==";
const PATH_TOKEN: &str = "T0KEN-dest-path-8a2c";
const QUERY_TOKEN: &str = "Q-T0KEN-dest-3b9d";
const HEADER_TOKEN: &str = "Bearer hdr-T0KEN-dest-71fe";
const OUTBOUND: &str = include_str!("../shared/testdata/sendblue/outbound.json");

fn source(name: &str) -> String {
    format!("[sources.{name}]\nprovider = \"sendblue\"\nsecrets = [\"{SB_SECRET}\"]\n\n")
}

async fn post(dev: &DevProcess, source: &str, handle: &str) -> serde_json::Value {
    let r = reqwest::Client::new()
        .post(format!("{}/webhooks/{source}/outbound", dev.base_url))
        .header("sb-signing-secret", SB_SECRET)
        .header("content-type", "application/json; charset=utf-8")
        .body(OUTBOUND.replace("5a17319e-cbcf-443e-897e-d8b0c04b1b09", handle))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    r.json().await.unwrap()
}

fn event_id(answer: &serde_json::Value) -> String {
    assert_eq!(answer["status"], "accepted", "{answer}");
    answer["events"][0].as_str().unwrap().to_owned()
}

/// `bluehook <args> --data-dir <dir>`: success and stdout (stderr appended).
fn show(dir: &Path, id: &str) -> serde_json::Value {
    let (ok, out) = cli(dir, &["events", "show", id, "--json"]);
    assert!(ok, "{out}");
    serde_json::from_str(&out).unwrap()
}

/// The state of `id`'s delivery to `destination`, as `events show` tells it.
fn state(dir: &Path, id: &str, destination: &str) -> String {
    show(dir, id)["deliveries"][destination]
        .as_str()
        .unwrap_or("")
        .to_owned()
}

fn signed_by(c: &Captured, secret: &str) -> bool {
    let mut headers = http::HeaderMap::new();
    for (k, v) in &c.headers {
        headers.insert(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    let verifier = StandardWebhooks::new(&[Secret::new(secret)], 300).unwrap();
    verifier
        .verify(&WebhookRequest {
            source: "x",
            type_hint: None,
            headers: &headers,
            query: None,
            body: &c.bytes,
            received_at: chrono::Utc::now(),
        })
        .is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_backoff_dead_letters_replay_and_every_attempt_recorded() {
    std::env::set_var("BLUEHOOK_TEST_DEST_HEADER", HEADER_TOKEN);
    // 500, 500, then 200.
    let flaky = FakeHttp::start(|_, n| {
        if n < 2 {
            (500, "no".into())
        } else {
            (200, "{}".into())
        }
    })
    .await;
    let raw = FakeHttp::start(|_, _| (204, String::new())).await;
    // 429 with Retry-After: 1, then 200; its own backoff (60 s) would be far longer.
    let limited = FakeHttp::start_replies(|_, n| {
        if n == 0 {
            Reply {
                status: 429,
                headers: vec![("retry-after", "1".into())],
                ..Reply::default()
            }
        } else {
            Reply::status(200)
        }
    })
    .await;
    let healthy = Arc::new(AtomicBool::new(false));
    let h = healthy.clone();
    let down = FakeHttp::start(move |_, _| {
        if h.load(Ordering::SeqCst) {
            (200, "{}".into())
        } else {
            (503, "down".into())
        }
    })
    .await;
    // Slower than the 1 s timeout the first time.
    let slow = FakeHttp::start_replies(|_, n| Reply {
        status: 200,
        delay: if n == 0 {
            Duration::from_secs(4)
        } else {
            Duration::ZERO
        },
        ..Reply::default()
    })
    .await;

    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        r#"{}{}{}
[destinations.flaky]
url = "{}/hooks/{PATH_TOKEN}?key={QUERY_TOKEN}"
secret = "{SIGNING}"
headers = {{ Authorization = "env:BLUEHOOK_TEST_DEST_HEADER" }}
retry_delay_secs = 1
max_retry_delay_secs = 2

[destinations.raw]
url = "{}/inbound"
body = "raw"

[destinations.limited]
url = "{}/limited"
retry_delay_secs = 60
max_retry_delay_secs = 120

[destinations.down]
url = "{}/down"
max_attempts = 2
retry_delay_secs = 1
max_retry_delay_secs = 1

[destinations.slow]
url = "{}/slow"
timeout_secs = 1
retry_delay_secs = 1

[destinations.refused]
url = "http://127.0.0.1:9/{PATH_TOKEN}"
max_attempts = 2
retry_delay_secs = 1
max_retry_delay_secs = 1

[[routes]]
when = {{ source = "main" }}
to = ["flaky", "raw", "limited", "analytics"]

[[routes]]
when = {{ source = "failing" }}
to = ["down", "refused"]

[[routes]]
when = {{ source = "timing" }}
to = "slow"

[sinks.analytics]
"#,
        source("main"),
        source("failing"),
        source("timing"),
        flaky.url,
        raw.url,
        limited.url,
        down.url,
        slow.url
    );
    let config_path = dir.path().join("bluehook.toml");
    std::fs::write(&config_path, &config).unwrap();
    let (dev, log) = DevProcess::start_tracing(dir.path(), &config_path);

    let main = event_id(&post(&dev, "main", "dest-main-1").await);
    let failing = event_id(&post(&dev, "failing", "dest-failing-1").await);
    let timing = event_id(&post(&dev, "timing", "dest-timing-1").await);
    // The same webhook again: a duplicate, no second delivery.
    assert_eq!(
        post(&dev, "main", "dest-main-1").await["status"],
        "duplicate"
    );

    common::wait_until_async("main's three deliveries", || {
        ["flaky", "raw", "limited"]
            .iter()
            .all(|d| state(dir.path(), &main, d) == "delivered")
    })
    .await;

    // flaky: three attempts, one webhook-id, each signed, the configured header, the event.
    let got = flaky.requests();
    assert_eq!(got.len(), 3, "500, 500, 200");
    for c in &got {
        assert_eq!(c.headers["webhook-id"], main);
        assert!(
            signed_by(c, SIGNING),
            "a Standard Webhooks verifier accepts it"
        );
        assert_eq!(c.headers["authorization"], HEADER_TOKEN);
        assert!(c.headers["user-agent"].starts_with("bluehook/"));
        assert_eq!(c.headers["content-type"], "application/json");
        assert_eq!(c.json()["id"], main.as_str());
        assert_eq!(c.path, format!("/hooks/{PATH_TOKEN}?key={QUERY_TOKEN}"));
    }
    // raw: the provider's bytes and Content-Type, exactly.
    let got = raw.requests();
    assert_eq!(got.len(), 1);
    assert_eq!(
        got[0].bytes,
        OUTBOUND
            .replace("5a17319e-cbcf-443e-897e-d8b0c04b1b09", "dest-main-1")
            .into_bytes()
    );
    assert_eq!(
        got[0].headers["content-type"],
        "application/json; charset=utf-8"
    );
    assert_eq!(got[0].headers["webhook-id"], main);
    assert!(
        !got[0].headers.contains_key("webhook-signature"),
        "no secret, no signature"
    );
    // limited: the second attempt waited for Retry-After (1 s), not its own 60 s backoff.
    let at = limited.arrivals();
    assert_eq!(at.len(), 2);
    let gap = at[1] - at[0];
    assert!(
        gap >= Duration::from_millis(900),
        "Retry-After honoured: {gap:?}"
    );
    assert!(
        gap < Duration::from_secs(30),
        "not the 60 s backoff: {gap:?}"
    );

    // Every attempt recorded, in order, with its status.
    let view = show(dir.path(), &main);
    let flaky_attempts: Vec<(u64, Option<u64>, String)> = view["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["destination"] == "flaky")
        .map(|a| {
            (
                a["attempt"].as_u64().unwrap(),
                a["status"].as_u64(),
                a["state"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        flaky_attempts,
        vec![
            (1, Some(500), "retrying".into()),
            (2, Some(500), "retrying".into()),
            (3, Some(200), "delivered".into())
        ]
    );
    assert_eq!(
        view["routes"],
        serde_json::json!(["analytics", "flaky", "limited", "raw"])
    );
    let (ok, human) = cli(dir.path(), &["events", "show", &main]);
    assert!(
        ok && human.contains("HTTP 500") && human.contains("flaky"),
        "{human}"
    );

    // The timeout, then a delivery.
    common::wait_until_async("the slow destination's delivery", || {
        state(dir.path(), &timing, "slow") == "delivered"
    })
    .await;
    let view = show(dir.path(), &timing);
    let errors: Vec<Option<&str>> = view["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["error"].as_str())
        .collect();
    assert_eq!(errors, vec![Some("timeout"), None]);

    // Always 503, and refused connections: dead-lettered after max_attempts (2).
    common::wait_until_async("both failing deliveries to be dead-lettered", || {
        state(dir.path(), &failing, "down") == "dead_lettered"
            && state(dir.path(), &failing, "refused") == "dead_lettered"
    })
    .await;
    let view = show(dir.path(), &failing);
    let refused: Vec<&str> = view["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["destination"] == "refused")
        .map(|a| a["error"].as_str().unwrap())
        .collect();
    assert_eq!(refused, vec!["connect", "connect"]);
    assert_eq!(down.requests().len(), 2);
    let s = stats(dir.path());
    assert_eq!(s["destinations"]["down"]["dead_lettered"], 1, "{s}");
    assert_eq!(s["destinations"]["refused"]["dead_lettered"], 1, "{s}");
    assert_eq!(s["destinations"]["flaky"]["delivered"], 1, "{s}");
    assert_eq!(s["destinations"]["flaky"]["attempts"], 3, "{s}");
    assert_eq!(s["routed"]["flaky"], 1, "{s}");
    let (ok, failed) = cli(dir.path(), &["events", "list", "--failed", "--json"]);
    assert!(ok, "{failed}");
    let failed: Vec<serde_json::Value> = serde_json::from_str(&failed).unwrap();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0]["id"], failing.as_str());
    let (ok, listed) = cli(
        dir.path(),
        &["events", "list", "--destination", "raw", "--json"],
    );
    assert!(ok);
    let listed: Vec<serde_json::Value> = serde_json::from_str(&listed).unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["deliveries"]["raw"], "delivered");
    let (ok, by_source) = cli(dir.path(), &["events", "list", "--source", "timing"]);
    assert!(
        ok && by_source.contains(&timing) && !by_source.contains(&main),
        "{by_source}"
    );

    // The destination recovers; replay delivers again, with the same webhook-id.
    healthy.store(true, Ordering::SeqCst);
    let (ok, out) = cli(dir.path(), &["replay", "--destination", "down"]);
    assert!(ok && out.contains("moved 1"), "{out}");
    let (ok, out) = cli(dir.path(), &["replay", "--destination", "nosuch"]);
    assert!(!ok && out.contains("no destination `nosuch`"), "{out}");
    common::wait_until_async("the replayed delivery", || {
        state(dir.path(), &failing, "down") == "delivered"
    })
    .await;
    let got = down.requests();
    assert_eq!(got.len(), 3);
    assert!(got.iter().all(|c| c.headers["webhook-id"] == failing));
    assert_eq!(
        stats(dir.path())["destinations"]["down"]["dead_lettered"],
        0
    );

    assert!(dev.interrupt().success());
    // The destinations' secrets appear nowhere: not in the log (trace level), events, stats.
    common::leaks::record(
        "the dev server's log",
        &std::fs::read_to_string(&log).unwrap(),
    );
    for id in [&main, &failing, &timing] {
        common::leaks::record("events show", &cli(dir.path(), &["events", "show", id]).1);
        common::leaks::record("events show --json", &show(dir.path(), id).to_string());
    }
    common::leaks::record("events list", &cli(dir.path(), &["events", "list"]).1);
    common::leaks::record("stats --json", &stats(dir.path()).to_string());
    common::leaks::record("stats", &cli(dir.path(), &["stats"]).1);
    common::leaks::assert_no_secret(&[PATH_TOKEN, QUERY_TOKEN, HEADER_TOKEN, SIGNING, SB_SECRET]);
}

/// A `dev` whose every event goes to one destination at `url` (with `extra` settings).
fn start_with_destination(dir: &Path, url: &str, extra: &str) -> (DevProcess, Vec<String>) {
    let config = format!(
        "{}[destinations.hook]\nurl = \"{url}/in\"\n{extra}\n[[routes]]\nto = \"hook\"\n",
        source("sendblue")
    );
    let config_path = dir.join("bluehook.toml");
    std::fs::write(&config_path, &config).unwrap();
    let args = vec![
        "--config".to_owned(),
        config_path.to_str().unwrap().to_owned(),
    ];
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    (DevProcess::start(dir, &refs), args)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rate_limit_spaces_deliveries() {
    let hook = FakeHttp::start(|_, _| (200, "{}".into())).await;
    let dir = tempfile::tempdir().unwrap();
    let (dev, _) = start_with_destination(dir.path(), &hook.url, "rate_limit_per_sec = 5");
    for i in 0..12 {
        event_id(&post(&dev, "sendblue", &format!("paced-{i}")).await);
    }
    common::wait_until_async("twelve deliveries", || hook.requests().len() == 12).await;
    // At most five a second: twelve starts span at least eleven 200 ms intervals. (Without
    // the limit, eight at a time, they arrive within a fraction of that.)
    let at = hook.arrivals();
    let span = at[11] - at[0];
    assert!(span >= Duration::from_millis(1900), "paced: {span:?}");
    assert!(dev.interrupt().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_9_mid_delivery_loses_nothing() {
    // Every answer takes 500 ms, so deliveries are in flight at the kill.
    let hook = FakeHttp::start_replies(|_, _| Reply {
        status: 200,
        delay: Duration::from_millis(500),
        ..Reply::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let (dev, args) = start_with_destination(dir.path(), &hook.url, "");
    let mut ids = Vec::new();
    for i in 0..40 {
        ids.push(event_id(
            &post(&dev, "sendblue", &format!("killed-{i}")).await,
        ));
    }
    common::wait_until_async("the first deliveries", || !hook.requests().is_empty()).await;
    dev.kill9();
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let dev = DevProcess::start(dir.path(), &refs);
    common::wait_until_async("every accepted event delivered", || {
        let got: std::collections::HashSet<String> = hook
            .requests()
            .iter()
            .map(|c| c.headers["webhook-id"].clone())
            .collect();
        ids.iter().all(|id| got.contains(id))
    })
    .await;
    // At least once, each with its event's id; nothing else.
    for c in hook.requests() {
        assert!(
            ids.contains(&c.headers["webhook-id"]),
            "only accepted events"
        );
        assert_eq!(c.json()["id"], c.headers["webhook-id"].as_str());
    }
    let s = stats(dir.path());
    assert_eq!(s["destinations"]["hook"]["dead_lettered"], 0, "{s}");
    assert!(dev.interrupt().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_answer_is_retried_and_a_redirect_is_not_followed() {
    let hook = FakeHttp::start(|_, _| (200, r#"{"ok": true, "padding": "........"}"#.into())).await;
    let proxy = common::proxy::Proxy::start(&hook.url, false).await;
    proxy.inject("POST /in", common::proxy::Fault::Cut, Some(1));
    let elsewhere = FakeHttp::start(|_, _| (200, "{}".into())).await;
    let target = format!("{}/in", elsewhere.url);
    let moved = FakeHttp::start_replies(move |_, n| {
        if n == 0 {
            Reply {
                status: 302,
                headers: vec![("location", target.clone())],
                ..Reply::default()
            }
        } else {
            Reply::status(200)
        }
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "{}[destinations.cut]\nurl = \"{}/in\"\nretry_delay_secs = 1\n\n[destinations.moved]\nurl = \"{}/in\"\nretry_delay_secs = 1\n\n[[routes]]\nto = [\"cut\", \"moved\"]\n",
        source("sendblue"),
        proxy.url,
        moved.url
    );
    let config_path = dir.path().join("bluehook.toml");
    std::fs::write(&config_path, &config).unwrap();
    let dev = DevProcess::start(dir.path(), &["--config", config_path.to_str().unwrap()]);
    let id = event_id(&post(&dev, "sendblue", "cut-and-moved").await);
    common::wait_until_async("both deliveries", || {
        state(dir.path(), &id, "cut") == "delivered"
            && state(dir.path(), &id, "moved") == "delivered"
    })
    .await;
    let view = show(dir.path(), &id);
    let outcomes = |d: &str| -> Vec<(Option<u64>, Option<String>)> {
        view["attempts"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["destination"] == d)
            .map(|a| (a["status"].as_u64(), a["error"].as_str().map(str::to_owned)))
            .collect()
    };
    assert_eq!(
        outcomes("cut"),
        vec![(None, Some("reset".into())), (Some(200), None)]
    );
    assert_eq!(
        outcomes("moved"),
        vec![(Some(302), None), (Some(200), None)]
    );
    assert!(
        elsewhere.requests().is_empty(),
        "the redirect was not followed"
    );
    let got = hook.requests();
    assert_eq!(got.len(), 2, "the cut attempt reached it, and the retry");
    assert!(got.iter().all(|c| c.headers["webhook-id"] == id));
    assert!(dev.interrupt().success());
}

#[test]
fn a_route_to_an_undefined_destination_or_an_unknown_setting_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    for (config, needle) in [
        (
            format!("{}[[routes]]\nto = [\"bot\"]\n", source("sendblue")),
            "[destinations.bot]",
        ),
        (
            format!(
                "{}[destinations.bot]\nurl = \"http://127.0.0.1:9\"\nretries = 3\n",
                source("sendblue")
            ),
            "unknown setting `retries`",
        ),
    ] {
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, config).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_bluehook"))
            .args(["dev", "--listen", "127.0.0.1:0", "--config"])
            .arg(&path)
            .arg("--data-dir")
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{err}");
    }
}
