//! The CPU kernels: the hand-written loops that beat candle's general operations on the
//! shapes a decoder step or EnCodec runs, and the only place in Son1k where `unsafe` code
//! may live (besides memory-mapping weight files). Each kernel has a portable version and,
//! on x86-64, a version compiled for AVX2 and FMA (with F16C where it widens f16 values),
//! picked at run time by one mechanism, `dispatch!` (or `multiversion!` where both
//! versions share one body); the tests run both against each other.
//!
//! - `tensor`: borrowing the elements of contiguous CPU tensors;
//! - `gemm`: strided GEMM into a view (convolutions read their input in place);
//! - `gemv`: products of a few rows reading each weight once (EnCodec's LSTM);
//! - `panels`: dense f32 products of any number of rows on weights packed at load;
//! - `quant`: 8- and 4-bit weight blocks and their products;
//! - [`attention`]: the attention of one new position to a KV cache;
//! - `activations`: ELU, GELU and the LSTM's gates, vectorised;
//! - `phases`: the phases runner a CPU decoder step runs on;
//! - [`peak`]: the CPU's f32 and int8 compute peaks, which the bench measures against.

// The unsafe rules, checked by the compiler: every unsafe operation sits in an `unsafe`
// block that says why it is sound, even inside an `unsafe fn`.
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]
#![deny(clippy::missing_safety_doc)]

pub(crate) mod activations;
pub mod attention;
pub(crate) mod gemm;
pub(crate) mod gemv;
pub(crate) mod panels;
pub mod peak;
pub(crate) mod phases;
pub(crate) mod quant;
pub(crate) mod tensor;

/// Whether the CPU has AVX2 and FMA, which the fast paths of the kernels need (the check
/// is cached by the standard library).
#[cfg(target_arch = "x86_64")]
pub(crate) fn has_avx2_fma() -> bool {
    std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
}

/// [`has_avx2_fma`], plus AVX-512's foundation: sixteen f32 lanes a vector and 32 vector
/// registers, which the f32 tiles of `panels` use.
#[cfg(target_arch = "x86_64")]
pub(crate) fn has_avx512f() -> bool {
    has_avx2_fma() && std::arch::is_x86_feature_detected!("avx512f")
}

/// [`has_avx2_fma`], plus F16C for the kernels that widen f16 values (scales, caches).
#[cfg(target_arch = "x86_64")]
pub(crate) fn has_avx2_fma_f16c() -> bool {
    has_avx2_fma() && std::arch::is_x86_feature_detected!("f16c")
}

/// The vector features of this CPU that matter to the kernels, as the CPU reports them,
/// and the paths the kernels take on it, f32 then int8: `f32 avx512f, int8 avx512vnni`,
/// `f32 avx2+fma, int8 avx2`, `portable` and the mixes between.
pub fn cpu_features() -> (Vec<&'static str>, &'static str) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        let found = [
            ("avx2", has!("avx2")),
            ("fma", has!("fma")),
            ("f16c", has!("f16c")),
            ("avx512f", has!("avx512f")),
            ("avx512bw", has!("avx512bw")),
            ("avx512vl", has!("avx512vl")),
            ("avx512vnni", has!("avx512vnni")),
        ];
        let names = found.iter().filter(|f| f.1).map(|f| f.0).collect();
        let path = match (has_avx512f(), has_avx512_vnni(), has_avx2_fma_f16c()) {
            (true, true, _) => "f32 avx512f, int8 avx512vnni",
            (true, false, true) => "f32 avx512f, int8 avx2",
            (false, true, _) => "f32 avx2+fma, int8 avx512vnni",
            (false, false, true) => "f32 avx2+fma, int8 avx2",
            _ if has_avx2_fma() => "f32 avx2+fma, int8 portable",
            _ => "portable",
        };
        (names, path)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        (Vec::new(), "portable")
    }
}

/// [`has_avx2_fma_f16c`], plus AVX-512's VL and VNNI, which give 256-bit vectors the
/// integer dot-product instruction `dpbusd`.
#[cfg(target_arch = "x86_64")]
pub(crate) fn has_avx512_vnni() -> bool {
    use std::arch::is_x86_feature_detected as has;
    has_avx2_fma_f16c()
        && has!("avx512f")
        && has!("avx512bw")
        && has!("avx512vl")
        && has!("avx512vnni")
}

