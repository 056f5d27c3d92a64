//! What each genre sounds like to the composer: tempo range, mode, swing, progressions,
//! drum and bass and comping patterns, and the default ensemble; and how a prompt's
//! understanding resolves into one concrete plan for a seed.

use super::prompt::{Genre, Instrument, Mood, Understanding};
use crate::random::Rng;
use crate::theory::{Key, Mode};

/// How the drums play.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DrumStyle {
    /// No drums (a soft pulse instead).
    None,
    /// Kick on 1 and 3, snare on 2 and 4, eighth hats.
    Backbeat,
    /// Boom-bap: syncopated kick, snare on 2 and 4, swung hats.
    BoomBap,
    /// Kick on every beat, clap on 2 and 4, off-beat open hats.
    FourOnTheFloor,
    /// Dembow: kick on every beat, snare on 3-e and 2-and patterns.
    Dembow,
    /// Half time: snare on 3, rolling sixteenth hats, 808.
    HalfTime,
    /// Syncopated funk with ghost notes.
    Funk,
    /// Swing ride with hats on 2 and 4.
    JazzRide,
    /// Big toms and crashes at section starts.
    Cinematic,
}

/// How the bass plays.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BassStyle {
    /// Root on beat 1, fifth on 3.
    RootFifth,
    /// Driving eighth-note roots.
    Eighths,
    /// Walking quarter notes through chord tones.
    Walking,
    /// Long 808 notes on the kicks.
    Sub808,
    /// Off-beat eighths (house).
    Offbeat,
    /// Syncopated sixteenths (funk).
    Syncopated,
    /// Whole-note roots.
    Sustained,
}

/// How the chord instrument plays.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompStyle {
    /// Held chords, one per chord change.
    Sustained,
    /// Chords on every beat.
    Quarters,
    /// Short chords on the off-beats.
    OffbeatStabs,
    /// Broken chords in eighths.
    Arpeggio,
    /// Jazzy hits on 1 and the and-of-2.
    Syncopated,
    /// Strummed eighths (guitar).
    Strum,
}

/// The fixed traits of a genre.
#[derive(Clone, Copy, Debug)]
pub struct GenreTraits {
    /// Slowest and fastest default tempo.
    pub tempo: (f32, f32),
    /// Default mode.
    pub mode: Mode,
    /// Swing: the fraction of the beat (0.5 = straight) where the off-beat lands.
    pub swing: f32,
    /// Whether sixteenths (rather than eighths) swing.
    pub swing_sixteenths: bool,
    /// Use seventh chords.
    pub sevenths: bool,
    /// Beats each chord lasts.
    pub beats_per_chord: usize,
    /// Drum pattern.
    pub drums: DrumStyle,
    /// Bass pattern.
    pub bass: BassStyle,
    /// Comping pattern.
    pub comp: CompStyle,
    /// Default chord instrument.
    pub chords: Instrument,
    /// Default melody instrument.
    pub lead: Instrument,
    /// A sustained layer under the chords, if any.
    pub layer: Option<Instrument>,
    /// Humanised timing spread in seconds (standard deviation).
    pub humanize_s: f32,
}

