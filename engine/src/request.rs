//! A generation request as a client states it, and its validation into what the engine
//! runs: every bad field is an error that names it and the limit.

use son1k_models::sampling::SamplingParams;

use std::ops::Range;
use std::sync::Arc;

use crate::audio::SampleFormat;
use crate::cover::{CoverMode, Song};
use crate::error::EngineError;
use crate::limits::Limits;
use crate::model_info::ModelInfo;

/// How long the output is.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Length {
    /// Seconds of audio: `floor(seconds * frame_rate)` frames, as audiocraft counts them.
    Seconds(f64),
    /// Decoder passes, delay columns included, as transformers' `max_new_tokens` counts.
    Steps(usize),
}

/// The continuation clip a cover takes when the request names none: from its start, this
/// many seconds, or half of the rest of the song if that is shorter.
pub const DEFAULT_CLIP_SECONDS: f64 = 10.0;

/// A cover's song and how to cover it, as a client states it.
#[derive(Clone, Debug, PartialEq)]
pub struct CoverRequest {
    /// The song, decoded at the model's song rate.
    pub song: Arc<Song>,
    /// The mode; unset takes the model's first.
    pub mode: Option<CoverMode>,
    /// Continuation: where the clip starts in the song, in seconds (unset: 0).
    pub clip_start_s: Option<f64>,
    /// Continuation: where it ends (unset: [`DEFAULT_CLIP_SECONDS`] after its start, or
    /// half-way to the song's end if that comes first).
    pub clip_end_s: Option<f64>,
}

impl CoverRequest {
    /// A cover of `song` in the model's default mode.
    pub fn new(song: Arc<Song>) -> Self {
        Self {
            song,
            mode: None,
            clip_start_s: None,
            clip_end_s: None,
        }
    }
}

/// A validated cover.
#[derive(Clone, Debug, PartialEq)]
pub struct Cover {
    /// The song, at the model's song rate.
    pub song: Arc<Song>,
    /// How to cover it.
    pub mode: CoverMode,
    /// Continuation: the clip's samples in the song (empty for melody).
    pub clip: Range<usize>,
}

/// A request as a client states it; unset sampling fields take the model's defaults. It
/// travels to other nodes as JSON without its cover (a cover's song travels as the file).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct GenerateRequest {
    /// What to generate.
    pub prompt: String,
    /// How long.
    pub length: Length,
    /// Top-k (0 = no limit, 1 = greedy).
    pub top_k: Option<usize>,
    /// Top-p (0 = off).
    pub top_p: Option<f32>,
    /// Temperature (0 = greedy).
    pub temperature: Option<f32>,
    /// Classifier-free guidance scale (1 = off).
    pub guidance_scale: Option<f32>,
    /// Sampler seed; a random one is chosen (and reported) when unset.
    pub seed: Option<u64>,
    /// Output sample format.
    pub sample_format: SampleFormat,
    /// The song to cover and how, for a cover request.
    #[serde(skip)]
    pub cover: Option<CoverRequest>,
}

impl GenerateRequest {
    /// A request with the model's defaults for everything but the prompt and length.
    pub fn new(prompt: impl Into<String>, length: Length) -> Self {
        Self {
            prompt: prompt.into(),
            length,
            top_k: None,
            top_p: None,
            temperature: None,
            guidance_scale: None,
            seed: None,
            sample_format: SampleFormat::default(),
            cover: None,
        }
    }
}

/// A request that passed validation against the limits and a model.
#[derive(Clone, Debug, PartialEq)]
pub struct ValidatedRequest {
    /// The prompt, trimmed.
    pub prompt: String,
    /// Audio frames to generate.
    pub frames: usize,
    /// Sampling settings.
    pub sampling: SamplingParams,
    /// Guidance scale.
    pub guidance_scale: f32,
    /// The seed used.
    pub seed: u64,
    /// Output sample format.
    pub sample_format: SampleFormat,
    /// The prompt's token limit, checked by the model when it tokenises.
    pub max_prompt_tokens: usize,
    /// The cover, for a cover request.
    pub cover: Option<Cover>,
}

