//! Normalising JSON payloads whose exact shape is not published (Bluemessaggio, Standard
//! Webhooks senders, other HMAC-signed sources, and the `data` of Blue Replies events): common
//! field names are looked for at the top level and inside `data`, `message` or `payload`. What
//! is not recognised stays in `raw_body`; a body with no recognisable event is an `unknown`
//! event, kept whole.

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use super::{ParseError, SampleOptions, WebhookRequest};
use crate::event::{
    body_digest, truncate_to_millis, Direction, Event, EventKind, MessageStatus, Service,
};

/// The events `bluehook send` knows for generically normalised providers.
pub const SAMPLE_EVENTS: &[&str] = &["sent", "delivered", "read", "failed", "received"];

/// Canonical status of a generic status or event-type word (`delivered`, `message.delivered`,
/// `DELIVERY_FAILED`, ...).
pub fn status_word(raw: &str) -> MessageStatus {
    let lower = raw.trim().to_ascii_lowercase();
    let word = lower.rsplit(['.', ':', '/']).next().unwrap_or(&lower);
    match word {
        "queued" | "pending" | "scheduled" | "registered" | "enqueued" => MessageStatus::Queued,
        "accepted" => MessageStatus::Accepted,
        "sending" => MessageStatus::Sending,
        "sent" | "submitted" | "success" => MessageStatus::Sent,
        "delivered" | "delivery" | "partially_delivered" => MessageStatus::Delivered,
        "read" | "seen" | "opened" => MessageStatus::Read,
        "failed" | "failure" | "error" | "undelivered" | "delivery_failed" | "rejected"
        | "expired" => MessageStatus::Failed,
        "received" | "inbound" | "incoming" | "receiving" | "reply" | "mo" => {
            MessageStatus::Received
        }
        "declined" | "blocked" => MessageStatus::Declined,
        "canceled" | "cancelled" => MessageStatus::Canceled,
        _ => MessageStatus::Unknown,
    }
}

/// Field lookup over the top level and the usual nested objects.
pub struct Fields<'a> {
    scopes: Vec<&'a Map<String, Value>>,
}

impl<'a> Fields<'a> {
    pub fn new(root: &'a Map<String, Value>) -> Fields<'a> {
        let mut scopes = vec![root];
        for nested in ["data", "message", "payload", "object"] {
            if let Some(Value::Object(m)) = root.get(nested) {
                scopes.push(m);
            }
        }
        Fields { scopes }
    }

    /// The objects searched, the top level first.
    pub fn scopes(&self) -> &[&'a Map<String, Value>] {
        &self.scopes
    }

    fn value(&self, names: &[&str]) -> Option<&'a Value> {
        self.scopes.iter().find_map(|m| {
            names
                .iter()
                .find_map(|n| m.get(*n).filter(|v| !v.is_null()))
        })
    }

    /// The first of `names` holding a string or number, as a string (empty strings skipped).
    pub fn string(&self, names: &[&str]) -> Option<String> {
        for scope in &self.scopes {
            for n in names {
                match scope.get(*n) {
                    Some(Value::String(s)) if !s.is_empty() => return Some(s.clone()),
                    Some(Value::Number(x)) => return Some(x.to_string()),
                    _ => {}
                }
            }
        }
        None
    }

    pub fn bool(&self, names: &[&str]) -> Option<bool> {
        self.value(names).and_then(Value::as_bool)
    }

    /// An error given as a string, or as an object with `message` / `code`.
    pub fn error(&self) -> (Option<String>, Option<String>) {
        let code = self.string(&["error_code", "errorCode"]);
        let message = self.string(&["error_message", "errorMessage"]);
        match self.value(&["error"]) {
            Some(Value::String(s)) => (code, message.or(Some(s.clone()))),
            Some(Value::Object(o)) => {
                let inner = Fields { scopes: vec![o] };
                (
                    code.or_else(|| inner.string(&["code"])),
                    message.or_else(|| inner.string(&["message", "description", "reason"])),
                )
            }
            _ => (code, message),
        }
    }

    pub fn time(&self, names: &[&str]) -> Option<DateTime<Utc>> {
        names.iter().find_map(|n| {
            let v = self.value(&[n])?;
            let t = match v {
                Value::String(s) => DateTime::parse_from_rfc3339(s)
                    .map(|t| t.with_timezone(&Utc))
                    .ok()
                    .or_else(|| unix_time(s.parse().ok()?)),
                Value::Number(n) => unix_time(n.as_i64()?),
                _ => None,
            }?;
            Some(truncate_to_millis(t))
        })
    }

    pub fn strings(&self, names: &[&str]) -> Vec<String> {
        match self.value(names) {
            Some(Value::Array(items)) => items
                .iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect(),
            _ => Vec::new(),
        }
    }
}

fn unix_time(n: i64) -> Option<DateTime<Utc>> {
    if n > 100_000_000_000 {
        DateTime::from_timestamp_millis(n)
    } else {
        DateTime::from_timestamp(n, 0)
    }
}

