//! `son1k cover`: re-renders a song in the style the prompt asks for with the built-in
//! synth, keeping its tempo, key, harmony and melody.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use son1k_engine::cover::load_song;
use son1k_engine::synth::SynthModel;
use son1k_engine::{GenerateRequest, Length, Limits, SampleFormat};

use super::generate::run_job;

/// Arguments of `son1k cover`.
#[derive(Debug, Args)]
pub struct CoverArgs {
    /// The style of the cover, e.g. "lofi with piano".
    pub prompt: String,
    /// The song to cover: WAV, FLAC, MP3, Ogg Vorbis or AAC/M4A.
    #[arg(long, value_name = "SONG")]
    pub input: PathBuf,
    /// Output WAV file.
    #[arg(long, value_name = "FILE.wav")]
    pub out: PathBuf,
    /// Seconds of the cover (default: the song's length, within --max-duration).
    #[arg(long, value_name = "SECONDS", allow_negative_numbers = true)]
    pub duration: Option<f64>,
    /// Seed of the arrangement (random when unset; printed either way).
    #[arg(long, value_name = "S")]
    pub seed: Option<u64>,
    /// Output samples: s16 or f32.
    #[arg(long, default_value = "s16", value_name = "s16|f32")]
    pub sample_format: SampleFormat,
    /// Longest output in seconds.
    #[arg(long, default_value_t = Limits::default().max_duration_s)]
    pub max_duration: f64,
    /// Longest input song in seconds.
    #[arg(long, default_value_t = Limits::default().max_song_seconds)]
    pub max_song_seconds: f64,
    /// Largest input song in bytes.
    #[arg(long, default_value_t = Limits::default().max_song_bytes)]
    pub max_song_bytes: usize,
}

/// Runs the command.
pub fn run(args: CoverArgs) -> anyhow::Result<()> {
    let limits = Limits {
        max_duration_s: args.max_duration,
        max_song_seconds: args.max_song_seconds,
        max_song_bytes: args.max_song_bytes,
        ..Limits::default()
    };
    let bytes = std::fs::read(&args.input)
        .with_context(|| format!("cannot read {}", args.input.display()))?;
    let name = args.input.file_name().and_then(|n| n.to_str());
    let song = load_song(&bytes, name, &limits)?;
    let seconds = args
        .duration
        .unwrap_or_else(|| song.duration_s().min(limits.max_duration_s));
    let request = GenerateRequest {
        seed: args.seed,
        sample_format: args.sample_format,
        song: Some(Arc::new(song)),
        ..GenerateRequest::new(args.prompt, Length::Seconds(seconds))
    };
    run_job(&SynthModel::default(), &request, &limits, &args.out)
}
