//! Wire -> domain conversions of the job-starting requests: every field checked, unknown
//! enum values refused by name, and a stable digest for idempotency keys.

use std::sync::Arc;

use prost::Message;
use son1k_engine::cover::Song;
use son1k_engine::digest::{digest, fnv1a};
use son1k_engine::jobs::{JobKind, Submission};
use son1k_engine::{AudioFormat, CoverRequest, EngineError, GenerateRequest, Length, SampleFormat};

use super::convert;
use crate::proto::v1 as pb;

/// Length of a generation whose request leaves `duration_seconds` at 0.
pub const DEFAULT_DURATION_S: f64 = 10.0;
/// Longest idempotency key, in bytes.
pub const MAX_REQUEST_ID_BYTES: usize = 128;

/// A Generate request as the engine takes it.
pub(super) fn generation(
    tenant: &str,
    request: &pb::GenerateRequest,
) -> Result<Submission, EngineError> {
    let seconds = match request.duration_seconds {
        0.0 => DEFAULT_DURATION_S,
        s => s,
    };
    let mut fingerprinted = request.clone();
    fingerprinted.request_id.clear();
    fingerprinted.cancel_on_disconnect = false;
    submission(
        tenant,
        JobKind::Generation,
        Common {
            prompt: &request.prompt,
            model: &request.model,
            seconds,
            sampling: request.sampling.as_ref(),
            audio_format: request.audio_format,
            sample_format: request.sample_format,
            request_id: &request.request_id,
            fingerprint: digest(&fingerprinted.encode_to_vec()),
        },
        None,
    )
}

/// A Cover request (its `song` taken out and decoded) as the engine takes it.
pub(super) fn cover(
    tenant: &str,
    request: &pb::CoverRequest,
    song: Arc<Song>,
    max_duration_s: f64,
) -> Result<Submission, EngineError> {
    let seconds = match request.duration_seconds {
        0.0 => song.duration_s().min(max_duration_s),
        s => s,
    };
    let mut fingerprinted = request.clone();
    fingerprinted.song.clear();
    fingerprinted.request_id.clear();
    fingerprinted.cancel_on_disconnect = false;
    let fingerprint = fnv1a(song.digest, &fingerprinted.encode_to_vec());
    let cover = CoverRequest {
        song,
        mode: convert::cover_mode(request.mode)?,
        clip_start_s: request.clip_start_seconds,
        clip_end_s: request.clip_end_seconds,
    };
    submission(
        tenant,
        JobKind::Cover,
        Common {
            prompt: &request.prompt,
            model: &request.model,
            seconds,
            sampling: request.sampling.as_ref(),
            audio_format: request.audio_format,
            sample_format: request.sample_format,
            request_id: &request.request_id,
            fingerprint,
        },
        Some(cover),
    )
}

/// The fields Generate and Cover share.
struct Common<'a> {
    prompt: &'a str,
    model: &'a str,
    seconds: f64,
    sampling: Option<&'a pb::Sampling>,
    audio_format: i32,
    sample_format: i32,
    request_id: &'a str,
    fingerprint: u64,
}

fn submission(
    tenant: &str,
    kind: JobKind,
    fields: Common<'_>,
    cover: Option<CoverRequest>,
) -> Result<Submission, EngineError> {
    let format = match pb::AudioFormat::try_from(fields.audio_format) {
        Ok(pb::AudioFormat::Unspecified | pb::AudioFormat::Wav) => AudioFormat::Wav,
        Ok(pb::AudioFormat::Flac) => AudioFormat::Flac,
        Ok(pb::AudioFormat::Mp3) => AudioFormat::Mp3,
        Ok(pb::AudioFormat::Opus) => AudioFormat::Opus,
        Err(_) => {
            return Err(EngineError::invalid(
                "audio_format",
                format!(
                    "{} is not a known format (WAV = 1, FLAC = 2, MP3 = 3, Opus = 4)",
                    fields.audio_format
                ),
            ))
        }
    };
    let sample_format = match pb::SampleFormat::try_from(fields.sample_format) {
        Ok(pb::SampleFormat::Unspecified | pb::SampleFormat::S16) => SampleFormat::S16,
        Ok(pb::SampleFormat::F32) => SampleFormat::F32,
        Err(_) => {
            return Err(EngineError::invalid(
                "sample_format",
                format!(
                    "{} is not a known format (S16 = 1, F32 = 2)",
                    fields.sample_format
                ),
            ))
        }
    };
    if fields.request_id.len() > MAX_REQUEST_ID_BYTES {
        return Err(EngineError::invalid(
            "request_id",
            format!(
                "{} bytes is over the limit of {MAX_REQUEST_ID_BYTES}",
                fields.request_id.len()
            ),
        ));
    }
    let sampling = fields.sampling.cloned().unwrap_or_default();
    let request = GenerateRequest {
        top_k: sampling.top_k.map(|k| k as usize),
        top_p: sampling.top_p,
        temperature: sampling.temperature,
        guidance_scale: sampling.guidance_scale,
        seed: sampling.seed,
        sample_format,
        cover,
        ..GenerateRequest::new(fields.prompt, Length::Seconds(fields.seconds))
    };
    Ok(Submission {
        tenant: tenant.to_string(),
        kind,
        model: Some(fields.model.to_string()).filter(|m| !m.is_empty()),
        request,
        format,
        request_id: Some(fields.request_id.to_string()).filter(|k| !k.is_empty()),
        fingerprint: fields.fingerprint,
        reservation: None,
        cluster_id: None,
    })
}
