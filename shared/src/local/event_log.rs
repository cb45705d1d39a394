//! The local event log: `<data-dir>/events.ndjson`, one canonical event JSON per line, in the
//! order the worker took them off the events queue. Each batch is fsynced before its messages
//! are deleted from the queue, so an acked event is always either in the log or still queued.
//!
//! A crash between the fsync and the delete would log a batch twice on redelivery; the ids of
//! the log's tail are remembered at start so that redelivered events are recognised and not
//! written again.

use std::collections::{HashSet, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use std::sync::{Arc, Mutex};

use crate::event::Event;
use crate::processing::{Processor, Record};
use crate::router::Router;

pub const FILE_NAME: &str = "events.ndjson";
/// How much of the log's tail is read at start to recognise redelivered events.
const TAIL_BYTES: u64 = 8 * 1024 * 1024;
/// How many recent ids are remembered.
const RECENT_IDS: usize = 100_000;

pub struct EventLog {
    path: PathBuf,
    file: File,
    recent: HashSet<String>,
    order: VecDeque<String>,
}

impl EventLog {
    pub fn open(data_dir: &Path) -> io::Result<EventLog> {
        std::fs::create_dir_all(data_dir)?;
        let path = data_dir.join(FILE_NAME);
        let mut file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&path)?;
        let tail = read_tail(&mut file)?;
        let mut log = EventLog {
            path,
            file,
            recent: HashSet::new(),
            order: VecDeque::new(),
        };
        // A line cut short by a crash was never acknowledged to the queue: drop it; its event
        // comes back from the queue.
        if let Some(last_newline) = tail.bytes.iter().rposition(|&b| b == b'\n') {
            let keep = tail.start + last_newline as u64 + 1;
            if keep < tail.start + tail.bytes.len() as u64 {
                log.file.set_len(keep)?;
            }
        } else if tail.start == 0 && !tail.bytes.is_empty() {
            log.file.set_len(0)?;
        }
        for line in tail.bytes.split(|&b| b == b'\n') {
            if let Ok(ev) = serde_json::from_slice::<IdOnly>(line) {
                log.remember(ev.id);
            }
        }
        Ok(log)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn remember(&mut self, id: String) {
        if self.recent.insert(id.clone()) {
            self.order.push_back(id);
            if self.order.len() > RECENT_IDS {
                if let Some(old) = self.order.pop_front() {
                    self.recent.remove(&old);
                }
            }
        }
    }

    /// Appends the events not already in the log and syncs the file. Returns how many were
    /// written.
    pub fn append(&mut self, events: &[Event]) -> io::Result<usize> {
        let mut buf = Vec::with_capacity(events.len() * 1024);
        let mut fresh = Vec::new();
        for ev in events {
            if self.recent.contains(&ev.id) || fresh.contains(&ev.id) {
                continue;
            }
            serde_json::to_writer(&mut buf, ev).map_err(io::Error::other)?;
            buf.push(b'\n');
            fresh.push(ev.id.clone());
        }
        if !buf.is_empty() {
            self.file.write_all(&buf)?;
            self.file.sync_data()?;
        }
        let n = fresh.len();
        for id in fresh {
            self.remember(id);
        }
        Ok(n)
    }
}

#[derive(serde::Deserialize)]
struct IdOnly {
    id: String,
}

struct Tail {
    start: u64,
    bytes: Vec<u8>,
}

fn read_tail(file: &mut File) -> io::Result<Tail> {
    let len = file.seek(SeekFrom::End(0))?;
    let start = len.saturating_sub(TAIL_BYTES);
    file.seek(SeekFrom::Start(start))?;
    let mut bytes = Vec::with_capacity((len - start) as usize);
    file.read_to_end(&mut bytes)?;
    if start > 0 {
        // Skip the partial first line.
        match bytes.iter().position(|&b| b == b'\n') {
            Some(i) => {
                bytes.drain(..=i);
                return Ok(Tail {
                    start: start + i as u64 + 1,
                    bytes,
                });
            }
            None => bytes.clear(),
        }
    }
    Ok(Tail { start, bytes })
}

/// The local events-queue stage: every event is written to the event log (once), then routed.
/// A batch the log cannot take is retried whole; one the router cannot fully send is retried
/// for the records it names (the log recognises their events and does not write them again).
pub struct LoggingRouter {
    log: Arc<Mutex<EventLog>>,
    router: Router,
    /// Where routed events are indexed for `bluehook events`.
    index: Option<crate::sqlite::Db>,
    /// `[[followups]]`: read receipts set their timers as they are indexed.
    followups: Vec<crate::followups::Rule>,
}

impl LoggingRouter {
    pub fn new(log: EventLog, router: Router) -> LoggingRouter {
        LoggingRouter {
            log: Arc::new(Mutex::new(log)),
            router,
            index: None,
            followups: Vec::new(),
        }
    }

    /// Sets the follow-up timers of read receipts (with the index).
    pub fn with_followups(mut self, rules: Vec<crate::followups::Rule>) -> LoggingRouter {
        self.followups = rules;
        self
    }

    /// Also records each event and its routes in `db`'s `events_index`.
    pub fn with_index(mut self, db: crate::sqlite::Db) -> LoggingRouter {
        self.index = Some(db);
        self
    }
}

#[async_trait::async_trait]
impl Processor for LoggingRouter {
    fn name(&self) -> &'static str {
        "router"
    }

    async fn process(&self, batch: Vec<Record>) -> Vec<String> {
        let (events, _) = Router::parse_batch(&batch);
        if let Some(db) = &self.index {
            let routed = events
                .iter()
                .map(|(r, e)| crate::delivery::local::Indexed {
                    id: e.id.clone(),
                    source: e.source.clone(),
                    kind: e.kind.as_str(),
                    received_at_ms: e.received_at.timestamp_millis(),
                    routes: self.router.targets(e).join(","),
                    json: r.body.clone(),
                })
                .collect();
            let timers = events
                .iter()
                .flat_map(|(r, e)| crate::followups::timers_for(&self.followups, e, &r.body))
                .collect();
            if let Err(e) = crate::delivery::local::index_events(db, routed, timers).await {
                tracing::error!(error = %e, "cannot index events; they stay queued");
                return batch.into_iter().map(|r| r.id).collect();
            }
        }
        let events: Vec<Event> = events.into_iter().map(|(_, e)| e).collect();
        let log = self.log.clone();
        let written = tokio::task::spawn_blocking(move || {
            log.lock()
                .unwrap_or_else(|p| p.into_inner())
                .append(&events)
        })
        .await;
        match written {
            Ok(Ok(n)) => tracing::debug!(written = n, "events logged"),
            Ok(Err(e)) => {
                tracing::error!(error = %e, "cannot write the event log; events stay queued");
                return batch.into_iter().map(|r| r.id).collect();
            }
            Err(e) => {
                tracing::error!(error = %e, "event log writer failed");
                return batch.into_iter().map(|r| r.id).collect();
            }
        }
        self.router.process(batch).await
    }
}

