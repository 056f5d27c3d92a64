//! Benchmark of the decoder's projections alone: activation rows (two, the guidance pair
//! of one job, unless `--rows` says more: a batch of jobs) times a set of
//! musicgen-small-shaped weight matrices too large for the cache, in each weight format, as
//! a decoder step runs them. Prints ms per pass over the set, the weight bytes read per
//! second, and the multiply-adds per second, so a kernel can be compared with the
//! machine's bandwidth and compute peak.
//!
//! `cargo bench --bench quant_matmul -- [--passes N] [--layers L] [--shape OUTxIN]
//! [--reps R] [--rows M]`: `--shape` multiplies one matrix of that shape instead of the
//! layers' set, and `--reps` multiplies the set R times a pass. `--shape 1024x1024 --reps
//! 100` stays in the two cores' L2 caches (0.6 MB in q4): the kernels' arithmetic and
//! per-call costs alone.

use std::time::Instant;

use candle_core::{Device, Module, Tensor};
use clap::Parser;
use son1k_models::quant::{Proj, WeightFormat};

/// What to measure.
#[derive(Parser)]
struct Args {
    /// Passes over the set; the median is reported.
    #[arg(long, default_value_t = 20)]
    passes: usize,
    /// Layers of musicgen-small's projections in the set.
    #[arg(long, default_value_t = 6)]
    layers: usize,
    /// One matrix of this shape instead of the layers' set.
    #[arg(long, value_name = "OUTxIN", value_parser = parse_shape)]
    shape: Option<(usize, usize)>,
    /// Times the set is multiplied in a pass.
    #[arg(long, default_value_t = 1)]
    reps: usize,
    /// Activation rows multiplied at once: 2 per job in a batch (its guidance pair).
    #[arg(long, default_value_t = 2)]
    rows: usize,
    /// Passed by `cargo bench`.
    #[arg(long, hide = true)]
    bench: bool,
}

/// `OUTxIN`, as `--shape` takes it.
fn parse_shape(value: &str) -> Result<(usize, usize), String> {
    let bad = || format!("--shape takes OUTxIN (e.g. 1024x4096), not {value:?}");
    let (out, inner) = value.split_once('x').ok_or_else(bad)?;
    Ok((
        out.parse().map_err(|_| bad())?,
        inner.parse().map_err(|_| bad())?,
    ))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let Args {
        passes,
        layers,
        shape,
        reps,
        rows,
        ..
    } = Args::parse();
    let device = Device::Cpu;
    // Each layer's feed-forward and attention shapes: 13.6 M weights (six: 327 MB in f32).
    let shapes: Vec<(usize, usize)> = match shape {
        Some(shape) => vec![shape],
        None => (0..layers)
            .flat_map(|_| {
                [
                    (4096, 1024),
                    (1024, 4096),
                    (3072, 1024),
                    (1024, 1024),
                    (1024, 1024),
                ]
            })
            .collect(),
    };
    for (name, format) in [
        ("f32", WeightFormat::Dense),
        ("q8", WeightFormat::Q8),
        ("q4", WeightFormat::Q4),
    ] {
        let projections = shapes
            .iter()
            .map(|&(out, inner)| {
                let weight = Tensor::randn(0f32, 0.02, (out, inner), &device)?;
                Ok(Proj::new(weight, format)?)
            })
            .collect::<Result<Vec<_>, Box<dyn std::error::Error>>>()?;
        let inputs = shapes
            .iter()
            .map(|&(_, inner)| Tensor::randn(0f32, 1.0, (rows.max(1), 1, inner), &device))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let weights = reps * shapes.iter().map(|(o, i)| o * i).sum::<usize>();
        let bytes =
            weights as f64 * format.bytes_per_weight(1024, candle_core::DType::F32, &device);
        let run = || -> candle_core::Result<()> {
            for _ in 0..reps {
                for (proj, x) in projections.iter().zip(&inputs) {
                    std::hint::black_box(proj.forward(x)?);
                }
            }
            Ok(())
        };
        son1k_models::kernels::on_pool(run)?;
        let mut times = Vec::with_capacity(passes);
        for _ in 0..passes {
            let start = Instant::now();
            son1k_models::kernels::on_pool(run)?;
            times.push(start.elapsed().as_secs_f64());
        }
        times.sort_by(f64::total_cmp);
        let median = times[times.len() / 2];
        println!(
            "{name}: {:.3} ms per pass (median of {passes}), {:.1} GB/s of weights, \
             {:.0} G multiply-adds/s over {rows} rows",
            median * 1e3,
            bytes / median / 1e9,
            (weights * rows.max(1)) as f64 / median / 1e9
        );
    }
    Ok(())
}
