//! crm-sync: applies each event to the conversation state and pushes each change to the CRM.
//! Adapters: `http` (a JSON POST signed the Standard Webhooks way, `webhook-id` = the event's
//! idempotency key so the receiver can dedupe too), `hubspot` (find or create the contact by
//! phone, log each message as a communication), and locally an outbox table.
//!
//! A stale event (a status that does not move its message forward) changes nothing and pushes
//! nothing. A push claims `effect:crm:<event key>` first, so a redelivery does not push again;
//! on AWS a message event's push to the `http` adapter is recorded on the message's state item
//! instead (the state update is its claim), two DynamoDB writes fewer, and with
//! `receiver_dedupes = true` not recorded at all (one more fewer: a redelivery pushes again, with
//! the same `webhook-id`, for the receiver to drop).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::json;

use super::media::ArchiveRoot;
use super::{http_client, Outbox, SinkError, SinkSettings};
use crate::config::{ConfigError, Secret, SsmReader};
use crate::delivery::{Outcome, Planned, Policy, RetryPolicy, Target};
use crate::event::{Event, EventKind, MessageStatus, Service};
use crate::metrics::Metrics;
use crate::provider::standard_webhooks;
use crate::state::{Applied, StateStore};

pub const DEFAULT_HUBSPOT_URL: &str = "https://api.hubapi.com";

pub enum CrmAdapter {
    Http {
        client: reqwest::Client,
        url: String,
        key: Vec<u8>,
        /// `receiver_dedupes = true`: the receiver drops a `webhook-id` it has seen, so a push
        /// need not be recorded done (on AWS, one DynamoDB write fewer per message event); a
        /// redelivered event may then reach the receiver again, with the same `webhook-id`.
        receiver_dedupes: bool,
    },
    HubSpot {
        client: reqwest::Client,
        base_url: String,
        token: Secret,
    },
    Outbox(Outbox),
}

impl CrmAdapter {
    /// From `[sinks.crm]`: `adapter = "http"` (url, secret) or `"hubspot"` (token, base_url);
    /// no adapter means the local outbox (when there is one).
    pub async fn from_config(
        value: &toml::Value,
        outbox: Option<Outbox>,
        ssm: Option<&dyn SsmReader>,
    ) -> Result<CrmAdapter, ConfigError> {
        let mut s = SinkSettings::new("crm", value)?;
        let timeout = Duration::from_secs(s.u64("timeout_secs")?.unwrap_or(10));
        let adapter = match s.str("adapter")?.as_deref() {
            Some("http") => {
                let url = s.required("url")?;
                let secret = s.secret("secret", ssm).await?;
                let key = standard_webhooks::decode_secret(secret.expose())
                    .unwrap_or_else(|| secret.expose().as_bytes().to_vec());
                CrmAdapter::Http {
                    client: http_client(timeout),
                    url,
                    key,
                    receiver_dedupes: s.bool("receiver_dedupes")?.unwrap_or(false),
                }
            }
            Some("hubspot") => CrmAdapter::HubSpot {
                client: http_client(timeout),
                base_url: s
                    .str("base_url")?
                    .unwrap_or_else(|| DEFAULT_HUBSPOT_URL.into()),
                token: s.secret("token", ssm).await?,
            },
            None | Some("outbox") => match outbox {
                Some(o) => CrmAdapter::Outbox(o),
                None => return Err(s.invalid("set `adapter` to \"http\" or \"hubspot\"")),
            },
            Some(other) => {
                return Err(s.invalid(format!("unknown adapter `{other}` (http, hubspot)")))
            }
        };
        s.finish()?;
        Ok(adapter)
    }

    /// The document pushed for one change. With the media archive on, `message.media` lists
    /// the event's attachments with their archived locations.
    pub fn payload(
        event: &Event,
        applied: &Applied,
        media: Option<&ArchiveRoot>,
    ) -> serde_json::Value {
        let mut message = serde_json::to_value(&applied.message).expect("serialises");
        if let (Some(root), Some(m)) = (media, message.as_object_mut()) {
            let files = super::media::locations(event, root);
            if !files.is_empty() {
                m.insert("media".into(), files.into());
            }
        }
        json!({
            "type": "bluehook.crm.update",
            "event": event,
            "message": message,
            "conversation": applied.conversation,
        })
    }

