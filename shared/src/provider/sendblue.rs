//! Sendblue: a shared secret in `sb-signing-secret` (not an HMAC), seven webhook types, one
//! JSON object per delivery.

use chrono::{DateTime, Utc};
use serde::de::{Deserializer, IgnoredAny};
use serde::Deserialize;

use super::{
    matches_any_secret, single_header, AuthError, ParseError, Parsed, Provider, SampleOptions,
    SampleRequest, Settings, WebhookRequest,
};
use crate::config::{ConfigError, Secret};
use crate::event::{
    body_digest, truncate_to_millis, Direction, Event, EventKind, MessageStatus, Service,
};

pub const NAME: &str = "sendblue";
pub const SIGNATURE_HEADER: &str = "sb-signing-secret";

/// The seven webhook types, as Sendblue names them (and as the `{type}` path segment).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookType {
    Receive,
    Outbound,
    TypingIndicator,
    CallLog,
    LineBlocked,
    LineAssigned,
    ContactCreated,
}

impl WebhookType {
    pub const ALL: [WebhookType; 7] = [
        WebhookType::Receive,
        WebhookType::Outbound,
        WebhookType::TypingIndicator,
        WebhookType::CallLog,
        WebhookType::LineBlocked,
        WebhookType::LineAssigned,
        WebhookType::ContactCreated,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            WebhookType::Receive => "receive",
            WebhookType::Outbound => "outbound",
            WebhookType::TypingIndicator => "typing_indicator",
            WebhookType::CallLog => "call_log",
            WebhookType::LineBlocked => "line_blocked",
            WebhookType::LineAssigned => "line_assigned",
            WebhookType::ContactCreated => "contact_created",
        }
    }

    pub fn parse(s: &str) -> Option<WebhookType> {
        WebhookType::ALL.into_iter().find(|t| t.as_str() == s)
    }

    fn kind(self) -> EventKind {
        match self {
            WebhookType::Receive => EventKind::MessageReceived,
            WebhookType::Outbound => EventKind::MessageStatus,
            WebhookType::TypingIndicator => EventKind::Typing,
            WebhookType::CallLog => EventKind::CallLog,
            WebhookType::LineBlocked => EventKind::LineBlocked,
            WebhookType::LineAssigned => EventKind::LineAssigned,
            WebhookType::ContactCreated => EventKind::ContactCreated,
        }
    }
}

/// Sendblue statuses across its doc versions, onto the canonical set.
pub fn normalise_status(raw: &str) -> MessageStatus {
    match raw.trim().to_ascii_uppercase().as_str() {
        "REGISTERED" | "PENDING" | "QUEUED" => MessageStatus::Queued,
        "ACCEPTED" => MessageStatus::Accepted,
        "SENDING" => MessageStatus::Sending,
        // SUCCESS is the older docs' word for a send that went out.
        "SENT" | "SUCCESS" => MessageStatus::Sent,
        "DELIVERED" => MessageStatus::Delivered,
        "READ" => MessageStatus::Read,
        "ERROR" | "FAILED" => MessageStatus::Failed,
        "RECEIVED" => MessageStatus::Received,
        "DECLINED" => MessageStatus::Declined,
        "CANCELED" | "CANCELLED" => MessageStatus::Canceled,
        _ => MessageStatus::Unknown,
    }
}

#[derive(Debug)]
pub struct Sendblue {
    secrets: Vec<Secret>,
    /// Whether a delivery without the header is refused (per-message status callbacks may not
    /// carry it; on by default).
    require_signature: bool,
}

impl Sendblue {
    pub fn new(secrets: Vec<Secret>, require_signature: bool) -> Sendblue {
        Sendblue {
            secrets,
            require_signature,
        }
    }

    pub fn from_settings(
        settings: Settings<'_>,
        secrets: Vec<Secret>,
    ) -> Result<Sendblue, ConfigError> {
        let require_signature = settings.bool("require_signature")?.unwrap_or(true);
        settings.finish()?;
        Ok(Sendblue::new(secrets, require_signature))
    }
}

