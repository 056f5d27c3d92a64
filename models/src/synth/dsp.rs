//! DSP building blocks for the built-in synth: band-limited oscillators, a fast sine,
//! envelopes, filters (one-pole, RBJ biquads), sine partial banks and noise.
//! Everything is a small `Copy`-free struct stepped one sample at a time from straight loops.

use crate::random::Rng;

/// 2π, as `f32`.
pub const TAU: f32 = std::f32::consts::TAU;

/// Adding then subtracting 1.5·2^23 rounds an `f32` below 2^22 to the nearest integer in
/// two instructions (`round` is a library call on baseline x86-64).
const ROUND_MAGIC: f32 = 12_582_912.0;

/// `sin(2π·phase)` for a phase in cycles (|phase| < 2^21), accurate to ~4e-6. Branch-free:
/// reduces to [-0.5, 0.5], folds onto a quarter wave with `min`, and evaluates an odd Taylor
/// polynomial up to x⁹ there.
#[inline]
pub fn fast_sin(phase: f32) -> f32 {
    let y = phase - ((phase + ROUND_MAGIC) - ROUND_MAGIC);
    let a = y.abs();
    // A plain comparison compiles to one `minss`; `f32::min` adds NaN handling.
    let x = if a < 0.5 - a { a } else { 0.5 - a } * TAU;
    let x2 = x * x;
    let p = x
        * (1.0
            + x2 * (-1.0 / 6.0
                + x2 * (1.0 / 120.0 + x2 * (-1.0 / 5040.0 + x2 * (1.0 / 362_880.0)))));
    p.copysign(y)
}

/// `max(x, 0)` as a plain comparison (one `maxss`; `f32::max` adds NaN handling).
#[inline]
fn relu(x: f32) -> f32 {
    if x > 0.0 {
        x
    } else {
        0.0
    }
}

/// The PolyBLEP residual of a unit downward step at phase 0 (`t` in cycles, `inv_dt` the
/// reciprocal of the phase increment, below 0.5): subtracting it smooths each discontinuity
/// over two samples, which removes most of the aliasing that would fold back from high notes.
/// Branch-free (`b²` just before the wrap, `a²` just after it), so arrays of oscillators
/// vectorise.
#[inline]
pub fn poly_blep(t: f32, inv_dt: f32) -> f32 {
    let a = relu(1.0 - t * inv_dt);
    let b = relu((t - 1.0) * inv_dt + 1.0);
    b * b - a * a
}

/// Band-limited sawtooth in `[-1, 1]` at `phase` (cycles, `[0, 1)`); `inv_dt` = 1 / increment.
#[inline]
pub fn saw(phase: f32, inv_dt: f32) -> f32 {
    2.0 * phase - 1.0 - poly_blep(phase, inv_dt)
}

/// Band-limited 50% square in `[-1, 1]`: the difference of two saws half a cycle apart, so a
/// saw + square mix costs two PolyBLEPs (the shared saw is computed once after inlining).
#[inline]
pub fn square(phase: f32, inv_dt: f32) -> f32 {
    let other = if phase < 0.5 {
        phase + 0.5
    } else {
        phase - 0.5
    };
    saw(other, inv_dt) - saw(phase, inv_dt)
}

/// Advances a phase in cycles by `inc` (assumed in `[0, 1)`), wrapping into `[0, 1)`.
#[inline]
pub fn advance(phase: &mut f32, inc: f32) {
    let p = *phase + inc;
    *phase = if p >= 1.0 { p - 1.0 } else { p };
}

/// White noise, uniform in `[-1, 1)`, fully determined by its seed.
#[derive(Clone, Debug)]
pub struct Noise {
    rng: Rng,
}

impl Noise {
    /// A noise source whose whole sequence is fixed by `seed`.
    pub fn new(seed: u64) -> Self {
        Self {
            rng: Rng::new(seed),
        }
    }

    /// The next sample.
    #[inline]
    pub fn next_sample(&mut self) -> f32 {
        // 24 random bits map exactly onto the f32 mantissa.
        (self.rng.next_u64() >> 40) as f32 * (2.0 / 16_777_216.0) - 1.0
    }
}

/// Samples per envelope segment: the envelope is exact at segment ends and linear between.
const ENV_BLOCK: usize = 16;