/// The genre's traits.
pub fn traits(genre: Genre) -> GenreTraits {
    use BassStyle as B;
    use CompStyle as C;
    use DrumStyle as D;
    use Instrument as I;
    let t = |tempo,
             mode,
             swing,
             sixteenths,
             sevenths,
             bpc,
             drums,
             bass,
             comp,
             chords,
             lead,
             layer,
             humanize| GenreTraits {
        tempo,
        mode,
        swing,
        swing_sixteenths: sixteenths,
        sevenths,
        beats_per_chord: bpc,
        drums,
        bass,
        comp,
        chords,
        lead,
        layer,
        humanize_s: humanize,
    };
    match genre {
        Genre::Lofi => t(
            (72.0, 88.0),
            Mode::Minor,
            0.6,
            true,
            true,
            4,
            D::BoomBap,
            B::RootFifth,
            C::Syncopated,
            I::ElectricPiano,
            I::Piano,
            None,
            0.008,
        ),
        Genre::HipHop => t(
            (84.0, 96.0),
            Mode::Minor,
            0.56,
            true,
            false,
            4,
            D::BoomBap,
            B::RootFifth,
            C::Syncopated,
            I::Piano,
            I::Lead,
            None,
            0.005,
        ),
        Genre::Rock => t(
            (112.0, 140.0),
            Mode::Major,
            0.5,
            false,
            false,
            4,
            D::Backbeat,
            B::Eighths,
            C::Strum,
            I::Guitar,
            I::Lead,
            Some(I::Organ),
            0.004,
        ),
        Genre::Pop => t(
            (100.0, 124.0),
            Mode::Major,
            0.5,
            false,
            false,
            4,
            D::Backbeat,
            B::RootFifth,
            C::Quarters,
            I::Piano,
            I::Lead,
            Some(I::Pad),
            0.003,
        ),
        Genre::Jazz => t(
            (110.0, 150.0),
            Mode::Major,
            0.64,
            false,
            true,
            4,
            D::JazzRide,
            B::Walking,
            C::Syncopated,
            I::Piano,
            I::ElectricPiano,
            None,
            0.006,
        ),
        Genre::Ambient => t(
            (60.0, 76.0),
            Mode::Major,
            0.5,
            false,
            true,
            8,
            D::None,
            B::Sustained,
            C::Arpeggio,
            I::ElectricPiano,
            I::Pad,
            Some(I::Pad),
            0.0,
        ),
        Genre::House => t(
            (120.0, 126.0),
            Mode::Minor,
            0.5,
            false,
            true,
            4,
            D::FourOnTheFloor,
            B::Offbeat,
            C::OffbeatStabs,
            I::Piano,
            I::Lead,
            Some(I::Pad),
            0.0,
        ),
        Genre::Techno => t(
            (126.0, 134.0),
            Mode::Minor,
            0.5,
            false,
            false,
            8,
            D::FourOnTheFloor,
            B::Offbeat,
            C::OffbeatStabs,
            I::Lead,
            I::Lead,
            Some(I::Pad),
            0.0,
        ),
        Genre::Cinematic => t(
            (70.0, 96.0),
            Mode::Minor,
            0.5,
            false,
            false,
            8,
            D::Cinematic,
            B::Sustained,
            C::Arpeggio,
            I::Strings,
            I::Strings,
            Some(I::Pad),
            0.0,
        ),
        Genre::Reggaeton => t(
            (88.0, 98.0),
            Mode::Minor,
            0.5,
            false,
            false,
            4,
            D::Dembow,
            B::Sub808,
            C::OffbeatStabs,
            I::Piano,
            I::Lead,
            Some(I::Pad),
            0.002,
        ),
        Genre::Trap => t(
            (130.0, 150.0),
            Mode::Minor,
            0.5,
            false,
            false,
            8,
            D::HalfTime,
            B::Sub808,
            C::Arpeggio,
            I::Piano,
            I::Lead,
            Some(I::Pad),
            0.0,
        ),
        Genre::Classical => t(
            (72.0, 104.0),
            Mode::Major,
            0.5,
            false,
            false,
            4,
            D::None,
            B::Sustained,
            C::Arpeggio,
            I::Piano,
            I::Strings,
            Some(I::Strings),
            0.006,
        ),
        Genre::Funk => t(
            (96.0, 114.0),
            Mode::Minor,
            0.54,
            true,
            true,
            4,
            D::Funk,
            B::Syncopated,
            C::OffbeatStabs,
            I::ElectricPiano,
            I::Organ,
            None,
            0.004,
        ),
    }
}

/// Chord progressions (0-based scale degrees), chosen from by seed. Every one starts on
/// the tonic so the key is heard; minor keys cadence through a major V elsewhere.
pub fn progressions(genre: Genre, mode: Mode) -> &'static [[usize; 4]] {
    match (genre, mode) {
        (Genre::Jazz | Genre::Lofi, Mode::Major) => &[[0, 5, 1, 4], [0, 3, 1, 4], [0, 5, 3, 4]],
        (Genre::Jazz | Genre::Lofi, Mode::Minor) => &[[0, 3, 6, 2], [0, 5, 3, 4], [0, 3, 4, 0]],
        (Genre::Rock, Mode::Major) => &[[0, 3, 4, 3], [0, 4, 5, 3], [0, 6, 3, 0]],
        (Genre::Rock, Mode::Minor) => &[[0, 6, 5, 6], [0, 5, 2, 6], [0, 3, 6, 4]],
        (Genre::Reggaeton | Genre::Trap | Genre::House | Genre::Techno, Mode::Minor) => {
            &[[0, 5, 2, 6], [0, 3, 5, 4], [0, 5, 6, 4]]
        }
        (Genre::Classical, Mode::Major) => &[[0, 3, 4, 0], [0, 5, 1, 4], [0, 3, 1, 4]],
        (Genre::Classical, Mode::Minor) => &[[0, 3, 4, 0], [0, 5, 3, 4], [0, 3, 6, 2]],
        (_, Mode::Major) => &[[0, 4, 5, 3], [0, 5, 3, 4], [0, 3, 4, 3]],
        (_, Mode::Minor) => &[[0, 5, 2, 6], [0, 3, 4, 0], [0, 5, 3, 4]],
    }
}

