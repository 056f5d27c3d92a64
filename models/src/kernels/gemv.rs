//! Dense f32 projections of a few rows (the guidance pair of a decoder step) that read the
//! weight matrix once for all rows. candle's `gemm` reads it once per row when a matmul
//! has two rows, which makes a guided f32 step two to three times slower than a single one;
//! a step is bound by reading weights, so reading them once is the whole game.

use rayon::prelude::*;

/// The most rows this kernel serves; more go to the general matmul.
pub(crate) const MAX_ROWS: usize = 4;
/// Output features per parallel task: enough work to amortise scheduling, small enough to
/// spread a 1024-row matrix over the threads.
pub(crate) const TASK_FEATURES: usize = 64;
/// Lanes accumulated side by side, so the compiler keeps them in vector registers.
const LANES: usize = 16;

/// The shared loop: `LANES` partial sums per row over the row's full lane groups, then
/// the remainder. `$fma(a, b, c)` is `a * b + c`, fused where the CPU allows.
macro_rules! dots_body {
    ($x:expr, $k:expr, $row:expr, $sums:expr, $fma:expr) => {{
        let fma = $fma;
        let (x, k, row, sums) = ($x, $k, $row, $sums);
        let full = k / LANES * LANES;
        let mut acc = [[0f32; LANES]; MAX_ROWS];
        for start in (0..full).step_by(LANES) {
            let w: &[f32; LANES] = match row[start..start + LANES].try_into() {
                Ok(w) => w,
                Err(_) => unreachable!(),
            };
            for (i, acc) in acc.iter_mut().enumerate().take(sums.len()) {
                let xs = &x[i * k + start..i * k + start + LANES];
                for l in 0..LANES {
                    acc[l] = fma(w[l], xs[l], acc[l]);
                }
            }
        }
        for (i, sum) in sums.iter_mut().enumerate() {
            let mut total = acc[i].iter().sum::<f32>();
            for j in full..k {
                total = fma(row[j], x[i * k + j], total);
            }
            *sum = total;
        }
    }};
}

/// `out[i][j] = x[i] . w[j]` for `m` rows of `x` (`[m, k]`, row-major) and `n` rows of
/// `w` (`[n, k]`); `out` is `[m, n]`. Returns `None` (leaving `out` alone) when the shapes
/// do not fit (`m` outside 1 to [`MAX_ROWS`], or slices of the wrong length).
pub(crate) fn matmul_rows(x: &[f32], m: usize, w: &[f32], n: usize, out: &mut [f32]) -> Option<()> {
    if m == 0 || m > MAX_ROWS || x.len() % m != 0 {
        return None;
    }
    let k = x.len() / m;
    if w.len() != n * k || out.len() != m * n || k == 0 {
        return None;
    }
    for_feature_tasks(n, m, TASK_FEATURES, out, |first, chunk| {
        features(x, m, w, first, chunk);
    });
    Some(())
}

/// Output features `first..` of `x w^T` for the `m` rows of `x` (`[m, k]`), as many as
/// `sums` holds: `sums` is `[features, m]`, a feature's value for every row together.
/// `w` (`[n, k]`) must hold every row asked for.
pub(crate) fn features(x: &[f32], m: usize, w: &[f32], first: usize, sums: &mut [f32]) {
    let k = x.len() / m;
    for (f, sums) in sums.chunks_exact_mut(m).enumerate() {
        let row = &w[(first + f) * k..(first + f + 1) * k];
        dots(x, k, row, sums);
    }
}

/// Runs `task(first, sums)` in parallel over groups of `task_features` output features,
/// where `sums` (`[features, m]`) receives, for each feature of the group from `first` on,
/// its value for every row; then writes them to `out` (`[m, n]`). Each task owns a
/// disjoint slice, and the transposition at the end moves only `m * n` floats.
pub(crate) fn for_feature_tasks(
    n: usize,
    m: usize,
    task_features: usize,
    out: &mut [f32],
    task: impl Fn(usize, &mut [f32]) + Sync,
) {
    let mut transposed = vec![0f32; n * m];
    transposed
        .par_chunks_mut(task_features * m)
        .enumerate()
        .for_each(|(index, chunk)| task(index * task_features, chunk));
    for (j, sums) in transposed.chunks_exact(m).enumerate() {
        for (i, s) in sums.iter().enumerate() {
            out[i * n + j] = *s;
        }
    }
}

/// `sums[i] = x[i] . row` for the rows of `x` (each `k` long, at most [`MAX_ROWS`] of
/// them), picking the widest vector instructions the CPU has.
pub(crate) fn dots(x: &[f32], k: usize, row: &[f32], sums: &mut [f32]) {
    super::dispatch!(
        avx2_fma => dots_avx2_fma(x, k, row, sums),
        portable => dots_portable(x, k, row, sums),
    )
}

/// [`dots`] with fused multiply-adds (a plain `mul_add` without FMA is a slow library call).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn dots_avx2_fma(x: &[f32], k: usize, row: &[f32], sums: &mut [f32]) {
    dots_body!(x, k, row, sums, |a: f32, b: f32, c: f32| a.mul_add(b, c));
}

fn dots_portable(x: &[f32], k: usize, row: &[f32], sums: &mut [f32]) {
    dots_body!(x, k, row, sums, |a: f32, b: f32, c: f32| a * b + c);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(x: &[f32], m: usize, w: &[f32], n: usize) -> Vec<f32> {
        let k = x.len() / m;
        let mut out = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                out[i * n + j] = (0..k)
                    .map(|t| x[i * k + t] as f64 * w[j * k + t] as f64)
                    .sum::<f64>() as f32;
            }
        }
        out
    }

    #[test]
    fn matches_a_plain_matmul_for_every_row_count_and_odd_sizes() {
        let mut rng = crate::random::Rng::new(3);
        for (m, k, n) in [
            (1, 1024, 300),
            (2, 1024, 129),
            (2, 37, 70),
            (3, 4096, 65),
            (4, 16, 1),
        ] {
            let x = rng.uniform_f32s(m * k, -0.5, 0.5);
            let w = rng.uniform_f32s(n * k, -0.5, 0.5);
            let mut out = vec![0f32; m * n];
            matmul_rows(&x, m, &w, n, &mut out).unwrap();
            let want = reference(&x, m, &w, n);
            for (a, b) in out.iter().zip(&want) {
                assert!(
                    (a - b).abs() <= 1e-4 * (k as f32).sqrt(),
                    "{m}x{k}x{n}: {a} vs {b}"
                );
            }
        }
    }

    #[test]
    fn shapes_it_does_not_serve_are_declined() {
        let mut out = vec![0f32; 10];
        assert!(matmul_rows(&[0.0; 10], 5, &[0.0; 4], 2, &mut out).is_none());
        assert!(matmul_rows(&[0.0; 4], 2, &[0.0; 5], 2, &mut out[..4]).is_none());
    }
}
