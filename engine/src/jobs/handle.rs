//! The engine's handle: what the server calls. Each call is a message to the registry
//! task; event streams re-subscribe by themselves when they fall behind, so a client sees
//! every event exactly once however slow it reads.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use futures_util::stream::BoxStream;
use tokio::sync::{mpsc, oneshot, watch};

use super::broker::cluster::Cluster;
use super::broker::fetched::FetchedAudio;
use super::broker::inputs::CoverSpec;
use super::broker::records::Record;
use super::broker::runner::Runner;
use super::broker::{Broker, BrokerConfig};
use super::command::{Admitted, Command, Feed, ReservationId, Submission};
use super::config::EngineConfig;
use super::decode_slots::DecodeSlots;
use super::event::{JobEvent, JobState};
use super::event_stream::{EventStream, Source};
use super::job::{new_job_id, now_unix_ms, pick_model, queued_progress, JobInfo};
use super::metrics::JobMetrics;
use super::registry::Registry;
use super::restore::restore;
use super::store::{read_range, Store, StoreHealth};
use super::tenants::ListCursor;
use super::worker::{ReportTo, Workers};
use crate::audio::AudioFormat;
use crate::cover::{load_song, Song};
use crate::error::EngineError;
use crate::limits::Limits;
use crate::metrics::Exposition;
use crate::model::MusicModel;
use crate::model_info::ModelInfo;

/// Commands the registry's inbox holds before senders wait.
const INBOX: usize = 1024;

/// A handle to the running engine; cheap to clone.
#[derive(Clone)]
pub struct Engine {
    commands: mpsc::Sender<Command>,
    pub(super) store: Store,
    models: Arc<Vec<ModelInfo>>,
    /// The configured default model's id.
    default_model: Option<String>,
    limits: Arc<Limits>,
    audio_piece_bytes: usize,
    /// Uploads decoded at once, overall and per tenant.
    decoding: DecodeSlots,
    /// Whether the store can take new work, as the registry last heard.
    health: watch::Receiver<StoreHealth>,
    /// What the registry and the model threads count.
    metrics: Arc<JobMetrics>,
    /// This node's name.
    node: String,
    /// Jobs this node runs at once: its pool and each batch.
    slots: usize,
    /// The retry hint of a refusal with nothing better to go on.
    retry_after: std::time::Duration,
    /// With a broker: the cluster this node answers for (every client call goes to it;
    /// the node's own registry runs the jobs its runner takes).
    cluster: Option<ClusterSide>,
}

/// A node's part in a cluster.
#[derive(Clone)]
struct ClusterSide {
    cluster: Cluster,
    broker: Broker,
    /// What takes the cluster's jobs onto this node.
    runner: Box<Runner>,
    /// Other nodes' audio this node serves, fetched once.
    fetched: Arc<FetchedAudio>,
}

/// How long a read of another node's audio waits for its copy from the broker.
const FETCH_WAIT: std::time::Duration = std::time::Duration::from_secs(120);

/// How often a node removes the fetched copies older than the retention.
const SWEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(600);

/// Removes old fetched copies now and then, off the async threads, for the life of the
/// process.
async fn sweep_fetched(fetched: Arc<FetchedAudio>) {
    loop {
        let sweeping = Arc::clone(&fetched);
        let _ = tokio::task::spawn_blocking(move || sweeping.sweep()).await;
        tokio::time::sleep(SWEEP_EVERY).await;
    }
}

/// Sets its flag when dropped: an abandoned request stops the work it started.
struct StopWhenDropped(Arc<AtomicBool>);

impl Drop for StopWhenDropped {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// An admission slot taken before a job is submitted; given back when dropped unless a
/// submission used it.
pub struct Reservation {
    /// `None` on a cluster's node, where the broker admits the job when it is submitted.
    id: Option<ReservationId>,
    commands: mpsc::Sender<Command>,
}

impl Reservation {
    /// What a [`Submission`] names to use this slot.
    pub fn id(&self) -> Option<ReservationId> {
        self.id
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let Some(id) = self.id else {
            return;
        };
        let release = Command::Release { id };
        if let Err(mpsc::error::TrySendError::Full(release)) = self.commands.try_send(release) {
            // A busy inbox: send it from a task rather than lose the slot.
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                let commands = self.commands.clone();
                runtime.spawn(async move { commands.send(release).await });
            }
        }
    }
}

/// A finished job's stored audio.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredAudio {
    /// The file's container.
    pub format: AudioFormat,
    /// Its size.
    pub total_bytes: u64,
    pub(super) id: String,
}

