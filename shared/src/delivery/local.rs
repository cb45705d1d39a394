//! The local carrier (`bluehook dev`): one SQLite queue and one worker per stage (the router,
//! each sink, each destination as `dest-<name>`, each with its `-dlq`), so a slow or failing
//! one holds up only itself; every attempt in the `delivery_attempts` table; every routed event
//! in `events_index`, for `bluehook events` and `stats`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use rusqlite::{params, OptionalExtension};
use serde::Serialize;
use tokio::sync::watch;

use super::{
    AttemptRecord, Attempted, Completion, Deliver, FollowOn, Format, RateLimiter, Verdict,
};
use crate::idempotency::sqlite::complete_in;
use crate::processing::{Processor, Record};
use crate::queue::sqlite::{dead_letter_name, queue_depth, Settlement};
use crate::queue::{Delivery, OutgoingMessage, Queue, SqliteQueue};
use crate::sqlite::{Db, DbError};

/// The local queue of destination `name`.
pub fn queue_name(name: &str) -> String {
    format!("dest-{name}")
}

/// Writes attempts inside the caller's transaction.
fn insert_attempts(c: &rusqlite::Connection, attempts: &[AttemptRecord]) -> rusqlite::Result<()> {
    let mut insert = c.prepare_cached(
        "INSERT INTO delivery_attempts(event_id, destination, attempt, at_ms, status, error,
            duration_ms, state, detail) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?;
    for a in attempts {
        insert.execute(params![
            a.event_id,
            a.destination,
            a.attempt,
            a.at.timestamp_millis(),
            a.status,
            a.error,
            a.duration_ms as i64,
            a.state,
            a.detail
        ])?;
    }
    Ok(())
}

/// One routed event as `bluehook events` finds it.
pub struct Indexed {
    pub id: String,
    pub source: String,
    pub kind: &'static str,
    pub received_at_ms: i64,
    /// Comma-separated sinks and destinations.
    pub routes: String,
    /// The event JSON as it travelled on the queue.
    pub json: String,
}

