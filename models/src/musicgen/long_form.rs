//! Generation past one window, as audiocraft's `MusicGen._generate_tokens` does it: each
//! window is a fresh generation (new cache, positions from 0, the same text) prompted with
//! the last `window - stride` frames of the one before, and keeps only its new frames. A
//! melody is re-sliced for each window from the window's start, wrapping around the song.
//! One monotonic step count runs over every window.

use std::borrow::Cow;

use super::chroma::melody_chroma;
use super::config::Config;
use super::decoder::StepBuffers;
use super::generation::{AudioConditions, Generation, GenerationParams};
use super::model::MusicGen;
use crate::error::{ModelError, Result};

/// The longest window of one generation, in seconds: MusicGen's 30 s training segment
/// (audiocraft's `max_duration`).
pub const WINDOW_SECONDS: f64 = 30.0;

/// How far each window of a long generation starts after the one before, in seconds, by
/// default (audiocraft's `extend_stride`).
pub const EXTEND_STRIDE_SECONDS: f64 = 18.0;

/// How a long generation is cut into windows, in frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Windows {
    /// The longest window (audiocraft's `max_duration`, the 30 s training segment).
    pub window: usize,
    /// How far each window starts after the one before (`extend_stride`, 18 s).
    pub stride: usize,
}

/// One window of a plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    /// Its first frame in the whole output.
    pub offset: usize,
    /// Frames it spans, prompt included.
    pub frames: usize,
    /// Its first frames given as a prompt (the previous window's tail, or the clip).
    pub prompt: usize,
}

impl Windows {
    /// audiocraft's windows for a model: [`WINDOW_SECONDS`] (or fewer, where the model's
    /// positions hold less) starting [`EXTEND_STRIDE_SECONDS`] apart.
    pub fn audiocraft(config: &Config) -> Self {
        let rate = config.frame_rate() as f64;
        let window = ((WINDOW_SECONDS * rate) as usize).min(config.max_frames(0));
        let stride = ((EXTEND_STRIDE_SECONDS * rate) as usize)
            .min(window.saturating_sub(1))
            .max(1);
        Self { window, stride }
    }

    /// The windows of a generation of `total` frames, the first `prompt` of them given.
    /// A generation that fits one window is one window; otherwise each starts `stride`
    /// after the one before, as long as frames are missing.
    pub fn plan(&self, total: usize, prompt: usize) -> Result<Vec<Window>> {
        let bad = |message: String| {
            Err(ModelError::UnsupportedConfig {
                field: "extend_stride".into(),
                message,
            })
        };
        if self.stride == 0 || self.stride >= self.window {
            return bad(format!(
                "a stride of {} frames must be positive and under the {}-frame window",
                self.stride, self.window
            ));
        }
        if prompt > total.min(self.window) {
            return Err(ModelError::BadPrompt(format!(
                "the prompt's {prompt} frames exceed the {} of the first window",
                total.min(self.window)
            )));
        }
        if total <= self.window {
            return Ok(vec![Window {
                offset: 0,
                frames: total,
                prompt,
            }]);
        }
        let mut plan = Vec::new();
        let (mut offset, mut prompt) = (0, prompt);
        while offset + prompt < total {
            let frames = (total - offset).min(self.window);
            plan.push(Window {
                offset,
                frames,
                prompt,
            });
            prompt = frames.saturating_sub(self.stride);
            offset += self.stride;
        }
        Ok(plan)
    }
}

/// What every window of a long generation starts from.
struct Setup {
    ids: Vec<u32>,
    params: GenerationParams,
    plan: Vec<Window>,
    /// Melody: the song at the model's rate, re-sliced per window when there are several.
    song: Option<Vec<f32>>,
    /// Samples of song each window's chroma reads (the window's length).
    window_samples: usize,
    /// Samples per frame.
    hop: usize,
}

impl Setup {
    /// The generation of window `index`, whose prompt is the tail of `kept` (the clip, for
    /// the first), conditioned on the chroma of [`Self::song_for`] for a melody.
    fn start(&self, model: &MusicGen, index: usize, kept: &[Vec<u32>]) -> Result<Generation> {
        let window = self.plan[index];
        let prompt = kept
            .iter()
            .map(|row| row[row.len().saturating_sub(window.prompt)..].to_vec())
            .collect();
        let chroma = self.song_for(index).map(|song| melody_chroma(&song));
        let params = GenerationParams {
            frames: window.frames,
            // Each window samples from its own stream, reproducibly.
            seed: self.params.seed.wrapping_add(index as u64),
            ..self.params
        };
        let audio = AudioConditions { prompt, chroma };
        Generation::conditioned(model, &self.ids, &params, audio)
    }
}

