//! Music theory for the synth and the song analysis: keys, scales, chords and MIDI pitch.

/// Major or minor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mode {
    /// Ionian.
    Major,
    /// Aeolian (natural minor; the harmonic leading tone is used in cadences).
    Minor,
}

/// A key: tonic pitch class (0 = C) and mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Key {
    /// Pitch class of the tonic, 0..12, 0 = C.
    pub tonic: u8,
    /// Major or minor.
    pub mode: Mode,
}

const NOTE_NAMES: [&str; 12] = [
    "C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B",
];

/// The name of a pitch class, e.g. `F#`.
pub fn pitch_class_name(pc: u8) -> &'static str {
    NOTE_NAMES[(pc % 12) as usize]
}

impl Key {
    /// Semitone offsets of the scale degrees from the tonic.
    pub fn scale(&self) -> [u8; 7] {
        match self.mode {
            Mode::Major => [0, 2, 4, 5, 7, 9, 11],
            Mode::Minor => [0, 2, 3, 5, 7, 8, 10],
        }
    }

    /// The pitch class of scale degree `degree` (0-based, wraps by octave).
    pub fn degree_pitch_class(&self, degree: usize) -> u8 {
        (self.tonic + self.scale()[degree % 7]) % 12
    }

    /// The triad (or seventh chord) built on a scale degree, diatonic to the key.
    pub fn diatonic_chord(&self, degree: usize, seventh: bool) -> Chord {
        let pcs: Vec<u8> = (0..if seventh { 4 } else { 3 })
            .map(|i| self.degree_pitch_class(degree + 2 * i))
            .collect();
        let root = pcs[0];
        let interval = |pc: u8| (pc + 12 - root) % 12;
        let quality = match (interval(pcs[1]), interval(pcs[2])) {
            (4, 7) => ChordQuality::Major,
            (3, 7) => ChordQuality::Minor,
            (3, 6) => ChordQuality::Diminished,
            (4, 8) => ChordQuality::Augmented,
            _ => ChordQuality::Major,
        };
        let seventh = pcs.get(3).map(|&pc| interval(pc));
        Chord {
            root,
            quality,
            seventh,
        }
    }

    /// A name such as `D minor`.
    pub fn name(&self) -> String {
        format!(
            "{} {}",
            pitch_class_name(self.tonic),
            match self.mode {
                Mode::Major => "major",
                Mode::Minor => "minor",
            }
        )
    }
}

/// The quality of a triad.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ChordQuality {
    /// Root, major third, fifth.
    Major,
    /// Root, minor third, fifth.
    Minor,
    /// Root, minor third, diminished fifth.
    Diminished,
    /// Root, major third, augmented fifth.
    Augmented,
}

/// A chord: root pitch class, triad quality, optional seventh (semitones above the root).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Chord {
    /// Pitch class of the root.
    pub root: u8,
    /// Triad quality.
    pub quality: ChordQuality,
    /// Interval of the seventh above the root (10 or 11), if any.
    pub seventh: Option<u8>,
}

impl Chord {
    /// A triad.
    pub fn triad(root: u8, quality: ChordQuality) -> Self {
        Self {
            root: root % 12,
            quality,
            seventh: None,
        }
    }

    /// Semitones above the root of each chord tone.
    pub fn intervals(&self) -> Vec<u8> {
        let mut v = match self.quality {
            ChordQuality::Major => vec![0, 4, 7],
            ChordQuality::Minor => vec![0, 3, 7],
            ChordQuality::Diminished => vec![0, 3, 6],
            ChordQuality::Augmented => vec![0, 4, 8],
        };
        v.extend(self.seventh);
        v
    }

    /// Pitch classes of the chord tones.
    pub fn pitch_classes(&self) -> Vec<u8> {
        self.intervals()
            .iter()
            .map(|i| (self.root + i) % 12)
            .collect()
    }

    /// The triad without its seventh (what chord recognition compares).
    pub fn as_triad(&self) -> Self {
        Self {
            seventh: None,
            ..*self
        }
    }

    /// A name such as `Am` or `G7`.
    pub fn name(&self) -> String {
        let suffix = match (self.quality, self.seventh) {
            (ChordQuality::Major, None) => "",
            (ChordQuality::Minor, None) => "m",
            (ChordQuality::Diminished, _) => "dim",
            (ChordQuality::Augmented, _) => "aug",
            (ChordQuality::Major, Some(11)) => "maj7",
            (ChordQuality::Major, Some(_)) => "7",
            (ChordQuality::Minor, Some(_)) => "m7",
        };
        format!("{}{suffix}", pitch_class_name(self.root))
    }
}

/// Frequency in Hz of a (possibly fractional) MIDI note number, A4 = 69 = 440 Hz.
pub fn midi_to_hz(note: f32) -> f32 {
    440.0 * ((note - 69.0) / 12.0).exp2()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diatonic_chords_of_a_minor_and_c_major() {
        let a_minor = Key {
            tonic: 9,
            mode: Mode::Minor,
        };
        let names: Vec<String> = (0..7)
            .map(|d| a_minor.diatonic_chord(d, false).name())
            .collect();
        assert_eq!(names, ["Am", "Bdim", "C", "Dm", "Em", "F", "G"]);
        let c_major = Key {
            tonic: 0,
            mode: Mode::Major,
        };
        assert_eq!(c_major.diatonic_chord(4, true).name(), "G7");
        assert_eq!(c_major.diatonic_chord(0, true).name(), "Cmaj7");
        assert_eq!(c_major.diatonic_chord(1, true).name(), "Dm7");
        assert_eq!(
            Key {
                tonic: 6,
                mode: Mode::Major
            }
            .name(),
            "F# major"
        );
    }

    #[test]
    fn pitch_is_equal_tempered_from_a440() {
        assert!((midi_to_hz(69.0) - 440.0).abs() < 1e-3);
        assert!((midi_to_hz(60.0) - 261.6256).abs() < 1e-3);
        assert!((midi_to_hz(81.0) - 880.0).abs() < 1e-3);
    }
}
