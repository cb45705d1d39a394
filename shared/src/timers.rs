//! Follow-up timers on AWS: a DynamoDB table swept every minute.
//!
//! The router writes one item per timer, `timer#<rule>:<source>:<handle>`, with a conditional
//! put (one per rule and message, ever), and keeps per conversation what a timer looks at when
//! it fires: `conv#<source>#<contact>` with the time of the contact's last message and whether
//! they opted out. A scheduled timer carries `due_bucket` (the minute it is due,
//! `2026-11-24T10:31`) and `due_ms`, the keys of the sparse index `due`; firing removes
//! `due_bucket` in the same conditional update that claims the timer, so a fired timer leaves
//! the index and no sweep sees it twice.
//!
//! The sweep (the automations function, on an EventBridge schedule each minute) queries the
//! index minute by minute from where the last sweep ended (with two minutes of overlap, for
//! timers written late), fires what is due, and writes where it ended. A timer fires within a
//! minute of its time, and the table survives deploys: nothing is lost while the function is
//! replaced or down, the next sweep catches up (up to a day back).
//!
//! A send is claimed (`sending`) before it goes out; a sweep that dies mid-send leaves the
//! timer `sending`, never sent again (its outcome is unknown), as the fallback SMS does.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use aws_sdk_dynamodb::error::{DisplayErrorContext, SdkError};
use aws_sdk_dynamodb::types::AttributeValue;
use aws_sdk_dynamodb::Client;
use chrono::{TimeZone, Utc};

use crate::event::{Direction, Event, EventKind};
use crate::followups::{due_event, read_handle, timers_for, Rule, MAX_SEND_ATTEMPTS};
use crate::metrics::Metrics;
use crate::queue::{OutgoingMessage, Queue};
use crate::sinks::sms::{SmsSender, Text};

/// The sparse index of scheduled timers.
pub const DUE_INDEX: &str = "due";
/// How far back a sweep looks when the last one is older (the function was down).
const MAX_CATCH_UP_MINUTES: i64 = 24 * 60;
/// Minutes a sweep looks back before where the last one ended.
const OVERLAP_MINUTES: i64 = 2;
/// Fired timers and conversations are kept this long (the table's TTL attribute `expires_at`).
const KEEP_SECS: i64 = 30 * 24 * 3600;

type Item = HashMap<String, AttributeValue>;

fn err<E: std::error::Error + 'static, R: std::fmt::Debug>(e: SdkError<E, R>) -> String {
    DisplayErrorContext(e).to_string()
}

/// Whether a conditional write was applied: `false` when its condition did not hold.
fn applied<T, E, R>(r: Result<T, SdkError<E, R>>) -> Result<bool, String>
where
    E: aws_sdk_dynamodb::error::ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    match r {
        Ok(_) => Ok(true),
        Err(e)
            if e.as_service_error().and_then(|s| s.code())
                == Some("ConditionalCheckFailedException") =>
        {
            Ok(false)
        }
        Err(e) => Err(err(e)),
    }
}

fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

fn n(v: i64) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

fn get_s(item: &Item, k: &str) -> Option<String> {
    item.get(k).and_then(|v| v.as_s().ok()).cloned()
}

fn get_n(item: &Item, k: &str) -> Option<i64> {
    item.get(k)
        .and_then(|v| v.as_n().ok())
        .and_then(|v| v.parse().ok())
}

/// The minute `ms` falls in, as the index's partition key.
pub fn bucket_of(ms: i64) -> String {
    let at = Utc
        .timestamp_millis_opt(ms - ms.rem_euclid(60_000))
        .single()
        .unwrap_or_else(Utc::now);
    at.format("%Y-%m-%dT%H:%M").to_string()
}

/// The conversation key a timer looks at: the contact on the source's account.
fn conversation_key(source: &str, contact: &str) -> String {
    format!("conv#{source}#{contact}")
}

/// Whether `e` is a contact writing in (which a follow-up waits for).
fn from_contact(e: &Event) -> bool {
    e.kind == EventKind::MessageReceived && e.direction != Some(Direction::Outbound)
}

/// The timers table.
#[derive(Clone, Debug)]
pub struct DynamoTimers {
    client: Client,
    table: String,
}

impl DynamoTimers {
    pub fn new(client: Client, table: impl Into<String>) -> DynamoTimers {
        DynamoTimers {
            client,
            table: table.into(),
        }
    }

