//! EnCodec for the models MusicGen ships (32 kHz, non-causal, reflect padding), loaded from
//! the `audio_encoder` weights of a checkpoint: the decoding path (residual-vector-quantizer
//! lookup + SEANet decoder) and the encoding path (SEANet encoder + greedy quantization), exact
//! ports of transformers 4.47.1 `EncodecModel.decode` and `encode`.
//!
//! One role per file: `config` holds the codec [`Config`], `pad` and `conv` the padded
//! (strided, transposed) convolutions, `lstm` the LSTM, `seanet` the residual blocks and layer
//! plans, `cpu` every decoder layer's CPU path on plain buffers, `decoder` the
//! [`EncodecDecoder`] and `encoder` the [`EncodecEncoder`].

mod config;
mod conv;
mod cpu;
mod decoder;
mod encoder;
mod lstm;
mod pad;
mod seanet;

pub use config::Config;
pub use decoder::EncodecDecoder;
pub use encoder::EncodecEncoder;
pub use seanet::decoder_weight_shapes;

/// Helpers shared by the unit tests of the EnCodec modules.
#[cfg(test)]
mod test_util {
    use candle_core::{Device, Tensor};

    use crate::error::Result;

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

    /// Largest absolute elementwise difference.
    pub(super) fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        row(a)
            .iter()
            .zip(row(b))
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    }
}
