//! The canonical event: what every provider's webhook becomes, what travels on the queues, and
//! (later) what an analytics row holds. Its JSON form is a contract: fields are only ever added.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Version of the JSON layout below; bumped only for an incompatible change.
pub const SCHEMA_VERSION: u32 = 1;

/// What happened, independent of the provider that reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EventKind {
    #[serde(rename = "message.received")]
    MessageReceived,
    #[serde(rename = "message.status")]
    MessageStatus,
    #[serde(rename = "typing")]
    Typing,
    #[serde(rename = "call_log")]
    CallLog,
    #[serde(rename = "line_blocked")]
    LineBlocked,
    #[serde(rename = "line_assigned")]
    LineAssigned,
    #[serde(rename = "contact_created")]
    ContactCreated,
    /// A verified body whose shape was not recognised: kept whole, never dropped.
    #[serde(rename = "unknown")]
    Unknown,
    /// Made by bluehook: a `[[followups]]` rule came due for a message that was read and not
    /// answered (delivered to the rule's destinations).
    #[serde(rename = "followup.due")]
    FollowupDue,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::MessageReceived => "message.received",
            EventKind::MessageStatus => "message.status",
            EventKind::Typing => "typing",
            EventKind::CallLog => "call_log",
            EventKind::LineBlocked => "line_blocked",
            EventKind::LineAssigned => "line_assigned",
            EventKind::ContactCreated => "contact_created",
            EventKind::Unknown => "unknown",
            EventKind::FollowupDue => "followup.due",
        }
    }
}

/// The normalised lifecycle of a message. The provider's own word is kept in `raw_status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MessageStatus {
    /// Registered or accepted by the provider, not yet handed to a carrier.
    Queued,
    Accepted,
    Sending,
    Sent,
    Delivered,
    Read,
    Failed,
    Received,
    /// Refused by a provider rule before sending (for example the contact opted out).
    Declined,
    Canceled,
    Unknown,
}

impl MessageStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            MessageStatus::Queued => "queued",
            MessageStatus::Accepted => "accepted",
            MessageStatus::Sending => "sending",
            MessageStatus::Sent => "sent",
            MessageStatus::Delivered => "delivered",
            MessageStatus::Read => "read",
            MessageStatus::Failed => "failed",
            MessageStatus::Received => "received",
            MessageStatus::Declined => "declined",
            MessageStatus::Canceled => "canceled",
            MessageStatus::Unknown => "unknown",
        }
    }
}

/// The channel a message travelled on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Service {
    #[serde(rename = "iMessage")]
    IMessage,
    #[serde(rename = "SMS")]
    Sms,
    #[serde(rename = "MMS")]
    Mms,
    #[serde(rename = "RCS")]
    Rcs,
    #[serde(rename = "WhatsApp")]
    WhatsApp,
    #[serde(rename = "other")]
    Other,
}

