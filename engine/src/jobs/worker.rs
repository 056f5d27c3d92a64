//! Worker threads: each takes a job, runs the model's step loop on its own thread (candle
//! is synchronous; the async runtime never computes), encodes and stores the audio, and
//! reports every step back to the registry. Models that batch run on their own batch
//! threads instead ([`super::batch`]); [`Workers`] sends each job where its model runs.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::AtomicBool;
use std::sync::{mpsc, Arc, Mutex};

use super::batch::spawn_batch;
use super::event::{JobResult, PcmChunk, ResolvedParams};
use super::metrics::JobMetrics;
use super::store::Store;
use crate::audio::{encode_audio, to_i16, AudioChunk, AudioFormat};
use crate::error::EngineError;
use crate::model::MusicModel;
use crate::request::ValidatedRequest;
use crate::run::{generate_timed, GenerationOutput, Progress, Update};

/// A job handed to a worker.
pub(crate) struct WorkItem {
    /// The job's id.
    pub id: String,
    /// The model to run.
    pub model: Arc<dyn MusicModel>,
    /// The validated request.
    pub request: ValidatedRequest,
    /// The final file's container.
    pub format: AudioFormat,
    /// Set when the job is cancelled; checked before every step.
    pub cancel: Arc<AtomicBool>,
    /// The job's span, entered on every thread that works on it.
    pub span: tracing::Span,
}

/// What a worker tells the registry about a job.
pub(crate) enum WorkerReport {
    /// A model progress report.
    Progress(Progress),
    /// A preview of the audio.
    Chunk(PcmChunk),
    /// The audio is being encoded and stored.
    Writing,
    /// The job ended.
    Finished(Result<JobResult, EngineError>),
}

/// Where a worker's reports go: called on the worker's thread with the job's id.
pub(crate) type ReportTo = Arc<dyn Fn(&str, WorkerReport) + Send + Sync>;

/// Where running jobs go: a model that batches has its own batch thread
/// ([`super::batch`]); the jobs of the other models share a pool of worker threads, one job
/// each.
pub(crate) struct Workers {
    pool: mpsc::Sender<WorkItem>,
    batches: Vec<(Arc<dyn MusicModel>, mpsc::Sender<WorkItem>)>,
}

impl Workers {
    /// Starts `pool` worker threads, and a batch of at most `max_batch` jobs for each model
    /// that batches; every report of every job goes to `reports`, and every step's time
    /// to `metrics`.
    pub(crate) fn spawn(
        models: &[Arc<dyn MusicModel>],
        pool: usize,
        max_batch: usize,
        store: Store,
        reports: ReportTo,
        metrics: Arc<JobMetrics>,
    ) -> std::io::Result<Self> {
        let mut batches = Vec::new();
        for model in models.iter().filter(|m| m.batches()) {
            let work = spawn_batch(
                Arc::clone(model),
                max_batch,
                store.clone(),
                Arc::clone(&reports),
                Arc::clone(&metrics),
            )?;
            batches.push((Arc::clone(model), work));
        }
        let pool = spawn_pool(pool, store, reports, metrics)?;
        Ok(Self { pool, batches })
    }

    /// Whether `model`'s jobs run in a batch (else on the pool).
    pub(crate) fn batches(&self, model: &Arc<dyn MusicModel>) -> bool {
        self.batches.iter().any(|(m, _)| Arc::ptr_eq(m, model))
    }

    /// Hands a job to the threads that run its model; false if they are gone.
    pub(crate) fn send(&self, item: WorkItem) -> bool {
        let work = self
            .batches
            .iter()
            .find(|(model, _)| Arc::ptr_eq(model, &item.model))
            .map_or(&self.pool, |(_, work)| work);
        work.send(item).is_ok()
    }
}

/// Starts `count` worker threads taking jobs from the returned channel.
fn spawn_pool(
    count: usize,
    store: Store,
    reports: ReportTo,
    metrics: Arc<JobMetrics>,
) -> std::io::Result<mpsc::Sender<WorkItem>> {
    let (tx, rx) = mpsc::channel::<WorkItem>();
    let rx = Arc::new(Mutex::new(rx));
    for n in 0..count {
        let rx = Arc::clone(&rx);
        let store = store.clone();
        let reports = Arc::clone(&reports);
        let metrics = Arc::clone(&metrics);
        std::thread::Builder::new()
            .name(format!("son1k-worker-{n}"))
            .spawn(move || loop {
                // The lock is held only while waiting for the next job.
                let item = match rx.lock() {
                    Ok(rx) => rx.recv(),
                    Err(_) => return,
                };
                let Ok(item) = item else { return };
                run_item(item, &store, &reports, &metrics);
            })?;
    }
    Ok(tx)
}