impl GenerateRequest {
    /// Checks every field against `limits` and the model, filling defaults.
    pub fn validate(
        &self,
        limits: &Limits,
        model: &ModelInfo,
    ) -> Result<ValidatedRequest, EngineError> {
        if let Some(cover) = &self.cover {
            check_cover_mode(cover.mode, model)?;
        }
        let prompt = limits.check_prompt(&self.prompt)?;
        let max_frames = model
            .max_frames
            .min((limits.max_duration_s * model.frame_rate as f64).floor() as usize);
        let max_seconds = max_frames as f64 / model.frame_rate as f64;
        let frames = match self.length {
            Length::Seconds(s) => {
                if !s.is_finite() || s <= 0.0 {
                    return Err(EngineError::invalid(
                        "duration",
                        format!("{s} s must be positive"),
                    ));
                }
                // A tiny epsilon absorbs binary rounding (2.3 * 50 = 114.99999...).
                let frames = (s * model.frame_rate as f64 + 1e-6).floor() as usize;
                if frames == 0 || frames > max_frames {
                    return Err(EngineError::invalid(
                        "duration",
                        format!(
                            "{s} s is outside 1/{} s to {max_seconds} s for model {}",
                            model.frame_rate, model.id
                        ),
                    ));
                }
                frames
            }
            Length::Steps(steps) => {
                let max_steps = max_frames.saturating_add(model.extra_steps);
                if steps <= model.extra_steps || steps > max_steps {
                    return Err(EngineError::invalid(
                        "max_new_tokens",
                        format!(
                            "{steps} is outside {} to {max_steps} for model {}",
                            model.extra_steps + 1,
                            model.id
                        ),
                    ));
                }
                steps - model.extra_steps
            }
        };
        let cover = match &self.cover {
            Some(cover) => Some(validate_cover(cover, frames, model)?),
            None => None,
        };
        let defaults = model.defaults;
        let top_k = self.top_k.unwrap_or(defaults.top_k);
        if top_k > model.vocab_size {
            return Err(EngineError::invalid(
                "top_k",
                format!(
                    "{top_k} is over the vocabulary size {} (0 means no limit)",
                    model.vocab_size
                ),
            ));
        }
        let top_p = self.top_p.unwrap_or(defaults.top_p);
        if !(0.0..=1.0).contains(&top_p) {
            return Err(EngineError::invalid(
                "top_p",
                format!("{top_p} is outside 0 to 1"),
            ));
        }
        let temperature = self.temperature.unwrap_or(defaults.temperature);
        if !(0.0..=limits.max_temperature).contains(&temperature) {
            return Err(EngineError::invalid(
                "temperature",
                format!("{temperature} is outside 0 to {}", limits.max_temperature),
            ));
        }
        let guidance_scale = self.guidance_scale.unwrap_or(defaults.guidance_scale);
        if !(0.0..=limits.max_guidance_scale).contains(&guidance_scale) {
            return Err(EngineError::invalid(
                "guidance_scale",
                format!(
                    "{guidance_scale} is outside 0 to {}",
                    limits.max_guidance_scale
                ),
            ));
        }
        Ok(ValidatedRequest {
            prompt: prompt.to_string(),
            frames,
            sampling: SamplingParams {
                top_k,
                top_p,
                temperature,
            },
            guidance_scale,
            seed: self.seed.unwrap_or_else(random_seed),
            sample_format: self.sample_format,
            max_prompt_tokens: limits.max_prompt_tokens,
            cover,
        })
    }
}

/// The mode a cover runs in: the one asked for, if the model offers it, else its first.
/// A model without it is refused, naming the modes it offers.
pub fn check_cover_mode(
    mode: Option<CoverMode>,
    model: &ModelInfo,
) -> Result<CoverMode, EngineError> {
    let offered = match mode {
        Some(mode) => model.cover_modes.contains(&mode).then_some(mode),
        None => model.cover_modes.first().copied(),
    };
    offered.ok_or_else(|| {
        let asked = mode.map_or_else(|| "covers".to_string(), |m| format!("{m} covers"));
        EngineError::Unsupported(format!(
            "model {} cannot make {asked}; its cover modes: {}",
            model.id,
            model.cover_mode_names()
        ))
    })
}

