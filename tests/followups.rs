//! Follow-ups through `bluehook dev` over real HTTP: a message read and not answered gets its
//! follow-up once `after_secs` later (the text through a fake Sendblue API, a `followup.due`
//! event to a destination), and none when the contact replied after the read, has opted out,
//! or never read it; the timers survive `kill -9`; a bad rule is refused at start.

mod common;

use std::path::Path;
use std::process::Command;

use common::fake::{Captured, FakeHttp};
use common::{events_show, stats, wait_until, DevProcess};
use serde_json::{json, Value};

const SB_SECRET: &str = "sb-followups-secret-1c9d2e";
const OUTBOUND: &str = include_str!("../shared/testdata/sendblue/outbound.json");
const SOURCES: [&str; 4] = ["read", "replied", "unread", "optout"];

fn config(dir: &Path, sendblue: &str, hook: &str) -> std::path::PathBuf {
    let mut text = format!(
        "[senders.sb]\nadapter = \"sendblue\"\napi_key_id = \"k\"\napi_secret_key = \"s\"\nbase_url = \"{sendblue}\"\n\n\
         [destinations.hook]\nurl = \"{hook}/due\"\nretry_delay_secs = 1\nmax_retry_delay_secs = 1\n\n\
         [[followups]]\nname = \"nudge\"\nafter_secs = 5\ncontent = \"Just checking in: any questions?\"\nto = [\"hook\"]\n\n"
    );
    for s in SOURCES {
        text.push_str(&format!(
            "[sources.{s}]\nprovider = \"sendblue\"\nsecrets = [\"{SB_SECRET}\"]\nsender = \"sb\"\n\n"
        ));
    }
    let path = dir.join("bluehook.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Posts Sendblue's outbound status webhook for `handle` with `status` to `source`.
async fn status(base: &str, source: &str, handle: &str, status: &str, opted_out: bool) -> Value {
    let mut body: Value = serde_json::from_str(OUTBOUND).unwrap();
    body["message_handle"] = json!(handle);
    body["status"] = json!(status);
    body["opted_out"] = json!(opted_out);
    let r = reqwest::Client::new()
        .post(format!("{base}/webhooks/{source}/outbound"))
        .header("sb-signing-secret", SB_SECRET)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    r.json().await.unwrap()
}

fn inbound(config: &Path, base: &str, source: &str) {
    let out = Command::new(env!("CARGO_BIN_EXE_bluehook"))
        .args(["send", "sendblue.receive", "--source", source, "--config"])
        .arg(config)
        .arg("--url")
        .arg(format!("{base}/webhooks/{source}"))
        .args([
            "--content",
            "thanks, all good",
            "--handle",
            &format!("in-{source}"),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_and_unanswered_messages_get_one_follow_up_and_no_one_else_does() {
    let dir = tempfile::tempdir().unwrap();
    let sendblue = FakeHttp::start(|_: &Captured, n| {
        (
            200,
            json!({"message_handle": format!("sb-fu-{n}")}).to_string(),
        )
    })
    .await;
    let hook = FakeHttp::start(|_: &Captured, _| (200, "{}".into())).await;
    let config_path = config(dir.path(), &sendblue.url, &hook.url);
    let config_arg = config_path.to_str().unwrap();
    let dev = DevProcess::start(dir.path(), &["--config", config_arg]);
    let base = dev.base_url.clone();

    let read = status(&base, "read", "m-read", "READ", false).await;
    let read_id = read["events"][0].as_str().unwrap().to_owned();
    status(&base, "replied", "m-replied", "READ", false).await;
    inbound(&config_path, &base, "replied");
    status(&base, "unread", "m-unread", "DELIVERED", false).await;
    status(&base, "optout", "m-optout", "READ", true).await;
    // The same receipt again is a duplicate: still one timer.
    assert_eq!(
        status(&base, "read", "m-read", "READ", false).await["status"],
        "duplicate"
    );

    // Killed before anything is due: the timers are in the data folder.
    wait_until("three timers set", || {
        stats(dir.path())["followups"]["scheduled"] == 3
    });
    dev.kill9();
    let dev = DevProcess::start(dir.path(), &["--config", config_arg]);

    wait_until("every follow-up decided", || {
        stats(dir.path())["followups"]["pending"] == 0
    });
    let s = stats(dir.path());
    let f = &s["followups"];
    assert_eq!(f["scheduled"], 3, "{s}");
    assert_eq!(f["sent"], 1, "{s}");
    assert_eq!(f["skipped.replied"], 1, "{s}");
    assert_eq!(f["skipped.opted_out"], 1, "{s}");

    // The text went to the contact who read and did not answer, once, from the line.
    wait_until("the follow-up text", || !sendblue.requests().is_empty());
    let e = events_show(dir.path(), &read_id)["event"].clone();
    assert_eq!(sendblue.requests().len(), 1);
    assert_eq!(
        sendblue.requests()[0].json(),
        json!({"number": e["contact_number"], "from_number": e["line_number"], "content": "Just checking in: any questions?"})
    );
    // The destination got one `followup.due` for it.
    wait_until("the followup.due event", || hook.requests().len() == 1);
    let due = hook.requests()[0].json();
    assert_eq!(due["kind"], "followup.due");
    assert_eq!(due["provider_event"], "nudge");
    assert_eq!(due["message_handle"], "m-read");
    assert_eq!(due["content"], "Just checking in: any questions?");
    // Its attempt shows under the read receipt.
    let shown = events_show(dir.path(), &read_id);
    let attempt = shown["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["destination"] == "followup:nudge")
        .cloned();
    assert_eq!(
        attempt.map(|a| a["state"].clone()),
        Some(json!("delivered")),
        "{shown}"
    );

    // A while later, nothing more.
    drop(dev);
    let dev = DevProcess::start(dir.path(), &["--config", config_arg]);
    status(&dev.base_url, "unread", "m-unread-2", "SENT", false).await;
    wait_until("the last event logged", || {
        stats(dir.path())["processed"] == 6
    });
    assert_eq!(sendblue.requests().len(), 1);
    assert_eq!(hook.requests().len(), 1);
}

#[test]
fn a_follow_up_rule_is_checked_at_start() {
    for (rule, expected) in [
        (
            "name = \"n\"\ncontent = \"x\"\n",
            "`after_secs` (> 0) is required",
        ),
        ("name = \"n\"\nafter_secs = 5\n", "set `content`"),
        (
            "name = \"n\"\nafter_secs = 5\nto = [\"nowhere\"]\n",
            "`to` names `nowhere`",
        ),
        (
            "name = \"n\"\nafter_secs = 5\ncontent = \"x\"\nwhen = \"later\"\n",
            "unknown setting `when`",
        ),
    ] {
        common::assert_dev_refuses(&format!("[[followups]]\n{rule}"), expected);
    }
}
