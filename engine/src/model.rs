//! The model interface of the engine: what a model tells about itself, and the step API a
//! job runs through (start, one step at a time, finish), never a closed loop.

use crate::audio::{Audio, AudioChunk};
use crate::cover::CoverMode;
use crate::error::EngineError;
use crate::request::ValidatedRequest;

/// What a loaded model can do, for validation and for clients.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelInfo {
    /// Stable identifier (the checkpoint directory name, or a built-in name).
    pub id: String,
    /// Which family the model belongs to.
    pub kind: ModelKind,
    /// Where it runs (`cpu`, `cuda:0`, ...).
    pub device: String,
    /// Whether jobs stream playable audio while they run ([`Session::take_preview`]).
    pub streams_audio: bool,
    /// Output sample rate in Hz.
    pub sample_rate: u32,
    /// Output channels.
    pub channels: usize,
    /// Audio frames per second of generated audio.
    pub frame_rate: usize,
    /// The most frames one job can make (MusicGen generates past its window in windows, so
    /// only the engine's duration limit bounds it).
    pub max_frames: usize,
    /// Decoder passes beyond the frame count (MusicGen's delay columns minus one), so a
    /// step count maps to frames: `frames = steps - extra_steps`.
    pub extra_steps: usize,
    /// Size of the token vocabulary (the upper bound of `top_k`).
    pub vocab_size: usize,
    /// Default sampling when the request leaves it unset.
    pub defaults: SamplingDefaults,
    /// How the model covers a song, the default first; empty if it makes no covers.
    pub cover_modes: Vec<CoverMode>,
    /// The sample rate the model reads songs at (they are decoded to it).
    pub song_rate: u32,
    /// The longest continuation clip, in frames (one window; 0 without continuation).
    pub max_clip_frames: usize,
}

impl ModelInfo {
    /// Whether the model makes covers of an input song.
    pub fn covers(&self) -> bool {
        !self.cover_modes.is_empty()
    }

    /// The cover modes as a list for messages: `melody, continuation`.
    pub fn cover_mode_names(&self) -> String {
        let names: Vec<&str> = self.cover_modes.iter().map(|m| m.name()).collect();
        if names.is_empty() {
            "none".into()
        } else {
            names.join(", ")
        }
    }
}

/// The model families the engine runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelKind {
    /// The built-in synth (no weights).
    Synth,
    /// A MusicGen checkpoint.
    MusicGen,
}

/// A model's default sampling settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SamplingDefaults {
    /// Top-k (0 = off).
    pub top_k: usize,
    /// Top-p (0 = off).
    pub top_p: f32,
    /// Temperature (0 = greedy).
    pub temperature: f32,
    /// Classifier-free guidance scale.
    pub guidance_scale: f32,
}

/// A model the engine can run. Implementations are immutable and shared; each job's state
/// lives in its [`Session`].
pub trait MusicModel: Send + Sync {
    /// What the model is and its limits.
    fn info(&self) -> &ModelInfo;

    /// Prepares a job (tokenising and encoding the prompt); no decoder step runs yet.
    fn start<'a>(
        &'a self,
        request: &ValidatedRequest,
    ) -> Result<Box<dyn Session + 'a>, EngineError>;
}

/// One job on one model, advanced a step at a time.
pub trait Session {
    /// Steps in total.
    fn total_steps(&self) -> usize;

    /// Steps done so far.
    fn steps_done(&self) -> usize;

    /// Runs one step.
    fn step(&mut self) -> Result<(), EngineError>;

    /// What the model read from the request (genre, tempo, key, ...), for the result
    /// metadata; empty for models that do not interpret the prompt.
    fn understood(&self) -> Vec<(String, String)> {
        Vec::new()
    }

    /// Audio playable while the job runs, ready since the last call (where the model can
    /// stream; the final audio may differ, e.g. by mastering).
    fn take_preview(&mut self) -> Option<AudioChunk> {
        None
    }

    /// Turns the finished job into audio.
    fn finish(self: Box<Self>) -> Result<Audio, EngineError>;
}
