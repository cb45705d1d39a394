//! Destinations: the user's own HTTP endpoints, each a `[destinations.<name>]` section, addressed
//! by routes exactly like the built-in sinks. This module owns their settings and what one
//! delivery attempt sends and how its answer is judged: a [`Target`] that
//! [`crate::delivery`] runs like every other (effect keys, retries with backoff,
//! dead-lettering, the record of every attempt).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use http::header::{HeaderName, HeaderValue};

use crate::config::{ConfigError, Secret, SsmReader};
use crate::delivery::{Outcome, Planned, Policy, Target};
use crate::event::Event;
use crate::provider::standard_webhooks;
use crate::sinks::SinkSettings;

/// Names a destination may not take: the built-in sinks.
pub const RESERVED: [&str; 3] = ["crm", "sms_fallback", "analytics"];

/// What a delivery's body is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyMode {
    /// The canonical event JSON.
    Event,
    /// The provider's original bytes and Content-Type, so an existing handler keeps working.
    Raw,
}

pub use crate::delivery::RetryPolicy;

/// One `[destinations.<name>]`.
pub struct Destination {
    pub name: String,
    pub url: reqwest::Url,
    pub body: BodyMode,
    /// Standard Webhooks signing key, from `secret`.
    key: Option<Vec<u8>>,
    headers: Vec<(HeaderName, Secret)>,
    pub timeout: Duration,
    pub retry: RetryPolicy,
    pub rate_limit_per_sec: Option<u32>,
    /// Its 2xx answer may carry a reply to the contact (automations).
    pub reply: bool,
    client: reqwest::Client,
}

impl std::fmt::Debug for Destination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Destination")
            .field("name", &self.name)
            .field("origin", &self.origin())
            .finish_non_exhaustive()
    }
}

/// How an attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptResult {
    /// The destination answered; `retry_after` from a 429 or 503.
    Answered {
        status: u16,
        retry_after: Option<Duration>,
        body: Vec<u8>,
    },
    /// No answer: `timeout`, `connect` (refused, unreachable, TLS) or `reset` (the connection
    /// broke after the request went out).
    Failed { class: &'static str },
}

impl AttemptResult {
    pub fn delivered(&self) -> bool {
        matches!(self, AttemptResult::Answered { status, .. } if (200..300).contains(status))
    }

    /// The HTTP status, when there was an answer.
    pub fn status(&self) -> Option<u16> {
        match self {
            AttemptResult::Answered { status, .. } => Some(*status),
            AttemptResult::Failed { .. } => None,
        }
    }

    /// The error class of an attempt that got no answer.
    pub fn error_class(&self) -> Option<&'static str> {
        match self {
            AttemptResult::Answered { .. } => None,
            AttemptResult::Failed { class } => Some(class),
        }
    }

    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            AttemptResult::Answered { retry_after, .. } => *retry_after,
            AttemptResult::Failed { .. } => None,
        }
    }
}

/// Most bytes of an answer kept (a bot's reply is short; the rest is read and dropped).
const MAX_ANSWER_BYTES: usize = 64 * 1024;

