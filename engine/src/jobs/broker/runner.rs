//! A node's runner: takes jobs from the cluster's queue while the node has a free slot and
//! runs each on the node's own engine, under the cluster's id. Its events go to the job's
//! log on the broker, numbered after the events already there and fenced by the log's last
//! sequence: a node that lost the job (paused past its lease) is refused at its next write,
//! stops the job here and never acks it. While a job runs, a heartbeat keeps its lease, and
//! a cancel another node sets on its record stops it here. Its audio goes to the object
//! store before the events that announce it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::Semaphore;

use super::inputs;
use super::log::Appended;
use super::queue::Lease;
use super::records::Record;
use super::RACES;
use super::{Broker, BrokerConfig};
use crate::error::EngineError;
use crate::jobs::command::Submission;
use crate::jobs::event::{EventBody, FailureCode, JobEvent, JobState};
use crate::jobs::handle::Engine;
use crate::jobs::job::{now_unix_ms, state_after};

/// How long one wait for work lasts before the runner asks again.
const TAKE_WAIT: Duration = Duration::from_secs(1);
/// How long a stopping node waits for its runs to give their jobs back.
const HAND_BACK_WAIT: Duration = Duration::from_secs(5);
/// The pause after the broker failed to hand out work.
const RETRY_PAUSE: Duration = Duration::from_millis(500);

/// What a node needs to run the cluster's jobs.
#[derive(Clone)]
pub(crate) struct Runner {
    pub(crate) broker: Broker,
    pub(crate) config: BrokerConfig,
    /// The node's own engine (its local registry, workers and store).
    pub(crate) engine: Engine,
    pub(crate) node: String,
    /// Set when the node drains: no more work is taken.
    pub(crate) stopping: Arc<AtomicBool>,
    /// Set when the node hands its unfinished jobs back as it stops: runs write nothing
    /// more and give their job back to the queue.
    pub(crate) handing_back: Arc<AtomicBool>,
    /// The jobs this node runs now, by id, with their tenants.
    pub(crate) held: Arc<Mutex<HashMap<String, String>>>,
}

/// What a node may do with a job it took from the queue.
enum Taken {
    /// Run it: this node owns it now.
    Run(Box<Record>),
    /// Nothing to run (ended, removed, or ended here now).
    Done(Outcome),
}

/// How a run ended for the node.
enum Outcome {
    /// The job is done with (ended, or nothing to run): its message may go.
    Done,
    /// Another node owns the job now: its message is not this node's to ack.
    Lost,
    /// The node stops before the job ended: the job goes back to the queue at once, for
    /// another node, without counting this run.
    HandBack,
}

impl Runner {
    /// The runner of node `node`, running the cluster's jobs on `engine` (the node's own,
    /// without a cluster side).
    pub(crate) fn new(broker: Broker, config: BrokerConfig, engine: Engine, node: &str) -> Self {
        Self {
            broker,
            config,
            engine,
            node: node.to_string(),
            stopping: Arc::default(),
            handing_back: Arc::default(),
            held: Arc::default(),
        }
    }

