//! EnCodec's weight-normalised convolutions (transformers' `EncodecConv1d` and
//! `EncodecConvTranspose1d`), split along time to bound their scratch memory.

use candle_core::Tensor;

use super::pad::{ceil_div, extra_padding, pad1d, pad_mode, PadMode};
use super::Config;
use crate::error::Result;
use crate::weights::Vb;

/// Largest im2col/col2im scratch (in elements) one convolution call may allocate. At 32 kHz
/// the outer layers would otherwise build buffers of up to 1.7 GB for 30 s of audio; longer
/// inputs are split along time into pieces whose outputs are computed from exactly the same
/// input samples, so the result does not depend on the split.
const CONV_SCRATCH_ELEMS: usize = 1 << 23;

/// Shape of a stride-1 convolution: channels in and out, taps and dilation.
#[derive(Clone, Copy, Debug)]
pub(super) struct ConvSpec {
    pub(super) cin: usize,
    pub(super) cout: usize,
    pub(super) kernel: usize,
    pub(super) dilation: usize,
}

impl ConvSpec {
    pub(super) fn new(cin: usize, cout: usize, kernel: usize, dilation: usize) -> Self {
        Self {
            cin,
            cout,
            kernel,
            dilation,
        }
    }
}

/// Weight-normalised 1-D convolution with EnCodec's asymmetric/causal padding
/// (transformers' `EncodecConv1d`).
pub(super) struct Conv1d {
    /// `[out, k, in]`, tap-major: with time-major signals, the `k * in` inputs of one output
    /// frame are then one contiguous run in both the weights and the padded input.
    pub(super) weight: Tensor,
    /// `[1, out, 1]`, ready to broadcast over `[B, out, T]`.
    pub(super) bias: Tensor,
    pub(super) stride: usize,
    pub(super) dilation: usize,
    causal: bool,
    pub(super) pad_mode: PadMode,
}

impl Conv1d {
    /// Loads `conv.weight_g`/`weight_v`/`bias` under `vb`.
    pub(super) fn new(spec: &ConvSpec, cfg: &Config, vb: &Vb<'_>) -> Result<Self> {
        let vb = vb.pp("conv");
        let weight = vb
            .weight_norm(&[spec.cout, spec.cin, spec.kernel])?
            .transpose(1, 2)?
            .contiguous()?;
        let bias = vb.get(&[spec.cout], "bias")?.reshape((1, spec.cout, 1))?;
        Ok(Self {
            weight,
            bias,
            stride: 1,
            dilation: spec.dilation,
            causal: cfg.use_causal_conv,
            pad_mode: pad_mode(cfg),
        })
    }

    /// A strided convolution (the encoder's downsampling layers): `spec` with `stride`.
    pub(super) fn strided(
        spec: &ConvSpec,
        stride: usize,
        cfg: &Config,
        vb: &Vb<'_>,
    ) -> Result<Self> {
        Ok(Self {
            stride: stride.max(1),
            ..Self::new(spec, cfg, vb)?
        })
    }

    /// Input samples one output reads: `taps` spread by the dilation.
    pub(super) fn span(&self, taps: usize) -> usize {
        (taps - 1) * self.dilation + 1
    }

    /// Frames after its own that an output of this (unstrided) convolution reads: what a
    /// decode must wait for before the output is final.
    pub(super) fn lookahead(&self) -> Result<usize> {
        Ok(self.reach()?.1)
    }

    /// Frames before its own that an output of this (unstrided) convolution reads: what a
    /// decode that resumes must run it over again.
    pub(super) fn lookbehind(&self) -> Result<usize> {
        Ok(self.reach()?.0)
    }

    /// Frames (behind, ahead) an output reads: `padding`'s split of the kernel's padding,
    /// without what completes a last strided window.
    fn reach(&self) -> Result<(usize, usize)> {
        let total = self.span(self.weight.dim(1)?).saturating_sub(self.stride);
        Ok(match self.causal {
            true => (total, 0),
            false => (total - total / 2, total / 2),
        })
    }