impl Setup {
    /// The song samples whose chroma conditions window `index`: the whole song for a single
    /// window (as transformers conditions it), else `window_samples` from the window's
    /// start, wrapping around the song's end (as audiocraft re-slices it).
    fn song_for(&self, index: usize) -> Option<Cow<'_, [f32]>> {
        let song = self.song.as_deref()?;
        if self.plan.len() == 1 {
            return Some(Cow::Borrowed(song));
        }
        let start = self.plan[index].offset * self.hop;
        Some(Cow::Owned(wrapped(song, start, self.window_samples)))
    }
}

/// A generation over one or more windows, stepped like a [`Generation`].
pub struct LongGeneration {
    setup: Setup,
    /// The window running.
    index: usize,
    current: Generation,
    /// The frames so far, `[K][n]`: a continuation's clip, then each finished window's new
    /// frames.
    kept: Vec<Vec<u32>>,
    /// Steps of the finished windows.
    steps_before: usize,
    total_steps: usize,
}

impl LongGeneration {
    /// Prepares a generation of `params.frames` frames cut by `windows` (the window
    /// clamped to what one generation of this prompt holds), continuing `prompt` codes
    /// (`[K][Tp]`, empty for none, part of the output) and, for a melody model, following
    /// `song` (mono samples at the model's rate). The first window starts now.
    pub fn new(
        model: &MusicGen,
        ids: &[u32],
        params: &GenerationParams,
        prompt: Vec<Vec<u32>>,
        song: Option<Vec<f32>>,
        windows: Windows,
    ) -> Result<Self> {
        let config = model.config();
        if song.is_some() && !config.is_melody() {
            return Err(ModelError::NoMelody {
                model_type: config.model_type.clone(),
            });
        }
        // A melody model's prefix takes positions: a long text leaves a shorter window, and
        // the stride stays under it.
        let window = windows.window.min(config.max_frames(ids.len()));
        let windows = Windows {
            window,
            stride: windows.stride.min(window.saturating_sub(1)).max(1),
        };
        let prompt_frames = prompt.first().map_or(0, Vec::len);
        let plan = windows.plan(params.frames, prompt_frames)?;
        let extra = config.decoder.channel_codebooks() - 1;
        let total_steps = plan
            .iter()
            .map(|w| Generation::passes(w.frames + extra, w.prompt))
            .sum();
        let hop = (model.sample_rate() as usize / config.frame_rate().max(1)).max(1);
        let setup = Setup {
            ids: ids.to_vec(),
            params: *params,
            plan,
            song,
            window_samples: windows.window * hop,
            hop,
        };
        let current = setup.start(model, 0, &prompt)?;
        Ok(Self {
            setup,
            index: 0,
            current,
            kept: prompt,
            steps_before: 0,
            total_steps,
        })
    }

    /// The windows, in order.
    pub fn plan(&self) -> &[Window] {
        &self.setup.plan
    }

    /// Decoder passes done over every window.
    pub fn steps_done(&self) -> usize {
        self.steps_before + self.current.steps_done()
    }

    /// Decoder passes in total over every window.
    pub fn total_steps(&self) -> usize {
        self.total_steps
    }

    /// Whether every window is done.
    pub fn is_done(&self) -> bool {
        self.index + 1 >= self.setup.plan.len() && self.current.is_done()
    }

    /// Runs one decoder pass; a window that ends hands its tail to the next, which starts
    /// at once. Does nothing once done.
    pub fn step(&mut self, model: &MusicGen) -> Result<()> {
        self.current.step(model)?;
        self.advance(model)
    }

    /// One decoder pass for each job, the running windows batched as
    /// [`Generation::step_batch`] batches them; a window that ends starts the next. One
    /// result per job, in order.
    pub fn step_batch(
        model: &MusicGen,
        jobs: &mut [&mut LongGeneration],
        buffers: &mut StepBuffers,
    ) -> Vec<Result<()>> {
        let mut windows: Vec<&mut Generation> =
            jobs.iter_mut().map(|job| &mut job.current).collect();
        let results = Generation::step_batch(model, &mut windows, buffers);
        jobs.iter_mut()
            .zip(results)
            .map(|(job, result)| result.and_then(|()| job.advance(model)))
            .collect()
    }