    pub async fn push(
        &self,
        event: &Event,
        applied: &Applied,
        media: Option<&ArchiveRoot>,
    ) -> Result<Option<String>, SinkError> {
        match self {
            CrmAdapter::Outbox(o) => {
                o.record(
                    "crm",
                    &event.idempotency_key,
                    &Self::payload(event, applied, media),
                )
                .await?;
                Ok(None)
            }
            CrmAdapter::Http {
                client, url, key, ..
            } => {
                let body =
                    serde_json::to_vec(&Self::payload(event, applied, media)).expect("serialises");
                let ts = chrono::Utc::now().timestamp();
                let signature = standard_webhooks::sign(key, &event.idempotency_key, ts, &body);
                let r = client
                    .post(url)
                    .header("content-type", "application/json")
                    .header("webhook-id", &event.idempotency_key)
                    .header("webhook-timestamp", ts.to_string())
                    .header("webhook-signature", signature)
                    .body(body)
                    .send()
                    .await
                    .map_err(SinkError::from_reqwest)?;
                let status = r.status();
                if status.is_success() {
                    Ok(None)
                } else {
                    // The receiver dedupes by webhook-id: a retry is safe whatever happened.
                    Err(SinkError::answered(
                        status.as_u16(),
                        format!("CRM answered {status}"),
                    ))
                }
            }
            CrmAdapter::HubSpot {
                client,
                base_url,
                token,
            } => hubspot_push(client, base_url, token, event).await,
        }
    }
}

fn hubspot_channel(service: Option<Service>) -> &'static str {
    match service {
        Some(Service::WhatsApp) => "WHATS_APP",
        _ => "SMS",
    }
}

async fn hubspot_call(
    client: &reqwest::Client,
    url: String,
    token: &Secret,
    body: serde_json::Value,
) -> Result<serde_json::Value, SinkError> {
    let r = client
        .post(&url)
        .bearer_auth(token.expose())
        .json(&body)
        .send()
        .await
        .map_err(SinkError::from_reqwest)?;
    let status = r.status();
    let v: serde_json::Value = r.json().await.unwrap_or(serde_json::Value::Null);
    if status.is_success() {
        Ok(v)
    } else {
        Err(SinkError::answered(
            status.as_u16(),
            format!(
                "HubSpot answered {status} for {}",
                url.rsplit("/crm/").next().unwrap_or("")
            ),
        ))
    }
}

/// Finds the contact by phone (or creates it) and logs the message as a communication. Only
/// messages are logged: a new inbound message, and an outbound one when it is sent.
async fn hubspot_push(
    client: &reqwest::Client,
    base: &str,
    token: &Secret,
    e: &Event,
) -> Result<Option<String>, SinkError> {
    let loggable = e.kind == EventKind::MessageReceived || e.status == Some(MessageStatus::Sent);
    let Some(phone) = e.contact_number.as_deref().filter(|_| loggable) else {
        return Ok(None);
    };
    let base = base.trim_end_matches('/');
    let found = hubspot_call(
        client,
        format!("{base}/crm/v3/objects/contacts/search"),
        token,
        json!({"filterGroups": [{"filters": [{"propertyName": "phone", "operator": "EQ", "value": phone}]}], "limit": 1}),
    )
    .await?;
    let contact_id = match found["results"][0]["id"].as_str() {
        Some(id) => id.to_owned(),
        None => {
            let created = hubspot_call(
                client,
                format!("{base}/crm/v3/objects/contacts"),
                token,
                json!({"properties": {"phone": phone}}),
            )
            .await?;
            created["id"]
                .as_str()
                .ok_or_else(|| SinkError::definite("HubSpot created a contact without an id"))?
                .to_owned()
        }
    };
    let at = e
        .occurred_at
        .unwrap_or(e.received_at)
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let direction = if e.kind == EventKind::MessageReceived {
        "inbound"
    } else {
        "outbound"
    };
    let communication = hubspot_call(
        client,
        format!("{base}/crm/v3/objects/communications"),
        token,
        json!({
            "properties": {
                "hs_communication_channel_type": hubspot_channel(e.service),
                "hs_communication_logged_from": "CRM",
                "hs_communication_body": e.content.clone().unwrap_or_else(|| format!("({direction} message)")),
                "hs_timestamp": at,
            },
            "associations": [{
                "to": {"id": contact_id},
                "types": [{"associationCategory": "HUBSPOT_DEFINED", "associationTypeId": 81}]
            }]
        }),
    )
    .await?;
    Ok(communication["id"].as_str().map(str::to_owned))
}

/// The crm-sync target: applies each event to the conversation state (the plan), and pushes
/// each change to the CRM once under `effect:crm:<event key>`; a stale event (a status that
/// does not move its message forward) pushes nothing.
pub struct CrmSync {
    state: Arc<dyn StateStore>,
    adapter: CrmAdapter,
    metrics: Arc<dyn Metrics>,
    retry: RetryPolicy,
    /// The media archive, when on: pushes name where attachments are archived.
    media: Option<ArchiveRoot>,
}

impl CrmSync {
    /// `retry`: the sink's queue's (the visibility timeout, the maximum receives).
    pub fn new(
        state: Arc<dyn StateStore>,
        adapter: CrmAdapter,
        metrics: Arc<dyn Metrics>,
        retry: RetryPolicy,
    ) -> CrmSync {
        CrmSync {
            state,
            adapter,
            metrics,
            retry,
            media: None,
        }
    }