/// Linear attack, exponential decay to a sustain level, exponential release. Evaluated in
/// closed form every 16 samples and interpolated linearly in between (an error far below
/// hearing), so the per-sample work is one addition instead of a multiply-add-compare chain,
/// which was the slowest dependency in every voice.
#[derive(Clone, Debug)]
pub struct Adsr {
    level: f32,
    step: f32,
    left: usize,
    /// Level change per block while attacking.
    attack_block: f32,
    attacking: bool,
    /// Per-block decay multiplier and the sustain level it approaches.
    decay_block: f32,
    sustain: f32,
    /// Per-block release multiplier, used once released.
    release_block: f32,
    released: bool,
}

impl Adsr {
    /// `attack_s` is the ramp time; `decay_tau` and `release_tau` are exponential time
    /// constants in seconds (the level falls by 1/e per constant); `sustain` is at most 1.
    pub fn new(sr: f32, attack_s: f32, decay_tau: f32, sustain: f32, release_tau: f32) -> Self {
        let block = ENV_BLOCK as f32;
        Self {
            level: 0.0,
            step: 0.0,
            left: 0,
            attack_block: block / (attack_s * sr).max(1.0),
            attacking: true,
            decay_block: decay_coef(sr / block, decay_tau),
            sustain: sustain.min(1.0),
            release_block: decay_coef(sr / block, release_tau),
            released: false,
        }
    }

    /// Starts the release from wherever the envelope is.
    pub fn release(&mut self) {
        self.released = true;
        self.left = 0;
    }

    /// The next envelope value.
    #[inline]
    pub fn next_value(&mut self) -> f32 {
        if self.left == 0 {
            let target = if self.released {
                self.level * self.release_block
            } else if self.attacking {
                (self.level + self.attack_block).min(1.0)
            } else {
                self.sustain + (self.level - self.sustain) * self.decay_block
            };
            self.attacking &= target < 1.0;
            self.step = (target - self.level) / ENV_BLOCK as f32;
            self.left = ENV_BLOCK;
        }
        self.left -= 1;
        self.level += self.step;
        self.level
    }
}

/// Per-sample multiplier of an exponential decay with time constant `tau` seconds.
#[inline]
pub fn decay_coef(sr: f32, tau: f32) -> f32 {
    (-1.0 / (tau * sr).max(1e-3)).exp()
}

/// One-pole lowpass (and its complementary highpass), the cheapest smoothing filter.
#[derive(Clone, Debug)]
pub struct OnePole {
    a: f32,
    b: f32,
    z: f32,
}

impl OnePole {
    /// A filter with its -3 dB corner at `cutoff_hz`.
    pub fn new(sr: f32, cutoff_hz: f32) -> Self {
        let b = (-TAU * cutoff_hz.max(1.0) / sr).exp();
        Self {
            a: 1.0 - b,
            b,
            z: 0.0,
        }
    }

    /// Lowpassed sample.
    #[inline]
    pub fn lowpass(&mut self, x: f32) -> f32 {
        // `b·z + a·x` keeps only a multiply and an add on the sample-to-sample dependency.
        self.z = self.b * self.z + self.a * x;
        self.z
    }

    /// Highpassed sample (input minus its lowpass).
    #[inline]
    pub fn highpass(&mut self, x: f32) -> f32 {
        x - self.lowpass(x)
    }
}

/// RBJ-cookbook biquad in direct form I. Its state is just the last two inputs and outputs,
/// so coefficients can change between samples (filter envelopes), and only one multiply and
/// one subtraction sit on the sample-to-sample dependency chain (a state-variable filter has
/// three times that, which made it the bottleneck of every synth voice).
#[derive(Clone, Debug, Default)]
pub struct Biquad {
    b0: f32,
    b1: f32,
    b2: f32,
    a1: f32,
    a2: f32,
    x1: f32,
    x2: f32,
    y1: f32,
    y2: f32,
}

impl Biquad {
    /// 12 dB/octave lowpass (resonant above q = 0.707).
    pub fn lowpass(sr: f32, cutoff_hz: f32, q: f32) -> Self {
        let mut f = Self::default();
        f.set_lowpass(sr, cutoff_hz, q);
        f
    }

    /// 12 dB/octave highpass.
    pub fn highpass(sr: f32, cutoff_hz: f32, q: f32) -> Self {
        let (c, alpha) = Self::design(sr, cutoff_hz, q);
        let mut f = Self::default();
        f.set([(1.0 + c) / 2.0, -(1.0 + c), (1.0 + c) / 2.0], c, alpha);
        f
    }

