//! The CRM and SMS-fallback sinks: their configuration (`[sinks.crm]`, `[sinks.sms_fallback]`),
//! their outbound adapters, and the effect keys that make each effect happen once.
//!
//! An effect key is claimed with the same conditional write as the ingress's idempotency keys
//! (`effect:<sink>:<key>` in the same store) before the effect, completed after it, and
//! released when the effect certainly did not happen, so an SQS redelivery never repeats it.

pub mod crm;
pub mod media;
pub mod reply;
pub mod sms;

use std::time::Duration;

use crate::config::{resolve_secrets, ConfigError, Secret, SsmReader};
use crate::idempotency::{Claim, ClaimTimes, ClaimToken, IdempotencyStore};
use crate::sqlite::Db;

/// Why a sink could not do its work; `definite` says the effect certainly did not happen.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct SinkError {
    pub message: String,
    pub definite: bool,
    /// The HTTP status, when the other side answered.
    pub status: Option<u16>,
    /// `timeout`, `connect` or `reset` when it did not.
    pub class: Option<&'static str>,
}

impl SinkError {
    pub fn definite(message: impl Into<String>) -> SinkError {
        SinkError {
            message: message.into(),
            definite: true,
            status: None,
            class: None,
        }
    }

    /// An answer that may have followed the effect (a 2xx without the expected id).
    pub fn unknown(message: impl Into<String>) -> SinkError {
        SinkError {
            definite: false,
            ..SinkError::definite(message)
        }
    }

    /// The other side answered `status`: the effect did not happen.
    pub fn answered(status: u16, message: impl Into<String>) -> SinkError {
        SinkError {
            status: Some(status),
            ..SinkError::definite(message)
        }
    }

    /// The engine's view of this failure.
    pub fn outcome(self) -> crate::delivery::Outcome {
        crate::delivery::Outcome::Failed {
            status: self.status,
            error: self.class,
            detail: Some(self.message),
            retry_after: None,
            definite: self.definite,
        }
    }

    /// From an HTTP client error: a request that never left (connect) certainly did nothing; a
    /// timeout after sending may have done it.
    pub fn from_reqwest(e: reqwest::Error) -> SinkError {
        // Only an error before anything was written (no connection, a request that could not be
        // built) proves the effect did not happen. A connection that closed before the answer
        // came, or a timeout, may follow a request the other side received and acted on.
        let definite = e.is_connect() || e.is_builder();
        let class = if e.is_timeout() {
            Some("timeout")
        } else if e.is_connect() {
            Some("connect")
        } else if e.is_request() || e.is_body() || e.is_decode() {
            Some("reset")
        } else {
            None
        };
        // reqwest's message names the whole URL, and a destination URL may carry a token in
        // its path or query: name only its origin, then the causes.
        let origin = e.url().map(|u| u.origin().ascii_serialization());
        let e = e.without_url();
        let mut message = e.to_string();
        if let Some(origin) = origin {
            message.push_str(&format!(" ({origin})"));
        }
        let mut cause = std::error::Error::source(&e);
        while let Some(c) = cause {
            message.push_str(": ");
            message.push_str(&c.to_string());
            cause = c.source();
        }
        SinkError {
            message,
            definite,
            status: None,
            class,
        }
    }
}

/// A table of `[sinks.<name>]` (or of another section, such as `[destinations.<name>]`), read
/// key by key; unknown keys are refused.
pub struct SinkSettings<'a> {
    /// `sinks.crm`, `destinations.bot`, ...
    section: String,
    name: &'a str,
    table: toml::Table,
    used: Vec<&'static str>,
}

impl<'a> SinkSettings<'a> {
    pub fn new(name: &'a str, value: &toml::Value) -> Result<SinkSettings<'a>, ConfigError> {
        SinkSettings::section("sinks", name, value)
    }

    /// The table `[<kind>.<name>]`.
    pub fn section(
        kind: &str,
        name: &'a str,
        value: &toml::Value,
    ) -> Result<SinkSettings<'a>, ConfigError> {
        let section = format!("{kind}.{name}");
        let table = value
            .as_table()
            .cloned()
            .ok_or_else(|| ConfigError::Invalid(format!("[{section}] must be a table")))?;
        Ok(SinkSettings {
            section,
            name,
            table,
            used: Vec::new(),
        })
    }

