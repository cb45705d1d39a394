//! Conversation state in the embedded database: one transaction per event.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::{params, OptionalExtension};

use super::{rank, Applied, Conversation, MessageState, StateStore, Update};
use crate::event::{Event, MessageStatus, Service};
use crate::idempotency::StoreError;
use crate::sqlite::Db;

#[derive(Clone)]
pub struct SqliteState {
    db: Db,
}

impl SqliteState {
    pub fn new(db: Db) -> SqliteState {
        SqliteState { db }
    }
}

pub(crate) fn word<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

pub(crate) fn from_word<T: serde::de::DeserializeOwned>(s: &str) -> Option<T> {
    serde_json::from_value(serde_json::Value::String(s.to_owned())).ok()
}

fn time(ms: Option<i64>) -> Option<DateTime<Utc>> {
    ms.and_then(DateTime::from_timestamp_millis)
}

fn read_message(
    c: &rusqlite::Connection,
    source: &str,
    handle: &str,
) -> rusqlite::Result<Option<MessageState>> {
    c.prepare_cached(
        "SELECT status, content, service, line, contact, sent_at_ms, delivered_at_ms
         FROM message_state WHERE source = ?1 AND handle = ?2",
    )?
    .query_row(params![source, handle], |r| {
        Ok(MessageState {
            source: source.to_owned(),
            handle: handle.to_owned(),
            status: from_word(&r.get::<_, String>(0)?).unwrap_or(MessageStatus::Unknown),
            content: r.get(1)?,
            service: r
                .get::<_, Option<String>>(2)?
                .and_then(|s| from_word::<Service>(&s)),
            line: r.get(3)?,
            contact: r.get(4)?,
            sent_at: time(r.get(5)?),
            delivered_at: time(r.get(6)?),
        })
    })
    .optional()
}

fn read_conversation(
    c: &rusqlite::Connection,
    line: &str,
    contact: &str,
) -> rusqlite::Result<Option<Conversation>> {
    c.prepare_cached(
        "SELECT last_inbound_at_ms, last_inbound_handle, last_outbound_at_ms, last_outbound_handle,
                last_delivered_at_ms, last_read_at_ms, opted_out, service
         FROM conversations WHERE line = ?1 AND contact = ?2",
    )?
    .query_row(params![line, contact], |r| {
        Ok(Conversation {
            line: line.to_owned(),
            contact: contact.to_owned(),
            last_inbound_at: time(r.get(0)?),
            last_inbound_handle: r.get(1)?,
            last_outbound_at: time(r.get(2)?),
            last_outbound_handle: r.get(3)?,
            last_delivered_at: time(r.get(4)?),
            last_read_at: time(r.get(5)?),
            opted_out: r.get::<_, i64>(6)? != 0,
            service: r
                .get::<_, Option<String>>(7)?
                .and_then(|s| from_word::<Service>(&s)),
        })
    })
    .optional()
}

