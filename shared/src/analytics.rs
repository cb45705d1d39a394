//! The analytics sink: each event becomes one NDJSON row (the event JSON), archived per batch
//! under `events/dt=YYYY-MM-DD/hour=HH/` (S3 on AWS, `<data-dir>/analytics/` locally), readable
//! by Athena; and on Lambda, CloudWatch Embedded Metric Format lines with counts by kind,
//! status and service.
//!
//! An object's name is derived from the ids of the events it holds, so a redelivered batch
//! rewrites the same object instead of adding rows; rows carry the event id, so a copy that
//! lands in another batch is dropped by id when read (as `bluehook stats` does).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use sha2::{Digest, Sha256};

use crate::event::{Direction, Event, EventKind, MessageStatus};
use crate::metrics::Metrics;
use crate::objects::ObjectStore;
use crate::processing::{Processor, Record};
use crate::router::Router;

pub const PREFIX: &str = "events/";

pub struct Analytics {
    store: Arc<dyn ObjectStore>,
    metrics: Arc<dyn Metrics>,
    /// Print CloudWatch EMF lines (on Lambda).
    emf: bool,
    /// The media archive, when on: rows of events with attachments carry `media_archive`.
    media: Option<crate::sinks::media::ArchiveRoot>,
}

/// `events/dt=YYYY-MM-DD/hour=HH/` of an event (by the time it was received).
pub fn partition(e: &Event) -> String {
    format!(
        "{PREFIX}dt={}/hour={}/",
        e.received_at.format("%Y-%m-%d"),
        e.received_at.format("%H")
    )
}

impl Analytics {
    pub fn new(store: Arc<dyn ObjectStore>, metrics: Arc<dyn Metrics>, emf: bool) -> Analytics {
        Analytics {
            store,
            metrics,
            emf,
            media: None,
        }
    }

    /// Rows of events with attachments carry `media_archive`: `[{n, url, content_type, key,
    /// location}]`, where the media sink archives each (see `sinks::media`).
    pub fn with_media_archive(mut self, root: Option<crate::sinks::media::ArchiveRoot>) -> Self {
        self.media = root;
        self
    }
}

/// One EMF document per (kind, status, service) with the count of events.
pub fn emf_lines(events: &[&Event], now_ms: i64) -> Vec<String> {
    let mut counts: BTreeMap<(String, String, String), u64> = BTreeMap::new();
    for e in events {
        let key = (
            e.kind.as_str().to_owned(),
            e.status.map_or("none", MessageStatus::as_str).to_owned(),
            e.service.map_or_else(
                || "none".to_owned(),
                |s| {
                    serde_json::to_value(s)
                        .unwrap()
                        .as_str()
                        .unwrap_or("none")
                        .to_owned()
                },
            ),
        );
        *counts.entry(key).or_default() += 1;
    }
    counts
        .into_iter()
        .map(|((kind, status, service), n)| {
            serde_json::json!({
                "_aws": {
                    "Timestamp": now_ms,
                    "CloudWatchMetrics": [{
                        "Namespace": "bluehook",
                        "Dimensions": [["kind"], ["kind", "status"], ["kind", "status", "service"]],
                        "Metrics": [{"Name": "Events", "Unit": "Count"}]
                    }]
                },
                "kind": kind, "status": status, "service": service, "Events": n
            })
            .to_string()
        })
        .collect()
}

