//! The inspector's record of every webhook request `bluehook dev` answered, accepted or not:
//! a bounded ring (the newest [`KEEP_REQUESTS`]) in the data folder's database, so a restart
//! keeps it. Headers that carry signatures or secrets are stored as `<redacted>`; bodies are
//! kept up to [`MAX_BODY`] bytes.

use rusqlite::{params, OptionalExtension};
use serde::Serialize;

use crate::sqlite::{Db, DbError};

/// How many requests the ring keeps.
pub const KEEP_REQUESTS: i64 = 10_000;
/// How much of a body is kept.
pub const MAX_BODY: usize = 256 * 1024;
/// What a redacted header value or query value is shown as.
pub const REDACTED: &str = "<redacted>";

/// One answered request, as stored.
#[derive(Debug, Clone)]
pub struct RequestRecord {
    pub at_ms: i64,
    pub method: String,
    /// Path and query (secret-looking query values redacted).
    pub path: String,
    pub source: Option<String>,
    pub status: u16,
    pub outcome: &'static str,
    pub code: Option<String>,
    pub reason: Option<String>,
    pub event_ids: Vec<String>,
    /// `(name, value)`, redacted.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub body_bytes: usize,
    pub duration_us: u64,
}

/// A request in the list (and on the live stream).
#[derive(Debug, Clone, Serialize)]
pub struct RequestSummary {
    pub seq: i64,
    pub at: String,
    pub method: String,
    pub path: String,
    pub source: Option<String>,
    pub status: u16,
    /// `accepted`, `duplicate`, `ping`, `refused` (4xx) or `unavailable` (5xx).
    pub outcome: String,
    /// The error code of a refusal (`unauthorized`, `too_large`, ...).
    pub code: Option<String>,
    /// Why: the authentication failure (`bad_signature`, ...) or the answer's message.
    pub reason: Option<String>,
    pub event_ids: Vec<String>,
    pub body_bytes: usize,
    pub duration_ms: f64,
}

/// A request with its headers and body.
#[derive(Debug, Clone, Serialize)]
pub struct RequestDetail {
    #[serde(flatten)]
    pub summary: RequestSummary,
    pub headers: Vec<(String, String)>,
    /// The body as text (invalid UTF-8 replaced), up to the kept size.
    pub body: String,
    /// Whether only the first part of the body was kept.
    pub body_truncated: bool,
}

/// What the list selects.
#[derive(Debug, Clone, Default)]
pub struct RequestFilter {
    pub source: Option<String>,
    /// An outcome, or `refused` for every 4xx and 5xx.
    pub outcome: Option<String>,
    /// Only requests whose event was routed to this sink or destination.
    pub destination: Option<String>,
    /// A message handle, phone number, event id or any text of the body.
    pub search: Option<String>,
    /// Only requests older than this one (paging).
    pub before: Option<i64>,
    pub limit: usize,
}

/// Whether a header or query parameter of this name carries a signature or a secret.
pub fn is_secret_name(name: &str, extra: &[String]) -> bool {
    let n = name.to_ascii_lowercase();
    const WORDS: [&str; 8] = [
        "signature",
        "secret",
        "token",
        "auth",
        "password",
        "cookie",
        "api-key",
        "apikey",
    ];
    WORDS.iter().any(|w| n.contains(w)) || extra.iter().any(|e| e.eq_ignore_ascii_case(&n))
}

/// `path?query` with the values of secret-looking query parameters redacted.
pub fn redact_query(path: &str, query: Option<&str>) -> String {
    let Some(q) = query else {
        return path.to_owned();
    };
    let parts: Vec<String> = q
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((k, _)) if is_secret_name(k, &[]) => format!("{k}={REDACTED}"),
            _ => pair.to_owned(),
        })
        .collect();
    format!("{path}?{}", parts.join("&"))
}

const SUMMARY_COLUMNS: &str =
    "seq, at_ms, method, path, source, status, outcome, code, reason, event_ids, body_bytes, duration_us";

fn summary_of(r: &rusqlite::Row<'_>) -> rusqlite::Result<RequestSummary> {
    let at = chrono::DateTime::from_timestamp_millis(r.get(1)?).unwrap_or_default();
    let ids: String = r.get(9)?;
    Ok(RequestSummary {
        seq: r.get(0)?,
        at: at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        method: r.get(2)?,
        path: r.get(3)?,
        source: r.get(4)?,
        status: r.get::<_, i64>(5)? as u16,
        outcome: r.get(6)?,
        code: r.get(7)?,
        reason: r.get(8)?,
        event_ids: ids
            .split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
        body_bytes: r.get::<_, i64>(10)? as usize,
        duration_ms: r.get::<_, i64>(11)? as f64 / 1000.0,
    })
}