    /// After a pass of the running window: a window that has ended hands its tail to the
    /// next, which starts now.
    fn advance(&mut self, model: &MusicGen) -> Result<()> {
        if !self.current.is_done() || self.index + 1 >= self.setup.plan.len() {
            return Ok(());
        }
        self.keep_window();
        self.steps_before += self.current.total_steps();
        self.index += 1;
        self.current = self.setup.start(model, self.index, &self.kept)?;
        Ok(())
    }

    /// Appends the finished current window's new frames to the kept ones.
    fn keep_window(&mut self) {
        let window = self.setup.plan[self.index];
        let frames = self.current.frames();
        if self.kept.is_empty() {
            self.kept = vec![Vec::new(); frames.len()];
        }
        for (kept, row) in self.kept.iter_mut().zip(frames) {
            kept.extend_from_slice(&row[window.prompt..]);
        }
    }

    /// Frames of the output finished so far: the clip continued, the finished windows'
    /// new frames, and the running window's finished ones past its prompt.
    pub fn finished_frames(&self) -> usize {
        let prompt = self.setup.plan[self.index].prompt;
        let kept = self.kept.first().map_or(0, Vec::len);
        kept + self.current.finished_frames().saturating_sub(prompt)
    }

    /// The output's frames from `start` up to [`Self::finished_frames`], `[K][n]` (none
    /// when `start` is past them).
    pub fn finished_from(&self, start: usize) -> Vec<Vec<u32>> {
        let prompt = self.setup.plan[self.index].prompt;
        let running = self.current.finished_frames().saturating_sub(prompt);
        let kept = self.kept.first().map_or(0, Vec::len);
        let skip = start.saturating_sub(kept).min(running);
        self.current
            .frames()
            .iter()
            .enumerate()
            .map(|(k, row)| {
                let mut out = Vec::new();
                if let Some(kept_row) = self.kept.get(k) {
                    out.extend_from_slice(&kept_row[start.min(kept_row.len())..]);
                }
                out.extend_from_slice(&row[prompt + skip..prompt + running]);
                out
            })
            .collect()
    }

    /// Every frame, once done, `[K][params.frames]`.
    pub fn into_frames(mut self) -> Vec<Vec<u32>> {
        self.keep_window();
        self.kept
    }
}

