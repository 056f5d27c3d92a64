//! Decoder positions on the CPU in f32, as a single run of [`crate::kernels::phases`] for
//! every job of a batch: per layer, eight phases (the fused query-key-value projection, the
//! self-attention heads, the output projection, the cross-attention query, heads and output,
//! and the two feed-forward projections), then the LM heads. A projection's tasks are
//! feature ranges over the rows of every job, so the weights are read once per step however
//! many jobs share it; a head's task is one row's head, over that row's job's own cache,
//! position and text. Norms and the preparation of a projection's input (padded or
//! quantized rows) run between phases on the thread that finished the phase before. The
//! residual additions, GELU and the cache writes happen inside the tasks that produce their
//! inputs.
//!
//! Every row is computed by the same operations whatever the other rows are, so a job's
//! logits are the same bits alone or batched.
//!
//! The math is the general path's ([`super::Decoder::forward`] over candle tensors, kept
//! for GPUs and half-precision compute); a test holds the two together.

use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::{Device, Tensor};

use super::cpu_views::{some, unsupported, LayerView, Norm, NOT_ON_CPU};
use super::host_cache::{Buffers, HostCache, HostKv, KvElement, LayerKv};
use super::{Decoder, DecoderCache, SelfKv};
use crate::error::{ModelError, Result};
use crate::kernels::attention::{attend_head, CacheRows, NextHead, Scratch};
use crate::kernels::phases::{self, SharedSlice};
use crate::kernels::tensor::{cpu_data, CpuData};
use crate::quant::CpuWeights;

/// The phases of a layer, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    SelfQkv,
    SelfHeads,
    SelfOut,
    CrossQuery,
    CrossHeads,
    CrossOut,
    Expand,
    Contract,
}

const LAYER_PHASES: [Phase; 8] = [
    Phase::SelfQkv,
    Phase::SelfHeads,
    Phase::SelfOut,
    Phase::CrossQuery,
    Phase::CrossHeads,
    Phase::CrossOut,
    Phase::Expand,
    Phase::Contract,
];

/// What a projection task does with its sums.
#[derive(Clone, Copy)]
enum Epilogue {
    Store,
    /// Adds them to the residual stream.
    Add,
    /// Stores their exact GELU.
    Gelu,
}

/// A projection's output: `buffer` rows of `width`, its features from column `column`.
struct Target<'b> {
    buffer: &'b SharedSlice<f32>,
    width: usize,
    column: usize,
    epilogue: Epilogue,
}

/// One thread's scratch: a task's sums and a head's buffers.
#[derive(Default)]
struct TaskScratch {
    sums: Vec<f32>,
    attention: Scratch,
}

/// One job's input to a batched step ([`Decoder::forward_batch`]).
pub struct BatchJob<'a> {
    /// The column to feed, one token per codebook; every row of the job gets it.
    pub column: &'a [u32],
    /// The job's cache; the step decodes its next position.
    pub cache: &'a mut DecoderCache,
}

/// The working memory of batched steps, kept from step to step so that a step allocates
/// nothing: it grows to the most rows a step has had.
#[derive(Default)]
pub struct StepBuffers {
    buffers: Option<Buffers>,
    /// Each job's rows in the last step.
    rows: Vec<Range<usize>>,
    /// Logits per row: codebooks times the vocabulary.
    row_logits: usize,
}

impl StepBuffers {
    /// Empty buffers; the first step sizes them.
    pub fn new() -> Self {
        Self::default()
    }

    /// Rows of the last step, every job's together.
    pub fn last_rows(&self) -> usize {
        self.rows.last().map_or(0, |rows| rows.end)
    }

    /// The logits of job `job` of the last step, `[rows, K, vocab]` flattened; empty for a
    /// job that step did not have.
    pub fn logits(&mut self, job: usize) -> &[f32] {
        let (Some(buffers), Some(rows)) = (&mut self.buffers, self.rows.get(job)) else {
            return &[];
        };
        let all = buffers.logits.as_mut_slice();
        &all[rows.start * self.row_logits..rows.end * self.row_logits]
    }
}

impl Decoder {
    /// Whether a job with this cache can take part in a batched step now: its cache is the
    /// CPU step's, no prefix waits in it and a position is left.
    pub fn can_batch(&self, cache: &DecoderCache) -> bool {
        matches!(cache.self_kv, SelfKv::Host(_))
            && cache.prefix.is_none()
            && cache.len < cache.capacity
            && cache.len < self.cfg.max_position_embeddings
    }

