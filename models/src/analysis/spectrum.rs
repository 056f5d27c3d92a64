//! Short-time spectra and the features built on them: spectral peaks, chroma (12 pitch
//! classes, with a separate bass chroma) and the onset-strength envelope (log spectral flux).

use std::sync::Arc;

use realfft::{RealFftPlanner, RealToComplex};

/// Lowest and highest frequency (Hz) that feeds the chroma.
pub const CHROMA_RANGE_HZ: (f32, f32) = (55.0, 5000.0);
/// Upper edge (Hz) of the bass chroma.
pub const BASS_MAX_HZ: f32 = 220.0;
/// RMS level every feature normalises the input to, so results do not depend on gain.
const REFERENCE_RMS: f32 = 0.1;

/// A power of two frame size covering about `seconds` at `sample_rate` (16..=65536).
pub fn frame_size_for(sample_rate: u32, seconds: f64) -> usize {
    let target = (f64::from(sample_rate) * seconds).max(1.0);
    1usize << (target.log2().round().clamp(4.0, 16.0) as u32)
}

/// Gain that brings `mono` to the reference RMS (1 for silence).
pub fn normalising_gain(mono: &[f32]) -> f32 {
    let energy: f64 = mono.iter().map(|&s| f64::from(s) * f64::from(s)).sum();
    let rms = (energy / mono.len().max(1) as f64).sqrt() as f32;
    if rms > 1e-9 && rms.is_finite() {
        REFERENCE_RMS / rms
    } else {
        1.0
    }
}

/// How a frame that reaches past either end of the signal is filled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Edges {
    /// With zeros.
    Zeros,
    /// With the signal mirrored about its end samples (torch's `reflect` padding).
    Reflect,
}

/// Runs a periodic-Hann-windowed STFT over `mono` and calls `visit(frame_index, magnitudes)`
/// for every frame. Frame `t` is centred on sample `t * hop` (the signal is extended at both
/// ends as `edges` says); magnitudes (bins `0..=n_fft/2`) are scaled so that a sine of
/// amplitude `a` peaks near `a * gain`. Spectra are visited one at a time so long inputs need
/// little memory.
pub fn for_each_frame(
    mono: &[f32],
    n_fft: usize,
    hop: usize,
    gain: f32,
    edges: Edges,
    mut visit: impl FnMut(usize, &[f32]),
) {
    let (n_fft, hop) = (n_fft.max(16), hop.max(1));
    let fft: Arc<dyn RealToComplex<f32>> = RealFftPlanner::<f32>::new().plan_fft_forward(n_fft);
    let window: Vec<f32> = (0..n_fft)
        .map(|i| {
            let x = std::f32::consts::PI * i as f32 / n_fft as f32;
            x.sin() * x.sin()
        })
        .collect();
    let scale = gain * 2.0 / window.iter().sum::<f32>();
    let mut input = fft.make_input_vec();
    let mut spectrum = fft.make_output_vec();
    let mut scratch = fft.make_scratch_vec();
    let mut mags = vec![0.0f32; n_fft / 2 + 1];
    let frames = mono.len() / hop + 1;
    for t in 0..frames {
        let start = (t * hop) as isize - (n_fft / 2) as isize;
        for (i, slot) in input.iter_mut().enumerate() {
            let sample = sample_at(mono, start + i as isize, edges);
            *slot = if sample.is_finite() {
                sample * window[i]
            } else {
                0.0
            };
        }
        if fft
            .process_with_scratch(&mut input, &mut spectrum, &mut scratch)
            .is_err()
        {
            continue;
        }
        for (m, c) in mags.iter_mut().zip(&spectrum) {
            *m = c.norm() * scale;
        }
        visit(t, &mags);
    }
}

/// The sample at `index`, which may lie past either end.
fn sample_at(mono: &[f32], index: isize, edges: Edges) -> f32 {
    let len = mono.len() as isize;
    let index = match edges {
        Edges::Zeros => index,
        Edges::Reflect if len > 1 => {
            // Mirror about the end samples until inside (one fold for pads shorter than
            // the signal, as torch requires).
            let period = 2 * (len - 1);
            let folded = index.rem_euclid(period);
            if folded < len {
                folded
            } else {
                period - folded
            }
        }
        Edges::Reflect => 0,
    };
    usize::try_from(index)
        .ok()
        .and_then(|i| mono.get(i))
        .copied()
        .unwrap_or(0.0)
}