impl Destination {
    /// Reads `[destinations.<name>]`; unknown settings are refused.
    pub async fn from_config(
        name: &str,
        value: &toml::Value,
        ssm: Option<&dyn SsmReader>,
    ) -> Result<Destination, ConfigError> {
        if RESERVED.contains(&name) {
            return Err(ConfigError::Invalid(format!(
                "[destinations.{name}]: `{name}` is a built-in sink; choose another name"
            )));
        }
        if !crate::config::valid_source_name(name) {
            return Err(ConfigError::Invalid(format!(
                "destination name `{name}`: use 1-64 letters, digits, `-` or `_`"
            )));
        }
        let mut s = SinkSettings::section("destinations", name, value)?;
        let url_text = s.required("url")?;
        let url = reqwest::Url::parse(&url_text)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
            .ok_or_else(|| s.invalid("`url` must be an http(s) URL"))?;
        let body = match s.str("body")?.as_deref() {
            None | Some("event") => BodyMode::Event,
            Some("raw") => BodyMode::Raw,
            Some(other) => {
                return Err(s.invalid(format!("`body` is \"event\" or \"raw\", not `{other}`")))
            }
        };
        let key = match s.str("secret")? {
            None => None,
            Some(_) => {
                let secret = s.secret("secret", ssm).await?;
                Some(
                    standard_webhooks::decode_secret(secret.expose())
                        .unwrap_or_else(|| secret.expose().as_bytes().to_vec()),
                )
            }
        };
        let mut headers = Vec::new();
        for (header, reference) in s.table("headers")? {
            let name = HeaderName::from_bytes(header.as_bytes())
                .map_err(|_| s.invalid(format!("`headers`: `{header}` is not a header name")))?;
            let reference = reference
                .as_str()
                .ok_or_else(|| s.invalid(format!("`headers.{header}` must be a string")))?;
            let value = crate::config::resolve_secrets(
                &format!("destinations.{name}"),
                &[reference.to_owned()],
                ssm,
            )
            .await?
            .into_iter()
            .next()
            .ok_or_else(|| s.invalid(format!("`headers.{header}` is empty")))?;
            if HeaderValue::from_str(value.expose()).is_err() {
                return Err(s.invalid(format!("`headers.{header}` is not a valid header value")));
            }
            headers.push((name, value));
        }
        let timeout = Duration::from_secs(s.u64("timeout_secs")?.unwrap_or(10).max(1));
        let max_attempts = s.u64("max_attempts")?.unwrap_or(8);
        if max_attempts == 0 || max_attempts > 100 {
            return Err(s.invalid("`max_attempts` must be 1 to 100"));
        }
        let first_delay = Duration::from_secs(s.u64("retry_delay_secs")?.unwrap_or(5));
        let max_delay = Duration::from_secs(s.u64("max_retry_delay_secs")?.unwrap_or(3600));
        // SQS hides a message for at most 12 hours: the longest wait a retry can take on AWS.
        if max_delay > Duration::from_secs(12 * 3600) || first_delay > max_delay {
            return Err(s.invalid(
                "`retry_delay_secs` must not exceed `max_retry_delay_secs`, which is at most 43200 (12 h)",
            ));
        }
        let rate_limit_per_sec = match s.u64("rate_limit_per_sec")? {
            None => None,
            Some(0) => return Err(s.invalid("`rate_limit_per_sec` must be > 0")),
            Some(n) => Some(u32::try_from(n).unwrap_or(u32::MAX)),
        };
        let reply = s.bool("reply")?.unwrap_or(false);
        s.finish()?;
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            // A redirect is an answer like any other: never followed (it could lead anywhere).
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("bluehook/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("an HTTP client with rustls builds");
        Ok(Destination {
            name: name.to_owned(),
            url,
            body,
            key,
            headers,
            timeout,
            retry: RetryPolicy {
                max_attempts: max_attempts as u32,
                first_delay,
                max_delay,
            },
            rate_limit_per_sec,
            reply,
            client,
        })
    }

    /// The URL's origin (scheme, host, port): all of it that may be shown. Paths and queries
    /// often carry tokens.
    pub fn origin(&self) -> String {
        self.url.origin().ascii_serialization()
    }

    /// The body and Content-Type of a delivery of `event`.
    pub fn body_of(&self, event: &Event) -> (Vec<u8>, String) {
        match self.body {
            BodyMode::Event => (event.to_json().into_bytes(), "application/json".to_owned()),
            BodyMode::Raw => (
                event.raw_body.clone().into_bytes(),
                event
                    .raw_content_type
                    .clone()
                    .unwrap_or_else(|| "application/json".to_owned()),
            ),
        }
    }

    /// One attempt: POST the event, `webhook-id` = the event id (the same on every attempt and
    /// redelivery), `webhook-timestamp`, with a secret `webhook-signature`.
    pub async fn attempt(&self, event: &Event) -> (AttemptResult, Duration) {
        let (body, content_type) = self.body_of(event);
        let ts = chrono::Utc::now().timestamp();
        let mut req = self
            .client
            .post(self.url.clone())
            .header(http::header::CONTENT_TYPE, content_type)
            .header("webhook-id", &event.id)
            .header("webhook-timestamp", ts.to_string());
        if let Some(key) = &self.key {
            req = req.header(
                "webhook-signature",
                standard_webhooks::sign(key, &event.id, ts, &body),
            );
        }
        for (name, value) in &self.headers {
            req = req.header(name, value.expose());
        }
        let started = Instant::now();
        let result = match req.body(body).send().await {
            Ok(mut r) => {
                let status = r.status().as_u16();
                let retry_after = match status {
                    429 | 503 => r
                        .headers()
                        .get(http::header::RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(parse_retry_after),
                    _ => None,
                };
                let mut body = Vec::new();
                let mut cut = false;
                loop {
                    match r.chunk().await {
                        Ok(Some(chunk)) => {
                            if body.len() + chunk.len() <= MAX_ANSWER_BYTES {
                                body.extend_from_slice(&chunk);
                            }
                        }
                        Ok(None) => break,
                        Err(_) => {
                            cut = true;
                            break;
                        }
                    }
                }
                if cut {
                    // The connection broke mid-answer: whatever the status line said, try
                    // again (the receiver drops a copy by its webhook-id).
                    AttemptResult::Failed { class: "reset" }
                } else {
                    AttemptResult::Answered {
                        status,
                        retry_after,
                        body,
                    }
                }
            }
            Err(e) => AttemptResult::Failed {
                class: error_class(&e),
            },
        };
        (result, started.elapsed())
    }
}

#[async_trait]
impl Target for Destination {
    type Work = ();

    fn name(&self) -> &str {
        &self.name
    }

    fn policy(&self) -> Policy {
        Policy {
            retry: self.retry,
            effects: "destination",
            // An attempt holds its claim for at most its timeout; a crash mid-attempt frees it
            // soon after.
            lease: self.timeout + Duration::from_secs(30),
            ttl: Duration::from_secs(7 * 24 * 3600),
            // Every attempt carries the same webhook-id: the receiver drops a copy.
            repeat_unknown: true,
            rate_limit_per_sec: self.rate_limit_per_sec,
        }
    }

    async fn plan(&self, event: &Event) -> Result<Planned<()>, String> {
        Ok(Planned::Effect {
            key: format!("{}:{}", self.name, event.id),
            work: (),
        })
    }

    async fn perform(&self, event: &Event, _: &()) -> Outcome {
        match self.attempt(event).await.0 {
            AttemptResult::Answered { status, body, .. } if (200..300).contains(&status) => {
                // A bot's reply to an inbound message is kept with the effect (its result) and
                // leads to the reply's send ([`Target::follow_on`]).
                let reply = (self.reply && crate::sinks::reply::answers(event))
                    .then(|| crate::sinks::reply::parse(&body))
                    .flatten();
                Outcome::Done {
                    status: Some(status),
                    result: reply,
                }
            }
            AttemptResult::Answered {
                status,
                retry_after,
                ..
            } => Outcome::Failed {
                status: Some(status),
                error: None,
                detail: None,
                retry_after,
                definite: true,
            },
            AttemptResult::Failed { class } => Outcome::Failed {
                status: None,
                error: Some(class),
                detail: None,
                retry_after: None,
                definite: false,
            },
        }
    }

    fn follow_on(&self, event: &Event, result: Option<&str>) -> Option<crate::delivery::FollowOn> {
        let text = result.filter(|_| self.reply)?;
        Some(crate::sinks::reply::follow_on(event, text))
    }
}

/// `Retry-After` as seconds or an HTTP date.
fn parse_retry_after(v: &str) -> Option<Duration> {
    let v = v.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = chrono::DateTime::parse_from_rfc2822(v).ok()?;
    let secs = (at.timestamp() - chrono::Utc::now().timestamp()).max(0);
    Some(Duration::from_secs(secs as u64))
}

/// The class of an attempt that got no answer.
pub fn error_class(e: &reqwest::Error) -> &'static str {
    if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connect"
    } else {
        "reset"
    }
}

