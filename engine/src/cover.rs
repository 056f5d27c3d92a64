//! Songs to cover: decoding an upload in any common format into mono samples at the rate
//! the model reads songs at, packet by packet, with every limit checked and named; and the
//! ways a model covers a song.

use std::sync::atomic::AtomicBool;

use crate::audio::decode::{decode_mono, DecodeError, DecodeLimits};
use crate::error::EngineError;
use crate::limits::Limits;

/// Sample rate the synth analyses songs at: enough for pitch and rhythm, cheap to analyse.
pub const ANALYSIS_RATE: u32 = 22_050;

/// How a model covers a song.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum CoverMode {
    /// Re-creates the song's melody in the prompt's style (the synth; MusicGen-Melody's
    /// chroma conditioning).
    Melody,
    /// Continues a clip of the song (any MusicGen: the clip's codes are the prompt).
    Continuation,
}

impl CoverMode {
    /// Every mode.
    pub const ALL: [CoverMode; 2] = [CoverMode::Melody, CoverMode::Continuation];

    /// The mode's name in requests and messages.
    pub fn name(self) -> &'static str {
        match self {
            CoverMode::Melody => "melody",
            CoverMode::Continuation => "continuation",
        }
    }

    /// The mode called `name`.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|mode| mode.name() == name)
    }
}

impl std::fmt::Display for CoverMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A decoded song, mono, at the rate its model reads songs at.
#[derive(Clone, Debug, PartialEq)]
pub struct Song {
    /// Samples per second.
    pub sample_rate: u32,
    /// Mono samples.
    pub mono: Vec<f32>,
    /// [`digest`](crate::digest::digest) of the uploaded file, so a retried upload is known.
    pub digest: u64,
}

impl Song {
    /// Length in seconds.
    pub fn duration_s(&self) -> f64 {
        self.mono.len() as f64 / self.sample_rate as f64
    }
}

/// Decodes an uploaded song to mono at `sample_rate` (`name_hint`, e.g. the file name,
/// helps format detection). Anything that is not usable audio is an invalid `song` naming
/// the problem and limit. Setting `stop` abandons the decode at its next packet (the
/// request went away).
pub fn load_song(
    bytes: &[u8],
    name_hint: Option<&str>,
    limits: &Limits,
    sample_rate: u32,
    stop: &AtomicBool,
) -> Result<Song, EngineError> {
    let decode_limits = DecodeLimits {
        max_seconds: limits.max_song_seconds,
        max_bytes: limits.max_song_bytes,
        max_samples: limits.max_song_samples,
        ..DecodeLimits::default()
    };
    let mono =
        decode_mono(bytes, name_hint, &decode_limits, sample_rate, stop).map_err(|e| match e {
            DecodeError::Abandoned => EngineError::Cancelled,
            e => EngineError::invalid("song", e.to_string()),
        })?;
    Ok(Song {
        digest: crate::digest::digest(bytes),
        sample_rate,
        mono,
    })
}