/// How a provider's generic payloads are keyed and read.
pub struct Profile<'a> {
    pub provider: &'a str,
    /// An event id from outside the body (a header such as `webhook-id`), preferred as the key.
    pub delivery_id: Option<&'a str>,
    /// The service when the payload does not say (Blue Replies is iMessage only).
    pub default_service: Option<Service>,
}

/// Parses a verified JSON body into one event.
pub fn parse_event(req: &WebhookRequest<'_>, profile: &Profile<'_>) -> Result<Event, ParseError> {
    let raw_body = std::str::from_utf8(req.body)
        .map_err(|e| ParseError::NotJson(format!("not UTF-8: {e}")))?;
    let value: Value =
        serde_json::from_str(raw_body).map_err(|e| ParseError::NotJson(e.to_string()))?;
    let source = req.source;
    let Value::Object(root) = &value else {
        let key = match profile.delivery_id {
            Some(id) => format!("{source}:id:{id}"),
            None => format!("{source}:body:{}", body_digest(req.body)),
        };
        return Ok(Event::new(
            source,
            profile.provider,
            EventKind::Unknown,
            key,
            req.received_at,
            raw_body.to_owned(),
        ));
    };
    let f = Fields::new(root);

    let event_type = f.string(&["type", "event", "event_type", "eventType"]);
    let raw_status = f.string(&["status", "message_status", "messageStatus", "state"]);
    let direction_word = f.string(&["direction"]).map(|d| d.to_ascii_lowercase());
    let status = raw_status
        .as_deref()
        .map(status_word)
        .filter(|s| *s != MessageStatus::Unknown)
        .or_else(|| {
            event_type
                .as_deref()
                .map(status_word)
                .filter(|s| *s != MessageStatus::Unknown)
        });
    let inbound = status == Some(MessageStatus::Received)
        || matches!(
            direction_word.as_deref(),
            Some("inbound" | "incoming" | "mo")
        );
    let message_id = f.string(&[
        "message_id",
        "messageId",
        "message_sid",
        "MessageSid",
        "sid",
    ]);
    let kind = match status {
        _ if inbound => EventKind::MessageReceived,
        Some(_) => EventKind::MessageStatus,
        None if message_id.is_some() => EventKind::MessageStatus,
        None => EventKind::Unknown,
    };

    let event_id = f.string(&["event_id", "eventId", "webhook_id"]);
    let key = match (profile.delivery_id, event_id, &message_id) {
        (Some(id), _, _) => format!("{source}:id:{id}"),
        (None, Some(id), _) => format!("{source}:id:{id}"),
        // One message reports several statuses: the status is part of the key.
        (None, None, Some(m)) if kind != EventKind::Unknown => format!(
            "{source}:msg:{m}:{}",
            raw_status
                .as_deref()
                .or(event_type.as_deref())
                .unwrap_or("")
        ),
        _ => format!("{source}:body:{}", body_digest(req.body)),
    };

    let mut ev = Event::new(
        source,
        profile.provider,
        kind,
        key,
        req.received_at,
        raw_body.to_owned(),
    );
    ev.provider_event = event_type
        .clone()
        .or_else(|| req.type_hint.map(str::to_owned));
    if kind != EventKind::Unknown {
        ev.status = Some(if inbound {
            MessageStatus::Received
        } else {
            status.unwrap_or(MessageStatus::Unknown)
        });
        ev.raw_status = raw_status.or(event_type);
        ev.direction = Some(if inbound {
            Direction::Inbound
        } else {
            Direction::Outbound
        });
    }
    ev.message_handle = message_id;
    ev.from_number = f.string(&["from", "from_number", "fromNumber", "sender", "From"]);
    ev.to_number = f.string(&["to", "to_number", "toNumber", "recipient", "To"]);
    let (contact, line) = if inbound {
        (ev.from_number.clone(), ev.to_number.clone())
    } else {
        (ev.to_number.clone(), ev.from_number.clone())
    };
    ev.contact_number = f
        .string(&["contact", "contact_number", "number", "phone"])
        .or(contact);
    ev.line_number = f.string(&["line", "line_number"]).or(line);
    ev.content = f.string(&["body", "text", "content", "Body"]);
    ev.media_url = f.string(&["media_url", "mediaUrl", "media"]).or_else(|| {
        // `media: [url, ...]` or `media: [{url, ...}]`: the first one.
        crate::sinks::media::media_of_fields(&f)
            .into_iter()
            .next()
            .map(|(url, _)| url)
    });
    ev.service = f
        .string(&["channel", "service"])
        .and_then(|c| Service::parse(&c))
        .or(if kind == EventKind::Unknown {
            None
        } else {
            profile.default_service
        });
    ev.group_id = f.string(&["group_id", "groupId"]);
    ev.participants = f.strings(&["participants"]);
    let (code, message) = f.error();
    ev.error_code = code;
    ev.error_message = message;
    ev.opted_out = f.bool(&["opted_out", "optedOut"]);
    ev.occurred_at = f.time(&[
        "readAt",
        "read_at",
        "deliveredAt",
        "delivered_at",
        "failedAt",
        "timestamp",
        "occurred_at",
        "occurredAt",
        "created_at",
        "createdAt",
        "date",
    ]);
    Ok(ev)
}

