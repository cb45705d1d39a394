//! Follow-ups (`[[followups]]`, seed 003: "message read but no reply -> follow up"): when an
//! outbound message is read, a timer per rule is set for `after_secs` later; when it fires, the
//! conversation is looked at then: if the contact wrote after the read, or has opted out,
//! nothing happens (so a reply needs no cancellation); otherwise `content` goes to the contact
//! through the source's sender, from the line of the conversation, and/or a `followup.due`
//! event goes to the rule's destinations.
//!
//! Locally the timers are rows of `followup_timers` in the data folder's database, written in
//! the same transaction that indexes the read receipt (a redelivered receipt sets no second
//! timer: one per rule and message, ever), and a loop fires what is due four times a second,
//! so a timer fires within a second of its time and survives `kill -9`. A send is claimed by
//! its row (`sending`) before it goes out: one interrupted by a crash is not repeated (its
//! outcome is unknown) but marked `unknown` for a person, as the fallback SMS does.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use rusqlite::params;
use tokio::sync::watch;

use crate::config::ConfigError;
use crate::event::{event_id, Direction, Event, EventKind, MessageStatus};
use crate::metrics::Metrics;
use crate::queue::OutgoingMessage;
use crate::sinks::sms::{SmsSender, Text};
use crate::sinks::SinkSettings;
use crate::sqlite::{now_ms, Db, DbError};

/// One `[[followups]]` rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub name: String,
    pub after: Duration,
    /// Sent to the contact through the source's sender.
    pub content: Option<String>,
    /// Destinations that get a `followup.due` event.
    pub to: Vec<String>,
}

/// Attempts at a follow-up's send that certainly failed before it is given up (`failed`).
pub const MAX_SEND_ATTEMPTS: i64 = 5;

/// Reads `[[followups]]`; `destinations`: the configured ones (`to` must name them).
pub fn rules_from_config(
    values: &[toml::Value],
    destinations: &[String],
) -> Result<Vec<Rule>, ConfigError> {
    let mut rules: Vec<Rule> = Vec::new();
    for (i, value) in values.iter().enumerate() {
        let label = format!("{}", i + 1);
        let mut s = SinkSettings::section("followups", &label, value)?;
        let name = s.required("name")?;
        if !crate::config::valid_source_name(&name) {
            return Err(s.invalid("`name`: use 1-64 letters, digits, `-` or `_`"));
        }
        if rules.iter().any(|r| r.name == name) {
            return Err(s.invalid(format!("two follow-ups are named `{name}`")));
        }
        let after = s
            .u64("after_secs")?
            .filter(|n| *n > 0)
            .ok_or_else(|| s.invalid("`after_secs` (> 0) is required"))?;
        let content = s.str("content")?.filter(|c| !c.trim().is_empty());
        let to = s.strings("to")?.unwrap_or_default();
        for d in &to {
            if !destinations.contains(d) {
                return Err(s.invalid(format!(
                    "`to` names `{d}`, which is not a [destinations.{d}]"
                )));
            }
        }
        if content.is_none() && to.is_empty() {
            return Err(
                s.invalid("set `content` (sent to the contact), `to` (destinations), or both")
            );
        }
        s.finish()?;
        rules.push(Rule {
            name,
            after: Duration::from_secs(after),
            content,
            to,
        });
    }
    Ok(rules)
}

/// A timer to set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timer {
    pub key: String,
    pub rule: String,
    pub due_ms: i64,
    pub read_at_ms: i64,
    pub event: String,
}

/// The handle of the outbound message `e` reports read, if it is such a receipt (what sets
/// follow-up timers).
pub fn read_handle(e: &Event) -> Option<&str> {
    let read = e.kind == EventKind::MessageStatus
        && e.status == Some(MessageStatus::Read)
        && e.direction == Some(Direction::Outbound);
    e.message_handle.as_deref().filter(|_| read)
}

