//! One job as the registry keeps it: its public record, its event log, its subscribers and
//! its cancel flag; and how a model's step counts become monotonic percentages and ETAs.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use super::event::{
    EventBody, FailureCode, JobEvent, JobKind, JobResult, JobStage, JobState, ProgressReport,
};
use crate::error::EngineError;
use crate::model_info::ModelInfo;
use crate::run::{Progress, Stage};

/// A job's state as clients poll it, and as the store keeps it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobInfo {
    /// The job's id.
    pub id: String,
    /// The tenant that submitted it (only that tenant sees it).
    pub tenant: String,
    /// Generation or cover.
    pub kind: JobKind,
    /// The model that runs it.
    pub model: String,
    /// The prompt as submitted (trimmed).
    pub prompt: String,
    /// The client's idempotency key, if it gave one.
    pub request_id: Option<String>,
    /// A digest of the request's parameters: the same key with other parameters is refused.
    pub fingerprint: u64,
    /// Where the job is in its life.
    pub state: JobState,
    /// The newest progress report.
    pub progress: ProgressReport,
    /// The result, once completed.
    pub result: Option<JobResult>,
    /// Why it failed, once failed.
    pub failure: Option<(FailureCode, String)>,
    /// When it was submitted, in milliseconds since the Unix epoch.
    pub created_unix_ms: i64,
    /// When it ended; `None` while it runs.
    pub finished_unix_ms: Option<i64>,
    /// The newest event's sequence.
    pub last_sequence: u64,
}

impl JobInfo {
    /// Records the end a terminal event says (its state, result or failure) at
    /// `finished_unix_ms`; `None`, changing nothing, for an event that is not an end.
    pub(crate) fn take_end(&mut self, body: &EventBody, finished_unix_ms: i64) -> Option<JobState> {
        let state = state_after(body)?;
        self.state = state;
        self.finished_unix_ms = Some(finished_unix_ms);
        match body {
            EventBody::Completed(result) => self.result = Some(result.clone()),
            EventBody::Failed { code, message } => self.failure = Some((*code, message.clone())),
            _ => {}
        }
        Some(state)
    }
}

/// The registry's view of a job. Only the registry task touches it.
pub(crate) struct Job {
    /// The public record.
    pub info: JobInfo,
    /// Every event so far (previews are dropped once the job ends); emptied once a
    /// finished job's log is on disk, where replays then read it.
    pub log: Vec<Arc<JobEvent>>,
    /// Whether the log lives only on disk.
    pub log_on_disk: bool,
    /// Live subscribers; a full or closed one is dropped and re-subscribes from its cursor.
    pub subscribers: Vec<mpsc::Sender<Arc<JobEvent>>>,
    /// Set to stop the job at its next step.
    pub cancel: Arc<AtomicBool>,
    /// Why it is being cancelled, once a cancel was asked for.
    pub cancel_reason: Option<String>,
    /// A write of this job to the store failed: it cannot complete, and its log stays in
    /// memory.
    pub store_failed: bool,
    /// Cancel calls waiting for the job to stop.
    pub cancel_waiters: Vec<oneshot::Sender<Result<JobState, EngineError>>>,
    /// When a worker started it.
    pub started: Option<Instant>,
    /// Audio frames the job makes, for progress reports.
    pub frames: u32,
    /// When it was admitted (or restored).
    pub admitted: Instant,
    /// Whether any audio of it has gone out yet (a preview or the final file).
    pub heard: bool,
    /// Its span: the job's id, tenant, model and node, entered wherever it is worked on.
    pub span: tracing::Span,
}

impl Job {
    /// A job just admitted.
    pub(super) fn new(info: JobInfo) -> Self {
        Self {
            info,
            log: Vec::new(),
            log_on_disk: false,
            subscribers: Vec::new(),
            cancel: Arc::new(AtomicBool::new(false)),
            cancel_reason: None,
            store_failed: false,
            cancel_waiters: Vec::new(),
            started: None,
            frames: 0,
            admitted: Instant::now(),
            heard: false,
            span: tracing::Span::none(),
        }
    }

    /// A job restored from the store (already ended; its log stays on disk).
    pub(super) fn restored(info: JobInfo) -> Self {
        let mut job = Self::new(info);
        job.log_on_disk = true;
        job
    }

    /// A job restored from the store whose log could not be written back: it is served
    /// from memory.
    pub(super) fn restored_in_memory(info: JobInfo, log: Vec<JobEvent>) -> Self {
        let mut job = Self::new(info);
        job.log = log.into_iter().map(Arc::new).collect();
        job
    }

    /// The index in the log of the first event after `sequence`.
    pub(super) fn first_after(&self, sequence: u64) -> usize {
        self.log.partition_point(|e| e.sequence <= sequence)
    }

