//! [`EncodecDecoder`]: the residual vector quantizer's codebook lookup followed by the SEANet
//! decoder, loaded from a checkpoint's `audio_encoder` weights.

use candle_core::{DType, Device, Tensor};

use super::seanet::{build_layers, codebooks, decoder_plan, Layer};
use super::Config;
use crate::error::{ModelError, Result};
use crate::weights::Vb;

/// Frames decoded at once after the LSTM (10 s at 50 frames/s): the upsampling layers'
/// buffers grow with the chunk, not with the piece, whose intermediate signals would
/// otherwise take gigabytes (64 channels at 32 kHz are 245 MB a second... of 30 s).
pub(super) const CHUNK_FRAMES: usize = 500;

/// Frames of context a chunk is decoded with on each side: more than the receptive field
/// of the layers after the LSTM (under two frames), so every kept sample is the whole
/// decode's.
pub(super) const CHUNK_CONTEXT_FRAMES: usize = 4;

/// EnCodec's decoding path: codebook lookup and sum (the residual vector quantizer's decode),
/// then the SEANet decoder, always in f32.
pub struct EncodecDecoder {
    pub(super) config: Config,
    /// `quantizer.layers.{i}.codebook.embed`, `[codebook_size, codebook_dim]` each.
    codebooks: Vec<Tensor>,
    pub(super) layers: Vec<Layer>,
    device: Device,
}

