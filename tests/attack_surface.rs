//! The local server under hostile input, table-driven over raw TCP where a client library would
//! refuse to misbehave: every case gets a clear 4xx (or the connection closed for a client too
//! slow to send its headers), nothing reaches the queue, and the server keeps serving.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use bluehook::provider::standard_webhooks;
use common::{stats, DevProcess};

const SENDBLUE_SECRET: &str = "attack-sendblue-secret-0123456789";
const SW_SECRET: &str = "whsec_YXR0YWNrLXN0YW5kYXJkLXdlYmhvb2tzLXNlY3JldA==";

const CONFIG: &str = r#"
[sources.sendblue]
provider = "sendblue"
secrets = ["attack-sendblue-secret-0123456789"]

[sources.other]
provider = "sendblue"
secrets = ["attack-other-secret-9876543210"]

[sources.sw]
provider = "standard-webhooks"
secrets = ["whsec_YXR0YWNrLXN0YW5kYXJkLXdlYmhvb2tzLXNlY3JldA=="]
"#;

const MESSAGE: &str = r#"{"accountEmail":"a@example.com","content":"hi","is_outbound":false,"status":"RECEIVED","message_handle":"attack-1","date_sent":"2026-11-23T05:00:00Z","date_updated":"2026-11-23T05:00:00Z","from_number":"+19998887777","number":"+19998887777","to_number":"+15551234567","service":"iMessage","message_type":"message"}"#;

/// Sends raw bytes (in pieces, with pauses) and reads the answer until the server closes or
/// `read_for` passes. Returns the status code, if an answer came.
fn raw(port: u16, pieces: &[&[u8]], pause: Duration, read_for: Duration) -> (Option<u16>, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(read_for)).unwrap();
    for p in pieces {
        if s.write_all(p).is_err() {
            break;
        }
        std::thread::sleep(pause);
    }
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let deadline = Instant::now() + read_for;
    while Instant::now() < deadline {
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                if buf.windows(4).any(|w| w == b"\r\n\r\n") && answer_complete(&buf) {
                    break;
                }
            }
        }
    }
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .and_then(|c| c.parse().ok());
    (status, text)
}

fn answer_complete(buf: &[u8]) -> bool {
    let text = String::from_utf8_lossy(buf);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return false;
    };
    let len = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse::<usize>().unwrap_or(0))
        })
        .unwrap_or(0);
    body.len() >= len
}

