//! Job records and idempotency keys in the broker's key-value buckets. A record changes only
//! by compare-and-set on the revision its writer read, so two nodes that race (a cancel and
//! a completion, an old owner and a new one) cannot both win; an idempotency key is created
//! once, and every later request with it finds the first one's job.

use async_nats::jetstream::{consumer, kv};
use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

use super::inputs::CoverSpec;
use super::names::{record_key, request_key, tenant_prefix};
use super::{unavailable, RACES};
use crate::audio::AudioFormat;
use crate::error::EngineError;
use crate::jobs::job::JobInfo;
use crate::request::GenerateRequest;

/// Records a listing reads at once.
const LIST_BATCH: i64 = 64;
/// How long a listing waits for its next record.
const LIST_WAIT: std::time::Duration = std::time::Duration::from_secs(5);
/// The header that marks a key-value message as a put, a delete or a purge.
const KV_OPERATION: &str = "KV-Operation";

/// A job as the cluster keeps it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// What clients see of it.
    pub info: JobInfo,
    /// The node running it, once one took it.
    pub owner: Option<String>,
    /// Runs started so far: each node that takes it counts one.
    pub attempt: u32,
    /// Its work message's stream sequence, while it is queued or running.
    pub work_sequence: Option<u64>,
    /// A client asked to cancel it while it ran; its owner stops it.
    pub cancel_requested: bool,
    /// What to run, for the node that takes it (its seed chosen, so a re-run after a lost
    /// node makes the same audio).
    pub request: GenerateRequest,
    /// The final file's container.
    pub format: AudioFormat,
    /// A cover's settings (its song is in the inputs store).
    #[serde(default)]
    pub cover: Option<CoverSpec>,
}

/// What a request's idempotency key answers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestClaim {
    /// The job the key's first request made.
    pub job: String,
    /// Its parameters' digest: the key with other parameters is refused.
    pub fingerprint: u64,
}

/// The records and idempotency keys.
#[derive(Clone)]
pub struct Records {
    jobs: kv::Store,
    requests: kv::Store,
}

impl Records {
    pub(super) fn new(jobs: kv::Store, requests: kv::Store) -> Self {
        Self { jobs, requests }
    }

    /// Stores a new record; `None` if one with its key exists. Returns its revision.
    pub async fn create(&self, record: &Record) -> Result<Option<u64>, EngineError> {
        let key = record_key(&record.info.tenant, &record.info.id);
        match self.jobs.create(key, encode(record)?).await {
            Ok(revision) => Ok(Some(revision)),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Ok(None),
            Err(e) => Err(unavailable("cannot store a job", e)),
        }
    }

    /// `tenant`'s job `job` and its revision; `None` when the tenant has no such job.
    pub async fn read(
        &self,
        tenant: &str,
        job: &str,
    ) -> Result<Option<(Record, u64)>, EngineError> {
        let entry = self
            .jobs
            .entry(record_key(tenant, job))
            .await
            .map_err(|e| unavailable("cannot read a job", e))?;
        let Some(entry) = entry.filter(|e| e.operation == kv::Operation::Put) else {
            return Ok(None);
        };
        let record = decode::<Record>(&entry.value)?;
        // The key carries a digest of the tenant; the record says who it is.
        Ok((record.info.tenant == tenant).then_some((record, entry.revision)))
    }

    /// Replaces a record read at `revision`; `None` if it changed since (the caller lost
    /// the race and reads it again).
    pub async fn update(&self, record: &Record, revision: u64) -> Result<Option<u64>, EngineError> {
        let key = record_key(&record.info.tenant, &record.info.id);
        match self.jobs.update(key, encode(record)?, revision).await {
            Ok(revision) => Ok(Some(revision)),
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Ok(None),
            Err(e) => Err(unavailable("cannot update a job", e)),
        }
    }

    /// Changes `tenant`'s job `job` by `edit` and compare-and-set, reading it again each
    /// time another writer won, a bounded number of times. `edit` returns whether there is
    /// anything to write; the record as written, or `None` when there was no record or
    /// nothing to write.
    pub async fn change(
        &self,
        tenant: &str,
        job: &str,
        mut edit: impl FnMut(&mut Record) -> bool,
    ) -> Result<Option<Record>, EngineError> {
        for _ in 0..RACES {
            let Some((mut record, revision)) = self.read(tenant, job).await? else {
                return Ok(None);
            };
            if !edit(&mut record) {
                return Ok(None);
            }
            if self.update(&record, revision).await?.is_some() {
                return Ok(Some(record));
            }
        }
        Err(EngineError::Unavailable(format!(
            "job {job}'s record changed under {RACES} attempts to write it; retry"
        )))
    }

