//! Configuration: one TOML document (`bluehook.toml`, or on Lambda `BLUEHOOK_CONFIG` /
//! `BLUEHOOK_CONFIG_SSM`). Secrets are references (`inline`, `env:NAME`, `ssm:/path`) resolved
//! once at start-up into [`Secret`]s, which never print.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("invalid config: {0}")]
    Parse(String),
    #[error("invalid config: {0}")]
    Invalid(String),
    #[error("secret of source `{source_name}`: environment variable `{var}` is not set")]
    MissingEnv { source_name: String, var: String },
    #[error(
        "secret of source `{source_name}`: SSM parameter `{name}` could not be read: {reason}"
    )]
    Ssm {
        source_name: String,
        name: String,
        reason: String,
    },
}

/// Limits and timings of the ingress.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngressConfig {
    /// Largest accepted body; larger answers 413 `too_large`.
    pub max_body_bytes: usize,
    /// How long a completed idempotency key suppresses duplicates (default 72 h).
    pub idempotency_ttl_secs: u64,
    /// How long an in-progress claim holds before another delivery may take it over.
    pub claim_lease_secs: u64,
}

impl Default for IngressConfig {
    fn default() -> Self {
        IngressConfig {
            max_body_bytes: 256 * 1024,
            idempotency_ttl_secs: 72 * 3600,
            claim_lease_secs: 30,
        }
    }
}

/// Queue behaviour of the embedded (SQLite) queues; on AWS the template sets the same numbers.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueueConfig {
    pub visibility_timeout_secs: u64,
    /// Receives after which a message moves to the dead-letter queue.
    pub max_receive_count: u32,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            visibility_timeout_secs: 30,
            max_receive_count: 5,
        }
    }
}

/// One `[sources.NAME]` table. Provider-specific keys stay in `settings` for the provider to read.
#[derive(Debug, Clone, Deserialize)]
pub struct SourceConfig {
    pub provider: String,
    #[serde(default)]
    pub secrets: Vec<String>,
    /// The `[senders.<name>]` that answers this source's contacts (bot replies), from the line
    /// they wrote to.
    #[serde(default)]
    pub sender: Option<String>,
    #[serde(flatten)]
    pub settings: toml::Table,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub ingress: IngressConfig,
    #[serde(default)]
    pub queue: QueueConfig,
    #[serde(default)]
    pub sources: BTreeMap<String, SourceConfig>,
    /// Routing rules and sinks are read by the router and the sinks; kept as written here.
    #[serde(default)]
    pub routes: Vec<toml::Value>,
    #[serde(default)]
    pub sinks: BTreeMap<String, toml::Value>,
    /// `[destinations.<name>]`: the user's own endpoints, read by the delivery stage.
    #[serde(default)]
    pub destinations: BTreeMap<String, toml::Value>,
    /// `[senders.<name>]`: outbound messaging accounts (bot replies, follow-ups, the SMS
    /// fallback).
    #[serde(default)]
    pub senders: BTreeMap<String, toml::Value>,
    /// `[[followups]]`: read but no reply -> follow up (read by the follow-ups module).
    #[serde(default)]
    pub followups: Vec<toml::Value>,
    /// `[alerts.<name>]`: tell a team channel when messages fail (read by the alerts module).
    #[serde(default)]
    pub alerts: BTreeMap<String, toml::Value>,
}

