//! The media archive end to end through `bluehook dev` over HTTP, with a fake CDN: attachments
//! from bytes to 100 MB (with and without a Content-Length, slow, behind Twilio's Basic auth)
//! are stored once, byte for byte, under `media/<source>/<yyyy>/<mm>/<event id>-<n>.<ext>`;
//! a 404 is `expired` and not retried; a 500 is retried; an oversized file is `too_large` and
//! not kept; a file that keeps failing is dead-lettered and `bluehook replay` archives it.

mod common;

use std::io::Read;
use std::path::{Path, PathBuf};

use common::cdn::{sha256_of, Cdn};
use common::fake::FakeHttp;
use common::{events_show, stats, wait_until, DevProcess};

const RECEIVE: &str = include_str!("../shared/testdata/sendblue/receive.json");
const SECRET: &str = "sb-media-secret";
const TWILIO_TOKEN: &str = "tw-media-auth-token-1f2e3d";
const ACCOUNT: &str = "AC00112233445566778899aabbccddeeff";

fn sendblue_inbound(handle: &str, media_url: &str) -> String {
    RECEIVE
        .replace("99DCC379-DD76-4712-BA65-11EFB33B8CD6", handle)
        .replace(
            "\"media_url\": \"\"",
            &format!("\"media_url\": \"{media_url}\""),
        )
}

/// Posts a Sendblue webhook; answers the event id.
async fn post_sendblue(client: &reqwest::Client, base: &str, body: String) -> (String, String) {
    let r = client
        .post(format!("{base}/webhooks/sendblue"))
        .header("sb-signing-secret", SECRET)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    (
        v["status"].as_str().unwrap().to_owned(),
        v["events"][0]
            .as_str()
            .or(v["event_id"].as_str())
            .unwrap_or_default()
            .to_owned(),
    )
}

/// The media entries of `bluehook events show`, once none is pending or failing.
fn settled_media(dir: &Path, id: &str) -> Vec<serde_json::Value> {
    let mut media = Vec::new();
    wait_until(&format!("the media of {id} to settle"), || {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_bluehook"))
            .args(["events", "show", id, "--json", "--data-dir"])
            .arg(dir)
            .output()
            .unwrap();
        if !out.status.success() {
            return false;
        }
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        media = v["media"].as_array().cloned().unwrap_or_default();
        !media.is_empty()
            && media
                .iter()
                .all(|m| !matches!(m["state"].as_str(), Some("pending" | "failed")))
    });
    media
}

fn file_sha256(path: &Path) -> String {
    use sha2::Digest;
    let mut f = std::fs::File::open(path).unwrap();
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    hex::encode(h.finalize())
}

/// Peak resident memory of a process (VmHWM), in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    let kb: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kb * 1024
}