/// The timers a read receipt sets: one per rule, for an outbound message that was read.
pub fn timers_for(rules: &[Rule], e: &Event, json: &str) -> Vec<Timer> {
    let Some(handle) = read_handle(e) else {
        return Vec::new();
    };
    let read_at_ms = e.received_at.timestamp_millis();
    rules
        .iter()
        .map(|r| Timer {
            key: format!("{}:{}:{handle}", r.name, e.source),
            rule: r.name.clone(),
            due_ms: read_at_ms + r.after.as_millis() as i64,
            read_at_ms,
            event: json.to_owned(),
        })
        .collect()
}

/// Sets `timers` inside the caller's transaction; a timer already set (the same receipt again,
/// or another receipt of the same message) stays as it is.
pub fn schedule_in(c: &rusqlite::Connection, timers: &[Timer]) -> rusqlite::Result<()> {
    let mut insert = c.prepare_cached(
        "INSERT OR IGNORE INTO followup_timers(key, rule, due_ms, read_at_ms, event, state)
         VALUES (?1, ?2, ?3, ?4, ?5, 'scheduled')",
    )?;
    for t in timers {
        insert.execute(params![t.key, t.rule, t.due_ms, t.read_at_ms, t.event])?;
    }
    Ok(())
}

/// Why a due follow-up is not sent, looked at when it fires.
fn reason_to_skip(
    c: &rusqlite::Connection,
    e: &Event,
    read_at_ms: i64,
) -> rusqlite::Result<Option<&'static str>> {
    let Some(contact) = e.contact_number.as_deref() else {
        return Ok(Some("no_recipient"));
    };
    let replied = c
        .prepare_cached(
            "SELECT 1 FROM events_index WHERE source = ?1 AND kind = 'message.received'
               AND received_at_ms > ?2 AND json_extract(event, '$.contact_number') = ?3 LIMIT 1",
        )?
        .exists(params![e.source, read_at_ms, contact])?;
    if replied {
        return Ok(Some("replied"));
    }
    // An opt-out is the contact's, on this source's account (the conversation state, where
    // a sink keeps it, on its line).
    let opted_out = c
        .prepare_cached(
            "SELECT 1 FROM events_index WHERE source = ?1
               AND json_extract(event, '$.contact_number') = ?2
               AND json_extract(event, '$.opted_out') = 1 LIMIT 1",
        )?
        .exists(params![e.source, contact])?
        || c.prepare_cached(
            "SELECT 1 FROM conversations WHERE line = ?1 AND contact = ?2 AND opted_out = 1",
        )?
        .exists(params![e.line_number.as_deref().unwrap_or(""), contact])?;
    if opted_out {
        return Ok(Some("opted_out"));
    }
    Ok(None)
}

/// The `followup.due` event of a timer: the read receipt's conversation, the rule's name as
/// `provider_event`, its content.
pub fn due_event(read: &Event, rule: &Rule, key: &str) -> Event {
    let mut e = read.clone();
    e.idempotency_key = format!("followup:{key}");
    e.id = event_id(&e.idempotency_key);
    e.kind = EventKind::FollowupDue;
    e.provider_event = Some(rule.name.clone());
    e.status = None;
    e.raw_status = None;
    e.content = rule.content.clone();
    e.received_at = crate::event::truncate_to_millis(chrono::Utc::now());
    e.raw_body = String::new();
    e.raw_content_type = None;
    e
}

/// A fired timer whose text is to be sent.
struct Due {
    key: String,
    rule: String,
    event: Event,
    attempt: i64,
}

/// Fires due follow-ups until `stop`.
pub struct Followups {
    pub db: Db,
    pub rules: Vec<Rule>,
    /// The sender of each source that has one.
    pub senders: BTreeMap<String, Arc<SmsSender>>,
    pub metrics: Arc<dyn Metrics>,
}

