//! The load script's short form, run in CI: `examples/loadgen.rs` drives `bluehook dev` at a
//! steady 1,000 webhooks/s for 10 s; the run fails on any error, any acknowledged event missing
//! from the event log, or any event logged twice. (`scripts/bench-dev.sh 60` is the long form,
//! on a release build.)

mod common;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use bluehook::local::event_log;
use common::{stats, DevProcess};

/// The load generator example (scripts/test.sh builds it).
fn loadgen() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let target = exe
        .ancestors()
        .find(|p| p.file_name().is_some_and(|n| n == "deps"))
        .and_then(Path::parent)
        .unwrap()
        .to_owned();
    let path = target.join("examples").join("loadgen");
    assert!(
        path.exists(),
        "{} is not built: `cargo build --example loadgen` (scripts/test.sh does)",
        path.display()
    );
    path
}

#[test]
fn ten_seconds_at_a_thousand_per_second_lose_and_double_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let dev = DevProcess::start(dir.path(), &[]);
    let secret = std::fs::read_to_string(dir.path().join("dev-secret")).unwrap();
    let out = Command::new(loadgen())
        .args([
            "--url",
            &format!("{}/webhooks/sendblue/outbound", dev.base_url),
        ])
        .args(["--secret", secret.trim()])
        .args(["--connections", "32", "--duration", "10", "--rate", "1000"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    println!("load: {report}");
    assert_eq!(report["errors"], 0, "{report}");
    let accepted = report["accepted"].as_u64().unwrap();
    assert_eq!(report["requests"].as_u64().unwrap(), accepted, "{report}");
    assert!(
        accepted >= 5_000,
        "it kept up with at least half the rate: {report}"
    );

    assert!(dev.interrupt().success());
    let logged = event_log::read_all(&dir.path().join("events.ndjson")).unwrap();
    let ids: HashSet<&str> = logged.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids.len(), logged.len(), "an event was logged twice");
    assert_eq!(
        logged.len() as u64,
        accepted,
        "every acked event is in the log"
    );
    assert_eq!(stats(dir.path())["accepted"], accepted);
}