impl Engine {
    /// Starts the engine: restores stored jobs (a job that was running when the process
    /// stopped is marked failed, interrupted), starts the store thread, the workers and
    /// the registry task. Call inside a Tokio runtime. `models` must not be empty; the
    /// first is the default unless the configuration names another.
    pub fn start(
        config: EngineConfig,
        models: Vec<Arc<dyn MusicModel>>,
    ) -> Result<Self, EngineError> {
        if models.is_empty() {
            return Err(EngineError::Unsupported("the engine needs a model".into()));
        }
        let io_error = |e: std::io::Error| EngineError::Output {
            path: config.data_dir.display().to_string(),
            message: e.to_string(),
        };
        let store = Store::open(&config.data_dir);
        let restored = restore(&store);
        let (commands, inbox) = mpsc::channel(INBOX);
        let registry = commands.clone();
        let store_reports = move |report| {
            // The registry may be gone at shutdown: nothing to tell.
            let _ = registry.blocking_send(Command::Store(report));
        };
        let (store_tx, store_health) = store
            .spawn_writer(store_reports, config.min_free_bytes)
            .map_err(io_error)?;
        let (health_tx, health) = watch::channel(store_health);
        let registry = commands.clone();
        let worker_reports: ReportTo = Arc::new(move |id: &str, report| {
            // A closed channel means the registry is gone (shutdown): nothing to tell.
            let _ = registry.blocking_send(Command::Worker {
                id: id.to_string(),
                report,
            });
        });
        let metrics = Arc::new(JobMetrics::default());
        for model in &models {
            metrics.register(&model.info().id);
        }
        let work = Workers::spawn(
            &models,
            config.max_running.max(1),
            config.max_batch.max(1),
            store.clone(),
            worker_reports,
            Arc::clone(&metrics),
        )
        .map_err(io_error)?;
        let mut infos: Vec<ModelInfo> = models.iter().map(|m| m.info().clone()).collect();
        let default_model = config.default_model.clone();
        // Listed default first, so clients that show "the server's default" know which.
        let listed: Vec<&ModelInfo> = infos.iter().collect();
        if let Ok(default) = pick_model(&listed, None, default_model.as_deref()) {
            let info = infos.remove(default);
            infos.insert(0, info);
        }
        let limits = Arc::new(config.limits.clone());
        let audio_piece_bytes = config.audio_piece_bytes.max(1);
        let decoding = DecodeSlots::new(
            config.max_running.max(1),
            config.max_decodes_per_tenant.max(1),
            config.decode_wait,
        );
        let batching = models.iter().filter(|m| work.batches(m)).count();
        let slots = config.max_running.max(1) + config.max_batch.max(1) * batching;
        let (node, retry_after) = (config.node.clone(), config.retry_after);
        let registry = Registry::new(
            config,
            models,
            restored,
            work,
            store_tx,
            health_tx,
            Arc::clone(&metrics),
        );
        tokio::spawn(registry.run(inbox));
        Ok(Self {
            cluster: None,
            node,
            slots,
            retry_after,
            metrics,
            commands,
            store,
            models: Arc::new(infos),
            default_model,
            limits,
            audio_piece_bytes,
            decoding,
            health,
        })
    }

    /// Makes this node one of a cluster on the broker at `url`: client calls go to the
    /// cluster's shared queue, logs and records, and a runner takes the cluster's jobs onto
    /// this node's own engine while it has a free slot.
    pub async fn join_cluster(
        mut self,
        url: &str,
        config: BrokerConfig,
    ) -> Result<Self, EngineError> {
        let node = self.node.clone();
        let broker = Broker::connect(url, &node, &config).await?;
        let fetched = Arc::new(FetchedAudio::new(
            self.store.fetched_audio_dir(),
            config.retention,
        ));
        tokio::spawn(sweep_fetched(Arc::clone(&fetched)));
        let runner = Runner::new(broker.clone(), config, self.clone(), &node);
        tokio::spawn(runner.clone().run(self.slots));
        self.cluster = Some(ClusterSide {
            cluster: Cluster::new(broker.clone(), self.retry_after),
            broker,
            runner: Box::new(runner),
            fetched,
        });
        Ok(self)
    }

    /// The store's health as it changes: a server reports itself not serving while the
    /// store cannot write, and new jobs are refused meanwhile.
    pub fn store_health(&self) -> watch::Receiver<StoreHealth> {
        self.health.clone()
    }

