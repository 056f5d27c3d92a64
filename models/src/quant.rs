//! Weight formats of the large projections: dense in the model's dtype, or quantized at
//! load to 8 or 4 bits. On the CPU the quantized formats are our own blocks and kernels
//! (`kernels::quant`), which read each weight once for both guidance rows on the
//! same thread pool as every other kernel; on GPUs they are candle's ggml blocks and
//! kernels.

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Device, Module, Tensor};
use candle_nn::Linear;

use crate::error::{ModelError, Result};
use crate::kernels::quant::product;
pub use crate::kernels::quant::{BlockFormat, BlockMatrix, QuantizedRows, BLOCK};

/// How a model's large projections store their weights.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WeightFormat {
    /// The model's dtype, as loaded.
    #[default]
    Dense,
    /// 8-bit blocks of 32 with an f16 scale: 1.0625 bytes a weight (ggml Q8_0 on GPUs,
    /// which is the same size).
    Q8,
    /// 4-bit blocks of 32 with an f16 scale and offset on the CPU: 0.625 bytes a weight.
    /// On GPUs, ggml Q4_K super-blocks of 256 (0.5625 bytes), or Q4_0 blocks of 32 for rows
    /// whose length 256 does not divide.
    Q4,
}

impl WeightFormat {
    /// The CPU block format; `None` keeps a matrix dense (rows whose length 32 does not
    /// divide).
    fn blocks_for(self, inner: usize) -> Option<BlockFormat> {
        match self {
            _ if !inner.is_multiple_of(BLOCK) => None,
            Self::Dense => None,
            Self::Q8 => Some(BlockFormat::Q8),
            Self::Q4 => Some(BlockFormat::Q4),
        }
    }

    /// The GPU block format of a matrix whose rows hold `inner` weights; `None` keeps it
    /// dense (a row length no block size divides).
    fn ggml_for(self, inner: usize) -> Option<GgmlDType> {
        match self {
            Self::Dense => None,
            Self::Q8 => inner.is_multiple_of(32).then_some(GgmlDType::Q8_0),
            Self::Q4 if inner.is_multiple_of(256) => Some(GgmlDType::Q4K),
            Self::Q4 => inner.is_multiple_of(32).then_some(GgmlDType::Q4_0),
        }
    }

    /// Bytes a weight takes on `device` when its rows hold `inner` weights and the model
    /// computes in `dtype`.
    pub fn bytes_per_weight(self, inner: usize, dtype: DType, device: &Device) -> f64 {
        if device.is_cpu() {
            return match self.blocks_for(inner) {
                Some(format) => format.block_bytes() as f64 / BLOCK as f64,
                None => dtype.size_in_bytes() as f64,
            };
        }
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
    /// Our block-quantized weights, on the CPU.
    Blocks(BlockMatrix),
    /// candle's block-quantized weights, on GPUs.
    Ggml(QMatMul),
}

impl Proj {
    /// A projection of `weight` `[out, in]` stored in `format`.
    pub fn new(weight: Tensor, format: WeightFormat) -> Result<Self> {
        let (rows, inner) = weight.dims2()?;
        if weight.device().is_cpu() {
            let Some(blocks) = format.blocks_for(inner) else {
                return Ok(Self::Dense(Linear::new(weight, None)));
            };
            let values = weight
                .to_dtype(DType::F32)?
                .flatten_all()?
                .to_vec1::<f32>()?;
            return match BlockMatrix::quantize(&values, rows, inner, blocks) {
                Some(matrix) => Ok(Self::Blocks(matrix)),
                None => Ok(Self::Dense(Linear::new(weight, None))),
            };
        }
        match format.ggml_for(inner) {
            None => Ok(Self::Dense(Linear::new(weight, None))),
            Some(ggml) => {
                let quantized = QTensor::quantize(&weight, ggml)?;
                Ok(Self::Ggml(QMatMul::from_qtensor(quantized)?))
            }
        }
    }
}

impl Proj {
    /// The weights as the CPU kernels read them, for a caller that runs the product's
    /// tasks itself (`kernels::phases`); `None` for weights off the CPU or not in f32.
    pub fn cpu_weights(&self) -> candle_core::Result<Option<CpuWeights<'_>>> {
        Ok(match self {
            Self::Dense(linear) => {
                let (rows, cols) = linear.weight().dims2()?;
                crate::kernels::tensor::cpu_data::<f32>(linear.weight())?
                    .map(|values| CpuWeights::Dense { values, rows, cols })
            }
            Self::Blocks(matrix) => Some(CpuWeights::Blocks(matrix)),
            Self::Ggml(_) => None,
        })
    }
}

/// A projection's weights on the CPU, borrowed: dense f32 `[rows, cols]` or our blocks.
pub enum CpuWeights<'a> {
    /// Dense f32.
    Dense {
        /// The elements, row-major.
        values: crate::kernels::tensor::CpuData<'a, f32>,
        /// Output features.
        rows: usize,
        /// Input features.
        cols: usize,
    },
    /// Our quantized blocks.
    Blocks(&'a BlockMatrix),
}

