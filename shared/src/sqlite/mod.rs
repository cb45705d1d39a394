//! The embedded database: one SQLite file in the data folder holding the local queues, the
//! idempotency keys and the counters.
//!
//! All writes go through one writer thread that groups whatever is waiting into a single
//! transaction (group commit): one fsync serves many requests, and every caller gets its answer
//! only after the transaction holding its write has committed, so "acked" still means
//! "durable". Each write runs inside its own savepoint, so one failing write does not undo the
//! others of its group.
//!
//! Writes come in two lanes. A webhook's acknowledgement waits on its write ([`Db::write_ack`]);
//! everything downstream of it (router, sinks, deliveries, the inspector's records) is
//! [`Db::write`]. The writer serves waiting ack writes first and bounds how much downstream
//! work one transaction takes ([`BACKGROUND_SLICE`]), so an ack never waits behind a long
//! group of the sinks' writes (their pages and the fsync of them), only behind the job running
//! when it arrived. Downstream writes are never starved: they get every transaction no ack is
//! waiting for, and a slice of the next one once they have waited [`BACKGROUND_MAX_WAIT`].
//!
//! The writer checkpoints the WAL itself between transactions while no ack waits; while it is
//! saturated, a thread with its own connection does it instead ([`HAND_OFF_ABOVE`]). Every
//! connection opens through the VFS of `vfs.rs`, which hands a transaction's WAL frames to the
//! kernel in a few large writes instead of two per page.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags, OptionalExtension};
use tokio::sync::oneshot;

mod pcache;
mod vfs;

/// Most writes one transaction takes before it commits.
const MAX_GROUP: usize = 1024;

/// Prepared statements kept per connection: more than the distinct statements the writer runs.
const STATEMENT_CACHE: usize = 256;

/// How long counters wait for a write to ride along with before they commit on their own.
const COUNTERS_IDLE_FLUSH: Duration = Duration::from_millis(500);

/// How long one transaction keeps taking downstream writes before it commits.
pub const BACKGROUND_SLICE: Duration = Duration::from_millis(2);

/// How long a downstream write waits for others to share its transaction when no ack is
/// waiting: a transaction writes each page it touched (the queues' index pages, the counters,
/// the tables' right edges) once, however many of its writes touched it.
pub const BACKGROUND_COALESCE: Duration = Duration::from_millis(3);

/// How often the writer checkpoints the WAL into the database file, between transactions and
/// only while no ack write waits (SQLite's own checkpoint would run inside whichever commit
/// crossed its threshold, an ack's included); at the latest after [`CHECKPOINT_AT_LATEST`].
/// An ack arriving during a checkpoint waits for its end: at 2,000 webhooks/s with every sink
/// on, checkpoints every 20 ms copied ~740 frames each and took 6 ms (p90 7.8 ms), which set the
/// acks' p99 (9.8-12.7 ms); every 5 ms, p99 7.2-8.6 ms in alternating runs, for 5-10% more CPU
/// (every 2 ms: more CPU and a higher p99 again; every 10 ms: 8.6-12.2 ms).
pub const CHECKPOINT_EVERY: Duration = Duration::from_millis(5);
/// How often the checkpointing thread checkpoints while it has them (see [`HAND_OFF_ABOVE`]):
/// it runs beside the writer, so its checkpoints keep no ack waiting and copy more at once.
pub const THREAD_CHECKPOINT_EVERY: Duration = Duration::from_millis(20);
pub const CHECKPOINT_AT_LATEST: Duration = Duration::from_millis(500);

/// How busy the writer must have been (the share of a [`LOAD_WINDOW`] spent in transactions and
/// checkpoints, [`HOT_WINDOWS`] in a row) for a thread with its own connection to take over the
/// checkpoints, and how idle it must become again to take them back. Under sustained load the
/// copy and its sync of the database file then no longer take the writer's time (the maximum
/// +10-15%). Below it the writer keeps them: with two syncs at once, each on its own file, the
/// acks' commits waited behind the checkpoint's (p99 at 2,000/s 10.0-10.6 ms instead of 8.7-9.0
/// when the thread took over there).
pub const HAND_OFF_ABOVE: f64 = 0.9;
pub const TAKE_BACK_BELOW: f64 = 0.6;
pub const LOAD_WINDOW: Duration = Duration::from_millis(100);
/// How many windows in a row the writer must be that busy before the thread takes over.
pub const HOT_WINDOWS: u32 = 5;

