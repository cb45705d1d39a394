//! Providers: how each one authenticates a webhook and turns its body into [`Event`]s.
//!
//! A provider is one module. Adding one touches that module and one line of [`build`] and
//! [`sample_request`].

pub mod bluereplies;
pub mod generic;
pub mod hmac;
#[cfg(test)]
mod props;
pub mod sendblue;
pub mod signing;
pub mod standard_webhooks;
pub mod twilio;

use std::sync::Arc;

use chrono::{DateTime, Utc};
use http::HeaderMap;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::{ConfigError, Secret, SourceConfig};
use crate::event::Event;

/// The parts of an HTTP request a provider looks at. The body is the raw bytes received.
#[derive(Debug, Clone, Copy)]
pub struct WebhookRequest<'a> {
    /// The configured source (`{source}` in the URL).
    pub source: &'a str,
    /// The optional `{type}` path segment.
    pub type_hint: Option<&'a str>,
    pub headers: &'a HeaderMap,
    pub query: Option<&'a str>,
    pub body: &'a [u8],
    pub received_at: DateTime<Utc>,
}

/// Why a request was not authenticated. The reason is safe to log and count: it never
/// contains a secret or a signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("signature header missing")]
    MissingSignature,
    #[error("signature header sent more than once")]
    DuplicateHeader,
    #[error("signature does not match any configured secret")]
    BadSignature,
    #[error("no secret is configured for this source")]
    NoSecrets,
    #[error("signature header is malformed")]
    MalformedSignature,
    #[error("timestamp header missing")]
    MissingTimestamp,
    #[error("timestamp is malformed")]
    MalformedTimestamp,
    #[error("timestamp is outside the tolerance")]
    TimestampOutOfTolerance,
    #[error("body does not match the signed body hash")]
    BodyHashMismatch,
}

impl AuthError {
    /// Stable machine-readable reason, used in logs and in `stats`.
    pub fn reason(self) -> &'static str {
        match self {
            AuthError::MissingSignature => "missing_signature",
            AuthError::DuplicateHeader => "duplicate_header",
            AuthError::BadSignature => "bad_signature",
            AuthError::NoSecrets => "no_secrets",
            AuthError::MalformedSignature => "malformed_signature",
            AuthError::MissingTimestamp => "missing_timestamp",
            AuthError::MalformedTimestamp => "malformed_timestamp",
            AuthError::TimestampOutOfTolerance => "timestamp_out_of_tolerance",
            AuthError::BodyHashMismatch => "body_hash_mismatch",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("body is not valid JSON: {0}")]
    NotJson(String),
}

/// What a verified body turned into.
#[derive(Debug)]
pub enum Parsed {
    Events(Vec<Event>),
    /// A provider's registration ping: answered 200 at once, never queued.
    Ping,
}