impl Provider for Sendblue {
    fn name(&self) -> &'static str {
        NAME
    }

    fn verify(&self, req: &WebhookRequest<'_>) -> Result<(), AuthError> {
        let presented = match single_header(req.headers, SIGNATURE_HEADER) {
            Ok(v) => v,
            Err(AuthError::MissingSignature) if !self.require_signature => return Ok(()),
            Err(e) => return Err(e),
        };
        if self.secrets.is_empty() {
            return Err(AuthError::NoSecrets);
        }
        if matches_any_secret(presented, &self.secrets) {
            Ok(())
        } else {
            Err(AuthError::BadSignature)
        }
    }

    fn parse(&self, req: &WebhookRequest<'_>) -> Result<Parsed, ParseError> {
        Ok(Parsed::Events(vec![parse_event(req)?]))
    }

    fn sample(
        &self,
        event: &str,
        opts: &SampleOptions,
        url: &str,
    ) -> Result<SampleRequest, String> {
        let secret = self
            .secrets
            .first()
            .ok_or("the source has no secret to sign with")?;
        let kind = WebhookType::parse(event).ok_or_else(|| {
            format!(
                "unknown Sendblue event `{event}`; known: {}",
                SAMPLE_EVENTS.join(", ")
            )
        })?;
        let body = serde_json::to_vec_pretty(&sample_body(kind, opts)).expect("serialises");
        Ok(SampleRequest {
            url: super::with_type_segment(url, kind.as_str()),
            content_type: "application/json",
            headers: vec![(SIGNATURE_HEADER.to_owned(), secret.expose().to_owned())],
            body,
        })
    }
}

/// The fields bluehook reads; everything else stays in `raw_body`. Each field tolerates the
/// value types seen across Sendblue's doc versions (a number where a string was expected, ...).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Body {
    #[serde(deserialize_with = "lenient_string")]
    content: Option<String>,
    #[serde(deserialize_with = "lenient_bool")]
    is_outbound: Option<bool>,
    #[serde(deserialize_with = "lenient_string")]
    status: Option<String>,
    #[serde(deserialize_with = "lenient_string")]
    error_code: Option<String>,
    #[serde(deserialize_with = "lenient_string")]
    error_message: Option<String>,
    #[serde(deserialize_with = "lenient_string")]
    error_reason: Option<String>,
    #[serde(deserialize_with = "lenient_string")]
    message_handle: Option<String>,
    /// Older status callbacks name the message `message_id`.
    #[serde(deserialize_with = "lenient_string")]
    message_id: Option<String>,
    #[serde(deserialize_with = "lenient_string")]
    date_sent: Option<String>,
    #[serde(deserialize_with = "lenient_string")]
    date_updated: Option<String>,
    #[serde(deserialize_with = "lenient_string")]
    from_number: Option<String>,
    #[serde(deserialize_with = "lenient_string")]
    number: Option<String>,
    #[serde(deserialize_with = "lenient_string")]
    to_number: Option<String>,
    #[serde(deserialize_with = "lenient_bool")]
    was_downgraded: Option<bool>,
    #[serde(deserialize_with = "lenient_string")]
    media_url: Option<String>,
    #[serde(deserialize_with = "lenient_string")]
    group_id: Option<String>,
    #[serde(deserialize_with = "lenient_strings")]
    participants: Vec<String>,
    #[serde(deserialize_with = "lenient_bool")]
    opted_out: Option<bool>,
    #[serde(deserialize_with = "lenient_string")]
    sendblue_number: Option<String>,
    #[serde(deserialize_with = "lenient_string")]
    service: Option<String>,
    // typing_indicator
    #[serde(deserialize_with = "lenient_bool")]
    is_typing: Option<bool>,
    #[serde(deserialize_with = "lenient_string")]
    timestamp: Option<String>,
    // call_log
    #[serde(deserialize_with = "lenient_string")]
    event_type: Option<String>,
    #[serde(deserialize_with = "lenient_string")]
    call_id: Option<String>,
    #[serde(deserialize_with = "lenient_string")]
    direction: Option<String>,
    #[serde(deserialize_with = "lenient_string")]
    created_at: Option<String>,
}

