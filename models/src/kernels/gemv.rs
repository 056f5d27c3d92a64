//! Dense f32 products of a few rows with weights as a model stores them (`[out, in]`,
//! row-major), reading the weight matrix once for all rows: EnCodec's LSTM and its small
//! convolutions. candle's `gemm` reads the weights once per row when a matmul has a few
//! rows. (A decoder's projections, which serve many rows, pack their weights at load for
//! `panels` instead.)

use rayon::prelude::*;

/// The most rows [`matmul_rows`] and [`dots`] serve.
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
    if m == 0 || m > MAX_ROWS || !x.len().is_multiple_of(m) {
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

/// Output features `first..` of `x w^T` for the `m` rows of `x` (`[m, k]`, at most
/// [`MAX_ROWS`] as [`matmul_rows`] calls it), as many as `sums` holds: `sums` is
/// `[features, m]`, a feature's value for every row together. `w` (`[n, k]`) must hold
/// every row asked for.
///
/// The work is cut into tiles of up to [`TILE_ROWS`] rows by [`TILE_FEATURES`] features,
/// each a register-blocked dot product over `k`: per eight columns, a tile loads each of its
/// weight rows and activation rows once and runs one FMA per (row, feature) pair. Every
/// (row, feature) sum is the same sequence of operations (eight lanes in column order, then
/// a fixed reduction tree, then the columns past the last eight) in whatever tile it falls.
pub(crate) fn features(x: &[f32], m: usize, w: &[f32], first: usize, sums: &mut [f32]) {
    super::dispatch!(
        avx2_fma => features_avx2_fma(x, m, w, first, sums),
        portable => features_portable(x, m, w, first, sums),
    )
}

/// Rows of `x` a tile of [`features`] serves.
const TILE_ROWS: usize = 4;
/// Features a tile of [`features`] serves: with [`TILE_ROWS`], twelve accumulators and the
/// loads fit AVX2's sixteen vector registers.
const TILE_FEATURES: usize = 3;
/// Lanes of a tile's accumulators.
const TILE_LANES: usize = 8;

/// Walks [`features`]' tiles: rows in groups of [`TILE_ROWS`] (outer), features in groups
/// of [`TILE_FEATURES`] (inner), calling `$tile::<R, F>(x_rows, k, w_rows, out)` for each
/// and scattering its `[R][F]` sums.
macro_rules! features_body {
    ($x:expr, $m:expr, $w:expr, $first:expr, $sums:expr, $tile:ident) => {{
        let (x, m, w, first, sums): (&[f32], usize, &[f32], usize, &mut [f32]) =
            ($x, $m, $w, $first, $sums);
        let k = x.len() / m;
        let count = sums.len() / m;
        let mut out = [[0f32; TILE_FEATURES]; TILE_ROWS];
        for row in (0..m).step_by(TILE_ROWS) {
            let rows = TILE_ROWS.min(m - row);
            let xs = &x[row * k..(row + rows) * k];
            for f in (0..count).step_by(TILE_FEATURES) {
                let feats = TILE_FEATURES.min(count - f);
                let ws = &w[(first + f) * k..(first + f + feats) * k];
                match (rows, feats) {
                    (1, 1) => $tile::<1, 1>(xs, k, ws, &mut out),
                    (1, 2) => $tile::<1, 2>(xs, k, ws, &mut out),
                    (1, _) => $tile::<1, 3>(xs, k, ws, &mut out),
                    (2, 1) => $tile::<2, 1>(xs, k, ws, &mut out),
                    (2, 2) => $tile::<2, 2>(xs, k, ws, &mut out),
                    (2, _) => $tile::<2, 3>(xs, k, ws, &mut out),
                    (3, 1) => $tile::<3, 1>(xs, k, ws, &mut out),
                    (3, 2) => $tile::<3, 2>(xs, k, ws, &mut out),
                    (3, _) => $tile::<3, 3>(xs, k, ws, &mut out),
                    (_, 1) => $tile::<4, 1>(xs, k, ws, &mut out),
                    (_, 2) => $tile::<4, 2>(xs, k, ws, &mut out),
                    (_, _) => $tile::<4, 3>(xs, k, ws, &mut out),
                }
                for (j, sums) in sums[f * m..(f + feats) * m].chunks_exact_mut(m).enumerate() {
                    for (i, sum) in sums[row..row + rows].iter_mut().enumerate() {
                        *sum = out[i][j];
                    }
                }
            }
        }
    }};
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn features_avx2_fma(x: &[f32], m: usize, w: &[f32], first: usize, sums: &mut [f32]) {
    features_body!(x, m, w, first, sums, tile_avx2_fma);
}

fn features_portable(x: &[f32], m: usize, w: &[f32], first: usize, sums: &mut [f32]) {
    features_body!(x, m, w, first, sums, tile_portable);
}

/// The sum of eight lanes in [`features`]' fixed order: the halves added lane by lane,
/// then lanes 0 + 2 and 1 + 3, then those two.
#[inline(always)]
fn reduce_lanes(a: [f32; TILE_LANES]) -> f32 {
    let half = [a[0] + a[4], a[1] + a[5], a[2] + a[6], a[3] + a[7]];
    (half[0] + half[2]) + (half[1] + half[3])
}

/// One tile of [`features`]: `out[i][j] = xs[i] . ws[j]` for `R` rows of `xs` and `F` rows
/// of `ws` (each `k` long), eight lanes at a time with FMAs.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx2,fma")]
fn tile_avx2_fma<const R: usize, const F: usize>(
    xs: &[f32],
    k: usize,
    ws: &[f32],
    out: &mut [[f32; TILE_FEATURES]; TILE_ROWS],
) {
    use std::arch::x86_64::*;
    assert!(
        xs.len() >= R * k && ws.len() >= F * k,
        "a tile's rows are whole"
    );
    let full = k / TILE_LANES * TILE_LANES;
    let mut acc = [[_mm256_setzero_ps(); F]; R];
    let (x, w) = (xs.as_ptr(), ws.as_ptr());
    for t in (0..full).step_by(TILE_LANES) {
        // SAFETY: `t + 8 <= k`, and `xs` and `ws` hold `R` and `F` rows of `k` (asserted
        // above), so every load lies inside them.
        unsafe {
            let wv: [__m256; F] = std::array::from_fn(|j| _mm256_loadu_ps(w.add(j * k + t)));
            for (i, acc) in acc.iter_mut().enumerate() {
                let xv = _mm256_loadu_ps(x.add(i * k + t));
                for (acc, wv) in acc.iter_mut().zip(wv) {
                    *acc = _mm256_fmadd_ps(wv, xv, *acc);
                }
            }
        }
    }
    for (i, acc) in acc.iter().enumerate() {
        for (j, acc) in acc.iter().enumerate() {
            let mut lanes = [0f32; TILE_LANES];
            // SAFETY: `lanes` holds eight floats.
            unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), *acc) };
            let mut total = reduce_lanes(lanes);
            for t in full..k {
                total = ws[j * k + t].mul_add(xs[i * k + t], total);
            }
            out[i][j] = total;
        }
    }
}