    /// Bandpass with 0 dB gain at the centre.
    pub fn bandpass(sr: f32, centre_hz: f32, q: f32) -> Self {
        let (c, alpha) = Self::design(sr, centre_hz, q);
        let mut f = Self::default();
        f.set([alpha, 0.0, -alpha], c, alpha);
        f
    }

    /// Retunes as a lowpass, keeping the signal history. Costs a `sin_cos`: callers that
    /// sweep it update every few samples.
    pub fn set_lowpass(&mut self, sr: f32, cutoff_hz: f32, q: f32) {
        let (c, alpha) = Self::design(sr, cutoff_hz, q);
        self.set([(1.0 - c) / 2.0, 1.0 - c, (1.0 - c) / 2.0], c, alpha);
    }

    /// Cosine of the normalised frequency and the RBJ `alpha`.
    fn design(sr: f32, f: f32, q: f32) -> (f32, f32) {
        // Frequencies above Nyquist would wrap around; clamp just below it.
        let (sin, cos) = (TAU * f.clamp(10.0, 0.45 * sr) / sr).sin_cos();
        (cos, sin / (2.0 * q.max(0.05)))
    }

    /// Installs normalised coefficients, keeping the state.
    fn set(&mut self, b: [f32; 3], cos_w: f32, alpha: f32) {
        let a0 = 1.0 + alpha;
        [self.b0, self.b1, self.b2] = b.map(|v| v / a0);
        self.a1 = -2.0 * cos_w / a0;
        self.a2 = (1.0 - alpha) / a0;
    }

    /// Filters one sample.
    #[inline]
    pub fn process(&mut self, x: f32) -> f32 {
        // Left to right, so the last output enters last: the short dependency chain.
        let y = self.b0 * x + self.b1 * self.x1 + self.b2 * self.x2
            - self.a2 * self.y2
            - self.a1 * self.y1;
        (self.x2, self.x1, self.y2, self.y1) = (self.x1, x, self.y1, y);
        y
    }
}

/// A bank of `N` exponentially decaying sines, each a complex rotation
/// `(v + iu) ← r·e^{iw}·(v + iu)`: four multiplies per partial per sample instead of a `sin`
/// call, laid out so the compiler runs four partials per SIMD instruction (use N a multiple
/// of 4). `f32` keeps the pitch exact (the angle lives in `sin(w)`, which rounds relative to
/// its size); rounding of the rotation's length lets a steady tone drift by about 1% over
/// 20 s, far below what the ear notices.
#[derive(Clone, Debug)]
pub struct Partials<const N: usize> {
    cos_w: [f32; N],
    sin_w: [f32; N],
    c: [f32; N],
    s: [f32; N],
    u: [f32; N],
    v: [f32; N],
}

impl<const N: usize> Partials<N> {
    /// Partials at `hz` with peak `amp`, starting at phase zero (so the sum starts at 0),
    /// decaying with time constants `tau` seconds (`f32::INFINITY` for a steady tone).
    /// Partials at or above 0.45·`sr` are silenced rather than aliased.
    pub fn new(sr: f32, hz: &[f32; N], amp: &[f32; N], tau: &[f32; N]) -> Self {
        let mut p = Self {
            cos_w: [0.0; N],
            sin_w: [0.0; N],
            c: [0.0; N],
            s: [0.0; N],
            u: [0.0; N],
            v: [0.0; N],
        };
        for (i, (&f, &a)) in hz.iter().zip(amp).enumerate() {
            let w = std::f64::consts::TAU * f64::from(f) / f64::from(sr);
            p.cos_w[i] = w.cos() as f32;
            p.sin_w[i] = w.sin() as f32;
            p.v[i] = if f < 0.45 * sr { a } else { 0.0 };
        }
        p.set_decay(sr, tau);
        p
    }

    /// Changes the decay time constants (e.g. when a damper falls), keeping the phase.
    pub fn set_decay(&mut self, sr: f32, tau: &[f32; N]) {
        for (i, &t) in tau.iter().enumerate() {
            let r = if t.is_finite() {
                decay_coef(sr, t)
            } else {
                1.0
            };
            self.c[i] = r * self.cos_w[i];
            self.s[i] = r * self.sin_w[i];
        }
    }

    /// Advances every partial one sample and returns their values.
    #[inline(always)]
    pub fn next_each(&mut self) -> [f32; N] {
        for i in 0..N {
            let (u, v) = (self.u[i], self.v[i]);
            self.u[i] = self.c[i] * u + self.s[i] * v;
            self.v[i] = self.c[i] * v - self.s[i] * u;
        }
        self.u
    }