impl Config {
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| parse_error(text, &e))?;
        config.validate()?;
        Ok(config)
    }

    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Config::from_toml(&text)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.ingress.max_body_bytes == 0 {
            return Err(ConfigError::Invalid(
                "ingress.max_body_bytes must be > 0".into(),
            ));
        }
        if self.ingress.claim_lease_secs == 0 || self.ingress.idempotency_ttl_secs == 0 {
            return Err(ConfigError::Invalid(
                "ingress.claim_lease_secs and ingress.idempotency_ttl_secs must be > 0".into(),
            ));
        }
        if self.queue.max_receive_count == 0 {
            return Err(ConfigError::Invalid(
                "queue.max_receive_count must be > 0".into(),
            ));
        }
        for (name, source) in &self.sources {
            if !valid_source_name(name) {
                return Err(ConfigError::Invalid(format!(
                    "source name `{name}`: use 1-64 letters, digits, `-` or `_`"
                )));
            }
            if let Some(sender) = &source.sender {
                if !self.senders.contains_key(sender) {
                    return Err(ConfigError::Invalid(format!(
                        "[sources.{name}]: sender `{sender}` is not defined: add a [senders.{sender}] section"
                    )));
                }
            }
        }
        let fallback_sender = self
            .sinks
            .get("sms_fallback")
            .and_then(|s| s.get("sender"))
            .map(|s| s.as_str().unwrap_or_default().to_owned());
        if let Some(sender) = fallback_sender {
            if !self.senders.contains_key(&sender) {
                return Err(ConfigError::Invalid(format!(
                    "[sinks.sms_fallback]: sender `{sender}` is not defined: add a [senders.{sender}] section"
                )));
            }
        }
        Ok(())
    }
}

/// Source names appear in URLs and keys: a small safe alphabet.
pub fn valid_source_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A TOML error as a line, a column and what is wrong, without the snippet of the document
/// that the parser's own message quotes and with quoted values left out: the line at fault may
/// hold a secret (`invalid type: string "…"` would print it).
fn parse_error(text: &str, e: &toml::de::Error) -> ConfigError {
    let mut message = String::new();
    let mut quoted = false;
    for c in e.message().trim().chars() {
        if c == '"' {
            if !quoted {
                message.push_str("\"…\"");
            }
            quoted = !quoted;
        } else if !quoted {
            message.push(c);
        }
    }
    match e.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before[before.rfind('\n').map_or(0, |i| i + 1)..]
                .chars()
                .count()
                + 1;
            ConfigError::Parse(format!("line {line}, column {column}: {message}"))
        }
        None => ConfigError::Parse(message),
    }
}

/// A resolved secret. Its `Debug` and `Display` never show the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Where a secret's value comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretRef {
    Inline(Secret),
    Env(String),
    Ssm(String),
}

impl SecretRef {
    pub fn parse(text: &str) -> SecretRef {
        if let Some(var) = text.strip_prefix("env:") {
            SecretRef::Env(var.to_owned())
        } else if let Some(name) = text.strip_prefix("ssm:") {
            SecretRef::Ssm(name.to_owned())
        } else {
            SecretRef::Inline(Secret::new(text))
        }
    }
}

/// Reads `ssm:` references; on AWS an SSM client, in tests anything.
#[async_trait::async_trait]
pub trait SsmReader: Send + Sync {
    async fn get_secure(&self, name: &str) -> Result<String, String>;
}

#[cfg(feature = "aws")]
#[async_trait::async_trait]
impl SsmReader for aws_sdk_ssm::Client {
    async fn get_secure(&self, name: &str) -> Result<String, String> {
        let out = self
            .get_parameter()
            .name(name)
            .with_decryption(true)
            .send()
            .await
            .map_err(|e| aws_sdk_ssm::error::DisplayErrorContext(e).to_string())?;
        out.parameter
            .and_then(|p| p.value)
            .ok_or_else(|| "parameter has no value".to_owned())
    }
}

/// Resolves the secret references of one source. `ssm` is asked only when an `ssm:` reference
/// is present.
pub async fn resolve_secrets(
    source_name: &str,
    refs: &[String],
    ssm: Option<&dyn SsmReader>,
) -> Result<Vec<Secret>, ConfigError> {
    let mut out = Vec::with_capacity(refs.len());
    for r in refs {
        match SecretRef::parse(r) {
            SecretRef::Inline(s) => out.push(s),
            SecretRef::Env(var) => match std::env::var(&var) {
                Ok(v) => out.push(Secret::new(v)),
                Err(_) => {
                    return Err(ConfigError::MissingEnv {
                        source_name: source_name.to_owned(),
                        var,
                    })
                }
            },
            SecretRef::Ssm(name) => {
                let reader = ssm.ok_or_else(|| ConfigError::Ssm {
                    source_name: source_name.to_owned(),
                    name: name.clone(),
                    reason: "no AWS access configured".into(),
                })?;
                let value = reader
                    .get_secure(&name)
                    .await
                    .map_err(|reason| ConfigError::Ssm {
                        source_name: source_name.to_owned(),
                        name: name.clone(),
                        reason,
                    })?;
                out.push(Secret::new(value));
            }
        }
    }
    // An empty string is no secret: it would let anyone in with an empty header.
    out.retain(|s| !s.expose().is_empty());
    Ok(out)
}

