//! Bot replies: a `reply = true` destination that answers an inbound message with
//! `{"reply": {"content": "..."}}` (or `{"reply": "..."}`) has that text sent to the contact
//! through the source's sender (`[sources.<name>] sender = "..."`), from the line the contact
//! wrote to, once per inbound event.
//!
//! The reply is kept as the result of the destination's effect key and queued on `replies` in
//! the same step that records that effect done ([`crate::delivery::FollowOn`]); the send is its
//! own effect, `effect:reply:<event id>`, run by the engine like the fallback SMS: never twice,
//! even when its outcome is unknown (then it is dead-lettered for a person).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::sms::{SmsSender, Text};
use crate::delivery::{FollowOn, Outcome, Planned, Policy, RetryPolicy, Target};
use crate::event::{Direction, Event, EventKind};
use crate::metrics::Metrics;

/// The local queue of replies to send (and `replies-dlq`).
pub const QUEUE: &str = "replies";
/// The name replies go by in routes, attempts and stats.
pub const ROUTE: &str = "reply";
/// Longest reply text sent (longer is cut, on a character boundary).
pub const MAX_CHARS: usize = 4096;

/// Whether `event` is one a bot may answer: a message from a contact.
pub fn answers(event: &Event) -> bool {
    event.kind == EventKind::MessageReceived && event.direction != Some(Direction::Outbound)
}

/// The reply in a bot's answer: `{"reply": {"content": "..."}}` or `{"reply": "..."}`; `None`
/// for any other answer, or an empty text.
pub fn parse(body: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let text = match &v["reply"] {
        serde_json::Value::String(s) => s.as_str(),
        serde_json::Value::Object(o) => o.get("content")?.as_str()?,
        _ => return None,
    };
    let text = text.trim();
    (!text.is_empty()).then(|| text.chars().take(MAX_CHARS).collect())
}

/// The queued reply: the inbound event with the reply as its content (same id, so its attempts
/// show under the inbound event).
pub fn follow_on(inbound: &Event, text: &str) -> FollowOn {
    let mut reply = inbound.clone();
    reply.content = Some(text.to_owned());
    reply.media_url = None;
    reply.raw_body = String::new();
    FollowOn {
        queue: QUEUE,
        route: ROUTE,
        body: reply.to_json(),
    }
}

/// The sender of each source that names one (`[sources.<name>] sender`): how its contacts are
/// answered.
pub fn senders_by_source(
    config: &crate::config::Config,
    senders: &super::sms::Senders,
) -> std::collections::BTreeMap<String, Arc<SmsSender>> {
    config
        .sources
        .iter()
        .filter_map(|(name, s)| Some((name.clone(), senders.get(s.sender.as_ref()?)?.clone())))
        .collect()
}

/// Sends queued replies through each source's sender.
pub struct Replies {
    /// The sender of each source that has one.
    senders: std::collections::BTreeMap<String, Arc<SmsSender>>,
    metrics: Arc<dyn Metrics>,
    retry: RetryPolicy,
}

impl Replies {
    pub fn new(
        senders: std::collections::BTreeMap<String, Arc<SmsSender>>,
        metrics: Arc<dyn Metrics>,
        retry: RetryPolicy,
    ) -> Replies {
        Replies {
            senders,
            metrics,
            retry,
        }
    }
}

#[async_trait]
impl Target for Replies {
    type Work = (Arc<SmsSender>, Text);

    fn name(&self) -> &str {
        ROUTE
    }

    fn policy(&self) -> Policy {
        // Like the fallback SMS: a text is never sent twice, within a year.
        let year = Duration::from_secs(365 * 24 * 3600);
        Policy {
            retry: self.retry,
            effects: "reply",
            lease: year,
            ttl: year,
            repeat_unknown: false,
            rate_limit_per_sec: None,
        }
    }

    async fn plan(&self, event: &Event) -> Result<Planned<Self::Work>, String> {
        let Some(sender) = self.senders.get(&event.source) else {
            return Ok(Planned::Skip("no_sender"));
        };
        let Some(to) = event.contact_number.clone() else {
            return Ok(Planned::Skip("no_recipient"));
        };
        let Some(content) = event.content.clone().filter(|c| !c.is_empty()) else {
            return Ok(Planned::Skip("no_content"));
        };
        Ok(Planned::Effect {
            key: event.id.clone(),
            work: (
                sender.clone(),
                Text {
                    key: event.id.clone(),
                    to,
                    content,
                    media_url: None,
                    line: event.line_number.clone(),
                    from_line: true,
                },
            ),
        })
    }

    async fn perform(&self, _event: &Event, (sender, text): &Self::Work) -> Outcome {
        match sender.send(ROUTE, text).await {
            Ok(id) => Outcome::Done {
                status: None,
                result: Some(id),
            },
            Err(e) => e.outcome(),
        }
    }

    fn done(&self, event: &Event, _: &Self::Work) {
        self.metrics.incr("replies.sent", 1);
        tracing::info!(event_id = %event.id, "bot reply sent");
    }

    fn skipped(&self, _event: &Event, reason: &'static str) {
        self.metrics.incr(&format!("replies.skipped.{reason}"), 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_reply_shapes_are_read_and_nothing_else_is_a_reply() {
        assert_eq!(
            parse(br#"{"reply":{"content":"Hi there"}}"#).as_deref(),
            Some("Hi there")
        );
        assert_eq!(parse(br#"{"reply":"  Hi  "}"#).as_deref(), Some("Hi"));
        for none in [
            &br#"{}"#[..],
            br#"{"reply":""}"#,
            br#"{"reply":{"text":"x"}}"#,
            br#"{"reply":3}"#,
            b"ok",
            b"",
        ] {
            assert_eq!(parse(none), None, "{}", String::from_utf8_lossy(none));
        }
        let long = format!(r#"{{"reply":"{}"}}"#, "é".repeat(MAX_CHARS + 10));
        assert_eq!(parse(long.as_bytes()).unwrap().chars().count(), MAX_CHARS);
    }
}
