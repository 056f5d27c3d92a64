//! Attention of one new position to a KV cache, fused for the CPU: scores, an optional
//! additive mask, softmax and the weighted sum of values in one pass per head, in parallel
//! over heads. candle composes it from two general matmuls, a softmax and several copies,
//! whose per-call overhead dwarfs the few thousand multiply-adds each head needs.

use std::ops::Range;

use half::f16;
use half::slice::HalfFloatSliceExt;
use rayon::prelude::*;

/// Shapes of one fused attention call.
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    /// Batch rows (the guidance pair).
    pub rows: usize,
    /// Attention heads per row.
    pub heads: usize,
    /// Values per head.
    pub head_dim: usize,
    /// Positions the K/V buffers hold per head (`[rows, heads, capacity, head_dim]`).
    pub capacity: usize,
    /// Positions to attend to: the first `len` of each head.
    pub len: usize,
}

/// The keys or values of a KV cache, as stored: f32, or f16 (half the bytes a step reads,
/// widened to f32 head by head as they are read).
#[derive(Clone, Copy, Debug)]
pub enum CacheRows<'a> {
    /// Stored in f32.
    F32(&'a [f32]),
    /// Stored in f16.
    F16(&'a [f16]),
}

impl<'a> CacheRows<'a> {
    fn len(&self) -> usize {
        match self {
            Self::F32(rows) => rows.len(),
            Self::F16(rows) => rows.len(),
        }
    }

    /// Elements `range`.
    pub fn range(self, range: Range<usize>) -> CacheRows<'a> {
        match self {
            Self::F32(rows) => Self::F32(&rows[range]),
            Self::F16(rows) => Self::F16(&rows[range]),
        }
    }

    /// Where the elements start, and their size in bytes.
    pub fn as_bytes(&self) -> (*const u8, usize) {
        match self {
            Self::F32(rows) => (rows.as_ptr().cast(), std::mem::size_of_val(*rows)),
            Self::F16(rows) => (rows.as_ptr().cast(), std::mem::size_of_val(*rows)),
        }
    }

    /// `range` as f32: borrowed, or widened into `scratch`.
    fn f32_range<'s>(&'s self, range: Range<usize>, scratch: &'s mut Vec<f32>) -> &'s [f32] {
        match self {
            Self::F32(rows) => &rows[range],
            Self::F16(rows) => {
                scratch.resize(range.len(), 0.0);
                rows[range].convert_to_f32_slice(scratch);
                scratch
            }
        }
    }
}

/// `out[b, h] = softmax(q[b, h] . k[b, h, l] * scale + mask[b, l]) . v[b, h, l]` over
/// `l < len`. `q` and `out` are `[rows, heads, head_dim]`; `k` and `v` are
/// `[rows, heads, capacity, head_dim]`; `mask`, if any, is `[rows, len]` and added to the
/// scores. `None`, leaving `out` alone, when a slice does not match the shape.
pub fn attend_one(
    q: &[f32],
    k: CacheRows,
    v: CacheRows,
    mask: Option<&[f32]>,
    shape: Shape,
    scale: f32,
    out: &mut [f32],
) -> Option<()> {
    let Shape {
        rows,
        heads,
        head_dim,
        capacity,
        len,
    } = shape;
    let per_head = capacity * head_dim;
    let fits = head_dim > 0
        && len > 0
        && len <= capacity
        && q.len() == rows * heads * head_dim
        && out.len() == q.len()
        && k.len() == rows * heads * per_head
        && v.len() == k.len()
        && mask.is_none_or(|m| m.len() == rows * len);
    if !fits {
        return None;
    }
    let (k_all, v_all) = (k, v);
    out.par_chunks_mut(head_dim).enumerate().for_each_init(
        Scratch::default,
        |scratch, (index, out)| {
            let b = index / heads;
            let q = &q[index * head_dim..(index + 1) * head_dim];
            let filled = index * per_head..index * per_head + len * head_dim;
            let mask = mask.map(|m| &m[b * len..(b + 1) * len]);
            let (k, v) = (k.range(filled.clone()), v.range(filled.clone()));
            // The next head, probably this thread's next task (rayon splits ranges).
            let next = (index + 1 < rows * heads).then(|| {
                let filled = filled.start + per_head..filled.end + per_head;
                NextHead {
                    keys: k_all.range(filled.clone()).as_bytes(),
                    values: v_all.range(filled).as_bytes(),
                }
            });
            attend_head(q, k, v, mask, scale, next, scratch, out);
        },
    );
    Some(())
}

