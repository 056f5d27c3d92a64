//! Block-quantized matrices for the CPU: 8-bit and 4-bit weights in blocks of 32, each block
//! with its own scale, and the 8-bit quantization of the activation rows they multiply.
//!
//! The layouts are made for [`super::product`]: each matrix keeps its quantized values in
//! one array and its per-block scales (and offsets) in others, so the kernel streams each
//! weight once and serves every activation row from it. Rows are stored in tiles of
//! [`TILE_ROWS`], interleaved so that one vector holds eight rows' weights for the same
//! four activations.

use half::f16;
use rayon::prelude::*;

/// Weights per block: one scale (and, for 4 bits, one offset) per 32 weights.
pub const BLOCK: usize = 32;

/// Rows in a tile: a 32-bit lane per row in a 256-bit vector.
pub(crate) const TILE_ROWS: usize = 8;

/// How the quantized values of a [`BlockMatrix`] are stored.
///
/// In both formats rows are stored in tiles of `TILE_ROWS` (the last one padded with
/// zero rows), block by block, and a tile's block interleaves its rows so that a 32-byte
/// vector holds four consecutive weights of each of the eight rows, a row per 32-bit lane,
/// to multiply by the same four activations broadcast to every lane. A tile's block keeps
/// its rows' scales (and offsets) together too.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockFormat {
    /// `w = d * q` with `q` in -127..=127: 32 bytes and a 2-byte scale per block. A tile's
    /// block is eight vectors; byte `4r + c` of vector `u` is weight `4u + c` of row `r`.
    Q8,
    /// `w = d * q + m` with `q` in 0..=15, two to a byte: 16 bytes, a 2-byte scale and a
    /// 2-byte offset per block. A tile's block is four vectors; byte `4r + c` of vector `p`
    /// holds weight `4p + c` of row `r` in its low nibble and weight `16 + 4p + c` in its
    /// high one, so a mask or a shift gives either four.
    Q4,
}

impl BlockFormat {
    /// Bytes one block of 32 weights takes, scales and offsets included.
    pub fn block_bytes(self) -> usize {
        match self {
            Self::Q8 => BLOCK + 2,
            Self::Q4 => BLOCK / 2 + 4,
        }
    }

    /// Bytes of one tile's block of values: 32 weights of each of its rows.
    pub fn tile_block_bytes(self) -> usize {
        match self {
            Self::Q8 => TILE_ROWS * BLOCK,
            Self::Q4 => TILE_ROWS * BLOCK / 2,
        }
    }

    /// Where weight `j` of a block of a tile's row `r` lies in the tile's block: its byte,
    /// and the shift of its nibble (0 for 8 bits).
    fn place(self, r: usize, j: usize) -> (usize, u32) {
        match self {
            Self::Q8 => (j / 4 * BLOCK + 4 * r + j % 4, 0),
            Self::Q4 => {
                let (high, j) = (j / 16, j % 16);
                (j / 4 * BLOCK + 4 * r + j % 4, 4 * high as u32)
            }
        }
    }
}

/// A `[rows, cols]` matrix of block-quantized weights; `cols` is a multiple of [`BLOCK`].
#[derive(Clone, Debug)]
pub struct BlockMatrix {
    /// 8 or 4 bits, and the tiles' layout.
    pub format: BlockFormat,
    /// Output features.
    pub rows: usize,
    /// Input features, a multiple of [`BLOCK`].
    pub cols: usize,
    /// The quantized values, tile by tile and block by block, as [`BlockFormat`] says.
    pub values: Vec<u8>,
    /// One scale per block, in the order of the values' blocks ([`Self::scale_index`]).
    pub scales: Vec<f16>,
    /// One offset per block for [`BlockFormat::Q4`], ordered as the scales; empty for Q8.
    pub offsets: Vec<f16>,
}

impl BlockMatrix {
    /// Quantizes `weights` (`[rows, cols]`, row-major) in parallel over tiles. `None` when
    /// `cols` is not a positive multiple of [`BLOCK`] or the slice is not `rows * cols` long.
    pub fn quantize(
        weights: &[f32],
        rows: usize,
        cols: usize,
        format: BlockFormat,
    ) -> Option<Self> {
        if cols == 0 || !cols.is_multiple_of(BLOCK) || weights.len() != rows * cols {
            return None;
        }
        let blocks = cols / BLOCK;
        let tiles = rows.div_ceil(TILE_ROWS);
        let tile_bytes = blocks * format.tile_block_bytes();
        let mut values = vec![0u8; tiles * tile_bytes];
        let mut scales = vec![f16::ZERO; tiles * blocks * TILE_ROWS];
        // Q8 has no offsets, but the parallel zip below needs a chunk per tile: it fills
        // zeros, dropped after.
        let mut offsets = vec![f16::ZERO; scales.len()];
        weights
            .par_chunks(TILE_ROWS * cols)
            .zip(values.par_chunks_mut(tile_bytes))
            .zip(scales.par_chunks_mut(blocks * TILE_ROWS))
            .zip(offsets.par_chunks_mut(blocks * TILE_ROWS))
            .for_each(|(((w, q), d), m)| {
                for (r, w) in w.chunks_exact(cols).enumerate() {
                    for (b, w) in w.chunks_exact(BLOCK).enumerate() {
                        let (levels, scale, offset) = match format {
                            BlockFormat::Q8 => quantize_q8_block(w),
                            BlockFormat::Q4 => quantize_q4_block(w),
                        };
                        let tile_block = &mut q[b * format.tile_block_bytes()..];
                        for (j, level) in levels.into_iter().enumerate() {
                            let (byte, shift) = format.place(r, j);
                            tile_block[byte] |= level << shift;
                        }
                        d[b * TILE_ROWS + r] = f16::from_f32(scale);
                        m[b * TILE_ROWS + r] = f16::from_f32(offset);
                    }
                }
            });
        if format == BlockFormat::Q8 {
            offsets = Vec::new();
        }
        Some(Self {
            format,
            rows,
            cols,
            values,
            scales,
            offsets,
        })
    }

