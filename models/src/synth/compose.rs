//! The composer's first half: the form, a chord for every beat and a melody — a lead
//! sheet. Text prompts get one written from the plan; covers take theirs from the song.

use super::prompt::Genre;
use super::score::{Section, SectionKind};
use super::style::{progressions, traits, Plan};
use crate::random::Rng;
use crate::theory::{Chord, ChordQuality, Key, Mode};

/// A melody note on the beat grid.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MelodyNote {
    /// Start, in beats from beat 0.
    pub start_beat: f64,
    /// Length in beats.
    pub beats: f64,
    /// MIDI pitch.
    pub pitch: f32,
}

/// Harmony, melody and form on a beat grid: what a cover keeps of its song.
#[derive(Clone, Debug, PartialEq)]
pub struct LeadSheet {
    /// Tempo in beats per minute.
    pub tempo_bpm: f64,
    /// Time of beat 0 in seconds.
    pub first_beat_s: f64,
    /// Key.
    pub key: Key,
    /// Beats per bar.
    pub beats_per_bar: usize,
    /// The chord of every beat.
    pub chords: Vec<Chord>,
    /// The melody.
    pub melody: Vec<MelodyNote>,
    /// The form.
    pub sections: Vec<Section>,
}

/// Beats per bar of everything the synth writes.
pub const BEATS_PER_BAR: usize = 4;

/// Lowest and highest melody pitch (MIDI).
const MELODY_RANGE: (i32, i32) = (62, 84);

/// The form for `bars` bars: intro, alternating verses and choruses (a bridge in long
/// pieces), outro.
pub fn form(bars: usize) -> Vec<Section> {
    let mut sections = Vec::new();
    let intro = if bars >= 10 { 2 } else { 0 };
    let outro = if bars >= 6 { 2 } else { 1.min(bars) };
    let mut bar = 0;
    if intro > 0 {
        sections.push(Section {
            kind: SectionKind::Intro,
            start_bar: 0,
            bars: intro,
        });
        bar = intro;
    }
    let body_end = bars - outro;
    let mut index = 0;
    while bar < body_end {
        let len = (body_end - bar).min(if bars >= 16 { 8 } else { 4 });
        let kind = match index % 4 {
            0 | 2 => SectionKind::Verse,
            _ if index == 5 => SectionKind::Bridge,
            _ => SectionKind::Chorus,
        };
        sections.push(Section {
            kind,
            start_bar: bar,
            bars: len,
        });
        bar += len;
        index += 1;
    }
    if outro > 0 {
        sections.push(Section {
            kind: SectionKind::Outro,
            start_bar: body_end,
            bars: outro,
        });
    }
    sections
}

/// The dominant chord of a key: major even in minor (the harmonic leading tone), so the
/// cadence names the tonic unambiguously.
fn dominant(key: Key, seventh: bool) -> Chord {
    let root = (key.tonic + 7) % 12;
    Chord {
        root,
        quality: ChordQuality::Major,
        seventh: seventh.then_some(10),
    }
}

/// Writes the chords of every beat: a progression per section kind, a cadence at the end.
fn harmony(plan: &Plan, sections: &[Section], rng: &mut Rng) -> Vec<Chord> {
    let t = traits(plan.genre);
    let options = progressions(plan.genre, plan.key.mode);
    let pick = |rng: &mut Rng| options[(rng.next_u64() % options.len() as u64) as usize];
    let verse = pick(rng);
    let mut chorus = pick(rng);
    if chorus == verse && options.len() > 1 {
        chorus =
            options[(options.iter().position(|p| *p == verse).unwrap_or(0) + 1) % options.len()];
    }
    let bridge = pick(rng);
    let total_beats = sections
        .last()
        .map_or(0, |s| (s.start_bar + s.bars) * BEATS_PER_BAR);
    let mut chords = Vec::with_capacity(total_beats);
    for section in sections {
        let progression = match section.kind {
            SectionKind::Chorus => chorus,
            SectionKind::Bridge => bridge,
            _ => verse,
        };
        let section_beats = section.bars * BEATS_PER_BAR;
        // A half cadence closes every body section: its last two beats are the dominant,
        // which names the key (in minor, with the leading tone).
        let cadence = matches!(
            section.kind,
            SectionKind::Verse | SectionKind::Chorus | SectionKind::Bridge
        ) && section.bars >= 2;
        for beat in 0..section_beats {
            let step = (beat / t.beats_per_chord) % progression.len();
            let degree = if cadence && beat + 2 >= section_beats {
                4
            } else {
                progression[step]
            };
            // Minor keys take the major V of harmonic minor: its leading tone is what tells
            // a minor key from its relative major.
            chords.push(if plan.key.mode == Mode::Minor && degree == 4 {
                dominant(plan.key, t.sevenths)
            } else {
                plan.key.diatonic_chord(degree, t.sevenths)
            });
        }
    }
    // Cadence: the last bar is the tonic, the one before it the dominant.
    let n = chords.len();
    let tonic = plan.key.diatonic_chord(0, false);
    for (i, chord) in chords.iter_mut().enumerate() {
        if i + BEATS_PER_BAR >= n {
            *chord = tonic;
        } else if i + 2 * BEATS_PER_BAR >= n && n >= 3 * BEATS_PER_BAR {
            *chord = dominant(plan.key, t.sevenths);
        }
    }
    chords
}

