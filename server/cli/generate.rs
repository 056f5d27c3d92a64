//! `son1k generate`: one text-to-music job in this process (or on a server with
//! `--server`), written to a WAV or FLAC file.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use anyhow::Context;
use clap::Args;
use son1k_engine::audio::{encode_audio, AudioFormat};
use son1k_engine::musicgen::MusicGenModel;
use son1k_engine::synth::SynthModel;
use son1k_engine::{
    generate, DeviceChoice, EngineError, GenerateRequest, KvCache, Length, Limits, MusicModel,
    Precision, SampleFormat, Update,
};

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
    /// A MusicGen checkpoint directory in the Hugging Face layout; without it the
    /// built-in synth plays (no weights needed).
    #[arg(long, value_name = "DIR", conflicts_with = "server")]
    pub model: Option<PathBuf>,
    /// With --server: the id of the server's model to run (default: the server's default).
    #[arg(long, value_name = "ID", requires = "server")]
    pub model_id: Option<String>,
    /// Output file, WAV or FLAC.
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// Container of the output: wav or flac (default: FLAC for a .flac --out, else WAV).
    #[arg(long, value_name = "wav|flac", value_parser = parse_format)]
    pub format: Option<AudioFormat>,
    /// Seconds of audio (default 10).
    #[arg(
        long,
        value_name = "SECONDS",
        conflicts_with = "max_new_tokens",
        allow_negative_numbers = true
    )]
    pub duration: Option<f64>,
    /// Decoder steps, delay columns included, as transformers' `max_new_tokens` counts them.
    #[arg(long, value_name = "N", conflicts_with = "server")]
    pub max_new_tokens: Option<usize>,
    /// Sample among the K most likely tokens (0 = no limit, 1 = greedy; default from the
    /// checkpoint, else 250).
    #[arg(long, value_name = "K")]
    pub top_k: Option<usize>,
    /// Sample among the most likely tokens reaching probability P (0 = off).
    #[arg(long, value_name = "P", allow_negative_numbers = true)]
    pub top_p: Option<f32>,
    /// Sampling temperature (0 = greedy).
    #[arg(long, value_name = "T", allow_negative_numbers = true)]
    pub temperature: Option<f32>,
    /// Classifier-free guidance scale (1 = off; default from the checkpoint, else 3).
    #[arg(long, value_name = "G", allow_negative_numbers = true)]
    pub guidance_scale: Option<f32>,
    /// Sampler seed (random when unset; printed either way).
    #[arg(long, value_name = "S")]
    pub seed: Option<u64>,
    /// Output samples: s16 (16-bit PCM) or f32 (32-bit float).
    #[arg(long, default_value = "s16", value_name = "s16|f32")]
    pub sample_format: SampleFormat,
    /// cpu, cuda[:N] or metal[:N].
    #[arg(long, default_value = "cpu", conflicts_with = "server")]
    pub device: DeviceChoice,
    /// Decoder precision: f32, f16, bf16, or q8 / q4 (weights quantized at load).
    #[arg(long, default_value = "f32", conflicts_with = "server")]
    pub dtype: Precision,
    /// Self-attention cache: `compute` (the decoder's precision) or `f16` (half the bytes
    /// each step reads from it).
    #[arg(long, default_value = "compute", conflicts_with = "server")]
    pub kv_cache: KvCache,
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
pub fn run(args: GenerateArgs) -> anyhow::Result<()> {
    let format = format_for(args.format, &args.out);
    if let Some(server) = args.remote.server.clone() {
        return run_on_server(args, &server, format);
    }
    let limits = Limits {
        max_prompt_tokens: args.max_prompt_tokens,
        max_duration_s: args.max_duration,
        ..Limits::default()
    };
    let length = match (args.duration, args.max_new_tokens) {
        (_, Some(steps)) => Length::Steps(steps),
        (Some(seconds), None) => Length::Seconds(seconds),
        (None, None) => Length::Seconds(DEFAULT_SECONDS),
    };
    let request = GenerateRequest {
        top_k: args.top_k,
        top_p: args.top_p,
        temperature: args.temperature,
        guidance_scale: args.guidance_scale,
        seed: args.seed,
        sample_format: args.sample_format,
        ..GenerateRequest::new(args.prompt, length)
    };
    let model: Box<dyn MusicModel> = match &args.model {
        Some(dir) => Box::new(MusicGenModel::load(
            dir,
            args.device,
            args.dtype,
            args.kv_cache,
        )?),
        None => Box::new(SynthModel::default()),
    };
    run_job(model.as_ref(), &request, &limits, &args.out, format)
}

/// Sends the job to the server at `server` (`--server`).
fn run_on_server(args: GenerateArgs, server: &str, format: AudioFormat) -> anyhow::Result<()> {
    let duration_seconds = match args.duration {
        // The wire reads 0 as "the server's default": refuse it here as a local run would.
        Some(s) if !s.is_finite() || s <= 0.0 => {
            return Err(EngineError::invalid("duration", format!("{s} s must be positive")).into())
        }
        Some(s) => s,
        None => DEFAULT_SECONDS,
    };
    let request = pb::GenerateRequest {
        prompt: args.prompt,
        model: args.model_id.unwrap_or_default(),
        duration_seconds,
        sampling: Some(remote::sampling(
            args.top_k,
            args.top_p,
            args.temperature,
            args.guidance_scale,
            args.seed,
        )?),
        audio_format: remote::audio_format(format),
        sample_format: remote::sample_format(args.sample_format),
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
