//! Blue Replies: `x-bluereplies-signature` is the hex HMAC-SHA256 of the raw body under the
//! webhook secret (verified over the bytes received, never a re-serialisation). Envelope
//! `{type, eventId, data}`; `eventId` is the idempotency key. A registration ping is answered
//! 200 at once and never queued.

use serde_json::Value;

use super::generic::{self, Profile};
use super::signing::{any_mac_matches, Algorithm, Encoding};
use super::{
    signature_header, AuthError, ParseError, Parsed, Provider, SampleOptions, SampleRequest,
    Settings, WebhookRequest,
};
use crate::config::{ConfigError, Secret};
use crate::event::{EventKind, MessageStatus, Service};

pub const NAME: &str = "bluereplies";
pub const SIGNATURE_HEADER: &str = "x-bluereplies-signature";
pub const SAMPLE_EVENTS: &[&str] = &["sent", "delivered", "read", "failed", "received", "ping"];

/// `type` values of a registration or test ping (the exact word is not published).
const PING_TYPES: &[&str] = &[
    "ping",
    "webhook.ping",
    "webhook.verification",
    "verification",
    "webhook.test",
    "test",
];

#[derive(Debug)]
pub struct BlueReplies {
    keys: Vec<Vec<u8>>,
}

impl BlueReplies {
    pub fn new(secrets: &[Secret]) -> BlueReplies {
        BlueReplies {
            keys: secrets
                .iter()
                .map(|s| s.expose().as_bytes().to_vec())
                .collect(),
        }
    }

    pub fn from_settings(
        settings: Settings<'_>,
        secrets: Vec<Secret>,
    ) -> Result<BlueReplies, ConfigError> {
        settings.finish()?;
        Ok(BlueReplies::new(&secrets))
    }
}

/// The hex signature of `body` under `secret`.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    Encoding::Hex.encode(&Algorithm::Sha256.mac(secret, &[body]))
}

fn is_ping(body: &[u8]) -> bool {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => {
            let ty = m
                .get("type")
                .and_then(Value::as_str)
                .map(str::to_ascii_lowercase);
            match ty {
                Some(t) => PING_TYPES.contains(&t.as_str()),
                None => m.is_empty() || (!m.contains_key("data") && !m.contains_key("eventId")),
            }
        }
        _ => body.iter().all(u8::is_ascii_whitespace),
    }
}

