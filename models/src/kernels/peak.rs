//! The compute peaks of this CPU on the kernel pool's threads: how many f32 FMAs and how
//! many int8 multiply-adds per second its vector units retire when nothing waits for
//! memory. A batched decoder step turns compute-bound at many rows; these are the ceilings
//! `son1k bench` sets its figures against.
//!
//! Each probe runs independent dependency chains in registers, enough to hide the
//! instructions' latency, with the same instructions the kernels use: FMA (on AVX-512's
//! sixteen lanes where the CPU has them) for f32, and for
//! int8 the sequence `quant::product` runs for 8-bit weights: with AVX-512 VNNI, one
//! `dpbusd` per 32 products, else AVX2's sign, `maddubs`, `madd` and add (per four).

use std::time::Instant;

/// Chains of the f32 probe: FMA latency (4 cycles) times two FMA ports, plus spare.
const F32_CHAINS: usize = 12;
/// Chains of the int8 probe: `dpbusd`'s latency (5 cycles) times two ports, plus spare.
const INT8_CHAINS: usize = 12;

/// What the peak probes measured.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Peaks {
    /// f32 floating-point operations per second (an FMA counts two), in billions.
    pub f32_gflops: f64,
    /// int8 operations per second (a multiply-add counts two), in billions.
    pub int8_gops: f64,
    /// The instructions the probes ran, as [`super::cpu_features`] names them.
    pub path: &'static str,
}

/// Measures both peaks on every thread of the kernel pool at once, each probe running
/// `rounds` loop iterations per thread (about a million take a few milliseconds).
pub fn measure_peaks(rounds: usize) -> Peaks {
    let threads = rayon::current_num_threads() as f64;
    let time = |probe: fn(usize) -> u64| {
        // A short warm-up brings the cores to their clock before the timed run.
        rayon::broadcast(|_| std::hint::black_box(probe(rounds / 10)));
        let start = Instant::now();
        rayon::broadcast(|_| std::hint::black_box(probe(rounds)));
        start.elapsed().as_secs_f64()
    };
    let f32_s = time(f32_probe);
    let int8_s = time(int8_probe);
    let f32_ops = (rounds * F32_CHAINS * f32_lanes() * 2) as f64 * threads;
    let int8_ops = (rounds * INT8_CHAINS * 32 * 2) as f64 * threads;
    Peaks {
        f32_gflops: f32_ops / f32_s / 1e9,
        int8_gops: int8_ops / int8_s / 1e9,
        path: super::cpu_features().1,
    }
}

/// The lanes of [`f32_probe`]'s vectors: those of the f32 kernels on this CPU.
fn f32_lanes() -> usize {
    #[cfg(target_arch = "x86_64")]
    if super::has_avx512f() {
        return 16;
    }
    8
}

/// `rounds` FMAs of [`f32_lanes`] lanes on each of the chains; returns a value made from
/// them, so no round can be dropped.
fn f32_probe(rounds: usize) -> u64 {
    super::dispatch!(
        avx512f => f32_probe_avx512(rounds),
        avx2_fma => f32_probe_avx2_fma(rounds),
        portable => f32_probe_portable(rounds),
    )
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
fn f32_probe_avx512(rounds: usize) -> u64 {
    use std::arch::x86_64::*;
    let a = _mm512_set1_ps(0.999_999);
    let b = _mm512_set1_ps(1e-7);
    let mut acc = [_mm512_set1_ps(1.0); F32_CHAINS];
    for _ in 0..rounds {
        for acc in acc.iter_mut() {
            *acc = _mm512_fmadd_ps(*acc, a, b);
        }
    }
    let total = acc
        .iter()
        .fold(_mm512_setzero_ps(), |s, a| _mm512_add_ps(s, *a));
    let mut lanes = [0f32; 16];
    // SAFETY: `lanes` holds sixteen floats.
    unsafe { _mm512_storeu_ps(lanes.as_mut_ptr(), total) };
    // Each lane holds what a lane of the eight-lane probes holds: half of their sum.
    (lanes.iter().sum::<f32>() / 2.0).to_bits() as u64
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn f32_probe_avx2_fma(rounds: usize) -> u64 {
    use std::arch::x86_64::*;
    let a = _mm256_set1_ps(0.999_999);
    let b = _mm256_set1_ps(1e-7);
    let mut acc = [_mm256_set1_ps(1.0); F32_CHAINS];
    for _ in 0..rounds {
        for acc in acc.iter_mut() {
            *acc = _mm256_fmadd_ps(*acc, a, b);
        }
    }
    let mut lanes = [0f32; 8];
    let total = acc
        .iter()
        .fold(_mm256_setzero_ps(), |s, a| _mm256_add_ps(s, *a));
    // SAFETY: `lanes` holds eight floats.
    unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), total) };
    lanes.iter().sum::<f32>().to_bits() as u64
}

fn f32_probe_portable(rounds: usize) -> u64 {
    let mut acc = [[1f32; 8]; F32_CHAINS];
    for _ in 0..rounds {
        for acc in acc.iter_mut() {
            for lane in acc.iter_mut() {
                *lane = lane.mul_add(0.999_999, 1e-7);
            }
        }
    }
    acc.iter().flatten().sum::<f32>().to_bits() as u64
}

