//! `son1k cover`: covers a song in the style the prompt asks for, in this process or on a
//! server with `--server`. The built-in synth re-renders it keeping its tempo, key, harmony
//! and melody; MusicGen continues a clip of it, and MusicGen-Melody also follows its melody.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use son1k_engine::audio::AudioFormat;
use son1k_engine::cover::load_song;
use son1k_engine::request::check_cover_mode;
use son1k_engine::{CoverMode, CoverRequest, Limits};

use super::generate::{run_job, wire_duration};
use super::job_args::{ModelArgs, SamplingArgs};
use super::output::{format_for, parse_format};
use super::remote::{self, ServerArgs};
use crate::proto::v1 as pb;

/// Arguments of `son1k cover`.
#[derive(Debug, Args)]
pub struct CoverArgs {
    /// The style of the cover, e.g. "lofi with piano".
    pub prompt: String,
    /// The song to cover: WAV, FLAC, MP3, Ogg Vorbis or AAC/M4A.
    #[arg(long, value_name = "SONG")]
    pub input: PathBuf,
    /// Output file: WAV, FLAC, MP3 or Opus.
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// Container of the output: wav, flac, mp3 or opus (default: the one --out names, else
    /// WAV; they must agree).
    #[arg(long, value_name = "wav|flac|mp3|opus", value_parser = parse_format)]
    pub format: Option<AudioFormat>,
    /// How to cover: melody (the synth, MusicGen-Melody) or continuation (any MusicGen);
    /// default: the model's first.
    #[arg(long, value_name = "melody|continuation", value_parser = parse_mode)]
    pub mode: Option<CoverMode>,
    /// Continuation: where the clip that begins the cover starts in the song, in seconds
    /// (default 0).
    #[arg(long, value_name = "SECONDS", allow_negative_numbers = true)]
    pub clip_start: Option<f64>,
    /// Continuation: where the clip ends (default: 10 s after its start, or the song's end).
    #[arg(long, value_name = "SECONDS", allow_negative_numbers = true)]
    pub clip_end: Option<f64>,
    /// The model and how it runs.
    #[command(flatten)]
    pub model: ModelArgs,
    /// Length and sampling.
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// Longest output in seconds.
    #[arg(long, default_value_t = Limits::default().max_duration_s, conflicts_with = "server")]
    pub max_duration: f64,
    /// Longest input song in seconds.
    #[arg(long, default_value_t = Limits::default().max_song_seconds, conflicts_with = "server")]
    pub max_song_seconds: f64,
    /// Largest input song in bytes.
    #[arg(long, default_value_t = Limits::default().max_song_bytes, conflicts_with = "server")]
    pub max_song_bytes: usize,
    /// Where to run the job: this process, or a server.
    #[command(flatten)]
    pub remote: ServerArgs,
}

fn parse_mode(name: &str) -> Result<CoverMode, String> {
    CoverMode::from_name(name).ok_or_else(|| format!("`{name}` is not melody or continuation"))
}

/// Runs the command.
pub(super) fn run(args: CoverArgs) -> anyhow::Result<()> {
    let format = format_for(args.format, &args.out)?;
    if let Some(server) = args.remote.server.clone() {
        return run_on_server(args, &server, format);
    }
    let limits = Limits {
        max_duration_s: Limits::duration_limit(args.max_duration)?,
        max_song_seconds: args.max_song_seconds,
        max_song_bytes: args.max_song_bytes,
        ..Limits::default()
    };
    let model = args.model.load()?;
    // The mode is checked before the song is read and decoded.
    check_cover_mode(args.mode, model.info())?;
    let bytes = std::fs::read(&args.input)
        .with_context(|| format!("cannot read {}", args.input.display()))?;
    let name = args.input.file_name().and_then(|n| n.to_str());
    let song = load_song(
        &bytes,
        name,
        &limits,
        model.info().song_rate,
        &AtomicBool::new(false),
    )?;
    let song_seconds = song.duration_s().min(limits.max_duration_s);
    let request = son1k_engine::GenerateRequest {
        cover: Some(CoverRequest {
            mode: args.mode,
            clip_start_s: args.clip_start,
            clip_end_s: args.clip_end,
            ..CoverRequest::new(Arc::new(song))
        }),
        ..args.sampling.request(args.prompt, song_seconds)
    };
    run_job(model.as_ref(), &request, &limits, &args.out, format)
}

/// Uploads the song to the server at `server` (`--server`) and has it make the cover.
fn run_on_server(args: CoverArgs, server: &str, format: AudioFormat) -> anyhow::Result<()> {
    let song = std::fs::read(&args.input)
        .with_context(|| format!("cannot read {}", args.input.display()))?;
    let mode = match args.mode {
        None => pb::CoverMode::Unspecified,
        Some(CoverMode::Melody) => pb::CoverMode::Melody,
        Some(CoverMode::Continuation) => pb::CoverMode::Continuation,
    };
    let request = pb::CoverRequest {
        song,
        prompt: args.prompt,
        model: args.model.model_id.clone().unwrap_or_default(),
        // The wire's 0 is the song's length.
        duration_seconds: wire_duration(args.sampling.duration)?.unwrap_or(0.0),
        sampling: Some(args.sampling.wire()?),
        audio_format: remote::audio_format(format),
        sample_format: remote::sample_format(args.sampling.sample_format),
        request_id: args.remote.request_id.clone().unwrap_or_default(),
        cancel_on_disconnect: false,
        mode: mode as i32,
        clip_start_seconds: args.clip_start,
        clip_end_seconds: args.clip_end,
    };
    remote::run(server, &args.remote, remote::Job::Cover(request), &args.out)
}
