//! Providers: how each one authenticates a webhook and turns its body into [`Event`]s.
//!
//! A provider is one module. Adding one touches that module and one line of [`build`] and
//! [`sample_request`].

pub mod sendblue;

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
}

impl AuthError {
    /// Stable machine-readable reason, used in logs and in `stats`.
    pub fn reason(self) -> &'static str {
        match self {
            AuthError::MissingSignature => "missing_signature",
            AuthError::DuplicateHeader => "duplicate_header",
            AuthError::BadSignature => "bad_signature",
            AuthError::NoSecrets => "no_secrets",
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
}

/// One configured source's provider: it holds the source's secrets and settings.
pub trait Provider: Send + Sync {
    fn name(&self) -> &'static str;
    fn verify(&self, req: &WebhookRequest<'_>) -> Result<(), AuthError>;
    fn parse(&self, req: &WebhookRequest<'_>) -> Result<Parsed, ParseError>;
}

/// Builds the provider of a configured source from its settings and resolved secrets.
pub fn build(
    source_name: &str,
    config: &SourceConfig,
    secrets: Vec<Secret>,
) -> Result<Arc<dyn Provider>, ConfigError> {
    match config.provider.as_str() {
        sendblue::NAME => Ok(Arc::new(sendblue::Sendblue::from_config(
            source_name,
            config,
            secrets,
        )?)),
        other => Err(ConfigError::Invalid(format!(
            "source `{source_name}`: unknown provider `{other}` (known: {})",
            PROVIDERS.join(", ")
        ))),
    }
}

/// Every provider name [`build`] knows.
pub const PROVIDERS: &[&str] = &[sendblue::NAME];

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
    /// Path suffix after `/webhooks/{source}` (for example `/outbound`), if the provider uses one.
    pub path_suffix: Option<String>,
    pub content_type: &'static str,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// Every `<provider>.<event>` pair that `bluehook send` knows.
pub fn sample_names() -> Vec<String> {
    sendblue::SAMPLE_EVENTS
        .iter()
        .map(|e| format!("{}.{e}", sendblue::NAME))
        .collect()
}

/// Builds the signed sample `<provider>.<event>`.
pub fn sample_request(
    provider: &str,
    event: &str,
    opts: &SampleOptions,
    secret: &Secret,
) -> Result<SampleRequest, String> {
    match provider {
        sendblue::NAME => sendblue::sample(event, opts, secret),
        other => Err(format!(
            "unknown provider `{other}`; known samples: {}",
            sample_names().join(", ")
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn single_header_rejects_missing_and_repeated() {
        let mut h = HeaderMap::new();
        assert_eq!(single_header(&h, "x-sig"), Err(AuthError::MissingSignature));
        h.append("x-sig", "a".parse().unwrap());
        assert_eq!(single_header(&h, "x-sig"), Ok(&b"a"[..]));
        h.append("x-sig", "b".parse().unwrap());
        assert_eq!(single_header(&h, "x-sig"), Err(AuthError::DuplicateHeader));
    }
}
