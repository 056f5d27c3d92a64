//! What a model tells about itself: its kind, rates, limits, sampling defaults and cover
//! modes, for validating requests and for clients.

use crate::cover::CoverMode;

/// What a loaded model can do, for validation and for clients.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelInfo {
    /// Stable identifier (the checkpoint directory name, or a built-in name).
    pub id: String,
    /// Which family the model belongs to.
    pub kind: ModelKind,
    /// Where it runs (`cpu`, `cuda:0`, ...).
    pub device: String,
    /// Whether jobs stream playable audio while they run ([`crate::Session::take_preview`]).
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