/// Everything the composer needs, resolved for one piece.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// The style.
    pub genre: Genre,
    /// The mood, if named.
    pub mood: Option<Mood>,
    /// Tempo in beats per minute.
    pub tempo_bpm: f64,
    /// The key.
    pub key: Key,
    /// The instruments that play (drums included when the style has them).
    pub instruments: Vec<Instrument>,
    /// The chord instrument.
    pub chords: Instrument,
    /// The melody instrument.
    pub lead: Instrument,
}

fn default_genre(mood: Option<Mood>) -> Genre {
    match mood {
        Some(Mood::Sad) => Genre::Lofi,
        Some(Mood::Dark) => Genre::Trap,
        Some(Mood::Calm) => Genre::Ambient,
        Some(Mood::Epic) => Genre::Cinematic,
        Some(Mood::Energetic) => Genre::House,
        Some(Mood::Happy | Mood::Romantic) | None => Genre::Pop,
    }
}

/// Resolves what the prompt left open (genre, tempo, key, instruments) with the seed.
pub fn plan(u: &Understanding, seed: u64) -> Plan {
    let mut rng = Rng::new(seed ^ 0x5151_7e1e);
    let genre = u.genre.unwrap_or_else(|| default_genre(u.mood));
    let t = traits(genre);
    let tempo_bpm = match u.tempo_bpm {
        Some(bpm) => bpm as f64,
        None => {
            let (lo, hi) = t.tempo;
            let scale = match u.mood {
                Some(Mood::Calm | Mood::Sad) => 0.92,
                Some(Mood::Energetic) => 1.08,
                _ => 1.0,
            };
            (((lo + (hi - lo) * rng.uniform() as f32) * scale).round()) as f64
        }
    };
    let key = u.key.unwrap_or_else(|| {
        let mode = match u.mood {
            Some(Mood::Sad | Mood::Dark | Mood::Epic) => Mode::Minor,
            Some(Mood::Happy | Mood::Romantic) => Mode::Major,
            _ => t.mode,
        };
        Key {
            tonic: (rng.next_u64() % 12) as u8,
            mode,
        }
    });
    let named = |i: Instrument| u.instruments.contains(&i);
    // A named harmonic instrument takes the chords; a second one takes the melody.
    let harmonic: Vec<Instrument> = u
        .instruments
        .iter()
        .copied()
        .filter(|i| !matches!(i, Instrument::Drums | Instrument::Bass))
        .collect();
    let chords = harmonic.first().copied().unwrap_or(t.chords);
    let lead = harmonic
        .get(1)
        .copied()
        .unwrap_or(if chords == t.lead { t.chords } else { t.lead });
    let mut instruments = Vec::new();
    if t.drums != DrumStyle::None || named(Instrument::Drums) {
        instruments.push(Instrument::Drums);
    }
    instruments.push(Instrument::Bass);
    for i in [Some(chords), Some(lead), t.layer]
        .into_iter()
        .flatten()
        .chain(harmonic.iter().copied())
    {
        if !instruments.contains(&i) {
            instruments.push(i);
        }
    }
    Plan {
        genre,
        mood: u.mood,
        tempo_bpm,
        key,
        instruments,
        chords,
        lead,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synth::prompt::understand;

    #[test]
    fn explicit_choices_are_kept_and_open_ones_follow_the_seed() {
        let u = understand("sad reggaeton with piano at 94 bpm in A minor");
        let p = plan(&u, 1);
        assert_eq!(p.genre, Genre::Reggaeton);
        assert_eq!(p.tempo_bpm, 94.0);
        assert_eq!(
            p.key,
            Key {
                tonic: 9,
                mode: Mode::Minor
            }
        );
        assert_eq!(p.chords, Instrument::Piano);
        assert!(p.instruments.contains(&Instrument::Drums));
        let open = understand("something nice");
        let tempos: Vec<f64> = (0..8).map(|s| plan(&open, s).tempo_bpm).collect();
        assert!(
            tempos.iter().any(|&t| t != tempos[0]),
            "the seed varies the tempo"
        );
        assert_eq!(plan(&open, 3), plan(&open, 3));
    }

    #[test]
    fn moods_pick_genre_and_mode() {
        assert_eq!(plan(&understand("calm"), 0).genre, Genre::Ambient);
        assert_eq!(plan(&understand("sad"), 0).key.mode, Mode::Minor);
        assert_eq!(plan(&understand("happy house"), 0).key.mode, Mode::Major);
        assert!(!plan(&understand("ambient"), 0)
            .instruments
            .contains(&Instrument::Drums));
    }
}
