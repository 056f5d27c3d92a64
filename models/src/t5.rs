//! The T5 text encoder of MusicGen (encoder stack only), with its attention mask, loaded
//! from the `text_encoder` weights of a Hugging Face MusicGen checkpoint.

use candle_core::{DType, Device, Module, Tensor, D};
use candle_nn::{Embedding, Linear};

use crate::error::{ModelError, Result};
use crate::weights::Vb;

/// The `text_encoder` sub-config (transformers' `T5Config`), with T5-base defaults.
#[derive(Clone, Debug, PartialEq, serde::Deserialize, serde::Serialize)]
pub struct Config {
    /// Token vocabulary size.
    #[serde(default = "defaults::vocab_size")]
    pub vocab_size: usize,
    /// Hidden size.
    #[serde(default = "defaults::d_model")]
    pub d_model: usize,
    /// Size of one attention head.
    #[serde(default = "defaults::d_kv")]
    pub d_kv: usize,
    /// Feed-forward inner size.
    #[serde(default = "defaults::d_ff")]
    pub d_ff: usize,
    /// Number of encoder blocks.
    #[serde(default = "defaults::num_layers")]
    pub num_layers: usize,
    /// Attention heads per block.
    #[serde(default = "defaults::num_heads")]
    pub num_heads: usize,
    /// Buckets of the relative position bias.
    #[serde(default = "defaults::buckets")]
    pub relative_attention_num_buckets: usize,
    /// Distance beyond which relative positions share a bucket.
    #[serde(default = "defaults::max_distance")]
    pub relative_attention_max_distance: usize,
    /// Epsilon of the RMS layer norms.
    #[serde(default = "defaults::eps")]
    pub layer_norm_epsilon: f64,
    /// `relu` (T5) or `gated-gelu` (T5 v1.1 / Flan).
    #[serde(default = "defaults::ff_proj")]
    pub feed_forward_proj: String,
}

mod defaults {
    pub(super) fn vocab_size() -> usize {
        32128
    }
    pub(super) fn d_model() -> usize {
        768
    }
    pub(super) fn d_kv() -> usize {
        64
    }
    pub(super) fn d_ff() -> usize {
        3072
    }
    pub(super) fn num_layers() -> usize {
        12
    }
    pub(super) fn num_heads() -> usize {
        12
    }
    pub(super) fn buckets() -> usize {
        32
    }
    pub(super) fn max_distance() -> usize {
        128
    }
    pub(super) fn eps() -> f64 {
        1e-6
    }
    pub(super) fn ff_proj() -> String {
        "relu".to_string()
    }
}

impl Config {
    /// Checks that this implementation runs the config.
    pub fn validate(&self) -> Result<()> {
        if !matches!(self.feed_forward_proj.as_str(), "relu" | "gated-gelu") {
            return Err(ModelError::UnsupportedConfig {
                field: "text_encoder.feed_forward_proj".into(),
                message: format!(
                    "`{}` is not supported (relu and gated-gelu are)",
                    self.feed_forward_proj
                ),
            });
        }
        if self.relative_attention_num_buckets < 4 {
            return Err(ModelError::UnsupportedConfig {
                field: "text_encoder.relative_attention_num_buckets".into(),
                message: "must be at least 4".into(),
            });
        }
        Ok(())
    }
}

/// T5's RMS norm: `weight * x / sqrt(mean(x²) + eps)`, computed in f32.
#[derive(Clone, Debug)]
struct RmsNorm {
    weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    fn new(size: usize, eps: f64, vb: Vb) -> Result<Self> {
        Ok(Self {
            weight: vb.get(&[size], "weight")?,
            eps,
        })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let dtype = xs.dtype();
        let xs32 = xs.to_dtype(DType::F32)?;
        let variance = xs32.sqr()?.mean_keepdim(D::Minus1)?;
        let normed = xs32.broadcast_div(&(variance + self.eps)?.sqrt()?)?;
        Ok(normed.to_dtype(dtype)?.broadcast_mul(&self.weight)?)
    }
}

fn linear(in_dim: usize, out_dim: usize, vb: Vb) -> Result<Linear> {
    Ok(Linear::new(vb.get(&[out_dim, in_dim], "weight")?, None))
}

struct SelfAttention {
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    heads: usize,
    d_kv: usize,
    /// Only the first block owns the relative position bias; the others reuse it.
    relative_bias: Option<Embedding>,
}

