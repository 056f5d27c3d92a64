//! Products of activation rows (a batched decoder step's guidance pairs, a prefill's
//! tokens) with a [`BlockMatrix`], reading each weight block once for a group of rows (up
//! to four, or eight on 512-bit VNNI) and running on the same rayon pool as every other
//! kernel of ours, so no second pool competes for the cores.
//!
//! Per block, the integer dot product of the 8-bit activations with the weight values is
//! scaled by both blocks' scales; 4-bit weights add their offset times the activation
//! block's sum. On x86-64 with AVX2 the dot products use `maddubs` on the tiles of
//! [`super::BlockFormat`]: four activations broadcast to every lane times four weights of
//! each of eight rows, so every lane of every vector is one output's sum and none needs
//! summing across lanes.

use super::blocks::{BlockMatrix, QuantizedRows, BLOCK, TILE_ROWS};
use crate::kernels::gemv::{for_feature_tasks, MAX_ROWS};

/// Output features per parallel task: whole tiles. Against 16 (best for the row-wise kernel
/// before the tiles), `quant_matmul` ran q4 faster in five of five alternating runs and q8
/// in four of five; 64 was mixed.
pub(crate) const TASK_FEATURES: usize = 32;
const _: () = assert!(TASK_FEATURES.is_multiple_of(TILE_ROWS));

/// One quantized activation row: values, per-block scales and per-block sums.
#[derive(Clone, Copy)]
struct Row<'a> {
    values: &'a [i8],
    /// The values plus 128.
    shifted: &'a [u8],
    scales: &'a [f32],
    sums: &'a [f32],
}