    /// Pushes carry `message.media`: the attachments' archived locations under `root`.
    pub fn with_media_archive(mut self, root: Option<ArchiveRoot>) -> CrmSync {
        self.media = root;
        self
    }

    /// Delivery latency (sent to delivered), read latency (delivered to read) and response
    /// time (our last outbound message to the contact's next inbound one), as metrics.
    fn observe_latencies(&self, event: &Event, applied: &Applied) {
        if !applied.advanced {
            return;
        }
        let at = event.occurred_at.unwrap_or(event.received_at);
        let m = applied.message.as_ref();
        let since = |t: Option<chrono::DateTime<chrono::Utc>>| {
            t.map(|t| (at - t).num_milliseconds()).filter(|ms| *ms >= 0)
        };
        match event.status {
            Some(MessageStatus::Delivered) => {
                if let Some(ms) = since(m.and_then(|m| m.sent_at)) {
                    self.metrics.observe_ms("DeliveryLatency", ms);
                }
            }
            Some(MessageStatus::Read) => {
                if let Some(ms) = since(m.and_then(|m| m.delivered_at)) {
                    self.metrics.observe_ms("ReadLatency", ms);
                }
            }
            Some(MessageStatus::Received) => {
                if let Some(ms) = since(
                    applied
                        .conversation
                        .as_ref()
                        .and_then(|c| c.last_outbound_at),
                ) {
                    self.metrics.observe_ms("ResponseTime", ms);
                }
            }
            _ => {}
        }
    }
}

/// What one push needs: the state the event left, and whether the push is recorded done on the
/// message's item (no effect key) once it went through.
pub struct CrmWork {
    applied: Applied,
    record_push: bool,
}

#[async_trait]
impl Target for CrmSync {
    type Work = CrmWork;

    fn name(&self) -> &str {
        "crm"
    }

    fn policy(&self) -> Policy {
        Policy {
            retry: self.retry,
            effects: "crm",
            lease: Duration::from_secs(60),
            ttl: Duration::from_secs(7 * 24 * 3600),
            // The http adapter's receiver dedupes by webhook-id, HubSpot's search finds the
            // contact created before: a push of unknown outcome is pushed again.
            repeat_unknown: true,
            rate_limit_per_sec: None,
        }
    }

    async fn plan(&self, event: &Event) -> Result<Planned<CrmWork>, String> {
        // Applying the same event again answers the same (`advanced` names the event that
        // set the state), so a retried push is not mistaken for a stale one.
        let applied = self
            .state
            .apply(event)
            .await
            .map_err(|e| format!("state update failed: {e}"))?;
        if applied.message.is_some() && !applied.advanced {
            return Ok(Planned::Skip("stale"));
        }
        // A message event pushed to the `http` adapter, on a store that records pushes on the
        // message (DynamoDB): the state update just made is the claim (it names this event),
        // and the push is recorded on the same item, two writes fewer than an effect key. Two
        // copies under way at once can both push: the receiver drops one by its `webhook-id`.
        // HubSpot (a communication per call) and the local outbox keep the effect key. With
        // `receiver_dedupes` the push is not recorded at all: a redelivery pushes again.
        let own_record = applied.message.is_some()
            && self.state.records_pushes()
            && matches!(self.adapter, CrmAdapter::Http { .. });
        if own_record && applied.pushed {
            return Ok(Planned::AlreadyDone);
        }
        let receiver_dedupes = matches!(
            self.adapter,
            CrmAdapter::Http {
                receiver_dedupes: true,
                ..
            }
        );
        let work = CrmWork {
            applied,
            record_push: own_record && !receiver_dedupes,
        };
        Ok(if own_record {
            Planned::Unclaimed { work }
        } else {
            Planned::Effect {
                key: event.idempotency_key.clone(),
                work,
            }
        })
    }

    async fn perform(&self, event: &Event, work: &CrmWork) -> Outcome {
        match self
            .adapter
            .push(event, &work.applied, self.media.as_ref())
            .await
        {
            Ok(result) => {
                if work.record_push {
                    if let Err(e) = self.state.record_push(event).await {
                        // Pushed: a redelivery would push again, and the receiver drops it.
                        tracing::warn!(event_id = %event.id, error = %e, "pushed, but not recorded on the message");
                    }
                }
                Outcome::Done {
                    status: None,
                    result,
                }
            }
            Err(e) => e.outcome(),
        }
    }

    fn done(&self, event: &Event, work: &CrmWork) {
        let applied = &work.applied;
        self.metrics.incr("crm.pushed", 1);
        // Once per event: a redelivery finds the effect key completed.
        self.observe_latencies(event, applied);
        tracing::info!(event_id = %event.id, "pushed to the CRM");
    }