    /// What the router keeps of `e` for the follow-up `rules`: a contact's message (its time),
    /// an opt-out, and the timers a read receipt sets; answers how many timers were set. Each
    /// write may be repeated (a redelivered event changes nothing, and sets no timer again).
    pub async fn observe(&self, rules: &[Rule], e: &Event, now_ms: i64) -> Result<u32, String> {
        if rules.is_empty() {
            return Ok(0);
        }
        let expires = n(now_ms / 1000 + KEEP_SECS);
        if let Some(contact) = e.contact_number.as_deref() {
            let key = conversation_key(&e.source, contact);
            if from_contact(e) {
                let at = e.received_at.timestamp_millis();
                // An older message arriving late leaves the time as it is.
                applied(
                    self.client
                        .update_item()
                        .table_name(&self.table)
                        .key("pk", s(key.clone()))
                        .update_expression("SET last_inbound_ms = :t, expires_at = :x")
                        .condition_expression(
                            "attribute_not_exists(last_inbound_ms) OR last_inbound_ms < :t",
                        )
                        .expression_attribute_values(":t", n(at))
                        .expression_attribute_values(":x", expires.clone())
                        .send()
                        .await,
                )?;
            }
            if e.opted_out == Some(true) {
                self.client
                    .update_item()
                    .table_name(&self.table)
                    .key("pk", s(key))
                    .update_expression("SET opted_out = :y, expires_at = :x")
                    .expression_attribute_values(":y", AttributeValue::Bool(true))
                    .expression_attribute_values(":x", expires.clone())
                    .send()
                    .await
                    .map_err(err)?;
            }
        }
        if read_handle(e).is_none() {
            return Ok(0);
        }
        // The read receipt as the timer keeps it: without its raw body (small items: one write
        // unit each), as the `followup.due` event carries it.
        let mut kept = e.clone();
        kept.raw_body = String::new();
        kept.raw_content_type = None;
        let mut set = 0;
        for t in timers_for(rules, e, &kept.to_json()) {
            // A timer due before this write (the receipt was late) is swept with the current
            // minute.
            let bucket = bucket_of(t.due_ms.max(now_ms));
            let put = self
                .client
                .put_item()
                .table_name(&self.table)
                .item("pk", s(format!("timer#{}", t.key)))
                .item("rule", s(t.rule))
                .item("state", s("scheduled"))
                .item("due_bucket", s(bucket))
                .item("due_ms", n(t.due_ms))
                .item("read_at_ms", n(t.read_at_ms))
                .item("attempts", n(0))
                .item("event", s(t.event))
                .item("expires_at", n(t.due_ms / 1000 + KEEP_SECS))
                .condition_expression("attribute_not_exists(pk)")
                .send()
                .await;
            set += u32::from(applied(put)?);
        }
        Ok(set)
    }

    /// A timer's item (for tests and `bluehook`'s own checks).
    pub async fn timer(&self, key: &str) -> Result<Option<Item>, String> {
        self.get(&format!("timer#{key}")).await
    }

    async fn get(&self, pk: &str) -> Result<Option<Item>, String> {
        Ok(self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", s(pk))
            .consistent_read(true)
            .send()
            .await
            .map_err(err)?
            .item)
    }

    /// The scheduled timers of `bucket` due by `now_ms`.
    async fn due_in(&self, bucket: &str, now_ms: i64) -> Result<Vec<Item>, String> {
        let mut out = Vec::new();
        let mut start: Option<Item> = None;
        loop {
            let page = self
                .client
                .query()
                .table_name(&self.table)
                .index_name(DUE_INDEX)
                .key_condition_expression("due_bucket = :b AND due_ms <= :now")
                .expression_attribute_values(":b", s(bucket))
                .expression_attribute_values(":now", n(now_ms))
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(err)?;
            out.extend(page.items.unwrap_or_default());
            match page.last_evaluated_key {
                Some(k) if !k.is_empty() => start = Some(k),
                _ => return Ok(out),
            }
        }
    }

    /// Moves a scheduled timer to `state` (out of the index), or answers false when another
    /// sweep took it first.
    async fn claim(
        &self,
        pk: &str,
        bucket: &str,
        state: &str,
        reason: Option<&str>,
        sending: bool,
        now_ms: i64,
    ) -> Result<bool, String> {
        let mut u = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(pk))
            .update_expression(if reason.is_some() {
                "SET #s = :s, fired_at_ms = :now, attempts = attempts + :a, reason = :r REMOVE due_bucket"
            } else {
                "SET #s = :s, fired_at_ms = :now, attempts = attempts + :a REMOVE reason, due_bucket"
            })
            .condition_expression("#s = :scheduled AND due_bucket = :b")
            .expression_attribute_names("#s", "state")
            .expression_attribute_values(":s", s(state))
            .expression_attribute_values(":now", n(now_ms))
            .expression_attribute_values(":a", n(i64::from(sending)))
            .expression_attribute_values(":scheduled", s("scheduled"))
            .expression_attribute_values(":b", s(bucket));
        if let Some(r) = reason {
            u = u.expression_attribute_values(":r", s(r));
        }
        applied(u.send().await)
    }

    /// What became of a claimed send: `sent`, `unknown`, `failed`, or `scheduled` again at
    /// `retry_at_ms`.
    async fn settle(
        &self,
        pk: &str,
        state: &str,
        reason: Option<&str>,
        retry_at_ms: Option<i64>,
    ) -> Result<(), String> {
        let mut u = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(pk))
            .expression_attribute_names("#s", "state")
            .expression_attribute_values(":s", s(state))
            .expression_attribute_values(":r", s(reason.unwrap_or("")));
        u = match retry_at_ms {
            Some(at) => u
                .update_expression("SET #s = :s, reason = :r, due_ms = :d, due_bucket = :b")
                .expression_attribute_values(":d", n(at))
                .expression_attribute_values(":b", s(bucket_of(at))),
            None => u.update_expression("SET #s = :s, reason = :r"),
        };
        u.send().await.map(|_| ()).map_err(err)
    }
}