impl Service {
    /// Reads a provider's service name, case-insensitively; `None` for an empty value.
    pub fn parse(raw: &str) -> Option<Service> {
        let raw = raw.trim();
        if raw.is_empty() {
            return None;
        }
        Some(match raw.to_ascii_lowercase().as_str() {
            "imessage" => Service::IMessage,
            "sms" => Service::Sms,
            "mms" => Service::Mms,
            "rcs" => Service::Rcs,
            "whatsapp" => Service::WhatsApp,
            _ => Service::Other,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    Inbound,
    Outbound,
}

/// One webhook event in canonical form.
///
/// Every field is always present in the JSON (null when the provider did not say), so that a
/// reader such as Athena sees one stable shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub schema_version: u32,
    /// Derived from the idempotency key, so a re-enqueue of the same event keeps its id and
    /// downstream consumers can drop the copy by id.
    pub id: String,
    pub idempotency_key: String,
    /// The configured source name (the `{source}` of the URL).
    pub source: String,
    pub provider: String,
    /// The provider's own name for this kind of webhook (`receive`, `outbound`, ...).
    pub provider_event: Option<String>,
    pub kind: EventKind,
    pub status: Option<MessageStatus>,
    pub raw_status: Option<String>,
    pub direction: Option<Direction>,
    pub message_handle: Option<String>,
    pub from_number: Option<String>,
    pub to_number: Option<String>,
    /// The end user's number: the other party of the conversation.
    pub contact_number: Option<String>,
    /// Our own number (the provider line) in the conversation.
    pub line_number: Option<String>,
    pub content: Option<String>,
    pub media_url: Option<String>,
    pub service: Option<Service>,
    pub group_id: Option<String>,
    pub participants: Vec<String>,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    pub was_downgraded: Option<bool>,
    pub opted_out: Option<bool>,
    #[serde(with = "rfc3339_opt")]
    pub occurred_at: Option<DateTime<Utc>>,
    #[serde(with = "rfc3339")]
    pub received_at: DateTime<Utc>,
    /// The request body exactly as received (the bytes that were verified), unknown fields
    /// and all.
    pub raw_body: String,
    /// The request's Content-Type, as the provider sent it (what a `raw` destination gets).
    #[serde(default)]
    pub raw_content_type: Option<String>,
}

impl Event {
    /// A bare event of `kind` for `key`; providers fill in the rest.
    pub fn new(
        source: &str,
        provider: &str,
        kind: EventKind,
        idempotency_key: String,
        received_at: DateTime<Utc>,
        raw_body: String,
    ) -> Event {
        Event {
            schema_version: SCHEMA_VERSION,
            id: event_id(&idempotency_key),
            idempotency_key,
            source: source.to_owned(),
            provider: provider.to_owned(),
            provider_event: None,
            kind,
            status: None,
            raw_status: None,
            direction: None,
            message_handle: None,
            from_number: None,
            to_number: None,
            contact_number: None,
            line_number: None,
            content: None,
            media_url: None,
            service: None,
            group_id: None,
            participants: Vec::new(),
            error_code: None,
            error_message: None,
            was_downgraded: None,
            opted_out: None,
            occurred_at: None,
            received_at: truncate_to_millis(received_at),
            raw_body,
            raw_content_type: None,
        }
    }

    pub fn to_json(&self) -> String {
        // Serialising plain data with string keys cannot fail.
        serde_json::to_string(self).expect("an Event always serialises")
    }

    pub fn from_json(s: &str) -> Result<Event, serde_json::Error> {
        serde_json::from_str(s)
    }

    /// The events of a queue message: one event's JSON, or a JSON array of them (a pack: what
    /// the router sends a sink's SQS queue in one go, [`crate::queue::pack`]).
    pub fn all_from_json(s: &str) -> Result<Vec<Event>, serde_json::Error> {
        if crate::queue::is_pack(s) {
            serde_json::from_str(s)
        } else {
            Ok(vec![serde_json::from_str(s)?])
        }
    }
}

/// Times are kept (and serialised) to the millisecond, so that an event round-trips exactly.
pub fn truncate_to_millis(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(t.timestamp_millis()).unwrap_or(t)
}

/// `evt_` + 32 hex digits of SHA-256 over the idempotency key.
pub fn event_id(idempotency_key: &str) -> String {
    let digest = Sha256::digest(idempotency_key.as_bytes());
    let mut id = String::with_capacity(36);
    id.push_str("evt_");
    id.push_str(&hex::encode(&digest[..16]));
    id
}

/// Hex SHA-256 of a body, the idempotency key of payloads without an id of their own.
pub fn body_digest(body: &[u8]) -> String {
    hex::encode(Sha256::digest(body))
}

mod rfc3339 {
    use super::*;
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&t.to_rfc3339_opts(SecondsFormat::Millis, true))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        DateTime::parse_from_rfc3339(&s)
            .map(|t| t.with_timezone(&Utc))
            .map_err(serde::de::Error::custom)
    }
}