/// When the checkpointing thread takes the checkpoints over, and gives them back.
#[derive(Debug, Clone, Copy)]
struct HandOff {
    above: f64,
    below: f64,
    windows: u32,
}

impl Default for HandOff {
    fn default() -> Self {
        HandOff {
            above: HAND_OFF_ABOVE,
            below: TAKE_BACK_BELOW,
            windows: HOT_WINDOWS,
        }
    }
}

/// While the thread checkpoints, how often the writer copies what is left itself, between
/// transactions and while no ack waits (at the latest after [`CATCH_UP_AT_LATEST`]). Only a
/// checkpoint between its transactions can leave the whole WAL copied when the next one begins,
/// which then writes the WAL from its start again: with the thread's alone, always behind the
/// newest commit, the WAL would grow for as long as the load lasts.
pub const CATCH_UP_EVERY: Duration = Duration::from_millis(100);
pub const CATCH_UP_AT_LATEST: Duration = Duration::from_millis(1000);

/// How long a downstream write waits while acks keep the writer busy before it rides along
/// with them anyway (for at most [`BACKGROUND_SLICE`]).
pub const BACKGROUND_MAX_WAIT: Duration = Duration::from_millis(20);

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
type Run = Box<dyn FnOnce(&Connection) -> Option<Reply> + Send>;

/// Which lane a write waits in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lane {
    /// A webhook's answer waits on it.
    Ack,
    /// Everything else.
    Background,
}

struct Job {
    lane: Lane,
    queued: Instant,
    run: Run,
}

/// Counter increments not yet written; the writer adds them to the transaction it commits next.
type PendingCounters = Arc<Mutex<HashMap<String, u64>>>;

/// Handle to the database; cheap to clone.
#[derive(Clone)]
pub struct Db {
    jobs: mpsc::Sender<Job>,
    counters: PendingCounters,
    path: PathBuf,
}

/// Idempotency and effect keys. Rows in the order they were claimed (rowid), found by key through
/// its unique index: a new key adds its row to the table's last page (shared with the keys
/// claimed with it) and one small entry to the key index, and the expiry index grows at its
/// end. (Keyed by `key` itself, each claim rewrote a page at a random place in a tree of whole
/// rows, and each expiry entry landed among the second's others: a third of the pages written.)
const IDEMPOTENCY_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS idempotency (
    key TEXT NOT NULL UNIQUE,
    state TEXT NOT NULL,            -- 'in_progress' | 'completed'
    token TEXT NOT NULL,
    event_id TEXT,
    lease_until_ms INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,    -- Unix seconds
    result TEXT                     -- what an effect produced (sinks' effect keys)
);
CREATE INDEX IF NOT EXISTS idempotency_expiry ON idempotency(expires_at);
";

const SCHEMA: &str = "
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
    let conn = match vfs::register() {
        Ok(name) => Connection::open_with_flags_and_vfs(path, OpenFlags::default(), name)?,
        Err(e) => {
            tracing::warn!(error = %e, "the WAL's appends are written page by page");
            Connection::open(path)?
        }
    };
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    // WAL with synchronous=FULL: a committed transaction survives a crash of the process and
    // of the machine. (The VFS above relies on each commit syncing the WAL.)
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    // 32 MB of page cache: the queues' and keys' hot pages stay in memory between groups.
    conn.pragma_update(None, "cache_size", -32768)?;
    // Each write runs in its own savepoint inside the group's transaction, which copies the
    // pages it changes to a sub-journal first: kept in memory (by default it spills to a temporary
    // file past 64 KiB, a write system call per page).
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    // Every statement the writer runs stays prepared (rusqlite keeps 16 by default, fewer than
    // the writes of one webhook's path use: each miss parsed and planned its SQL again).
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    Ok(conn)
}

/// Brings a data folder written by an earlier version up to this schema: columns added since,
/// and the keys' table as it is now.
fn migrate(conn: &Connection) -> Result<(), DbError> {
    let has_detail = conn
        .prepare("SELECT 1 FROM pragma_table_info('delivery_attempts') WHERE name = 'detail'")?
        .exists([])?;
    if !has_detail {
        conn.execute_batch("ALTER TABLE delivery_attempts ADD COLUMN detail TEXT")?;
    }
    migrate_keys(conn)
}

