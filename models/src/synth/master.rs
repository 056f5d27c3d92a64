//! Mastering: bring a stereo mix to a target integrated loudness (ITU-R BS.1770 / EBU R128,
//! measured with `ebur128`) with its true peak under a ceiling, by gain and an offline
//! look-ahead limiter driven by a 4x-oversampled peak estimate.

use ebur128::{EbuR128, Mode};

/// Loudness figures of a stereo signal.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Loudness {
    /// Integrated loudness in LUFS (-inf for silence).
    pub integrated_lufs: f64,
    /// Highest true peak over both channels, in dBTP.
    pub true_peak_dbtp: f64,
    /// Highest absolute sample value.
    pub sample_peak: f32,
}

/// Errors of loudness measurement (only for invalid rates or channel layouts).
#[derive(Debug, thiserror::Error)]
#[error("loudness measurement failed: {0}")]
pub struct MasterError(String);

fn meter(channels: &[Vec<f32>], sample_rate: u32, mode: Mode) -> Result<EbuR128, MasterError> {
    let err = |e: ebur128::Error| MasterError(e.to_string());
    let mut meter = EbuR128::new(channels.len() as u32, sample_rate, mode).map_err(err)?;
    let planar: Vec<&[f32]> = channels.iter().map(Vec::as_slice).collect();
    meter.add_frames_planar_f32(&planar).map_err(err)?;
    Ok(meter)
}

/// Integrated loudness alone (much cheaper than with the true peak).
fn integrated(channels: &[Vec<f32>], sample_rate: u32) -> Result<f64, MasterError> {
    meter(channels, sample_rate, Mode::I)?
        .loudness_global()
        .map_err(|e| MasterError(e.to_string()))
}

/// Measures integrated loudness and true peak.
pub fn measure(channels: &[Vec<f32>], sample_rate: u32) -> Result<Loudness, MasterError> {
    let err = |e: ebur128::Error| MasterError(e.to_string());
    let meter = meter(channels, sample_rate, Mode::I | Mode::TRUE_PEAK)?;
    let mut true_peak = 0.0f64;
    for c in 0..channels.len() {
        true_peak = true_peak.max(meter.true_peak(c as u32).map_err(err)?);
    }
    let sample_peak = channels
        .iter()
        .flatten()
        .fold(0.0f32, |m, &x| m.max(x.abs()));
    Ok(Loudness {
        integrated_lufs: meter.loudness_global().map_err(err)?,
        true_peak_dbtp: 20.0 * true_peak.max(1e-12).log10(),
        sample_peak,
    })
}

/// What mastering aims for.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MasterTarget {
    /// Integrated loudness, LUFS (streaming services normalise to -14).
    pub lufs: f64,
    /// True-peak ceiling, dBTP.
    pub ceiling_dbtp: f64,
}

impl Default for MasterTarget {
    fn default() -> Self {
        Self {
            lufs: -14.0,
            ceiling_dbtp: -1.0,
        }
    }
}

/// Half-length of the 4x interpolation filter, in input samples.
const TAPS_HALF: usize = 8;

/// Windowed-sinc coefficients of the three in-between phases of a 4x interpolator.
fn interpolation_phases() -> [[f32; 2 * TAPS_HALF]; 3] {
    let mut phases = [[0.0f32; 2 * TAPS_HALF]; 3];
    for (p, phase) in phases.iter_mut().enumerate() {
        let frac = (p + 1) as f64 / 4.0;
        for (k, c) in phase.iter_mut().enumerate() {
            let x = k as f64 - (TAPS_HALF as f64 - 1.0) - frac;
            let sinc = if x == 0.0 {
                1.0
            } else {
                (std::f64::consts::PI * x).sin() / (std::f64::consts::PI * x)
            };
            let w = 0.5 + 0.5 * (std::f64::consts::PI * x / (TAPS_HALF as f64 + 1.0)).cos();
            *c = (sinc * w) as f32;
        }
    }
    phases
}

/// Per-sample estimate of the true peak: the largest magnitude among the sample and the
/// three interpolated points after it, over both channels.
fn peak_envelope(channels: &[Vec<f32>]) -> Vec<f32> {
    let n = channels.first().map_or(0, Vec::len);
    let phases = interpolation_phases();
    let mut env = vec![0.0f32; n];
    for ch in channels {
        for i in 0..n {
            let mut peak = ch[i].abs();
            if i + TAPS_HALF < n && i + 1 >= TAPS_HALF {
                let window = &ch[i + 1 - TAPS_HALF..i + 1 + TAPS_HALF];
                for phase in &phases {
                    let y: f32 = window.iter().zip(phase).map(|(a, b)| a * b).sum();
                    peak = peak.max(y.abs());
                }
            }
            env[i] = env[i].max(peak);
        }
    }
    env
}

