//! Attention of one new position to a KV cache, fused for the CPU: scores, an optional
//! additive mask, softmax and the weighted sum of values in one pass per head, in parallel
//! over heads. candle composes it from two general matmuls, a softmax and several copies,
//! whose per-call overhead dwarfs the few thousand multiply-adds each head needs.

use rayon::prelude::*;

/// Shapes of one fused attention call.
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    /// Batch rows (the guidance pair).
    pub rows: usize,
    pub heads: usize,
    pub head_dim: usize,
    /// Positions the K/V buffers hold per head (`[rows, heads, capacity, head_dim]`).
    pub capacity: usize,
    /// Positions to attend to: the first `len` of each head.
    pub len: usize,
}

/// `out[b, h] = softmax(q[b, h] . k[b, h, l] * scale + mask[b, l]) . v[b, h, l]` over
/// `l < len`. `q` and `out` are `[rows, heads, head_dim]`; `k` and `v` are
/// `[rows, heads, capacity, head_dim]`; `mask`, if any, is `[rows, len]` and added to the
/// scores. `None`, leaving `out` alone, when a slice does not match the shape.
pub fn attend_one(
    q: &[f32],
    k: &[f32],
    v: &[f32],
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
    out.par_chunks_mut(head_dim)
        .enumerate()
        .for_each_init(Vec::new, |scores, (index, out)| {
            let b = index / heads;
            let q = &q[index * head_dim..(index + 1) * head_dim];
            let k = &k[index * per_head..index * per_head + len * head_dim];
            let v = &v[index * per_head..index * per_head + len * head_dim];
            let mask = mask.map(|m| &m[b * len..(b + 1) * len]);
            scores.resize(len, 0.0);
            head(q, k, v, mask, scale, scores, out);
        });
    Some(())
}

/// One head, picking the widest vector instructions the CPU has; `scores` holds one
/// value per position.
fn head(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    mask: Option<&[f32]>,
    scale: f32,
    scores: &mut [f32],
    out: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if crate::cpu::has_avx2_fma() {
        // SAFETY: the CPU has AVX2 and FMA, checked just above.
        unsafe { head_avx2_fma(q, k, v, mask, scale, scores, out) };
        return;
    }
    head_body(q, k, v, mask, scale, scores, out);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn head_avx2_fma(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    mask: Option<&[f32]>,
    scale: f32,
    scores: &mut [f32],
    out: &mut [f32],
) {
    head_body(q, k, v, mask, scale, scores, out);
}

/// Lanes summed side by side, so the compiler keeps them in vector registers.
const LANES: usize = 8;

/// The plain loops, written so the compiler vectorises them. Inlined into each caller, and
/// free of closures (which would be compiled apart, without the caller's target features).
#[inline(always)]
fn head_body(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    mask: Option<&[f32]>,
    scale: f32,
    scores: &mut [f32],
    out: &mut [f32],
) {
    let d = q.len();
    let len = scores.len();
    let mut max = f32::NEG_INFINITY;
    for l in 0..len {
        let mut s = dot(q, &k[l * d..(l + 1) * d]) * scale;
        if let Some(mask) = mask {
            s += mask[l];
        }
        scores[l] = s;
        max = max.max(s);
    }
    let mut total = 0f32;
    for s in scores.iter_mut() {
        *s = crate::activations::exp_non_positive(*s - max);
        total += *s;
    }
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
        crate::rng::Rng::new(seed).uniform_f32s(n, -1.0, 1.0)
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
        let shape = Shape {
            rows: 2,
            heads: 3,
            head_dim: 20,
            capacity: 9,
            len: 7,
        };
        let q = random(2 * 3 * 20, 1);
        let k = random(2 * 3 * 9 * 20, 2);
        let mut v = random(2 * 3 * 9 * 20, 3);
        // Positions past `len` must not count, however large.
        for (i, x) in v.iter_mut().enumerate() {
            if (i / 20) % 9 >= 7 {
                *x = 1e6;
            }
        }
        // The second row fully masked, as the unconditional guidance row's text is.
        let mut mask = vec![0f32; 2 * 7];
        mask[2] = -3.0;
        for m in &mut mask[7..] {
            *m = f32::MIN;
        }
        for mask in [None, Some(mask.as_slice())] {
            let mut out = vec![0f32; q.len()];
            attend_one(&q, &k, &v, mask, shape, 0.125, &mut out).unwrap();
            let want = reference(&q, &k, &v, mask, shape, 0.125);
            for (a, b) in out.iter().zip(&want) {
                assert!((a - b).abs() < 1e-5, "{a} vs {b}");
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
        assert!(attend_one(&[0.0; 4], &[0.0; 8], &[0.0; 8], None, shape, 1.0, &mut out).is_none());
        let shape = Shape { len: 2, ..shape };
        assert!(attend_one(
            &[0.0; 4],
            &[0.0; 8],
            &[0.0; 8],
            Some(&[0.0]),
            shape,
            1.0,
            &mut out
        )
        .is_none());
        assert!(attend_one(&[0.0; 4], &[0.0; 8], &[0.0; 8], None, shape, 1.0, &mut out).is_some());
    }
}