/// Every `[destinations.*]`, by name.
pub async fn from_config(
    sections: &BTreeMap<String, toml::Value>,
    ssm: Option<&dyn SsmReader>,
) -> Result<BTreeMap<String, Destination>, ConfigError> {
    let mut out = BTreeMap::new();
    for (name, value) in sections {
        out.insert(
            name.clone(),
            Destination::from_config(name, value, ssm).await?,
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn parse(text: &str) -> Result<Destination, ConfigError> {
        let v: toml::Value = toml::from_str(text).unwrap();
        Destination::from_config("bot", &v, None).await
    }

    #[tokio::test]
    async fn every_setting_of_the_contract_and_its_defaults() {
        std::env::set_var("BLUEHOOK_TEST_BOT_TOKEN", "Bearer t0ken-bot-9f");
        let d = parse(
            r#"
url = "https://bot.example.com/hooks/messages?k=secret-in-query"
body = "raw"
secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
headers = { Authorization = "env:BLUEHOOK_TEST_BOT_TOKEN", X-Team = "blue" }
timeout_secs = 3
max_attempts = 4
retry_delay_secs = 2
max_retry_delay_secs = 60
rate_limit_per_sec = 50
reply = true
"#,
        )
        .await
        .unwrap();
        assert_eq!(d.body, BodyMode::Raw);
        assert_eq!(d.timeout, Duration::from_secs(3));
        assert_eq!(
            d.retry,
            RetryPolicy {
                max_attempts: 4,
                first_delay: Duration::from_secs(2),
                max_delay: Duration::from_secs(60)
            }
        );
        assert_eq!(d.rate_limit_per_sec, Some(50));
        assert!(d.reply && d.key.is_some());
        assert_eq!(d.headers.len(), 2);
        assert_eq!(d.origin(), "https://bot.example.com");
        let shown = format!("{d:?}");
        assert!(
            !shown.contains("secret-in-query") && !shown.contains("t0ken"),
            "{shown}"
        );

        let d = parse("url = \"http://127.0.0.1:9/x\"").await.unwrap();
        assert_eq!(d.body, BodyMode::Event);
        assert_eq!(d.retry.max_attempts, 8);
        assert_eq!(d.retry.first_delay, Duration::from_secs(5));
        assert_eq!(d.retry.max_delay, Duration::from_secs(3600));
        assert_eq!(d.timeout, Duration::from_secs(10));
        assert!(!d.reply && d.key.is_none() && d.rate_limit_per_sec.is_none());
    }

    #[tokio::test]
    async fn bad_settings_are_refused_by_name() {
        for (text, needle) in [
            ("url = \"ftp://x\"", "url"),
            ("body = \"event\"", "`url` is required"),
            ("url = \"http://x\"\nbody = \"xml\"", "body"),
            (
                "url = \"http://x\"\ncolour = \"blue\"",
                "unknown setting `colour`",
            ),
            ("url = \"http://x\"\nmax_attempts = 0", "max_attempts"),
            (
                "url = \"http://x\"\nrate_limit_per_sec = 0",
                "rate_limit_per_sec",
            ),
            (
                "url = \"http://x\"\nretry_delay_secs = 10\nmax_retry_delay_secs = 5",
                "retry_delay_secs",
            ),
            (
                "url = \"http://x\"\nheaders = { X = \"env:BLUEHOOK_TEST_UNSET_9\" }",
                "BLUEHOOK_TEST_UNSET_9",
            ),
            ("url = \"http://x\"\nreply = \"yes\"", "reply"),
        ] {
            let e = parse(text).await.unwrap_err().to_string();
            assert!(
                e.contains(needle) && e.contains("[destinations.bot]") || e.contains(needle),
                "{text}: {e}"
            );
        }
        let v: toml::Value = toml::from_str("url = \"http://x\"").unwrap();
        let e = Destination::from_config("crm", &v, None).await.unwrap_err();
        assert!(e.to_string().contains("built-in sink"), "{e}");
    }

    #[test]
    fn backoff_doubles_with_jitter_and_honours_retry_after_up_to_the_cap() {
        let p = RetryPolicy {
            max_attempts: 8,
            first_delay: Duration::from_secs(5),
            max_delay: Duration::from_secs(60),
        };
        assert_eq!(p.delay_after(1, None, 1.0), Duration::from_secs(5));
        assert_eq!(p.delay_after(2, None, 1.0), Duration::from_secs(10));
        assert_eq!(p.delay_after(3, None, 1.0), Duration::from_secs(20));
        assert_eq!(
            p.delay_after(5, None, 1.0),
            Duration::from_secs(60),
            "capped"
        );
        assert_eq!(p.delay_after(40, None, 1.0), Duration::from_secs(60));
        assert_eq!(
            p.delay_after(2, None, 0.0),
            Duration::from_secs(5),
            "half at least"
        );
        assert_eq!(
            p.delay_after(1, Some(Duration::from_secs(30)), 0.0),
            Duration::from_secs(30)
        );
        assert_eq!(
            p.delay_after(1, Some(Duration::from_secs(600)), 0.0),
            Duration::from_secs(60)
        );
        assert_eq!(parse_retry_after("7"), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after("soon"), None);
    }
}