/// Checks a cover against the model and the output's `frames`: the mode, and for a
/// continuation its clip, which must lie in the song, fit one window and be shorter than
/// the output.
fn validate_cover(
    cover: &CoverRequest,
    frames: usize,
    model: &ModelInfo,
) -> Result<Cover, EngineError> {
    let mode = check_cover_mode(cover.mode, model)?;
    let song = &cover.song;
    if song.mono.is_empty() {
        return Err(EngineError::invalid("song", "holds no audio"));
    }
    if mode != CoverMode::Continuation {
        if cover.clip_start_s.is_some() || cover.clip_end_s.is_some() {
            return Err(EngineError::invalid(
                "clip_start",
                format!("a clip is for continuation covers, not {mode}"),
            ));
        }
        return Ok(Cover {
            song: Arc::clone(song),
            mode,
            clip: 0..0,
        });
    }
    let length_s = song.duration_s();
    let start_s = cover.clip_start_s.unwrap_or(0.0);
    if !start_s.is_finite() || start_s < 0.0 || start_s >= length_s {
        return Err(EngineError::invalid(
            "clip_start",
            format!("{start_s} s is outside the song's 0 to {length_s:.2} s"),
        ));
    }
    // By default the clip is at most half of the rest of the song, so a cover as long as
    // the song continues it for at least as long again.
    let end_s = cover
        .clip_end_s
        .unwrap_or(start_s + DEFAULT_CLIP_SECONDS.min((length_s - start_s) / 2.0));
    if !end_s.is_finite() || end_s <= start_s || end_s > length_s {
        return Err(EngineError::invalid(
            "clip_end",
            format!("{end_s} s must be after clip_start ({start_s} s) and within the song's {length_s:.2} s"),
        ));
    }
    let rate = song.sample_rate as f64;
    let clip = (start_s * rate).round() as usize..(end_s * rate).round() as usize;
    // The codec makes a frame for every started hop of samples.
    let hop = (model.song_rate as usize / model.frame_rate.max(1)).max(1);
    let clip_frames = clip.len().div_ceil(hop);
    let clip_s = clip.len() as f64 / rate;
    if clip.len() < hop {
        return Err(EngineError::invalid(
            "clip_end",
            format!(
                "a clip of {clip_s:.3} s is under one frame ({} ms)",
                1000 / model.frame_rate.max(1)
            ),
        ));
    }
    if clip_frames > model.max_clip_frames {
        return Err(EngineError::invalid(
            "clip_end",
            format!(
                "a clip of {clip_s:.2} s is over model {}'s {} s window",
                model.id,
                model.max_clip_frames as f64 / model.frame_rate as f64
            ),
        ));
    }
    if clip_frames >= frames {
        return Err(EngineError::invalid(
            "clip_end",
            format!(
                "the clip ({clip_s:.2} s) must be shorter than the cover ({} s), which it begins",
                frames as f64 / model.frame_rate as f64
            ),
        ));
    }
    Ok(Cover {
        song: Arc::clone(song),
        mode,
        clip,
    })
}

