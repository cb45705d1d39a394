//! A queue in the embedded SQLite database, with SQS's consumer semantics: a received message
//! is hidden for the visibility timeout, its receive count grows on each receive, and a message
//! received `max_receive_count` times moves to the dead-letter queue `<name>-dlq` on its next
//! receive instead of being handed out again.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::params;
use tokio::sync::Notify;

use super::{Delivery, OutgoingMessage, Queue, QueueError};
use crate::idempotency::sqlite::{claim_in, Held};
use crate::idempotency::{retry_after, Accepted, AtomicAccept, ClaimTimes, ClaimToken, StoreError};
use crate::sqlite::{now_ms, Db};

/// What a consumer decided about the messages it received (by receipt).
#[derive(Debug, Clone, Default)]
pub struct Settlement {
    /// Finished: deleted.
    pub done: Vec<String>,
    /// Handed out again after their backoff.
    pub retry: Vec<(String, Duration)>,
    /// Moved to the dead-letter queue now.
    pub dead: Vec<String>,
}

#[derive(Clone)]
pub struct SqliteQueue {
    db: Db,
    name: String,
    dlq: String,
    visibility: Duration,
    max_receive_count: u32,
    /// Wakes a waiting receiver when this process sends.
    notify: Arc<Notify>,
}

fn qerr(e: impl std::fmt::Display) -> QueueError {
    QueueError(e.to_string())
}

pub(crate) fn insert_messages(
    c: &rusqlite::Connection,
    queue: &str,
    messages: &[OutgoingMessage],
) -> rusqlite::Result<()> {
    let now = now_ms();
    let mut insert = c.prepare_cached(
        "INSERT INTO queue_messages(queue, message_id, body, sent_at_ms, visible_at_ms)
         VALUES (?1, ?2, ?3, ?4, ?4)",
    )?;
    for m in messages {
        insert.execute(params![queue, m.id, m.body, now])?;
    }
    Ok(())
}

/// The idempotency keys live in the same database as the queue, so the ingress's claim, enqueue
/// and complete are one transaction: one write instead of three, and no claim is ever left
/// half done by a crash.
#[async_trait]
impl AtomicAccept for SqliteQueue {
    async fn accept(
        &self,
        key: &str,
        message: &OutgoingMessage,
        times: ClaimTimes,
        on_queued: Box<dyn FnOnce() + Send>,
    ) -> Result<Accepted, StoreError> {
        let (key, name, message) = (key.to_owned(), self.name.clone(), message.clone());
        let token = ClaimToken::random();
        let held = self
            .db
            .write_ack(move |c| {
                let held = claim_in(c, &key, &token.0, &message.id, "completed", times)?;
                if let Held::Nobody = held {
                    insert_messages(c, &name, std::slice::from_ref(&message))?;
                    on_queued();
                }
                Ok(held)
            })
            .await
            .map_err(|e| StoreError(e.to_string()))?;
        Ok(match held {
            Held::Nobody => {
                self.notify.notify_waiters();
                Accepted::Queued
            }
            Held::InProgress { lease_until_ms } => Accepted::InProgress {
                retry_after: retry_after(lease_until_ms, times.now_ms),
            },
            Held::Completed => Accepted::Duplicate,
        })
    }
}

impl SqliteQueue {
    pub fn new(db: Db, name: &str, visibility: Duration, max_receive_count: u32) -> SqliteQueue {
        SqliteQueue {
            db,
            name: name.to_owned(),
            dlq: dead_letter_name(name),
            visibility,
            max_receive_count,
            notify: Arc::new(Notify::new()),
        }
    }

