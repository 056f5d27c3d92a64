//! The event vocabulary of a job's log: what a client streaming a job receives, in order,
//! each event numbered by its sequence within the job.

use serde::{Deserialize, Serialize};

use crate::audio::AudioFormat;

/// Whether a job makes music from text or covers a song.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobKind {
    /// Text-to-music.
    Generation,
    /// A cover of an uploaded song.
    Cover,
}

/// Where a job is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobState {
    /// Waiting for a worker.
    Queued,
    /// A worker runs it.
    Running,
    /// Finished; the audio is stored.
    Completed,
    /// Ended with an error.
    Failed,
    /// Cancelled by a client (or by a dropped stream that asked for it).
    Cancelled,
}

impl JobState {
    /// Whether the job has ended (no more events follow).
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Completed | Self::Failed | Self::Cancelled)
    }
}

/// What a job is doing, as clients see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobStage {
    /// Waiting for a worker.
    Queued,
    /// Reading the prompt (and the song, for covers).
    Encoding,
    /// Model steps.
    Generating,
    /// Tokens to audio.
    Decoding,
    /// Encoding and storing the final file.
    Writing,
}

/// A progress report. `percent` never decreases within a job and reaches 100 only in the
/// report that precedes [`EventBody::Completed`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProgressReport {
    /// 0 to 100.
    pub percent: f32,
    /// What the job is doing.
    pub stage: JobStage,
    /// Audio frames (model steps) done.
    pub frames_done: u32,
    /// Audio frames (model steps) in total; 0 while unknown.
    pub frames_total: u32,
    /// Estimated seconds until completion, once there is a basis for it.
    pub eta_s: Option<f64>,
    /// While queued, the place in line (1 = next to start); 0 once running.
    pub queue_position: u32,
}

/// The settings a job ran with, defaults filled in.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ResolvedParams {
    /// The prompt as run (trimmed).
    pub prompt: String,
    /// Top-k (0 = no limit).
    pub top_k: u32,
    /// Top-p (0 = off).
    pub top_p: f32,
    /// Temperature.
    pub temperature: f32,
    /// Classifier-free guidance scale.
    pub guidance_scale: f32,
    /// The seed used.
    pub seed: u64,
    /// Audio frames generated.
    pub frames: u32,
    /// What the model read from the prompt (genre, tempo, key, ...).
    pub understood: Vec<(String, String)>,
}

/// A finished job's result.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobResult {
    /// Length of the audio.
    pub duration_s: f64,
    /// Samples per second.
    pub sample_rate: u32,
    /// Channels.
    pub channels: u32,
    /// The model that made it.
    pub model: String,
    /// The settings used.
    pub params: ResolvedParams,
    /// The stored file's container.
    pub format: AudioFormat,
    /// The stored file's size.
    pub audio_bytes: u64,
}

/// Why a job failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FailureCode {
    /// A request field (named in the message) was out of range, found only while running
    /// (e.g. the prompt's token count, an unreadable song).
    InvalidArgument,
    /// The model or the store failed.
    Internal,
    /// The server stopped while the job ran.
    Interrupted,
}

/// One event of a job's log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobEvent {
    /// 1, 2, 3, ... within the job; never reused.
    pub sequence: u64,
    /// When the engine recorded it, in milliseconds since the Unix epoch.
    pub time_unix_ms: i64,
    /// What happened.
    pub body: EventBody,
}

/// What happened.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum EventBody {
    /// The job was admitted.
    Accepted {
        /// 0 = started at once; n = n-th in line.
        queue_position: u32,
        /// The model that runs it.
        model: String,
    },
    /// Progress.
    Progress(ProgressReport),
    /// Playable audio while the job runs. Previews are transient: a finished job's log no
    /// longer holds them (the final audio supersedes them), so a replay skips their numbers.
    AudioChunk(PcmChunk),
    /// A piece of the stored final file. The log holds its place; the bytes are read from
    /// the store when the event is delivered.
    AudioPiece(AudioPiece),
    /// The job finished.
    Completed(JobResult),
    /// The job failed.
    Failed {
        /// Why.
        code: FailureCode,
        /// What happened, in words.
        message: String,
    },
    /// The job was cancelled.
    Cancelled {
        /// Who or what cancelled it.
        reason: String,
    },
}

impl EventBody {
    /// Whether this event ends the job's log.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            Self::Completed(_) | Self::Failed { .. } | Self::Cancelled { .. }
        )
    }
}

/// 16-bit little-endian interleaved PCM placed in the output.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PcmChunk {
    /// Index of its first frame in the output.
    pub start_frame: u64,
    /// Samples per second.
    pub sample_rate: u32,
    /// Interleaved channels.
    pub channels: u32,
    /// The samples; not persisted (previews are transient).
    #[serde(skip)]
    pub pcm_s16le: Vec<u8>,
}

/// A piece of the final file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AudioPiece {
    /// Byte offset in the file.
    pub offset: u64,
    /// The bytes; empty in the log, filled in when the event is delivered.
    #[serde(skip)]
    pub data: Vec<u8>,
    /// Bytes in this piece.
    pub len: u64,
    /// Size of the whole file.
    pub total_bytes: u64,
    /// The file's container.
    pub format: AudioFormat,
    /// Whether this is the file's last piece.
    pub last: bool,
}
