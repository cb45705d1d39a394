//! The embedded database: one SQLite file in the data folder holding the local queues, the
//! idempotency keys and the counters.
//!
//! All writes go through one writer thread that groups whatever is waiting into a single
//! transaction (group commit): one fsync serves many requests, and every caller gets its answer
//! only after the transaction holding its write has committed, so "acked" still means
//! "durable". Each write runs inside its own savepoint, so one failing write does not undo the
//! others of its group.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;

use rusqlite::Connection;
use tokio::sync::oneshot;

/// Most writes one transaction takes before it commits.
const MAX_GROUP: usize = 1024;

/// How long counters wait for a write to ride along with before they commit on their own.
const COUNTERS_IDLE_FLUSH: std::time::Duration = std::time::Duration::from_millis(500);

#[derive(Debug, Clone, thiserror::Error)]
pub enum DbError {
    #[error("sqlite: {0}")]
    Sqlite(String),
    #[error("the database writer has stopped")]
    Closed,
}

impl From<rusqlite::Error> for DbError {
    fn from(e: rusqlite::Error) -> Self {
        DbError::Sqlite(e.to_string())
    }
}

type Reply = Box<dyn FnOnce(Result<(), DbError>) + Send>;
type Job = Box<dyn FnOnce(&Connection) -> Option<Reply> + Send>;

/// Counter increments not yet written; the writer adds them to the transaction it commits next.
type PendingCounters = Arc<Mutex<HashMap<String, u64>>>;

