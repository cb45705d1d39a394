//! Queues between the stages: an SQS adapter on AWS and an SQLite adapter locally that keeps
//! the semantics workers rely on (visibility timeout, receive count, dead-letter after N
//! receives). Delivery is at least once: consumers delete what they finished.

pub mod sqlite;
#[cfg(feature = "aws")]
pub mod sqs;

pub use sqlite::SqliteQueue;

use std::time::Duration;

use async_trait::async_trait;

/// A message to send. `id` is the event id: a hint for deduplication downstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutgoingMessage {
    pub id: String,
    pub body: String,
}

/// A received message, invisible to other consumers until its visibility timeout runs out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub message_id: String,
    pub body: String,
    /// Opaque handle to delete this receipt of the message.
    pub receipt: String,
    /// How many times the message has been received, this time included.
    pub receive_count: u32,
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("queue: {0}")]
pub struct QueueError(pub String);

/// The most a pack holds, in bytes: SQS bills each 64 KiB of a request's payload as one request,
/// so a pack fills about one such chunk (with room for the request's own framing).
pub const PACK_BYTES: usize = 60 * 1024;

/// The most events a pack holds: a consumer attempts them all at once (crm-sync's pushes run
/// 32 at a time), so that a pack takes one round of its slowest effect, well within the
/// function's timeout.
pub const PACK_EVENTS: usize = 32;

/// `bodies` (each one event's JSON) as few messages as fit in `limit` bytes and `max_events`
/// bodies each, in order: a message is one body as it is, or a JSON array of several
/// (`[a,b,c]`). A body over `limit` on its own travels alone.
/// [`crate::event::Event::all_from_json`] reads either back.
pub fn pack<'a>(
    bodies: impl IntoIterator<Item = &'a str>,
    limit: usize,
    max_events: usize,
) -> Vec<String> {
    let mut packs: Vec<Vec<&str>> = Vec::new();
    let mut size = 0;
    for body in bodies {
        // `[`, `]` and a comma per body after the first: the body fits when `size + 1 + len`
        // is within `limit`.
        match packs.last_mut() {
            Some(open) if size + body.len() < limit && open.len() < max_events => {
                open.push(body);
                size += body.len() + 1;
            }
            _ => {
                packs.push(vec![body]);
                size = body.len() + 2;
            }
        }
    }
    packs
        .into_iter()
        .map(|p| match p.as_slice() {
            [one] => (*one).to_owned(),
            many => format!("[{}]", many.join(",")),
        })
        .collect()
}

/// Whether a message's body is a pack (a JSON array of events) rather than one event.
pub fn is_pack(body: &str) -> bool {
    body.trim_start().starts_with('[')
}

#[async_trait]
pub trait Queue: Send + Sync {
    /// The most messages one [`Queue::send`] should be handed: a failed send fails them all.
    fn max_send(&self) -> usize {
        10
    }
    /// Sends every message durably, or fails (nothing is reported sent that was not).
    async fn send(&self, messages: &[OutgoingMessage]) -> Result<(), QueueError>;
    /// Up to `max` visible messages, waiting up to `wait` for the first.
    async fn receive(&self, max: usize, wait: Duration) -> Result<Vec<Delivery>, QueueError>;
    /// Acknowledges processed messages.
    async fn delete(&self, receipts: &[String]) -> Result<(), QueueError>;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Event, EventKind};

    fn body(i: usize, raw: usize) -> String {
        Event::new(
            "sb",
            "sendblue",
            EventKind::MessageStatus,
            format!("k{i}"),
            chrono::Utc::now(),
            "x".repeat(raw),
        )
        .to_json()
    }

    #[test]
    fn packs_fill_up_to_the_limit_in_order_and_read_back_as_the_events() {
        let bodies: Vec<String> = (0..40).map(|i| body(i, 2000)).collect();
        let packs = pack(bodies.iter().map(String::as_str), PACK_BYTES, PACK_EVENTS);
        assert!(packs.len() > 1 && packs.len() < 5, "{} packs", packs.len());
        assert!(packs.iter().all(|p| p.len() <= PACK_BYTES));
        let small: Vec<String> = (0..70).map(|i| body(i, 10)).collect();
        let counts: Vec<usize> = pack(small.iter().map(String::as_str), PACK_BYTES, PACK_EVENTS)
            .iter()
            .map(|p| Event::all_from_json(p).unwrap().len())
            .collect();
        assert_eq!(
            counts,
            vec![32, 32, 6],
            "at most {PACK_EVENTS} events a pack"
        );
        let back: Vec<String> = packs
            .iter()
            .flat_map(|p| Event::all_from_json(p).unwrap())
            .map(|e| e.to_json())
            .collect();
        assert_eq!(back, bodies);
    }

    #[test]
    fn one_body_stays_bare_and_one_over_the_limit_travels_alone() {
        let small = body(1, 10);
        assert_eq!(
            pack([small.as_str()], PACK_BYTES, PACK_EVENTS),
            vec![small.clone()]
        );
        let big = body(2, PACK_BYTES);
        let packs = pack(
            [small.as_str(), big.as_str(), small.as_str()],
            PACK_BYTES,
            PACK_EVENTS,
        );
        assert_eq!(packs, vec![small.clone(), big, small.clone()]);
        assert_eq!(Event::all_from_json(&packs[0]).unwrap().len(), 1);
    }
}
