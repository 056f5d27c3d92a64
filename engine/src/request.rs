//! A generation request as a client states it, and its validation into what the engine
//! runs: every bad field is an error that names it and the limit.

use son1k_models::sampling::SamplingParams;

use std::sync::Arc;

use crate::audio::SampleFormat;
use crate::cover::Song;
use crate::error::EngineError;
use crate::limits::Limits;
use crate::model::ModelInfo;

/// How long the output is.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Length {
    /// Seconds of audio: `floor(seconds * frame_rate)` frames, as audiocraft counts them.
    Seconds(f64),
    /// Decoder passes, delay columns included, as transformers' `max_new_tokens` counts.
    Steps(usize),
}

/// A request as a client states it; unset sampling fields take the model's defaults.
#[derive(Clone, Debug, PartialEq)]
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
    /// The song to cover, for a cover request.
    pub song: Option<Arc<Song>>,
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
            song: None,
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
    /// The song to cover, for a cover request.
    pub song: Option<Arc<Song>>,
}

impl GenerateRequest {
    /// Checks every field against `limits` and the model, filling defaults.
    pub fn validate(
        &self,
        limits: &Limits,
        model: &ModelInfo,
    ) -> Result<ValidatedRequest, EngineError> {
        if self.song.is_some() && !model.covers {
            return Err(EngineError::Unsupported(format!(
                "model {} cannot make covers; use the built-in synth",
                model.id
            )));
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
                let max_steps = max_frames + model.extra_steps;
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
            song: self.song.clone(),
        })
    }
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
    use crate::model::SamplingDefaults;

    fn info() -> ModelInfo {
        ModelInfo {
            id: "m".into(),
            kind: crate::model::ModelKind::MusicGen,
            device: "cpu".into(),
            streams_audio: false,
            sample_rate: 32000,
            channels: 1,
            frame_rate: 50,
            max_frames: 2044,
            extra_steps: 3,
            vocab_size: 2048,
            covers: false,
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
            field_of(with(&|r| r.length = Length::Seconds(30.5))),
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
}
