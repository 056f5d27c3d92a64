//! The MusicGen decoder: summed codebook embeddings, exact sinusoidal positions, pre-norm
//! layers with causal self-attention (KV cache) and cross-attention to the text (K/V computed
//! once per job), a final norm and one head per codebook. MusicGen-Melody's decoder has no
//! cross-attention: its conditioning is a prefix of states run through the layers before the
//! first audio token ([`Conditioning::Prefix`]).

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Embedding, LayerNorm};
use half::f16;

mod cpu_step;
mod cpu_views;
mod host_cache;

pub use cpu_step::{BatchJob, StepBuffers};

use super::config::DecoderConfig;
use crate::error::Result;
use crate::kernels::attention::{attend_one, CacheRows};
use crate::kernels::tensor::cpu_data;
use crate::quant::{Proj, WeightFormat};
use crate::weights::Vb;

/// LayerNorm epsilon of every decoder norm (PyTorch's default).
const LAYER_NORM_EPS: f64 = 1e-5;

/// The sinusoidal position table `[positions, hidden]`: cos then sin, frequencies
/// `exp(-i * ln(10000) / (half - 1))`, all in f32 as transformers computes it.
pub fn sinusoidal_table(positions: usize, hidden: usize, device: &Device) -> Result<Tensor> {
    let half = hidden / 2;
    let step = -((10000f64).ln() / (half as f64 - 1.0)) as f32;
    let inv_freq: Vec<f32> = (0..half).map(|i| (i as f32 * step).exp()).collect();
    let mut table = Vec::with_capacity(positions * hidden);
    for p in 0..positions {
        let angles = inv_freq.iter().map(|f| p as f32 * f);
        table.extend(angles.clone().map(f32::cos));
        table.extend(angles.map(f32::sin));
    }
    Ok(Tensor::from_vec(table, (positions, hidden), device)?)
}

/// A projection without bias from `in_dim` to `out_dim`, stored in `format`.
fn proj(in_dim: usize, out_dim: usize, vb: Vb, format: WeightFormat) -> Result<Proj> {
    Proj::new(vb.get(&[out_dim, in_dim], "weight")?, format)
}

fn layer_norm(size: usize, vb: Vb) -> Result<LayerNorm> {
    Ok(LayerNorm::new(
        vb.get(&[size], "weight")?,
        vb.get(&[size], "bias")?,
        LAYER_NORM_EPS,
    ))
}

/// Where an attention's queries, keys and values come from.
enum Inputs {
    /// Self-attention: one product with `[q; k; v]` (`[3 * hidden, hidden]`) projects the
    /// same input three ways, so a step quantizes its activations and wakes the thread
    /// pool once instead of three times.
    Fused(Proj),
    /// Cross-attention: queries from the decoder each step; keys and values from the text,
    /// once per job (so they stay dense).
    Separate { q: Proj, k: Proj, v: Proj },
}

/// Multi-head attention without biases; `q` is scaled by `head_dim^-0.5` before the product.
struct Attention {
    inputs: Inputs,
    out: Proj,
    heads: usize,
    head_dim: usize,
}

impl Attention {
    /// Self-attention of `hidden` features, its projections stored in `format`.
    fn self_attention(hidden: usize, heads: usize, vb: Vb, format: WeightFormat) -> Result<Self> {
        let weight = |name: &str| vb.pp(name).get(&[hidden, hidden], "weight");
        let fused = Tensor::cat(
            &[weight("q_proj")?, weight("k_proj")?, weight("v_proj")?],
            0,
        )?;
        Ok(Self {
            inputs: Inputs::Fused(Proj::new(fused, format)?),
            out: proj(hidden, hidden, vb.pp("out_proj"), format)?,
            heads,
            head_dim: hidden / heads,
        })
    }

    /// Cross-attention to `kv_in`-wide text states: queries and output stored in `format`,
    /// keys and values dense.
    fn cross_attention(
        hidden: usize,
        kv_in: usize,
        heads: usize,
        vb: Vb,
        format: WeightFormat,
    ) -> Result<Self> {
        Ok(Self {
            inputs: Inputs::Separate {
                q: proj(hidden, hidden, vb.pp("q_proj"), format)?,
                k: proj(kv_in, hidden, vb.pp("k_proj"), WeightFormat::Dense)?,
                v: proj(kv_in, hidden, vb.pp("v_proj"), WeightFormat::Dense)?,
            },
            out: proj(hidden, hidden, vb.pp("out_proj"), format)?,
            heads,
            head_dim: hidden / heads,
        })
    }