    /// Samples padded on the (left, right) of an input of `length`: transformers' split of
    /// the kernel's padding, plus what completes the last strided window.
    pub(super) fn padding(&self, length: usize, taps: usize) -> (usize, usize) {
        let kernel = self.span(taps);
        let padding_total = kernel.saturating_sub(self.stride);
        let extra = extra_padding(length, kernel, self.stride, padding_total);
        if self.causal {
            (padding_total, extra)
        } else {
            let right = padding_total / 2;
            (padding_total - right, right + extra)
        }
    }

    /// `[B, in, T]` -> `[B, out, T']`, within the default scratch budget.
    pub(super) fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        self.forward_with_budget(xs, CONV_SCRATCH_ELEMS)
    }

    fn forward_with_budget(&self, xs: &Tensor, budget: usize) -> Result<Tensor> {
        let (batch, c_in, length) = xs.dims3()?;
        let taps = self.weight.dim(1)?;
        let weight = self.weight.transpose(1, 2)?.contiguous()?;
        let kernel = self.span(taps);
        let (left, right) = self.padding(length, taps);
        let padded = pad1d(xs, left, right, self.pad_mode)?;
        let padded_len = padded.dim(2)?;
        if padded_len < kernel {
            return Err(candle_core::Error::Msg(format!(
                "EnCodec conv: {padded_len} padded samples are fewer than the kernel {kernel}"
            ))
            .into());
        }
        let out_len = (padded_len - kernel) / self.stride + 1;
        let chunk = (budget / (batch * c_in * taps).max(1)).max(1);
        let ys = if chunk >= out_len {
            padded.conv1d(&weight, 0, self.stride, self.dilation, 1)?
        } else {
            let mut pieces = Vec::with_capacity(out_len.div_ceil(chunk));
            let mut start = 0;
            while start < out_len {
                let end = (start + chunk).min(out_len);
                let in_start = start * self.stride;
                let in_len = (end - 1 - start) * self.stride + kernel;
                let piece = padded.narrow(2, in_start, in_len)?.contiguous()?;
                pieces.push(piece.conv1d(&weight, 0, self.stride, self.dilation, 1)?);
                start = end;
            }
            Tensor::cat(&pieces, 2)?
        };
        Ok(ys.broadcast_add(&self.bias)?)
    }
}

/// Weight-normalised transposed convolution whose output is trimmed back to
/// `stride * input_len` samples (transformers' `EncodecConvTranspose1d`).
pub(super) struct ConvTranspose1d {
    /// `[in, k, out]`, tap-major: one input frame's contributions to the `k` output frames
    /// it reaches come out of one product as `k` contiguous frames.
    pub(super) weight: Tensor,
    /// `[1, out, 1]`.
    pub(super) bias: Tensor,
    pub(super) stride: usize,
    causal: bool,
    trim_right_ratio: f64,
}

impl ConvTranspose1d {
    /// Loads `conv.weight_g`/`weight_v`/`bias` under `vb`, kernel `2 * ratio`.
    pub(super) fn new(
        cin: usize,
        cout: usize,
        ratio: usize,
        cfg: &Config,
        vb: &Vb<'_>,
    ) -> Result<Self> {
        let vb = vb.pp("conv");
        let weight = vb
            .weight_norm(&[cin, cout, 2 * ratio])?
            .transpose(1, 2)?
            .contiguous()?;
        let bias = vb.get(&[cout], "bias")?.reshape((1, cout, 1))?;
        Ok(Self {
            weight,
            bias,
            stride: ratio,
            causal: cfg.use_causal_conv,
            trim_right_ratio: cfg.trim_right_ratio,
        })
    }

