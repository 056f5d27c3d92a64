//! Dense f32 projections of any number of rows, on weights packed at load into panels.
//!
//! A batched decoder step multiplies a few dozen activation rows by each weight matrix:
//! compute-bound once the rows are many, so the kernel must keep the FMA units busy, and
//! bound by reading weights when they are few (one job's guidance pair), so it must read
//! each weight once for all rows. The weights `[out, in]` are stored as panels of
//! [`PANEL`] output features, each `[in][PANEL]`: for one input column, the panel's
//! features lie side by side, so a tile loads them as whole vectors and multiplies each by
//! one activation broadcast, with no sums across lanes. A tile holds up to
//! [`GROUP_ROWS`] rows by one panel in registers (24 accumulators with AVX-512) and
//! walks the columns in blocks of [`BLOCK_COLUMNS`]: a block of the panel (16 KiB) stays
//! in the first-level cache while every group of rows passes over it, and the next blocks
//! are requested meanwhile. The activations are copied once per projection into
//! [`PaddedRows`], whose rows lie a cache line further apart than their length, so rows of
//! a power-of-two length (1024 floats: 4 KiB) do not compete for the same cache sets.
//!
//! Every (row, feature) sum is one chain of fused multiply-adds over the columns in
//! order, whatever the tile, the group or the instructions: a row's result does not
//! depend on its batch, and the AVX-512, AVX2 and portable paths give the same bits. The
//! price is the portable path's speed on x86-64 CPUs without FMA (before 2013), where
//! `f32::mul_add` is a library call per element.

use rayon::prelude::*;

/// Output features a panel holds side by side: two AVX-512 vectors, four AVX2 ones.
pub(crate) const PANEL: usize = 32;
/// Rows a tile serves: with two vectors a row, 24 of AVX-512's 32 registers accumulate,
/// and the panel's two vectors and a broadcast take three more.
const GROUP_ROWS: usize = 12;
/// Rows an AVX2 tile serves, on half a panel: twelve accumulators of its sixteen registers.
const HALF_GROUP_ROWS: usize = 6;
/// Columns of a block: a panel's block is 16 KiB, which the first-level cache keeps while
/// every group of rows reads it.
const BLOCK_COLUMNS: usize = 128;
/// How far ahead of a tile the weights are requested into the second-level cache, in
/// floats: two blocks of the panel.
const AHEAD: usize = 2 * BLOCK_COLUMNS * PANEL;
/// Floats between the end of one padded row and the start of the next: a cache line.
const ROW_PADDING: usize = 16;
/// Output features per parallel task: two panels.
pub(crate) const TASK_FEATURES: usize = 2 * PANEL;

/// A weight matrix `[rows, cols]` packed into panels of 32 rows, each stored
/// column by column; the last panel is padded with zero rows.
#[derive(Clone, Debug)]
pub struct PanelMatrix {
    /// Output features.
    pub rows: usize,
    /// Input features.
    pub cols: usize,
    /// `rows.div_ceil(PANEL)` panels of `cols * PANEL` floats.
    values: Vec<f32>,
}

impl PanelMatrix {
    /// Packs `w` (`[rows, cols]`, row-major). `None` when `w` does not hold that shape or
    /// a dimension is zero.
    pub fn pack(w: &[f32], rows: usize, cols: usize) -> Option<Self> {
        if rows == 0 || cols == 0 || rows.checked_mul(cols)? != w.len() {
            return None;
        }
        let mut values = vec![0f32; rows.div_ceil(PANEL) * cols * PANEL];
        values
            .par_chunks_mut(cols * PANEL)
            .enumerate()
            .for_each(|(p, panel)| {
                let first = p * PANEL;
                for (j, row) in w[first * cols..].chunks_exact(cols).take(PANEL).enumerate() {
                    for (t, &v) in row.iter().enumerate() {
                        panel[t * PANEL + j] = v;
                    }
                }
            });
        Some(Self { rows, cols, values })
    }

    /// Panel `p`: `cols` columns of [`PANEL`] features.
    fn panel(&self, p: usize) -> &[f32] {
        &self.values[p * self.cols * PANEL..(p + 1) * self.cols * PANEL]
    }
}

