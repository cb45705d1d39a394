//! sms-fallback: when an outbound iMessage fails, send the same content as SMS through Twilio
//! (Messages API) or Sendblue (send-message API); locally, without an adapter, into the outbox.
//!
//! At most one fallback SMS per original message, ever: `effect:sms:<source>:<handle>` is
//! claimed before sending and never expires early. A send that certainly failed releases the
//! claim and is retried (then dead-lettered); a send whose outcome is unknown (a timeout after
//! the request went out) keeps the claim, so it is never sent twice: it is dead-lettered for a
//! person to look at. The delivery engine ([`crate::delivery`]) runs it like every target.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::json;

use super::{http_client, Outbox, SinkError, SinkSettings};
use crate::config::{ConfigError, Secret, SsmReader};
use crate::delivery::{Outcome, Planned, Policy, RetryPolicy, Target};
use crate::event::{Direction, Event, EventKind, MessageStatus, Service};
use crate::metrics::Metrics;
use crate::state::{MessageState, StateStore};

pub const DEFAULT_TWILIO_URL: &str = "https://api.twilio.com";
pub const DEFAULT_SENDBLUE_URL: &str = "https://api.sendblue.co";

/// Why no fallback SMS is sent for an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    NotAFailure,
    NotOutbound,
    NotIMessage,
    AlreadyDowngraded,
    OptedOut,
    NoHandle,
    NoRecipient,
    NoContent,
}

impl Skip {
    pub fn as_str(self) -> &'static str {
        match self {
            Skip::NotAFailure => "not_a_failure",
            Skip::NotOutbound => "not_outbound",
            Skip::NotIMessage => "not_imessage",
            Skip::AlreadyDowngraded => "already_downgraded",
            Skip::OptedOut => "opted_out",
            Skip::NoHandle => "no_handle",
            Skip::NoRecipient => "no_recipient",
            Skip::NoContent => "no_content",
        }
    }
}

/// A text to send to a contact: the SMS in place of a failed iMessage, a bot's reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Text {
    /// What it is kept under in the local outbox (the original message's handle, the inbound
    /// event's id).
    pub key: String,
    pub to: String,
    pub content: String,
    pub media_url: Option<String>,
    /// The conversation's line (the number the contact wrote to, or was written from).
    pub line: Option<String>,
    /// Send from `line` even when the sender has its own number (a reply); otherwise `line` is
    /// used only when the sender has none (the fallback SMS goes out from the sender's SMS line).
    pub from_line: bool,
}

impl Text {
    /// The number to send from, given the sender's own.
    fn from<'a>(&'a self, own: Option<&'a String>) -> Option<&'a String> {
        match (&self.line, own) {
            (Some(line), _) if self.from_line => Some(line),
            (_, Some(own)) => Some(own),
            (line, None) => line.as_ref(),
        }
    }
}

/// The decision table: a failed outbound iMessage, not already downgraded, to a contact who
/// has not opted out, with content from the event or else from the state.
pub fn decide(e: &Event, known: Option<&MessageState>) -> Result<Text, Skip> {
    if e.kind != EventKind::MessageStatus || e.status != Some(MessageStatus::Failed) {
        return Err(Skip::NotAFailure);
    }
    if e.direction != Some(Direction::Outbound) {
        return Err(Skip::NotOutbound);
    }
    if e.service.or(known.and_then(|m| m.service)) != Some(Service::IMessage) {
        return Err(Skip::NotIMessage);
    }
    if e.was_downgraded == Some(true) {
        return Err(Skip::AlreadyDowngraded);
    }
    if e.opted_out == Some(true) {
        return Err(Skip::OptedOut);
    }
    let handle = e.message_handle.clone().ok_or(Skip::NoHandle)?;
    let to = e
        .contact_number
        .clone()
        .or_else(|| known.and_then(|m| m.contact.clone()))
        .ok_or(Skip::NoRecipient)?;
    let content = e
        .content
        .clone()
        .filter(|c| !c.is_empty())
        .or_else(|| known.and_then(|m| m.content.clone()))
        .ok_or(Skip::NoContent)?;
    Ok(Text {
        key: handle,
        to,
        content,
        media_url: e.media_url.clone(),
        line: e
            .line_number
            .clone()
            .or_else(|| known.and_then(|m| m.line.clone())),
        from_line: false,
    })
}

pub enum SmsSender {
    Twilio {
        client: reqwest::Client,
        base_url: String,
        account_sid: String,
        auth_token: Secret,
        from: Option<String>,
        messaging_service_sid: Option<String>,
    },
    Sendblue {
        client: reqwest::Client,
        base_url: String,
        api_key_id: Secret,
        api_secret_key: Secret,
        from_number: Option<String>,
    },
    Outbox(Outbox),
}

