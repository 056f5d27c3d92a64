//! `son1k analyse`: what the analysis hears in a song (tempo, key, chords, melody) and its
//! loudness; the same measurements covers and the synth's tests use.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

use anyhow::Context;
use clap::Args;
use son1k_engine::audio::decode::decode_audio;
use son1k_engine::cover::{load_song, ANALYSIS_RATE};
use son1k_engine::Limits;
use son1k_models::analysis::analyse;
use son1k_models::synth::master::measure;

/// Arguments of `son1k analyse`.
#[derive(Debug, Args)]
pub struct AnalyseArgs {
    /// A song: WAV, FLAC, MP3, Ogg Vorbis or AAC/M4A.
    #[arg(long, value_name = "SONG")]
    pub input: PathBuf,
}

/// Runs the command.
pub(super) fn run(args: AnalyseArgs) -> anyhow::Result<()> {
    let limits = Limits::default();
    let bytes = std::fs::read(&args.input)
        .with_context(|| format!("cannot read {}", args.input.display()))?;
    let name = args.input.file_name().and_then(|n| n.to_str());
    let decoded = decode_audio(&bytes, name, &Default::default())
        .map_err(|e| son1k_engine::EngineError::invalid("song", e.to_string()))?;
    let loudness = measure(&decoded.channels, decoded.sample_rate)?;
    let song = load_song(
        &bytes,
        name,
        &limits,
        ANALYSIS_RATE,
        &AtomicBool::new(false),
    )?;
    let a = analyse(&song.mono, song.sample_rate)
        .map_err(|e| son1k_engine::EngineError::invalid("song", e.to_string()))?;
    let chords: Vec<String> = a
        .beat_chords
        .iter()
        .step_by(4)
        .take(16)
        .map(|c| c.name())
        .collect();
    super::output::line(format_args!(
        "{}: {:.2} s, {} Hz, {} channel(s)",
        args.input.display(),
        decoded.duration_s(),
        decoded.sample_rate,
        decoded.channels.len()
    ));
    super::output::line(format_args!(
        "  tempo: {:.2} bpm ({} beats)",
        a.tempo_bpm,
        a.beat_times_s.len()
    ));
    super::output::line(format_args!("  key: {}", a.key.name()));
    super::output::line(format_args!(
        "  chords (every 4th beat): {}",
        chords.join(" ")
    ));
    super::output::line(format_args!("  melody: {} notes", a.melody.len()));
    super::output::line(format_args!(
        "  loudness: {:.2} LUFS integrated, true peak {:.2} dBTP, sample peak {:.3}",
        loudness.integrated_lufs, loudness.true_peak_dbtp, loudness.sample_peak
    ));
    Ok(())
}
