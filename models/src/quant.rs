//! Weight formats of the large projections: dense in the model's dtype, or quantized at
//! load to 8 or 4 bits. On the CPU, f32 weights are packed at load into panels
//! (`kernels::panels`) and the quantized formats are our own blocks (`kernels::quant`):
//! both kernels read each weight once for every activation row of a step, on the same
//! thread pool as every other kernel. On GPUs they are candle's dense and ggml kernels.

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Device, Module, Tensor};
use candle_nn::Linear;

use crate::error::{ModelError, Result};
use crate::kernels::panels;
pub use crate::kernels::panels::{PaddedRows, PanelMatrix};
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
    /// Dense weights `[out, in]` off the CPU or in a dtype other than f32.
    Dense(Linear),
    /// Dense f32 weights on the CPU, packed into panels.
    Panels(PanelMatrix),
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
                return Self::dense_on_cpu(weight);
            };
            let values = weight
                .to_dtype(DType::F32)?
                .flatten_all()?
                .to_vec1::<f32>()?;
            return match BlockMatrix::quantize(&values, rows, inner, blocks) {
                Some(matrix) => Ok(Self::Blocks(matrix)),
                None => Self::dense_on_cpu(weight),
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
    /// Dense weights on the CPU: f32 ones packed into panels, others kept for candle.
    fn dense_on_cpu(weight: Tensor) -> Result<Self> {
        if weight.dtype() != DType::F32 {
            return Ok(Self::Dense(Linear::new(weight, None)));
        }
        let (rows, cols) = weight.dims2()?;
        let weight = weight.contiguous()?;
        // Packed straight from the tensor's storage: no third copy of the matrix.
        let packed =
            crate::kernels::tensor::with_f32(&weight, |w| PanelMatrix::pack(w, rows, cols))?;
        match packed.flatten() {
            Some(matrix) => Ok(Self::Panels(matrix)),
            None => Ok(Self::Dense(Linear::new(weight, None))),
        }
    }

    /// The weights as the CPU kernels read them, for a caller that runs the product's
    /// tasks itself (`kernels::phases`); `None` for weights candle multiplies.
    pub fn cpu_weights(&self) -> Option<CpuWeights<'_>> {
        match self {
            Self::Panels(matrix) => Some(CpuWeights::Panels(matrix)),
            Self::Blocks(matrix) => Some(CpuWeights::Blocks(matrix)),
            Self::Dense(_) | Self::Ggml(_) => None,
        }
    }
}

/// A projection's weights on the CPU, borrowed: f32 panels or our quantized blocks.
#[derive(Clone, Copy)]
pub enum CpuWeights<'a> {
    /// Dense f32, in panels.
    Panels(&'a PanelMatrix),
    /// Our quantized blocks.
    Blocks(&'a BlockMatrix),
}

/// A projection's input rows on the CPU in the form its weights read: padded f32 rows for
/// panels, 8-bit blocks for quantized weights. Kept from projection to projection, so the
/// buffers are reused.
#[derive(Clone, Debug, Default)]
pub struct ProjectionRows {
    padded: PaddedRows,
    quantized: QuantizedRows,
}

impl ProjectionRows {
    /// Prepares `x` (`rows` rows of `weights.cols()`) for a product with `weights`; the
    /// other form is forgotten, so weights of the other kind decline these rows.
    pub fn prepare(&mut self, weights: CpuWeights, x: &[f32], rows: usize) {
        match weights {
            CpuWeights::Panels(matrix) => {
                self.padded.pad(x, rows, matrix.cols);
                self.quantized.rows = 0;
            }
            CpuWeights::Blocks(matrix) => {
                self.quantized.quantize(x, rows, matrix.cols);
                self.padded.clear();
            }
        }
    }

    /// Rows prepared for the last weights [`Self::prepare`] was given.
    pub fn rows(&self) -> usize {
        self.padded.rows.max(self.quantized.rows)
    }
}

impl CpuWeights<'_> {
    /// Output features.
    pub fn rows(&self) -> usize {
        match self {
            Self::Panels(matrix) => matrix.rows,
            Self::Blocks(matrix) => matrix.rows,
        }
    }

    /// Input features.
    pub fn cols(&self) -> usize {
        match self {
            Self::Panels(matrix) => matrix.cols,
            Self::Blocks(matrix) => matrix.cols,
        }
    }

    /// Whether the product reads f32 panels (rather than quantized blocks).
    pub fn reads_panels(&self) -> bool {
        matches!(self, Self::Panels(_))
    }

    /// Output features one task computes: what each kernel measured best with.
    pub fn task_features(&self) -> usize {
        match self {
            Self::Panels(_) => panels::TASK_FEATURES,
            Self::Blocks(_) => product::TASK_FEATURES,
        }
    }

    /// Output features `first..` of the product with `rows`, prepared for these weights by
    /// [`ProjectionRows::prepare`], as many as `sums` (`[features, rows]`) holds. `None`
    /// when the shapes do not fit.
    pub fn features(&self, rows: &ProjectionRows, first: usize, sums: &mut [f32]) -> Option<()> {
        match self {
            Self::Panels(matrix) => panels::features(&rows.padded, matrix, first, sums),
            Self::Blocks(matrix) => product::features(&rows.quantized, matrix, first, sums),
        }
    }
}

