//! Worker threads: each takes a job, runs the model's step loop on its own thread (candle
//! is synchronous; the async runtime never computes), encodes and stores the audio, and
//! reports every step back to the registry.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::AtomicBool;
use std::sync::{mpsc, Arc, Mutex};

use super::event::{JobResult, PcmChunk, ResolvedParams};
use super::store::Store;
use crate::audio::{encode_audio, to_i16, AudioChunk, AudioFormat};
use crate::error::EngineError;
use crate::model::MusicModel;
use crate::request::ValidatedRequest;
use crate::run::{generate, Progress, Update};

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

/// Starts `count` worker threads taking jobs from the returned channel; every report of
/// every job goes to `reports`.
pub(crate) fn spawn_workers(
    count: usize,
    store: Store,
    reports: ReportTo,
) -> std::io::Result<mpsc::Sender<WorkItem>> {
    let (tx, rx) = mpsc::channel::<WorkItem>();
    let rx = Arc::new(Mutex::new(rx));
    for n in 0..count {
        let rx = Arc::clone(&rx);
        let store = store.clone();
        let reports = Arc::clone(&reports);
        std::thread::Builder::new()
            .name(format!("son1k-worker-{n}"))
            .spawn(move || loop {
                // The lock is held only while waiting for the next job.
                let item = match rx.lock() {
                    Ok(rx) => rx.recv(),
                    Err(_) => return,
                };
                let Ok(item) = item else { return };
                run_item(item, &store, &reports);
            })?;
    }
    Ok(tx)
}

/// Runs one job to its end and reports it. A panic in the model fails the job, not the
/// worker.
fn run_item(item: WorkItem, store: &Store, reports: &ReportTo) {
    let report = |report: WorkerReport| reports(&item.id, report);
    let outcome =
        catch_unwind(AssertUnwindSafe(|| run_job(&item, store, &report))).unwrap_or_else(|panic| {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            Err(EngineError::Internal(format!("the model panicked: {what}")))
        });
    report(WorkerReport::Finished(outcome));
}

fn run_job(
    item: &WorkItem,
    store: &Store,
    report: &dyn Fn(WorkerReport),
) -> Result<JobResult, EngineError> {
    let output = generate(
        item.model.as_ref(),
        &item.request,
        &item.cancel,
        &mut |update| match update {
            Update::Progress(p) => report(WorkerReport::Progress(p)),
            Update::Chunk(chunk) => report(WorkerReport::Chunk(to_pcm(&chunk))),
        },
    )?;
    // A cancel during the decode or the encoding ended the job already: store nothing.
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
fn to_pcm(chunk: &AudioChunk) -> PcmChunk {
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
