//! Products of a few activation rows (the guidance pair of a decoder step) with a
//! [`BlockMatrix`], reading each weight block once for all rows and running on the same
//! rayon pool as every other kernel of ours, so no second pool competes for the cores.
//!
//! Per block, the integer dot product of the 8-bit activations with the weight values is
//! scaled by both blocks' scales; 4-bit weights add their offset times the activation
//! block's sum. On x86-64 with AVX2 the dot products use `maddubs`: 8-bit rows 32 weights
//! at a time, 4-bit tiles eight rows at a time (see [`BlockFormat::Q4`]).

use super::blocks::{BlockFormat, BlockMatrix, QuantizedRows, BLOCK, TILE_ROWS};
use crate::gemv::{for_feature_tasks, MAX_ROWS};

/// Output features per parallel task: whole 4-bit tiles. Small tasks let the pool even
/// out the two vCPUs when a neighbour slows one: against 32, `quant_matmul` ran q8 faster
/// in three of three alternating runs and q4 in two of three; 128 was slower in all.
const TASK_FEATURES: usize = 16;
const _: () = assert!(TASK_FEATURES % TILE_ROWS == 0);

/// One quantized activation row: values, per-block scales and per-block sums.
#[derive(Clone, Copy)]
struct Row<'a> {
    values: &'a [i8],
    scales: &'a [f32],
    sums: &'a [f32],
}

/// `out[i][j] = x[i] . w[j]` (`out` is `[x.rows, w.rows]`). `None`, leaving `out` alone,
/// when the shapes do not fit: `x.rows` outside 1 to [`MAX_ROWS`], or columns that differ.
pub fn matmul_rows(x: &QuantizedRows, w: &BlockMatrix, out: &mut [f32]) -> Option<()> {
    let m = x.rows;
    if !(1..=MAX_ROWS).contains(&m) || x.cols != w.cols || out.len() != m * w.rows {
        return None;
    }
    match m {
        1 => run::<1>(x, w, out),
        2 => run::<2>(x, w, out),
        3 => run::<3>(x, w, out),
        _ => run::<4>(x, w, out),
    }
    Some(())
}

/// The product for `M` rows.
fn run<const M: usize>(x: &QuantizedRows, w: &BlockMatrix, out: &mut [f32]) {
    let rows: [Row; M] = std::array::from_fn(|i| {
        let (values, scales, sums) = x.row(i);
        Row {
            values,
            scales,
            sums,
        }
    });
    #[cfg(target_arch = "x86_64")]
    let vector = crate::cpu::has_avx2_fma_f16c();
    for_feature_tasks(w.rows, M, TASK_FEATURES, out, |first, chunk| {
        #[cfg(target_arch = "x86_64")]
        if vector {
            // SAFETY: the CPU has AVX2, FMA and F16C, checked above; the slices'
            // lengths are checked inside.
            unsafe {
                match w.format {
                    BlockFormat::Q8 => avx2::q8_features::<M>(w, first, &rows, chunk),
                    BlockFormat::Q4 => avx2::q4_features::<M>(w, first, &rows, chunk),
                }
            };
            return;
        }
        for (f, sums) in chunk.chunks_exact_mut(M).enumerate() {
            sums.copy_from_slice(&dots_portable::<M>(w, first + f, &rows));
        }
    });
}