    /// Blocks in one row.
    pub fn blocks_per_row(&self) -> usize {
        self.cols / BLOCK
    }

    /// Bytes the matrix takes: what one product reads.
    pub fn bytes(&self) -> usize {
        self.values.len() + 2 * (self.scales.len() + self.offsets.len())
    }

    /// Where block `b` of row `r` keeps its scale (and offset) in `scales` (`offsets`).
    pub fn scale_index(&self, r: usize, b: usize) -> usize {
        (r / TILE_ROWS * self.blocks_per_row() + b) * TILE_ROWS + r % TILE_ROWS
    }

    /// Block `b` of row `r` as 32 levels: signed for Q8, 0..=15 for Q4.
    pub fn levels(&self, r: usize, b: usize) -> [i32; BLOCK] {
        let size = self.format.tile_block_bytes();
        let tile_block = r / TILE_ROWS * self.blocks_per_row() + b;
        let q = &self.values[tile_block * size..][..size];
        std::array::from_fn(|j| {
            let (byte, shift) = self.format.place(r % TILE_ROWS, j);
            match self.format {
                BlockFormat::Q8 => i32::from(q[byte] as i8),
                BlockFormat::Q4 => i32::from((q[byte] >> shift) & 15),
            }
        })
    }

    /// The weights as f32 (the values the kernel multiplies by), `[rows, cols]`.
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = Vec::with_capacity(self.rows * self.cols);
        for r in 0..self.rows {
            for b in 0..self.blocks_per_row() {
                let i = self.scale_index(r, b);
                let d = self.scales[i].to_f32();
                let m = self.offsets.get(i).map_or(0.0, |m| m.to_f32());
                out.extend(self.levels(r, b).map(|q| d * q as f32 + m));
            }
        }
        out
    }
}

/// Quantizes one block to `q = round(w / d)`, `d = max|w| / 127`; returns the `q` as
/// bytes, `d` and a zero offset. The scale is rounded to f16 first, so the values are
/// chosen for the scale the kernel will use.
fn quantize_q8_block(w: &[f32]) -> ([u8; BLOCK], f32, f32) {
    let amax = w.iter().fold(0f32, |a, &x| a.max(x.abs()));
    let d = f16::from_f32(amax / 127.0).to_f32();
    let inverse = if d > 0.0 { 1.0 / d } else { 0.0 };
    let q = std::array::from_fn(|j| (w[j] * inverse).round().clamp(-127.0, 127.0) as i8 as u8);
    (q, d, 0.0)
}

/// Quantizes one block to `q = round((w - m) / d)` in 0..=15 with `m = min w` and
/// `d = (max w - m) / 15`; returns the `q`, `d` and `m`, both rounded to f16 before the
/// values are chosen.
fn quantize_q4_block(w: &[f32]) -> ([u8; BLOCK], f32, f32) {
    let (lo, hi) = w
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &x| {
            (lo.min(x), hi.max(x))
        });
    let m = f16::from_f32(lo).to_f32();
    let d = f16::from_f32((hi - m) / 15.0).to_f32();
    let inverse = if d > 0.0 { 1.0 / d } else { 0.0 };
    let q = std::array::from_fn(|j| ((w[j] - m) * inverse).round().clamp(0.0, 15.0) as u8);
    (q, d, m)
}

/// Activation rows quantized to 8 bits in blocks of 32, as the kernel reads them.
#[derive(Clone, Debug, Default)]
pub struct QuantizedRows {
    /// Activation rows.
    pub rows: usize,
    /// Values per row, a multiple of [`BLOCK`].
    pub cols: usize,
    /// `rows * cols` values in -127..=127.
    pub values: Vec<i8>,
    /// The values plus 128, as unsigned bytes (1..=255): VNNI's `dpbusd` multiplies
    /// unsigned bytes by signed ones, and so takes the signed weights as they are.
    pub shifted: Vec<u8>,
    /// One scale per block, row by row.
    pub scales: Vec<f32>,
    /// Per block, `scale * sum(values)`: the block's sum, which the 4-bit offsets multiply.
    pub sums: Vec<f32>,
}