    /// Feeds each job's column at its cache's next position, every job in one pass; the
    /// logits are then in `buffers` ([`StepBuffers::logits`]). Every job must pass
    /// [`Self::can_batch`]. On an error no cache has advanced.
    pub fn forward_batch(&self, jobs: &mut [BatchJob], buffers: &mut StepBuffers) -> Result<()> {
        let codebooks = self.embed_tokens.len();
        let mut rows = Vec::with_capacity(jobs.len());
        let mut total = 0;
        for (index, job) in jobs.iter().enumerate() {
            let SelfKv::Host(host) = &job.cache.self_kv else {
                return Err(unsupported("a batched job's cache holds tensors"));
            };
            if !self.can_batch(job.cache) || job.column.len() != codebooks {
                return Err(ModelError::UnsupportedConfig {
                    field: "batched step".into(),
                    message: format!(
                        "job {index} cannot join: {} tokens for {codebooks} codebooks, position \
                         {} of {}, prefix waiting {}",
                        job.column.len(),
                        job.cache.len,
                        job.cache.capacity,
                        job.cache.prefix.is_some()
                    ),
                });
            }
            rows.push(total..total + host.rows);
            total += host.rows;
        }
        if total == 0 {
            return Ok(());
        }
        let step_buffers = match buffers.buffers.take() {
            Some(existing) if existing.rows(self) >= total => existing,
            _ => Buffers::new(self, total),
        };
        let step_buffers = buffers.buffers.insert(step_buffers);
        let h = self.cfg.hidden_size;
        {
            let x = step_buffers.x.as_mut_slice();
            for (job, rows) in jobs.iter().zip(&rows) {
                let ids = |_: usize, k: usize| job.column[k];
                let x = &mut x[rows.start * h..rows.end * h];
                self.embed(ids, codebooks, job.cache.len, x, rows.len())?;
            }
        }
        let views = jobs
            .iter()
            .zip(&rows)
            .map(|(job, rows)| JobView::new(self, job.cache, rows.start))
            .collect::<Result<Vec<_>>>()?;
        run(self, &WeightViews::new(self)?, &views, step_buffers, total)?;
        drop(views);
        for job in jobs.iter_mut() {
            job.cache.len += 1;
        }
        buffers.rows = rows;
        buffers.row_logits = self.lm_heads.len() * self.cfg.vocab_size;
        Ok(())
    }

    /// Feeds `ids` (`[rows, codebooks, 1]`, row-major) at the cache's next position and
    /// returns its logits `[rows, K, vocab]`: a batch of one job, in the cache's own buffers.
    pub(super) fn forward_on_cpu(
        &self,
        ids: &[u32],
        (rows, codebooks, positions): (usize, usize, usize),
        cache: &mut DecoderCache,
    ) -> Result<Tensor> {
        if positions != 1 {
            return Err(unsupported("the CPU step decodes one position at a time"));
        }
        let SelfKv::Host(host) = &mut cache.self_kv else {
            return Err(unsupported("the cache holds tensors"));
        };
        if rows != host.rows || codebooks > self.embed_tokens.len() {
            return Err(ModelError::UnsupportedConfig {
                field: "decoder ids".into(),
                message: format!(
                    "{rows} rows of {codebooks} codebooks for a cache of {} rows and a \
                     decoder of {} codebooks",
                    host.rows,
                    self.embed_tokens.len()
                ),
            });
        }
        let ids = |b: usize, k: usize| ids[b * codebooks + k];
        self.embed(
            ids,
            codebooks,
            cache.len,
            host.buffers.x.as_mut_slice(),
            rows,
        )?;
        let view = JobView::new(self, cache, 0)?;
        let SelfKv::Host(host) = &cache.self_kv else {
            return Err(unsupported("the cache holds tensors"));
        };
        run(self, &WeightViews::new(self)?, &[view], &host.buffers, rows)?;
        cache.len += 1;
        let SelfKv::Host(host) = &mut cache.self_kv else {
            return Err(unsupported("the cache holds tensors"));
        };
        let logits = host.buffers.logits.as_mut_slice().to_vec();
        let shape = (rows, self.lm_heads.len(), self.cfg.vocab_size);
        Ok(Tensor::from_vec(logits, shape, &Device::Cpu)?)
    }

    /// `x[b]` = the sum of the embeddings of row `b`'s tokens `ids(b, k)` of the first
    /// `codebooks` codebooks, plus the position's sinusoid.
    fn embed(
        &self,
        ids: impl Fn(usize, usize) -> u32,
        codebooks: usize,
        position: usize,
        x: &mut [f32],
        rows: usize,
    ) -> Result<()> {
        let h = self.cfg.hidden_size;
        let positions = some(cpu_data::<f32>(&self.positions)?, NOT_ON_CPU)?;
        let tables = self.embed_tokens[..codebooks]
            .iter()
            .map(|table| some(cpu_data::<f32>(table.embeddings())?, NOT_ON_CPU))
            .collect::<Result<Vec<_>>>()?;
        for (b, x) in x.chunks_exact_mut(h).enumerate().take(rows) {
            x.copy_from_slice(&positions[position * h..(position + 1) * h]);
            for (k, table) in tables.iter().enumerate() {
                let id = ids(b, k) as usize;
                let Some(row) = table.get(id * h..(id + 1) * h) else {
                    return Err(ModelError::UnsupportedConfig {
                        field: format!("codebook {k} token"),
                        message: format!("{id} is past the embedding's {} rows", table.len() / h),
                    });
                };
                for (x, e) in x.iter_mut().zip(row) {
                    *x += e;
                }
            }
        }
        Ok(())
    }
}

