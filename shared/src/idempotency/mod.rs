//! The idempotency protocol of the ingress: **claim** a key with one atomic conditional write,
//! enqueue the event, then **complete** the claim; if the enqueue fails, **release** it so the
//! provider's retry can claim it again.
//!
//! A claim succeeds when the key is absent, expired, or held by an in-progress claim whose lease
//! ran out. Expiry is part of the condition itself, because stores delete expired items late
//! (DynamoDB TTL) or never (moto). No adapter reads before it writes.

#[cfg(feature = "lambda")]
pub mod dynamodb;
pub mod memory;
pub mod sqlite;

use std::time::Duration;

use async_trait::async_trait;

/// Proof of a claim: only its holder may complete or release it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimToken(pub String);

impl ClaimToken {
    pub fn random() -> ClaimToken {
        ClaimToken(uuid::Uuid::new_v4().simple().to_string())
    }
}

/// The outcome of a claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The caller owns the key and must complete or release it.
    Acquired(ClaimToken),
    /// The event was already accepted: answer `duplicate`.
    Completed,
    /// Another delivery holds the key right now; it completes or fails loudly, so answer 503
    /// and let the provider come back after `retry_after`.
    InProgress { retry_after: Duration },
}

/// Timing of one claim.
#[derive(Debug, Clone, Copy)]
pub struct ClaimTimes {
    pub now_ms: i64,
    pub lease: Duration,
    pub ttl: Duration,
}

impl ClaimTimes {
    pub fn lease_until_ms(&self) -> i64 {
        self.now_ms + self.lease.as_millis() as i64
    }
    pub fn expires_at_secs(&self) -> i64 {
        self.now_ms.div_euclid(1000) + self.ttl.as_secs() as i64
    }
    pub fn now_secs(&self) -> i64 {
        self.now_ms.div_euclid(1000)
    }
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("idempotency store: {0}")]
pub struct StoreError(pub String);

/// The outcome of [`AtomicAccept::accept`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Accepted {
    /// Claimed, queued and completed together.
    Queued,
    /// The event was already accepted: answer `duplicate`.
    Duplicate,
    /// Another delivery holds the key (a claim of the three-step protocol).
    InProgress { retry_after: Duration },
}

/// Claim, enqueue and complete as one atomic step, for a backend whose idempotency keys and
/// queue share a transaction (the embedded database). Same claim condition as
/// [`IdempotencyStore::claim`]; nothing is half done on any failure.
#[async_trait]
pub trait AtomicAccept: Send + Sync {
    /// `on_queued` runs inside the step, before it commits (counters that must be durable no
    /// later than the event).
    async fn accept(
        &self,
        key: &str,
        message: &crate::queue::OutgoingMessage,
        times: ClaimTimes,
        on_queued: Box<dyn FnOnce() + Send>,
    ) -> Result<Accepted, StoreError>;
}

#[async_trait]
pub trait IdempotencyStore: Send + Sync {
    /// Atomically takes `key` if it is free (see module docs).
    async fn claim(
        &self,
        key: &str,
        event_id: &str,
        times: ClaimTimes,
    ) -> Result<Claim, StoreError>;
    /// Marks the claim done: later deliveries are duplicates until the key expires.
    async fn complete(
        &self,
        key: &str,
        token: &ClaimToken,
        times: ClaimTimes,
    ) -> Result<(), StoreError> {
        self.complete_with_result(key, token, times, None).await
    }
    /// Completes the claim, recording what the effect produced (a provider's message id, ...)
    /// where there is something.
    async fn complete_with_result(
        &self,
        key: &str,
        token: &ClaimToken,
        times: ClaimTimes,
        result: Option<&str>,
    ) -> Result<(), StoreError>;
    /// Gives the key back after a failed enqueue.
    async fn release(&self, key: &str, token: &ClaimToken) -> Result<(), StoreError>;
}

/// How long a delivery that found the key in progress should wait.
pub(crate) fn retry_after(lease_until_ms: i64, now_ms: i64) -> Duration {
    let ms = (lease_until_ms - now_ms).max(0) as u64;
    Duration::from_secs(ms.div_ceil(1000).max(1))
}

/// Behaviour every adapter must show; run by each adapter's tests (the DynamoDB one from
/// `tests/`, against moto).
#[cfg(any(test, feature = "testing"))]
pub mod contract {
    use super::*;

