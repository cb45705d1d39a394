//! Every provider end to end through `bluehook dev` over HTTP: signed requests accepted, the
//! same delivery again a duplicate, a wrong secret 401; and every `<provider>.<event>` that
//! `bluehook send` knows, round-tripped into the event log.

mod common;

use std::collections::HashMap;
use std::process::Command;

use bluehook::config::{Config, Secret};
use bluehook::event::{EventKind, MessageStatus};
use bluehook::local::event_log;
use bluehook::provider::{self, SampleOptions, SAMPLES};
use common::{stats, DevProcess};

const CONFIG: &str = r#"
[sources.sendblue]
provider = "sendblue"
secrets = ["sb-secret-P2E-8c1f0a"]

[sources.bluereplies]
provider = "bluereplies"
secrets = ["br-secret-P2E-3d9e7b"]

[sources.twilio]
provider = "twilio"
secrets = ["tw-auth-token-P2E-51c2"]

[sources.standard-webhooks]
provider = "standard-webhooks"
secrets = ["whsec_cHJvdmlkZXJzLWUyZS1zdGFuZGFyZC1rZXk="]

[sources.bluemessaggio]
provider = "bluemessaggio"
header = "x-bm-signature"
secrets = ["bm-secret-P2E-0e4a6c"]

[sources.stripe-style]
provider = "stripe-style"
secrets = ["st-secret-P2E-7f21d9"]

[sources.github-style]
provider = "github-style"
secrets = ["gh-secret-P2E-c83b05"]

[sources.hmac]
provider = "hmac"
header = "x-signature"
algorithm = "sha512"
encoding = "base64"
secrets = ["hm-secret-P2E-96ad4e"]

# Both destinations unreachable (nothing listens on port 9): every push and SMS fails with a
# connection error, logged. The CRM's URL carries a token in its path, as many do.
[sinks.crm]
adapter = "http"
url = "http://127.0.0.1:9/hooks/T0KEN-p2e-crm-path-4b7d"
secret = "whsec_cHJvdmlkZXJzLWUyZS1jcm0ta2V5"

[sinks.sms_fallback]
adapter = "twilio"
base_url = "http://127.0.0.1:9"
account_sid = "ACp2e"
auth_token = "tw-api-T0KEN-p2e-a1b2c3"
from = "+15550001111"

[sinks.analytics]
"#;

/// What the event log should hold for `<provider>.<event>`; `None` for a ping (not queued).
fn expected(provider: &str, event: &str) -> Option<(EventKind, Option<MessageStatus>)> {
    use EventKind::{
        CallLog, ContactCreated, LineAssigned, LineBlocked, MessageReceived,
        MessageStatus as Status, Typing,
    };
    type S = MessageStatus;
    Some(match (provider, event) {
        (_, "ping") => return None,
        ("sendblue", "receive") => (MessageReceived, Some(S::Received)),
        ("sendblue", "outbound") => (Status, Some(S::Sent)),
        ("sendblue", "typing_indicator") => (Typing, None),
        ("sendblue", "call_log") => (CallLog, None),
        ("sendblue", "line_blocked") => (LineBlocked, None),
        ("sendblue", "line_assigned") => (LineAssigned, None),
        ("sendblue", "contact_created") => (ContactCreated, None),
        (_, "received") => (MessageReceived, Some(S::Received)),
        (_, "queued") => (Status, Some(S::Queued)),
        (_, "sent") => (Status, Some(S::Sent)),
        (_, "delivered") => (Status, Some(S::Delivered)),
        (_, "read") => (Status, Some(S::Read)),
        (_, "failed" | "undelivered") => (Status, Some(S::Failed)),
        other => panic!("no expectation for {other:?}"),
    })
}

/// Every secret in `config`: the sources' signing secrets, the sinks' keys and tokens, and
/// the token in the CRM's URL.
fn secrets_of(config: &str) -> Vec<&'static str> {
    let mut secrets = common::leaks::config_secrets(&toml::from_str(config).unwrap());
    secrets.push("T0KEN-p2e-crm-path-4b7d".into());
    assert_eq!(secrets.len(), 11);
    secrets
        .into_iter()
        .map(|s| &*Box::leak(s.into_boxed_str()))
        .collect()
}

fn write_config(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("bluehook.toml");
    std::fs::write(&path, CONFIG).unwrap();
    path
}