    /// `tenant`'s job `job` each time it changes from now on (a node follows the job it
    /// runs, for a cancel from another node).
    pub async fn watch(
        &self,
        tenant: &str,
        job: &str,
    ) -> Result<BoxStream<'static, Record>, EngineError> {
        let changes = self
            .jobs
            .watch(record_key(tenant, job))
            .await
            .map_err(|e| unavailable("cannot follow a job", e))?;
        let records = changes.filter_map(|entry| {
            let record = entry
                .ok()
                .filter(|e| e.operation == kv::Operation::Put)
                .and_then(|e| decode::<Record>(&e.value).ok());
            std::future::ready(record)
        });
        Ok(records.boxed())
    }

    /// Every record of `tenant` (unordered).
    pub async fn list(&self, tenant: &str) -> Result<Vec<Record>, EngineError> {
        let messages = self.latest(tenant, false).await?;
        messages.iter().map(|m| decode(&m.payload)).collect()
    }

    /// How many records `tenant` has (their values are not read).
    pub async fn count(&self, tenant: &str) -> Result<usize, EngineError> {
        Ok(self.latest(tenant, true).await?.len())
    }

    /// The last message of each of `tenant`'s records that is still there (of its headers
    /// alone with `headers_only`): only this tenant's keys are read, however many other
    /// tenants' there are.
    async fn latest(
        &self,
        tenant: &str,
        headers_only: bool,
    ) -> Result<Vec<async_nats::jetstream::Message>, EngineError> {
        let failed = |e: &dyn std::fmt::Display| unavailable("cannot list jobs", e);
        let consumer = self
            .jobs
            .stream
            .create_consumer(consumer::pull::OrderedConfig {
                filter_subject: format!("{}{}.*", self.jobs.prefix, tenant_prefix(tenant)),
                deliver_policy: consumer::DeliverPolicy::LastPerSubject,
                headers_only,
                max_batch: LIST_BATCH,
                ..Default::default()
            })
            .await
            .map_err(|e| failed(&e))?;
        let pending = consumer.cached_info().num_pending;
        let mut latest = Vec::new();
        if pending == 0 {
            return Ok(latest);
        }
        let mut messages = consumer.messages().await.map_err(|e| failed(&e))?;
        for _ in 0..pending {
            // A record that expired since the count was taken never comes: each message
            // says how many are left, and a broker that stops answering is an error.
            let next = tokio::time::timeout(LIST_WAIT, messages.next()).await;
            let message = match next {
                Ok(Some(message)) => message.map_err(|e| failed(&e))?,
                Ok(None) => break,
                Err(_) => return Err(failed(&"it did not answer in time")),
            };
            let last = message.info().is_ok_and(|info| info.pending == 0);
            // A removed record leaves a marker.
            let removed = message.headers.as_ref().is_some_and(|h| {
                h.get(KV_OPERATION).is_some_and(|op| op.as_str() != "PUT")
                    || h.get(async_nats::header::NATS_MARKER_REASON).is_some()
            });
            if !removed {
                latest.push(message);
            }
            if last {
                break;
            }
        }
        Ok(latest)
    }

    /// Claims `tenant`'s `request_id` for `claim.job`: `None` when this call created the
    /// key, else what the key's first request made and the key's revision (for
    /// [`Self::reclaim_request`]).
    pub async fn claim_request(
        &self,
        tenant: &str,
        request_id: &str,
        claim: &RequestClaim,
    ) -> Result<Option<(RequestClaim, u64)>, EngineError> {
        let key = request_key(tenant, request_id);
        match self.requests.create(&key, encode(claim)?).await {
            Ok(_) => Ok(None),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
                let entry = self
                    .requests
                    .entry(&key)
                    .await
                    .map_err(|e| unavailable("cannot read a request key", e))?;
                match entry.filter(|e| e.operation == kv::Operation::Put) {
                    Some(entry) => Ok(Some((decode(&entry.value)?, entry.revision))),
                    // Expired or released between the two calls: the key is free again.
                    None => Box::pin(self.claim_request(tenant, request_id, claim)).await,
                }
            }
            Err(e) => Err(unavailable("cannot store a request key", e)),
        }
    }

    /// Points a key whose job may be submitted again (cancelled, or cut off) at a new job,
    /// if it is still at `revision`: `false` when another request got there first.
    pub async fn reclaim_request(
        &self,
        tenant: &str,
        request_id: &str,
        claim: &RequestClaim,
        revision: u64,
    ) -> Result<bool, EngineError> {
        let key = request_key(tenant, request_id);
        match self.requests.update(key, encode(claim)?, revision).await {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Ok(false),
            Err(e) => Err(unavailable("cannot store a request key", e)),
        }
    }

    /// Forgets a key this node claimed for a job that was then refused, so the client's
    /// retry is a new request.
    pub async fn release_request(&self, tenant: &str, request_id: &str) -> Result<(), EngineError> {
        self.requests
            .purge(request_key(tenant, request_id))
            .await
            .map_err(|e| unavailable("cannot release a request key", e))
    }

    /// Removes the record of a job that was refused before any client saw it.
    /// The key's messages are purged from the bucket's stream, leaving no marker behind
    /// (a key-value purge would leave one until the retention, for every refused
    /// submission, and every listing would read them).
    pub async fn remove(&self, tenant: &str, job: &str) -> Result<(), EngineError> {
        self.jobs
            .stream
            .purge()
            .filter(format!("{}{}", self.jobs.prefix, record_key(tenant, job)))
            .await
            .map(|_| ())
            .map_err(|e| unavailable("cannot remove a job", e))
    }
}

fn encode<T: Serialize>(value: &T) -> Result<bytes::Bytes, EngineError> {
    serde_json::to_vec(value)
        .map(Into::into)
        .map_err(|e| EngineError::Internal(format!("cannot encode a record: {e}")))
}

fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, EngineError> {
    serde_json::from_slice(bytes)
        .map_err(|e| EngineError::Internal(format!("the broker holds an unreadable record: {e}")))
}
