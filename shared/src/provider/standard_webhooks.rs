//! Standard Webhooks: `webhook-id`, `webhook-timestamp` (Unix seconds) and `webhook-signature`
//! (space-separated `v1,<base64>`), signed content `{id}.{timestamp}.{body}`, HMAC-SHA256 keyed
//! with the base64-decoded secret after `whsec_`. Any listed signature may match (rotation);
//! timestamps beyond the tolerance (default 300 s) in the past or future are refused;
//! `webhook-id` is the idempotency key.
//!
//! Senders built on Svix send the same scheme under `svix-id`, `svix-timestamp` and
//! `svix-signature`; either family is accepted (the `webhook-*` one when both are present),
//! and all three headers come from the same family.

use base64::Engine;

use super::generic::{self, Profile};
use super::signing::{any_mac_matches, check_timestamp, Algorithm, Encoding};
use super::{
    single_header, AuthError, ParseError, Parsed, Provider, SampleOptions, SampleRequest, Settings,
    WebhookRequest,
};
use crate::config::{ConfigError, Secret};

pub const NAME: &str = "standard-webhooks";
pub const DEFAULT_TOLERANCE_SECS: u64 = 300;

#[derive(Debug)]
pub struct StandardWebhooks {
    keys: Vec<Vec<u8>>,
    tolerance_secs: u64,
}

/// The signing key of a `whsec_...` secret (the prefix is optional).
pub fn decode_secret(secret: &str) -> Option<Vec<u8>> {
    let b64 = secret.strip_prefix("whsec_").unwrap_or(secret);
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .ok()
        .filter(|k| !k.is_empty())
}

/// `v1,<base64>` for `id`, `timestamp` and `body` under `key`.
pub fn sign(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
    let ts = timestamp.to_string();
    let mac = Algorithm::Sha256.mac(key, &[id.as_bytes(), b".", ts.as_bytes(), b".", body]);
    format!("v1,{}", Encoding::Base64.encode(&mac))
}

/// The names of one family of the scheme's three headers.
struct HeaderFamily {
    id: &'static str,
    timestamp: &'static str,
    signature: &'static str,
}

const STANDARD: HeaderFamily = HeaderFamily {
    id: "webhook-id",
    timestamp: "webhook-timestamp",
    signature: "webhook-signature",
};

const SVIX: HeaderFamily = HeaderFamily {
    id: "svix-id",
    timestamp: "svix-timestamp",
    signature: "svix-signature",
};

/// The family a request is signed with: the one whose signature header it carries.
fn family(headers: &http::HeaderMap) -> &'static HeaderFamily {
    if !headers.contains_key(STANDARD.signature) && headers.contains_key(SVIX.signature) {
        &SVIX
    } else {
        &STANDARD
    }
}

impl StandardWebhooks {
    pub fn new(secrets: &[Secret], tolerance_secs: u64) -> Result<StandardWebhooks, String> {
        let keys = secrets
            .iter()
            .enumerate()
            .map(|(i, s)| {
                decode_secret(s.expose())
                    .ok_or_else(|| format!("secret #{} is not a whsec_<base64> secret", i + 1))
            })
            .collect::<Result<_, _>>()?;
        Ok(StandardWebhooks {
            keys,
            tolerance_secs,
        })
    }

    pub fn from_settings(
        settings: Settings<'_>,
        secrets: Vec<Secret>,
    ) -> Result<StandardWebhooks, ConfigError> {
        let tolerance = settings
            .u64("tolerance_secs")?
            .unwrap_or(DEFAULT_TOLERANCE_SECS);
        settings.finish()?;
        StandardWebhooks::new(&secrets, tolerance).map_err(ConfigError::Invalid)
    }
}

