//! Key finding: correlation of a chroma profile with the Krumhansl–Kessler major and minor
//! key profiles rotated to all 12 tonics; the best few keys are then weighed with the song's
//! chords (tonic triad share, diatonic share, tonic at the ends), which tells relative keys
//! (C major / A minor) and keys a fifth apart apart. Weights fitted on the built-in synth.

use super::chords::chords_from_chroma;
use super::spectrum::{chromagram, Chromagram};
use super::tempo::estimate_tempo;
use crate::theory::{Chord, ChordQuality, Key, Mode};

/// Krumhansl–Kessler probe-tone ratings for a major key, tonic first.
const MAJOR_PROFILE: [f32; 12] = [
    6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88,
];
/// Krumhansl–Kessler probe-tone ratings for a minor key, tonic first.
const MINOR_PROFILE: [f32; 12] = [
    6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17,
];
/// Weight of the bass chroma relative to the full chroma in [`key_of_chroma`].
const BASS_WEIGHT: f32 = 0.5;
/// Keys whose profile correlation is this close to the best are weighed with the chords.
const CANDIDATE_MARGIN: f32 = 0.4;
/// Weights of the chord evidence: tonic triad share, diatonic share, tonic at either end.
const TONIC_WEIGHT: f32 = 0.5;
const DIATONIC_WEIGHT: f32 = 2.0;
const EDGE_WEIGHT: f32 = 0.1;

/// Pearson correlation of two 12-vectors (0 when either is flat).
fn correlation(a: &[f32; 12], b: &[f32; 12]) -> f32 {
    let (ma, mb) = (a.iter().sum::<f32>() / 12.0, b.iter().sum::<f32>() / 12.0);
    let (mut ab, mut aa, mut bb) = (0.0, 0.0, 0.0);
    for i in 0..12 {
        let (x, y) = (a[i] - ma, b[i] - mb);
        ab += x * y;
        aa += x * x;
        bb += y * y;
    }
    if aa <= 1e-12 || bb <= 1e-12 {
        0.0
    } else {
        ab / (aa * bb).sqrt()
    }
}

/// Correlation of `chroma_sum` with each of the 24 keys (C major, C minor, C# major, …).
pub fn key_scores(chroma_sum: &[f32; 12]) -> Vec<(Key, f32)> {
    let mut out = Vec::with_capacity(24);
    for tonic in 0..12u8 {
        for (mode, profile) in [(Mode::Major, &MAJOR_PROFILE), (Mode::Minor, &MINOR_PROFILE)] {
            let rotated: [f32; 12] =
                std::array::from_fn(|pc| profile[(pc + 12 - tonic as usize) % 12]);
            out.push((Key { tonic, mode }, correlation(chroma_sum, &rotated)));
        }
    }
    out
}

/// The best-correlating key for a chroma profile summed over a song (C major when flat).
pub fn estimate_key(chroma_sum: &[f32; 12]) -> Key {
    let mut best = (
        Key {
            tonic: 0,
            mode: Mode::Major,
        },
        0.0f32,
    );
    for (key, score) in key_scores(chroma_sum) {
        if score > best.1 {
            best = (key, score);
        }
    }
    best.0
}

/// The summed chroma of a song: full chroma plus a share of the bass chroma (the tonic is
/// often in the bass), each normalised to unit total.
pub fn chroma_profile(chroma: &Chromagram) -> [f32; 12] {
    let mut full = [0.0f32; 12];
    let mut bass = [0.0f32; 12];
    for (f, b) in chroma.frames.iter().zip(&chroma.bass) {
        for pc in 0..12 {
            full[pc] += f[pc];
            bass[pc] += b[pc];
        }
    }
    let (tf, tb) = (
        full.iter().sum::<f32>().max(1e-9),
        bass.iter().sum::<f32>().max(1e-9),
    );
    std::array::from_fn(|pc| full[pc] / tf + BASS_WEIGHT * bass[pc] / tb)
}

/// The key of a chromagram (see [`chroma_profile`] and [`estimate_key`]).
pub fn key_of_chroma(chroma: &Chromagram) -> Key {
    estimate_key(&chroma_profile(chroma))
}

/// The key of a recording, or `None` when it has no pitched content: the chroma profile's
/// best keys weighed with the chords of its beats (see [`key_with_chords`]).
pub fn key_of_audio(mono: &[f32], sample_rate: u32) -> Option<Key> {
    let chroma = chromagram(mono, sample_rate);
    let profile = chroma_profile(&chroma);
    if profile.iter().sum::<f32>() <= 1e-6 {
        return None;
    }
    let seconds = mono.len() as f64 / f64::from(sample_rate.max(1));
    let chords = estimate_tempo(mono, sample_rate)
        .map(|t| chords_from_chroma(&chroma, &t.beat_times_s, seconds))
        .unwrap_or_default();
    Some(key_with_chords(&profile, &chords))
}

/// The tonic triad of a key.
fn tonic_triad(key: Key) -> Chord {
    let quality = match key.mode {
        Mode::Major => ChordQuality::Major,
        Mode::Minor => ChordQuality::Minor,
    };
    Chord::triad(key.tonic, quality)
}