impl SmsSender {
    /// From `[sinks.sms_fallback]`: `adapter = "twilio"` or `"sendblue"`; no adapter means the
    /// local outbox (when there is one).
    pub async fn from_config(
        value: &toml::Value,
        outbox: Option<Outbox>,
        ssm: Option<&dyn SsmReader>,
    ) -> Result<SmsSender, ConfigError> {
        SmsSender::from_section("sinks", "sms_fallback", value, outbox, ssm).await
    }

    /// From `[<kind>.<name>]` (`[senders.<name>]`, `[sinks.sms_fallback]`). A sender's line
    /// (`from_number`, `from` or `messaging_service_sid`) may be left out under `[senders]`:
    /// each text then goes out from the line its contact wrote to.
    pub async fn from_section(
        kind: &str,
        name: &str,
        value: &toml::Value,
        outbox: Option<Outbox>,
        ssm: Option<&dyn SsmReader>,
    ) -> Result<SmsSender, ConfigError> {
        let line_optional = kind == "senders";
        let mut s = SinkSettings::section(kind, name, value)?;
        let timeout = Duration::from_secs(s.u64("timeout_secs")?.unwrap_or(15));
        let sender = match s.str("adapter")?.as_deref() {
            Some("twilio") => {
                let from = s.str("from")?;
                let messaging_service_sid = s.str("messaging_service_sid")?;
                if from.is_none() && messaging_service_sid.is_none() && !line_optional {
                    return Err(s.invalid("set `from` or `messaging_service_sid`"));
                }
                SmsSender::Twilio {
                    client: http_client(timeout),
                    base_url: s
                        .str("base_url")?
                        .unwrap_or_else(|| DEFAULT_TWILIO_URL.into()),
                    account_sid: s.required("account_sid")?,
                    auth_token: s.secret("auth_token", ssm).await?,
                    from,
                    messaging_service_sid,
                }
            }
            Some("sendblue") => SmsSender::Sendblue {
                client: http_client(timeout),
                base_url: s
                    .str("base_url")?
                    .unwrap_or_else(|| DEFAULT_SENDBLUE_URL.into()),
                api_key_id: s.secret("api_key_id", ssm).await?,
                api_secret_key: s.secret("api_secret_key", ssm).await?,
                from_number: if line_optional {
                    s.str("from_number")?
                } else {
                    Some(s.required("from_number")?)
                },
            },
            None | Some("outbox") => match outbox {
                Some(o) => SmsSender::Outbox(o),
                None => return Err(s.invalid("set `adapter` to \"twilio\" or \"sendblue\"")),
            },
            Some(other) => {
                return Err(s.invalid(format!("unknown adapter `{other}` (twilio, sendblue)")))
            }
        };
        s.finish()?;
        Ok(sender)
    }

    /// Sends the text; the provider's id of the new message. `purpose` (`sms_fallback`,
    /// `reply`) names what it is in the local outbox.
    pub async fn send(&self, purpose: &str, f: &Text) -> Result<String, SinkError> {
        match self {
            SmsSender::Outbox(o) => {
                o.record(purpose, &f.key, &json!({"to": f.to, "from": f.from(None), "body": f.content, "media_url": f.media_url, "original": f.key}))
                    .await?;
                Ok(format!("outbox:{}", f.key))
            }
            SmsSender::Twilio {
                client,
                base_url,
                account_sid,
                auth_token,
                from,
                messaging_service_sid,
            } => {
                let mut form: Vec<(&str, &str)> = vec![("To", &f.to), ("Body", &f.content)];
                match (f.from_line, messaging_service_sid, f.from(from.as_ref())) {
                    (false, Some(m), _) => form.push(("MessagingServiceSid", m)),
                    (_, _, Some(from)) => form.push(("From", from)),
                    (true, Some(m), None) => form.push(("MessagingServiceSid", m)),
                    (_, None, None) => {
                        return Err(SinkError::definite(
                            "no line to send from: the sender has no `from` and the event no line",
                        ))
                    }
                }
                if let Some(m) = &f.media_url {
                    form.push(("MediaUrl", m));
                }
                let body = form_urlencoded::Serializer::new(String::new())
                    .extend_pairs(&form)
                    .finish();
                let url = format!(
                    "{}/2010-04-01/Accounts/{account_sid}/Messages.json",
                    base_url.trim_end_matches('/')
                );
                let r = client
                    .post(url)
                    .basic_auth(account_sid, Some(auth_token.expose()))
                    .header("content-type", "application/x-www-form-urlencoded")
                    .body(body)
                    .send()
                    .await
                    .map_err(SinkError::from_reqwest)?;
                let status = r.status();
                let v: serde_json::Value = r.json().await.unwrap_or(serde_json::Value::Null);
                match (status.is_success(), v["sid"].as_str()) {
                    (true, Some(sid)) => Ok(sid.to_owned()),
                    (true, None) => Err(SinkError::unknown("Twilio answered without a sid")),
                    (false, _) => Err(SinkError::answered(
                        status.as_u16(),
                        format!(
                            "Twilio answered {status}: {}",
                            v["message"].as_str().unwrap_or("")
                        ),
                    )),
                }
            }
            SmsSender::Sendblue {
                client,
                base_url,
                api_key_id,
                api_secret_key,
                from_number,
            } => {
                let Some(from_number) = f.from(from_number.as_ref()) else {
                    return Err(SinkError::definite(
                        "no line to send from: the sender has no `from_number` and the event no line",
                    ));
                };
                let mut body =
                    json!({"number": f.to, "from_number": from_number, "content": f.content});
                if let Some(m) = &f.media_url {
                    body["media_url"] = m.clone().into();
                }
                let r = client
                    .post(format!(
                        "{}/api/send-message",
                        base_url.trim_end_matches('/')
                    ))
                    .header("sb-api-key-id", api_key_id.expose())
                    .header("sb-api-secret-key", api_secret_key.expose())
                    .json(&body)
                    .send()
                    .await
                    .map_err(SinkError::from_reqwest)?;
                let status = r.status();
                let v: serde_json::Value = r.json().await.unwrap_or(serde_json::Value::Null);
                match (status.is_success(), v["message_handle"].as_str()) {
                    (true, Some(h)) => Ok(h.to_owned()),
                    (true, None) => Err(SinkError::unknown(
                        "Sendblue answered without a message_handle",
                    )),
                    (false, _) => Err(SinkError::answered(
                        status.as_u16(),
                        format!("Sendblue answered {status}"),
                    )),
                }
            }
        }
    }
}