#[test]
fn every_sample_bluehook_send_knows_round_trips_into_the_event_log() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    let (dev, log_path) = DevProcess::start_tracing(dir.path(), &config);

    let listed = Command::new(env!("CARGO_BIN_EXE_bluehook"))
        .args(["send", "--list"])
        .output()
        .unwrap();
    let listed = String::from_utf8(listed.stdout).unwrap();
    let mut sent: Vec<(String, String, Option<String>)> = Vec::new();
    for (provider, events) in SAMPLES {
        for event in *events {
            let name = format!("{provider}.{event}");
            assert!(
                listed.lines().any(|l| l == name),
                "`send --list` lists {name}"
            );
            let out = Command::new(env!("CARGO_BIN_EXE_bluehook"))
                .args(["send", &name, "--config", config.to_str().unwrap(), "--url"])
                .arg(format!("{}/webhooks/{provider}", dev.base_url))
                .output()
                .unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
            common::leaks::record(&format!("`send {name}`"), &stdout);
            common::leaks::record(
                &format!("`send {name}` errors"),
                &String::from_utf8_lossy(&out.stderr),
            );
            assert!(
                out.status.success(),
                "{name}: {stdout} {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let answer: serde_json::Value =
                serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
            let id = match expected(provider, event) {
                None => {
                    assert_eq!(answer["status"], "ok", "{name}");
                    None
                }
                Some(_) => {
                    assert_eq!(answer["status"], "accepted", "{name}: {answer}");
                    Some(answer["events"][0].as_str().unwrap().to_owned())
                }
            };
            sent.push((provider.to_string(), event.to_string(), id));
        }
    }
    // The CRM sink tries its unreachable destination (and logs that) before the stop.
    common::wait_until("the CRM sink to try its destination", || {
        std::fs::read_to_string(&log_path)
            .unwrap()
            .lines()
            .any(|l| l.contains("delivery attempt failed") && l.contains("crm"))
    });
    common::wait_until_logged(dir.path());
    assert!(dev.interrupt().success());

    // No secret in the log (trace level), any answer or error `send` printed, the stats or
    // the event log.
    let text = |p: &str| std::fs::read_to_string(dir.path().join(p)).unwrap();
    common::leaks::record("the dev server's log", &text("dev.log"));
    common::leaks::record("the event log", &text("events.ndjson"));
    common::leaks::record("stats --json", &stats(dir.path()).to_string());
    let plain = Command::new(env!("CARGO_BIN_EXE_bluehook"))
        .args(["stats", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    common::leaks::record("stats", &String::from_utf8_lossy(&plain.stdout));
    common::leaks::assert_no_secret(&secrets_of(CONFIG));

    let log = event_log::read_all(&dir.path().join("events.ndjson")).unwrap();
    let by_id: HashMap<&str, &bluehook::Event> = log.iter().map(|e| (e.id.as_str(), e)).collect();
    for (provider, event, id) in &sent {
        let Some(id) = id else { continue };
        let e = by_id
            .get(id.as_str())
            .unwrap_or_else(|| panic!("{provider}.{event} not in the log"));
        let (kind, status) = expected(provider, event).unwrap();
        assert_eq!(e.source, *provider);
        assert_eq!((e.kind, e.status), (kind, status), "{provider}.{event}");
    }
    assert_eq!(log.len(), sent.iter().filter(|s| s.2.is_some()).count());
    assert_eq!(stats(dir.path())["pings"], 1);
}

#[tokio::test]
async fn each_provider_over_http_accepted_duplicate_and_401() {
    let dir = tempfile::tempdir().unwrap();
    let config_path = write_config(dir.path());
    let config = Config::from_file(&config_path).unwrap();
    let dev = DevProcess::start(dir.path(), &["--config", config_path.to_str().unwrap()]);
    let client = reqwest::Client::new();

    for (name, source) in &config.sources {
        let url = format!("{}/webhooks/{name}", dev.base_url);
        let event = match source.provider.as_str() {
            "sendblue" => "outbound",
            _ => "delivered",
        };
        let secret = source.secrets[0].clone();
        let signer = provider::build(name, source, vec![Secret::new(secret)]).unwrap();
        let sample = signer
            .sample(event, &SampleOptions::default(), &url)
            .unwrap();
        let post = |headers: Vec<(String, String)>| {
            let mut b = client
                .post(&sample.url)
                .header("content-type", sample.content_type)
                .body(sample.body.clone());
            for (k, v) in headers {
                b = b.header(k, v);
            }
            async move {
                let r = b.send().await.unwrap();
                (
                    r.status().as_u16(),
                    r.json::<serde_json::Value>().await.unwrap(),
                )
            }
        };
        let (status, v) = post(sample.headers.clone()).await;
        assert_eq!(
            (status, v["status"].as_str()),
            (200, Some("accepted")),
            "{name}: {v}"
        );
        let (status, v) = post(sample.headers.clone()).await;
        assert_eq!(
            (status, v["status"].as_str()),
            (200, Some("duplicate")),
            "{name}: the same delivery again"
        );

        // Signed with another secret: refused.
        let forger = provider::build(
            name,
            source,
            vec![Secret::new(match source.provider.as_str() {
                "standard-webhooks" => "whsec_c2VjcmV0LW9mLXNvbWVvbmUtZWxzZQ==".to_owned(),
                _ => "someone-elses-secret".to_owned(),
            })],
        )
        .unwrap();
        let forged = forger
            .sample(event, &SampleOptions::default(), &url)
            .unwrap();
        let (status, v) = post(forged.headers).await;
        assert_eq!(
            (status, v["error"].as_str()),
            (401, Some("unauthorized")),
            "{name}"
        );
        let (status, _) = post(Vec::new()).await;
        assert_eq!(status, 401, "{name}: no signature");
    }

    // Blue Replies' registration ping, even unsigned, is answered at once and not queued.
    let r = client
        .post(format!("{}/webhooks/bluereplies", dev.base_url))
        .body(r#"{"type":"ping"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    common::wait_until_logged(dir.path());
    assert!(dev.interrupt().success());
    let s = stats(dir.path());
    let n = config.sources.len() as u64;
    assert_eq!(s["accepted"], n);
    assert_eq!(s["duplicates"], n);
    assert_eq!(s["rejected"]["unauthorized"], 2 * n);
    assert_eq!(s["pings"], 1);
    assert!(s["auth_failures"]["bad_signature"].as_u64().unwrap() >= n);
    let log = std::fs::read_to_string(dir.path().join("events.ndjson")).unwrap();
    assert_eq!(log.lines().count() as u64, n);
}

/// What a new user meets: `bluehook send` to a Twilio source with a `public_url` through a
/// local URL (as behind a tunnel) signs the public URL and is accepted; a sender built on
/// Svix (`svix-*` headers) is accepted by a Standard Webhooks source.
#[tokio::test]
async fn twilio_samples_through_a_tunnel_and_svix_headers_are_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("bluehook.toml");
    std::fs::write(
        &config_path,
        r#"
[sources.tw]
provider = "twilio"
secrets = ["tw-tunnel-token-0c7e"]
public_url = "https://hooks.example.com/webhooks/tw"

[sources.partner]
provider = "standard-webhooks"
secrets = ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"]
"#,
    )
    .unwrap();
    let dev = DevProcess::start(dir.path(), &["--config", config_path.to_str().unwrap()]);
    let send = |url: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_bluehook"))
            .args(["send", "twilio.delivered", "--source", "tw", "--config"])
            .arg(&config_path)
            .args(["--url", url])
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (ok, out) = send(&format!("{}/webhooks/tw", dev.base_url));
    assert!(ok && out.contains("\"status\":\"accepted\""), "{out}");
    let (ok, out) = send(&format!("{}/webhooks/tw/status", dev.base_url));
    assert!(
        ok && out.contains("\"status\":\"accepted\""),
        "with a type: {out}"
    );

    // The published Standard Webhooks vector, under Svix's header names (now, so that the
    // timestamp is inside the tolerance).
    let key = bluehook::provider::standard_webhooks::decode_secret(
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
    )
    .unwrap();
    let body = br#"{"type":"message.delivered","data":{"message_id":"svix-1"}}"#;
    let ts = chrono::Utc::now().timestamp();
    let signature =
        bluehook::provider::standard_webhooks::sign(&key, "msg_svix_1", ts, body.as_slice());
    let r = reqwest::Client::new()
        .post(format!("{}/webhooks/partner", dev.base_url))
        .header("svix-id", "msg_svix_1")
        .header("svix-timestamp", ts.to_string())
        .header("svix-signature", signature)
        .body(body.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["status"], "accepted", "{v}");
    assert!(dev.interrupt().success());
}
