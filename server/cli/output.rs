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

/// Parses `--format`: one of [`AudioFormat::ALL`] by name.
pub(crate) fn parse_format(text: &str) -> Result<AudioFormat, String> {
    AudioFormat::from_name(text)
        .ok_or_else(|| format!("`{text}` is not one of {}", AudioFormat::names()))
}

/// The extensions of the formats Son1k writes, for messages: `.wav, .flac, .mp3 or .opus`.
fn extensions() -> String {
    let names = AudioFormat::ALL.map(|format| format!(".{}", format.extension()));
    match names.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
        _ => names.join(""),
    }
}

/// The container of the output file: the one its name's extension says (`--format`, when
/// given, must agree), `--format` for a name without one, else WAV. An extension that is
/// no format Son1k writes is an error listing those it does, rather than a file whose
/// name says what it is not.
pub(crate) fn format_for(flag: Option<AudioFormat>, out: &Path) -> anyhow::Result<AudioFormat> {
    let Some(extension) = out.extension() else {
        return Ok(flag.unwrap_or_default());
    };
    let extension = extension.to_string_lossy();
    let Some(named) = AudioFormat::from_name(&extension) else {
        anyhow::bail!(
            "--out {}: `.{extension}` is not a format son1k writes; name the file {}",
            out.display(),
            extensions()
        );
    };
    match flag {
        Some(flag) if flag != named => anyhow::bail!(
            "--out {} names a {} file but --format is {}; make them agree",
            out.display(),
            named.extension(),
            flag.extension()
        ),
        _ => Ok(named),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_output_name_and_format_agree_or_the_command_says_why() {
        let format = |flag, name: &str| format_for(flag, Path::new(name));
        assert_eq!(format(None, "a.wav").unwrap(), AudioFormat::Wav);
        assert_eq!(format(None, "a.FLAC").unwrap(), AudioFormat::Flac);
        assert_eq!(format(None, "noext").unwrap(), AudioFormat::Wav);
        assert_eq!(
            format(Some(AudioFormat::Flac), "noext").unwrap(),
            AudioFormat::Flac
        );
        assert_eq!(
            format(Some(AudioFormat::Flac), "a.flac").unwrap(),
            AudioFormat::Flac
        );
        assert_eq!(format(None, "a.mp3").unwrap(), AudioFormat::Mp3);
        assert_eq!(format(None, "a.Opus").unwrap(), AudioFormat::Opus);
        let aac = format(None, "song.aac").unwrap_err().to_string();
        assert!(
            aac.contains("song.aac") && aac.contains(".wav, .flac, .mp3 or .opus"),
            "{aac}"
        );
        let disagree = format(Some(AudioFormat::Flac), "a.wav")
            .unwrap_err()
            .to_string();
        assert!(disagree.contains("--format is flac"), "{disagree}");
        assert_eq!(parse_format("FLAC"), Ok(AudioFormat::Flac));
        assert_eq!(parse_format("mp3"), Ok(AudioFormat::Mp3));
        assert_eq!(
            parse_format("aac"),
            Err("`aac` is not one of wav, flac, mp3, opus".to_string())
        );
    }
}
