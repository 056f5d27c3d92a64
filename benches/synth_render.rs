//! Benchmark of the built-in synth: time to compose, render and master 30 s of audio for
//! several styles, on one core (the synth is single-threaded), and the real-time factor.
//!
//! `cargo bench --bench synth_render -- [--duration SECONDS] [--repeat N]`

use std::time::Instant;

use clap::Parser;
use son1k_models::synth::SynthJob;

const PROMPTS: &[&str] = &[
    "lofi hip hop with piano at 84 bpm",
    "energetic rock with guitars in E minor",
    "happy pop with synth lead",
    "house at 124 bpm",
    "reggaeton triste con piano",
    "trap dark 140 bpm",
    "jazz trio",
    "cinematic epic strings",
    "calm ambient pad",
    "classical piano in D major",
    "funk with organ",
];

/// What to measure.
#[derive(Parser)]
struct Args {
    /// Seconds of audio per style.
    #[arg(long, default_value_t = 30.0)]
    duration: f64,
    /// Runs per style; the best and the median are reported.
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
    println!(
        "{:<45} {:>10} {:>10} {:>8} {:>9}",
        "prompt", "best s", "median s", "RTF", "LUFS"
    );
    for prompt in PROMPTS {
        let mut times = Vec::new();
        let mut lufs = 0.0;
        for _ in 0..repeat {
            let start = Instant::now();
            let mut job = SynthJob::from_prompt(prompt, duration, 1);
            while job.steps_done() < job.total_steps() {
                job.step();
            }
            let (_, loudness) = job.finish()?;
            times.push(start.elapsed().as_secs_f64());
            lufs = loudness.integrated_lufs;
        }
        times.sort_by(f64::total_cmp);
        let median = times[times.len() / 2];
        println!(
            "{prompt:<45} {:>10.3} {median:>10.3} {:>8.1} {lufs:>9.2}",
            times[0],
            duration / median
        );
    }
    Ok(())
}
