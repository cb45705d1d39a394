//! Glue for the Lambda functions: configuration from the environment, AWS clients built once
//! per process, and the lambda_http request turned into an [`IngressRequest`].

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::analytics::Analytics;
use crate::config::{needs_ssm, Config};
use crate::delivery::sqs::{Redrive, SqsDeliveries};
use crate::delivery::{Deliverer, RetryPolicy};
use crate::idempotency::dynamodb::DynamoIdempotency;
use crate::ingress::{build_sources, Ingress, IngressRequest, RequestBody};
use crate::metrics::LogMetrics;
use crate::objects::S3Store;
use crate::queue::sqs::SqsQueue;
use crate::queue::Queue;
use crate::router::Router;
use crate::routing::{Destination, Routes};
use crate::sinks::crm::{CrmAdapter, CrmSync};
use crate::sinks::media::{
    media_auth_from_config, ArchiveRoot, MediaArchive, MediaSettings, S3MediaStore,
};
use crate::sinks::sms::SmsFallback;
use crate::state::dynamodb::DynamoState;

/// Environment variables the functions read (the template sets each of them).
pub const ENV_CONFIG: &str = "BLUEHOOK_CONFIG";
pub const ENV_CONFIG_SSM: &str = "BLUEHOOK_CONFIG_SSM";
pub const ENV_IDEMPOTENCY_TABLE: &str = "BLUEHOOK_IDEMPOTENCY_TABLE";
pub const ENV_EVENTS_QUEUE_URL: &str = "BLUEHOOK_EVENTS_QUEUE_URL";
pub const ENV_CRM_QUEUE_URL: &str = "BLUEHOOK_CRM_QUEUE_URL";
pub const ENV_SMS_FALLBACK_QUEUE_URL: &str = "BLUEHOOK_SMS_FALLBACK_QUEUE_URL";
pub const ENV_ANALYTICS_QUEUE_URL: &str = "BLUEHOOK_ANALYTICS_QUEUE_URL";
pub const ENV_ANALYTICS_BUCKET: &str = "BLUEHOOK_ANALYTICS_BUCKET";
pub const ENV_MEDIA_QUEUE_URL: &str = "BLUEHOOK_MEDIA_QUEUE_URL";
/// The bucket the media archive writes under `media/` (the archive bucket); crm-sync and
/// analytics name locations in it.
pub const ENV_MEDIA_BUCKET: &str = "BLUEHOOK_MEDIA_BUCKET";
pub const ENV_STATE_TABLE: &str = "BLUEHOOK_STATE_TABLE";
pub const ENV_S3_PATH_STYLE: &str = "BLUEHOOK_S3_PATH_STYLE";
/// The deliveries queue (one message per event and destination) and its dead-letter queue.
pub const ENV_DELIVERIES_QUEUE_URL: &str = "BLUEHOOK_DELIVERIES_QUEUE_URL";
pub const ENV_DELIVERIES_DLQ_URL: &str = "BLUEHOOK_DELIVERIES_DLQ_URL";
/// The replies queue: bot replies the deliver function queues, the automations function sends.
pub const ENV_REPLIES_QUEUE_URL: &str = "BLUEHOOK_REPLIES_QUEUE_URL";
/// The follow-up timers table: the router writes timers, the automations function sweeps them.
pub const ENV_TIMERS_TABLE: &str = "BLUEHOOK_TIMERS_TABLE";
/// The template's `MaxReceiveCount`: the sinks' queues' redrive, which their retry policy mirrors.
pub const ENV_MAX_RECEIVE_COUNT: &str = "BLUEHOOK_MAX_RECEIVE_COUNT";

/// The environment variable holding the queue URL of a destination.
pub fn destination_queue_env(d: Destination) -> &'static str {
    match d {
        Destination::Crm => ENV_CRM_QUEUE_URL,
        Destination::SmsFallback => ENV_SMS_FALLBACK_QUEUE_URL,
        Destination::Analytics => ENV_ANALYTICS_QUEUE_URL,
        Destination::Media => ENV_MEDIA_QUEUE_URL,
    }
}