/// Whether the keys' table is the earlier one, keyed by `key` (`WITHOUT ROWID`).
fn keys_keyed_by_key(conn: &Connection) -> Result<bool, DbError> {
    let sql: Option<String> = conn
        .query_row(
            "SELECT sql FROM sqlite_schema WHERE type = 'table' AND name = 'idempotency'",
            [],
            |r| r.get(0),
        )
        .optional()?;
    Ok(sql.is_some_and(|sql| sql.to_ascii_uppercase().contains("WITHOUT ROWID")))
}

/// Moves every key of the earlier table into the current one, in one transaction (another
/// process opening the folder at the same time finds it done).
fn migrate_keys(conn: &Connection) -> Result<(), DbError> {
    if !keys_keyed_by_key(conn)? {
        return Ok(());
    }
    conn.execute_batch("BEGIN IMMEDIATE")?;
    let moved = keys_keyed_by_key(conn).and_then(|old| {
        if old {
            conn.execute_batch(&format!(
                "ALTER TABLE idempotency RENAME TO idempotency_by_key;
                 DROP INDEX IF EXISTS idempotency_expiry;
                 {IDEMPOTENCY_SCHEMA}
                 INSERT INTO idempotency(key, state, token, event_id, lease_until_ms, expires_at, result)
                     SELECT key, state, token, event_id, lease_until_ms, expires_at, result
                     FROM idempotency_by_key ORDER BY expires_at;
                 DROP TABLE idempotency_by_key;"
            ))?;
        }
        Ok(())
    });
    match moved {
        Ok(()) => Ok(conn.execute_batch("COMMIT")?),
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            Err(e)
        }
    }
}

impl Db {
    /// Opens (creating if needed) the database at `path` and starts its writer thread.
    pub fn open(path: &Path) -> Result<Db, DbError> {
        Db::open_with(path, HandOff::default())
    }

    fn open_with(path: &Path, hand_off: HandOff) -> Result<Db, DbError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| DbError::Sqlite(e.to_string()))?;
        }
        let conn = open_connection(path)?;
        conn.execute_batch(SCHEMA)?;
        conn.execute_batch(IDEMPOTENCY_SCHEMA)?;
        migrate(&conn)?;
        let (tx, rx) = mpsc::channel::<Job>();
        let counters = PendingCounters::default();
        let pending = counters.clone();
        let at = path.to_owned();
        thread::Builder::new()
            .name("bluehook-sqlite-writer".into())
            .spawn(move || writer_loop(conn, at, rx, pending, hand_off))
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

    /// Runs `f` in a coming group transaction; answers once that transaction has committed.
    /// For everything but a webhook's acknowledgement (see [`Db::write_ack`]).
    pub async fn write<T, F>(&self, f: F) -> Result<T, DbError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        self.write_in(Lane::Background, f).await
    }

    /// [`Db::write`] for the write a webhook's answer waits on: served before every
    /// downstream write that is waiting.
    pub async fn write_ack<T, F>(&self, f: F) -> Result<T, DbError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        self.write_in(Lane::Ack, f).await
    }

    async fn write_in<T, F>(&self, lane: Lane, f: F) -> Result<T, DbError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel::<Result<T, DbError>>();
        let run: Run = Box::new(move |conn| {
            let result = in_savepoint(conn, f);
            Some(Box::new(move |committed: Result<(), DbError>| {
                let _ = tx.send(committed.and(result));
            }))
        });
        let job = Job {
            lane,
            queued: Instant::now(),
            run,
        };
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

/// The jobs taken off the channel and not yet run, by lane.
#[derive(Default)]
struct Waiting {
    ack: VecDeque<Job>,
    background: VecDeque<Job>,
}

impl Waiting {
    fn push(&mut self, job: Job) {
        match job.lane {
            Lane::Ack => self.ack.push_back(job),
            Lane::Background => self.background.push_back(job),
        }
    }

    /// Takes every job already sent. False once every sender is gone and nothing is left.
    fn drain(&mut self, rx: &mpsc::Receiver<Job>) -> bool {
        loop {
            match rx.try_recv() {
                Ok(job) => self.push(job),
                Err(mpsc::TryRecvError::Empty) => return true,
                Err(mpsc::TryRecvError::Disconnected) => {
                    return !(self.ack.is_empty() && self.background.is_empty())
                }
            }
        }
    }

