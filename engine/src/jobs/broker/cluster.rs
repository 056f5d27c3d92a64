//! What any node of a cluster answers for any job, over the broker: submitting (idempotent
//! by request id, admitted by the server's limits so no two nodes can both take a tenant's
//! last place), reading, listing, cancelling and following a job. Nodes run the queued
//! jobs as they take them from the queue; this side never computes.

use std::time::Duration;

use futures_util::stream::BoxStream;
use futures_util::StreamExt;

use super::inputs;
use super::log::Appended;
use super::queue::{Offer, WorkOrder};
use super::records::{Record, RequestClaim};
use super::{Broker, RACES};
use crate::cover::Song;
use crate::error::EngineError;
use crate::jobs::command::Admitted;
use crate::jobs::event::{EventBody, FailureCode, JobEvent, JobState};
use crate::jobs::job::{now_unix_ms, queued_progress, JobInfo};
use crate::jobs::tenants::ListCursor;

/// How long a cancel of a running job waits for its node to stop it before answering with
/// the state it is in.
const CANCEL_WAIT: Duration = Duration::from_secs(60);

/// How often, and how long apart, a submit looks for the job its request id names before
/// taking over a key whose job never appeared (its submit stopped half-way).
const CLAIM_WAITS: usize = 20;
const CLAIM_PAUSE: Duration = Duration::from_millis(50);

/// The cluster's job operations.
#[derive(Clone)]
pub struct Cluster {
    broker: Broker,
    /// The retry hint of a refusal.
    retry_after: Duration,
}

/// Whether a job's request id may start a new job: it was cancelled, or cut off.
fn retryable(info: &JobInfo) -> bool {
    info.state == JobState::Cancelled || matches!(info.failure, Some((FailureCode::Interrupted, _)))
}

fn not_found(id: &str) -> EngineError {
    EngineError::NotFound(format!("no generation with id `{id}`"))
}

fn raced(what: &str) -> EngineError {
    EngineError::Unavailable(format!(
        "the job changed under {RACES} attempts to {what}; retry"
    ))
}

impl Cluster {
    /// Operations over `broker`; refusals hint a retry after `retry_after`.
    pub fn new(broker: Broker, retry_after: Duration) -> Self {
        Self {
            broker,
            retry_after,
        }
    }

    /// Submits a job whose record the caller filled from a validated request (state
    /// Queued, a fresh id): claims its request id, stores the record, opens its log with
    /// Accepted and its place in line, and queues it. A refusal by the queue's limits
    /// takes all of that back and is `ResourceExhausted` with a retry hint. While the
    /// broker is out of reach it is refused at once, `Unavailable`. A cover's decoded
    /// `song` is stored for the node that runs it.
    pub async fn submit(
        &self,
        mut record: Record,
        song: Option<&Song>,
    ) -> Result<Admitted, EngineError> {
        self.broker.check_connected()?;
        if let Some(existing) = self.claim(&record).await? {
            return Ok(existing);
        }
        // A retry of a request that made its job spent nothing: only a new job is counted.
        let spent = match self.broker.quotas.admit(&record.info.tenant).await {
            Ok(spent) => spent,
            Err(e) => {
                self.undo_submit(&record).await;
                return Err(e);
            }
        };
        let admitted = self.store_and_queue(&mut record, song).await;
        if admitted.is_err() {
            // Nothing was submitted: it does not count against the tenant's rate.
            self.undo_submit(&record).await;
            self.broker.quotas.refund(spent).await;
        }
        admitted
    }

    /// Stores an admitted submission, opens its log and queues it. Its record comes
    /// first, so a retry with its request id finds its job at once, however long a cover's
    /// song takes to store; the song is in place before any node can take the job.
    async fn store_and_queue(
        &self,
        record: &mut Record,
        song: Option<&Song>,
    ) -> Result<Admitted, EngineError> {
        let id = record.info.id.clone();
        let position = self.broker.queue.waiting().await? + 1;
        record.info.progress = queued_progress(position);
        record.info.last_sequence = 2;
        let Some(revision) = self.broker.records.create(record).await? else {
            return Err(EngineError::Internal(format!("job id {id} is taken")));
        };
        if let Some(song) = song {
            inputs::put_song(&self.broker.inputs, &id, song).await?;
        }
        self.open_and_queue(record, revision).await
    }

    /// Takes back what a refused submit stored (or a submit the broker failed half-way),
    /// so no job waits with no work message and the client's retry is a new request.
    async fn undo_submit(&self, record: &Record) {
        let (tenant, id) = (&record.info.tenant, &record.info.id);
        let records = &self.broker.records;
        let _ = records.remove(tenant, id).await;
        let _ = self.broker.log.forget(id).await;
        if record.cover.is_some() {
            inputs::remove_song(&self.broker.inputs, id).await;
        }
        if let Some(key) = &record.info.request_id {
            let _ = records.release_request(tenant, key).await;
        }
    }

