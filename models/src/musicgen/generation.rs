//! One MusicGen job's state and its step: feed the last column, combine guidance rows,
//! sample every codebook, apply the delay pattern. A continuation starts from prompt codes
//! (an encoded clip): their frames are kept in the pattern, as transformers' delay-pattern
//! mask keeps them, and the output includes them. A melody model takes the song's chroma.

use super::decoder::{BatchJob, DecoderCache, StepBuffers};
use super::delay::DelayPattern;
use super::model::MusicGen;
use crate::error::{ModelError, Result};
use crate::sampling::{apply_guidance, Sampler, SamplingParams};

/// Most columns one decoder pass feeds: a continuation's prompt columns go in passes of
/// this many, so each pass stays short (cancellation and progress act between passes) and
/// its attention scores small, while the weights are still read once for many columns.
pub const COLUMNS_PER_PASS: usize = 64;

/// The settings of one generation.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GenerationParams {
    /// Audio frames to generate (the frame rate is 50 per second at 32 kHz).
    pub frames: usize,
    /// Classifier-free guidance scale; 1 runs the conditional row alone.
    pub guidance_scale: f32,
    /// Token sampling.
    pub sampling: SamplingParams,
    /// Seed of the sampler.
    pub seed: u64,
}

/// What conditions a generation besides its text.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AudioConditions {
    /// Codes of a clip to continue, `[K][Tp]` (from the codec's encoder); empty for none.
    pub prompt: Vec<Vec<u32>>,
    /// Melody models: the song's chroma class per frame
    /// ([`melody_chroma`](super::chroma::melody_chroma)); `None` for no song.
    pub chroma: Option<Vec<usize>>,
}

/// A job in progress: its cache, sampler and the columns decoded so far.
pub struct Generation {
    pattern: DelayPattern,
    cache: DecoderCache,
    sampler: Sampler,
    guidance: Option<f32>,
    /// `columns[s][k]`; column 0 is the start column. A continuation's first columns,
    /// which its prompt decides, are here from the start.
    columns: Vec<Vec<u32>>,
    /// Columns fed to the decoder so far.
    fed: usize,
    /// Decoder passes done.
    passes: usize,
    /// Most columns one pass feeds ([`COLUMNS_PER_PASS`]; tests vary it).
    columns_per_pass: usize,
    guided: Vec<f32>,
    /// The prompt's frames, `[K][Tp]` (empty without an audio prompt).
    prompt: Vec<Vec<u32>>,
}

impl Generation {
    /// Encodes the prompt ids and prepares the job; no decoder step runs yet (a melody
    /// model's prefix runs now).
    pub fn new(model: &MusicGen, prompt_ids: &[u32], params: &GenerationParams) -> Result<Self> {
        Self::conditioned(model, prompt_ids, params, AudioConditions::default())
    }

    /// [`Self::new`] with audio conditions: a continuation's prompt codes are the first
    /// `Tp` of the `params.frames` frames the job returns, and generation goes on from
    /// them; a melody model is conditioned on the chroma.
    pub fn conditioned(
        model: &MusicGen,
        prompt_ids: &[u32],
        params: &GenerationParams,
        audio: AudioConditions,
    ) -> Result<Self> {
        let AudioConditions { prompt, chroma } = audio;
        let max = model.config().max_frames(prompt_ids.len());
        if params.frames > max {
            return Err(ModelError::TooManyFrames {
                frames: params.frames,
                max,
            });
        }
        let d = &model.config().decoder;
        let prompt_frames = prompt.first().map_or(0, Vec::len);
        let codebook_size = model.config().audio_encoder.codebook_size;
        let bad = |message: String| Err(ModelError::BadPrompt(message));
        if !prompt.is_empty() {
            if prompt.len() != d.num_codebooks
                || prompt.iter().any(|row| row.len() != prompt_frames)
            {
                return bad(format!(
                    "prompt codes must be {} rows of equal length",
                    d.num_codebooks
                ));
            }
            if prompt_frames > params.frames {
                return bad(format!(
                    "the prompt's {prompt_frames} frames exceed the {} to generate",
                    params.frames
                ));
            }
            if prompt
                .iter()
                .flatten()
                .any(|&c| c as usize >= codebook_size)
            {
                return bad(format!("prompt codes must be below {codebook_size}"));
            }
        }
        let d = &model.config().decoder;
        let pattern = DelayPattern::new(
            d.num_codebooks,
            d.audio_channels,
            params.frames,
            d.pad_token_id,
        );
        let guidance = (params.guidance_scale != 1.0).then_some(params.guidance_scale);
        let conditioning = model.condition(prompt_ids, chroma.as_deref(), guidance.is_some())?;
        let cache = model.new_cache(&conditioning, pattern.steps())?;
        let mut job = Self {
            pattern,
            cache,
            sampler: Sampler::new(params.sampling, params.seed),
            guidance,
            columns: vec![vec![d.bos_token_id; d.num_codebooks]],
            fed: 0,
            passes: 0,
            columns_per_pass: COLUMNS_PER_PASS,
            guided: Vec::new(),
            prompt,
        };
        // Columns 1..=Tp hold prompt frames or padding in every codebook: nothing in them
        // is sampled, so the first pass feeds them with the start column.
        for column in 1..=prompt_frames.min(job.pattern.steps()) {
            let known = (0..d.num_codebooks)
                .map(|k| {
                    job.prompt_code(column, k)
                        .unwrap_or_else(|| job.pattern.mask(column, k, d.pad_token_id))
                })
                .collect();
            job.columns.push(known);
        }
        Ok(job)
    }

