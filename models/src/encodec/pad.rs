//! Padding of EnCodec's convolutions: torch's `F.pad` modes, transformers' reflect padding of
//! short inputs, and the extra right padding that completes a strided convolution's last window.

use candle_core::Tensor;

use super::Config;
use crate::error::Result;

/// `torch.nn.functional.pad` modes the decoder implements.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum PadMode {
    Reflect,
    Constant,
    Replicate,
}

impl PadMode {
    /// The mode named `name` in the config, if implemented.
    pub(super) fn parse(name: &str) -> Option<Self> {
        match name {
            "reflect" => Some(Self::Reflect),
            "constant" => Some(Self::Constant),
            "replicate" => Some(Self::Replicate),
            _ => None,
        }
    }
}

/// transformers' `EncodecConv1d._pad1d`: `F.pad`, except that reflect padding of an input no
/// longer than the padding first appends zeros (then drops them again), as torch's reflect
/// needs `pad < length`.
pub(super) fn pad1d(xs: &Tensor, left: usize, right: usize, mode: PadMode) -> Result<Tensor> {
    if left == 0 && right == 0 {
        return Ok(xs.clone());
    }
    let dim = xs.rank().saturating_sub(1);
    match mode {
        PadMode::Constant => Ok(xs.pad_with_zeros(dim, left, right)?),
        PadMode::Replicate => Ok(xs.pad_with_same(dim, left, right)?),
        PadMode::Reflect => {
            let length = xs.dim(dim)?;
            let extra = reflect_extra_zeros(length, left, right);
            // index_select reads contiguous tensors only (conv and LSTM outputs already are).
            let xs = if extra > 0 {
                xs.pad_with_zeros(dim, 0, extra)?
            } else {
                xs.contiguous()?
            };
            let padded_len = length + extra;
            let mut parts = Vec::with_capacity(3);
            if left > 0 {
                // x[left], ..., x[1]: the mirror image excluding the edge sample.
                parts.push(reversed(&xs, dim, 1, left)?);
            }
            parts.push(xs.clone());
            if right > 0 {
                // x[n-2], ..., x[n-1-right].
                parts.push(reversed(&xs, dim, padded_len - 1 - right, right)?);
            }
            let padded = Tensor::cat(&parts, dim)?;
            Ok(padded.narrow(dim, 0, left + length + right)?)
        }
    }
}

/// [`pad1d`] on a time-major signal: `length` frames of `channels` samples each, padded to
/// `left + length + right` frames with the same values as [`pad1d`] gives.
pub(super) fn pad_frames(
    xs: &[f32],
    channels: usize,
    length: usize,
    (left, right): (usize, usize),
    mode: PadMode,
) -> Vec<f32> {
    let padded_len = left + length + right;
    let mut out = vec![0f32; channels * padded_len];
    if length == 0 || channels == 0 {
        return out;
    }
    let reflected_len = length + reflect_extra_zeros(length, left, right);
    let source = |i: usize| -> Option<usize> {
        let j = match mode {
            PadMode::Constant => i.checked_sub(left)?,
            PadMode::Replicate => i.saturating_sub(left).min(length - 1),
            PadMode::Reflect if i < left => left - i,
            PadMode::Reflect if i < left + reflected_len => i - left,
            PadMode::Reflect => (2 * reflected_len + left).checked_sub(i + 2)?,
        };
        (j < length).then_some(j)
    };
    out[left * channels..(left + length) * channels].copy_from_slice(&xs[..length * channels]);
    for i in (0..left).chain(left + length..padded_len) {
        if let Some(j) = source(i) {
            out[i * channels..(i + 1) * channels]
                .copy_from_slice(&xs[j * channels..(j + 1) * channels]);
        }
    }
    out
}

/// Zeros appended before reflect padding an input of `length` samples by (`left`,
/// `right`): torch's reflect needs more samples than the padding, and transformers pads a
/// shorter input with zeros first (and drops them again after).
fn reflect_extra_zeros(length: usize, left: usize, right: usize) -> usize {
    (left.max(right) + 1).saturating_sub(length)
}