/// The keys and values of the head a thread takes next, as start addresses and lengths
/// in bytes: only handed to prefetch instructions, which never fault, and never read (the
/// memory may be another thread's to write).
#[derive(Clone, Copy, Debug)]
pub struct NextHead {
    /// Where the head's keys start, and their length in bytes.
    pub keys: (*const u8, usize),
    /// Where the head's values start, and their length in bytes.
    pub values: (*const u8, usize),
}

/// One head: `out = softmax(q . k[l] * scale + mask[l]) . v[l]` over the positions of `k`
/// and `v` (`[len, head_dim]` each, `len >= 1`), with `mask` (if any) `[len]`; `scratch`
/// is reused from head to head. `next`, the keys and values of the head the thread takes
/// next, are requested from memory meanwhile.
#[allow(clippy::too_many_arguments)]
pub fn attend_head(
    q: &[f32],
    k: CacheRows,
    v: CacheRows,
    mask: Option<&[f32]>,
    scale: f32,
    next: Option<NextHead>,
    scratch: &mut Scratch,
    out: &mut [f32],
) {
    scratch.scores.resize(k.len() / q.len().max(1), 0.0);
    #[cfg(target_arch = "x86_64")]
    {
        let scores = &mut scratch.scores;
        let done = match (k, v) {
            (CacheRows::F32(k), CacheRows::F32(v)) => {
                wide_head::run(q, k, v, mask, scale, next, scores, out)
            }
            (CacheRows::F16(k), CacheRows::F16(v)) => {
                wide_head::run(q, k, v, mask, scale, next, scores, out)
            }
            _ => false,
        };
        if done {
            return;
        }
    }
    let all = 0..k.len();
    let k = k.f32_range(all.clone(), &mut scratch.keys);
    let v = v.f32_range(all, &mut scratch.values);
    head(q, k, v, mask, scale, &mut scratch.scores, out);
}

/// MusicGen's 64-wide heads, over an f32 cache or an f16 one (widened in registers with
/// F16C as it is loaded, so the cache is read once at half the bytes). Every loop is over
/// whole vectors, with the dot products of eight keys summed across lanes together.
#[cfg(target_arch = "x86_64")]
mod wide_head {
    use std::arch::x86_64::*;

    use half::f16;

    use super::NextHead;

    const WIDTH: usize = 64;
    /// How far ahead of the group of keys being scored their successors are requested.
    const KEYS_AHEAD: usize = 2048;

    /// A cache element the head reads as f32, eight at a time.
    pub(super) trait Element: Copy {
        /// Elements `8 * group .. 8 * group + 8` of `row` as f32. Inlined into the AVX2
        /// head, whose features its intrinsics need.
        ///
        /// # Safety
        ///
        /// The CPU has AVX2 and F16C, and `row` holds elements `8 * group + 7`.
        unsafe fn eight(row: &[Self], group: usize) -> __m256;
    }

    impl Element for f32 {
        #[inline(always)]
        unsafe fn eight(row: &[f32], group: usize) -> __m256 {
            // SAFETY: the eight elements lie in `row` and the CPU has AVX (the caller's
            // contract).
            unsafe { _mm256_loadu_ps(row.as_ptr().add(group * 8)) }
        }
    }

    impl Element for f16 {
        #[inline(always)]
        unsafe fn eight(row: &[f16], group: usize) -> __m256 {
            // SAFETY: the eight elements (16 bytes) lie in `row` and the CPU has AVX2 and
            // F16C (the caller's contract).
            unsafe { _mm256_cvtph_ps(_mm_loadu_si128(row.as_ptr().add(group * 8).cast())) }
        }
    }

