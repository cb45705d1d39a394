//! The deployment as `template.yaml` declares it, read from the template itself: every function
//! it declares is a workspace crate whose `cargo lambda build --release` bootstrap exists and is
//! small; every environment variable the functions read is one the template sets; and the built
//! bootstraps, started through the Lambda runtime API with exactly the template's environment
//! (its `!Ref`s resolved to resources made in moto from the template's own definitions),
//! handle every fixture in `tests/fixtures/`.
//!
//! `scripts/test.sh` builds the bootstraps and points `BLUEHOOK_TEST_LAMBDA_DIR` at them.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use common::fake::{twilio_ok, FakeHttp};
use common::runtime::{start_binary, Kill, RuntimeApi};
use serde_yaml::Value;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// Largest bootstrap allowed, as this test builds it (x86_64). The budget is 10 MiB on arm64,
/// the template's default, where the same code is about 15% smaller; the automations function
/// (replies, the follow-up sweep: DynamoDB, SQS, SSM and the senders) is 10.6 MiB on x86_64.
const MAX_BOOTSTRAP_BYTES: u64 = 11 * 1024 * 1024;

/// Variables a function may read that the template deliberately does not set.
const NOT_FROM_THE_TEMPLATE: &[(&str, &str)] = &[
    (
        "BLUEHOOK_CONFIG",
        "the config inline, instead of the SSM parameter the template names",
    ),
    (
        "BLUEHOOK_S3_PATH_STYLE",
        "for S3-compatible endpoints without bucket DNS",
    ),
];

struct Function {
    logical_id: String,
    crate_dir: String,
    env: BTreeMap<String, Value>,
    properties: Value,
    metadata: Value,
}

fn template() -> Value {
    let text = std::fs::read_to_string(Path::new(ROOT).join("template.yaml")).unwrap();
    serde_yaml::from_str(&text).expect("template.yaml is YAML")
}

fn functions(t: &Value) -> Vec<Function> {
    let globals = &t["Globals"]["Function"];
    let global_env = globals["Environment"]["Variables"]
        .as_mapping()
        .cloned()
        .unwrap_or_default();
    let mut out = Vec::new();
    for (id, r) in t["Resources"].as_mapping().unwrap() {
        if r["Type"].as_str() != Some("AWS::Serverless::Function") {
            continue;
        }
        let mut env = BTreeMap::new();
        for (k, v) in global_env.iter().chain(
            r["Properties"]["Environment"]["Variables"]
                .as_mapping()
                .into_iter()
                .flatten(),
        ) {
            env.insert(k.as_str().unwrap().to_owned(), v.clone());
        }
        let mut properties = r["Properties"].clone();
        // Globals apply where the function does not say otherwise.
        for (k, v) in globals.as_mapping().unwrap() {
            if properties.get(k).is_none() {
                properties
                    .as_mapping_mut()
                    .unwrap()
                    .insert(k.clone(), v.clone());
            }
        }
        out.push(Function {
            logical_id: id.as_str().unwrap().to_owned(),
            crate_dir: r["Properties"]["CodeUri"]
                .as_str()
                .expect("CodeUri")
                .to_owned(),
            env,
            properties,
            metadata: r["Metadata"].clone(),
        });
    }
    out
}

/// The crate (package) name of a function directory.
fn package_name(dir: &Path) -> String {
    let manifest: toml::Value =
        toml::from_str(&std::fs::read_to_string(dir.join("Cargo.toml")).unwrap()).unwrap();
    manifest["package"]["name"].as_str().unwrap().to_owned()
}

fn lambda_dir() -> PathBuf {
    PathBuf::from(std::env::var("BLUEHOOK_TEST_LAMBDA_DIR").expect(
        "BLUEHOOK_TEST_LAMBDA_DIR is not set: run the tests with ./scripts/test.sh, which runs `cargo lambda build --release`",
    ))
}