    /// Adds `gain` times the sum of all partials into `out`, one sample per element. Running
    /// the whole loop here keeps the bank in registers (with N ≤ 8) instead of memory.
    pub fn add_to(&mut self, out: &mut [f32], gain: f32) {
        let (c, s) = (self.c, self.s);
        let (mut u, mut v) = (self.u, self.v);
        for o in out.iter_mut() {
            // Four running sums, added pairwise: the vector-friendly order.
            let mut acc = [0.0f32; 4];
            for i in 0..N {
                let (ui, vi) = (u[i], v[i]);
                u[i] = c[i] * ui + s[i] * vi;
                v[i] = c[i] * vi - s[i] * ui;
                acc[i % 4] += u[i];
            }
            *o += gain * ((acc[0] + acc[1]) + (acc[2] + acc[3]));
        }
        (self.u, self.v) = (u, v);
    }
}

/// A cheap `tanh`-like soft clipper: the cubic `x − 4x³/27`, which reaches ±1 with zero
/// slope at ±1.5 and is held there; no division, so it costs a few multiplies.
#[inline]
pub fn soft_clip(x: f32) -> f32 {
    let x = x.clamp(-1.5, 1.5);
    x - (4.0 / 27.0) * x * x * x
}

/// Linear fades over the first `fade_in` and last `fade_out` samples, so a rendered note
/// starts and ends exactly at zero and never clicks in the mix.
pub fn fade_edges(buf: &mut [f32], fade_in: usize, fade_out: usize) {
    let n = buf.len();
    let fi = fade_in.min(n);
    for (i, s) in buf[..fi].iter_mut().enumerate() {
        *s *= i as f32 / fi as f32;
    }
    let fo = fade_out.min(n);
    for (i, s) in buf[n - fo..].iter_mut().enumerate() {
        *s *= (fo - 1 - i) as f32 / fo as f32;
    }
}

/// The largest absolute sample.
pub fn peak(buf: &[f32]) -> f32 {
    buf.iter().fold(0.0f32, |m, &s| m.max(s.abs()))
}

/// Scales `buf` so that its peak is `target` (no-op for silence).
pub fn normalize_peak(buf: &mut [f32], target: f32) {
    let p = peak(buf);
    if p > 1e-9 {
        let g = target / p;
        buf.iter_mut().for_each(|s| *s *= g);
    }
}

