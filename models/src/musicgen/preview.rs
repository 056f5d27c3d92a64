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

/// The previews of one job: where the last one ended.
///
/// A preview is planned where the job steps ([`Previewer::plan`]: cheap, it copies the
/// frames a window decodes) and rendered wherever the caller likes
/// ([`PreviewMixer::render`]: the EnCodec decode), so a batch need not wait for it. A job's
/// windows must be rendered in the order they were planned, by one mixer.
#[derive(Clone, Debug)]
pub struct Previewer {
    settings: PreviewSettings,
    /// Frames of audio planned so far.
    sent: usize,
    /// Whether the last window planned held audio back (it was not the job's last).
    holding: bool,
}

/// The rendering side of a job's previews: the audio the last window held back.
#[derive(Clone, Debug, Default)]
pub struct PreviewMixer {
    /// One row per channel (empty before the first window and after the last).
    held: Vec<Vec<f32>>,
}

/// A planned preview: the frames to decode and the part of their audio that goes out.
#[derive(Clone, Debug)]
pub struct PreviewWindow {
    /// The frames, `[K][n]`, from frame `start` of the output on.
    frames: Vec<Vec<u32>>,
    start: usize,
    /// The frames whose audio goes out: `from..until` (the rest is held back).
    from: usize,
    until: usize,
    /// Whether this is the job's last preview.
    last: bool,
}

impl Previewer {
    /// A job's previewer.
    pub fn new(settings: PreviewSettings) -> Self {
        Self {
            settings,
            sent: 0,
            holding: false,
        }
    }

    /// The next preview, if one is due: after the first `first_frames` finished frames,
    /// then every `every_frames`, and, once the job is done, the rest of its audio. The
    /// chunks of a whole job cover its output exactly once, in order.
    pub fn poll(
        &mut self,
        mixer: &mut PreviewMixer,
        model: &MusicGen,
        job: &LongGeneration,
    ) -> Result<Option<PreviewChunk>> {
        match self.plan(job) {
            Some(window) => mixer.render(model, window).map(Some),
            None => Ok(None),
        }
    }

    /// [`Self::poll`]'s first half: the window of the next preview, if one is due.
    pub fn plan(&mut self, job: &LongGeneration) -> Option<PreviewWindow> {
        let s = self.settings;
        let finished = job.finished_frames();
        let done = job.is_done();
        let due = if done {
            finished > self.sent || self.holding
        } else if self.sent == 0 && !self.holding {
            finished >= s.first_frames.max(s.overlap_frames + 1)
        } else {
            finished >= self.sent + s.overlap_frames + s.every_frames
        };
        if !due {
            return None;
        }
        // Audio up to `until` goes out now; what follows, to `finished`, is held back.
        let until = if done {
            finished
        } else {
            finished - s.overlap_frames
        };
        let start = self.sent.saturating_sub(s.context_frames);
        let frames = job
            .finished()
            .into_iter()
            .map(|row| row[start..finished].to_vec())
            .collect();
        let window = PreviewWindow {
            frames,
            start,
            from: self.sent,
            until,
            last: done,
        };
        self.sent = until;
        self.holding = !done;
        Some(window)
    }
}

impl PreviewMixer {
    /// [`Previewer::poll`]'s second half: decodes a window [`Previewer::plan`] gave,
    /// cross-faded with the audio the window before held back.
    pub fn render(&mut self, model: &MusicGen, window: PreviewWindow) -> Result<PreviewChunk> {
        let PreviewWindow {
            frames,
            start,
            from,
            until,
            last,
        } = window;
        let count = frames.first().map_or(0, Vec::len);
        let audio = model.decode_audio(&frames)?.to_vec2::<f32>()?;
        let hop = audio.first().map_or(0, Vec::len) / count.max(1);
        let (first, end) = ((from - start) * hop, (until - start) * hop);
        let mut channels = Vec::with_capacity(audio.len());
        let mut held = Vec::with_capacity(audio.len());
        for (c, samples) in audio.into_iter().enumerate() {
            let mut out = samples[first..end].to_vec();
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
            held.push(samples[end..].to_vec());
            channels.push(out);
        }
        self.held = if last { Vec::new() } else { held };
        Ok(PreviewChunk {
            start: from * hop,
            channels,
        })
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
            let mut mixer = PreviewMixer::default();
            let mut chunks = Vec::new();
            let mut first_at = None;
            while !job.is_done() {
                job.step(&model).unwrap();
                if let Some(chunk) = previewer.poll(&mut mixer, &model, &job).unwrap() {
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

    /// Windows planned as the job steps and rendered later, all at the end, give the
    /// chunks that planning and rendering at once gives: the render can lag the batch.
    #[test]
    fn rendering_behind_the_steps_gives_the_same_chunks() {
        let model = tiny_random(5);
        let rate = model.config().frame_rate();
        let params = GenerationParams {
            frames: 3 * rate + 5,
            guidance_scale: 3.0,
            sampling: SamplingParams {
                top_k: 50,
                top_p: 0.0,
                temperature: 1.0,
            },
            seed: 1,
        };
        let run = |lag: bool| {
            let windows = Windows::audiocraft(model.config());
            let mut job =
                LongGeneration::new(&model, &[2, 4], &params, Vec::new(), None, windows).unwrap();
            let mut previewer = Previewer::new(PreviewSettings::new(rate, 1.0));
            let mut mixer = PreviewMixer::default();
            let (mut planned, mut chunks) = (Vec::new(), Vec::new());
            while !job.is_done() {
                job.step(&model).unwrap();
                if lag {
                    planned.extend(previewer.plan(&job));
                } else if let Some(chunk) = previewer.poll(&mut mixer, &model, &job).unwrap() {
                    chunks.push(chunk);
                }
            }
            for window in planned {
                chunks.push(mixer.render(&model, window).unwrap());
            }
            chunks
        };
        let at_once = run(false);
        assert!(at_once.len() >= 3, "{} previews", at_once.len());
        assert_eq!(run(true), at_once);
    }
}
