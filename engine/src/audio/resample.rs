//! Band-limited resampling of mono audio as it arrives, with rubato's FFT resampler: the
//! input is fed in pieces of any size and only one chunk of it is held at a time, so a long
//! upload at a high rate is never kept whole at that rate. The output is delay compensated:
//! `ceil(len * to / from)` samples aligned in time with the input.

use rubato::audioadapter_buffers::direct::InterleavedSlice;
use rubato::{Fft, FixedSync, Indexing, Resampler};

/// A conversion the resampler refused; what rubato said goes to the log, not to clients.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("could not resample from {from} Hz to {to} Hz")]
pub struct ResampleError {
    /// Input rate.
    pub from: u32,
    /// Output rate.
    pub to: u32,
}

/// Input frames per FFT chunk.
const CHUNK: usize = 1024;

/// A mono resampler fed piece by piece.
pub struct StreamResampler {
    from: u32,
    to: u32,
    /// `None` when the rates are equal: samples pass through.
    fft: Option<Fft<f32>>,
    /// Input not yet resampled (less than one chunk between calls).
    pending: Vec<f32>,
    /// Output of the last chunk, before the delay is trimmed.
    chunk_out: Vec<f32>,
    /// Output frames still to drop: the resampler's delay.
    to_trim: usize,
    /// Input samples fed so far.
    fed: u64,
    output: Vec<f32>,
}

impl StreamResampler {
    /// A resampler from `from` Hz to `to` Hz.
    pub fn new(from: u32, to: u32) -> Result<Self, ResampleError> {
        let fail = |reason: String| resample_error(from, to, &reason);
        if from == 0 || to == 0 {
            return Err(fail("sample rates must be positive".into()));
        }
        let fft = if from == to {
            None
        } else {
            Some(
                Fft::<f32>::new(from as usize, to as usize, CHUNK, 1, FixedSync::Both)
                    .map_err(|e| fail(e.to_string()))?,
            )
        };
        let to_trim = fft.as_ref().map_or(0, Resampler::output_delay);
        let chunk_out = vec![0.0; fft.as_ref().map_or(0, Resampler::output_frames_max)];
        Ok(Self {
            from,
            to,
            fft,
            pending: Vec::new(),
            chunk_out,
            to_trim,
            fed: 0,
            output: Vec::new(),
        })
    }

    /// Feeds samples.
    pub fn push(&mut self, samples: &[f32]) -> Result<(), ResampleError> {
        self.fed += samples.len() as u64;
        let Some(fft) = &self.fft else {
            self.output.extend_from_slice(samples);
            return Ok(());
        };
        let need = fft.input_frames_next();
        let mut rest = samples;
        // Whole chunks straight from the input; only a remainder is copied.
        if !self.pending.is_empty() {
            let take = (need - self.pending.len()).min(rest.len());
            self.pending.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if self.pending.len() == need {
                let pending = std::mem::take(&mut self.pending);
                self.chunk(&pending, None)?;
                self.pending = pending;
                self.pending.clear();
            }
        }
        while rest.len() >= need {
            self.chunk(&rest[..need], None)?;
            rest = &rest[need..];
        }
        self.pending.extend_from_slice(rest);
        Ok(())
    }

    /// Resamples what is left and returns the whole output.
    pub fn finish(mut self) -> Result<Vec<f32>, ResampleError> {
        if self.fft.is_none() {
            return Ok(self.output);
        }
        let expected =
            (self.fed as f64 * f64::from(self.to) / f64::from(self.from)).ceil() as usize;
        let pending = std::mem::take(&mut self.pending);
        if !pending.is_empty() {
            self.chunk(&pending, Some(pending.len()))?;
        }
        // The delay is still inside the resampler: pump silence until it is out.
        while self.output.len() < expected {
            self.chunk(&[], Some(0))?;
        }
        self.output.truncate(expected);
        Ok(self.output)
    }