    fn times(now_ms: i64) -> ClaimTimes {
        ClaimTimes {
            now_ms,
            lease: Duration::from_secs(30),
            ttl: Duration::from_secs(3600),
        }
    }

    /// Runs the whole protocol against `store`, using keys that start with `prefix`.
    pub async fn run(store: &dyn IdempotencyStore, prefix: &str) {
        let t0 = 1_700_000_000_000;
        let k = format!("{prefix}-k1");

        let Claim::Acquired(tok) = store.claim(&k, "e1", times(t0)).await.unwrap() else {
            panic!("first claim must acquire")
        };
        // While held, another delivery is told to retry after the lease.
        match store.claim(&k, "e1", times(t0 + 1_000)).await.unwrap() {
            Claim::InProgress { retry_after } => assert_eq!(retry_after, Duration::from_secs(29)),
            other => panic!("expected in progress, got {other:?}"),
        }
        store.complete(&k, &tok, times(t0 + 2_000)).await.unwrap();
        assert_eq!(
            store.claim(&k, "e1", times(t0 + 3_000)).await.unwrap(),
            Claim::Completed
        );
        // A completed key stays a duplicate after the lease would have run out...
        assert_eq!(
            store.claim(&k, "e1", times(t0 + 120_000)).await.unwrap(),
            Claim::Completed
        );
        // ...until it expires: expiry is checked in the condition, not left to TTL deletion.
        assert!(matches!(
            store
                .claim(&k, "e1", times(t0 + 2_000 + 3_601_000))
                .await
                .unwrap(),
            Claim::Acquired(_)
        ));

        // With the shipped expiry (72 h), copies hours and days later are duplicates; the key
        // frees only once the 72 h have passed.
        let k4 = format!("{prefix}-k4");
        let shipped = |now_ms| ClaimTimes {
            now_ms,
            lease: Duration::from_secs(30),
            ttl: Duration::from_secs(crate::config::IngressConfig::default().idempotency_ttl_secs),
        };
        let Claim::Acquired(tok4) = store.claim(&k4, "e4", shipped(t0)).await.unwrap() else {
            panic!("first claim must acquire")
        };
        store
            .complete(&k4, &tok4, shipped(t0 + 1_000))
            .await
            .unwrap();
        for hours in [1, 6, 24, 48, 71] {
            assert_eq!(
                store
                    .claim(&k4, "e4", shipped(t0 + hours * 3_600_000))
                    .await
                    .unwrap(),
                Claim::Completed,
                "a copy {hours} h later"
            );
        }
        assert!(matches!(
            store
                .claim(&k4, "e4", shipped(t0 + 1_000 + 72 * 3_600_000 + 1_000))
                .await
                .unwrap(),
            Claim::Acquired(_)
        ));

        // Release gives the key back at once.
        let k2 = format!("{prefix}-k2");
        let Claim::Acquired(tok2) = store.claim(&k2, "e2", times(t0)).await.unwrap() else {
            panic!()
        };
        store.release(&k2, &tok2).await.unwrap();
        let Claim::Acquired(tok2b) = store.claim(&k2, "e2", times(t0 + 1)).await.unwrap() else {
            panic!("released key must be claimable")
        };
        // A stale token can neither release nor complete someone else's claim.
        store.release(&k2, &tok2).await.unwrap();
        assert!(matches!(
            store.claim(&k2, "e2", times(t0 + 2)).await.unwrap(),
            Claim::InProgress { .. }
        ));
        assert!(store.complete(&k2, &tok2, times(t0 + 3)).await.is_err());
        store
            .complete_with_result(&k2, &tok2b, times(t0 + 3), Some("SM123"))
            .await
            .unwrap();
        assert_eq!(
            store.claim(&k2, "e2", times(t0 + 4)).await.unwrap(),
            Claim::Completed
        );

        // A claim whose holder died is taken over once its lease ran out.
        let k3 = format!("{prefix}-k3");
        assert!(matches!(
            store.claim(&k3, "e3", times(t0)).await.unwrap(),
            Claim::Acquired(_)
        ));
        assert!(matches!(
            store.claim(&k3, "e3", times(t0 + 29_999)).await.unwrap(),
            Claim::InProgress { .. }
        ));
        assert!(matches!(
            store.claim(&k3, "e3", times(t0 + 30_000)).await.unwrap(),
            Claim::Acquired(_)
        ));
    }
}
