//! Twilio: `X-Twilio-Signature` = Base64(HMAC-SHA1(auth token, the URL Twilio called + every
//! POST parameter sorted by name, as name then value)). JSON bodies are signed through a
//! `bodySHA256` query parameter instead. Behind API Gateway the function cannot see the public
//! URL reliably, so `public_url` (the URL of `/webhooks/{source}` as Twilio calls it) is a
//! setting; without it the URL is rebuilt from the `Host` header. Key: (MessageSid, status).

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

use super::signing::{any_mac_matches, macs_equal, Algorithm, Encoding};
use super::{
    signature_header, AuthError, ParseError, Parsed, Provider, SampleOptions, SampleRequest,
    Settings, WebhookRequest,
};
use crate::config::{ConfigError, Secret};
use crate::event::{
    body_digest, truncate_to_millis, Direction, Event, EventKind, MessageStatus, Service,
};

pub const NAME: &str = "twilio";
pub const SIGNATURE_HEADER: &str = "x-twilio-signature";
pub const SAMPLE_EVENTS: &[&str] = &[
    "received",
    "queued",
    "sent",
    "delivered",
    "undelivered",
    "failed",
    "read",
];

#[derive(Debug)]
pub struct Twilio {
    keys: Vec<Vec<u8>>,
    public_url: Option<String>,
}

/// Twilio's message statuses onto the canonical set.
pub fn normalise_status(raw: &str) -> MessageStatus {
    match raw.to_ascii_lowercase().as_str() {
        "queued" | "scheduled" => MessageStatus::Queued,
        "accepted" => MessageStatus::Accepted,
        "sending" => MessageStatus::Sending,
        "sent" => MessageStatus::Sent,
        "delivered" | "partially_delivered" => MessageStatus::Delivered,
        "read" => MessageStatus::Read,
        "failed" | "undelivered" => MessageStatus::Failed,
        "receiving" | "received" => MessageStatus::Received,
        "canceled" => MessageStatus::Canceled,
        _ => MessageStatus::Unknown,
    }
}

/// The string Twilio signs: the URL, then each parameter (sorted by name, then value) as name
/// followed by value.
pub fn signing_string(url: &str, params: &[(String, String)]) -> String {
    let mut sorted: Vec<&(String, String)> = params.iter().collect();
    sorted.sort();
    sorted.dedup();
    let mut s = String::with_capacity(url.len() + params.len() * 24);
    s.push_str(url);
    for (k, v) in sorted {
        s.push_str(k);
        s.push_str(v);
    }
    s
}

/// The signature of a request to `url` with `params` under `auth_token`.
pub fn sign(auth_token: &[u8], url: &str, params: &[(String, String)]) -> String {
    Encoding::Base64
        .encode(&Algorithm::Sha1.mac(auth_token, &[signing_string(url, params).as_bytes()]))
}

fn form_params(body: &[u8]) -> Vec<(String, String)> {
    form_urlencoded::parse(body).into_owned().collect()
}

fn query_param<'a>(query: Option<&'a str>, name: &str) -> Option<std::borrow::Cow<'a, str>> {
    form_urlencoded::parse(query?.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v)
}

/// The same URL with its default port added or removed: Twilio may sign either form.
fn port_variants(url: &str) -> Vec<String> {
    let mut out = vec![url.to_owned()];
    for (scheme, port) in [("https://", ":443"), ("http://", ":80")] {
        let Some(rest) = url.strip_prefix(scheme) else {
            continue;
        };
        let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        if let Some(bare) = host.strip_suffix(port) {
            out.push(format!("{scheme}{bare}{path}"));
        } else if !host.contains(':') {
            out.push(format!("{scheme}{host}{port}{path}"));
        }
    }
    out
}

impl Twilio {
    pub fn new(secrets: &[Secret], public_url: Option<String>) -> Twilio {
        Twilio {
            keys: secrets
                .iter()
                .map(|s| s.expose().as_bytes().to_vec())
                .collect(),
            public_url: public_url.map(|u| u.trim_end_matches('/').to_owned()),
        }
    }

    pub fn from_settings(
        settings: Settings<'_>,
        secrets: Vec<Secret>,
    ) -> Result<Twilio, ConfigError> {
        let public_url = settings.str("public_url")?.map(str::to_owned);
        if let Some(u) = &public_url {
            if !(u.starts_with("https://") || u.starts_with("http://")) {
                return Err(settings.invalid("`public_url` must be an http(s) URL"));
            }
        }
        settings.finish()?;
        Ok(Twilio::new(&secrets, public_url))
    }

