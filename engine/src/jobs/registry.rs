//! The job registry: one task owns every job (admission, the queue, event logs,
//! subscribers, cancel flags, expiry). Clients and workers talk to it by message, so no
//! lock guards job state and no client can stall a worker.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{mpsc as std_mpsc, Arc};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};

use super::command::{Admitted, Command, Feed, ReservationId, Submission};
use super::config::EngineConfig;
use super::event::{
    AudioPiece, EventBody, FailureCode, JobEvent, JobStage, JobState, ProgressReport,
};
use super::job::{
    new_job_id, now_unix_ms, pick_model, queued_progress, state_after, Job, JobInfo,
    WRITING_PERCENT,
};
use super::metrics::{state_label, Gauges, JobMetrics, LaneSlots};
use super::store::{kept_after_end, StoreHealth, StoreOp, StoreReport};
use super::tenants::Tenants;
use super::worker::{WorkItem, WorkerReport, Workers};
use crate::error::EngineError;
use crate::model::MusicModel;
use crate::model_info::ModelInfo;

/// Events a subscriber's channel holds; a subscriber further behind is dropped and
/// re-subscribes from its last sequence, so nobody waits for a slow client.
pub(crate) const SUBSCRIBER_CAPACITY: usize = 256;
/// Finished jobs are checked for expiry every quarter of the retention, within these bounds.
const SWEEP_BOUNDS: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(60));
/// Finished jobs whose run times inform the retry hint.
const RECENT_RUNS: usize = 16;
/// Why a job ends when the store cannot keep it (no path: clients see this).
const STORE_FAILED: &str =
    "the server could not store this generation (its disk is full or read-only); submit it again later";

/// An admission slot held for a submission to come.
struct Reserved {
    tenant: String,
    /// Where its job will run.
    lane: Lane,
    /// A slot was free for it when it was taken (else it holds a queue place).
    starts: bool,
}

/// Where a running job holds its slot: the worker pool (`max_running` jobs, one per
/// thread), or the batch of a model that batches (`max_batch` jobs stepped together). Jobs
/// start first come, first served within each lane.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Lane {
    Pool,
    Batch(String),
}

/// The registry's state; lives inside its task.
pub(crate) struct Registry {
    config: EngineConfig,
    models: Vec<Arc<dyn MusicModel>>,
    jobs: HashMap<String, Job>,
    /// (tenant, request id) -> job id.
    keys: HashMap<(String, String), String>,
    queue: VecDeque<String>,
    /// Running jobs (by id) and the lane each holds a slot in, until its worker is done.
    running: HashMap<String, Lane>,
    /// Queued or running jobs per tenant.
    unfinished: HashMap<String, usize>,
    /// Each tenant's job index, stored bytes and submission allowance.
    tenants: Tenants,
    /// Admission slots taken before a submission (covers decoding their upload), by tenant.
    reserved: HashMap<ReservationId, Reserved>,
    next_reservation: u64,
    work: Workers,
    store: std_mpsc::Sender<StoreOp>,
    /// Work items of queued jobs, taken when they start.
    pending: HashMap<String, WorkItem>,
    recent_runs: VecDeque<Duration>,
    draining: bool,
    drain_waiters: Vec<oneshot::Sender<()>>,
    /// The store's health, as its thread last reported it; published to the server.
    health: watch::Sender<StoreHealth>,
    /// Jobs submitted and ended, run times and first audio, per model.
    metrics: Arc<JobMetrics>,
}

/// A registry that goes away (its runtime is dropped: a server embedded in another program
/// stopped without draining) stops its running jobs within a step, so no worker computes
/// for nobody; the workers and the store thread then end as their channels close.
impl Drop for Registry {
    fn drop(&mut self) {
        for job in self.jobs.values() {
            job.cancel.store(true, Ordering::Relaxed);
        }
    }
}

