//! EnCodec for the models MusicGen ships (32 kHz, non-causal, reflect padding), loaded from
//! the `audio_encoder` weights of a checkpoint: the decoding path (residual-vector-quantizer
//! lookup + SEANet decoder) and the encoding path (SEANet encoder + greedy quantization), exact
//! ports of transformers 4.47.1 `EncodecModel.decode` and `encode`.
//!
//! One role per file: `config` holds the codec [`Config`], `pad` and `conv` the padded
//! (strided, transposed) convolutions, `lstm` the LSTM, `seanet` the residual blocks and layer
//! plans, `cpu` every decoder layer's CPU path on plain buffers, `decoder` the
//! [`EncodecDecoder`], `stream` its decode while frames still arrive ([`DecodeStream`]) and
//! `encoder` the [`EncodecEncoder`].

mod config;
mod conv;
mod cpu;
mod decoder;
mod encoder;
mod lstm;
mod pad;
mod seanet;
mod stream;

pub use config::Config;
pub use decoder::EncodecDecoder;
pub use encoder::EncodecEncoder;
pub use seanet::decoder_weight_shapes;
pub use stream::DecodeStream;

/// Helpers shared by the unit tests of the EnCodec modules.
#[cfg(test)]
mod test_util {
    use std::collections::HashMap;

    use candle_core::{Device, Tensor};

    use super::{decoder_weight_shapes, Config};
    use crate::error::Result;
    use crate::weights::Weights;

    /// All elements of an f32 tensor, flattened.
    pub(super) fn row(t: &Tensor) -> Vec<f32> {
        t.flatten_all()
            .and_then(|t| t.to_vec1::<f32>())
            .unwrap_or_default()
    }

    /// `values` as a `[1, 1, T]` tensor.
    pub(super) fn t1(values: &[f32]) -> Result<Tensor> {
        Ok(Tensor::new(values, &Device::Cpu)?.reshape((1, 1, values.len()))?)
    }

    /// Deterministic pseudo-random values in [-scale, scale] (no RNG dependency in tests).
    fn values(n: usize, seed: u64, scale: f32) -> Vec<f32> {
        let mut state = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (0..n)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let unit = (state >> 40) as f32 / (1u64 << 24) as f32;
                (unit * 2.0 - 1.0) * scale
            })
            .collect()
    }

    /// A CPU f32 tensor of `shape` filled by [`values`].
    pub(super) fn random(shape: &[usize], seed: u64, scale: f32) -> Result<Tensor> {
        let n = shape.iter().product();
        Ok(Tensor::from_vec(
            values(n, seed, scale),
            shape,
            &Device::Cpu,
        )?)
    }

    /// A decoder config small enough for unit tests: hop 6 at 600 Hz (100 frames/s), two
    /// quantizers.
    pub(super) fn tiny_config(use_conv_shortcut: bool) -> Config {
        Config {
            // hop 6 at 600 Hz: 100 frames/s, and 2 kbps // (100 * 10) gives 2 quantizers.
            target_bandwidths: vec![2.0],
            sampling_rate: 600,
            hidden_size: 4,
            num_filters: 2,
            num_residual_layers: 2,
            upsampling_ratios: vec![3, 2],
            use_causal_conv: false,
            codebook_size: 8,
            codebook_dim: Some(4),
            use_conv_shortcut,
            ..Config::default()
        }
    }

    /// Random decoder weights for `cfg`.
    pub(super) fn tiny_weights(cfg: &Config) -> Result<Weights> {
        let mut map = HashMap::new();
        for (i, (name, shape)) in decoder_weight_shapes(cfg).into_iter().enumerate() {
            map.insert(name, random(&shape, 1000 + i as u64, 0.4)?);
        }
        Ok(Weights::from_tensors(map, &Device::Cpu))
    }

    /// Largest absolute elementwise difference.
    pub(super) fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        row(a)
            .iter()
            .zip(row(b))
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    }
}
