//! The built function binaries run through the Lambda runtime API (a local runtime API
//! server), against moto and local fakes of a CRM and of Twilio. One test drives the whole
//! chain: an API Gateway HTTP event into ingress, its message off the events queue into the
//! router, the sink queues into crm-sync, sms-fallback and analytics, the deliveries queue into
//! deliver (a destination), and the effects in DynamoDB, S3 and the fake servers. The configuration comes from an SSM parameter, as
//! deployed.

mod common;

use common::fake::{twilio_ok, FakeHttp};
use common::runtime::{start_function, Kill, RuntimeApi};

const OUTBOUND: &str = include_str!("../shared/testdata/sendblue/outbound.json");
const SECRET: &str = "sb-signing-L4MBDA-4e81f07c";
/// A delivery signed with a wrong secret: refused, and not echoed either.
const FORGED: &str = "sb-forged-L4MBDA-0d9e3a55";
const CRM_SECRET: &str = "whsec_bGFtYmRhLWNybS1zaWduaW5nLWtleQ==";
const CRM_PATH_TOKEN: &str = "T0KEN-lambda-crm-path-61f2";
const TWILIO_TOKEN: &str = "tw-ssm-T0KEN-5b2f90ad";
const BOT_SECRET: &str = "whsec_Ym90LWxhbWJkYS1zaWduaW5nLWtleS0x";
const BOT_TOKEN: &str = "Bearer bot-ssm-T0KEN-7c1e";
/// In no function's log line and no answer: the secrets, and the message's text.
const NEVER_SHOWN: &[&str] = &[
    SECRET,
    FORGED,
    CRM_SECRET,
    CRM_PATH_TOKEN,
    TWILIO_TOKEN,
    BOT_SECRET,
    "bot-ssm-T0KEN-7c1e",
    "Running late, 10 min",
];

fn http_api_event(path: &str, body: &str, secret: &str) -> serde_json::Value {
    serde_json::json!({
        "version": "2.0",
        "routeKey": "POST /webhooks/{source}/{type}",
        "rawPath": path,
        "rawQueryString": "",
        "headers": {"content-type": "application/json", "sb-signing-secret": secret},
        "requestContext": {
            "accountId": "123456789012", "apiId": "api", "domainName": "api.execute-api.us-east-1.amazonaws.com",
            "domainPrefix": "api", "requestId": uuid::Uuid::new_v4().to_string(), "routeKey": "POST /webhooks/{source}/{type}",
            "stage": "$default", "time": "23/Nov/2026:05:00:00 +0000", "timeEpoch": 1795410000000i64,
            "http": {"method": "POST", "path": path, "protocol": "HTTP/1.1", "sourceIp": "203.0.113.9", "userAgent": "Sendblue"}
        },
        "body": body,
        "isBase64Encoded": false
    })
}