/// Row `r` of `w` times each activation row, in plain loops over the blocks' levels, for
/// CPUs without AVX2.
fn dots_portable<const M: usize>(w: &BlockMatrix, r: usize, xs: &[Row; M]) -> [f32; M] {
    std::array::from_fn(|i| {
        let x = &xs[i];
        let mut total = 0f32;
        for b in 0..w.blocks_per_row() {
            let xq = &x.values[b * BLOCK..(b + 1) * BLOCK];
            let dot: i32 = w
                .levels(r, b)
                .iter()
                .zip(xq)
                .map(|(&q, &x)| q * i32::from(x))
                .sum();
            let at = w.scale_index(r, b);
            total += w.scales[at].to_f32() * x.scales[b] * dot as f32;
            if let Some(offset) = w.offsets.get(at) {
                total += offset.to_f32() * x.sums[b];
            }
        }
        total
    })
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{BlockMatrix, Row, BLOCK, TILE_ROWS};
    use crate::quant::blocks::TILE_BLOCK_BYTES;
    use std::arch::x86_64::*;

    /// Blocks whose scales are widened together, eight f16 to eight f32.
    const GROUP: usize = 8;

    /// Whether every activation row holds `blocks` blocks, so the unchecked reads of it
    /// stay in bounds.
    fn rows_fit<const M: usize>(xs: &[Row; M], blocks: usize) -> bool {
        xs.iter().all(|x| {
            x.values.len() >= blocks * BLOCK && x.scales.len() >= blocks && x.sums.len() >= blocks
        })
    }

    /// Output features `first..` of a 4-bit product, `out` holding `M` sums a feature
    /// (`first` starts a tile). Per tile and block, each activation row's four values at a
    /// time are broadcast to every lane and multiplied by eight rows' four weights; the
    /// sixteen-bit products of the block's eight steps are summed before widening (15 *
    /// 127 * 2 * 8 = 30480 fits), and one conversion and two FMAs a block scale and offset
    /// all eight rows. Features whose tile the arrays lack get NaN sums.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn q4_features<const M: usize>(
        w: &BlockMatrix,
        first: usize,
        xs: &[Row; M],
        out: &mut [f32],
    ) {
        let blocks = w.blocks_per_row();
        let first_tile = first / TILE_ROWS;
        let tiles = (out.len() / M).div_ceil(TILE_ROWS);
        let end = (first_tile + tiles) * blocks;
        let fits = first % TILE_ROWS == 0
            && rows_fit(xs, blocks)
            && w.values.len() >= end * TILE_BLOCK_BYTES
            && w.scales.len() >= end * TILE_ROWS
            && w.offsets.len() >= end * TILE_ROWS;
        if !fits {
            out.fill(f32::NAN);
            return;
        }
        let nibbles = _mm256_set1_epi8(0x0F);
        let ones = _mm256_set1_epi16(1);
        for (t, tile_out) in out.chunks_mut(TILE_ROWS * M).enumerate() {
            let tile_blocks = (first_tile + t) * blocks;
            let mut acc = [_mm256_setzero_ps(); M];
            let mut offset_acc = [_mm256_setzero_ps(); M];
            for b in 0..blocks {
                let at = tile_blocks + b;
                let values = w.values.as_ptr().add(at * TILE_BLOCK_BYTES);
                let mut dots = [_mm256_setzero_si256(); M];
                for p in 0..4 {
                    let packed = _mm256_loadu_si256(values.add(p * 32).cast());
                    let low = _mm256_and_si256(packed, nibbles);
                    let high = _mm256_and_si256(_mm256_srli_epi16::<4>(packed), nibbles);
                    for (dot, x) in dots.iter_mut().zip(xs) {
                        let x = x.values.as_ptr().add(b * BLOCK + 4 * p);
                        let x_low = _mm256_set1_epi32(x.cast::<i32>().read_unaligned());
                        let x_high = _mm256_set1_epi32(x.add(16).cast::<i32>().read_unaligned());
                        let both = _mm256_add_epi16(
                            _mm256_maddubs_epi16(low, x_low),
                            _mm256_maddubs_epi16(high, x_high),
                        );
                        *dot = _mm256_add_epi16(*dot, both);
                    }
                }
                let scale_at = at * TILE_ROWS;
                let wd = _mm256_cvtph_ps(_mm_loadu_si128(w.scales.as_ptr().add(scale_at).cast()));
                let wm = _mm256_cvtph_ps(_mm_loadu_si128(w.offsets.as_ptr().add(scale_at).cast()));
                for i in 0..M {
                    let x = &xs[i];
                    let sums = _mm256_cvtepi32_ps(_mm256_madd_epi16(dots[i], ones));
                    let xd = _mm256_set1_ps(*x.scales.get_unchecked(b));
                    acc[i] = _mm256_fmadd_ps(_mm256_mul_ps(sums, xd), wd, acc[i]);
                    let x_sum = _mm256_set1_ps(*x.sums.get_unchecked(b));
                    offset_acc[i] = _mm256_fmadd_ps(wm, x_sum, offset_acc[i]);
                }
            }
            for i in 0..M {
                let mut lanes = [0f32; TILE_ROWS];
                _mm256_storeu_ps(lanes.as_mut_ptr(), _mm256_add_ps(acc[i], offset_acc[i]));
                for (r, lane) in lanes.iter().take(tile_out.len() / M).enumerate() {
                    tile_out[r * M + i] = *lane;
                }
            }
        }
    }

    /// Rows of an 8-bit product whose partial sums are reduced together.
    const BATCH: usize = 8;

    /// Output features `first..` of an 8-bit product, `out` holding `M` sums a feature:
    /// each weight row leaves eight partial sums an activation row, and eight rows'
    /// partials are reduced together, so the horizontal sums cost a few instructions a row
    /// instead of a dependent chain each. A row whose slices are too short gets NaN sums.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn q8_features<const M: usize>(
        w: &BlockMatrix,
        first: usize,
        xs: &[Row; M],
        out: &mut [f32],
    ) {
        let blocks = w.blocks_per_row();
        let rows_fit = rows_fit(xs, blocks);
        for (b, batch) in out.chunks_mut(BATCH * M).enumerate() {
            let count = batch.len() / M;
            let mut partials = [[_mm256_setzero_ps(); BATCH]; M];
            for f in 0..count {
                let r = first + b * BATCH + f;
                let values = w.row_values(r);
                let scales = w.scales.get(r * blocks..(r + 1) * blocks).unwrap_or(&[]);
                let sums = if rows_fit && values.len() == blocks * BLOCK && scales.len() == blocks {
                    row_partials::<M>(values, scales, xs)
                } else {
                    [_mm256_set1_ps(f32::NAN); M]
                };
                for (partial, sum) in partials.iter_mut().zip(sums) {
                    partial[f] = sum;
                }
            }
            for (i, partial) in partials.iter().enumerate() {
                let mut lanes = [0f32; BATCH];
                _mm256_storeu_ps(lanes.as_mut_ptr(), sum_lanes_of_each(partial));
                for (f, lane) in lanes.iter().take(count).enumerate() {
                    batch[f * M + i] = *lane;
                }
            }
        }
    }

    /// Lane `j` of the result is the sum of `v[j]`'s eight lanes.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn sum_lanes_of_each(v: &[__m256; BATCH]) -> __m256 {
        // hadd(a, b) = [a0+a1, a2+a3, b0+b1, b2+b3 | a4+a5, a6+a7, b4+b5, b6+b7].
        let pairs = [
            _mm256_hadd_ps(v[0], v[1]),
            _mm256_hadd_ps(v[2], v[3]),
            _mm256_hadd_ps(v[4], v[5]),
            _mm256_hadd_ps(v[6], v[7]),
        ];
        // `low` holds v[0..4]'s sums over lanes 0..4 in its low half and over lanes 4..8
        // in its high half; `high` the same for v[4..8].
        let low = _mm256_hadd_ps(pairs[0], pairs[1]);
        let high = _mm256_hadd_ps(pairs[2], pairs[3]);
        _mm256_add_ps(
            _mm256_permute2f128_ps::<0x20>(low, high),
            _mm256_permute2f128_ps::<0x31>(low, high),
        )
    }

    /// The dot product of one 8-bit block with 32 activations, as 8 i32 partial sums.
    /// `maddubs` multiplies unsigned by signed bytes, so it takes `|x| * (w * sign(x))`.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn dot_block(w: __m256i, x: __m256i) -> __m256i {
        let products = _mm256_maddubs_epi16(_mm256_sign_epi8(x, x), _mm256_sign_epi8(w, x));
        _mm256_madd_epi16(products, _mm256_set1_epi16(1))
    }

    /// For each row, the integer dot products of blocks `b..b + 4`, reduced so that lane
    /// `j` of the low half holds block `b + j`'s sum over its low partial sums and lane `j`
    /// of the high half its sum over the high ones.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn quad_sums<const M: usize>(values: &[u8], xs: &[Row; M], b: usize) -> [__m256i; M] {
        let block = |data: *const u8, k: usize| _mm256_loadu_si256(data.add(k * BLOCK).cast());
        let mut pairs = [[_mm256_setzero_si256(); M]; 2];
        for (p, pair) in pairs.iter_mut().enumerate() {
            let first = b + 2 * p;
            let (w0, w1) = (
                block(values.as_ptr(), first),
                block(values.as_ptr(), first + 1),
            );
            for (sum, x) in pair.iter_mut().zip(xs) {
                let x = x.values.as_ptr().cast::<u8>();
                let a = dot_block(w0, block(x, first));
                let c = dot_block(w1, block(x, first + 1));
                *sum = _mm256_hadd_epi32(a, c);
            }
        }
        let mut quads = [_mm256_setzero_si256(); M];
        for (quad, (a, c)) in quads.iter_mut().zip(pairs[0].iter().zip(&pairs[1])) {
            *quad = _mm256_hadd_epi32(*a, *c);
        }
        quads
    }

    /// One 8-bit weight row's products with each activation row, as eight partial sums a
    /// row. The slices hold the row's blocks (checked by the caller).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn row_partials<const M: usize>(
        values: &[u8],
        scales: &[half::f16],
        xs: &[Row; M],
    ) -> [__m256; M] {
        let blocks = scales.len();
        let mut acc = [_mm256_setzero_ps(); M];
        let groups = blocks / GROUP;
        for g in 0..groups {
            let first = g * GROUP;
            // The group's eight integer block sums land in one vector, a block per lane,
            // so each row scales and accumulates them with one conversion and one FMA per
            // eight blocks, instead of one each per block plus a broadcast of its scale.
            let first_half = quad_sums::<M>(values, xs, first);
            let second_half = quad_sums::<M>(values, xs, first + 4);
            let wd = _mm256_cvtph_ps(_mm_loadu_si128(scales.as_ptr().add(first).cast()));
            for i in 0..M {
                let (lo, hi) = (first_half[i], second_half[i]);
                let sums = _mm256_add_epi32(
                    _mm256_permute2x128_si256::<0x20>(lo, hi),
                    _mm256_permute2x128_si256::<0x31>(lo, hi),
                );
                let xd = _mm256_loadu_ps(xs[i].scales.as_ptr().add(first));
                let scaled = _mm256_mul_ps(_mm256_cvtepi32_ps(sums), wd);
                acc[i] = _mm256_fmadd_ps(scaled, xd, acc[i]);
            }
        }
        for b in groups * GROUP..blocks {
            let wv = _mm256_loadu_si256(values.as_ptr().add(b * BLOCK).cast());
            let wd = scales.get_unchecked(b).to_f32();
            for (acc, x) in acc.iter_mut().zip(xs) {
                let xv = _mm256_loadu_si256(x.values.as_ptr().add(b * BLOCK).cast());
                let dot = _mm256_cvtepi32_ps(dot_block(wv, xv));
                let scale = _mm256_set1_ps(wd * x.scales.get_unchecked(b));
                *acc = _mm256_fmadd_ps(dot, scale, *acc);
            }
        }
        acc
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn random(n: usize, seed: u64) -> Vec<f32> {
        crate::rng::Rng::new(seed).uniform_f32s(n, -0.5, 0.5)
    }

    /// `x . w` in f64 over the values the kernel multiplies: dequantized weights and
    /// dequantized activations.
    fn reference(x: &QuantizedRows, w: &[f32], n: usize) -> Vec<f32> {
        let k = x.cols;
        let mut out = vec![0f32; x.rows * n];
        for i in 0..x.rows {
            let (values, scales, _) = x.row(i);
            let xs: Vec<f64> = values
                .iter()
                .enumerate()
                .map(|(t, &q)| f64::from(q) * f64::from(scales[t / BLOCK]))
                .collect();
            for j in 0..n {
                out[i * n + j] =
                    (0..k).map(|t| xs[t] * f64::from(w[j * k + t])).sum::<f64>() as f32;
            }
        }
        out
    }

    #[test]
    fn both_formats_compute_the_product_of_their_dequantized_values_for_every_row_count() {
        for format in [BlockFormat::Q8, BlockFormat::Q4] {
            // 288 = nine blocks: a group of eight, then a last 4-bit block without a partner.
            for (m, k, n) in [
                (1, 1024, 70),
                (2, 4096, 33),
                (3, 64, 129),
                (4, 32, 1),
                (2, 288, 5),
            ] {
                let weights = random(n * k, 7);
                let matrix = BlockMatrix::quantize(&weights, n, k, format).unwrap();
                let mut x = QuantizedRows::default();
                x.quantize(&random(m * k, 8), m, k);
                let mut out = vec![0f32; m * n];
                matmul_rows(&x, &matrix, &mut out).unwrap();
                let want = reference(&x, &matrix.dequantize(), n);
                for (a, b) in out.iter().zip(&want) {
                    assert!(
                        (a - b).abs() <= 1e-4 * (k as f32).sqrt(),
                        "{format:?} {m}x{k}x{n}: {a} vs {b}"
                    );
                }
            }
        }
    }

    #[test]
    fn the_portable_loops_agree_with_the_vector_ones() {
        let (m, k, n) = (2, 256, 8);
        for format in [BlockFormat::Q8, BlockFormat::Q4] {
            let matrix = BlockMatrix::quantize(&random(n * k, 1), n, k, format).unwrap();
            let mut x = QuantizedRows::default();
            x.quantize(&random(m * k, 2), m, k);
            let (v0, s0, u0) = x.row(0);
            let (v1, s1, u1) = x.row(1);
            let rows = [
                Row {
                    values: v0,
                    scales: s0,
                    sums: u0,
                },
                Row {
                    values: v1,
                    scales: s1,
                    sums: u1,
                },
            ];
            let mut out = vec![0f32; m * n];
            matmul_rows(&x, &matrix, &mut out).unwrap();
            let portable = dots_portable::<2>(&matrix, 3, &rows);
            for (a, b) in portable.iter().zip([out[3], out[n + 3]]) {
                assert!(
                    (a - b).abs() <= 1e-5 * b.abs().max(1.0),
                    "{format:?}: {a} vs {b}"
                );
            }
        }
    }

    #[test]
    fn quantization_error_is_what_each_format_promises() {
        // Relative RMS error of the product against f32, on uniform weights: 8 bits keep it
        // under 1%, 4 bits under 10%.
        let (k, n) = (1024, 64);
        let weights = random(n * k, 3);
        let xs = random(k, 4);
        let exact: Vec<f32> = (0..n)
            .map(|j| (0..k).map(|t| xs[t] * weights[j * k + t]).sum())
            .collect();
        let norm = (exact.iter().map(|v| v * v).sum::<f32>() / n as f32).sqrt();
        for (format, limit) in [(BlockFormat::Q8, 0.01), (BlockFormat::Q4, 0.10)] {
            let matrix = BlockMatrix::quantize(&weights, n, k, format).unwrap();
            let mut x = QuantizedRows::default();
            x.quantize(&xs, 1, k);
            let mut out = vec![0f32; n];
            matmul_rows(&x, &matrix, &mut out).unwrap();
            let err = (out
                .iter()
                .zip(&exact)
                .map(|(a, b)| (a - b).powi(2))
                .sum::<f32>()
                / n as f32)
                .sqrt();
            assert!(
                err / norm < limit,
                "{format:?}: relative error {}",
                err / norm
            );
        }
    }

    #[test]
    fn shapes_it_does_not_serve_are_declined() {
        let matrix = BlockMatrix::quantize(&random(64, 1), 2, 32, BlockFormat::Q8).unwrap();
        let mut x = QuantizedRows::default();
        x.quantize(&random(5 * 32, 1), 5, 32);
        assert!(matmul_rows(&x, &matrix, &mut [0.0; 10]).is_none());
        x.quantize(&random(64, 1), 1, 64);
        assert!(matmul_rows(&x, &matrix, &mut [0.0; 2]).is_none());
        assert!(BlockMatrix::quantize(&random(40, 1), 1, 40, BlockFormat::Q4).is_none());
    }
}
