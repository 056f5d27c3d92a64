//! Element-wise activations for the CPU, vectorised. candle applies ELU one element at a
//! time through libm's `expf`; EnCodec runs it over tens of millions of samples per clip.

use candle_core::{DType, Tensor};
use rayon::prelude::*;

/// Elements per parallel task.
const TASK: usize = 1 << 15;

/// `ELU(x) = x` for `x > 0`, else `exp(x) - 1` (alpha 1, as EnCodec uses). Vectorised on
/// contiguous f32 CPU tensors; candle's own otherwise.
pub fn elu(xs: &Tensor) -> candle_core::Result<Tensor> {
    if !xs.device().is_cpu() || xs.dtype() != DType::F32 {
        return xs.elu(1.0);
    }
    let xs = xs.contiguous()?;
    let mut out = vec![0f32; xs.elem_count()];
    let done = crate::cpu::with_f32(&xs, |x| {
        out.par_chunks_mut(TASK)
            .zip(x.par_chunks(TASK))
            .for_each(|(out, x)| elu_slice(x, out));
    })?;
    if done.is_none() {
        return xs.elu(1.0);
    }
    Tensor::from_vec(out, xs.shape(), xs.device())
}

fn elu_slice(x: &[f32], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has AVX2 and FMA, checked just above.
        unsafe { elu_avx2_fma(x, out) };
        return;
    }
    elu_body(x, out);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn elu_avx2_fma(x: &[f32], out: &mut [f32]) {
    elu_body(x, out);
}

#[inline(always)]
fn elu_body(x: &[f32], out: &mut [f32]) {
    for (o, &v) in out.iter_mut().zip(x) {
        let negative = exp_non_positive(v.min(0.0)) - 1.0;
        *o = if v > 0.0 { v } else { negative };
    }
}

/// `exp(x)` for `x <= 0` in plain arithmetic the compiler vectorises: `x = n ln 2 + r`
/// with `|r| <= ln 2 / 2`, a degree-6 Taylor polynomial for `exp(r)` (error below 2e-7
/// relative) and `2^n` built from its exponent bits. Below -87 the result is flushed to 0
/// (the true value is under 2e-38). NaN propagates.
#[inline(always)]
fn exp_non_positive(x: f32) -> f32 {
    const LOG2_E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // Adding and subtracting 1.5 * 2^23 rounds to the nearest integer in f32 arithmetic.
    const ROUND: f32 = 12_582_912.0;
    let clamped = x.max(-87.0);
    let n = (clamped * LOG2_E + ROUND) - ROUND;
    let r = (clamped - n * LN2_HI) - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    let scale = f32::from_bits(((n as i32 + 127) as u32) << 23);
    let y = p * scale;
    if x < -87.0 {
        0.0
    } else if x.is_nan() {
        x
    } else {
        y
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_matches_the_standard_library_over_the_whole_negative_range() {
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x <= 0.0 {
            let want = f64::from(x).exp();
            let got = f64::from(exp_non_positive(x));
            worst = worst.max((got - want).abs() / want);
            x += 0.001_3;
        }
        assert!(worst < 3e-7, "relative error {worst}");
        assert_eq!(exp_non_positive(-200.0), 0.0);
        assert!(exp_non_positive(f32::NAN).is_nan());
    }

    #[test]
    fn elu_matches_candles_on_every_path() -> candle_core::Result<()> {
        let mut rng = crate::rng::Rng::new(5);
        // Longer than one task and not a multiple of it, laid out transposed so the
        // tensor is not contiguous.
        let (rows, cols) = (7, TASK / 3 + 5);
        let values: Vec<f32> = (0..rows * cols)
            .map(|_| (rng.uniform() as f32 - 0.5) * 20.0)
            .collect();
        let xs = Tensor::from_vec(values, (rows, cols), &candle_core::Device::Cpu)?.t()?;
        let ours = elu(&xs)?.flatten_all()?.to_vec1::<f32>()?;
        let theirs = xs.elu(1.0)?.flatten_all()?.to_vec1::<f32>()?;
        for (a, b) in ours.iter().zip(&theirs) {
            assert!((a - b).abs() <= 1e-6 * b.abs().max(1.0), "{a} vs {b}");
        }
        Ok(())
    }
}