/// Everything on a queue, as the SQS event Lambda would deliver (messages deleted).
async fn sqs_event_from(sqs: &aws_sdk_sqs::Client, url: &str, arn: &str) -> serde_json::Value {
    let mut records = Vec::new();
    loop {
        let out = sqs
            .receive_message()
            .queue_url(url)
            .max_number_of_messages(10)
            .message_system_attribute_names(aws_sdk_sqs::types::MessageSystemAttributeName::All)
            .send()
            .await
            .unwrap();
        let msgs = out.messages.unwrap_or_default();
        if msgs.is_empty() {
            break;
        }
        for m in msgs {
            sqs.delete_message()
                .queue_url(url)
                .receipt_handle(m.receipt_handle.clone().unwrap())
                .send()
                .await
                .unwrap();
            records.push(serde_json::json!({
                "messageId": m.message_id, "receiptHandle": m.receipt_handle, "body": m.body,
                "attributes": {"ApproximateReceiveCount": "1", "SentTimestamp": "1795410000000"},
                "messageAttributes": {}, "md5OfBody": m.md5_of_body, "eventSource": "aws:sqs",
                "eventSourceARN": arn, "awsRegion": "us-east-1"
            }));
        }
    }
    serde_json::json!({ "Records": records })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_chain_through_the_runtime_api() {
    let moto = common::moto_endpoint();
    let conf = common::aws_config(&moto).await;
    // The functions reach moto through a proxy that hands it one DynamoDB write at a time, as
    // DynamoDB orders the writes to one item: crm-sync handles a batch's two events of one
    // message concurrently, and their conditional updates must not interleave inside moto.
    let proxy = common::proxy::Proxy::start(&moto, false).await;
    proxy.serialize_dynamodb_writes();
    let endpoint = proxy.url.clone();
    let ddb = aws_sdk_dynamodb::Client::new(&conf);
    let sqs = aws_sdk_sqs::Client::new(&conf);
    let s3 = aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&conf)
            .force_path_style(true)
            .build(),
    );
    let ssm = aws_sdk_ssm::Client::new(&conf);

    let (idem, state) = (common::unique("idem"), common::unique("state"));
    common::create_idempotency_table(&ddb, &idem).await;
    common::create_idempotency_table(&ddb, &state).await;
    let mut queues = std::collections::HashMap::new();
    for q in [
        "events",
        "crm",
        "sms",
        "analytics",
        "deliveries",
        "deliveries-dlq",
    ] {
        let name = common::unique(q);
        let url = common::create_queue(&sqs, &name).await;
        queues.insert(
            q,
            (url, format!("arn:aws:sqs:us-east-1:123456789012:{name}")),
        );
    }
    let bucket = common::unique("archive");
    s3.create_bucket().bucket(&bucket).send().await.unwrap();

    let crm = FakeHttp::start(|_, _| (200, "{}".into())).await;
    let twilio = FakeHttp::start(twilio_ok).await;
    let bot = FakeHttp::start(|_, _| (200, "{}".into())).await;
    let bot_token_param = common::put_secure_parameter(&ssm, "bot-token", BOT_TOKEN).await;
    let token_param = common::put_secure_parameter(&ssm, "twilio-token", TWILIO_TOKEN).await;
    let config = format!(
        r#"
[sources.sendblue]
provider = "sendblue"
secrets = ["{SECRET}"]

[sinks.crm]
adapter = "http"
url = "{crm}/crm/{CRM_PATH_TOKEN}"
secret = "{CRM_SECRET}"

[sinks.sms_fallback]
adapter = "twilio"
base_url = "{twilio}"
account_sid = "AC42"
auth_token = "ssm:{token_param}"
from = "+15550001111"

[sinks.analytics]

[destinations.bot]
url = "{bot}/hooks/bot"
secret = "{BOT_SECRET}"
headers = {{ Authorization = "ssm:{bot_token_param}" }}

# [[routes]] replaces the defaults: they are written out, and every event also goes to the bot.
[[routes]]
to = ["analytics", "bot"]

[[routes]]
when = {{ kind = ["message.received", "message.status"] }}
to = "crm"

[[routes]]
when = {{ kind = "message.status", status = "failed", service = "iMessage", direction = "outbound" }}
to = "sms_fallback"
"#,
        crm = crm.url,
        twilio = twilio.url,
        bot = bot.url
    );
    let config_param = common::put_secure_parameter(&ssm, "config", &config).await;

    let env = |extra: &[(&str, &str)]| -> Vec<(&'static str, String)> {
        let mut v: Vec<(&'static str, String)> = vec![
            ("AWS_ENDPOINT_URL", endpoint.clone()),
            ("BLUEHOOK_CONFIG_SSM", config_param.clone()),
            ("BLUEHOOK_IDEMPOTENCY_TABLE", idem.clone()),
            ("BLUEHOOK_STATE_TABLE", state.clone()),
            ("BLUEHOOK_EVENTS_QUEUE_URL", queues["events"].0.clone()),
            ("BLUEHOOK_CRM_QUEUE_URL", queues["crm"].0.clone()),
            ("BLUEHOOK_SMS_FALLBACK_QUEUE_URL", queues["sms"].0.clone()),
            (
                "BLUEHOOK_ANALYTICS_QUEUE_URL",
                queues["analytics"].0.clone(),
            ),
            ("BLUEHOOK_ANALYTICS_BUCKET", bucket.clone()),
            (
                "BLUEHOOK_DELIVERIES_QUEUE_URL",
                queues["deliveries"].0.clone(),
            ),
            (
                "BLUEHOOK_DELIVERIES_DLQ_URL",
                queues["deliveries-dlq"].0.clone(),
            ),
            ("BLUEHOOK_S3_PATH_STYLE", "true".into()),
            ("BLUEHOOK_LOG", "trace".into()),
        ];
        for (k, val) in extra {
            v.retain(|(name, _)| name != k);
            v.push((Box::leak(k.to_string().into_boxed_str()), val.to_string()));
        }
        v
    };

    let mut apis = std::collections::HashMap::new();
    let mut children = Kill(Vec::new());
    for f in [
        "ingress",
        "router",
        "crm-sync",
        "sms-fallback",
        "analytics",
        "deliver",
    ] {
        let api = RuntimeApi::start().await;
        children.0.push(start_function(f, &api, &env(&[])));
        apis.insert(f, api);
    }

    // Ingress: two webhooks as API Gateway HTTP events, one with a wrong secret.
    let sent = OUTBOUND
        .replace("\"Hello world!\"", "\"Running late, 10 min\"")
        .replace("5a17319e-cbcf-443e-897e-d8b0c04b1b09", "h1");
    let failed = sent.replace("\"SENT\"", "\"ERROR\"");
    for (body, secret, want) in [
        (&sent, SECRET, 200),
        (&failed, SECRET, 200),
        (&sent, FORGED, 401),
        (&sent, SECRET, 200),
    ] {
        let answer = apis["ingress"]
            .invoke(&http_api_event("/webhooks/sendblue/outbound", body, secret))
            .await
            .unwrap();
        assert_eq!(answer["statusCode"], want, "{answer}");
    }
    assert!(apis["ingress"].init_error().is_none());

    // Router: the events queue as one SQS event.
    let events = sqs_event_from(&sqs, &queues["events"].0, &queues["events"].1).await;
    assert_eq!(
        events["Records"].as_array().unwrap().len(),
        2,
        "two accepted, one duplicate, one refused"
    );
    let answer = apis["router"].invoke(&events).await.unwrap();
    assert_eq!(answer["batchItemFailures"], serde_json::json!([]));

    // The sinks, each on its queue. crm-sync first: the SMS content check reads its state.
    for (f, q) in [
        ("crm-sync", "crm"),
        ("sms-fallback", "sms"),
        ("analytics", "analytics"),
        ("deliver", "deliveries"),
    ] {
        let batch = sqs_event_from(&sqs, &queues[q].0, &queues[q].1).await;
        assert!(
            !batch["Records"].as_array().unwrap().is_empty(),
            "{q} got events"
        );
        let answer = apis[f].invoke(&batch).await.unwrap();
        assert_eq!(answer["batchItemFailures"], serde_json::json!([]), "{f}");
        // SQS redelivers the same batch: still no failure, and (below) no second effect.
        let again = apis[f].invoke(&batch).await.unwrap();
        assert_eq!(
            again["batchItemFailures"],
            serde_json::json!([]),
            "{f} again"
        );
    }

    // Effects.
    // SENT and ERROR of h1 arrive in one batch and are handled concurrently: ERROR is always
    // pushed; SENT only if it reached the state first (a status never moves back).
    let ids: Vec<String> = crm
        .requests()
        .iter()
        .map(|r| r.headers["webhook-id"].clone())
        .collect();
    assert_eq!(
        ids.iter()
            .filter(|id| *id == "sendblue:msg:h1:ERROR")
            .count(),
        1,
        "{ids:?}"
    );
    assert!(
        ids.len() <= 2 && ids.iter().all(|id| id.starts_with("sendblue:msg:h1:")),
        "{ids:?}"
    );
    // The bot: each accepted event once, signed, with its header from SSM.
    let delivered = bot.requests();
    let mut ids: Vec<&str> = delivered
        .iter()
        .map(|r| r.headers["webhook-id"].as_str())
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(
        (delivered.len(), ids.len()),
        (2, 2),
        "each event delivered once"
    );
    for r in &delivered {
        assert_eq!(r.path, "/hooks/bot");
        assert_eq!(
            r.headers["authorization"], BOT_TOKEN,
            "header read from SSM"
        );
        assert!(r.headers["webhook-signature"].starts_with("v1,"));
    }
    let sms = twilio.requests();
    assert_eq!(sms.len(), 1);
    assert_eq!(sms[0].form()["Body"], "Running late, 10 min");
    use base64::Engine;
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("AC42:{TWILIO_TOKEN}"));
    assert_eq!(
        sms[0].headers["authorization"],
        format!("Basic {auth}"),
        "secret read from SSM"
    );
    let item = ddb
        .get_item()
        .table_name(&state)
        .key(
            "pk",
            aws_sdk_dynamodb::types::AttributeValue::S("msg#sendblue#h1".into()),
        )
        .send()
        .await
        .unwrap()
        .item
        .unwrap();
    assert_eq!(item["status"].as_s().unwrap(), "failed");
    assert_eq!(item["content"].as_s().unwrap(), "Running late, 10 min");
    let objects = s3
        .list_objects_v2()
        .bucket(&bucket)
        .prefix("events/dt=")
        .send()
        .await
        .unwrap();
    let keys: Vec<&str> = objects.contents().iter().filter_map(|o| o.key()).collect();
    assert_eq!(keys.len(), 1, "{keys:?}");
    let body = s3
        .get_object()
        .bucket(&bucket)
        .key(keys[0])
        .send()
        .await
        .unwrap()
        .body
        .collect()
        .await
        .unwrap()
        .to_vec();
    assert_eq!(String::from_utf8(body).unwrap().lines().count(), 2);

    // Nothing secret, and no message text, in any function's log (trace level) or answer.
    drop(children);
    let logs = common::runtime::function_logs();
    assert!(
        logs.contains("\"level\":\"TRACE\""),
        "the functions logged at trace level"
    );
    // One line per attempt, with its EMF metrics: the bot's two deliveries, crm-sync's pushes.
    let attempts: Vec<serde_json::Value> = logs
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["message"] == "delivery attempt")
        .collect();
    let of = |d: &str| {
        attempts
            .iter()
            .filter(|a| a["Destination"] == d && a["Attempts"] == 1)
            .count()
    };
    assert_eq!(of("bot"), 2, "{attempts:?}");
    assert!(of("crm") >= 1 && of("sms_fallback") == 1, "{attempts:?}");
    common::leaks::record("the functions' logs", &logs);
    for (f, api) in &apis {
        common::leaks::record(&format!("{f}'s answers"), &api.posted());
    }
    common::leaks::assert_no_secret(NEVER_SHOWN);
}

