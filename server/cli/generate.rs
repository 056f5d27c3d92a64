//! `son1k generate`: one text-to-music job in this process (or on a server with
//! `--server`), written to a WAV, FLAC, MP3 or Opus file.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use anyhow::Context;
use clap::Args;
use son1k_engine::audio::{encode_audio, AudioFormat};
use son1k_engine::{generate, EngineError, GenerateRequest, Limits, MusicModel, Update};

use super::job_args::{ModelArgs, SamplingArgs};
use super::output::{format_for, parse_format};
use super::progress::Bar;
use super::remote::{self, ServerArgs};
use crate::proto::v1 as pb;

/// Seconds of audio when `--duration` is not given.
const DEFAULT_SECONDS: f64 = 10.0;

/// Arguments of `son1k generate`.
#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// What to generate, e.g. "lofi hip hop with a mellow piano".
    pub prompt: String,
    /// Output file: WAV, FLAC, MP3 or Opus.
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// Container of the output: wav, flac, mp3 or opus (default: the one --out names, else
    /// WAV; they must agree).
    #[arg(long, value_name = "wav|flac|mp3|opus", value_parser = parse_format)]
    pub format: Option<AudioFormat>,
    /// The model and how it runs.
    #[command(flatten)]
    pub model: ModelArgs,
    /// Length and sampling.
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// Longest prompt in tokens.
    #[arg(long, default_value_t = Limits::default().max_prompt_tokens, conflicts_with = "server")]
    pub max_prompt_tokens: usize,
    /// Longest output in seconds.
    #[arg(long, default_value_t = Limits::default().max_duration_s, conflicts_with = "server")]
    pub max_duration: f64,
    /// Where to run the job: this process, or a server.
    #[command(flatten)]
    pub remote: ServerArgs,
}

/// Runs the command.
pub(super) fn run(args: GenerateArgs) -> anyhow::Result<()> {
    let format = format_for(args.format, &args.out)?;
    if let Some(server) = args.remote.server.clone() {
        return run_on_server(args, &server, format);
    }
    let limits = Limits {
        max_prompt_tokens: args.max_prompt_tokens,
        max_duration_s: Limits::duration_limit(args.max_duration)?,
        ..Limits::default()
    };
    let request = args.sampling.request(args.prompt, DEFAULT_SECONDS);
    let model = args.model.load()?;
    run_job(model.as_ref(), &request, &limits, &args.out, format)
}

/// A duration for the wire, which reads 0 as "the server's default": a value that is not
/// positive is refused here as a local run would refuse it.
pub(super) fn wire_duration(duration: Option<f64>) -> Result<Option<f64>, EngineError> {
    match duration {
        Some(s) if !s.is_finite() || s <= 0.0 => Err(EngineError::invalid(
            "duration",
            format!("{s} s must be positive"),
        )),
        other => Ok(other),
    }
}

/// Sends the job to the server at `server` (`--server`).
fn run_on_server(args: GenerateArgs, server: &str, format: AudioFormat) -> anyhow::Result<()> {
    let request = pb::GenerateRequest {
        prompt: args.prompt,
        model: args.model.model_id.unwrap_or_default(),
        duration_seconds: wire_duration(args.sampling.duration)?.unwrap_or(DEFAULT_SECONDS),
        sampling: Some(args.sampling.wire()?),
        audio_format: remote::audio_format(format),
        sample_format: remote::sample_format(args.sampling.sample_format),
        request_id: args.remote.request_id.clone().unwrap_or_default(),
        cancel_on_disconnect: false,
    };
    remote::run(
        server,
        &args.remote,
        remote::Job::Generate(request),
        &args.out,
    )
}

/// Validates `request` for `model`, runs it with a progress bar, writes the audio file in
/// `format` and prints what was made and what the model understood.
pub(super) fn run_job(
    model: &dyn MusicModel,
    request: &GenerateRequest,
    limits: &Limits,
    out: &Path,
    format: AudioFormat,
) -> anyhow::Result<()> {
    let request = request.validate(limits, model.info())?;
    let bar = Bar::new();
    let cancel = AtomicBool::new(false);
    let output = generate(model, &request, &cancel, &mut |update| {
        if let Update::Progress(p) = update {
            bar.update(p);
        }
    });
    bar.finish();
    let output = output?;
    let bytes = encode_audio(&output.audio, format, request.sample_format)?;
    std::fs::write(out, bytes).with_context(|| format!("cannot write {}", out.display()))?;
    super::output::summary(
        out,
        false,
        &super::output::Made {
            duration_s: output.audio.duration_s(),
            sample_rate: output.audio.sample_rate,
            channels: output.audio.channels.len(),
            seed: output.request.seed,
            understood: output
                .understood
                .iter()
                .map(|(what, value)| (what.as_str(), value.as_str()))
                .collect(),
        },
    );
    Ok(())
}
