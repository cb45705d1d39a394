//! Properties of every signature scheme (proptest): what a sender signs verifies, for any body
//! and secret; any one-byte change to the body, the timestamp or the signature is refused.
//! And a fuzz harness: no input makes any provider's verify or parse panic. Its case count is
//! `BLUEHOOK_FUZZ_CASES` (scripts/fuzz.sh runs it long).

use chrono::{DateTime, Utc};
use http::{HeaderMap, HeaderName, HeaderValue};
use proptest::prelude::*;

use super::hmac::{HmacProvider, Scheme};
use super::signing::{Algorithm, Encoding};
use super::{
    bluereplies, standard_webhooks, twilio, AuthError, Provider, Settings, WebhookRequest,
};
use crate::config::{Secret, SourceConfig};

const NOW: i64 = 1_700_000_000;

fn at(now: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(now, 0).unwrap()
}

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    h
}

fn req<'a>(h: &'a HeaderMap, body: &'a [u8], query: Option<&'a str>) -> WebhookRequest<'a> {
    WebhookRequest {
        source: "src",
        type_hint: None,
        headers: h,
        query,
        body,
        received_at: at(NOW),
    }
}

fn hmac_provider(text: &str, secret: &str) -> HmacProvider {
    let c: SourceConfig = toml::from_str(text).unwrap();
    HmacProvider::from_settings(
        Settings::new("src", &c.provider, &c.settings),
        vec![Secret::new(secret)],
    )
    .unwrap()
}

/// Changes one character of `s` at `pos` into another value: a hex digit becomes the next hex
/// digit (so hex's case-insensitivity cannot undo the change), anything else `A` (or `B`).
fn flip(s: &str, pos: usize) -> String {
    let mut b = s.as_bytes().to_vec();
    let i = pos % b.len();
    b[i] = match (b[i] as char).to_digit(16) {
        Some(d) => std::char::from_digit((d + 1) % 16, 16).unwrap() as u8,
        None if b[i] == b'A' => b'B',
        None => b'A',
    };
    String::from_utf8(b).unwrap()
}

fn flip_bytes(b: &[u8], pos: usize, delta: u8) -> Vec<u8> {
    let mut b = b.to_vec();
    let i = pos % b.len();
    b[i] = b[i].wrapping_add(delta.max(1));
    b
}

