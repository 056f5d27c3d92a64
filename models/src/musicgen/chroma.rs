//! MusicGen-Melody's melody features, an exact port of transformers 4.47.1
//! `MusicgenMelodyFeatureExtractor` (audiocraft's `ChromaExtractor` without Demucs): the
//! power spectrogram of the 32 kHz mono song (periodic Hann window of 16384, hop 4096,
//! reflect-centred frames), projected on librosa's chroma filter bank, and per frame the
//! one-hot of its strongest pitch class. The spectrogram's normalisation and the per-frame
//! max-norm are positive scalings, so only that argmax matters.

use crate::analysis::spectrum::{for_each_frame, Edges};

/// The extractor's sample rate.
pub const CHROMA_SAMPLE_RATE: u32 = 32_000;
/// Window and FFT length.
pub const CHROMA_N_FFT: usize = 16_384;
/// Samples between frames.
pub const CHROMA_HOP: usize = 4_096;
/// Pitch classes, starting at C.
pub const NUM_CHROMA: usize = 12;
/// The extractor reads at most the song's first 30 s (transformers truncates to them).
pub const CHROMA_MAX_SAMPLES: usize = 30 * CHROMA_SAMPLE_RATE as usize;

/// librosa's `filters.chroma(sr, n_fft, tuning=0, n_chroma)` as transformers'
/// `chroma_filter_bank` computes it (in f64, stored in f32 as the extractor does): for each
/// pitch class, a weight per spectrum bin `0..=n_fft/2`.
pub fn chroma_filter_bank(sample_rate: u32, n_fft: usize, n_chroma: usize) -> Vec<Vec<f32>> {
    let chroma = n_chroma as f64;
    // Bin k >= 1 sits at k * sr / n_fft Hz, in chroma steps above A0 / 16's octave.
    let mut freq_bins: Vec<f64> = (1..n_fft)
        .map(|k| {
            let hz = k as f64 * f64::from(sample_rate) / n_fft as f64;
            chroma * (hz / (440.0 / 16.0)).log2()
        })
        .collect();
    // The 0 Hz bin is made up: 1.5 octaves below bin 1.
    freq_bins.insert(0, freq_bins[0] - 1.5 * chroma);
    let widths: Vec<f64> = freq_bins
        .windows(2)
        .map(|w| (w[1] - w[0]).max(1.0))
        .chain(std::iter::once(1.0))
        .collect();
    let half = (chroma / 2.0).round();
    let mut filters: Vec<Vec<f64>> = (0..n_chroma)
        .map(|c| {
            freq_bins
                .iter()
                .zip(&widths)
                .map(|(&bin, &width)| {
                    // Distance to pitch class c, wrapped into -n/2 .. n/2.
                    let d = (bin - c as f64 + half + 10.0 * chroma).rem_euclid(chroma) - half;
                    (-0.5 * (2.0 * d / width).powi(2)).exp()
                })
                .collect()
        })
        .collect();
    // Each column to unit L2 norm, then the octave weighting (centre 5, half-width 2).
    for (bin, &freq) in freq_bins.iter().enumerate() {
        let norm = filters
            .iter()
            .map(|row| row[bin].powi(2))
            .sum::<f64>()
            .sqrt();
        let weight = (-0.5 * ((freq / chroma - 5.0) / 2.0).powi(2)).exp();
        for row in &mut filters {
            row[bin] = row[bin] / norm * weight;
        }
    }
    // Start at C (roll by -3), keep the non-aliased bins.
    filters.rotate_left(3 * (n_chroma / 12) % n_chroma.max(1));
    filters
        .into_iter()
        .map(|row| row[..=n_fft / 2].iter().map(|&w| w as f32).collect())
        .collect()
}

/// The strongest pitch class (0 = C) of each frame of a 32 kHz mono song, after the
/// extractor's truncation to 30 s and its zero-padding of songs shorter than one window:
/// `1 + len / 4096` frames. A frame without energy is class 0, as in the reference.
pub fn melody_chroma(mono: &[f32]) -> Vec<usize> {
    let filters = chroma_filter_bank(CHROMA_SAMPLE_RATE, CHROMA_N_FFT, NUM_CHROMA);
    let song = &mono[..mono.len().min(CHROMA_MAX_SAMPLES)];
    let padded;
    let song = if song.len() < CHROMA_N_FFT {
        // Symmetric zero padding up to one window (the odd sample on the right).
        let pad = CHROMA_N_FFT - song.len();
        let mut extended = vec![0.0; pad / 2];
        extended.extend_from_slice(song);
        extended.resize(CHROMA_N_FFT, 0.0);
        padded = extended;
        &padded[..]
    } else {
        song
    };
    let mut classes = Vec::with_capacity(song.len() / CHROMA_HOP + 1);
    for_each_frame(
        song,
        CHROMA_N_FFT,
        CHROMA_HOP,
        1.0,
        Edges::Reflect,
        |_, mags| {
            let energy: Vec<f32> = filters
                .iter()
                .map(|row| row.iter().zip(mags).map(|(w, m)| w * m * m).sum())
                .collect();
            classes.push(argmax(&energy));
        },
    );
    classes
}

/// The index of the first largest value (0 for an empty or all-zero slice).
fn argmax(values: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in values.iter().enumerate() {
        if v > values[best] {
            best = i;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tone_lights_its_pitch_class_and_silence_is_class_zero() {
        let rate = CHROMA_SAMPLE_RATE as f32;
        // E4 (329.63 Hz) is pitch class 4; G3 (196 Hz) is 7.
        for (hz, class) in [(329.63f32, 4usize), (196.0, 7)] {
            let tone: Vec<f32> = (0..3 * CHROMA_SAMPLE_RATE as usize)
                .map(|i| 0.5 * (std::f32::consts::TAU * hz * i as f32 / rate).sin())
                .collect();
            let chroma = melody_chroma(&tone);
            assert_eq!(chroma.len(), 1 + tone.len() / CHROMA_HOP);
            assert!(chroma.iter().all(|&c| c == class), "{hz} Hz: {chroma:?}");
        }
        // Shorter than a window: padded to one, 1 + 16384 / 4096 frames.
        assert_eq!(melody_chroma(&vec![0.0; 1000]), vec![0; 5]);
        // Longer than 30 s: only the first 30 s count.
        assert_eq!(melody_chroma(&vec![0.0; 40 * 32_000]).len(), 235);
    }

    #[test]
    fn the_filter_bank_has_a_row_per_class_and_a_column_per_bin() {
        let filters = chroma_filter_bank(CHROMA_SAMPLE_RATE, CHROMA_N_FFT, NUM_CHROMA);
        assert_eq!(filters.len(), 12);
        assert!(filters.iter().all(|row| row.len() == CHROMA_N_FFT / 2 + 1));
        assert!(filters.iter().flatten().all(|w| w.is_finite() && *w >= 0.0));
    }
}