#[async_trait]
impl StateStore for SqliteState {
    async fn apply(&self, e: &Event) -> Result<Applied, StoreError> {
        let Some(u) = Update::of(e) else {
            return Ok(Applied {
                advanced: false,
                message: None,
                conversation: None,
                pushed: false,
            });
        };
        let source = u.source.to_owned();
        let event_id = u.event_id.to_owned();
        let handle = u.handle.map(str::to_owned);
        let status = u.status;
        let content = u.content.map(str::to_owned);
        let service = u.service.map(|s| word(&s));
        let line = u.line.map(str::to_owned);
        let contact = u.contact.map(str::to_owned);
        let at = u.at.timestamp_millis();
        let inbound = u.inbound;
        let opted_out = u.opted_out;
        self.db
            .write(move |c| {
                let mut advanced = false;
                let mut message = None;
                if let (Some(h), Some(st)) = (&handle, status) {
                    let r = i64::from(rank(st));
                    c.prepare_cached(
                        "INSERT INTO message_state(source, handle, status, rank, status_event, content, service, line, contact,
                            sent_at_ms, delivered_at_ms, updated_at_ms)
                         VALUES (?1, ?2, ?3, ?4, ?10, ?5, ?6, ?7, ?8, ?11, ?12, ?9)
                         ON CONFLICT(source, handle) DO UPDATE SET
                           status = CASE WHEN excluded.rank > message_state.rank THEN excluded.status ELSE message_state.status END,
                           status_event = CASE WHEN excluded.rank > message_state.rank THEN excluded.status_event ELSE message_state.status_event END,
                           rank = max(message_state.rank, excluded.rank),
                           content = coalesce(message_state.content, excluded.content),
                           service = coalesce(excluded.service, message_state.service),
                           line = coalesce(message_state.line, excluded.line),
                           contact = coalesce(message_state.contact, excluded.contact),
                           sent_at_ms = coalesce(message_state.sent_at_ms, excluded.sent_at_ms),
                           delivered_at_ms = coalesce(message_state.delivered_at_ms, excluded.delivered_at_ms),
                           updated_at_ms = max(message_state.updated_at_ms, excluded.updated_at_ms)",
                    )?
                    .execute(params![
                            source,
                            h,
                            word(&st),
                            r,
                            content,
                            service,
                            line,
                            contact,
                            at,
                            event_id,
                            (st == MessageStatus::Sent).then_some(at),
                            (st == MessageStatus::Delivered).then_some(at),
                        ],
                    )?;
                    let set_by: String = c
                        .prepare_cached("SELECT status_event FROM message_state WHERE source = ?1 AND handle = ?2")?
                        .query_row(params![source, h], |r| r.get(0))?;
                    advanced = set_by == event_id;
                    message = read_message(c, &source, h)?;
                }
                let mut conversation = None;
                if let (Some(l), Some(ct)) = (&line, &contact) {
                    let delivered = matches!(status, Some(MessageStatus::Delivered | MessageStatus::Read)).then_some(at);
                    let read = matches!(status, Some(MessageStatus::Read)).then_some(at);
                    let (in_at, in_h, out_at, out_h) = if inbound {
                        (Some(at), handle.clone(), None, None)
                    } else {
                        (None, None, Some(at), handle.clone())
                    };
                    c.prepare_cached(
                        "INSERT INTO conversations(line, contact, last_inbound_at_ms, last_inbound_handle, last_outbound_at_ms,
                            last_outbound_handle, last_delivered_at_ms, last_read_at_ms, opted_out, service)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, coalesce(?9, 0), ?10)
                         ON CONFLICT(line, contact) DO UPDATE SET
                           last_inbound_handle = CASE WHEN excluded.last_inbound_at_ms > coalesce(last_inbound_at_ms, -1)
                               THEN excluded.last_inbound_handle ELSE last_inbound_handle END,
                           last_inbound_at_ms = max(coalesce(last_inbound_at_ms, -1), coalesce(excluded.last_inbound_at_ms, -1)),
                           last_outbound_handle = CASE WHEN excluded.last_outbound_at_ms > coalesce(last_outbound_at_ms, -1)
                               THEN excluded.last_outbound_handle ELSE last_outbound_handle END,
                           last_outbound_at_ms = max(coalesce(last_outbound_at_ms, -1), coalesce(excluded.last_outbound_at_ms, -1)),
                           last_delivered_at_ms = max(coalesce(last_delivered_at_ms, -1), coalesce(excluded.last_delivered_at_ms, -1)),
                           last_read_at_ms = max(coalesce(last_read_at_ms, -1), coalesce(excluded.last_read_at_ms, -1)),
                           opted_out = coalesce(?9, opted_out),
                           service = coalesce(excluded.service, service)",
                    )?
                    .execute(params![l, ct, in_at, in_h, out_at, out_h, delivered, read, opted_out, service])?;
                    // -1 stands for "never" inside the max() above.
                    c.prepare_cached(
                        "UPDATE conversations SET
                           last_inbound_at_ms = nullif(last_inbound_at_ms, -1),
                           last_outbound_at_ms = nullif(last_outbound_at_ms, -1),
                           last_delivered_at_ms = nullif(last_delivered_at_ms, -1),
                           last_read_at_ms = nullif(last_read_at_ms, -1)
                         WHERE line = ?1 AND contact = ?2",
                    )?
                    .execute(params![l, ct])?;
                    conversation = read_conversation(c, l, ct)?;
                }
                Ok(Applied {
                    advanced,
                    message,
                    conversation,
                    pushed: false,
                })
            })
            .await
            .map_err(|e| StoreError(e.to_string()))
    }

    async fn message(
        &self,
        source: &str,
        handle: &str,
    ) -> Result<Option<MessageState>, StoreError> {
        let (source, handle) = (source.to_owned(), handle.to_owned());
        self.db
            .read(move |c| read_message(c, &source, &handle))
            .await
            .map_err(|e| StoreError(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn contract() {
        let dir = tempfile::tempdir().unwrap();
        super::super::contract::run(
            &SqliteState::new(Db::open(&dir.path().join("s.db")).unwrap()),
            "sb",
        )
        .await;
    }

    #[test]
    fn rank_order() {
        use MessageStatus::*;
        let order = [Queued, Accepted, Sending, Sent, Failed, Delivered, Read];
        for w in order.windows(2) {
            assert!(rank(w[0]) < rank(w[1]), "{:?} < {:?}", w[0], w[1]);
        }
    }
}