fn required_env(name: &str) -> anyhow::Result<String> {
    std::env::var(name).map_err(|_| anyhow::anyhow!("environment variable {name} is not set"))
}

/// The configuration: the TOML in `BLUEHOOK_CONFIG`, or the SSM parameter named by
/// `BLUEHOOK_CONFIG_SSM`.
pub async fn load_config(ssm: &aws_sdk_ssm::Client) -> anyhow::Result<Config> {
    if let Ok(text) = std::env::var(ENV_CONFIG) {
        return Ok(Config::from_toml(&text)?);
    }
    if let Ok(name) = std::env::var(ENV_CONFIG_SSM) {
        use crate::config::SsmReader;
        let text = ssm
            .get_secure(&name)
            .await
            .map_err(|e| anyhow::anyhow!("cannot read config parameter {name}: {e}"))?;
        return Ok(Config::from_toml(&text)?);
    }
    anyhow::bail!("set {ENV_CONFIG} (TOML) or {ENV_CONFIG_SSM} (an SSM parameter name)")
}

/// Builds the ingress from the environment: once per process, before the first invocation.
pub async fn ingress_from_env() -> anyhow::Result<Ingress> {
    let aws = aws_config::load_from_env().await;
    let ssm = aws_sdk_ssm::Client::new(&aws);
    let config = load_config(&ssm).await?;
    let sources = build_sources(&config, needs_ssm(&config).then_some(&ssm as _)).await?;
    let table = required_env(ENV_IDEMPOTENCY_TABLE)?;
    let queue_url = required_env(ENV_EVENTS_QUEUE_URL)?;
    Ok(Ingress::new(
        sources,
        Arc::new(DynamoIdempotency::new(
            aws_sdk_dynamodb::Client::new(&aws),
            table,
        )),
        Arc::new(SqsQueue::new(aws_sdk_sqs::Client::new(&aws), queue_url)),
        Arc::new(LogMetrics),
        config.ingress,
    ))
}

/// Builds the router from the environment. A destination is on when its queue URL is set and
/// (for the CRM and the SMS fallback) its `[sinks.<name>]` section exists; events routed to a
/// destination that is off are counted as skipped.
pub async fn router_from_env() -> anyhow::Result<Router> {
    let aws = aws_config::load_from_env().await;
    let config = load_config(&aws_sdk_ssm::Client::new(&aws)).await?;
    let names: Vec<String> = config.destinations.keys().cloned().collect();
    let routes = Routes::from_config_with(&config.routes, &names)?;
    let sqs = aws_sdk_sqs::Client::new(&aws);
    let mut queues: BTreeMap<Destination, Arc<dyn Queue>> = BTreeMap::new();
    for d in Destination::ALL {
        let configured = d == Destination::Analytics || config.sinks.contains_key(d.as_str());
        if let (true, Ok(url)) = (configured, std::env::var(destination_queue_env(d))) {
            // A sink takes its events in packs, but the media archive one attachment at a time
            // (batches of one: a download can be long).
            let queue = if d == Destination::Media {
                SqsQueue::new(sqs.clone(), url)
            } else {
                SqsQueue::packing(sqs.clone(), url)
            };
            queues.insert(d, Arc::new(queue));
        }
    }
    // Every destination shares the deliveries queue; each message names its destination.
    let mut endpoints: BTreeMap<String, Arc<dyn Queue>> = BTreeMap::new();
    if let Ok(url) = std::env::var(ENV_DELIVERIES_QUEUE_URL) {
        let deliveries: Arc<dyn Queue> = Arc::new(SqsQueue::new(sqs.clone(), url));
        for name in names.iter().cloned() {
            endpoints.insert(name, deliveries.clone());
        }
    }
    // Follow-ups: the router keeps timers and what they look at when they fire.
    let rules = crate::followups::rules_from_config(&config.followups, &names)?;
    let observer: Option<Arc<dyn crate::router::Observe>> = if rules.is_empty() {
        None
    } else {
        Some(Arc::new(crate::timers::FollowupObserver {
            timers: crate::timers::DynamoTimers::new(
                aws_sdk_dynamodb::Client::new(&aws),
                required_env(ENV_TIMERS_TABLE)?,
            ),
            rules,
            metrics: Arc::new(LogMetrics),
        }))
    };
    Ok(Router::new(routes, queues, Arc::new(LogMetrics))
        .with_endpoints(endpoints)
        .with_observer(observer))
}