    /// The prompt's code for codebook `k` at `column`, where the prompt decides it.
    fn prompt_code(&self, column: usize, k: usize) -> Option<u32> {
        let frame = self.pattern.frame_at(column, k)?;
        self.prompt.get(k)?.get(frame).copied()
    }

    /// The job's delay pattern.
    pub fn pattern(&self) -> &DelayPattern {
        &self.pattern
    }

    /// Decoder passes done.
    pub fn steps_done(&self) -> usize {
        self.passes
    }

    /// Decoder passes in total ([`Self::passes`]).
    pub fn total_steps(&self) -> usize {
        Self::passes(
            self.pattern.steps(),
            self.prompt.first().map_or(0, Vec::len),
        )
    }

    /// Decoder passes of a job of `steps` columns (frames plus delay columns) whose first
    /// `prompt` frames are given: the start column and the prompt's columns, which nothing
    /// is sampled in, in passes of [`COLUMNS_PER_PASS`], then one pass per column to sample.
    pub fn passes(steps: usize, prompt: usize) -> usize {
        let known = 1 + prompt.min(steps);
        known.div_ceil(COLUMNS_PER_PASS) - 1 + (steps + 1 - known)
    }

    /// Whether every frame has been sampled.
    pub fn is_done(&self) -> bool {
        self.columns.len() > self.pattern.steps()
    }

    /// Runs one decoder pass and appends the sampled column. Does nothing once done.
    pub fn step(&mut self, model: &MusicGen) -> Result<()> {
        if self.is_done() {
            return Ok(());
        }
        let rows = self.rows();
        let end = (self.fed + self.columns_per_pass).min(self.columns.len());
        let unfed: Vec<&[u32]> = self.columns[self.fed..end]
            .iter()
            .map(Vec::as_slice)
            .collect();
        let logits = model.step_columns(&unfed, &mut self.cache, rows)?;
        self.fed = end;
        if self.fed < self.columns.len() {
            // Prompt columns still to feed: nothing to sample from this pass.
            self.passes += 1;
            return Ok(());
        }
        self.sample(&logits.flatten_all()?.to_vec1::<f32>()?, model)
    }

    /// Runs one decoder pass for each job: the jobs whose next pass feeds a single column
    /// on the CPU step share one pass over the weights ([`super::decoder::Decoder::
    /// forward_batch`]), the others (a first pass with a prefix or prompt columns, a cache
    /// of tensors) run theirs alone. Each job samples with its own sampler, so its columns
    /// are the same as when it runs alone. One result per job, in order; a failed shared
    /// pass fails each job in it.
    pub fn step_batch(
        model: &MusicGen,
        jobs: &mut [&mut Generation],
        buffers: &mut StepBuffers,
    ) -> Vec<Result<()>> {
        let mut results: Vec<Result<()>> = Vec::with_capacity(jobs.len());
        let mut shared = Vec::new();
        for (index, job) in jobs.iter_mut().enumerate() {
            let batchable = !job.is_done()
                && job.columns.len() - job.fed == 1
                && model.decoder().can_batch(&job.cache);
            if batchable {
                shared.push(index);
                results.push(Ok(()));
            } else {
                results.push(job.step(model));
            }
        }
        if shared.is_empty() {
            return results;
        }
        let mut batch: Vec<BatchJob> = Vec::with_capacity(shared.len());
        let mut sharing: Vec<&mut Generation> = jobs
            .iter_mut()
            .enumerate()
            .filter(|(index, _)| shared.contains(index))
            .map(|(_, job)| &mut **job)
            .collect();
        for job in sharing.iter_mut() {
            let Generation { columns, cache, .. } = &mut **job;
            batch.push(BatchJob {
                column: &columns[columns.len() - 1],
                cache,
            });
        }
        let outcome =
            crate::kernels::on_pool(|| model.decoder().forward_batch(&mut batch, buffers));
        drop(batch);
        for (n, (job, &index)) in sharing.into_iter().zip(&shared).enumerate() {
            results[index] = match &outcome {
                Ok(()) => {
                    job.fed = job.columns.len();
                    job.sample(buffers.logits(n), model)
                }
                Err(e) => Err(ModelError::BatchFailed(e.to_string())),
            };
        }
        results
    }

