//! The inspector of `bluehook dev` over real HTTP: every request in the ring (refused ones with
//! their reason), the same event data as `bluehook events`, the live stream, redelivery,
//! samples, dead-letter replay, the guards (loopback host, token, other origins), secrets
//! redacted, the ring kept across a restart; and the page itself in Debian's chromium driven by
//! playwright-core (`tests/browser/inspector.mjs`).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::fake::{Captured, FakeHttp};
use common::{events_show, wait_until, DevProcess};
use serde_json::Value;

const SB_SECRET: &str = "sb-inspector-secret-93c1a7";
const TOKEN: &str = "insp-T0KEN-5d20e8";
const RECEIVE: &str = include_str!("../shared/testdata/sendblue/receive.json");

fn config(dir: &Path, bot: &str) -> PathBuf {
    let path = dir.join("bluehook.toml");
    std::fs::write(
        &path,
        format!(
            "[sources.sendblue]\nprovider = \"sendblue\"\nsecrets = [\"{SB_SECRET}\"]\n\n\
             [destinations.bot]\nurl = \"{bot}/hook\"\nretry_delay_secs = 1\nmax_retry_delay_secs = 1\n\n\
             [[routes]]\nto = \"bot\"\n\n[sinks.analytics]\n"
        ),
    )
    .unwrap();
    path
}