/// Activation rows as the panel product reads them: `rows` rows of `cols`, `stride` floats
/// apart, from a cache line on.
#[derive(Clone, Debug, Default)]
pub struct PaddedRows {
    /// Activation rows.
    pub rows: usize,
    /// Values per row.
    pub cols: usize,
    stride: usize,
    /// Where the first row starts in `buffer`: a cache line.
    start: usize,
    buffer: Vec<f32>,
}

impl PaddedRows {
    /// Copies `xs` (`rows` rows of `cols`) into `self`, reusing its buffer. Where `xs` is
    /// not that shape, `self` holds no rows, which every product declines.
    pub fn pad(&mut self, xs: &[f32], rows: usize, cols: usize) {
        let rows = if cols > 0 && rows.checked_mul(cols) == Some(xs.len()) {
            rows
        } else {
            0
        };
        self.rows = rows;
        self.cols = cols;
        self.stride = cols + ROW_PADDING;
        self.buffer.clear();
        self.buffer.resize(rows * self.stride + ROW_PADDING, 0.0);
        self.start = self.buffer.as_ptr().align_offset(64).min(ROW_PADDING);
        let (start, stride) = (self.start, self.stride);
        let copies = self.buffer[start..].chunks_mut(stride);
        for (copy, row) in copies.zip(xs.chunks_exact(cols).take(rows)) {
            copy[..cols].copy_from_slice(row);
        }
    }

    /// Forgets the rows: every product declines until the next [`Self::pad`].
    pub fn clear(&mut self) {
        self.rows = 0;
    }

    /// Rows `first..first + count`, from the first one's start to the last one's end.
    fn group(&self, first: usize, count: usize) -> &[f32] {
        let from = self.start + first * self.stride;
        &self.buffer[from..from + (count - 1) * self.stride + self.cols]
    }
}

/// Output features `first..` of `x W^T` for every row of `x`, as many as `sums` holds:
/// `sums` is `[features, rows]`, a feature's value for every row together. `None` (and
/// `sums` left alone) when the shapes do not fit or `first` is not the start of a panel.
pub(crate) fn features(
    x: &PaddedRows,
    w: &PanelMatrix,
    first: usize,
    sums: &mut [f32],
) -> Option<()> {
    let m = x.rows;
    let fits = m >= 1
        && x.cols == w.cols
        && sums.len().is_multiple_of(m)
        && first.is_multiple_of(PANEL)
        && first + sums.len() / m <= w.rows;
    if !fits {
        return None;
    }
    super::dispatch!(
        avx512f => panels_avx512(x, w, first, sums),
        avx2_fma => panels_avx2_fma(x, w, first, sums),
        portable => panels_portable(x, w, first, sums),
    );
    Some(())
}

