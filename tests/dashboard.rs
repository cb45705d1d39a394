//! The CloudWatch dashboard in `template.yaml` shows what the functions emit: every metric of
//! the `bluehook` namespace it draws (with its dimensions) is one the code's EMF lines carry,
//! it draws the answers by outcome, each destination's delivered / failed / latency and the
//! delivery and read rates, every dead-letter queue of the template, and its link is an output.

use std::collections::BTreeSet;
use std::path::Path;

use bluehook::delivery::AttemptRecord;
use bluehook::event::{Direction, Event, EventKind, MessageStatus};
use bluehook::ingress::IngressResponse;
use serde_json::Value;

/// (metric name, sorted dimension names) of each metric an EMF line declares.
fn declared(line: &str) -> BTreeSet<(String, Vec<String>)> {
    let v: Value = serde_json::from_str(line).unwrap();
    let mut out = BTreeSet::new();
    for m in v["_aws"]["CloudWatchMetrics"].as_array().unwrap() {
        assert_eq!(m["Namespace"], "bluehook");
        for dims in m["Dimensions"].as_array().unwrap() {
            let mut dims: Vec<String> = dims
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_str().unwrap().to_owned())
                .collect();
            dims.sort();
            for metric in m["Metrics"].as_array().unwrap() {
                out.insert((metric["Name"].as_str().unwrap().to_owned(), dims.clone()));
            }
        }
    }
    out
}

/// Everything the functions' EMF lines declare.
fn emitted() -> BTreeSet<(String, Vec<String>)> {
    let mut out = BTreeSet::new();
    let answer = IngressResponse::error(http::StatusCode::UNAUTHORIZED, "unauthorized", "no");
    out.extend(declared(&bluehook::lambda::answer_metric_line(&answer, 0)));
    let attempt = AttemptRecord {
        event_id: "evt_1".into(),
        destination: "bot".into(),
        attempt: 1,
        at: chrono::Utc::now(),
        status: Some(200),
        error: None,
        duration_ms: 3,
        state: "delivered".into(),
        detail: None,
    };
    out.extend(declared(&bluehook::delivery::sqs::attempt_line(
        &attempt, 0,
    )));
    let mut e = Event::new(
        "sb",
        "sendblue",
        EventKind::MessageStatus,
        "k".into(),
        chrono::Utc::now(),
        "{}".into(),
    );
    e.status = Some(MessageStatus::Delivered);
    e.direction = Some(Direction::Outbound);
    for line in bluehook::analytics::emf_lines(&[&e], 0) {
        out.extend(declared(&line));
    }
    out
}

/// The dashboard's body as JSON (its `${...}` substitutions replaced by placeholders) and the
/// template's dead-letter queues.
fn dashboard() -> (Value, Vec<String>, serde_yaml::Value) {
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("template.yaml"))
        .unwrap();
    let t: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    let body = match &t["Resources"]["Dashboard"]["Properties"]["DashboardBody"] {
        serde_yaml::Value::Tagged(tagged) => tagged.value.as_str().unwrap().to_owned(),
        other => panic!("DashboardBody should be a !Sub string: {other:?}"),
    };
    let mut json = String::new();
    let mut rest = body.as_str();
    while let Some(i) = rest.find("${") {
        json.push_str(&rest[..i]);
        let end = rest[i..].find('}').unwrap();
        json.push_str(&format!("SUB:{}", &rest[i + 2..i + end]));
        rest = &rest[i + end + 1..];
    }
    json.push_str(rest);
    let dlqs = t["Resources"]
        .as_mapping()
        .unwrap()
        .iter()
        .filter(|(_, r)| r["Type"].as_str() == Some("AWS::SQS::Queue"))
        .map(|(id, _)| id.as_str().unwrap().to_owned())
        .filter(|id| id.ends_with("DeadLetterQueue"))
        .collect();
    (
        serde_json::from_str(&json).expect("the dashboard body is JSON"),
        dlqs,
        t,
    )
}

