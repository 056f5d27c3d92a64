//! Chord of every beat: chroma averaged from each beat to the next, matched against the 24
//! major and minor triads and the maj7, 7 and m7 chords on them (cosine similarity with
//! binary templates, plus a bonus when the bass sounds the root), then smoothed with Viterbi
//! decoding that charges for every change. Results are triads (seventh `None`); diminished
//! and augmented chords come out as the nearest major or minor triad.

use super::spectrum::{chromagram, Chromagram};
use crate::theory::{Chord, ChordQuality};

/// Bonus for a chord whose root is the loudest bass pitch class (scaled by its share).
const BASS_ROOT_BONUS: f32 = 0.25;
/// Score charged for changing chord between two beats.
const CHANGE_PENALTY: f32 = 0.08;

/// The candidates: for every root a major and a minor triad, and the maj7, 7 and m7 chords
/// on them (so a Cmaj7 is not taken for an Em; sevenths are reported as their triads).
fn candidates() -> Vec<Chord> {
    let chord = |root, quality, seventh| Chord {
        root,
        quality,
        seventh,
    };
    (0..12u8)
        .flat_map(|root| {
            [
                chord(root, ChordQuality::Major, None),
                chord(root, ChordQuality::Minor, None),
                chord(root, ChordQuality::Major, Some(11)),
                chord(root, ChordQuality::Major, Some(10)),
                chord(root, ChordQuality::Minor, Some(10)),
            ]
        })
        .collect()
}

/// Fit of one beat's chroma to each candidate triad.
fn emission(full: &[f32; 12], bass: &[f32; 12], chords: &[Chord]) -> Vec<f32> {
    let norm = full.iter().map(|v| v * v).sum::<f32>().sqrt();
    let bass_total = bass.iter().sum::<f32>();
    chords
        .iter()
        .map(|c| {
            let pcs = c.pitch_classes();
            let cosine = if norm > 1e-9 {
                pcs.iter().map(|&pc| full[pc as usize]).sum::<f32>()
                    / (norm * (pcs.len() as f32).sqrt())
            } else {
                0.0
            };
            let bass_share = if bass_total > 1e-9 {
                bass[c.root as usize] / bass_total
            } else {
                0.0
            };
            cosine + BASS_ROOT_BONUS * bass_share
        })
        .collect()
}

/// Most likely chord sequence for per-beat scores (Viterbi, uniform change penalty).
fn viterbi(scores: &[Vec<f32>]) -> Vec<usize> {
    let Some(first) = scores.first() else {
        return vec![];
    };
    let n = first.len();
    let mut total = first.clone();
    let mut back: Vec<Vec<usize>> = Vec::with_capacity(scores.len());
    for s in &scores[1..] {
        let (best_prev, best_val) =
            total.iter().enumerate().fold(
                (0, f32::MIN),
                |acc, (i, &v)| if v > acc.1 { (i, v) } else { acc },
            );
        let mut from = vec![0; n];
        let mut next = vec![0.0; n];
        for c in 0..n {
            let (p, v) = if total[c] >= best_val - CHANGE_PENALTY {
                (c, total[c])
            } else {
                (best_prev, best_val - CHANGE_PENALTY)
            };
            from[c] = p;
            next[c] = v + s[c];
        }
        back.push(from);
        total = next;
    }
    let mut state = total
        .iter()
        .enumerate()
        .fold(
            (0, f32::MIN),
            |acc, (i, &v)| if v > acc.1 { (i, v) } else { acc },
        )
        .0;
    let mut path = vec![state; scores.len()];
    for (i, from) in back.iter().enumerate().rev() {
        state = from[state];
        path[i] = state;
    }
    path
}

/// The span `[start, end)` of beat `i`: to the next beat, or one median beat for the last.
fn beat_span(beats: &[f64], i: usize, end_s: f64) -> (f64, f64) {
    let start = beats[i];
    let end = match beats.get(i + 1) {
        Some(&next) => next,
        None => {
            let mut gaps: Vec<f64> = beats.windows(2).map(|w| w[1] - w[0]).collect();
            gaps.sort_by(f64::total_cmp);
            start + gaps.get(gaps.len() / 2).copied().unwrap_or(0.5)
        }
    };
    (start, end.min(end_s.max(start)))
}

/// The chord of each beat from a precomputed chromagram (`end_s`: length of the audio).
pub fn chords_from_chroma(chroma: &Chromagram, beat_times_s: &[f64], end_s: f64) -> Vec<Chord> {
    let chords = candidates();
    // Frames are ~186 ms long: skip those straddling the beat boundaries where possible.
    let half_window = 2.0 * chroma.hop_s;
    let scores: Vec<Vec<f32>> = (0..beat_times_s.len())
        .map(|i| {
            let (start, end) = beat_span(beat_times_s, i, end_s);
            let trim = half_window.min(0.25 * (end - start).max(0.0));
            let (full, bass) = chroma.sum_between(start + trim, end - trim);
            emission(&full, &bass, &chords)
        })
        .collect();
    viterbi(&scores)
        .into_iter()
        .map(|i| chords[i].as_triad())
        .collect()
}

/// The chord heard from each beat to the next in `mono` (one chord per beat time).
pub fn beat_chords(mono: &[f32], sample_rate: u32, beat_times_s: &[f64]) -> Vec<Chord> {
    let chroma = chromagram(mono, sample_rate);
    chords_from_chroma(
        &chroma,
        beat_times_s,
        mono.len() as f64 / f64::from(sample_rate.max(1)),
    )
}

#[cfg(test)]
mod tests {
    use super::super::test_audio::{Drums, Song};
    use super::*;
    use crate::theory::{Key, Mode};

    #[test]
    fn clean_triads_are_recognised_exactly() {
        let chords = candidates();
        for (i, c) in chords.iter().enumerate() {
            let mut full = [0.0f32; 12];
            for pc in c.pitch_classes() {
                full[pc as usize] = 1.0;
            }
            let mut bass = [0.0f32; 12];
            bass[c.root as usize] = 1.0;
            let s = emission(&full, &bass, &chords);
            let best = (0..chords.len()).max_by(|&a, &b| s[a].total_cmp(&s[b]));
            assert_eq!(best, Some(i), "{}", c.name());
        }
    }

    #[test]
    fn chords_per_beat_of_synthetic_songs() {
        let key = |tonic, mode| Key { tonic, mode };
        let cases = [
            (
                key(0, Mode::Major),
                [0usize, 4, 5, 3],
                Drums::FourOnFloor,
                124.0,
            ),
            (key(9, Mode::Minor), [0, 5, 2, 6], Drums::Backbeat, 84.0),
            (key(4, Mode::Minor), [0, 3, 5, 6], Drums::Trap, 150.0),
            (key(5, Mode::Major), [0, 1, 4, 0], Drums::None, 100.0),
        ];
        for (key, degrees, drums, bpm) in cases {
            let song = Song::new(bpm, key, &degrees, drums);
            let audio = song.render();
            // True beat grid, so this measures chord recognition alone.
            let beats: Vec<f64> = (0..song.bars * 4).map(|b| b as f64 * 60.0 / bpm).collect();
            let found = beat_chords(&audio, song.sample_rate, &beats);
            let right = song.chord_accuracy(&beats, &found);
            eprintln!(
                "{} {drums:?}: {:.1} % of beat chords right",
                key.name(),
                100.0 * right
            );
            assert!(right >= 0.9, "{}: {right}", key.name());
        }
    }
}