/// An S3 client from `aws`, path-style when `BLUEHOOK_S3_PATH_STYLE` says so (S3-compatible
/// endpoints without bucket DNS).
fn s3_client(aws: &aws_config::SdkConfig) -> aws_sdk_s3::Client {
    let path_style = std::env::var(ENV_S3_PATH_STYLE).is_ok_and(|v| v == "1" || v == "true");
    aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(aws)
            .force_path_style(path_style)
            .build(),
    )
}

/// Where the media archive is, when `[sinks.media]` is on and its bucket named.
fn media_root(config: &Config) -> Option<ArchiveRoot> {
    let bucket = std::env::var(ENV_MEDIA_BUCKET).ok()?;
    config
        .sinks
        .contains_key(Destination::Media.as_str())
        .then_some(ArchiveRoot::S3 { bucket })
}

/// Builds the analytics sink from the environment: the archive bucket, EMF metrics on; rows
/// name archived attachments when the config (if given) has `[sinks.media]`.
pub async fn analytics_from_env() -> anyhow::Result<Analytics> {
    let aws = aws_config::load_from_env().await;
    let bucket = required_env(ENV_ANALYTICS_BUCKET)?;
    let configured = std::env::var(ENV_CONFIG).is_ok() || std::env::var(ENV_CONFIG_SSM).is_ok();
    let media = if configured {
        media_root(&load_config(&aws_sdk_ssm::Client::new(&aws)).await?)
    } else {
        None
    };
    let store = Arc::new(S3Store::new(s3_client(&aws), bucket));
    Ok(Analytics::new(store, Arc::new(LogMetrics), true).with_media_archive(media))
}

/// Builds the media archive from the environment: `[sinks.media]`, the Twilio sources' auth
/// tokens (for Basic auth), the bucket, effect keys in the idempotency table; run by the
/// delivery engine on its queue.
pub async fn media_from_env() -> anyhow::Result<SqsDeliveries<Redrive>> {
    let aws = aws_config::load_from_env().await;
    let ssm = aws_sdk_ssm::Client::new(&aws);
    let config = load_config(&ssm).await?;
    let empty = toml::Value::Table(toml::Table::new());
    let section = config
        .sinks
        .get(Destination::Media.as_str())
        .unwrap_or(&empty);
    let settings = MediaSettings::from_config(section, true)?;
    let auth = media_auth_from_config(&config, needs_ssm(&config).then_some(&ssm as _)).await?;
    let store = Arc::new(S3MediaStore::new(
        s3_client(&aws),
        required_env(ENV_MEDIA_BUCKET)?,
    ));
    let media = MediaArchive::new(
        store,
        settings,
        auth,
        Arc::new(LogMetrics),
        sink_retry(Duration::from_secs(MEDIA_VISIBILITY_SECS)),
    );
    sink_function(media, aws_sdk_dynamodb::Client::new(&aws))
}

/// A sink function's handler: `target` run by the delivery engine on its own queue, its effect
/// keys in the idempotency table.
fn sink_function<T: crate::delivery::Target + 'static>(
    target: T,
    ddb: aws_sdk_dynamodb::Client,
) -> anyhow::Result<SqsDeliveries<Redrive>> {
    let effects = DynamoIdempotency::new(ddb, required_env(ENV_IDEMPOTENCY_TABLE)?);
    Ok(SqsDeliveries::sink(Arc::new(Deliverer::new(
        target,
        Arc::new(effects),
        Arc::new(LogMetrics),
    ))))
}