/// The weights every row of a step reads.
struct WeightViews<'a> {
    layers: Vec<LayerView<'a>>,
    final_norm: Norm<'a>,
    heads: Vec<CpuWeights<'a>>,
}

impl<'a> WeightViews<'a> {
    fn new(decoder: &'a Decoder) -> Result<Self> {
        let heads: Vec<CpuWeights> = decoder
            .lm_heads
            .iter()
            .map(|head| some(head.cpu_weights(), NOT_ON_CPU))
            .collect::<Result<_>>()?;
        // The heads' phase prepares its input for the first head and cuts every head into
        // the first one's tasks.
        let like_first = |w: &CpuWeights| {
            heads.first().is_some_and(|first| {
                (w.rows(), w.cols(), w.task_features(), w.reads_panels())
                    == (
                        first.rows(),
                        first.cols(),
                        first.task_features(),
                        first.reads_panels(),
                    )
            })
        };
        if !heads.iter().all(like_first) {
            return Err(unsupported("LM heads of different shapes or formats"));
        }
        Ok(Self {
            layers: decoder
                .layers
                .iter()
                .map(LayerView::new)
                .collect::<Result<_>>()?,
            final_norm: Norm::new(&decoder.final_norm)?,
            heads,
        })
    }
}

/// One job's part of a step: its rows of the step's buffers and what its heads read.
struct JobView<'a> {
    /// Its first row in the step's buffers.
    first_row: usize,
    /// Its self-attention cache.
    kv: &'a HostKv,
    /// Cross-attention keys and values per layer, `[rows, heads, text_len, head_dim]`.
    cross: Vec<(CpuData<'a, f32>, CpuData<'a, f32>)>,
    /// `[rows, text_len]`, added to the cross-attention scores; `None` without
    /// cross-attention.
    mask: Option<CpuData<'a, f32>>,
    text_len: usize,
    /// Positions each head of its cache holds.
    capacity: usize,
    /// The position the step decodes.
    position: usize,
}

impl<'a> JobView<'a> {
    /// The view of a job whose cache is the CPU step's, its rows from `first_row` on.
    fn new(decoder: &Decoder, cache: &'a DecoderCache, first_row: usize) -> Result<Self> {
        if cache.prefix.is_some() {
            return Err(unsupported("a prefix runs in the first, batched pass"));
        }
        let SelfKv::Host(host) = &cache.self_kv else {
            return Err(unsupported("the cache holds tensors"));
        };
        let host: &'a HostCache = host;
        let cross = cache
            .layers
            .iter()
            .map(|layer| {
                let keys = some(cpu_data(&layer.cross_k)?, NOT_ON_CPU)?;
                let values = some(cpu_data(&layer.cross_v)?, NOT_ON_CPU)?;
                Ok((keys, values))
            })
            .collect::<Result<Vec<_>>>()?;
        let text_len = cache.layers.first().map_or(Ok(0), |l| l.cross_k.dim(2))?;
        let mask = match &cache.cross_mask {
            Some(mask) => Some(some(cpu_data(mask)?, NOT_ON_CPU)?),
            None => None,
        };
        let cfg = &decoder.cfg;
        let rows = host.rows;
        let cross_len = rows * cfg.num_attention_heads * text_len * cfg.head_dim();
        let text_fits = mask.as_ref().map_or(0, |m| m.len()) == rows * text_len
            && cross
                .iter()
                .all(|(k, v)| k.len() == cross_len && v.len() == cross_len);
        if !text_fits {
            return Err(ModelError::UnsupportedConfig {
                field: "text conditioning".into(),
                message: format!(
                    "the cache's text mask or cross-attention keys do not hold {rows} rows of \
                     {text_len} positions"
                ),
            });
        }
        Ok(Self {
            first_row,
            kv: &host.kv,
            cross,
            mask,
            text_len,
            capacity: cache.capacity,
            position: cache.len,
        })
    }
}