impl Registry {
    pub(super) fn new(
        config: EngineConfig,
        models: Vec<Arc<dyn MusicModel>>,
        restored: Vec<Job>,
        work: Workers,
        store: std_mpsc::Sender<StoreOp>,
        health: watch::Sender<StoreHealth>,
        metrics: Arc<JobMetrics>,
    ) -> Self {
        let tenants = Tenants::new(
            config.max_stored_jobs_per_tenant,
            config.max_stored_bytes_per_tenant,
            config.max_submits_per_minute,
        );
        let mut registry = Self {
            tenants,
            config,
            models,
            jobs: HashMap::new(),
            keys: HashMap::new(),
            queue: VecDeque::new(),
            running: HashMap::new(),
            unfinished: HashMap::new(),
            reserved: HashMap::new(),
            next_reservation: 0,
            work,
            store,
            pending: HashMap::new(),
            recent_runs: VecDeque::new(),
            draining: false,
            drain_waiters: Vec::new(),
            health,
            metrics,
        };
        for job in restored {
            let info = &job.info;
            registry
                .tenants
                .add_job(&info.tenant, info.created_unix_ms, &info.id);
            if let Some(result) = &info.result {
                registry.tenants.add_bytes(&info.tenant, result.audio_bytes);
            }
            if let Some(key) = &job.info.request_id {
                registry
                    .keys
                    .insert((job.info.tenant.clone(), key.clone()), job.info.id.clone());
            }
            registry.jobs.insert(job.info.id.clone(), job);
        }
        registry
    }