impl QuantizedRows {
    /// Quantizes `xs` (`rows` rows of `cols`, a multiple of [`BLOCK`]) into `self`, reusing
    /// its buffers.
    pub fn quantize(&mut self, xs: &[f32], rows: usize, cols: usize) {
        let blocks = rows * cols / BLOCK;
        self.rows = rows;
        self.cols = cols;
        self.values.resize(rows * cols, 0);
        self.scales.resize(blocks, 0.0);
        self.sums.resize(blocks, 0.0);
        crate::kernels::dispatch!(
            avx2_fma => self.quantize_blocks_avx2(xs),
            portable => self.quantize_blocks(xs),
        );
        self.shifted.clear();
        self.shifted
            .extend(self.values.iter().map(|&v| (v as u8) ^ 0x80));
    }

    /// Row `i`'s values plus 128 (see [`Self::shifted`]).
    pub fn shifted_row(&self, i: usize) -> &[u8] {
        &self.shifted[i * self.cols..(i + 1) * self.cols]
    }

    /// [`Self::quantize_blocks`] compiled for AVX2, where its loops become vector code.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    fn quantize_blocks_avx2(&mut self, xs: &[f32]) {
        self.quantize_blocks(xs);
    }

    /// Quantizes each block of `xs` into the buffers, sized by [`Self::quantize`].
    #[inline(always)]
    fn quantize_blocks(&mut self, xs: &[f32]) {
        let all = xs
            .chunks_exact(BLOCK)
            .zip(self.values.chunks_exact_mut(BLOCK));
        for ((x, q), (d, s)) in all.zip(self.scales.iter_mut().zip(&mut self.sums)) {
            let (scale, total) = quantize_activation_block(x, q);
            *d = scale;
            *s = scale * total as f32;
        }
    }

    /// Row `i`'s values, scales and block sums.
    pub fn row(&self, i: usize) -> (&[i8], &[f32], &[f32]) {
        let blocks = self.cols / BLOCK;
        (
            &self.values[i * self.cols..(i + 1) * self.cols],
            &self.scales[i * blocks..(i + 1) * blocks],
            &self.sums[i * blocks..(i + 1) * blocks],
        )
    }
}

/// Quantizes one block of activations to `q = round(x / d)`, `d = max|x| / 127`; returns
/// `d` and the sum of the `q`. Written as eight-lane steps without branches or float
/// conversions so that it compiles to vector instructions: it runs once per block of every
/// activation row of every quantized projection.
#[inline(always)]
fn quantize_activation_block(x: &[f32], q: &mut [i8]) -> (f32, i32) {
    const LANES: usize = 8;
    let mut peaks = [0f32; LANES];
    for chunk in x.chunks_exact(LANES) {
        for (peak, &v) in peaks.iter_mut().zip(chunk) {
            // Not `f32::max`, whose NaN rule keeps the loop scalar.
            let v = v.abs();
            *peak = if v > *peak { v } else { *peak };
        }
    }
    let amax = peaks.iter().fold(0f32, |a, &v| if v > a { v } else { a });
    let d = amax / 127.0;
    let inverse = if amax > 0.0 { 127.0 / amax } else { 0.0 };
    // Adding 1.5 * 2^23 rounds to the nearest integer and leaves it in the low mantissa
    // bits, so it is read without a float-to-integer conversion (Rust's saturating one
    // stays scalar); the clamp keeps a NaN input's bits in range.
    const ROUND: f32 = 12_582_912.0;
    let round_bits = ROUND.to_bits() as i32;
    let mut totals = [0i32; LANES];
    for (chunk, q) in x.chunks_exact(LANES).zip(q.chunks_exact_mut(LANES)) {
        for ((total, q), &v) in totals.iter_mut().zip(q).zip(chunk) {
            let level = ((v * inverse + ROUND).to_bits() as i32 - round_bits).clamp(-127, 127);
            *q = level as i8;
            *total += level;
        }
    }
    (d, totals.iter().sum())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn activations_round_to_the_nearest_level_of_their_block_peak() {
        let mut xs = crate::random::Rng::new(5).uniform_f32s(2 * BLOCK, -3.0, 3.0);
        xs[7] = -4.0; // the first block's peak: its scale is 4 / 127
        xs[BLOCK + 3] = f32::NAN; // ignored by the peak, and kept in range
        let mut rows = QuantizedRows::default();
        rows.quantize(&xs, 1, 2 * BLOCK);
        let (values, scales, sums) = rows.row(0);
        assert_eq!(scales[0], 4.0 / 127.0);
        assert_eq!(values[7], -127);
        for (j, &x) in xs[..BLOCK].iter().enumerate() {
            assert_eq!(f32::from(values[j]), (x * 127.0 / 4.0).round(), "value {j}");
        }
        let total: i32 = values[..BLOCK].iter().map(|&q| i32::from(q)).sum();
        assert_eq!(sums[0], scales[0] * total as f32);
        assert!(scales[1].is_finite() && values[BLOCK..].iter().all(|&q| q != i8::MIN));
    }
}