fn secret_strategy() -> impl Strategy<Value = String> {
    "[ -~]{1,64}"
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn sendblue_shared_secret(secret in secret_strategy(), body in prop::collection::vec(any::<u8>(), 0..512), pos in any::<usize>()) {
        let p = super::sendblue::Sendblue::new(vec![Secret::new(secret.trim().to_owned() + "x")], true);
        let s = secret.trim().to_owned() + "x";
        prop_assert_eq!(p.verify(&req(&headers(&[("sb-signing-secret", &s)]), &body, None)), Ok(()));
        let changed = flip(&s, pos);
        prop_assert_eq!(p.verify(&req(&headers(&[("sb-signing-secret", &changed)]), &body, None)), Err(AuthError::BadSignature));
    }

    #[test]
    fn bluereplies_body_hmac(secret in secret_strategy(), body in prop::collection::vec(any::<u8>(), 1..1024), pos in any::<usize>(), delta in any::<u8>()) {
        let p = bluereplies::BlueReplies::new(&[Secret::new(secret.clone())]);
        let sig = bluereplies::sign(secret.as_bytes(), &body);
        prop_assert_eq!(p.verify(&req(&headers(&[("x-bluereplies-signature", &sig)]), &body, None)), Ok(()));
        let other = flip_bytes(&body, pos, delta);
        prop_assert_eq!(p.verify(&req(&headers(&[("x-bluereplies-signature", &sig)]), &other, None)), Err(AuthError::BadSignature));
        let bad_sig = flip(&sig, pos);
        prop_assert!(p.verify(&req(&headers(&[("x-bluereplies-signature", &bad_sig)]), &body, None)).is_err());
    }

    #[test]
    fn standard_webhooks_id_timestamp_body(key in prop::collection::vec(any::<u8>(), 16..48), id in "[a-zA-Z0-9_]{1,32}", body in prop::collection::vec(any::<u8>(), 1..1024), pos in any::<usize>(), delta in any::<u8>(), skew in -300i64..=300) {
        let secret = format!("whsec_{}", Encoding::Base64.encode(&key));
        let p = standard_webhooks::StandardWebhooks::new(&[Secret::new(secret)], 300).unwrap();
        let ts = NOW + skew;
        let sig = standard_webhooks::sign(&key, &id, ts, &body);
        let good = headers(&[("webhook-id", &id), ("webhook-timestamp", &ts.to_string()), ("webhook-signature", &sig)]);
        prop_assert_eq!(p.verify(&req(&good, &body, None)), Ok(()));
        let other = flip_bytes(&body, pos, delta);
        prop_assert_eq!(p.verify(&req(&good, &other, None)), Err(AuthError::BadSignature));
        let moved = headers(&[("webhook-id", &id), ("webhook-timestamp", &(ts + if skew > 0 { -1 } else { 1 }).to_string()), ("webhook-signature", &sig)]);
        prop_assert!(p.verify(&req(&moved, &body, None)).is_err());
        let bad = headers(&[("webhook-id", &id), ("webhook-timestamp", &ts.to_string()), ("webhook-signature", &flip(&sig, 3 + pos % (sig.len() - 3)))]);
        prop_assert!(p.verify(&req(&bad, &body, None)).is_err());
    }

    #[test]
    fn twilio_url_and_params(token in secret_strategy(), params in prop::collection::btree_map("[A-Za-z]{1,12}", "[ -~]{0,40}", 1..8), pos in any::<usize>()) {
        let p = twilio::Twilio::new(&[Secret::new(token.clone())], Some("https://hooks.example.com/webhooks/src".into()));
        let params: Vec<(String, String)> = params.into_iter().collect();
        let body = form_urlencoded::Serializer::new(String::new()).extend_pairs(&params).finish();
        let sig = twilio::sign(token.as_bytes(), "https://hooks.example.com/webhooks/src", &params);
        let h = headers(&[("x-twilio-signature", &sig)]);
        prop_assert_eq!(p.verify(&req(&h, body.as_bytes(), None)), Ok(()));
        // Change one byte of one value: the decoded parameters differ, so must the signature.
        let mut changed = params.clone();
        let i = pos % changed.len();
        changed[i].1.push('!');
        let other = form_urlencoded::Serializer::new(String::new()).extend_pairs(&changed).finish();
        prop_assert_eq!(p.verify(&req(&h, other.as_bytes(), None)), Err(AuthError::BadSignature));
        let bad = headers(&[("x-twilio-signature", &flip(&sig, pos % (sig.len() - 1)))]);
        prop_assert!(p.verify(&req(&bad, body.as_bytes(), None)).is_err());
    }

    #[test]
    fn twilio_json_body_hash(token in secret_strategy(), body in prop::collection::vec(any::<u8>(), 1..512), pos in any::<usize>(), delta in any::<u8>()) {
        use sha2::Digest;
        let p = twilio::Twilio::new(&[Secret::new(token.clone())], Some("https://h.example/webhooks/src".into()));
        let query = format!("bodySHA256={}", hex::encode(sha2::Sha256::digest(&body)));
        let sig = twilio::sign(token.as_bytes(), &format!("https://h.example/webhooks/src?{query}"), &[]);
        let h = headers(&[("x-twilio-signature", &sig)]);
        prop_assert_eq!(p.verify(&req(&h, &body, Some(&query))), Ok(()));
        let other = flip_bytes(&body, pos, delta);
        prop_assert_eq!(p.verify(&req(&h, &other, Some(&query))), Err(AuthError::BodyHashMismatch));
    }

    #[test]
    fn hmac_schemes(secret in secret_strategy(), body in prop::collection::vec(any::<u8>(), 1..1024), pos in any::<usize>(), delta in any::<u8>(), alg in 0..3usize, b64 in any::<bool>()) {
        let algorithm = ["sha1", "sha256", "sha512"][alg];
        let encoding = if b64 { "base64" } else { "hex" };
        let configs = [
            format!("provider = \"hmac\"\nheader = \"x-sig\"\nalgorithm = \"{algorithm}\"\nencoding = \"{encoding}\""),
            format!("provider = \"hmac\"\nheader = \"x-sig\"\nalgorithm = \"{algorithm}\"\nencoding = \"{encoding}\"\nsigned = \"timestamp.body\"\ntimestamp_header = \"x-ts\""),
            "provider = \"stripe-style\"".to_owned(),
            "provider = \"github-style\"".to_owned(),
        ];
        for text in configs {
            let p = hmac_provider(&text, &secret);
            let header = p.scheme().header.clone();
            let sig = p.scheme().sign(secret.as_bytes(), NOW, &body);
            let ts = NOW.to_string();
            let good = headers(&[(&header, &sig), ("x-ts", &ts)]);
            prop_assert_eq!(p.verify(&req(&good, &body, None)), Ok(()), "{}", text);
            let other = flip_bytes(&body, pos, delta);
            prop_assert_eq!(p.verify(&req(&good, &other, None)), Err(AuthError::BadSignature), "{}", text);
            let bad = headers(&[(&header, &flip(&sig, sig.len() - 1 - pos % 8)), ("x-ts", &ts)]);
            prop_assert!(p.verify(&req(&bad, &body, None)).is_err(), "{}", text);
            if text.contains("timestamp") || text.contains("stripe") {
                let later = (NOW + 1).to_string();
                let moved_sig = sig.replace(&format!("t={NOW}"), &format!("t={later}"));
                let moved = headers(&[(&header, &moved_sig), ("x-ts", &later)]);
                prop_assert_eq!(p.verify(&req(&moved, &body, None)), Err(AuthError::BadSignature), "{}", text);
            }
        }
    }
}

