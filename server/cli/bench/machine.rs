//! What the machine gives a benchmark: memory read bandwidth and compute peaks (measured),
//! peak resident memory, and the thread settings of candle's CPU kernels.

use std::time::Instant;

/// Bytes read per bandwidth pass: well past any cache.
const BANDWIDTH_BYTES: usize = 256 << 20;
/// Passes; the best is kept (the VM's neighbours make single passes noisy).
const BANDWIDTH_PASSES: usize = 3;

/// The f32 GEMM probe's shape: `[rows, k] x [k, n]`, about a GFLOP, its operands in cache.
const GEMM_SHAPE: (usize, usize, usize) = (512, 1024, 1024);
/// GEMM probe runs; the best is kept.
const GEMM_PASSES: usize = 5;
/// Rounds of each compute-peak probe per thread (a few milliseconds).
const PEAK_ROUNDS: usize = 2_000_000;

/// The CPU's compute peaks on the compute threads, GFLOP/s (int8: billions of operations a
/// second, a multiply-add counting two).
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct ComputePeaks {
    /// An f32 matrix product by candle's CPU GEMM (the one its matmuls use), of a shape
    /// large enough to be bound by arithmetic alone.
    pub f32: f64,
    /// f32 FMAs in registers: the vector units' ceiling.
    pub f32_fma: f64,
    /// int8 multiply-adds in registers, with the 8-bit product's instructions.
    pub int8: f64,
}

/// Measures [`ComputePeaks`] on every thread of the compute pool.
pub fn compute_peaks() -> anyhow::Result<ComputePeaks> {
    use candle_core::{Device, Tensor};
    let (rows, k, n) = GEMM_SHAPE;
    let a = Tensor::randn(0f32, 1.0, (rows, k), &Device::Cpu)?;
    let b = Tensor::randn(0f32, 1.0, (k, n), &Device::Cpu)?;
    let mut best = f64::INFINITY;
    for _ in 0..GEMM_PASSES {
        let start = Instant::now();
        std::hint::black_box(a.matmul(&b)?);
        best = best.min(start.elapsed().as_secs_f64());
    }
    let peaks = son1k_models::kernels::peak::measure_peaks(PEAK_ROUNDS);
    Ok(ComputePeaks {
        f32: (2 * rows * k * n) as f64 / best / 1e9,
        f32_fma: peaks.f32_gflops,
        int8: peaks.int8_gops,
    })
}

/// Sequential read bandwidth of main memory in GB/s, read by every thread of the compute
/// pool at once (each its own slice): what one decoder step, which reads every weight once
/// on those threads, can at best stream.
pub fn read_bandwidth_gb_s() -> f64 {
    use rayon::prelude::*;
    let words = vec![1u64; BANDWIDTH_BYTES / 8];
    let slice = words.len().div_ceil(rayon::current_num_threads());
    let mut best = f64::INFINITY;
    for _ in 0..BANDWIDTH_PASSES {
        let start = Instant::now();
        let total: u64 = words
            .par_chunks(slice)
            .map(|words| {
                // Eight independent sums let the loads overlap.
                let mut sums = [0u64; 8];
                for chunk in words.chunks_exact(8) {
                    for (sum, word) in sums.iter_mut().zip(chunk) {
                        *sum = sum.wrapping_add(*word);
                    }
                }
                sums.iter().fold(0u64, |a, b| a.wrapping_add(*b))
            })
            .reduce(|| 0, u64::wrapping_add);
        // black_box keeps the reads.
        std::hint::black_box(total);
        best = best.min(start.elapsed().as_secs_f64());
    }
    BANDWIDTH_BYTES as f64 / best / 1e9
}

/// Restarts the peak-memory count (Linux: `5` to `/proc/self/clear_refs`), so the
/// bandwidth probe's buffer does not count as the model's memory. False where unsupported.
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// The process's peak resident memory in bytes (Linux `VmHWM`); `None` elsewhere.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The thread settings candle's CPU kernels read, as set in the environment.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Threads {
    /// `RAYON_NUM_THREADS` (the dense kernels' pool), if set.
    pub rayon_num_threads: Option<String>,
    /// `CANDLE_NUM_THREADS` (the quantized kernels' pool), if set.
    pub candle_num_threads: Option<String>,
}

impl Threads {
    /// Sets both pools to `n` threads. Call before any kernel runs: the pools read the
    /// environment once.
    pub fn set(n: usize) {
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
        std::env::set_var("CANDLE_NUM_THREADS", n.to_string());
    }

    /// The settings now.
    pub fn current() -> Self {
        Self {
            rayon_num_threads: std::env::var("RAYON_NUM_THREADS").ok(),
            candle_num_threads: std::env::var("CANDLE_NUM_THREADS").ok(),
        }
    }

    /// `RAYON_NUM_THREADS=... CANDLE_NUM_THREADS=...`, with `unset` for missing ones.
    pub fn describe(&self) -> String {
        let show = |v: &Option<String>| v.clone().unwrap_or_else(|| "unset".into());
        format!(
            "RAYON_NUM_THREADS={} CANDLE_NUM_THREADS={}",
            show(&self.rayon_num_threads),
            show(&self.candle_num_threads)
        )
    }
}