/// The media queue's visibility timeout in the template (the function's timeout, with room).
pub const MEDIA_VISIBILITY_SECS: u64 = 960;

/// Reports a failed initialisation to the Lambda runtime API (`/runtime/init/error`), as a
/// custom runtime should, so that the invocation fails with the reason instead of a bare exit;
/// then returns the error for `main` to exit with.
pub async fn report_init_error(e: anyhow::Error) -> anyhow::Error {
    tracing::error!(error = %format!("{e:#}"), "initialisation failed");
    if let Ok(api) = std::env::var("AWS_LAMBDA_RUNTIME_API") {
        let body =
            serde_json::json!({"errorType": "Runtime.InitError", "errorMessage": format!("{e:#}")});
        let sent = reqwest::Client::new()
            .post(format!("http://{api}/2018-06-01/runtime/init/error"))
            .header("Lambda-Runtime-Function-Error-Type", "Runtime.InitError")
            .json(&body)
            .timeout(std::time::Duration::from_secs(2))
            .send()
            .await;
        if let Err(err) = sent {
            tracing::error!(error = %err, "could not report the initialisation error");
        }
    }
    e
}

/// The `[sinks.<name>]` section a sink function needs.
fn sink_section(config: &Config, d: Destination) -> anyhow::Result<&toml::Value> {
    config
        .sinks
        .get(d.as_str())
        .ok_or_else(|| anyhow::anyhow!("the config has no [sinks.{}] section", d.as_str()))
}

/// A sink's retry policy on AWS: its queue's. Each retry waits the queue's visibility timeout
/// (the template's), and the redrive policy moves a message after `MaxReceiveCount` receives
/// (`BLUEHOOK_MAX_RECEIVE_COUNT`, set from the same template parameter).
fn sink_retry(visibility: Duration) -> RetryPolicy {
    let max_attempts = std::env::var(ENV_MAX_RECEIVE_COUNT)
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(5);
    RetryPolicy {
        max_attempts,
        first_delay: visibility,
        max_delay: visibility,
    }
}

/// Builds crm-sync from the environment: the state and idempotency tables, the CRM adapter,
/// run by the delivery engine on its queue.
pub async fn crm_sync_from_env() -> anyhow::Result<SqsDeliveries<Redrive>> {
    let aws = aws_config::load_from_env().await;
    let ssm = aws_sdk_ssm::Client::new(&aws);
    let config = load_config(&ssm).await?;
    let adapter =
        CrmAdapter::from_config(sink_section(&config, Destination::Crm)?, None, Some(&ssm)).await?;
    let ddb = aws_sdk_dynamodb::Client::new(&aws);
    let crm = CrmSync::new(
        Arc::new(DynamoState::new(
            ddb.clone(),
            required_env(ENV_STATE_TABLE)?,
        )),
        adapter,
        Arc::new(LogMetrics),
        sink_retry(Duration::from_secs(180)),
    )
    .with_media_archive(media_root(&config));
    sink_function(crm, ddb)
}

/// Builds sms-fallback from the environment: the state table (for content), the idempotency
/// table (effect keys), the SMS provider, run by the delivery engine on its queue.
pub async fn sms_fallback_from_env() -> anyhow::Result<SqsDeliveries<Redrive>> {
    let aws = aws_config::load_from_env().await;
    let ssm = aws_sdk_ssm::Client::new(&aws);
    let config = load_config(&ssm).await?;
    let senders = crate::sinks::sms::senders_from_config(&config.senders, None, Some(&ssm)).await?;
    let sender = crate::sinks::sms::fallback_sender(
        sink_section(&config, Destination::SmsFallback)?,
        &senders,
        None,
        Some(&ssm),
    )
    .await?;
    let ddb = aws_sdk_dynamodb::Client::new(&aws);
    let sms = SmsFallback::new(
        Some(Arc::new(DynamoState::new(
            ddb.clone(),
            required_env(ENV_STATE_TABLE)?,
        ))),
        sender,
        Arc::new(LogMetrics),
        sink_retry(Duration::from_secs(180)),
    );
    sink_function(sms, ddb)
}

