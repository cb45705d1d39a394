//! Conversation state kept by the CRM sink: per message (by source and handle) its furthest
//! status, content and service; per conversation (line, contact) the last inbound and
//! outbound message, the last delivered and read times, opt-out and service.
//!
//! Statuses only move forward ([`rank`]): a READ that arrives before its DELIVERED is not
//! undone by it, so out-of-order delivery is harmless. Each update is a conditional write
//! (SQLite: one transaction; DynamoDB: conditional `UpdateItem`s), never read-then-write.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::event::{Direction, Event, EventKind, MessageStatus, Service};
use crate::idempotency::StoreError;

/// How far along its life a message is. Failure ranks above sent (a send can fail) and below
/// delivered (a delivered message does not un-deliver).
pub fn rank(s: MessageStatus) -> u8 {
    match s {
        MessageStatus::Unknown => 0,
        MessageStatus::Queued | MessageStatus::Received => 1,
        MessageStatus::Accepted => 2,
        MessageStatus::Sending => 3,
        MessageStatus::Sent => 4,
        MessageStatus::Failed | MessageStatus::Declined | MessageStatus::Canceled => 5,
        MessageStatus::Delivered => 6,
        MessageStatus::Read => 7,
    }
}

/// What is known of one message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MessageState {
    pub source: String,
    pub handle: String,
    pub status: MessageStatus,
    pub content: Option<String>,
    pub service: Option<Service>,
    pub line: Option<String>,
    pub contact: Option<String>,
    /// When the message was first reported sent, and delivered (for latencies).
    pub sent_at: Option<DateTime<Utc>>,
    pub delivered_at: Option<DateTime<Utc>>,
}

/// What is known of one conversation.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Conversation {
    pub line: String,
    pub contact: String,
    pub last_inbound_at: Option<DateTime<Utc>>,
    pub last_inbound_handle: Option<String>,
    pub last_outbound_at: Option<DateTime<Utc>>,
    pub last_outbound_handle: Option<String>,
    pub last_delivered_at: Option<DateTime<Utc>>,
    pub last_read_at: Option<DateTime<Utc>>,
    pub opted_out: bool,
    pub service: Option<Service>,
}

/// The outcome of applying an event.
#[derive(Debug, Clone, PartialEq)]
pub struct Applied {
    /// The message's current status is this event's: set now, or by an earlier delivery of
    /// this same event (so a retry after a failed push pushes again). False for a stale event
    /// (its status is behind) and for another event repeating the current status.
    pub advanced: bool,
    pub message: Option<MessageState>,
    pub conversation: Option<Conversation>,
    /// The message's item records this event's CRM push as done (a store that records pushes
    /// on the message: [`StateStore::records_pushes`]).
    pub pushed: bool,
}

#[async_trait]
pub trait StateStore: Send + Sync {
    async fn apply(&self, e: &Event) -> Result<Applied, StoreError>;
    async fn message(&self, source: &str, handle: &str)
        -> Result<Option<MessageState>, StoreError>;

    /// Whether a CRM push can be recorded done on the message's own item
    /// ([`StateStore::record_push`]), so that [`StateStore::apply`] tells a repeat
    /// ([`Applied::pushed`]) without an effect key of its own.
    fn records_pushes(&self) -> bool {
        false
    }

    /// Records on `e`'s message that its push is done.
    async fn record_push(&self, _e: &Event) -> Result<(), StoreError> {
        Ok(())
    }
}

/// The parts of an event the state cares about.
pub(crate) struct Update<'a> {
    pub event_id: &'a str,
    pub source: &'a str,
    pub handle: Option<&'a str>,
    pub status: Option<MessageStatus>,
    pub content: Option<&'a str>,
    pub service: Option<Service>,
    pub line: Option<&'a str>,
    pub contact: Option<&'a str>,
    pub at: DateTime<Utc>,
    pub inbound: bool,
    pub opted_out: Option<bool>,
}

impl<'a> Update<'a> {
    pub fn of(e: &'a Event) -> Option<Update<'a>> {
        if !matches!(
            e.kind,
            EventKind::MessageReceived | EventKind::MessageStatus
        ) {
            return None;
        }
        Some(Update {
            event_id: &e.id,
            source: &e.source,
            handle: e.message_handle.as_deref(),
            status: e.status,
            content: e.content.as_deref().filter(|c| !c.is_empty()),
            service: e.service,
            line: e.line_number.as_deref(),
            contact: e.contact_number.as_deref(),
            at: e.occurred_at.unwrap_or(e.received_at),
            inbound: e.direction == Some(Direction::Inbound)
                || e.kind == EventKind::MessageReceived,
            opted_out: e.opted_out,
        })
    }
}

#[cfg(feature = "lambda")]
pub mod dynamodb;
pub mod sqlite;

/// Behaviour every state store must show (the DynamoDB one is run from `tests/`, on moto).
#[cfg(any(test, feature = "testing"))]
pub mod contract {
    use super::*;
    use chrono::TimeZone;