/// Runs one job to its end and reports it. A panic in the model fails the job, not the
/// worker.
fn run_item(item: WorkItem, store: &Store, reports: &ReportTo, metrics: &JobMetrics) {
    let _job = item.span.enter();
    let report = |report: WorkerReport| reports(&item.id, report);
    let outcome = catch_unwind(AssertUnwindSafe(|| run_job(&item, store, &report, metrics)))
        .unwrap_or_else(|panic| Err(panicked(panic.as_ref())));
    report(WorkerReport::Finished(outcome));
}

/// The error a panic in a model becomes: the job fails, the thread goes on.
pub(super) fn panicked(panic: &(dyn std::any::Any + Send)) -> EngineError {
    let what = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into());
    EngineError::Internal(format!("the model panicked: {what}"))
}

fn run_job(
    item: &WorkItem,
    store: &Store,
    report: &dyn Fn(WorkerReport),
    metrics: &JobMetrics,
) -> Result<JobResult, EngineError> {
    let model = &item.model.info().id;
    let output = generate_timed(
        item.model.as_ref(),
        &item.request,
        &item.cancel,
        &mut |update| match update {
            Update::Progress(p) => report(WorkerReport::Progress(p)),
            Update::Chunk(chunk) => report(WorkerReport::Chunk(to_pcm(&chunk))),
        },
        &mut |elapsed| metrics.step(model, elapsed),
    )?;
    store_output(item, output, store, report)
}

/// Encodes and stores a finished job's audio, and says what it made. A cancel during the
/// decode or the encoding ends the job with nothing stored.
pub(super) fn store_output(
    item: &WorkItem,
    output: GenerationOutput,
    store: &Store,
    report: &dyn Fn(WorkerReport),
) -> Result<JobResult, EngineError> {
    let cancelled = || item.cancel.load(std::sync::atomic::Ordering::Relaxed);
    if cancelled() {
        return Err(EngineError::Cancelled);
    }
    report(WorkerReport::Writing);
    let bytes = encode_audio(&output.audio, item.format, item.request.sample_format)?;
    if cancelled() {
        return Err(EngineError::Cancelled);
    }
    let path = store.audio_path(&item.id, item.format);
    store
        .write_audio(&item.id, item.format, &bytes)
        .map_err(|e| EngineError::Output {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
    if cancelled() {
        // Cancelled while it was written: the file belongs to no result.
        let _ = std::fs::remove_file(&path);
        return Err(EngineError::Cancelled);
    }
    let request = &output.request;
    Ok(JobResult {
        duration_s: output.audio.duration_s(),
        sample_rate: output.audio.sample_rate,
        channels: output.audio.channels.len() as u32,
        model: item.model.info().id.clone(),
        params: ResolvedParams {
            prompt: request.prompt.clone(),
            top_k: request.sampling.top_k as u32,
            top_p: request.sampling.top_p,
            temperature: request.sampling.temperature,
            guidance_scale: request.guidance_scale,
            seed: request.seed,
            frames: request.frames as u32,
            understood: output.understood,
        },
        format: item.format,
        audio_bytes: bytes.len() as u64,
    })
}

/// A preview as 16-bit interleaved PCM, the form clients play.
pub(super) fn to_pcm(chunk: &AudioChunk) -> PcmChunk {
    let audio = &chunk.audio;
    let mut pcm = Vec::with_capacity(audio.frames() * audio.channels.len() * 2);
    for i in 0..audio.frames() {
        for channel in &audio.channels {
            pcm.extend_from_slice(&to_i16(channel[i]).to_le_bytes());
        }
    }
    PcmChunk {
        start_frame: chunk.start_frame as u64,
        sample_rate: audio.sample_rate,
        channels: audio.channels.len() as u32,
        pcm_s16le: pcm,
    }
}