/// Test helper: the fundamental of `x` in Hz from the normalised square difference function
/// (McLeod): the first lag whose correlation is near the best, refined on a multiple of the
/// period for sub-sample precision.
#[cfg(test)]
pub(crate) fn estimate_hz(x: &[f32], sr: f32, min_hz: f32) -> f32 {
    let max_lag = ((sr / min_hz) as usize).min(x.len() / 2);
    let w = x.len() - max_lag;
    let nsdf = |lag: usize| {
        let (mut num, mut den) = (0.0f64, 0.0f64);
        for i in 0..w {
            let (a, b) = (f64::from(x[i]), f64::from(x[i + lag]));
            num += a * b;
            den += a * a + b * b;
        }
        2.0 * num / den.max(1e-30)
    };
    let r: Vec<f64> = (0..=max_lag).map(nsdf).collect();
    let best = r[2..].iter().cloned().fold(f64::MIN, f64::max);
    let first_neg = r.iter().position(|&v| v < 0.0).unwrap_or(1);
    let peak_at = |from: usize, to: usize| {
        let to = to.min(max_lag - 1);
        let i = (from.max(1)..=to)
            .max_by(|&a, &b| r[a].total_cmp(&r[b]))
            .unwrap_or(from);
        let (a, b, c) = (r[i - 1], r[i], r[i + 1]);
        i as f64 + 0.5 * (a - c) / (a - 2.0 * b + c).min(-1e-12)
    };
    let first = (first_neg..max_lag)
        .find(|&i| r[i] > 0.9 * best && r[i] >= r[i - 1] && r[i] >= r[i + 1])
        .unwrap_or(1);
    let p = peak_at(first - 1, first + 1);
    let m = ((max_lag as f64 - 2.0) / p).floor().max(1.0);
    let guess = (m * p).round() as usize;
    sr / (peak_at(guess - 2, guess + 2) / m) as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_sin_matches_sin() {
        for i in -2000..2000 {
            let p = i as f32 * 0.001_37;
            assert!((fast_sin(p) - (TAU * p).sin()).abs() < 2e-5, "{p}");
        }
    }

    #[test]
    fn blep_oscillators_are_bounded_and_alias_less() {
        // A 3 kHz saw: its 9th harmonic (27 kHz) folds to 17.1 kHz, between real harmonics.
        let (sr, f) = (44_100.0, 3000.0);
        let (dt, mut ph) = (f / sr, 0.0f32);
        let (mut blep, mut naive, mut sq) = (vec![], vec![], vec![]);
        for _ in 0..8192 {
            blep.push(saw(ph, 1.0 / dt));
            naive.push(2.0 * ph - 1.0);
            sq.push(square(ph, 1.0 / dt));
            advance(&mut ph, dt);
        }
        let alias = |x: &[f32]| {
            let w = TAU * (9.0 * f - sr) / sr;
            let (re, im) = x.iter().enumerate().fold((0.0, 0.0), |(re, im), (n, &v)| {
                (re + v * (w * n as f32).cos(), im + v * (w * n as f32).sin())
            });
            (re * re + im * im).sqrt()
        };
        assert!(
            alias(&blep) < 0.3 * alias(&naive),
            "{} {}",
            alias(&blep),
            alias(&naive)
        );
        let mean = sq.iter().sum::<f32>() / 8192.0;
        assert!(mean.abs() < 0.01 && blep.iter().chain(&sq).all(|v| v.abs() <= 1.01));
    }

    #[test]
    fn partials_keep_pitch_and_decay() {
        let sr = 44_100.0;
        let (hz, amp) = ([55.0, 110.0, 0.0, 0.0], [1.0, 0.5, 0.0, 0.0]);
        let mut p = Partials::new(sr, &hz, &amp, &[0.5, f32::INFINITY, 1.0, 1.0]);
        let mut x = vec![0.0f32; 22_050];
        p.add_to(&mut x, 1.0);
        assert!(x[0].abs() < 0.02);
        let hz = estimate_hz(&x[..8000], sr, 40.0);
        assert!((hz / 55.0 - 1.0).abs() < 0.001, "{hz}");
    }

    #[test]
    fn filters_pass_and_stop_the_right_bands() {
        let sr = 44_100.0;
        fn gain(mut f: impl FnMut(f32) -> f32, hz: f32) -> f32 {
            let sr = 44_100.0;
            let mut e = 0.0f32;
            for n in 0..8820 {
                let y = f((TAU * hz * n as f32 / sr).sin());
                if n > 4410 {
                    e = e.max(y.abs());
                }
            }
            e
        }
        let mut lp = Biquad::lowpass(sr, 1000.0, 0.707);
        assert!(gain(|x| lp.process(x), 100.0) > 0.95);
        let mut lp = Biquad::lowpass(sr, 1000.0, 0.707);
        assert!(gain(|x| lp.process(x), 8000.0) < 0.03);
        let mut hp = Biquad::highpass(sr, 1000.0, 0.707);
        assert!(gain(|x| hp.process(x), 100.0) < 0.02);
        let mut bp = Biquad::bandpass(sr, 1000.0, 2.0);
        assert!(gain(|x| bp.process(x), 1000.0) > 0.97);
        let mut sweep = Biquad::lowpass(sr, 5000.0, 0.707);
        sweep.set_lowpass(sr, 500.0, 0.707);
        assert!(gain(|x| sweep.process(x), 5000.0) < 0.02);
        let mut op = OnePole::new(sr, 200.0);
        assert!(gain(|x| op.highpass(x), 5000.0) > 0.95);
    }

    #[test]
    fn adsr_and_fades_shape_the_edges() {
        let mut env = Adsr::new(1000.0, 0.032, 0.1, 0.5, 0.05);
        let v: Vec<f32> = (0..300).map(|_| env.next_value()).collect();
        assert!((v[7] - 0.25).abs() < 1e-3 && (v[31] - 1.0).abs() < 1e-6);
        // Decaying towards 0.5 with a 100-sample time constant: 0.5 + 0.5·e^(-268/100).
        assert!((v[299] - 0.534).abs() < 0.002, "{}", v[299]);
        env.release();
        (0..300).for_each(|_| {
            env.next_value();
        });
        assert!(env.next_value() < 0.01);
        let mut b = vec![1.0f32; 100];
        fade_edges(&mut b, 10, 10);
        assert!(b[0] == 0.0 && b[99] == 0.0 && b[50] == 1.0);
    }
}