#[async_trait]
impl Processor for Analytics {
    fn name(&self) -> &'static str {
        "analytics"
    }

    async fn process(&self, batch: Vec<Record>) -> Vec<String> {
        let (events, mut failed) = Router::parse_batch(&batch);
        let mut partitions: BTreeMap<String, BTreeMap<String, (&Record, &Event)>> = BTreeMap::new();
        for (record, event) in &events {
            partitions
                .entry(partition(event))
                .or_default()
                .insert(event.id.clone(), (*record, event));
        }
        let writes = partitions.iter().map(|(prefix, rows)| async move {
            let mut body = Vec::with_capacity(rows.len() * 1024);
            let mut hasher = Sha256::new();
            for (id, (_, event)) in rows {
                hasher.update(id.as_bytes());
                match (&self.media, &event.media_url) {
                    (Some(root), Some(_)) => {
                        let mut row = serde_json::to_value(event).expect("events serialise");
                        row["media_archive"] = crate::sinks::media::locations(event, root).into();
                        serde_json::to_writer(&mut body, &row).expect("rows serialise");
                    }
                    _ => serde_json::to_writer(&mut body, event).expect("events serialise"),
                }
                body.push(b'\n');
            }
            let key = format!("{prefix}{}.ndjson", &hex::encode(hasher.finalize())[..32]);
            let result = self.store.put(&key, body, "application/x-ndjson").await;
            (rows, key, result)
        });
        for (rows, key, result) in futures_util::future::join_all(writes).await {
            match result {
                Ok(()) => self.metrics.incr("analytics.rows", rows.len() as u64),
                Err(e) => {
                    tracing::error!(%key, error = %e, "archive write failed; batch retried");
                    failed.extend(rows.values().map(|(r, _)| r.id.clone()));
                }
            }
        }
        if self.emf {
            let written: Vec<&Event> = events
                .iter()
                .filter(|(r, _)| !failed.contains(&r.id))
                .map(|(_, e)| e)
                .collect();
            for line in emf_lines(&written, chrono::Utc::now().timestamp_millis()) {
                println!("{line}");
            }
        }
        failed.sort_unstable();
        failed.dedup();
        failed
    }
}

/// Rates and response time computed from an archive folder (`<data-dir>/analytics`).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Summary {
    /// Distinct events in the archive (copies dropped by id).
    pub events: u64,
    /// Outbound messages known sent (any of sent, delivered, read).
    pub messages_sent: u64,
    pub messages_delivered: u64,
    pub messages_read: u64,
    /// delivered / sent, `null` before anything was sent.
    pub delivery_rate: Option<f64>,
    /// read / delivered.
    pub read_rate: Option<f64>,
    /// Median time from an outbound message to the contact's next inbound message, seconds.
    pub median_response_secs: Option<f64>,
    /// Median time from sent to delivered, and from delivered to read, seconds.
    pub median_delivery_secs: Option<f64>,
    pub median_read_secs: Option<f64>,
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    v.sort_by(|a, b| a.total_cmp(b));
    match v.len() {
        0 => None,
        n if n % 2 == 1 => Some(v[n / 2]),
        n => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
    }
}

fn ndjson_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            ndjson_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "ndjson") {
            out.push(path);
        }
    }
}

/// Reads every row under `root`, dropping copies by event id.
pub fn read_archive(root: &Path) -> Vec<Event> {
    let mut files = Vec::new();
    ndjson_files(root, &mut files);
    files.sort();
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for f in files {
        let Ok(text) = std::fs::read_to_string(&f) else {
            continue;
        };
        for line in text.lines() {
            if let Ok(e) = Event::from_json(line) {
                if seen.insert(e.id.clone()) {
                    out.push(e);
                }
            }
        }
    }
    out
}

/// (line, contact) of a conversation.
type Conversation<'a> = (Option<&'a str>, Option<&'a str>);
type Time = chrono::DateTime<chrono::Utc>;