    /// Resamples one chunk (`partial` frames of it when short) and appends the output.
    fn chunk(&mut self, input: &[f32], partial: Option<usize>) -> Result<(), ResampleError> {
        let (from, to) = (self.from, self.to);
        let fail = |reason: String| resample_error(from, to, &reason);
        let Some(fft) = &mut self.fft else {
            return Ok(());
        };
        let frames_out = self.chunk_out.len();
        let input =
            InterleavedSlice::new(input, 1, input.len()).map_err(|e| fail(e.to_string()))?;
        let mut output = InterleavedSlice::new_mut(&mut self.chunk_out, 1, frames_out)
            .map_err(|e| fail(e.to_string()))?;
        let indexing = Indexing {
            partial_len: partial,
            ..Indexing::default()
        };
        let (_, produced) = fft
            .process_into_buffer(&input, &mut output, Some(&indexing))
            .map_err(|e| fail(e.to_string()))?;
        let trim = self.to_trim.min(produced);
        self.to_trim -= trim;
        self.output
            .extend_from_slice(&self.chunk_out[trim..produced]);
        Ok(())
    }
}

/// The error of a refused conversion, logging rubato's words.
fn resample_error(from: u32, to: u32, reason: &str) -> ResampleError {
    tracing::warn!("cannot resample from {from} Hz to {to} Hz: {reason}");
    ResampleError { from, to }
}

/// Resamples a whole mono signal (what [`StreamResampler`] does, in one call).
pub fn resample(mono: &[f32], from: u32, to: u32) -> Result<Vec<f32>, ResampleError> {
    let mut resampler = StreamResampler::new(from, to)?;
    resampler.push(mono)?;
    resampler.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sine(hz: f32, rate: u32, seconds: f32, amp: f32) -> Vec<f32> {
        (0..(rate as f32 * seconds) as usize)
            .map(|i| amp * (std::f32::consts::TAU * hz * i as f32 / rate as f32).sin())
            .collect()
    }

    /// Frequency from the zero crossings of the middle half of a signal.
    fn zero_crossing_hz(x: &[f32], rate: u32) -> f32 {
        let mid = &x[x.len() / 4..3 * x.len() / 4];
        let crossings = mid.windows(2).filter(|w| w[0] < 0.0 && w[1] >= 0.0).count();
        crossings as f32 * rate as f32 / mid.len() as f32
    }

    #[test]
    fn resampling_keeps_the_pitch_and_stays_band_limited() {
        let x = sine(1000.0, 44_100, 1.0, 0.5);
        let y = resample(&x, 44_100, 32_000).unwrap();
        assert!((y.len() as i64 - 32_000).abs() <= 1, "{}", y.len());
        let hz = zero_crossing_hz(&y, 32_000);
        assert!((hz - 1000.0).abs() < 3.0, "{hz}");
        // Band-limited: a 15 kHz tone cannot survive a conversion to 16 kHz.
        let high = resample(&sine(15_000.0, 44_100, 0.5, 0.5), 44_100, 16_000).unwrap();
        let peak = high[2000..high.len() - 2000]
            .iter()
            .fold(0.0f32, |m, s| m.max(s.abs()));
        assert!(peak < 0.01, "{peak}");
        assert_eq!(resample(&x, 44_100, 44_100).unwrap(), x);
        assert!(resample(&x, 0, 16_000).is_err());
        assert!(resample(&[], 44_100, 16_000).unwrap().is_empty());
    }

    #[test]
    fn pieces_of_any_size_give_the_output_of_one_call_and_rubatos_whole_signal_output() {
        let x = sine(440.0, 48_000, 0.7, 0.5);
        let whole = resample(&x, 48_000, 22_050).unwrap();
        let mut streamed = StreamResampler::new(48_000, 22_050).unwrap();
        for piece in x.chunks(777) {
            streamed.push(piece).unwrap();
        }
        assert_eq!(streamed.finish().unwrap(), whole);
        // Rubato's own whole-signal path, which the server used before streaming.
        let mut fft = Fft::<f32>::new(48_000, 22_050, CHUNK, 1, FixedSync::Both).unwrap();
        let input = InterleavedSlice::new(&x, 1, x.len()).unwrap();
        let reference = fft.process_all(&input, x.len(), None).unwrap().take_data();
        assert_eq!(reference.len(), whole.len());
        let worst = reference
            .iter()
            .zip(&whole)
            .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(worst < 1e-6, "{worst}");
    }
}
