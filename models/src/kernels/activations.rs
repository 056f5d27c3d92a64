//! Element-wise activations for the CPU, vectorised. candle applies ELU and exact GELU one
//! element at a time through libm's `expf` and `erff`; EnCodec runs ELU over tens of
//! millions of samples per clip, and every decoder step runs GELU on each layer.

use candle_core::{DType, Tensor};
use rayon::prelude::*;

/// Elements per parallel task.
const TASK: usize = 1 << 15;

/// `ELU(x) = x` for `x > 0`, else `exp(x) - 1` (alpha 1, as EnCodec uses). Vectorised on
/// f32 CPU tensors; candle's own otherwise.
pub(crate) fn elu(xs: &Tensor) -> candle_core::Result<Tensor> {
    match map::<Elu>(xs)? {
        Some(ys) => Ok(ys),
        None => xs.elu(1.0),
    }
}

/// [`elu`] in place over a slice, in parallel.
pub(crate) fn elu_in_place(xs: &mut [f32]) {
    xs.par_chunks_mut(TASK).for_each(map_in_place::<Elu>);
}

/// Exact GELU, `x * (1 + erf(x / sqrt 2)) / 2` (MusicGen's `gelu`), with an erf accurate
/// to 1.5e-7. Vectorised on f32 CPU tensors; candle's own otherwise.
pub(crate) fn gelu_erf(xs: &Tensor) -> candle_core::Result<Tensor> {
    match map::<GeluErf>(xs)? {
        Some(ys) => Ok(ys),
        None => xs.gelu_erf(),
    }
}

/// Exact (erf) GELU of every element of `xs`, on the calling thread.
pub(crate) fn gelu_erf_in_place(xs: &mut [f32]) {
    map_in_place::<GeluErf>(xs);
}

/// A function applied to every element, in plain arithmetic the compiler vectorises.
trait Activation {
    fn apply(x: f32) -> f32;
}

struct Elu;

impl Activation for Elu {
    #[inline(always)]
    fn apply(x: f32) -> f32 {
        let negative = exp_non_positive(x.min(0.0)) - 1.0;
        if x > 0.0 {
            x
        } else {
            negative
        }
    }
}

struct GeluErf;

impl Activation for GeluErf {
    #[inline(always)]
    fn apply(x: f32) -> f32 {
        0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
    }
}

/// `A` over a tensor's elements in parallel; `None` for tensors other than f32 on the CPU.
fn map<A: Activation>(xs: &Tensor) -> candle_core::Result<Option<Tensor>> {
    if !xs.device().is_cpu() || xs.dtype() != DType::F32 {
        return Ok(None);
    }
    let xs = xs.contiguous()?;
    let Some(mut out) = crate::kernels::tensor::with_f32(&xs, <[f32]>::to_vec)? else {
        return Ok(None);
    };
    out.par_chunks_mut(TASK).for_each(map_in_place::<A>);
    Ok(Some(Tensor::from_vec(out, xs.shape(), xs.device())?))
}

crate::kernels::multiversion! {
    /// `A` over every element of `xs`, on the calling thread.
    fn map_in_place<A: Activation>(xs: &mut [f32]) {
        for x in xs {
            *x = A::apply(*x);
        }
    }
}

crate::kernels::multiversion! {
    /// One LSTM step's cell and hidden state from its gate pre-activations (`frame`, the
    /// input projection with biases, plus `recurrent`, `W_hh h`), gates in torch's order
    /// i, f, g, o.
    pub(crate) fn lstm_cell(frame: &[f32], recurrent: &[f32], cx: &mut [f32], hx: &mut [f32]) {
        let h = hx.len();
        let gate = |g: usize| {
            frame[g * h..(g + 1) * h]
                .iter()
                .zip(&recurrent[g * h..(g + 1) * h])
        };
        let gates = gate(0).zip(gate(1)).zip(gate(2)).zip(gate(3));
        for ((((i, f), g), o), (c, hv)) in gates.zip(cx.iter_mut().zip(hx.iter_mut())) {
            *c = sigmoid(f.0 + f.1) * *c + sigmoid(i.0 + i.1) * tanh(g.0 + g.1);
            *hv = sigmoid(o.0 + o.1) * tanh(*c);
        }
    }
}

/// The logistic function `1 / (1 + exp(-x))`, through [`exp_non_positive`] so that loops
/// of it vectorise; within 2e-7 of the exact value.
#[inline(always)]
fn sigmoid(x: f32) -> f32 {
    let e = exp_non_positive(-x.abs());
    let positive = 1.0 / (1.0 + e);
    if x >= 0.0 {
        positive
    } else {
        e * positive
    }
}