/// Handle to the database; cheap to clone.
#[derive(Clone)]
pub struct Db {
    jobs: mpsc::Sender<Job>,
    counters: PendingCounters,
    path: PathBuf,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS idempotency (
    key TEXT PRIMARY KEY,
    state TEXT NOT NULL,            -- 'in_progress' | 'completed'
    token TEXT NOT NULL,
    event_id TEXT,
    lease_until_ms INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,    -- Unix seconds
    result TEXT                     -- what an effect produced (sinks' effect keys)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS idempotency_expiry ON idempotency(expires_at);

CREATE TABLE IF NOT EXISTS queue_messages (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    queue TEXT NOT NULL,
    message_id TEXT NOT NULL,
    body TEXT NOT NULL,
    sent_at_ms INTEGER NOT NULL,
    visible_at_ms INTEGER NOT NULL,
    receive_count INTEGER NOT NULL DEFAULT 0,
    receipt TEXT
);
CREATE INDEX IF NOT EXISTS queue_visible ON queue_messages(queue, visible_at_ms, seq);
-- Messages handed out at least once (in flight, or back after their visibility timeout).
CREATE INDEX IF NOT EXISTS queue_received ON queue_messages(queue, visible_at_ms)
    WHERE receive_count > 0;

CREATE TABLE IF NOT EXISTS message_state (
    source TEXT NOT NULL,
    handle TEXT NOT NULL,
    status TEXT NOT NULL,
    rank INTEGER NOT NULL,
    status_event TEXT NOT NULL,     -- id of the event that set the status
    content TEXT,
    service TEXT,
    line TEXT,
    contact TEXT,
    sent_at_ms INTEGER,
    delivered_at_ms INTEGER,
    updated_at_ms INTEGER NOT NULL,
    PRIMARY KEY (source, handle)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS conversations (
    line TEXT NOT NULL,
    contact TEXT NOT NULL,
    last_inbound_at_ms INTEGER,
    last_inbound_handle TEXT,
    last_outbound_at_ms INTEGER,
    last_outbound_handle TEXT,
    last_delivered_at_ms INTEGER,
    last_read_at_ms INTEGER,
    opted_out INTEGER NOT NULL DEFAULT 0,
    service TEXT,
    PRIMARY KEY (line, contact)
) WITHOUT ROWID;

-- What a sink with no outbound adapter would have sent (local mode).
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    sink TEXT NOT NULL,
    key TEXT NOT NULL,
    payload TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_key ON outbox(sink, key);

-- Every delivery attempt to a destination (bluehook events, stats).
CREATE TABLE IF NOT EXISTS delivery_attempts (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL,
    destination TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    at_ms INTEGER NOT NULL,
    status INTEGER,                 -- the HTTP status, when there was an answer
    error TEXT,                     -- timeout | connect | reset, when there was none
    duration_ms INTEGER NOT NULL,
    state TEXT NOT NULL,            -- delivered | skipped | retrying | dead_lettered, after it
    detail TEXT                     -- a skip's reason, a failure's short message
);
CREATE INDEX IF NOT EXISTS delivery_attempts_event ON delivery_attempts(event_id);

-- Every routed event with its routes (bluehook events).
CREATE TABLE IF NOT EXISTS events_index (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    source TEXT NOT NULL,
    kind TEXT NOT NULL,
    received_at_ms INTEGER NOT NULL,
    routes TEXT NOT NULL,           -- comma-separated sinks and destinations
    event TEXT NOT NULL
);

-- Every webhook request answered by `bluehook dev`, accepted or refused (the inspector): the
-- newest 10,000, headers with signatures and secrets redacted.
CREATE TABLE IF NOT EXISTS inspector_requests (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    at_ms INTEGER NOT NULL,
    method TEXT NOT NULL,
    path TEXT NOT NULL,
    source TEXT,
    status INTEGER NOT NULL,
    outcome TEXT NOT NULL,          -- accepted | duplicate | ping | refused | unavailable
    code TEXT,                      -- the error code of an error answer
    reason TEXT,                    -- the authentication failure, or the answer's message
    event_ids TEXT NOT NULL,        -- comma-separated
    headers TEXT NOT NULL,          -- JSON [[name, value], ...]
    body BLOB,                      -- the first 256 KiB
    body_bytes INTEGER NOT NULL,
    duration_us INTEGER NOT NULL
);

-- Follow-up timers ([[followups]]): one per rule and read message, fired once when due.
CREATE TABLE IF NOT EXISTS followup_timers (
    key TEXT PRIMARY KEY,           -- <rule>:<source>:<handle>
    rule TEXT NOT NULL,
    due_ms INTEGER NOT NULL,
    read_at_ms INTEGER NOT NULL,
    event TEXT NOT NULL,            -- the read receipt that started it
    state TEXT NOT NULL,            -- scheduled | sending | sent | skipped | failed | unknown
    reason TEXT,                    -- why skipped or failed
    attempts INTEGER NOT NULL DEFAULT 0,
    fired_at_ms INTEGER
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS followup_due ON followup_timers(state, due_ms);

-- What became of each attachment of an event ([sinks.media]): stored, too_large, expired,
-- invalid_url, failed (retried).
CREATE TABLE IF NOT EXISTS media_files (
    event_id TEXT NOT NULL,
    n INTEGER NOT NULL,
    key TEXT NOT NULL,              -- media/<source>/<yyyy>/<mm>/<event id>-<n>.<ext>
    state TEXT NOT NULL,
    content_type TEXT,
    size INTEGER,
    sha256 TEXT,
    status INTEGER,
    detail TEXT,
    at_ms INTEGER NOT NULL,
    PRIMARY KEY (event_id, n)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS media_files_key ON media_files(key);

CREATE TABLE IF NOT EXISTS counters (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;
";

fn open_connection(path: &Path) -> Result<Connection, DbError> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    // WAL with synchronous=FULL: a committed transaction survives a crash of the process and
    // of the machine.
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    // 32 MB of page cache: the queues' and keys' hot pages stay in memory between groups.
    conn.pragma_update(None, "cache_size", -32768)?;
    Ok(conn)
}

/// Brings a data folder written by an earlier version up to this schema: columns added since.
fn migrate(conn: &Connection) -> Result<(), DbError> {
    let has_detail = conn
        .prepare("SELECT 1 FROM pragma_table_info('delivery_attempts') WHERE name = 'detail'")?
        .exists([])?;
    if !has_detail {
        conn.execute_batch("ALTER TABLE delivery_attempts ADD COLUMN detail TEXT")?;
    }
    Ok(())
}

impl Db {
    /// Opens (creating if needed) the database at `path` and starts its writer thread.
    pub fn open(path: &Path) -> Result<Db, DbError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| DbError::Sqlite(e.to_string()))?;
        }
        let conn = open_connection(path)?;
        conn.execute_batch(SCHEMA)?;
        migrate(&conn)?;
        let (tx, rx) = mpsc::channel::<Job>();
        let counters = PendingCounters::default();
        let pending = counters.clone();
        thread::Builder::new()
            .name("bluehook-sqlite-writer".into())
            .spawn(move || writer_loop(conn, rx, pending))
            .map_err(|e| DbError::Sqlite(e.to_string()))?;
        Ok(Db {
            jobs: tx,
            counters,
            path: path.to_owned(),
        })
    }

    /// Adds `by` to the counter `name`. The increment is committed by the next transaction the
    /// writer commits: with the write of any job queued after this call (called from inside a
    /// job, with that job), or within half a second when no write comes.
    pub fn count(&self, name: &str, by: u64) {
        let mut pending = self.counters.lock().unwrap();
        match pending.get_mut(name) {
            Some(v) => *v += by,
            None => {
                pending.insert(name.to_owned(), by);
            }
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` in the next group transaction; answers once that transaction has committed.
    pub async fn write<T, F>(&self, f: F) -> Result<T, DbError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel::<Result<T, DbError>>();
        let job: Job = Box::new(move |conn| {
            let result = in_savepoint(conn, f);
            Some(Box::new(move |committed: Result<(), DbError>| {
                let _ = tx.send(committed.and(result));
            }))
        });
        self.jobs.send(job).map_err(|_| DbError::Closed)?;
        rx.await.map_err(|_| DbError::Closed)?
    }

    /// Runs `f` on a fresh read-only connection, off the async runtime. Reads see every
    /// committed write and never block the writer (WAL).
    pub async fn read<T, F>(&self, f: F) -> Result<T, DbError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            let conn = open_connection(&path)?;
            Ok(f(&conn)?)
        })
        .await
        .map_err(|e| DbError::Sqlite(e.to_string()))?
    }

    /// Waits until every write queued before this call has committed.
    pub async fn flush(&self) -> Result<(), DbError> {
        self.write(|_| Ok(())).await
    }
}

fn in_savepoint<T>(
    conn: &Connection,
    f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
) -> Result<T, DbError> {
    // Cached statements: these run for every write.
    conn.prepare_cached("SAVEPOINT job")?.execute([])?;
    match f(conn) {
        Ok(v) => {
            conn.prepare_cached("RELEASE job")?.execute([])?;
            Ok(v)
        }
        Err(e) => {
            conn.prepare_cached("ROLLBACK TO job")?.execute([])?;
            conn.prepare_cached("RELEASE job")?.execute([])?;
            Err(e.into())
        }
    }
}

/// Writes the pending counter increments (inside the open transaction).
fn write_counters(conn: &Connection, pending: &PendingCounters) -> rusqlite::Result<()> {
    let taken = std::mem::take(&mut *pending.lock().unwrap());
    if taken.is_empty() {
        return Ok(());
    }
    let mut upsert = conn.prepare_cached(
        "INSERT INTO counters(name, value) VALUES (?1, ?2)
         ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
    )?;
    for (name, by) in taken {
        upsert.execute(rusqlite::params![name, by as i64])?;
    }
    Ok(())
}

fn writer_loop(conn: Connection, rx: mpsc::Receiver<Job>, counters: PendingCounters) {
    let mut replies: Vec<Reply> = Vec::with_capacity(MAX_GROUP);
    // Blocks for the first job of a group, then takes whatever else is already waiting. With no
    // job for a while, counters still pending are committed on their own.
    loop {
        let first = match rx.recv_timeout(COUNTERS_IDLE_FLUSH) {
            Ok(job) => job,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if !counters.lock().unwrap().is_empty() {
                    let flushed = conn
                        .execute_batch("BEGIN IMMEDIATE")
                        .and_then(|_| write_counters(&conn, &counters))
                        .and_then(|_| conn.execute_batch("COMMIT"));
                    if let Err(e) = flushed {
                        tracing::warn!(error = %e, "counters not written");
                        let _ = conn.execute_batch("ROLLBACK");
                    }
                }
                continue;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        };
        if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
            tracing::error!(error = %e, "cannot begin a transaction");
            // The job cannot run: answer it with the error by running nothing.
            drop(first);
            continue;
        }
        let mut next = Some(first);
        let mut taken = 0;
        while let Some(job) = next.take() {
            replies.extend(job(&conn));
            taken += 1;
            if taken < MAX_GROUP {
                next = rx.try_recv().ok();
            }
        }
        if let Err(e) = write_counters(&conn, &counters) {
            tracing::warn!(error = %e, "counters not written");
        }
        let committed = conn
            .execute_batch("COMMIT")
            .map_err(DbError::from)
            .inspect_err(|e| {
                tracing::error!(error = %e, "commit failed");
                let _ = conn.execute_batch("ROLLBACK");
            });
        for reply in replies.drain(..) {
            reply(committed.clone());
        }
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn writes_commit_and_failures_stay_isolated() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("t.db")).unwrap();
        let mut handles = Vec::new();
        for i in 0..200 {
            let db = db.clone();
            handles.push(tokio::spawn(async move {
                db.write(move |c| {
                    if i == 7 {
                        c.execute("INSERT INTO nope VALUES (1)", [])?;
                    }
                    c.execute(
                        "INSERT INTO counters(name, value) VALUES (?1, 1)",
                        [format!("c{i}")],
                    )
                })
                .await
            }));
        }
        let mut failures = 0;
        for h in handles {
            if h.await.unwrap().is_err() {
                failures += 1;
            }
        }
        assert_eq!(failures, 1);
        let n: i64 = db
            .read(|c| c.query_row("SELECT count(*) FROM counters", [], |r| r.get(0)))
            .await
            .unwrap();
        assert_eq!(n, 199);
    }
}