/// (metric name, sorted dimension names) of every `bluehook` metric the dashboard draws.
fn drawn(body: &Value) -> BTreeSet<(String, Vec<String>)> {
    let mut out = BTreeSet::new();
    for w in body["widgets"].as_array().unwrap() {
        for m in w["properties"]["metrics"].as_array().unwrap() {
            let m = m.as_array().unwrap();
            if m[0] == "bluehook" {
                let mut dims: Vec<String> = m[2..]
                    .iter()
                    .filter_map(Value::as_str)
                    .step_by(2)
                    .map(str::to_owned)
                    .collect();
                dims.sort();
                out.insert((m[1].as_str().unwrap().to_owned(), dims));
            }
            if let Some(expr) = m[0]["expression"].as_str() {
                // SEARCH('{bluehook,Dim,...} MetricName="Name"', ...)
                if let Some(inner) = expr.strip_prefix("SEARCH('{bluehook,") {
                    let (dims, after) = inner.split_once('}').unwrap();
                    let name = after.split('"').nth(1).unwrap();
                    let mut dims: Vec<String> = dims.split(',').map(str::to_owned).collect();
                    dims.sort();
                    out.insert((name.to_owned(), dims));
                }
            }
        }
    }
    out
}

#[test]
fn the_dashboard_draws_only_metrics_the_functions_emit_and_every_one_that_matters() {
    let (body, dlqs, template) = dashboard();
    let drawn = drawn(&body);
    let emitted = emitted();
    for m in &drawn {
        assert!(
            emitted.contains(m),
            "the dashboard draws {m:?}, which no function emits ({emitted:?})"
        );
    }
    for wanted in [
        ("Requests", vec!["Outcome"]),
        ("Delivered", vec!["Destination"]),
        ("Failed", vec!["Destination"]),
        ("Latency", vec!["Destination"]),
        ("Events", vec!["kind", "status"]),
    ] {
        let wanted = (
            wanted.0.to_owned(),
            wanted.1.iter().map(|d| (*d).to_owned()).collect(),
        );
        assert!(
            drawn.contains(&wanted),
            "the dashboard does not draw {wanted:?}"
        );
    }
    let text = body.to_string();
    assert!(dlqs.len() >= 5, "{dlqs:?}");
    for dlq in &dlqs {
        assert!(
            text.contains(&format!("SUB:{dlq}.QueueName")),
            "the dashboard does not show {dlq}"
        );
    }
    assert!(text.contains("\"AWS/ApiGateway\",\"5xx\""), "API 5xx");
    let url = &template["Outputs"]["DashboardUrl"]["Value"];
    assert!(
        format!("{url:?}").contains("#dashboards:name=${Dashboard}"),
        "{url:?}"
    );
}

#[test]
fn each_webhook_answer_is_counted_by_its_outcome() {
    let line = |r: &IngressResponse| -> Value {
        serde_json::from_str(&bluehook::lambda::answer_metric_line(r, 1)).unwrap()
    };
    let refused = IngressResponse::error(http::StatusCode::PAYLOAD_TOO_LARGE, "too_large", "big");
    let v = line(&refused);
    assert_eq!(
        (
            v["Outcome"].as_str(),
            v["Requests"].as_u64(),
            v["WebhookEvents"].as_u64()
        ),
        (Some("too_large"), Some(1), Some(0))
    );
    let mut accepted = IngressResponse::error(http::StatusCode::OK, "x", "y");
    accepted.error_code = None;
    accepted.body = r#"{"status":"accepted","events":["evt_a","evt_b"]}"#.into();
    accepted.event_ids = vec!["evt_a".into(), "evt_b".into()];
    let v = line(&accepted);
    assert_eq!(
        (v["Outcome"].as_str(), v["WebhookEvents"].as_u64()),
        (Some("accepted"), Some(2))
    );
    accepted.body = r#"{"status":"duplicate"}"#.into();
    assert_eq!(line(&accepted)["Outcome"], "duplicate");
    accepted.event_ids.clear();
    accepted.body = r#"{"status":"ok"}"#.into();
    assert_eq!(line(&accepted)["Outcome"], "ping");
}
