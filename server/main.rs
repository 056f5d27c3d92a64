//! The `son1k` binary: parses the command line and reports errors as one clear line with a
//! non-zero exit status (2 for a bad argument, 1 otherwise), never a panic.

use clap::Parser;
use son1k::cli::{run, Cli};
use son1k_engine::EngineError;

fn main() {
    let cli = Cli::parse();
    if let Err(error) = run(cli) {
        eprintln!("error: {error:#}");
        let bad_argument = matches!(
            error.downcast_ref::<EngineError>(),
            Some(EngineError::InvalidArgument { .. })
        );
        std::process::exit(if bad_argument { 2 } else { 1 });
    }
}