fn request(path: &str, headers: &[(&str, String)], body: &[u8]) -> Vec<u8> {
    let mut out = format!("POST {path} HTTP/1.1\r\nhost: 127.0.0.1\r\n");
    for (k, v) in headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str(&format!("content-length: {}\r\n\r\n", body.len()));
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

fn signed(secret: &str) -> Vec<(&'static str, String)> {
    vec![
        ("sb-signing-secret", secret.to_owned()),
        ("content-type", "application/json".to_owned()),
    ]
}

fn error_code(answer: &str) -> Option<String> {
    let body = answer.split_once("\r\n\r\n")?.1;
    let v: serde_json::Value = serde_json::from_str(body).ok()?;
    v["error"].as_str().map(str::to_owned)
}

#[test]
fn hostile_requests_get_a_clear_4xx_and_nothing_is_queued() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("bluehook.toml"), CONFIG).unwrap();
    // Everything at trace level into a file: secrets must not be in it.
    let log_file = dir.path().join("dev.log");
    let dev = DevProcess::start_logging(
        dir.path(),
        &["--config", "bluehook.toml"],
        "trace",
        Some(&log_file),
    );
    let mut answers = String::new();
    let port: u16 = dev.base_url.rsplit(':').next().unwrap().parse().unwrap();
    // An answer ends the read at once; the bound only matters when none comes.
    let quick = Duration::from_secs(60);

    // An old, correctly signed Standard Webhooks delivery (a replay).
    let key = standard_webhooks::decode_secret(SW_SECRET).unwrap();
    let old = chrono::Utc::now().timestamp() - 3600;
    let replay_sig = standard_webhooks::sign(&key, "msg_attack", old, MESSAGE.as_bytes());
    let nested = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let mut invalid_utf8 = MESSAGE.as_bytes().to_vec();
    invalid_utf8.splice(40..40, [0xff, 0xfe, 0xc3]);

    let over_limit_chunked = {
        let mut b = b"POST /webhooks/sendblue HTTP/1.1\r\nhost: x\r\nsb-signing-secret: ".to_vec();
        b.extend_from_slice(SENDBLUE_SECRET.as_bytes());
        b.extend_from_slice(b"\r\ntransfer-encoding: chunked\r\n\r\n");
        for _ in 0..40 {
            b.extend_from_slice(format!("{:x}\r\n", 8192).as_bytes());
            b.extend_from_slice(&[b'a'; 8192]);
            b.extend_from_slice(b"\r\n");
        }
        b.extend_from_slice(b"0\r\n\r\n");
        b
    };
    let lying_length = {
        let mut b = b"POST /webhooks/sendblue HTTP/1.1\r\nhost: x\r\nsb-signing-secret: ".to_vec();
        b.extend_from_slice(SENDBLUE_SECRET.as_bytes());
        b.extend_from_slice(b"\r\ncontent-length: 50000000\r\n\r\n{\"short\":");
        b
    };
    let mut padded = signed(SENDBLUE_SECRET);
    padded.push(("x-padding", "a".repeat(100 * 1024)));
    let huge_header = request("/webhooks/sendblue", &padded, MESSAGE.as_bytes());

    type Case = (&'static str, Vec<u8>, u16, Option<&'static str>);
    let cases: Vec<Case> = vec![
        (
            "body over the limit",
            request(
                "/webhooks/sendblue",
                &signed(SENDBLUE_SECRET),
                &vec![b'{'; 300 * 1024],
            ),
            413,
            Some("too_large"),
        ),
        (
            "chunked body over the limit",
            over_limit_chunked,
            413,
            Some("too_large"),
        ),
        (
            "Content-Length far over the limit",
            lying_length,
            413,
            Some("too_large"),
        ),
        (
            "deeply nested JSON",
            request(
                "/webhooks/sendblue",
                &signed(SENDBLUE_SECRET),
                nested.as_bytes(),
            ),
            400,
            Some("bad_request"),
        ),
        (
            "invalid UTF-8",
            request(
                "/webhooks/sendblue",
                &signed(SENDBLUE_SECRET),
                &invalid_utf8,
            ),
            400,
            Some("bad_request"),
        ),
        (
            "a 100 KB header value",
            huge_header,
            431,
            Some("headers_too_large"),
        ),
        (
            "replayed signature with an old timestamp",
            request(
                "/webhooks/sw",
                &[
                    ("webhook-id", "msg_attack".into()),
                    ("webhook-timestamp", old.to_string()),
                    ("webhook-signature", format!("v1,{replay_sig}")),
                    ("content-type", "application/json".into()),
                ],
                MESSAGE.as_bytes(),
            ),
            401,
            Some("unauthorized"),
        ),
        (
            "a valid signature for another source",
            request(
                "/webhooks/other",
                &signed(SENDBLUE_SECRET),
                MESSAGE.as_bytes(),
            ),
            401,
            Some("unauthorized"),
        ),
        (
            "path traversal in {source}",
            request(
                "/webhooks/..%2F..%2Fetc%2Fpasswd",
                &signed(SENDBLUE_SECRET),
                MESSAGE.as_bytes(),
            ),
            404,
            Some("unknown_source"),
        ),
        (
            "dot segments in the path",
            request(
                "/webhooks/../../etc/passwd",
                &signed(SENDBLUE_SECRET),
                MESSAGE.as_bytes(),
            ),
            404,
            Some("not_found"),
        ),
        (
            "DELETE",
            b"DELETE /webhooks/sendblue HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n".to_vec(),
            405,
            Some("method_not_allowed"),
        ),
        (
            "PATCH",
            b"PATCH /webhooks/sendblue HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\n{}".to_vec(),
            405,
            Some("method_not_allowed"),
        ),
    ];
    // The slow ones run alongside: a body that stops coming, and headers that never end.
    let slow_body = std::thread::spawn(move || {
        let mut head =
            b"POST /webhooks/sendblue HTTP/1.1\r\nhost: x\r\nsb-signing-secret: ".to_vec();
        head.extend_from_slice(SENDBLUE_SECRET.as_bytes());
        head.extend_from_slice(b"\r\ncontent-length: 400\r\n\r\n{\"a\":");
        let t = Instant::now();
        let (status, text) = raw(port, &[&head], Duration::ZERO, Duration::from_secs(120));
        (status, error_code(&text), t.elapsed())
    });
    let slowloris = std::thread::spawn(move || {
        let t = Instant::now();
        let (status, _) = raw(
            port,
            &[
                b"POST /webhooks/sendblue HTTP/1.1\r\n",
                b"host: x\r\n",
                b"x-a: 1\r\n",
            ],
            Duration::from_millis(500),
            Duration::from_secs(120),
        );
        (status, t.elapsed())
    });

    for (name, bytes, status, code) in &cases {
        let (got, text) = raw(port, &[bytes], Duration::ZERO, quick);
        answers.push_str(&text);
        assert_eq!(
            got,
            Some(*status),
            "{name}: {}",
            text.lines().next().unwrap_or("")
        );
        if let Some(code) = code {
            assert_eq!(error_code(&text).as_deref(), Some(*code), "{name}: {text}");
        }
    }

    let (status, code, took) = slow_body.join().unwrap();
    assert_eq!(status, Some(408), "a body that stops coming");
    assert_eq!(code.as_deref(), Some("timeout"));
    assert!(
        took < Duration::from_secs(90),
        "answered by the server's 10 s body deadline, not the client giving up: {took:?}"
    );
    let (status, took) = slowloris.join().unwrap();
    assert!(
        status.is_none_or(|s| (400..500).contains(&s)),
        "headers that never end: {status:?}"
    );
    assert!(
        took < Duration::from_secs(90),
        "closed by the server's 10 s header deadline, not the client giving up: {took:?}"
    );

    // Still serving, and a genuine webhook goes through.
    let (status, text) = raw(
        port,
        &[&request(
            "/webhooks/sendblue",
            &signed(SENDBLUE_SECRET),
            MESSAGE.as_bytes(),
        )],
        Duration::ZERO,
        quick,
    );
    assert_eq!(status, Some(200), "{text}");

    common::wait_until_logged(dir.path());
    assert!(dev.interrupt().success());
    let s = stats(dir.path());
    assert_eq!(s["accepted"], 1, "only the genuine webhook: {s}");
    let log = std::fs::read_to_string(dir.path().join("events.ndjson")).unwrap();
    assert_eq!(log.lines().count(), 1, "nothing hostile reached the queue");
    assert_eq!(s["auth_failures"]["timestamp_out_of_tolerance"], 1, "{s}");

    // No secret in any log line, any answer, or the stats (both forms).
    let human = std::process::Command::new(env!("CARGO_BIN_EXE_bluehook"))
        .args(["stats", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    let log = std::fs::read_to_string(&log_file).unwrap();
    assert!(
        log.contains("webhook refused"),
        "the log was written: {log}"
    );
    let sw_key = SW_SECRET.trim_start_matches("whsec_");
    for secret in [
        SENDBLUE_SECRET,
        "attack-other-secret-9876543210",
        SW_SECRET,
        sw_key,
    ] {
        for (what, text) in [
            ("the log", log.as_str()),
            ("an answer", answers.as_str()),
            ("stats --json", &s.to_string()),
            ("stats", &String::from_utf8_lossy(&human.stdout)),
        ] {
            assert!(!text.contains(secret), "a secret is in {what}");
        }
    }
}