/// True when a string anywhere in `v` (nested tables included) is an `ssm:` reference.
fn refers_to_ssm(v: &toml::Value) -> bool {
    match v {
        toml::Value::String(s) => s.starts_with("ssm:"),
        toml::Value::Table(t) => t.values().any(refers_to_ssm),
        toml::Value::Array(a) => a.iter().any(refers_to_ssm),
        _ => false,
    }
}

/// True when any source, sink or destination refers to SSM, so callers build an SSM client
/// only when needed.
pub fn needs_ssm(config: &Config) -> bool {
    config.sinks.values().any(refers_to_ssm)
        || config.destinations.values().any(refers_to_ssm)
        || config
            .sources
            .values()
            .flat_map(|s| s.secrets.iter())
            .any(|r| r.starts_with("ssm:"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn product_example_parses() {
        let text = r#"
[sources.sendblue]
provider = "sendblue"
secrets = ["env:SENDBLUE_SECRET", "old-secret-during-rotation"]

[sources.twilio]
provider = "twilio"
secrets = ["<auth token>"]
public_url = "https://hooks.example.com/webhooks/twilio"

[[routes]]
when = { kind = "message.status", status = ["failed"], service = "iMessage" }
to = ["sms_fallback", "crm", "analytics"]

[sinks.analytics]
"#;
        let c = Config::from_toml(text).unwrap();
        assert_eq!(c.sources["sendblue"].provider, "sendblue");
        assert_eq!(c.sources["sendblue"].secrets.len(), 2);
        assert_eq!(
            c.sources["twilio"].settings["public_url"].as_str(),
            Some("https://hooks.example.com/webhooks/twilio")
        );
        assert_eq!(c.ingress.max_body_bytes, 262_144);
        assert_eq!(c.ingress.idempotency_ttl_secs, 259_200);
        assert_eq!(c.routes.len(), 1);
    }

    #[test]
    fn rejects_unsafe_source_names_and_unknown_sections() {
        let e = Config::from_toml("[sources.\"../x\"]\nprovider = \"sendblue\"\n").unwrap_err();
        assert!(e.to_string().contains("source name"), "{e}");
        assert!(Config::from_toml("[ingres]\nmax_body_bytes = 1\n").is_err());
        assert!(Config::from_toml("[ingress]\nmax_body_bytes = 0\n").is_err());
    }

    #[tokio::test]
    async fn resolves_inline_and_env_and_names_missing_env_without_value() {
        std::env::set_var("BLUEHOOK_TEST_SECRET_A", "from-env");
        let got = resolve_secrets(
            "s",
            &[
                "inline-1".into(),
                "env:BLUEHOOK_TEST_SECRET_A".into(),
                "".into(),
            ],
            None,
        )
        .await
        .unwrap();
        assert_eq!(got, vec![Secret::new("inline-1"), Secret::new("from-env")]);
        let err = resolve_secrets("s", &["env:BLUEHOOK_TEST_SECRET_MISSING".into()], None)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("BLUEHOOK_TEST_SECRET_MISSING"));
        let err = resolve_secrets("s", &["ssm:/x".into()], None)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("/x"));
    }

    #[test]
    fn secrets_never_print() {
        let s = Secret::new("hunter2-very-secret");
        assert!(!format!("{s:?} {s}").contains("hunter2"));
        let r = SecretRef::parse("hunter2-very-secret");
        assert!(!format!("{r:?}").contains("hunter2"));
    }
}
