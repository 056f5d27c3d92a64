//! Main melody: the predominant pitch of every frame by harmonic summation over spectral
//! peaks (fundamentals from 196 Hz to 1.5 kHz, slightly favouring higher voices), voiced
//! when its salience is high enough, quantised to semitones, segmented into notes (frames
//! of equal pitch merged, notes under 80 ms dropped) and snapped to sixteenths of the beat.

use super::spectrum::{
    for_each_frame, frame_size_for, hz_to_midi, normalising_gain, spectral_peaks, Edges,
};

/// Lowest and highest melody pitch considered (MIDI: G3 to F#6).
pub const MELODY_RANGE: (f32, f32) = (55.0, 90.0);
/// Shortest note kept, in seconds.
pub const MIN_NOTE_S: f64 = 0.08;
/// Candidate pitch resolution: bins per semitone.
const BINS_PER_SEMITONE: f32 = 10.0;
/// Harmonics summed per candidate and the weight decay per harmonic.
const HARMONICS: usize = 8;
const HARMONIC_DECAY: f32 = 0.8;
/// A frame is voiced when its salience reaches this share of the loud (90th percentile)
/// frames' salience nearby.
const VOICING: f32 = 0.6;

/// One note of the melody.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MelodyNote {
    /// Onset in seconds (snapped to the nearest sixteenth of the beat grid).
    pub start_s: f64,
    /// Length in seconds.
    pub duration_s: f64,
    /// MIDI pitch (a whole number of semitones).
    pub pitch: f32,
}

/// The predominant pitch of every frame.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PitchTrack {
    /// Seconds between frames; frame `t` is centred at `t * hop_s`.
    pub hop_s: f64,
    /// Fractional MIDI pitch per frame, `None` where unvoiced.
    pub pitch: Vec<Option<f32>>,
    /// Harmonic-sum salience of the chosen pitch per frame.
    pub salience: Vec<f32>,
}

/// The predominant pitch of every frame of `mono` (~93 ms frames every ~10 ms). A frame is
/// voiced when its salience reaches `VOICING` of the loud frames within a few seconds.
pub fn pitch_track(mono: &[f32], sample_rate: u32) -> PitchTrack {
    let n_fft = frame_size_for(sample_rate, 0.093);
    let hop = frame_size_for(sample_rate, 0.01);
    let bins = ((MELODY_RANGE.1 - MELODY_RANGE.0) * BINS_PER_SEMITONE) as usize + 1;
    let top_hz = (sample_rate as f32 * 0.45).min(12_000.0);
    let mut best: Vec<(f32, f32)> = Vec::new();
    let mut salience = vec![0.0f32; bins];
    for_each_frame(
        mono,
        n_fft,
        hop,
        normalising_gain(mono),
        Edges::Zeros,
        |_, mags| {
            salience.iter_mut().for_each(|s| *s = 0.0);
            for p in spectral_peaks(mags, sample_rate, n_fft, (150.0, top_hz), 0.01, 4.0) {
                let weight = p.magnitude.sqrt();
                for h in 1..=HARMONICS {
                    let f0 = hz_to_midi(p.hz / h as f32);
                    let centre = (f0 - MELODY_RANGE.0) * BINS_PER_SEMITONE;
                    let gain = weight * HARMONIC_DECAY.powi(h as i32 - 1);
                    let lo = (centre - BINS_PER_SEMITONE / 2.0).ceil().max(0.0) as usize;
                    let hi = (centre + BINS_PER_SEMITONE / 2.0)
                        .floor()
                        .min(bins as f32 - 1.0);
                    if hi < 0.0 {
                        continue;
                    }
                    for (b, slot) in salience
                        .iter_mut()
                        .enumerate()
                        .take(hi as usize + 1)
                        .skip(lo)
                    {
                        let dev = (b as f32 - centre) / BINS_PER_SEMITONE;
                        *slot += gain * (std::f32::consts::PI * dev).cos().powi(2);
                    }
                }
            }
            let (mut arg, mut val) = (0usize, 0.0f32);
            for (b, &s) in salience.iter().enumerate() {
                // Slight preference for higher voices: +1 % per semitone.
                let s = s * (1.0 + 0.01 * b as f32 / BINS_PER_SEMITONE);
                if s > val {
                    (arg, val) = (b, s);
                }
            }
            best.push((MELODY_RANGE.0 + arg as f32 / BINS_PER_SEMITONE, val));
        },
    );
    let hop_s = hop as f64 / f64::from(sample_rate);
    // Loudness reference: 90th percentile of the salience per ~1 s block, maxed over ±2 blocks.
    let block = ((1.0 / hop_s) as usize).max(1);
    let p90: Vec<f32> = best
        .chunks(block)
        .map(|c| {
            let mut v: Vec<f32> = c.iter().map(|b| b.1).collect();
            v.sort_by(f32::total_cmp);
            v[v.len() * 9 / 10]
        })
        .collect();
    let pitch = (0..best.len())
        .map(|t| {
            let b = t / block;
            let reference = p90[b.saturating_sub(2)..(b + 3).min(p90.len())]
                .iter()
                .copied()
                .fold(0.0, f32::max);
            (reference > 1e-6 && best[t].1 >= VOICING * reference).then_some(best[t].0)
        })
        .collect();
    PitchTrack {
        hop_s,
        pitch,
        salience: best.iter().map(|b| b.1).collect(),
    }
}