/// A spectral peak: interpolated frequency and magnitude.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Peak {
    /// Frequency in Hz.
    pub hz: f32,
    /// Peak magnitude.
    pub magnitude: f32,
}

/// Local maxima of a magnitude spectrum between `min_hz` and `max_hz` that rise above
/// `rel_floor` times the largest magnitude in the frame (and an absolute floor) and stand
/// `min_prominence` times above the mean of the bins around them (±10 bins, the peak's own
/// ±2 excluded), with frequency and magnitude refined by parabolic interpolation on log
/// magnitudes.
pub fn spectral_peaks(
    mags: &[f32],
    sample_rate: u32,
    n_fft: usize,
    (min_hz, max_hz): (f32, f32),
    rel_floor: f32,
    min_prominence: f32,
) -> Vec<Peak> {
    let bin_hz = sample_rate as f32 / n_fft as f32;
    let lo = ((min_hz / bin_hz).floor() as usize).max(1);
    let hi = ((max_hz / bin_hz).ceil() as usize).min(mags.len().saturating_sub(2));
    let top = mags.iter().copied().fold(0.0f32, f32::max);
    let floor = (top * rel_floor).max(1e-5);
    let mut peaks = Vec::new();
    for k in lo..=hi {
        let (a, b, c) = (mags[k - 1], mags[k], mags[k + 1]);
        if b < floor || b < a || b <= c {
            continue;
        }
        // Tonal peaks stand out from their neighbourhood; noise peaks barely do.
        let (n0, n1) = (k.saturating_sub(10), (k + 11).min(mags.len()));
        let around: f32 = mags[n0..n1].iter().sum::<f32>()
            - mags[k.saturating_sub(2)..(k + 3).min(n1)]
                .iter()
                .sum::<f32>();
        if b * ((n1 - n0).saturating_sub(5).max(1) as f32) < min_prominence * around {
            continue;
        }
        let (la, lb, lc) = ((a + 1e-9).ln(), (b + 1e-9).ln(), (c + 1e-9).ln());
        let denom = la - 2.0 * lb + lc;
        let delta = if denom < 0.0 {
            (0.5 * (la - lc) / denom).clamp(-0.5, 0.5)
        } else {
            0.0
        };
        let magnitude = (lb - 0.25 * (la - lc) * delta).exp();
        peaks.push(Peak {
            hz: (k as f32 + delta) * bin_hz,
            magnitude,
        });
    }
    peaks
}

/// Fractional MIDI pitch of a frequency.
pub fn hz_to_midi(hz: f32) -> f32 {
    69.0 + 12.0 * (hz.max(1e-3) / 440.0).log2()
}

/// Chroma frames: energy per pitch class (0 = C), over the whole range and in the bass.
#[derive(Clone, Debug, Default)]
pub struct Chromagram {
    /// Seconds between frames; frame `t` is centred at `t * hop_s`.
    pub hop_s: f64,
    /// Chroma of 55 Hz..5 kHz, weighted towards the middle register.
    pub frames: Vec<[f32; 12]>,
    /// Chroma of 55..220 Hz (roots and bass lines).
    pub bass: Vec<[f32; 12]>,
}

impl Chromagram {
    /// Sum of the frames whose centres fall in `[start_s, end_s)` (the nearest frame if none).
    pub fn sum_between(&self, start_s: f64, end_s: f64) -> ([f32; 12], [f32; 12]) {
        let (mut full, mut bass) = ([0.0f32; 12], [0.0f32; 12]);
        if self.frames.is_empty() || self.hop_s <= 0.0 {
            return (full, bass);
        }
        let last = self.frames.len() - 1;
        let first = ((start_s / self.hop_s).ceil().max(0.0) as usize).min(last);
        let end = ((end_s / self.hop_s).ceil().max(0.0) as usize).clamp(first + 1, last + 1);
        for t in first..end {
            for pc in 0..12 {
                full[pc] += self.frames[t][pc];
                bass[pc] += self.bass[t][pc];
            }
        }
        (full, bass)
    }
}