/// Turns one verified Sendblue body into its event.
pub fn parse_event(req: &WebhookRequest<'_>) -> Result<Event, ParseError> {
    let raw_body = std::str::from_utf8(req.body)
        .map_err(|e| ParseError::NotJson(format!("not UTF-8: {e}")))?;
    // Only an object is a Sendblue payload (serde would also read an array into the struct).
    let body = if raw_body.trim_start().starts_with('{') {
        serde_json::from_str::<Body>(raw_body).ok()
    } else {
        None
    };
    let Some(body) = body else {
        // Verified JSON of another shape is kept whole as an unknown event.
        if let Err(e) = serde_json::from_str::<IgnoredAny>(raw_body) {
            return Err(ParseError::NotJson(e.to_string()));
        }
        let mut ev = unknown_event(req, raw_body);
        ev.provider_event = req.type_hint.map(str::to_owned);
        return Ok(ev);
    };

    let hinted = req.type_hint.and_then(WebhookType::parse);
    let Some(kind) = hinted.or_else(|| infer_type(&body)) else {
        let mut ev = unknown_event(req, raw_body);
        ev.provider_event = req.type_hint.map(str::to_owned);
        return Ok(ev);
    };

    let key = idempotency_key(req.source, kind, &body, req.body);
    let mut ev = Event::new(
        req.source,
        NAME,
        kind.kind(),
        key,
        req.received_at,
        raw_body.to_owned(),
    );
    ev.provider_event = Some(kind.as_str().to_owned());
    fill_common(&mut ev, kind, body);
    Ok(ev)
}

fn unknown_event(req: &WebhookRequest<'_>, raw_body: &str) -> Event {
    let key = format!("{}:body:{}", req.source, body_digest(req.body));
    Event::new(
        req.source,
        NAME,
        EventKind::Unknown,
        key,
        req.received_at,
        raw_body.to_owned(),
    )
}

/// The type of a body that arrived without a `{type}` path segment.
fn infer_type(b: &Body) -> Option<WebhookType> {
    if b.event_type.as_deref() == Some("call_log") || b.call_id.is_some() {
        return Some(WebhookType::CallLog);
    }
    if b.is_typing.is_some() {
        return Some(WebhookType::TypingIndicator);
    }
    match b.is_outbound {
        Some(true) => return Some(WebhookType::Outbound),
        Some(false) => return Some(WebhookType::Receive),
        None => {}
    }
    if let Some(status) = &b.status {
        return Some(if normalise_status(status) == MessageStatus::Received {
            WebhookType::Receive
        } else {
            WebhookType::Outbound
        });
    }
    if b.message_handle.is_some() || b.content.is_some() {
        return Some(WebhookType::Receive);
    }
    None
}

/// Keys as the product defines them: a message event is (source, handle, status), never the
/// handle alone, since one message reports SENT, DELIVERED and READ under one handle.
fn idempotency_key(source: &str, kind: WebhookType, b: &Body, raw: &[u8]) -> String {
    match kind {
        WebhookType::Receive | WebhookType::Outbound => {
            let handle = b.message_handle.as_deref().or(b.message_id.as_deref());
            match handle {
                Some(h) if !h.is_empty() => {
                    let status = match (&b.status, kind) {
                        (Some(s), _) => s.trim().to_ascii_uppercase(),
                        (None, WebhookType::Receive) => "RECEIVED".to_owned(),
                        (None, _) => String::new(),
                    };
                    format!("{source}:msg:{h}:{status}")
                }
                _ => format!("{source}:body:{}", body_digest(raw)),
            }
        }
        WebhookType::TypingIndicator => format!(
            "{source}:typing:{}:{}:{}",
            b.number
                .as_deref()
                .or(b.from_number.as_deref())
                .unwrap_or(""),
            b.is_typing.unwrap_or(false),
            b.timestamp.as_deref().unwrap_or("")
        ),
        WebhookType::CallLog => match b.call_id.as_deref() {
            Some(id) if !id.is_empty() => format!("{source}:call:{id}"),
            _ => format!("{source}:body:{}", body_digest(raw)),
        },
        WebhookType::LineBlocked | WebhookType::LineAssigned | WebhookType::ContactCreated => {
            format!("{source}:body:{}", body_digest(raw))
        }
    }
}