/// Runs one position of every job through every layer and the heads, from the embedded
/// `buffers.x` to `buffers.logits`; `rows` is every job's rows together.
fn run(
    decoder: &Decoder,
    weights: &WeightViews,
    jobs: &[JobView],
    buffers: &Buffers,
    rows: usize,
) -> Result<()> {
    let cfg = &decoder.cfg;
    let mut row_jobs = vec![0; rows];
    for (index, job) in jobs.iter().enumerate() {
        let end = jobs.get(index + 1).map_or(rows, |next| next.first_row);
        row_jobs[job.first_row..end].fill(index);
    }
    let step = Step {
        weights,
        jobs,
        row_jobs,
        buffers,
        rows,
        hidden: cfg.hidden_size,
        ffn: cfg.ffn_dim,
        attention_heads: cfg.num_attention_heads,
        head_dim: cfg.head_dim(),
        vocab: cfg.vocab_size,
        scale: (cfg.head_dim() as f64).powf(-0.5) as f32,
        failed: AtomicBool::new(false),
    };
    phases::run(
        weights.layers.len() * LAYER_PHASES.len() + 1,
        |p| step.tasks(p),
        // SAFETY: `phases::run` runs no task while a phase is prepared.
        |p| unsafe { step.prepare(p) },
        // SAFETY: see `Step::task`.
        |scratch: &mut TaskScratch, p, i| unsafe { step.task(scratch, p, i) },
        TaskScratch::default,
    );
    if step.failed.load(Ordering::Relaxed) {
        return Err(unsupported("a projection's shapes do not fit its kernel"));
    }
    Ok(())
}

/// One position of every job: what its phases read and write.
struct Step<'a> {
    weights: &'a WeightViews<'a>,
    jobs: &'a [JobView<'a>],
    /// The job of each row.
    row_jobs: Vec<usize>,
    buffers: &'a Buffers,
    /// Every job's rows together.
    rows: usize,
    hidden: usize,
    ffn: usize,
    attention_heads: usize,
    head_dim: usize,
    vocab: usize,
    scale: f32,
    /// Set when a kernel declined its shapes (the step's result is then wrong).
    failed: AtomicBool,
}

