//! `son1k bench`: MusicGen speed on this machine, from a checkpoint or a preset shape with
//! random weights made in memory (same cost as real weights, no download): decoder ms per
//! step (median, p95), text encoding, EnCodec decode, end-to-end real-time factor.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use son1k_engine::{DeviceChoice, Precision};
use son1k_models::musicgen::presets::{preset, PRESET_NAMES};
use son1k_models::musicgen::{Generation, GenerationConfig, GenerationParams, MusicGen};
use son1k_models::sampling::SamplingParams;
use son1k_models::weights::Weights;

/// Arguments of `son1k bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// A checkpoint directory (else `--preset`).
    #[arg(long, value_name = "DIR", conflicts_with = "preset")]
    pub model: Option<PathBuf>,
    /// A preset shape with random weights: musicgen-small, -medium, -large, -stereo-*.
    #[arg(long, default_value = "musicgen-small")]
    pub preset: String,
    /// cpu, cuda[:N] or metal[:N].
    #[arg(long, default_value = "cpu")]
    pub device: DeviceChoice,
    /// Decoder precision.
    #[arg(long, default_value = "f32")]
    pub dtype: Precision,
    /// Seconds of audio for the end-to-end run (0 skips it).
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Decoder steps timed on their own before the end-to-end run.
    #[arg(long, default_value_t = 20)]
    pub steps: usize,
}

/// What one bench run measured.
#[derive(Clone, Debug)]
pub struct BenchReport {
    /// Time to load or build the model, seconds.
    pub load_s: f64,
    /// Median and 95th-percentile decoder step, ms.
    pub step_ms: (f64, f64),
    /// End-to-end figures, when run: (text encoding s, steps, decoding loop s, EnCodec s,
    /// total s, audio s).
    pub end_to_end: Option<(f64, usize, f64, f64, f64, f64)>,
}

fn percentile(sorted_ms: &[f64], p: f64) -> f64 {
    let i = ((sorted_ms.len().max(1) as f64 - 1.0) * p).round() as usize;
    sorted_ms
        .get(i.min(sorted_ms.len().saturating_sub(1)))
        .copied()
        .unwrap_or(f64::NAN)
}

/// Runs the measurement.
pub fn measure(args: &BenchArgs) -> anyhow::Result<BenchReport> {
    let device = args.device.open()?;
    let dtype = args.dtype.dtype_on(&device)?;
    let start = Instant::now();
    let model = match &args.model {
        Some(dir) => MusicGen::load(dir, &device, dtype)?,
        None => {
            let config = preset(&args.preset).with_context(|| {
                format!(
                    "unknown preset `{}` (one of {})",
                    args.preset,
                    PRESET_NAMES.join(", ")
                )
            })?;
            let weights = Weights::random(0, &device);
            MusicGen::from_weights(config, GenerationConfig::default(), None, &weights, dtype)?
        }
    };
    let load_s = start.elapsed().as_secs_f64();
    // "90s rock song with loud guitars and heavy drums" in T5's vocabulary, clipped to the
    // model's vocabulary so tiny checkpoints work too.
    let vocab = model.config().text_encoder.vocab_size as u32;
    let prompt: Vec<u32> = [2777, 7, 2480, 2324, 28, 8002, 5507, 7, 11, 2437, 5253, 7, 1]
        .iter()
        .map(|id| id % vocab)
        .collect();
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
    let mut job = Generation::new(&model, &prompt, &params(args.steps + 8))?;
    job.step(&model)?; // warm-up
    let mut step_ms = Vec::with_capacity(args.steps);
    for _ in 0..args.steps {
        let t = Instant::now();
        job.step(&model)?;
        device.synchronize()?;
        step_ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    step_ms.sort_by(f64::total_cmp);
    let end_to_end = if args.duration > 0.0 {
        let frames = (args.duration * model.config().frame_rate() as f64).round() as usize;
        let t = Instant::now();
        let mut job = Generation::new(&model, &prompt, &params(frames))?;
        device.synchronize()?;
        let encoded = t.elapsed().as_secs_f64();
        while !job.is_done() {
            job.step(&model)?;
        }
        let stepped = t.elapsed().as_secs_f64();
        let audio = model.decode_audio(&job.frames())?;
        device.synchronize()?;
        let total = t.elapsed().as_secs_f64();
        let seconds = audio.dim(1)? as f64 / model.sample_rate() as f64;
        Some((
            encoded,
            job.total_steps(),
            stepped - encoded,
            total - stepped,
            total,
            seconds,
        ))
    } else {
        None
    };
    Ok(BenchReport {
        load_s,
        step_ms: (percentile(&step_ms, 0.5), percentile(&step_ms, 0.95)),
        end_to_end,
    })
}

/// Runs the command and prints its report.
pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    let threads = std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "unset".into());
    let what = args
        .model
        .as_ref()
        .map_or(args.preset.clone(), |d| d.display().to_string());
    super::output::line(format_args!(
        "model {what}, device {}, dtype {}, RAYON_NUM_THREADS={threads}",
        args.device, args.dtype
    ));
    let r = measure(&args)?;
    super::output::line(format_args!(
        "load {:.1} s; decoder step median {:.2} ms, p95 {:.2} ms",
        r.load_s, r.step_ms.0, r.step_ms.1
    ));
    if let Some((text, steps, loop_s, encodec, total, audio)) = r.end_to_end {
        super::output::line(format_args!(
            "{audio:.2} s of audio: text {text:.2} s, {steps} steps in {loop_s:.2} s ({:.2} ms/step), \
             EnCodec {encodec:.2} s, total {total:.2} s, real-time factor {:.3}",
            loop_s * 1e3 / steps as f64,
            audio / total
        ));
    }
    Ok(())
}