    fn is_empty(&self) -> bool {
        self.ack.is_empty() && self.background.is_empty()
    }
}

/// Commits the pending counter increments on their own; whether there were any.
fn flush_counters_alone(conn: &Connection, counters: &PendingCounters) -> bool {
    if counters.lock().unwrap().is_empty() {
        return false;
    }
    let flushed = conn
        .execute_batch("BEGIN IMMEDIATE")
        .and_then(|_| write_counters(conn, counters))
        .and_then(|_| conn.execute_batch("COMMIT"));
    if let Err(e) = flushed {
        tracing::warn!(error = %e, "counters not written");
        let _ = conn.execute_batch("ROLLBACK");
    }
    true
}

fn writer_loop(
    conn: Connection,
    path: PathBuf,
    rx: mpsc::Receiver<Job>,
    counters: PendingCounters,
    hand_off: HandOff,
) {
    let mut replies: Vec<Reply> = Vec::with_capacity(MAX_GROUP);
    let mut waiting = Waiting::default();
    let mut checkpoint = Checkpoints::new(&conn, &path, hand_off);
    loop {
        if !waiting.drain(&rx) {
            break;
        }
        if waiting.is_empty() {
            // Idle: block for the next job. With none for a while, counters still pending are
            // committed on their own.
            match rx.recv_timeout(COUNTERS_IDLE_FLUSH) {
                Ok(job) => waiting.push(job),
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if flush_counters_alone(&conn, &counters) {
                        checkpoint.written = true;
                    }
                    checkpoint.run(&conn);
                    continue;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
            waiting.drain(&rx);
        }
        if waiting.ack.is_empty() {
            if let Some(oldest) = waiting.background.front().map(|job| job.queued) {
                if let Some(left) = BACKGROUND_COALESCE.checked_sub(oldest.elapsed()) {
                    // Let downstream writes gather; an ack write ends the wait.
                    if let Ok(job) = rx.recv_timeout(left) {
                        waiting.push(job);
                    }
                    if waiting.ack.is_empty() && oldest.elapsed() < BACKGROUND_COALESCE {
                        continue;
                    }
                }
            }
        }
        let started = Instant::now();
        run_group(&conn, &rx, &mut waiting, &counters, &mut replies);
        checkpoint.committed(started.elapsed());
        waiting.drain(&rx);
        checkpoint.after_commit(&conn, waiting.ack.is_empty());
    }
}

/// The WAL's checkpoints: the writer's own, and the checkpointing thread's while the writer has
/// no time for them (SQLite's automatic ones are off on both connections).
struct Checkpoints {
    last: Instant,
    written: bool,
    /// Wakes the checkpointing thread; none when it could not start (the writer then does
    /// every checkpoint itself).
    wake: Option<mpsc::SyncSender<()>>,
    /// Whether the thread checkpoints (see [`HAND_OFF_ABOVE`]).
    handed_off: bool,
    /// Load windows in a row busy past [`HAND_OFF_ABOVE`].
    hot: u32,
    hand_off: HandOff,
    /// The current load window: when it began and the time spent in transactions since.
    window: Instant,
    busy: Duration,
}

impl Checkpoints {
    fn new(conn: &Connection, path: &Path, hand_off: HandOff) -> Checkpoints {
        if let Err(e) = conn.pragma_update(None, "wal_autocheckpoint", 0) {
            tracing::warn!(error = %e, "automatic checkpoints left on");
        }
        let wake = open_connection(path)
            .and_then(|conn| {
                conn.pragma_update(None, "wal_autocheckpoint", 0)?;
                let (wake, woken) = mpsc::sync_channel::<()>(1);
                thread::Builder::new()
                    .name("bluehook-checkpoint".into())
                    .spawn(move || checkpointer(conn, woken))
                    .map_err(|e| DbError::Sqlite(e.to_string()))?;
                Ok(wake)
            })
            .inspect_err(|e| tracing::warn!(error = %e, "the writer checkpoints alone"))
            .ok();
        Checkpoints {
            last: Instant::now(),
            written: false,
            wake,
            handed_off: false,
            hot: 0,
            hand_off,
            window: Instant::now(),
            busy: Duration::ZERO,
        }
    }

    /// After each transaction, with the time it took: wakes the checkpointing thread while it
    /// has the checkpoints.
    fn committed(&mut self, took: Duration) {
        self.written = true;
        self.busy += took;
        let window = self.window.elapsed();
        if window >= LOAD_WINDOW {
            let busy = self.busy.as_secs_f64() / window.as_secs_f64();
            self.hot = if busy >= self.hand_off.above {
                self.hot + 1
            } else {
                0
            };
            self.handed_off = self.wake.is_some()
                && if self.handed_off {
                    busy >= self.hand_off.below
                } else {
                    self.hot >= self.hand_off.windows
                };
            tracing::trace!(busy, handed_off = self.handed_off, "load");
            self.window = Instant::now();
            self.busy = Duration::ZERO;
        }
    }

    /// After each transaction: the writer's own checkpoint when one is due; otherwise, while
    /// the thread has the checkpoints, a wake-up for it. Not waking it while the writer's is due
    /// lets the thread's current one end, so the writer's next try finds the WAL free.
    fn after_commit(&mut self, conn: &Connection, no_ack_waiting: bool) {
        if self.due(no_ack_waiting) {
            self.run(conn);
        } else if let Some(wake) = self.wake.as_ref().filter(|_| self.handed_off) {
            // Full: the thread is already due to run.
            let _ = wake.try_send(());
        }
    }

    fn due(&self, no_ack_waiting: bool) -> bool {
        let (every, at_latest) = match self.handed_off {
            true => (CATCH_UP_EVERY, CATCH_UP_AT_LATEST),
            false => (CHECKPOINT_EVERY, CHECKPOINT_AT_LATEST),
        };
        let since = self.last.elapsed();
        self.written && ((no_ack_waiting && since >= every) || since >= at_latest)
    }

    fn run(&mut self, conn: &Connection) {
        if !self.written {
            return;
        }
        let started = Instant::now();
        let ran = checkpoint(conn, "writer");
        self.busy += started.elapsed();
        if ran == Ran::Blocked {
            // The thread's checkpoint is running: the writer tries again after its next
            // transaction (a try costs one lock attempt) rather than a whole period later.
            return;
        }
        self.last = Instant::now();
        self.written = false;
    }
}

/// The checkpointing thread: a checkpoint when woken, at most every
/// [`THREAD_CHECKPOINT_EVERY`]; ends with the writer.
fn checkpointer(conn: Connection, woken: mpsc::Receiver<()>) {
    while woken.recv().is_ok() {
        let started = Instant::now();
        checkpoint(&conn, "thread");
        #[cfg(test)]
        tests::THREAD_CHECKPOINTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if let Some(left) = THREAD_CHECKPOINT_EVERY.checked_sub(started.elapsed()) {
            thread::sleep(left);
        }
    }
}

/// What became of a checkpoint.
#[derive(Debug, PartialEq, Eq)]
enum Ran {
    /// It copied what it could (all of the WAL unless a reader still needed part of it).
    Copied,
    /// Another connection's checkpoint was running: nothing was copied.
    Blocked,
    Failed,
}

/// Copies what it can of the WAL into the database file without waiting for anyone (another
/// checkpoint running: nothing).
fn checkpoint(conn: &Connection, by: &'static str) -> Ran {
    let started = Instant::now();
    match conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, i64>(1)?,
            r.get::<_, i64>(2)?,
        ))
    }) {
        Ok((busy, log, done)) => {
            tracing::trace!(
                by,
                busy,
                log,
                done,
                micros = started.elapsed().as_micros() as u64,
                "checkpoint"
            );
            match busy {
                0 => Ran::Copied,
                _ => Ran::Blocked,
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, by, "checkpoint failed");
            Ran::Failed
        }
    }
}

