//! The CPU step's own memory ([`super::cpu_step`]): the self-attention cache of every
//! layer as plain buffers, in f32 or f16, and the buffers a step works in, allocated once
//! per job.

use candle_core::{DType, Device, Tensor};
use half::f16;

use super::Decoder;
use crate::error::Result;
use crate::kernels::attention::CacheRows;
use crate::kernels::phases::{Shared, SharedSlice};
use crate::quant::ProjectionRows;

/// A cache element of the self-attention keys and values.
pub(super) trait KvElement: Copy + Default + Send + Sync {
    fn from_f32(x: f32) -> Self;
    fn to_f32(self) -> f32;
    fn rows(values: &[Self]) -> CacheRows<'_>;
}

impl KvElement for f32 {
    fn from_f32(x: f32) -> Self {
        x
    }
    fn to_f32(self) -> f32 {
        self
    }
    fn rows(values: &[Self]) -> CacheRows<'_> {
        CacheRows::F32(values)
    }
}

impl KvElement for f16 {
    fn from_f32(x: f32) -> Self {
        f16::from_f32(x)
    }
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
    fn rows(values: &[Self]) -> CacheRows<'_> {
        CacheRows::F16(values)
    }
}

/// One layer's self-attention keys and values, `[rows, heads, capacity, head_dim]` each.
pub(super) struct LayerKv<E> {
    pub(super) keys: SharedSlice<E>,
    pub(super) values: SharedSlice<E>,
}

impl<E: KvElement> LayerKv<E> {
    /// Writes `keys` and `values` (`[rows, heads, P, head_dim]`, row-major, `span` =
    /// `P * head_dim` per head) from element `start` of each head's `capacity` elements.
    fn store(&mut self, keys: &[f32], values: &[f32], start: usize, span: usize, capacity: usize) {
        for (cache, new) in [
            (self.keys.as_mut_slice(), keys),
            (self.values.as_mut_slice(), values),
        ] {
            for (head, new) in cache.chunks_exact_mut(capacity).zip(new.chunks_exact(span)) {
                for (slot, value) in head[start..start + span].iter_mut().zip(new) {
                    *slot = E::from_f32(*value);
                }
            }
        }
    }

    /// The first `len` elements of each head's `capacity`, widened to f32: `[rows, heads,
    /// positions, head_dim]` flattened.
    fn read(&mut self, len: usize, capacity: usize) -> (Vec<f32>, Vec<f32>) {
        let widen = |cache: &mut SharedSlice<E>| -> Vec<f32> {
            cache
                .as_mut_slice()
                .chunks_exact(capacity)
                .flat_map(|head| head[..len].iter().map(|v| v.to_f32()))
                .collect()
        };
        (widen(&mut self.keys), widen(&mut self.values))
    }
}

/// The self-attention cache of every layer, in f32 or f16.
pub(super) enum HostKv {
    F32(Vec<LayerKv<f32>>),
    F16(Vec<LayerKv<f16>>),
}

/// The buffers a step works in, allocated once per job.
pub(super) struct Buffers {
    /// The residual stream `[rows, hidden]`.
    pub(super) x: SharedSlice<f32>,
    /// A norm's output, the next projection's input `[rows, hidden]`.
    pub(super) normed: SharedSlice<f32>,
    /// Self-attention queries, keys and values `[rows, 3 * hidden]`.
    pub(super) qkv: SharedSlice<f32>,
    /// Cross-attention queries `[rows, hidden]`.
    pub(super) queries: SharedSlice<f32>,
    /// The heads' outputs `[rows, hidden]`, the output projection's input.
    pub(super) attended: SharedSlice<f32>,
    /// GELU of the first feed-forward projection `[rows, ffn]`.
    pub(super) hidden: SharedSlice<f32>,
    /// The current projection's input in the form its weights read.
    pub(super) projected: Shared<ProjectionRows>,
    /// `[rows, codebooks, vocab]`.
    pub(super) logits: SharedSlice<f32>,
}

