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

#[async_trait]
pub trait Queue: Send + Sync {
    /// Sends every message durably, or fails (nothing is reported sent that was not).
    async fn send(&self, messages: &[OutgoingMessage]) -> Result<(), QueueError>;
    /// Up to `max` visible messages, waiting up to `wait` for the first.
    async fn receive(&self, max: usize, wait: Duration) -> Result<Vec<Delivery>, QueueError>;
    /// Acknowledges processed messages.
    async fn delete(&self, receipts: &[String]) -> Result<(), QueueError>;
}