/// `x W^T` into `out` (`[rows, w.rows]`) on the kernel pool's threads, a task per
/// [`TASK_FEATURES`] features. `None` when the shapes do not fit.
pub(crate) fn matmul(x: &PaddedRows, w: &PanelMatrix, out: &mut [f32]) -> Option<()> {
    if x.rows == 0 || out.len() != x.rows * w.rows || x.cols != w.cols {
        return None;
    }
    let failed = std::sync::atomic::AtomicBool::new(false);
    super::gemv::for_feature_tasks(w.rows, x.rows, TASK_FEATURES, out, |first, sums| {
        if features(x, w, first, sums).is_none() {
            failed.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    });
    (!failed.into_inner()).then_some(())
}

/// One panel's sums for a group of rows, `[GROUP_ROWS][PANEL]`, kept between blocks.
type Partial = [[f32; PANEL]; GROUP_ROWS];

/// The walk every path shares: panel by panel, block of columns by block, group of rows
/// by group, calling `$tile(rows, group, panel_block, partial, fresh, ahead)` with the
/// group's rows from the block's first column on, the panel from the block on, whether
/// the sums start from zero, and whether to request the weights [`AHEAD`]; then the
/// panel's sums go to `sums`.
macro_rules! panels_body {
    ($x:expr, $w:expr, $first:expr, $sums:expr, $group_rows:expr, $tile:ident) => {{
        let (x, w, first, sums): (&PaddedRows, &PanelMatrix, usize, &mut [f32]) =
            ($x, $w, $first, $sums);
        let (m, k) = (x.rows, x.cols);
        let count = sums.len() / m;
        let groups = m.div_ceil($group_rows);
        let mut partials = vec![[[0f32; PANEL]; GROUP_ROWS]; groups];
        for offset in (0..count).step_by(PANEL) {
            let panel = w.panel((first + offset) / PANEL);
            for block in (0..k).step_by(BLOCK_COLUMNS) {
                let columns = BLOCK_COLUMNS.min(k - block);
                for (g, partial) in partials.iter_mut().enumerate() {
                    let row = g * $group_rows;
                    let rows = $group_rows.min(m - row);
                    let xs = &x.group(row, rows)[block..];
                    let ws = &panel[block * PANEL..];
                    let tile = Tile {
                        xs,
                        stride: x.stride,
                        ws,
                        columns,
                        fresh: block == 0,
                        ahead: g == 0,
                    };
                    match rows {
                        1 => $tile::<1>(&tile, partial),
                        2 => $tile::<2>(&tile, partial),
                        3 => $tile::<3>(&tile, partial),
                        4 => $tile::<4>(&tile, partial),
                        5 => $tile::<5>(&tile, partial),
                        6 => $tile::<6>(&tile, partial),
                        7 => $tile::<7>(&tile, partial),
                        8 => $tile::<8>(&tile, partial),
                        9 => $tile::<9>(&tile, partial),
                        10 => $tile::<10>(&tile, partial),
                        11 => $tile::<11>(&tile, partial),
                        _ => $tile::<12>(&tile, partial),
                    }
                }
            }
            let features = PANEL.min(count - offset);
            for (j, sums) in sums[offset * m..(offset + features) * m]
                .chunks_exact_mut(m)
                .enumerate()
            {
                for (i, sum) in sums.iter_mut().enumerate() {
                    *sum = partials[i / $group_rows][i % $group_rows][j];
                }
            }
        }
    }};
}

/// One tile's operands: a group's rows (`stride` floats apart, from the block's first
/// column) and the panel from the block's first column, for `columns` columns.
struct Tile<'a> {
    xs: &'a [f32],
    stride: usize,
    ws: &'a [f32],
    columns: usize,
    /// The sums start from zero (the first block) rather than from the partial sums.
    fresh: bool,
    /// The tile requests the panel's weights [`AHEAD`] of those it reads.
    ahead: bool,
}