/// Rhythms of a two-bar motif: (start beat, length in beats) within 8 beats.
fn motif_rhythm(genre: Genre, chorus: bool, rng: &mut Rng) -> Vec<(f64, f64)> {
    let sparse: &[&[(f64, f64)]] = &[
        &[
            (0.0, 1.5),
            (1.5, 0.5),
            (2.0, 2.0),
            (4.0, 1.0),
            (5.0, 1.0),
            (6.0, 2.0),
        ],
        &[
            (0.0, 1.0),
            (1.0, 1.0),
            (2.0, 1.5),
            (3.5, 0.5),
            (4.0, 3.0),
            (7.0, 1.0),
        ],
        &[
            (0.5, 0.5),
            (1.0, 1.0),
            (2.0, 2.0),
            (4.5, 0.5),
            (5.0, 1.0),
            (6.0, 2.0),
        ],
    ];
    let dense: &[&[(f64, f64)]] = &[
        &[
            (0.0, 0.5),
            (0.5, 0.5),
            (1.0, 1.0),
            (2.0, 0.5),
            (2.5, 0.5),
            (3.0, 1.0),
            (4.0, 0.5),
            (4.5, 0.5),
            (5.0, 1.0),
            (6.0, 2.0),
        ],
        &[
            (0.0, 1.0),
            (1.0, 0.5),
            (1.5, 0.5),
            (2.0, 1.0),
            (3.0, 1.0),
            (4.0, 0.75),
            (4.75, 0.25),
            (5.0, 1.0),
            (6.0, 1.5),
        ],
        &[
            (0.0, 0.75),
            (0.75, 0.75),
            (1.5, 0.5),
            (2.0, 2.0),
            (4.0, 0.75),
            (4.75, 0.75),
            (5.5, 0.5),
            (6.0, 2.0),
        ],
    ];
    let slow = matches!(genre, Genre::Ambient | Genre::Cinematic);
    let table = if chorus && !slow { dense } else { sparse };
    let mut rhythm = table[(rng.next_u64() % table.len() as u64) as usize].to_vec();
    if slow {
        // Half as many notes, twice as long.
        rhythm = rhythm
            .iter()
            .step_by(2)
            .map(|&(s, l)| (s, (l * 2.0).min(8.0 - s)))
            .collect();
    }
    rhythm
}

/// The MIDI pitch nearest to `near` whose pitch class is in `classes`.
fn nearest_of(classes: &[u8], near: i32) -> i32 {
    (near - 6..=near + 6)
        .filter(|p| classes.contains(&(p.rem_euclid(12) as u8)))
        .min_by_key(|p| ((p - near).abs(), *p))
        .unwrap_or(near)
}