    /// `[B, T, hidden]` -> `[B, heads, T, head_dim]`, contiguous.
    fn split_heads(&self, xs: &Tensor) -> Result<Tensor> {
        let (b, t, _) = xs.dims3()?;
        Ok(xs
            .reshape((b, t, self.heads, self.head_dim))?
            .transpose(1, 2)?
            .contiguous()?)
    }

    /// The queries `[B, T, hidden]` (unscaled) and the keys and values
    /// `[B, heads, T, head_dim]` of `xs`.
    fn queries_keys_values(&self, xs: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
        let (q, k, v) = match &self.inputs {
            Inputs::Fused(qkv) => {
                let all = qkv.forward(xs)?;
                let hidden = self.heads * self.head_dim;
                let part = |i: usize| all.narrow(2, i * hidden, hidden);
                (part(0)?.contiguous()?, part(1)?, part(2)?)
            }
            Inputs::Separate { q, k, v } => (q.forward(xs)?, k.forward(xs)?, v.forward(xs)?),
        };
        Ok((q, self.split_heads(&k)?, self.split_heads(&v)?))
    }

    /// The queries of `xs` `[B, T, hidden]`, unscaled.
    fn queries(&self, xs: &Tensor) -> Result<Tensor> {
        match &self.inputs {
            Inputs::Separate { q, .. } => Ok(q.forward(xs)?),
            Inputs::Fused(_) => Ok(self.queries_keys_values(xs)?.0),
        }
    }

    /// The keys and values `[B, heads, T, head_dim]` of `xs`.
    fn keys_values(&self, xs: &Tensor) -> Result<(Tensor, Tensor)> {
        match &self.inputs {
            Inputs::Separate { k, v, .. } => Ok((
                self.split_heads(&k.forward(xs)?)?,
                self.split_heads(&v.forward(xs)?)?,
            )),
            Inputs::Fused(_) => {
                let (_, k, v) = self.queries_keys_values(xs)?;
                Ok((k, v))
            }
        }
    }

    /// Attends the queries `q` `[B, T, hidden]` (unscaled) to the first `len` positions of
    /// `k`, `v` `[B, heads, capacity, head_dim]` with an optional additive mask
    /// broadcastable to `[B, heads, T, len]`.
    fn attend(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        len: usize,
        mask: Option<&Tensor>,
    ) -> Result<Tensor> {
        let (b, t, _) = q.dims3()?;
        let scale = (self.head_dim as f64).powf(-0.5);
        if t == 1 {
            if let Some(out) = self.attend_one_on_cpu(q, k, v, len, mask, scale as f32)? {
                return Ok(self.out.forward(&out)?);
            }
        }
        // A cache stored in another dtype (an f16 cache of an f32 model) computes in the
        // model's.
        let (k, v) = (
            k.narrow(2, 0, len)?.to_dtype(q.dtype())?,
            v.narrow(2, 0, len)?.to_dtype(q.dtype())?,
        );
        let q = self.split_heads(&(q * scale)?)?;
        let scores = q.matmul(&k.t()?)?;
        // Masked softmax runs in f32: the mask's most negative f32 would be -inf in half
        // precision, and a fully masked row (the unconditional guidance row) would be NaN.
        let probs = match mask {
            Some(mask) => {
                let scores = scores.to_dtype(DType::F32)?.broadcast_add(mask)?;
                candle_nn::ops::softmax_last_dim(&scores)?.to_dtype(q.dtype())?
            }
            None => candle_nn::ops::softmax_last_dim(&scores)?,
        };
        let out = probs.matmul(&v)?.transpose(1, 2)?.reshape((b, t, ()))?;
        Ok(self.out.forward(&out)?)
    }