fn fill_common(ev: &mut Event, kind: WebhookType, b: Body) {
    let direction = match kind {
        WebhookType::Receive => Some(Direction::Inbound),
        WebhookType::Outbound => Some(Direction::Outbound),
        WebhookType::CallLog => match b.direction.as_deref() {
            Some("inbound") => Some(Direction::Inbound),
            Some("outbound") => Some(Direction::Outbound),
            _ => None,
        },
        _ => b.is_outbound.map(|o| {
            if o {
                Direction::Outbound
            } else {
                Direction::Inbound
            }
        }),
    };
    ev.direction = direction;
    if matches!(kind, WebhookType::Receive | WebhookType::Outbound) {
        let raw_status = b
            .status
            .clone()
            .or_else(|| (kind == WebhookType::Receive).then(|| "RECEIVED".to_owned()));
        ev.status = raw_status.as_deref().map(normalise_status);
        ev.raw_status = b.status;
    } else {
        // Call statuses (COMPLETED, ...) are not message statuses: kept raw only.
        ev.raw_status = b.status;
    }
    ev.message_handle = non_empty(b.message_handle).or(non_empty(b.message_id));
    ev.contact_number = non_empty(b.number.clone());
    ev.line_number = non_empty(b.sendblue_number).or_else(|| match direction {
        Some(Direction::Inbound) => b.to_number.clone(),
        Some(Direction::Outbound) => b.from_number.clone(),
        None => None,
    });
    if ev.contact_number.is_none() {
        ev.contact_number = match direction {
            Some(Direction::Inbound) => b.from_number.clone(),
            Some(Direction::Outbound) => b.to_number.clone(),
            None => None,
        };
    }
    ev.from_number = non_empty(b.from_number);
    ev.to_number = non_empty(b.to_number);
    ev.content = b.content;
    ev.media_url = non_empty(b.media_url);
    ev.service = b.service.as_deref().and_then(Service::parse);
    ev.group_id = non_empty(b.group_id);
    ev.participants = b.participants;
    ev.error_code = b.error_code;
    ev.error_message = b.error_message.or(b.error_reason);
    ev.was_downgraded = b.was_downgraded;
    ev.opted_out = b.opted_out;
    ev.occurred_at = [&b.date_updated, &b.date_sent, &b.timestamp, &b.created_at]
        .into_iter()
        .find_map(|t| t.as_deref().and_then(parse_time))
        .map(truncate_to_millis);
}

fn non_empty(s: Option<String>) -> Option<String> {
    s.filter(|s| !s.is_empty())
}

/// RFC 3339, or Unix seconds / milliseconds.
fn parse_time(s: &str) -> Option<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.with_timezone(&Utc));
    }
    let n: i64 = s.parse().ok()?;
    if n > 100_000_000_000 {
        DateTime::from_timestamp_millis(n)
    } else {
        DateTime::from_timestamp(n, 0)
    }
}

fn lenient_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(match serde_json::Value::deserialize(d)? {
        serde_json::Value::Null => None,
        serde_json::Value::String(s) => Some(s),
        serde_json::Value::Number(n) => Some(n.to_string()),
        serde_json::Value::Bool(b) => Some(b.to_string()),
        _ => None,
    })
}

fn lenient_bool<'de, D: Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
    Ok(match serde_json::Value::deserialize(d)? {
        serde_json::Value::Bool(b) => Some(b),
        serde_json::Value::String(s) => match s.as_str() {
            "true" => Some(true),
            "false" => Some(false),
            _ => None,
        },
        _ => None,
    })
}