impl Module for Proj {
    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Self::Dense(linear) => linear.forward(xs),
            Self::Panels(matrix) => panels_forward(xs, matrix),
            Self::Blocks(matrix) => blocks_forward(xs, matrix),
            Self::Ggml(matmul) => matmul.forward(xs),
        }
    }
}

/// `xs W^T` for our CPU blocks: the activations are quantized to 8 bits once per call, and
/// every row (a decoder step has two a job, a prompt's prefill one a token) is multiplied
/// in one pass over the weights.
fn blocks_forward(xs: &Tensor, matrix: &BlockMatrix) -> candle_core::Result<Tensor> {
    let (k, n) = (matrix.cols, matrix.rows);
    cpu_forward(xs, "a quantized projection", k, n, |x, out| {
        let mut quantized = QuantizedRows::default();
        quantized.quantize(x, x.len() / k, k);
        product::matmul_rows(&quantized, matrix, out)
    })
}

/// `xs W^T` for f32 panels on the CPU, every row in one pass over the weights.
fn panels_forward(xs: &Tensor, matrix: &PanelMatrix) -> candle_core::Result<Tensor> {
    cpu_forward(xs, "a projection", matrix.cols, matrix.rows, |x, out| {
        let mut rows = PaddedRows::default();
        rows.pad(x, x.len() / matrix.cols, matrix.cols);
        panels::matmul(&rows, matrix, out)
    })
}

/// `xs W^T` for weights of `n` outputs and `k` inputs that our CPU kernels multiply:
/// `product(x, out)` fills `out` (`[m, n]`) from the `m` rows of `x` (`[m, k]`), or
/// returns `None` when they do not fit. `what` names the projection in errors.
fn cpu_forward(
    xs: &Tensor,
    what: &str,
    k: usize,
    n: usize,
    product: impl FnOnce(&[f32], &mut [f32]) -> Option<()>,
) -> candle_core::Result<Tensor> {
    let dims = xs.dims();
    let Some((&inputs, leading)) = dims.split_last() else {
        candle_core::bail!("{what} needs at least one dimension");
    };
    if inputs != k {
        candle_core::bail!("{what} of {k} inputs got {inputs}");
    }
    let m: usize = leading.iter().product();
    let mut out = vec![0f32; m * n];
    if m > 0 {
        let xs = xs.to_dtype(DType::F32)?.contiguous()?;
        match crate::kernels::tensor::with_f32(&xs, |x| product(x, &mut out))? {
            None => candle_core::bail!("{what} runs on CPU tensors"),
            Some(None) => candle_core::bail!("{what}: {m} rows do not fit {n}x{k}"),
            Some(Some(())) => {}
        }
    }
    let mut shape = leading.to_vec();
    shape.push(n);
    Tensor::from_vec(out, shape, xs.device())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// CPU f32 weights are packed into panels, and any number of rows through them agrees
    /// with candle's matmul to rounding; other dtypes stay with candle.
    #[test]
    fn f32_panels_agree_with_candle_and_other_dtypes_stay_dense() {
        let device = Device::Cpu;
        let mut rng = crate::random::Rng::new(11);
        let (out, inner) = (70, 200);
        let values = rng.uniform_f32s(out * inner, -1.0, 1.0);
        let weight = Tensor::from_vec(values, (out, inner), &device).unwrap();
        let proj = Proj::new(weight.clone(), WeightFormat::Dense).unwrap();
        assert!(matches!(proj, Proj::Panels(_)));
        for rows in [1, 3, 40] {
            let xs = Tensor::from_vec(
                rng.uniform_f32s(rows * inner, -1.0, 1.0),
                (1, rows, inner),
                &device,
            )
            .unwrap();
            let ours = proj.forward(&xs).unwrap();
            let theirs = xs.broadcast_matmul(&weight.t().unwrap()).unwrap();
            assert_eq!(ours.dims(), &[1, rows, out]);
            let worst = (ours - theirs)
                .unwrap()
                .abs()
                .unwrap()
                .flatten_all()
                .unwrap()
                .max(0)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(worst < 1e-4, "{rows} rows: {worst}");
        }
        let wrong = Tensor::zeros((1, 2, inner + 1), DType::F32, &device).unwrap();
        assert!(proj.forward(&wrong).is_err(), "a row of the wrong width");
        let half = weight.to_dtype(DType::BF16).unwrap();
        assert!(matches!(
            Proj::new(half, WeightFormat::Dense).unwrap(),
            Proj::Dense(_)
        ));
    }
}