/// Weight of a peak at fractional MIDI pitch `midi` in the full chroma: a broad bump centred
/// near middle C, so chords and melody count more than sub-bass and cymbals.
fn register_weight(midi: f32) -> f32 {
    let z = (midi - 62.0) / 18.0;
    (-0.5 * z * z).exp()
}

/// Adds `amount` to the pitch class nearest `midi`, fading it out as the peak lies further
/// from the equal-tempered pitch (mistuned partials and leakage count less).
fn add_to_chroma(chroma: &mut [f32; 12], midi: f32, amount: f32) {
    let nearest = midi.round();
    let dev = midi - nearest;
    let fade = (std::f32::consts::PI * dev).cos().powi(2);
    chroma[(nearest as i64).rem_euclid(12) as usize] += amount * fade;
}

/// Chroma of `mono`: frames of ~186 ms every ~46 ms, built from spectral peaks.
pub fn chromagram(mono: &[f32], sample_rate: u32) -> Chromagram {
    let n_fft = frame_size_for(sample_rate, 0.186);
    let hop = n_fft / 4;
    let gain = normalising_gain(mono);
    let mut out = Chromagram {
        hop_s: hop as f64 / f64::from(sample_rate),
        ..Default::default()
    };
    for_each_frame(mono, n_fft, hop, gain, Edges::Zeros, |_, mags| {
        let (mut full, mut bass) = ([0.0f32; 12], [0.0f32; 12]);
        for p in spectral_peaks(mags, sample_rate, n_fft, CHROMA_RANGE_HZ, 0.003, 3.0) {
            let midi = hz_to_midi(p.hz);
            let amount = p.magnitude.sqrt();
            add_to_chroma(&mut full, midi, amount * register_weight(midi));
            if p.hz <= BASS_MAX_HZ {
                add_to_chroma(&mut bass, midi, amount);
            }
        }
        out.frames.push(full);
        out.bass.push(bass);
    });
    out
}

/// Lowest frequency (Hz) of the bands that make up the high-band onset envelope (cymbals).
pub const HIGH_BAND_HZ: f32 = 5000.0;

/// Onset strength sampled at a fixed frame rate.
#[derive(Clone, Debug, Default)]
pub struct OnsetEnvelope {
    /// Frames per second; value `t` describes time `t / frame_rate`.
    pub frame_rate: f64,
    /// Non-negative onset strength per frame, all bands.
    pub values: Vec<f32>,
    /// The same from the bands above [`HIGH_BAND_HZ`] only (hi-hats, shakers); all zero when
    /// the sample rate leaves no such band.
    pub high: Vec<f32>,
}

/// `flux` minus its running mean over ±`half` frames, floored at zero.
fn remove_running_mean(flux: &[f32], half: usize) -> Vec<f32> {
    let prefix: Vec<f64> = std::iter::once(0.0)
        .chain(flux.iter().scan(0.0f64, |acc, &v| {
            *acc += f64::from(v);
            Some(*acc)
        }))
        .collect();
    (0..flux.len())
        .map(|t| {
            let (a, b) = (t.saturating_sub(half), (t + half + 1).min(flux.len()));
            let mean = (prefix[b] - prefix[a]) / (b - a) as f64;
            (flux[t] - mean as f32).max(0.0)
        })
        .collect()
}