#[tokio::test]
async fn a_function_without_its_configuration_reports_an_init_error() {
    let api = RuntimeApi::start().await;
    let mut child = start_function(
        "ingress",
        &api,
        &[(
            "BLUEHOOK_CONFIG",
            "[sources.x]\nprovider = \"nope\"\n".into(),
        )],
    );
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert!(!status.success(), "the process exits");
    let error = api
        .init_error()
        .expect("init error reported to the runtime API");
    assert!(error.contains("unknown provider"), "{error}");
}

/// A configuration the function cannot read, broken on the very line of a secret: the error
/// says where (line and column) and what, not the line itself.
#[tokio::test]
async fn a_broken_configuration_is_reported_without_the_secret_on_its_line() {
    for (config, says) in [
        (
            format!("[sources.s]\nprovider = \"sendblue\"\nsecrets = [\"{SECRET}\" x]\n"),
            "line 3",
        ),
        (
            format!("[sources.s]\nprovider = \"sendblue\"\nsecrets = \"{SECRET}\"\n"),
            "line 3",
        ),
        (
            format!("[sources.s]\nprovider = \"sendblue\"\nsecrets = [\"{SECRET}]\n"),
            "line 3",
        ),
        (
            format!("[sinks.sms_fallback]\nadapter = \"twilio\"\nauth_token = {TWILIO_TOKEN}\n"),
            "line 3",
        ),
    ] {
        let api = RuntimeApi::start().await;
        let mut child = start_function(
            "ingress",
            &api,
            &[
                ("BLUEHOOK_CONFIG", config),
                ("BLUEHOOK_LOG", "trace".into()),
            ],
        );
        let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
            .await
            .unwrap();
        assert!(!status.success(), "the process exits");
        let error = api.init_error().expect("init error reported");
        assert!(
            error.contains("invalid config") && error.contains(says),
            "{error}"
        );
        common::leaks::record("the init error", &error);
        common::leaks::record("the runtime API", &api.posted());
    }
    let logs = common::runtime::function_logs();
    assert!(logs.contains("invalid config"), "the error is logged too");
    common::leaks::record("the function's log", &logs);
    common::leaks::assert_no_secret(&[SECRET, TWILIO_TOKEN]);
}