/// How strongly a chord sequence points at `key`: the share of its tonic triad, the share
/// of chords diatonic to it (the major V counts in minor), and whether the tonic opens and
/// closes the sequence.
fn chord_evidence(key: Key, chords: &[Chord]) -> f32 {
    if chords.is_empty() {
        return 0.0;
    }
    let tonic = tonic_triad(key);
    let mut diatonic: Vec<Chord> = (0..7).map(|d| key.diatonic_chord(d, false)).collect();
    if key.mode == Mode::Minor {
        diatonic.push(Chord::triad(key.tonic + 7, ChordQuality::Major));
    }
    let share = |f: &dyn Fn(&Chord) -> bool| {
        chords.iter().filter(|c| f(c)).count() as f32 / chords.len() as f32
    };
    let edges = [chords.first(), chords.last()]
        .iter()
        .filter(|c| c.map(Chord::as_triad) == Some(tonic))
        .count();
    TONIC_WEIGHT * share(&|c| c.as_triad() == tonic)
        + DIATONIC_WEIGHT * share(&|c| diatonic.contains(&c.as_triad()))
        + EDGE_WEIGHT * edges as f32
}

/// The key from a chroma profile and the song's chords: among the keys whose profile
/// correlation is within `CANDIDATE_MARGIN` of the best, the one with the highest
/// correlation plus chord evidence (this separates relative keys, C major from A minor, and
/// neighbours a fifth apart, which profiles alone confuse). Chroma alone without chords.
pub fn key_with_chords(profile: &[f32; 12], chords: &[Chord]) -> Key {
    let scores = key_scores(profile);
    let top = scores.iter().map(|s| s.1).fold(f32::MIN, f32::max);
    let mut best = (estimate_key(profile), f32::MIN);
    for (key, corr) in scores {
        if corr >= top - CANDIDATE_MARGIN && corr > 0.0 {
            let total = corr + chord_evidence(key, chords);
            if total > best.1 {
                best = (key, total);
            }
        }
    }
    best.0
}

#[cfg(test)]
mod tests {
    use super::super::test_audio::{Drums, Song};
    use super::*;

    #[test]
    fn profiles_find_their_own_key() {
        for tonic in 0..12u8 {
            let major: [f32; 12] =
                std::array::from_fn(|pc| MAJOR_PROFILE[(pc + 12 - tonic as usize) % 12]);
            assert_eq!(
                estimate_key(&major),
                Key {
                    tonic,
                    mode: Mode::Major
                }
            );
            let minor: [f32; 12] =
                std::array::from_fn(|pc| MINOR_PROFILE[(pc + 12 - tonic as usize) % 12]);
            assert_eq!(
                estimate_key(&minor),
                Key {
                    tonic,
                    mode: Mode::Minor
                }
            );
        }
        assert_eq!(
            estimate_key(&[0.0; 12]),
            Key {
                tonic: 0,
                mode: Mode::Major
            }
        );
    }

    #[test]
    fn keys_of_synthetic_songs() {
        let key = |tonic, mode| Key { tonic, mode };
        let cases = [
            (key(0, Mode::Major), [0usize, 4, 5, 3], Drums::FourOnFloor),
            (key(9, Mode::Minor), [0, 5, 2, 6], Drums::Backbeat),
            (key(7, Mode::Major), [0, 3, 4, 0], Drums::None),
            (key(2, Mode::Minor), [0, 3, 4, 0], Drums::Trap),
            (key(6, Mode::Minor), [0, 5, 6, 0], Drums::Dembow),
            (key(10, Mode::Major), [0, 5, 1, 4], Drums::Swung),
        ];
        for (key, degrees, drums) in cases {
            let song = Song::new(100.0, key, &degrees, drums);
            let found = key_of_audio(&song.render(), song.sample_rate);
            assert_eq!(found, Some(key), "{} with {drums:?}", key.name());
        }
        assert_eq!(key_of_audio(&[0.0; 64_000], 16_000), None);
    }

    #[test]
    fn chords_decide_between_relative_keys() {
        // A profile that fits C major and A minor about equally.
        let profile = [1.0, 0.0, 0.8, 0.0, 1.0, 0.8, 0.0, 0.9, 0.0, 1.0, 0.0, 0.6];
        let am = Chord::triad(9, ChordQuality::Minor);
        let (f, g) = (
            Chord::triad(5, ChordQuality::Major),
            Chord::triad(7, ChordQuality::Major),
        );
        let minor = key_with_chords(&profile, &[am, f, g, am, am, f, g, am]);
        assert_eq!(
            minor,
            Key {
                tonic: 9,
                mode: Mode::Minor
            }
        );
        let c = Chord::triad(0, ChordQuality::Major);
        let major = key_with_chords(&profile, &[c, f, g, c, c, am, g, c]);
        assert_eq!(
            major,
            Key {
                tonic: 0,
                mode: Mode::Major
            }
        );
    }
}
