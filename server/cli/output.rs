//! Command output: lines on stdout, where a reader that closes the pipe early
//! (`son1k ... | head`) ends the command quietly instead of panicking as `println!` would,
//! and the container of the audio file a command writes.

use std::io::Write;
use std::path::Path;

use son1k_engine::audio::AudioFormat;

/// Prints one line on stdout; exits quietly with status 0 if stdout is closed.
pub(crate) fn line(text: impl std::fmt::Display) {
    if let Err(e) = writeln!(std::io::stdout().lock(), "{text}") {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
    }
}

/// What a finished job made, for [`summary`].
pub(crate) struct Made<'a> {
    /// Seconds of audio.
    pub duration_s: f64,
    /// Samples per second.
    pub sample_rate: u32,
    /// Channels.
    pub channels: usize,
    /// The seed used.
    pub seed: u64,
    /// What the model understood of the prompt.
    pub understood: Vec<(&'a str, &'a str)>,
}

/// Prints what a job wrote: the file line, then what the model understood, a line each;
/// on stderr with `to_stderr` (where stdout carries audio).
pub(crate) fn summary(out: &Path, to_stderr: bool, made: &Made<'_>) {
    let print = |text: std::fmt::Arguments<'_>| {
        if to_stderr {
            eprintln!("{text}");
        } else {
            line(text);
        }
    };
    print(format_args!(
        "wrote {}: {:.2} s, {} Hz, {} channel(s), seed {}",
        out.display(),
        made.duration_s,
        made.sample_rate,
        made.channels,
        made.seed
    ));
    for (what, value) in &made.understood {
        print(format_args!("  {what}: {value}"));
    }
}

/// Parses `--format`: `wav` or `flac`.
pub(crate) fn parse_format(text: &str) -> Result<AudioFormat, String> {
    match text.to_ascii_lowercase().as_str() {
        "wav" => Ok(AudioFormat::Wav),
        "flac" => Ok(AudioFormat::Flac),
        other => Err(format!("`{other}` is not one of wav, flac")),
    }
}

/// The container of the output file: `--format` when given, else FLAC for a `.flac` name
/// and WAV for anything else.
pub(crate) fn format_for(flag: Option<AudioFormat>, out: &Path) -> AudioFormat {
    flag.unwrap_or_else(|| {
        let flac = out
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| e.eq_ignore_ascii_case("flac"));
        if flac {
            AudioFormat::Flac
        } else {
            AudioFormat::Wav
        }
    })
}