    /// One position's attention through the fused CPU kernel ([`crate::attention`]), for f32
    /// tensors on the CPU; `None` leaves other cases to the general path. The result is
    /// `[B, 1, hidden]`, before the output projection.
    fn attend_one_on_cpu(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        len: usize,
        mask: Option<&Tensor>,
        scale: f32,
    ) -> Result<Option<Tensor>> {
        let (rows, heads, capacity, head_dim) = k.dims4()?;
        if !q.device().is_cpu() || q.dtype() != DType::F32 {
            return Ok(None);
        }
        let shape = crate::kernels::attention::Shape {
            rows,
            heads,
            head_dim,
            capacity,
            len,
        };
        // `[B, 1, hidden]` is already `[B, heads, head_dim]` in memory.
        // The text mask is `[B, 1, 1, len]`: a few floats, copied.
        let mask = match mask {
            Some(mask) => Some(mask.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?),
            None => None,
        };
        let mut out = vec![0f32; rows * heads * head_dim];
        let device = q.device().clone();
        let Some(q) = cpu_data::<f32>(q)? else {
            return Ok(None);
        };
        let mask = mask.as_deref();
        let done = match k.dtype() {
            DType::F32 => match (cpu_data::<f32>(k)?, cpu_data::<f32>(v)?) {
                (Some(k), Some(v)) => {
                    let (k, v) = (CacheRows::F32(&k), CacheRows::F32(&v));
                    attend_one(&q, k, v, mask, shape, scale, &mut out)
                }
                _ => None,
            },
            DType::F16 => match (cpu_data::<f16>(k)?, cpu_data::<f16>(v)?) {
                (Some(k), Some(v)) => {
                    let (k, v) = (CacheRows::F16(&k), CacheRows::F16(&v));
                    attend_one(&q, k, v, mask, shape, scale, &mut out)
                }
                _ => None,
            },
            _ => None,
        };
        if done.is_none() {
            return Ok(None);
        }
        Ok(Some(Tensor::from_vec(
            out,
            (rows, 1, heads * head_dim),
            &device,
        )?))
    }
}

/// A layer's cross-attention block: its norm and attention.
struct CrossBlock {
    norm: LayerNorm,
    attn: Attention,
}

struct Layer {
    self_attn_norm: LayerNorm,
    self_attn: Attention,
    /// `None` in MusicGen-Melody's decoder.
    cross: Option<CrossBlock>,
    final_norm: LayerNorm,
    fc1: Proj,
    fc2: Proj,
}

/// What a job's decoder is conditioned on, for [`Decoder::new_cache`].
#[derive(Clone, Copy)]
pub enum Conditioning<'a> {
    /// Cross-attention to `states` `[B, T, cross_in]` under `mask` `[B, T]` (1 for tokens).
    CrossAttention {
        /// The encoder's states.
        states: &'a Tensor,
        /// 1 for a token, 0 for padding.
        mask: &'a Tensor,
    },
    /// States `[B, P, hidden]` that take the first `P` positions, before the audio tokens,
    /// seen through self-attention alone (MusicGen-Melody's chroma and text).
    Prefix(&'a Tensor),
}

/// One layer's cross-attention K/V, computed from the job's text once.
struct LayerCache {
    cross_k: Tensor,
    cross_v: Tensor,
}

/// The self-attention K/V of every layer, preallocated to the job's length.
enum SelfKv {
    /// `[B, heads, capacity, head_dim]` tensors per layer, for the general path.
    Tensors(Vec<(Tensor, Tensor)>),
    /// Plain buffers for the CPU step ([`cpu_step`]), with its working buffers.
    Host(Box<host_cache::HostCache>),
}

/// Per-job decoder state: the KV caches and how many positions they hold. Each job owns
/// its own, so jobs can be batched, cancelled and resumed independently.
pub struct DecoderCache {
    /// Cross-attention K/V per layer; empty for a decoder without cross-attention.
    layers: Vec<LayerCache>,
    self_kv: SelfKv,
    /// Additive cross-attention mask `[B, 1, 1, T_text]` in f32 (most negative finite
    /// value on padding, so a fully masked row stays finite); `None` without
    /// cross-attention.
    cross_mask: Option<Tensor>,
    /// States `[B, P, hidden]` that take the first positions, run with the first call.
    prefix: Option<Tensor>,
    len: usize,
    capacity: usize,
}