impl Step<'_> {
    /// Phase `p`'s layer and kind; `None` for the LM heads after the last layer.
    fn phase(&self, p: usize) -> Option<(usize, Phase)> {
        let layer = p / LAYER_PHASES.len();
        (layer < self.weights.layers.len()).then(|| (layer, LAYER_PHASES[p % LAYER_PHASES.len()]))
    }

    /// The projection phase `p` multiplies, its input and their width, and its output.
    fn projection(&self, p: usize) -> Option<(&CpuWeights<'_>, &SharedSlice<f32>, Target<'_>)> {
        let b = self.buffers;
        let (h, ffn) = (self.hidden, self.ffn);
        let target = |buffer, width, epilogue| Target {
            buffer,
            width,
            column: 0,
            epilogue,
        };
        let (l, phase) = self.phase(p)?;
        let layer = &self.weights.layers[l];
        Some(match phase {
            Phase::SelfQkv => (
                &layer.qkv,
                &b.normed,
                target(&b.qkv, 3 * h, Epilogue::Store),
            ),
            Phase::SelfOut => (&layer.self_out, &b.attended, target(&b.x, h, Epilogue::Add)),
            Phase::CrossQuery => (
                &layer.cross.as_ref()?.query,
                &b.normed,
                target(&b.queries, h, Epilogue::Store),
            ),
            Phase::CrossOut => (
                &layer.cross.as_ref()?.out,
                &b.attended,
                target(&b.x, h, Epilogue::Add),
            ),
            Phase::Expand => (
                &layer.fc1,
                &b.normed,
                target(&b.hidden, ffn, Epilogue::Gelu),
            ),
            Phase::Contract => (&layer.fc2, &b.hidden, target(&b.x, h, Epilogue::Add)),
            Phase::SelfHeads | Phase::CrossHeads => return None,
        })
    }

    /// Tasks of an LM head.
    fn head_tasks(&self) -> usize {
        self.weights
            .heads
            .first()
            .map_or(0, |w| w.rows().div_ceil(w.task_features()))
    }

    fn tasks(&self, p: usize) -> usize {
        match self.phase(p) {
            None => self.weights.heads.len() * self.head_tasks(),
            Some((_, Phase::SelfHeads)) => self.rows * self.attention_heads,
            Some((l, Phase::CrossHeads)) => match self.weights.layers[l].cross {
                Some(_) => self.rows * self.attention_heads,
                None => 0,
            },
            Some(_) => self
                .projection(p)
                .map_or(0, |(w, _, _)| w.rows().div_ceil(w.task_features())),
        }
    }

    /// Normalises the residual stream for the phases that start a block, and prepares a
    /// projection's input in the form its weights read (padded f32 rows or 8-bit blocks).
    ///
    /// # Safety
    ///
    /// No task may run meanwhile.
    unsafe fn prepare(&self, p: usize) {
        // SAFETY: no task runs while a phase is prepared (the caller's contract), so these
        // shared buffers have no other reader or writer.
        unsafe {
            let b = self.buffers;
            let h = self.hidden;
            let norm = match self.phase(p) {
                None => Some(&self.weights.final_norm),
                Some((l, Phase::SelfQkv)) => Some(&self.weights.layers[l].self_norm),
                Some((l, Phase::CrossQuery)) => {
                    self.weights.layers[l].cross.as_ref().map(|c| &c.norm)
                }
                Some((l, Phase::Expand)) => Some(&self.weights.layers[l].final_norm),
                Some(_) => None,
            };
            if let Some(norm) = norm {
                let all = 0..self.rows * h;
                norm.apply(b.x.slice(all.clone()), h, b.normed.slice_mut(all));
            }
            let product = match self.phase(p) {
                None => self.weights.heads.first().map(|w| (w, &b.normed)),
                Some(_) => self.projection(p).map(|(w, input, _)| (w, input)),
            };
            if let Some((weights, input)) = product {
                let input = input.slice(0..self.rows * weights.cols());
                b.projected.whole_mut().prepare(*weights, input, self.rows);
            }
        }
    }

    /// Task `i` of phase `p`.
    ///
    /// # Safety
    ///
    /// Called by [`phases::run`] once per task: each task writes only its own features or
    /// heads, and reads only buffers no task of its phase writes.
    unsafe fn task(&self, scratch: &mut TaskScratch, p: usize, i: usize) {
        // SAFETY: each task writes only its own features or heads and reads buffers no
        // task of its phase writes (the caller's contract), as the callees require.
        unsafe {
            match self.phase(p) {
                Some((l, Phase::SelfHeads)) => self.self_head(scratch, l, i),
                Some((l, Phase::CrossHeads)) => self.cross_head(scratch, l, i),
                Some(_) => {
                    if let Some((weights, _, target)) = self.projection(p) {
                        self.project(scratch, weights, i, target);
                    }
                }
                None => {
                    let per_head = self.head_tasks();
                    let (codebook, index) = (i / per_head, i % per_head);
                    let target = Target {
                        buffer: &self.buffers.logits,
                        width: self.weights.heads.len() * self.vocab,
                        column: codebook * self.vocab,
                        epilogue: Epilogue::Store,
                    };
                    let weights = &self.weights.heads[codebook];
                    self.project(scratch, weights, index, target);
                }
            }
        }
    }

    /// Task `index` of a projection: its features for every row, written to `target`.
    ///
    /// # Safety
    ///
    /// As for [`Self::task`]: no task of the phase writes the prepared rows, and no other
    /// task writes this task's features of `target`.
    unsafe fn project(
        &self,
        scratch: &mut TaskScratch,
        weights: &CpuWeights,
        index: usize,
        target: Target,
    ) {
        // SAFETY: the caller's contract: nobody writes the prepared rows, and this task
        // alone writes its features of `target`.
        unsafe {
            let m = self.rows;
            let first = index * weights.task_features();
            let count = weights.task_features().min(weights.rows() - first);
            scratch.sums.resize(count * m, 0.0);
            let rows = self.buffers.projected.get();
            if rows.rows() != m || weights.features(rows, first, &mut scratch.sums).is_none() {
                self.failed.store(true, Ordering::Relaxed);
                return;
            }
            for b in 0..m {
                let start = b * target.width + target.column + first;
                let out = target.buffer.slice_mut(start..start + count);
                let sums = scratch.sums.iter().skip(b).step_by(m);
                match target.epilogue {
                    Epilogue::Store => out.iter_mut().zip(sums).for_each(|(o, s)| *o = *s),
                    Epilogue::Add => out.iter_mut().zip(sums).for_each(|(o, s)| *o += *s),
                    Epilogue::Gelu => {
                        out.iter_mut().zip(sums).for_each(|(o, s)| *o = *s);
                        crate::kernels::activations::gelu_erf_in_place(out);
                    }
                }
            }
        }
    }

    /// Self-attention head `i` (row `i / heads`): stores the position's key and value in
    /// the head's part of its job's cache, then attends over every position so far.
    ///
    /// # Safety
    ///
    /// As for [`Self::task`]: no task of the phase writes the projected rows, and no other
    /// task touches this head's part of the cache or of the output.
    unsafe fn self_head(&self, scratch: &mut TaskScratch, layer: usize, i: usize) {
        let b = i / self.attention_heads;
        let job = &self.jobs[self.row_jobs[b]];
        // SAFETY: the caller's contract, passed on.
        unsafe {
            match job.kv {
                HostKv::F32(kv) => self.self_head_in(scratch, &kv[layer], job, i),
                HostKv::F16(kv) => self.self_head_in(scratch, &kv[layer], job, i),
            }
        }
    }

    /// [`Self::self_head`] over `kv`, the layer's cache of `job`.
    ///
    /// # Safety
    ///
    /// As for [`Self::self_head`].
    unsafe fn self_head_in<E: KvElement>(
        &self,
        scratch: &mut TaskScratch,
        kv: &LayerKv<E>,
        job: &JobView,
        i: usize,
    ) {
        // SAFETY: the caller's contract: nobody writes the projected rows, and this task
        // alone touches its head's part of the cache and of the output.
        unsafe {
            let (h, d, heads) = (self.hidden, self.head_dim, self.attention_heads);
            let (b, head) = (i / heads, i % heads);
            let local = b - job.first_row;
            let qkv = self.buffers.qkv.slice(b * 3 * h..(b + 1) * 3 * h);
            let at = head * d;
            let per_head = job.capacity * d;
            let base = (local * heads + head) * per_head;
            let keys = kv.keys.slice_mut(base..base + per_head);
            let values = kv.values.slice_mut(base..base + per_head);
            let row = job.position * d;
            for j in 0..d {
                keys[row + j] = E::from_f32(qkv[h + at + j]);
                values[row + j] = E::from_f32(qkv[2 * h + at + j]);
            }
            let filled = row + d;
            let out = self.buffers.attended.slice_mut(b * h + at..b * h + at + d);
            let (k, v) = (E::rows(&keys[..filled]), E::rows(&values[..filled]));
            let q = &qkv[at..at + d];
            let next = next_head(kv, base + per_head, filled);
            attend_head(q, k, v, None, self.scale, next, &mut scratch.attention, out);
        }
    }

    /// Cross-attention head `i` (row `i / heads`) over its job's text, masked.
    ///
    /// # Safety
    ///
    /// As for [`Self::task`]: no task of the phase writes the queries, and no other task
    /// writes this head's part of the output.
    unsafe fn cross_head(&self, scratch: &mut TaskScratch, layer: usize, i: usize) {
        // SAFETY: the caller's contract: nobody writes the queries, and this task alone
        // writes its head's part of the output.
        unsafe {
            let (h, d, heads) = (self.hidden, self.head_dim, self.attention_heads);
            let (b, head) = (i / heads, i % heads);
            let job = &self.jobs[self.row_jobs[b]];
            let local = b - job.first_row;
            let text = job.text_len;
            let at = head * d;
            let q = self.buffers.queries.slice(b * h + at..b * h + at + d);
            let (keys, values) = &job.cross[layer];
            let part = (local * heads + head) * text * d..(local * heads + head + 1) * text * d;
            let (k, v) = (
                CacheRows::F32(&keys[part.clone()]),
                CacheRows::F32(&values[part.clone()]),
            );
            let Some(mask) = &job.mask else {
                return;
            };
            let mask = &mask[local * text..(local + 1) * text];
            let out = self.buffers.attended.slice_mut(b * h + at..b * h + at + d);
            let next = NextHead {
                keys: CacheRows::F32(&keys[part.end..]).as_bytes(),
                values: CacheRows::F32(&values[part.end..]).as_bytes(),
            };
            let (scale, scratch) = (self.scale, &mut scratch.attention);
            attend_head(q, k, v, Some(mask), scale, Some(next), scratch, out);
        }
    }
}

