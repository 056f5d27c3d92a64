//! `son1k cover`: re-renders a song in the style the prompt asks for with the built-in
//! synth (in this process, or on a server with `--server`), keeping its tempo, key, harmony
//! and melody.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use son1k_engine::audio::AudioFormat;
use son1k_engine::cover::load_song;
use son1k_engine::synth::SynthModel;
use son1k_engine::{GenerateRequest, Length, Limits, SampleFormat};

use super::generate::run_job;
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
    /// Output file, WAV or FLAC.
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// Container of the output: wav or flac (default: FLAC for a .flac --out, else WAV).
    #[arg(long, value_name = "wav|flac", value_parser = parse_format)]
    pub format: Option<AudioFormat>,
    /// With --server: the id of the server's model to run (one that makes covers; default:
    /// the server's default).
    #[arg(long, value_name = "ID", requires = "server")]
    pub model_id: Option<String>,
    /// Seconds of the cover (default: the song's length, within --max-duration; with
    /// --server, 0 also means the song's length).
    #[arg(long, value_name = "SECONDS", allow_negative_numbers = true)]
    pub duration: Option<f64>,
    /// Seed of the arrangement (random when unset; printed either way).
    #[arg(long, value_name = "S")]
    pub seed: Option<u64>,
    /// Output samples: s16 or f32.
    #[arg(long, default_value = "s16", value_name = "s16|f32")]
    pub sample_format: SampleFormat,
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

/// Runs the command.
pub fn run(args: CoverArgs) -> anyhow::Result<()> {
    let format = format_for(args.format, &args.out);
    if let Some(server) = args.remote.server.clone() {
        return run_on_server(args, &server, format);
    }
    let limits = Limits {
        max_duration_s: args.max_duration,
        max_song_seconds: args.max_song_seconds,
        max_song_bytes: args.max_song_bytes,
        ..Limits::default()
    };
    let bytes = std::fs::read(&args.input)
        .with_context(|| format!("cannot read {}", args.input.display()))?;
    let name = args.input.file_name().and_then(|n| n.to_str());
    let song = load_song(&bytes, name, &limits, &AtomicBool::new(false))?;
    let seconds = args
        .duration
        .unwrap_or_else(|| song.duration_s().min(limits.max_duration_s));
    let request = GenerateRequest {
        seed: args.seed,
        sample_format: args.sample_format,
        song: Some(Arc::new(song)),
        ..GenerateRequest::new(args.prompt, Length::Seconds(seconds))
    };
    run_job(&SynthModel::default(), &request, &limits, &args.out, format)
}

/// Uploads the song to the server at `server` (`--server`) and has it make the cover.
fn run_on_server(args: CoverArgs, server: &str, format: AudioFormat) -> anyhow::Result<()> {
    let song = std::fs::read(&args.input)
        .with_context(|| format!("cannot read {}", args.input.display()))?;
    let request = pb::CoverRequest {
        song,
        prompt: args.prompt,
        model: args.model_id.unwrap_or_default(),
        duration_seconds: args.duration.unwrap_or(0.0),
        sampling: Some(remote::sampling(None, None, None, None, args.seed)?),
        audio_format: remote::audio_format(format),
        sample_format: remote::sample_format(args.sample_format),
        request_id: args.remote.request_id.clone().unwrap_or_default(),
        cancel_on_disconnect: false,
    };
    remote::run(server, &args.remote, remote::Job::Cover(request), &args.out)
}