    /// The section's own name (`crm`, `bot`, ...).
    pub fn name(&self) -> &'a str {
        self.name
    }

    pub fn invalid(&self, msg: impl std::fmt::Display) -> ConfigError {
        ConfigError::Invalid(format!("[{}]: {msg}", self.section))
    }

    pub fn bool(&mut self, key: &'static str) -> Result<Option<bool>, ConfigError> {
        self.used.push(key);
        match self.table.get(key) {
            None => Ok(None),
            Some(toml::Value::Boolean(b)) => Ok(Some(*b)),
            Some(_) => Err(self.invalid(format!("`{key}` must be true or false"))),
        }
    }

    /// An inline table (`headers = { ... }`), empty when absent.
    pub fn table(&mut self, key: &'static str) -> Result<toml::Table, ConfigError> {
        self.used.push(key);
        match self.table.get(key) {
            None => Ok(toml::Table::new()),
            Some(toml::Value::Table(t)) => Ok(t.clone()),
            Some(_) => Err(self.invalid(format!("`{key}` must be a table"))),
        }
    }

    pub fn str(&mut self, key: &'static str) -> Result<Option<String>, ConfigError> {
        self.used.push(key);
        match self.table.get(key) {
            None => Ok(None),
            Some(toml::Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(self.invalid(format!("`{key}` must be a string"))),
        }
    }

    /// A string or a list of strings (`to = "bot"`, `to = ["bot", "crm"]`).
    pub fn strings(&mut self, key: &'static str) -> Result<Option<Vec<String>>, ConfigError> {
        self.used.push(key);
        let list = match self.table.get(key) {
            None => return Ok(None),
            Some(toml::Value::String(one)) => Some(vec![one.clone()]),
            Some(toml::Value::Array(a)) => a
                .iter()
                .map(|v| v.as_str().map(str::to_owned))
                .collect::<Option<Vec<_>>>(),
            Some(_) => None,
        };
        list.map(Some)
            .ok_or_else(|| self.invalid(format!("`{key}` is a string or a list of strings")))
    }

    pub fn required(&mut self, key: &'static str) -> Result<String, ConfigError> {
        self.str(key)?
            .ok_or_else(|| self.invalid(format!("`{key}` is required")))
    }

    pub fn u64(&mut self, key: &'static str) -> Result<Option<u64>, ConfigError> {
        self.used.push(key);
        match self.table.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_integer()
                .and_then(|i| u64::try_from(i).ok())
                .map(Some)
                .ok_or_else(|| self.invalid(format!("`{key}` must be a non-negative integer"))),
        }
    }

    /// A secret setting (`inline`, `env:NAME` or `ssm:/path`).
    pub async fn secret(
        &mut self,
        key: &'static str,
        ssm: Option<&dyn SsmReader>,
    ) -> Result<Secret, ConfigError> {
        let reference = self.required(key)?;
        resolve_secrets(&self.section, &[reference], ssm)
            .await?
            .into_iter()
            .next()
            .ok_or_else(|| self.invalid(format!("`{key}` is empty")))
    }

    pub fn finish(self) -> Result<(), ConfigError> {
        for key in self.table.keys() {
            if !self.used.contains(&key.as_str()) {
                return Err(self.invalid(format!("unknown setting `{key}`")));
            }
        }
        Ok(())
    }
}

/// Claims effect keys for one sink.
pub struct Effects {
    pub store: std::sync::Arc<dyn IdempotencyStore>,
    pub sink: &'static str,
    /// How long a claim holds while its effect is under way (or of unknown outcome).
    pub lease: Duration,
    /// How long a done effect is remembered.
    pub ttl: Duration,
}

impl Effects {
    /// The whole key of an effect: `effect:<sink>:<key>`.
    pub fn full_key(&self, key: &str) -> String {
        format!("effect:{}:{key}", self.sink)
    }

    fn times(&self) -> ClaimTimes {
        ClaimTimes {
            now_ms: chrono::Utc::now().timestamp_millis(),
            lease: self.lease,
            ttl: self.ttl,
        }
    }

    pub async fn claim(&self, key: &str, event_id: &str) -> Result<Claim, SinkError> {
        self.store
            .claim(&self.full_key(key), event_id, self.times())
            .await
            .map_err(|e| SinkError::definite(e.to_string()))
    }

    /// Marks the effect done, recording what it produced (a provider's id) if anything.
    pub async fn complete(&self, key: &str, token: &ClaimToken, result: Option<&str>) {
        let done = self
            .store
            .complete_with_result(&self.full_key(key), token, self.times(), result)
            .await;
        if let Err(e) = done {
            tracing::warn!(sink = self.sink, error = %e, "effect done but its key could not be completed");
        }
    }

    pub async fn release(&self, key: &str, token: &ClaimToken) {
        if let Err(e) = self.store.release(&self.full_key(key), token).await {
            tracing::warn!(sink = self.sink, error = %e, "effect key could not be released; it frees when its lease ends");
        }
    }
}

/// Local record of what a sink without an outbound adapter would have sent; one row per effect
/// key and sink.
#[derive(Clone)]
pub struct Outbox {
    db: Db,
}

impl Outbox {
    pub fn new(db: Db) -> Outbox {
        Outbox { db }
    }

    pub async fn record(
        &self,
        sink: &str,
        key: &str,
        payload: &serde_json::Value,
    ) -> Result<(), SinkError> {
        let (sink, key, payload) = (sink.to_owned(), key.to_owned(), payload.to_string());
        self.db
            .write(move |c| {
                // Like a receiver that drops a webhook id it has seen: a push repeated after a
                // crash between recording and completing its effect key is recorded once. (A
                // look, then a plain insert, in the same transaction: `INSERT ... SELECT ...
                // WHERE NOT EXISTS` on the same table would build a temporary table each time.)
                let seen = c
                    .prepare_cached("SELECT 1 FROM outbox WHERE sink = ?1 AND key = ?2")?
                    .exists(rusqlite::params![sink, key])?;
                if !seen {
                    c.prepare_cached(
                        "INSERT INTO outbox(sink, key, payload, created_at_ms)
                         VALUES (?1, ?2, ?3, ?4)",
                    )?
                    .execute(rusqlite::params![
                        sink,
                        key,
                        payload,
                        crate::sqlite::now_ms()
                    ])?;
                }
                Ok(())
            })
            .await
            .map_err(|e| SinkError::definite(e.to_string()))
    }

    /// Every recorded payload of `sink`, oldest first.
    pub async fn list(&self, sink: &str) -> Result<Vec<serde_json::Value>, SinkError> {
        let sink = sink.to_owned();
        self.db
            .read(move |c| {
                let mut stmt =
                    c.prepare("SELECT payload FROM outbox WHERE sink = ?1 ORDER BY seq")?;
                let rows = stmt.query_map([sink], |r| r.get::<_, String>(0))?;
                rows.map(|r| r.map(|p| serde_json::from_str(&p).unwrap_or(serde_json::Value::Null)))
                    .collect()
            })
            .await
            .map_err(|e| SinkError::definite(e.to_string()))
    }
}

pub(crate) fn http_client(timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(Duration::from_secs(5))
        .build()
        .expect("an HTTP client with rustls builds")
}