impl Tile<'_> {
    /// Whether `R` rows and the block's columns lie inside the slices.
    fn fits<const R: usize>(&self) -> bool {
        R >= 1
            && R <= GROUP_ROWS
            && self.xs.len() > (R - 1) * self.stride
            && self.xs.len() - (R - 1) * self.stride >= self.columns
            && self.ws.len() >= self.columns * PANEL
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
fn panels_avx512(x: &PaddedRows, w: &PanelMatrix, first: usize, sums: &mut [f32]) {
    panels_body!(x, w, first, sums, GROUP_ROWS, tile_avx512);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn panels_avx2_fma(x: &PaddedRows, w: &PanelMatrix, first: usize, sums: &mut [f32]) {
    panels_body!(x, w, first, sums, HALF_GROUP_ROWS, tile_avx2_fma);
}

fn panels_portable(x: &PaddedRows, w: &PanelMatrix, first: usize, sums: &mut [f32]) {
    panels_body!(x, w, first, sums, GROUP_ROWS, tile_portable);
}

/// `R` rows by a panel with AVX-512: two vectors of sixteen features a row.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f,avx2,fma")]
fn tile_avx512<const R: usize>(tile: &Tile, partial: &mut Partial) {
    use std::arch::x86_64::*;
    assert!(tile.fits::<R>(), "a tile's rows and panel are whole");
    let mut acc = [[_mm512_setzero_ps(); 2]; R];
    if !tile.fresh {
        for (acc, partial) in acc.iter_mut().zip(partial.iter()) {
            // SAFETY: a partial row holds 32 floats.
            unsafe {
                acc[0] = _mm512_loadu_ps(partial.as_ptr());
                acc[1] = _mm512_loadu_ps(partial.as_ptr().add(16));
            }
        }
    }
    let (x, mut w) = (tile.xs.as_ptr(), tile.ws.as_ptr());
    for t in 0..tile.columns {
        // SAFETY: `t < columns`: row `i < R` reads `xs[i * stride + t]` and the panel
        // `ws[t * PANEL..(t + 1) * PANEL]`, inside the slices (`fits`); a prefetch
        // never faults, wherever it points.
        unsafe {
            let w0 = _mm512_loadu_ps(w);
            let w1 = _mm512_loadu_ps(w.add(16));
            if tile.ahead {
                _mm_prefetch::<_MM_HINT_T1>(w.wrapping_add(AHEAD).cast());
                _mm_prefetch::<_MM_HINT_T1>(w.wrapping_add(AHEAD + 16).cast());
            }
            for (i, acc) in acc.iter_mut().enumerate() {
                let b = _mm512_set1_ps(*x.add(i * tile.stride + t));
                acc[0] = _mm512_fmadd_ps(b, w0, acc[0]);
                acc[1] = _mm512_fmadd_ps(b, w1, acc[1]);
            }
            w = w.wrapping_add(PANEL);
        }
    }
    for (acc, partial) in acc.iter().zip(partial.iter_mut()) {
        // SAFETY: a partial row holds 32 floats.
        unsafe {
            _mm512_storeu_ps(partial.as_mut_ptr(), acc[0]);
            _mm512_storeu_ps(partial.as_mut_ptr().add(16), acc[1]);
        }
    }
}

/// `R` rows (at most [`HALF_GROUP_ROWS`]) by a panel with AVX2, half a panel (two vectors
/// of eight features a row) at a time.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx2,fma")]
fn tile_avx2_fma<const R: usize>(tile: &Tile, partial: &mut Partial) {
    use std::arch::x86_64::*;
    assert!(
        R <= HALF_GROUP_ROWS && tile.fits::<R>(),
        "a tile's rows and panel are whole"
    );
    for half in [0, PANEL / 2] {
        let mut acc = [[_mm256_setzero_ps(); 2]; R];
        if !tile.fresh {
            for (acc, partial) in acc.iter_mut().zip(partial.iter()) {
                // SAFETY: `half + 16 <= 32`, the floats a partial row holds.
                unsafe {
                    acc[0] = _mm256_loadu_ps(partial.as_ptr().add(half));
                    acc[1] = _mm256_loadu_ps(partial.as_ptr().add(half + 8));
                }
            }
        }
        let (x, mut w) = (tile.xs.as_ptr(), tile.ws.as_ptr().wrapping_add(half));
        for t in 0..tile.columns {
            // SAFETY: as in `tile_avx512`; `half + 16 <= PANEL`.
            unsafe {
                let w0 = _mm256_loadu_ps(w);
                let w1 = _mm256_loadu_ps(w.add(8));
                if tile.ahead {
                    _mm_prefetch::<_MM_HINT_T1>(w.wrapping_add(AHEAD).cast());
                }
                for (i, acc) in acc.iter_mut().enumerate() {
                    let b = _mm256_set1_ps(*x.add(i * tile.stride + t));
                    acc[0] = _mm256_fmadd_ps(b, w0, acc[0]);
                    acc[1] = _mm256_fmadd_ps(b, w1, acc[1]);
                }
                w = w.wrapping_add(PANEL);
            }
        }
        for (acc, partial) in acc.iter().zip(partial.iter_mut()) {
            // SAFETY: `half + 16 <= 32`, the floats a partial row holds.
            unsafe {
                _mm256_storeu_ps(partial.as_mut_ptr().add(half), acc[0]);
                _mm256_storeu_ps(partial.as_mut_ptr().add(half + 8), acc[1]);
            }
        }
    }
}

/// `R` rows by a panel in plain loops, with the same fused multiply-adds in the same order.
#[inline]
fn tile_portable<const R: usize>(tile: &Tile, partial: &mut Partial) {
    assert!(tile.fits::<R>(), "a tile's rows and panel are whole");
    for (i, partial) in partial.iter_mut().enumerate().take(R) {
        if tile.fresh {
            *partial = [0.0; PANEL];
        }
        let row = &tile.xs[i * tile.stride..i * tile.stride + tile.columns];
        for (&x, ws) in row.iter().zip(tile.ws.chunks_exact(PANEL)) {
            for (sum, &w) in partial.iter_mut().zip(ws) {
                *sum = x.mul_add(w, *sum);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn product(x: &[f32], m: usize, w: &[f32], n: usize) -> Vec<f32> {
        let k = x.len() / m;
        let matrix = PanelMatrix::pack(w, n, k).unwrap();
        let mut rows = PaddedRows::default();
        rows.pad(x, m, k);
        let mut out = vec![0f32; m * n];
        matmul(&rows, &matrix, &mut out).unwrap();
        out
    }

    /// Row counts around the groups, columns around the blocks, features around the
    /// panels: each sum within f32 rounding of an f64 product.
    #[test]
    fn matches_a_plain_matmul_for_any_shape() {
        let mut rng = crate::random::Rng::new(3);
        for (m, k, n) in [
            (1, 1024, 300),
            (2, 1024, 129),
            (2, 37, 70),
            (3, 4096, 65),
            (13, 130, 33),
            (25, 256, 64),
            (4, 16, 1),
        ] {
            let x = rng.uniform_f32s(m * k, -0.5, 0.5);
            let w = rng.uniform_f32s(n * k, -0.5, 0.5);
            let out = product(&x, m, &w, n);
            let want = crate::kernels::reference_matmul(&x, m, &w, n);
            crate::kernels::assert_near_reference(&out, &want, k, &format!("{m}x{k}x{n}"));
        }
    }

    /// Thirty rows at once give each row exactly the sums it gets alone.
    #[test]
    fn a_row_sums_the_same_bits_alone_or_among_many() {
        let mut rng = crate::random::Rng::new(8);
        let (m, k, n) = (30, 300, 70);
        let x = rng.uniform_f32s(m * k, -1.0, 1.0);
        let w = rng.uniform_f32s(n * k, -1.0, 1.0);
        let together = product(&x, m, &w, n);
        for i in 0..m {
            let alone = product(&x[i * k..(i + 1) * k], 1, &w, n);
            assert_eq!(&together[i * n..(i + 1) * n], &alone[..], "row {i}");
        }
    }

    /// Every path the CPU has gives the portable path's bits, on every row count up to
    /// two groups and past, and on columns that end in a short block.
    #[test]
    fn every_path_gives_the_portable_bits() {
        let mut rng = crate::random::Rng::new(6);
        // Two whole panels and a partial third.
        let (k, n) = (300, 70);
        let w = rng.uniform_f32s(n * k, -1.0, 1.0);
        let matrix = PanelMatrix::pack(&w, n, k).unwrap();
        for m in 1..=26 {
            let x = rng.uniform_f32s(m * k, -1.0, 1.0);
            let mut rows = PaddedRows::default();
            rows.pad(&x, m, k);
            let mut portable = vec![0f32; n * m];
            panels_portable(&rows, &matrix, 0, &mut portable);
            #[cfg(target_arch = "x86_64")]
            {
                if crate::kernels::has_avx2_fma() {
                    let mut avx2 = vec![0f32; n * m];
                    // SAFETY: the CPU has AVX2 and FMA (checked above).
                    unsafe { panels_avx2_fma(&rows, &matrix, 0, &mut avx2) };
                    assert_eq!(avx2, portable, "AVX2, {m} rows");
                }
                if crate::kernels::has_avx512f() {
                    let mut wide = vec![0f32; n * m];
                    // SAFETY: the CPU has AVX-512F, AVX2 and FMA (checked above).
                    unsafe { panels_avx512(&rows, &matrix, 0, &mut wide) };
                    assert_eq!(wide, portable, "AVX-512, {m} rows");
                } else {
                    eprintln!("this CPU has no AVX-512: its tiles are not tested here");
                }
            }
        }
    }

    #[test]
    fn shapes_it_does_not_serve_are_declined() {
        assert!(PanelMatrix::pack(&[0.0; 6], 2, 4).is_none());
        assert!(PanelMatrix::pack(&[], 0, 4).is_none());
        let matrix = PanelMatrix::pack(&[1.0; 64 * 8], 64, 8).unwrap();
        let mut rows = PaddedRows::default();
        rows.pad(&[1.0; 2 * 8], 2, 8);
        let mut sums = vec![0f32; 2 * 16];
        assert!(
            features(&rows, &matrix, 16, &mut sums).is_none(),
            "mid-panel"
        );
        assert!(features(&rows, &matrix, 32, &mut vec![0f32; 2 * 64]).is_none());
        let mut short = PaddedRows::default();
        short.pad(&[1.0; 2 * 7], 2, 7);
        assert!(matmul(&short, &matrix, &mut vec![0f32; 2 * 64]).is_none());
        assert!(features(&rows, &matrix, 32, &mut sums).is_some());
        assert!(sums.iter().all(|&s| s == 8.0));
    }
}