impl DecoderCache {
    /// Positions already decoded (the next position's index).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing has been decoded yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The most positions this cache can hold.
    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

/// The MusicGen decoder (transformers' `MusicgenForCausalLM` weights under `decoder.`).
pub struct Decoder {
    embed_tokens: Vec<Embedding>,
    positions: Tensor,
    layers: Vec<Layer>,
    final_norm: LayerNorm,
    lm_heads: Vec<Proj>,
    cfg: DecoderConfig,
    dtype: DType,
    /// How the self-attention cache stores keys and values: the compute dtype unless
    /// [`set_kv_dtype`](Self::set_kv_dtype) chose f16.
    kv_dtype: DType,
}

impl Decoder {
    /// Loads the decoder from the `decoder` prefix; `cross_in` is the hidden size of the
    /// (projected) text states, `None` for a decoder without cross-attention (MusicGen-
    /// Melody's). The projections a step reads (attention, feed-forward, LM heads) are
    /// stored in `format`; embeddings and norms stay in the dtype.
    pub fn new(
        cfg: &DecoderConfig,
        cross_in: Option<usize>,
        vb: Vb,
        format: WeightFormat,
    ) -> Result<Self> {
        format.check_dtype(vb.dtype())?;
        let h = cfg.hidden_size;
        let heads = cfg.num_attention_heads;
        let model = vb.pp("model").pp("decoder");
        let embed_tokens = (0..cfg.num_codebooks)
            .map(|k| {
                let table = model
                    .pp("embed_tokens")
                    .pp(k)
                    .get(&[cfg.vocab_size + 1, h], "weight")?;
                Ok(Embedding::new(table, h))
            })
            .collect::<Result<Vec<_>>>()?;
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| {
                let l = model.pp("layers").pp(i);
                let cross = cross_in
                    .map(|cross_in| -> Result<CrossBlock> {
                        Ok(CrossBlock {
                            norm: layer_norm(h, l.pp("encoder_attn_layer_norm"))?,
                            attn: Attention::cross_attention(
                                h,
                                cross_in,
                                heads,
                                l.pp("encoder_attn"),
                                format,
                            )?,
                        })
                    })
                    .transpose()?;
                Ok(Layer {
                    self_attn_norm: layer_norm(h, l.pp("self_attn_layer_norm"))?,
                    self_attn: Attention::self_attention(h, heads, l.pp("self_attn"), format)?,
                    cross,
                    final_norm: layer_norm(h, l.pp("final_layer_norm"))?,
                    fc1: proj(h, cfg.ffn_dim, l.pp("fc1"), format)?,
                    fc2: proj(cfg.ffn_dim, h, l.pp("fc2"), format)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let lm_heads = (0..cfg.num_codebooks)
            .map(|k| proj(h, cfg.vocab_size, vb.pp("lm_heads").pp(k), format))
            .collect::<Result<Vec<_>>>()?;
        // Positions are recomputed, not read: the table is deterministic and some exports
        // omit it.
        let positions =
            sinusoidal_table(cfg.max_position_embeddings, h, vb.device())?.to_dtype(vb.dtype())?;
        Ok(Self {
            embed_tokens,
            positions,
            layers,
            final_norm: layer_norm(h, model.pp("layer_norm"))?,
            lm_heads,
            cfg: cfg.clone(),
            dtype: vb.dtype(),
            kv_dtype: vb.dtype(),
        })
    }

    /// The decoder's config.
    pub fn config(&self) -> &DecoderConfig {
        &self.cfg
    }

    /// The dtype it computes in.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The dtype its caches store self-attention keys and values in.
    pub fn kv_dtype(&self) -> DType {
        self.kv_dtype
    }

    /// Stores the keys and values of caches made from now on in `dtype` (f16 halves what
    /// a step reads of them; they are widened back to the compute dtype when read).
    pub fn set_kv_dtype(&mut self, dtype: DType) {
        self.kv_dtype = dtype;
    }

    /// Whether the layers attend to text states (every MusicGen but Melody).
    pub fn has_cross_attention(&self) -> bool {
        self.layers.iter().any(|layer| layer.cross.is_some())
    }

    /// A fresh cache for one job with room for `capacity` audio positions. Cross-attention
    /// conditioning computes every layer's K/V from the text once; a prefix waits in the
    /// cache and runs with the first call, taking the first positions. On the CPU in f32
    /// the steps after the first run as
    /// `cpu_step`'s phases, over plain buffers.
    pub fn new_cache(&self, conditioning: Conditioning, capacity: usize) -> Result<DecoderCache> {
        let (rows, device, prefix) = match conditioning {
            Conditioning::CrossAttention { states, .. } => (states.dim(0)?, states.device(), 0),
            Conditioning::Prefix(states) => (states.dim(0)?, states.device(), states.dim(1)?),
        };
        let capacity = prefix + capacity;
        let on_cpu =
            device.is_cpu() && self.dtype == DType::F32 && rows <= crate::kernels::gemv::MAX_ROWS;
        let self_kv = match self.kv_dtype {
            DType::F32 if on_cpu => {
                SelfKv::Host(Box::new(host_cache::HostCache::f32(self, rows, capacity)))
            }
            DType::F16 if on_cpu => {
                SelfKv::Host(Box::new(host_cache::HostCache::f16(self, rows, capacity)))
            }
            _ => self.self_kv_tensors(rows, capacity, device)?,
        };
        self.new_cache_with(conditioning, capacity, self_kv)
    }

    /// Zeroed self-attention tensors for the general path.
    fn self_kv_tensors(&self, rows: usize, capacity: usize, device: &Device) -> Result<SelfKv> {
        let shape = (
            rows,
            self.cfg.num_attention_heads,
            capacity,
            self.cfg.head_dim(),
        );
        let layers = (0..self.layers.len())
            .map(|_| {
                Ok((
                    Tensor::zeros(shape, self.kv_dtype, device)?,
                    Tensor::zeros(shape, self.kv_dtype, device)?,
                ))
            })
            .collect::<Result<_>>()?;
        Ok(SelfKv::Tensors(layers))
    }

    /// [`Self::new_cache`] with the self-attention cache given (`capacity` counts the
    /// prefix).
    fn new_cache_with(
        &self,
        conditioning: Conditioning,
        capacity: usize,
        self_kv: SelfKv,
    ) -> Result<DecoderCache> {
        let mismatch = |message: &str| crate::ModelError::UnsupportedConfig {
            field: "conditioning".into(),
            message: message.into(),
        };
        match conditioning {
            Conditioning::CrossAttention { states, mask } => {
                if !self.has_cross_attention() {
                    return Err(mismatch(
                        "this decoder has no cross-attention: its text goes in a prefix",
                    ));
                }
                let states = states.to_dtype(self.dtype)?;
                let layers = self
                    .layers
                    .iter()
                    .filter_map(|layer| layer.cross.as_ref())
                    .map(|cross| {
                        let (cross_k, cross_v) = cross.attn.keys_values(&states)?;
                        Ok(LayerCache { cross_k, cross_v })
                    })
                    .collect::<Result<Vec<_>>>()?;
                let mask = mask.to_dtype(DType::F32)?;
                let cross_mask = ((1.0 - mask)? * f32::MIN as f64)?
                    .unsqueeze(1)?
                    .unsqueeze(1)?;
                Ok(DecoderCache {
                    layers,
                    self_kv,
                    cross_mask: Some(cross_mask),
                    prefix: None,
                    len: 0,
                    capacity,
                })
            }
            Conditioning::Prefix(states) => {
                if self.has_cross_attention() {
                    return Err(mismatch(
                        "this decoder cross-attends to its text; a prefix is for decoders without",
                    ));
                }
                Ok(DecoderCache {
                    layers: Vec::new(),
                    self_kv,
                    cross_mask: None,
                    prefix: Some(states.to_dtype(self.dtype)?),
                    len: 0,
                    capacity,
                })
            }
        }
    }

    /// Runs `ids_bkt` (u32 `[B, K, T]`) at the cache's next positions and returns the
    /// logits of the last position, `[B, K, vocab]` in f32. A prefix waiting in the cache
    /// runs first, in the same pass (as the reference runs it with the first token).
    pub fn forward(&self, ids_bkt: &Tensor, cache: &mut DecoderCache) -> Result<Tensor> {
        let (b, k, t) = ids_bkt.dims3()?;
        let offset = cache.len;
        let prefix_len = cache.prefix.as_ref().map_or(Ok(0), |p| p.dim(1))?;
        if t == 0 {
            return Err(crate::ModelError::UnsupportedConfig {
                field: "decoder ids".into(),
                message: "no position to decode: the ids hold 0 columns".into(),
            });
        }
        let end = offset + prefix_len + t;
        if end > cache.capacity || end > self.cfg.max_position_embeddings {
            return Err(crate::ModelError::UnsupportedConfig {
                field: "decoder.max_position_embeddings".into(),
                message: format!(
                    "position {end} is past the cache capacity {} or the model's {} positions",
                    cache.capacity, self.cfg.max_position_embeddings
                ),
            });
        }
        // The CPU step takes one position at a time: it serves single columns; a prefix or
        // several columns at once (a job's first passes) go through one batched pass.
        if let SelfKv::Host(_) = cache.self_kv {
            if prefix_len == 0 && t == 1 {
                let ids = ids_bkt.flatten_all()?.to_vec1::<u32>()?;
                return self.forward_on_cpu(&ids, (b, k, t), cache);
            }
        }
        let mut xs =
            self.embed_tokens[0].forward(&ids_bkt.narrow(1, 0, 1)?.squeeze(1)?.contiguous()?)?;
        for (codebook, embed) in self.embed_tokens.iter().enumerate().take(k).skip(1) {
            xs = (xs
                + embed.forward(&ids_bkt.narrow(1, codebook, 1)?.squeeze(1)?.contiguous()?)?)?;
        }
        if let Some(prefix) = cache.prefix.take() {
            xs = Tensor::cat(&[&prefix, &xs], 1)?;
        }
        let t = prefix_len + t;
        xs = xs.broadcast_add(&self.positions.narrow(0, offset, t)?)?;
        let causal = if t > 1 {
            Some(causal_mask(t, offset, xs.device())?)
        } else {
            None
        };
        let mut cross_caches = cache.layers.iter();
        for (index, layer) in self.layers.iter().enumerate() {
            // Self-attention over the cache plus the new positions.
            let normed = layer.self_attn_norm.forward(&xs)?;
            let (q, k_new, v_new) = layer.self_attn.queries_keys_values(&normed)?;
            let attended = match &mut cache.self_kv {
                SelfKv::Tensors(layers) => {
                    let (self_k, self_v) = &layers[index];
                    self_k.slice_set(&k_new.to_dtype(self_k.dtype())?, 2, offset)?;
                    self_v.slice_set(&v_new.to_dtype(self_v.dtype())?, 2, offset)?;
                    layer
                        .self_attn
                        .attend(&q, self_k, self_v, offset + t, causal.as_ref())?
                }
                // Attended as stored (an f16 cache rounds them), as every later step sees them.
                SelfKv::Host(host) => {
                    host.store(index, offset, &k_new, &v_new)?;
                    let cfg = &self.cfg;
                    let (k, v) =
                        host.read(index, offset + t, cfg.num_attention_heads, cfg.head_dim())?;
                    layer
                        .self_attn
                        .attend(&q, &k, &v, offset + t, causal.as_ref())?
                }
            };
            xs = (&xs + attended)?;
            // Cross-attention to the text.
            if let (Some(cross), Some(lc), Some(mask)) =
                (&layer.cross, cross_caches.next(), &cache.cross_mask)
            {
                let normed = cross.norm.forward(&xs)?;
                let text_len = lc.cross_k.dim(2)?;
                let attended = cross.attn.attend(
                    &cross.attn.queries(&normed)?,
                    &lc.cross_k,
                    &lc.cross_v,
                    text_len,
                    Some(mask),
                )?;
                xs = (xs + attended)?;
            }
            // Feed-forward with exact (erf) GELU.
            let normed = layer.final_norm.forward(&xs)?;
            let ff = layer.fc2.forward(&crate::kernels::activations::gelu_erf(
                &layer.fc1.forward(&normed)?,
            )?)?;
            xs = (xs + ff)?;
        }
        cache.len += t;
        let last = self
            .final_norm
            .forward(&xs.narrow(1, t - 1, 1)?)?
            .squeeze(1)?; // [B, H]
        let logits = self
            .lm_heads
            .iter()
            .map(|head| head.forward(&last))
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Tensor::stack(&logits, 1)?
            .to_dtype(DType::F32)?
            .reshape((b, k, self.cfg.vocab_size))?)
    }
}

/// Additive causal mask `[T, offset + T]` in f32: query i sees keys up to `offset + i`.
fn causal_mask(t: usize, offset: usize, device: &Device) -> Result<Tensor> {
    let total = offset + t;
    let values: Vec<f32> = (0..t)
        .flat_map(|i| (0..total).map(move |j| if j > offset + i { f32::MIN } else { 0.0 }))
        .collect();
    Ok(Tensor::from_vec(values, (t, total), device)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sinusoid_is_cos_then_sin_with_half_minus_one_denominator() -> Result<()> {
        let table = sinusoidal_table(3, 8, &Device::Cpu)?;
        let rows: Vec<Vec<f32>> = table.to_vec2()?;
        // position 0: cos(0) = 1 then sin(0) = 0
        assert_eq!(rows[0], vec![1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0]);
        // position 2, frequency i = 1: exp(-ln(10000) / 3) = 0.046415888
        let angle = 2.0 * (-(10000f64.ln()) / 3.0).exp();
        assert!((rows[2][1] as f64 - angle.cos()).abs() < 1e-6);
        assert!((rows[2][5] as f64 - angle.sin()).abs() < 1e-6);
        // the last frequency is exactly 1/10000
        assert!((rows[1][7] as f64 - (1e-4f64).sin()).abs() < 1e-9);
        Ok(())
    }
}