/// Runs `f` on a thread of rayon's global pool. The parallel kernels `f` calls then share
/// their work with the other pool threads from inside the pool; called from outside, each
/// of them (an EnCodec decode makes hundreds) would hand its work over and wait, waking
/// the pool every time and leaving the calling thread idle. A CPU decoder step, one run of
/// `phases`, then has the calling thread work alongside the others.
pub fn on_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    if rayon::current_thread_index().is_some() {
        return f();
    }
    rayon::scope(|_| f())
}

/// The one run-time dispatch of the kernels: evaluates the first expression, which calls
/// code compiled for the named x86-64 features, where the CPU has them, and the portable
/// expression everywhere else (other CPUs, other architectures). The fast expression is
/// in an `unsafe` context only for the features: whatever else it relies on, the portable
/// one must too, and the caller checks it.
///
/// ```text
/// dispatch!(avx2_fma => dots_avx2_fma(x, k, row, sums), portable => dots_portable(x, k, row, sums))
/// ```
macro_rules! dispatch {
    (avx512f => $wide:expr, avx2_fma => $fast:expr, portable => $portable:expr $(,)?) => {
        $crate::kernels::dispatch!(
            @when has_avx512f,
            $wide,
            $crate::kernels::dispatch!(avx2_fma => $fast, portable => $portable)
        )
    };
    (avx2_fma => $fast:expr, portable => $portable:expr $(,)?) => {
        $crate::kernels::dispatch!(@when has_avx2_fma, $fast, $portable)
    };
    (avx2_fma_f16c => $fast:expr, portable => $portable:expr $(,)?) => {
        $crate::kernels::dispatch!(@when has_avx2_fma_f16c, $fast, $portable)
    };
    (avx512_vnni => $vnni:expr, avx2_fma_f16c => $fast:expr, portable => $portable:expr $(,)?) => {
        $crate::kernels::dispatch!(
            @when has_avx512_vnni,
            $vnni,
            $crate::kernels::dispatch!(avx2_fma_f16c => $fast, portable => $portable)
        )
    };
    (@when $check:ident, $fast:expr, $portable:expr) => {{
        #[cfg(target_arch = "x86_64")]
        let fast = if $crate::kernels::$check() {
            // SAFETY: the CPU has every feature the fast path is compiled for (checked
            // just above); its other requirements are the portable path's.
            Some(unsafe { $fast })
        } else {
            None
        };
        #[cfg(not(target_arch = "x86_64"))]
        let fast = None;
        match fast {
            Some(out) => out,
            None => $portable,
        }
    }};
}
pub(crate) use dispatch;

/// Defines a kernel function from one body compiled twice, for AVX2 and FMA and portably
/// (the body is inlined into each, so its loops vectorise with the features of the
/// version they are in), and `dispatch!`es between them on every call. Closures inside
/// the body are compiled apart, without the features: call `#[inline(always)]` functions
/// instead.
macro_rules! multiversion {
    (
        $(#[$meta:meta])*
        $vis:vis fn $name:ident $(<$($g:ident: $bound:path),+>)?
            ($($arg:ident: $ty:ty),* $(,)?) $body:block
    ) => {
        $(#[$meta])*
        $vis fn $name $(<$($g: $bound),+>)? ($($arg: $ty),*) {
            #[inline(always)]
            fn body $(<$($g: $bound),+>)? ($($arg: $ty),*) $body

            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma")]
            fn avx2_fma $(<$($g: $bound),+>)? ($($arg: $ty),*) {
                body $(::<$($g),+>)? ($($arg),*)
            }

            $crate::kernels::dispatch!(
                avx2_fma => avx2_fma $(::<$($g),+>)? ($($arg),*),
                portable => body $(::<$($g),+>)? ($($arg),*),
            )
        }
    };
}
pub(crate) use multiversion;

/// `x w^T` in f64, rounded to f32: the reference the f32 products' tests hold them to
/// (`x` is `[m, k]`, `w` is `[n, k]`, the result `[m, n]`).
#[cfg(test)]
pub(crate) fn reference_matmul(x: &[f32], m: usize, w: &[f32], n: usize) -> Vec<f32> {
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

/// Asserts every product in `got` is within `1e-4 * sqrt(k)` of the reference's, for
/// products over `k` terms; `what` names the case in the failure.
#[cfg(test)]
pub(crate) fn assert_near_reference(got: &[f32], want: &[f32], k: usize, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (a, b) in got.iter().zip(want) {
        assert!(
            (a - b).abs() <= 1e-4 * (k as f32).sqrt(),
            "{what}: {a} vs {b}"
        );
    }
}