/// `tanh(x) = (1 - exp(-2|x|)) / (1 + exp(-2|x|))` with the sign of `x`, through
/// [`exp_non_positive`]; within 2e-7 of the exact value.
#[inline(always)]
fn tanh(x: f32) -> f32 {
    let e = exp_non_positive(-2.0 * x.abs());
    ((1.0 - e) / (1.0 + e)).copysign(x)
}

/// `erf(x)` by Abramowitz and Stegun 7.1.26 (absolute error below 1.5e-7), odd in `x`.
#[inline(always)]
fn erf(x: f32) -> f32 {
    const P: f32 = 0.327_591_1;
    const A: [f32; 5] = [
        0.254_829_6,
        -0.284_496_74,
        1.421_413_7,
        -1.453_152_1,
        1.061_405_4,
    ];
    let a = x.abs();
    let t = 1.0 / (1.0 + P * a);
    let poly = t * (A[0] + t * (A[1] + t * (A[2] + t * (A[3] + t * A[4]))));
    let y = 1.0 - poly * exp_non_positive(-a * a);
    if x < 0.0 {
        -y
    } else {
        y
    }
}

/// `exp(x)` for `x <= 0` in plain arithmetic the compiler vectorises: `x = n ln 2 + r`
/// with `|r| <= ln 2 / 2`, a degree-6 Taylor polynomial for `exp(r)` (error below 2e-7
/// relative) and `2^n` built from its exponent bits. Below -87 the result is flushed to 0
/// (the true value is under 2e-38). NaN propagates.
#[inline(always)]
pub(crate) fn exp_non_positive(x: f32) -> f32 {
    const LOG2_E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // Adding and subtracting 1.5 * 2^23 rounds to the nearest integer in f32 arithmetic.
    const ROUND: f32 = 12_582_912.0;
    let clamped = x.max(-87.0);
    let shifted = clamped * LOG2_E + ROUND;
    let n = shifted - ROUND;
    let r = (clamped - n * LN2_HI) - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    // `shifted` holds n in its low mantissa bits, so 2^n is built with integer lanes
    // only; `n as i32` would be a saturating conversion, done one lane at a time.
    let exponent = shifted
        .to_bits()
        .wrapping_sub(ROUND.to_bits())
        .wrapping_add(127);
    let scale = f32::from_bits(exponent << 23);
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
    fn sigmoid_and_tanh_match_the_standard_library() {
        for i in -4000..=4000 {
            let x = i as f32 * 0.01;
            let exact = 1.0 / (1.0 + f64::from(-x).exp());
            assert!((f64::from(sigmoid(x)) - exact).abs() < 2e-7, "sigmoid({x})");
            let exact = f64::from(x).tanh();
            assert!((f64::from(tanh(x)) - exact).abs() < 2e-7, "tanh({x})");
        }
        assert_eq!((sigmoid(-200.0), sigmoid(200.0)), (0.0, 1.0));
        assert_eq!((tanh(-200.0), tanh(200.0)), (-1.0, 1.0));
    }

    #[test]
    fn gelu_matches_the_exact_definition() -> candle_core::Result<()> {
        let values: Vec<f32> = (-4000..=4000).map(|i| i as f32 * 0.002).collect();
        let xs = Tensor::from_vec(values.clone(), values.len(), &candle_core::Device::Cpu)?;
        let ours = gelu_erf(&xs)?.to_vec1::<f32>()?;
        let theirs = xs.gelu_erf()?.to_vec1::<f32>()?;
        // erf's 1.5e-7 scaled by x / 2, plus rounding of the f32 result.
        for ((a, b), x) in ours.iter().zip(&theirs).zip(&values) {
            assert!(
                (a - b).abs() <= 3e-7 * x.abs().max(1.0),
                "gelu({x}): {a} vs {b}"
            );
        }
        Ok(())
    }

    #[test]
    fn elu_matches_candles_on_every_path() -> candle_core::Result<()> {
        let mut rng = crate::random::Rng::new(5);
        // Longer than one task and not a multiple of it, laid out transposed so the
        // tensor is not contiguous.
        let (rows, cols) = (7, TASK / 3 + 5);
        let values = rng.uniform_f32s(rows * cols, -10.0, 10.0);
        let xs = Tensor::from_vec(values, (rows, cols), &candle_core::Device::Cpu)?.t()?;
        let ours = elu(&xs)?.flatten_all()?.to_vec1::<f32>()?;
        let theirs = xs.elu(1.0)?.flatten_all()?.to_vec1::<f32>()?;
        for (a, b) in ours.iter().zip(&theirs) {
            assert!((a - b).abs() <= 1e-6 * b.abs().max(1.0), "{a} vs {b}");
        }
        Ok(())
    }
}
