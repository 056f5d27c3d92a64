//! A tenant's quotas across the cluster, checked by whichever node takes a submission:
//! its rate (a token bucket per tenant in the key-value bucket [`QUOTAS_BUCKET`], changed
//! only by compare-and-set, so two nodes cannot both spend its last token) and the jobs it
//! stores (its records, counted). Its unfinished jobs are the work queue's own limit.
//!
//! [`QUOTAS_BUCKET`]: super::names::QUOTAS_BUCKET

use std::time::Duration;

use async_nats::jetstream::kv;
use serde::{Deserialize, Serialize};

use super::cluster::RACES;
use super::names::tenant_prefix;
use super::records::Records;
use super::unavailable;
use crate::error::EngineError;
use crate::jobs::job::now_unix_ms;

/// A tenant's submissions left, as of a time.
#[derive(Debug, Serialize, Deserialize)]
struct Allowance {
    tokens: f64,
    at_unix_ms: i64,
}

/// The cluster's per-tenant quotas.
#[derive(Clone)]
pub struct Quotas {
    bucket: kv::Store,
    records: Records,
    per_minute: u32,
    max_stored: usize,
}

impl Quotas {
    pub(super) fn new(
        bucket: kv::Store,
        records: Records,
        per_minute: u32,
        max_stored: usize,
    ) -> Self {
        Self {
            bucket,
            records,
            per_minute,
            max_stored,
        }
    }

    /// Whether `tenant` may submit one more job: under its stored jobs and its rate, one
    /// submission taken from its allowance when it may; a refusal is `ResourceExhausted`
    /// naming the limit, with a retry hint.
    pub async fn admit(&self, tenant: &str) -> Result<(), EngineError> {
        let stored = self.records.count(tenant).await?;
        if stored >= self.max_stored {
            return Err(EngineError::ResourceExhausted {
                message: format!(
                    "this token stores {stored} generations across the cluster, the limit \
                     (max_stored_jobs_per_tenant)"
                ),
                retry_after: Duration::from_secs(60),
            });
        }
        let key = tenant_prefix(tenant);
        let per_minute = f64::from(self.per_minute);
        let rate = per_minute / 60_000.0;
        for _ in 0..RACES {
            let entry = self
                .bucket
                .entry(&key)
                .await
                .map_err(|e| unavailable("cannot read a quota", e))?;
            let now = now_unix_ms();
            let (mut allowance, revision) = match entry {
                Some(entry) if entry.operation == kv::Operation::Put => (
                    serde_json::from_slice(&entry.value).unwrap_or(Allowance {
                        tokens: per_minute,
                        at_unix_ms: now,
                    }),
                    Some(entry.revision),
                ),
                _ => (
                    Allowance {
                        tokens: per_minute,
                        at_unix_ms: now,
                    },
                    None,
                ),
            };
            let elapsed = (now - allowance.at_unix_ms).max(0) as f64;
            allowance.tokens = (allowance.tokens + elapsed * rate).min(per_minute);
            allowance.at_unix_ms = now;
            if allowance.tokens < 1.0 {
                let wait_ms = (1.0 - allowance.tokens) / rate;
                return Err(EngineError::ResourceExhausted {
                    message: format!(
                        "this token submitted more than {} generations a minute across the \
                         cluster (max_submits_per_minute)",
                        self.per_minute
                    ),
                    retry_after: Duration::from_millis(wait_ms.ceil() as u64)
                        .max(Duration::from_secs(1)),
                });
            }
            allowance.tokens -= 1.0;
            let value = serde_json::to_vec(&allowance)
                .map_err(|e| EngineError::Internal(format!("cannot encode a quota: {e}")))?;
            // Another node spent from the same allowance since it was read: read again.
            let stored = match revision {
                Some(revision) => self
                    .bucket
                    .update(&key, value.into(), revision)
                    .await
                    .is_ok(),
                None => self.bucket.create(&key, value.into()).await.is_ok(),
            };
            if stored {
                return Ok(());
            }
        }
        Err(EngineError::Unavailable(format!(
            "the tenant's quota changed under {RACES} attempts to spend from it; retry"
        )))
    }

    /// Gives back the submission [`Quotas::admit`] took for a job that was then refused
    /// (the cluster's queue was full) or failed to be stored. Best effort: a broker out of
    /// reach keeps it spent.
    pub async fn refund(&self, tenant: &str) {
        let key = tenant_prefix(tenant);
        for _ in 0..RACES {
            let Ok(Some(entry)) = self.bucket.entry(&key).await else {
                return;
            };
            let Ok(mut allowance) = serde_json::from_slice::<Allowance>(&entry.value) else {
                return;
            };
            allowance.tokens = (allowance.tokens + 1.0).min(f64::from(self.per_minute));
            let Ok(value) = serde_json::to_vec(&allowance) else {
                return;
            };
            if self
                .bucket
                .update(&key, value.into(), entry.revision)
                .await
                .is_ok()
            {
                return;
            }
        }
    }
}