mod rfc3339_opt {
    use super::*;
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => super::rfc3339::serialize(t, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<DateTime<Utc>>, D::Error> {
        let s = <Option<std::borrow::Cow<'de, str>>>::deserialize(d)?;
        s.map(|s| {
            DateTime::parse_from_rfc3339(&s)
                .map(|t| t.with_timezone(&Utc))
                .map_err(serde::de::Error::custom)
        })
        .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn full_event() -> Event {
        let received = Utc.with_ymd_and_hms(2025, 12, 12, 15, 41, 21).unwrap();
        let mut e = Event::new(
            "sendblue",
            "sendblue",
            EventKind::MessageStatus,
            "sendblue:msg:abc:DELIVERED".into(),
            received,
            "{\"a\":\n 1}".into(),
        );
        e.provider_event = Some("outbound".into());
        e.status = Some(MessageStatus::Delivered);
        e.raw_status = Some("DELIVERED".into());
        e.direction = Some(Direction::Outbound);
        e.message_handle = Some("abc".into());
        e.from_number = Some("+15550001111".into());
        e.to_number = Some("+15550002222".into());
        e.contact_number = Some("+15550002222".into());
        e.line_number = Some("+15550001111".into());
        e.content = Some("héllo \"world\"\n".into());
        e.media_url = Some("https://cdn.example/x.caf".into());
        e.service = Some(Service::IMessage);
        e.group_id = Some("g1".into());
        e.participants = vec!["+1".into(), "+2".into()];
        e.error_code = Some("4001".into());
        e.error_message = Some("rate limit".into());
        e.was_downgraded = Some(false);
        e.opted_out = Some(true);
        e.occurred_at = Some(Utc.with_ymd_and_hms(2025, 12, 12, 15, 41, 20).unwrap());
        e
    }

    #[test]
    fn json_round_trips_every_field() {
        let e = full_event();
        let json = e.to_json();
        assert!(!json.contains('\n'), "one event is one NDJSON line: {json}");
        assert_eq!(Event::from_json(&json).unwrap(), e);
    }

    #[test]
    fn json_layout_is_stable() {
        let e = full_event();
        let v: serde_json::Value = serde_json::from_str(&e.to_json()).unwrap();
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        let mut expected = vec![
            "schema_version",
            "id",
            "idempotency_key",
            "source",
            "provider",
            "provider_event",
            "kind",
            "status",
            "raw_status",
            "direction",
            "message_handle",
            "from_number",
            "to_number",
            "contact_number",
            "line_number",
            "content",
            "media_url",
            "service",
            "group_id",
            "participants",
            "error_code",
            "error_message",
            "was_downgraded",
            "opted_out",
            "occurred_at",
            "received_at",
            "raw_body",
            "raw_content_type",
        ];
        let mut got = keys.clone();
        got.sort_unstable();
        expected.sort_unstable();
        assert_eq!(got, expected);
        assert_eq!(v["kind"], "message.status");
        assert_eq!(v["status"], "delivered");
        assert_eq!(v["service"], "iMessage");
        assert_eq!(v["direction"], "outbound");
        assert_eq!(v["received_at"], "2025-12-12T15:41:21.000Z");
        assert_eq!(v["id"], event_id("sendblue:msg:abc:DELIVERED"));
    }

    #[test]
    fn empty_event_keeps_every_key_as_null() {
        let e = Event::new(
            "s",
            "p",
            EventKind::Unknown,
            "k".into(),
            Utc::now(),
            "{}".into(),
        );
        let v: serde_json::Value = serde_json::from_str(&e.to_json()).unwrap();
        assert!(v["status"].is_null());
        assert!(v["occurred_at"].is_null());
        assert_eq!(v["participants"], serde_json::json!([]));
        assert_eq!(Event::from_json(&e.to_json()).unwrap(), e);
    }

    #[test]
    fn event_id_is_stable_and_distinct() {
        assert_eq!(event_id("a"), event_id("a"));
        assert_ne!(event_id("a"), event_id("b"));
        assert_eq!(event_id("a").len(), 36);
    }
}
