//! EnCodec's layers (the decoder's and the encoder's) on the CPU in f32, over plain
//! time-major `[time, channels]` buffers, one batch item at a time. candle's convolutions
//! first copy every shifted window of their input (im2col: seven copies of a 20 MB signal
//! for a 7-tap kernel at 32 kHz) and each of its LSTM steps is a dozen small tensor ops.
//! Here:
//! - an undilated convolution is one GEMM over the padded input, read in place (a frame's
//!   taps are one contiguous run, matching the tap-major weights); a dilated one is one
//!   GEMM per tap, and one with a few output channels is dot products;
//! - a transposed convolution is one GEMM per piece of input into a small scratch, then an
//!   overlap-add into the trimmed output;
//! - ELU runs in place, and a residual block adds its last convolution into its input;
//! - the LSTM projects every frame at once and runs its recurrence with the few-row
//!   product kernel of [`crate::kernels::gemv`] and vectorised gates, from zero state or
//!   from the state a decode stream carries.
//!
//! Time-major frames keep every GEMM's output contiguous per frame, the layout its kernels
//! store fastest, and let padding and the LSTM move whole frames. The sums are the candle
//! path's, in another order.

use std::borrow::Cow;

use candle_core::{DType, Device, Tensor};
use rayon::prelude::*;

use super::conv::{Conv1d, ConvTranspose1d};
use super::lstm::{Lstm, LstmState};
use super::pad::pad_frames;
use super::seanet::{Layer, ResnetBlock};
use crate::error::{ModelError, Result};
use crate::kernels::activations::{elu_in_place, lstm_cell};
use crate::kernels::gemm::{gemm_accumulate, MatrixView};
use crate::kernels::gemv::{dots, MAX_ROWS};
use crate::kernels::tensor::{cpu_data, CpuData};

/// One batch item's signal: `len` frames of `channels` samples, frame by frame.
#[derive(Clone, Debug)]
pub(super) struct Signal {
    pub(super) channels: usize,
    pub(super) len: usize,
    pub(super) data: Vec<f32>,
}

impl Signal {
    /// `len` frames that each hold `bias`. Written, not added to zeros: a fresh
    /// allocation's first read would map the shared zero page, and the write after it
    /// would then fault again and flush the other cores' TLBs.
    fn from_bias(bias: &[f32], len: usize) -> Self {
        let channels = bias.len();
        let mut data = vec![0f32; channels * len];
        data.par_chunks_mut(channels.max(1) * FRAMES_PER_TASK)
            .for_each(|frames| {
                for frame in frames.chunks_exact_mut(channels.max(1)) {
                    frame.copy_from_slice(bias);
                }
            });
        Self {
            channels,
            len,
            data,
        }
    }

    /// An error naming `layer` unless the signal has the `channels` it takes.
    fn expect_channels(&self, channels: usize, layer: &str) -> Result<()> {
        if self.channels != channels {
            return Err(failure(format!(
                "{layer} of {channels} channels given {}",
                self.channels
            )));
        }
        Ok(())
    }

    /// Adds `bias[c]` to channel `c` of every frame.
    fn add_bias(&mut self, bias: &[f32]) {
        self.data
            .par_chunks_mut(self.channels.max(1) * FRAMES_PER_TASK)
            .for_each(|frames| {
                for frame in frames.chunks_exact_mut(self.channels.max(1)) {
                    frame.iter_mut().zip(bias).for_each(|(v, b)| *v += b);
                }
            });
    }
}

/// Frames per parallel task of the element-wise passes.
const FRAMES_PER_TASK: usize = 256;

/// Values (4 MiB) of the scratch a transposed convolution fills per piece of its input:
/// small enough to stay in cache until its frames are added to the output.
const TRANSPOSED_SCRATCH: usize = 1 << 20;

fn failure(message: String) -> ModelError {
    ModelError::Candle(candle_core::Error::Msg(format!(
        "EnCodec CPU decode: {message}"
    )))
}

/// The elements of a weight, which the decoder keeps as contiguous f32 CPU tensors.
fn elements<'a>(tensor: &'a Tensor, what: &str) -> Result<CpuData<'a, f32>> {
    cpu_data(tensor)?.ok_or_else(|| failure(format!("{what} is not a contiguous f32 CPU tensor")))
}