/// `out[i][j] = x[i] . w[j]` (`out` is `[x.rows, w.rows]`) for any number of rows, each
/// pass over the weights serving a group of them ([`features`]). `None` when the shapes
/// do not fit (no rows, columns that differ, or an `out` of another size: `out` is then
/// left alone).
pub(crate) fn matmul_rows(x: &QuantizedRows, w: &BlockMatrix, out: &mut [f32]) -> Option<()> {
    let m = x.rows;
    if m == 0 || x.cols != w.cols || out.len() != m * w.rows {
        return None;
    }
    let refused = std::sync::atomic::AtomicBool::new(false);
    for_feature_tasks(w.rows, m, TASK_FEATURES, out, |first, chunk| {
        // Each task's features start a tile and lie in the matrix: `features` serves them.
        if features(x, w, first, chunk).is_none() {
            refused.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    });
    (!refused.into_inner()).then_some(())
}

/// Output features `first..` (`first` a multiple of [`TILE_ROWS`]) of `x w^T` for every
/// row of `x` (any number of them), as many as `sums` holds: `sums` is `[features,
/// x.rows]`, a feature's value for every row together. `None`, leaving `sums` alone, when
/// the shapes do not fit.
///
/// Up to [`group_rows`] rows run in one pass over the weights; more run in groups of that
/// many, over [`TASK_FEATURES`] features at a time, so each group after the first reads
/// those features' blocks from the cache. A row's sums do not depend on the other rows.
pub(crate) fn features(
    x: &QuantizedRows,
    w: &BlockMatrix,
    first: usize,
    sums: &mut [f32],
) -> Option<()> {
    let m = x.rows;
    let fits = m >= 1
        && x.cols == w.cols
        && first.is_multiple_of(TILE_ROWS)
        && sums.len().is_multiple_of(m)
        && first + sums.len() / m <= w.rows;
    if !fits {
        return None;
    }
    let most = group_rows();
    if m <= most {
        group_features(x, 0, m, w, first, sums);
        return Some(());
    }
    let count = sums.len() / m;
    let mut group = [0f32; TASK_FEATURES * WIDE_GROUP_ROWS];
    for start in (0..count).step_by(TASK_FEATURES) {
        let features = TASK_FEATURES.min(count - start);
        for row in (0..m).step_by(most) {
            let rows = most.min(m - row);
            let out = &mut group[..features * rows];
            group_features(x, row, rows, w, first + start, out);
            for (f, values) in out.chunks_exact(rows).enumerate() {
                let at = (start + f) * m + row;
                sums[at..at + rows].copy_from_slice(values);
            }
        }
    }
    Some(())
}

/// Rows one pass of [`features`] serves: [`WIDE_GROUP_ROWS`] where the products run on
/// 512-bit VNNI, whose 32 registers hold eight rows' sums, else [`MAX_ROWS`]. More rows a
/// pass share each block's unpacking (and 8-bit weights' correction) among more rows.
fn group_rows() -> usize {
    #[cfg(target_arch = "x86_64")]
    if crate::kernels::has_avx512_vnni() {
        return WIDE_GROUP_ROWS;
    }
    MAX_ROWS
}

/// [`group_rows`] on 512-bit VNNI.
const WIDE_GROUP_ROWS: usize = 8;

/// [`features`] for rows `row..row + rows` of `x` (1 to [`group_rows`] of them), `sums`
/// being `[features, rows]`.
fn group_features(
    x: &QuantizedRows,
    row: usize,
    rows: usize,
    w: &BlockMatrix,
    first: usize,
    sums: &mut [f32],
) {
    match rows {
        1 => features_of::<1>(w, first, &rows_from::<1>(x, row), sums),
        2 => features_of::<2>(w, first, &rows_from::<2>(x, row), sums),
        3 => features_of::<3>(w, first, &rows_from::<3>(x, row), sums),
        4 => features_of::<4>(w, first, &rows_from::<4>(x, row), sums),
        5 => features_of::<5>(w, first, &rows_from::<5>(x, row), sums),
        6 => features_of::<6>(w, first, &rows_from::<6>(x, row), sums),
        7 => features_of::<7>(w, first, &rows_from::<7>(x, row), sums),
        _ => features_of::<8>(w, first, &rows_from::<8>(x, row), sums),
    }
}

/// `M` rows of `x` from row `start` on.
fn rows_from<const M: usize>(x: &QuantizedRows, start: usize) -> [Row<'_>; M] {
    std::array::from_fn(|i| {
        let (values, scales, sums) = x.row(start + i);
        Row {
            values,
            shifted: x.shifted_row(start + i),
            scales,
            sums,
        }
    })
}

/// One task's features: the vector kernel where the CPU has it, else plain loops.
fn features_of<const M: usize>(w: &BlockMatrix, first: usize, rows: &[Row; M], sums: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    // The slices' lengths are checked inside the vector kernel.
    crate::kernels::dispatch!(
        // One job's pair of rows is bound by reading the weights, where the 256-bit
        // path measured faster; both give the same bits.
        avx512_vnni => if M <= 2 {
            avx2::product_vnni::<M>(w, first, rows, sums)
        } else {
            avx2::product_wide::<M>(w, first, rows, sums)
        },
        avx2_fma_f16c => avx2::product::<M>(w, first, rows, sums),
        portable => {
            for (f, sums) in sums.chunks_exact_mut(M).enumerate() {
                sums.copy_from_slice(&dots_portable::<M>(w, first + f, rows));
            }
        },
    )
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
    use crate::kernels::quant::blocks::BlockFormat;
    use std::arch::x86_64::*;

    /// How far ahead of the block being multiplied its weights are requested.
    const PREFETCH_BYTES: usize = 4096;

    /// [`features`] for the matrix's format, the integer products by AVX2's `maddubs`.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) fn product<const M: usize>(
        w: &BlockMatrix,
        first: usize,
        xs: &[Row; M],
        out: &mut [f32],
    ) {
        match w.format {
            BlockFormat::Q8 => features::<M, false, false>(w, first, xs, out),
            BlockFormat::Q4 => features::<M, true, false>(w, first, xs, out),
        }
    }

    /// [`product`] with the integer products by VNNI's `dpbusd` (on 256-bit vectors): one
    /// instruction for 32 products and their sums where AVX2 takes two to four. The sums
    /// are the same integers, so the results are the same bits.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512vnni")]
    pub(super) fn product_vnni<const M: usize>(
        w: &BlockMatrix,
        first: usize,
        xs: &[Row; M],
        out: &mut [f32],
    ) {
        match w.format {
            BlockFormat::Q8 => features::<M, false, true>(w, first, xs, out),
            BlockFormat::Q4 => features::<M, true, true>(w, first, xs, out),
        }
    }

    /// [`product_vnni`] on 512-bit vectors: two tiles side by side in each, sixteen
    /// features a vector, so each activation row runs one `dpbusd` per 32 products of two
    /// tiles and one conversion and FMA per sixteen sums. A task's last tile, when alone,
    /// runs on 256 bits. Every lane computes what [`product_vnni`]'s does, in the same
    /// order: the same bits.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    pub(super) fn product_wide<const M: usize>(
        w: &BlockMatrix,
        first: usize,
        xs: &[Row; M],
        out: &mut [f32],
    ) {
        // Pairs of tiles, the last one maybe partial (a matrix's tiles are padded to whole).
        let pairs = (out.len() / M).div_ceil(TILE_ROWS) / 2;
        let (wide, rest) = out.split_at_mut((pairs * 2 * TILE_ROWS * M).min(out.len()));
        match w.format {
            BlockFormat::Q8 => wide_features::<M, false>(w, first, xs, wide),
            BlockFormat::Q4 => wide_features::<M, true>(w, first, xs, wide),
        }
        if !rest.is_empty() {
            product_vnni::<M>(w, first + pairs * 2 * TILE_ROWS, xs, rest);
        }
    }

    /// Whether the tiles from feature `first` (which must start a tile) for `out_len` sums
    /// of `M` rows, and block after block of every row, lie inside their arrays: what
    /// [`features`] and [`wide_features`] read unchecked.
    #[inline(always)]
    fn tiles_fit<const M: usize, const Q4: bool>(
        w: &BlockMatrix,
        first: usize,
        xs: &[Row; M],
        out_len: usize,
    ) -> bool {
        let blocks = w.blocks_per_row();
        let end = (first / TILE_ROWS + (out_len / M).div_ceil(TILE_ROWS)) * blocks;
        first.is_multiple_of(TILE_ROWS)
            && xs.iter().all(|x| {
                x.values.len() >= blocks * BLOCK
                    && x.shifted.len() >= blocks * BLOCK
                    && x.scales.len() >= blocks
                    && x.sums.len() >= blocks
            })
            && w.values.len() >= end * w.format.tile_block_bytes()
            && w.scales.len() >= end * TILE_ROWS
            && (!Q4 || w.offsets.len() >= end * TILE_ROWS)
    }

    /// [`product_wide`]'s pairs of tiles from `first` on (`out` ends in a whole or partial
    /// pair).
    #[inline(always)]
    fn wide_features<const M: usize, const Q4: bool>(
        w: &BlockMatrix,
        first: usize,
        xs: &[Row; M],
        out: &mut [f32],
    ) {
        let blocks = w.blocks_per_row();
        let size = w.format.tile_block_bytes();
        let first_tile = first / TILE_ROWS;
        if !tiles_fit::<M, Q4>(w, first, xs, out.len()) {
            out.fill(f32::NAN);
            return;
        }
        // SAFETY: every array holds the tiles and blocks read (checked just above), and
        // the CPU has the features of `product_wide`, which this is inlined into.
        unsafe {
            for (p, pair_out) in out.chunks_mut(2 * TILE_ROWS * M).enumerate() {
                let tiles = [first_tile + 2 * p, first_tile + 2 * p + 1].map(|t| t * blocks);
                let mut acc = [_mm512_setzero_ps(); M];
                let mut offset_acc = [_mm512_setzero_ps(); M];
                for b in 0..blocks {
                    let at = tiles.map(|t| t + b);
                    for at in at {
                        let ahead = w.values.as_ptr().wrapping_add(at * size + PREFETCH_BYTES);
                        for line in (0..size).step_by(64) {
                            _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(line).cast());
                        }
                    }
                    let values = at.map(|at| w.values.as_ptr().add(at * size));
                    let dots = wide_block_dots::<M, Q4>(values, xs, b);
                    let halves = at.map(|at| w.scales.as_ptr().add(at * TILE_ROWS));
                    let wd = _mm512_cvtph_ps(pair_of(halves));
                    for ((acc, dot), x) in acc.iter_mut().zip(dots).zip(xs) {
                        let xd = _mm512_set1_ps(*x.scales.get_unchecked(b));
                        let sums = _mm512_mul_ps(_mm512_cvtepi32_ps(dot), xd);
                        *acc = _mm512_fmadd_ps(sums, wd, *acc);
                    }
                    if Q4 {
                        let halves = at.map(|at| w.offsets.as_ptr().add(at * TILE_ROWS));
                        let wm = _mm512_cvtph_ps(pair_of(halves));
                        for (acc, x) in offset_acc.iter_mut().zip(xs) {
                            let x_sum = _mm512_set1_ps(*x.sums.get_unchecked(b));
                            *acc = _mm512_fmadd_ps(wm, x_sum, *acc);
                        }
                    }
                }
                for i in 0..M {
                    let mut lanes = [0f32; 2 * TILE_ROWS];
                    _mm512_storeu_ps(lanes.as_mut_ptr(), _mm512_add_ps(acc[i], offset_acc[i]));
                    for (r, lane) in lanes.iter().take(pair_out.len() / M).enumerate() {
                        pair_out[r * M + i] = *lane;
                    }
                }
            }
        }
    }

    /// The eight f16 values at each of two places, as one vector of sixteen.
    ///
    /// # Safety
    ///
    /// Both places hold eight f16 values (16 bytes).
    #[inline(always)]
    unsafe fn pair_of(halves: [*const half::f16; 2]) -> __m256i {
        // SAFETY: both reads lie in the places given (the caller's contract).
        unsafe {
            let low = _mm_loadu_si128(halves[0].cast());
            let high = _mm_loadu_si128(halves[1].cast());
            _mm256_inserti128_si256::<1>(_mm256_castsi128_si256(low), high)
        }
    }

    /// The 32 bytes at each of two places, as one vector of 64.
    ///
    /// # Safety
    ///
    /// Both places hold 32 bytes.
    #[inline(always)]
    unsafe fn wide_pair(places: [*const u8; 2], offset: usize) -> __m512i {
        // SAFETY: both reads lie in the places given (the caller's contract).
        unsafe {
            let low = _mm256_loadu_si256(places[0].add(offset).cast());
            let high = _mm256_loadu_si256(places[1].add(offset).cast());
            _mm512_inserti64x4::<1>(_mm512_castsi256_si512(low), high)
        }
    }

    /// [`block_dots`] with VNNI for two tiles at once, the first's eight rows in the low
    /// lanes and the second's in the high ones.
    ///
    /// # Safety
    ///
    /// Both `values` point at whole tile blocks of the matrix's format, each row in `xs`
    /// holds block `b`, and the CPU has AVX-512 F, BW and VNNI.
    #[inline(always)]
    unsafe fn wide_block_dots<const M: usize, const Q4: bool>(
        values: [*const u8; 2],
        xs: &[Row; M],
        b: usize,
    ) -> [__m512i; M] {
        // SAFETY: every read lies in the tile blocks at `values` or in block `b` of a row,
        // and the CPU has the features used (the caller's contract).
        unsafe {
            let mut dots = [_mm512_setzero_si512(); M];
            // Four bytes of row `x` from byte `j` of the block, in every lane.
            let four = |x: *const u8, j: usize| {
                _mm512_set1_epi32(x.add(b * BLOCK + j).cast::<i32>().read_unaligned())
            };
            // Two chains of sums per row halve the wait on `dpbusd`'s latency where few rows
            // give few chains; past four rows, one chain each leaves the registers free.
            let split = M <= 4;
            let mut odd = [_mm512_setzero_si512(); M];
            if Q4 {
                let nibbles = _mm512_set1_epi8(0x0F);
                for p in 0..4 {
                    let packed = wide_pair(values, p * 32);
                    let low = _mm512_and_si512(packed, nibbles);
                    let high = _mm512_and_si512(_mm512_srli_epi16::<4>(packed), nibbles);
                    for ((dot, odd), x) in dots.iter_mut().zip(odd.iter_mut()).zip(xs) {
                        let x = x.values.as_ptr().cast::<u8>();
                        *dot = _mm512_dpbusd_epi32(*dot, low, four(x, 4 * p));
                        let high_dot = if split { odd } else { &mut *dot };
                        *high_dot = _mm512_dpbusd_epi32(*high_dot, high, four(x, 16 + 4 * p));
                    }
                }
                for (dot, odd) in dots.iter_mut().zip(odd) {
                    *dot = _mm512_add_epi32(*dot, odd);
                }
                return dots;
            }
            let bias = _mm512_set1_epi8(i8::MIN);
            let mut correction = [_mm512_setzero_si512(); 2];
            for u in 0..8 {
                let weights = wide_pair(values, u * 32);
                let chain = u % 2;
                correction[chain] = _mm512_dpbusd_epi32(correction[chain], bias, weights);
                for ((even, odd), x) in dots.iter_mut().zip(odd.iter_mut()).zip(xs) {
                    let four = four(x.shifted.as_ptr(), 4 * u);
                    let dot = if chain == 0 || !split { even } else { odd };
                    *dot = _mm512_dpbusd_epi32(*dot, four, weights);
                }
            }
            let correction = _mm512_add_epi32(correction[0], correction[1]);
            for (dot, odd) in dots.iter_mut().zip(odd) {
                *dot = _mm512_sub_epi32(_mm512_add_epi32(*dot, odd), correction);
            }
            dots
        }
    }

    /// Output features `first..` of the product (`first` starts a tile), `out` holding `M`
    /// sums a feature; `Q4` picks 4-bit weights with offsets over 8-bit ones. Per tile
    /// and block, [`block_dots`] gives each activation row the eight rows' integer sums,
    /// a row per lane, and one conversion and an FMA (two with offsets) scale them. All
    /// sums are NaN when an array lacks what the tiles need. Inlined into [`product`] and
    /// [`product_vnni`], it takes their instructions; `VNNI` picks the integer products.
    #[inline(always)]
    fn features<const M: usize, const Q4: bool, const VNNI: bool>(
        w: &BlockMatrix,
        first: usize,
        xs: &[Row; M],
        out: &mut [f32],
    ) {
        let blocks = w.blocks_per_row();
        let size = w.format.tile_block_bytes();
        let first_tile = first / TILE_ROWS;
        if !tiles_fit::<M, Q4>(w, first, xs, out.len()) {
            out.fill(f32::NAN);
            return;
        }
        // SAFETY: every array holds the tiles and blocks read (checked just above), and
        // the CPU has the features of the function this one is inlined into (its callers
        // check), VNNI among them when `VNNI` is set.
        unsafe {
            for (t, tile_out) in out.chunks_mut(TILE_ROWS * M).enumerate() {
                let tile_blocks = (first_tile + t) * blocks;
                let mut acc = [_mm256_setzero_ps(); M];
                let mut offset_acc = [_mm256_setzero_ps(); M];
                for b in 0..blocks {
                    let at = tile_blocks + b;
                    // The hardware prefetcher alone left the weights' stream short of the
                    // machine's bandwidth; requesting the lines PREFETCH_BYTES ahead keeps more
                    // of them in flight. Past the array's end the requests are dropped.
                    let ahead = w.values.as_ptr().wrapping_add(at * size + PREFETCH_BYTES);
                    for line in (0..size).step_by(64) {
                        _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(line).cast());
                    }
                    let values = w.values.as_ptr().add(at * size);
                    let dots = block_dots::<M, Q4, VNNI>(values, xs, b);
                    let scales = w.scales.as_ptr().add(at * TILE_ROWS);
                    let wd = _mm256_cvtph_ps(_mm_loadu_si128(scales.cast()));
                    for ((acc, dot), x) in acc.iter_mut().zip(dots).zip(xs) {
                        let xd = _mm256_set1_ps(*x.scales.get_unchecked(b));
                        let sums = _mm256_mul_ps(_mm256_cvtepi32_ps(dot), xd);
                        *acc = _mm256_fmadd_ps(sums, wd, *acc);
                    }
                    if Q4 {
                        let offsets = w.offsets.as_ptr().add(at * TILE_ROWS);
                        let wm = _mm256_cvtph_ps(_mm_loadu_si128(offsets.cast()));
                        for (acc, x) in offset_acc.iter_mut().zip(xs) {
                            let x_sum = _mm256_set1_ps(*x.sums.get_unchecked(b));
                            *acc = _mm256_fmadd_ps(wm, x_sum, *acc);
                        }
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
    }

    /// For each activation row, the integer dot products of block `b` with the eight rows
    /// of the tile's block at `values`, a row per 32-bit lane.
    ///
    /// 8 bits: `maddubs` multiplies unsigned by signed bytes, so it takes
    /// `|w| * (x * sign(w))`, the magnitudes shared by every activation row; the products
    /// can reach 2 * 127 * 127, so each step widens them to 32 bits. 4 bits: the weights
    /// are unsigned already, and the sixteen-bit sums of a block's eight steps stay below
    /// 15 * 127 * 2 * 8 = 30480, so they widen once. With `VNNI`, `dpbusd` multiplies
    /// unsigned by signed bytes and adds each lane's four products to its 32-bit sum in one
    /// instruction, with no 16-bit step: for 4 bits the same operands; for 8 bits the
    /// activations plus 128 by the weights as they are, less 128 times the weights' sums
    /// (computed once for every row). The same sums either way.
    ///
    /// # Safety
    ///
    /// `values` points at a whole tile block of the matrix's format
    /// ([`BlockFormat::tile_block_bytes`]), each row in `xs` holds block `b`, and the CPU
    /// has AVX2, and AVX-512 VL and VNNI when `VNNI` is set.
    #[inline(always)]
    unsafe fn block_dots<const M: usize, const Q4: bool, const VNNI: bool>(
        values: *const u8,
        xs: &[Row; M],
        b: usize,
    ) -> [__m256i; M] {
        // SAFETY: every read lies in the tile block at `values` or in block `b` of a row,
        // and the CPU has the features used (the caller's contract).
        unsafe {
            let ones = _mm256_set1_epi16(1);
            let mut dots = [_mm256_setzero_si256(); M];
            // Four activations of row `x` from weight `j` of the block, in every lane.
            let four = |x: &Row, j: usize| {
                let x = x.values.as_ptr().add(b * BLOCK + j);
                _mm256_set1_epi32(x.cast::<i32>().read_unaligned())
            };
            if Q4 && VNNI {
                let nibbles = _mm256_set1_epi8(0x0F);
                for p in 0..4 {
                    let packed = _mm256_loadu_si256(values.add(p * 32).cast());
                    let low = _mm256_and_si256(packed, nibbles);
                    let high = _mm256_and_si256(_mm256_srli_epi16::<4>(packed), nibbles);
                    for (dot, x) in dots.iter_mut().zip(xs) {
                        *dot = _mm256_dpbusd_epi32(*dot, low, four(x, 4 * p));
                        *dot = _mm256_dpbusd_epi32(*dot, high, four(x, 16 + 4 * p));
                    }
                }
                return dots;
            }
            if Q4 {
                let nibbles = _mm256_set1_epi8(0x0F);
                for p in 0..4 {
                    let packed = _mm256_loadu_si256(values.add(p * 32).cast());
                    let low = _mm256_and_si256(packed, nibbles);
                    let high = _mm256_and_si256(_mm256_srli_epi16::<4>(packed), nibbles);
                    for (dot, x) in dots.iter_mut().zip(xs) {
                        let both = _mm256_add_epi16(
                            _mm256_maddubs_epi16(low, four(x, 4 * p)),
                            _mm256_maddubs_epi16(high, four(x, 16 + 4 * p)),
                        );
                        *dot = _mm256_add_epi16(*dot, both);
                    }
                }
                return dots.map(|dot| _mm256_madd_epi16(dot, ones));
            }
            if VNNI {
                // The shifted activations times the weights, less 128 times the weights'
                // sums, which every activation row shares: one instruction per row for
                // 32 products.
                // Two chains of sums each, the even and the odd steps, halve the wait
                // on `dpbusd`'s latency.
                let bias = _mm256_set1_epi8(i8::MIN);
                let mut correction = [_mm256_setzero_si256(); 2];
                let mut odd = [_mm256_setzero_si256(); M];
                for u in 0..8 {
                    let weights = _mm256_loadu_si256(values.add(u * 32).cast());
                    let chain = u % 2;
                    correction[chain] = _mm256_dpbusd_epi32(correction[chain], bias, weights);
                    for ((even, odd), x) in dots.iter_mut().zip(odd.iter_mut()).zip(xs) {
                        let x = x.shifted.as_ptr().add(b * BLOCK + 4 * u);
                        let four = _mm256_set1_epi32(x.cast::<i32>().read_unaligned());
                        let dot = if chain == 0 { even } else { odd };
                        *dot = _mm256_dpbusd_epi32(*dot, four, weights);
                    }
                }
                let correction = _mm256_add_epi32(correction[0], correction[1]);
                for (dot, odd) in dots.iter_mut().zip(odd) {
                    *dot = _mm256_sub_epi32(_mm256_add_epi32(*dot, odd), correction);
                }
                return dots;
            }
            for u in 0..8 {
                let weights = _mm256_loadu_si256(values.add(u * 32).cast());
                let magnitudes = _mm256_sign_epi8(weights, weights);
                for (dot, x) in dots.iter_mut().zip(xs) {
                    let signed = _mm256_sign_epi8(four(x, 4 * u), weights);
                    let products = _mm256_maddubs_epi16(magnitudes, signed);
                    *dot = _mm256_add_epi32(*dot, _mm256_madd_epi16(products, ones));
                }
            }
            dots
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::quant::blocks::BlockFormat;

    fn random(n: usize, seed: u64) -> Vec<f32> {
        crate::random::Rng::new(seed).uniform_f32s(n, -0.5, 0.5)
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
            // 70, 33, 129, 1 and 5 rows end in a partial tile of eight; 288 is nine blocks.
            // 5, 9 and 17 rows run in groups of four (eight on 512-bit VNNI).
            for (m, k, n) in [
                (1, 1024, 70),
                (2, 4096, 33),
                (3, 64, 129),
                (4, 32, 1),
                (2, 288, 5),
                (5, 288, 70),
                (9, 64, 33),
                (17, 128, 40),
            ] {
                let weights = random(n * k, 7);
                let matrix = BlockMatrix::quantize(&weights, n, k, format).unwrap();
                let mut x = QuantizedRows::default();
                x.quantize(&random(m * k, 8), m, k);
                let mut out = vec![0f32; m * n];
                matmul_rows(&x, &matrix, &mut out).unwrap();
                let want = reference(&x, &matrix.dequantize(), n);
                let what = format!("{format:?} {m}x{k}x{n}");
                crate::kernels::assert_near_reference(&out, &want, k, &what);
            }
        }
    }

    /// Eleven rows at once (groups of four, four and three) give each row exactly the
    /// sums it gets alone, over features that span several tasks' worth.
    #[test]
    fn a_row_sums_the_same_bits_alone_or_among_many() {
        let (m, k, n) = (11, 288, 72);
        for format in [BlockFormat::Q8, BlockFormat::Q4] {
            let matrix = BlockMatrix::quantize(&random(n * k, 3), n, k, format).unwrap();
            let xs = random(m * k, 4);
            let mut all = QuantizedRows::default();
            all.quantize(&xs, m, k);
            let mut together = vec![0f32; n * m];
            features(&all, &matrix, 0, &mut together).unwrap();
            for i in 0..m {
                let mut one = QuantizedRows::default();
                one.quantize(&xs[i * k..(i + 1) * k], 1, k);
                let mut alone = vec![0f32; n];
                features(&one, &matrix, 0, &mut alone).unwrap();
                let column: Vec<f32> = together.iter().skip(i).step_by(m).copied().collect();
                assert_eq!(column, alone, "{format:?} row {i}");
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
                    shifted: x.shifted_row(0),
                    scales: s0,
                    sums: u0,
                },
                Row {
                    values: v1,
                    shifted: x.shifted_row(1),
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

    /// Where the CPU has VNNI, its products are the AVX2 ones bit for bit (the integer sums
    /// are the same), for both formats, every row count and partial tiles; each also
    /// agrees with the portable loops.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_vnni_products_are_the_avx2_bits() {
        if !crate::kernels::has_avx512_vnni() {
            eprintln!("this CPU has no AVX-512 VNNI: its path is not tested here");
            return;
        }
        let (m, k) = (4, 288);
        // Six tiles, the last partial (three pairs); five whole (two pairs and one alone).
        for (format, n) in [
            (BlockFormat::Q8, 44),
            (BlockFormat::Q4, 44),
            (BlockFormat::Q8, 40),
            (BlockFormat::Q4, 40),
        ] {
            let matrix = BlockMatrix::quantize(&random(n * k, 5), n, k, format).unwrap();
            let mut x = QuantizedRows::default();
            x.quantize(&random(m * k, 6), m, k);
            let rows = rows_from::<4>(&x, 0);
            let (mut plain, mut vnni) = (vec![0f32; n * m], vec![0f32; n * m]);
            let mut wide = vec![0f32; n * m];
            // SAFETY: the CPU has AVX2, FMA, F16C and AVX-512 F, BW, VL and VNNI (checked
            // above).
            unsafe {
                avx2::product::<4>(&matrix, 0, &rows, &mut plain);
                avx2::product_vnni::<4>(&matrix, 0, &rows, &mut vnni);
                avx2::product_wide::<4>(&matrix, 0, &rows, &mut wide);
            }
            assert_eq!(plain, vnni, "{format:?}");
            assert_eq!(plain, wide, "{format:?} on 512 bits");
            for (f, sums) in vnni.chunks_exact(m).enumerate() {
                for (a, b) in dots_portable::<4>(&matrix, f, &rows).iter().zip(sums) {
                    assert!(
                        (a - b).abs() <= 1e-5 * b.abs().max(1.0),
                        "{format:?}: {a} vs {b}"
                    );
                }
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
        assert!(matmul_rows(&x, &matrix, &mut [0.0; 9]).is_none());
        assert!(matmul_rows(&x, &matrix, &mut [0.0; 10]).is_some());
        x.quantize(&random(0, 1), 0, 32);
        assert!(matmul_rows(&x, &matrix, &mut []).is_none());
        x.quantize(&random(64, 1), 1, 64);
        assert!(matmul_rows(&x, &matrix, &mut [0.0; 2]).is_none());
        assert!(BlockMatrix::quantize(&random(40, 1), 1, 40, BlockFormat::Q4).is_none());
    }
}
