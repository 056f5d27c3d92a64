//! The `son1k` binary: parses the command line and reports errors as one clear line with a
//! non-zero exit status (2 for a bad argument, 1 otherwise), never a panic.

#![forbid(unsafe_code)]

use clap::Parser;
use son1k::cli::{exit_status, run, Cli};

fn main() {
    let cli = Cli::parse();
    if let Err(error) = run(cli) {
        eprintln!("error: {error:#}");
        std::process::exit(exit_status(&error));
    }
}