/// [`gemm_accumulate`], with a refusal turned into an error naming the layer.
fn accumulate(
    shape: (usize, usize, usize),
    dst: (&mut [f32], MatrixView),
    a: (&[f32], MatrixView),
    b: (&[f32], MatrixView),
    layer: &str,
) -> Result<()> {
    gemm_accumulate(shape, dst.0, dst.1, a.0, a.1, b.0, b.1).ok_or_else(|| {
        failure(format!(
            "{layer}: operands do not match the shape {shape:?}"
        ))
    })
}

impl Conv1d {
    /// The convolution of `x` (of `ELU(x)` when `elu_input`), added to `sum` when given,
    /// which must have the output's shape.
    pub(super) fn forward_cpu(
        &self,
        x: Cow<'_, Signal>,
        elu_input: bool,
        sum: Option<Signal>,
    ) -> Result<Signal> {
        let weight = elements(&self.weight, "conv weight")?;
        let bias = elements(&self.bias, "conv bias")?;
        let (c_out, taps, c_in) = self.weight.dims3()?;
        x.expect_channels(c_in, "conv")?;
        let (left, right) = self.padding(x.len, taps);
        let padded_len = left + x.len + right;
        let kernel = self.span(taps);
        if padded_len < kernel {
            return Err(failure(format!(
                "{padded_len} padded samples are fewer than the kernel {kernel}"
            )));
        }
        let out_len = (padded_len - kernel) / self.stride + 1;
        let mut padded: Cow<'_, [f32]> = if left == 0 && right == 0 {
            match x {
                Cow::Borrowed(x) => Cow::Borrowed(&x.data),
                Cow::Owned(x) => Cow::Owned(x.data),
            }
        } else {
            Cow::Owned(pad_frames(
                &x.data,
                c_in,
                x.len,
                (left, right),
                self.pad_mode,
            ))
        };
        if elu_input {
            // ELU commutes with padding: reflected and replicated samples are copies, and
            // ELU(0) = 0.
            elu_in_place(padded.to_mut());
        }
        let mut out = match sum {
            Some(mut sum) if sum.channels == c_out && sum.len == out_len => {
                sum.add_bias(&bias);
                sum
            }
            Some(sum) => {
                return Err(failure(format!(
                    "residual of [{}, {}] added to a conv output of [{c_out}, {out_len}]",
                    sum.channels, sum.len
                )))
            }
            None => Signal::from_bias(&bias, out_len),
        };
        if self.dilation == 1 && self.stride == 1 && c_out <= MAX_ROWS {
            // A few output channels (the last layer's audio): each output frame is that
            // many dot products of the weights with its input window, which a GEMM of so
            // few rows runs far below speed.
            let k = taps * c_in;
            out.data
                .par_chunks_mut(c_out * FRAMES_PER_TASK)
                .enumerate()
                .for_each(|(task, chunk)| {
                    let mut sums = [0f32; MAX_ROWS];
                    for (t, frame) in (task * FRAMES_PER_TASK..).zip(chunk.chunks_exact_mut(c_out))
                    {
                        let window = &padded[t * c_in..t * c_in + k];
                        dots(&weight, k, window, &mut sums[..c_out]);
                        frame.iter_mut().zip(&sums).for_each(|(v, s)| *v += s);
                    }
                });
            return Ok(out);
        }
        if self.dilation == 1 && self.stride == 1 {
            // Output frame t reads padded frames t..t + taps: `taps * c_in` contiguous
            // values, in the order of the tap-major weights. One product does every tap.
            accumulate(
                (c_out, out_len, taps * c_in),
                (&mut out.data, channel_major(0, c_out)),
                (&weight, MatrixView::rows(0, taps * c_in)),
                (&padded, channel_major(0, c_in)),
                "conv",
            )?;
            return Ok(out);
        }
        for tap in 0..taps {
            // Channel ci of output frame t reads padded frame t * stride + tap * dilation.
            let window = MatrixView {
                offset: tap * self.dilation * c_in,
                row_stride: 1,
                col_stride: self.stride * c_in,
            };
            accumulate(
                (c_out, out_len, c_in),
                (&mut out.data, channel_major(0, c_out)),
                (&weight, MatrixView::rows(tap * c_in, taps * c_in)),
                (&padded, window),
                "conv",
            )?;
        }
        Ok(out)
    }
}