/// Applies an offline look-ahead limiter so no estimated peak exceeds `ceiling` (linear).
fn limit(channels: &mut [Vec<f32>], ceiling: f32, sample_rate: u32) {
    let env = peak_envelope(channels);
    let n = env.len();
    let reach = (sample_rate as f32 * 0.002) as usize + 1; // 2 ms look-ahead/attack
    let release = (-1.0 / (sample_rate as f32 * 0.08)).exp(); // 80 ms release
    let needed: Vec<f32> = env
        .iter()
        .map(|&p| if p > ceiling { ceiling / p } else { 1.0 })
        .collect();
    // Minimum over a window centred on each sample, so the gain is already down when a
    // peak arrives, then a smooth recovery.
    let mut gain = vec![1.0f32; n];
    let mut deque: std::collections::VecDeque<usize> = std::collections::VecDeque::new();
    for i in 0..n + reach {
        if i < n {
            while deque.back().is_some_and(|&j| needed[j] >= needed[i]) {
                deque.pop_back();
            }
            deque.push_back(i);
        }
        if i >= reach {
            let centre = i - reach;
            while deque.front().is_some_and(|&j| j + 2 * reach < i) {
                deque.pop_front();
            }
            if let Some(&j) = deque.front() {
                gain[centre] = needed[j];
            }
        }
    }
    let mut smoothed = 1.0f32;
    for g in gain.iter_mut() {
        smoothed = if *g < smoothed {
            *g
        } else {
            *g + (smoothed - *g) * release
        };
        *g = smoothed;
    }
    for ch in channels.iter_mut() {
        for (x, g) in ch.iter_mut().zip(&gain) {
            *x *= g;
        }
    }
}

fn scale(channels: &mut [Vec<f32>], gain_db: f64) {
    let g = 10f64.powf(gain_db / 20.0) as f32;
    for x in channels.iter_mut().flatten() {
        *x *= g;
    }
}

/// Masters `channels` in place to the target and returns the final measurement. Silence is
/// left as it is.
pub fn master(
    channels: &mut [Vec<f32>],
    sample_rate: u32,
    target: MasterTarget,
) -> Result<Loudness, MasterError> {
    let mut lufs = integrated(channels, sample_rate)?;
    if !lufs.is_finite() {
        return measure(channels, sample_rate);
    }
    // Our peak estimate and the meter's oversampling differ, so the limiter aims a little
    // under the ceiling, and lower again if the meter still reads above it.
    let mut ceiling_db = target.ceiling_dbtp - 0.3;
    for _ in 0..4 {
        let ceiling = 10f64.powf(ceiling_db / 20.0) as f32;
        // Limiting lowers the loudness a little, so gain and limit until it holds.
        for _ in 0..10 {
            scale(channels, target.lufs - lufs);
            limit(channels, ceiling, sample_rate);
            lufs = integrated(channels, sample_rate)?;
            if (lufs - target.lufs).abs() < 0.1 {
                break;
            }
        }
        let measured = measure(channels, sample_rate)?;
        if measured.true_peak_dbtp <= target.ceiling_dbtp {
            return Ok(measured);
        }
        ceiling_db -= measured.true_peak_dbtp - target.ceiling_dbtp + 0.2;
    }
    // Still over: trade loudness for the ceiling, which is the hard limit.
    let measured = measure(channels, sample_rate)?;
    scale(
        channels,
        target.ceiling_dbtp - 0.05 - measured.true_peak_dbtp,
    );
    measure(channels, sample_rate)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(freq: f32, amp: f32, seconds: f32, sr: u32) -> Vec<f32> {
        (0..(seconds * sr as f32) as usize)
            .map(|i| amp * (std::f32::consts::TAU * freq * i as f32 / sr as f32).sin())
            .collect()
    }

    #[test]
    fn a_full_scale_1khz_sine_reads_about_minus_3_lufs() {
        // BS.1770: a 0 dBFS 997 Hz sine in one channel of stereo reads -3.01 LUFS.
        let sr = 48000;
        let left = tone(997.0, 1.0, 3.0, sr);
        let right = vec![0.0; left.len()];
        let l = measure(&[left, right], sr).unwrap();
        assert!(
            (l.integrated_lufs + 3.01).abs() < 0.1,
            "{}",
            l.integrated_lufs
        );
    }

    #[test]
    fn mastering_reaches_the_target_under_the_ceiling() {
        let sr = 44100;
        // Quiet tone with loud transients: needs both gain and limiting.
        let mut left = tone(220.0, 0.05, 6.0, sr);
        for i in (0..left.len()).step_by(sr as usize / 2) {
            for k in 0..200.min(left.len() - i) {
                left[i + k] += 0.9 * (1.0 - k as f32 / 200.0);
            }
        }
        let right = tone(330.0, 0.05, 6.0, sr);
        let mut channels = vec![left, right];
        let result = master(&mut channels, sr, MasterTarget::default()).unwrap();
        let check = measure(&channels, sr).unwrap();
        assert_eq!(result, check);
        assert!(
            (check.integrated_lufs + 14.0).abs() < 0.5,
            "{}",
            check.integrated_lufs
        );
        assert!(check.true_peak_dbtp <= -1.0, "{}", check.true_peak_dbtp);
        assert!(check.sample_peak < 1.0);
    }
}