/// One transaction: every waiting ack write, then downstream writes for at most
/// [`BACKGROUND_SLICE`] (none while acks are waiting, unless the oldest downstream write has
/// waited [`BACKGROUND_MAX_WAIT`]); an ack write arriving meanwhile joins and closes the group.
fn run_group(
    conn: &Connection,
    rx: &mpsc::Receiver<Job>,
    waiting: &mut Waiting,
    counters: &PendingCounters,
    replies: &mut Vec<Reply>,
) {
    if let Err(e) = run_cached(conn, "BEGIN IMMEDIATE") {
        tracing::error!(error = %e, "cannot begin a transaction");
        // The jobs cannot run: their callers get the error by dropping them unanswered.
        waiting.ack.clear();
        waiting.background.clear();
        return;
    }
    let started = Instant::now();
    let mut taken = 0;
    let had_acks = !waiting.ack.is_empty();
    while let Some(job) = waiting.ack.pop_front() {
        replies.extend((job.run)(conn));
        taken += 1;
        if taken >= MAX_GROUP {
            break;
        }
        if waiting.ack.is_empty() {
            waiting.drain(rx);
        }
    }
    let background_due = waiting
        .background
        .front()
        .is_some_and(|job| job.queued.elapsed() >= BACKGROUND_MAX_WAIT);
    if !had_acks || background_due {
        let slice_start = Instant::now();
        while taken < MAX_GROUP && slice_start.elapsed() < BACKGROUND_SLICE {
            let Some(job) = waiting.background.pop_front() else {
                break;
            };
            replies.extend((job.run)(conn));
            taken += 1;
            waiting.drain(rx);
            if !waiting.ack.is_empty() {
                // An ack arrived: it joins this transaction, which then commits.
                while taken < MAX_GROUP {
                    let Some(job) = waiting.ack.pop_front() else {
                        break;
                    };
                    replies.extend((job.run)(conn));
                    taken += 1;
                }
                break;
            }
            if waiting.background.is_empty() {
                waiting.drain(rx);
            }
        }
    }
    if let Err(e) = write_counters(conn, counters) {
        tracing::warn!(error = %e, "counters not written");
    }
    let committed = run_cached(conn, "COMMIT")
        .map_err(DbError::from)
        .inspect_err(|e| {
            tracing::error!(error = %e, "commit failed");
            let _ = conn.execute_batch("ROLLBACK");
        });
    tracing::trace!(
        jobs = taken,
        micros = started.elapsed().as_micros() as u64,
        "committed"
    );
    for reply in replies.drain(..) {
        reply(committed.clone());
    }
}