/// Builds the deliver function from the environment: every `[destinations.*]` (secrets from
/// SSM), effect keys in the idempotency table, the deliveries queue and its dead-letter queue.
pub async fn deliver_from_env() -> anyhow::Result<SqsDeliveries> {
    let aws = aws_config::load_from_env().await;
    let ssm = aws_sdk_ssm::Client::new(&aws);
    let config = load_config(&ssm).await?;
    let destinations = crate::destinations::from_config(&config.destinations, Some(&ssm)).await?;
    let effects: Arc<dyn crate::idempotency::IdempotencyStore> = Arc::new(DynamoIdempotency::new(
        aws_sdk_dynamodb::Client::new(&aws),
        required_env(ENV_IDEMPOTENCY_TABLE)?,
    ));
    let targets = destinations
        .into_values()
        .map(|d| {
            Arc::new(Deliverer::new(d, effects.clone(), Arc::new(LogMetrics)))
                as Arc<dyn crate::delivery::Deliver>
        })
        .collect();
    let sqs = aws_sdk_sqs::Client::new(&aws);
    let replies = std::env::var(ENV_REPLIES_QUEUE_URL)
        .ok()
        .map(|url| Arc::new(SqsQueue::new(sqs.clone(), url)) as Arc<dyn Queue>);
    Ok(SqsDeliveries::new(
        targets,
        sqs,
        required_env(ENV_DELIVERIES_QUEUE_URL)?,
        required_env(ENV_DELIVERIES_DLQ_URL)?,
    )
    .with_follow_ons(replies))
}

/// The automations function: bot replies from the replies queue, sent through each source's
/// sender (effect keys in the idempotency table); and, on its schedule, the follow-up sweep.
pub struct Automations {
    pub replies: SqsDeliveries<Redrive>,
    pub sweeper: crate::timers::Sweeper,
}

impl Automations {
    /// One invocation: an SQS batch of replies, or the scheduled sweep (any other event).
    pub async fn handle(&self, payload: serde_json::Value) -> anyhow::Result<serde_json::Value> {
        if payload.get("Records").is_some() {
            let batch: aws_lambda_events::sqs::SqsEvent = serde_json::from_value(payload)?;
            return Ok(serde_json::to_value(self.replies.handle(batch).await)?);
        }
        let now = chrono::Utc::now().timestamp_millis();
        let swept = self
            .sweeper
            .sweep(now)
            .await
            .map_err(|e| anyhow::anyhow!("follow-up sweep: {e}"))?;
        tracing::info!(
            minutes = swept.minutes, fired = swept.fired, sent = swept.sent,
            due_events = swept.due_events, not_sent = swept.not_sent,
            skipped = ?swept.skipped, "follow-ups swept"
        );
        Ok(serde_json::to_value(swept)?)
    }
}

/// Builds the automations function from the environment.
pub async fn automations_from_env() -> anyhow::Result<Automations> {
    let aws = aws_config::load_from_env().await;
    let ssm = aws_sdk_ssm::Client::new(&aws);
    let config = load_config(&ssm).await?;
    let names: Vec<String> = config.destinations.keys().cloned().collect();
    let senders = crate::sinks::sms::senders_from_config(&config.senders, None, Some(&ssm)).await?;
    let by_source = crate::sinks::reply::senders_by_source(&config, &senders);
    let ddb = aws_sdk_dynamodb::Client::new(&aws);
    let replies = sink_function(
        crate::sinks::reply::Replies::new(
            by_source.clone(),
            Arc::new(LogMetrics),
            sink_retry(Duration::from_secs(180)),
        ),
        ddb.clone(),
    )?;
    let deliveries = std::env::var(ENV_DELIVERIES_QUEUE_URL)
        .ok()
        .map(|url| Arc::new(SqsQueue::new(aws_sdk_sqs::Client::new(&aws), url)) as Arc<dyn Queue>);
    let sweeper = crate::timers::Sweeper {
        timers: crate::timers::DynamoTimers::new(ddb, required_env(ENV_TIMERS_TABLE)?),
        rules: crate::followups::rules_from_config(&config.followups, &names)?,
        senders: by_source,
        deliveries,
        metrics: Arc::new(LogMetrics),
    };
    Ok(Automations { replies, sweeper })
}

