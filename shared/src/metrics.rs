//! Counters: what `bluehook stats` reports. Locally they persist in the SQLite database (so they
//! survive restarts); on Lambda they are log fields.

use std::collections::BTreeMap;
use std::sync::Mutex;

use serde::Serialize;

use crate::queue::sqlite::{dead_letter_name, queue_depth};
use crate::sqlite::{Db, DbError};

pub const RECEIVED: &str = "received";
pub const ACCEPTED: &str = "accepted";
pub const DUPLICATES: &str = "duplicates";
/// `processed.<queue>`: records a local stage finished and deleted.
pub const PROCESSED_PREFIX: &str = "processed.";
/// Registration pings answered (never queued).
pub const PINGS: &str = "pings";
/// Prefix of `rejected.<error code>` counters.
pub const REJECTED_PREFIX: &str = "rejected.";
/// Prefix of `auth.<reason>` counters: why a 401 was given.
pub const AUTH_PREFIX: &str = "auth.";

/// The error codes of the ingress, always listed in `stats` (zero when none).
pub const REJECTION_CODES: &[&str] = &[
    "unauthorized",
    "too_large",
    "bad_request",
    "unknown_source",
    "method_not_allowed",
    "not_found",
    "timeout",
    "in_progress",
    "unavailable",
];

pub trait Metrics: Send + Sync {
    fn incr(&self, name: &str, by: u64);
    /// A duration worth a metric (delivery latency, ...). Locally these are computed from the
    /// archive instead, so the default ignores them.
    fn observe_ms(&self, _name: &str, _ms: i64) {}
}

/// Counters in the embedded database. Increments are gathered in memory and written by the next
/// group commit, so an increment made before a write is durable no later than that write.
#[derive(Clone)]
pub struct SqliteCounters {
    db: Db,
}

impl SqliteCounters {
    pub fn new(db: Db) -> SqliteCounters {
        SqliteCounters { db }
    }
}

impl Metrics for SqliteCounters {
    fn incr(&self, name: &str, by: u64) {
        self.db.count(name, by);
    }
}

/// Counters as structured log lines (Lambda: CloudWatch Logs, queryable with Logs Insights).
#[derive(Debug, Default, Clone, Copy)]
pub struct LogMetrics;

impl Metrics for LogMetrics {
    fn incr(&self, name: &str, by: u64) {
        tracing::debug!(counter = name, by, "count");
    }

    /// One CloudWatch Embedded Metric Format line on stdout (Lambda ships it to CloudWatch).
    fn observe_ms(&self, name: &str, ms: i64) {
        println!(
            "{}",
            emf_line(name, ms, chrono::Utc::now().timestamp_millis())
        );
    }
}

/// An EMF document for one duration in milliseconds, in the `bluehook` namespace.
pub fn emf_line(name: &str, ms: i64, now_ms: i64) -> String {
    serde_json::json!({
        "_aws": {
            "Timestamp": now_ms,
            "CloudWatchMetrics": [{
                "Namespace": "bluehook",
                "Dimensions": [[]],
                "Metrics": [{"Name": name, "Unit": "Milliseconds"}]
            }]
        },
        name: ms
    })
    .to_string()
}

/// Counters in memory, for tests.
#[derive(Debug, Default)]
pub struct MemoryMetrics {
    counts: Mutex<BTreeMap<String, u64>>,
    durations: Mutex<BTreeMap<String, Vec<i64>>>,
}

impl MemoryMetrics {
    pub fn get(&self, name: &str) -> u64 {
        self.counts.lock().unwrap().get(name).copied().unwrap_or(0)
    }

    /// Every duration observed under `name`, in order.
    pub fn observed(&self, name: &str) -> Vec<i64> {
        self.durations
            .lock()
            .unwrap()
            .get(name)
            .cloned()
            .unwrap_or_default()
    }
}

impl Metrics for MemoryMetrics {
    fn incr(&self, name: &str, by: u64) {
        *self
            .counts
            .lock()
            .unwrap()
            .entry(name.to_owned())
            .or_default() += by;
    }

    fn observe_ms(&self, name: &str, ms: i64) {
        self.durations
            .lock()
            .unwrap()
            .entry(name.to_owned())
            .or_default()
            .push(ms);
    }
}

/// Depth of one local queue and of its dead-letter queue.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct QueueStats {
    pub queued: u64,
    pub dead_lettered: u64,
    pub processed: u64,
}