    /// The URL a sample posted to `posted` is signed for: Twilio signs the public URL whatever
    /// path the request takes to reach us (a tunnel to localhost), so with a `public_url` it is
    /// that URL plus what follows `/webhooks/<source>` in `posted` (a type segment, the query).
    fn signed_url(&self, posted: &str) -> String {
        let Some(public) = &self.public_url else {
            return posted.to_owned();
        };
        let rest = posted.find("/webhooks/").map_or("", |i| {
            let after = &posted[i + "/webhooks/".len()..];
            &after[after.find(['/', '?']).unwrap_or(after.len())..]
        });
        format!("{public}{rest}")
    }

    /// The URLs Twilio may have signed for this request.
    fn candidate_urls(&self, req: &WebhookRequest<'_>) -> Vec<String> {
        let mut path_and_query = match req.type_hint {
            Some(t) => format!("/{t}"),
            None => String::new(),
        };
        if let Some(q) = req.query.filter(|q| !q.is_empty()) {
            path_and_query.push('?');
            path_and_query.push_str(q);
        }
        let bases: Vec<String> = match &self.public_url {
            Some(u) => vec![u.clone()],
            None => {
                let host = req
                    .headers
                    .get(http::header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .unwrap_or("");
                ["https", "http"]
                    .iter()
                    .map(|scheme| format!("{scheme}://{host}/webhooks/{}", req.source))
                    .collect()
            }
        };
        bases
            .iter()
            .flat_map(|b| port_variants(&format!("{b}{path_and_query}")))
            .collect()
    }
}

impl Provider for Twilio {
    fn name(&self) -> &'static str {
        NAME
    }

    fn verify(&self, req: &WebhookRequest<'_>) -> Result<(), AuthError> {
        let presented =
            signature_header(req.headers, SIGNATURE_HEADER, !self.keys.is_empty(), |s| {
                Encoding::Base64.decode(s)
            })?;
        let body_hash = query_param(req.query, "bodySHA256");
        let params = if body_hash.is_some() {
            Vec::new()
        } else {
            form_params(req.body)
        };
        let presented = [presented];
        let signed = self.candidate_urls(req).iter().any(|url| {
            any_mac_matches(
                Algorithm::Sha1,
                &self.keys,
                &[signing_string(url, &params).as_bytes()],
                &presented,
            )
        });
        if !signed {
            return Err(AuthError::BadSignature);
        }
        if let Some(expected) = body_hash {
            // The URL (with its bodySHA256) is authentic; the body must be the one it names.
            let actual = hex::encode(Sha256::digest(req.body));
            if !macs_equal(actual.as_bytes(), expected.to_ascii_lowercase().as_bytes()) {
                return Err(AuthError::BodyHashMismatch);
            }
        }
        Ok(())
    }

    fn parse(&self, req: &WebhookRequest<'_>) -> Result<Parsed, ParseError> {
        let raw_body = std::str::from_utf8(req.body)
            .map_err(|e| ParseError::NotJson(format!("not UTF-8: {e}")))?;
        let json = raw_body.trim_start().starts_with('{');
        let params: BTreeMap<String, String> = if json {
            let v: serde_json::Map<String, serde_json::Value> =
                serde_json::from_str(raw_body).map_err(|e| ParseError::NotJson(e.to_string()))?;
            v.into_iter()
                .filter_map(|(k, v)| match v {
                    serde_json::Value::String(s) => Some((k, s)),
                    serde_json::Value::Number(n) => Some((k, n.to_string())),
                    _ => None,
                })
                .collect()
        } else {
            form_params(req.body).into_iter().collect()
        };
        Ok(Parsed::Events(vec![to_event(req, &params, raw_body)]))
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
        if !SAMPLE_EVENTS.contains(&event) {
            return Err(format!(
                "unknown Twilio event `{event}`; known: {}",
                SAMPLE_EVENTS.join(", ")
            ));
        }
        let sid = opts
            .handle
            .clone()
            .unwrap_or_else(|| format!("SM{}", uuid::Uuid::new_v4().simple()));
        let account = "AC00000000000000000000000000000000";
        let mut params: Vec<(String, String)> = vec![
            ("MessageSid".into(), sid.clone()),
            ("SmsSid".into(), sid),
            ("AccountSid".into(), account.into()),
            ("ApiVersion".into(), "2010-04-01".into()),
        ];
        if event == "received" {
            params.extend([
                ("From".into(), "+19998887777".into()),
                ("To".into(), "+15550001111".into()),
                ("Body".into(), opts.content.clone().unwrap_or_else(|| "Yes, Tuesday works".into())),
                ("NumMedia".into(), "1".into()),
                ("MediaUrl0".into(), format!("https://api.twilio.com/2010-04-01/Accounts/{account}/Messages/MM1/Media/ME1")),
                ("MediaContentType0".into(), "image/jpeg".into()),
                ("SmsStatus".into(), "received".into()),
            ]);
        } else {
            let status = opts.status.clone().unwrap_or_else(|| event.to_owned());
            params.extend([
                ("From".into(), "+15550001111".into()),
                ("To".into(), "+19998887777".into()),
                ("MessageStatus".into(), status.clone()),
                ("SmsStatus".into(), status),
            ]);
            if matches!(event, "failed" | "undelivered") {
                params.push(("ErrorCode".into(), "30003".into()));
            }
        }
        let body = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(&params)
            .finish();
        Ok(SampleRequest {
            url: url.to_owned(),
            content_type: "application/x-www-form-urlencoded",
            headers: vec![(
                SIGNATURE_HEADER.to_owned(),
                sign(key, &self.signed_url(url), &params),
            )],
            body: body.into_bytes(),
        })
    }
}