    /// Opens a stored job's log with Accepted and its place in line, and queues it.
    async fn open_and_queue(
        &self,
        record: &mut Record,
        revision: u64,
    ) -> Result<Admitted, EngineError> {
        let (tenant, id) = (record.info.tenant.clone(), record.info.id.clone());
        let position = record.info.progress.queue_position;
        let opening = [
            EventBody::Accepted {
                queue_position: position,
                model: record.info.model.clone(),
            },
            EventBody::Progress(queued_progress(position)),
        ];
        let mut expected = 0;
        for (sequence, body) in (1..).zip(opening) {
            let event = JobEvent {
                sequence,
                time_unix_ms: now_unix_ms(),
                body,
            };
            match self
                .broker
                .log
                .append(&id, expected, &event, "submit")
                .await?
            {
                Appended::Stored(at) => expected = at,
                Appended::Fenced => {
                    return Err(EngineError::Internal(format!("job {id}'s log was not new")))
                }
            }
        }
        let order = WorkOrder {
            job: id.clone(),
            tenant,
        };
        let refusal = match self.broker.queue.offer(&order).await? {
            Offer::Queued(sequence) => {
                record.work_sequence = Some(sequence);
                // A node may have taken (and updated) it already; that record is newer.
                let _ = self.broker.records.update(record, revision).await?;
                return Ok(Admitted {
                    id,
                    existing: false,
                });
            }
            Offer::TenantFull => {
                "this token has its limit of unfinished generations across the cluster \
                 (max_jobs_per_tenant)"
            }
            Offer::QueueFull => "the cluster's queue is full (max_queued)",
        };
        Err(EngineError::ResourceExhausted {
            message: refusal.into(),
            retry_after: self.retry_after,
        })
    }

    /// Claims the record's request id, if it has one: `Some` when the id already names a
    /// job that answers for it, `None` when this submission may go on (a new id, or one
    /// whose job was cancelled or cut off, now pointed at this one).
    async fn claim(&self, record: &Record) -> Result<Option<Admitted>, EngineError> {
        let info = &record.info;
        let Some(key) = &info.request_id else {
            return Ok(None);
        };
        let claim = RequestClaim {
            job: info.id.clone(),
            fingerprint: info.fingerprint,
        };
        let records = &self.broker.records;
        for _ in 0..RACES {
            let Some((existing, revision)) =
                records.claim_request(&info.tenant, key, &claim).await?
            else {
                return Ok(None);
            };
            let mut answering = records.read(&info.tenant, &existing.job).await?;
            // The key's first request may still be storing its job: give it a moment
            // before taking a key whose job never appeared.
            for _ in 0..CLAIM_WAITS {
                if answering.is_some() {
                    break;
                }
                tokio::time::sleep(CLAIM_PAUSE).await;
                answering = records.read(&info.tenant, &existing.job).await?;
            }
            if let Some((job, _)) = answering.filter(|(job, _)| !retryable(&job.info)) {
                if existing.fingerprint != info.fingerprint {
                    return Err(EngineError::AlreadyExists(format!(
                        "request_id `{key}` was used for a request with other parameters \
                         (generation {})",
                        job.info.id
                    )));
                }
                return Ok(Some(Admitted {
                    id: job.info.id,
                    existing: true,
                }));
            }
            if records
                .reclaim_request(&info.tenant, key, &claim, revision)
                .await?
            {
                return Ok(None);
            }
        }
        Err(raced("claim its request id"))
    }

    /// A tenant's job, with the sequence of its last stored event (and its end, once its
    /// log has one).
    pub async fn get(&self, tenant: &str, id: &str) -> Result<JobInfo, EngineError> {
        let (record, _) = self
            .broker
            .records
            .read(tenant, id)
            .await?
            .ok_or_else(|| not_found(id))?;
        let mut info = record.info;
        if let Some((_, last)) = self.broker.log.last(id).await? {
            info.last_sequence = info.last_sequence.max(last.sequence);
            // The log ends before its owner writes the record: a client that saw the end
            // gets the same answer here.
            let finished = info.finished_unix_ms.unwrap_or(last.time_unix_ms);
            info.take_end(&last.body, finished);
        }
        Ok(info)
    }