    /// Runs the head and returns `true`, or returns `false` (touching nothing) when the
    /// CPU lacks AVX2, FMA or F16C or the head is not 64 wide.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn run<E: Element>(
        q: &[f32],
        k: &[E],
        v: &[E],
        mask: Option<&[f32]>,
        scale: f32,
        next: Option<NextHead>,
        scores: &mut [f32],
        out: &mut [f32],
    ) -> bool {
        let len = scores.len();
        let fits = q.len() == WIDTH
            && out.len() == WIDTH
            && k.len() == len * WIDTH
            && v.len() == len * WIDTH
            && mask.is_none_or(|m| m.len() == len);
        if !fits {
            return false;
        }
        // Every slice has the length `head` requires, checked above.
        crate::kernels::dispatch!(
            avx2_fma_f16c => {
                head(q, k, v, mask, scale, next, scores, out);
                true
            },
            portable => false,
        )
    }

    /// Requests the lines of `bytes` (a start and a length, [`NextHead`]'s) within `range`
    /// into the L2 cache (addresses past its end are skipped; a prefetch never faults, so
    /// nothing here is read).
    #[inline(always)]
    fn prefetch_l2(bytes: Option<(*const u8, usize)>, range: std::ops::Range<usize>) {
        if let Some((start, len)) = bytes {
            for line in range.step_by(64).take_while(|&at| at < len) {
                // SAFETY: a prefetch reads nothing and never faults, whatever the address;
                // SSE is part of x86-64.
                unsafe { _mm_prefetch::<_MM_HINT_T1>(start.wrapping_add(line).cast()) };
            }
        }
    }

    /// The head for 64-wide rows.
    ///
    /// # Safety
    ///
    /// The CPU has AVX2, FMA and F16C; `q` and `out` are [`WIDTH`] long, `k` and `v`
    /// `scores.len() * WIDTH`, and `mask`, if any, `scores.len()`.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn head<E: Element>(
        q: &[f32],
        k: &[E],
        v: &[E],
        mask: Option<&[f32]>,
        scale: f32,
        next: Option<NextHead>,
        scores: &mut [f32],
        out: &mut [f32],
    ) {
        // SAFETY: every read lies in the slices, whose lengths the caller's contract fixes,
        // and the CPU has the features (the same contract); prefetches never fault.
        unsafe {
            let (next_keys, next_values) = (next.map(|n| n.keys), next.map(|n| n.values));
            let q: [__m256; WIDTH / 8] =
                std::array::from_fn(|g| _mm256_loadu_ps(q.as_ptr().add(g * 8)));
            let keys = k.chunks_exact(WIDTH);
            let mut eights = scores.chunks_exact_mut(8);
            let mut l = 0;
            let group_bytes = 8 * WIDTH * std::mem::size_of::<E>();
            for eight in &mut eights {
                // Short streams (a head's keys are a few tens of kilobytes) leave the hardware
                // prefetcher little time to ramp up: request the keys KEYS_AHEAD bytes on, and
                // this group's values for the second pass.
                let at = l * WIDTH;
                let ahead = k.as_ptr().add(at).cast::<u8>().wrapping_add(KEYS_AHEAD);
                let values = v.as_ptr().add(at).cast::<u8>();
                for line in (0..group_bytes).step_by(64) {
                    _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(line).cast());
                    _mm_prefetch::<_MM_HINT_T1>(values.add(line).cast());
                }
                let bytes = at * std::mem::size_of::<E>();
                prefetch_l2(next_keys, bytes..bytes + group_bytes);
                let sums: [__m256; 8] = std::array::from_fn(|j| dot(&q, &k[(l + j) * WIDTH..]));
                _mm256_storeu_ps(eight.as_mut_ptr(), sum_lanes_of_each(&sums));
                l += 8;
            }
            for (score, key) in eights.into_remainder().iter_mut().zip(keys.skip(l)) {
                let mut lanes = [0f32; 8];
                _mm256_storeu_ps(lanes.as_mut_ptr(), dot(&q, key));
                *score = lanes.iter().sum();
            }
            for (l, score) in scores.iter_mut().enumerate() {
                *score = *score * scale + mask.map_or(0.0, |m| m[l]);
            }
            let total = super::softmax_numerators(scores);
            let mut sum = [_mm256_setzero_ps(); WIDTH / 8];
            let row_bytes = WIDTH * std::mem::size_of::<E>();
            for (l, (&p, value)) in scores.iter().zip(v.chunks_exact(WIDTH)).enumerate() {
                prefetch_l2(next_values, l * row_bytes..(l + 1) * row_bytes);
                let p = _mm256_set1_ps(p);
                for (g, sum) in sum.iter_mut().enumerate() {
                    *sum = _mm256_fmadd_ps(p, E::eight(value, g), *sum);
                }
            }
            let inverse = _mm256_set1_ps(1.0 / total);
            for (g, sum) in sum.iter().enumerate() {
                _mm256_storeu_ps(out.as_mut_ptr().add(g * 8), _mm256_mul_ps(*sum, inverse));
            }
        }
    }

    /// `q . key` as eight partial sums (a function, not a closure, so that it is inlined
    /// with the head's target features).
    ///
    /// # Safety
    ///
    /// The CPU has AVX2, FMA and F16C, and `key` holds [`WIDTH`] elements.
    #[inline(always)]
    unsafe fn dot<E: Element>(q: &[__m256; WIDTH / 8], key: &[E]) -> __m256 {
        // SAFETY: the CPU has the features and `key` the WIDTH elements read (the caller's
        // contract).
        unsafe {
            let mut acc = _mm256_mul_ps(q[0], E::eight(key, 0));
            for (g, q) in q.iter().enumerate().skip(1) {
                acc = _mm256_fmadd_ps(*q, E::eight(key, g), acc);
            }
            acc
        }
    }

    /// Lane `j` of the result is the sum of `v[j]`'s eight lanes.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn sum_lanes_of_each(v: &[__m256; 8]) -> __m256 {
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
}