/// [`tile_avx2_fma`] in plain loops, with separate multiplies and adds.
#[inline]
fn tile_portable<const R: usize, const F: usize>(
    xs: &[f32],
    k: usize,
    ws: &[f32],
    out: &mut [[f32; TILE_FEATURES]; TILE_ROWS],
) {
    let full = k / TILE_LANES * TILE_LANES;
    let mut acc = [[[0f32; TILE_LANES]; F]; R];
    for t in (0..full).step_by(TILE_LANES) {
        for (i, acc) in acc.iter_mut().enumerate() {
            let xv = &xs[i * k + t..i * k + t + TILE_LANES];
            for (j, acc) in acc.iter_mut().enumerate() {
                let wv = &ws[j * k + t..j * k + t + TILE_LANES];
                for l in 0..TILE_LANES {
                    acc[l] += wv[l] * xv[l];
                }
            }
        }
    }
    for (i, acc) in acc.iter().enumerate() {
        for (j, acc) in acc.iter().enumerate() {
            let mut total = reduce_lanes(*acc);
            for t in full..k {
                total += ws[j * k + t] * xs[i * k + t];
            }
            out[i][j] = total;
        }
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
            let want = crate::kernels::reference_matmul(&x, m, &w, n);
            crate::kernels::assert_near_reference(&out, &want, k, &format!("{m}x{k}x{n}"));
        }
    }

    /// Eleven rows at once give each row exactly the sums it gets alone.
    #[test]
    fn a_row_sums_the_same_bits_alone_or_among_many() {
        let mut rng = crate::random::Rng::new(8);
        let (m, k, n) = (11, 200, 70);
        let x = rng.uniform_f32s(m * k, -1.0, 1.0);
        let w = rng.uniform_f32s(n * k, -1.0, 1.0);
        let mut together = vec![0f32; n * m];
        features(&x, m, &w, 0, &mut together);
        for i in 0..m {
            let mut alone = vec![0f32; n];
            features(&x[i * k..(i + 1) * k], 1, &w, 0, &mut alone);
            let column: Vec<f32> = together.iter().skip(i).step_by(m).copied().collect();
            assert_eq!(column, alone, "row {i}");
        }
    }

    /// The AVX2 tiles and the portable ones agree on every tile shape, edges included.
    #[test]
    fn the_vector_tiles_agree_with_the_portable_ones() {
        let mut rng = crate::random::Rng::new(5);
        for (m, k, n) in [
            (1, 64, 7),
            (2, 1024, 5),
            (5, 37, 4),
            (9, 200, 11),
            (4, 8, 3),
        ] {
            let x = rng.uniform_f32s(m * k, -1.0, 1.0);
            let w = rng.uniform_f32s(n * k, -1.0, 1.0);
            let mut portable = vec![0f32; n * m];
            features_portable(&x, m, &w, 0, &mut portable);
            let mut fast = vec![0f32; n * m];
            features(&x, m, &w, 0, &mut fast);
            for (a, b) in fast.iter().zip(&portable) {
                assert!(
                    (a - b).abs() <= 1e-5 * (k as f32).sqrt(),
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