    /// Takes and runs jobs, at most `slots` at once, until the process ends.
    pub(crate) async fn run(self, slots: usize) {
        let slots = Arc::new(Semaphore::new(slots.max(1)));
        loop {
            let Ok(permit) = Arc::clone(&slots).acquire_owned().await else {
                return;
            };
            if self.stopping.load(Ordering::Relaxed) {
                return;
            }
            match self.broker.queue.take(TAKE_WAIT).await {
                Ok(Some(lease)) => {
                    let runner = self.clone();
                    tokio::spawn(async move {
                        runner.run_lease(lease).await;
                        drop(permit);
                    });
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(node = %self.node, "cannot take work: {e}");
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
            }
        }
    }

    /// Runs one taken job, keeping its lease meanwhile, and acks it once it is done with.
    async fn run_lease(&self, lease: Lease) {
        let lease = Arc::new(lease);
        let heartbeat = tokio::spawn({
            let (lease, every) = (Arc::clone(&lease), self.config.ack_wait / 3);
            async move {
                loop {
                    tokio::time::sleep(every).await;
                    // A failed extension is retried at the next beat; a lost lease shows
                    // at the next write, which is fenced.
                    let _ = lease.extend().await;
                }
            }
        });
        let order = &lease.order;
        self.held_jobs()
            .insert(order.job.clone(), order.tenant.clone());
        let outcome = self
            .drive(&order.tenant, &order.job, lease.stream_sequence)
            .await;
        heartbeat.abort();
        match outcome {
            Ok(Outcome::HandBack) => self.hand_back(&lease).await,
            Ok(Outcome::Done) => {
                if let Err(e) = lease.finish().await {
                    tracing::warn!(job = %order.job, node = %self.node, "{e}");
                }
            }
            Ok(Outcome::Lost) => {
                tracing::warn!(job = %order.job, node = %self.node, "another node owns the job now: stopped it here");
            }
            // Not acked: the job goes to a node (maybe this one) after the ack wait. Its
            // run here stops, since nothing it does would reach the cluster.
            Err(e) => {
                tracing::warn!(job = %order.job, node = %self.node, "the run stopped: {e}");
                let reason = "this node lost the broker during the run";
                let _ = self
                    .engine
                    .local_cancel(&order.tenant, &order.job, reason)
                    .await;
            }
        }
        self.held_jobs().remove(&order.job);
    }

    /// The jobs this node runs now (a poisoned lock is taken as it is: the map stays
    /// whole, each change being one insert or remove).
    fn held_jobs(&self) -> std::sync::MutexGuard<'_, HashMap<String, String>> {
        self.held
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Gives every job this node runs back to the queue, at once, for other nodes: for a
    /// node that stops before its runs ended (its drain timed out). Waits up to
    /// [`HAND_BACK_WAIT`] for the runs to let go.
    pub(crate) async fn hand_back_all(&self) {
        self.stopping.store(true, Ordering::Relaxed);
        self.handing_back.store(true, Ordering::Relaxed);
        let held: Vec<(String, String)> = self.held_jobs().clone().into_iter().collect();
        for (job, tenant) in &held {
            let reason = "this node is stopping; another node runs the job";
            let _ = self.engine.local_cancel(tenant, job, reason).await;
        }
        let deadline = tokio::time::Instant::now() + HAND_BACK_WAIT;
        while !self.held_jobs().is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Gives one job back: its record forgets this run, and its message is redelivered to
    /// another node now rather than after the lease.
    async fn hand_back(&self, lease: &Lease) {
        let order = &lease.order;
        if let Err(e) = self.forget_run(&order.tenant, &order.job).await {
            tracing::warn!(job = %order.job, node = %self.node, "{e}");
        }
        match lease.hand_back().await {
            Ok(()) => {
                tracing::info!(job = %order.job, node = %self.node, "handed the job back to the cluster")
            }
            Err(e) => tracing::warn!(job = %order.job, node = %self.node, "{e}"),
        }
    }

    /// Whether `body` ends the run only because this node stops (its drain cancelled a
    /// job it had not started), not because a client cancelled the job.
    async fn stopped_here(
        &self,
        tenant: &str,
        id: &str,
        body: &EventBody,
    ) -> Result<bool, EngineError> {
        if !matches!(body, EventBody::Cancelled { .. }) || !self.stopping.load(Ordering::Relaxed) {
            return Ok(false);
        }
        let record = self
            .patiently(|| self.broker.records.read(tenant, id))
            .await?;
        Ok(record.is_some_and(|(record, _)| !record.cancel_requested))
    }

    /// Takes this node's run out of the job's record (its owner, and the attempt it
    /// counted), unless another node owns it now or it ended.
    async fn forget_run(&self, tenant: &str, id: &str) -> Result<(), EngineError> {
        let node = self.node.as_str();
        let forgotten = self.broker.records.change(tenant, id, |record| {
            let ours = record.owner.as_deref() == Some(node) && !record.info.state.is_terminal();
            if ours {
                record.owner = None;
                record.attempt = record.attempt.saturating_sub(1);
            }
            ours
        });
        forgotten.await.map(|_| ())
    }

    /// Takes the job's record, runs it here and writes how it ended.
    async fn drive(&self, tenant: &str, id: &str, work: u64) -> Result<Outcome, EngineError> {
        let record = match self.take_ownership(tenant, id, work).await? {
            Taken::Run(record) => record,
            Taken::Done(outcome) => return Ok(outcome),
        };
        let (mut expected, mut next, mut percent) = self.patiently(|| self.tail(id)).await?;
        let writer = format!("{}.{}", self.node, record.attempt);
        let mut request = record.request.clone();
        if let Some(spec) = &record.cover {
            let limits = self.engine.limits();
            let cover = self
                .patiently(|| inputs::get_cover(&self.broker.inputs, id, spec, limits))
                .await;
            match cover {
                Ok(cover) => request.cover = Some(cover),
                Err(e @ EngineError::Unavailable(_)) => return Err(e),
                // Gone, or over this node's limits: no run of it can do better.
                Err(e) => {
                    let body = EventBody::Failed {
                        code: FailureCode::InvalidArgument,
                        message: e.to_string(),
                    };
                    return self.end(&record, expected, next, body).await;
                }
            }
        }
        let submission = Submission {
            tenant: tenant.to_string(),
            kind: record.info.kind,
            model: Some(record.info.model.clone()),
            request,
            format: record.format,
            request_id: None,
            fingerprint: record.info.fingerprint,
            reservation: None,
            cluster_id: Some(id.to_string()),
        };
        // A refusal here (a full disk, a run of it still going) is this node's, not the
        // job's: the job goes to a node after the lease, counting this attempt; while the
        // node stops, it goes back at once.
        if let Err(e) = self.engine.submit(submission).await {
            if self.stopping.load(Ordering::Relaxed) {
                return Ok(Outcome::HandBack);
            }
            return Err(e);
        }
        let mut local = self.engine.watch(tenant, id, 0).await?;
        let cancels = tokio::spawn(
            self.clone()
                .follow_cancel(tenant.to_string(), id.to_string()),
        );
        let ended = async {
            while let Some(event) = local.next().await {
                let event = event?;
                let body = match event.body {
                    // The cluster announced the job when it was submitted.
                    EventBody::Accepted { .. } => continue,
                    // A re-run starts its percent over: hold the highest already shown.
                    EventBody::Progress(mut report) => {
                        report.percent = report.percent.max(percent);
                        percent = report.percent;
                        EventBody::Progress(report)
                    }
                    EventBody::AudioPiece(mut piece) => {
                        if piece.offset == 0 {
                            let owner = self
                                .patiently(|| self.still_owner(tenant, id, record.attempt))
                                .await?;
                            if !owner {
                                let reason = "another node took the job over";
                                let _ = self.engine.local_cancel(tenant, id, reason).await;
                                return Ok(Outcome::Lost);
                            }
                            self.patiently(|| self.upload_audio(tenant, id)).await?;
                        }
                        piece.data = Vec::new();
                        EventBody::AudioPiece(piece)
                    }
                    other => other,
                };
                if self.handing_back.load(Ordering::Relaxed)
                    || self.stopped_here(tenant, id, &body).await?
                {
                    return Ok(Outcome::HandBack);
                }
                let terminal = body.is_terminal();
                let event = JobEvent {
                    sequence: next,
                    time_unix_ms: event.time_unix_ms,
                    body,
                };
                let appended = self
                    .patiently(|| self.broker.log.append(id, expected, &event, &writer))
                    .await?;
                match appended {
                    Appended::Stored(at) => (expected, next) = (at, next + 1),
                    Appended::Fenced => {
                        let reason = "another node took the job over";
                        let _ = self.engine.local_cancel(tenant, id, reason).await;
                        return Ok(Outcome::Lost);
                    }
                }
                if terminal {
                    self.patiently(|| self.write_end(tenant, id, &event))
                        .await?;
                    return Ok(Outcome::Done);
                }
            }
            Err(EngineError::Internal(
                "the node's job ended without its last event".into(),
            ))
        }
        .await;
        cancels.abort();
        ended
    }

    /// Makes this node the job's owner (one more attempt) unless it is done with: a job
    /// that ended (in its record, or in its log, whose end the record then takes), was
    /// removed, was cancelled while no node ran it, or has used its last attempt.
    async fn take_ownership(
        &self,
        tenant: &str,
        id: &str,
        work: u64,
    ) -> Result<Taken, EngineError> {
        let records = &self.broker.records;
        for _ in 0..RACES {
            let Some((mut record, revision)) = records.read(tenant, id).await? else {
                return Ok(Taken::Done(Outcome::Done));
            };
            if record.info.state.is_terminal() {
                // Ended where no run could clean up after it (cancelled while queued, say).
                if record.cover.is_some() {
                    inputs::remove_song(&self.broker.inputs, id).await;
                }
                return Ok(Taken::Done(Outcome::Done));
            }
            // An owner that wrote the end and stopped before its record: the log says how
            // it ended.
            if let Some((_, last)) = self.broker.log.last(id).await? {
                if last.body.is_terminal() {
                    self.write_end(tenant, id, &last).await?;
                    return Ok(Taken::Done(Outcome::Done));
                }
            }
            let (expected, next, _) = self.tail(id).await?;
            if record.cancel_requested {
                let body = EventBody::Cancelled {
                    reason: "cancelled".into(),
                };
                return Ok(Taken::Done(self.end(&record, expected, next, body).await?));
            }
            if record.attempt >= self.config.max_attempts {
                let body = EventBody::Failed {
                    code: FailureCode::Interrupted,
                    message: format!(
                        "the generation was interrupted {} times (its nodes stopped); \
                         submit it again",
                        record.attempt
                    ),
                };
                return Ok(Taken::Done(self.end(&record, expected, next, body).await?));
            }
            record.info.state = JobState::Running;
            record.owner = Some(self.node.clone());
            record.attempt += 1;
            record.work_sequence = Some(work);
            if records.update(&record, revision).await?.is_some() {
                tracing::info!(job = %id, tenant, node = %self.node, attempt = record.attempt, "took the job");
                return Ok(Taken::Run(Box::new(record)));
            }
        }
        Err(EngineError::Unavailable(
            "the job kept changing; retried later".into(),
        ))
    }

    /// Where the job's log stands: the stream sequence the next append expects, the next
    /// job sequence, and the highest percent shown so far.
    async fn tail(&self, id: &str) -> Result<(u64, u64, f32), EngineError> {
        let Some((at, last)) = self.broker.log.last(id).await? else {
            return Ok((0, 1, 0.0));
        };
        let mut percent = 0f32;
        let mut events = self.broker.log.replay(id, 0).await?;
        while let Some(event) = events.next().await {
            let event = event?;
            if let EventBody::Progress(report) = &event.body {
                percent = percent.max(report.percent);
            }
            if event.sequence >= last.sequence {
                break;
            }
        }
        Ok((at, last.sequence + 1, percent))
    }

    /// Ends a job this node does not run (cancelled before, or given up): its terminal
    /// event after the log's last, then its record.
    async fn end(
        &self,
        record: &Record,
        expected: u64,
        next: u64,
        body: EventBody,
    ) -> Result<Outcome, EngineError> {
        let event = JobEvent {
            sequence: next,
            time_unix_ms: now_unix_ms(),
            body,
        };
        let (tenant, id) = (&record.info.tenant, &record.info.id);
        let writer = format!("{}.end", self.node);
        match self
            .broker
            .log
            .append(id, expected, &event, &writer)
            .await?
        {
            Appended::Stored(_) => {
                self.write_end(tenant, id, &event).await?;
                Ok(Outcome::Done)
            }
            Appended::Fenced => Ok(Outcome::Lost),
        }
    }

    /// Writes a job's end into its record.
    async fn write_end(&self, tenant: &str, id: &str, last: &JobEvent) -> Result<(), EngineError> {
        let Some(state) = state_after(&last.body) else {
            return Ok(());
        };
        let ended = self.broker.records.change(tenant, id, |record| {
            record.info.take_end(&last.body, now_unix_ms());
            record.info.last_sequence = last.sequence;
            record.work_sequence = None;
            if state == JobState::Completed {
                record.info.progress.percent = 100.0;
            }
            true
        });
        let Some(record) = ended.await? else {
            return Ok(());
        };
        tracing::info!(job = %id, tenant, node = %self.node, state = ?state, "ended");
        // The job has ended whatever the accounting does: a failure here only leaves its
        // bytes uncounted, and says so.
        if let Some(result) = &record.info.result {
            let quotas = &self.broker.quotas;
            if let Err(e) = quotas.add_stored(tenant, id, result.audio_bytes).await {
                tracing::warn!(job = %id, tenant, "its audio was not counted: {e}");
            }
        }
        if record.cover.is_some() {
            inputs::remove_song(&self.broker.inputs, id).await;
        }
        Ok(())
    }

    /// `op` until it does not fail for want of the broker, or until twice the lease has
    /// passed: a run goes on through a broker restart (its events wait here, in order),
    /// and its writes stay fenced, so one that lost its lease meanwhile stops at the next.
    async fn patiently<T, F, Fut>(&self, mut op: F) -> Result<T, EngineError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, EngineError>>,
    {
        let deadline = tokio::time::Instant::now() + self.config.ack_wait * 2;
        loop {
            match op().await {
                Err(EngineError::Unavailable(why)) if tokio::time::Instant::now() < deadline => {
                    tracing::debug!(node = %self.node, "waiting for the broker: {why}");
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
                done => return done,
            }
        }
    }

    /// Whether this node's run is still the job's latest: checked before its audio goes
    /// to the cluster's store, which its fenced events cannot guard.
    async fn still_owner(&self, tenant: &str, id: &str, attempt: u32) -> Result<bool, EngineError> {
        let record = self.broker.records.read(tenant, id).await?;
        Ok(record.is_some_and(|(r, _)| {
            r.owner.as_deref() == Some(self.node.as_str()) && r.attempt == attempt
        }))
    }

    /// Copies a completed job's file from this node's store to the cluster's.
    async fn upload_audio(&self, tenant: &str, id: &str) -> Result<(), EngineError> {
        let audio = self.engine.audio(tenant, id).await?;
        let mut bytes = Vec::with_capacity(audio.total_bytes as usize);
        while (bytes.len() as u64) < audio.total_bytes {
            let left =
                usize::try_from(audio.total_bytes - bytes.len() as u64).unwrap_or(usize::MAX);
            let piece = self
                .engine
                .read_audio(&audio, bytes.len() as u64, left)
                .await?;
            if piece.is_empty() {
                break;
            }
            bytes.extend_from_slice(&piece);
        }
        self.broker
            .audio
            .put(id, &mut bytes.as_slice())
            .await
            .map(|_| ())
            .map_err(|e| super::unavailable("did not store a job's audio", e))
    }

    /// Stops the job here when a client anywhere asks to cancel it.
    async fn follow_cancel(self, tenant: String, id: String) {
        let Ok(mut changes) = self.broker.records.watch(&tenant, &id).await else {
            return;
        };
        // A cancel set before the watch began shows in the record as it is now.
        let now = self.broker.records.read(&tenant, &id).await.ok().flatten();
        if now.is_some_and(|(record, _)| record.cancel_requested) {
            let _ = self.engine.local_cancel(&tenant, &id, "cancelled").await;
            return;
        }
        while let Some(record) = changes.next().await {
            if record.cancel_requested {
                let _ = self.engine.local_cancel(&tenant, &id, "cancelled").await;
                return;
            }
        }
    }
}
