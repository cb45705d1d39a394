//! Alerts (`[alerts.<name>]`, seed 000: "detect failed messages … alert your team"): a short
//! human text POSTed as `{"text": "..."}` (Slack-compatible incoming webhooks, and anything that
//! takes the same JSON) when messages fail, deliveries are dead-lettered or webhooks are refused
//! as unauthenticated. At most one alert per rule and kind per `min_interval_secs`; what happens
//! in between is counted as suppressed and summed into the next alert.
//!
//! Locally (`bluehook dev`) one task looks at the data folder's database once a second: new
//! failed outbound messages in the events index, dead-letter queues that grew, the
//! authentication-failure counters. An alert never carries a secret, nor more of a message than
//! its first 40 characters.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::config::ConfigError;
use crate::metrics::Metrics;
use crate::sinks::SinkSettings;
use crate::sqlite::Db;

/// What an alert rule watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    MessageFailed,
    DeadLettered,
    AuthFailures,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::MessageFailed, Kind::DeadLettered, Kind::AuthFailures];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::MessageFailed => "message.failed",
            Kind::DeadLettered => "dead_lettered",
            Kind::AuthFailures => "auth_failures",
        }
    }

    fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// One `[alerts.<name>]`.
#[derive(Debug, Clone)]
pub struct Rule {
    pub name: String,
    pub url: reqwest::Url,
    pub on: Vec<Kind>,
    pub min_interval: Duration,
}

/// Most characters of a message's content an alert quotes.
pub const QUOTE_CHARS: usize = 40;