impl Provider for StandardWebhooks {
    fn name(&self) -> &'static str {
        NAME
    }

    fn verify(&self, req: &WebhookRequest<'_>) -> Result<(), AuthError> {
        let names = family(req.headers);
        let id = single_header(req.headers, names.id)?;
        let ts = match single_header(req.headers, names.timestamp) {
            Err(AuthError::MissingSignature) => return Err(AuthError::MissingTimestamp),
            other => other?,
        };
        let signatures = single_header(req.headers, names.signature)?;
        if self.keys.is_empty() {
            return Err(AuthError::NoSecrets);
        }
        check_timestamp(ts, req.received_at.timestamp(), self.tolerance_secs)?;
        let presented: Vec<Vec<u8>> = std::str::from_utf8(signatures)
            .map_err(|_| AuthError::MalformedSignature)?
            .split(' ')
            .filter_map(|s| s.strip_prefix("v1,"))
            .filter_map(|s| Encoding::Base64.decode(s))
            .collect();
        if presented.is_empty() {
            return Err(AuthError::MalformedSignature);
        }
        if any_mac_matches(
            Algorithm::Sha256,
            &self.keys,
            &[id, b".", ts, b".", req.body],
            &presented,
        ) {
            Ok(())
        } else {
            Err(AuthError::BadSignature)
        }
    }

    fn parse(&self, req: &WebhookRequest<'_>) -> Result<Parsed, ParseError> {
        let id = req
            .headers
            .get(family(req.headers).id)
            .and_then(|v| v.to_str().ok());
        let ev = generic::parse_event(
            req,
            &Profile {
                provider: NAME,
                delivery_id: id,
                default_service: None,
            },
        )?;
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
        let body =
            serde_json::to_vec(&generic::sample_body(event, opts, "SMS")?).expect("serialises");
        let id = format!("msg_{}", uuid::Uuid::new_v4().simple());
        let ts = chrono::Utc::now().timestamp();
        Ok(SampleRequest {
            url: url.to_owned(),
            content_type: "application/json",
            headers: vec![
                ("webhook-id".into(), id.clone()),
                ("webhook-timestamp".into(), ts.to_string()),
                ("webhook-signature".into(), sign(key, &id, ts, &body)),
            ],
            body,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{DateTime, Utc};
    use http::HeaderMap;

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const TS: i64 = 1614265330;
    const BODY: &str = r#"{"test": 2432232314}"#;
    const SIG: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    fn headers(id: &str, ts: &str, sig: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("webhook-id", id.parse().unwrap());
        h.insert("webhook-timestamp", ts.parse().unwrap());
        h.insert("webhook-signature", sig.parse().unwrap());
        h
    }

    fn req<'a>(h: &'a HeaderMap, body: &'a str, now: i64) -> WebhookRequest<'a> {
        WebhookRequest {
            source: "sw",
            type_hint: None,
            headers: h,
            query: None,
            body: body.as_bytes(),
            received_at: DateTime::<Utc>::from_timestamp(now, 0).unwrap(),
        }
    }

    #[test]
    fn published_vector_verifies() {
        let key = decode_secret(SECRET).unwrap();
        assert_eq!(sign(&key, ID, TS, BODY.as_bytes()), SIG);
        let p = StandardWebhooks::new(&[Secret::new(SECRET)], 300).unwrap();
        let h = headers(ID, &TS.to_string(), SIG);
        assert_eq!(p.verify(&req(&h, BODY, TS + 10)), Ok(()));
        // Any listed signature may match.
        let h = headers(ID, &TS.to_string(), &format!("v1,AAAA {SIG} v2,zzz"));
        assert_eq!(p.verify(&req(&h, BODY, TS)), Ok(()));
    }

    #[test]
    fn refusals() {
        let p = StandardWebhooks::new(&[Secret::new(SECRET)], 300).unwrap();
        let ts = TS.to_string();
        let cases = [
            (
                headers(ID, &ts, SIG),
                r#"{"test": 2432232315}"#,
                TS,
                AuthError::BadSignature,
            ),
            (
                headers("msg_other", &ts, SIG),
                BODY,
                TS,
                AuthError::BadSignature,
            ),
            (
                headers(ID, &ts, SIG),
                BODY,
                TS + 301,
                AuthError::TimestampOutOfTolerance,
            ),
            (
                headers(ID, &ts, SIG),
                BODY,
                TS - 301,
                AuthError::TimestampOutOfTolerance,
            ),
            (
                headers(ID, "soon", SIG),
                BODY,
                TS,
                AuthError::MalformedTimestamp,
            ),
            (
                headers(ID, &ts, "g0hM9SsE"),
                BODY,
                TS,
                AuthError::MalformedSignature,
            ),
        ];
        for (h, body, now, want) in cases {
            assert_eq!(p.verify(&req(&h, body, now)), Err(want));
        }
        let mut h = headers(ID, &ts, SIG);
        h.remove("webhook-timestamp");
        assert_eq!(
            p.verify(&req(&h, BODY, TS)),
            Err(AuthError::MissingTimestamp)
        );
        let mut h = headers(ID, &ts, SIG);
        h.append("webhook-signature", SIG.parse().unwrap());
        assert_eq!(
            p.verify(&req(&h, BODY, TS)),
            Err(AuthError::DuplicateHeader)
        );
        let none = StandardWebhooks::new(&[], 300).unwrap();
        assert_eq!(
            none.verify(&req(&headers(ID, &ts, SIG), BODY, TS)),
            Err(AuthError::NoSecrets)
        );
        assert!(StandardWebhooks::new(&[Secret::new("whsec_!!!")], 300).is_err());
    }

    #[test]
    fn svix_headers_carry_the_same_scheme() {
        let p = StandardWebhooks::new(&[Secret::new(SECRET)], 300).unwrap();
        let mut h = HeaderMap::new();
        h.insert("svix-id", ID.parse().unwrap());
        h.insert("svix-timestamp", TS.to_string().parse().unwrap());
        h.insert("svix-signature", SIG.parse().unwrap());
        assert_eq!(p.verify(&req(&h, BODY, TS)), Ok(()));
        let Parsed::Events(evs) = p.parse(&req(&h, BODY, TS)).unwrap() else {
            panic!()
        };
        assert_eq!(evs[0].idempotency_key, format!("sw:id:{ID}"));
        // The three headers come from one family: beside svix headers, a webhook-id is not
        // what was signed, and a svix-id that differs fails.
        h.insert("webhook-id", "msg_other".parse().unwrap());
        assert_eq!(p.verify(&req(&h, BODY, TS)), Ok(()));
        let mut mixed = HeaderMap::new();
        mixed.insert("svix-id", "msg_other".parse().unwrap());
        mixed.insert("svix-timestamp", TS.to_string().parse().unwrap());
        mixed.insert("svix-signature", SIG.parse().unwrap());
        assert_eq!(
            p.verify(&req(&mixed, BODY, TS)),
            Err(AuthError::BadSignature)
        );
        // Both families present: the webhook-* one is verified.
        let mut both = headers(ID, &TS.to_string(), SIG);
        both.insert("svix-signature", "v1,AAAA".parse().unwrap());
        assert_eq!(p.verify(&req(&both, BODY, TS)), Ok(()));
        let mut missing = HeaderMap::new();
        missing.insert("svix-id", ID.parse().unwrap());
        missing.insert("svix-signature", SIG.parse().unwrap());
        assert_eq!(
            p.verify(&req(&missing, BODY, TS)),
            Err(AuthError::MissingTimestamp)
        );
    }

    #[test]
    fn webhook_id_is_the_key() {
        let p = StandardWebhooks::new(&[Secret::new(SECRET)], 300).unwrap();
        let h = headers(ID, &TS.to_string(), SIG);
        let Parsed::Events(evs) = p.parse(&req(&h, BODY, TS)).unwrap() else {
            panic!()
        };
        assert_eq!(evs[0].idempotency_key, format!("sw:id:{ID}"));
        assert_eq!(evs[0].raw_body, BODY);
    }
}