    /// Rows of the decoder this job runs: two with guidance (conditional, unconditional).
    fn rows(&self) -> usize {
        if self.guidance.is_some() {
            2
        } else {
            1
        }
    }

    /// Samples the next column from the last pass's `logits` (`[rows, K, vocab]`
    /// flattened) and appends it.
    fn sample(&mut self, logits: &[f32], model: &MusicGen) -> Result<()> {
        if !logits.iter().all(|x| x.is_finite()) {
            return Err(ModelError::NonFiniteLogits {
                step: self.steps_done(),
                dtype: model.decoder_dtype(),
            });
        }
        let codebooks = self.columns[0].len();
        let vocab = logits.len() / (self.rows() * codebooks).max(1);
        let row = |r: usize, k: usize| &logits[(r * codebooks + k) * vocab..][..vocab];
        let next_column = self.columns.len();
        let column = (0..codebooks)
            .map(|k| {
                if let Some(code) = self.prompt_code(next_column, k) {
                    return code;
                }
                let row = match self.guidance {
                    Some(scale) => {
                        apply_guidance(row(0, k), row(1, k), scale, &mut self.guided);
                        &self.guided
                    }
                    None => row(0, k),
                };
                let token = self.sampler.sample(row);
                self.pattern.mask(next_column, k, token)
            })
            .collect();
        self.columns.push(column);
        self.passes += 1;
        Ok(())
    }

    /// Frames whose every codebook has been sampled (or given as a prompt).
    pub fn finished_frames(&self) -> usize {
        self.pattern.finished(self.columns.len())
    }

    /// The frames sampled so far, `[K][frames]` (pad tokens where not yet sampled).
    pub fn frames(&self) -> Vec<Vec<u32>> {
        self.pattern.revert(&self.columns)
    }