impl Buffers {
    /// Buffers for a step of `rows` rows of `decoder`.
    pub(super) fn new(decoder: &Decoder, rows: usize) -> Self {
        let cfg = &decoder.cfg;
        let h = cfg.hidden_size;
        let zeros = |n: usize| SharedSlice::new(vec![0f32; n]);
        Self {
            x: zeros(rows * h),
            normed: zeros(rows * h),
            qkv: zeros(rows * 3 * h),
            queries: zeros(rows * h),
            attended: zeros(rows * h),
            hidden: zeros(rows * cfg.ffn_dim),
            projected: Shared::new(ProjectionRows::default()),
            logits: zeros(rows * decoder.lm_heads.len() * cfg.vocab_size),
        }
    }

    /// Rows of hidden state these buffers hold.
    pub(super) fn rows(&self, decoder: &Decoder) -> usize {
        self.x.len() / decoder.cfg.hidden_size
    }
}

/// The self-attention cache and step buffers of one job on the CPU.
pub(super) struct HostCache {
    pub(super) kv: HostKv,
    pub(super) buffers: Buffers,
    pub(super) rows: usize,
    /// Positions each head holds.
    capacity: usize,
}

impl HostCache {
    /// Room for `capacity` positions of `rows` rows, keys and values stored as `E`.
    fn new<E: KvElement>(
        decoder: &Decoder,
        rows: usize,
        capacity: usize,
        wrap: impl FnOnce(Vec<LayerKv<E>>) -> HostKv,
    ) -> Self {
        let cfg = &decoder.cfg;
        let h = cfg.hidden_size;
        let per_layer = rows * h * capacity;
        let kv = (0..cfg.num_hidden_layers)
            .map(|_| LayerKv {
                keys: SharedSlice::new(vec![E::default(); per_layer]),
                values: SharedSlice::new(vec![E::default(); per_layer]),
            })
            .collect();
        Self {
            kv: wrap(kv),
            buffers: Buffers::new(decoder, rows),
            rows,
            capacity,
        }
    }

    /// A cache of f32 keys and values.
    pub(super) fn f32(decoder: &Decoder, rows: usize, capacity: usize) -> Self {
        Self::new::<f32>(decoder, rows, capacity, HostKv::F32)
    }

    /// Writes layer `layer`'s keys and values of positions `offset..offset + P` (`[rows,
    /// heads, P, head_dim]` tensors).
    pub(super) fn store(
        &mut self,
        layer: usize,
        offset: usize,
        keys: &Tensor,
        values: &Tensor,
    ) -> Result<()> {
        let (rows, _, positions, head_dim) = keys.dims4()?;
        let read = |t: &Tensor| -> Result<Vec<f32>> {
            Ok(t.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?)
        };
        let (keys, values) = (read(keys)?, read(values)?);
        let span = positions * head_dim;
        let capacity = self.capacity * head_dim;
        let fits = rows == self.rows && offset + positions <= self.capacity;
        match (&mut self.kv, fits) {
            (HostKv::F32(kv), true) => {
                kv[layer].store(&keys, &values, offset * head_dim, span, capacity)
            }
            (HostKv::F16(kv), true) => {
                kv[layer].store(&keys, &values, offset * head_dim, span, capacity)
            }
            _ => {
                return Err(crate::ModelError::UnsupportedConfig {
                    field: "decoder cache".into(),
                    message: format!(
                    "{rows} rows at positions {offset}..{} for a cache of {} rows and {} positions",
                    offset + positions,
                    self.rows,
                    self.capacity
                ),
                })
            }
        }
        Ok(())
    }

    /// Layer `layer`'s keys and values of positions `0..len` as f32 tensors `[rows, heads,
    /// len, head_dim]`, as the cache stores them (an f16 cache's rounding included).
    pub(super) fn read(
        &mut self,
        layer: usize,
        len: usize,
        heads: usize,
        head_dim: usize,
    ) -> Result<(Tensor, Tensor)> {
        let (span, capacity) = (len * head_dim, self.capacity * head_dim);
        let (keys, values) = match &mut self.kv {
            HostKv::F32(kv) => kv[layer].read(span, capacity),
            HostKv::F16(kv) => kv[layer].read(span, capacity),
        };
        let shape = (self.rows, heads, len, head_dim);
        Ok((
            Tensor::from_vec(keys, shape, &Device::Cpu)?,
            Tensor::from_vec(values, shape, &Device::Cpu)?,
        ))
    }

    /// A cache of f16 keys and values.
    pub(super) fn f16(decoder: &Decoder, rows: usize, capacity: usize) -> Self {
        Self::new::<f16>(decoder, rows, capacity, HostKv::F16)
    }
}
