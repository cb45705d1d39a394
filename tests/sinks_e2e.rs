//! The sinks end to end through `bluehook dev` over HTTP, with local servers that speak
//! Twilio's Messages API and a CRM's webhook endpoint: a failed iMessage becomes exactly one
//! SMS however often its failure arrives, and a read receipt becomes one CRM push carrying
//! the updated conversation.

mod common;

use std::time::Duration;

use common::fake::{twilio_ok, FakeHttp};
use common::{stats, DevProcess};

const OUTBOUND: &str = include_str!("../shared/testdata/sendblue/outbound.json");
const SECRET: &str = "sb-e2e-secret";

fn outbound(handle: &str, status: &str, content: &str) -> String {
    OUTBOUND
        .replace("5a17319e-cbcf-443e-897e-d8b0c04b1b09", handle)
        .replace("\"SENT\"", &format!("\"{status}\""))
        .replace("\"Hello world!\"", &format!("\"{content}\""))
}

async fn post(client: &reqwest::Client, url: &str, body: String) -> serde_json::Value {
    let r = client
        .post(url)
        .header("sb-signing-secret", SECRET)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    r.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_imessage_makes_one_sms_and_a_read_receipt_one_crm_push() {
    let crm = FakeHttp::start(|_, _| (200, "{}".into())).await;
    let twilio = FakeHttp::start(twilio_ok).await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bluehook.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[queue]
visibility_timeout_secs = 1

[sources.sendblue]
provider = "sendblue"
secrets = ["{SECRET}"]

[sinks.crm]
adapter = "http"
url = "{crm}/hooks/bluehook"
secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"

[sinks.sms_fallback]
adapter = "twilio"
base_url = "{twilio}"
account_sid = "AC0123"
auth_token = "env:BLUEHOOK_E2E_TWILIO_TOKEN"
from = "+15550001111"

[sinks.analytics]
"#,
            crm = crm.url,
            twilio = twilio.url
        ),
    )
    .unwrap();
    std::env::set_var("BLUEHOOK_E2E_TWILIO_TOKEN", "tw-secret-token");
    let dev = DevProcess::start(dir.path(), &["--config", config.to_str().unwrap()]);
    let url = format!("{}/webhooks/sendblue/outbound", dev.base_url);
    let client = reqwest::Client::new();

    // Two messages go out; the CRM hears of each.
    for h in ["h1", "h2"] {
        post(
            &client,
            &url,
            outbound(h, "SENT", &format!("Running 10 min late ({h})")),
        )
        .await;
    }
    common::wait_until_async("two CRM pushes", || crm.requests().len() == 2).await;

    // h1 fails; its failure webhook arrives three times, and once more under another word,
    // without the content: the SMS takes it from the conversation state.
    let failure = outbound("h1", "ERROR", "");
    let answers = [
        post(&client, &url, failure.clone()).await,
        post(&client, &url, failure.clone()).await,
        post(&client, &url, failure.clone()).await,
        post(&client, &url, outbound("h1", "FAILED", "")).await,
    ];
    assert_eq!(answers[0]["status"], "accepted");
    assert_eq!(
        (answers[1]["status"].as_str(), answers[2]["status"].as_str()),
        (Some("duplicate"), Some("duplicate"))
    );
    assert_eq!(answers[3]["status"], "accepted");

    // h2 is read.
    post(&client, &url, outbound("h2", "READ", "")).await;

    common::wait_until_async("the pipeline to drain", || {
        let s = stats(dir.path());
        s["queued"] == 0 && s["analytics"]["events"] == 5
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let sms = twilio.requests();
    assert_eq!(sms.len(), 1, "exactly one fallback SMS: {sms:?}");
    let form = sms[0].form();
    assert_eq!(sms[0].path, "/2010-04-01/Accounts/AC0123/Messages.json");
    assert_eq!(form["To"], "+19998887777");
    assert_eq!(form["From"], "+15550001111");
    assert_eq!(form["Body"], "Running 10 min late (h1)");

    let pushes = crm.requests();
    let read: Vec<_> = pushes
        .iter()
        .filter(|r| r.headers["webhook-id"] == "sendblue:msg:h2:READ")
        .collect();
    assert_eq!(read.len(), 1, "one CRM push for the read receipt");
    let doc = read[0].json();
    assert_eq!(doc["message"]["status"], "read");
    assert_eq!(doc["conversation"]["contact"], "+19998887777");
    assert!(!doc["conversation"]["last_read_at"].is_null(), "{doc}");
    let ids: Vec<&str> = pushes
        .iter()
        .map(|r| r.headers["webhook-id"].as_str())
        .collect();
    let mut unique = ids.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(ids.len(), unique.len(), "no push twice: {ids:?}");

    let s = stats(dir.path());
    assert_eq!(s["analytics"]["messages_read"], 1);

    // The sinks' attempts are the event's attempts, like a destination's. The two failure
    // words for h1 (ERROR, FAILED) race for the one SMS: whichever sends it records the send,
    // the other finds it done (`already_done`), and both show the SMS delivered.
    let id = |a: &serde_json::Value| a["events"][0].as_str().unwrap().to_owned();
    let mut sms_details = Vec::new();
    for answer in [&answers[0], &answers[3]] {
        let shown = common::events_show(dir.path(), &id(answer));
        assert_eq!(shown["deliveries"]["sms_fallback"], "delivered", "{shown}");
        // Both set h1 to failed: whichever comes second is stale for the CRM.
        let crm = shown["deliveries"]["crm"].as_str();
        assert!(matches!(crm, Some("delivered" | "skipped")), "{shown}");
        assert!(
            shown["deliveries"].get("analytics").is_none(),
            "analytics archives batches: {shown}"
        );
        let last = shown["attempts"]
            .as_array()
            .unwrap()
            .iter()
            .rev()
            .find(|a| a["destination"] == "sms_fallback")
            .cloned()
            .unwrap_or_default();
        assert_eq!(last["state"], "delivered", "{shown}");
        sms_details.push(last["detail"].as_str().map(str::to_owned));
    }
    sms_details.sort();
    assert_eq!(
        sms_details,
        vec![None, Some("already_done".to_owned())],
        "one event sent the SMS, the other found it sent"
    );
    assert!(dev.interrupt().success());
}
