//! MusicGen as an engine model: validates the prompt's token count, runs the generation
//! one decoder pass per step, decodes with EnCodec at the end.

use std::path::Path;

use son1k_models::musicgen::{Generation, GenerationParams, MusicGen};

use crate::audio::Audio;
use crate::device::{DeviceChoice, KvCache, Precision};
use crate::error::EngineError;
use crate::model::{ModelInfo, ModelKind, MusicModel, SamplingDefaults, Session};
use crate::request::ValidatedRequest;

/// A loaded MusicGen checkpoint.
pub struct MusicGenModel {
    model: MusicGen,
    info: ModelInfo,
}

impl MusicGenModel {
    /// Loads a Hugging Face checkpoint directory onto a device in a precision, with its
    /// self-attention cache stored as `kv_cache` says.
    pub fn load(
        dir: &Path,
        device: DeviceChoice,
        precision: Precision,
        kv_cache: KvCache,
    ) -> Result<Self, EngineError> {
        let candle_device = device.open()?;
        let dtype = precision.dtype_on(&candle_device)?;
        let mut model = MusicGen::load(dir, &candle_device, dtype, precision.weight_format())?;
        model.set_kv_cache_dtype(kv_cache.dtype(dtype))?;
        let id = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| dir.display().to_string());
        let device = match kv_cache {
            KvCache::Compute => format!("{device} {precision}"),
            KvCache::F16 => format!("{device} {precision}, f16 KV cache"),
        };
        Ok(Self::new(model, id, device))
    }

    /// Wraps a model already built; `device` says where it runs, for clients.
    pub fn new(model: MusicGen, id: String, device: String) -> Self {
        let config = model.config();
        let generation = model.generation_config();
        let defaults = SamplingDefaults {
            // `do_sample: false` in the checkpoint means greedy by default.
            top_k: if generation.do_sample {
                generation.top_k
            } else {
                1
            },
            top_p: generation.top_p,
            temperature: generation.temperature,
            guidance_scale: generation.guidance_scale,
        };
        let info = ModelInfo {
            id,
            kind: ModelKind::MusicGen,
            device,
            streams_audio: false,
            sample_rate: model.sample_rate(),
            channels: model.channels(),
            frame_rate: config.frame_rate(),
            max_frames: config.max_frames(0),
            extra_steps: config.decoder.channel_codebooks() - 1,
            vocab_size: config.decoder.vocab_size,
            defaults,
            // Covers with MusicGen need the melody variant (chroma conditioning).
            covers: false,
        };
        Self { model, info }
    }

    /// The underlying model.
    pub fn model(&self) -> &MusicGen {
        &self.model
    }
}

impl MusicModel for MusicGenModel {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn start<'a>(
        &'a self,
        request: &ValidatedRequest,
    ) -> Result<Box<dyn Session + 'a>, EngineError> {
        let ids = self.model.tokenize(&request.prompt)?;
        if ids.len() > request.max_prompt_tokens {
            return Err(EngineError::invalid(
                "prompt",
                format!(
                    "{} tokens is over the limit of {}",
                    ids.len(),
                    request.max_prompt_tokens
                ),
            ));
        }
        let params = GenerationParams {
            frames: request.frames,
            guidance_scale: request.guidance_scale,
            sampling: request.sampling,
            seed: request.seed,
        };
        let generation = Generation::new(&self.model, &ids, &params)?;
        Ok(Box::new(MusicGenSession {
            model: &self.model,
            generation,
        }))
    }
}

struct MusicGenSession<'a> {
    model: &'a MusicGen,
    generation: Generation,
}

impl Session for MusicGenSession<'_> {
    fn total_steps(&self) -> usize {
        self.generation.total_steps()
    }

    fn steps_done(&self) -> usize {
        self.generation.steps_done()
    }

    fn step(&mut self) -> Result<(), EngineError> {
        Ok(self.generation.step(self.model)?)
    }

    fn finish(self: Box<Self>) -> Result<Audio, EngineError> {
        let MusicGenSession { model, generation } = *self;
        let audio = model.decode_audio(&generation.into_frames())?;
        Ok(Audio {
            sample_rate: model.sample_rate(),
            channels: audio.to_vec2::<f32>()?,
        })
    }
}
