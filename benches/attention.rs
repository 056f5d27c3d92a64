//! Benchmark of the fused attention of one new position to a KV cache, as a decoder step
//! runs it: the guidance pair, 16 heads of 64, one cache per layer (24, too large for the
//! cache together), in f32 or f16. Prints ms per pass over the layers and the KV bytes
//! read per second, to compare with the machine's bandwidth.
//!
//! `cargo bench --bench attention -- [--passes N] [--len L] [--layers N]` (`--len 250`,
//! the default, is the mean position of a 10 s clip; 500 its end).

use std::time::Instant;

use clap::Parser;
use half::f16;
use son1k_models::kernels::attention::{attend_one, CacheRows, Shape};

/// What to measure.
#[derive(Parser)]
struct Args {
    /// Passes over the layers; the median is reported.
    #[arg(long, default_value_t = 20)]
    passes: usize,
    /// Positions in each cache.
    #[arg(long, default_value_t = 250)]
    len: usize,
    /// Layers, each with its own cache.
    #[arg(long, default_value_t = 24)]
    layers: usize,
    /// Passed by `cargo bench`.
    #[arg(long, hide = true)]
    bench: bool,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let Args {
        passes,
        len,
        layers,
        ..
    } = Args::parse();
    let shape = Shape {
        rows: 2,
        heads: 16,
        head_dim: 64,
        capacity: len.max(1),
        len: len.max(1),
    };
    let per_layer = shape.rows * shape.heads * shape.capacity * shape.head_dim;
    let mut rng = son1k_models::random::Rng::new(1);
    let q = rng.uniform_f32s(shape.rows * shape.heads * shape.head_dim, -1.0, 1.0);
    let f32_caches: Vec<(Vec<f32>, Vec<f32>)> = (0..layers)
        .map(|_| {
            (
                rng.uniform_f32s(per_layer, -1.0, 1.0),
                rng.uniform_f32s(per_layer, -1.0, 1.0),
            )
        })
        .collect();
    let half = |v: &[f32]| v.iter().map(|&x| f16::from_f32(x)).collect::<Vec<_>>();
    let f16_caches: Vec<(Vec<f16>, Vec<f16>)> =
        f32_caches.iter().map(|(k, v)| (half(k), half(v))).collect();
    let mut out = vec![0f32; q.len()];
    let scale = 0.125;
    for (name, element) in [("f32", 4), ("f16", 2)] {
        let mut run = || {
            for layer in 0..layers {
                let (k, v) = match element {
                    4 => (
                        CacheRows::F32(&f32_caches[layer].0),
                        CacheRows::F32(&f32_caches[layer].1),
                    ),
                    _ => (
                        CacheRows::F16(&f16_caches[layer].0),
                        CacheRows::F16(&f16_caches[layer].1),
                    ),
                };
                attend_one(&q, k, v, None, shape, scale, &mut out);
            }
        };
        son1k_models::kernels::on_pool(&mut run);
        let mut times = Vec::with_capacity(passes);
        for _ in 0..passes {
            let start = Instant::now();
            son1k_models::kernels::on_pool(&mut run);
            times.push(start.elapsed().as_secs_f64());
        }
        times.sort_by(f64::total_cmp);
        let median = times[times.len() / 2];
        let bytes = (2 * layers * per_layer * element) as f64;
        println!(
            "{name}: {:.3} ms per pass (median of {passes}), {:.1} GB/s of KV",
            median * 1e3,
            bytes / median / 1e9
        );
    }
    Ok(())
}
