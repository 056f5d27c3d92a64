//! Songs to cover: decoding an upload in any common format into mono samples at the
//! analysis rate, with every limit checked and named.

use crate::audio::decode::{decode_audio, resample, to_mono, DecodeLimits};
use crate::error::EngineError;
use crate::limits::Limits;

/// Sample rate songs are analysed at: enough for pitch and rhythm, cheap to analyse.
pub const ANALYSIS_RATE: u32 = 22_050;

/// A decoded song, mono, at [`ANALYSIS_RATE`].
#[derive(Clone, Debug, PartialEq)]
pub struct Song {
    /// Samples per second.
    pub sample_rate: u32,
    /// Mono samples.
    pub mono: Vec<f32>,
}

impl Song {
    /// Length in seconds.
    pub fn duration_s(&self) -> f64 {
        self.mono.len() as f64 / self.sample_rate as f64
    }
}

/// Decodes an uploaded song (`name_hint`, e.g. the file name, helps format detection).
/// Anything that is not usable audio is an invalid `song` naming the problem and limit.
pub fn load_song(
    bytes: &[u8],
    name_hint: Option<&str>,
    limits: &Limits,
) -> Result<Song, EngineError> {
    let decode_limits = DecodeLimits {
        max_seconds: limits.max_song_seconds,
        max_bytes: limits.max_song_bytes,
        ..DecodeLimits::default()
    };
    let invalid =
        |e: crate::audio::decode::DecodeError| EngineError::invalid("song", e.to_string());
    let decoded = decode_audio(bytes, name_hint, &decode_limits).map_err(invalid)?;
    let mono = to_mono(&decoded);
    let mono = if decoded.sample_rate == ANALYSIS_RATE {
        mono
    } else {
        resample(&mono, decoded.sample_rate, ANALYSIS_RATE).map_err(invalid)?
    };
    Ok(Song {
        sample_rate: ANALYSIS_RATE,
        mono,
    })
}