    /// A page of `tenant`'s jobs, newest first (by creation time, then id), after a
    /// cursor; the cursor of the next page when there is one.
    pub async fn list(
        &self,
        tenant: &str,
        after: Option<&ListCursor>,
        size: usize,
    ) -> Result<(Vec<JobInfo>, Option<ListCursor>), EngineError> {
        let mut jobs: Vec<(ListCursor, JobInfo)> = self
            .broker
            .records
            .list(tenant)
            .await?
            .into_iter()
            .map(|r| {
                (
                    ListCursor::after(r.info.created_unix_ms, &r.info.id),
                    r.info,
                )
            })
            .filter(|(cursor, _)| after.is_none_or(|after| cursor < after))
            .collect();
        jobs.sort_by(|a, b| b.0.cmp(&a.0));
        let more = jobs.len() > size;
        jobs.truncate(size);
        let next = more
            .then(|| jobs.last().map(|(cursor, _)| cursor.clone()))
            .flatten();
        Ok((jobs.into_iter().map(|(_, info)| info).collect(), next))
    }

    /// Cancels a tenant's job. A queued one is cancelled here: its record by
    /// compare-and-set (a node that takes it meanwhile finds it cancelled), a Cancelled
    /// event after its last, and its work message removed, which frees its place. A
    /// running one is flagged for its node, which stops it within a step; this answers once
    /// its log ends (or with its state after a minute). An ended one stays as it
    /// ended.
    pub async fn cancel(
        &self,
        tenant: &str,
        id: &str,
        reason: &str,
    ) -> Result<JobState, EngineError> {
        let records = &self.broker.records;
        for _ in 0..RACES {
            let (mut record, revision) = records
                .read(tenant, id)
                .await?
                .ok_or_else(|| not_found(id))?;
            match record.info.state {
                JobState::Queued => {
                    // The log's end first: a node that takes the job meanwhile finds it
                    // ended (or is fenced by it), and the record never says Cancelled
                    // without its log saying so.
                    let cancelled = EventBody::Cancelled {
                        reason: reason.into(),
                    };
                    self.append_last(id, cancelled).await?;
                    record.info.state = JobState::Cancelled;
                    record.info.finished_unix_ms = Some(now_unix_ms());
                    // A node that took it meanwhile writes the record from the log's end.
                    let _ = records.update(&record, revision).await?;
                    if record.cover.is_some() {
                        inputs::remove_song(&self.broker.inputs, id).await;
                    }
                    if let Some(sequence) = record.work_sequence {
                        self.broker.queue.remove(sequence).await?;
                    }
                    return Ok(JobState::Cancelled);
                }
                JobState::Running => {
                    if !record.cancel_requested {
                        record.cancel_requested = true;
                        if records.update(&record, revision).await?.is_none() {
                            continue;
                        }
                    }
                    return self.wait_for_end(tenant, id).await;
                }
                ended => return Ok(ended),
            }
        }
        Err(raced("cancel it"))
    }

    /// Appends `body` after whatever the job's log holds now (for a job no node owns).
    async fn append_last(&self, id: &str, body: EventBody) -> Result<(), EngineError> {
        for _ in 0..RACES {
            let (expected, sequence) = match self.broker.log.last(id).await? {
                Some((at, last)) => (at, last.sequence + 1),
                None => (0, 1),
            };
            let event = JobEvent {
                sequence,
                time_unix_ms: now_unix_ms(),
                body: body.clone(),
            };
            if let Appended::Stored(_) = self
                .broker
                .log
                .append(id, expected, &event, "cancel")
                .await?
            {
                return Ok(());
            }
        }
        Err(raced("end its log"))
    }

    /// The state a running job ends in, once its log ends; its record's state after
    /// [`CANCEL_WAIT`].
    async fn wait_for_end(&self, tenant: &str, id: &str) -> Result<JobState, EngineError> {
        let after = self
            .broker
            .log
            .last(id)
            .await?
            .map_or(0, |(_, e)| e.sequence);
        let mut events = self.broker.log.replay(id, after.saturating_sub(1)).await?;
        let end = tokio::time::timeout(CANCEL_WAIT, async {
            while let Some(event) = events.next().await {
                if let Some(state) = crate::jobs::job::state_after(&event?.body) {
                    return Ok(Some(state));
                }
            }
            Ok::<_, EngineError>(None)
        })
        .await;
        match end {
            Ok(Ok(Some(state))) => Ok(state),
            Ok(Err(e)) => Err(e),
            _ => Ok(self.get(tenant, id).await?.state),
        }
    }

    /// A tenant's job's events after sequence `after` (0: all), then the live ones until
    /// it ends.
    pub async fn events(
        &self,
        tenant: &str,
        id: &str,
        after: u64,
    ) -> Result<BoxStream<'static, Result<JobEvent, EngineError>>, EngineError> {
        let info = self.get(tenant, id).await?;
        if after > info.last_sequence {
            return Err(EngineError::invalid(
                "after_sequence",
                format!(
                    "{after} is past the generation's last event, {}",
                    info.last_sequence
                ),
            ));
        }
        self.broker.log.replay(id, after).await
    }
}
