//! `son1k tiny-model`: writes a tiny random MusicGen checkpoint in the published layout.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use son1k_models::musicgen::presets::{preset, write_random_checkpoint};

/// Arguments of `son1k tiny-model`.
#[derive(Debug, Args)]
pub struct TinyModelArgs {
    /// Directory to write (created if missing).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Seed of the random weights.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// A stereo model (8 interleaved codebooks).
    #[arg(long, conflicts_with = "melody")]
    pub stereo: bool,
    /// A MusicGen-Melody model (covers follow the song's melody).
    #[arg(long)]
    pub melody: bool,
}

/// Runs the command.
pub(super) fn run(args: TinyModelArgs) -> anyhow::Result<()> {
    let (name, what) = match (args.stereo, args.melody) {
        (true, _) => ("tiny-stereo", "stereo MusicGen"),
        (false, true) => ("tiny-melody", "MusicGen-Melody"),
        (false, false) => ("tiny", "mono MusicGen"),
    };
    let config = preset(name).with_context(|| format!("preset {name} is missing"))?;
    write_random_checkpoint(&args.out, &config, args.seed)?;
    super::output::line(format_args!(
        "wrote a tiny {what} checkpoint to {}",
        args.out.display()
    ));
    Ok(())
}
