//! Playable audio while a MusicGen job runs: the EnCodec decode of the frames finished so
//! far, each frame's audio decoded once, as soon as the frames it reads have arrived
//! ([`MusicGen::decode_more`]). Played one after another, the chunks are the final decode's
//! audio (to rounding); the final decode stays exactly what it is without previews.

use super::long_form::LongGeneration;
use super::model::MusicGen;
use crate::encodec::DecodeStream;
use crate::error::Result;

/// When previews come, in frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PreviewSettings {
    /// Finished frames before the first preview (default: 1 s of audio).
    pub first_frames: usize,
    /// Frames of new audio between previews (default: 1 s).
    pub every_frames: usize,
}

impl PreviewSettings {
    /// The defaults at `frame_rate` frames a second, the first preview after `first_s`
    /// seconds of audio.
    pub fn new(frame_rate: usize, first_s: f64) -> Self {
        Self {
            first_frames: ((first_s * frame_rate.max(1) as f64).round() as usize).max(1),
            every_frames: frame_rate.max(1),
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

/// When a job's previews are due.
///
/// A preview is planned where the job steps ([`Previewer::plan`]: cheap, it copies the
/// finished frames its decode reads) and rendered wherever the caller likes
/// ([`PreviewMixer::render`]: the EnCodec decode), so a batch need not wait for it. A job's
/// windows must be rendered in the order they were planned, by one mixer.
#[derive(Clone, Debug)]
pub struct Previewer {
    settings: PreviewSettings,
    /// Frames of audio the windows planned so far bring out.
    planned: usize,
    /// Whether the last window (the job's end) has been planned.
    ended: bool,
}

/// The rendering side of a job's previews: its decode so far, one stream per channel.
#[derive(Clone, Debug, Default)]
pub struct PreviewMixer {
    streams: Vec<DecodeStream>,
}

/// A planned preview: the frames finished so far that its decode reads.
#[derive(Clone, Debug)]
pub struct PreviewWindow {
    /// The finished frames from frame `first` on, `[K][n]`.
    frames: Vec<Vec<u32>>,
    first: usize,
    /// Whether the job is done: this is its last preview.
    last: bool,
}

impl Previewer {
    /// A job's previewer.
    pub fn new(settings: PreviewSettings) -> Self {
        Self {
            settings,
            planned: 0,
            ended: false,
        }
    }

    /// The next preview, if one is due: once `first_frames` frames are finished, then
    /// every `every_frames` of new audio, and, once the job is done, the rest of its audio.
    /// The chunks of a whole job cover its output exactly once, in order.
    pub fn poll(
        &mut self,
        mixer: &mut PreviewMixer,
        model: &MusicGen,
        job: &LongGeneration,
    ) -> Result<Option<PreviewChunk>> {
        match self.plan(model, job) {
            Some(window) => mixer.render(model, window).map(Some),
            None => Ok(None),
        }
    }

    /// [`Self::poll`]'s first half: the window of the next preview, if one is due.
    pub fn plan(&mut self, model: &MusicGen, job: &LongGeneration) -> Option<PreviewWindow> {
        let s = self.settings;
        let finished = job.finished_frames();
        let done = job.is_done();
        // A decoder that cannot stream fails at the render, which ends the job's previews
        // with the reason logged; here these only time them and bound the frames copied.
        let delay = model.preview_delay().unwrap_or(0);
        let context = model.preview_context().unwrap_or(0);
        // The audio a window now would bring out: up to the decode's delay short of the
        // finished frames, or all of them at the end.
        let ready = if done {
            finished
        } else {
            finished.saturating_sub(delay)
        };
        let due = if self.ended {
            false
        } else if done {
            true
        } else if self.planned == 0 {
            finished >= s.first_frames && ready > 0
        } else {
            ready >= self.planned + s.every_frames
        };
        if !due {
            return None;
        }
        // The decode reads from a little before the audio it has brought out.
        let first = self.planned.saturating_sub(context);
        self.planned = ready;
        self.ended = done;
        Some(PreviewWindow {
            frames: job.finished_from(first),
            first,
            last: done,
        })
    }
}

impl PreviewMixer {
    /// [`Previewer::poll`]'s second half: decodes the audio a window [`Previewer::plan`]
    /// gave adds to the windows before.
    pub fn render(&mut self, model: &MusicGen, window: PreviewWindow) -> Result<PreviewChunk> {
        let (start, channels) =
            model.decode_more(&mut self.streams, &window.frames, window.first, window.last)?;
        Ok(PreviewChunk { start, channels })
    }
}

/// Signal-to-noise ratio of `got` (previews played in order) against `want` (the final
/// audio), dB: 200 where they are the same, and samples one has past the other's end
/// count as noise.
pub fn snr_db(want: &[f32], got: &[f32]) -> f64 {
    let signal: f64 = want.iter().map(|&x| f64::from(x).powi(2)).sum();
    let mut noise: f64 = want
        .iter()
        .zip(got)
        .map(|(&a, &b)| f64::from(a - b).powi(2))
        .sum();
    noise += want
        .iter()
        .skip(got.len())
        .map(|&x| f64::from(x).powi(2))
        .sum::<f64>();
    noise += got
        .iter()
        .skip(want.len())
        .map(|&x| f64::from(x).powi(2))
        .sum::<f64>();
    if noise == 0.0 {
        return 200.0;
    }
    (10.0 * (signal / noise).log10()).min(200.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::musicgen::presets::tiny_random;
    use crate::musicgen::{GenerationParams, Windows};
    use crate::sampling::SamplingParams;

    /// A job's previews, concatenated, are its final audio to rounding (90 dB, where the
    /// issue asks 30), the first comes once 1 s of frames is finished, and they tile the
    /// output exactly.
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
                // Each frame decoded once, as the whole decode does.
                assert!(snr >= 90.0, "{snr:.1} dB");
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
                    planned.extend(previewer.plan(&model, &job));
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