/// The path as the ingress routes it: API Gateway may put a stage name in front of
/// `/webhooks/...`.
fn routed_path(path: &str) -> &str {
    if let Some(i) = path.find("/webhooks/") {
        &path[i..]
    } else if path.ends_with("/healthz") {
        "/healthz"
    } else {
        path
    }
}

/// Turns a lambda_http request into the ingress's request.
pub fn ingress_request(req: lambda_http::Request, max_body_bytes: usize) -> IngressRequest {
    let (parts, body) = req.into_parts();
    let bytes: &[u8] = body.as_ref();
    let body = if bytes.len() > max_body_bytes {
        RequestBody::TooLarge
    } else {
        RequestBody::Complete(Bytes::copy_from_slice(bytes))
    };
    IngressRequest {
        method: parts.method,
        path: routed_path(parts.uri.path()).to_owned(),
        query: parts.uri.query().map(str::to_owned),
        headers: parts.headers,
        body,
    }
}

/// Answers one API Gateway request; a webhook's answer is also counted as one EMF line
/// (`Requests` and `WebhookEvents` by `Outcome`: `accepted`, `duplicate`, `ping` or the error code),
/// which the template's dashboard shows.
pub async fn serve(
    ingress: &crate::ingress::Ingress,
    req: lambda_http::Request,
) -> lambda_http::Response<lambda_http::Body> {
    let req = ingress_request(req, ingress.max_body_bytes());
    let webhook = req.path.starts_with("/webhooks/");
    let answer = ingress.handle(req).await;
    if webhook {
        println!(
            "{}",
            answer_metric_line(&answer, chrono::Utc::now().timestamp_millis())
        );
    }
    lambda_response(answer)
}

/// The outcome a webhook's answer is counted under.
pub fn outcome(r: &crate::ingress::IngressResponse) -> &'static str {
    if let Some(code) = r.error_code {
        return code;
    }
    match (
        r.event_ids.is_empty(),
        r.body.starts_with("{\"status\":\"accepted\""),
    ) {
        (true, _) => "ping",
        (false, true) => "accepted",
        (false, false) => "duplicate",
    }
}

/// One EMF document counting a webhook answer.
pub fn answer_metric_line(r: &crate::ingress::IngressResponse, now_ms: i64) -> String {
    serde_json::json!({
        "_aws": {
            "Timestamp": now_ms,
            "CloudWatchMetrics": [{
                "Namespace": "bluehook",
                "Dimensions": [["Outcome"]],
                "Metrics": [
                    {"Name": "Requests", "Unit": "Count"},
                    {"Name": "WebhookEvents", "Unit": "Count"}
                ]
            }]
        },
        "message": "webhook answered",
        "Outcome": outcome(r),
        "status": r.status.as_u16(),
        "reason": r.reason,
        "Requests": 1,
        "WebhookEvents": r.event_ids.len(),
    })
    .to_string()
}

/// The ingress's answer as a lambda_http response.
pub fn lambda_response(
    r: crate::ingress::IngressResponse,
) -> lambda_http::Response<lambda_http::Body> {
    r.into_http().map(lambda_http::Body::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stage_prefix_is_ignored() {
        assert_eq!(routed_path("/prod/webhooks/sendblue"), "/webhooks/sendblue");
        assert_eq!(
            routed_path("/webhooks/sendblue/outbound"),
            "/webhooks/sendblue/outbound"
        );
        assert_eq!(routed_path("/prod/healthz"), "/healthz");
        assert_eq!(routed_path("/other"), "/other");
    }
}