/// What `bluehook stats --json` prints.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Stats {
    /// Webhook requests that reached a `/webhooks/...` route.
    pub received: u64,
    /// Events accepted (claimed, queued durably, answered 200 `accepted`).
    pub accepted: u64,
    /// Events answered 200 `duplicate`.
    pub duplicates: u64,
    /// Provider registration pings answered 200 (nothing queued).
    pub pings: u64,
    /// Requests answered with an error, by error code.
    pub rejected: BTreeMap<String, u64>,
    /// Why requests were answered 401, by reason.
    pub auth_failures: BTreeMap<String, u64>,
    /// Messages waiting in the local queues now.
    pub queued: u64,
    /// Events taken off the events queue (written to the event log and routed).
    pub processed: u64,
    /// Events sent on to each destination's queue.
    pub routed: BTreeMap<String, u64>,
    /// Events routed to a destination whose sink is off.
    pub skipped: BTreeMap<String, u64>,
    /// Messages in the dead-letter queues now.
    pub dead_lettered: u64,
    /// Bot replies: `sent`, and `skipped.<reason>` (`no_sender`, `no_recipient`, ...).
    pub replies: BTreeMap<String, u64>,
    /// Follow-ups: `scheduled` (timers set), `pending`, `sent`, `skipped.<reason>` (`replied`,
    /// `opted_out`, ...), `failed`, `unknown`.
    pub followups: BTreeMap<String, u64>,
    /// Alerts: `sent`, `suppressed` (occurrences inside `min_interval_secs`, summed into the
    /// next alert), `failed`.
    pub alerts: BTreeMap<String, u64>,
    /// The media archive: files `stored`, `bytes` stored, `too_large`, `expired`,
    /// `invalid_url`.
    pub media: BTreeMap<String, u64>,
    pub queues: BTreeMap<String, QueueStats>,
}

impl Stats {
    /// Reads the counters and the depths of `queues` from the database.
    pub async fn load(db: &Db, queues: &[&str]) -> Result<Stats, DbError> {
        let queues: Vec<String> = queues.iter().map(|q| (*q).to_owned()).collect();
        db.read(move |c| {
            let mut counters = BTreeMap::new();
            let mut stmt = c.prepare("SELECT name, value FROM counters")?;
            for row in stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))? {
                let (k, v) = row?;
                counters.insert(k, v as u64);
            }
            let get = |k: &str| counters.get(k).copied().unwrap_or(0);
            let mut rejected: BTreeMap<String, u64> = REJECTION_CODES
                .iter()
                .map(|c| ((*c).to_owned(), 0))
                .collect();
            let mut auth_failures = BTreeMap::new();
            let mut routed = BTreeMap::new();
            let mut skipped = BTreeMap::new();
            let mut replies = BTreeMap::from([("sent".to_owned(), 0)]);
            let mut media: BTreeMap<String, u64> =
                ["stored", "bytes", "too_large", "expired", "invalid_url"]
                    .iter()
                    .map(|k| ((*k).to_owned(), 0))
                    .collect();
            let mut alerts: BTreeMap<String, u64> = ["sent", "suppressed", "failed"]
                .iter()
                .map(|k| ((*k).to_owned(), 0))
                .collect();
            for (k, v) in &counters {
                if let Some(code) = k.strip_prefix(REJECTED_PREFIX) {
                    rejected.insert(code.to_owned(), *v);
                } else if let Some(reason) = k.strip_prefix(AUTH_PREFIX) {
                    auth_failures.insert(reason.to_owned(), *v);
                } else if let Some(d) = k.strip_prefix("routed.") {
                    routed.insert(d.to_owned(), *v);
                } else if let Some(d) = k.strip_prefix("skipped.") {
                    skipped.insert(d.to_owned(), *v);
                } else if let Some(r) = k.strip_prefix("replies.") {
                    replies.insert(r.to_owned(), *v);
                } else if let Some(a) = k.strip_prefix("alerts.") {
                    alerts.insert(a.to_owned(), *v);
                } else if let Some(m) = k.strip_prefix("media.") {
                    media.insert(m.to_owned(), *v);
                }
            }
            let mut per_queue = BTreeMap::new();
            for q in &queues {
                per_queue.insert(
                    q.clone(),
                    QueueStats {
                        queued: queue_depth(c, q)?,
                        dead_lettered: queue_depth(c, &dead_letter_name(q))?,
                        processed: get(&format!("{PROCESSED_PREFIX}{q}")),
                    },
                );
            }
            Ok(Stats {
                received: get(RECEIVED),
                accepted: get(ACCEPTED),
                duplicates: get(DUPLICATES),
                pings: get(PINGS),
                rejected,
                auth_failures,
                queued: per_queue.values().map(|q| q.queued).sum(),
                processed: get(&format!("{PROCESSED_PREFIX}{}", crate::local::EVENTS_QUEUE)),
                routed,
                skipped,
                dead_lettered: per_queue.values().map(|q| q.dead_lettered).sum(),
                replies,
                followups: crate::followups::counts_or_empty(c),
                alerts,
                media,
                queues: per_queue,
            })
        })
        .await
    }
}