impl SelfAttention {
    fn new(cfg: &Config, has_bias: bool, vb: Vb) -> Result<Self> {
        let inner = cfg.num_heads * cfg.d_kv;
        let relative_bias = if has_bias {
            let table = vb.get(
                &[cfg.relative_attention_num_buckets, cfg.num_heads],
                "relative_attention_bias.weight",
            )?;
            Some(Embedding::new(table, cfg.num_heads))
        } else {
            None
        };
        Ok(Self {
            q: linear(cfg.d_model, inner, vb.pp("q"))?,
            k: linear(cfg.d_model, inner, vb.pp("k"))?,
            v: linear(cfg.d_model, inner, vb.pp("v"))?,
            o: linear(inner, cfg.d_model, vb.pp("o"))?,
            heads: cfg.num_heads,
            d_kv: cfg.d_kv,
            relative_bias,
        })
    }

    /// `bias_bhqk` holds the relative position bias plus the additive padding mask.
    fn forward(&self, xs: &Tensor, bias_bhqk: &Tensor) -> Result<Tensor> {
        let (b, t, _) = xs.dims3()?;
        let split = |x: Tensor| -> Result<Tensor> {
            Ok(x.reshape((b, t, self.heads, self.d_kv))?
                .transpose(1, 2)?
                .contiguous()?)
        };
        let q = split(self.q.forward(xs)?)?;
        let k = split(self.k.forward(xs)?)?;
        let v = split(self.v.forward(xs)?)?;
        // T5 does not scale the scores by 1/sqrt(d).
        let scores = q.matmul(&k.t()?)?.broadcast_add(bias_bhqk)?;
        let probs = candle_nn::ops::softmax_last_dim(&scores.to_dtype(DType::F32)?)?
            .to_dtype(xs.dtype())?;
        let out = probs.matmul(&v)?.transpose(1, 2)?.reshape((b, t, ()))?;
        Ok(self.o.forward(&out)?)
    }
}

enum FeedForward {
    Relu {
        wi: Linear,
        wo: Linear,
    },
    GatedGelu {
        wi_0: Linear,
        wi_1: Linear,
        wo: Linear,
    },
}

impl FeedForward {
    fn new(cfg: &Config, vb: Vb) -> Result<Self> {
        let wo = linear(cfg.d_ff, cfg.d_model, vb.pp("wo"))?;
        Ok(if cfg.feed_forward_proj == "gated-gelu" {
            FeedForward::GatedGelu {
                wi_0: linear(cfg.d_model, cfg.d_ff, vb.pp("wi_0"))?,
                wi_1: linear(cfg.d_model, cfg.d_ff, vb.pp("wi_1"))?,
                wo,
            }
        } else {
            FeedForward::Relu {
                wi: linear(cfg.d_model, cfg.d_ff, vb.pp("wi"))?,
                wo,
            }
        })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        Ok(match self {
            FeedForward::Relu { wi, wo } => wo.forward(&wi.forward(xs)?.relu()?)?,
            FeedForward::GatedGelu { wi_0, wi_1, wo } => {
                let gate = wi_0.forward(xs)?.gelu()?; // gelu_new (tanh approximation)
                wo.forward(&(gate * wi_1.forward(xs)?)?)?
            }
        })
    }
}

struct Block {
    attn_norm: RmsNorm,
    attn: SelfAttention,
    ff_norm: RmsNorm,
    ff: FeedForward,
}

/// The T5 encoder stack: embeddings, blocks, final norm.
pub struct T5Encoder {
    embed: Embedding,
    blocks: Vec<Block>,
    final_norm: RmsNorm,
    cfg: Config,
}