fn archived(dir: &Path, event: &serde_json::Value, n: usize, ext: &str) -> PathBuf {
    let at = event["received_at"].as_str().unwrap();
    dir.join(format!(
        "media/{}/{}/{}/{}-{n}.{ext}",
        event["source"].as_str().unwrap(),
        &at[..4],
        &at[5..7],
        event["id"].as_str().unwrap()
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attachments_are_archived_once_byte_for_byte_and_named_to_the_crm_and_analytics() {
    let cdn = Cdn::start().await;
    let crm = FakeHttp::start(|_, _| (200, "{}".into())).await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bluehook.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[queue]
visibility_timeout_secs = 1
max_receive_count = 4

[sources.sendblue]
provider = "sendblue"
secrets = ["{SECRET}"]

[sources.tw]
provider = "twilio"
secrets = ["env:BLUEHOOK_MEDIA_TEST_TWILIO_TOKEN"]

[sinks.crm]
adapter = "http"
url = "{crm}/crm"
secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"

[sinks.analytics]

[sinks.media]
"#,
            crm = crm.url
        ),
    )
    .unwrap();
    std::env::set_var("BLUEHOOK_MEDIA_TEST_TWILIO_TOKEN", TWILIO_TOKEN);
    let log = dir.path().join("dev.log");
    let dev = DevProcess::start_logging(
        dir.path(),
        &["--config", config.to_str().unwrap()],
        "debug",
        Some(&log),
    );
    let client = reqwest::Client::new();
    let base = dev.base_url.clone();
    let c = &cdn.url;

    // Sendblue: a voice note of a few bytes, 100 MB of video, a contact card trickling in
    // without a Content-Length, a link without an extension (named by the type it is served
    // with), a picture whose link has expired.
    const BIG: u64 = 100_000_000;
    let cases = [
        ("m-voice", format!("{c}/a/voice.caf?size=37"), 37, "caf"),
        ("m-video", format!("{c}/b/video.mp4?size={BIG}"), BIG, "mp4"),
        (
            "m-card",
            format!("{c}/c/card.vcf?size=300000&chunked=1&delay_ms=15&ct=text/vcard"),
            300_000,
            "vcf",
        ),
        (
            "m-memo",
            format!("{c}/e/memo?size=4096&ct=audio/x-caf"),
            4096,
            "caf",
        ),
    ];
    let mut ids = Vec::new();
    for (handle, url, _, _) in &cases {
        let (status, id) = post_sendblue(&client, &base, sendblue_inbound(handle, url)).await;
        assert_eq!(status, "accepted");
        ids.push(id);
    }
    let (_, gone_id) = post_sendblue(
        &client,
        &base,
        sendblue_inbound("m-gone", &format!("{c}/d/gone.jpg?status=404")),
    )
    .await;

    // Twilio: two attachments behind the account's Basic auth; the first fails once.
    let auth = format!("{ACCOUNT}:{TWILIO_TOKEN}");
    let auth_q = form_urlencoded::byte_serialize(auth.as_bytes()).collect::<String>();
    let params: Vec<(String, String)> = [
        ("MessageSid", "MMmedia0001"),
        ("AccountSid", ACCOUNT),
        ("From", "+19998887777"),
        ("To", "+15550001111"),
        ("Body", "look"),
        ("NumMedia", "2"),
        ("SmsStatus", "received"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .chain([
        (
            "MediaUrl0".into(),
            format!("{c}/tw/img?size=5000&fail=1&auth={auth_q}"),
        ),
        ("MediaContentType0".into(), "image/jpeg".into()),
        (
            "MediaUrl1".into(),
            format!("{c}/tw/card?size=700&auth={auth_q}"),
        ),
        ("MediaContentType1".into(), "text/x-vcard".into()),
    ])
    .collect();
    let url = format!("{base}/webhooks/tw");
    let signature = bluehook::provider::twilio::sign(TWILIO_TOKEN.as_bytes(), &url, &params);
    let body = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(params.iter())
        .finish();
    let r = client
        .post(&url)
        .header("content-type", "application/x-www-form-urlencoded")
        .header("x-twilio-signature", signature)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    let tw_id = v["events"][0]
        .as_str()
        .or(v["event_id"].as_str())
        .unwrap()
        .to_owned();

    // Each Sendblue file: stored, byte for byte, where `events show` says.
    let d = dir.path();
    for ((_, _, size, ext), id) in cases.iter().zip(&ids) {
        let media = settled_media(d, id);
        assert_eq!(media.len(), 1, "{media:?}");
        let m = &media[0];
        assert_eq!(m["state"], "stored", "{m}");
        let event = &events_show(d, id)["event"];
        let path = archived(d, event, 0, ext);
        assert_eq!(m["location"].as_str().unwrap(), path.to_str().unwrap());
        assert_eq!(m["size"].as_u64(), Some(*size));
        assert_eq!(m["sha256"].as_str().unwrap(), sha256_of(*size), "{m}");
        assert_eq!(std::fs::metadata(&path).unwrap().len(), *size);
        assert_eq!(file_sha256(&path), sha256_of(*size), "{}", path.display());
    }
    let card = &settled_media(d, &ids[2])[0];
    assert_eq!(card["content_type"], "text/vcard");
    // Streamed: the 100 MB file never sat in memory whole.
    let peak = peak_rss(dev.child.id());
    println!(
        "bluehook dev peak RSS after archiving 100 MB: {} MiB",
        peak >> 20
    );
    assert!(
        peak < BIG * 3 / 4,
        "peak RSS {peak} B: the download was not streamed"
    );

    // The expired link: recorded, asked for once, not retried, nothing stored.
    let gone = &settled_media(d, &gone_id)[0];
    assert_eq!(gone["state"], "expired", "{gone}");
    assert_eq!(gone["status"], 404);
    assert!(!Path::new(gone["location"].as_str().unwrap()).exists());

    // Twilio: both attachments stored with their declared types' extensions; the one that
    // failed once was asked for twice, the other once (a retry fetches only what is missing).
    let media = settled_media(d, &tw_id);
    let tw_event = &events_show(d, &tw_id)["event"];
    assert_eq!(media.len(), 2);
    for (m, (n, ext, size)) in media.iter().zip([(0, "jpg", 5000u64), (1, "vcf", 700)]) {
        assert_eq!(m["state"], "stored", "{m}");
        let path = archived(d, tw_event, n, ext);
        assert_eq!(file_sha256(&path), sha256_of(size));
    }
    assert_eq!(cdn.hits("/tw/img"), 2, "500 then 200");
    assert_eq!(
        cdn.hits("/tw/card"),
        1,
        "stored once, not fetched again on the retry"
    );
    let shown = events_show(d, &tw_id);
    assert_eq!(shown["deliveries"]["media"], "delivered", "{shown}");

    // A duplicate webhook downloads nothing again.
    let (status, _) = post_sendblue(&client, &base, sendblue_inbound("m-voice", &cases[0].1)).await;
    assert_eq!(status, "duplicate");
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert_eq!(cdn.hits("/a/voice.caf"), 1);
    assert_eq!(cdn.hits("/d/gone.jpg"), 1, "expired is not retried");

    // The CRM push names the archived location (`message.media`), as does the analytics row.
    let voice = events_show(d, &ids[0]);
    let voice_path = archived(d, &voice["event"], 0, "caf");
    wait_until("the CRM push of the voice note", || {
        crm.requests()
            .iter()
            .any(|r| r.json()["event"]["id"] == voice["event"]["id"])
    });
    let push = crm
        .requests()
        .into_iter()
        .map(|r| r.json())
        .find(|p| p["event"]["id"] == voice["event"]["id"])
        .unwrap();
    assert_eq!(
        push["message"]["media"][0]["location"].as_str(),
        voice_path.to_str(),
        "{push}"
    );
    let rows = wait_for_analytics_row(d, ids[0].as_str());
    assert_eq!(
        rows["media_archive"][0]["location"].as_str(),
        voice_path.to_str()
    );

    let s = stats(d);
    assert_eq!(s["media"]["stored"], 6, "{s}");
    assert_eq!(s["media"]["expired"], 1, "{s}");
    assert_eq!(
        s["media"]["bytes"],
        BIG + 37 + 300_000 + 4096 + 5000 + 700,
        "{s}"
    );

    // The account's token never reaches the log (nor its Basic encoding).
    drop(dev);
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(!logged.contains(TWILIO_TOKEN));
    use base64::Engine;
    assert!(!logged.contains(&base64::engine::general_purpose::STANDARD.encode(&auth)));
}

/// The analytics row of event `id`, once archived.
fn wait_for_analytics_row(dir: &Path, id: &str) -> serde_json::Value {
    let mut found = serde_json::Value::Null;
    wait_until("the analytics row", || {
        let mut stack = vec![dir.join("analytics")];
        while let Some(p) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&p) else {
                continue;
            };
            for e in entries.flatten() {
                let path = e.path();
                if path.is_dir() {
                    stack.push(path);
                } else if path.extension().is_some_and(|x| x == "ndjson") {
                    for line in std::fs::read_to_string(&path).unwrap_or_default().lines() {
                        let v: serde_json::Value = serde_json::from_str(line).unwrap();
                        if v["id"] == id {
                            found = v;
                            return true;
                        }
                    }
                }
            }
        }
        false
    });
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_files_are_not_kept_and_a_failing_one_is_dead_lettered_then_replayed() {
    let cdn = Cdn::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bluehook.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[queue]
visibility_timeout_secs = 1
max_receive_count = 2

[sources.sendblue]
provider = "sendblue"
secrets = ["{SECRET}"]

[sinks.media]
max_bytes = 1000000
"#
        ),
    )
    .unwrap();
    let dev = DevProcess::start(dir.path(), &["--config", config.to_str().unwrap()]);
    let client = reqwest::Client::new();
    let c = &cdn.url;
    let d = dir.path();

    // Over max_bytes: refused on its Content-Length, or cut off while reading without one.
    let (_, declared) = post_sendblue(
        &client,
        &dev.base_url,
        sendblue_inbound("big-1", &format!("{c}/big1.jpg?size=2000000")),
    )
    .await;
    let (_, streamed) = post_sendblue(
        &client,
        &dev.base_url,
        sendblue_inbound("big-2", &format!("{c}/big2.jpg?size=2000000&chunked=1")),
    )
    .await;
    for id in [&declared, &streamed] {
        let m = &settled_media(d, id)[0];
        assert_eq!(m["state"], "too_large", "{m}");
        assert!(!Path::new(m["location"].as_str().unwrap()).exists());
    }
    assert_eq!(cdn.hits("/big1.jpg"), 1);
    assert_eq!(cdn.hits("/big2.jpg"), 1);
    // Nothing half-written is left behind.
    let partial = d.join("media/.partial");
    let left = std::fs::read_dir(&partial).map(|r| r.count()).unwrap_or(0);
    assert_eq!(left, 0, "partial files left in {}", partial.display());

    // A server failing twice: two attempts, dead-lettered; replayed, the third answer stores it.
    let (_, flaky) = post_sendblue(
        &client,
        &dev.base_url,
        sendblue_inbound("flaky", &format!("{c}/flaky.png?size=100&fail=2")),
    )
    .await;
    wait_until("the media delivery to be dead-lettered", || {
        stats(d)["queues"]["media"]["dead_lettered"] == 1
    });
    assert_eq!(cdn.hits("/flaky.png"), 2);
    assert_eq!(
        events_show(d, &flaky)["deliveries"]["media"],
        "dead_lettered"
    );
    let (ok, out) = common::cli(d, &["replay", "--queue", "media"]);
    assert!(ok, "{out}");
    let m = &settled_media(d, &flaky)[0];
    assert_eq!(m["state"], "stored", "{m}");
    assert_eq!(m["sha256"].as_str().unwrap(), sha256_of(100));
    assert_eq!(cdn.hits("/flaky.png"), 3);
    let s = stats(d);
    assert_eq!(s["media"]["too_large"], 2, "{s}");
    assert_eq!(s["queues"]["media"]["dead_lettered"], 0, "{s}");
}
