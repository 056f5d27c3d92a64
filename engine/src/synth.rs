//! The built-in synth as an engine model: no weights, text prompts, a bar per step,
//! mastered stereo at the end, and a report of what it understood.

use son1k_models::analysis::analyse;
use son1k_models::synth::{SynthJob, SAMPLE_RATE};

use crate::audio::{Audio, AudioChunk};
use crate::cover::{CoverMode, ANALYSIS_RATE};
use crate::error::EngineError;
use crate::model::{MusicModel, PreviewRender, Session};
use crate::model_info::{ModelInfo, ModelKind, SamplingDefaults};
use crate::request::ValidatedRequest;

/// Identifier of the built-in synth.
pub const SYNTH_ID: &str = "son1k-synth";

/// Frames per second in which the synth counts durations (the same 20 ms frames as
/// MusicGen, so requests mean the same on every model).
const FRAME_RATE: usize = 50;

/// The longest piece the synth itself allows (the engine limits usually cut earlier).
const MAX_SECONDS: usize = 600;

/// The built-in synth model.
pub struct SynthModel {
    info: ModelInfo,
}

impl Default for SynthModel {
    fn default() -> Self {
        Self {
            info: ModelInfo {
                id: SYNTH_ID.to_string(),
                kind: ModelKind::Synth,
                device: "cpu".to_string(),
                streams_audio: true,
                sample_rate: SAMPLE_RATE,
                channels: 2,
                frame_rate: FRAME_RATE,
                max_frames: MAX_SECONDS * FRAME_RATE,
                extra_steps: 0,
                vocab_size: 0,
                cover_modes: vec![CoverMode::Melody],
                song_rate: ANALYSIS_RATE,
                max_clip_frames: 0,
                // The synth does not sample tokens; these are reported, not used.
                defaults: SamplingDefaults {
                    top_k: 0,
                    top_p: 0.0,
                    temperature: 1.0,
                    guidance_scale: 1.0,
                },
            },
        }
    }
}

impl MusicModel for SynthModel {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn start(&self, request: &ValidatedRequest) -> Result<Box<dyn Session>, EngineError> {
        let duration_s = request.frames as f64 / FRAME_RATE as f64;
        let job = match &request.cover {
            Some(cover) => {
                let song = &cover.song;
                let analysis = analyse(&song.mono, song.sample_rate)
                    .map_err(|e| EngineError::invalid("song", e.to_string()))?;
                SynthJob::cover(&request.prompt, &analysis, duration_s, request.seed)
            }
            None => SynthJob::from_prompt(&request.prompt, duration_s, request.seed),
        };
        Ok(Box::new(SynthSession { job }))
    }
}

struct SynthSession {
    job: SynthJob,
}

impl Session for SynthSession {
    fn total_steps(&self) -> usize {
        self.job.total_steps()
    }

    fn steps_done(&self) -> usize {
        self.job.steps_done()
    }

    fn step(&mut self) -> Result<(), EngineError> {
        self.job.step();
        Ok(())
    }

    fn take_preview(&mut self) -> Option<PreviewRender> {
        let (start_frame, channels) = self.job.take_preview()?;
        let chunk = AudioChunk {
            start_frame,
            audio: Audio {
                sample_rate: SAMPLE_RATE,
                channels,
            },
        };
        Some(Box::new(move || Some(chunk)))
    }

    fn understood(&self) -> Vec<(String, String)> {
        self.job.understood()
    }

    fn finish(self: Box<Self>) -> Result<Audio, EngineError> {
        let (channels, _) = self
            .job
            .finish()
            .map_err(|e| EngineError::Internal(e.to_string()))?;
        Ok(Audio {
            sample_rate: SAMPLE_RATE,
            channels,
        })
    }
}
