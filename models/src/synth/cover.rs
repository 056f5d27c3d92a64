//! Covers with the synth: a song's analysis (tempo, beats, key, chord per beat, melody)
//! becomes a lead sheet that the arranger re-renders in the prompt's style, keeping the
//! source's tempo, key and harmony.

use super::compose::{form, LeadSheet, MelodyNote, BEATS_PER_BAR};
use super::prompt::understand;
use super::style::{plan, Plan};
use crate::analysis::SongAnalysis;

/// The lead sheet of an analysed song, `duration_s` seconds long from its first beat's bar.
pub fn lead_sheet(song: &SongAnalysis, duration_s: f64) -> LeadSheet {
    let beat_s = 60.0 / song.tempo_bpm;
    let first_beat_s = song.beat_times_s.first().copied().unwrap_or(0.0);
    let beats_needed = ((duration_s - first_beat_s).max(beat_s) / beat_s).ceil() as usize;
    let bars = beats_needed.div_ceil(BEATS_PER_BAR).max(1);
    let fallback = song.key.diatonic_chord(0, false);
    let chords = (0..bars * BEATS_PER_BAR)
        .map(|i| {
            song.beat_chords
                .get(i)
                .or(song.beat_chords.last())
                .copied()
                .unwrap_or(fallback)
        })
        .collect();
    let melody = song
        .melody
        .iter()
        .filter(|n| n.start_s >= first_beat_s)
        .map(|n| {
            let mut pitch = n.pitch;
            // Fold into the lead's register, keeping the pitch class.
            while pitch < 60.0 {
                pitch += 12.0;
            }
            while pitch > 84.0 {
                pitch -= 12.0;
            }
            MelodyNote {
                start_beat: (n.start_s - first_beat_s) / beat_s,
                beats: n.duration_s / beat_s,
                pitch,
            }
        })
        .collect();
    LeadSheet {
        tempo_bpm: song.tempo_bpm,
        first_beat_s,
        key: song.key,
        beats_per_bar: BEATS_PER_BAR,
        chords,
        melody,
        sections: form(bars),
    }
}

/// The plan of a cover: the prompt chooses the style and instruments; tempo and key are
/// the song's.
pub fn cover_plan(prompt: &str, song: &SongAnalysis, seed: u64) -> Plan {
    let mut understanding = understand(prompt);
    understanding.tempo_bpm = Some(song.tempo_bpm as f32);
    understanding.key = Some(song.key);
    let mut plan = plan(&understanding, seed);
    plan.tempo_bpm = song.tempo_bpm;
    plan
}
