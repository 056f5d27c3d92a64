//! The composer's second half: turns a lead sheet into parts for the plan's instruments
//! (drums, bass, comping, a sustained layer, the melody) with swing and humanised timing.

use super::compose::LeadSheet;
use super::prompt::Instrument;
use super::score::{DrumKind, Event, Score, SectionKind, Voice};
use super::style::{traits, BassStyle, CompStyle, DrumStyle, GenreTraits, Plan};
use crate::random::Rng;
use crate::theory::Chord;

/// Collects events, mapping beat positions to seconds with swing and humanising.
struct Writer<'a> {
    sheet: &'a LeadSheet,
    traits: GenreTraits,
    rng: Rng,
    events: Vec<Event>,
    end_s: f64,
}

impl Writer<'_> {
    fn beat_s(&self) -> f64 {
        60.0 / self.sheet.tempo_bpm
    }

    /// Seconds of a beat position: off-beats move later by the swing, then a little
    /// random spread.
    fn time(&mut self, beat: f64) -> f64 {
        let whole = beat.floor();
        let mut frac = beat - whole;
        let swing = self.traits.swing as f64;
        if swing != 0.5 {
            let (unit, within) = if self.traits.swing_sixteenths {
                (0.5, (frac % 0.5) / 0.5)
            } else {
                (1.0, frac)
            };
            let base = frac - within * unit;
            let swung = if within < 0.5 {
                within / 0.5 * swing
            } else {
                swing + (within - 0.5) / 0.5 * (1.0 - swing)
            };
            frac = base + swung * unit;
        }
        let jitter = self.rng.normal() * self.traits.humanize_s as f64;
        self.sheet.first_beat_s + (whole + frac) * self.beat_s() + jitter
    }

    fn push(&mut self, beat: f64, beats: f64, voice: Voice, pitch: f32, velocity: f32) {
        let start_s = self.time(beat).max(0.0);
        if start_s >= self.end_s {
            return;
        }
        let humanized = velocity * (1.0 + 0.08 * (self.rng.uniform() as f32 - 0.5));
        self.events.push(Event {
            start_s,
            duration_s: beats * self.beat_s(),
            voice,
            pitch,
            velocity: humanized.clamp(0.0, 1.0),
        });
    }

    fn drum(&mut self, beat: f64, kind: DrumKind, velocity: f32) {
        self.push(beat, 0.25, Voice::Drum(kind), 36.0, velocity);
    }
}

/// Section energy: 0 intro, 1 verse, 2 chorus; the outro plays like a verse.
fn energy(kind: SectionKind) -> u8 {
    match kind {
        SectionKind::Intro => 0,
        SectionKind::Verse | SectionKind::Outro => 1,
        SectionKind::Chorus | SectionKind::Bridge => 2,
    }
}