    /// Serves commands until every sender is gone.
    pub(super) async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        let every = (self.config.retention / 4).clamp(SWEEP_BOUNDS.0, SWEEP_BOUNDS.1);
        // The first tick is immediate: jobs that expired while the server was down go now.
        let mut sweep = tokio::time::interval(every);
        loop {
            tokio::select! {
                command = commands.recv() => match command {
                    Some(command) => self.handle(command),
                    None => return,
                },
                _ = sweep.tick() => self.expire(),
            }
        }
    }

    fn handle(&mut self, command: Command) {
        match command {
            Command::Submit { submission, reply } => {
                let _ = reply.send(self.submit(*submission));
            }
            Command::Subscribe {
                tenant,
                id,
                after,
                reply,
            } => {
                let _ = reply.send(self.subscribe(&tenant, &id, after));
            }
            Command::Get { tenant, id, reply } => {
                let _ = reply.send(self.job(&tenant, &id).map(|job| job.info.clone()));
            }
            Command::List {
                tenant,
                after,
                size,
                reply,
            } => {
                let (ids, next) = self.tenants.page(&tenant, after.as_ref(), size);
                let jobs = ids
                    .iter()
                    .filter_map(|id| self.jobs.get(id))
                    .map(|job| job.info.clone())
                    .collect();
                let _ = reply.send((jobs, next));
            }
            Command::Cancel {
                tenant,
                id,
                reason,
                reply,
            } => self.cancel(&tenant, &id, reason, reply),
            Command::Drain { reply } => {
                self.draining = true;
                for id in std::mem::take(&mut self.queue) {
                    self.pending.remove(&id);
                    self.end(
                        &id,
                        EventBody::Cancelled {
                            reason: "the server is shutting down".into(),
                        },
                    );
                }
                if self.running.is_empty() {
                    let _ = reply.send(());
                } else {
                    self.drain_waiters.push(reply);
                }
            }
            Command::Gauges { reply } => {
                let _ = reply.send(self.gauges());
            }
            Command::Flush { reply } => {
                let _ = self.store.send(StoreOp::Barrier(reply));
            }
            Command::Reserve {
                tenant,
                model,
                reply,
            } => {
                let reservation = self
                    .model(Some(&model))
                    .map(|model| self.lane(model))
                    .and_then(|lane| Ok((self.admit(&tenant, &lane)?, lane)))
                    .map(|(starts, lane)| {
                        self.next_reservation += 1;
                        let id = ReservationId(self.next_reservation);
                        self.reserved.insert(
                            id,
                            Reserved {
                                tenant,
                                lane,
                                starts,
                            },
                        );
                        id
                    });
                let _ = reply.send(reservation);
            }
            Command::Release { id } => {
                self.reserved.remove(&id);
            }
            Command::Store(StoreReport::Persisted(id)) => {
                if let Some(job) = self.jobs.get_mut(&id) {
                    if job.info.state.is_terminal() && !job.store_failed {
                        job.log = Vec::new();
                        job.log_on_disk = true;
                    }
                }
            }
            Command::Store(StoreReport::WriteFailed(id)) => self.on_store_failure(&id),
            Command::Store(StoreReport::Health(health)) => {
                self.health.send_replace(health);
            }
            Command::Worker { id, report } => self.on_report(&id, report),
        }
    }

    /// A tenant's job; another tenant's id is as unknown as a made-up one.
    fn job(&self, tenant: &str, id: &str) -> Result<&Job, EngineError> {
        self.jobs
            .get(id)
            .filter(|job| job.info.tenant == tenant)
            .ok_or_else(|| EngineError::NotFound(format!("no generation with id `{id}`")))
    }

    fn submit(&mut self, submission: Submission) -> Result<Admitted, EngineError> {
        if let Some(key) = &submission.request_id {
            let key = (submission.tenant.clone(), key.clone());
            if let Some(existing) = self.keys.get(&key).and_then(|id| self.jobs.get(id)) {
                let info = &existing.info;
                // A job that was cancelled or cut off by a restart may be submitted again
                // under its key; any other keeps answering for it.
                let retryable = info.state == JobState::Cancelled
                    || matches!(info.failure, Some((FailureCode::Interrupted, _)));
                if !retryable {
                    if info.fingerprint != submission.fingerprint {
                        return Err(EngineError::AlreadyExists(format!(
                            "request_id `{}` was used for a request with other parameters \
                             (generation {})",
                            key.1, info.id
                        )));
                    }
                    return Ok(Admitted {
                        id: info.id.clone(),
                        existing: true,
                    });
                }
            }
        }
        let model = Arc::clone(self.model(submission.model.as_deref())?);
        let lane = self.lane(&model);
        let reserved = submission
            .reservation
            .is_some_and(|id| self.reserved.remove(&id).is_some());
        let starts_now = if reserved || submission.cluster_id.is_some() {
            // The slot was counted when it was taken, or the cluster admitted the job.
            self.refuse_if_draining()?;
            self.starts_now(&lane)
        } else {
            self.admit(&submission.tenant, &lane)?
        };
        let request = submission
            .request
            .validate(&self.config.limits, model.info())?;
        crate::audio::check_sample_format(submission.format, request.sample_format)?;
        let id = match &submission.cluster_id {
            Some(id) => {
                self.forget_ended_run(id)?;
                id.clone()
            }
            None => new_job_id()?,
        };
        let queue_position = if starts_now {
            0
        } else {
            self.queue.len() as u32 + 1
        };
        let info = JobInfo {
            id: id.clone(),
            tenant: submission.tenant.clone(),
            kind: submission.kind,
            model: model.info().id.clone(),
            prompt: request.prompt.clone(),
            request_id: submission.request_id.clone(),
            fingerprint: submission.fingerprint,
            state: JobState::Queued,
            progress: queued_progress(queue_position),
            result: None,
            failure: None,
            created_unix_ms: now_unix_ms(),
            finished_unix_ms: None,
            last_sequence: 0,
        };
        let span = tracing::info_span!(
            "job",
            job = %id,
            tenant = %info.tenant,
            model = %info.model,
            node = %self.config.node,
        );
        span.in_scope(|| tracing::info!(queue_position, "admitted"));
        self.metrics.submitted(&info.model);
        let item = WorkItem {
            id: id.clone(),
            model,
            request,
            format: submission.format,
            cancel: Arc::default(),
            span: span.clone(),
        };
        let mut job = Job::new(info);
        job.span = span;
        job.cancel = Arc::clone(&item.cancel);
        job.frames = item.request.frames as u32;
        let model_id = job.info.model.clone();
        self.tenants
            .add_job(&job.info.tenant, job.info.created_unix_ms, &id);
        self.jobs.insert(id.clone(), job);
        *self
            .unfinished
            .entry(submission.tenant.clone())
            .or_default() += 1;
        if let Some(key) = submission.request_id {
            self.keys.insert((submission.tenant, key), id.clone());
        }
        self.save(&id);
        self.append(
            &id,
            EventBody::Accepted {
                queue_position,
                model: model_id,
            },
        );
        if starts_now {
            self.start(item);
        } else {
            self.append(&id, EventBody::Progress(queued_progress(queue_position)));
            self.pending.insert(id.clone(), item);
            self.queue.push_back(id.clone());
        }
        Ok(Admitted {
            id,
            existing: false,
        })
    }

    /// Makes room for another run of a cluster's job here: an earlier run that ended is
    /// forgotten (the cluster keeps the job); one still running refuses the new run.
    fn forget_ended_run(&mut self, id: &str) -> Result<(), EngineError> {
        let Some(job) = self.jobs.get(id) else {
            return Ok(());
        };
        if !job.info.state.is_terminal() {
            return Err(EngineError::AlreadyExists(format!(
                "generation {id} is still running on this node"
            )));
        }
        if let Some(job) = self.jobs.remove(id) {
            let info = job.info;
            let bytes = info.result.as_ref().map_or(0, |r| r.audio_bytes);
            self.tenants
                .remove_job(&info.tenant, info.created_unix_ms, &info.id, bytes);
        }
        let _ = self.store.send(StoreOp::Delete(id.to_string()));
        Ok(())
    }

    /// The lane `model`'s jobs run in.
    fn lane(&self, model: &Arc<dyn MusicModel>) -> Lane {
        if self.work.batches(model) {
            Lane::Batch(model.info().id.clone())
        } else {
            Lane::Pool
        }
    }

    /// Jobs that run at once in a lane.
    fn capacity(&self, lane: &Lane) -> usize {
        match lane {
            Lane::Pool => self.config.max_running.max(1),
            Lane::Batch(_) => self.config.max_batch.max(1),
        }
    }

    /// Slots of a lane no running job holds.
    fn free_slots(&self, lane: &Lane) -> usize {
        let running = self.running.values().filter(|l| *l == lane).count();
        self.capacity(lane).saturating_sub(running)
    }

    /// Whether a job for `lane` would start at once: no job waits for that lane, and a
    /// slot is free that no reservation told its job it would start in.
    fn starts_now(&self, lane: &Lane) -> bool {
        let waiting = self.queue.iter().any(|id| {
            self.pending
                .get(id)
                .is_some_and(|item| self.lane(&item.model) == *lane)
        });
        let starting = self
            .reserved
            .values()
            .filter(|r| r.starts && r.lane == *lane)
            .count();
        !waiting && starting < self.free_slots(lane)
    }

    fn refuse_if_draining(&self) -> Result<(), EngineError> {
        if self.draining {
            return Err(EngineError::Unavailable(
                "the server is shutting down; submit to another instance or retry later".into(),
            ));
        }
        Ok(())
    }

    /// Whether a job from `tenant` is admitted now: `Ok(true)` if it would start at once,
    /// `Ok(false)` if it would wait in the queue. Reserved slots count as waiting jobs. An
    /// admission takes one submission from the tenant's allowance.
    fn admit(&mut self, tenant: &str, lane: &Lane) -> Result<bool, EngineError> {
        self.refuse_if_draining()?;
        let health = *self.health.borrow();
        if health.unwritable {
            return Err(EngineError::Unavailable(
                "the server cannot store results now (its disk is full or read-only); retry \
                 later or submit to another instance"
                    .into(),
            ));
        }
        if health.low_on_space {
            return Err(EngineError::ResourceExhausted {
                message: format!(
                    "the server's disk has less than {} MiB free (min_free_bytes)",
                    self.config.min_free_bytes >> 20
                ),
                retry_after: self.config.retry_after,
            });
        }
        let reserved = self
            .reserved
            .values()
            .filter(|r| r.tenant == tenant)
            .count();
        let unfinished = self.unfinished.get(tenant).copied().unwrap_or(0) + reserved;
        if unfinished >= self.config.max_jobs_per_tenant {
            return Err(EngineError::ResourceExhausted {
                message: format!(
                    "this token has {unfinished} unfinished generations, the limit \
                     (max_jobs_per_tenant)"
                ),
                retry_after: self.retry_hint(),
            });
        }
        // Reservations made while a slot was free hold it; the rest count as waiting.
        let starts_now = self.starts_now(lane);
        let starting = self.reserved.values().filter(|r| r.starts).count();
        let waiting = self.queue.len() + (self.reserved.len() - starting);
        if !starts_now && waiting >= self.config.max_queued {
            return Err(EngineError::ResourceExhausted {
                message: format!("the queue is full ({waiting} waiting, the limit max_queued)"),
                retry_after: self.retry_hint(),
            });
        }
        let (jobs, retention) = (&self.jobs, self.config.retention);
        self.tenants.admit(tenant, reserved, |tenant| {
            oldest_expiry(jobs, tenant, retention)
        })?;
        Ok(starts_now)
    }

    fn model(&self, id: Option<&str>) -> Result<&Arc<dyn MusicModel>, EngineError> {
        let infos: Vec<&ModelInfo> = self.models.iter().map(|m| m.info()).collect();
        let index = pick_model(&infos, id, self.config.default_model.as_deref())?;
        Ok(&self.models[index])
    }

    /// A guess at when a slot frees: the recent mean run time per running slot.
    fn retry_hint(&self) -> Duration {
        if self.recent_runs.is_empty() {
            return self.config.retry_after;
        }
        let mean = self.recent_runs.iter().sum::<Duration>() / self.recent_runs.len() as u32;
        let waiting = self.queue.len() as u32 / self.config.max_running.max(1) as u32;
        (mean * (waiting + 1)).clamp(Duration::from_secs(1), Duration::from_secs(600))
    }

    fn start(&mut self, item: WorkItem) {
        let Some(job) = self.jobs.get_mut(&item.id) else {
            return;
        };
        job.info.state = JobState::Running;
        job.started = Some(Instant::now());
        job.span.in_scope(|| tracing::info!("running"));
        let starting = ProgressReport {
            stage: JobStage::Encoding,
            frames_total: job.frames,
            ..queued_progress(0)
        };
        let id = item.id.clone();
        self.running.insert(id.clone(), self.lane(&item.model));
        self.save(&id);
        self.append(&id, EventBody::Progress(starting));
        if !self.work.send(item) {
            self.on_report(
                &id,
                WorkerReport::Finished(Err(EngineError::Internal(
                    "no worker thread is running".into(),
                ))),
            );
        }
    }

    /// Starts queued jobs, in order, wherever their lane has a free slot, and tells the
    /// rest their new place.
    fn dispatch(&mut self) {
        let mut index = 0;
        while index < self.queue.len() {
            let id = &self.queue[index];
            let Some(item) = self.pending.get(id) else {
                self.queue.remove(index);
                continue;
            };
            if self.free_slots(&self.lane(&item.model)) == 0 {
                index += 1;
                continue;
            }
            let id = self.queue.remove(index).unwrap_or_default();
            if let Some(item) = self.pending.remove(&id) {
                self.start(item);
            }
        }
        self.announce_positions();
    }

    fn subscribe(&mut self, tenant: &str, id: &str, after: u64) -> Result<Feed, EngineError> {
        self.job(tenant, id)?;
        let Some(job) = self.jobs.get_mut(id) else {
            return Err(EngineError::NotFound(format!(
                "no generation with id `{id}`"
            )));
        };
        if after > job.info.last_sequence {
            return Err(EngineError::invalid(
                "after_sequence",
                format!(
                    "{after} is past the generation's last event, {}",
                    job.info.last_sequence
                ),
            ));
        }
        let (tx, rx) = mpsc::channel(SUBSCRIBER_CAPACITY);
        let ended = job.info.state.is_terminal();
        if job.log_on_disk {
            return Ok(Feed {
                events: rx,
                to_the_end: true,
                kind: job.info.kind,
                from_disk: true,
            });
        }
        let start = job.first_after(after);
        let backlog = &job.log[start..];
        let fits = backlog.len() <= SUBSCRIBER_CAPACITY;
        for event in backlog.iter().take(SUBSCRIBER_CAPACITY) {
            // Cannot fail: the channel is new and holds SUBSCRIBER_CAPACITY events.
            let _ = tx.try_send(Arc::clone(event));
        }
        if fits && !ended {
            job.subscribers.push(tx);
        }
        Ok(Feed {
            events: rx,
            to_the_end: fits && ended,
            kind: job.info.kind,
            from_disk: false,
        })
    }

    fn cancel(
        &mut self,
        tenant: &str,
        id: &str,
        reason: String,
        reply: oneshot::Sender<Result<JobState, EngineError>>,
    ) {
        let state = match self.job(tenant, id) {
            Ok(job) => job.info.state,
            Err(e) => {
                let _ = reply.send(Err(e));
                return;
            }
        };
        match state {
            JobState::Queued => {
                self.queue.retain(|queued| queued != id);
                self.pending.remove(id);
                self.end(id, EventBody::Cancelled { reason });
                let _ = reply.send(Ok(JobState::Cancelled));
                self.announce_positions();
            }
            JobState::Running => {
                let Some(job) = self.jobs.get_mut(id) else {
                    return;
                };
                job.cancel.store(true, Ordering::Relaxed);
                let stage = job.info.progress.stage;
                if matches!(stage, JobStage::Decoding | JobStage::Writing) {
                    // No step loop checks the flag any more: the job ends now, and the
                    // worker's result (it skips storing it) only frees the slot.
                    self.end(id, EventBody::Cancelled { reason });
                    let _ = reply.send(Ok(JobState::Cancelled));
                } else {
                    job.cancel_reason.get_or_insert(reason);
                    job.cancel_waiters.push(reply);
                }
            }
            done => {
                let _ = reply.send(Ok(done));
            }
        }
    }

    /// Tells every waiting job whose place in line changed its new place.
    fn announce_positions(&mut self) {
        let waiting: Vec<String> = self.queue.iter().cloned().collect();
        for (i, id) in waiting.iter().enumerate() {
            let position = i as u32 + 1;
            if self.jobs.get(id).map(|j| j.info.progress.queue_position) != Some(position) {
                self.append(id, EventBody::Progress(queued_progress(position)));
            }
        }
    }

    fn on_report(&mut self, id: &str, report: WorkerReport) {
        let Some(job) = self.jobs.get_mut(id) else {
            // Cancelled while it decoded, then expired before its worker returned.
            if matches!(report, WorkerReport::Finished(_)) {
                self.running.remove(id);
                self.after_run();
            }
            return;
        };
        if job.info.state.is_terminal() {
            // Cancelled while it decoded or wrote: the worker is done with it now.
            if matches!(report, WorkerReport::Finished(_)) {
                self.running.remove(id);
                self.after_run();
            }
            return;
        }
        match report {
            WorkerReport::Progress(progress) => {
                let report = job.progress_for(progress);
                self.append(id, EventBody::Progress(report));
            }
            WorkerReport::Chunk(chunk) => self.append(id, EventBody::AudioChunk(chunk)),
            WorkerReport::Writing => {
                let report = job.progress_at(JobStage::Writing, WRITING_PERCENT);
                self.append(id, EventBody::Progress(report));
            }
            WorkerReport::Finished(outcome) => {
                self.running.remove(id);
                // A job the store failed cannot complete, whatever the model did.
                let outcome = if job.store_failed {
                    Err(EngineError::Unavailable(STORE_FAILED.into()))
                } else {
                    outcome
                };
                if let Some(started) = job.started {
                    if self.recent_runs.len() == RECENT_RUNS {
                        self.recent_runs.pop_front();
                    }
                    self.recent_runs.push_back(started.elapsed());
                }
                let reason = job.cancel_reason.clone();
                match outcome {
                    Ok(result) => {
                        let piece = self.config.audio_piece_bytes.max(1) as u64;
                        let total = result.audio_bytes;
                        let mut offset = 0;
                        while offset < total {
                            let len = piece.min(total - offset);
                            self.append(
                                id,
                                EventBody::AudioPiece(AudioPiece {
                                    offset,
                                    data: Vec::new(),
                                    len,
                                    total_bytes: total,
                                    format: result.format,
                                    last: offset + len == total,
                                }),
                            );
                            offset += len;
                        }
                        if let Some(job) = self.jobs.get(id) {
                            let done = job.progress_at(JobStage::Writing, 100.0);
                            self.append(id, EventBody::Progress(done));
                        }
                        self.end(id, EventBody::Completed(result));
                    }
                    Err(EngineError::Cancelled) => self.end(
                        id,
                        EventBody::Cancelled {
                            reason: reason.unwrap_or_else(|| "cancelled".into()),
                        },
                    ),
                    Err(e) => {
                        let code = match e {
                            EngineError::InvalidArgument { .. } => FailureCode::InvalidArgument,
                            _ => FailureCode::Internal,
                        };
                        if e.is_internal() {
                            job.span.in_scope(|| tracing::warn!("failed: {e}"));
                        }
                        if matches!(e, EngineError::Output { .. }) {
                            // The audio could not be stored: is the store still writable?
                            let _ = self.store.send(StoreOp::CheckHealth);
                        }
                        self.end(
                            id,
                            EventBody::Failed {
                                code,
                                message: e.public_message(),
                            },
                        );
                    }
                }
                self.after_run();
            }
        }
    }

    /// A worker is free: wakes drain waiters once none runs, and starts the next job.
    fn after_run(&mut self) {
        if self.draining && self.running.is_empty() {
            for waiter in self.drain_waiters.drain(..) {
                let _ = waiter.send(());
            }
        }
        self.dispatch();
    }

    /// A write of job `id` failed: its log stays in memory (the store will not report it
    /// persisted), and an unfinished job ends Failed: at once if queued, when its worker
    /// stops if running.
    fn on_store_failure(&mut self, id: &str) {
        let Some(job) = self.jobs.get_mut(id) else {
            return;
        };
        job.store_failed = true;
        match job.info.state {
            JobState::Queued => {
                self.queue.retain(|queued| queued != id);
                self.pending.remove(id);
                self.end(
                    id,
                    EventBody::Failed {
                        code: FailureCode::Internal,
                        message: STORE_FAILED.into(),
                    },
                );
                self.announce_positions();
            }
            JobState::Running => job.cancel.store(true, Ordering::Relaxed),
            _ => {}
        }
    }

    /// Appends an event to a job's log, persists it and hands it to every subscriber.
    fn append(&mut self, id: &str, body: EventBody) {
        let Some(job) = self.jobs.get_mut(id) else {
            return;
        };
        job.info.last_sequence += 1;
        if let EventBody::Progress(report) = &body {
            job.info.progress = report.clone();
        }
        if matches!(body, EventBody::AudioChunk(_) | EventBody::Completed(_)) && !job.heard {
            job.heard = true;
            let waited = job.admitted.elapsed();
            self.metrics.first_audio(&job.info.model, waited);
        }
        let event = Arc::new(JobEvent {
            sequence: job.info.last_sequence,
            time_unix_ms: now_unix_ms(),
            body,
        });
        let _ = self
            .store
            .send(StoreOp::Event(id.to_string(), Arc::clone(&event)));
        job.subscribers
            .retain(|tx| tx.try_send(Arc::clone(&event)).is_ok());
        job.log.push(event);
    }

    /// Appends a terminal event and closes the job: subscribers end, previews are dropped,
    /// cancel calls are answered and the record is stored.
    fn end(&mut self, id: &str, body: EventBody) {
        let Some(state) = state_after(&body) else {
            return;
        };
        if let Some(job) = self.jobs.get_mut(id) {
            if let Some(count) = self.unfinished.get_mut(&job.info.tenant) {
                *count = count.saturating_sub(1);
                if *count == 0 {
                    self.unfinished.remove(&job.info.tenant);
                }
            }
            job.info.take_end(&body, now_unix_ms());
            if let EventBody::Completed(result) = &body {
                self.tenants.add_bytes(&job.info.tenant, result.audio_bytes);
            }
            let info = &job.info;
            job.span
                .in_scope(|| tracing::info!(state = state_label(state), "ended"));
            self.metrics.ended(&info.model, state);
            if let (EventBody::Completed(result), Some(started)) = (&body, job.started) {
                let model = &info.model;
                self.metrics
                    .finished(model, started.elapsed(), result.duration_s);
            }
        }
        self.append(id, body);
        if let Some(job) = self.jobs.get_mut(id) {
            job.subscribers.clear();
            job.log.retain(|e| kept_after_end(e));
            for waiter in job.cancel_waiters.drain(..) {
                let _ = waiter.send(Ok(state));
            }
        }
        let _ = self.store.send(StoreOp::Close(id.to_string()));
        self.save(id);
    }

    /// Jobs by state, the queue and each lane's slots, as held now.
    fn gauges(&self) -> Gauges {
        let states = [
            JobState::Queued,
            JobState::Running,
            JobState::Completed,
            JobState::Failed,
            JobState::Cancelled,
        ];
        let jobs = states
            .map(|state| {
                let count = self.jobs.values().filter(|j| j.info.state == state).count();
                (state_label(state), count)
            })
            .to_vec();
        let mut lanes = vec![Lane::Pool];
        for model in &self.models {
            if let lane @ Lane::Batch(_) = self.lane(model) {
                lanes.push(lane);
            }
        }
        let slots = lanes
            .into_iter()
            .map(|lane| LaneSlots {
                busy: self.running.values().filter(|l| **l == lane).count(),
                total: self.capacity(&lane),
                lane: match lane {
                    Lane::Pool => "pool".into(),
                    Lane::Batch(model) => model,
                },
            })
            .collect();
        let waiting_reservations = self.reserved.values().filter(|r| !r.starts).count();
        Gauges {
            jobs,
            queue_depth: self.queue.len() + waiting_reservations,
            slots,
            store_writable: !self.health.borrow().unwritable,
        }
    }

    fn save(&self, id: &str) {
        if let Some(job) = self.jobs.get(id) {
            let _ = self.store.send(StoreOp::Record(Box::new(job.info.clone())));
        }
    }

    /// Forgets finished jobs older than the retention, on disk too.
    fn expire(&mut self) {
        let cutoff = now_unix_ms() - self.config.retention.as_millis() as i64;
        let expired: Vec<String> = self
            .jobs
            .values()
            .filter(|job| job.info.finished_unix_ms.is_some_and(|t| t < cutoff))
            .map(|job| job.info.id.clone())
            .collect();
        for id in expired {
            if let Some(job) = self.jobs.remove(&id) {
                let info = job.info;
                let bytes = info.result.as_ref().map_or(0, |r| r.audio_bytes);
                self.tenants
                    .remove_job(&info.tenant, info.created_unix_ms, &info.id, bytes);
                if let Some(key) = info.request_id {
                    self.keys.remove(&(info.tenant, key));
                }
            }
            let _ = self.store.send(StoreOp::Delete(id));
        }
    }
}

/// How long until the tenant's oldest finished job expires (and frees its stored quota).
fn oldest_expiry(
    jobs: &HashMap<String, Job>,
    tenant: &str,
    retention: Duration,
) -> Option<Duration> {
    let oldest = jobs
        .values()
        .filter(|job| job.info.tenant == tenant)
        .filter_map(|job| job.info.finished_unix_ms)
        .min()?;
    let expires = oldest.saturating_add(retention.as_millis() as i64);
    let left = expires.saturating_sub(now_unix_ms()).max(1000);
    Some(Duration::from_millis(left as u64))
}