/// The nearest sixteenth-note position of the beat grid to `t` (the grid is extended past
/// its ends with the median beat length). Returns `t` when there is no grid.
fn snap_to_sixteenth(t: f64, beats: &[f64]) -> f64 {
    let (Some(&first), Some(&last)) = (beats.first(), beats.last()) else {
        return t;
    };
    let mut gaps: Vec<f64> = beats.windows(2).map(|w| w[1] - w[0]).collect();
    gaps.sort_by(f64::total_cmp);
    let Some(&beat) = gaps.get(gaps.len() / 2) else {
        return t;
    };
    if beat <= 0.0 {
        return t;
    }
    let (origin, len) = if t < first {
        (first - beat * ((first - t) / beat).ceil(), beat)
    } else if t >= last {
        (last, beat)
    } else {
        let i = beats.partition_point(|&b| b <= t).saturating_sub(1);
        (beats[i], beats.get(i + 1).map_or(beat, |n| n - beats[i]))
    };
    origin + ((t - origin) / (len / 4.0)).round() * len / 4.0
}

/// Turns a pitch track into notes: runs of one semitone (gaps under 30 ms bridged), split
/// where the salience dips (a re-attack of the same pitch), notes under [`MIN_NOTE_S`]
/// dropped.
fn segment(track: &PitchTrack) -> Vec<MelodyNote> {
    let hop_s = track.hop_s;
    // Majority vote over ±2 frames removes single-frame blips.
    let quantised: Vec<Option<i32>> = track
        .pitch
        .iter()
        .map(|p| p.map(|m| m.round() as i32))
        .collect();
    let smooth: Vec<Option<i32>> = (0..quantised.len())
        .map(|i| {
            let window = &quantised[i.saturating_sub(2)..(i + 3).min(quantised.len())];
            let count = |v: Option<i32>| window.iter().filter(|&&w| w == v).count();
            window.iter().copied().max_by_key(|&v| count(v)).flatten()
        })
        .collect();
    let bridge = (0.03 / hop_s).ceil() as usize;
    let reach = (0.15 / hop_s).ceil() as usize;
    let sal = &track.salience;
    let dip = |i: usize| {
        let before = sal[i.saturating_sub(reach)..i]
            .iter()
            .copied()
            .fold(0.0, f32::max);
        let after = sal[(i + 1).min(sal.len())..(i + 1 + reach).min(sal.len())]
            .iter()
            .copied()
            .fold(0.0, f32::max);
        let local_min = i > 0 && i + 1 < sal.len() && sal[i] <= sal[i - 1] && sal[i] < sal[i + 1];
        local_min && sal[i] < 0.75 * before.min(after)
    };
    let mut notes: Vec<(usize, usize, i32)> = vec![];
    for (i, p) in smooth.iter().enumerate() {
        let Some(p) = *p else { continue };
        match notes.last_mut() {
            Some(last) if last.2 == p && i <= last.1 + bridge && !dip(i) => last.1 = i + 1,
            _ => notes.push((i, i + 1, p)),
        }
    }
    notes
        .into_iter()
        .map(|(a, b, p)| MelodyNote {
            start_s: a as f64 * hop_s,
            duration_s: (b - a) as f64 * hop_s,
            pitch: p as f32,
        })
        .filter(|n| n.duration_s >= MIN_NOTE_S)
        .collect()
}

/// Extracts the main melody of `mono` as notes whose starts are snapped to sixteenths of
/// `beat_times_s` (left unsnapped when fewer than two beats are given).
pub fn extract_melody(mono: &[f32], sample_rate: u32, beat_times_s: &[f64]) -> Vec<MelodyNote> {
    let mut notes = segment(&pitch_track(mono, sample_rate));
    for n in &mut notes {
        let end = n.start_s + n.duration_s;
        n.start_s = snap_to_sixteenth(n.start_s, beat_times_s).max(0.0);
        n.duration_s = end - n.start_s;
    }
    for i in 1..notes.len() {
        let start = notes[i].start_s;
        let prev = &mut notes[i - 1];
        if prev.start_s + prev.duration_s > start {
            prev.duration_s = start - prev.start_s;
        }
    }
    notes.retain(|n| n.duration_s >= MIN_NOTE_S / 2.0);
    notes
}

#[cfg(test)]
mod tests {
    use super::super::test_audio::{Drums, Song};
    use super::*;
    use crate::theory::{Key, Mode};

    #[test]
    fn snapping_uses_the_local_beat() {
        let beats = [1.0, 1.5, 2.0, 2.6];
        assert!((snap_to_sixteenth(1.13, &beats) - 1.125).abs() < 1e-9);
        assert!((snap_to_sixteenth(2.31, &beats) - 2.3).abs() < 1e-9);
        assert!((snap_to_sixteenth(0.74, &beats) - 0.75).abs() < 1e-9);
        assert!((snap_to_sixteenth(3.0, &beats) - 2.975).abs() < 1e-9);
        assert_eq!(snap_to_sixteenth(0.3, &[]), 0.3);
    }

    #[test]
    fn melody_of_synthetic_songs() {
        for (bpm, drums) in [
            (96.0, Drums::Backbeat),
            (128.0, Drums::FourOnFloor),
            (140.0, Drums::Trap),
        ] {
            let key = Key {
                tonic: 7,
                mode: Mode::Major,
            };
            let song = Song::new(bpm, key, &[0, 4, 5, 3], drums);
            let beats: Vec<f64> = (0..song.bars * 4).map(|b| b as f64 * 60.0 / bpm).collect();
            let notes = extract_melody(&song.render(), song.sample_rate, &beats);
            let (precision, recall) = song.melody_accuracy(&notes);
            eprintln!(
                "{drums:?}: {} notes, pitch right {precision:.3}, melody found {recall:.3}",
                notes.len()
            );
            assert!(
                precision >= 0.85 && recall >= 0.75,
                "{drums:?}: {precision} {recall}"
            );
        }
    }
}
