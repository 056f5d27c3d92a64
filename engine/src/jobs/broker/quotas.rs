//! A tenant's quotas across the cluster, checked by whichever node takes a submission:
//! its rate (one message per submission on the tenant's subject of the stream
//! [`SUBMITS_STREAM`], which keeps a minute of them and refuses, atomically on the server,
//! one past the tenant's limit: no node reads and writes a shared counter, so a burst from
//! many nodes neither races nor retries), the jobs it stores (its records, counted) and the
//! audio bytes it stores (its completed jobs' sizes and expiry times in [`USAGE_BUCKET`],
//! added by the node that completes each job). Its unfinished jobs are the work queue's
//! own limit.
//!
//! [`SUBMITS_STREAM`]: super::names::SUBMITS_STREAM
//! [`USAGE_BUCKET`]: super::names::USAGE_BUCKET

use std::time::Duration;

use async_nats::jetstream::{self, kv, stream};
use serde::{Deserialize, Serialize};

use super::names::{submits_subject, tenant_prefix};
use super::queue::limit_reached;
use super::records::Records;
use super::unavailable;
use super::RACES;
use crate::error::EngineError;
use crate::jobs::job::now_unix_ms;

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
    context: jetstream::Context,
    submits: stream::Stream,
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
        context: jetstream::Context,
        submits: stream::Stream,
        usage: kv::Store,
        records: Records,
        limits: QuotaLimits,
    ) -> Self {
        Self {
            context,
            submits,
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

    /// Whether `tenant` may submit one more job: under its stored jobs, its stored audio
    /// and its rate, one submission counted when it may (what [`Quotas::refund`] takes
    /// back); a refusal is `ResourceExhausted` naming the limit, with a retry hint.
    pub async fn admit(&self, tenant: &str) -> Result<Spent, EngineError> {
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
        let subject = submits_subject(tenant);
        let sent = self
            .context
            .send_publish(subject.clone(), jetstream::message::PublishMessage::build())
            .await
            .map_err(|e| unavailable("refused a submission", e))?;
        match sent.await {
            Ok(ack) => Ok(Spent(ack.sequence)),
            Err(e) if limit_reached(&e).is_some() => {
                // The oldest submission of the minute leaves the window first.
                let oldest = self.submits.direct_get_first_for_subject(subject).await;
                let wait = oldest.ok().map_or(Duration::from_secs(60), |message| {
                    let sent = message.time.unix_timestamp_nanos() / 1_000_000;
                    let leaves = sent + i128::from(SUBMIT_WINDOW_MS);
                    let left = leaves - i128::from(now_unix_ms());
                    Duration::from_millis(u64::try_from(left).unwrap_or(0))
                });
                Err(EngineError::ResourceExhausted {
                    message: format!(
                        "this token submitted {} generations in the last minute across the \
                         cluster, the limit (max_submits_per_minute)",
                        self.limits.per_minute
                    ),
                    retry_after: wait.max(Duration::from_secs(1)),
                })
            }
            Err(e) => Err(unavailable("did not count a submission", e)),
        }
    }

    /// Takes back a submission [`Quotas::admit`] counted for a job that was then refused
    /// (the cluster's queue was full) or failed to be stored. Best effort: a broker out of
    /// reach leaves it counted for its minute.
    pub async fn refund(&self, spent: Spent) {
        if let Err(e) = self.submits.delete_message(spent.0).await {
            tracing::debug!("a refused submission stays counted: {e}");
        }
    }
}

/// A submission [`Quotas::admit`] counted.
#[derive(Clone, Copy, Debug)]
#[must_use]
pub struct Spent(u64);

/// How long a submission counts against its tenant's rate.
pub(super) const SUBMIT_WINDOW_MS: u64 = 60_000;