impl T5Encoder {
    /// Loads the encoder from the `text_encoder` prefix. The token table is read from
    /// `shared.weight` or, when only the tied copy was saved, `encoder.embed_tokens.weight`.
    pub fn new(cfg: &Config, vb: Vb) -> Result<Self> {
        cfg.validate()?;
        let table_name =
            if !vb.contains("shared.weight") && vb.contains("encoder.embed_tokens.weight") {
                "encoder.embed_tokens.weight"
            } else {
                "shared.weight"
            };
        let embed = Embedding::new(
            vb.get(&[cfg.vocab_size, cfg.d_model], table_name)?,
            cfg.d_model,
        );
        let enc = vb.pp("encoder");
        let blocks = (0..cfg.num_layers)
            .map(|i| {
                let layer = enc.pp("block").pp(i).pp("layer");
                Ok(Block {
                    attn_norm: RmsNorm::new(
                        cfg.d_model,
                        cfg.layer_norm_epsilon,
                        layer.pp(0).pp("layer_norm"),
                    )?,
                    attn: SelfAttention::new(cfg, i == 0, layer.pp(0).pp("SelfAttention"))?,
                    ff_norm: RmsNorm::new(
                        cfg.d_model,
                        cfg.layer_norm_epsilon,
                        layer.pp(1).pp("layer_norm"),
                    )?,
                    ff: FeedForward::new(cfg, layer.pp(1).pp("DenseReluDense"))?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            embed,
            blocks,
            final_norm: RmsNorm::new(
                cfg.d_model,
                cfg.layer_norm_epsilon,
                enc.pp("final_layer_norm"),
            )?,
            cfg: cfg.clone(),
        })
    }

    /// Encodes `ids_bt` (u32) with `mask_bt` (1 = token, 0 = padding) into `[B, T, d_model]`.
    pub fn forward(&self, ids_bt: &Tensor, mask_bt: &Tensor) -> Result<Tensor> {
        let (_, t) = ids_bt.dims2()?;
        let mut xs = self.embed.forward(ids_bt)?;
        let dtype = xs.dtype();
        let position_bias = self.position_bias(t, xs.device())?; // [1, H, T, T]
                                                                 // Padding keys get the most negative finite value, as transformers does: a fully
                                                                 // masked row then softmaxes to uniform instead of NaN.
        let mask = mask_bt.to_dtype(DType::F32)?;
        let additive = ((1.0 - mask)? * f32::MIN as f64)?
            .unsqueeze(1)?
            .unsqueeze(1)?; // [B,1,1,T]
        let bias = position_bias.broadcast_add(&additive)?.to_dtype(dtype)?;
        for block in &self.blocks {
            let attn = block.attn.forward(&block.attn_norm.forward(&xs)?, &bias)?;
            xs = (xs + attn)?;
            let ff = block.ff.forward(&block.ff_norm.forward(&xs)?)?;
            xs = (xs + ff)?;
        }
        self.final_norm.forward(&xs)
    }

    fn position_bias(&self, t: usize, device: &Device) -> Result<Tensor> {
        let buckets: Vec<u32> = (0..t)
            .flat_map(|q| (0..t).map(move |k| (q, k)))
            .map(|(q, k)| {
                relative_position_bucket(
                    k as i64 - q as i64,
                    self.cfg.relative_attention_num_buckets,
                    self.cfg.relative_attention_max_distance,
                )
            })
            .collect();
        let buckets = Tensor::from_vec(buckets, (t, t), device)?;
        let table = self.blocks[0].attn.relative_bias.as_ref().ok_or_else(|| {
            ModelError::UnsupportedConfig {
                field: "text_encoder.num_layers".into(),
                message: "must be at least 1".into(),
            }
        })?;
        // [T, T, H] -> [1, H, T, T]
        Ok(table
            .forward(&buckets)?
            .to_dtype(DType::F32)?
            .permute((2, 0, 1))?
            .unsqueeze(0)?)
    }
}

/// T5's bidirectional relative position bucket of `relative = key - query`, with the same
/// f32 arithmetic as transformers so bucket boundaries agree.
fn relative_position_bucket(relative: i64, num_buckets: usize, max_distance: usize) -> u32 {
    let half = (num_buckets / 2) as i64;
    let mut bucket = if relative > 0 { half } else { 0 };
    let distance = relative.abs();
    let max_exact = half / 2;
    if distance < max_exact {
        bucket += distance;
    } else {
        let scale = ((max_distance as f64) / (max_exact as f64)).ln() as f32;
        let large = max_exact
            + ((distance as f32 / max_exact as f32).ln() / scale * (half - max_exact) as f32)
                as i64;
        bucket += large.min(half - 1);
    }
    bucket as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_buckets_match_transformers() {
        // transformers' T5Attention._relative_position_bucket formula evaluated by hand (bidirectional,
        // 32 buckets, max distance 128).
        let cases = [
            (0, 0),
            (1, 17),
            (-1, 1),
            (7, 23),
            (-7, 7),
            (8, 24),
            (-8, 8),
            (12, 25),
            (20, 26),
            (-50, 13),
            (127, 31),
            (-1000, 15),
        ];
        for (relative, expected) in cases {
            assert_eq!(
                relative_position_bucket(relative, 32, 128),
                expected,
                "relative {relative}"
            );
        }
    }
}
