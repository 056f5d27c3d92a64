//! What the machine gives a benchmark: memory read bandwidth (measured), peak resident
//! memory, and the thread settings of candle's CPU kernels.

use std::time::Instant;

/// Bytes read per bandwidth pass: well past any cache.
const BANDWIDTH_BYTES: usize = 256 << 20;
/// Passes; the best is kept (the VM's neighbours make single passes noisy).
const BANDWIDTH_PASSES: usize = 3;

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
