//! The decoder's weights as the CPU step ([`super::cpu_step`]) reads them: borrowed f32
//! slices and kernel views, made once per call.

use candle_nn::LayerNorm;

use super::{Inputs, Layer, LAYER_NORM_EPS};
use crate::error::{ModelError, Result};
use crate::kernels::tensor::{cpu_data, CpuData};
use crate::quant::CpuWeights;

/// A layer norm's parameters.
pub(super) struct Norm<'a> {
    weight: CpuData<'a, f32>,
    bias: CpuData<'a, f32>,
}

impl<'a> Norm<'a> {
    pub(super) fn new(norm: &'a LayerNorm) -> Result<Self> {
        let bias = some(norm.bias(), "a norm without bias")?;
        Ok(Self {
            weight: some(cpu_data(norm.weight())?, NOT_ON_CPU)?,
            bias: some(cpu_data(bias)?, NOT_ON_CPU)?,
        })
    }

    /// Normalises each `width`-long row of `x` into `out`.
    pub(super) fn apply(&self, x: &[f32], width: usize, out: &mut [f32]) {
        let n = width as f32;
        for (row, out) in x.chunks_exact(width).zip(out.chunks_exact_mut(width)) {
            let mean = row.iter().sum::<f32>() / n;
            let variance = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n;
            let inverse = 1.0 / (variance + LAYER_NORM_EPS as f32).sqrt();
            let params = self.weight.iter().zip(self.bias.iter());
            for ((o, v), (w, b)) in out.iter_mut().zip(row).zip(params) {
                *o = (v - mean) * inverse * w + b;
            }
        }
    }
}

/// One layer's weights as the step reads them.
pub(super) struct LayerView<'a> {
    pub(super) self_norm: Norm<'a>,
    pub(super) qkv: CpuWeights<'a>,
    pub(super) self_out: CpuWeights<'a>,
    /// `None` for a decoder without cross-attention.
    pub(super) cross: Option<CrossView<'a>>,
    pub(super) final_norm: Norm<'a>,
    pub(super) fc1: CpuWeights<'a>,
    pub(super) fc2: CpuWeights<'a>,
}

/// A layer's cross-attention block as the step reads it.
pub(super) struct CrossView<'a> {
    pub(super) norm: Norm<'a>,
    pub(super) query: CpuWeights<'a>,
    pub(super) out: CpuWeights<'a>,
}

impl<'a> LayerView<'a> {
    pub(super) fn new(layer: &'a Layer) -> Result<Self> {
        let laid_out_otherwise = || unsupported("attention inputs laid out otherwise");
        let Inputs::Fused(qkv) = &layer.self_attn.inputs else {
            return Err(laid_out_otherwise());
        };
        let weights = |proj: &'a crate::quant::Proj| some(proj.cpu_weights(), NOT_ON_CPU);
        let cross = match &layer.cross {
            Some(cross) => {
                let Inputs::Separate { q, .. } = &cross.attn.inputs else {
                    return Err(laid_out_otherwise());
                };
                Some(CrossView {
                    norm: Norm::new(&cross.norm)?,
                    query: weights(q)?,
                    out: weights(&cross.attn.out)?,
                })
            }
            None => None,
        };
        Ok(Self {
            self_norm: Norm::new(&layer.self_attn_norm)?,
            qkv: weights(qkv)?,
            self_out: weights(&layer.self_attn.out)?,
            cross,
            final_norm: Norm::new(&layer.final_norm)?,
            fc1: weights(&layer.fc1)?,
            fc2: weights(&layer.fc2)?,
        })
    }
}

pub(super) const NOT_ON_CPU: &str = "a weight is not an f32 tensor on the CPU";

/// `value`, or the error that the CPU step cannot run: the cache was made for it, so the
/// decoder should have been able to.
pub(super) fn some<T>(value: Option<T>, why: &str) -> Result<T> {
    value.ok_or_else(|| unsupported(why))
}

pub(super) fn unsupported(why: &str) -> ModelError {
    ModelError::UnsupportedConfig {
        field: "decoder (CPU step)".into(),
        message: why.into(),
    }
}