#[test]
fn every_template_function_is_a_workspace_crate_with_a_small_built_bootstrap() {
    let t = template();
    let fns = functions(&t);
    let declared: BTreeSet<String> = fns.iter().map(|f| f.crate_dir.clone()).collect();
    let on_disk: BTreeSet<String> = std::fs::read_dir(Path::new(ROOT).join("functions"))
        .unwrap()
        .map(|e| format!("functions/{}", e.unwrap().file_name().to_string_lossy()))
        .collect();
    assert_eq!(declared, on_disk, "template functions vs functions/*");
    let dir = lambda_dir();
    for f in &fns {
        assert_eq!(
            f.metadata["BuildMethod"].as_str(),
            Some("rust-cargolambda"),
            "{}: BuildMethod",
            f.logical_id
        );
        assert_eq!(f.properties["Handler"].as_str(), Some("bootstrap"));
        assert_eq!(f.properties["Runtime"].as_str(), Some("provided.al2023"));
        let name = package_name(&Path::new(ROOT).join(&f.crate_dir));
        let bootstrap = dir.join(&name).join("bootstrap");
        let meta = std::fs::metadata(&bootstrap).unwrap_or_else(|_| {
            panic!(
                "{}: no {} (cargo lambda build --release)",
                f.logical_id,
                bootstrap.display()
            )
        });
        let head = std::fs::read(&bootstrap).unwrap();
        assert_eq!(
            &head[..4],
            b"\x7fELF",
            "{} is an executable",
            bootstrap.display()
        );
        assert!(
            meta.len() <= MAX_BOOTSTRAP_BYTES,
            "{} is {} bytes, over the 11 MiB (x86_64) budget",
            bootstrap.display(),
            meta.len()
        );
        println!("{name}: bootstrap {} KiB", meta.len() / 1024);
    }
}

/// Every `"BLUEHOOK_…"` name in the functions' sources and the Lambda glue of the library.
fn variables_read_by_the_functions() -> BTreeSet<String> {
    let mut files = vec![Path::new(ROOT).join("shared/src/lambda.rs")];
    for e in std::fs::read_dir(Path::new(ROOT).join("functions")).unwrap() {
        files.push(e.unwrap().path().join("src/main.rs"));
    }
    let mut names = BTreeSet::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for piece in text.split('"').skip(1).step_by(2) {
            if piece.starts_with("BLUEHOOK_")
                && piece
                    .chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
            {
                names.insert(piece.to_owned());
            }
        }
    }
    names
}

#[test]
fn every_environment_variable_the_functions_read_is_set_by_the_template() {
    let t = template();
    let set: BTreeSet<String> = functions(&t)
        .iter()
        .flat_map(|f| f.env.keys().cloned())
        .collect();
    let read = variables_read_by_the_functions();
    assert!(read.len() >= 8, "found the variables: {read:?}");
    for name in &read {
        let excused = NOT_FROM_THE_TEMPLATE.iter().any(|(n, _)| n == name);
        assert!(
            set.contains(name) || excused,
            "{name} is read by a function but set by no function in template.yaml"
        );
    }
    // And the template sets nothing the functions do not read (a leftover or a typo).
    for name in set.iter().filter(|n| n.starts_with("BLUEHOOK_")) {
        assert!(
            read.contains(name) || name == "BLUEHOOK_LOG",
            "template.yaml sets {name}, which no function reads"
        );
    }
}