/// The router's side: keeps what the follow-up rules need of each event.
pub struct FollowupObserver {
    pub timers: DynamoTimers,
    pub rules: Vec<Rule>,
    pub metrics: Arc<dyn Metrics>,
}

#[async_trait::async_trait]
impl crate::router::Observe for FollowupObserver {
    async fn observe(&self, event: &Event) -> Result<(), String> {
        let now = Utc::now().timestamp_millis();
        let set = self.timers.observe(&self.rules, event, now).await?;
        if set > 0 {
            self.metrics.incr("followups.scheduled", u64::from(set));
        }
        Ok(())
    }
}

/// What one sweep did.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Swept {
    pub minutes: u32,
    pub fired: u32,
    pub sent: u32,
    /// Timers skipped, by reason (`replied`, `opted_out`, `no_recipient`, `no_sender`,
    /// `rule_removed`).
    pub skipped: BTreeMap<String, u32>,
    /// `followup.due` events queued (one per destination).
    pub due_events: u32,
    /// Sends that failed (retried later, or given up: `failed`, `unknown`).
    pub not_sent: u32,
}

/// Fires due follow-ups: the automations function's scheduled run.
pub struct Sweeper {
    pub timers: DynamoTimers,
    pub rules: Vec<Rule>,
    /// The sender of each source that has one.
    pub senders: BTreeMap<String, Arc<SmsSender>>,
    /// The deliveries queue (`followup.due` events for the rules' destinations).
    pub deliveries: Option<Arc<dyn Queue>>,
    pub metrics: Arc<dyn Metrics>,
}

const CURSOR: &str = "sweep#followups";

impl Sweeper {
    /// Sweeps every minute since the last sweep up to `now_ms`.
    pub async fn sweep(&self, now_ms: i64) -> Result<Swept, String> {
        let mut swept = Swept::default();
        if self.rules.is_empty() {
            return Ok(swept);
        }
        let this_minute = now_ms - now_ms.rem_euclid(60_000);
        let last = self
            .timers
            .get(CURSOR)
            .await?
            .and_then(|i| get_n(&i, "minute_ms"))
            .unwrap_or(this_minute);
        let from = (last - OVERLAP_MINUTES * 60_000)
            .max(this_minute - MAX_CATCH_UP_MINUTES * 60_000)
            .min(this_minute);
        let mut minute = from;
        while minute <= this_minute {
            let bucket = bucket_of(minute);
            for item in self.timers.due_in(&bucket, now_ms).await? {
                self.fire(&bucket, &item, now_ms, &mut swept).await?;
            }
            swept.minutes += 1;
            minute += 60_000;
        }
        self.timers
            .client
            .put_item()
            .table_name(&self.timers.table)
            .item("pk", s(CURSOR))
            .item("minute_ms", n(this_minute))
            .send()
            .await
            .map_err(err)?;
        Ok(swept)
    }