/// Runs one parameterless statement from the connection's cache of prepared statements.
fn run_cached(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(|_| ())
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Checkpoints made by checkpointing threads in this process.
    pub(super) static THREAD_CHECKPOINTS: std::sync::atomic::AtomicU64 =
        std::sync::atomic::AtomicU64::new(0);

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn with_the_checkpoints_on_their_thread_the_wal_still_starts_over() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        // The thread takes the checkpoints over after the first load window, whatever the load.
        let always = HandOff {
            above: 0.0,
            below: 0.0,
            windows: 1,
        };
        let db = Db::open_with(&path, always).unwrap();
        let before = THREAD_CHECKPOINTS.load(std::sync::atomic::Ordering::Relaxed);
        // 64 writers without a pause for six seconds: the writer never waits for work.
        let until = Instant::now() + Duration::from_secs(6);
        let mut writers = Vec::new();
        for w in 0..64 {
            let db = db.clone();
            writers.push(tokio::spawn(async move {
                let mut n = 0u64;
                while Instant::now() < until {
                    n += 1;
                    let key = format!("{w}-{n}");
                    db.write_ack(move |c| {
                        c.execute(
                            "INSERT INTO outbox(sink, key, payload, created_at_ms) VALUES ('t', ?1, ?2, 0)",
                            rusqlite::params![key, "z".repeat(2000)],
                        )
                    })
                    .await
                    .unwrap();
                }
                n
            }));
        }
        // The WAL header's checkpoint sequence number counts the times the WAL started over.
        let wal = dir.path().join("t.db-wal");
        let restarts = || {
            use std::io::Read;
            let mut header = [0u8; 16];
            std::fs::File::open(&wal)
                .and_then(|mut f| f.read_exact(&mut header))
                .unwrap();
            u32::from_be_bytes(header[12..16].try_into().unwrap())
        };
        tokio::time::sleep(Duration::from_secs(2)).await;
        let at_two = restarts();
        let mut n = 0;
        for writer in writers {
            n += writer.await.unwrap();
        }
        assert!(
            THREAD_CHECKPOINTS.load(std::sync::atomic::Ordering::Relaxed) > before,
            "the thread made no checkpoint"
        );
        // Without the writer's catch-ups the WAL stops starting over once the thread has the
        // checkpoints (its own are always behind the newest commit) and grows for as long as
        // the load lasts; with them it starts over at least once a second. At least twice in
        // the last four seconds leaves a margin for a slow machine.
        let later = restarts() - at_two;
        assert!(
            later >= 2,
            "the WAL started over {later} times in the last 4 s ({} bytes, {n} rows)",
            std::fs::metadata(&wal).unwrap().len()
        );
        let count: i64 = db
            .read(|c| c.query_row("SELECT count(*) FROM outbox", [], |r| r.get(0)))
            .await
            .unwrap();
        assert_eq!(count as u64, n);
    }

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

    /// A data folder from before keeps every key, in the current table.
    #[tokio::test]
    async fn keys_of_an_earlier_data_folder_move_to_the_current_table() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        {
            let c = open_connection(&path).unwrap();
            c.execute_batch(
                "CREATE TABLE idempotency (
                    key TEXT PRIMARY KEY, state TEXT NOT NULL, token TEXT NOT NULL,
                    event_id TEXT, lease_until_ms INTEGER NOT NULL,
                    expires_at INTEGER NOT NULL, result TEXT
                 ) WITHOUT ROWID;
                 CREATE INDEX idempotency_expiry ON idempotency(expires_at);
                 INSERT INTO idempotency VALUES
                    ('sendblue:msg:a:SENT', 'completed', 't1', 'evt_a', 0, 4000000000, NULL),
                    ('effect:crm:b', 'in_progress', 't2', 'evt_b', 5, 4000000001, 'r');",
            )
            .unwrap();
        }
        let db = Db::open(&path).unwrap();
        let (sql, rows, uses_expiry) = db
            .read(|c| {
                let sql: String = c.query_row(
                    "SELECT sql FROM sqlite_schema WHERE name = 'idempotency'",
                    [],
                    |r| r.get(0),
                )?;
                let rows: Vec<(String, String, String, Option<String>)> = c
                    .prepare("SELECT key, state, event_id, result FROM idempotency ORDER BY key")?
                    .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
                    .collect::<Result<_, _>>()?;
                let plan: String = c.query_row(
                    "EXPLAIN QUERY PLAN SELECT key FROM idempotency WHERE expires_at <= 5",
                    [],
                    |r| r.get(3),
                )?;
                Ok((sql, rows, plan.contains("idempotency_expiry")))
            })
            .await
            .unwrap();
        assert!(!sql.contains("WITHOUT ROWID"), "{sql}");
        assert_eq!(
            rows,
            vec![
                (
                    "effect:crm:b".into(),
                    "in_progress".into(),
                    "evt_b".into(),
                    Some("r".into())
                ),
                (
                    "sendblue:msg:a:SENT".into(),
                    "completed".into(),
                    "evt_a".into(),
                    None
                ),
            ]
        );
        assert!(uses_expiry, "the expiry index is there");
        // The key is still unique: a second insert of it is refused.
        let again = db
            .write(|c| {
                c.execute(
                    "INSERT INTO idempotency(key, state, token, lease_until_ms, expires_at)
                     VALUES ('sendblue:msg:a:SENT', 'in_progress', 't3', 0, 1)",
                    [],
                )
            })
            .await;
        assert!(again.is_err(), "{again:?}");
        drop(db);
        // Opening it again changes nothing.
        let db = Db::open(&path).unwrap();
        let n: i64 = db
            .read(|c| c.query_row("SELECT count(*) FROM idempotency", [], |r| r.get(0)))
            .await
            .unwrap();
        assert_eq!(n, 2);
    }

    /// An ack write does not wait for the downstream writes queued before it.
    #[tokio::test]
    async fn ack_writes_go_before_waiting_background_writes() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("t.db")).unwrap();
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut handles = Vec::new();
        for i in 0..100 {
            let (db, order) = (db.clone(), order.clone());
            handles.push(tokio::spawn(async move {
                db.write(move |_| {
                    // A slow downstream write: 100 of them take half a second.
                    std::thread::sleep(Duration::from_millis(5));
                    Ok(())
                })
                .await
                .unwrap();
                order.lock().unwrap().push(format!("background {i}"));
            }));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        db.write_ack(|c| c.execute("INSERT INTO counters(name, value) VALUES ('ack', 1)", []))
            .await
            .unwrap();
        order.lock().unwrap().push("ack".into());
        for h in handles {
            h.await.unwrap();
        }
        let order = order.lock().unwrap();
        let ack_at = order.iter().position(|o| o == "ack").unwrap();
        assert!(
            ack_at < 20,
            "the ack committed after {ack_at} of the 100 downstream writes queued before it"
        );
        assert_eq!(order.len(), 101, "every write committed");
    }
}
