//! Songs to cover: decoding an upload in any common format into mono samples at the
//! analysis rate, packet by packet, with every limit checked and named.

use std::sync::atomic::AtomicBool;

use crate::audio::decode::{decode_mono, DecodeError, DecodeLimits};
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
    /// [`digest`](crate::digest::digest) of the uploaded file, so a retried upload is known.
    pub digest: u64,
}

impl Song {
    /// Length in seconds.
    pub fn duration_s(&self) -> f64 {
        self.mono.len() as f64 / self.sample_rate as f64
    }
}

/// Decodes an uploaded song (`name_hint`, e.g. the file name, helps format detection).
/// Anything that is not usable audio is an invalid `song` naming the problem and limit.
/// Setting `stop` abandons the decode at its next packet (the request went away).
pub fn load_song(
    bytes: &[u8],
    name_hint: Option<&str>,
    limits: &Limits,
    stop: &AtomicBool,
) -> Result<Song, EngineError> {
    let decode_limits = DecodeLimits {
        max_seconds: limits.max_song_seconds,
        max_bytes: limits.max_song_bytes,
        max_samples: limits.max_song_samples,
        ..DecodeLimits::default()
    };
    let mono =
        decode_mono(bytes, name_hint, &decode_limits, ANALYSIS_RATE, stop).map_err(
            |e| match e {
                DecodeError::Abandoned => EngineError::Cancelled,
                e => EngineError::invalid("song", e.to_string()),
            },
        )?;
    Ok(Song {
        digest: crate::digest::digest(bytes),
        sample_rate: ANALYSIS_RATE,
        mono,
    })
}