/// Writes the melody over the chords: motifs per section, chord tones on strong beats,
/// scale steps between, ending on the tonic.
fn melody(plan: &Plan, sections: &[Section], chords: &[Chord], rng: &mut Rng) -> Vec<MelodyNote> {
    let scale: Vec<u8> = (0..7).map(|d| plan.key.degree_pitch_class(d)).collect();
    let mut notes = Vec::new();
    let mut previous = 72 + plan.key.tonic as i32 - 12 * ((plan.key.tonic as i32) > 5) as i32;
    for section in sections {
        let chorus = matches!(section.kind, SectionKind::Chorus | SectionKind::Bridge);
        if section.kind == SectionKind::Intro {
            continue;
        }
        let rhythm = motif_rhythm(plan.genre, chorus, rng);
        let lift = if chorus { 3 } else { 0 };
        let start_beat = section.start_bar * BEATS_PER_BAR;
        let section_beats = section.bars * BEATS_PER_BAR;
        let mut offset = 0;
        while offset < section_beats {
            for &(start, length) in &rhythm {
                let beat = offset as f64 + start;
                if beat + length > section_beats as f64 {
                    continue;
                }
                let absolute = start_beat as f64 + beat;
                let chord = chords[(absolute as usize).min(chords.len() - 1)];
                let strong = start.fract() == 0.0 && (start as usize).is_multiple_of(2);
                let target = previous + lift + [-2, -1, 1, 2, 0][(rng.next_u64() % 5) as usize];
                let mut pitch = if strong {
                    nearest_of(&chord.pitch_classes(), target)
                } else {
                    nearest_of(&scale, target)
                };
                while pitch < MELODY_RANGE.0 {
                    pitch += 12;
                }
                while pitch > MELODY_RANGE.1 {
                    pitch -= 12;
                }
                notes.push(MelodyNote {
                    start_beat: absolute,
                    beats: length * 0.95,
                    pitch: pitch as f32,
                });
                previous = pitch - lift;
            }
            offset += 8;
        }
    }
    // End on the tonic, held through the last bar.
    let total_beats = chords.len() as f64;
    let last_bar = total_beats - BEATS_PER_BAR as f64;
    notes.retain(|n| n.start_beat < last_bar);
    let tonic = nearest_of(&[plan.key.tonic], previous).clamp(MELODY_RANGE.0, MELODY_RANGE.1);
    if last_bar >= 0.0 {
        notes.push(MelodyNote {
            start_beat: last_bar,
            beats: BEATS_PER_BAR as f64,
            pitch: tonic as f32,
        });
    }
    notes
}

/// A lead sheet of `bars` bars for the plan, fixed by the seed.
pub fn write_lead_sheet(plan: &Plan, bars: usize, seed: u64) -> LeadSheet {
    let mut rng = Rng::new(seed ^ 0x0c04_d05e);
    let sections = form(bars.max(1));
    let chords = harmony(plan, &sections, &mut rng);
    let melody = melody(plan, &sections, &chords, &mut rng);
    LeadSheet {
        tempo_bpm: plan.tempo_bpm,
        first_beat_s: 0.0,
        key: plan.key,
        beats_per_bar: BEATS_PER_BAR,
        chords,
        melody,
        sections,
    }
}

/// Whether a chord is the key's tonic triad.
pub fn is_tonic(key: Key, chord: &Chord) -> bool {
    chord.root == key.tonic
        && matches!(
            (key.mode, chord.quality),
            (Mode::Major, ChordQuality::Major) | (Mode::Minor, ChordQuality::Minor)
        )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synth::prompt::understand;
    use crate::synth::style::plan;

    #[test]
    fn form_covers_every_bar_once() {
        for bars in 1..40 {
            let sections = form(bars);
            let mut next = 0;
            for s in &sections {
                assert_eq!(s.start_bar, next, "{bars} bars: {sections:?}");
                next += s.bars;
            }
            assert_eq!(next, bars);
            if bars >= 6 {
                assert_eq!(sections.last().map(|s| s.kind), Some(SectionKind::Outro));
            }
        }
    }

    #[test]
    fn lead_sheet_is_diatonic_ends_on_the_tonic_and_follows_the_seed() {
        let p = plan(&understand("pop in E major at 110 bpm"), 4);
        let sheet = write_lead_sheet(&p, 12, 9);
        assert_eq!(sheet.chords.len(), 48);
        assert!(is_tonic(p.key, &sheet.chords[0]));
        assert!(is_tonic(p.key, sheet.chords.last().unwrap()));
        let scale: Vec<u8> = (0..7).map(|d| p.key.degree_pitch_class(d)).collect();
        for note in &sheet.melody {
            assert!(
                scale.contains(&((note.pitch as i32).rem_euclid(12) as u8)),
                "{note:?}"
            );
            assert!((MELODY_RANGE.0..=MELODY_RANGE.1).contains(&(note.pitch as i32)));
        }
        assert_eq!(
            sheet.melody.last().map(|n| n.pitch as i32 % 12),
            Some(p.key.tonic as i32)
        );
        assert_eq!(sheet, write_lead_sheet(&p, 12, 9));
        assert_ne!(sheet.melody, write_lead_sheet(&p, 12, 10).melody);
    }
}
