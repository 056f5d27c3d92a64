//! Weight formats of the large projections: dense in the model's dtype, or quantized at
//! load to 8 or 4 bits with candle's block-quantized kernels, which read a quarter or an
//! eighth of the f32 bytes and serve the two guidance rows at nearly one row's cost.

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Module, Tensor};
use candle_nn::Linear;

use crate::error::{ModelError, Result};

/// How a model's large projections store their weights.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WeightFormat {
    /// The model's dtype, as loaded.
    #[default]
    Dense,
    /// 8-bit blocks of 32 with an f16 scale (ggml Q8_0): 1.0625 bytes a weight.
    Q8,
    /// 4-bit super-blocks of 256 (ggml Q4_K): 0.5625 bytes a weight; rows whose length is
    /// not a multiple of 256 use 4-bit blocks of 32 (Q4_0).
    Q4,
}

impl WeightFormat {
    /// The block format of a matrix whose rows hold `inner` weights; `None` keeps it dense
    /// (a row length no block size divides).
    fn ggml_for(self, inner: usize) -> Option<GgmlDType> {
        match self {
            Self::Dense => None,
            Self::Q8 => (inner % 32 == 0).then_some(GgmlDType::Q8_0),
            Self::Q4 if inner % 256 == 0 => Some(GgmlDType::Q4K),
            Self::Q4 => (inner % 32 == 0).then_some(GgmlDType::Q4_0),
        }
    }

    /// Bytes a weight takes when its rows hold `inner` weights and the model computes in
    /// `dtype`.
    pub fn bytes_per_weight(self, inner: usize, dtype: DType) -> f64 {
        match self.ggml_for(inner) {
            Some(ggml) => ggml.type_size() as f64 / ggml.block_size() as f64,
            None => dtype.size_in_bytes() as f64,
        }
    }

    /// Checks the model's dtype suits the format (quantized kernels take f32 activations).
    pub fn check_dtype(self, dtype: DType) -> Result<()> {
        if self != Self::Dense && dtype != DType::F32 {
            return Err(ModelError::UnsupportedConfig {
                field: "dtype".into(),
                message: format!(
                    "quantized weights compute in f32; {dtype:?} applies to dense weights only"
                ),
            });
        }
        Ok(())
    }
}

/// A projection without bias, `x W^T`, dense or quantized.
#[derive(Clone, Debug)]
pub enum Proj {
    /// Dense weights `[out, in]`.
    Dense(Linear),
    /// Block-quantized weights.
    Quantized(QMatMul),
}

impl Proj {
    /// A projection of `weight` `[out, in]` stored in `format`.
    pub fn new(weight: Tensor, format: WeightFormat) -> Result<Self> {
        let inner = weight.dim(1)?;
        match format.ggml_for(inner) {
            None => Ok(Self::Dense(Linear::new(weight, None))),
            Some(ggml) => {
                let quantized = QTensor::quantize(&weight, ggml)?;
                Ok(Self::Quantized(QMatMul::from_qtensor(quantized)?))
            }
        }
    }
}

impl Module for Proj {
    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Self::Dense(linear) => match few_rows_f32(xs, linear.weight())? {
                Some(out) => Ok(out),
                None => linear.forward(xs),
            },
            Self::Quantized(matmul) => matmul.forward(xs),
        }
    }
}

/// `xs W^T` through [`crate::gemv::matmul_rows`] when it serves the case (f32 on the CPU,
/// at most [`crate::gemv::MAX_ROWS`] rows, contiguous): the weights are read once for all
/// rows. `None` leaves the case to candle.
fn few_rows_f32(xs: &Tensor, weight: &Tensor) -> candle_core::Result<Option<Tensor>> {
    let dims = xs.dims();
    let Some((&k, leading)) = dims.split_last() else {
        return Ok(None);
    };
    let m: usize = leading.iter().product();
    if !(1..=crate::gemv::MAX_ROWS).contains(&m) || weight.dim(1)? != k {
        return Ok(None);
    }
    let n = weight.dim(0)?;
    let product = crate::cpu::with_f32(xs, |x| {
        crate::cpu::with_f32(weight, |w| {
            let mut out = vec![0f32; m * n];
            crate::gemv::matmul_rows(x, m, w, n, &mut out).map(|()| out)
        })
    })?;
    let Some(Ok(Some(Some(out)))) = product else {
        return Ok(None);
    };
    let mut shape = leading.to_vec();
    shape.push(n);
    Tensor::from_vec(out, shape, xs.device()).map(Some)
}