/// `xs[start .. start + len]` along `dim`, in reverse order; `xs` must be contiguous.
fn reversed(xs: &Tensor, dim: usize, start: usize, len: usize) -> Result<Tensor> {
    let ids: Vec<u32> = (start..start + len).rev().map(|i| i as u32).collect();
    let ids = Tensor::from_vec(ids, len, xs.device())?;
    Ok(xs.index_select(&ids, dim)?)
}

/// transformers' `_get_extra_padding_for_conv1d`: right padding that makes the last window
/// of a strided convolution complete (always 0 for stride 1).
pub(super) fn extra_padding(
    length: usize,
    kernel: usize,
    stride: usize,
    padding_total: usize,
) -> usize {
    let (length, kernel, stride, padding_total) = (
        length as i64,
        kernel as i64,
        stride as i64,
        padding_total as i64,
    );
    let n_frames_minus_one = ceil_div(length - kernel + padding_total, stride);
    let ideal_length = n_frames_minus_one * stride + kernel - padding_total;
    (ideal_length - length).max(0) as usize
}

/// `ceil(a / b)` for `b > 0`, negative `a` included.
pub(super) fn ceil_div(a: i64, b: i64) -> i64 {
    -((-a).div_euclid(b))
}

/// The config's padding mode.
pub(super) fn pad_mode(cfg: &Config) -> PadMode {
    // `validate` rejects other modes before any layer is built.
    PadMode::parse(&cfg.pad_mode).unwrap_or(PadMode::Reflect)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encodec::test_util::{row, t1};

    #[test]
    fn reflect_padding_matches_torch_including_short_inputs() -> Result<()> {
        // Expected values printed by transformers 4.47.1 `EncodecConv1d._pad1d`.
        let cases: [(&[f32], usize, usize, &[f32]); 4] = [
            (
                &[1., 2., 3., 4., 5.],
                2,
                3,
                &[3., 2., 1., 2., 3., 4., 5., 4., 3., 2.],
            ),
            (&[1., 2.], 3, 2, &[0., 0., 2., 1., 2., 0., 0.]),
            (&[1., 2., 3.], 1, 3, &[2., 1., 2., 3., 0., 3., 2.]),
            (&[7.], 2, 2, &[0., 0., 7., 0., 0.]),
        ];
        for (input, left, right, expected) in cases {
            let padded = pad1d(&t1(input)?, left, right, PadMode::Reflect)?;
            assert_eq!(row(&padded), expected, "{input:?} padded ({left}, {right})");
            let frames = pad_frames(input, 1, input.len(), (left, right), PadMode::Reflect);
            assert_eq!(
                frames, expected,
                "frames {input:?} padded ({left}, {right})"
            );
        }
        let x = t1(&[1., 2., 3.])?;
        assert_eq!(
            row(&pad1d(&x, 2, 1, PadMode::Constant)?),
            [0., 0., 1., 2., 3., 0.]
        );
        assert_eq!(
            row(&pad1d(&x, 1, 2, PadMode::Replicate)?),
            [1., 1., 2., 3., 3., 3.]
        );
        // Two channels, frames (1, 4), (2, 5), (3, 6).
        let two_channels = [1., 4., 2., 5., 3., 6.];
        assert_eq!(
            pad_frames(&two_channels, 2, 3, (2, 1), PadMode::Constant),
            [0., 0., 0., 0., 1., 4., 2., 5., 3., 6., 0., 0.]
        );
        assert_eq!(
            pad_frames(&two_channels, 2, 3, (1, 2), PadMode::Replicate),
            [1., 4., 1., 4., 2., 5., 3., 6., 3., 6., 3., 6.]
        );
        assert_eq!(
            pad_frames(&two_channels, 2, 3, (1, 1), PadMode::Reflect),
            [2., 5., 1., 4., 2., 5., 3., 6., 2., 5.]
        );
        Ok(())
    }

    #[test]
    fn extra_padding_completes_the_last_strided_window() {
        // (10 - 4 + 1) / 3 + 1 = 3.33 frames -> 4 frames need 12 samples.
        assert_eq!(extra_padding(10, 4, 3, 1), 2);
        assert_eq!(extra_padding(9, 4, 3, 1), 0);
        for length in 1..20 {
            assert_eq!(extra_padding(length, 7, 1, 6), 0);
        }
    }
}
