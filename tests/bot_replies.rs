//! Bot replies through `bluehook dev` over real HTTP: a `reply = true` destination (a fake bot
//! that fails its first request) answers inbound messages, and each answer's text reaches the
//! contact exactly once through the source's sender (fake Sendblue and Twilio APIs), from the
//! line the contact wrote to, whatever the retries, duplicates and redeliveries; answers
//! without a reply, and replies to anything but an inbound message, send nothing.

mod common;

use std::path::Path;
use std::process::Command;

use common::fake::{twilio_ok, Captured, FakeHttp};
use common::{events_show, stats, wait_until, DevProcess};
use serde_json::{json, Value};

const SB_SECRET: &str = "sb-replies-secret-4e1f90";
const TW_TOKEN: &str = "tw-replies-token-77a2c3";
const SB_API_SECRET: &str = "sb-api-T0KEN-replies-2b7e";
const TW_API_TOKEN: &str = "tw-api-T0KEN-replies-e05d";

fn config(dir: &Path, bot: &str, sendblue: &str, twilio: &str) -> std::path::PathBuf {
    let path = dir.join("bluehook.toml");
    std::fs::write(
        &path,
        format!(
            r#"
[senders.sb]
adapter = "sendblue"
api_key_id = "sb-key-id"
api_secret_key = "{SB_API_SECRET}"
base_url = "{sendblue}"

[senders.tw]
adapter = "twilio"
account_sid = "ACreplies"
auth_token = "{TW_API_TOKEN}"
base_url = "{twilio}"

[sources.sendblue]
provider = "sendblue"
secrets = ["{SB_SECRET}"]
sender = "sb"

[sources.twilio]
provider = "twilio"
secrets = ["{TW_TOKEN}"]
sender = "tw"

[sources.quiet]
provider = "sendblue"
secrets = ["{SB_SECRET}"]

[destinations.bot]
url = "{bot}/bot"
reply = true
retry_delay_secs = 1
max_retry_delay_secs = 1

[[routes]]
to = ["bot", "sms_fallback"]

[sinks.sms_fallback]
sender = "sb"
"#
        ),
    )
    .unwrap();
    path
}

/// `bluehook send <sample> --source S --config C --url U [args]`: the answer's JSON.
fn send(config: &Path, base: &str, sample: &str, source: &str, args: &[&str]) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_bluehook"))
        .args(["send", sample, "--source", source, "--config"])
        .arg(config)
        .arg("--url")
        .arg(format!("{base}/webhooks/{source}"))
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    serde_json::from_str(stdout.lines().last().unwrap()).unwrap()
}

