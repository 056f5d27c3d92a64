//! Command output on stdout: a reader that closes the pipe early (`son1k ... | head`) ends
//! the command quietly instead of panicking as `println!` would.

use std::io::Write;

/// Prints one line on stdout; exits quietly with status 0 if stdout is closed.
pub fn line(text: impl std::fmt::Display) {
    if let Err(e) = writeln!(std::io::stdout().lock(), "{text}") {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
    }
}