fn lenient_strings<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    Ok(match serde_json::Value::deserialize(d)? {
        serde_json::Value::Array(items) => items
            .into_iter()
            .filter_map(|v| match v {
                serde_json::Value::String(s) => Some(s),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    })
}

/// The `{type}`s `bluehook send sendblue.<type>` knows.
pub const SAMPLE_EVENTS: &[&str] = &[
    "receive",
    "outbound",
    "typing_indicator",
    "call_log",
    "line_blocked",
    "line_assigned",
    "contact_created",
];

/// A sample body for `kind`, based on the payloads in Sendblue's webhook reference, with
/// fresh handles and times so that each send is a new event unless a handle is given.
pub fn sample_body(kind: WebhookType, opts: &SampleOptions) -> serde_json::Value {
    let now = Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let handle = opts
        .handle
        .clone()
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let mut v: serde_json::Value = match kind {
        WebhookType::Receive => {
            serde_json::from_str(include_str!("../../testdata/sendblue/receive.json"))
        }
        WebhookType::Outbound => {
            serde_json::from_str(include_str!("../../testdata/sendblue/outbound.json"))
        }
        WebhookType::TypingIndicator => serde_json::from_str(include_str!(
            "../../testdata/sendblue/typing_indicator.json"
        )),
        WebhookType::CallLog => {
            serde_json::from_str(include_str!("../../testdata/sendblue/call_log.json"))
        }
        // Not public: an illustrative object, which the receiver keeps whole whatever it holds.
        WebhookType::LineBlocked | WebhookType::LineAssigned | WebhookType::ContactCreated => {
            Ok(serde_json::json!({
                "number": "+19998887777",
                "sendblue_number": "+15122164639",
                "sample_id": handle.clone(),
            }))
        }
    }
    .expect("bundled samples are valid JSON");
    let obj = v.as_object_mut().expect("samples are objects");
    match kind {
        WebhookType::Receive | WebhookType::Outbound => {
            obj.insert("message_handle".into(), handle.into());
            obj.insert("date_sent".into(), now.clone().into());
            obj.insert("date_updated".into(), now.into());
            if let Some(s) = &opts.status {
                obj.insert("status".into(), s.clone().into());
            }
            if let Some(c) = &opts.content {
                obj.insert("content".into(), c.clone().into());
            }
        }
        WebhookType::TypingIndicator => {
            obj.insert("timestamp".into(), now.into());
        }
        WebhookType::CallLog => {
            obj.insert("call_id".into(), format!("cs_{handle}").into());
            obj.insert("created_at".into(), now.into());
            if let Some(s) = &opts.status {
                obj.insert("status".into(), s.clone().into());
            }
        }
        _ => {}
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderMap;

    const RECEIVE: &str = include_str!("../../testdata/sendblue/receive.json");
    const OUTBOUND: &str = include_str!("../../testdata/sendblue/outbound.json");
    const CALL_LOG: &str = include_str!("../../testdata/sendblue/call_log.json");
    const TYPING: &str = include_str!("../../testdata/sendblue/typing_indicator.json");
    const LEGACY_STATUS: &str = include_str!("../../testdata/sendblue/status_callback_legacy.json");
    const LEGACY_INCOMING: &str = include_str!("../../testdata/sendblue/incoming_legacy.json");

    fn headers(secret: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(s) = secret {
            h.insert(SIGNATURE_HEADER, s.parse().unwrap());
        }
        h
    }

    fn req<'a>(h: &'a HeaderMap, body: &'a str, hint: Option<&'a str>) -> WebhookRequest<'a> {
        WebhookRequest {
            source: "sb",
            type_hint: hint,
            headers: h,
            query: None,
            body: body.as_bytes(),
            received_at: Utc::now(),
        }
    }

    fn parse(body: &str, hint: Option<&str>) -> Event {
        let h = headers(None);
        parse_event(&req(&h, body, hint)).unwrap()
    }

    #[test]
    fn verification_valid_wrong_missing_rotated_empty() {
        let p = Sendblue::new(vec![Secret::new("old-one"), Secret::new("new-one")], true);
        let ok = headers(Some("new-one"));
        assert_eq!(p.verify(&req(&ok, "{}", None)), Ok(()));
        let rotated = headers(Some("old-one"));
        assert_eq!(p.verify(&req(&rotated, "{}", None)), Ok(()));
        let wrong = headers(Some("new-onf"));
        assert_eq!(
            p.verify(&req(&wrong, "{}", None)),
            Err(AuthError::BadSignature)
        );
        let prefix = headers(Some("new-on"));
        assert_eq!(
            p.verify(&req(&prefix, "{}", None)),
            Err(AuthError::BadSignature)
        );
        let missing = headers(None);
        assert_eq!(
            p.verify(&req(&missing, "{}", None)),
            Err(AuthError::MissingSignature)
        );
        let empty = Sendblue::new(vec![], true);
        assert_eq!(
            empty.verify(&req(&ok, "{}", None)),
            Err(AuthError::NoSecrets)
        );
        let mut dup = headers(Some("new-one"));
        dup.append(SIGNATURE_HEADER, "new-one".parse().unwrap());
        assert_eq!(
            p.verify(&req(&dup, "{}", None)),
            Err(AuthError::DuplicateHeader)
        );
    }

    #[test]
    fn optional_signature_still_rejects_a_wrong_one() {
        let p = Sendblue::new(vec![Secret::new("s3cret")], false);
        assert_eq!(p.verify(&req(&headers(None), "{}", None)), Ok(()));
        let wrong = headers(Some("nope"));
        assert_eq!(
            p.verify(&req(&wrong, "{}", None)),
            Err(AuthError::BadSignature)
        );
    }

    #[test]
    fn seed_inbound_payload_normalises() {
        for hint in [None, Some("receive")] {
            let e = parse(RECEIVE, hint);
            assert_eq!(e.kind, EventKind::MessageReceived);
            assert_eq!(e.provider_event.as_deref(), Some("receive"));
            assert_eq!(e.status, Some(MessageStatus::Received));
            assert_eq!(e.raw_status.as_deref(), Some("RECEIVED"));
            assert_eq!(e.direction, Some(Direction::Inbound));
            assert_eq!(
                e.message_handle.as_deref(),
                Some("99DCC379-DD76-4712-BA65-11EFB33B8CD6")
            );
            assert_eq!(e.contact_number.as_deref(), Some("+19998887777"));
            assert_eq!(e.line_number.as_deref(), Some("+15122164639"));
            assert_eq!(e.from_number.as_deref(), Some("+19998887777"));
            assert_eq!(e.to_number.as_deref(), Some("+15122164639"));
            assert_eq!(e.content.as_deref(), Some("Hello!"));
            assert_eq!(e.media_url, None);
            assert_eq!(e.group_id, None);
            assert_eq!(e.service, Some(Service::IMessage));
            assert_eq!(e.participants, vec!["+19998887777", "+15122164639"]);
            assert_eq!(e.opted_out, Some(false));
            assert_eq!(
                e.occurred_at.unwrap().to_rfc3339(),
                "2025-12-12T15:41:20.995+00:00"
            );
            assert_eq!(
                e.idempotency_key,
                "sb:msg:99DCC379-DD76-4712-BA65-11EFB33B8CD6:RECEIVED"
            );
            assert_eq!(e.raw_body, RECEIVE, "raw body kept byte for byte");
        }
    }

    #[test]
    fn seed_outbound_payload_normalises() {
        let e = parse(OUTBOUND, None);
        assert_eq!(e.kind, EventKind::MessageStatus);
        assert_eq!(e.provider_event.as_deref(), Some("outbound"));
        assert_eq!(e.status, Some(MessageStatus::Sent));
        assert_eq!(e.direction, Some(Direction::Outbound));
        assert_eq!(e.contact_number.as_deref(), Some("+19998887777"));
        assert_eq!(e.line_number.as_deref(), Some("+18649820355"));
        assert_eq!(e.content.as_deref(), Some("Hello world!"));
        assert_eq!(e.service, Some(Service::IMessage));
        assert!(e.participants.is_empty());
        assert_eq!(
            e.idempotency_key,
            "sb:msg:5a17319e-cbcf-443e-897e-d8b0c04b1b09:SENT"
        );
    }

    #[test]
    fn statuses_of_one_handle_are_distinct_events() {
        let sent = parse(OUTBOUND, Some("outbound"));
        let delivered = parse(
            &OUTBOUND.replace("\"SENT\"", "\"DELIVERED\""),
            Some("outbound"),
        );
        assert_ne!(sent.idempotency_key, delivered.idempotency_key);
        assert_ne!(sent.id, delivered.id);
        assert_eq!(delivered.status, Some(MessageStatus::Delivered));
        let again = parse(
            &OUTBOUND.replace("\"SENT\"", "\"DELIVERED\""),
            Some("outbound"),
        );
        assert_eq!(again.id, delivered.id, "same event, same id");
    }

    #[test]
    fn every_status_in_the_provider_facts_maps() {
        let table = [
            ("REGISTERED", MessageStatus::Queued),
            ("PENDING", MessageStatus::Queued),
            ("DECLINED", MessageStatus::Declined),
            ("QUEUED", MessageStatus::Queued),
            ("ACCEPTED", MessageStatus::Accepted),
            ("SENT", MessageStatus::Sent),
            ("DELIVERED", MessageStatus::Delivered),
            ("READ", MessageStatus::Read),
            ("ERROR", MessageStatus::Failed),
            ("RECEIVED", MessageStatus::Received),
            ("SUCCESS", MessageStatus::Sent),
            ("delivered", MessageStatus::Delivered),
            ("SOMETHING_NEW", MessageStatus::Unknown),
        ];
        for (raw, want) in table {
            assert_eq!(normalise_status(raw), want, "{raw}");
            let e = parse(&OUTBOUND.replace("\"SENT\"", &format!("\"{raw}\"")), None);
            assert_eq!(e.status, Some(want), "{raw}");
            assert_eq!(e.raw_status.as_deref(), Some(raw));
        }
    }

    #[test]
    fn error_payload_keeps_code_and_message() {
        let body = OUTBOUND
            .replace("\"SENT\"", "\"ERROR\"")
            .replace("\"error_code\": null", "\"error_code\": 10001")
            .replace(
                "\"error_message\": null",
                "\"error_message\": \"failed to send\"",
            );
        let e = parse(&body, Some("outbound"));
        assert_eq!(e.status, Some(MessageStatus::Failed));
        assert_eq!(e.error_code.as_deref(), Some("10001"));
        assert_eq!(e.error_message.as_deref(), Some("failed to send"));
    }

    #[test]
    fn call_log_typing_and_opaque_types() {
        let c = parse(CALL_LOG, None);
        assert_eq!(c.kind, EventKind::CallLog);
        assert_eq!(c.idempotency_key, "sb:call:cs_abc123def456");
        assert_eq!(c.direction, Some(Direction::Inbound));
        assert_eq!(c.raw_status.as_deref(), Some("COMPLETED"));
        assert_eq!(c.status, None);
        assert_eq!(
            c.occurred_at.unwrap().to_rfc3339(),
            "2026-02-07T12:00:00+00:00"
        );

        let t = parse(TYPING, None);
        assert_eq!(t.kind, EventKind::Typing);
        assert_eq!(
            t.idempotency_key,
            "sb:typing:+19998887777:true:2025-12-12T15:41:19.000Z"
        );
        let stopped = parse(&TYPING.replace("true", "false"), Some("typing_indicator"));
        assert_ne!(stopped.idempotency_key, t.idempotency_key);

        for (hint, kind) in [
            ("line_blocked", EventKind::LineBlocked),
            ("line_assigned", EventKind::LineAssigned),
            ("contact_created", EventKind::ContactCreated),
        ] {
            let body = r#"{"whatever": {"nested": [1, 2]}, "number": "+1555"}"#;
            let e = parse(body, Some(hint));
            assert_eq!(e.kind, kind);
            assert_eq!(
                e.idempotency_key,
                format!("sb:body:{}", body_digest(body.as_bytes()))
            );
            assert_eq!(e.raw_body, body);
        }
    }

    #[test]
    fn older_payload_shapes_normalise() {
        let s = parse(LEGACY_STATUS, None);
        assert_eq!(s.kind, EventKind::MessageStatus);
        assert_eq!(s.status, Some(MessageStatus::Delivered));
        assert_eq!(s.message_handle.as_deref(), Some("msg_abc123"));
        assert_eq!(s.idempotency_key, "sb:msg:msg_abc123:DELIVERED");

        let i = parse(LEGACY_INCOMING, None);
        assert_eq!(i.kind, EventKind::MessageReceived);
        assert_eq!(i.status, Some(MessageStatus::Received));
        assert_eq!(i.contact_number.as_deref(), Some("+19998887777"));
        assert!(i.idempotency_key.starts_with("sb:body:"));
    }

    #[test]
    fn unrecognised_shapes_are_unknown_events_kept_whole() {
        for body in [r#"{"hello": "world"}"#, "[1,2,3]", "42", "\"text\""] {
            let e = parse(body, None);
            assert_eq!(e.kind, EventKind::Unknown, "{body}");
            assert_eq!(e.raw_body, body);
        }
        let e = parse(r#"{"x": 1}"#, Some("not_a_type"));
        assert_eq!(e.kind, EventKind::Unknown);
        assert_eq!(e.provider_event.as_deref(), Some("not_a_type"));
    }

    #[test]
    fn not_json_is_a_parse_error() {
        let h = headers(None);
        for body in ["not json", "{\"a\":", ""] {
            assert!(parse_event(&req(&h, body, None)).is_err(), "{body}");
        }
        let bad_utf8 = [b'{', 0xff, b'}'];
        let r = WebhookRequest {
            body: &bad_utf8,
            ..req(&h, "", None)
        };
        assert!(parse_event(&r).is_err());
    }

    #[test]
    fn lenient_field_types() {
        let body = r#"{"is_outbound": "true", "status": "DELIVERED", "message_handle": 12345,
            "participants": null, "error_code": 4001, "service": "SMS", "extra": {"k": [1]}}"#;
        let e = parse(body, None);
        assert_eq!(e.kind, EventKind::MessageStatus);
        assert_eq!(e.message_handle.as_deref(), Some("12345"));
        assert_eq!(e.error_code.as_deref(), Some("4001"));
        assert_eq!(e.service, Some(Service::Sms));
    }

    #[test]
    fn samples_verify_and_parse_as_their_type() {
        let secret = Secret::new("sample-secret");
        let p = Sendblue::new(vec![secret.clone()], true);
        for name in SAMPLE_EVENTS {
            let s = p
                .sample(name, &SampleOptions::default(), "http://h/webhooks/sb")
                .unwrap();
            let mut h = HeaderMap::new();
            for (k, v) in &s.headers {
                h.insert(
                    http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    v.parse().unwrap(),
                );
            }
            let body = String::from_utf8(s.body.clone()).unwrap();
            assert_eq!(s.url, format!("http://h/webhooks/sb/{name}"));
            let hint = Some(*name);
            let r = req(&h, &body, hint);
            p.verify(&r).unwrap();
            let Parsed::Events(evs) = p.parse(&r).unwrap() else {
                panic!("{name}: not an event")
            };
            assert_eq!(evs[0].provider_event.as_deref(), Some(*name));
            assert_ne!(evs[0].kind, EventKind::Unknown, "{name}");
        }
        let opts = SampleOptions {
            status: Some("READ".into()),
            handle: Some("h-1".into()),
            content: Some("hi there".into()),
        };
        let s = p.sample("outbound", &opts, "http://h/x").unwrap();
        let h = headers(None);
        let body = String::from_utf8(s.body).unwrap();
        let e = parse_event(&req(&h, &body, Some("outbound"))).unwrap();
        assert_eq!(e.idempotency_key, "sb:msg:h-1:READ");
        assert_eq!(e.content.as_deref(), Some("hi there"));
        assert!(p.sample("nope", &opts, "http://h/x").is_err());
    }
}
