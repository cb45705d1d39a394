//! In-memory idempotency keys, for unit tests of the handlers.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;

use super::{retry_after, Claim, ClaimTimes, ClaimToken, IdempotencyStore, StoreError};

#[derive(Debug, Clone)]
struct Entry {
    completed: bool,
    token: ClaimToken,
    lease_until_ms: i64,
    expires_at: i64,
}

#[derive(Debug, Default)]
pub struct MemoryIdempotency {
    entries: Mutex<HashMap<String, Entry>>,
}

#[async_trait]
impl IdempotencyStore for MemoryIdempotency {
    async fn claim(&self, key: &str, _event_id: &str, t: ClaimTimes) -> Result<Claim, StoreError> {
        let mut entries = self.entries.lock().unwrap();
        if let Some(e) = entries.get(key) {
            let expired = e.expires_at <= t.now_secs();
            let lease_over = !e.completed && e.lease_until_ms <= t.now_ms;
            if !expired && !lease_over {
                return Ok(if e.completed {
                    Claim::Completed
                } else {
                    Claim::InProgress {
                        retry_after: retry_after(e.lease_until_ms, t.now_ms),
                    }
                });
            }
        }
        let token = ClaimToken::random();
        entries.insert(
            key.to_owned(),
            Entry {
                completed: false,
                token: token.clone(),
                lease_until_ms: t.lease_until_ms(),
                expires_at: t.expires_at_secs(),
            },
        );
        Ok(Claim::Acquired(token))
    }

    async fn complete_with_result(
        &self,
        key: &str,
        token: &ClaimToken,
        t: ClaimTimes,
        _result: Option<&str>,
    ) -> Result<(), StoreError> {
        let mut entries = self.entries.lock().unwrap();
        match entries.get_mut(key) {
            Some(e) if &e.token == token && !e.completed => {
                e.completed = true;
                e.expires_at = t.expires_at_secs();
                Ok(())
            }
            _ => Err(StoreError("claim lost before completion".into())),
        }
    }

    async fn release(&self, key: &str, token: &ClaimToken) -> Result<(), StoreError> {
        let mut entries = self.entries.lock().unwrap();
        if entries
            .get(key)
            .is_some_and(|e| &e.token == token && !e.completed)
        {
            entries.remove(key);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn contract() {
        super::super::contract::run(&super::MemoryIdempotency::default(), "mem").await;
    }
}
