//! The score the composer writes and the renderer plays: timed note and drum events, the
//! chord of every beat, and the sections of the form.

use super::prompt::Instrument;
use crate::theory::{Chord, Key};

/// A drum sound.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DrumKind {
    /// Acoustic/electronic kick drum.
    Kick,
    /// Long, pitched 808 kick (trap, reggaeton).
    Kick808,
    /// Snare drum.
    Snare,
    /// Hand clap.
    Clap,
    /// Rim click / side stick.
    Rim,
    /// Closed hi-hat.
    ClosedHat,
    /// Open hi-hat.
    OpenHat,
    /// Ride cymbal.
    Ride,
    /// Crash cymbal.
    Crash,
    /// Low tom (cinematic hits, fills).
    Tom,
    /// Shaker.
    Shaker,
}

/// What sounds an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Voice {
    /// A pitched instrument.
    Instrument(Instrument),
    /// A drum.
    Drum(DrumKind),
}

/// One sounding event.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Event {
    /// Start in seconds from the beginning of the piece (swing and humanising applied).
    pub start_s: f64,
    /// Held length in seconds (the release tail comes on top).
    pub duration_s: f64,
    /// What plays it.
    pub voice: Voice,
    /// MIDI pitch (ignored by most drums).
    pub pitch: f32,
    /// Loudness, 0..1.
    pub velocity: f32,
}

/// A part of the form.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SectionKind {
    /// Sparse opening.
    Intro,
    /// Main material.
    Verse,
    /// Fuller, with the lead melody.
    Chorus,
    /// Contrast.
    Bridge,
    /// Closing, ends on the tonic.
    Outro,
}

/// A section: kind, first bar and length in bars.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Section {
    /// What the section is.
    pub kind: SectionKind,
    /// Index of its first bar.
    pub start_bar: usize,
    /// Its length in bars.
    pub bars: usize,
}

/// A composed piece, ready to render.
#[derive(Clone, Debug, PartialEq)]
pub struct Score {
    /// Tempo in beats per minute.
    pub tempo_bpm: f64,
    /// Key.
    pub key: Key,
    /// Beats per bar (4).
    pub beats_per_bar: usize,
    /// Time of beat 0 in seconds.
    pub first_beat_s: f64,
    /// The chord of every beat.
    pub chords: Vec<Chord>,
    /// The form.
    pub sections: Vec<Section>,
    /// Every event, sorted by start time.
    pub events: Vec<Event>,
    /// Length of the piece in seconds (events may ring past it and are faded).
    pub duration_s: f64,
}

impl Score {
    /// Seconds per beat.
    pub fn beat_s(&self) -> f64 {
        60.0 / self.tempo_bpm
    }
}