/// `rounds` groups of 32 int8 products on each chain, each group the instructions of the
/// 8-bit product on this CPU; returns a value made from them.
fn int8_probe(rounds: usize) -> u64 {
    super::dispatch!(
        avx512_vnni => int8_probe_vnni(rounds),
        avx2_fma_f16c => int8_probe_avx2(rounds),
        portable => int8_probe_portable(rounds),
    )
}

/// The VNNI probe: each chain adds, per round, its shifted activations times the weights,
/// as the 8-bit product does (the weights' correction is shared by every row, so it is
/// left out). Each lane gains `4 * (129 + chain) * -3` a round.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512vnni")]
fn int8_probe_vnni(rounds: usize) -> u64 {
    use std::arch::x86_64::*;
    let weights = _mm256_set1_epi8(-3);
    let x: [__m256i; INT8_CHAINS] =
        std::array::from_fn(|i| _mm256_set1_epi8((129 + i) as u8 as i8));
    let x = std::hint::black_box(x);
    let mut acc = [_mm256_setzero_si256(); INT8_CHAINS];
    for _ in 0..rounds {
        for (x, acc) in x.iter().zip(acc.iter_mut()) {
            *acc = _mm256_dpbusd_epi32(*acc, *x, weights);
        }
    }
    lane_total(&acc)
}

/// What [`int8_probe_vnni`] returns, in plain arithmetic.
#[cfg(test)]
fn int8_probe_vnni_portable(rounds: usize) -> u64 {
    (0..INT8_CHAINS)
        .map(|chain| 8 * rounds as i64 * 4 * (129 + chain as i64) * -3)
        .sum::<i64>() as u64
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
fn int8_probe_avx2(rounds: usize) -> u64 {
    use std::arch::x86_64::*;
    let weights = _mm256_set1_epi8(-3);
    let magnitudes = _mm256_sign_epi8(weights, weights);
    let ones = _mm256_set1_epi16(1);
    // Each chain's activations pass through the sign every round, so no round's work is
    // the same as the last and none can be hoisted.
    let mut x: [__m256i; INT8_CHAINS] = std::array::from_fn(|i| _mm256_set1_epi8(i as i8 + 1));
    let mut acc = [_mm256_setzero_si256(); INT8_CHAINS];
    for _ in 0..rounds {
        for (x, acc) in x.iter_mut().zip(acc.iter_mut()) {
            *x = _mm256_sign_epi8(*x, weights);
            let products = _mm256_maddubs_epi16(magnitudes, *x);
            *acc = _mm256_add_epi32(*acc, _mm256_madd_epi16(products, ones));
        }
    }
    lane_total(&acc)
}

/// The sum of every 32-bit lane of the int8 probe's chains, as the portable probe sums
/// them. Inlined into each probe, it takes that probe's instructions.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn lane_total(acc: &[std::arch::x86_64::__m256i; INT8_CHAINS]) -> u64 {
    use std::arch::x86_64::*;
    let mut lanes = [0i32; 8];
    let mut total = 0i64;
    for acc in acc {
        // SAFETY: `lanes` holds 32 bytes; the probes that call this have AVX.
        unsafe { _mm256_storeu_si256(lanes.as_mut_ptr().cast(), *acc) };
        total += lanes.iter().map(|&l| i64::from(l)).sum::<i64>();
    }
    total as u64
}

fn int8_probe_portable(rounds: usize) -> u64 {
    let weight: i8 = -3;
    let mut x: [[i8; 32]; INT8_CHAINS] = std::array::from_fn(|i| [i as i8 + 1; 32]);
    let mut acc = [[0i32; 8]; INT8_CHAINS];
    for _ in 0..rounds {
        for (x, acc) in x.iter_mut().zip(acc.iter_mut()) {
            for (lane, acc) in acc.iter_mut().enumerate() {
                let mut sum = 0i32;
                for x in &mut x[lane * 4..lane * 4 + 4] {
                    *x = x.wrapping_mul(weight.signum());
                    sum += i32::from(*x) * i32::from(weight.unsigned_abs());
                }
                *acc = acc.wrapping_add(sum);
            }
        }
    }
    acc.iter().flatten().map(|&l| l as i64).sum::<i64>() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both probes compute the same values on every path (the products are exact), so the
    /// fast probe runs the work it claims to time.
    #[test]
    fn the_probes_compute_what_the_portable_loops_do() {
        for rounds in [0, 1, 7, 100] {
            #[cfg(target_arch = "x86_64")]
            if crate::kernels::has_avx512_vnni() {
                // SAFETY: the CPU has the features (checked just above).
                let vnni = unsafe { int8_probe_vnni(rounds) };
                assert_eq!(vnni, int8_probe_vnni_portable(rounds), "{rounds}");
            }
            #[cfg(target_arch = "x86_64")]
            if crate::kernels::has_avx2_fma_f16c() {
                // SAFETY: the CPU has the features (checked just above).
                let avx2 = unsafe { int8_probe_avx2(rounds) };
                assert_eq!(avx2, int8_probe_portable(rounds), "{rounds}");
            }
            let fast = f32::from_bits(f32_probe(rounds) as u32);
            let slow = f32::from_bits(f32_probe_portable(rounds) as u32);
            assert!(
                (fast - slow).abs() <= 1e-4 * slow.abs(),
                "{rounds}: {fast} {slow}"
            );
        }
        let peaks = measure_peaks(10_000);
        assert!(peaks.f32_gflops > 0.0 && peaks.int8_gops > 0.0, "{peaks:?}");
    }
}