    pub fn ev(
        source: &str,
        handle: &str,
        status: MessageStatus,
        secs: i64,
        content: Option<&str>,
    ) -> Event {
        let t = Utc.timestamp_opt(1_700_000_000 + secs, 0).unwrap();
        let inbound = status == MessageStatus::Received;
        let kind = if inbound {
            EventKind::MessageReceived
        } else {
            EventKind::MessageStatus
        };
        let mut e = Event::new(
            source,
            "sendblue",
            kind,
            format!("{handle}:{status:?}"),
            t,
            "{}".into(),
        );
        e.status = Some(status);
        e.direction = Some(if inbound {
            Direction::Inbound
        } else {
            Direction::Outbound
        });
        e.message_handle = Some(handle.into());
        e.content = content.map(str::to_owned);
        e.service = Some(Service::IMessage);
        e.line_number = Some(format!("+1000{source}"));
        e.contact_number = Some("+2000".into());
        e.occurred_at = Some(t);
        e
    }

    /// Runs the scenario with messages of source `source` (unique per run on a shared store).
    pub async fn run(s: &dyn StateStore, source: &str) {
        let a = s
            .apply(&ev(source, "m1", MessageStatus::Sent, 0, Some("hello")))
            .await
            .unwrap();
        assert!(a.advanced);
        // READ arrives before DELIVERED.
        assert!(
            s.apply(&ev(source, "m1", MessageStatus::Read, 20, None))
                .await
                .unwrap()
                .advanced
        );
        let late = s
            .apply(&ev(source, "m1", MessageStatus::Delivered, 10, None))
            .await
            .unwrap();
        assert!(!late.advanced, "a late DELIVERED does not undo READ");
        // The same READ delivered again (a retry after a failed push) is still current.
        assert!(
            s.apply(&ev(source, "m1", MessageStatus::Read, 20, None))
                .await
                .unwrap()
                .advanced
        );
        let m = late.message.unwrap();
        assert_eq!(m.status, MessageStatus::Read);
        assert_eq!(
            m.content.as_deref(),
            Some("hello"),
            "content kept from the first event"
        );
        let c = late.conversation.unwrap();
        assert_eq!(c.last_read_at.unwrap().timestamp(), 1_700_000_020);
        assert_eq!(c.last_delivered_at.unwrap().timestamp(), 1_700_000_020);
        assert_eq!(c.last_outbound_handle.as_deref(), Some("m1"));
        assert_eq!(c.last_inbound_at, None);

        let r = s
            .apply(&ev(
                source,
                "in1",
                MessageStatus::Received,
                30,
                Some("hi back"),
            ))
            .await
            .unwrap();
        let c = r.conversation.unwrap();
        assert_eq!(c.last_inbound_handle.as_deref(), Some("in1"));
        assert_eq!(c.last_outbound_handle.as_deref(), Some("m1"));
        // A failure without content: the content known from an earlier event stays readable.
        s.apply(&ev(
            source,
            "m2",
            MessageStatus::Sent,
            35,
            Some("are you there?"),
        ))
        .await
        .unwrap();
        let mut opt = ev(source, "m2", MessageStatus::Failed, 40, None);
        opt.opted_out = Some(true);
        let applied = s.apply(&opt).await.unwrap();
        assert!(applied.advanced);
        assert!(applied.conversation.unwrap().opted_out);
        let m2 = s.message(source, "m2").await.unwrap().unwrap();
        assert_eq!(m2.status, MessageStatus::Failed);
        assert_eq!(m2.content.as_deref(), Some("are you there?"));
        assert_eq!(m2.service, Some(Service::IMessage));
        assert_eq!(s.message(source, "nope").await.unwrap(), None);
        // Events that are not about messages change nothing.
        let typing = Event::new(
            source,
            "sendblue",
            EventKind::Typing,
            "t".into(),
            Utc::now(),
            "{}".into(),
        );
        assert_eq!(
            s.apply(&typing).await.unwrap(),
            Applied {
                advanced: false,
                message: None,
                conversation: None,
                pushed: false,
            }
        );
    }
}
