//! SEANet's structure: residual blocks, the layer plans of transformers'
//! `EncodecEncoder.__init__` and `EncodecDecoder.__init__`, the checkpoint tensors the
//! decoder reads, and the layers both run.

use candle_core::Tensor;

use super::conv::{Conv1d, ConvSpec, ConvTranspose1d};
use super::lstm::Lstm;
use super::Config;
use crate::error::Result;
use crate::weights::Vb;

/// SEANet residual block (transformers' `EncodecResnetBlock`): ELU, conv(k, dilation), ELU,
/// conv(1), plus the input (or its 1x1 convolution).
pub(super) struct ResnetBlock {
    pub(super) conv1: Conv1d,
    pub(super) conv2: Conv1d,
    pub(super) shortcut: Option<Conv1d>,
}

impl ResnetBlock {
    /// Loads `block.1`, `block.3` (and `shortcut`) under `vb`.
    pub(super) fn new(dim: usize, dilation: usize, cfg: &Config, vb: &Vb<'_>) -> Result<Self> {
        let hidden = dim / cfg.compress;
        let block = vb.pp("block");
        let conv1 = Conv1d::new(
            &ConvSpec::new(dim, hidden, cfg.residual_kernel_size, dilation),
            cfg,
            &block.pp(1),
        )?;
        let conv2 = Conv1d::new(&ConvSpec::new(hidden, dim, 1, 1), cfg, &block.pp(3))?;
        let shortcut = if cfg.use_conv_shortcut {
            Some(Conv1d::new(
                &ConvSpec::new(dim, dim, 1, 1),
                cfg,
                &vb.pp("shortcut"),
            )?)
        } else {
            None
        };
        Ok(Self {
            conv1,
            conv2,
            shortcut,
        })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let ys = self.conv1.forward(&crate::kernels::activations::elu(xs)?)?;
        let ys = self
            .conv2
            .forward(&crate::kernels::activations::elu(&ys)?)?;
        let residual = match &self.shortcut {
            Some(conv) => conv.forward(xs)?,
            None => xs.clone(),
        };
        Ok((residual + ys)?)
    }
}

/// The residual quantizer's codebooks, `quantizer.layers.{i}.codebook.embed`
/// (`[codebook_size, codebook_dim]` each), which both the encoder and the decoder read.
pub(super) fn codebooks(cfg: &Config, vb: &Vb<'_>) -> Result<Vec<Tensor>> {
    (0..cfg.num_quantizers())
        .map(|q| {
            vb.pp("quantizer")
                .pp("layers")
                .pp(q)
                .pp("codebook")
                .get(&[cfg.codebook_size, cfg.codebook_dim()], "embed")
        })
        .collect()
}

/// One entry of `encoder.layers` or `decoder.layers`, in transformers' order; the index is
/// its key.
#[derive(Clone, Copy, Debug)]
pub(super) enum LayerSpec {
    Conv(ConvSpec),
    /// The encoder's downsampling: a convolution of `2 * stride` taps.
    StridedConv {
        conv: ConvSpec,
        stride: usize,
    },
    Lstm {
        dim: usize,
    },
    Elu,
    ConvTranspose {
        cin: usize,
        cout: usize,
        ratio: usize,
    },
    Resnet {
        dim: usize,
        dilation: usize,
    },
}

/// transformers' `EncodecEncoder.__init__`, as a list of layers: the decoder's mirror, with
/// the ratios reversed and strided convolutions for transposed ones.
pub(super) fn encoder_plan(cfg: &Config) -> Vec<LayerSpec> {
    let mut plan = vec![LayerSpec::Conv(ConvSpec::new(
        cfg.audio_channels,
        cfg.num_filters,
        cfg.kernel_size,
        1,
    ))];
    let mut scaling = 1usize;
    for &ratio in cfg.upsampling_ratios.iter().rev() {
        let current = scaling * cfg.num_filters;
        for j in 0..cfg.num_residual_layers {
            plan.push(LayerSpec::Resnet {
                dim: current,
                dilation: growth_pow(cfg.dilation_growth_rate, j),
            });
        }
        plan.push(LayerSpec::Elu);
        plan.push(LayerSpec::StridedConv {
            conv: ConvSpec::new(current, current * 2, ratio * 2, 1),
            stride: ratio,
        });
        scaling *= 2;
    }
    plan.push(LayerSpec::Lstm {
        dim: scaling * cfg.num_filters,
    });
    plan.push(LayerSpec::Elu);
    plan.push(LayerSpec::Conv(ConvSpec::new(
        scaling * cfg.num_filters,
        cfg.hidden_size,
        cfg.last_kernel_size,
        1,
    )));
    plan
}

/// transformers' `EncodecDecoder.__init__`, as a list of layers.
pub(super) fn decoder_plan(cfg: &Config) -> Vec<LayerSpec> {
    let mut scaling = 1usize << cfg.upsampling_ratios.len();
    let mut plan = vec![
        LayerSpec::Conv(ConvSpec::new(
            cfg.hidden_size,
            scaling * cfg.num_filters,
            cfg.kernel_size,
            1,
        )),
        LayerSpec::Lstm {
            dim: scaling * cfg.num_filters,
        },
    ];
    for &ratio in &cfg.upsampling_ratios {
        let current = scaling * cfg.num_filters;
        plan.push(LayerSpec::Elu);
        plan.push(LayerSpec::ConvTranspose {
            cin: current,
            cout: current / 2,
            ratio,
        });
        for j in 0..cfg.num_residual_layers {
            plan.push(LayerSpec::Resnet {
                dim: current / 2,
                dilation: growth_pow(cfg.dilation_growth_rate, j),
            });
        }
        scaling /= 2;
    }
    plan.push(LayerSpec::Elu);
    plan.push(LayerSpec::Conv(ConvSpec::new(
        cfg.num_filters,
        cfg.audio_channels,
        cfg.last_kernel_size,
        1,
    )));
    plan
}