/// `length` samples of `song` from `start`, wrapping around its end.
fn wrapped(song: &[f32], start: usize, length: usize) -> Vec<f32> {
    if song.is_empty() {
        return vec![0.0; length];
    }
    (start..start + length)
        .map(|i| song[i % song.len()])
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// audiocraft's example: 60 s at 50 frames/s in windows of 30 s, stride 18 s.
    #[test]
    fn sixty_seconds_are_three_windows_as_audiocraft_cuts_them() {
        let windows = Windows {
            window: 1500,
            stride: 900,
        };
        let plan = windows.plan(3000, 0).unwrap();
        let cut: Vec<(usize, usize, usize)> = plan
            .iter()
            .map(|w| (w.offset, w.frames, w.prompt))
            .collect();
        assert_eq!(cut, vec![(0, 1500, 0), (900, 1500, 600), (1800, 1200, 600)]);
        let new: usize = plan.iter().map(|w| w.frames - w.prompt).sum();
        assert_eq!(new, 3000);
        // One window when it fits; a clip is its prompt.
        assert_eq!(
            windows.plan(1500, 100).unwrap(),
            vec![Window {
                offset: 0,
                frames: 1500,
                prompt: 100
            }]
        );
        // With a clip: the clip counts in the length, every frame is made once.
        let plan = windows.plan(2000, 250).unwrap();
        let made: usize = plan.iter().map(|w| w.frames - w.prompt).sum();
        assert_eq!(made + 250, 2000);
    }

    #[test]
    fn a_stride_past_the_window_or_a_prompt_past_the_length_is_refused() {
        let plan = |window, stride, total, prompt| Windows { window, stride }.plan(total, prompt);
        assert!(plan(100, 100, 300, 0).is_err());
        assert!(plan(100, 0, 300, 0).is_err());
        assert!(plan(100, 60, 50, 51).is_err());
    }

    /// audiocraft's `_generate_tokens` loop, written out: each window a fresh generation
    /// prompted with the previous window's frames after the stride, its new frames kept.
    fn audiocraft_loop(
        model: &MusicGen,
        ids: &[u32],
        params: &GenerationParams,
        clip: Vec<Vec<u32>>,
        windows: Windows,
    ) -> Vec<Vec<u32>> {
        let k = model.config().decoder.num_codebooks;
        let mut all = if clip.is_empty() {
            vec![Vec::new(); k]
        } else {
            clip.clone()
        };
        let (mut prompt, mut offset, mut index) = (clip, 0, 0);
        while offset + prompt.first().map_or(0, Vec::len) < params.frames {
            let frames = (params.frames - offset).min(windows.window);
            let window_params = GenerationParams {
                frames,
                seed: params.seed + index,
                ..*params
            };
            let given = prompt.first().map_or(0, Vec::len);
            let audio = AudioConditions {
                prompt,
                chroma: None,
            };
            let mut job = Generation::conditioned(model, ids, &window_params, audio).unwrap();
            while !job.is_done() {
                job.step(model).unwrap();
            }
            let made = job.into_frames();
            for (all, row) in all.iter_mut().zip(&made) {
                all.extend_from_slice(&row[given..]);
            }
            prompt = made
                .iter()
                .map(|row| row[windows.stride.min(row.len())..].to_vec())
                .collect();
            offset += windows.stride;
            index += 1;
        }
        all
    }

    /// The windows stitch as audiocraft's loop does, with and without a clip to continue,
    /// and the step count rises by one a step to its total.
    #[test]
    fn windows_stitch_as_audiocraft_stitches_them() {
        use crate::sampling::SamplingParams;

        let model = crate::musicgen::presets::tiny_random(4);
        let windows = Windows {
            window: 30,
            stride: 20,
        };
        let params = GenerationParams {
            frames: 75,
            guidance_scale: 3.0,
            sampling: SamplingParams::GREEDY,
            seed: 9,
        };
        let ids = [3, 5, 1];
        let clip: Vec<Vec<u32>> = (0..4)
            .map(|k| (0..8).map(|i| (k * 97 + i * 13) % 2048).collect())
            .collect();
        for clip in [Vec::new(), clip] {
            let want = audiocraft_loop(&model, &ids, &params, clip.clone(), windows);
            let mut job =
                LongGeneration::new(&model, &ids, &params, clip.clone(), None, windows).unwrap();
            assert!(job.plan().len() >= 3);
            let mut done = job.steps_done();
            while !job.is_done() {
                job.step(&model).unwrap();
                assert_eq!(job.steps_done(), done + 1);
                done += 1;
            }
            assert_eq!(done, job.total_steps());
            let frames = job.into_frames();
            assert_eq!(frames, want, "clip of {}", clip.first().map_or(0, Vec::len));
            assert!(frames.iter().all(|row| row.len() == 75));
            if let Some(first) = clip.first() {
                assert_eq!(
                    &frames[0][..first.len()],
                    &first[..],
                    "the output begins with the clip"
                );
            }
        }
    }

    /// A 40 s song under 60 s of windows: each window reads 30 s of it from the window's
    /// start (0, 18 and 36 s), the third wrapping past the song's end; a single window
    /// reads the whole song.
    #[test]
    fn each_window_reads_the_song_from_its_start_wrapping_around() {
        let rate = 32_000;
        let song: Vec<f32> = (0..40 * rate).map(|i| i as f32).collect();
        let windows = Windows {
            window: 1500,
            stride: 900,
        };
        let setup = |total| Setup {
            ids: vec![1],
            params: GenerationParams {
                frames: total,
                guidance_scale: 1.0,
                sampling: crate::sampling::SamplingParams::GREEDY,
                seed: 0,
            },
            plan: windows.plan(total, 0).unwrap(),
            song: Some(song.clone()),
            window_samples: 30 * rate,
            hop: 640,
        };
        let long = setup(3000);
        let slices: Vec<Vec<f32>> = (0..3)
            .map(|i| long.song_for(i).unwrap().into_owned())
            .collect();
        for (slice, start_s) in slices.iter().zip([0, 18, 36]) {
            assert_eq!(slice.len(), 30 * rate);
            assert_eq!(slice[0], (start_s * rate) as f32);
        }
        // 36 s + 30 s wraps: the song's 4 s mark follows its end.
        assert_eq!(slices[2][4 * rate - 1], (40 * rate - 1) as f32);
        assert_eq!(slices[2][4 * rate], 0.0);
        let short = setup(1000);
        assert_eq!(short.song_for(0).unwrap().len(), song.len());
        assert!(Setup {
            song: None,
            ..short
        }
        .song_for(0)
        .is_none());
    }

    #[test]
    fn the_song_wraps_for_a_window_past_its_end() {
        assert_eq!(
            wrapped(&[1.0, 2.0, 3.0], 2, 5),
            vec![3.0, 1.0, 2.0, 3.0, 1.0]
        );
    }
}