/// Every provider, as configured in the README, for the fuzz harness.
fn all_providers() -> Vec<std::sync::Arc<dyn Provider>> {
    [
        "provider = \"sendblue\"",
        "provider = \"sendblue\"\nrequire_signature = false",
        "provider = \"bluereplies\"",
        "provider = \"twilio\"",
        "provider = \"standard-webhooks\"",
        "provider = \"bluemessaggio\"\nheader = \"x-sig\"",
        "provider = \"stripe-style\"",
        "provider = \"github-style\"",
    ]
    .iter()
    .map(|t| {
        let c: SourceConfig = toml::from_str(t).unwrap();
        let secret = if c.provider == "standard-webhooks" {
            "whsec_c2VjcmV0"
        } else {
            "s3cret"
        };
        super::build("src", &c, vec![Secret::new(secret)]).unwrap()
    })
    .collect()
}

fn fuzz_cases() -> u32 {
    std::env::var("BLUEHOOK_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256)
}

fn json_like() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..2048),
        "[ -~\\n]{0,512}".prop_map(String::into_bytes),
        "\\{(\"[a-zA-Z_]{1,12}\": ?(\"[ -~]{0,20}\"|[0-9]{1,12}|true|null|\\[\\]|\\{\\}), ?){0,12}\"[a-z]{1,8}\": 1\\}".prop_map(String::into_bytes),
        "([A-Za-z]{1,10}=[%+A-Za-z0-9]{0,20}&){0,10}".prop_map(String::into_bytes),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(fuzz_cases()))]

    /// No body, header or query makes verify or parse panic, for any provider.
    #[test]
    fn fuzz_no_provider_panics(
        body in json_like(),
        header_values in prop::collection::vec("[ -~]{0,80}", 0..4),
        hint in prop::option::of("[a-z_.]{0,16}"),
        query in prop::option::of("[ -~]{0,60}"),
    ) {
        let names = ["sb-signing-secret", "x-bluereplies-signature", "x-twilio-signature", "webhook-id",
            "webhook-timestamp", "webhook-signature", "x-sig", "stripe-signature", "x-hub-signature-256", "host"];
        let mut h = HeaderMap::new();
        for (i, v) in header_values.iter().enumerate() {
            for name in names.iter().skip(i).step_by(3) {
                h.append(HeaderName::from_static(name), HeaderValue::from_str(v).unwrap());
            }
        }
        for p in all_providers() {
            let r = WebhookRequest { source: "src", type_hint: hint.as_deref(), headers: &h, query: query.as_deref(), body: &body, received_at: at(NOW) };
            let _ = p.verify(&r);
            let _ = p.is_unsigned_ping(&r);
            if let Ok(super::Parsed::Events(evs)) = p.parse(&r) {
                for e in evs {
                    // Whatever was accepted serialises and round-trips.
                    prop_assert_eq!(crate::event::Event::from_json(&e.to_json()).unwrap(), e);
                }
            }
        }
    }
}

#[test]
fn hmac_macs_are_algorithm_sized() {
    assert_eq!(Algorithm::Sha1.mac(b"k", &[b"x"]).len(), 20);
    let s: Scheme = hmac_provider("provider = \"github-style\"", "k")
        .scheme()
        .clone();
    assert!(s.sign(b"k", 0, b"x").starts_with("sha256="));
}