    /// Samples trimmed from the (left, right) of the full transposed-convolution output.
    pub(super) fn trim(&self, kernel: usize) -> (usize, usize) {
        let padding_total = kernel.saturating_sub(self.stride);
        let right = if self.causal {
            (padding_total as f64 * self.trim_right_ratio).ceil() as usize
        } else {
            padding_total / 2
        };
        (
            padding_total - right.min(padding_total),
            right.min(padding_total),
        )
    }

    /// `[B, in, T]` -> `[B, out, T']`, within the default scratch budget.
    pub(super) fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        self.forward_with_budget(xs, CONV_SCRATCH_ELEMS)
    }

    /// The untrimmed transposed convolution, one batch item at a time: candle 0.11.1's CPU
    /// `conv_transpose1d` (col2im path) mixes up batch items when B > 1, because its matmul
    /// folds the batch of a transposed left operand into rows as if it were row-major.
    fn conv_transpose(&self, xs: &Tensor, weight: &Tensor) -> Result<Tensor> {
        let batch = xs.dim(0)?;
        if batch == 1 {
            return Ok(xs.conv_transpose1d(weight, 0, 0, self.stride, 1, 1)?);
        }
        let items = (0..batch)
            .map(|b| {
                xs.narrow(0, b, 1)?
                    .contiguous()?
                    .conv_transpose1d(weight, 0, 0, self.stride, 1, 1)
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Tensor::cat(&items, 0)?)
    }

    fn forward_with_budget(&self, xs: &Tensor, budget: usize) -> Result<Tensor> {
        let (batch, _c_in, length) = xs.dims3()?;
        let (_, kernel, c_out) = self.weight.dims3()?;
        let weight = self.weight.transpose(1, 2)?.contiguous()?;
        let stride = self.stride;
        if length == 0 {
            return Ok(Tensor::zeros((batch, c_out, 0), xs.dtype(), xs.device())?);
        }
        let full_len = (length - 1) * stride + kernel;
        let (left, right) = self.trim(kernel);
        let (out_start, out_end) = (left, full_len - right);
        // Each input frame produces `c_out * kernel` scratch values and covers `stride`
        // outputs; size output pieces (a multiple of the stride) to stay within the budget.
        let frames = (budget / (batch * c_out * kernel).max(1)).max(1);
        let chunk = frames * stride;
        let ys = if chunk >= out_end - out_start {
            let full = self.conv_transpose(xs, &weight)?;
            full.narrow(2, out_start, out_end - out_start)?
        } else {
            let mut pieces = Vec::with_capacity((out_end - out_start).div_ceil(chunk));
            let mut start = out_start;
            while start < out_end {
                let end = (start + chunk).min(out_end);
                // Output o receives input i when i*stride <= o < i*stride + kernel; take every
                // such input so each output sums exactly the terms of the whole computation.
                let first =
                    ceil_div(start as i64 - kernel as i64 + 1, stride as i64).max(0) as usize;
                let last = ((end - 1) / stride + 1).min(length);
                let piece = xs.narrow(2, first, last - first)?.contiguous()?;
                let local = self.conv_transpose(&piece, &weight)?;
                pieces.push(local.narrow(2, start - first * stride, end - start)?);
                start = end;
            }
            Tensor::cat(&pieces, 2)?
        };
        Ok(ys.broadcast_add(&self.bias)?)
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device};

    use super::*;
    use crate::encodec::test_util::{random, row};

    /// Direct definition of a transposed convolution, `[1, cin, L]` -> `[1, cout, (L-1)s+k]`.
    fn convtr_reference(
        x: &[f32],
        w: &[f32],
        cin: usize,
        cout: usize,
        k: usize,
        s: usize,
    ) -> Vec<f32> {
        let l = x.len() / cin;
        let full = (l - 1) * s + k;
        let mut y = vec![0f32; cout * full];
        for i in 0..l {
            for ci in 0..cin {
                for co in 0..cout {
                    for kk in 0..k {
                        y[co * full + i * s + kk] += x[ci * l + i] * w[(ci * cout + co) * k + kk];
                    }
                }
            }
        }
        y
    }

    #[test]
    fn conv_transpose_trims_to_stride_times_length_and_chunks_exactly() -> Result<()> {
        let (cin, cout, stride, length) = (3, 2, 3, 5);
        let kernel = 2 * stride;
        let w = random(&[cin, cout, kernel], 1, 0.5)?;
        let x = random(&[1, cin, length], 2, 1.0)?;
        let full = convtr_reference(&row(&x), &row(&w), cin, cout, kernel, stride);
        let full_len = (length - 1) * stride + kernel;
        // Batched, the item must come out as alone (candle's batched col2im path does not).
        let x2 = Tensor::cat(&[&random(&[1, cin, length], 3, 1.0)?, &x], 0)?;
        for (causal, left) in [(false, 2), (true, 0)] {
            let conv = ConvTranspose1d {
                weight: w.transpose(1, 2)?.contiguous()?,
                bias: Tensor::zeros((1, cout, 1), DType::F32, &Device::Cpu)?,
                stride,
                causal,
                trim_right_ratio: 1.0,
            };
            let whole = conv.forward(&x)?;
            assert_eq!(whole.dims(), [1, cout, stride * length]);
            let expected: Vec<f32> = (0..cout)
                .flat_map(|c| {
                    full[c * full_len + left..c * full_len + left + stride * length].to_vec()
                })
                .collect();
            let got = row(&whole);
            for (g, e) in got.iter().zip(&expected) {
                assert!(
                    (g - e).abs() < 1e-5,
                    "causal={causal}: {got:?} vs {expected:?}"
                );
            }
            // A scratch budget of one or two frames forces many pieces.
            for budget in [1, cout * kernel * 2] {
                let chunked = conv.forward_with_budget(&x, budget)?;
                assert_eq!(row(&chunked), got, "budget {budget}");
            }
            let batched = conv.forward(&x2)?;
            assert_eq!(row(&batched.narrow(0, 1, 1)?), got);
        }
        Ok(())
    }

    #[test]
    fn conv1d_pads_like_transformers_and_chunks_exactly() -> Result<()> {
        let (cin, cout, taps, dilation, length) = (2, 3, 3, 2, 9);
        let w = random(&[cout, cin, taps], 3, 0.5)?;
        let x = random(&[1, cin, length], 4, 1.0)?;
        let conv = Conv1d {
            weight: w.transpose(1, 2)?.contiguous()?,
            bias: random(&[1, cout, 1], 5, 0.1)?,
            stride: 1,
            dilation,
            causal: false,
            pad_mode: PadMode::Reflect,
        };
        let y = conv.forward(&x)?;
        assert_eq!(y.dims(), [1, cout, length]);
        // Effective kernel 5: two reflected samples each side, then a valid convolution.
        let (xv, wv, bv) = (row(&x), row(&w), row(&conv.bias));
        let padded: Vec<Vec<f32>> = (0..cin)
            .map(|c| {
                let s = &xv[c * length..(c + 1) * length];
                let mut p = vec![s[2], s[1]];
                p.extend_from_slice(s);
                p.extend([s[length - 2], s[length - 3]]);
                p
            })
            .collect();
        let got = row(&y);
        for co in 0..cout {
            for t in 0..length {
                let mut acc = bv[co];
                for (ci, p) in padded.iter().enumerate() {
                    for k in 0..taps {
                        acc += wv[(co * cin + ci) * taps + k] * p[t + k * dilation];
                    }
                }
                assert!((got[co * length + t] - acc).abs() < 1e-5, "({co}, {t})");
            }
        }
        for budget in [1, cin * taps * 4] {
            assert_eq!(row(&conv.forward_with_budget(&x, budget)?), got);
        }
        Ok(())
    }
}