    /// The frames, once the job is over: the KV cache is released first, so decoding the
    /// audio never holds it too (it is a fifth of musicgen-small's f32 weights at 10 s).
    pub fn into_frames(self) -> Vec<Vec<u32>> {
        let Self {
            pattern, columns, ..
        } = self;
        pattern.revert(&columns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::musicgen::presets::{tiny_random, tiny_random_in};
    use crate::quant::WeightFormat;
    use crate::sampling::SamplingParams;

    /// A job of the batching test: its prompt, settings, audio prompt and the step of the
    /// batch it joins at.
    struct Spec {
        ids: Vec<u32>,
        params: GenerationParams,
        prompt: Vec<Vec<u32>>,
        joins: usize,
    }

    fn specs() -> Vec<Spec> {
        let params = |frames, guidance_scale, sampling, seed| GenerationParams {
            frames,
            guidance_scale,
            sampling,
            seed,
        };
        let sampled = SamplingParams {
            top_k: 50,
            top_p: 0.9,
            temperature: 1.1,
        };
        let clip: Vec<Vec<u32>> = (0..4)
            .map(|k| (0..6).map(|i| (k * 31 + i * 7) % 2048).collect())
            .collect();
        vec![
            Spec {
                ids: vec![4, 2, 1],
                params: params(30, 3.0, SamplingParams::GREEDY, 1),
                prompt: Vec::new(),
                joins: 0,
            },
            // Unguided: one row beside the others' two.
            Spec {
                ids: vec![7, 7, 9, 3, 5],
                params: params(18, 1.0, sampled, 9),
                prompt: Vec::new(),
                joins: 0,
            },
            Spec {
                ids: vec![5],
                params: params(24, 2.0, sampled, 3),
                prompt: Vec::new(),
                joins: 4,
            },
            // A continuation: its first pass feeds its clip, beside the batch.
            Spec {
                ids: vec![8, 1],
                params: params(20, 3.0, SamplingParams::GREEDY, 5),
                prompt: clip,
                joins: 7,
            },
        ]
    }

    fn start(model: &MusicGen, spec: &Spec) -> Generation {
        let audio = AudioConditions {
            prompt: spec.prompt.clone(),
            chroma: None,
        };
        Generation::conditioned(model, &spec.ids, &spec.params, audio).unwrap()
    }

    /// Jobs of different prompts, lengths, guidance and sampling, joining a running batch
    /// at different steps (one with a clip to continue), and one more that is cancelled
    /// mid-way: every job's columns are exactly those it samples alone, for dense and
    /// quantized weights and an f16 cache.
    #[test]
    fn a_job_samples_the_same_columns_alone_or_batched() {
        for (format, kv) in [
            (WeightFormat::Dense, candle_core::DType::F32),
            (WeightFormat::Q8, candle_core::DType::F16),
            (WeightFormat::Q4, candle_core::DType::F32),
        ] {
            let mut model = tiny_random_in(6, format);
            model.set_kv_cache_dtype(kv).unwrap();
            let specs = specs();
            let alone: Vec<Vec<Vec<u32>>> = specs
                .iter()
                .map(|spec| {
                    let mut job = start(&model, spec);
                    while !job.is_done() {
                        job.step(&model).unwrap();
                    }
                    job.into_frames()
                })
                .collect();
            let mut buffers = StepBuffers::new();
            let mut running: Vec<(usize, Generation)> = Vec::new();
            let mut cancelled = Some(start(&model, &specs[0]));
            let mut batched: Vec<Option<Vec<Vec<u32>>>> = vec![None; specs.len()];
            let mut widest = 0;
            for step in 0.. {
                for (index, spec) in specs.iter().enumerate() {
                    if spec.joins == step {
                        running.push((index, start(&model, spec)));
                    }
                }
                if running.is_empty() && step > 7 {
                    break;
                }
                let mut jobs: Vec<&mut Generation> =
                    running.iter_mut().map(|(_, job)| job).collect();
                if step < 9 {
                    jobs.extend(cancelled.as_mut());
                } else {
                    cancelled = None;
                }
                for result in Generation::step_batch(&model, &mut jobs, &mut buffers) {
                    result.unwrap();
                }
                widest = widest.max(buffers.last_rows());
                let (done, still): (Vec<_>, Vec<_>) =
                    running.into_iter().partition(|(_, job)| job.is_done());
                running = still;
                for (index, job) in done {
                    batched[index] = Some(job.into_frames());
                }
            }
            for (index, frames) in batched.into_iter().enumerate() {
                assert_eq!(
                    frames.as_ref(),
                    Some(&alone[index]),
                    "{format:?}, job {index}"
                );
            }
            // Four jobs of two rows and one of one shared a pass at their widest.
            assert_eq!(widest, 9, "{format:?}");
        }
    }

    /// A prompt of 150 frames fed one column a pass, or in passes of up to 64 columns,
    /// continues to the same codes; the pass counts are what [`Generation::passes`] says.
    #[test]
    fn prompt_columns_fed_in_batches_continue_as_fed_one_by_one() {
        let model = tiny_random(6);
        let params = GenerationParams {
            frames: 170,
            guidance_scale: 3.0,
            sampling: SamplingParams::GREEDY,
            seed: 1,
        };
        let prompt: Vec<Vec<u32>> = (0..4)
            .map(|k| (0..150).map(|i| (k * 131 + i * 17) % 2048).collect())
            .collect();
        let run = |per_pass: usize| {
            let audio = AudioConditions {
                prompt: prompt.clone(),
                chroma: None,
            };
            let mut job = Generation::conditioned(&model, &[4, 2, 1], &params, audio).unwrap();
            job.columns_per_pass = per_pass;
            let mut passes = 0;
            while !job.is_done() {
                job.step(&model).unwrap();
                passes += 1;
            }
            (job.into_frames(), passes)
        };
        let (one_by_one, many) = run(1);
        let (batched, few) = run(COLUMNS_PER_PASS);
        assert_eq!(batched, one_by_one);
        assert_eq!(many, 173);
        assert_eq!(few, Generation::passes(173, 150));
        assert_eq!(few, 2 + (173 - 150));
    }
}