impl Provider for BlueReplies {
    fn name(&self) -> &'static str {
        NAME
    }

    fn verify(&self, req: &WebhookRequest<'_>) -> Result<(), AuthError> {
        let presented =
            signature_header(req.headers, SIGNATURE_HEADER, !self.keys.is_empty(), |s| {
                Encoding::Hex.decode(s.strip_prefix("sha256=").unwrap_or(s))
            })?;
        if any_mac_matches(Algorithm::Sha256, &self.keys, &[req.body], &[presented]) {
            Ok(())
        } else {
            Err(AuthError::BadSignature)
        }
    }

    fn is_unsigned_ping(&self, req: &WebhookRequest<'_>) -> bool {
        req.headers.get(SIGNATURE_HEADER).is_none() && is_ping(req.body)
    }

    fn parse(&self, req: &WebhookRequest<'_>) -> Result<Parsed, ParseError> {
        if is_ping(req.body) {
            // Valid JSON (or empty): a ping, answered and not queued.
            return Ok(Parsed::Ping);
        }
        let mut ev = generic::parse_event(
            req,
            &Profile {
                provider: NAME,
                delivery_id: None,
                default_service: Some(Service::IMessage),
            },
        )?;
        // `message.sent` means accepted by Blue Replies and queued for delivery.
        if ev.provider_event.as_deref() == Some("message.sent") {
            ev.status = Some(MessageStatus::Sent);
        }
        if ev.kind == EventKind::MessageReceived {
            ev.status = Some(MessageStatus::Received);
        }
        Ok(Parsed::Events(vec![ev]))
    }

    fn sample(
        &self,
        event: &str,
        opts: &SampleOptions,
        url: &str,
    ) -> Result<SampleRequest, String> {
        let key = self
            .keys
            .first()
            .ok_or("the source has no secret to sign with")?;
        let body = if event == "ping" {
            serde_json::json!({"type": "ping"})
        } else {
            if !SAMPLE_EVENTS.contains(&event) {
                return Err(format!(
                    "unknown Blue Replies event `{event}`; known: {}",
                    SAMPLE_EVENTS.join(", ")
                ));
            }
            let message_id = opts
                .handle
                .clone()
                .unwrap_or_else(|| format!("msg_{}", uuid::Uuid::new_v4().simple()));
            let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
            let mut data = serde_json::json!({"messageId": message_id, "timestamp": now});
            match event {
                "received" => {
                    data["from"] = "+19998887777".into();
                    data["to"] = "+15122164639".into();
                    data["body"] = opts
                        .content
                        .clone()
                        .unwrap_or_else(|| "Can we move the call to 3pm?".into())
                        .into();
                }
                "read" => data["readAt"] = now.into(),
                "failed" => {
                    data["error"] = serde_json::json!({"code": "UNDELIVERABLE", "message": "Recipient unreachable on iMessage"})
                }
                _ => {}
            }
            if event != "received" {
                data["to"] = "+19998887777".into();
                if let Some(c) = &opts.content {
                    data["body"] = c.clone().into();
                }
            }
            serde_json::json!({
                "type": format!("message.{event}"),
                "eventId": format!("evt_{}", uuid::Uuid::new_v4().simple()),
                "data": data,
            })
        };
        let body = serde_json::to_vec(&body).expect("serialises");
        Ok(SampleRequest {
            url: url.to_owned(),
            content_type: "application/json",
            headers: vec![(SIGNATURE_HEADER.to_owned(), sign(key, &body))],
            body,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Direction;
    use chrono::Utc;
    use http::HeaderMap;

    const DELIVERED: &str = r#"{"type":"message.delivered","eventId":"evt_123","data":{"messageId":"msg_9","to":"+19998887777"}}"#;

    fn req<'a>(h: &'a HeaderMap, body: &'a [u8]) -> WebhookRequest<'a> {
        WebhookRequest {
            source: "br",
            type_hint: None,
            headers: h,
            query: None,
            body,
            received_at: Utc::now(),
        }
    }

    fn signed(secret: &str, body: &[u8]) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            SIGNATURE_HEADER,
            sign(secret.as_bytes(), body).parse().unwrap(),
        );
        h
    }

    #[test]
    fn verifies_raw_bytes_not_a_reserialisation() {
        let p = BlueReplies::new(&[Secret::new("old"), Secret::new("br-secret")]);
        // Odd whitespace and key order: re-serialising would change the bytes.
        let body = b"{ \"eventId\" : \"e1\",\n  \"type\":\"message.read\" , \"data\":{} }";
        assert_eq!(p.verify(&req(&signed("br-secret", body), body)), Ok(()));
        assert_eq!(p.verify(&req(&signed("old", body), body)), Ok(()));
        let reserialised =
            serde_json::to_vec(&serde_json::from_slice::<Value>(body).unwrap()).unwrap();
        assert_eq!(
            p.verify(&req(&signed("br-secret", &reserialised), body)),
            Err(AuthError::BadSignature)
        );
        assert_eq!(
            p.verify(&req(&signed("other", body), body)),
            Err(AuthError::BadSignature)
        );
        let mut bad = HeaderMap::new();
        bad.insert(SIGNATURE_HEADER, "zz".parse().unwrap());
        assert_eq!(
            p.verify(&req(&bad, body)),
            Err(AuthError::MalformedSignature)
        );
        let mut short = HeaderMap::new();
        short.insert(SIGNATURE_HEADER, "abcd".parse().unwrap());
        assert_eq!(p.verify(&req(&short, body)), Err(AuthError::BadSignature));
        assert_eq!(
            p.verify(&req(&HeaderMap::new(), body)),
            Err(AuthError::MissingSignature)
        );
        assert_eq!(
            BlueReplies::new(&[]).verify(&req(&signed("x", body), body)),
            Err(AuthError::NoSecrets)
        );
    }

    #[test]
    fn event_types_map_to_kinds_and_statuses() {
        let p = BlueReplies::new(&[Secret::new("s")]);
        let h = HeaderMap::new();
        for (ty, kind, status) in [
            (
                "message.sent",
                EventKind::MessageStatus,
                MessageStatus::Sent,
            ),
            (
                "message.delivered",
                EventKind::MessageStatus,
                MessageStatus::Delivered,
            ),
            (
                "message.read",
                EventKind::MessageStatus,
                MessageStatus::Read,
            ),
            (
                "message.failed",
                EventKind::MessageStatus,
                MessageStatus::Failed,
            ),
            (
                "message.received",
                EventKind::MessageReceived,
                MessageStatus::Received,
            ),
        ] {
            let body = DELIVERED.replace("message.delivered", ty);
            let Parsed::Events(evs) = p.parse(&req(&h, body.as_bytes())).unwrap() else {
                panic!()
            };
            let e = &evs[0];
            assert_eq!((e.kind, e.status), (kind, Some(status)), "{ty}");
            assert_eq!(e.raw_status.as_deref(), Some(ty));
            assert_eq!(e.idempotency_key, "br:id:evt_123");
            assert_eq!(e.message_handle.as_deref(), Some("msg_9"));
            assert_eq!(e.service, Some(Service::IMessage));
        }
        let inbound = r#"{"type":"message.received","eventId":"e2","data":{"messageId":"m","from":"+1555","body":"hello"}}"#;
        let Parsed::Events(evs) = p.parse(&req(&h, inbound.as_bytes())).unwrap() else {
            panic!()
        };
        assert_eq!(evs[0].direction, Some(Direction::Inbound));
        assert_eq!(evs[0].contact_number.as_deref(), Some("+1555"));
        assert_eq!(evs[0].content.as_deref(), Some("hello"));
        let failed = r#"{"type":"message.failed","eventId":"e3","data":{"messageId":"m","error":"Not an iMessage user"}}"#;
        let Parsed::Events(evs) = p.parse(&req(&h, failed.as_bytes())).unwrap() else {
            panic!()
        };
        assert_eq!(
            evs[0].error_message.as_deref(),
            Some("Not an iMessage user")
        );
    }

    #[test]
    fn pings_are_recognised_and_not_events() {
        let p = BlueReplies::new(&[Secret::new("s")]);
        let h = HeaderMap::new();
        for body in [
            r#"{"type":"ping"}"#,
            r#"{"type":"webhook.verification","timestamp":1}"#,
            "{}",
            "",
        ] {
            assert!(
                matches!(p.parse(&req(&h, body.as_bytes())), Ok(Parsed::Ping)),
                "{body}"
            );
            assert!(p.is_unsigned_ping(&req(&h, body.as_bytes())));
        }
        assert!(!p.is_unsigned_ping(&req(&h, DELIVERED.as_bytes())));
        assert!(
            !p.is_unsigned_ping(&req(&signed("s", b"{}"), b"{}")),
            "a signed ping is verified like any request"
        );
    }
}
