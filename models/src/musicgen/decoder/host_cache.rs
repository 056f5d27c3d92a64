//! The CPU step's own memory ([`super::cpu_step`]): the self-attention cache of every
//! layer as plain buffers, in f32 or f16, and the buffers a step works in, allocated once
//! per job.

use candle_core::Tensor;
use half::f16;

use super::Decoder;
use crate::attention::CacheRows;
use crate::error::Result;
use crate::phases::{Shared, SharedSlice};
use crate::quant::QuantizedRows;

/// A cache element of the self-attention keys and values.
pub(super) trait KvElement: Copy + Default + Send + Sync {
    fn from_f32(x: f32) -> Self;
    fn rows(values: &[Self]) -> CacheRows<'_>;
}

impl KvElement for f32 {
    fn from_f32(x: f32) -> Self {
        x
    }
    fn rows(values: &[Self]) -> CacheRows<'_> {
        CacheRows::F32(values)
    }
}

impl KvElement for f16 {
    fn from_f32(x: f32) -> Self {
        f16::from_f32(x)
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
    /// Writes `keys` and `values` (`[rows, heads, P, head_dim]`, row-major) at positions
    /// `0..P` of each head's `capacity` positions.
    fn store_prefix(&mut self, keys: &[f32], values: &[f32], span: usize, capacity: usize) {
        for (cache, prefix) in [
            (self.keys.as_mut_slice(), keys),
            (self.values.as_mut_slice(), values),
        ] {
            for (head, prefix) in cache
                .chunks_exact_mut(capacity)
                .zip(prefix.chunks_exact(span))
            {
                for (slot, value) in head.iter_mut().zip(prefix) {
                    *slot = E::from_f32(*value);
                }
            }
        }
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
    /// The current projection's input quantized, for quantized weights.
    pub(super) quantized: Shared<QuantizedRows>,
    /// `[rows, codebooks, vocab]`.
    pub(super) logits: SharedSlice<f32>,
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
        let zeros = |n: usize| SharedSlice::new(vec![0f32; n]);
        let kv = (0..cfg.num_hidden_layers)
            .map(|_| LayerKv {
                keys: SharedSlice::new(vec![E::default(); per_layer]),
                values: SharedSlice::new(vec![E::default(); per_layer]),
            })
            .collect();
        Self {
            kv: wrap(kv),
            buffers: Buffers {
                x: zeros(rows * h),
                normed: zeros(rows * h),
                qkv: zeros(rows * 3 * h),
                queries: zeros(rows * h),
                attended: zeros(rows * h),
                hidden: zeros(rows * cfg.ffn_dim),
                quantized: Shared::new(QuantizedRows::default()),
                logits: zeros(rows * decoder.lm_heads.len() * cfg.vocab_size),
            },
            rows,
            capacity,
        }
    }

    /// A cache of f32 keys and values.
    pub(super) fn f32(decoder: &Decoder, rows: usize, capacity: usize) -> Self {
        Self::new::<f32>(decoder, rows, capacity, HostKv::F32)
    }

    /// Writes layer `layer`'s prefix keys and values (`[rows, heads, P, head_dim]` f32
    /// tensors) at the first positions.
    pub(super) fn store_prefix(
        &mut self,
        layer: usize,
        keys: &Tensor,
        values: &Tensor,
        rows: usize,
    ) -> Result<()> {
        let (_, heads, positions, head_dim) = keys.dims4()?;
        let read = |t: &Tensor| -> Result<Vec<f32>> {
            Ok(t.to_dtype(candle_core::DType::F32)?
                .flatten_all()?
                .to_vec1()?)
        };
        let (keys, values) = (read(keys)?, read(values)?);
        let span = positions * head_dim;
        let capacity = self.capacity * head_dim;
        let fits = keys.len() == rows * heads * span && rows == self.rows;
        match (&mut self.kv, fits) {
            (HostKv::F32(kv), true) => kv[layer].store_prefix(&keys, &values, span, capacity),
            (HostKv::F16(kv), true) => kv[layer].store_prefix(&keys, &values, span, capacity),
            _ => {
                return Err(crate::ModelError::UnsupportedConfig {
                    field: "decoder prefix".into(),
                    message: format!("{rows} rows for a cache of {}", self.rows),
                })
            }
        }
        Ok(())
    }

    /// A cache of f16 keys and values.
    pub(super) fn f16(decoder: &Decoder, rows: usize, capacity: usize) -> Self {
        Self::new::<f16>(decoder, rows, capacity, HostKv::F16)
    }
}