impl CpuWeights<'_> {
    /// Output features.
    pub fn rows(&self) -> usize {
        match self {
            Self::Dense { rows, .. } => *rows,
            Self::Blocks(matrix) => matrix.rows,
        }
    }

    /// Input features.
    pub fn cols(&self) -> usize {
        match self {
            Self::Dense { cols, .. } => *cols,
            Self::Blocks(matrix) => matrix.cols,
        }
    }

    /// Whether the product reads activations quantized to 8 bits rather than f32.
    pub fn reads_quantized(&self) -> bool {
        matches!(self, Self::Blocks(_))
    }

    /// Output features one task computes: what each kernel measured best with.
    pub fn task_features(&self) -> usize {
        match self {
            Self::Dense { .. } => crate::kernels::gemv::TASK_FEATURES,
            Self::Blocks(_) => product::TASK_FEATURES,
        }
    }

    /// Output features `first..` of the product with `m` activation rows (any number), as
    /// many as `sums` (`[features, m]`) holds: dense weights read the f32 rows `x` (`[m, cols]`),
    /// blocks read `quantized`, the same rows quantized. `None` when the shapes do not
    /// fit.
    pub fn features(
        &self,
        x: &[f32],
        m: usize,
        quantized: &QuantizedRows,
        first: usize,
        sums: &mut [f32],
    ) -> Option<()> {
        match self {
            Self::Dense { values, rows, cols } => {
                let fits = m >= 1
                    && x.len() == m * cols
                    && sums.len().is_multiple_of(m)
                    && first + sums.len() / m <= *rows;
                fits.then(|| crate::kernels::gemv::features(x, m, values, first, sums))
            }
            Self::Blocks(matrix) if quantized.rows == m => {
                product::features(quantized, matrix, first, sums)
            }
            Self::Blocks(_) => None,
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
            Self::Blocks(matrix) => blocks_forward(xs, matrix),
            Self::Ggml(matmul) => matmul.forward(xs),
        }
    }
}

/// `xs W^T` for our CPU blocks: the activations are quantized to 8 bits once per call
/// and multiplied [`crate::kernels::gemv::MAX_ROWS`] rows at a time (a decoder step has two; a
/// longer prompt takes several passes over the weights).
fn blocks_forward(xs: &Tensor, matrix: &BlockMatrix) -> candle_core::Result<Tensor> {
    let dims = xs.dims();
    let Some((&k, leading)) = dims.split_last() else {
        candle_core::bail!("a quantized projection needs at least one dimension");
    };
    if k != matrix.cols {
        candle_core::bail!("a quantized projection of {} inputs got {k}", matrix.cols);
    }
    let m: usize = leading.iter().product();
    let n = matrix.rows;
    let xs = xs.to_dtype(DType::F32)?.contiguous()?;
    let mut out = vec![0f32; m * n];
    let done = crate::kernels::tensor::with_f32(&xs, |x| {
        let mut quantized = QuantizedRows::default();
        for (x, out) in x
            .chunks(crate::kernels::gemv::MAX_ROWS * k)
            .zip(out.chunks_mut(crate::kernels::gemv::MAX_ROWS * n))
        {
            quantized.quantize(x, x.len() / k, k);
            product::matmul_rows(&quantized, matrix, out)?;
        }
        Some(())
    })?;
    match done {
        None => candle_core::bail!("quantized projections run on CPU tensors"),
        Some(None) => candle_core::bail!("quantized projection: {m} rows do not fit {n}x{k}"),
        Some(Some(())) => {}
    }
    let mut shape = leading.to_vec();
    shape.push(n);
    Tensor::from_vec(out, shape, xs.device())
}

/// `xs W^T` through [`crate::kernels::gemv::matmul_rows`] when it serves the case (f32 on the CPU,
/// at most [`crate::kernels::gemv::MAX_ROWS`] rows, contiguous): the weights are read once for all
/// rows. `None` leaves the case to candle.
fn few_rows_f32(xs: &Tensor, weight: &Tensor) -> candle_core::Result<Option<Tensor>> {
    let dims = xs.dims();
    let Some((&k, leading)) = dims.split_last() else {
        return Ok(None);
    };
    let m: usize = leading.iter().product();
    if !(1..=crate::kernels::gemv::MAX_ROWS).contains(&m) || weight.dim(1)? != k {
        return Ok(None);
    }
    let n = weight.dim(0)?;
    let product = crate::kernels::tensor::with_f32(xs, |x| {
        crate::kernels::tensor::with_f32(weight, |w| {
            let mut out = vec![0f32; m * n];
            crate::kernels::gemv::matmul_rows(x, m, w, n, &mut out).map(|()| out)
        })
    })?;
    let Some(Ok(Some(Some(out)))) = product else {
        return Ok(None);
    };
    let mut shape = leading.to_vec();
    shape.push(n);
    Tensor::from_vec(out, shape, xs.device()).map(Some)
}