/// A sample JSON body for generic providers: `{"type": "message.<event>", ...}`.
pub fn sample_body(event: &str, opts: &SampleOptions, channel: &str) -> Result<Value, String> {
    if !SAMPLE_EVENTS.contains(&event) {
        return Err(format!(
            "unknown event `{event}`; known: {}",
            SAMPLE_EVENTS.join(", ")
        ));
    }
    let now = Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let id = opts
        .handle
        .clone()
        .unwrap_or_else(|| format!("msg_{}", uuid::Uuid::new_v4().simple()));
    let inbound = event == "received";
    let (from, to) = if inbound {
        ("+393331234567", "+390212345678")
    } else {
        ("+390212345678", "+393331234567")
    };
    let mut data = serde_json::json!({
        "message_id": id,
        "channel": channel,
        "from": from,
        "to": to,
        "timestamp": now,
    });
    if inbound || opts.content.is_some() {
        data["text"] = opts
            .content
            .clone()
            .unwrap_or_else(|| "Ciao! Is my order on its way?".into())
            .into();
    }
    if let Some(status) = &opts.status {
        data["status"] = status.clone().into();
    }
    if event == "failed" {
        data["error"] = serde_json::json!({"code": "30008", "message": "Unknown error"});
    }
    Ok(serde_json::json!({
        "type": format!("message.{event}"),
        "event_id": format!("evt_{}", uuid::Uuid::new_v4().simple()),
        "data": data,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderMap;

    fn parse(body: &str, delivery_id: Option<&str>) -> Event {
        let h = HeaderMap::new();
        let req = WebhookRequest {
            source: "src",
            type_hint: None,
            headers: &h,
            query: None,
            body: body.as_bytes(),
            received_at: Utc::now(),
        };
        parse_event(
            &req,
            &Profile {
                provider: "hmac",
                delivery_id,
                default_service: None,
            },
        )
        .unwrap()
    }

    #[test]
    fn status_words() {
        for (raw, want) in [
            ("message.delivered", MessageStatus::Delivered),
            ("DELIVERED", MessageStatus::Delivered),
            ("undelivered", MessageStatus::Failed),
            ("message.read", MessageStatus::Read),
            ("inbound", MessageStatus::Received),
            ("message.sent", MessageStatus::Sent),
            ("whatever", MessageStatus::Unknown),
        ] {
            assert_eq!(status_word(raw), want, "{raw}");
        }
    }

    #[test]
    fn nested_data_is_read_and_keys_prefer_event_ids() {
        let e = parse(
            r#"{"type":"message.delivered","event_id":"e1","data":{"message_id":"m1","channel":"whatsapp","from":"+1","to":"+2","timestamp":1700000000}}"#,
            None,
        );
        assert_eq!(e.kind, EventKind::MessageStatus);
        assert_eq!(e.status, Some(MessageStatus::Delivered));
        assert_eq!(e.service, Some(Service::WhatsApp));
        assert_eq!(e.message_handle.as_deref(), Some("m1"));
        assert_eq!(e.contact_number.as_deref(), Some("+2"));
        assert_eq!(e.idempotency_key, "src:id:e1");
        assert_eq!(e.occurred_at.unwrap().timestamp(), 1_700_000_000);

        let by_header = parse(
            r#"{"type":"message.read","data":{"message_id":"m1"}}"#,
            Some("wh_1"),
        );
        assert_eq!(by_header.idempotency_key, "src:id:wh_1");

        let read = parse(
            r#"{"type":"message.read","data":{"message_id":"m1"}}"#,
            None,
        );
        let delivered = parse(
            r#"{"type":"message.delivered","data":{"message_id":"m1"}}"#,
            None,
        );
        assert_ne!(read.idempotency_key, delivered.idempotency_key);
    }

    #[test]
    fn inbound_and_unknown() {
        let e = parse(
            r#"{"event":"inbound","from":"+1","to":"+2","text":"hi","channel":"SMS"}"#,
            None,
        );
        assert_eq!(e.kind, EventKind::MessageReceived);
        assert_eq!(e.direction, Some(Direction::Inbound));
        assert_eq!(e.contact_number.as_deref(), Some("+1"));
        assert_eq!(e.content.as_deref(), Some("hi"));
        let u = parse(r#"{"hello":"world"}"#, None);
        assert_eq!(u.kind, EventKind::Unknown);
        assert!(u.idempotency_key.starts_with("src:body:"));
        assert_eq!(parse("[1]", None).kind, EventKind::Unknown);
    }
}
