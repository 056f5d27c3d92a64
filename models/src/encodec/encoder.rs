//! [`EncodecEncoder`]: the SEANet encoder followed by the residual vector quantizer's greedy
//! nearest-codeword search, loaded from a checkpoint's `audio_encoder` weights; an exact port
//! of transformers 4.47.1 `EncodecModel.encode` for MusicGen's codecs (no chunking, no
//! normalisation), so an audio prompt becomes the codes the reference would continue from.

use candle_core::{DType, Device, Tensor, D};

use super::seanet::{build_layers, codebooks, encoder_plan, Layer};
use super::Config;
use crate::error::{ModelError, Result};
use crate::weights::Vb;

/// EnCodec's encoding path, always in f32.
pub struct EncodecEncoder {
    config: Config,
    /// `quantizer.layers.{i}.codebook.embed`, `[codebook_size, codebook_dim]` each.
    codebooks: Vec<Tensor>,
    layers: Vec<Layer>,
    device: Device,
}

impl EncodecEncoder {
    /// Loads the encoder from `vb` at the `audio_encoder` prefix: `encoder.layers.*` and the
    /// codebooks of all `cfg.num_quantizers()` quantizers. Validates `cfg` first.
    pub fn new(cfg: &Config, vb: Vb<'_>) -> Result<Self> {
        cfg.validate()?;
        let vb = vb.with_dtype(DType::F32);
        let codebooks = codebooks(cfg, &vb)?;
        let layers = build_layers(encoder_plan(cfg), cfg, &vb.pp("encoder").pp("layers"))?;
        Ok(Self {
            config: cfg.clone(),
            codebooks,
            layers,
            device: vb.device().clone(),
        })
    }

    /// The codec config.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Encodes audio `[B, audio_channels, T]` (f32, the codec's rate) to codes
    /// `[B, num_quantizers, ceil(T / hop_length)]` (u32).
    pub fn encode(&self, audio: &Tensor) -> Result<Tensor> {
        let (_, channels, samples) = audio.dims3()?;
        if channels != self.config.audio_channels {
            return Err(bad_audio(format!(
                "{channels} channels given, the codec takes {}",
                self.config.audio_channels
            )));
        }
        if samples == 0 {
            return Err(bad_audio("no samples to encode".into()));
        }
        let latents = self.encode_latents(audio)?;
        self.quantize(&latents)
    }

    /// The SEANet encoder alone: audio `[B, C, T]` -> latents `[B, hidden_size, N]`. On
    /// the CPU the layers run on plain buffers (`encodec::cpu`), elsewhere as candle ops.
    pub fn encode_latents(&self, audio: &Tensor) -> Result<Tensor> {
        if self.device.is_cpu() {
            let xs = audio.to_dtype(DType::F32)?;
            return super::cpu::run_layers(
                &self.layers,
                &xs,
                self.config.hidden_size,
                &self.device,
            );
        }
        self.encode_latents_with_candle(audio)
    }

    /// [`Self::encode_latents`] as candle ops on any device (the CPU path's reference).
    pub fn encode_latents_with_candle(&self, audio: &Tensor) -> Result<Tensor> {
        let mut xs = audio.to_dtype(DType::F32)?.to_device(&self.device)?;
        for layer in &self.layers {
            xs = layer.forward(&xs)?;
        }
        Ok(xs)
    }

    /// The residual vector quantizer's encode (transformers'
    /// `EncodecResidualVectorQuantizer.encode`): each stage picks the codeword nearest to
    /// what the stages before left, `[B, D, N]` -> `[B, Kq, N]`.
    pub fn quantize(&self, latents: &Tensor) -> Result<Tensor> {
        let (batch, dim, frames) = latents.dims3()?;
        // `[B * N, D]`, one frame a row.
        let mut residual = latents
            .transpose(1, 2)?
            .contiguous()?
            .reshape((batch * frames, dim))?;
        let mut stages = Vec::with_capacity(self.codebooks.len());
        for embed in &self.codebooks {
            // The reference's distance, term for term: -(|x|^2 - 2 x.e + |e|^2).
            let x2 = residual.sqr()?.sum_keepdim(1)?;
            let e2 = embed.sqr()?.sum_keepdim(1)?.t()?;
            let dots = residual.matmul(&embed.t()?)?;
            let dist = x2
                .broadcast_sub(&(dots * 2.0)?)?
                .broadcast_add(&e2)?
                .neg()?;
            let indices = dist.argmax(D::Minus1)?;
            let quantized = embed.index_select(&indices, 0)?;
            residual = (residual - quantized)?;
            stages.push(indices.reshape((batch, 1, frames))?);
        }
        Ok(Tensor::cat(&stages, 1)?)
    }
}

fn bad_audio(message: String) -> ModelError {
    ModelError::Candle(candle_core::Error::Msg(format!(
        "EnCodec encode: {message}"
    )))
}