/// Each function logs to its own group, kept `LogRetentionDays`, and Lambda's own lines
/// (START/END/REPORT, a third of a KB per invocation) are left out unless the deployer asks for
/// them: JSON system logs at `PlatformLogLevel`, WARN by default (docs/cost.md prices them).
#[test]
fn every_function_logs_to_its_own_retained_group_without_platform_lines_by_default() {
    let t = template();
    let level = &t["Parameters"]["PlatformLogLevel"];
    assert_eq!(level["Default"].as_str(), Some("WARN"));
    let allowed: Vec<&str> = level["AllowedValues"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(allowed.contains(&"INFO"), "INFO puts the lines back");
    let mut groups = BTreeSet::new();
    for f in functions(&t) {
        let logging = &f.properties["LoggingConfig"];
        assert_eq!(
            logging["LogFormat"].as_str(),
            Some("JSON"),
            "{}: a system log level needs the JSON format",
            f.logical_id
        );
        let tag = |v: &Value| match v {
            Value::Tagged(tagged) => (
                tagged.tag.to_string(),
                tagged.value.as_str().unwrap_or_default().to_owned(),
            ),
            other => panic!("{}: not a !Ref: {other:?}", f.logical_id),
        };
        assert_eq!(
            tag(&logging["SystemLogLevel"]),
            ("!Ref".to_owned(), "PlatformLogLevel".to_owned()),
            "{}",
            f.logical_id
        );
        let (_, group) = tag(&logging["LogGroup"]);
        assert_eq!(
            t["Resources"][group.as_str()]["Properties"]["RetentionInDays"],
            Value::Tagged(Box::new(serde_yaml::value::TaggedValue {
                tag: serde_yaml::value::Tag::new("Ref"),
                value: Value::String("LogRetentionDays".into()),
            })),
            "{}: {group}",
            f.logical_id
        );
        assert!(groups.insert(group), "{}: a shared group", f.logical_id);
    }
    assert_eq!(groups.len(), 8);
}

/// The fixtures of one kind, by file name.
fn fixtures(kind: &str) -> BTreeMap<String, serde_json::Value> {
    let dir = Path::new(ROOT).join("tests/fixtures").join(kind);
    std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| {
            let path = e.unwrap().path();
            let value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            (
                path.file_name().unwrap().to_string_lossy().into_owned(),
                value,
            )
        })
        .collect()
}

#[test]
fn there_is_a_fixture_for_every_sample() {
    let apigw = fixtures("apigw");
    let sqs = fixtures("sqs");
    for name in bluehook::provider::sample_names() {
        let file = format!("{name}.json");
        assert!(
            apigw.contains_key(&file),
            "tests/fixtures/apigw/{file} is missing"
        );
        if !name.ends_with(".ping") {
            assert!(
                sqs.contains_key(&file),
                "tests/fixtures/sqs/{file} is missing"
            );
        }
    }
    assert!(
        apigw.contains_key("sendblue.outbound.error.json"),
        "the failed outbound iMessage fixture is missing"
    );
}

/// A physical value for each `!Ref` the functions' environments use, made in moto from the
/// template's own resource definitions.
struct Deployed {
    values: BTreeMap<String, String>,
    queue_urls: BTreeMap<String, String>,
    bucket: Option<String>,
}

