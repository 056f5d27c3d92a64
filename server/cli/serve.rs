//! `son1k serve`: the gRPC / grpc-web server with its page, the built-in synth always
//! loaded, MusicGen checkpoints added with `--model`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use son1k_engine::jobs::EngineConfig;
use son1k_engine::musicgen::MusicGenModel;
use son1k_engine::synth::SynthModel;
use son1k_engine::{DeviceChoice, KvCache, Limits, MusicModel, Precision};

use crate::auth::Tokens;
use crate::serve::{serve, ServeConfig};

/// Arguments of `son1k serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on. Without --tokens-file only loopback addresses are allowed.
    #[arg(long, default_value = "127.0.0.1:50051")]
    pub addr: SocketAddr,
    /// A MusicGen checkpoint directory (Hugging Face layout) to serve; repeatable. The
    /// built-in synth is always served.
    #[arg(long = "model", value_name = "DIR")]
    pub models: Vec<PathBuf>,
    /// The model used when a request names none (default: the built-in synth).
    #[arg(long, value_name = "ID")]
    pub default_model: Option<String>,
    /// cpu, cuda[:N] or metal[:N], for MusicGen checkpoints.
    #[arg(long, default_value = "cpu")]
    pub device: DeviceChoice,
    /// MusicGen decoder precision: f32, f16, bf16, or q8 / q4 (weights quantized at load).
    #[arg(long, default_value = "f32")]
    pub dtype: Precision,
    /// MusicGen self-attention cache: `compute` (the decoder's precision) or `f16` (half
    /// the bytes each step reads from it).
    #[arg(long, default_value = "compute")]
    pub kv_cache: KvCache,
    /// Where finished audio and job records are kept.
    #[arg(long, default_value = "son1k-data", value_name = "DIR")]
    pub data_dir: PathBuf,
    /// Bearer tokens: one `TENANT TOKEN` pair per line. Without it the server is open to
    /// anyone who can reach it, so it listens on loopback only.
    #[arg(long, value_name = "FILE")]
    pub tokens_file: Option<PathBuf>,
    /// Hours a finished job and its audio are kept.
    #[arg(long, default_value_t = 24.0, value_name = "HOURS")]
    pub retention_hours: f64,
    /// Jobs that run at once (each on a worker thread).
    #[arg(long, default_value_t = EngineConfig::new("").max_running)]
    pub max_running: usize,
    /// Jobs that may wait for a worker; beyond it submits get RESOURCE_EXHAUSTED.
    #[arg(long, default_value_t = EngineConfig::new("").max_queued)]
    pub max_queued: usize,
    /// Unfinished jobs one token may have.
    #[arg(long, default_value_t = EngineConfig::new("").max_jobs_per_tenant)]
    pub max_jobs_per_tenant: usize,
    /// Longest prompt in characters.
    #[arg(long, default_value_t = Limits::default().max_prompt_chars)]
    pub max_prompt_chars: usize,
    /// Longest prompt in text-encoder tokens.
    #[arg(long, default_value_t = Limits::default().max_prompt_tokens)]
    pub max_prompt_tokens: usize,
    /// Longest output in seconds.
    #[arg(long, default_value_t = Limits::default().max_duration_s)]
    pub max_duration: f64,
    /// Largest song upload for a cover, in bytes.
    #[arg(long, default_value_t = Limits::default().max_song_bytes)]
    pub max_song_bytes: usize,
    /// Longest song to cover, in seconds.
    #[arg(long, default_value_t = Limits::default().max_song_seconds)]
    pub max_song_seconds: f64,
    /// Seconds running jobs may take to finish after SIGTERM or Ctrl-C.
    #[arg(long, default_value_t = 30.0, value_name = "SECONDS")]
    pub drain_timeout: f64,
}

/// Runs the command.
pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    let tokens = match &args.tokens_file {
        Some(path) => Tokens::load(path)?,
        None => Tokens::open(),
    };
    let positive = |name: &str, value: f64| {
        if value.is_finite() && value > 0.0 {
            Ok(Duration::from_secs_f64(value))
        } else {
            Err(son1k_engine::EngineError::invalid(
                "argument",
                format!("--{name} must be a positive number, not {value}"),
            ))
        }
    };
    let engine = EngineConfig {
        limits: Limits {
            max_prompt_chars: args.max_prompt_chars,
            max_prompt_tokens: args.max_prompt_tokens,
            max_duration_s: args.max_duration,
            max_song_bytes: args.max_song_bytes,
            max_song_seconds: args.max_song_seconds,
            ..Limits::default()
        },
        max_running: args.max_running.max(1),
        max_queued: args.max_queued,
        max_jobs_per_tenant: args.max_jobs_per_tenant,
        retention: positive("retention-hours", args.retention_hours * 3600.0)?,
        default_model: args.default_model.clone(),
        ..EngineConfig::new(&args.data_dir)
    };
    let config = ServeConfig {
        addr: args.addr,
        tokens,
        engine,
        drain_timeout: positive("drain-timeout", args.drain_timeout)?,
    };
    let (dirs, device, dtype, kv_cache) = (args.models, args.device, args.dtype, args.kv_cache);
    let load_models = move || -> anyhow::Result<Vec<Arc<dyn MusicModel>>> {
        let mut models: Vec<Arc<dyn MusicModel>> = vec![Arc::new(SynthModel::default())];
        for dir in &dirs {
            tracing::info!(dir = %dir.display(), "loading");
            models.push(Arc::new(MusicGenModel::load(dir, device, dtype, kv_cache)?));
        }
        Ok(models)
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = tokio::runtime::Runtime::new()?;
    let result = runtime.block_on(serve(config, load_models));
    // A model still loading on a blocking thread must not hold up the exit.
    runtime.shutdown_timeout(Duration::from_secs(1));
    result
}