/// Every `[senders.<name>]`, built, by name.
pub type Senders = std::collections::BTreeMap<String, Arc<SmsSender>>;

/// Builds every `[senders.<name>]` (locally one without `adapter` writes to the outbox).
pub async fn senders_from_config(
    senders: &std::collections::BTreeMap<String, toml::Value>,
    outbox: Option<Outbox>,
    ssm: Option<&dyn SsmReader>,
) -> Result<Senders, ConfigError> {
    let mut out = Senders::new();
    for (name, value) in senders {
        let sender = SmsSender::from_section("senders", name, value, outbox.clone(), ssm).await?;
        out.insert(name.clone(), Arc::new(sender));
    }
    Ok(out)
}

/// The sms_fallback sink's sender: the one `sender = "<name>"` names, or its inline settings.
pub async fn fallback_sender(
    value: &toml::Value,
    senders: &Senders,
    outbox: Option<Outbox>,
    ssm: Option<&dyn SsmReader>,
) -> Result<Arc<SmsSender>, ConfigError> {
    let Some(name) = value.get("sender") else {
        return Ok(Arc::new(SmsSender::from_config(value, outbox, ssm).await?));
    };
    let invalid = |m: String| ConfigError::Invalid(format!("[sinks.sms_fallback]: {m}"));
    let name = name
        .as_str()
        .ok_or_else(|| invalid("`sender` must be a string".into()))?;
    if let Some(other) = value
        .as_table()
        .and_then(|t| t.keys().find(|k| k.as_str() != "sender"))
    {
        return Err(invalid(format!(
            "`{other}` is set with `sender`: the sender `{name}` has the adapter's settings"
        )));
    }
    senders.get(name).cloned().ok_or_else(|| {
        invalid(format!(
            "sender `{name}` is not defined: add a [senders.{name}] section"
        ))
    })
}

/// The sms-fallback target: decides from the event (and the state, for what a failure event
/// lacks) whether a fallback SMS is due, claims `effect:sms:<source>:<handle>`, sends it.
pub struct SmsFallback {
    state: Option<Arc<dyn StateStore>>,
    sender: Arc<SmsSender>,
    metrics: Arc<dyn Metrics>,
    retry: RetryPolicy,
}

impl SmsFallback {
    /// `state` (when there is one) supplies the content of failure events that lack it;
    /// `retry`: the sink's queue's (the visibility timeout, the maximum receives).
    pub fn new(
        state: Option<Arc<dyn StateStore>>,
        sender: Arc<SmsSender>,
        metrics: Arc<dyn Metrics>,
        retry: RetryPolicy,
    ) -> SmsFallback {
        SmsFallback {
            state,
            sender,
            metrics,
            retry,
        }
    }
}

#[async_trait]
impl Target for SmsFallback {
    type Work = Text;

    fn name(&self) -> &str {
        "sms_fallback"
    }