/// One configured source's provider: it holds the source's secrets and settings.
pub trait Provider: Send + Sync {
    fn name(&self) -> &'static str;
    fn verify(&self, req: &WebhookRequest<'_>) -> Result<(), AuthError>;
    fn parse(&self, req: &WebhookRequest<'_>) -> Result<Parsed, ParseError>;
    /// Whether a request without any signature is this provider's registration ping, which
    /// carries no data and is answered 200 without being queued.
    fn is_unsigned_ping(&self, _req: &WebhookRequest<'_>) -> bool {
        false
    }
    /// A correctly signed sample of `event` for posting to `url` (`bluehook send`), signed with
    /// this source's first secret.
    fn sample(&self, event: &str, opts: &SampleOptions, url: &str)
        -> Result<SampleRequest, String>;
}

/// Builds the provider of a configured source from its settings and resolved secrets. One
/// line per provider.
pub fn build(
    source_name: &str,
    config: &SourceConfig,
    secrets: Vec<Secret>,
) -> Result<Arc<dyn Provider>, ConfigError> {
    let settings = Settings::new(source_name, &config.provider, &config.settings);
    let provider: Arc<dyn Provider> = match config.provider.as_str() {
        sendblue::NAME => Arc::new(sendblue::Sendblue::from_settings(settings, secrets)?),
        bluereplies::NAME => Arc::new(bluereplies::BlueReplies::from_settings(settings, secrets)?),
        twilio::NAME => Arc::new(twilio::Twilio::from_settings(settings, secrets)?),
        standard_webhooks::NAME => Arc::new(standard_webhooks::StandardWebhooks::from_settings(
            settings, secrets,
        )?),
        name if hmac::NAMES.contains(&name) => {
            Arc::new(hmac::HmacProvider::from_settings(settings, secrets)?)
        }
        other => {
            return Err(ConfigError::Invalid(format!(
                "source `{source_name}`: unknown provider `{other}` (known: {})",
                PROVIDERS.join(", ")
            )))
        }
    };
    Ok(provider)
}

/// Every provider name [`build`] knows.
pub const PROVIDERS: &[&str] = &[
    sendblue::NAME,
    bluereplies::NAME,
    twilio::NAME,
    standard_webhooks::NAME,
    "hmac",
    "bluemessaggio",
    "stripe-style",
    "github-style",
];

/// Deepest nesting of JSON arrays and objects a webhook body may have. Provider payloads nest a
/// few levels; anything deeper is refused before parsing, so no consumer of the stored raw
/// body meets a document its parser would reject (serde_json stops at 128).
pub const MAX_JSON_DEPTH: usize = 64;

/// Whether a JSON-looking body nests arrays and objects deeper than `max` (strings and their
/// escapes are skipped; a body that is not JSON is left to the parser).
pub fn json_nesting_exceeds(body: &[u8], max: usize) -> bool {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for &b in body {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

/// Every `(provider, events)` that `bluehook send` has samples for.
pub const SAMPLES: &[(&str, &[&str])] = &[
    (sendblue::NAME, sendblue::SAMPLE_EVENTS),
    (bluereplies::NAME, bluereplies::SAMPLE_EVENTS),
    (twilio::NAME, twilio::SAMPLE_EVENTS),
    (standard_webhooks::NAME, generic::SAMPLE_EVENTS),
    ("bluemessaggio", generic::SAMPLE_EVENTS),
    ("stripe-style", generic::SAMPLE_EVENTS),
    ("github-style", generic::SAMPLE_EVENTS),
    ("hmac", generic::SAMPLE_EVENTS),
];

/// A source's provider-specific settings, read key by key; unknown keys are refused.
pub struct Settings<'a> {
    pub source: &'a str,
    pub provider: &'a str,
    table: &'a toml::Table,
    used: std::cell::RefCell<Vec<&'a str>>,
}

impl<'a> Settings<'a> {
    pub fn new(source: &'a str, provider: &'a str, table: &'a toml::Table) -> Settings<'a> {
        Settings {
            source,
            provider,
            table,
            used: Default::default(),
        }
    }

    pub fn invalid(&self, msg: impl std::fmt::Display) -> ConfigError {
        ConfigError::Invalid(format!("source `{}`: {msg}", self.source))
    }

    fn get(&self, key: &'a str) -> Option<&'a toml::Value> {
        self.used.borrow_mut().push(key);
        self.table.get(key)
    }

    pub fn str(&self, key: &'a str) -> Result<Option<&'a str>, ConfigError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_str()
                .map(Some)
                .ok_or_else(|| self.invalid(format!("`{key}` must be a string"))),
        }
    }

    pub fn bool(&self, key: &'a str) -> Result<Option<bool>, ConfigError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_bool()
                .map(Some)
                .ok_or_else(|| self.invalid(format!("`{key}` must be true or false"))),
        }
    }

    pub fn u64(&self, key: &'a str) -> Result<Option<u64>, ConfigError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_integer()
                .and_then(|i| u64::try_from(i).ok())
                .map(Some)
                .ok_or_else(|| self.invalid(format!("`{key}` must be a non-negative integer"))),
        }
    }

    /// Refuses keys that no reader asked for (a typo must not silently weaken verification).
    pub fn finish(self) -> Result<(), ConfigError> {
        let used = self.used.borrow();
        for key in self.table.keys() {
            if !used.contains(&key.as_str()) {
                return Err(self.invalid(format!(
                    "unknown setting `{key}` for provider `{}`",
                    self.provider
                )));
            }
        }
        Ok(())
    }
}

/// Compares a presented secret with every accepted one in constant time. Both sides are hashed
/// first, so neither the length nor the position of a match leaks through timing; every
/// secret is compared, match or not.
pub fn matches_any_secret(presented: &[u8], secrets: &[Secret]) -> bool {
    let presented = Sha256::digest(presented);
    let mut found = subtle::Choice::from(0);
    for s in secrets {
        found |= Sha256::digest(s.expose().as_bytes()).ct_eq(&presented);
    }
    found.into()
}

/// The single value of `name`, or the reason there is none.
pub fn single_header<'a>(headers: &'a HeaderMap, name: &str) -> Result<&'a [u8], AuthError> {
    let mut values = headers.get_all(name).iter();
    let first = values.next().ok_or(AuthError::MissingSignature)?;
    if values.next().is_some() {
        return Err(AuthError::DuplicateHeader);
    }
    Ok(first.as_bytes())
}