    async fn fire(
        &self,
        bucket: &str,
        item: &Item,
        now_ms: i64,
        swept: &mut Swept,
    ) -> Result<(), String> {
        let pk = get_s(item, "pk").unwrap_or_default();
        let key = pk.trim_start_matches("timer#").to_owned();
        let attempts = get_n(item, "attempts").unwrap_or(0);
        let read_at_ms = get_n(item, "read_at_ms").unwrap_or(0);
        let rule = get_s(item, "rule").and_then(|r| self.rules.iter().find(|x| x.name == r));
        let event = get_s(item, "event").and_then(|j| Event::from_json(&j).ok());
        let (Some(rule), Some(event)) = (rule, event) else {
            return self.skip(&pk, bucket, "rule_removed", now_ms, swept).await;
        };
        if let Some(reason) = self.reason_to_skip(&event, read_at_ms).await? {
            return self.skip(&pk, bucket, reason, now_ms, swept).await;
        }
        let sender = self.senders.get(&event.source);
        if rule.content.is_some() && sender.is_none() && rule.to.is_empty() {
            return self.skip(&pk, bucket, "no_sender", now_ms, swept).await;
        }
        // The due event first: queued again by a later sweep only if this one dies before its
        // claim, and then delivered once all the same (its id is the timer's).
        let first = attempts == 0;
        if first && !rule.to.is_empty() {
            if let Some(q) = &self.deliveries {
                let due = due_event(&event, rule, &key);
                let json = due.to_json();
                let messages: Vec<OutgoingMessage> = rule
                    .to
                    .iter()
                    .map(|d| OutgoingMessage {
                        id: format!("{}:{d}", due.id),
                        body: crate::delivery::DeliveryMessage::envelope(d, &json),
                    })
                    .collect();
                for chunk in messages.chunks(10) {
                    q.send(chunk).await.map_err(|e| e.to_string())?;
                }
                swept.due_events += messages.len() as u32;
            }
        }
        // A text to send is claimed `sending`; otherwise the timer is done with its due events
        // (`no_sender` noted when a text could not go).
        let send = rule.content.as_ref().zip(sender);
        let (state, reason) = match (send, &rule.content) {
            (Some(_), _) => ("sending", None),
            (None, Some(_)) => ("sent", Some("no_sender")),
            (None, None) => ("sent", None),
        };
        if !self
            .timers
            .claim(&pk, bucket, state, reason, send.is_some(), now_ms)
            .await?
        {
            return Ok(());
        }
        swept.fired += 1;
        let Some((content, sender)) = send else {
            swept.sent += 1;
            self.metrics.incr("followups.sent", 1);
            return Ok(());
        };
        let text = Text {
            key: key.clone(),
            to: event.contact_number.clone().unwrap_or_default(),
            content: content.clone(),
            media_url: None,
            line: event.line_number.clone(),
            from_line: true,
        };
        let attempt = attempts + 1;
        let (state, reason, retry_at) = match sender.send("followup", &text).await {
            Ok(_) => ("sent", None, None),
            Err(e) if !e.definite => ("unknown", Some(e.message), None),
            Err(e) if attempt >= MAX_SEND_ATTEMPTS => ("failed", Some(e.message), None),
            Err(e) => (
                "scheduled",
                Some(e.message),
                Some(now_ms + 5_000 * (1i64 << attempt.min(10))),
            ),
        };
        if state == "sent" {
            swept.sent += 1;
            self.metrics.incr("followups.sent", 1);
            tracing::info!(followup = %rule.name, event_id = %event.id, "follow-up sent");
        } else {
            swept.not_sent += 1;
            if state != "scheduled" {
                self.metrics.incr(&format!("followups.{state}"), 1);
            }
            tracing::warn!(followup = %rule.name, event_id = %event.id, state, reason = reason.as_deref(), "follow-up not sent");
        }
        self.timers
            .settle(&pk, state, reason.as_deref(), retry_at)
            .await
    }

    async fn skip(
        &self,
        pk: &str,
        bucket: &str,
        reason: &'static str,
        now_ms: i64,
        swept: &mut Swept,
    ) -> Result<(), String> {
        if self
            .timers
            .claim(pk, bucket, "skipped", Some(reason), false, now_ms)
            .await?
        {
            swept.fired += 1;
            *swept.skipped.entry(reason.to_owned()).or_default() += 1;
            self.metrics.incr(&format!("followups.skipped.{reason}"), 1);
        }
        Ok(())
    }

    /// Why a due follow-up is not sent, looked at now: the contact wrote after the read, or
    /// opted out.
    async fn reason_to_skip(
        &self,
        e: &Event,
        read_at_ms: i64,
    ) -> Result<Option<&'static str>, String> {
        let Some(contact) = e.contact_number.as_deref() else {
            return Ok(Some("no_recipient"));
        };
        if e.opted_out == Some(true) {
            return Ok(Some("opted_out"));
        }
        let conv = self
            .timers
            .get(&conversation_key(&e.source, contact))
            .await?
            .unwrap_or_default();
        if get_n(&conv, "last_inbound_ms").is_some_and(|t| t > read_at_ms) {
            return Ok(Some("replied"));
        }
        if conv.get("opted_out").and_then(|v| v.as_bool().ok()) == Some(&true) {
            return Ok(Some("opted_out"));
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_minutes() {
        let ms = Utc
            .with_ymd_and_hms(2026, 11, 24, 10, 31, 59)
            .unwrap()
            .timestamp_millis();
        assert_eq!(bucket_of(ms), "2026-11-24T10:31");
        assert_eq!(bucket_of(ms + 1_000), "2026-11-24T10:32");
    }
}