/// Reads every `[alerts.<name>]`.
pub async fn rules_from_config(
    alerts: &BTreeMap<String, toml::Value>,
    ssm: Option<&dyn crate::config::SsmReader>,
) -> Result<Vec<Rule>, ConfigError> {
    let mut out = Vec::new();
    for (name, value) in alerts {
        if !crate::config::valid_source_name(name) {
            return Err(ConfigError::Invalid(format!(
                "alert name `{name}`: use 1-64 letters, digits, `-` or `_`"
            )));
        }
        let mut s = SinkSettings::section("alerts", name, value)?;
        // The URL of an incoming webhook is itself a credential: it may be an env:/ssm: reference.
        let url = s.secret("url", ssm).await?;
        let url = reqwest::Url::parse(url.expose())
            .ok()
            .filter(|u| u.scheme() == "http" || u.scheme() == "https")
            .ok_or_else(|| s.invalid("`url` must be an http(s) URL"))?;
        let on = s.strings("on")?.ok_or_else(|| {
            s.invalid(
                "`on` is required: any of \"message.failed\", \"dead_lettered\", \"auth_failures\"",
            )
        })?;
        let on = on
            .iter()
            .map(|k| {
                Kind::parse(k).ok_or_else(|| {
                    s.invalid(format!(
                        "unknown `on` value `{k}` (message.failed, dead_lettered, auth_failures)"
                    ))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        if on.is_empty() {
            return Err(s.invalid("`on` names nothing to alert on"));
        }
        let min_interval = Duration::from_secs(s.u64("min_interval_secs")?.unwrap_or(60));
        s.finish()?;
        out.push(Rule {
            name: name.clone(),
            url,
            on,
            min_interval,
        });
    }
    Ok(out)
}

/// What happened since the last look, by kind.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Happened {
    /// Failed outbound messages: (source, handle, error code, the content's start).
    pub failed: Vec<(String, String, Option<String>, Option<String>)>,
    /// Dead-letter queues that grew: queue -> how many more.
    pub dead: BTreeMap<String, u64>,
    /// Authentication failures: reason -> how many more.
    pub auth: BTreeMap<String, u64>,
}

impl Happened {
    fn count(&self, kind: Kind) -> u64 {
        match kind {
            Kind::MessageFailed => self.failed.len() as u64,
            Kind::DeadLettered => self.dead.values().sum(),
            Kind::AuthFailures => self.auth.values().sum(),
        }
    }
}

fn quote(content: &str) -> String {
    let mut q: String = content.chars().take(QUOTE_CHARS).collect();
    if content.chars().count() > QUOTE_CHARS {
        q.push('…');
    }
    q
}

/// The text of an alert: what happened (the latest occurrence's details) and how many times
/// since the last alert of this kind.
pub fn text(rule: &str, kind: Kind, happened: &Happened, since_last: u64) -> String {
    let times = |n: u64, one: &str, many: &str| {
        if n == 1 {
            format!("1 {one}")
        } else {
            format!("{n} {many}")
        }
    };
    let body = match kind {
        Kind::MessageFailed => {
            let latest = happened.failed.last();
            let detail = latest
                .map(|(source, handle, code, content)| {
                    let mut d = format!(" Latest: source `{source}`, message {handle}");
                    if let Some(c) = code {
                        d.push_str(&format!(", error {c}"));
                    }
                    if let Some(c) = content.as_deref().filter(|c| !c.is_empty()) {
                        d.push_str(&format!(": \"{}\"", quote(c)));
                    }
                    d.push('.');
                    d
                })
                .unwrap_or_default();
            format!(
                "{} failed since the last alert.{detail}",
                times(since_last, "outbound message", "outbound messages")
            )
        }
        Kind::DeadLettered => {
            let queues: Vec<String> = happened
                .dead
                .iter()
                .map(|(q, n)| format!("{q} +{n}"))
                .collect();
            format!(
                "{} dead-lettered since the last alert ({}). `bluehook replay` sends them again.",
                times(since_last, "delivery", "deliveries"),
                queues.join(", ")
            )
        }
        Kind::AuthFailures => {
            let reasons: Vec<String> = happened
                .auth
                .iter()
                .map(|(r, n)| format!("{r} {n}"))
                .collect();
            format!(
                "{} refused as unauthenticated since the last alert ({}).",
                times(since_last, "webhook", "webhooks"),
                reasons.join(", ")
            )
        }
    };
    format!("bluehook [{rule}]: {body}")
}

/// Where the watcher is in each source of occurrences.
#[derive(Debug, Default, Clone)]
struct Cursor {
    events_seq: i64,
    dead: BTreeMap<String, u64>,
    auth: BTreeMap<String, u64>,
}

fn look(c: &rusqlite::Connection, from: &Cursor) -> rusqlite::Result<(Cursor, Happened)> {
    let mut next = from.clone();
    let mut happened = Happened::default();
    let mut stmt = c.prepare_cached(
        "SELECT seq, source, json_extract(event, '$.message_handle'),
                json_extract(event, '$.error_code'), json_extract(event, '$.content')
         FROM events_index WHERE seq > ?1 AND kind = 'message.status'
           AND json_extract(event, '$.status') = 'failed'
           AND json_extract(event, '$.direction') = 'outbound' ORDER BY seq",
    )?;
    let rows = stmt.query_map([from.events_seq], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, Option<String>>(2)?,
            r.get::<_, Option<String>>(3)?,
            r.get::<_, Option<String>>(4)?,
        ))
    })?;
    for row in rows {
        let (_, source, handle, code, content) = row?;
        happened
            .failed
            .push((source, handle.unwrap_or_default(), code, content));
    }
    next.events_seq = c.query_row("SELECT coalesce(max(seq), 0) FROM events_index", [], |r| {
        r.get(0)
    })?;
    next.dead.clear();
    let mut stmt = c.prepare_cached(
        "SELECT queue, count(*) FROM queue_messages WHERE queue LIKE '%-dlq' GROUP BY queue",
    )?;
    for row in stmt.query_map([], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64))
    })? {
        let (q, n) = row?;
        let before = from.dead.get(&q).copied().unwrap_or(0);
        if n > before {
            happened.dead.insert(q.clone(), n - before);
        }
        next.dead.insert(q, n);
    }
    next.auth.clear();
    let mut stmt = c.prepare_cached("SELECT name, value FROM counters WHERE name LIKE 'auth.%'")?;
    for row in stmt.query_map([], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64))
    })? {
        let (name, n) = row?;
        let reason = name
            .trim_start_matches(crate::metrics::AUTH_PREFIX)
            .to_owned();
        let before = from.auth.get(&reason).copied().unwrap_or(0);
        if n > before {
            happened.auth.insert(reason.clone(), n - before);
        }
        next.auth.insert(reason, n);
    }
    Ok((next, happened))
}