/// Records routed events (their JSON and routes), for `bluehook events`.
pub async fn index_events(
    db: &Db,
    routed: Vec<Indexed>,
    timers: Vec<crate::followups::Timer>,
) -> Result<(), DbError> {
    db.write(move |c| {
        // A read receipt's follow-up timers are set with its index row.
        crate::followups::schedule_in(c, &timers)?;
        let mut insert = c.prepare_cached(
            "INSERT OR IGNORE INTO events_index(id, source, kind, received_at_ms, routes, event)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?;
        for e in &routed {
            insert.execute(params![
                e.id,
                e.source,
                e.kind,
                e.received_at_ms,
                e.routes,
                e.json
            ])?;
        }
        Ok(())
    })
    .await
}

/// How many routed events `bluehook events` keeps (the event log keeps them all), and how many
/// attempts.
pub const KEEP_EVENTS: i64 = 100_000;
pub const KEEP_ATTEMPTS: i64 = 1_000_000;

/// Drops all but the newest [`KEEP_EVENTS`] indexed events and [`KEEP_ATTEMPTS`] attempts.
pub async fn prune(db: &Db) -> Result<(), DbError> {
    db.write(|c| {
        c.execute(
            "DELETE FROM events_index WHERE seq <= (SELECT max(seq) FROM events_index) - ?1",
            [KEEP_EVENTS],
        )?;
        c.execute(
            "DELETE FROM delivery_attempts WHERE seq <= (SELECT max(seq) FROM delivery_attempts) - ?1",
            [KEEP_ATTEMPTS],
        )?;
        Ok(())
    })
    .await
}

/// How long a local worker keeps draining its queue after the stop signal.
const DRAIN_ON_STOP: Duration = Duration::from_secs(5);

/// What a local worker feeds its queue's messages to.
pub enum Stage {
    /// Whole batches (the router, analytics): the records the processor names for retry come
    /// back after the queue's visibility timeout (and past the maximum receives go to the
    /// dead-letter queue); the others are deleted.
    Batch {
        processor: Arc<dyn Processor>,
        batch: usize,
    },
    /// One delivery per message, through the engine (the sinks' and destinations' targets),
    /// `concurrency` at a time and no faster than the target's rate limit.
    Each {
        target: Arc<dyn Deliver>,
        format: Format,
        concurrency: usize,
    },
}

/// Feeds `queue` to `stage` until `shutdown`, then drains what is ready for a few seconds.
/// Every batch ends in one transaction: the effects done completed, the attempts recorded,
/// finished messages deleted (and counted as `processed.<queue>`), retries hidden for their
/// backoff, the exhausted moved to the `-dlq`. The effect keys live in the same database (the
/// local idempotency store), so a crash never leaves an effect done but its message queued
/// without its key completed.
pub async fn run_worker(queue: SqliteQueue, stage: Stage, mut shutdown: watch::Receiver<bool>) {
    let counter: &'static str = Box::leak(format!("processed.{}", queue.name()).into_boxed_str());
    let (max, limiter) = match &stage {
        Stage::Batch { batch, .. } => (*batch, None),
        Stage::Each {
            target,
            concurrency,
            ..
        } => (*concurrency, RateLimiter::of(&target.policy())),
    };
    // After the stop signal, what is already queued is still processed, for a bounded time, so
    // that a clean stop leaves nothing behind that was ready to go.
    let mut drain_until: Option<tokio::time::Instant> = None;
    loop {
        if drain_until.is_none() && *shutdown.borrow() {
            drain_until = Some(tokio::time::Instant::now() + DRAIN_ON_STOP);
        }
        let received = match drain_until {
            Some(deadline) if tokio::time::Instant::now() >= deadline => return,
            Some(_) => queue.receive(max, Duration::ZERO).await,
            None => {
                // A receive that has begun may already have taken messages: on a stop it is
                // finished, not dropped, and what it took is processed.
                let receive = queue.receive(max, Duration::from_secs(1));
                tokio::pin!(receive);
                tokio::select! {
                    got = &mut receive => got,
                    _ = shutdown.changed() => receive.await,
                }
            }
        };
        let deliveries = match received {
            Ok(d) if d.is_empty() && drain_until.is_some() => return,
            Ok(d) if d.is_empty() => continue,
            Ok(d) => d,
            Err(e) => {
                tracing::error!(queue = queue.name(), error = %e, "receive failed");
                if drain_until.is_some() {
                    return;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let Settled {
            settlement,
            attempts,
            completions,
            follow_ons,
        } = match &stage {
            Stage::Batch { processor, .. } => Settled {
                settlement: process_batch(processor.as_ref(), deliveries).await,
                ..Settled::default()
            },
            Stage::Each { target, format, .. } => {
                deliver_each(target, *format, limiter.as_deref(), deliveries).await
            }
        };
        if !settlement.retry.is_empty() || !settlement.dead.is_empty() {
            tracing::debug!(
                queue = queue.name(),
                retrying = settlement.retry.len(),
                dead_lettered = settlement.dead.len(),
                "deliveries not finished"
            );
        }
        let q = queue.clone();
        let settled = queue
            .db()
            .write(move |c| {
                for done in &completions {
                    let n = complete_in(
                        c,
                        &done.key,
                        &done.token.0,
                        done.times(),
                        done.result.as_deref(),
                    )?;
                    if n == 0 {
                        tracing::warn!("effect done but its claim had lapsed");
                    }
                }
                insert_attempts(c, &attempts)?;
                for (event_id, next) in &follow_ons {
                    let message = OutgoingMessage {
                        id: format!("{event_id}:{}", next.queue),
                        body: next.body.clone(),
                    };
                    crate::queue::sqlite::insert_messages(c, next.queue, &[message])?;
                    // `bluehook events` shows where it went.
                    c.prepare_cached(
                        "UPDATE events_index SET routes = routes || ',' || ?2
                         WHERE id = ?1 AND instr(',' || routes || ',', ',' || ?2 || ',') = 0",
                    )?
                    .execute(params![event_id, next.route])?;
                }
                q.settle_in(c, &settlement, Some(counter))
            })
            .await;
        if let Err(e) = settled {
            tracing::error!(queue = queue.name(), error = %e, "a batch could not be settled; its messages come back after their visibility timeout");
        }
    }
}

/// A batch through a processor: what it names is left for the visibility timeout.
async fn process_batch(processor: &dyn Processor, deliveries: Vec<Delivery>) -> Settlement {
    let records = deliveries
        .iter()
        .map(|d| Record {
            id: d.receipt.clone(),
            body: d.body.clone(),
            receive_count: d.receive_count,
        })
        .collect();
    let failed = processor.process(records).await;
    if !failed.is_empty() {
        tracing::warn!(
            stage = processor.name(),
            failed = failed.len(),
            "records left for retry"
        );
    }
    Settlement {
        done: deliveries
            .into_iter()
            .map(|d| d.receipt)
            .filter(|r| !failed.contains(r))
            .collect(),
        ..Settlement::default()
    }
}

/// Each message through the engine, all at once (the rate limit spacing their starts).
async fn deliver_each(
    target: &Arc<dyn Deliver>,
    format: Format,
    limiter: Option<&RateLimiter>,
    deliveries: Vec<Delivery>,
) -> Settled {
    let attempts = deliveries.into_iter().map(|d| async move {
        let attempted = match format.parse(&d.body) {
            Ok((_, event)) => {
                if let Some(l) = limiter {
                    l.acquire().await;
                }
                target.deliver(&event, d.receive_count).await
            }
            Err(e) => {
                tracing::error!(queue_message = %d.message_id, error = %e, "not a delivery; dead-lettered");
                Attempted {
                    verdict: Verdict::DeadLetter,
                    record: None,
                    completion: None,
                    follow_on: None,
                }
            }
        };
        (d.receipt, attempted)
    });
    let mut settled = Settled::default();
    for (receipt, a) in futures_util::future::join_all(attempts).await {
        match a.verdict {
            v if v.finished() => settled.settlement.done.push(receipt),
            Verdict::RetryIn(delay) => settled.settlement.retry.push((receipt, delay)),
            _ => settled.settlement.dead.push(receipt),
        }
        if let (Some(next), Some(r)) = (a.follow_on, &a.record) {
            settled.follow_ons.push((r.event_id.clone(), next));
        }
        settled.attempts.extend(a.record);
        settled.completions.extend(a.completion);
    }
    settled
}

/// What a batch comes to, written in one transaction.
#[derive(Default)]
struct Settled {
    settlement: Settlement,
    attempts: Vec<AttemptRecord>,
    completions: Vec<Completion>,
    /// (event id, what its done effect leads to).
    follow_ons: Vec<(String, FollowOn)>,
}

/// The destinations a data folder knows: those with a queue or an attempt.
pub async fn known_destinations(db: &Db) -> Result<Vec<String>, DbError> {
    db.read(|c| {
        let mut stmt = c.prepare(
            "SELECT DISTINCT substr(queue, 6) FROM queue_messages WHERE queue LIKE 'dest-%'
             UNION SELECT DISTINCT destination FROM delivery_attempts
             UNION SELECT substr(name, 8) FROM counters WHERE name LIKE 'routed.%'",
        )?;
        let names = stmt.query_map([], |r| r.get::<_, String>(0))?;
        let mut out = Vec::new();
        for n in names {
            let n = n?;
            let n = n.strip_suffix("-dlq").unwrap_or(&n).to_owned();
            if !crate::destinations::RESERVED.contains(&n.as_str()) && !out.contains(&n) {
                out.push(n);
            }
        }
        out.sort();
        Ok(out)
    })
    .await
}

/// One destination's numbers for `stats`.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct DestinationStats {
    pub delivered: u64,
    /// Waiting for a retry after a failed attempt.
    pub retrying: u64,
    /// Waiting for their first attempt.
    pub queued: u64,
    pub dead_lettered: u64,
    pub attempts: u64,
}

/// The numbers of every destination in `names`.
pub async fn destination_stats(
    db: &Db,
    names: Vec<String>,
) -> Result<BTreeMap<String, DestinationStats>, DbError> {
    db.read(move |c| {
        let counter = |name: &str| -> rusqlite::Result<u64> {
            c.query_row("SELECT value FROM counters WHERE name = ?1", [name], |r| {
                r.get::<_, i64>(0)
            })
            .optional()
            .map(|v| v.unwrap_or(0) as u64)
        };
        let mut out = BTreeMap::new();
        for name in names {
            let q = queue_name(&name);
            let retrying: i64 = c.query_row(
                "SELECT count(*) FROM queue_messages WHERE queue = ?1 AND receive_count > 0",
                [&q],
                |r| r.get(0),
            )?;
            let depth = queue_depth(c, &q)?;
            out.insert(
                name.clone(),
                DestinationStats {
                    delivered: counter(&format!("destination.{name}.delivered"))?,
                    retrying: retrying as u64,
                    queued: depth - retrying as u64,
                    dead_lettered: queue_depth(c, &dead_letter_name(&q))?,
                    attempts: counter(&format!("destination.{name}.attempts"))?,
                },
            );
        }
        Ok(out)
    })
    .await
}

/// One event as `bluehook events` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct EventView {
    pub event: serde_json::Value,
    /// Sinks and destinations it was routed to.
    pub routes: Vec<String>,
    /// Per destination: its state (`queued`, `retrying`, `delivered`, `dead_lettered`).
    pub deliveries: BTreeMap<String, String>,
    pub attempts: Vec<AttemptRecord>,
    /// Routed to `media`: each attachment, where it is archived and what became of it.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub media: Vec<serde_json::Value>,
    /// False for an event accepted but not routed yet (still on the events queue).
    #[serde(skip)]
    pub routed: bool,
}

/// One line of `bluehook events list`.
#[derive(Debug, Clone, Serialize)]
pub struct EventSummary {
    pub id: String,
    pub source: String,
    pub kind: String,
    pub received_at: String,
    pub routes: Vec<String>,
    pub deliveries: BTreeMap<String, String>,
}

fn attempts_of(c: &rusqlite::Connection, id: &str) -> rusqlite::Result<Vec<AttemptRecord>> {
    let mut stmt = c.prepare_cached(
        "SELECT destination, attempt, at_ms, status, error, duration_ms, state, detail
         FROM delivery_attempts WHERE event_id = ?1 ORDER BY seq",
    )?;
    let rows = stmt.query_map([id], |r| {
        Ok(AttemptRecord {
            event_id: id.to_owned(),
            destination: r.get(0)?,
            attempt: r.get(1)?,
            at: chrono::DateTime::from_timestamp_millis(r.get(2)?).unwrap_or_default(),
            status: r.get(3)?,
            error: r.get(4)?,
            duration_ms: r.get::<_, i64>(5)? as u64,
            state: r.get(6)?,
            detail: r.get(7)?,
        })
    })?;
    rows.collect()
}

/// Each routed destination's and sink's state: its last attempt's, or `queued` before any
/// (analytics archives batches, not events: it has none).
fn states(routes: &[String], attempts: &[AttemptRecord]) -> BTreeMap<String, String> {
    routes
        .iter()
        .filter(|r| r.as_str() != "analytics")
        .map(|d| {
            let last = attempts.iter().rev().find(|a| &a.destination == d);
            (
                d.clone(),
                last.map_or("queued".to_owned(), |a| a.state.clone()),
            )
        })
        .collect()
}

fn split_routes(routes: String) -> Vec<String> {
    routes
        .split(',')
        .filter(|r| !r.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The event `id` with its routes and attempts; an event accepted but not routed yet (still on
/// the events queue, or dead-lettered there) with none; `None` if there is no such event.
pub async fn show_event(db: &Db, id: &str) -> Result<Option<EventView>, DbError> {
    let id = id.to_owned();
    // The data folder: the database's own.
    let data_dir = db.path().parent().map(std::path::Path::to_owned);
    db.read(move |c| {
        let row = c
            .query_row(
                "SELECT routes, event FROM events_index WHERE id = ?1",
                [&id],
                |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)),
            )
            .optional()?;
        let Some((routes, event)) = row else {
            let queued: Option<String> = c
                .query_row(
                    "SELECT body FROM queue_messages WHERE queue IN (?1, ?2) AND message_id = ?3",
                    rusqlite::params![
                        crate::local::EVENTS_QUEUE,
                        crate::queue::sqlite::dead_letter_name(crate::local::EVENTS_QUEUE),
                        &id
                    ],
                    |r| r.get(0),
                )
                .optional()?;
            return Ok(queued.map(|event| EventView {
                event: serde_json::from_str(&event).unwrap_or(serde_json::Value::Null),
                routes: Vec::new(),
                deliveries: BTreeMap::new(),
                attempts: Vec::new(),
                media: Vec::new(),
                routed: false,
            }));
        };
        let routes = split_routes(routes);
        let attempts = attempts_of(c, &id)?;
        let media = match (
            routes.iter().any(|r| r == "media"),
            crate::event::Event::from_json(&event),
            data_dir.as_deref(),
        ) {
            (true, Ok(e), Some(dir)) => crate::sinks::media::local_files(c, &e, dir)?,
            _ => Vec::new(),
        };
        Ok(Some(EventView {
            event: serde_json::from_str(&event).unwrap_or(serde_json::Value::Null),
            deliveries: states(&routes, &attempts),
            routes,
            attempts,
            media,
            routed: true,
        }))
    })
    .await
}

/// What `bluehook events list` selects.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    pub source: Option<String>,
    pub destination: Option<String>,
    /// Only events with a delivery retrying or dead-lettered.
    pub failed: bool,
    pub limit: usize,
}

/// The most recent routed events matching `filter`, newest first.
pub async fn list_events(db: &Db, filter: ListFilter) -> Result<Vec<EventSummary>, DbError> {
    db.read(move |c| {
        let mut stmt = c.prepare(
            "SELECT id, source, kind, received_at_ms, routes FROM events_index ORDER BY seq DESC",
        )?;
        let mut rows = stmt.query([])?;
        let mut out = Vec::new();
        while let Some(r) = rows.next()? {
            if out.len() >= filter.limit {
                break;
            }
            let (id, source): (String, String) = (r.get(0)?, r.get(1)?);
            if filter.source.as_ref().is_some_and(|s| *s != source) {
                continue;
            }
            let routes = split_routes(r.get(4)?);
            if filter
                .destination
                .as_ref()
                .is_some_and(|d| !routes.contains(d))
            {
                continue;
            }
            let attempts = attempts_of(c, &id)?;
            let deliveries = states(&routes, &attempts);
            if filter.failed
                && !deliveries
                    .values()
                    .any(|s| s == "retrying" || s == "dead_lettered")
            {
                continue;
            }
            let received = chrono::DateTime::from_timestamp_millis(r.get(3)?).unwrap_or_default();
            out.push(EventSummary {
                id,
                source,
                kind: r.get(2)?,
                received_at: received.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                routes,
                deliveries,
            });
        }
        Ok(out)
    })
    .await
}

/// Moves up to `max` dead-lettered deliveries of destination `name` back to its queue.
pub async fn replay(db: &Db, name: &str, max: u64) -> Result<u64, crate::queue::QueueError> {
    let q = SqliteQueue::new(
        db.clone(),
        &queue_name(name),
        Duration::from_secs(30),
        u32::MAX,
    );
    q.dead_letter_queue().move_to(q.name(), max).await
}
