//! Benchmark of MusicGen in the musicgen-small shape (24 x 1024, 4 codebooks, T5-base) with
//! random weights made in memory: the cost equals real weights', with no download.
//!
//! `cargo bench --bench musicgen_step -- [--preset NAME] [--duration SECONDS] [--steps N]`
//! reports ms per decoder step (median, p95) over `--steps` steps, then, unless
//! `--duration 0`, a whole generation of that many seconds (guidance 3.0) with its
//! real-time factor (audio seconds per wall second), EnCodec included.

use std::time::Instant;

use candle_core::{DType, Device};
use son1k_models::musicgen::presets::preset;
use son1k_models::musicgen::{Generation, GenerationConfig, GenerationParams, MusicGen};
use son1k_models::sampling::SamplingParams;
use son1k_models::weights::Weights;

struct Options {
    preset: String,
    duration: f64,
    steps: usize,
}

fn parse_options() -> Result<Options, String> {
    let mut options = Options {
        preset: "musicgen-small".into(),
        duration: 10.0,
        steps: 30,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--preset" => options.preset = value()?,
            "--duration" => {
                options.duration = value()?.parse().map_err(|e| format!("--duration: {e}"))?
            }
            "--steps" => options.steps = value()?.parse().map_err(|e| format!("--steps: {e}"))?,
            "--bench" => {}
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(options)
}

fn percentile(sorted_ms: &[f64], p: f64) -> f64 {
    let i = ((sorted_ms.len() as f64 - 1.0) * p).round() as usize;
    sorted_ms[i.min(sorted_ms.len() - 1)]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let options = parse_options()?;
    let config = preset(&options.preset).ok_or(format!("unknown preset {}", options.preset))?;
    let threads = std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "unset".into());
    println!(
        "preset {} on cpu, f32, RAYON_NUM_THREADS={threads}, candle threads {}",
        options.preset,
        candle_core::utils::get_num_threads()
    );
    let start = Instant::now();
    let weights = Weights::random(0, &Device::Cpu);
    let model = MusicGen::from_weights(
        config,
        GenerationConfig::default(),
        None,
        &weights,
        DType::F32,
    )?;
    drop(weights);
    println!(
        "random weights built in {:.1} s",
        start.elapsed().as_secs_f64()
    );
    // "90s rock song with loud guitars and heavy drums" in the T5 vocabulary.
    let prompt = [2777, 7, 2480, 2324, 28, 8002, 5507, 7, 11, 2437, 5253, 7, 1];
    let params = |frames| GenerationParams {
        frames,
        guidance_scale: 3.0,
        sampling: SamplingParams {
            top_k: 250,
            top_p: 0.0,
            temperature: 1.0,
        },
        seed: 0,
    };

    // Decoder steps alone (early positions, guidance batch of 2).
    let mut job = Generation::new(&model, &prompt, &params(options.steps + 8))?;
    job.step(&model)?; // warm-up
    let mut step_ms = Vec::with_capacity(options.steps);
    for _ in 0..options.steps {
        let t = Instant::now();
        job.step(&model)?;
        step_ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    step_ms.sort_by(f64::total_cmp);
    println!(
        "decoder step: median {:.1} ms, p95 {:.1} ms over {} steps",
        percentile(&step_ms, 0.5),
        percentile(&step_ms, 0.95),
        options.steps
    );

    if options.duration > 0.0 {
        let frames = (options.duration * 50.0).round() as usize;
        let t = Instant::now();
        let mut job = Generation::new(&model, &prompt, &params(frames))?;
        let encoded = t.elapsed().as_secs_f64();
        while !job.is_done() {
            job.step(&model)?;
        }
        let decoded_at = t.elapsed().as_secs_f64();
        let audio = model.decode_audio(&job.frames())?;
        let total = t.elapsed().as_secs_f64();
        let seconds = audio.dim(1)? as f64 / model.sample_rate() as f64;
        println!(
            "{seconds:.2} s of audio: text {:.2} s, {} steps in {:.1} s ({:.1} ms/step), EnCodec {:.1} s, \
             total {total:.1} s, real-time factor {:.3}",
            encoded,
            job.total_steps(),
            decoded_at - encoded,
            (decoded_at - encoded) * 1e3 / job.total_steps() as f64,
            total - decoded_at,
            seconds / total
        );
    }
    Ok(())
}
