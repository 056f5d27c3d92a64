//! Benchmark of the EnCodec 32 kHz decoder of MusicGen (random weights of the published
//! shape): time to decode seconds of codes into audio, best and median of a few runs, and
//! the memory the decode adds to the process's peak (Linux).
//!
//! `cargo bench --bench encodec_decode -- [--duration SECONDS] [--repeat N]`

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use clap::Parser;
use son1k::cli::bench::machine::{peak_rss_bytes, reset_peak_rss};
use son1k_models::encodec::EncodecDecoder;
use son1k_models::musicgen::presets::preset;
use son1k_models::weights::Weights;

/// What to measure.
#[derive(Parser)]
struct Args {
    /// Seconds of audio to decode.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Runs; the best and the median are reported.
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// Passed by `cargo bench`.
    #[arg(long, hide = true)]
    bench: bool,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let Args {
        duration, repeat, ..
    } = Args::parse();
    let config = preset("musicgen-small")
        .ok_or("no musicgen-small preset")?
        .audio_encoder;
    let frames = (duration * config.frame_rate() as f64).round() as usize;
    let weights = Weights::random(1, &Device::Cpu);
    let decoder = EncodecDecoder::new(&config, weights.root(DType::F32).pp("audio_encoder"))?;
    let books = config.num_quantizers();
    let codes: Vec<u32> = (0..books * frames)
        .map(|i| (i * 7919 % 2048) as u32)
        .collect();
    let codes = Tensor::from_vec(codes, (1, books, frames), &Device::Cpu)?;
    let mut times = Vec::new();
    reset_peak_rss();
    let before = peak_rss_bytes();
    for _ in 0..repeat.max(1) {
        let start = Instant::now();
        let audio = decoder.decode(&codes)?;
        times.push(start.elapsed().as_secs_f64());
        std::hint::black_box(audio);
    }
    times.sort_by(f64::total_cmp);
    let threads = std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "unset".into());
    let added = match (before, peak_rss_bytes()) {
        (Some(before), Some(after)) => format!("{} MiB", after.saturating_sub(before) >> 20),
        _ => "unknown".into(),
    };
    println!(
        "EnCodec 32 kHz, {duration} s of audio ({frames} frames), RAYON_NUM_THREADS={threads}: \
         best {:.2} s, median {:.2} s; peak memory added by the decode {added}",
        times[0],
        times[times.len() / 2]
    );
    Ok(())
}