    /// With a broker, whether this node reaches it now, as it changes: a node that lost
    /// its broker reports itself not serving and refuses submissions until it is back.
    pub fn broker_connected(&self) -> Option<watch::Receiver<bool>> {
        self.cluster
            .as_ref()
            .map(|side| side.broker.connected.clone())
    }

    /// The models this engine runs, the default first.
    pub fn models(&self) -> &[ModelInfo] {
        &self.models
    }

    /// The model a request's `id` names (empty: the default), as the job would run on.
    pub fn model(&self, id: &str) -> Result<&ModelInfo, EngineError> {
        let infos: Vec<&ModelInfo> = self.models.iter().collect();
        let index = pick_model(&infos, Some(id), self.default_model.as_deref())?;
        Ok(&self.models[index])
    }

    /// The request limits.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The largest piece of a final file in one event or message.
    pub fn audio_piece_bytes(&self) -> usize {
        self.audio_piece_bytes
    }

    /// Decodes `tenant`'s uploaded song to mono at `sample_rate` (the model's song rate)
    /// off the async runtime, within the upload limits, once a decode slot is free (see
    /// [`EngineConfig::decode_wait`]). The slot is held until the decode itself ends; if
    /// this future is dropped (the client went away) the decode stops at its next packet.
    pub async fn load_song(
        &self,
        tenant: &str,
        bytes: Vec<u8>,
        sample_rate: u32,
    ) -> Result<Arc<Song>, EngineError> {
        let slot = self.decoding.acquire(tenant).await?;
        let stop = Arc::new(AtomicBool::new(false));
        let _stop_when_dropped = StopWhenDropped(Arc::clone(&stop));
        let limits = Arc::clone(&self.limits);
        tokio::task::spawn_blocking(move || {
            let _slot = slot;
            load_song(&bytes, None, &limits, sample_rate, &stop).map(Arc::new)
        })
        .await
        .map_err(|e| EngineError::Internal(format!("song decoding stopped: {e}")))?
    }