fn to_event(req: &WebhookRequest<'_>, p: &BTreeMap<String, String>, raw_body: &str) -> Event {
    let get = |k: &str| p.get(k).filter(|v| !v.is_empty()).cloned();
    let sid = get("MessageSid")
        .or_else(|| get("SmsSid"))
        .or_else(|| get("SmsMessageSid"));
    let raw_status = get("MessageStatus").or_else(|| get("SmsStatus"));
    let status = raw_status.as_deref().map(normalise_status);
    let inbound =
        status == Some(MessageStatus::Received) || (raw_status.is_none() && get("Body").is_some());
    let kind = match (&sid, inbound, &status) {
        (None, _, None) => EventKind::Unknown,
        (_, true, _) => EventKind::MessageReceived,
        _ => EventKind::MessageStatus,
    };
    let source = req.source;
    let key = match (&sid, kind) {
        (Some(sid), k) if k != EventKind::Unknown => {
            format!(
                "{source}:msg:{sid}:{}",
                raw_status.as_deref().unwrap_or("received")
            )
        }
        _ => format!("{source}:body:{}", body_digest(req.body)),
    };
    let mut ev = Event::new(
        source,
        NAME,
        kind,
        key,
        req.received_at,
        raw_body.to_owned(),
    );
    if kind == EventKind::Unknown {
        return ev;
    }
    ev.provider_event = Some(
        if inbound {
            "inbound"
        } else {
            "status_callback"
        }
        .to_owned(),
    );
    ev.status = Some(if inbound {
        MessageStatus::Received
    } else {
        status.unwrap_or(MessageStatus::Unknown)
    });
    ev.raw_status = raw_status;
    ev.direction = Some(if inbound {
        Direction::Inbound
    } else {
        Direction::Outbound
    });
    ev.message_handle = sid;
    let strip = |n: Option<String>| {
        n.map(|n| {
            n.split_once(':')
                .map_or(n.clone(), |(_, num)| num.to_owned())
        })
    };
    let from = get("From");
    let whatsapp = from.as_deref().is_some_and(|f| f.starts_with("whatsapp:"))
        || get("To").is_some_and(|t| t.starts_with("whatsapp:"));
    ev.from_number = strip(from);
    ev.to_number = strip(get("To"));
    (ev.contact_number, ev.line_number) = if inbound {
        (ev.from_number.clone(), ev.to_number.clone())
    } else {
        (ev.to_number.clone(), ev.from_number.clone())
    };
    ev.content = get("Body");
    let num_media: usize = get("NumMedia").and_then(|n| n.parse().ok()).unwrap_or(0);
    ev.media_url = get("MediaUrl0");
    ev.service = Some(if whatsapp {
        Service::WhatsApp
    } else if num_media > 0 {
        Service::Mms
    } else {
        Service::Sms
    });
    ev.error_code = get("ErrorCode");
    ev.error_message = get("ErrorMessage");
    ev.occurred_at = Some(truncate_to_millis(req.received_at));
    ev
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use http::HeaderMap;

    fn vector_params() -> Vec<(String, String)> {
        [
            ("CallSid", "CA1234567890ABCDE"),
            ("Caller", "+12349013030"),
            ("Digits", "1234"),
            ("From", "+12349013030"),
            ("To", "+18005551212"),
        ]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
    }

    #[test]
    fn published_vector() {
        let url = "https://mycompany.com/myapp.php?foo=1&bar=2";
        assert_eq!(
            sign(b"12345", url, &vector_params()),
            "0/KCTR6DLpKmkAf8muzZqo1nDgQ="
        );
        // Parameter order in the body does not matter.
        let mut reversed = vector_params();
        reversed.reverse();
        assert_eq!(
            sign(b"12345", url, &reversed),
            "0/KCTR6DLpKmkAf8muzZqo1nDgQ="
        );
    }

    fn req<'a>(
        h: &'a HeaderMap,
        body: &'a [u8],
        query: Option<&'a str>,
        hint: Option<&'a str>,
    ) -> WebhookRequest<'a> {
        WebhookRequest {
            source: "twilio",
            type_hint: hint,
            headers: h,
            query,
            body,
            received_at: Utc::now(),
        }
    }

    fn signed_headers(sig: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(SIGNATURE_HEADER, sig.parse().unwrap());
        h.insert(http::header::HOST, "hooks.example.com".parse().unwrap());
        h
    }

    #[test]
    fn form_requests_verify_against_the_public_url() {
        let token = "auth-token-1";
        let p = Twilio::new(
            &[Secret::new("old"), Secret::new(token)],
            Some("https://hooks.example.com/webhooks/twilio".into()),
        );
        let params = vector_params();
        let body = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(&params)
            .finish();
        let url = "https://hooks.example.com/webhooks/twilio/status?x=1";
        let h = signed_headers(&sign(token.as_bytes(), url, &params));
        assert_eq!(
            p.verify(&req(&h, body.as_bytes(), Some("x=1"), Some("status"))),
            Ok(())
        );
        // Twilio sometimes signs with the default port.
        let h = signed_headers(&sign(
            token.as_bytes(),
            "https://hooks.example.com:443/webhooks/twilio",
            &params,
        ));
        assert_eq!(p.verify(&req(&h, body.as_bytes(), None, None)), Ok(()));
        // Another URL, a changed parameter, or a wrong token: refused.
        let h = signed_headers(&sign(
            token.as_bytes(),
            "https://evil.example.com/webhooks/twilio",
            &params,
        ));
        assert_eq!(
            p.verify(&req(&h, body.as_bytes(), None, None)),
            Err(AuthError::BadSignature)
        );
        let h = signed_headers(&sign(
            token.as_bytes(),
            "https://hooks.example.com/webhooks/twilio",
            &params,
        ));
        let tampered = body.replace("1234", "1235");
        assert_eq!(
            p.verify(&req(&h, tampered.as_bytes(), None, None)),
            Err(AuthError::BadSignature)
        );
        let h = signed_headers(&sign(
            b"wrong",
            "https://hooks.example.com/webhooks/twilio",
            &params,
        ));
        assert_eq!(
            p.verify(&req(&h, body.as_bytes(), None, None)),
            Err(AuthError::BadSignature)
        );
        let h = signed_headers("not base64!");
        assert_eq!(
            p.verify(&req(&h, body.as_bytes(), None, None)),
            Err(AuthError::MalformedSignature)
        );
    }

    #[test]
    fn json_bodies_verify_through_body_sha256() {
        let token = "tok";
        let p = Twilio::new(&[Secret::new(token)], None);
        let body = br#"{"MessageSid":"SM1","MessageStatus":"delivered"}"#;
        let hash = hex::encode(Sha256::digest(body));
        let query = format!("bodySHA256={hash}");
        let url = format!("https://hooks.example.com/webhooks/twilio?{query}");
        let h = signed_headers(&sign(token.as_bytes(), &url, &[]));
        assert_eq!(p.verify(&req(&h, body, Some(&query), None)), Ok(()));
        let other = br#"{"MessageSid":"SM1","MessageStatus":"failed"}"#;
        assert_eq!(
            p.verify(&req(&h, other, Some(&query), None)),
            Err(AuthError::BodyHashMismatch)
        );
        let Parsed::Events(evs) = p.parse(&req(&h, body, Some(&query), None)).unwrap() else {
            panic!()
        };
        assert_eq!(evs[0].status, Some(MessageStatus::Delivered));
    }

    #[test]
    fn inbound_and_status_callbacks_normalise() {
        let p = Twilio::new(&[Secret::new("t")], None);
        let h = HeaderMap::new();
        let inbound = "MessageSid=SM9&AccountSid=AC1&From=%2B19998887777&To=%2B15550001111&Body=Hi+there&NumMedia=1&MediaUrl0=https%3A%2F%2Fapi.twilio.com%2Fm%2F1&SmsStatus=received";
        let Parsed::Events(evs) = p.parse(&req(&h, inbound.as_bytes(), None, None)).unwrap() else {
            panic!()
        };
        let e = &evs[0];
        assert_eq!(e.kind, EventKind::MessageReceived);
        assert_eq!(e.content.as_deref(), Some("Hi there"));
        assert_eq!(e.contact_number.as_deref(), Some("+19998887777"));
        assert_eq!(e.line_number.as_deref(), Some("+15550001111"));
        assert_eq!(e.media_url.as_deref(), Some("https://api.twilio.com/m/1"));
        assert_eq!(e.service, Some(Service::Mms));
        assert_eq!(e.idempotency_key, "twilio:msg:SM9:received");
        assert_eq!(e.raw_body, inbound);

        for (raw, want) in [
            ("queued", MessageStatus::Queued),
            ("sending", MessageStatus::Sending),
            ("sent", MessageStatus::Sent),
            ("delivered", MessageStatus::Delivered),
            ("undelivered", MessageStatus::Failed),
            ("failed", MessageStatus::Failed),
            ("read", MessageStatus::Read),
            ("accepted", MessageStatus::Accepted),
            ("scheduled", MessageStatus::Queued),
            ("partially_delivered", MessageStatus::Delivered),
            ("canceled", MessageStatus::Canceled),
        ] {
            let body = format!("MessageSid=SM1&MessageStatus={raw}&From=whatsapp%3A%2B1555&To=whatsapp%3A%2B1666&ErrorCode=30003");
            let Parsed::Events(evs) = p.parse(&req(&h, body.as_bytes(), None, None)).unwrap()
            else {
                panic!()
            };
            let e = &evs[0];
            assert_eq!(
                (e.kind, e.status),
                (EventKind::MessageStatus, Some(want)),
                "{raw}"
            );
            assert_eq!(e.idempotency_key, format!("twilio:msg:SM1:{raw}"));
            assert_eq!(e.service, Some(Service::WhatsApp));
            assert_eq!(e.contact_number.as_deref(), Some("+1666"));
            assert_eq!(e.error_code.as_deref(), Some("30003"));
        }
    }

    #[test]
    fn samples_posted_through_a_tunnel_are_signed_for_the_public_url() {
        let p = Twilio::new(
            &[Secret::new("tok")],
            Some("https://hooks.example.com/webhooks/twilio".into()),
        );
        let posted = "http://127.0.0.1:3000/webhooks/twilio/status?x=1";
        let s = p
            .sample("delivered", &SampleOptions::default(), posted)
            .unwrap();
        assert_eq!(s.url, posted, "posted where asked");
        let mut h = HeaderMap::new();
        h.insert(SIGNATURE_HEADER, s.headers[0].1.parse().unwrap());
        h.insert(http::header::HOST, "127.0.0.1:3000".parse().unwrap());
        assert_eq!(
            p.verify(&req(&h, &s.body, Some("x=1"), Some("status"))),
            Ok(())
        );
        assert_eq!(
            p.signed_url("http://127.0.0.1:3000/webhooks/twilio"),
            "https://hooks.example.com/webhooks/twilio"
        );
    }

    #[test]
    fn samples_verify_with_the_url_they_were_signed_for() {
        let p = Twilio::new(&[Secret::new("tok")], None);
        for event in SAMPLE_EVENTS {
            let url = "http://127.0.0.1:3000/webhooks/twilio";
            let s = p.sample(event, &SampleOptions::default(), url).unwrap();
            let mut h = HeaderMap::new();
            h.insert(SIGNATURE_HEADER, s.headers[0].1.parse().unwrap());
            h.insert(http::header::HOST, "127.0.0.1:3000".parse().unwrap());
            assert_eq!(p.verify(&req(&h, &s.body, None, None)), Ok(()), "{event}");
            let Parsed::Events(evs) = p.parse(&req(&h, &s.body, None, None)).unwrap() else {
                panic!()
            };
            assert_ne!(evs[0].kind, EventKind::Unknown);
        }
    }
}