/// Stores `records` (in one write) and drops what falls out of the ring; returns their
/// summaries (with their `seq`).
pub async fn record(db: &Db, records: Vec<RequestRecord>) -> Result<Vec<RequestSummary>, DbError> {
    db.write(move |c| {
        let mut insert = c.prepare_cached(
            "INSERT INTO inspector_requests(at_ms, method, path, source, status, outcome, code,
                reason, event_ids, headers, body, body_bytes, duration_us)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
        )?;
        let mut out = Vec::with_capacity(records.len());
        for rec in records {
            let headers = serde_json::to_string(&rec.headers).unwrap_or_else(|_| "[]".into());
            insert.execute(params![
                rec.at_ms,
                rec.method,
                rec.path,
                rec.source,
                rec.status,
                rec.outcome,
                rec.code,
                rec.reason,
                rec.event_ids.join(","),
                headers,
                rec.body,
                rec.body_bytes as i64,
                rec.duration_us as i64,
            ])?;
            let at = chrono::DateTime::from_timestamp_millis(rec.at_ms).unwrap_or_default();
            out.push(RequestSummary {
                seq: c.last_insert_rowid(),
                at: at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                method: rec.method,
                path: rec.path,
                source: rec.source,
                status: rec.status,
                outcome: rec.outcome.to_owned(),
                code: rec.code,
                reason: rec.reason,
                event_ids: rec.event_ids,
                body_bytes: rec.body_bytes,
                duration_ms: rec.duration_us as f64 / 1000.0,
            });
        }
        if let Some(last) = out.last() {
            c.prepare_cached("DELETE FROM inspector_requests WHERE seq <= ?1")?
                .execute([last.seq - KEEP_REQUESTS])?;
        }
        Ok(out)
    })
    .await
}

/// The newest requests matching `filter`, newest first.
pub async fn list(db: &Db, filter: RequestFilter) -> Result<Vec<RequestSummary>, DbError> {
    db.read(move |c| {
        let mut sql = format!("SELECT {SUMMARY_COLUMNS} FROM inspector_requests r WHERE 1");
        let mut args: Vec<rusqlite::types::Value> = Vec::new();
        let arg = |v: String, args: &mut Vec<rusqlite::types::Value>| {
            args.push(rusqlite::types::Value::Text(v));
            args.len()
        };
        if let Some(s) = &filter.source {
            let n = arg(s.clone(), &mut args);
            sql.push_str(&format!(" AND r.source = ?{n}"));
        }
        match filter.outcome.as_deref() {
            None | Some("") => {}
            Some("refused") => sql.push_str(" AND r.status >= 400"),
            Some(o) => {
                let n = arg(o.to_owned(), &mut args);
                sql.push_str(&format!(" AND r.outcome = ?{n}"));
            }
        }
        if let Some(d) = &filter.destination {
            let n = arg(format!(",{d},"), &mut args);
            sql.push_str(&format!(
                " AND EXISTS (SELECT 1 FROM events_index e
                   WHERE instr(',' || r.event_ids || ',', ',' || e.id || ',') > 0
                     AND instr(',' || e.routes || ',', ?{n}) > 0)"
            ));
        }
        if let Some(q) = filter
            .search
            .as_deref()
            .map(str::trim)
            .filter(|q| !q.is_empty())
        {
            // Form bodies (Twilio) carry `+` and `@` percent-encoded.
            let encoded: String = form_urlencoded::byte_serialize(q.as_bytes()).collect();
            let a = arg(q.to_owned(), &mut args);
            let b = arg(encoded, &mut args);
            sql.push_str(&format!(
                " AND (instr(r.event_ids, ?{a}) > 0 OR instr(CAST(r.body AS TEXT), ?{a}) > 0
                       OR instr(CAST(r.body AS TEXT), ?{b}) > 0
                       OR EXISTS (SELECT 1 FROM events_index e
                          WHERE instr(',' || r.event_ids || ',', ',' || e.id || ',') > 0
                            AND instr(e.event, ?{a}) > 0))"
            ));
        }
        if let Some(before) = filter.before {
            sql.push_str(&format!(" AND r.seq < {before}"));
        }
        sql.push_str(&format!(
            " ORDER BY r.seq DESC LIMIT {}",
            filter.limit.max(1)
        ));
        let mut stmt = c.prepare(&sql)?;
        let rows = stmt.query_map(rusqlite::params_from_iter(args), summary_of)?;
        rows.collect()
    })
    .await
}

/// One request with its headers and body.
pub async fn get(db: &Db, seq: i64) -> Result<Option<RequestDetail>, DbError> {
    db.read(move |c| {
        c.query_row(
            &format!(
                "SELECT {SUMMARY_COLUMNS}, headers, body FROM inspector_requests WHERE seq = ?1"
            ),
            [seq],
            detail_of,
        )
        .optional()
    })
    .await
}

fn detail_of(r: &rusqlite::Row<'_>) -> rusqlite::Result<RequestDetail> {
    let summary = summary_of(r)?;
    let headers: String = r.get(12)?;
    let body: Vec<u8> = r.get::<_, Option<Vec<u8>>>(13)?.unwrap_or_default();
    Ok(RequestDetail {
        body_truncated: body.len() < summary.body_bytes,
        summary,
        headers: serde_json::from_str(&headers).unwrap_or_default(),
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

/// The requests that carried event `id`, oldest first (the first accepted it; the others were
/// duplicates), with the first one's headers and body.
pub async fn of_event(
    db: &Db,
    id: &str,
) -> Result<(Option<RequestDetail>, Vec<RequestSummary>), DbError> {
    let id = id.to_owned();
    db.read(move |c| {
        let mut stmt = c.prepare(&format!(
            "SELECT {SUMMARY_COLUMNS}, headers, body FROM inspector_requests
             WHERE instr(',' || event_ids || ',', ?1) > 0 ORDER BY seq LIMIT 100"
        ))?;
        let mut rows = stmt.query([format!(",{id},")])?;
        let mut first = None;
        let mut all = Vec::new();
        while let Some(r) = rows.next()? {
            if first.is_none() {
                let d = detail_of(r)?;
                all.push(d.summary.clone());
                first = Some(d);
            } else {
                all.push(summary_of(r)?);
            }
        }
        Ok((first, all))
    })
    .await
}