/// The bot: its first request fails; then it echoes inbound messages as `{"reply": {...}}`
/// (or the bare-string form for Twilio's), answers `{"reply": "..."}` to everything else too
/// (which must send nothing), and says nothing to messages that start with "quiet".
fn bot_answer(c: &Captured, n: usize) -> (u16, String) {
    if n == 0 {
        return (500, "{}".into());
    }
    let e: Value = serde_json::from_str(&c.body).unwrap_or(Value::Null);
    let content = e["content"].as_str().unwrap_or("");
    if content.starts_with("quiet") {
        return (200, json!({"ok": true}).to_string());
    }
    let answer = match (e["kind"].as_str(), e["provider"].as_str()) {
        (Some("message.received"), Some("twilio")) => json!({"reply": format!("Echo: {content}")}),
        (Some("message.received"), _) => json!({"reply": {"content": format!("Echo: {content}")}}),
        _ => json!({"reply": "this is not an inbound message"}),
    };
    (200, answer.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_inbound_message_gets_its_bots_reply_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let bot = FakeHttp::start(bot_answer).await;
    let sendblue = FakeHttp::start(|_: &Captured, n| {
        (
            200,
            json!({"message_handle": format!("sb-reply-{n}"), "status": "QUEUED"}).to_string(),
        )
    })
    .await;
    let twilio = FakeHttp::start(twilio_ok).await;
    let config_path = config(dir.path(), &bot.url, &sendblue.url, &twilio.url);
    let dev = DevProcess::start(dir.path(), &["--config", config_path.to_str().unwrap()]);
    let base = dev.base_url.clone();

    // An inbound iMessage: the bot fails once, then answers; the reply goes out once, through
    // Sendblue's send-message API, from the line the contact wrote to.
    let answer = send(
        &config_path,
        &base,
        "sendblue.receive",
        "sendblue",
        &["--content", "hello bot", "--handle", "in-1"],
    );
    let id = answer["events"][0].as_str().unwrap().to_owned();
    wait_until("the reply through Sendblue", || {
        sendblue.requests().len() == 1
    });
    let sent = &sendblue.requests()[0];
    assert_eq!(sent.path, "/api/send-message");
    assert_eq!(sent.headers["sb-api-secret-key"], SB_API_SECRET);
    let event = events_show(dir.path(), &id);
    let e = &event["event"];
    assert_eq!(
        sent.json(),
        json!({"number": e["contact_number"], "from_number": e["line_number"], "content": "Echo: hello bot"})
    );
    wait_until("the reply recorded", || {
        events_show(dir.path(), &id)["deliveries"]["reply"] == "delivered"
    });
    let event = events_show(dir.path(), &id);
    assert_eq!(event["deliveries"]["bot"], "delivered");
    let bot_attempts: Vec<&Value> = event["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["destination"] == "bot")
        .collect();
    assert_eq!(bot_attempts.len(), 2, "a 500, then the answer: {event}");

    // The same webhook again: a duplicate, nothing more. The event redelivered to the bot from
    // the inspector: the bot answers again, the reply is not sent again.
    assert_eq!(
        send(
            &config_path,
            &base,
            "sendblue.receive",
            "sendblue",
            &["--content", "hello bot", "--handle", "in-1"]
        )["status"],
        "duplicate"
    );
    let redelivered = reqwest::Client::new()
        .post(format!("{base}/_bluehook/api/events/{id}/redeliver"))
        .json(&json!({"destination": "bot"}))
        .send()
        .await
        .unwrap();
    assert_eq!(redelivered.status().as_u16(), 202);
    wait_until("the bot's second answer", || bot.requests().len() == 3);
    wait_until("the second reply considered", || {
        events_show(dir.path(), &id)["attempts"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["destination"] == "reply")
            .count()
            == 2
    });
    let event = events_show(dir.path(), &id);
    let last_reply = event["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .find(|a| a["destination"] == "reply")
        .unwrap()
        .clone();
    assert_eq!(last_reply["detail"], "already_done");
    assert_eq!(
        sendblue.requests().len(),
        1,
        "never a second reply to one inbound event"
    );

    // Twilio: the bare-string reply, through the Messages API from the number written to.
    let answer = send(
        &config_path,
        &base,
        "twilio.received",
        "twilio",
        &["--content", "hi from sms"],
    );
    let tw_id = answer["events"][0].as_str().unwrap().to_owned();
    wait_until("the reply through Twilio", || twilio.requests().len() == 1);
    let form = twilio.requests()[0].form();
    let e = events_show(dir.path(), &tw_id)["event"].clone();
    assert_eq!(form["Body"], "Echo: hi from sms");
    assert_eq!(Some(form["To"].as_str()), e["contact_number"].as_str());
    assert_eq!(Some(form["From"].as_str()), e["line_number"].as_str());
    assert!(twilio.requests()[0]
        .path
        .ends_with("/2010-04-01/Accounts/ACreplies/Messages.json"));

    // Nothing sent for: an answer without a reply, a reply to a status event, a source without
    // a sender (its reply is recorded as skipped).
    send(
        &config_path,
        &base,
        "sendblue.receive",
        "sendblue",
        &["--content", "quiet please", "--handle", "in-2"],
    );
    let status = send(
        &config_path,
        &base,
        "sendblue.outbound",
        "sendblue",
        &["--handle", "out-1", "--status", "DELIVERED"],
    );
    let status_id = status["events"][0].as_str().unwrap().to_owned();
    let quiet = send(
        &config_path,
        &base,
        "sendblue.receive",
        "quiet",
        &["--content", "no sender here", "--handle", "in-3"],
    );
    let quiet_id = quiet["events"][0].as_str().unwrap().to_owned();
    wait_until("the reply without a sender skipped", || {
        events_show(dir.path(), &quiet_id)["deliveries"]["reply"] == "skipped"
    });
    wait_until("the status event delivered to the bot", || {
        events_show(dir.path(), &status_id)["deliveries"]["bot"] == "delivered"
    });
    let status_event = events_show(dir.path(), &status_id);
    assert!(
        status_event["deliveries"].get("reply").is_none(),
        "{status_event}"
    );
    wait_until("every event at the bot", || bot.requests().len() == 7);
    assert_eq!(sendblue.requests().len(), 1);
    assert_eq!(twilio.requests().len(), 1);

    // The SMS fallback through the same named sender (no number of its own: from the line the
    // failed iMessage went out from).
    let failed = send(
        &config_path,
        &base,
        "sendblue.outbound",
        "sendblue",
        &[
            "--handle",
            "out-2",
            "--status",
            "ERROR",
            "--content",
            "see you at 5",
        ],
    );
    let failed_id = failed["events"][0].as_str().unwrap().to_owned();
    wait_until("the fallback SMS through the named sender", || {
        sendblue.requests().len() == 2
    });
    let e = events_show(dir.path(), &failed_id)["event"].clone();
    assert_eq!(
        sendblue.requests()[1].json(),
        json!({"number": e["contact_number"], "from_number": e["line_number"], "content": "see you at 5"})
    );

    let s = stats(dir.path());
    assert_eq!(s["replies"]["sent"], 2, "{s}");
    assert_eq!(s["replies"]["skipped.no_sender"], 1, "{s}");
    drop(dev);
    // No sender's secret in what the command line shows.
    let shown = events_show(dir.path(), &id).to_string() + &stats(dir.path()).to_string();
    assert!(!shown.contains(SB_API_SECRET) && !shown.contains(TW_API_TOKEN));
}

#[test]
fn a_sender_that_is_not_defined_is_a_config_error_naming_it() {
    for (config, expected) in [
        (
            "[sources.sb]\nprovider = \"sendblue\"\nsecrets = [\"x\"]\nsender = \"nope\"\n",
            "[sources.sb]: sender `nope` is not defined",
        ),
        (
            "[sinks.sms_fallback]\nsender = \"nope\"\n",
            "[sinks.sms_fallback]: sender `nope` is not defined",
        ),
        (
            "[senders.s]\nadapter = \"sendblue\"\napi_key_id = \"a\"\napi_secret_key = \"b\"\n[sinks.sms_fallback]\nsender = \"s\"\nfrom = \"+1\"\n",
            "`from` is set with `sender`",
        ),
        (
            "[senders.s]\nadapter = \"carrier-pigeon\"\n",
            "[senders.s]: unknown adapter",
        ),
    ] {
        common::assert_dev_refuses(config, expected);
    }
}