fn drums_bar(w: &mut Writer, bar_beat: f64, style: DrumStyle, energy: u8, root_808: f32) {
    use DrumKind as D;
    let at = |w: &mut Writer, sixteenth: usize, kind: DrumKind, velocity: f32| {
        w.drum(bar_beat + sixteenth as f64 * 0.25, kind, velocity);
    };
    if energy == 0 {
        // Intros keep time with the hats alone (or a shaker).
        for i in (0..16).step_by(2) {
            at(
                w,
                i,
                if style == DrumStyle::JazzRide {
                    D::Ride
                } else {
                    D::ClosedHat
                },
                0.35,
            );
        }
        return;
    }
    match style {
        DrumStyle::None => {
            for i in (0..16).step_by(4) {
                at(w, i, D::Shaker, 0.25);
            }
        }
        DrumStyle::Backbeat => {
            for i in [0, 8, 10] {
                at(w, i, D::Kick, 0.9);
            }
            for i in [4, 12] {
                at(w, i, D::Snare, 0.85);
            }
            for i in (0..16).step_by(2) {
                at(w, i, D::ClosedHat, if i % 4 == 0 { 0.55 } else { 0.4 });
            }
        }
        DrumStyle::BoomBap => {
            for i in [0, 7, 10] {
                at(w, i, D::Kick, 0.9);
            }
            for i in [4, 12] {
                at(w, i, D::Snare, 0.8);
            }
            for i in (0..16).step_by(2) {
                at(w, i, D::ClosedHat, if i % 4 == 0 { 0.45 } else { 0.3 });
            }
        }
        DrumStyle::FourOnTheFloor => {
            for i in [0, 4, 8, 12] {
                at(w, i, D::Kick, 0.95);
            }
            for i in [4, 12] {
                at(w, i, D::Clap, 0.7);
            }
            for i in [2, 6, 10, 14] {
                at(w, i, D::OpenHat, 0.4);
            }
            if energy == 2 {
                for i in (1..16).step_by(2) {
                    at(w, i, D::ClosedHat, 0.25);
                }
            }
        }
        DrumStyle::Dembow => {
            for i in [0, 4, 8, 12] {
                at(w, i, D::Kick808, 0.9);
            }
            for i in [3, 6, 11, 14] {
                at(w, i, D::Snare, 0.75);
            }
            for i in (0..16).step_by(2) {
                at(w, i, D::ClosedHat, 0.3);
            }
        }
        DrumStyle::HalfTime => {
            for i in [0, 10] {
                w.push(
                    bar_beat + i as f64 * 0.25,
                    1.5,
                    Voice::Drum(D::Kick808),
                    root_808,
                    0.95,
                );
            }
            at(w, 8, D::Clap, 0.85);
            for i in 0..16 {
                at(w, i, D::ClosedHat, if i % 2 == 0 { 0.4 } else { 0.25 });
            }
            if energy == 2 {
                for k in 0..3 {
                    w.drum(bar_beat + 3.5 + k as f64 / 6.0, D::ClosedHat, 0.3);
                }
            }
        }
        DrumStyle::Funk => {
            for i in [0, 3, 10] {
                at(w, i, D::Kick, 0.9);
            }
            for i in [4, 12] {
                at(w, i, D::Snare, 0.85);
            }
            for i in [7, 9, 15] {
                at(w, i, D::Snare, 0.2);
            }
            for i in 0..16 {
                at(w, i, D::ClosedHat, if i % 2 == 0 { 0.4 } else { 0.25 });
            }
        }
        DrumStyle::JazzRide => {
            for beat in 0..4 {
                w.drum(bar_beat + beat as f64, D::Ride, 0.45);
                if beat % 2 == 1 {
                    w.drum(bar_beat + beat as f64 + 0.5, D::Ride, 0.35);
                    w.drum(bar_beat + beat as f64, D::ClosedHat, 0.3);
                }
            }
            w.drum(bar_beat, D::Kick, 0.35);
        }
        DrumStyle::Cinematic => {
            for i in [0, 8] {
                w.push(
                    bar_beat + i as f64 * 0.25,
                    0.5,
                    Voice::Drum(D::Tom),
                    43.0,
                    0.85,
                );
            }
            if energy == 2 {
                for i in [6, 12, 14] {
                    w.push(
                        bar_beat + i as f64 * 0.25,
                        0.25,
                        Voice::Drum(D::Tom),
                        48.0,
                        0.6,
                    );
                }
            }
            for i in (0..16).step_by(4) {
                at(w, i, D::Shaker, 0.3);
            }
        }
    }
}

fn bass_pitch(pc: u8) -> f32 {
    // E1 (28) to D#2 (39): the bass register.
    (28 + (pc as i32 + 12 - 4) % 12) as f32
}

fn bass_beat(w: &mut Writer, beat: usize, chord: Chord, next: Chord, style: BassStyle) {
    let b = beat as f64;
    let root = bass_pitch(chord.root);
    let fifth = bass_pitch((chord.root + 7) % 12);
    let bass = Voice::Instrument(Instrument::Bass);
    let in_bar = beat % 4;
    match style {
        BassStyle::RootFifth => match in_bar {
            0 => w.push(b, 1.5, bass, root, 0.9),
            2 => w.push(
                b,
                1.0,
                bass,
                if chord.root == next.root { fifth } else { root },
                0.75,
            ),
            3 => w.push(b + 0.5, 0.5, bass, root, 0.6),
            _ => {}
        },
        BassStyle::Eighths => {
            w.push(b, 0.45, bass, root, 0.85);
            w.push(b + 0.5, 0.45, bass, root, 0.7);
        }
        BassStyle::Walking => {
            let tones = chord.intervals();
            let step = match in_bar {
                0 => root,
                3 => bass_pitch(next.root) - 1.0,
                i => root + tones[i.min(tones.len() - 1)] as f32,
            };
            w.push(b, 0.9, bass, step, 0.75);
        }
        BassStyle::Sub808 => {
            if in_bar == 0 || in_bar == 2 {
                w.push(b, 1.9, bass, root, 0.9);
            }
        }
        BassStyle::Offbeat => w.push(b + 0.5, 0.4, bass, root + 12.0, 0.8),
        BassStyle::Syncopated => {
            for (pos, pitch, v) in [
                (0.0, root, 0.9),
                (0.75, root + 12.0, 0.6),
                (1.5, fifth, 0.7),
            ] {
                if in_bar.is_multiple_of(2) {
                    w.push(b + pos, 0.3, bass, pitch, v);
                }
            }
        }
        BassStyle::Sustained => {
            if in_bar == 0 {
                w.push(b, 3.9, bass, root, 0.75);
            }
        }
    }
}

/// A voicing of `chord` near the previous one (smooth voice leading), in C3..C5.
fn voicing(chord: &Chord, previous: &[f32]) -> Vec<f32> {
    let center = if previous.is_empty() {
        60.0
    } else {
        previous.iter().sum::<f32>() / previous.len() as f32
    };
    let mut notes: Vec<f32> = chord
        .intervals()
        .iter()
        .map(|&i| {
            let pc = ((chord.root + i) % 12) as f32;
            let mut p = 48.0 + pc;
            while p + 6.0 < center {
                p += 12.0;
            }
            p
        })
        .collect();
    notes.sort_by(f32::total_cmp);
    notes
}