pub fn summarise(events: &[Event]) -> Summary {
    let mut sent = HashSet::new();
    let mut delivered = HashSet::new();
    let mut read = HashSet::new();
    // First time each message was reported at each status.
    let mut status_at: HashMap<(&str, MessageStatus), Time> = HashMap::new();
    // Per conversation: when each outbound message was first seen, and the inbound times.
    let mut outbound: HashMap<Conversation<'_>, HashMap<&str, Time>> = HashMap::new();
    let mut inbound: HashMap<Conversation<'_>, Vec<Time>> = HashMap::new();
    for e in events {
        let at = e.occurred_at.unwrap_or(e.received_at);
        let conv = (e.line_number.as_deref(), e.contact_number.as_deref());
        match (e.kind, e.direction, e.message_handle.as_deref()) {
            (EventKind::MessageStatus, Some(Direction::Outbound), Some(h)) => {
                if let Some(st) = e.status {
                    let t = status_at.entry((h, st)).or_insert(at);
                    *t = (*t).min(at);
                }
                match e.status {
                    Some(MessageStatus::Sent) => {
                        sent.insert(h);
                    }
                    Some(MessageStatus::Delivered) => {
                        sent.insert(h);
                        delivered.insert(h);
                    }
                    Some(MessageStatus::Read) => {
                        sent.insert(h);
                        delivered.insert(h);
                        read.insert(h);
                    }
                    _ => {}
                }
                let first = outbound.entry(conv).or_default().entry(h).or_insert(at);
                *first = (*first).min(at);
            }
            (EventKind::MessageReceived, _, _) => inbound.entry(conv).or_default().push(at),
            _ => {}
        }
    }
    let mut responses: Vec<f64> = Vec::new();
    for (conv, sends) in &outbound {
        let Some(replies) = inbound.get(conv) else {
            continue;
        };
        let mut sends: Vec<_> = sends.values().copied().collect();
        sends.sort();
        let mut replies = replies.clone();
        replies.sort();
        // Each outbound message answered by the first inbound after it, before the next send.
        for (i, s) in sends.iter().enumerate() {
            let next_send = sends.get(i + 1);
            if let Some(r) = replies
                .iter()
                .find(|r| *r > s && next_send.is_none_or(|n| *r <= n))
            {
                responses.push((*r - *s).num_milliseconds() as f64 / 1000.0);
            }
        }
    }
    let gaps = |from: MessageStatus, to: MessageStatus| -> Vec<f64> {
        status_at
            .iter()
            .filter(|((_, st), _)| *st == to)
            .filter_map(|((h, _), t)| {
                status_at
                    .get(&(*h, from))
                    .map(|f| (*t - *f).num_milliseconds() as f64 / 1000.0)
            })
            .filter(|s| *s >= 0.0)
            .collect()
    };
    let median_delivery_secs = median(gaps(MessageStatus::Sent, MessageStatus::Delivered));
    let median_read_secs = median(gaps(MessageStatus::Delivered, MessageStatus::Read));
    let ratio = |a: usize, b: usize| (b > 0).then(|| a as f64 / b as f64);
    Summary {
        events: events.len() as u64,
        messages_sent: sent.len() as u64,
        messages_delivered: delivered.len() as u64,
        messages_read: read.len() as u64,
        delivery_rate: ratio(delivered.len(), sent.len()),
        read_rate: ratio(read.len(), delivered.len()),
        median_response_secs: median(responses),
        median_delivery_secs,
        median_read_secs,
    }
}

/// One interval of [`rate_series`].
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RatePoint {
    /// When the interval starts (RFC 3339).
    pub start: String,
    /// Outbound messages reported sent, delivered and read in the interval (each message once
    /// per status).
    pub sent: u64,
    pub delivered: u64,
    pub read: u64,
    /// delivered / sent and read / delivered within the interval, `null` without a base.
    pub delivery_rate: Option<f64>,
    pub read_rate: Option<f64>,
}

