//! bluehook: verified, idempotent, durable ingestion of messaging webhooks.
//!
//! - [`event`]: the canonical [`event::Event`].
//! - [`provider`]: one module per provider: authenticate, parse, samples.
//! - [`ingress`]: the HTTP handler shared by Lambda and the local server.
//! - [`idempotency`] and [`queue`]: ports with AWS (DynamoDB, SQS) and SQLite adapters.
//! - [`routing`] and [`router`]: which sinks an event goes to; [`processing`]: SQS batches with
//!   partial failures, on Lambda and locally.
//! - [`analytics`]: the NDJSON archive (S3 / local folder), EMF metrics, rates.
//! - [`alerts`]: short texts to a team channel when messages fail.
//! - [`followups`]: read-but-no-reply follow-ups and their durable timers.
//! - [`local`]: `bluehook dev`, the one-process pipeline on SQLite.
//! - [`lambda`]: glue for the Lambda functions.

pub mod alerts;
pub mod analytics;
pub mod config;
pub mod cost;
pub mod delivery;
pub mod destinations;
pub mod event;
pub mod followups;
pub mod idempotency;
pub mod ingress;
#[cfg(feature = "lambda")]
pub mod lambda;
pub mod local;
pub mod metrics;
pub mod objects;
pub mod processing;
pub mod provider;
pub mod queue;
#[cfg(feature = "aws")]
pub mod replay;
pub mod router;
pub mod routing;
pub mod sinks;
pub mod sqlite;
pub mod state;
pub mod telemetry;
#[cfg(feature = "lambda")]
pub mod timers;

pub use event::{Event, EventKind, MessageStatus, Service};
pub use queue::sqlite::SqliteQueue;