fn comp_beat(
    w: &mut Writer,
    beat: usize,
    voices: &[f32],
    style: CompStyle,
    instrument: Instrument,
    changes: bool,
) {
    let b = beat as f64;
    let voice = Voice::Instrument(instrument);
    let in_bar = beat % 4;
    let all = |w: &mut Writer, at: f64, len: f64, v: f32| {
        for &p in voices {
            w.push(at, len, voice, p, v);
        }
    };
    match style {
        CompStyle::Sustained => {
            if changes {
                all(w, b, 3.9, 0.55);
            }
        }
        CompStyle::Quarters => all(w, b, 0.9, if in_bar == 0 { 0.6 } else { 0.45 }),
        CompStyle::OffbeatStabs => all(w, b + 0.5, 0.3, 0.5),
        CompStyle::Arpeggio => {
            // Alberti-style broken chord in eighths: low (or middle) tone, then the top.
            let first = if in_bar.is_multiple_of(2) {
                voices[0]
            } else {
                voices[1.min(voices.len() - 1)]
            };
            w.push(b, 0.5, voice, first, 0.45);
            w.push(b + 0.5, 0.5, voice, voices[voices.len() - 1], 0.4);
        }
        CompStyle::Syncopated => {
            if in_bar == 0 {
                all(w, b, 1.4, 0.55);
            } else if in_bar == 1 {
                all(w, b + 0.5, 1.9, 0.45);
            }
        }
        CompStyle::Strum => {
            for (k, &p) in voices.iter().enumerate() {
                // A strum: strings a few milliseconds apart.
                let offset = k as f64 * 0.012 * w.sheet.tempo_bpm / 60.0;
                w.push(b + offset, 0.45, voice, p, 0.5);
                w.push(b + 0.5 + offset, 0.45, voice, p, 0.4);
            }
        }
    }
}

/// Arranges a lead sheet for the plan's instruments into a score of `duration_s` seconds.
pub fn arrange(sheet: &LeadSheet, plan: &Plan, duration_s: f64, seed: u64) -> Score {
    let t = traits(plan.genre);
    let mut w = Writer {
        sheet,
        traits: t,
        rng: Rng::new(seed ^ 0x0a22_a46e),
        events: Vec::new(),
        end_s: duration_s,
    };
    let has = |i: Instrument| plan.instruments.contains(&i);
    let beats = sheet.chords.len();
    let mut previous_voicing: Vec<f32> = Vec::new();
    for section in &sheet.sections {
        let e = energy(section.kind);
        for bar in section.start_bar..section.start_bar + section.bars {
            let bar_beat = (bar * sheet.beats_per_bar) as f64;
            let chord_at_bar = sheet.chords.get(bar * sheet.beats_per_bar).copied();
            if has(Instrument::Drums) {
                let root = chord_at_bar.map_or(36.0, |c| bass_pitch(c.root) + 12.0);
                drums_bar(&mut w, bar_beat, t.drums, e, root);
                if bar == section.start_bar && e == 2 && t.drums != DrumStyle::None {
                    w.drum(bar_beat, DrumKind::Crash, 0.5);
                }
            }
            for beat in bar * sheet.beats_per_bar..((bar + 1) * sheet.beats_per_bar).min(beats) {
                let chord = sheet.chords[beat];
                let next = sheet.chords.get(beat + 1).copied().unwrap_or(chord);
                let changes = beat == 0 || sheet.chords[beat - 1] != chord || beat % 4 == 0;
                if e > 0 || t.drums == DrumStyle::None {
                    bass_beat(&mut w, beat, chord, next, t.bass);
                }
                let voices = voicing(&chord, &previous_voicing);
                comp_beat(&mut w, beat, &voices, t.comp, plan.chords, changes);
                if let Some(layer) = t.layer.filter(|&l| has(l) && l != plan.chords && e > 0) {
                    if changes {
                        for &p in &voices {
                            w.push(beat as f64, 3.95, Voice::Instrument(layer), p, 0.3);
                        }
                    }
                }
                previous_voicing = voices;
            }
        }
    }
    for note in &sheet.melody {
        let kind = sheet
            .sections
            .iter()
            .find(|s| note.start_beat < ((s.start_bar + s.bars) * sheet.beats_per_bar) as f64)
            .map_or(SectionKind::Verse, |s| s.kind);
        let velocity = if energy(kind) == 2 { 0.75 } else { 0.6 };
        w.push(
            note.start_beat,
            note.beats,
            Voice::Instrument(plan.lead),
            note.pitch,
            velocity,
        );
    }
    let mut events = w.events;
    events.sort_by(|a, b| a.start_s.total_cmp(&b.start_s));
    Score {
        tempo_bpm: sheet.tempo_bpm,
        key: sheet.key,
        beats_per_bar: sheet.beats_per_bar,
        first_beat_s: sheet.first_beat_s,
        chords: sheet.chords.clone(),
        sections: sheet.sections.clone(),
        events,
        duration_s,
    }
}
