//! Benchmark of what a cover computes from its song before generating: the EnCodec 32 kHz
//! encoder of MusicGen (random weights of the published shape) turning seconds of audio into
//! the codes of a continuation's prompt, and MusicGen-Melody's chroma of the same audio;
//! best and median of a few runs each.
//!
//! `cargo bench --bench audio_prompts -- [--duration SECONDS] [--repeat N]`

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use clap::Parser;
use son1k_models::encodec::EncodecEncoder;
use son1k_models::musicgen::chroma::melody_chroma;
use son1k_models::musicgen::presets::preset;
use son1k_models::weights::Weights;

/// What to measure.
#[derive(Parser)]
struct Args {
    /// Seconds of audio to encode.
    #[arg(long, default_value_t = 30.0)]
    duration: f64,
    /// Runs; the best and the median are reported.
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// Passed by `cargo bench`.
    #[arg(long, hide = true)]
    bench: bool,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let config = preset("musicgen-small")
        .ok_or("no musicgen-small preset")?
        .audio_encoder;
    let rate = config.sampling_rate as f64;
    let samples = (args.duration * rate).round() as usize;
    let weights = Weights::random(1, &Device::Cpu);
    let encoder = EncodecEncoder::new(&config, weights.root(DType::F32).pp("audio_encoder"))?;
    let audio: Vec<f32> = (0..samples)
        .map(|i| 0.5 * (i as f32 * 440.0 * std::f32::consts::TAU / rate as f32).sin())
        .collect();
    let tensor = Tensor::from_vec(audio.clone(), (1, 1, samples), &Device::Cpu)?;
    let threads = std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "unset".into());
    let report = |what: &str, mut times: Vec<f64>| {
        times.sort_by(f64::total_cmp);
        println!(
            "{what}, {} s of audio ({samples} samples), RAYON_NUM_THREADS={threads}: \
             best {:.3} s, median {:.3} s",
            args.duration,
            times[0],
            times[times.len() / 2]
        );
    };
    let mut times = Vec::new();
    for _ in 0..args.repeat.max(1) {
        let start = Instant::now();
        std::hint::black_box(encoder.encode(&tensor)?);
        times.push(start.elapsed().as_secs_f64());
    }
    report("EnCodec 32 kHz encode", times);
    let mut times = Vec::new();
    for _ in 0..args.repeat.max(1) {
        let start = Instant::now();
        std::hint::black_box(melody_chroma(&audio));
        times.push(start.elapsed().as_secs_f64());
    }
    report("melody chroma", times);
    Ok(())
}
