//! Benchmark of the output formats: time to write the same piece as WAV, FLAC, MP3 and Ogg
//! Opus (the last step of every job, on one core), the real-time factor, the file's size,
//! and each encode's time as a multiple of WAV's, measured side by side in one run.
//!
//! `cargo bench --bench audio_formats -- [--duration SECONDS] [--repeat N]`

use std::time::Instant;

use clap::Parser;
use son1k_engine::audio::{encode_audio, Audio, AudioFormat, SampleFormat};
use son1k_models::synth::SynthJob;

/// What to measure.
#[derive(Parser)]
struct Args {
    /// Seconds of audio in the piece.
    #[arg(long, default_value_t = 30.0)]
    duration: f64,
    /// Encodes per format; the best and the median are reported.
    #[arg(long, default_value_t = 5)]
    repeat: usize,
    /// Passed by `cargo bench`.
    #[arg(long, hide = true)]
    bench: bool,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let Args {
        duration, repeat, ..
    } = Args::parse();
    let mut job = SynthJob::from_prompt("funk with slap bass, brass and drums", duration, 1);
    while job.steps_done() < job.total_steps() {
        job.step();
    }
    let (channels, _) = job.finish()?;
    let audio = Audio {
        sample_rate: son1k_models::synth::SAMPLE_RATE,
        channels,
    };
    println!(
        "{} s of {} Hz stereo from the synth; {repeat} encodes per format",
        duration, audio.sample_rate
    );
    println!(
        "{:<6} {:>10} {:>10} {:>8} {:>10} {:>8}",
        "format", "best ms", "median ms", "RTF", "bytes", "x WAV"
    );
    let mut wav_median = None;
    for format in AudioFormat::ALL {
        let mut times = Vec::new();
        let mut bytes = 0;
        for _ in 0..repeat {
            let start = Instant::now();
            bytes = encode_audio(&audio, format, SampleFormat::S16)?.len();
            times.push(start.elapsed().as_secs_f64());
        }
        times.sort_by(f64::total_cmp);
        let median = times[times.len() / 2];
        let wav = *wav_median.get_or_insert(median);
        println!(
            "{:<6} {:>10.1} {:>10.1} {:>8.4} {:>10} {:>8.1}",
            format.extension(),
            times[0] * 1e3,
            median * 1e3,
            median / duration,
            bytes,
            median / wav
        );
    }
    Ok(())
}