    async fn ask<T>(
        &self,
        command: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, EngineError> {
        let (reply, answer) = oneshot::channel();
        let gone = || EngineError::Unavailable("the engine has stopped".into());
        self.commands
            .send(command(reply))
            .await
            .map_err(|_| gone())?;
        answer.await.map_err(|_| gone())
    }

    /// This node's job metrics in the Prometheus text format: jobs by state, the queue and
    /// the slots as the registry holds them now, and per model the jobs submitted and
    /// ended, step latency, real-time factor and first-audio latency since it started.
    pub async fn metrics(&self) -> Result<Exposition, EngineError> {
        let gauges = self.ask(|reply| Command::Gauges { reply }).await?;
        let mut doc = self.metrics.render(&gauges);
        if let Some(side) = &self.cluster {
            doc.family(
                "son1k_broker_connected",
                "1 while this node reaches its broker (0 while it reconnects: it refuses \
                 submissions and its health says NOT_SERVING).",
                crate::metrics::Kind::Gauge,
            );
            let connected = if *side.broker.connected.borrow() {
                1.0
            } else {
                0.0
            };
            doc.sample("son1k_broker_connected", &[], connected);
        }
        Ok(doc)
    }

    /// Admits a job (or finds the one its idempotency key already made).
    pub async fn submit(&self, submission: Submission) -> Result<Admitted, EngineError> {
        if let Some(side) = &self.cluster {
            let song = submission
                .request
                .cover
                .as_ref()
                .map(|c| Arc::clone(&c.song));
            let record = self.cluster_record(submission)?;
            return side.cluster.submit(record, song.as_deref()).await;
        }
        self.ask(|reply| Command::Submit {
            submission: Box::new(submission),
            reply,
        })
        .await?
    }

    /// A submission as the cluster keeps it: validated here (this node serves the same
    /// models as the others), its seed chosen, so whichever node runs it, and runs it
    /// again after a lost node, makes the same audio.
    fn cluster_record(&self, submission: Submission) -> Result<Record, EngineError> {
        let listed: Vec<&ModelInfo> = self.models.iter().collect();
        let model = pick_model(
            &listed,
            submission.model.as_deref(),
            self.default_model.as_deref(),
        )?;
        let model = &self.models[model];
        let validated = submission.request.validate(&self.limits, model)?;
        crate::audio::check_sample_format(submission.format, validated.sample_format)?;
        let mut request = submission.request;
        request.seed = Some(validated.seed);
        let cover = request.cover.take().as_ref().map(CoverSpec::of);
        let info = JobInfo {
            id: new_job_id()?,
            tenant: submission.tenant,
            kind: submission.kind,
            model: model.id.clone(),
            prompt: validated.prompt,
            request_id: submission.request_id,
            fingerprint: submission.fingerprint,
            state: JobState::Queued,
            progress: queued_progress(0),
            result: None,
            failure: None,
            created_unix_ms: now_unix_ms(),
            finished_unix_ms: None,
            last_sequence: 0,
        };
        Ok(Record {
            info,
            owner: None,
            attempt: 0,
            work_sequence: None,
            cancel_requested: false,
            request,
            format: submission.format,
            cover,
        })
    }

    /// The job's events after `after` (0 = all), then live ones until it ends.
    pub async fn watch(
        &self,
        tenant: &str,
        id: &str,
        after: u64,
    ) -> Result<EventStream, EngineError> {
        let (kind, source) = match &self.cluster {
            Some(side) => {
                let kind = side.cluster.get(tenant, id).await?.kind;
                let events = side.cluster.events(tenant, id, after).await?;
                let mut connection = side.broker.connected.clone();
                connection.mark_unchanged();
                (kind, Source::Cluster { events, connection })
            }
            None => {
                let feed = self.subscribe(tenant, id, after).await?;
                let kind = feed.kind;
                (
                    kind,
                    Source::Local {
                        feed,
                        from_disk: None,
                    },
                )
            }
        };
        Ok(EventStream::new(
            self.clone(),
            tenant,
            id,
            kind,
            source,
            after,
        ))
    }

    pub(super) async fn subscribe(
        &self,
        tenant: &str,
        id: &str,
        after: u64,
    ) -> Result<Feed, EngineError> {
        self.ask(|reply| Command::Subscribe {
            tenant: tenant.to_string(),
            id: id.to_string(),
            after,
            reply,
        })
        .await?
    }

    /// A job's current state.
    pub async fn get(&self, tenant: &str, id: &str) -> Result<JobInfo, EngineError> {
        if let Some(side) = &self.cluster {
            return side.cluster.get(tenant, id).await;
        }
        self.ask(|reply| Command::Get {
            tenant: tenant.to_string(),
            id: id.to_string(),
            reply,
        })
        .await?
    }

    /// Up to `size` of the tenant's jobs, newest first, after `after`; and where the next
    /// page starts, when there is one. A page costs its size, whatever the tenant stores.
    pub async fn list(
        &self,
        tenant: &str,
        after: Option<ListCursor>,
        size: usize,
    ) -> Result<(Vec<JobInfo>, Option<ListCursor>), EngineError> {
        if let Some(side) = &self.cluster {
            return side.cluster.list(tenant, after.as_ref(), size).await;
        }
        self.ask(|reply| Command::List {
            tenant: tenant.to_string(),
            after,
            size,
            reply,
        })
        .await
    }

    /// Cancels a job; answers once it has stopped (within one model step), with the state
    /// it ended in (a job that finished first stays completed).
    pub async fn cancel(
        &self,
        tenant: &str,
        id: &str,
        reason: &str,
    ) -> Result<JobState, EngineError> {
        if let Some(side) = &self.cluster {
            return side.cluster.cancel(tenant, id, reason).await;
        }
        self.local_cancel(tenant, id, reason).await
    }

    /// [`Self::cancel`] of a job of this node's own registry.
    pub(crate) async fn local_cancel(
        &self,
        tenant: &str,
        id: &str,
        reason: &str,
    ) -> Result<JobState, EngineError> {
        self.ask(|reply| Command::Cancel {
            tenant: tenant.to_string(),
            id: id.to_string(),
            reason: reason.to_string(),
            reply,
        })
        .await?
    }

    /// Takes an admission slot for a job from `tenant` before expensive work such as
    /// decoding an upload, so that work is only done for a job that will be admitted. The
    /// slot counts against the queue and the tenant's limits until a [`Submission`] names
    /// it or the reservation is dropped. `model` is the id of the model the job will run on.
    pub async fn reserve(&self, tenant: &str, model: &str) -> Result<Reservation, EngineError> {
        // A cluster admits the job when it is submitted, atomically on the broker; the
        // node's decode slots still bound the decoding before it.
        if self.cluster.is_some() {
            return Ok(Reservation {
                id: None,
                commands: self.commands.clone(),
            });
        }
        let id = self
            .ask(|reply| Command::Reserve {
                tenant: tenant.to_string(),
                model: model.to_string(),
                reply,
            })
            .await??;
        Ok(Reservation {
            id: Some(id),
            commands: self.commands.clone(),
        })
    }

    /// Stops admitting jobs (and, in a cluster, taking them), cancels queued ones and waits
    /// for running ones to end.
    pub async fn drain(&self) {
        if let Some(side) = &self.cluster {
            side.runner.stopping.store(true, Ordering::Relaxed);
        }
        let _ = self.ask(|reply| Command::Drain { reply }).await;
    }

    /// On a cluster's node that stops: gives the jobs it still runs back to the queue, so
    /// other nodes run them at once rather than after their lease. Nothing to do without
    /// a broker.
    pub async fn hand_back_cluster_jobs(&self) {
        if let Some(side) = &self.cluster {
            side.runner.hand_back_all().await;
        }
    }

    /// Waits until every event and record so far is on disk (before the process exits).
    pub async fn flush(&self) {
        let _ = self.ask(|reply| Command::Flush { reply }).await;
    }

    /// A completed job's stored audio.
    pub async fn audio(&self, tenant: &str, id: &str) -> Result<StoredAudio, EngineError> {
        let info = self.get(tenant, id).await?;
        match (info.state, info.result) {
            (JobState::Completed, Some(result)) => Ok(StoredAudio {
                format: result.format,
                total_bytes: result.audio_bytes,
                id: info.id,
            }),
            (state, _) => Err(EngineError::NotReady(format!(
                "generation `{id}` is {state:?}, not completed; its audio exists once it \
                 completes"
            ))),
        }
    }

    /// Reads `len` bytes at `offset` of a job's stored audio, off the async runtime.
    pub async fn read_audio(
        &self,
        audio: &StoredAudio,
        offset: u64,
        len: usize,
    ) -> Result<Vec<u8>, EngineError> {
        if let Some(side) = &self.cluster {
            let fetching = side.fetched.local_copy(
                &side.broker.audio,
                &audio.id,
                audio.format,
                audio.total_bytes,
            );
            let path = tokio::time::timeout(FETCH_WAIT, fetching)
                .await
                .map_err(|_| {
                    EngineError::Unavailable(format!(
                        "the broker did not give the audio of generation `{}` within {} s",
                        audio.id,
                        FETCH_WAIT.as_secs()
                    ))
                })??;
            let len = len.min(self.audio_piece_bytes);
            let read = tokio::task::spawn_blocking({
                let path = path.clone();
                move || read_range(&path, offset, len)
            });
            return read
                .await
                .map_err(|e| EngineError::Internal(format!("reading audio stopped: {e}")))?
                .map_err(|e| EngineError::Output {
                    path: path.display().to_string(),
                    message: e.to_string(),
                });
        }
        let store = self.store.clone();
        let (id, format) = (audio.id.clone(), audio.format);
        let len = len.min(self.audio_piece_bytes);
        tokio::task::spawn_blocking(move || {
            store
                .read_audio(&id, format, offset, len)
                .map_err(|e| match e.kind() {
                    std::io::ErrorKind::NotFound => EngineError::NotFound(format!(
                        "the audio of generation `{id}` is gone (it expired)"
                    )),
                    _ => EngineError::Output {
                        path: store.audio_path(&id, format).display().to_string(),
                        message: e.to_string(),
                    },
                })
        })
        .await
        .map_err(|e| EngineError::Internal(format!("reading audio stopped: {e}")))?
    }
}

/// How long a stream of a cluster job waits for a lost broker to come back before it ends
/// with UNAVAILABLE (the client may then re-attach from its last event).
const RESUME_WINDOW: std::time::Duration = std::time::Duration::from_secs(60);

impl Engine {
    /// A cluster job's events after `after`, read again once the broker answers, within
    /// [`RESUME_WINDOW`]; `why` is what stopped the last reading.
    pub(super) async fn resume_cluster_events(
        &self,
        tenant: &str,
        id: &str,
        after: u64,
        why: String,
    ) -> Result<BoxStream<'static, Result<JobEvent, EngineError>>, EngineError> {
        let Some(side) = &self.cluster else {
            return Err(EngineError::Unavailable(why));
        };
        tracing::warn!(job = %id, "a stream lost the broker ({why}); resuming after event {after}");
        let deadline = tokio::time::Instant::now() + RESUME_WINDOW;
        loop {
            match side.cluster.events(tenant, id, after).await {
                Err(EngineError::Unavailable(why)) if tokio::time::Instant::now() < deadline => {
                    tracing::debug!(job = %id, "the broker is not back yet: {why}");
                    tokio::time::sleep(super::broker::RECONNECT_PAUSE / 4).await;
                }
                other => return other,
            }
        }
    }
}