    fn skipped(&self, _event: &Event, _reason: &'static str) {
        self.metrics.incr("crm.unchanged", 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::{Deliver, Deliverer, Verdict};
    use crate::idempotency::sqlite::SqliteIdempotency;
    use crate::idempotency::IdempotencyStore;
    use crate::metrics::MemoryMetrics;
    use crate::sqlite::Db;
    use crate::state::contract::ev;
    use crate::state::sqlite::SqliteState;

    #[tokio::test]
    async fn receiver_dedupes_is_a_setting_of_the_http_adapter_only() {
        let adapter = |extra: &str| {
            let section: toml::Value = toml::from_str(&format!(
                "adapter = \"http\"\nurl = \"http://127.0.0.1:9/crm\"\nsecret = \"s3cr3t\"\n{extra}"
            ))
            .unwrap();
            async move { CrmAdapter::from_config(&section, None, None).await }
        };
        let dedupes = |a: &CrmAdapter| match a {
            CrmAdapter::Http {
                receiver_dedupes, ..
            } => *receiver_dedupes,
            _ => panic!("not the http adapter"),
        };
        assert!(!dedupes(&adapter("").await.unwrap()), "off unless set");
        assert!(dedupes(&adapter("receiver_dedupes = true").await.unwrap()));
        let wrong = adapter("receiver_dedupes = \"yes\"").await.err().unwrap();
        assert!(
            wrong
                .to_string()
                .contains("`receiver_dedupes` must be true or false"),
            "{wrong}"
        );
        let hubspot: toml::Value =
            toml::from_str("adapter = \"hubspot\"\ntoken = \"t\"\nreceiver_dedupes = true")
                .unwrap();
        let refused = CrmAdapter::from_config(&hubspot, None, None)
            .await
            .err()
            .unwrap();
        assert!(
            refused
                .to_string()
                .contains("unknown setting `receiver_dedupes`"),
            "{refused}"
        );
    }

    #[tokio::test]
    async fn latencies_and_once_only_pushes_into_the_outbox() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("t.db")).unwrap();
        let metrics = Arc::new(MemoryMetrics::default());
        let outbox = Outbox::new(db.clone());
        let effects: Arc<dyn IdempotencyStore> = Arc::new(SqliteIdempotency::new(db.clone()));
        let crm = Deliverer::new(
            CrmSync::new(
                Arc::new(SqliteState::new(db.clone())),
                CrmAdapter::Outbox(outbox.clone()),
                metrics.clone(),
                RetryPolicy {
                    max_attempts: 5,
                    first_delay: Duration::from_secs(1),
                    max_delay: Duration::from_secs(1),
                },
            ),
            effects.clone(),
            metrics.clone(),
        );
        let events = [
            ev("sb", "m1", MessageStatus::Sent, 0, Some("hi")),
            ev("sb", "m1", MessageStatus::Delivered, 4, None),
            ev("sb", "m1", MessageStatus::Read, 64, None),
            ev("sb", "in1", MessageStatus::Received, 100, Some("hello")),
            // Stale: changes nothing, pushes nothing.
            ev("sb", "m1", MessageStatus::Sent, 1, None),
        ];
        for round in 0..2 {
            for (i, e) in events.iter().enumerate() {
                let a = crm.deliver(e, round + 1).await;
                let expected = match (round, i) {
                    (_, 4) => Verdict::Skipped,
                    (0, _) => Verdict::Delivered,
                    // Redelivered: SENT and DELIVERED are stale now that m1 was read; the
                    // others find their effect keys completed.
                    (_, 0 | 1) => Verdict::Skipped,
                    _ => Verdict::AlreadyDelivered,
                };
                assert_eq!(a.verdict, expected, "round {round}, event {i}");
                if let Some(done) = &a.completion {
                    done.apply(effects.as_ref()).await;
                }
                let detail = a.record.as_ref().and_then(|r| r.detail.as_deref());
                let reason = match expected {
                    Verdict::Skipped => Some("stale"),
                    Verdict::AlreadyDelivered => Some(crate::delivery::ALREADY_DONE),
                    _ => None,
                };
                assert_eq!(detail, reason);
            }
        }
        assert_eq!(
            outbox.list("crm").await.unwrap().len(),
            4,
            "each change once"
        );
        assert_eq!(metrics.observed("DeliveryLatency"), vec![4_000]);
        assert_eq!(metrics.observed("ReadLatency"), vec![60_000]);
        assert_eq!(
            metrics.observed("ResponseTime"),
            vec![36_000],
            "from the READ's time, the last outbound event"
        );
        assert_eq!(metrics.get("crm.pushed"), 4);
    }
}