impl Followups {
    /// A send under way when the last run stopped may have gone out: it is not repeated.
    pub async fn recover(&self) -> Result<u64, DbError> {
        self.db
            .write(|c| {
                c.execute(
                    "UPDATE followup_timers SET state = 'unknown',
                       reason = 'interrupted while sending; not repeated'
                     WHERE state = 'sending'",
                    [],
                )
                .map(|n| n as u64)
            })
            .await
    }

    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        if self.rules.is_empty() {
            return;
        }
        loop {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                _ = stop.changed() => return,
            }
            match self.fire_due().await {
                Ok(due) => {
                    for d in due {
                        self.send(d).await;
                    }
                }
                Err(e) => tracing::error!(error = %e, "follow-up timers could not be read"),
            }
        }
    }

    /// Takes the due timers: skips what must be skipped, queues the `followup.due` events, and
    /// claims the sends (`sending`), in one transaction.
    async fn fire_due(&self) -> Result<Vec<Due>, DbError> {
        let rules = self.rules.clone();
        let has_sender: Vec<String> = self.senders.keys().cloned().collect();
        self.db
            .write(move |c| {
                let now = now_ms();
                let rows: Vec<(String, String, i64, String, i64)> = c
                    .prepare_cached(
                        "SELECT key, rule, read_at_ms, event, attempts FROM followup_timers
                         WHERE state = 'scheduled' AND due_ms <= ?1 ORDER BY due_ms LIMIT 100",
                    )?
                    .query_map([now], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)))?
                    .collect::<Result<_, _>>()?;
                let mut out = Vec::new();
                for (key, rule_name, read_at_ms, json, attempts) in rows {
                    let set = |state: &str, reason: Option<&str>| {
                        c.prepare_cached(
                            "UPDATE followup_timers SET state = ?2, reason = ?3, fired_at_ms = ?4,
                               attempts = attempts + (?2 = 'sending') WHERE key = ?1",
                        )?
                        .execute(params![key, state, reason, now])
                    };
                    let (Some(rule), Ok(event)) =
                        (rules.iter().find(|r| r.name == rule_name), Event::from_json(&json))
                    else {
                        set("skipped", Some("rule_removed"))?;
                        continue;
                    };
                    // Only the first firing delivers the due event; a retried send does not.
                    let first = attempts == 0;
                    if let Some(reason) = reason_to_skip(c, &event, read_at_ms)? {
                        set("skipped", Some(reason))?;
                        continue;
                    }
                    if first && !rule.to.is_empty() {
                        let due = due_event(&event, rule, &key);
                        let due_json = due.to_json();
                        c.prepare_cached(
                            "INSERT OR IGNORE INTO events_index(id, source, kind, received_at_ms, routes, event)
                             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                        )?
                        .execute(params![
                            due.id,
                            due.source,
                            due.kind.as_str(),
                            due.received_at.timestamp_millis(),
                            rule.to.join(","),
                            due_json
                        ])?;
                        for d in &rule.to {
                            let message = OutgoingMessage {
                                id: format!("{}:{d}", due.id),
                                body: crate::delivery::DeliveryMessage::envelope(d, &due_json),
                            };
                            crate::queue::sqlite::insert_messages(
                                c,
                                &crate::delivery::local::queue_name(d),
                                &[message],
                            )?;
                        }
                    }
                    match (&rule.content, has_sender.contains(&event.source)) {
                        (Some(_), true) => {
                            set("sending", None)?;
                            out.push(Due {
                                key,
                                rule: rule_name,
                                event,
                                attempt: attempts + 1,
                            });
                        }
                        (Some(_), false) if rule.to.is_empty() => {
                            set("skipped", Some("no_sender"))?;
                        }
                        (Some(_), false) => {
                            set("sent", Some("no_sender"))?;
                        }
                        (None, _) => {
                            set("sent", None)?;
                        }
                    }
                }
                Ok(out)
            })
            .await
    }

    async fn send(&self, due: Due) {
        let rule = self.rules.iter().find(|r| r.name == due.rule);
        let (Some(rule), Some(sender)) = (rule, self.senders.get(&due.event.source)) else {
            return;
        };
        let text = Text {
            key: due.key.clone(),
            to: due.event.contact_number.clone().unwrap_or_default(),
            content: rule.content.clone().unwrap_or_default(),
            media_url: None,
            line: due.event.line_number.clone(),
            from_line: true,
        };
        let started = std::time::Instant::now();
        let result = sender.send("followup", &text).await;
        let (state, reason, due_ms) = match &result {
            Ok(_) => ("sent", None, None),
            Err(e) if !e.definite => ("unknown", Some(e.message.clone()), None),
            Err(e) if due.attempt >= MAX_SEND_ATTEMPTS => ("failed", Some(e.message.clone()), None),
            Err(e) => (
                "scheduled",
                Some(e.message.clone()),
                Some(now_ms() + 5_000 * (1i64 << due.attempt.min(10))),
            ),
        };
        match state {
            "sent" => self.metrics.incr("followups.sent", 1),
            "scheduled" => {}
            other => self.metrics.incr(&format!("followups.{other}"), 1),
        }
        if state == "sent" {
            tracing::info!(followup = %due.rule, event_id = %due.event.id, "follow-up sent");
        } else {
            tracing::warn!(followup = %due.rule, event_id = %due.event.id, state, reason = reason.as_deref(), "follow-up not sent");
        }
        let (key, event_id, destination) = (
            due.key.clone(),
            due.event.id.clone(),
            format!("followup:{}", due.rule),
        );
        let attempt_state = match state {
            "sent" => "delivered",
            "scheduled" => "retrying",
            _ => "dead_lettered",
        };
        let duration = started.elapsed().as_millis() as i64;
        let attempt = due.attempt;
        let written = self
            .db
            .write(move |c| {
                c.execute(
                    "UPDATE followup_timers SET state = ?2, reason = ?3, due_ms = coalesce(?4, due_ms)
                     WHERE key = ?1",
                    params![key, state, reason, due_ms],
                )?;
                c.execute(
                    "INSERT INTO delivery_attempts(event_id, destination, attempt, at_ms, status, error,
                       duration_ms, state, detail) VALUES (?1, ?2, ?3, ?4, NULL, NULL, ?5, ?6, ?7)",
                    params![event_id, destination, attempt, now_ms() - duration, duration, attempt_state, reason],
                )?;
                Ok(())
            })
            .await;
        if let Err(e) = written {
            tracing::error!(error = %e, "a follow-up's outcome could not be recorded");
        }
    }
}

/// Follow-up timers by state (`scheduled`, `sent`, `skipped.<reason>`, `failed`, `unknown`),
/// for `bluehook stats`.
pub fn counts(c: &rusqlite::Connection) -> rusqlite::Result<BTreeMap<String, u64>> {
    let mut out = BTreeMap::from([
        ("scheduled".to_owned(), 0),
        ("pending".to_owned(), 0),
        ("sent".to_owned(), 0),
    ]);
    let mut stmt = c.prepare(
        "SELECT state, coalesce(reason, ''), count(*) FROM followup_timers GROUP BY 1, 2",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, i64>(2)? as u64,
        ))
    })?;
    for row in rows {
        let (state, reason, n) = row?;
        *out.get_mut("scheduled").unwrap() += n;
        let key = match state.as_str() {
            "scheduled" | "sending" => "pending".to_owned(),
            "skipped" => format!("skipped.{reason}"),
            other => other.to_owned(),
        };
        *out.entry(key).or_default() += n;
    }
    Ok(out)
}

/// The stats' view when the table may be missing in an old data folder.
pub fn counts_or_empty(c: &rusqlite::Connection) -> BTreeMap<String, u64> {
    counts(c).ok().unwrap_or_default()
}