/// Reads every event in the log at `path` (for tests and tools).
pub fn read_all(path: &Path) -> io::Result<Vec<Event>> {
    let text = std::fs::read_to_string(path)?;
    text.lines()
        .filter(|l| !l.is_empty())
        .map(|l| Event::from_json(l).map_err(io::Error::other))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::EventKind;

    fn ev(key: &str) -> Event {
        Event::new(
            "s",
            "p",
            EventKind::Unknown,
            key.into(),
            chrono::Utc::now(),
            "{}".into(),
        )
    }

    #[test]
    fn skips_events_already_logged_even_after_reopen_and_repairs_a_cut_line() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = EventLog::open(dir.path()).unwrap();
        assert_eq!(log.append(&[ev("a"), ev("b"), ev("a")]).unwrap(), 2);
        assert_eq!(log.append(&[ev("b")]).unwrap(), 0);
        drop(log);
        // A crash cut the last line short.
        let path = dir.path().join(FILE_NAME);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"schema_version\":1,\"id\":\"evt_").unwrap();
        drop(f);
        let mut log = EventLog::open(dir.path()).unwrap();
        assert_eq!(log.append(&[ev("a"), ev("c")]).unwrap(), 1);
        let all = read_all(&path).unwrap();
        let keys: Vec<_> = all.iter().map(|e| e.idempotency_key.as_str()).collect();
        assert_eq!(keys, ["a", "b", "c"]);
    }
}
