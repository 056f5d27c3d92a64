//! Playable audio while a MusicGen job runs: EnCodec decodes of the frames finished so
//! far, in overlapping windows. Each window starts some context before the audio it adds
//! (EnCodec's convolutions and LSTM need it to sound as the whole decode does), and its
//! last frames are held back and cross-faded into the next window's, where the next
//! window has the right context for them. Played one after another, the chunks sound like
//! the final decode, which stays exactly what it is without previews.

use super::long_form::LongGeneration;
use super::model::MusicGen;
use crate::error::Result;

/// When previews come and how they overlap, in frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PreviewSettings {
    /// Finished frames before the first preview (default: 1 s of audio).
    pub first_frames: usize,
    /// Finished frames between previews (default: 1 s).
    pub every_frames: usize,
    /// Frames decoded before the audio a preview adds, then dropped (default: 1 s).
    pub context_frames: usize,
    /// Frames at a preview's end held back and cross-faded into the next (default:
    /// 200 ms, at least one frame): EnCodec's convolutions look ahead, so a window's last
    /// frames want the frames after them.
    pub overlap_frames: usize,
}

impl PreviewSettings {
    /// The defaults at `frame_rate` frames a second, the first preview after `first_s`
    /// seconds of audio.
    pub fn new(frame_rate: usize, first_s: f64) -> Self {
        let second = frame_rate.max(1);
        Self {
            first_frames: ((first_s * second as f64).round() as usize).max(1),
            every_frames: second,
            context_frames: second,
            overlap_frames: (second / 5).max(1),
        }
    }
}

/// A preview: samples `[channels][n]` of the output from sample `start` on.
#[derive(Clone, Debug, PartialEq)]
pub struct PreviewChunk {
    /// Index of its first sample in the output.
    pub start: usize,
    /// The samples, one row per channel.
    pub channels: Vec<Vec<f32>>,
}

/// The previews of one job: where the last one ended and the audio held back from it.
#[derive(Clone, Debug)]
pub struct Previewer {
    settings: PreviewSettings,
    /// Frames of audio sent so far.
    sent: usize,
    /// The held-back audio after `sent`, one row per channel (empty before the first).
    held: Vec<Vec<f32>>,
}

impl Previewer {
    /// A job's previewer.
    pub fn new(settings: PreviewSettings) -> Self {
        Self {
            settings,
            sent: 0,
            held: Vec::new(),
        }
    }

    /// The next preview, if one is due: after the first `first_frames` finished frames,
    /// then every `every_frames`, and, once the job is done, the rest of its audio. The
    /// chunks of a whole job cover its output exactly once, in order.
    pub fn poll(&mut self, model: &MusicGen, job: &LongGeneration) -> Result<Option<PreviewChunk>> {
        let s = self.settings;
        let finished = job.finished_frames();
        let done = job.is_done();
        let due = if done {
            finished > self.sent || !self.held.is_empty()
        } else if self.sent == 0 && self.held.is_empty() {
            finished >= s.first_frames.max(s.overlap_frames + 1)
        } else {
            finished >= self.sent + s.overlap_frames + s.every_frames
        };
        if !due {
            return Ok(None);
        }
        // Audio up to `until` goes out now; what follows, to `finished`, is held back.
        let until = if done {
            finished
        } else {
            finished - s.overlap_frames
        };
        let start = self.sent.saturating_sub(s.context_frames);
        let frames: Vec<Vec<u32>> = job
            .finished()
            .into_iter()
            .map(|row| row[start..finished].to_vec())
            .collect();
        let audio = model.decode_audio(&frames)?.to_vec2::<f32>()?;
        let hop = audio.first().map_or(0, Vec::len) / (finished - start).max(1);
        let (from, to) = ((self.sent - start) * hop, (until - start) * hop);
        let mut channels = Vec::with_capacity(audio.len());
        let mut held = Vec::with_capacity(audio.len());
        for (c, samples) in audio.into_iter().enumerate() {
            let mut out = samples[from..to].to_vec();
            if let Some(previous) = self.held.get(c) {
                // A linear cross-fade over the first half of the held-back audio, where
                // the window before still had frames after it to decode from; the rest is
                // this window's alone.
                let n = (previous.len() / 2).min(out.len());
                for (i, (sample, old)) in out.iter_mut().zip(previous).take(n).enumerate() {
                    let r = (i as f32 + 0.5) / n as f32;
                    *sample = old * (1.0 - r) + *sample * r;
                }
            }
            held.push(samples[to..].to_vec());
            channels.push(out);
        }
        let chunk = PreviewChunk {
            start: self.sent * hop,
            channels,
        };
        self.sent = until;
        self.held = if done { Vec::new() } else { held };
        Ok(Some(chunk))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::musicgen::presets::tiny_random;
    use crate::musicgen::{GenerationParams, Windows};
    use crate::sampling::SamplingParams;

    /// Signal-to-noise ratio of `got` against `want`, dB.
    fn snr_db(want: &[f32], got: &[f32]) -> f64 {
        let signal: f64 = want.iter().map(|&x| f64::from(x).powi(2)).sum();
        let noise: f64 = want
            .iter()
            .zip(got)
            .map(|(&a, &b)| f64::from(a - b).powi(2))
            .sum();
        10.0 * (signal / noise.max(1e-30)).log10()
    }

    /// A job's previews, concatenated, are its final audio within 30 dB, the first comes
    /// once 1 s of frames is finished, and they tile the output exactly.
    #[test]
    fn previews_played_in_order_sound_like_the_final_audio() {
        let model = tiny_random(5);
        let rate = model.config().frame_rate();
        let params = GenerationParams {
            frames: 4 * rate + 7,
            guidance_scale: 3.0,
            sampling: SamplingParams {
                top_k: 50,
                top_p: 0.0,
                temperature: 1.0,
            },
            seed: 3,
        };
        // One window, and windows of 2 s every 1.2 s (each prompted with the last's tail).
        let short = Windows {
            window: 2 * rate,
            stride: rate * 6 / 5,
        };
        for windows in [Windows::audiocraft(model.config()), short] {
            let mut job =
                LongGeneration::new(&model, &[3, 9, 1], &params, Vec::new(), None, windows)
                    .unwrap();
            let windows_run = job.plan().len();
            let mut previewer = Previewer::new(PreviewSettings::new(rate, 1.0));
            let mut chunks = Vec::new();
            let mut first_at = None;
            while !job.is_done() {
                job.step(&model).unwrap();
                if let Some(chunk) = previewer.poll(&model, &job).unwrap() {
                    first_at.get_or_insert(job.finished_frames());
                    chunks.push(chunk);
                }
            }
            assert_eq!(first_at, Some(rate), "the first preview after 1 s of audio");
            let finale = model.decode_audio(&job.into_frames()).unwrap();
            let finale = finale.to_vec2::<f32>().unwrap();
            let mut played = vec![Vec::new(); finale.len()];
            for chunk in &chunks {
                assert_eq!(
                    chunk.start,
                    played[0].len(),
                    "the chunks follow one another"
                );
                for (played, samples) in played.iter_mut().zip(&chunk.channels) {
                    played.extend_from_slice(samples);
                }
            }
            assert!(chunks.len() >= 4, "{} previews", chunks.len());
            assert!(
                windows_run == 1 || windows_run >= 3,
                "{windows_run} windows"
            );
            for (want, got) in finale.iter().zip(&played) {
                assert_eq!(want.len(), got.len());
                let snr = snr_db(want, got);
                assert!(snr >= 30.0, "{snr:.1} dB");
            }
        }
    }
}
