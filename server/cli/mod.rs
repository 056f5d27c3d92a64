//! The `son1k` command line: argument definitions and dispatch to each subcommand.

mod analyse;
pub mod bench;
mod cover;
mod generate;
mod job_args;
mod models;
pub(crate) mod output;
mod play_to;
mod progress;
mod remote;
pub mod serve;
mod tiny_model;

use clap::{Parser, Subcommand};
use son1k_engine::EngineError;

pub use generate::GenerateArgs;
pub use remote::ServerArgs;
pub use tiny_model::TinyModelArgs;

/// Son1k: music generation on your own hardware.
#[derive(Debug, Parser)]
#[command(name = "son1k", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
    /// Compute threads for the CPU kernels (sets RAYON_NUM_THREADS and CANDLE_NUM_THREADS).
    /// Default: RAYON_NUM_THREADS if set, else every core this process may use, which
    /// measured fastest on small machines (2 cores: 1.8x one thread).
    #[arg(long, global = true, value_name = "N")]
    pub threads: Option<usize>,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve generations over gRPC and grpc-web, with a page for browsers.
    Serve(serve::ServeArgs),
    /// Generate music from a text prompt into a WAV, FLAC, MP3 or Opus file (here, or on a
    /// server with --server).
    Generate(GenerateArgs),
    /// Show the tempo, key, chords, melody and loudness the analysis hears in a song.
    Analyse(analyse::AnalyseArgs),
    /// Cover a song in the style the prompt asks for (built-in synth; here, or on a server
    /// with --server).
    Cover(cover::CoverArgs),
    /// Measure MusicGen's speed on this machine (a checkpoint or a preset shape).
    Bench(bench::BenchArgs),
    /// List the checkpoints in the Hugging Face cache that --model finds by their Hub id.
    Models(models::ModelsArgs),
    /// Write a tiny random MusicGen checkpoint in the Hugging Face layout (for tests and
    /// for trying the engine without downloading weights).
    TinyModel(TinyModelArgs),
}

/// Runs the parsed command.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    if let Some(n) = cli.threads {
        if n == 0 {
            return Err(EngineError::invalid("threads", "must be at least 1").into());
        }
        bench::Threads::set(n);
    }
    match cli.command {
        Command::Serve(args) => serve::run(args),
        Command::Generate(args) => generate::run(args),
        Command::Models(args) => models::run(args),
        Command::TinyModel(args) => tiny_model::run(args),
        Command::Bench(mut args) => {
            args.threads = cli.threads;
            bench::run(args)
        }
        Command::Cover(args) => cover::run(args),
        Command::Analyse(args) => analyse::run(args),
    }
}

/// The exit status for a command's error: 2 for a bad argument (one this process found, or
/// a request field the server refused), 1 otherwise.
pub fn exit_status(error: &anyhow::Error) -> i32 {
    let bad_argument = matches!(
        error.downcast_ref::<EngineError>(),
        Some(EngineError::InvalidArgument { .. })
    ) || remote::is_bad_argument(error);
    if bad_argument {
        2
    } else {
        1
    }
}