    pub fn db(&self) -> &Db {
        &self.db
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The dead-letter queue of this queue, as a queue of its own (for inspection and replay).
    pub fn dead_letter_queue(&self) -> SqliteQueue {
        SqliteQueue::new(self.db.clone(), &self.dlq, self.visibility, u32::MAX)
    }

    async fn receive_now(&self, max: usize) -> Result<Vec<Delivery>, QueueError> {
        let (name, dlq) = (self.name.clone(), self.dlq.clone());
        let visibility_ms = self.visibility.as_millis() as i64;
        let max_receives = i64::from(self.max_receive_count);
        self.db
            .write(move |c| {
                let now = now_ms();
                // Only messages received before can be due for the DLQ; `receive_count > 0`
                // lets this use the partial index of those instead of walking the backlog.
                // Found first, then moved one by one by row: one `UPDATE` searching the index
                // whose columns it rewrites would run in two passes over a temporary table,
                // built even when no message is due (nearly always).
                let due: Vec<i64> = c
                    .prepare_cached(
                        "SELECT seq FROM queue_messages
                         WHERE queue = ?1 AND receive_count > 0 AND visible_at_ms <= ?2
                           AND receive_count >= ?3",
                    )?
                    .query_map(params![name, now, max_receives], |r| r.get(0))?
                    .collect::<Result<_, _>>()?;
                let mut to_dlq = c.prepare_cached(
                    "UPDATE queue_messages SET queue = ?2, receive_count = 0, receipt = NULL
                     WHERE seq = ?1",
                )?;
                for seq in due {
                    to_dlq.execute(params![seq, dlq])?;
                }
                let mut select = c.prepare_cached(
                    "SELECT seq, message_id, body, receive_count FROM queue_messages
                     WHERE queue = ?1 AND visible_at_ms <= ?2 ORDER BY visible_at_ms, seq LIMIT ?3",
                )?;
                let rows = select
                    .query_map(params![name, now, max as i64], |r| {
                        Ok((
                            r.get::<_, i64>(0)?,
                            r.get::<_, String>(1)?,
                            r.get::<_, String>(2)?,
                            r.get::<_, i64>(3)?,
                        ))
                    })?
                    .collect::<Result<Vec<_>, _>>()?;
                let mut update = c.prepare_cached(
                    "UPDATE queue_messages SET receive_count = receive_count + 1,
                        visible_at_ms = ?2, receipt = ?3 WHERE seq = ?1",
                )?;
                let mut out = Vec::with_capacity(rows.len());
                for (seq, message_id, body, count) in rows {
                    let receipt = format!("{seq}:{}", uuid::Uuid::new_v4().simple());
                    update.execute(params![seq, now + visibility_ms, receipt])?;
                    out.push(Delivery {
                        message_id,
                        body,
                        receipt,
                        receive_count: (count + 1) as u32,
                    });
                }
                Ok(out)
            })
            .await
            .map_err(qerr)
    }

    /// Deletes processed messages and adds how many to the counter `counter`, in one
    /// transaction: the count moves exactly when the messages leave the queue.
    pub async fn delete_counted(
        &self,
        receipts: &[String],
        counter: &'static str,
    ) -> Result<(), QueueError> {
        self.settle(
            Settlement {
                done: receipts.to_vec(),
                ..Settlement::default()
            },
            Some(counter),
        )
        .await
    }

    /// Makes every in-flight message visible again at once. For a restart of the only consumer:
    /// what the previous process had received and not deleted is handed out again now rather
    /// than after the visibility timeout. Returns how many.
    pub async fn recover_in_flight(&self) -> Result<u64, QueueError> {
        let name = self.name.clone();
        self.db
            .write(move |c| {
                c.execute(
                    "UPDATE queue_messages SET visible_at_ms = ?2, receipt = NULL
                     WHERE queue = ?1 AND receipt IS NOT NULL AND visible_at_ms > ?2",
                    params![name, now_ms()],
                )
            })
            .await
            .map(|n| n as u64)
            .map_err(qerr)
    }

    /// Hides a received message for `delay` (a retry's backoff) instead of the visibility
    /// timeout; like SQS's ChangeMessageVisibility. A stale receipt changes nothing.
    pub async fn retry_later(&self, receipt: &str, delay: Duration) -> Result<(), QueueError> {
        self.settle(
            Settlement {
                retry: vec![(receipt.to_owned(), delay)],
                ..Settlement::default()
            },
            None,
        )
        .await
    }

    /// Moves a received message to the dead-letter queue now. A stale receipt moves nothing.
    pub async fn dead_letter(&self, receipt: &str) -> Result<(), QueueError> {
        self.settle(
            Settlement {
                dead: vec![receipt.to_owned()],
                ..Settlement::default()
            },
            None,
        )
        .await
    }

    /// Carries out a consumer's decisions in one transaction, counting the finished messages
    /// under `counter`.
    pub async fn settle(
        &self,
        s: Settlement,
        counter: Option<&'static str>,
    ) -> Result<(), QueueError> {
        let q = self.clone();
        self.db
            .write(move |c| q.settle_in(c, &s, counter))
            .await
            .map_err(qerr)
    }

    /// Carries out `s` inside the caller's transaction: finished messages deleted (and counted
    /// under `counter`), retries hidden for their backoff, the exhausted moved to the
    /// dead-letter queue. Stale receipts change nothing.
    pub fn settle_in(
        &self,
        c: &rusqlite::Connection,
        s: &Settlement,
        counter: Option<&str>,
    ) -> rusqlite::Result<()> {
        if !s.done.is_empty() {
            let deleted = delete_receipts(c, &s.done)?;
            if let Some(counter) = counter {
                c.prepare_cached(
                    "INSERT INTO counters(name, value) VALUES (?1, ?2)
                     ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
                )?
                .execute(params![counter, deleted as i64])?;
            }
        }
        let now = now_ms();
        for (receipt, delay) in &s.retry {
            let delay_ms = delay.as_millis().min(i64::MAX as u128 / 2) as i64;
            c.prepare_cached(
                "UPDATE queue_messages SET visible_at_ms = ?3 WHERE seq = ?1 AND receipt = ?2",
            )?
            .execute(params![receipt_seq(receipt), receipt, now + delay_ms])?;
        }
        for receipt in &s.dead {
            c.prepare_cached(
                "UPDATE queue_messages SET queue = ?3, receive_count = 0, receipt = NULL,
                    visible_at_ms = ?4 WHERE seq = ?1 AND receipt = ?2",
            )?
            .execute(params![receipt_seq(receipt), receipt, self.dlq, now])?;
        }
        Ok(())
    }

    /// Messages waiting in this queue (visible or in flight).
    pub async fn depth(&self) -> Result<u64, QueueError> {
        let name = self.name.clone();
        self.db
            .read(move |c| queue_depth(c, &name))
            .await
            .map_err(qerr)
    }

    /// Moves up to `max` messages of this queue (normally a dead-letter queue) to `target`,
    /// visible at once with a fresh receive count. Returns how many moved.
    pub async fn move_to(&self, target: &str, max: u64) -> Result<u64, QueueError> {
        let (from, to) = (self.name.clone(), target.to_owned());
        let moved = self
            .db
            .write(move |c| {
                c.execute(
                    "UPDATE queue_messages SET queue = ?2, receive_count = 0, receipt = NULL,
                        visible_at_ms = ?3
                     WHERE seq IN (SELECT seq FROM queue_messages WHERE queue = ?1 ORDER BY seq LIMIT ?4)",
                    params![from, to, now_ms(), max.min(i64::MAX as u64) as i64],
                )
            })
            .await
            .map_err(qerr)?;
        Ok(moved as u64)
    }
}

/// The row a receipt (`<seq>:<random>`) names.
fn receipt_seq(receipt: &str) -> i64 {
    receipt
        .split(':')
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or(-1)
}

/// Deletes the messages of still-current receipts; returns how many went.
fn delete_receipts(c: &rusqlite::Connection, receipts: &[String]) -> rusqlite::Result<usize> {
    let mut delete =
        c.prepare_cached("DELETE FROM queue_messages WHERE seq = ?1 AND receipt = ?2")?;
    let mut deleted = 0;
    for r in receipts {
        deleted += delete.execute(params![receipt_seq(r), r])?;
    }
    Ok(deleted)
}

/// Name of the dead-letter queue of `queue`.
pub fn dead_letter_name(queue: &str) -> String {
    format!("{queue}-dlq")
}

/// Messages in `queue` (visible or in flight), read on an open connection.
pub fn queue_depth(c: &rusqlite::Connection, queue: &str) -> rusqlite::Result<u64> {
    c.query_row(
        "SELECT count(*) FROM queue_messages WHERE queue = ?1",
        [queue],
        |r| r.get::<_, i64>(0),
    )
    .map(|n| n as u64)
}

#[async_trait]
impl Queue for SqliteQueue {
    async fn send(&self, messages: &[OutgoingMessage]) -> Result<(), QueueError> {
        let name = self.name.clone();
        let messages = messages.to_vec();
        self.db
            .write(move |c| insert_messages(c, &name, &messages))
            .await
            .map_err(qerr)?;
        self.notify.notify_waiters();
        Ok(())
    }

