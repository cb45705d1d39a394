//! bluehook: verified, idempotent, durable ingestion of messaging webhooks.
//!
//! - [`event`]: the canonical [`event::Event`].
//! - [`provider`]: one module per provider: authenticate, parse, samples.
//! - [`ingress`]: the HTTP handler shared by Lambda and the local server.
//! - [`idempotency`] and [`queue`]: ports with AWS (DynamoDB, SQS) and SQLite adapters.
//! - [`local`]: `bluehook dev`, the one-process pipeline on SQLite.
//! - [`lambda`]: glue for the Lambda functions.

pub mod config;
pub mod event;
pub mod idempotency;
pub mod ingress;
pub mod lambda;
pub mod local;
pub mod metrics;
pub mod provider;
pub mod queue;
pub mod sqlite;
pub mod telemetry;

pub use event::{Event, EventKind, MessageStatus, Service};
pub use queue::sqlite::SqliteQueue;