    /// The progress report for a model's report, never below the previous percent.
    pub(super) fn progress_for(&self, progress: Progress) -> ProgressReport {
        let frames = self.frames;
        let steps_total = progress.steps_total.max(1);
        let done = progress.steps_done.min(steps_total);
        let (stage, percent) = match progress.stage {
            Stage::Encoding => (JobStage::Encoding, ENCODING_PERCENT),
            Stage::Generating => (
                JobStage::Generating,
                ENCODING_PERCENT
                    + (GENERATED_PERCENT - ENCODING_PERCENT) * done as f32 / steps_total as f32,
            ),
            Stage::Decoding => (JobStage::Decoding, DECODING_PERCENT),
        };
        let eta_s = match (progress.stage, self.started) {
            (Stage::Generating, Some(started)) if done > 0 => {
                let per_step = started.elapsed().as_secs_f64() / done as f64;
                Some(per_step * (steps_total - done) as f64)
            }
            _ => None,
        };
        ProgressReport {
            percent: percent.max(self.info.progress.percent),
            stage,
            frames_done: (done as u64 * frames as u64 / steps_total as u64) as u32,
            frames_total: frames,
            eta_s,
            queue_position: 0,
        }
    }

    /// The report for a stage without step counts (writing, completion).
    pub(super) fn progress_at(&self, stage: JobStage, percent: f32) -> ProgressReport {
        ProgressReport {
            percent: percent.max(self.info.progress.percent),
            stage,
            frames_done: self.info.progress.frames_total,
            frames_total: self.info.progress.frames_total,
            eta_s: None,
            queue_position: 0,
        }
    }
}

/// Percent reached once the prompt is encoded.
const ENCODING_PERCENT: f32 = 1.0;
/// Percent reached when the last model step is done.
const GENERATED_PERCENT: f32 = 95.0;
/// Percent while tokens become audio.
const DECODING_PERCENT: f32 = 96.0;
/// Percent while the file is encoded and stored.
pub(crate) const WRITING_PERCENT: f32 = 98.0;

/// The report of a job waiting in line.
pub(crate) fn queued_progress(queue_position: u32) -> ProgressReport {
    ProgressReport {
        percent: 0.0,
        stage: JobStage::Queued,
        frames_done: 0,
        frames_total: 0,
        eta_s: None,
        queue_position,
    }
}

/// The state a terminal event leaves a job in.
pub(crate) fn state_after(body: &EventBody) -> Option<JobState> {
    match body {
        EventBody::Completed(_) => Some(JobState::Completed),
        EventBody::Failed { .. } => Some(JobState::Failed),
        EventBody::Cancelled { .. } => Some(JobState::Cancelled),
        _ => None,
    }
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Whether `id` has the shape of a job id (it names a directory, so nothing else may).
pub(crate) fn is_job_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A fresh job id: 128 bits from the operating system's secure generator as 32 hex digits,
/// so an id says nothing about other jobs and cannot be guessed.
pub(crate) fn new_job_id() -> Result<String, EngineError> {
    let mut bits = [0u8; 16];
    getrandom::fill(&mut bits)
        .map_err(|e| EngineError::Internal(format!("the system's random generator failed: {e}")))?;
    Ok(bits.iter().map(|b| format!("{b:02x}")).collect())
}

/// Refuses a `field` that cannot be a job id, echoing at most its first characters.
pub fn check_job_id(field: &'static str, id: &str) -> Result<(), EngineError> {
    if is_job_id(id) {
        return Ok(());
    }
    Err(EngineError::invalid(
        field,
        format!(
            "`{}` is not a generation id (32 hexadecimal digits)",
            cut_short(id)
        ),
    ))
}

/// The index in `models` of the model a request names by `id`: when it names none, the
/// configured `default`, else the first. An unknown id is an invalid `model` listing the
/// models there are.
pub(crate) fn pick_model(
    models: &[&ModelInfo],
    id: Option<&str>,
    default: Option<&str>,
) -> Result<usize, EngineError> {
    let id = id.filter(|id| !id.is_empty()).or(default);
    match id {
        None => (!models.is_empty()).then_some(0),
        Some(id) => models.iter().position(|m| m.id == id),
    }
    .ok_or_else(|| {
        let known: Vec<&str> = models.iter().map(|m| m.id.as_str()).collect();
        EngineError::invalid(
            "model",
            format!(
                "`{}` is not a model of this server (it runs: {})",
                cut_short(id.unwrap_or("")),
                known.join(", ")
            ),
        )
    })
}

/// A client's value as an error message may echo it: its first 40 characters.
pub(crate) fn cut_short(value: &str) -> String {
    const SHOWN: usize = 40;
    match value.char_indices().nth(SHOWN) {
        Some((end, _)) => format!("{}...", &value[..end]),
        None => value.to_string(),
    }
}