    async fn receive(&self, max: usize, wait: Duration) -> Result<Vec<Delivery>, QueueError> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            // Register interest before looking, so a send in between is not missed.
            let notified = self.notify.notified();
            let got = self.receive_now(max).await?;
            let now = tokio::time::Instant::now();
            if !got.is_empty() || now >= deadline {
                return Ok(got);
            }
            // Also poll: messages become visible again when a visibility timeout runs out, and
            // another process may have sent.
            let nap = (deadline - now).min(Duration::from_millis(250));
            let _ = tokio::time::timeout(nap, notified).await;
        }
    }

    async fn delete(&self, receipts: &[String]) -> Result<(), QueueError> {
        let receipts = receipts.to_vec();
        self.db
            .write(move |c| delete_receipts(c, &receipts).map(|_| ()))
            .await
            .map_err(qerr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(i: usize) -> OutgoingMessage {
        OutgoingMessage {
            id: format!("m{i}"),
            body: format!("body {i}"),
        }
    }

    #[tokio::test]
    async fn atomic_accept_queues_once_and_keeps_the_claim_condition() {
        use crate::idempotency::sqlite::SqliteIdempotency;
        use crate::idempotency::{Claim, IdempotencyStore};
        use crate::metrics::{Metrics, SqliteCounters};
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("q.db")).unwrap();
        let q = SqliteQueue::new(db.clone(), "events", Duration::from_secs(30), 5);
        let counters = Arc::new(SqliteCounters::new(db.clone()));
        let t = |now_ms| ClaimTimes {
            now_ms,
            lease: Duration::from_secs(30),
            ttl: Duration::from_secs(3600),
        };
        let count = |c: &Arc<SqliteCounters>| -> Box<dyn FnOnce() + Send> {
            let c = c.clone();
            Box::new(move || c.incr("accepted", 1))
        };
        let now = 1_800_000_000_000;
        assert_eq!(
            q.accept("k1", &msg(1), t(now), count(&counters))
                .await
                .unwrap(),
            Accepted::Queued
        );
        assert_eq!(
            q.accept("k1", &msg(1), t(now + 1), count(&counters))
                .await
                .unwrap(),
            Accepted::Duplicate
        );
        assert_eq!(q.depth().await.unwrap(), 1);
        // Committed with the event: the counter is there as soon as the accept answered.
        let accepted: i64 = db
            .read(|c| {
                c.query_row(
                    "SELECT value FROM counters WHERE name = 'accepted'",
                    [],
                    |r| r.get(0),
                )
            })
            .await
            .unwrap();
        assert_eq!(accepted, 1);

        // A key held by the three-step protocol's claim: in progress until its lease runs out.
        let store = SqliteIdempotency::new(db.clone());
        assert!(matches!(
            store.claim("k2", "e2", t(now)).await.unwrap(),
            Claim::Acquired(_)
        ));
        match q
            .accept("k2", &msg(2), t(now + 1000), count(&counters))
            .await
            .unwrap()
        {
            Accepted::InProgress { retry_after } => assert!(retry_after <= Duration::from_secs(30)),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            q.accept("k2", &msg(2), t(now + 31_000), count(&counters))
                .await
                .unwrap(),
            Accepted::Queued
        );
        // The atomic accept completed the key: the other protocol sees a duplicate.
        assert_eq!(
            store.claim("k1", "e1", t(now + 2)).await.unwrap(),
            Claim::Completed
        );
        // After expiry the key is free again.
        assert_eq!(
            q.accept("k1", &msg(1), t(now + 3_601_000), count(&counters))
                .await
                .unwrap(),
            Accepted::Queued
        );
        assert_eq!(q.depth().await.unwrap(), 3);
    }

    #[tokio::test]
    async fn visibility_receive_count_and_dead_letter() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("q.db")).unwrap();
        let q = SqliteQueue::new(db, "events", Duration::from_millis(200), 2);
        q.send(&[msg(1), msg(2)]).await.unwrap();
        assert_eq!(q.depth().await.unwrap(), 2);

        let got = q.receive(10, Duration::ZERO).await.unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].body, "body 1");
        assert!(got.iter().all(|d| d.receive_count == 1));
        // Hidden while in flight.
        assert!(q.receive(10, Duration::ZERO).await.unwrap().is_empty());
        q.delete(&[got[0].receipt.clone()]).await.unwrap();

        // m2 not deleted: back after the visibility timeout, counted again.
        let again = q.receive(10, Duration::from_secs(60)).await.unwrap();
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].message_id, "m2");
        assert_eq!(again[0].receive_count, 2);
        // A stale receipt does not delete the message.
        q.delete(&[got[1].receipt.clone()]).await.unwrap();
        assert_eq!(q.depth().await.unwrap(), 1);

        // Received twice (the maximum): the next receive moves it to the DLQ.
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert!(q.receive(10, Duration::ZERO).await.unwrap().is_empty());
        let dlq = q.dead_letter_queue();
        assert_eq!(q.depth().await.unwrap(), 0);
        assert_eq!(dlq.depth().await.unwrap(), 1);

        // Replay moves it back with a fresh count.
        assert_eq!(dlq.move_to("events", 10).await.unwrap(), 1);
        let replayed = q.receive(10, Duration::ZERO).await.unwrap();
        assert_eq!(replayed.len(), 1);
        assert_eq!(replayed[0].receive_count, 1);
        assert_eq!(replayed[0].body, "body 2");
    }

    #[tokio::test]
    async fn a_retry_waits_its_backoff_and_dead_letter_moves_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("q.db")).unwrap();
        let q = SqliteQueue::new(db, "dest-bot", Duration::from_secs(30), 10);
        q.send(&[msg(1), msg(2)]).await.unwrap();
        let got = q.receive(10, Duration::ZERO).await.unwrap();
        assert_eq!(got.len(), 2);
        // m1 waits an hour (its backoff), m2 goes to the dead-letter queue now.
        q.retry_later(&got[0].receipt, Duration::from_secs(3600))
            .await
            .unwrap();
        q.dead_letter(&got[1].receipt).await.unwrap();
        assert_eq!(q.depth().await.unwrap(), 1);
        assert_eq!(q.dead_letter_queue().depth().await.unwrap(), 1);
        assert!(q.receive(10, Duration::ZERO).await.unwrap().is_empty());
        // A retry of zero is visible again at once, with its receive count.
        let again = q.receive(10, Duration::ZERO).await.unwrap();
        assert!(again.is_empty(), "still waiting its hour");
        q.recover_in_flight().await.unwrap();
        let again = q.receive(10, Duration::ZERO).await.unwrap();
        assert_eq!((again.len(), again[0].receive_count), (1, 2));
        q.retry_later(&again[0].receipt, Duration::ZERO)
            .await
            .unwrap();
        assert_eq!(q.receive(10, Duration::ZERO).await.unwrap().len(), 1);
        // A stale receipt moves nothing.
        q.dead_letter(&got[0].receipt).await.unwrap();
        assert_eq!(q.dead_letter_queue().depth().await.unwrap(), 1);
    }

    #[tokio::test]
    async fn a_waiting_receiver_wakes_on_send() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("q.db")).unwrap();
        let q = SqliteQueue::new(db, "events", Duration::from_secs(30), 5);
        let rx = q.clone();
        // The receive waits up to a minute; the send ends the wait, not the minute.
        let wait = Duration::from_secs(60);
        let waiter = tokio::spawn(async move { rx.receive(10, wait).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        let start = std::time::Instant::now();
        q.send(&[msg(1)]).await.unwrap();
        let got = waiter.await.unwrap().unwrap();
        assert_eq!(got.len(), 1);
        assert!(start.elapsed() < wait / 2, "{:?}", start.elapsed());
    }
}
