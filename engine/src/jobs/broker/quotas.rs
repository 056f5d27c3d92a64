//! A tenant's quotas across the cluster, checked by whichever node takes a submission:
//! its rate (a token bucket per tenant in the key-value bucket [`QUOTAS_BUCKET`], changed
//! only by compare-and-set, so two nodes cannot both spend its last token), the jobs it
//! stores (its records, counted) and the audio bytes it stores (its completed jobs' sizes
//! and expiry times in [`USAGE_BUCKET`], added by the node that completes each job). Its
//! unfinished jobs are the work queue's own limit.
//!
//! [`QUOTAS_BUCKET`]: super::names::QUOTAS_BUCKET
//! [`USAGE_BUCKET`]: super::names::USAGE_BUCKET

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

/// A tenant's stored audio: each completed job's size and when it expires.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Usage {
    jobs: Vec<StoredJob>,
}

#[derive(Debug, Serialize, Deserialize)]
struct StoredJob {
    id: String,
    bytes: u64,
    expires_unix_ms: i64,
}

impl Usage {
    /// Drops the jobs expired at `now`.
    fn prune(&mut self, now: i64) {
        self.jobs.retain(|job| job.expires_unix_ms > now);
    }

    fn bytes(&self) -> u64 {
        self.jobs.iter().map(|job| job.bytes).sum()
    }
}

/// The cluster's per-tenant quotas.
#[derive(Clone)]
pub struct Quotas {
    bucket: kv::Store,
    usage: kv::Store,
    records: Records,
    limits: QuotaLimits,
}

/// What [`Quotas`] holds tenants to.
#[derive(Clone, Copy, Debug)]
pub(super) struct QuotaLimits {
    pub(super) per_minute: u32,
    pub(super) max_stored: usize,
    pub(super) max_stored_bytes: u64,
    /// How long a completed job's audio is kept.
    pub(super) retention: Duration,
}

impl Quotas {
    pub(super) fn new(
        bucket: kv::Store,
        usage: kv::Store,
        records: Records,
        limits: QuotaLimits,
    ) -> Self {
        Self {
            bucket,
            usage,
            records,
            limits,
        }
    }

    /// Counts `bytes` of audio for `tenant`'s completed job `id` until the retention
    /// passes (once, however often it is called for the job).
    pub async fn add_stored(&self, tenant: &str, id: &str, bytes: u64) -> Result<(), EngineError> {
        let key = tenant_prefix(tenant);
        for _ in 0..RACES {
            let entry = self
                .usage
                .entry(&key)
                .await
                .map_err(|e| unavailable("cannot read a tenant's usage", e))?;
            let (mut usage, revision) = match entry {
                Some(entry) if entry.operation == kv::Operation::Put => (
                    serde_json::from_slice(&entry.value).unwrap_or_default(),
                    Some(entry.revision),
                ),
                _ => (Usage::default(), None),
            };
            let now = now_unix_ms();
            usage.prune(now);
            if usage.jobs.iter().any(|job| job.id == id) {
                return Ok(());
            }
            let retention = i64::try_from(self.limits.retention.as_millis()).unwrap_or(i64::MAX);
            usage.jobs.push(StoredJob {
                id: id.to_string(),
                bytes,
                expires_unix_ms: now.saturating_add(retention),
            });
            let value = serde_json::to_vec(&usage)
                .map_err(|e| EngineError::Internal(format!("cannot encode a usage: {e}")))?;
            let stored = match revision {
                Some(revision) => self
                    .usage
                    .update(&key, value.into(), revision)
                    .await
                    .is_ok(),
                None => self.usage.create(&key, value.into()).await.is_ok(),
            };
            if stored {
                return Ok(());
            }
        }
        Err(EngineError::Unavailable(format!(
            "the tenant's usage changed under {RACES} attempts to add to it"
        )))
    }

    /// Refuses `tenant` while it stores its limit of audio bytes, with the time until its
    /// oldest job expires as the retry hint.
    async fn check_stored_bytes(&self, tenant: &str) -> Result<(), EngineError> {
        let entry = self
            .usage
            .entry(tenant_prefix(tenant))
            .await
            .map_err(|e| unavailable("cannot read a tenant's usage", e))?;
        let Some(entry) = entry.filter(|e| e.operation == kv::Operation::Put) else {
            return Ok(());
        };
        let mut usage: Usage = serde_json::from_slice(&entry.value).unwrap_or_default();
        let now = now_unix_ms();
        usage.prune(now);
        let (bytes, most) = (usage.bytes(), self.limits.max_stored_bytes);
        if bytes < most {
            return Ok(());
        }
        let first_expiry = usage.jobs.iter().map(|job| job.expires_unix_ms).min();
        let wait = first_expiry.map_or(60_000, |at| (at - now).max(1000)) as u64;
        Err(EngineError::ResourceExhausted {
            message: format!(
                "this token stores {} MiB of audio across the cluster, the limit is {} MiB \
                 (max_stored_bytes_per_tenant)",
                bytes >> 20,
                most >> 20
            ),
            retry_after: Duration::from_millis(wait),
        })
    }

    /// Whether `tenant` may submit one more job: under its stored jobs and its rate, one
    /// submission taken from its allowance when it may; a refusal is `ResourceExhausted`
    /// naming the limit, with a retry hint.
    pub async fn admit(&self, tenant: &str) -> Result<(), EngineError> {
        let stored = self.records.count(tenant).await?;
        if stored >= self.limits.max_stored {
            return Err(EngineError::ResourceExhausted {
                message: format!(
                    "this token stores {stored} generations across the cluster, the limit \
                     (max_stored_jobs_per_tenant)"
                ),
                retry_after: Duration::from_secs(60),
            });
        }
        self.check_stored_bytes(tenant).await?;
        let key = tenant_prefix(tenant);
        let per_minute = f64::from(self.limits.per_minute);
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
                        self.limits.per_minute
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
            allowance.tokens = (allowance.tokens + 1.0).min(f64::from(self.limits.per_minute));
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