async fn deploy_referenced_resources(
    t: &Value,
    conf: &aws_config::SdkConfig,
    config: &str,
) -> Deployed {
    let ddb = aws_sdk_dynamodb::Client::new(conf);
    let sqs = aws_sdk_sqs::Client::new(conf);
    let s3 = aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(conf)
            .force_path_style(true)
            .build(),
    );
    let ssm = aws_sdk_ssm::Client::new(conf);
    let mut refs = BTreeSet::new();
    for f in functions(t) {
        for v in f.env.values() {
            if let Value::Tagged(tag) = v {
                assert_eq!(
                    tag.tag.to_string(),
                    "!Ref",
                    "environment values are !Ref or plain"
                );
                refs.insert(tag.value.as_str().unwrap().to_owned());
            }
        }
    }
    let mut d = Deployed {
        values: BTreeMap::new(),
        queue_urls: BTreeMap::new(),
        bucket: None,
    };
    for r in refs {
        if let Some(p) = t["Parameters"].get(r.as_str()) {
            if r != "ConfigParameterName" {
                // Any other parameter: its default, as a deploy without overrides has it.
                let default = match &p["Default"] {
                    Value::String(s) => s.clone(),
                    Value::Number(n) => n.to_string(),
                    other => panic!("parameter {r} needs a default: {other:?}"),
                };
                d.values.insert(r, default);
                continue;
            }
            let name = common::put_secure_parameter(&ssm, "fixtures-config", config).await;
            d.values.insert(r, name);
            continue;
        }
        let resource = &t["Resources"][r.as_str()];
        let physical = common::unique(&r.to_ascii_lowercase());
        let value = match resource["Type"].as_str().unwrap() {
            "AWS::DynamoDB::Table" => {
                let p = &resource["Properties"];
                let mut req = ddb
                    .create_table()
                    .table_name(&physical)
                    .billing_mode(aws_sdk_dynamodb::types::BillingMode::PayPerRequest);
                for a in p["AttributeDefinitions"].as_sequence().unwrap() {
                    req = req.attribute_definitions(
                        aws_sdk_dynamodb::types::AttributeDefinition::builder()
                            .attribute_name(a["AttributeName"].as_str().unwrap())
                            .attribute_type(a["AttributeType"].as_str().unwrap().into())
                            .build()
                            .unwrap(),
                    );
                }
                let key = |k: &serde_yaml::Value| {
                    aws_sdk_dynamodb::types::KeySchemaElement::builder()
                        .attribute_name(k["AttributeName"].as_str().unwrap())
                        .key_type(k["KeyType"].as_str().unwrap().into())
                        .build()
                        .unwrap()
                };
                for k in p["KeySchema"].as_sequence().unwrap() {
                    req = req.key_schema(key(k));
                }
                // The template's indexes, as they are (the functions query them by name).
                for i in p["GlobalSecondaryIndexes"]
                    .as_sequence()
                    .into_iter()
                    .flatten()
                {
                    let mut gsi = aws_sdk_dynamodb::types::GlobalSecondaryIndex::builder()
                        .index_name(i["IndexName"].as_str().unwrap())
                        .projection(
                            aws_sdk_dynamodb::types::Projection::builder()
                                .projection_type(
                                    i["Projection"]["ProjectionType"].as_str().unwrap().into(),
                                )
                                .build(),
                        );
                    for k in i["KeySchema"].as_sequence().unwrap() {
                        gsi = gsi.key_schema(key(k));
                    }
                    req = req.global_secondary_indexes(gsi.build().unwrap());
                }
                req.send().await.unwrap();
                physical
            }
            "AWS::SQS::Queue" => {
                let url = common::create_queue(&sqs, &physical).await;
                d.queue_urls.insert(r.clone(), url.clone());
                url
            }
            "AWS::S3::Bucket" => {
                s3.create_bucket().bucket(&physical).send().await.unwrap();
                d.bucket = Some(physical.clone());
                physical
            }
            other => panic!("{r}: a function's environment refers to a {other}"),
        };
        d.values.insert(r, value);
    }
    d
}

/// The function's environment as the template sets it, with references resolved.
fn resolved_env(f: &Function, d: &Deployed) -> Vec<(String, String)> {
    f.env
        .iter()
        .map(|(k, v)| {
            let value = match v {
                Value::Tagged(tag) => d.values[tag.value.as_str().unwrap()].clone(),
                Value::String(s) => s.clone(),
                other => panic!("{k}: unexpected value {other:?}"),
            };
            (k.clone(), value)
        })
        .collect()
}

/// Runs `f`'s bootstrap against a fresh runtime API with the template's environment.
async fn start(f: &Function, d: &Deployed, endpoint: &str, kill: &mut Kill) -> RuntimeApi {
    let api = RuntimeApi::start().await;
    let name = package_name(&Path::new(ROOT).join(&f.crate_dir));
    let mut env = resolved_env(f, d);
    // Not the template's: where moto is, and S3 path style for it.
    env.push(("AWS_ENDPOINT_URL".into(), endpoint.into()));
    env.push(("BLUEHOOK_S3_PATH_STYLE".into(), "1".into()));
    // Every line the functions can log, for the secrets check.
    env.push(("BLUEHOOK_LOG".into(), "trace".into()));
    let env: Vec<(&str, String)> = env.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    let bootstrap = lambda_dir().join(&name).join("bootstrap");
    kill.0.push(start_binary(&bootstrap, &name, &api, &env));
    api
}

fn event_id(body: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(body).unwrap();
    v["id"].as_str().unwrap().to_owned()
}