impl ConvTranspose1d {
    /// The transposed convolution of `x`, trimmed as the candle path trims it.
    pub(super) fn forward_cpu(&self, x: &Signal) -> Result<Signal> {
        let weight = elements(&self.weight, "transposed conv weight")?;
        let bias = elements(&self.bias, "transposed conv bias")?;
        let (c_in, kernel, c_out) = self.weight.dims3()?;
        x.expect_channels(c_in, "transposed conv")?;
        if x.len == 0 {
            return Ok(Signal::from_bias(&bias, 0));
        }
        let stride = self.stride;
        let full_len = (x.len - 1) * stride + kernel;
        let (left, right) = self.trim(kernel);
        let out_len = full_len - left - right;
        let mut out = Signal::from_bias(&bias, out_len);
        // Input frame i adds `kernel` frames (one product for a piece of input frames) to
        // output frames i * stride - left + tap, overlapping its neighbours' by
        // `kernel - stride`. Pieces bound the scratch those products fill.
        let produced = kernel * c_out;
        let piece = (TRANSPOSED_SCRATCH / produced).max(1);
        let mut scratch = Vec::new();
        for first in (0..x.len).step_by(piece) {
            let frames = piece.min(x.len - first);
            scratch.clear();
            scratch.resize(frames * produced, 0.0);
            accumulate(
                (produced, frames, c_in),
                (&mut scratch, channel_major(0, produced)),
                (&weight, channel_major(0, produced)),
                (&x.data, channel_major(first * c_in, c_in)),
                "transposed conv",
            )?;
            // Output frame o (before the trim) sums taps o - i * stride of inputs i.
            let begin = (first * stride).max(left);
            let end = ((first + frames - 1) * stride + kernel).min(left + out_len);
            let outputs = &mut out.data[(begin - left) * c_out..(end - left) * c_out];
            outputs
                .par_chunks_mut(c_out * FRAMES_PER_TASK)
                .enumerate()
                .for_each(|(task, chunk)| {
                    let task_begin = begin + task * FRAMES_PER_TASK;
                    for (o, frame) in (task_begin..).zip(chunk.chunks_exact_mut(c_out)) {
                        let last = (o / stride).min(first + frames - 1);
                        let lowest = (o + 1).saturating_sub(kernel).div_ceil(stride).max(first);
                        for i in lowest..=last {
                            let tap = o - i * stride;
                            let start = (i - first) * produced + tap * c_out;
                            let add = &scratch[start..start + c_out];
                            frame.iter_mut().zip(add).for_each(|(v, a)| *v += a);
                        }
                    }
                });
        }
        Ok(out)
    }
}

impl Lstm {
    /// The stacked LSTM over the time axis of `x`, plus `x`, from zero state.
    pub(super) fn forward_cpu(&self, x: Signal) -> Result<Signal> {
        self.forward_cpu_from(x, &mut LstmState::default())
    }

    /// [`Self::forward_cpu`] over the frames after those `state` has seen, which it then
    /// holds the state after.
    pub(super) fn forward_cpu_from(&self, x: Signal, state: &mut LstmState) -> Result<Signal> {
        let steps = x.len;
        // Each layer reads the previous one's `[T, H]` output; the first reads `x`.
        let mut input: Cow<'_, [f32]> = Cow::Borrowed(&x.data);
        let mut input_dim = x.channels;
        for (l, layer) in self.layers.iter().enumerate() {
            let h = layer.hidden;
            let w_ih = elements(&layer.w_ih, "LSTM weight_ih")?;
            let w_hh = elements(&layer.w_hh, "LSTM weight_hh")?;
            let bias = elements(&layer.bias, "LSTM bias")?;
            // Every frame's input projection plus both biases, `[T, 4H]`.
            let mut gates = vec![0f32; steps * 4 * h];
            gates
                .par_chunks_mut(4 * h)
                .for_each(|row| row.copy_from_slice(&bias));
            accumulate(
                (steps, 4 * h, input_dim),
                (&mut gates, MatrixView::rows(0, 4 * h)),
                (&input, MatrixView::rows(0, input_dim)),
                (
                    &w_ih,
                    MatrixView {
                        offset: 0,
                        row_stride: 1,
                        col_stride: input_dim,
                    },
                ),
                "LSTM input projection",
            )?;
            let mut outputs = vec![0f32; steps * h];
            let (mut hx, mut cx) = state.layer(l, h)?;
            let mut recurrent = vec![0f32; 4 * h];
            for (frame, output) in gates.chunks_exact(4 * h).zip(outputs.chunks_exact_mut(h)) {
                crate::kernels::gemv::matmul_rows(&hx, 1, &w_hh, 4 * h, &mut recurrent)
                    .ok_or_else(|| failure(format!("LSTM weight_hh is not [{}, {h}]", 4 * h)))?;
                lstm_cell(frame, &recurrent, &mut cx, &mut hx);
                output.copy_from_slice(&hx);
            }
            state.set_layer(l, (hx, cx));
            input = Cow::Owned(outputs);
            input_dim = h;
        }
        if input_dim != x.channels {
            return Err(failure(format!(
                "LSTM of {input_dim} features over {} channels",
                x.channels
            )));
        }
        // The last layer's output plus the input, in the output's buffer.
        let mut data = input.into_owned();
        data.iter_mut().zip(&x.data).for_each(|(y, v)| *y += v);
        Ok(Signal { data, ..x })
    }
}

