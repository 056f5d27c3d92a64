//! Domain -> wire conversions: job events, job records and models as `son1k.v1` messages.

use son1k_engine::jobs::{
    EventBody, FailureCode, JobEvent, JobInfo, JobKind, JobResult, JobStage, JobState,
    ProgressReport,
};
use son1k_engine::{AudioFormat, CoverMode, EngineError, Limits, ModelInfo, ModelKind};

use crate::proto::v1 as pb;

/// A job event on the wire.
pub(super) fn event(id: &str, kind: JobKind, event: JobEvent) -> pb::GenerationEvent {
    use pb::generation_event::Event;
    let body = match event.body {
        EventBody::Accepted {
            queue_position,
            model,
        } => Event::Accepted(pb::Accepted {
            queue_position,
            model,
        }),
        EventBody::Progress(report) => Event::Progress(progress(&report)),
        EventBody::AudioChunk(chunk) => Event::AudioChunk(pb::AudioChunk {
            start_frame: chunk.start_frame,
            sample_rate: chunk.sample_rate,
            channels: chunk.channels,
            pcm_s16le: chunk.pcm_s16le,
        }),
        EventBody::AudioPiece(piece) => Event::Audio(pb::AudioPiece {
            offset: piece.offset,
            data: piece.data,
            total_bytes: piece.total_bytes,
            format: format(piece.format) as i32,
            last: piece.last,
        }),
        EventBody::Completed(result) => Event::Completed(completed(&result)),
        EventBody::Failed { code, message } => Event::Failed(failed(code, message)),
        EventBody::Cancelled { reason } => Event::Cancelled(pb::Cancelled { reason }),
    };
    pb::GenerationEvent {
        generation_id: id.to_string(),
        sequence: event.sequence,
        kind: job_kind(kind) as i32,
        time_unix_ms: event.time_unix_ms,
        event: Some(body),
    }
}

/// A job record on the wire (the polling view).
pub(super) fn generation(info: &JobInfo) -> pb::Generation {
    pb::Generation {
        generation_id: info.id.clone(),
        kind: job_kind(info.kind) as i32,
        state: state(info.state) as i32,
        progress: Some(progress(&info.progress)),
        result: info.result.as_ref().map(completed),
        error: info
            .failure
            .as_ref()
            .map(|(code, message)| failed(*code, message.clone())),
        model: info.model.clone(),
        prompt: info.prompt.clone(),
        created_unix_ms: info.created_unix_ms,
        finished_unix_ms: info.finished_unix_ms.unwrap_or(0),
        last_sequence: info.last_sequence,
    }
}

/// A model on the wire.
pub(super) fn model(info: &ModelInfo, max_duration_s: f64) -> pb::Model {
    let mut capabilities = vec![pb::Capability::Text as i32];
    if info.covers() {
        capabilities.push(pb::Capability::Cover as i32);
    }
    for mode in &info.cover_modes {
        capabilities.push(match mode {
            CoverMode::Melody => pb::Capability::CoverMelody,
            CoverMode::Continuation => pb::Capability::CoverContinuation,
        } as i32);
    }
    if info.streams_audio {
        capabilities.push(pb::Capability::StreamingAudio as i32);
    }
    pb::Model {
        id: info.id.clone(),
        kind: match info.kind {
            ModelKind::Synth => pb::ModelKind::Synth,
            ModelKind::MusicGen => pb::ModelKind::Musicgen,
        } as i32,
        capabilities,
        sample_rate: info.sample_rate,
        channels: info.channels as u32,
        max_duration_seconds: max_duration_s.min(info.max_frames as f64 / info.frame_rate as f64),
        device: info.device.clone(),
    }
}

/// A cover mode from the wire; unspecified leaves the model's default.
pub(super) fn cover_mode(mode: i32) -> Result<Option<CoverMode>, EngineError> {
    match pb::CoverMode::try_from(mode) {
        Ok(pb::CoverMode::Unspecified) => Ok(None),
        Ok(pb::CoverMode::Melody) => Ok(Some(CoverMode::Melody)),
        Ok(pb::CoverMode::Continuation) => Ok(Some(CoverMode::Continuation)),
        Err(_) => Err(EngineError::invalid(
            "mode",
            format!("{mode} is not a known cover mode (MELODY = 1, CONTINUATION = 2)"),
        )),
    }
}

/// A job state on the wire.
pub(super) fn state(state: JobState) -> pb::GenerationState {
    match state {
        JobState::Queued => pb::GenerationState::Queued,
        JobState::Running => pb::GenerationState::Running,
        JobState::Completed => pb::GenerationState::Completed,
        JobState::Failed => pb::GenerationState::Failed,
        JobState::Cancelled => pb::GenerationState::Cancelled,
    }
}

/// The limits a client checks requests against.
pub(super) fn request_limits(limits: &Limits) -> pb::RequestLimits {
    pb::RequestLimits {
        max_prompt_chars: u32::try_from(limits.max_prompt_chars).unwrap_or(u32::MAX),
        max_duration_seconds: limits.max_duration_s,
        max_song_bytes: limits.max_song_bytes as u64,
        max_song_seconds: limits.max_song_seconds,
        max_temperature: limits.max_temperature,
        max_guidance_scale: limits.max_guidance_scale,
    }
}

/// An audio container on the wire.
pub(crate) fn format(format: AudioFormat) -> pb::AudioFormat {
    match format {
        AudioFormat::Wav => pb::AudioFormat::Wav,
        AudioFormat::Flac => pb::AudioFormat::Flac,
        AudioFormat::Mp3 => pb::AudioFormat::Mp3,
        AudioFormat::Opus => pb::AudioFormat::Opus,
    }
}

fn job_kind(kind: JobKind) -> pb::GenerationKind {
    match kind {
        JobKind::Generation => pb::GenerationKind::Generation,
        JobKind::Cover => pb::GenerationKind::Cover,
    }
}

fn progress(report: &ProgressReport) -> pb::Progress {
    pb::Progress {
        percent: report.percent,
        stage: match report.stage {
            JobStage::Queued => pb::Stage::Queued,
            JobStage::Encoding => pb::Stage::Encoding,
            JobStage::Generating => pb::Stage::Generating,
            JobStage::Decoding => pb::Stage::Decoding,
            JobStage::Writing => pb::Stage::Writing,
        } as i32,
        frames_done: report.frames_done,
        frames_total: report.frames_total,
        eta_seconds: report.eta_s,
        queue_position: report.queue_position,
    }
}

fn completed(result: &JobResult) -> pb::Completed {
    let params = &result.params;
    pb::Completed {
        duration_seconds: result.duration_s,
        sample_rate: result.sample_rate,
        channels: result.channels,
        seed: params.seed,
        model: result.model.clone(),
        parameters: Some(pb::ResolvedParameters {
            prompt: params.prompt.clone(),
            top_k: params.top_k,
            top_p: params.top_p,
            temperature: params.temperature,
            guidance_scale: params.guidance_scale,
            seed: params.seed,
            frames: params.frames,
            understood: params.understood.iter().cloned().collect(),
        }),
        format: format(result.format) as i32,
        audio_bytes: result.audio_bytes,
    }
}

fn failed(code: FailureCode, message: String) -> pb::Failed {
    pb::Failed {
        code: match code {
            FailureCode::InvalidArgument => pb::ErrorCode::InvalidArgument,
            FailureCode::Internal => pb::ErrorCode::Internal,
            FailureCode::Interrupted => pb::ErrorCode::Interrupted,
        } as i32,
        message,
    }
}