fn assert_no_batch_failures(what: &str, outcome: Result<serde_json::Value, serde_json::Value>) {
    let answer = outcome.unwrap_or_else(|e| panic!("{what}: the function failed: {e}"));
    let failures = answer["batchItemFailures"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        failures.is_empty(),
        "{what}: batch item failures {failures:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_built_bootstraps_handle_every_fixture_with_the_templates_environment() {
    let endpoint = common::moto_endpoint();
    let conf = common::aws_config(&endpoint).await;
    let t = template();
    let fns = functions(&t);
    let by_crate = |dir: &str| fns.iter().find(|f| f.crate_dir == dir).unwrap();

    // The fixtures' configuration, with the sinks pointed at fakes of the CRM and Twilio.
    let crm = FakeHttp::start(|_, _| (200, "{}".into())).await;
    let twilio = FakeHttp::start(twilio_ok).await;
    let hook = FakeHttp::start(|_, _| (200, "{}".into())).await;
    let mut config: toml::Table = toml::from_str(
        &std::fs::read_to_string(Path::new(ROOT).join("tests/fixtures/bluehook.toml")).unwrap(),
    )
    .unwrap();
    let secrets = fixture_secrets(&config);
    let sinks = config["sinks"].as_table_mut().unwrap();
    sinks["crm"].as_table_mut().unwrap()["url"] = format!("{}/crm", crm.url).into();
    sinks["sms_fallback"].as_table_mut().unwrap()["base_url"] = twilio.url.clone().into();
    // The media archive on, allowed to fetch from the local fake CDN (on AWS it would not).
    let cdn = common::cdn::Cdn::start().await;
    config["sinks"].as_table_mut().unwrap().insert(
        "media".into(),
        toml::Value::Table(toml::toml! { allow_private_addresses = true }),
    );
    // A follow-up for every read receipt, due at once: the sweep sends `followup.due` to hook.
    config.insert(
        "followups".into(),
        toml::Value::Array(vec![toml::Value::Table(
            toml::toml! { name = "nudge" after_secs = 1 to = ["hook"] },
        )]),
    );
    config["destinations"].as_table_mut().unwrap()["hook"]
        .as_table_mut()
        .unwrap()["url"] = format!("{}/hooks/fixtures", hook.url).into();
    let d = deploy_referenced_resources(&t, &conf, &toml::to_string(&config).unwrap()).await;
    let sqs = aws_sdk_sqs::Client::new(&conf);
    let mut kill = Kill(Vec::new());

    // Ingress: every HTTP API fixture is answered 200 and queued once.
    let ingress = start(by_crate("functions/ingress"), &d, &endpoint, &mut kill).await;
    let apigw = fixtures("apigw");
    for (file, event) in &apigw {
        let answer = ingress
            .invoke(event)
            .await
            .unwrap_or_else(|e| panic!("{file}: ingress failed: {e}"));
        assert_eq!(answer["statusCode"], 200, "{file}: {answer}");
        let body: serde_json::Value =
            serde_json::from_str(answer["body"].as_str().unwrap()).unwrap();
        let expected = if file.ends_with(".ping.json") {
            "ok"
        } else {
            "accepted"
        };
        assert_eq!(body["status"], expected, "{file}: {body}");
    }
    let queued: BTreeSet<String> = common::drain_queue(&sqs, &d.queue_urls["EventsQueue"])
        .await
        .iter()
        .map(|b| event_id(b))
        .collect();
    let sqs_fixtures = fixtures("sqs");
    let expected: BTreeSet<String> = sqs_fixtures
        .values()
        .map(|e| event_id(e["Records"][0]["body"].as_str().unwrap()))
        .collect();
    assert_eq!(
        queued, expected,
        "the ingress queued exactly the SQS fixtures' events"
    );

    // Router: the SQS fixtures in one batch (the template hands it up to 100 events), routed
    // without failures to every sink queue, where they travel in packs (JSON arrays of events).
    let router = start(by_crate("functions/router"), &d, &endpoint, &mut kill).await;
    let records: Vec<serde_json::Value> = sqs_fixtures
        .values()
        .flat_map(|e| e["Records"].as_array().unwrap().clone())
        .collect();
    assert_no_batch_failures(
        "router",
        router
            .invoke(&serde_json::json!({ "Records": records }))
            .await,
    );
    let mut routed: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for q in ["CrmQueue", "SmsFallbackQueue", "AnalyticsQueue"] {
        let messages = common::drain_queue(&sqs, &d.queue_urls[q]).await;
        let events: usize = messages
            .iter()
            .map(|m| bluehook::event::Event::all_from_json(m).unwrap().len())
            .sum();
        assert!(events > 0, "the router sent nothing to {q}");
        println!("{q}: {events} events routed in {} messages", messages.len());
        assert_eq!(
            messages.len(),
            events.div_ceil(bluehook::queue::PACK_EVENTS),
            "{q}: {events} events in packs of up to {}",
            bluehook::queue::PACK_EVENTS
        );
        routed.insert(q, messages);
    }
    // Deliver: each (event, destination) message the router queued, delivered once.
    let deliveries = common::drain_queue(&sqs, &d.queue_urls["DeliveriesQueue"]).await;
    assert!(!deliveries.is_empty(), "the router queued no delivery");
    let deliver = start(by_crate("functions/deliver"), &d, &endpoint, &mut kill).await;
    for (i, body) in deliveries.iter().enumerate() {
        let record = common::sqs_record(&format!("d{i}"), &format!("r{i}"), body, 1, "deliveries");
        let event = common::sqs_event([record]);
        assert_no_batch_failures(&format!("deliver #{i}"), deliver.invoke(&event).await);
    }
    let delivered = hook.requests();
    assert_eq!(delivered.len(), deliveries.len(), "each delivery once");
    for c in &delivered {
        assert!(c.headers["webhook-id"].starts_with("evt_"));
        assert!(c.headers.contains_key("webhook-signature"));
    }
    common::leaks::record("functions/deliver", &deliver.posted());

    // Automations: the scheduled sweep fires the follow-ups the router set for each read
    // receipt, once: `followup.due` for hook on the deliveries queue; the next sweep fires none.
    let automations = start(by_crate("functions/automations"), &d, &endpoint, &mut kill).await;
    let tick = serde_json::json!({"sweep": "followups"});
    let read_receipts = sqs_fixtures
        .values()
        .map(|e| {
            bluehook::event::Event::from_json(e["Records"][0]["body"].as_str().unwrap()).unwrap()
        })
        .filter(|e| {
            e.status == Some(bluehook::event::MessageStatus::Read)
                && e.direction == Some(bluehook::event::Direction::Outbound)
                && e.message_handle.is_some()
        })
        .count() as u64;
    assert!(read_receipts > 0, "no read receipt among the fixtures");
    let swept = automations
        .invoke(&tick)
        .await
        .unwrap_or_else(|e| panic!("the sweep failed: {e}"));
    assert_eq!(swept["fired"], read_receipts, "{swept}");
    let due = common::drain_queue(&sqs, &d.queue_urls["DeliveriesQueue"]).await;
    // One per fired timer but those skipped (a contact who wrote after the read, or none).
    assert!(!due.is_empty(), "{swept}");
    assert_eq!(
        Some(due.len() as u64),
        swept["due_events"].as_u64(),
        "{swept}"
    );
    for body in &due {
        let m: bluehook::delivery::DeliveryMessage = serde_json::from_str(body).unwrap();
        assert_eq!(m.destination, "hook");
        assert_eq!(m.event.kind, bluehook::event::EventKind::FollowupDue);
    }
    let again = automations.invoke(&tick).await.unwrap();
    assert_eq!(again["fired"], 0, "{again}");
    common::leaks::record("functions/automations", &automations.posted());

    // Sinks: the packs the router sent them, then every SQS fixture on its own, handled
    // without failures.
    for (dir, queue) in [
        ("functions/crm-sync", "CrmQueue"),
        ("functions/sms-fallback", "SmsFallbackQueue"),
        ("functions/analytics", "AnalyticsQueue"),
    ] {
        let api = start(by_crate(dir), &d, &endpoint, &mut kill).await;
        for (i, body) in routed[queue].iter().enumerate() {
            let record =
                common::sqs_record(&format!("pack{i}"), &format!("rp{i}"), body, 1, "sink");
            let pack = common::sqs_event([record]);
            assert_no_batch_failures(&format!("{dir} pack {i}"), api.invoke(&pack).await);
        }
        for (file, event) in &sqs_fixtures {
            assert_no_batch_failures(&format!("{dir} {file}"), api.invoke(event).await);
        }
        common::leaks::record(dir, &api.posted());
    }
    // Media: an event with two attachments (one over 8 MiB: a multipart upload), archived in
    // the template's bucket under media/, each once, whatever the redeliveries.
    let media_event = {
        let body = serde_json::json!({
            "media_url": format!("{}/deploy/clip.mp4?size=9000000", cdn.url),
            "media": [format!("{}/deploy/card?size=321&ct=text/vcard", cdn.url)],
        });
        let mut e = bluehook::event::Event::new(
            "sendblue",
            "sendblue",
            bluehook::event::EventKind::MessageReceived,
            "sendblue:deploy:media".into(),
            chrono::Utc::now(),
            body.to_string(),
        );
        e.media_url = body["media_url"].as_str().map(str::to_owned);
        e
    };
    let media = start(by_crate("functions/media"), &d, &endpoint, &mut kill).await;
    for attempt in 1..=2 {
        let body = media_event.to_json();
        let record = common::sqs_record(
            &format!("m{attempt}"),
            &format!("rm{attempt}"),
            &body,
            attempt,
            "media",
        );
        let event = common::sqs_event([record]);
        assert_no_batch_failures(&format!("media #{attempt}"), media.invoke(&event).await);
    }
    assert_eq!(cdn.hits("/deploy/clip.mp4"), 1, "downloaded once");
    assert_eq!(cdn.hits("/deploy/card"), 1, "downloaded once");
    common::leaks::record("functions/media", &media.posted());

    assert!(!crm.requests().is_empty(), "crm-sync pushed nothing");
    assert!(!twilio.requests().is_empty(), "sms-fallback sent no SMS");
    let s3 = aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&conf)
            .force_path_style(true)
            .build(),
    );
    let objects = s3
        .list_objects_v2()
        .bucket(d.bucket.as_ref().unwrap())
        .send()
        .await
        .unwrap();
    assert!(
        objects.key_count().unwrap_or(0) > 0,
        "analytics archived nothing"
    );
    let month = media_event.received_at.format("%Y/%m");
    for (n, ext, size) in [(0, "mp4", 9_000_000u64), (1, "vcf", 321)] {
        let key = format!("media/sendblue/{month}/{}-{n}.{ext}", media_event.id);
        let got = s3
            .get_object()
            .bucket(d.bucket.as_ref().unwrap())
            .key(&key)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{key}: {}", aws_sdk_s3::error::DisplayErrorContext(e)));
        assert_eq!(
            got.metadata().and_then(|m| m.get("sha256")),
            Some(&common::cdn::sha256_of(size)),
            "{key}"
        );
        let bytes = got.body.collect().await.unwrap().into_bytes();
        assert_eq!(
            common::cdn::sha256_hex(&bytes),
            common::cdn::sha256_of(size)
        );
    }

    // No secret of the configuration in any function's log (trace level) or answer.
    drop(kill);
    common::leaks::record("the functions' logs", &common::runtime::function_logs());
    for api in [&ingress, &router] {
        common::leaks::record("the runtime API", &api.posted());
    }
    let secrets: Vec<&str> = secrets.iter().map(String::as_str).collect();
    common::leaks::assert_no_secret(&secrets);
}

/// Every secret of the fixtures' configuration: the sources' signing secrets and the sinks'
/// keys and tokens.
fn fixture_secrets(config: &toml::Table) -> Vec<String> {
    let secrets = common::leaks::config_secrets(config);
    assert!(secrets.len() >= 10, "{} secrets", secrets.len());
    secrets
}