/// The decoded signature in header `name`: the header must be sent once, some secret must be
/// configured, and the value must decode.
pub fn signature_header(
    headers: &HeaderMap,
    name: &str,
    has_secrets: bool,
    decode: impl Fn(&str) -> Option<Vec<u8>>,
) -> Result<Vec<u8>, AuthError> {
    let raw = single_header(headers, name)?;
    if !has_secrets {
        return Err(AuthError::NoSecrets);
    }
    std::str::from_utf8(raw)
        .ok()
        .and_then(decode)
        .ok_or(AuthError::MalformedSignature)
}

/// Overrides for a sample event made by `bluehook send`.
#[derive(Debug, Clone, Default)]
pub struct SampleOptions {
    pub status: Option<String>,
    pub handle: Option<String>,
    pub content: Option<String>,
}

/// A ready-to-send, correctly signed sample request.
#[derive(Debug, Clone)]
pub struct SampleRequest {
    /// Where to post it (the given URL, with the type segment added where the provider uses one).
    pub url: String,
    pub content_type: &'static str,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// `url` with `/{type}` appended when it ends in `/webhooks/<source>`, so that types that
/// cannot be inferred from a payload arrive typed.
pub fn with_type_segment(url: &str, event_type: &str) -> String {
    let (path, query) = match url.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (url, None),
    };
    let path = path.trim_end_matches('/');
    let mut segments = path.rsplit('/');
    let _source = segments.next();
    if segments.next() != Some("webhooks") {
        return url.to_owned();
    }
    match query {
        Some(q) => format!("{path}/{event_type}?{q}"),
        None => format!("{path}/{event_type}"),
    }
}

/// Every `<provider>.<event>` pair that `bluehook send` knows.
pub fn sample_names() -> Vec<String> {
    SAMPLES
        .iter()
        .flat_map(|(p, events)| events.iter().map(move |e| format!("{p}.{e}")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_nesting_is_measured_outside_strings() {
        assert!(!json_nesting_exceeds(br#"{"a":[{"b":1}]}"#, 3));
        assert!(json_nesting_exceeds(br#"{"a":[{"b":[1]}]}"#, 3));
        assert!(!json_nesting_exceeds(br#"{"a":"[[[[[[\"[[["}"#, 1));
        assert!(json_nesting_exceeds(
            "[".repeat(100_000).as_bytes(),
            MAX_JSON_DEPTH
        ));
        assert!(!json_nesting_exceeds(b"Body=%5B%5B%5B", 1));
    }

    #[test]
    fn constant_time_match_checks_every_secret() {
        let secrets = vec![Secret::new("old"), Secret::new("new")];
        assert!(matches_any_secret(b"old", &secrets));
        assert!(matches_any_secret(b"new", &secrets));
        assert!(!matches_any_secret(b"ne", &secrets));
        assert!(!matches_any_secret(b"", &secrets));
        assert!(!matches_any_secret(b"new", &[]));
    }

    #[test]
    fn type_segment_is_added_to_source_urls_only() {
        assert_eq!(
            with_type_segment("http://h:3000/webhooks/sb", "outbound"),
            "http://h:3000/webhooks/sb/outbound"
        );
        assert_eq!(
            with_type_segment("http://h/webhooks/sb/?a=1", "x"),
            "http://h/webhooks/sb/x?a=1"
        );
        assert_eq!(
            with_type_segment("http://h/webhooks/sb/outbound", "x"),
            "http://h/webhooks/sb/outbound"
        );
        assert_eq!(with_type_segment("http://h/hooks", "x"), "http://h/hooks");
    }

    #[test]
    fn single_header_rejects_missing_and_repeated() {
        let mut h = HeaderMap::new();
        assert_eq!(single_header(&h, "x-sig"), Err(AuthError::MissingSignature));
        h.append("x-sig", "a".parse().unwrap());
        assert_eq!(single_header(&h, "x-sig"), Ok(&b"a"[..]));
        h.append("x-sig", "b".parse().unwrap());
        assert_eq!(single_header(&h, "x-sig"), Err(AuthError::DuplicateHeader));
    }
}
