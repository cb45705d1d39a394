//! Idempotency keys in the embedded SQLite database: each step is one statement in one
//! transaction (an upsert whose `WHERE` is the claim condition).

use async_trait::async_trait;
use rusqlite::{params, OptionalExtension};

use super::{retry_after, Claim, ClaimTimes, ClaimToken, IdempotencyStore, StoreError};
use crate::sqlite::Db;

/// Who held a key when a claim was tried.
pub(crate) enum Held {
    /// Nobody (absent, expired, or a lapsed lease): the claim took it.
    Nobody,
    InProgress {
        lease_until_ms: i64,
    },
    Completed,
}

/// The claim as one statement inside the caller's transaction: an upsert whose conflict branch
/// fires only when the claim condition holds. `state` is what a successful claim writes:
/// `in_progress` (three-step protocol) or `completed` (claim and complete in one step).
pub(crate) fn claim_in(
    c: &rusqlite::Connection,
    key: &str,
    token: &str,
    event_id: &str,
    state: &str,
    t: ClaimTimes,
) -> rusqlite::Result<Held> {
    // `execute` answers how many rows the upsert wrote: 0 when the conflict branch's condition
    // refused. (No `RETURNING`: SQLite would build a temporary table for it on every claim.)
    let acquired =
        c.prepare_cached(
            "INSERT INTO idempotency(key, state, token, event_id, lease_until_ms, expires_at)
             VALUES (?1, ?8, ?2, ?3, ?4, ?5)
             ON CONFLICT(key) DO UPDATE SET
                state = excluded.state, token = excluded.token,
                event_id = excluded.event_id,
                lease_until_ms = excluded.lease_until_ms,
                expires_at = excluded.expires_at
             WHERE idempotency.expires_at <= ?6
                OR (idempotency.state = 'in_progress' AND idempotency.lease_until_ms <= ?7)",
        )?
        .execute(params![
            key,
            token,
            event_id,
            t.lease_until_ms(),
            t.expires_at_secs(),
            t.now_secs(),
            t.now_ms,
            state
        ])? == 1;
    if acquired {
        return Ok(Held::Nobody);
    }
    // Same transaction: the row that defeated the condition.
    let held: Option<(String, i64)> = c
        .prepare_cached("SELECT state, lease_until_ms FROM idempotency WHERE key = ?1")?
        .query_row([key], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    Ok(match held {
        Some((state, lease_until_ms)) if state == "in_progress" => {
            Held::InProgress { lease_until_ms }
        }
        _ => Held::Completed,
    })
}

/// The complete step as one statement inside the caller's transaction; how many keys it
/// completed (0: the claim was lost).
pub(crate) fn complete_in(
    c: &rusqlite::Connection,
    key: &str,
    token: &str,
    t: ClaimTimes,
    result: Option<&str>,
) -> rusqlite::Result<usize> {
    c.prepare_cached(
        "UPDATE idempotency SET state = 'completed', expires_at = ?3, result = coalesce(?4, result)
         WHERE key = ?1 AND token = ?2 AND state = 'in_progress'",
    )?
    .execute(params![key, token, t.expires_at_secs(), result])
}

#[derive(Clone)]
pub struct SqliteIdempotency {
    db: Db,
}

impl SqliteIdempotency {
    pub fn new(db: Db) -> SqliteIdempotency {
        SqliteIdempotency { db }
    }

    /// Frees every in-progress claim whose key starts with `prefix`. For a restart of the only
    /// process that could hold them, and only for effects that are safe to repeat. Returns how
    /// many.
    pub async fn release_in_progress(&self, prefix: &str) -> Result<usize, StoreError> {
        let pattern = format!("{}%", prefix.replace('%', "\\%").replace('_', "\\_"));
        self.db
            .write(move |c| {
                c.execute(
                    "DELETE FROM idempotency WHERE state = 'in_progress' AND key LIKE ?1 ESCAPE '\\'",
                    [pattern],
                )
            })
            .await
            .map_err(|e| StoreError(e.to_string()))
    }

    /// Deletes keys that expired before `now_secs`; returns how many.
    pub async fn purge_expired(&self, now_secs: i64) -> Result<usize, StoreError> {
        self.db
            .write(move |c| c.execute("DELETE FROM idempotency WHERE expires_at <= ?1", [now_secs]))
            .await
            .map_err(|e| StoreError(e.to_string()))
    }
}

#[async_trait]
impl IdempotencyStore for SqliteIdempotency {
    async fn claim(&self, key: &str, event_id: &str, t: ClaimTimes) -> Result<Claim, StoreError> {
        let key = key.to_owned();
        let event_id = event_id.to_owned();
        let token = ClaimToken::random();
        let tok = token.0.clone();
        let held = self
            .db
            .write(move |c| claim_in(c, &key, &tok, &event_id, "in_progress", t))
            .await
            .map_err(|e| StoreError(e.to_string()))?;
        Ok(match held {
            Held::Nobody => Claim::Acquired(token),
            Held::InProgress { lease_until_ms } => Claim::InProgress {
                retry_after: retry_after(lease_until_ms, t.now_ms),
            },
            Held::Completed => Claim::Completed,
        })
    }

    async fn complete_with_result(
        &self,
        key: &str,
        token: &ClaimToken,
        t: ClaimTimes,
        result: Option<&str>,
    ) -> Result<(), StoreError> {
        let (key, tok, result) = (key.to_owned(), token.0.clone(), result.map(str::to_owned));
        let n = self
            .db
            .write(move |c| complete_in(c, &key, &tok, t, result.as_deref()))
            .await
            .map_err(|e| StoreError(e.to_string()))?;
        if n == 1 {
            Ok(())
        } else {
            Err(StoreError("claim lost before completion".into()))
        }
    }

    async fn release(&self, key: &str, token: &ClaimToken) -> Result<(), StoreError> {
        let key = key.to_owned();
        let tok = token.0.clone();
        self.db
            .write(move |c| {
                c.execute(
                    "DELETE FROM idempotency WHERE key = ?1 AND token = ?2 AND state = 'in_progress'",
                    params![key, tok],
                )
            })
            .await
            .map(|_| ())
            .map_err(|e| StoreError(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn contract() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("t.db")).unwrap();
        super::super::contract::run(&SqliteIdempotency::new(db), "sqlite").await;
    }

    #[tokio::test]
    async fn concurrent_claims_acquire_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteIdempotency::new(Db::open(&dir.path().join("t.db")).unwrap());
        let t = ClaimTimes {
            now_ms: crate::sqlite::now_ms(),
            lease: std::time::Duration::from_secs(30),
            ttl: std::time::Duration::from_secs(60),
        };
        let mut tasks = Vec::new();
        for _ in 0..50 {
            let s = store.clone();
            tasks.push(tokio::spawn(async move {
                s.claim("same", "e", t).await.unwrap()
            }));
        }
        let mut acquired = 0;
        for task in tasks {
            if matches!(task.await.unwrap(), Claim::Acquired(_)) {
                acquired += 1;
            }
        }
        assert_eq!(acquired, 1);
    }
}