/// Onset strength: positive log-magnitude flux summed over ~1/3-octave bands (30 Hz up to
/// 16 kHz, so kicks count as much as cymbals), with its running mean (~0.4 s) removed; and
/// the same over the high bands alone.
pub fn onset_strength(mono: &[f32], sample_rate: u32) -> OnsetEnvelope {
    let n_fft = frame_size_for(sample_rate, 0.04);
    let hop = frame_size_for(sample_rate, 0.005).min(n_fft / 2);
    let bin_hz = sample_rate as f32 / n_fft as f32;
    let top_hz = (sample_rate as f32 * 0.45).min(16_000.0);
    let mut edges = vec![];
    let mut f = 30.0f32;
    while f < top_hz {
        edges.push(((f / bin_hz).round() as usize).max(1));
        f *= 2f32.powf(1.0 / 3.0);
    }
    edges.push((top_hz / bin_hz) as usize);
    edges.dedup();
    let bands = edges.len().saturating_sub(1);
    let first_high = edges
        .iter()
        .position(|&e| e as f32 * bin_hz >= HIGH_BAND_HZ)
        .unwrap_or(bands);
    let lag = 2;
    let mut history: Vec<Vec<f32>> = Vec::new();
    let (mut flux, mut flux_high) = (Vec::new(), Vec::new());
    let gain = normalising_gain(mono);
    for_each_frame(mono, n_fft, hop, gain, Edges::Zeros, |_, mags| {
        let levels: Vec<f32> = (0..bands)
            .map(|b| {
                let bins = &mags[edges[b].min(mags.len())..edges[b + 1].min(mags.len())];
                let energy: f32 = bins.iter().map(|m| m * m).sum();
                (1.0 + 1000.0 * (energy / bins.len().max(1) as f32).sqrt()).ln()
            })
            .collect();
        let rise: Vec<f32> = match history.len().checked_sub(lag).and_then(|i| history.get(i)) {
            Some(prev) => levels
                .iter()
                .zip(prev)
                .map(|(l, p)| (l - p).max(0.0))
                .collect(),
            None => vec![0.0; bands],
        };
        flux.push(rise.iter().sum());
        flux_high.push(rise[first_high.min(bands)..].iter().sum());
        history.push(levels);
        if history.len() > lag {
            history.remove(0);
        }
    });
    let frame_rate = f64::from(sample_rate) / hop as f64;
    let half = (0.2 * frame_rate) as usize;
    OnsetEnvelope {
        frame_rate,
        values: remove_running_mean(&flux, half),
        high: remove_running_mean(&flux_high, half),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sine(hz: f32, sr: u32, seconds: f32) -> Vec<f32> {
        let n = (sr as f32 * seconds) as usize;
        (0..n)
            .map(|i| 0.5 * (std::f32::consts::TAU * hz * i as f32 / sr as f32).sin())
            .collect()
    }

    #[test]
    fn peaks_find_a_sine_to_within_a_few_cents() {
        let sr = 22_050;
        let n_fft = 2048;
        let x = sine(440.0, sr, 0.5);
        let mut found = vec![];
        for_each_frame(&x, n_fft, 1024, 1.0, Edges::Zeros, |t, mags| {
            if t == 4 {
                found = spectral_peaks(mags, sr, n_fft, (100.0, 2000.0), 0.1, 3.0);
            }
        });
        assert_eq!(found.len(), 1, "{found:?}");
        assert!((hz_to_midi(found[0].hz) - 69.0).abs() < 0.05, "{found:?}");
        assert!((found[0].magnitude - 0.5).abs() < 0.03, "{found:?}");
    }

    #[test]
    fn chroma_of_an_a_is_a() {
        let c = chromagram(&sine(220.0, 16_000, 1.0), 16_000);
        let mid = c.frames[c.frames.len() / 2];
        let best = (0..12).max_by(|&a, &b| mid[a].total_cmp(&mid[b]));
        assert_eq!(best, Some(9));
        assert!(c.bass[c.frames.len() / 2].iter().all(|&v| v == 0.0));
    }

    #[test]
    fn onsets_peak_at_clicks() {
        let sr = 16_000;
        let mut x = vec![0.0f32; sr as usize * 2];
        for k in 0..4 {
            let at = (0.3 + 0.5 * k as f32) * sr as f32;
            for i in 0..200 {
                x[at as usize + i] =
                    0.8 * (1.0 - i as f32 / 200.0) * if i % 2 == 0 { 1.0 } else { -1.0 };
            }
        }
        let env = onset_strength(&x, sr);
        let best = (0..env.values.len()).max_by(|&a, &b| env.values[a].total_cmp(&env.values[b]));
        let t = best.map_or(0.0, |b| b as f64 / env.frame_rate);
        assert!(
            [0.3, 0.8, 1.3, 1.8].iter().any(|c| (t - c).abs() < 0.03),
            "{t}"
        );
    }
}
