//! The load script's short form, run in CI: `examples/loadgen.rs` offers `bluehook dev` 10,000
//! webhooks at 1,000/s, the process is stopped with its backlog still queued, started again,
//! and left to drain. The run fails on any error answer, any acknowledged event missing from
//! the event log, or any event logged twice. It asserts no rate and no latency: a slow machine
//! only takes longer (`scripts/bench-dev.sh` measures speed, on a release build).

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
fn ten_thousand_webhooks_under_load_then_a_stop_and_restart_lose_and_double_nothing() {
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
        // A request is an error only if it is refused or never answered at all.
        .args(["--timeout", &common::PATIENCE.as_secs().to_string()])
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
    assert_eq!(report["requests"], 10_000, "{report}");
    assert_eq!(accepted, 10_000, "every webhook is unique: {report}");

    // Stopped while (on a slow machine) much of it is still queued: it stops cleanly, and
    // nothing is logged twice.
    assert!(dev.interrupt().success());
    let logged = event_log::read_all(&dir.path().join("events.ndjson")).unwrap();
    let ids: HashSet<&str> = logged.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids.len(), logged.len(), "an event was logged twice");
    assert_eq!(stats(dir.path())["accepted"], accepted);

    // Started again, it works through what was left: every acked event in the log, once.
    let dev = DevProcess::start(dir.path(), &[]);
    common::wait_until_drained(dir.path());
    assert!(dev.interrupt().success());
    let logged = event_log::read_all(&dir.path().join("events.ndjson")).unwrap();
    let ids: HashSet<&str> = logged.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids.len(), logged.len(), "an event was logged twice");
    assert_eq!(
        logged.len() as u64,
        accepted,
        "every acked event is in the log"
    );
    let s = stats(dir.path());
    assert_eq!(s["accepted"], accepted, "{s}");
    assert_eq!(s["dead_lettered"], 0, "{s}");
}