/// The delivery and read rates over `buckets` equal intervals from the archive's first outbound
/// status to its last (the inspector's sparklines).
pub fn rate_series(events: &[Event], buckets: usize) -> Vec<RatePoint> {
    let statuses: Vec<(Time, &str, MessageStatus)> = events
        .iter()
        .filter(|e| e.kind == EventKind::MessageStatus && e.direction == Some(Direction::Outbound))
        .filter_map(|e| {
            Some((
                e.occurred_at.unwrap_or(e.received_at),
                e.message_handle.as_deref()?,
                e.status?,
            ))
        })
        .collect();
    let (Some(first), Some(last)) = (
        statuses.iter().map(|s| s.0).min(),
        statuses.iter().map(|s| s.0).max(),
    ) else {
        return Vec::new();
    };
    let buckets = buckets.max(1);
    let span_ms = (last - first).num_milliseconds().max(1) + 1;
    let width_ms = (span_ms + buckets as i64 - 1) / buckets as i64;
    let mut sets: Vec<[HashSet<&str>; 3]> = (0..buckets).map(|_| Default::default()).collect();
    for (at, handle, status) in statuses {
        let i = (((at - first).num_milliseconds() / width_ms) as usize).min(buckets - 1);
        let reached = match status {
            MessageStatus::Sent => 1,
            MessageStatus::Delivered => 2,
            MessageStatus::Read => 3,
            _ => 0,
        };
        for set in sets[i].iter_mut().take(reached) {
            set.insert(handle);
        }
    }
    let ratio = |a: usize, b: usize| (b > 0).then(|| a as f64 / b as f64);
    sets.iter()
        .enumerate()
        .map(|(i, [sent, delivered, read])| RatePoint {
            start: (first + chrono::Duration::milliseconds(width_ms * i as i64))
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            sent: sent.len() as u64,
            delivered: delivered.len() as u64,
            read: read.len() as u64,
            delivery_rate: ratio(delivered.len(), sent.len()),
            read_rate: ratio(read.len(), delivered.len()),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::MemoryMetrics;
    use crate::objects::LocalDir;
    use chrono::{TimeZone, Utc};

    fn ev(
        key: &str,
        kind: EventKind,
        status: MessageStatus,
        dir: Direction,
        handle: &str,
        secs: i64,
    ) -> Event {
        let t = Utc.timestamp_opt(1_700_000_000 + secs, 0).unwrap();
        let mut e = Event::new("sb", "sendblue", kind, key.into(), t, "{}".into());
        e.status = Some(status);
        e.direction = Some(dir);
        e.message_handle = Some(handle.into());
        e.line_number = Some("+1000".into());
        e.contact_number = Some("+2000".into());
        e.occurred_at = Some(t);
        e
    }

    #[test]
    fn rate_series_buckets_each_message_by_the_statuses_it_reached() {
        use EventKind::MessageStatus as St;
        use MessageStatus::*;
        let out = Direction::Outbound;
        let events = vec![
            ev("a1", St, Sent, out, "a", 0),
            ev("a2", St, Delivered, out, "a", 1),
            ev("b1", St, Delivered, out, "b", 2),
            ev("b2", St, Read, out, "b", 3),
            ev("c1", St, Sent, out, "c", 10),
            ev("c2", St, Failed, out, "c", 11),
        ];
        let s = rate_series(&events, 2);
        assert_eq!(s.len(), 2);
        assert_eq!((s[0].sent, s[0].delivered, s[0].read), (2, 2, 1));
        assert_eq!(s[0].delivery_rate, Some(1.0));
        assert_eq!(s[0].read_rate, Some(0.5));
        assert_eq!((s[1].sent, s[1].delivered, s[1].read), (1, 0, 0));
        assert_eq!(s[1].delivery_rate, Some(0.0));
        assert_eq!(s[1].read_rate, None);
        assert!(rate_series(&[], 24).is_empty());
    }

    #[tokio::test]
    async fn batches_are_archived_by_partition_and_a_redelivery_rewrites_the_same_object() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(LocalDir::new(dir.path()));
        let a = Analytics::new(store, Arc::new(MemoryMetrics::default()), false);
        let batch: Vec<Record> = (0..5)
            .map(|i| {
                let e = ev(
                    &format!("k{i}"),
                    EventKind::MessageStatus,
                    MessageStatus::Sent,
                    Direction::Outbound,
                    &format!("h{i}"),
                    i * 1800,
                );
                Record {
                    id: format!("m{i}"),
                    body: e.to_json(),
                    receive_count: 1,
                }
            })
            .chain(std::iter::once(Record {
                id: "bad".into(),
                body: "nope".into(),
                receive_count: 1,
            }))
            .collect();
        assert_eq!(a.process(batch.clone()).await, vec!["bad".to_owned()]);
        assert_eq!(
            a.process(batch).await,
            vec!["bad".to_owned()],
            "redelivered"
        );
        let mut files = Vec::new();
        ndjson_files(dir.path(), &mut files);
        // 22:13, 22:43, 23:13, 23:43 and 00:13 UTC: three hours, one object each.
        assert_eq!(files.len(), 3, "{files:?}");
        let names: Vec<String> = files
            .iter()
            .map(|f| {
                f.strip_prefix(dir.path())
                    .unwrap()
                    .parent()
                    .unwrap()
                    .display()
                    .to_string()
            })
            .collect();
        for p in [
            "events/dt=2023-11-14/hour=22",
            "events/dt=2023-11-14/hour=23",
            "events/dt=2023-11-15/hour=00",
        ] {
            assert!(names.iter().any(|n| n == p), "{p} in {names:?}");
        }
        let rows: usize = files
            .iter()
            .map(|f| std::fs::read_to_string(f).unwrap().lines().count())
            .sum();
        assert_eq!(rows, 5, "no row twice");
        assert_eq!(read_archive(dir.path()).len(), 5);
    }

    #[tokio::test]
    async fn a_pack_is_archived_row_by_row_like_the_events_one_by_one() {
        let events: Vec<Event> = (0..4)
            .map(|i| {
                ev(
                    &format!("k{i}"),
                    EventKind::MessageStatus,
                    MessageStatus::Sent,
                    Direction::Outbound,
                    &format!("h{i}"),
                    i,
                )
            })
            .collect();
        let bodies: Vec<String> = events.iter().map(Event::to_json).collect();
        let packs = crate::queue::pack(bodies.iter().map(String::as_str), 1 << 20, 32);
        assert_eq!(packs.len(), 1);
        let archived = |batch: Vec<Record>| async move {
            let dir = tempfile::tempdir().unwrap();
            let a = Analytics::new(
                Arc::new(LocalDir::new(dir.path())),
                Arc::new(MemoryMetrics::default()),
                false,
            );
            assert!(a.process(batch).await.is_empty());
            let mut rows = read_archive(dir.path());
            rows.sort_by(|a, b| a.id.cmp(&b.id));
            rows
        };
        let record = |i: usize, body: &str| Record {
            id: format!("m{i}"),
            body: body.to_owned(),
            receive_count: 1,
        };
        let packed = archived(vec![record(0, &packs[0])]).await;
        let one_by_one = archived(
            bodies
                .iter()
                .enumerate()
                .map(|(i, b)| record(i, b))
                .collect(),
        )
        .await;
        assert_eq!(packed.len(), 4);
        assert_eq!(packed, one_by_one);
    }

    #[test]
    fn rates_and_median_response_time() {
        use Direction::{Inbound, Outbound};
        use EventKind::{MessageReceived, MessageStatus as Status};
        type S = MessageStatus;
        let events = vec![
            ev("1", Status, S::Sent, Outbound, "a", 0),
            ev("2", Status, S::Delivered, Outbound, "a", 5),
            ev("3", Status, S::Read, Outbound, "a", 60),
            ev("4", Status, S::Sent, Outbound, "b", 1000),
            ev("5", Status, S::Delivered, Outbound, "b", 1001),
            ev("6", Status, S::Failed, Outbound, "c", 2000),
            ev("7", Status, S::Sent, Outbound, "d", 3000),
            ev("8", MessageReceived, S::Received, Inbound, "in1", 120),
            ev("9", MessageReceived, S::Received, Inbound, "in2", 1300),
        ];
        let s = summarise(&events);
        assert_eq!(
            (s.messages_sent, s.messages_delivered, s.messages_read),
            (3, 2, 1)
        );
        assert_eq!(s.delivery_rate, Some(2.0 / 3.0));
        assert_eq!(s.read_rate, Some(0.5));
        // a at 0 answered at 120; b at 1000 answered at 1300 (c at 2000, d at 3000 unanswered).
        assert_eq!(s.median_response_secs, Some(210.0));
        // a: 5 s, b: 1 s to delivery; a: 55 s from delivered to read.
        assert_eq!(s.median_delivery_secs, Some(3.0));
        assert_eq!(s.median_read_secs, Some(55.0));
        assert_eq!(summarise(&[]).delivery_rate, None);
    }

    #[test]
    fn emf_counts() {
        let e1 = ev(
            "1",
            EventKind::MessageStatus,
            MessageStatus::Sent,
            Direction::Outbound,
            "a",
            0,
        );
        let e2 = ev(
            "2",
            EventKind::MessageStatus,
            MessageStatus::Sent,
            Direction::Outbound,
            "b",
            0,
        );
        let lines = emf_lines(&[&e1, &e2], 1);
        assert_eq!(lines.len(), 1);
        let v: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
        assert_eq!(v["Events"], 2);
        assert_eq!(v["_aws"]["CloudWatchMetrics"][0]["Namespace"], "bluehook");
        assert_eq!(v["status"], "sent");
    }
}