/// The bot fails its first request, then takes everything.
async fn bot() -> FakeHttp {
    FakeHttp::start(|_: &Captured, n| {
        if n == 0 {
            (500, "{}".into())
        } else {
            (200, "{}".into())
        }
    })
    .await
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

async fn webhook(base: &str, secret: &str, body: &str) -> (u16, Value) {
    let r = client()
        .post(format!("{base}/webhooks/sendblue/receive"))
        .header("sb-signing-secret", secret)
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

async fn get(base: &str, path: &str) -> (u16, Value) {
    let r = client().get(format!("{base}{path}")).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn post(base: &str, path: &str, origin: Option<&str>, body: Value) -> (u16, Value) {
    let mut r = client().post(format!("{base}{path}")).json(&body);
    if let Some(o) = origin {
        r = r.header("origin", o);
    }
    let r = r.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn wait_for(what: &str, mut done: impl AsyncFnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !done().await {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_shows_every_request_and_event_acts_and_guards_itself() {
    let dir = tempfile::tempdir().unwrap();
    let bot = bot().await;
    let config_path = config(dir.path(), &bot.url);
    let dev = DevProcess::start(dir.path(), &["--config", config_path.to_str().unwrap()]);
    let base = dev.base_url.clone();

    // The live stream, open before anything arrives.
    let mut stream = client()
        .get(format!("{base}/_bluehook/api/stream"))
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status().as_u16(), 200);
    assert_eq!(stream.headers()["content-type"], "text/event-stream");

    let body = RECEIVE.replace(
        "\"content\": \"",
        "\"content\": \"<script>alert(1)</script> ",
    );
    let (status, answer) = webhook(&base, SB_SECRET, &body).await;
    assert_eq!(status, 200, "{answer}");
    let id = answer["events"][0].as_str().unwrap().to_owned();
    let (status, _) = webhook(&base, SB_SECRET, &body).await;
    assert_eq!(status, 200);
    let (status, _) = webhook(&base, "not-the-secret", &body).await;
    assert_eq!(status, 401);

    // Each request reaches the open stream as it is answered.
    let mut seen = String::new();
    while seen.matches("event: request").count() < 3 {
        let chunk = tokio::time::timeout(Duration::from_secs(10), stream.chunk())
            .await
            .expect("the stream shows requests as they come")
            .unwrap()
            .expect("the stream stays open");
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(seen.contains("\"outcome\":\"accepted\""), "{seen}");
    assert!(seen.contains("\"reason\":\"bad_signature\""), "{seen}");
    drop(stream);

    // The ring, newest first: refused with its code and reason, the duplicate, the accepted.
    let (status, list) = get(&base, "/_bluehook/api/requests").await;
    assert_eq!(status, 200);
    let requests = list["requests"].as_array().unwrap();
    let outcomes: Vec<&str> = requests
        .iter()
        .map(|r| r["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["refused", "duplicate", "accepted"]);
    assert_eq!(requests[0]["status"], 401);
    assert_eq!(requests[0]["code"], "unauthorized");
    assert_eq!(requests[0]["reason"], "bad_signature");
    assert_eq!(requests[1]["event_ids"][0], id.as_str());
    // Filters: outcome, search by handle and by event id, source.
    let (_, refused) = get(&base, "/_bluehook/api/requests?outcome=refused").await;
    assert_eq!(refused["requests"].as_array().unwrap().len(), 1);
    let handle = serde_json::from_str::<Value>(RECEIVE).unwrap()["message_handle"]
        .as_str()
        .unwrap()
        .to_owned();
    let (_, found) = get(&base, &format!("/_bluehook/api/requests?q={handle}")).await;
    assert_eq!(found["requests"].as_array().unwrap().len(), 3);
    let (_, found) = get(
        &base,
        &format!("/_bluehook/api/requests?q={id}&outcome=accepted"),
    )
    .await;
    assert_eq!(found["requests"].as_array().unwrap().len(), 1);
    let (_, none) = get(&base, "/_bluehook/api/requests?source=other").await;
    assert!(none["requests"].as_array().unwrap().is_empty());

    // A request's detail: the secret header redacted, the body as received.
    let seq = requests[0]["seq"].as_i64().unwrap();
    let (_, detail) = get(&base, &format!("/_bluehook/api/requests/{seq}")).await;
    let headers = detail["headers"].as_array().unwrap();
    let secret_header = headers
        .iter()
        .find(|h| h[0] == "sb-signing-secret")
        .unwrap();
    assert_eq!(secret_header[1], "<redacted>");
    assert_eq!(detail["body"], body.as_str());

    // The event: the same data as `bluehook events show --json`, once the bot has it (a 500,
    // then a 200 a second later).
    wait_for("the retried delivery", async || {
        get(&base, &format!("/_bluehook/api/events/{id}")).await.1["deliveries"]["bot"]
            == "delivered"
    })
    .await;
    let (_, event) = get(&base, &format!("/_bluehook/api/events/{id}")).await;
    let shown = events_show(dir.path(), &id);
    for key in ["event", "routes", "deliveries", "attempts"] {
        assert_eq!(event[key], shown[key], "{key}");
    }
    assert_eq!(event["state"], "delivered");
    assert_eq!(event["attempts"].as_array().unwrap().len(), 2);
    assert_eq!(event["request"]["outcome"], "accepted");
    assert_eq!(
        event["requests"].as_array().unwrap().len(),
        2,
        "accepted, then the duplicate"
    );
    let (_, listed) = get(&base, "/_bluehook/api/events?destination=bot").await;
    assert_eq!(
        listed,
        common::cli_json(
            dir.path(),
            &["events", "list", "--json", "--destination", "bot"]
        )
    );

    // Redelivery: refused from another origin, done from the page's own, sent with the same
    // webhook-id although the first delivery succeeded.
    let (status, refusal) = post(
        &base,
        &format!("/_bluehook/api/events/{id}/redeliver"),
        Some("http://evil.example"),
        serde_json::json!({"destination": "bot"}),
    )
    .await;
    assert_eq!(
        (status, refusal["error"].as_str()),
        (403, Some("cross_origin"))
    );
    let (status, unknown) = post(
        &base,
        &format!("/_bluehook/api/events/{id}/redeliver"),
        None,
        serde_json::json!({"destination": "nope"}),
    )
    .await;
    assert_eq!(
        (status, unknown["error"].as_str()),
        (404, Some("unknown_destination"))
    );
    assert_eq!(bot.requests().len(), 2);
    let (status, queued) = post(
        &base,
        &format!("/_bluehook/api/events/{id}/redeliver"),
        Some(&base),
        serde_json::json!({"destination": "bot"}),
    )
    .await;
    assert_eq!(status, 202, "{queued}");
    wait_until("the redelivery", || bot.requests().len() == 3);
    let hooks = bot.requests();
    assert_eq!(
        hooks[2].headers["webhook-id"],
        hooks[1].headers["webhook-id"]
    );
    assert_eq!(hooks[2].headers["webhook-id"], id);

    // A sample, signed with the source's secret and posted through the real route.
    let (status, sent) = post(
        &base,
        "/_bluehook/api/samples/sendblue.outbound",
        None,
        serde_json::json!({}),
    )
    .await;
    assert_eq!(status, 200, "{sent}");
    assert_eq!(sent["status"], 200);
    assert_eq!(sent["answer"]["status"], "accepted");
    let (status, _) = post(
        &base,
        "/_bluehook/api/samples/twilio.received",
        None,
        serde_json::json!({}),
    )
    .await;
    assert_eq!(status, 404, "no twilio source is configured");
    let (_, samples) = get(&base, "/_bluehook/api/samples").await;
    assert!(samples["samples"]
        .as_array()
        .unwrap()
        .iter()
        .all(|s| s["source"] == "sendblue"));

    // Dead-letter queues: listed, replayed; an unknown queue is refused.
    let (_, dlq) = get(&base, "/_bluehook/api/dlq").await;
    let names: Vec<&str> = dlq["queues"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| q["queue"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"events") && names.contains(&"dest-bot"),
        "{names:?}"
    );
    let (status, moved) = post(
        &base,
        "/_bluehook/api/dlq/dest-bot/replay",
        None,
        serde_json::json!({}),
    )
    .await;
    assert_eq!((status, moved["moved"].as_u64()), (200, Some(0)));
    let (status, _) = post(
        &base,
        "/_bluehook/api/dlq/nope/replay",
        None,
        serde_json::json!({}),
    )
    .await;
    assert_eq!(status, 404);
    let (status, _) = get(&base, "/_bluehook/api/dlq/events/replay").await;
    assert_eq!(status, 405, "actions are POSTs");

    // A page elsewhere that rebinds its name to 127.0.0.1 is refused.
    let r = client()
        .get(format!("{base}/_bluehook/api/requests"))
        .header("host", "evil.example:3000")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    // The page itself: security headers.
    let page = client().get(format!("{base}/")).send().await.unwrap();
    assert_eq!(page.status().as_u16(), 200);
    assert!(page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .contains("script-src 'self'"));
    // Webhook routes are untouched by the inspector.
    let (status, _) = get(&base, "/webhooks/sendblue").await;
    assert_eq!(status, 405);

    // No secret anywhere in what the API serves.
    let mut everything = String::new();
    for path in [
        "requests?limit=1000",
        "events?limit=1000",
        "stats",
        "dlq",
        "samples",
    ] {
        everything.push_str(
            &get(&base, &format!("/_bluehook/api/{path}"))
                .await
                .1
                .to_string(),
        );
    }
    for r in get(&base, "/_bluehook/api/requests").await.1["requests"]
        .as_array()
        .unwrap()
    {
        everything.push_str(
            &get(&base, &format!("/_bluehook/api/requests/{}", r["seq"]))
                .await
                .1
                .to_string(),
        );
    }
    everything.push_str(
        &get(&base, &format!("/_bluehook/api/events/{id}"))
            .await
            .1
            .to_string(),
    );
    assert!(!everything.contains(SB_SECRET));

    // The ring survives a restart.
    assert!(dev.interrupt().success());
    let dev = DevProcess::start(dir.path(), &["--config", config_path.to_str().unwrap()]);
    let (_, list) = get(&dev.base_url, "/_bluehook/api/requests").await;
    let outcomes: Vec<&str> = list["requests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["outcome"].as_str().unwrap())
        .collect();
    // The GET refused with 405, the sample, then the three of the start.
    assert_eq!(
        outcomes,
        ["refused", "accepted", "refused", "duplicate", "accepted"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn off_on_a_public_address_unless_a_token_is_given_and_then_only_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let bot = bot().await;
    let config_path = config(dir.path(), &bot.url);
    let config_arg = config_path.to_str().unwrap();
    let local = |url: &str| url.replace("0.0.0.0", "127.0.0.1");

    let dev = DevProcess::start_on(
        "0.0.0.0:0",
        dir.path(),
        &["--config", config_arg],
        "warn",
        None,
    );
    let base = local(&dev.base_url);
    let (status, _) = get(&base, "/").await;
    assert_eq!(
        status, 404,
        "no inspector on a non-loopback address without a token"
    );
    let (status, _) = get(&base, "/_bluehook/api/requests").await;
    assert_eq!(status, 404);
    let (status, _) = webhook(&base, SB_SECRET, RECEIVE).await;
    assert_eq!(status, 200, "webhooks are served as ever");
    drop(dev);

    let dev = DevProcess::start_on(
        "0.0.0.0:0",
        dir.path(),
        &["--config", config_arg, "--inspector-token", TOKEN],
        "warn",
        None,
    );
    let base = local(&dev.base_url);
    for path in ["/", "/_bluehook/api/requests", "/_bluehook/inspector.js"] {
        let r = client().get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 401, "{path}");
        assert!(r.headers().contains_key("www-authenticate"));
        let r = client()
            .get(format!("{base}{path}"))
            .bearer_auth("insp-T0KEN-5d20e9")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 401, "{path} with a wrong token");
        let r = client()
            .get(format!("{base}{path}"))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200, "{path} with the token");
    }
    let (status, _) = webhook(&base, "not-the-secret", RECEIVE).await;
    assert_eq!(status, 401);
    let r = client()
        .get(format!("{base}/_bluehook/api/requests"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    let list: Value = r.json().await.unwrap();
    let requests = list["requests"].as_array().unwrap();
    assert_eq!(requests.len(), 1, "{list}");
    assert_eq!(requests[0]["reason"], "bad_signature");
    assert!(!list.to_string().contains(TOKEN) && !list.to_string().contains(SB_SECRET));
}

/// Where the browser test's tools are: Debian's chromium and `tests/browser/node_modules`
/// (`./scripts/test.sh` installs both).
fn browser_tools() -> (PathBuf, PathBuf) {
    let chromium = PathBuf::from(
        std::env::var("BLUEHOOK_TEST_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into()),
    );
    let browser_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    assert!(
        chromium.exists() && browser_dir.join("node_modules/playwright-core").exists(),
        "the browser test needs {} and tests/browser/node_modules: run the tests with ./scripts/test.sh, which installs them",
        chromium.display()
    );
    (chromium, browser_dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_in_a_real_browser() {
    let (chromium, browser_dir) = browser_tools();
    let dir = tempfile::tempdir().unwrap();
    let bot = bot().await;
    let config_path = config(dir.path(), &bot.url);
    let config_arg = config_path.to_str().unwrap();
    let dev = DevProcess::start(dir.path(), &["--config", config_arg]);
    let guarded_dir = tempfile::tempdir().unwrap();
    let guarded_config = config(guarded_dir.path(), &bot.url);
    let guarded = DevProcess::start_on(
        "0.0.0.0:0",
        guarded_dir.path(),
        &[
            "--config",
            guarded_config.to_str().unwrap(),
            "--inspector-token",
            TOKEN,
        ],
        "warn",
        None,
    );
    let profile = tempfile::tempdir().unwrap();
    let script = browser_dir.join("inspector.mjs");
    let run = tokio::task::spawn_blocking({
        let (base, guarded_base) = (
            dev.base_url.clone(),
            guarded.base_url.replace("0.0.0.0", "127.0.0.1"),
        );
        let profile = profile.path().to_owned();
        move || {
            Command::new("node")
                .arg(script)
                .current_dir(&browser_dir)
                .env("BASE", base)
                .env("GUARDED_BASE", guarded_base)
                .env("TOKEN", TOKEN)
                .env("SECRET", SB_SECRET)
                .env("BLUEHOOK_BIN", env!("CARGO_BIN_EXE_bluehook"))
                .env("CHROMIUM", chromium)
                .env("PROFILE", profile)
                .output()
                .expect("node runs")
        }
    });
    let out = tokio::time::timeout(Duration::from_secs(240), run)
        .await
        .expect("the browser test finishes")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "browser test failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("all checks passed"), "{stdout}");
    // The page's redelivery reached the bot: the failed try, the retry, the redelivery, all
    // with the event's id.
    let hooks = bot.requests();
    let first = hooks.first().expect("the bot got the event").headers["webhook-id"].clone();
    let to_first = hooks
        .iter()
        .filter(|c| c.headers["webhook-id"] == first)
        .count();
    assert_eq!(to_first, 3, "{stdout}");
}
