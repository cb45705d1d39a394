//! Alerts through `bluehook dev` over real HTTP, into a fake Slack incoming webhook: one alert
//! per kind (an unauthenticated webhook, a failed iMessage, a dead-lettered delivery), a second
//! failure inside `min_interval_secs` suppressed and counted, a message quoted to its first 40
//! characters, no secret in any alert.

mod common;

use std::path::Path;
use std::process::Command;

use common::fake::{Captured, FakeHttp};
use common::{stats, wait_until, DevProcess};

const SB_SECRET: &str = "sb-alerts-secret-5a0c7d";
const SLACK_PATH: &str = "/services/T0KEN/alerts-7e1b";
const LONG: &str = "Your order 4471 is ready; pick it up at the front desk before 6 pm today";

fn config(dir: &Path, slack: &str, down: &str) -> std::path::PathBuf {
    let path = dir.join("bluehook.toml");
    std::fs::write(
        &path,
        format!(
            "[sources.sendblue]\nprovider = \"sendblue\"\nsecrets = [\"{SB_SECRET}\"]\n\n\
             [destinations.down]\nurl = \"{down}/in\"\nmax_attempts = 1\n\n\
             [[routes]]\nto = \"down\"\n\n\
             [alerts.team]\nurl = \"{slack}{SLACK_PATH}\"\n\
             on = [\"message.failed\", \"dead_lettered\", \"auth_failures\"]\nmin_interval_secs = 3600\n"
        ),
    )
    .unwrap();
    path
}

fn send(config: &Path, base: &str, args: &[&str]) -> bool {
    Command::new(env!("CARGO_BIN_EXE_bluehook"))
        .args([
            "send",
            "sendblue.outbound",
            "--source",
            "sendblue",
            "--config",
        ])
        .arg(config)
        .arg("--url")
        .arg(format!("{base}/webhooks/sendblue"))
        .args(args)
        .output()
        .unwrap()
        .status
        .success()
}

fn texts(slack: &FakeHttp) -> Vec<String> {
    slack
        .requests()
        .iter()
        .map(|c: &Captured| c.json()["text"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_alert_per_kind_and_the_rest_suppressed_inside_the_interval() {
    let dir = tempfile::tempdir().unwrap();
    let slack = FakeHttp::start(|_: &Captured, _| (200, "ok".into())).await;
    let down = FakeHttp::start(|_: &Captured, _| (500, "{}".into())).await;
    let config_path = config(dir.path(), &slack.url, &down.url);
    let dev = DevProcess::start(dir.path(), &["--config", config_path.to_str().unwrap()]);
    let base = dev.base_url.clone();

    // A webhook signed with the wrong secret.
    assert!(!send(&config_path, &base, &["--secret", "not-the-secret"]));
    wait_until("the auth alert", || {
        texts(&slack).iter().any(|t| t.contains("unauthenticated"))
    });

    // A failed iMessage: its alert, and the dead-lettered delivery to `down` (one attempt).
    assert!(send(
        &config_path,
        &base,
        &["--handle", "f-1", "--status", "ERROR", "--content", LONG]
    ));
    wait_until("the failure and dead-letter alerts", || {
        texts(&slack).len() == 3
    });
    // A second failure inside the interval: no alert, counted.
    assert!(send(
        &config_path,
        &base,
        &["--handle", "f-2", "--status", "ERROR", "--content", "again"]
    ));
    wait_until("the second failure suppressed", || {
        stats(dir.path())["alerts"]["suppressed"].as_u64() >= Some(2)
    });

    let all = texts(&slack);
    assert_eq!(all.len(), 3, "{all:#?}");
    let of = |needle: &str| all.iter().filter(|t| t.contains(needle)).count();
    assert_eq!(of("unauthenticated"), 1, "{all:#?}");
    assert_eq!(of("failed since the last alert"), 1, "{all:#?}");
    assert_eq!(of("dead-lettered since the last alert"), 1, "{all:#?}");
    let auth = all.iter().find(|t| t.contains("unauthenticated")).unwrap();
    assert_eq!(
        auth,
        "bluehook [team]: 1 webhook refused as unauthenticated since the last alert (bad_signature 1)."
    );
    let failed = all.iter().find(|t| t.contains("failed since")).unwrap();
    assert!(failed.starts_with("bluehook [team]: 1 outbound message failed since the last alert. Latest: source `sendblue`, message f-1"), "{failed}");
    let quoted: String = LONG.chars().take(40).collect();
    assert!(failed.contains(&format!("\"{quoted}…\"")), "{failed}");
    assert!(
        !failed.contains(&LONG[40..]),
        "no more than 40 characters of a message"
    );
    let dead = all.iter().find(|t| t.contains("dead-lettered")).unwrap();
    assert!(dead.contains("dest-down-dlq +1"), "{dead}");
    for t in &all {
        assert!(
            !t.contains(SB_SECRET) && !t.contains("T0KEN") && !t.contains("not-the-secret"),
            "{t}"
        );
    }
    let s = stats(dir.path());
    assert_eq!(s["alerts"]["sent"], 3, "{s}");
    assert_eq!(s["alerts"]["failed"], 0, "{s}");
    drop(dev);
}

#[test]
fn an_alert_rule_is_checked_at_start() {
    for (rule, expected) in [
        (
            "url = \"ftp://x\"\non = [\"dead_lettered\"]\n",
            "`url` must be an http(s) URL",
        ),
        ("url = \"https://x\"\n", "`on` is required"),
        (
            "url = \"https://x\"\non = [\"sunrise\"]\n",
            "unknown `on` value `sunrise`",
        ),
        (
            "url = \"https://x\"\non = \"auth_failures\"\nevery = 3\n",
            "unknown setting `every`",
        ),
    ] {
        common::assert_dev_refuses(&format!("[alerts.team]\n{rule}"), expected);
    }
}