/// One thread's buffers: a head's scores, and its keys and values widened from f16.
#[derive(Default)]
pub struct Scratch {
    scores: Vec<f32>,
    keys: Vec<f32>,
    values: Vec<f32>,
}

/// Lanes summed side by side, so the compiler keeps them in vector registers.
const LANES: usize = 8;

crate::kernels::multiversion! {
    /// One head, picking the widest vector instructions the CPU has; `scores` holds one
    /// value per position. The plain loops, written so the compiler vectorises them, and
    /// free of closures (which would be compiled apart, without the version's target
    /// features). MusicGen's heads are 64 wide at every size; that width gets loops of
    /// known length, which the compiler unrolls into whole vectors (with a run-time width
    /// it left half of each 64-value row to a scalar tail loop).
    fn head(
        q: &[f32],
        k: &[f32],
        v: &[f32],
        mask: Option<&[f32]>,
        scale: f32,
        scores: &mut [f32],
        out: &mut [f32],
    ) {
        if let (Ok(q), Ok(out)) = (
            <&[f32; 64]>::try_from(q),
            <&mut [f32; 64]>::try_from(&mut *out),
        ) {
            head_of_width(q, k, v, mask, scale, scores, out);
            return;
        }
        let d = q.len();
        let len = scores.len();
        for l in 0..len {
            let s = dot(q, &k[l * d..(l + 1) * d]) * scale;
            scores[l] = s + mask.map_or(0.0, |mask| mask[l]);
        }
        let total = softmax_numerators(scores);
        out.fill(0.0);
        for l in 0..len {
            let p = scores[l];
            let value = &v[l * d..(l + 1) * d];
            for t in 0..d {
                out[t] += p * value[t];
            }
        }
        let inverse = 1.0 / total;
        for o in out.iter_mut() {
            *o *= inverse;
        }
    }
}

/// [`head`]'s loops for heads of a width known at compile time.
#[inline(always)]
fn head_of_width<const D: usize>(
    q: &[f32; D],
    k: &[f32],
    v: &[f32],
    mask: Option<&[f32]>,
    scale: f32,
    scores: &mut [f32],
    out: &mut [f32; D],
) {
    for (l, (score, key)) in scores.iter_mut().zip(k.chunks_exact(D)).enumerate() {
        let mut acc = [0f32; LANES];
        for (qs, ks) in q.chunks_exact(LANES).zip(key.chunks_exact(LANES)) {
            for j in 0..LANES {
                acc[j] += qs[j] * ks[j];
            }
        }
        *score = acc.iter().sum::<f32>() * scale + mask.map_or(0.0, |mask| mask[l]);
    }
    let total = softmax_numerators(scores);
    let mut sum = [0f32; D];
    for (&p, value) in scores.iter().zip(v.chunks_exact(D)) {
        for (s, x) in sum.iter_mut().zip(value) {
            *s += p * x;
        }
    }
    let inverse = 1.0 / total;
    for (o, s) in out.iter_mut().zip(sum) {
        *o = s * inverse;
    }
}

/// Replaces the scores by `exp(score - max)` and returns their sum.
#[inline(always)]
fn softmax_numerators(scores: &mut [f32]) -> f32 {
    let max = scores.iter().fold(f32::NEG_INFINITY, |m, &s| m.max(s));
    let mut total = 0f32;
    for s in scores.iter_mut() {
        *s = crate::kernels::activations::exp_non_positive(*s - max);
        total += *s;
    }
    total
}