    fn policy(&self) -> Policy {
        // "Ever", within a year: the claim of a send of unknown outcome never lapses before that.
        let year = Duration::from_secs(365 * 24 * 3600);
        Policy {
            retry: self.retry,
            effects: "sms",
            lease: year,
            ttl: year,
            repeat_unknown: false,
            rate_limit_per_sec: None,
        }
    }

    async fn plan(&self, event: &Event) -> Result<Planned<Text>, String> {
        let known = match (&self.state, &event.message_handle) {
            (Some(state), Some(h))
                if event.content.as_deref().is_none_or(str::is_empty)
                    || event.service.is_none() =>
            {
                state
                    .message(&event.source, h)
                    .await
                    .map_err(|e| format!("state read failed: {e}"))?
            }
            _ => None,
        };
        Ok(match decide(event, known.as_ref()) {
            Ok(f) => Planned::Effect {
                key: format!("{}:{}", event.source, f.key),
                work: f,
            },
            Err(skip) => Planned::Skip(skip.as_str()),
        })
    }

    async fn perform(&self, _event: &Event, fallback: &Text) -> Outcome {
        match self.sender.send("sms_fallback", fallback).await {
            Ok(provider_id) => Outcome::Done {
                status: None,
                result: Some(provider_id),
            },
            Err(e) => e.outcome(),
        }
    }

    fn done(&self, event: &Event, fallback: &Text) {
        self.metrics.incr("sms.sent", 1);
        tracing::info!(event_id = %event.id, handle = %fallback.key, "fallback SMS sent");
    }

    fn skipped(&self, _event: &Event, reason: &'static str) {
        self.metrics.incr(&format!("sms.skipped.{reason}"), 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failed_imessage() -> Event {
        let mut e = Event::new(
            "sb",
            "sendblue",
            EventKind::MessageStatus,
            "k".into(),
            chrono::Utc::now(),
            "{}".into(),
        );
        e.status = Some(MessageStatus::Failed);
        e.direction = Some(Direction::Outbound);
        e.service = Some(Service::IMessage);
        e.message_handle = Some("h1".into());
        e.contact_number = Some("+15550002222".into());
        e.content = Some("See you at 5".into());
        e
    }

    #[test]
    fn decision_table_every_reason_not_to_send() {
        let known = MessageState {
            source: "sb".into(),
            handle: "h1".into(),
            status: MessageStatus::Sent,
            content: Some("from state".into()),
            service: Some(Service::IMessage),
            line: None,
            contact: Some("+15550003333".into()),
            sent_at: None,
            delivered_at: None,
        };
        let ok = decide(&failed_imessage(), None).unwrap();
        assert_eq!(
            ok,
            Text {
                key: "h1".into(),
                to: "+15550002222".into(),
                content: "See you at 5".into(),
                media_url: None,
                line: None,
                from_line: false,
            }
        );

        type Change = Box<dyn Fn(&mut Event)>;
        let cases: Vec<(Change, Skip)> = vec![
            (
                Box::new(|e| e.status = Some(MessageStatus::Delivered)),
                Skip::NotAFailure,
            ),
            (
                Box::new(|e| e.kind = EventKind::MessageReceived),
                Skip::NotAFailure,
            ),
            (
                Box::new(|e| e.direction = Some(Direction::Inbound)),
                Skip::NotOutbound,
            ),
            (
                Box::new(|e| e.service = Some(Service::Sms)),
                Skip::NotIMessage,
            ),
            (Box::new(|e| e.service = None), Skip::NotIMessage),
            (
                Box::new(|e| e.was_downgraded = Some(true)),
                Skip::AlreadyDowngraded,
            ),
            (Box::new(|e| e.opted_out = Some(true)), Skip::OptedOut),
            (Box::new(|e| e.message_handle = None), Skip::NoHandle),
            (Box::new(|e| e.contact_number = None), Skip::NoRecipient),
            (Box::new(|e| e.content = None), Skip::NoContent),
            (
                Box::new(|e| e.content = Some(String::new())),
                Skip::NoContent,
            ),
        ];
        for (change, reason) in cases {
            let mut e = failed_imessage();
            change(&mut e);
            assert_eq!(decide(&e, None), Err(reason), "{}", reason.as_str());
        }
        // What the event lacks, the state supplies.
        let mut e = failed_imessage();
        e.content = None;
        e.service = None;
        e.contact_number = None;
        let f = decide(&e, Some(&known)).unwrap();
        assert_eq!(
            (f.content.as_str(), f.to.as_str()),
            ("from state", "+15550003333")
        );
        let mut downgraded = failed_imessage();
        downgraded.was_downgraded = Some(false);
        assert!(decide(&downgraded, None).is_ok());
    }
}
