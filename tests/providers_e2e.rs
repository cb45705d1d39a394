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
secrets = ["sb-secret"]

[sources.bluereplies]
provider = "bluereplies"
secrets = ["br-secret"]

[sources.twilio]
provider = "twilio"
secrets = ["tw-auth-token"]

[sources.standard-webhooks]
provider = "standard-webhooks"
secrets = ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"]

[sources.bluemessaggio]
provider = "bluemessaggio"
header = "x-bm-signature"
secrets = ["bm-secret"]

[sources.stripe-style]
provider = "stripe-style"
secrets = ["st-secret"]

[sources.github-style]
provider = "github-style"
secrets = ["gh-secret"]

[sources.hmac]
provider = "hmac"
header = "x-signature"
algorithm = "sha512"
encoding = "base64"
secrets = ["hm-secret"]
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

fn write_config(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("bluehook.toml");
    std::fs::write(&path, CONFIG).unwrap();
    path
}

#[test]
fn every_sample_bluehook_send_knows_round_trips_into_the_event_log() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    let dev = DevProcess::start(dir.path(), &["--config", config.to_str().unwrap()]);

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
    assert!(dev.interrupt().success());

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