/// A fresh seed from the process's hash randomness (no extra dependency, never repeats
/// within a run in practice).
fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model_info::SamplingDefaults;

    fn info() -> ModelInfo {
        ModelInfo {
            id: "m".into(),
            kind: crate::model_info::ModelKind::MusicGen,
            device: "cpu".into(),
            streams_audio: false,
            sample_rate: 32000,
            channels: 1,
            frame_rate: 50,
            max_frames: usize::MAX,
            extra_steps: 3,
            vocab_size: 2048,
            cover_modes: Vec::new(),
            song_rate: 32000,
            max_clip_frames: 1500,
            defaults: SamplingDefaults {
                top_k: 250,
                top_p: 0.0,
                temperature: 1.0,
                guidance_scale: 3.0,
            },
        }
    }

    fn field_of(r: GenerateRequest) -> &'static str {
        match r.validate(&Limits::default(), &info()) {
            Err(EngineError::InvalidArgument { field, .. }) => field,
            other => panic!("expected InvalidArgument, got {other:?}"),
        }
    }

    #[test]
    fn duration_counts_frames_like_audiocraft_and_steps_like_transformers() {
        let ok = |length| {
            GenerateRequest::new("x", length)
                .validate(&Limits::default(), &info())
                .unwrap()
                .frames
        };
        assert_eq!(ok(Length::Seconds(10.0)), 500);
        assert_eq!(ok(Length::Seconds(2.3)), 115);
        assert_eq!(ok(Length::Seconds(0.02)), 1);
        assert_eq!(ok(Length::Steps(256)), 253);
        assert_eq!(ok(Length::Seconds(30.0)), 1500);
    }

    #[test]
    fn every_bad_field_is_named() {
        let base = GenerateRequest::new("lofi piano", Length::Seconds(5.0));
        let with = |f: &dyn Fn(&mut GenerateRequest)| {
            let mut r = base.clone();
            f(&mut r);
            r
        };
        assert_eq!(field_of(with(&|r| r.prompt = "  ".into())), "prompt");
        assert_eq!(field_of(with(&|r| r.prompt = "a".repeat(2001))), "prompt");
        assert_eq!(
            field_of(with(&|r| r.length = Length::Seconds(0.0))),
            "duration"
        );
        assert_eq!(
            field_of(with(&|r| r.length = Length::Seconds(300.5))),
            "duration"
        );
        assert_eq!(
            field_of(with(&|r| r.length = Length::Seconds(f64::NAN))),
            "duration"
        );
        assert_eq!(
            field_of(with(&|r| r.length = Length::Steps(3))),
            "max_new_tokens"
        );
        assert_eq!(field_of(with(&|r| r.top_k = Some(4096))), "top_k");
        assert_eq!(field_of(with(&|r| r.top_p = Some(1.5))), "top_p");
        assert_eq!(
            field_of(with(&|r| r.temperature = Some(-1.0))),
            "temperature"
        );
        assert_eq!(
            field_of(with(&|r| r.guidance_scale = Some(f32::NAN))),
            "guidance_scale"
        );
    }

    #[test]
    fn defaults_fill_unset_fields_and_a_seed_is_always_chosen() {
        let v = GenerateRequest::new(" rock ", Length::Seconds(1.0))
            .validate(&Limits::default(), &info())
            .unwrap();
        assert_eq!(v.prompt, "rock");
        assert_eq!(v.sampling.top_k, 250);
        assert_eq!(v.guidance_scale, 3.0);
    }

    /// A continuation model, and a 12 s song at its rate.
    fn cover(mode: Option<CoverMode>, clip: (Option<f64>, Option<f64>)) -> GenerateRequest {
        let song = Song {
            sample_rate: 32000,
            mono: vec![0.1; 12 * 32000],
            digest: 0,
        };
        GenerateRequest {
            cover: Some(CoverRequest {
                mode,
                clip_start_s: clip.0,
                clip_end_s: clip.1,
                ..CoverRequest::new(Arc::new(song))
            }),
            ..GenerateRequest::new("jazz", Length::Seconds(20.0))
        }
    }

    fn continuation_model() -> ModelInfo {
        ModelInfo {
            cover_modes: vec![CoverMode::Continuation],
            ..info()
        }
    }

    #[test]
    fn a_continuation_clip_defaults_to_the_first_ten_seconds_and_must_fit() {
        let model = continuation_model();
        let ok = cover(None, (None, None))
            .validate(&Limits::default(), &model)
            .unwrap();
        let cover_of = ok.cover.unwrap();
        assert_eq!(cover_of.mode, CoverMode::Continuation);
        assert_eq!(cover_of.clip, 0..6 * 32000, "half of a 12 s song");
        let clip = |start, end| match cover(None, (start, end)).validate(&Limits::default(), &model)
        {
            Err(EngineError::InvalidArgument { field, message }) => format!("{field}: {message}"),
            other => panic!("expected InvalidArgument, got {other:?}"),
        };
        // Outside the song, empty, reversed, not a number.
        assert!(clip(Some(12.5), None).starts_with("clip_start"));
        assert!(clip(Some(-1.0), None).starts_with("clip_start"));
        assert!(clip(Some(2.0), Some(2.0)).starts_with("clip_end"));
        assert!(clip(Some(3.0), Some(1.0)).starts_with("clip_end"));
        assert!(clip(Some(0.0), Some(13.0)).contains("within the song's 12.00 s"));
        assert!(clip(Some(f64::NAN), None).starts_with("clip_start"));
        assert!(clip(Some(5.0), Some(5.00001)).contains("under one frame"));
        // Not shorter than the output, or past one window.
        let long = GenerateRequest {
            length: Length::Seconds(5.0),
            ..cover(None, (Some(0.0), Some(6.0)))
        };
        let error = long
            .validate(&Limits::default(), &model)
            .unwrap_err()
            .to_string();
        assert!(error.contains("shorter than the cover (5 s)"), "{error}");
        let narrow = ModelInfo {
            max_clip_frames: 100,
            ..continuation_model()
        };
        let error = cover(None, (Some(0.0), Some(3.0)))
            .validate(&Limits::default(), &narrow)
            .unwrap_err()
            .to_string();
        assert!(error.contains("over model m's 2 s window"), "{error}");
    }

    #[test]
    fn a_mode_the_model_lacks_is_refused_naming_the_modes_it_has() {
        let error = cover(Some(CoverMode::Melody), (None, None))
            .validate(&Limits::default(), &continuation_model())
            .unwrap_err();
        assert!(matches!(error, EngineError::Unsupported(_)));
        assert_eq!(
            error.to_string(),
            "model m cannot make melody covers; its cover modes: continuation"
        );
        let error = cover(None, (None, None))
            .validate(&Limits::default(), &info())
            .unwrap_err()
            .to_string();
        assert_eq!(error, "model m cannot make covers; its cover modes: none");
        let melody = ModelInfo {
            cover_modes: vec![CoverMode::Melody, CoverMode::Continuation],
            ..info()
        };
        let clip_for_melody = cover(Some(CoverMode::Melody), (Some(1.0), None));
        match clip_for_melody.validate(&Limits::default(), &melody) {
            Err(EngineError::InvalidArgument { field, .. }) => assert_eq!(field, "clip_start"),
            other => panic!("a clip is for continuations: {other:?}"),
        }
    }
}