/// The filled keys and values of the head whose part of the cache starts at `base` (this
/// thread's next task, unless its segment ends), to prefetch; `None` past the cache.
fn next_head<E>(kv: &LayerKv<E>, base: usize, filled: usize) -> Option<NextHead> {
    let size = std::mem::size_of::<E>();
    (base + filled <= kv.keys.len()).then(|| NextHead {
        keys: (kv.keys.as_ptr().wrapping_add(base).cast(), filled * size),
        values: (kv.values.as_ptr().wrapping_add(base).cast(), filled * size),
    })
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Tensor};

    use super::super::{Conditioning, Decoder, DecoderCache, SelfKv};
    use crate::musicgen::presets::preset;
    use crate::quant::WeightFormat;
    use crate::weights::Weights;

    const TEXT_IN: usize = 32;

    /// A small random decoder: hidden 128 in `heads` heads (2 heads are MusicGen's 64 wide,
    /// 4 heads take the general head kernel), feed-forward 256, every projection
    /// quantizable.
    fn decoder(heads: usize, format: WeightFormat, kv: DType) -> Decoder {
        decoder_with(heads, format, kv, Some(TEXT_IN))
    }

    /// [`decoder`] with cross-attention from `cross_in`-wide states, or without.
    fn decoder_with(
        heads: usize,
        format: WeightFormat,
        kv: DType,
        cross_in: Option<usize>,
    ) -> Decoder {
        let mut cfg = preset("tiny").unwrap().decoder;
        cfg.hidden_size = 128;
        cfg.ffn_dim = 256;
        cfg.num_attention_heads = heads;
        let weights = Weights::random(11, &Device::Cpu);
        let vb = weights.root(DType::F32).pp("decoder");
        let mut decoder = Decoder::new(&cfg, cross_in, vb, format).unwrap();
        decoder.set_kv_dtype(kv);
        decoder
    }

    /// The step's cache and one on the general path for the same text: `rows` rows, the
    /// first seeing 3 of 5 text positions, a second (guidance's unconditional row) none.
    fn caches(decoder: &Decoder, rows: usize, capacity: usize) -> (DecoderCache, DecoderCache) {
        let mut rng = crate::random::Rng::new(5);
        let states = rng.uniform_f32s(rows * 5 * TEXT_IN, -1.0, 1.0);
        let states = Tensor::from_vec(states, (rows, 5, TEXT_IN), &Device::Cpu).unwrap();
        let mask: Vec<f32> = (0..rows * 5)
            .map(|i| if i < 3 { 1.0 } else { 0.0 })
            .collect();
        let mask = Tensor::from_vec(mask, (rows, 5), &Device::Cpu).unwrap();
        let conditioning = Conditioning::CrossAttention {
            states: &states,
            mask: &mask,
        };
        both_caches(decoder, conditioning, rows, capacity)
    }

    /// A cache for the CPU step and one for the general path, for the same conditioning.
    fn both_caches(
        decoder: &Decoder,
        conditioning: Conditioning,
        rows: usize,
        capacity: usize,
    ) -> (DecoderCache, DecoderCache) {
        let step = decoder.new_cache(conditioning, capacity).unwrap();
        assert!(matches!(step.self_kv, SelfKv::Host(_)));
        let tensors = decoder
            .self_kv_tensors(rows, step.capacity(), &Device::Cpu)
            .unwrap();
        let general = decoder
            .new_cache_with(conditioning, step.capacity(), tensors)
            .unwrap();
        (step, general)
    }

    /// Largest difference of the two logits over the largest logit.
    fn relative_difference(a: &Tensor, b: &Tensor) -> f32 {
        assert_eq!(a.dims(), b.dims());
        let a = a.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let b = b.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let peak = a.iter().fold(0f32, |m, x| m.max(x.abs()));
        let worst = a
            .iter()
            .zip(&b)
            .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        assert!(peak > 0.0 && worst.is_finite());
        worst / peak
    }

    /// Three positions in a first, batched pass (written into the step's buffers), three
    /// one at a time, then three more batched (attending to what the step's buffers hold):
    /// the logits agree with candle's composition of
    /// the same layers, for dense and quantized weights, f32 and f16 caches, both head
    /// kernels, with and without a guidance row. Dense weights agree to rounding (both
    /// paths project through the same panels, which `quant`'s tests hold against candle's
    /// matmul).
    #[test]
    fn the_cpu_step_matches_the_general_path() {
        for (heads, format, kv, rows, tolerance) in [
            (2, WeightFormat::Dense, DType::F32, 2, 1e-5),
            (4, WeightFormat::Dense, DType::F32, 1, 1e-5),
            (2, WeightFormat::Dense, DType::F16, 2, 1e-4),
            (4, WeightFormat::Dense, DType::F16, 2, 1e-4),
            // The step normalises in two passes, candle in one: an activation an ulp
            // apart can round to the next 8-bit level, which 4-bit weights turn into up to
            // 1% of the logits. A wrong buffer or feature would be off by their size.
            (2, WeightFormat::Q8, DType::F16, 2, 2e-2),
            (2, WeightFormat::Q4, DType::F32, 2, 2e-2),
        ] {
            let case = format!("{heads} heads, {format:?}, {kv:?} cache, {rows} rows");
            let decoder = decoder(heads, format, kv);
            let (mut step, mut general) = caches(&decoder, rows, 10);
            let k = decoder.cfg.num_codebooks;
            for (position, width) in [1, 1, 1, 1, 1, 3].into_iter().enumerate() {
                let ids: Vec<u32> = (0..rows * k * width)
                    .map(|i| ((i * 7 + position * 13) % 50) as u32)
                    .collect();
                let ids = Tensor::from_vec(ids, (rows, k, width), &Device::Cpu).unwrap();
                let ours = decoder.forward(&ids, &mut step).unwrap();
                let theirs = decoder.forward(&ids, &mut general).unwrap();
                let difference = relative_difference(&theirs, &ours);
                assert!(
                    difference <= tolerance,
                    "{case}, call {position}: {difference}"
                );
                assert_eq!(step.len(), general.len());
            }
        }
    }

    /// A decoder without cross-attention (MusicGen-Melody's), conditioned on a prefix of 6
    /// states: the first call runs the prefix and its columns in one pass into either
    /// cache, and steps after it agree on both paths. Cross-attention states for it, or a
    /// prefix for a decoder with cross-attention, are refused.
    #[test]
    fn a_prefix_decoder_steps_alike_on_both_paths() {
        let hidden = 128;
        for kv in [DType::F32, DType::F16] {
            let decoder = decoder_with(2, WeightFormat::Dense, kv, None);
            let rows = 2;
            let mut rng = crate::random::Rng::new(9);
            let prefix = rng.uniform_f32s(rows * 6 * hidden, -1.0, 1.0);
            let prefix = Tensor::from_vec(prefix, (rows, 6, hidden), &Device::Cpu).unwrap();
            let (mut step, mut general) =
                both_caches(&decoder, Conditioning::Prefix(&prefix), rows, 6);
            assert_eq!((step.len(), step.capacity()), (0, 12));
            let k = decoder.cfg.num_codebooks;
            // The first call runs the prefix and three columns in one pass.
            for (position, width) in [3, 1, 1, 1].into_iter().enumerate() {
                let ids: Vec<u32> = (0..rows * k * width)
                    .map(|i| ((i * 5 + position) % 40) as u32)
                    .collect();
                let ids = Tensor::from_vec(ids, (rows, k, width), &Device::Cpu).unwrap();
                let ours = decoder.forward(&ids, &mut step).unwrap();
                let theirs = decoder.forward(&ids, &mut general).unwrap();
                let difference = relative_difference(&theirs, &ours);
                assert!(
                    difference <= 1e-4,
                    "{kv:?} cache, step {position}: {difference}"
                );
                assert_eq!(step.len(), general.len());
            }
            assert_eq!(step.len(), 6 + 6);
            let states = Tensor::zeros((1, 3, TEXT_IN), DType::F32, &Device::Cpu).unwrap();
            let mask = Tensor::ones((1, 3), DType::F32, &Device::Cpu).unwrap();
            let cross = Conditioning::CrossAttention {
                states: &states,
                mask: &mask,
            };
            assert!(decoder.new_cache(cross, 4).is_err());
            let with_cross = decoder_with(2, WeightFormat::Dense, kv, Some(TEXT_IN));
            assert!(with_cross
                .new_cache(Conditioning::Prefix(&prefix), 4)
                .is_err());
        }
    }

    #[test]
    fn a_token_past_the_embeddings_is_an_error_naming_its_codebook() {
        let decoder = decoder(2, WeightFormat::Dense, DType::F32);
        let (mut step, _) = caches(&decoder, 1, 4);
        let k = decoder.cfg.num_codebooks;
        let mut ids = vec![0u32; k];
        ids[1] = decoder.cfg.vocab_size as u32 + 1;
        let ids = Tensor::from_vec(ids, (1, k, 1), &Device::Cpu).unwrap();
        let error = decoder.forward(&ids, &mut step).unwrap_err().to_string();
        assert!(error.contains("codebook 1"), "{error}");
        assert_eq!(step.len(), 0, "a failed step leaves the cache's length");
    }

    #[test]
    fn a_text_mask_of_other_rows_or_no_columns_are_errors() {
        let decoder = decoder(2, WeightFormat::Dense, DType::F32);
        let states = Tensor::zeros((2, 5, TEXT_IN), DType::F32, &Device::Cpu).unwrap();
        let mask = Tensor::ones((1, 5), DType::F32, &Device::Cpu).unwrap();
        let conditioning = Conditioning::CrossAttention {
            states: &states,
            mask: &mask,
        };
        let mut cache = decoder.new_cache(conditioning, 4).unwrap();
        let k = decoder.cfg.num_codebooks;
        let ids = Tensor::zeros((2, k, 1), DType::U32, &Device::Cpu).unwrap();
        let error = decoder.forward(&ids, &mut cache).unwrap_err().to_string();
        assert!(error.contains("text mask"), "{error}");
        let (mut step, _) = caches(&decoder, 2, 4);
        let none = Tensor::zeros((2, k, 0), DType::U32, &Device::Cpu).unwrap();
        let error = decoder.forward(&none, &mut step).unwrap_err().to_string();
        assert!(error.contains("0 columns"), "{error}");
    }

    #[test]
    fn ids_for_other_rows_than_the_cache_holds_are_an_error() {
        let decoder = decoder(2, WeightFormat::Dense, DType::F32);
        let (mut step, _) = caches(&decoder, 2, 4);
        let k = decoder.cfg.num_codebooks;
        let ids = Tensor::from_vec(vec![0u32; k], (1, k, 1), &Device::Cpu).unwrap();
        let error = decoder.forward(&ids, &mut step).unwrap_err().to_string();
        assert!(
            error.contains("1 rows") && error.contains("2 rows"),
            "{error}"
        );
        assert_eq!(step.len(), 0);
    }
}