impl EncodecDecoder {
    /// Loads the decoder from `vb` at the `audio_encoder` prefix: the codebooks of all
    /// `cfg.num_quantizers()` quantizers and `decoder.layers.*`. Validates `cfg` first.
    pub fn new(cfg: &Config, vb: Vb<'_>) -> Result<Self> {
        cfg.validate()?;
        // EnCodec is small next to the LM and sensitive to rounding: keep it in f32 whatever
        // dtype the rest of the model uses.
        let vb = vb.with_dtype(DType::F32);
        let codebooks = codebooks(cfg, &vb)?;
        let layers = build_layers(decoder_plan(cfg), cfg, &vb.pp("decoder").pp("layers"))?;
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

    /// Codebooks available to [`decode`](Self::decode).
    pub fn num_quantizers(&self) -> usize {
        self.codebooks.len()
    }

    /// Audio samples per code frame.
    pub fn hop_length(&self) -> usize {
        self.config.hop_length()
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Decodes codes `[B, Kq, N]` (u32, `1 <= Kq <= num_quantizers`, each below
    /// `codebook_size`) to audio `[B, audio_channels, N * hop_length]` in f32. No loudness
    /// rescaling: MusicGen decodes with `audio_scales = None`.
    pub fn decode(&self, codes: &Tensor) -> Result<Tensor> {
        let (batch, _, frames) = codes.dims3()?;
        if frames == 0 {
            return Ok(Tensor::zeros(
                (batch, self.config.audio_channels, 0),
                DType::F32,
                &self.device,
            )?);
        }
        let embeddings = self.embed_codes(codes)?;
        self.decode_embeddings(&embeddings)
    }

    /// The quantizer's decode (transformers' `EncodecResidualVectorQuantizer.decode`): the
    /// sum over codebooks of `embed[codes]`, `[B, Kq, N]` -> `[B, codebook_dim, N]`.
    pub fn embed_codes(&self, codes: &Tensor) -> Result<Tensor> {
        let (batch, books, frames) = codes.dims3()?;
        if codes.dtype() != DType::U32 {
            return Err(bad_codes(format!(
                "codes are {:?}, u32 expected",
                codes.dtype()
            )));
        }
        if books == 0 || books > self.codebooks.len() {
            return Err(bad_codes(format!(
                "{books} codebooks given, the codec has {}",
                self.codebooks.len()
            )));
        }
        let codes = codes.to_device(&self.device)?;
        if frames > 0 {
            let max = codes.flatten_all()?.max(0)?.to_scalar::<u32>()?;
            if max as usize >= self.config.codebook_size {
                return Err(bad_codes(format!(
                    "code {max} is out of range (codebook_size {})",
                    self.config.codebook_size
                )));
            }
        }
        let dim = self.config.codebook_dim();
        // Summed in codebook order, as transformers does (0 + q0 + q1 + ...).
        let mut sum: Option<Tensor> = None;
        for (k, embed) in self.codebooks.iter().enumerate().take(books) {
            let ids = codes.narrow(1, k, 1)?.flatten_all()?;
            let quantized = embed.embedding(&ids)?;
            sum = Some(match sum {
                Some(acc) => (acc + quantized)?,
                None => quantized,
            });
        }
        let sum = match sum {
            Some(sum) => sum,
            None => Tensor::zeros((batch * frames, dim), DType::F32, &self.device)?,
        };
        Ok(sum
            .reshape((batch, frames, dim))?
            .transpose(1, 2)?
            .contiguous()?)
    }

    /// The SEANet decoder alone: latents `[B, hidden_size, N]` -> audio
    /// `[B, audio_channels, N * hop_length]`. The layers up to the LSTM run over the whole
    /// piece; the upsampling ones in chunks of `CHUNK_FRAMES` with context on each side.
    pub fn decode_embeddings(&self, embeddings: &Tensor) -> Result<Tensor> {
        self.decode_in_chunks(embeddings, CHUNK_FRAMES)
    }

    /// [`Self::decode_embeddings`] in chunks of `chunk` frames.
    fn decode_in_chunks(&self, embeddings: &Tensor, chunk: usize) -> Result<Tensor> {
        let xs = embeddings.to_dtype(DType::F32)?.to_device(&self.device)?;
        let split = self.lstm_position().map_or(0, |lstm| lstm + 1);
        let (head, tail) = self.layers.split_at(split);
        let latents = self.run(head, &xs, self.lstm_channels())?;
        let frames = latents.dim(2)?;
        let chunk = chunk.max(1);
        if frames <= chunk.saturating_add(2 * CHUNK_CONTEXT_FRAMES) {
            return self.run(tail, &latents, self.config.audio_channels);
        }
        let hop = self.hop_length();
        let pieces = (0..frames)
            .step_by(chunk)
            .map(|start| {
                let end = (start + chunk).min(frames);
                let from = start.saturating_sub(CHUNK_CONTEXT_FRAMES);
                let to = (end + CHUNK_CONTEXT_FRAMES).min(frames);
                let audio = self.run(
                    tail,
                    &latents.narrow(2, from, to - from)?,
                    self.config.audio_channels,
                )?;
                Ok(audio.narrow(2, (start - from) * hop, (end - start) * hop)?)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Tensor::cat(&pieces, 2)?)
    }

    /// Where the LSTM sits among the layers (`None` for a decoder without one).
    pub(super) fn lstm_position(&self) -> Option<usize> {
        self.layers
            .iter()
            .position(|layer| matches!(layer, Layer::Lstm(_)))
    }

    /// Channels of the LSTM's input and output: the latents the upsampling layers read.
    pub(super) fn lstm_channels(&self) -> usize {
        self.config.num_filters << self.config.upsampling_ratios.len()
    }

    /// `layers` on `[B, C, T]`: on plain buffers ([`super::cpu`]) on the CPU, else as candle
    /// ops; the output has `out_channels` channels.
    pub(super) fn run(&self, layers: &[Layer], xs: &Tensor, out_channels: usize) -> Result<Tensor> {
        if self.device.is_cpu() {
            return super::cpu::run_layers(layers, xs, out_channels, &self.device);
        }
        let mut xs = xs.clone();
        for layer in layers {
            xs = layer.forward(&xs)?;
        }
        Ok(xs)
    }
}

pub(super) fn bad_codes(message: String) -> ModelError {
    ModelError::Candle(candle_core::Error::Msg(format!(
        "EnCodec decode: {message}"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encodec::test_util::{max_diff, random, row, tiny_config, tiny_weights};

    #[test]
    fn tiny_decoder_outputs_hop_samples_per_frame_and_batches_independently() -> Result<()> {
        for shortcut in [false, true] {
            let cfg = tiny_config(shortcut);
            assert_eq!((cfg.hop_length(), cfg.num_quantizers()), (6, 2));
            let weights = tiny_weights(&cfg)?;
            let decoder = EncodecDecoder::new(&cfg, weights.root(DType::F32))?;
            let frames = 5;
            let ids: Vec<u32> = (0..2 * 2 * frames as u32)
                .map(|i| (i * 5 + 3) % 8)
                .collect();
            let codes = Tensor::from_vec(ids, (2, 2, frames), &Device::Cpu)?;
            let audio = decoder.decode(&codes)?;
            assert_eq!(audio.dims(), [2, 1, frames * 6]);
            assert_eq!(audio.dtype(), DType::F32);
            assert!(row(&audio).iter().all(|v| v.is_finite()));
            // Each batch row decodes as if alone (no state leaks across the batch).
            for b in 0..2 {
                let alone = decoder.decode(&codes.narrow(0, b, 1)?)?;
                assert!(max_diff(&alone, &audio.narrow(0, b, 1)?) < 1e-6);
            }
            // One codebook decodes too; a code out of range is an error, not a panic.
            assert_eq!(
                decoder.decode(&codes.narrow(1, 0, 1)?)?.dims(),
                [2, 1, frames * 6]
            );
            let bad = Tensor::from_vec(vec![8u32; frames], (1, 1, frames), &Device::Cpu)?;
            assert!(decoder.decode(&bad).is_err());
        }
        Ok(())
    }

    #[test]
    fn cpu_path_and_chunks_match_the_candle_layers_in_every_padding_and_layout() -> Result<()> {
        // Two residual layers give dilations 1 and 2 (the one-product and the per-tap
        // convolutions); the shortcut, causal trimming, other padding modes and stereo
        // output each take their own branch.
        let variants = [
            tiny_config(false),
            tiny_config(true),
            Config {
                use_causal_conv: true,
                pad_mode: "constant".into(),
                ..tiny_config(false)
            },
            Config {
                pad_mode: "replicate".into(),
                audio_channels: 2,
                ..tiny_config(true)
            },
        ];
        for cfg in variants {
            let weights = tiny_weights(&cfg)?;
            let decoder = EncodecDecoder::new(&cfg, weights.root(DType::F32))?;
            // Short inputs too: reflect padding of fewer samples than the padding.
            for frames in [1, 2, 7] {
                let latents = random(&[2, cfg.hidden_size, frames], frames as u64, 1.0)?;
                let ours = crate::encodec::cpu::run_layers(
                    &decoder.layers,
                    &latents,
                    cfg.audio_channels,
                    &Device::Cpu,
                )?;
                let mut theirs = latents.clone();
                for layer in &decoder.layers {
                    theirs = layer.forward(&theirs)?;
                }
                assert_eq!(ours.dims(), theirs.dims());
                let diff = max_diff(&ours, &theirs);
                assert!(diff < 1e-5, "{cfg:?}, {frames} frames: differs by {diff}");
            }
            // Chunks of 3 frames with their context give the whole decode's samples.
            let latents = random(&[1, cfg.hidden_size, 23], 5, 1.0)?;
            let whole = decoder.decode_in_chunks(&latents, usize::MAX)?;
            let chunked = decoder.decode_in_chunks(&latents, 3)?;
            assert_eq!(
                whole.dims(),
                [1, cfg.audio_channels, 23 * decoder.hop_length()]
            );
            let diff = max_diff(&whole, &chunked);
            assert!(diff < 1e-6, "{cfg:?}: chunks differ by {diff}");
        }
        Ok(())
    }

    #[test]
    fn quantizer_decode_sums_codebook_rows() -> Result<()> {
        let cfg = tiny_config(false);
        let weights = tiny_weights(&cfg)?;
        let decoder = EncodecDecoder::new(&cfg, weights.root(DType::F32))?;
        let codes = Tensor::from_vec(vec![1u32, 2, 7, 0], (1, 2, 2), &Device::Cpu)?;
        let emb = decoder.embed_codes(&codes)?;
        assert_eq!(emb.dims(), [1, 4, 2]);
        let (e0, e1) = (row(&decoder.codebooks[0]), row(&decoder.codebooks[1]));
        let got = row(&emb);
        for d in 0..4 {
            assert_eq!(got[d * 2], e0[4 + d] + e1[7 * 4 + d]);
            assert_eq!(got[d * 2 + 1], e0[2 * 4 + d] + e1[d]);
        }
        Ok(())
    }
}