#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let full = a.len() / LANES * LANES;
    let mut start = 0;
    while start < full {
        for l in 0..LANES {
            acc[l] += a[start + l] * b[start + l];
        }
        start += LANES;
    }
    let mut total = 0f32;
    for lane in acc {
        total += lane;
    }
    for t in full..a.len() {
        total += a[t] * b[t];
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    fn random(n: usize, seed: u64) -> Vec<f32> {
        crate::random::Rng::new(seed).uniform_f32s(n, -1.0, 1.0)
    }

    /// The same attention in f64, head by head.
    fn reference(
        q: &[f32],
        k: &[f32],
        v: &[f32],
        mask: Option<&[f32]>,
        s: Shape,
        scale: f32,
    ) -> Vec<f32> {
        let d = s.head_dim;
        let mut out = vec![0f32; q.len()];
        for b in 0..s.rows {
            for h in 0..s.heads {
                let i = b * s.heads + h;
                let base = i * s.capacity * d;
                let scores: Vec<f64> = (0..s.len)
                    .map(|l| {
                        let dot: f64 = (0..d)
                            .map(|t| f64::from(q[i * d + t]) * f64::from(k[base + l * d + t]))
                            .sum();
                        dot * f64::from(scale) + mask.map_or(0.0, |m| f64::from(m[b * s.len + l]))
                    })
                    .collect();
                let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let weights: Vec<f64> = scores.iter().map(|x| (x - max).exp()).collect();
                let total: f64 = weights.iter().sum();
                for t in 0..d {
                    let value: f64 = (0..s.len)
                        .map(|l| weights[l] * f64::from(v[base + l * d + t]))
                        .sum();
                    out[i * d + t] = (value / total) as f32;
                }
            }
        }
        out
    }

    #[test]
    fn matches_softmax_attention_over_the_filled_part_of_the_cache() {
        // 64 is MusicGen's head width, which has loops of its own (eight keys at a time,
        // then the rest: 19 takes both); 20 takes the general ones.
        for (d, capacity, len) in [(20, 9, 7), (64, 9, 7), (64, 21, 19)] {
            let shape = Shape {
                rows: 2,
                heads: 3,
                head_dim: d,
                capacity,
                len,
            };
            let q = random(2 * 3 * d, 1);
            let k = random(2 * 3 * capacity * d, 2);
            let mut v = random(2 * 3 * capacity * d, 3);
            // Positions past `len` must not count, however large.
            for (i, x) in v.iter_mut().enumerate() {
                if (i / d) % capacity >= len {
                    *x = 1e6;
                }
            }
            // The second row fully masked, as the unconditional guidance row's text is.
            let mut mask = vec![0f32; 2 * len];
            mask[2] = -3.0;
            for m in &mut mask[len..] {
                *m = f32::MIN;
            }
            // An f16 cache attends over its own (rounded) values.
            let (k16, v16): (Vec<f16>, Vec<f16>) = (
                k.iter().map(|&x| f16::from_f32(x)).collect(),
                v.iter().map(|&x| f16::from_f32(x)).collect(),
            );
            let (k_rounded, v_rounded): (Vec<f32>, Vec<f32>) = (
                k16.iter().map(|x| x.to_f32()).collect(),
                v16.iter().map(|x| x.to_f32()).collect(),
            );
            let stored = [
                ("f32", CacheRows::F32(&k), CacheRows::F32(&v), &k, &v),
                (
                    "f16",
                    CacheRows::F16(&k16),
                    CacheRows::F16(&v16),
                    &k_rounded,
                    &v_rounded,
                ),
            ];
            for mask in [None, Some(mask.as_slice())] {
                for (label, keys, values, k, v) in stored {
                    let mut out = vec![0f32; q.len()];
                    attend_one(&q, keys, values, mask, shape, 0.125, &mut out).unwrap();
                    let want = reference(&q, k, v, mask, shape, 0.125);
                    for (a, b) in out.iter().zip(&want) {
                        assert!((a - b).abs() < 1e-5, "width {d}, {label} cache: {a} vs {b}");
                    }
                }
            }
        }
    }

    #[test]
    fn slices_that_do_not_match_the_shape_are_declined() {
        let shape = Shape {
            rows: 1,
            heads: 1,
            head_dim: 4,
            capacity: 2,
            len: 3,
        };
        let mut out = [0f32; 4];
        let zeros = CacheRows::F32(&[0.0; 8]);
        assert!(attend_one(&[0.0; 4], zeros, zeros, None, shape, 1.0, &mut out).is_none());
        let shape = Shape { len: 2, ..shape };
        assert!(attend_one(&[0.0; 4], zeros, zeros, Some(&[0.0]), shape, 1.0, &mut out).is_none());
        assert!(attend_one(&[0.0; 4], zeros, zeros, None, shape, 1.0, &mut out).is_some());
    }
}
