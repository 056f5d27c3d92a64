//! Benchmark of MusicGen in the musicgen-small shape (24 x 1024, 4 codebooks, T5-base) with
//! random weights made in memory: ms per decoder step and the real-time factor of a whole
//! generation (guidance 3.0, EnCodec included). The same measurement as `son1k bench`.
//!
//! `cargo bench --bench musicgen_step -- [--preset NAME] [--duration SECONDS] [--steps N]`

use clap::Parser;
use son1k::cli::bench::{run, BenchArgs};

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: BenchArgs,
    /// Passed by `cargo bench`.
    #[arg(long, hide = true)]
    bench: bool,
}

fn main() -> anyhow::Result<()> {
    run(Cli::parse().args)
}