/// Per rule and kind: when the last alert went, what was held back since.
#[derive(Default)]
struct Throttle {
    last: Option<Instant>,
    held: u64,
    happened: Happened,
}

/// Where the local watcher starts: what has happened before it is not alerted. Taken before
/// `bluehook dev` serves its first request.
pub struct Start(Cursor);

/// Reads where things stand now.
pub async fn start_local(db: &Db) -> Result<Start, crate::sqlite::DbError> {
    db.read(|c| look(c, &Cursor::default()))
        .await
        .map(|(c, _)| Start(c))
}

/// Watches the local database from `start` and sends alerts until `stop`.
pub async fn run_local(
    db: Db,
    rules: Vec<Rule>,
    start: Start,
    metrics: Arc<dyn Metrics>,
    mut stop: watch::Receiver<bool>,
) {
    if rules.is_empty() {
        return;
    }
    let client = crate::sinks::http_client(Duration::from_secs(10));
    let mut cursor = start.0;
    let mut throttles: BTreeMap<(String, Kind), Throttle> = BTreeMap::new();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stop.changed() => return,
        }
        let from = cursor.clone();
        let (next, happened) = match db.read(move |c| look(c, &from)).await {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(error = %e, "alerts could not read the database");
                continue;
            }
        };
        cursor = next;
        for rule in &rules {
            for kind in &rule.on {
                let t = throttles.entry((rule.name.clone(), *kind)).or_default();
                let new = happened.count(*kind);
                if new > 0 {
                    t.held += new;
                    merge(&mut t.happened, &happened, *kind);
                }
                if t.held == 0 {
                    continue;
                }
                if t.last.is_some_and(|at| at.elapsed() < rule.min_interval) {
                    if new > 0 {
                        metrics.incr("alerts.suppressed", new);
                    }
                    continue;
                }
                let message = text(&rule.name, *kind, &t.happened, t.held);
                t.last = Some(Instant::now());
                t.held = 0;
                t.happened = Happened::default();
                match client
                    .post(rule.url.clone())
                    .json(&serde_json::json!({ "text": message }))
                    .send()
                    .await
                {
                    Ok(r) if r.status().is_success() => {
                        metrics.incr("alerts.sent", 1);
                        tracing::info!(alert = %rule.name, kind = kind.as_str(), "alert sent");
                    }
                    Ok(r) => {
                        metrics.incr("alerts.failed", 1);
                        tracing::warn!(alert = %rule.name, status = r.status().as_u16(), "the alert was refused");
                    }
                    Err(e) => {
                        metrics.incr("alerts.failed", 1);
                        tracing::warn!(alert = %rule.name, error = crate::destinations::error_class(&e), "the alert could not be sent");
                    }
                }
            }
        }
    }
}

fn merge(into: &mut Happened, new: &Happened, kind: Kind) {
    match kind {
        Kind::MessageFailed => into.failed.extend(new.failed.iter().cloned()),
        Kind::DeadLettered => {
            for (q, n) in &new.dead {
                *into.dead.entry(q.clone()).or_default() += n;
            }
        }
        Kind::AuthFailures => {
            for (r, n) in &new.auth {
                *into.auth.entry(r.clone()).or_default() += n;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texts_say_what_and_how_many_and_quote_at_most_forty_characters() {
        let h = Happened {
            failed: vec![(
                "sendblue".into(),
                "h-9".into(),
                Some("4001".into()),
                Some("A long message whose end must not reach the team channel at all".into()),
            )],
            ..Happened::default()
        };
        let t = text("team", Kind::MessageFailed, &h, 2);
        assert_eq!(
            t,
            "bluehook [team]: 2 outbound messages failed since the last alert. Latest: source `sendblue`, message h-9, error 4001: \"A long message whose end must not reach …\"."
        );
        let h = Happened {
            dead: BTreeMap::from([("dest-bot".into(), 1)]),
            auth: BTreeMap::from([("bad_signature".into(), 3)]),
            ..Happened::default()
        };
        assert!(text("t", Kind::DeadLettered, &h, 1)
            .contains("1 delivery dead-lettered since the last alert (dest-bot +1)"));
        assert!(text("t", Kind::AuthFailures, &h, 3).contains(
            "3 webhooks refused as unauthenticated since the last alert (bad_signature 3)"
        ));
    }
}
