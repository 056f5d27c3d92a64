//! The flags `son1k generate` and `son1k cover` share: which model runs the job and how,
//! and how long and how it samples.

use std::path::PathBuf;

use son1k_engine::musicgen::{MusicGenModel, DEFAULT_EXTEND_STRIDE_SECONDS};
use son1k_engine::synth::SynthModel;
use son1k_engine::{
    DeviceChoice, EngineError, GenerateRequest, KvCache, Length, MusicModel, Precision,
    SampleFormat,
};

use super::remote;
use crate::proto::v1 as pb;

/// Which model runs a job, and how it is loaded.
#[derive(Debug, clap::Args)]
pub struct ModelArgs {
    /// A MusicGen checkpoint: a directory in the Hugging Face layout, or a Hub id
    /// (`facebook/musicgen-small`, `@revision` optional) already in the Hugging Face cache
    /// (HF_HUB_CACHE, HF_HOME); without it the built-in synth plays (no weights needed).
    #[arg(long, value_name = "DIR|ID", conflicts_with = "server")]
    pub model: Option<PathBuf>,
    /// With --server: the id of the server's model to run (default: the server's default).
    #[arg(long, value_name = "ID", requires = "server")]
    pub model_id: Option<String>,
    /// cpu, cuda[:N] or metal[:N].
    #[arg(long, default_value = "cpu", conflicts_with = "server")]
    pub device: DeviceChoice,
    /// Decoder precision: f32, f16, bf16, or q8 / q4 (weights quantized at load).
    #[arg(long, default_value = "f32", conflicts_with = "server")]
    pub dtype: Precision,
    /// Self-attention cache: `compute` (the decoder's precision) or `f16` (half the bytes
    /// each step reads from it).
    #[arg(long, default_value = "compute", conflicts_with = "server")]
    pub kv_cache: KvCache,
    /// MusicGen past 30 s: seconds each window starts after the one before (it is
    /// prompted with the rest of the one before).
    #[arg(long, value_name = "SECONDS", default_value_t = DEFAULT_EXTEND_STRIDE_SECONDS, conflicts_with = "server")]
    pub extend_stride: f64,
}

impl ModelArgs {
    /// Loads the MusicGen checkpoint of `--model`, or the built-in synth.
    pub fn load(&self) -> Result<Box<dyn MusicModel>, EngineError> {
        Ok(match &self.model {
            Some(dir) => Box::new(
                MusicGenModel::load(dir, self.device, self.dtype, self.kv_cache)?
                    .with_extend_stride(self.extend_stride)?
                    // Run here, nobody hears previews: no decode is spent on them.
                    .with_preview_after(0.0)?,
            ),
            None => Box::new(SynthModel::default()),
        })
    }
}

/// How long a job is and how it samples.
#[derive(Debug, clap::Args)]
pub struct SamplingArgs {
    /// Seconds of audio (generate: default 10; cover: default the song's length, a
    /// continuation's clip included).
    #[arg(
        long,
        value_name = "SECONDS",
        conflicts_with = "max_new_tokens",
        allow_negative_numbers = true
    )]
    pub duration: Option<f64>,
    /// Length in decoder steps, delay columns included, as transformers' `max_new_tokens`
    /// counts them for one generation: N steps are N minus the delay columns frames (a
    /// continuation's clip counts in them; past 30 s the windows take more passes).
    #[arg(long, value_name = "N", conflicts_with = "server")]
    pub max_new_tokens: Option<usize>,
    /// Sample among the K most likely tokens (0 = no limit, 1 = greedy; default from the
    /// checkpoint, else 250).
    #[arg(long, value_name = "K")]
    pub top_k: Option<usize>,
    /// Sample among the most likely tokens reaching probability P (0 = off).
    #[arg(long, value_name = "P", allow_negative_numbers = true)]
    pub top_p: Option<f32>,
    /// Sampling temperature (0 = greedy).
    #[arg(long, value_name = "T", allow_negative_numbers = true)]
    pub temperature: Option<f32>,
    /// Classifier-free guidance scale (1 = off; default from the checkpoint, else 3).
    #[arg(long, value_name = "G", allow_negative_numbers = true)]
    pub guidance_scale: Option<f32>,
    /// Sampler seed (random when unset; printed either way).
    #[arg(long, value_name = "S")]
    pub seed: Option<u64>,
    /// Output samples: s16 (16-bit PCM) or f32 (32-bit float).
    #[arg(long, default_value = "s16", value_name = "s16|f32")]
    pub sample_format: SampleFormat,
}

impl SamplingArgs {
    /// A request for `prompt` with these settings, `default_seconds` long unless a length
    /// was given.
    pub fn request(&self, prompt: String, default_seconds: f64) -> GenerateRequest {
        let length = match (self.duration, self.max_new_tokens) {
            (_, Some(steps)) => Length::Steps(steps),
            (Some(seconds), None) => Length::Seconds(seconds),
            (None, None) => Length::Seconds(default_seconds),
        };
        GenerateRequest {
            top_k: self.top_k,
            top_p: self.top_p,
            temperature: self.temperature,
            guidance_scale: self.guidance_scale,
            seed: self.seed,
            sample_format: self.sample_format,
            ..GenerateRequest::new(prompt, length)
        }
    }

    /// The sampling settings on the wire.
    pub fn wire(&self) -> Result<pb::Sampling, EngineError> {
        remote::sampling(
            self.top_k,
            self.top_p,
            self.temperature,
            self.guidance_scale,
            self.seed,
        )
    }
}