fn growth_pow(rate: usize, j: usize) -> usize {
    u32::try_from(j)
        .ok()
        .and_then(|j| rate.checked_pow(j))
        .unwrap_or(usize::MAX)
}

/// The checkpoint tensors the decoder reads, relative to the `audio_encoder` prefix, with
/// their shapes, under the legacy weight-norm names (`weight_g`/`weight_v`): what a random or
/// tiny checkpoint must hold for [`EncodecDecoder::new`](super::EncodecDecoder::new) to load.
pub fn decoder_weight_shapes(cfg: &Config) -> Vec<(String, Vec<usize>)> {
    let mut shapes = Vec::new();
    for q in 0..cfg.num_quantizers() {
        shapes.push((
            format!("quantizer.layers.{q}.codebook.embed"),
            vec![cfg.codebook_size, cfg.codebook_dim()],
        ));
    }
    let mut conv = |prefix: String, cout: usize, cin: usize, k: usize| {
        shapes.push((format!("{prefix}.conv.weight_g"), vec![cout, 1, 1]));
        shapes.push((format!("{prefix}.conv.weight_v"), vec![cout, cin, k]));
        shapes.push((format!("{prefix}.conv.bias"), vec![cout]));
    };
    let mut lstm = Vec::new();
    let mut convtr = Vec::new();
    for (n, spec) in decoder_plan(cfg).into_iter().enumerate() {
        let prefix = format!("decoder.layers.{n}");
        match spec {
            LayerSpec::Conv(c) => conv(prefix, c.cout, c.cin, c.kernel),
            LayerSpec::Lstm { dim } => {
                for l in 0..cfg.num_lstm_layers {
                    for kind in ["ih", "hh"] {
                        lstm.push((
                            format!("{prefix}.lstm.weight_{kind}_l{l}"),
                            vec![4 * dim, dim],
                        ));
                        lstm.push((format!("{prefix}.lstm.bias_{kind}_l{l}"), vec![4 * dim]));
                    }
                }
            }
            LayerSpec::Elu | LayerSpec::StridedConv { .. } => {}
            LayerSpec::ConvTranspose { cin, cout, ratio } => {
                // ConvTranspose1d weights are `[in, out, k]`; weight norm keeps dim 0.
                convtr.push((format!("{prefix}.conv.weight_g"), vec![cin, 1, 1]));
                convtr.push((
                    format!("{prefix}.conv.weight_v"),
                    vec![cin, cout, 2 * ratio],
                ));
                convtr.push((format!("{prefix}.conv.bias"), vec![cout]));
            }
            LayerSpec::Resnet { dim, .. } => {
                let hidden = dim / cfg.compress;
                conv(
                    format!("{prefix}.block.1"),
                    hidden,
                    dim,
                    cfg.residual_kernel_size,
                );
                conv(format!("{prefix}.block.3"), dim, hidden, 1);
                if cfg.use_conv_shortcut {
                    conv(format!("{prefix}.shortcut"), dim, dim, 1);
                }
            }
        }
    }
    shapes.extend(lstm);
    shapes.extend(convtr);
    shapes
}

/// Builds the layers of `plan` from `vb` (`encoder.layers` or `decoder.layers`), each under
/// its index.
pub(super) fn build_layers(plan: Vec<LayerSpec>, cfg: &Config, vb: &Vb<'_>) -> Result<Vec<Layer>> {
    plan.into_iter()
        .enumerate()
        .map(|(n, spec)| {
            let vb = vb.pp(n);
            Ok(match spec {
                LayerSpec::Conv(c) => Layer::Conv(Conv1d::new(&c, cfg, &vb)?),
                LayerSpec::StridedConv { conv, stride } => {
                    Layer::Conv(Conv1d::strided(&conv, stride, cfg, &vb)?)
                }
                LayerSpec::Lstm { dim } => Layer::Lstm(Lstm::new(dim, cfg, &vb)?),
                LayerSpec::Elu => Layer::Elu,
                LayerSpec::ConvTranspose { cin, cout, ratio } => {
                    Layer::ConvTranspose(ConvTranspose1d::new(cin, cout, ratio, cfg, &vb)?)
                }
                LayerSpec::Resnet { dim, dilation } => {
                    Layer::Resnet(ResnetBlock::new(dim, dilation, cfg, &vb)?)
                }
            })
        })
        .collect()
}

/// A built layer (of the encoder or the decoder).
pub(super) enum Layer {
    Conv(Conv1d),
    Lstm(Lstm),
    Elu,
    ConvTranspose(ConvTranspose1d),
    Resnet(ResnetBlock),
}

impl Layer {
    /// Runs the layer on `[B, C, T]`.
    pub(super) fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        match self {
            Self::Conv(conv) => conv.forward(xs),
            Self::Lstm(lstm) => lstm.forward(xs),
            Self::Elu => Ok(crate::kernels::activations::elu(xs)?),
            Self::ConvTranspose(conv) => conv.forward(xs),
            Self::Resnet(block) => block.forward(xs),
        }
    }
}