/// A `[_, n]` matrix stored transposed from `offset` on: element `(i, j)` at
/// `offset + j * frame + i`, as a time-major signal holds `[channels, time]`.
fn channel_major(offset: usize, frame: usize) -> MatrixView {
    MatrixView {
        offset,
        row_stride: 1,
        col_stride: frame,
    }
}

impl ResnetBlock {
    /// `conv2(ELU(conv1(ELU(x)))) + shortcut(x)`, the sum accumulated into `x` itself when
    /// there is no shortcut convolution.
    fn forward_cpu(&self, x: Signal) -> Result<Signal> {
        let hidden = self.conv1.forward_cpu(Cow::Borrowed(&x), true, None)?;
        let residual = match &self.shortcut {
            Some(conv) => conv.forward_cpu(Cow::Borrowed(&x), false, None)?,
            None => x,
        };
        self.conv2
            .forward_cpu(Cow::Owned(hidden), true, Some(residual))
    }
}

impl Layer {
    /// Runs the layer on one batch item's signal.
    pub(super) fn forward_cpu(&self, mut x: Signal) -> Result<Signal> {
        match self {
            Self::Conv(conv) => conv.forward_cpu(Cow::Owned(x), false, None),
            Self::Lstm(lstm) => lstm.forward_cpu(x),
            Self::Elu => {
                elu_in_place(&mut x.data);
                Ok(x)
            }
            Self::ConvTranspose(conv) => conv.forward_cpu(&x),
            Self::Resnet(block) => block.forward_cpu(x),
        }
    }
}

/// The LSTM over `[1, C, T]` (f32, on the CPU) from `state`, which it then holds the
/// state after.
pub(super) fn run_lstm_from(lstm: &Lstm, xs: &Tensor, state: &mut LstmState) -> Result<Tensor> {
    let (_, channels, len) = xs.dims3()?;
    let data = xs.get(0)?.t()?.contiguous()?.flatten_all()?.to_vec1()?;
    let signal = lstm.forward_cpu_from(
        Signal {
            channels,
            len,
            data,
        },
        state,
    )?;
    let shape = (signal.len, signal.channels);
    Ok(Tensor::from_vec(signal.data, shape, xs.device())?
        .t()?
        .unsqueeze(0)?)
}

/// Runs `layers` on `[B, C, T]` (f32, on the CPU), one batch item at a time; the output has
/// `out_channels` channels.
pub(super) fn run_layers(
    layers: &[Layer],
    xs: &Tensor,
    out_channels: usize,
    device: &Device,
) -> Result<Tensor> {
    let (batch, channels, len) = xs.dims3()?;
    if batch == 0 {
        return Ok(Tensor::zeros((0, out_channels, 0), DType::F32, device)?);
    }
    let mut items = Vec::with_capacity(batch);
    for b in 0..batch {
        // Time-major: `[len, channels]`.
        let data = xs.get(b)?.t()?.contiguous()?.flatten_all()?.to_vec1()?;
        let mut signal = Signal {
            channels,
            len,
            data,
        };
        for layer in layers {
            signal = layer.forward_cpu(signal)?;
        }
        let shape = (signal.len, signal.channels);
        items.push(Tensor::from_vec(signal.data, shape, device)?.t()?);
    }
    Ok(Tensor::stack(&items, 0)?)
}
