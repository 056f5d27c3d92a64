//! EnCodec's decoding path (residual-vector-quantizer lookup + SEANet decoder), an exact port
//! of transformers 4.47.1 `EncodecModel.decode` for the models MusicGen ships (32 kHz,
//! non-causal, reflect padding), loaded from the `audio_encoder` weights of a checkpoint.

use candle_core::{DType, Device, Tensor};

use crate::error::{ModelError, Result};
use crate::weights::Vb;

/// The `audio_encoder` sub-config (transformers' `EncodecConfig`), with transformers' defaults
/// for every field (those of the 24 kHz model; MusicGen checkpoints spell every field out).
#[derive(Clone, Debug, PartialEq, serde::Deserialize, serde::Serialize)]
pub struct Config {
    /// Bandwidths (kbps) the codec was trained for; the last one sets the quantizer count.
    #[serde(default = "defaults::target_bandwidths")]
    pub target_bandwidths: Vec<f64>,
    /// Audio sample rate in Hz.
    #[serde(default = "defaults::sampling_rate")]
    pub sampling_rate: u32,
    /// Channels of the decoded audio (1 even for stereo MusicGen, which decodes twice).
    #[serde(default = "defaults::audio_channels")]
    pub audio_channels: usize,
    /// Whether encode normalises loudness; decode of generated codes never rescales.
    #[serde(default)]
    pub normalize: bool,
    /// Chunked encoding window in seconds (`None` for MusicGen's codec).
    #[serde(default)]
    pub chunk_length_s: Option<f64>,
    /// Overlap of chunked encoding windows (`None` for MusicGen's codec).
    #[serde(default)]
    pub overlap: Option<f64>,
    /// Latent size between encoder and decoder.
    #[serde(default = "defaults::hidden_size")]
    pub hidden_size: usize,
    /// Channels of the outermost SEANet stage.
    #[serde(default = "defaults::num_filters")]
    pub num_filters: usize,
    /// Residual blocks per SEANet stage.
    #[serde(default = "defaults::num_residual_layers")]
    pub num_residual_layers: usize,
    /// Upsampling factor of each decoder stage, outermost last.
    #[serde(default = "defaults::upsampling_ratios")]
    pub upsampling_ratios: Vec<usize>,
    /// Convolution normalisation; only `weight_norm` is implemented.
    #[serde(default = "defaults::norm_type")]
    pub norm_type: String,
    /// Kernel of the first decoder convolution.
    #[serde(default = "defaults::kernel_size")]
    pub kernel_size: usize,
    /// Kernel of the last decoder convolution.
    #[serde(default = "defaults::kernel_size")]
    pub last_kernel_size: usize,
    /// Kernel of the first convolution of each residual block.
    #[serde(default = "defaults::residual_kernel_size")]
    pub residual_kernel_size: usize,
    /// Dilation growth between successive residual blocks of a stage.
    #[serde(default = "defaults::dilation_growth_rate")]
    pub dilation_growth_rate: usize,
    /// Causal (all padding on the left) or centred convolutions.
    #[serde(default = "defaults::use_causal_conv")]
    pub use_causal_conv: bool,
    /// Padding mode of the convolutions (`reflect`, `constant` or `replicate`).
    #[serde(default = "defaults::pad_mode")]
    pub pad_mode: String,
    /// Channel reduction inside residual blocks.
    #[serde(default = "defaults::compress")]
    pub compress: usize,
    /// Layers of the LSTM after the first decoder convolution.
    #[serde(default = "defaults::num_lstm_layers")]
    pub num_lstm_layers: usize,
    /// Share of a causal transposed convolution's padding trimmed on the right.
    #[serde(default = "defaults::trim_right_ratio")]
    pub trim_right_ratio: f64,
    /// Entries of each codebook.
    #[serde(default = "defaults::codebook_size")]
    pub codebook_size: usize,
    /// Size of a codebook entry; `None` means `hidden_size`.
    #[serde(default)]
    pub codebook_dim: Option<usize>,
    /// Whether residual blocks add a 1x1 convolution of their input (else the input itself).
    #[serde(default = "defaults::use_conv_shortcut")]
    pub use_conv_shortcut: bool,
}

mod defaults {
    pub fn target_bandwidths() -> Vec<f64> {
        vec![1.5, 3.0, 6.0, 12.0, 24.0]
    }
    pub fn sampling_rate() -> u32 {
        24_000
    }
    pub fn audio_channels() -> usize {
        1
    }
    pub fn hidden_size() -> usize {
        128
    }
    pub fn num_filters() -> usize {
        32
    }
    pub fn num_residual_layers() -> usize {
        1
    }
    pub fn upsampling_ratios() -> Vec<usize> {
        vec![8, 5, 4, 2]
    }
    pub fn norm_type() -> String {
        "weight_norm".to_string()
    }
    pub fn kernel_size() -> usize {
        7
    }
    pub fn residual_kernel_size() -> usize {
        3
    }
    pub fn dilation_growth_rate() -> usize {
        2
    }
    pub fn use_causal_conv() -> bool {
        true
    }
    pub fn pad_mode() -> String {
        "reflect".to_string()
    }
    pub fn compress() -> usize {
        2
    }
    pub fn num_lstm_layers() -> usize {
        2
    }
    pub fn trim_right_ratio() -> f64 {
        1.0
    }
    pub fn codebook_size() -> usize {
        1024
    }
    pub fn use_conv_shortcut() -> bool {
        true
    }
}

impl Default for Config {
    /// transformers' `EncodecConfig()` (the 24 kHz model).
    fn default() -> Self {
        Self {
            target_bandwidths: defaults::target_bandwidths(),
            sampling_rate: defaults::sampling_rate(),
            audio_channels: defaults::audio_channels(),
            normalize: false,
            chunk_length_s: None,
            overlap: None,
            hidden_size: defaults::hidden_size(),
            num_filters: defaults::num_filters(),
            num_residual_layers: defaults::num_residual_layers(),
            upsampling_ratios: defaults::upsampling_ratios(),
            norm_type: defaults::norm_type(),
            kernel_size: defaults::kernel_size(),
            last_kernel_size: defaults::kernel_size(),
            residual_kernel_size: defaults::residual_kernel_size(),
            dilation_growth_rate: defaults::dilation_growth_rate(),
            use_causal_conv: defaults::use_causal_conv(),
            pad_mode: defaults::pad_mode(),
            compress: defaults::compress(),
            num_lstm_layers: defaults::num_lstm_layers(),
            trim_right_ratio: defaults::trim_right_ratio(),
            codebook_size: defaults::codebook_size(),
            codebook_dim: None,
            use_conv_shortcut: defaults::use_conv_shortcut(),
        }
    }
}

impl Config {
    /// The config of `facebook/encodec_32khz`, the codec of every MusicGen checkpoint.
    pub fn musicgen_32khz() -> Self {
        Self {
            target_bandwidths: vec![2.2],
            sampling_rate: 32_000,
            num_filters: 64,
            upsampling_ratios: vec![8, 5, 4, 4],
            use_causal_conv: false,
            codebook_size: 2048,
            codebook_dim: Some(128),
            use_conv_shortcut: false,
            ..Self::default()
        }
    }

    /// Audio samples per code frame: the product of the upsampling ratios (640 at 32 kHz).
    pub fn hop_length(&self) -> usize {
        self.upsampling_ratios.iter().product()
    }

    /// Code frames per second, `ceil(sampling_rate / hop_length)` as transformers rounds it.
    pub fn frame_rate(&self) -> usize {
        let hop = self.hop_length().max(1);
        (self.sampling_rate as usize).div_ceil(hop)
    }

    /// Quantizers (codebooks) of the residual vector quantizer, computed as transformers does:
    /// `int(1000 * target_bandwidths[-1] // (frame_rate * 10))` (4 for the 32 kHz codec).
    pub fn num_quantizers(&self) -> usize {
        let Some(&last) = self.target_bandwidths.last() else {
            return 0;
        };
        let q = py_floordiv(1000.0 * last, (self.frame_rate() * 10) as f64);
        if q.is_finite() && q > 0.0 {
            q as usize
        } else {
            0
        }
    }

    /// Size of a codebook entry (`codebook_dim`, or `hidden_size` when unset).
    pub fn codebook_dim(&self) -> usize {
        self.codebook_dim.unwrap_or(self.hidden_size)
    }

    /// Checks the config describes a codec this decoder runs exactly as transformers does;
    /// errors name the field as `audio_encoder.<field>`.
    pub fn validate(&self) -> Result<()> {
        if self.norm_type != "weight_norm" {
            return Err(unsupported(
                "norm_type",
                format!("`{}` is not supported (weight_norm is)", self.norm_type),
            ));
        }
        if PadMode::parse(&self.pad_mode).is_none() {
            return Err(unsupported(
                "pad_mode",
                format!(
                    "`{}` is not supported (reflect, constant and replicate are)",
                    self.pad_mode
                ),
            ));
        }
        if self.upsampling_ratios.is_empty() || self.upsampling_ratios.contains(&0) {
            return Err(unsupported(
                "upsampling_ratios",
                "must be a non-empty list of positive ratios",
            ));
        }
        // 2^stages * num_filters must fit: stages beyond 30 are no codec anyone trains.
        if self.upsampling_ratios.len() > 30 {
            return Err(unsupported("upsampling_ratios", "at most 30 stages"));
        }
        if self.sampling_rate == 0 {
            return Err(unsupported("sampling_rate", "must be positive"));
        }
        if self
            .target_bandwidths
            .iter()
            .any(|b| !b.is_finite() || *b <= 0.0)
        {
            return Err(unsupported(
                "target_bandwidths",
                "must hold positive, finite bandwidths",
            ));
        }
        if self.num_quantizers() == 0 {
            return Err(unsupported(
                "target_bandwidths",
                "the last bandwidth gives no quantizer (1000 * bandwidth < 10 * frame_rate)",
            ));
        }
        for (field, value) in [
            ("audio_channels", self.audio_channels),
            ("hidden_size", self.hidden_size),
            ("num_filters", self.num_filters),
            ("kernel_size", self.kernel_size),
            ("last_kernel_size", self.last_kernel_size),
            ("residual_kernel_size", self.residual_kernel_size),
            ("dilation_growth_rate", self.dilation_growth_rate),
            ("compress", self.compress),
            ("num_lstm_layers", self.num_lstm_layers),
            ("codebook_size", self.codebook_size),
        ] {
            if value == 0 {
                return Err(unsupported(field, "must be positive"));
            }
        }
        // The smallest residual block works on `num_filters` channels, reduced by `compress`.
        if self.num_residual_layers > 0 && self.num_filters < self.compress {
            return Err(unsupported(
                "compress",
                format!(
                    "{} leaves no channel in the residual blocks of num_filters {}",
                    self.compress, self.num_filters
                ),
            ));
        }
        if self.codebook_dim() != self.hidden_size {
            return Err(unsupported(
                "codebook_dim",
                format!(
                    "{} differs from hidden_size {}: the decoder could not read the codes",
                    self.codebook_dim(),
                    self.hidden_size
                ),
            ));
        }
        if !(0.0..=1.0).contains(&self.trim_right_ratio)
            || (!self.use_causal_conv && self.trim_right_ratio != 1.0)
        {
            return Err(unsupported(
                "trim_right_ratio",
                "must be in [0, 1], and 1.0 for non-causal convolutions (as transformers requires)",
            ));
        }
        Ok(())
    }
}

fn unsupported(field: &str, message: impl Into<String>) -> ModelError {
    ModelError::UnsupportedConfig {
        field: format!("audio_encoder.{field}"),
        message: message.into(),
    }
}

/// Python's float `a // b` (CPython `float_floor_div`), so that bandwidths like 2.2, whose
/// product with 1000 is not an exact float, give the quantizer count transformers gives.
fn py_floordiv(a: f64, b: f64) -> f64 {
    let m = a % b;
    let mut div = (a - m) / b;
    if m != 0.0 && ((b < 0.0) != (m < 0.0)) {
        div -= 1.0;
    }
    if div == 0.0 {
        return 0.0f64.copysign(a / b);
    }
    let mut floordiv = div.floor();
    if div - floordiv > 0.5 {
        floordiv += 1.0;
    }
    floordiv
}

/// `torch.nn.functional.pad` modes the decoder implements.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PadMode {
    Reflect,
    Constant,
    Replicate,
}

impl PadMode {
    fn parse(name: &str) -> Option<Self> {
        match name {
            "reflect" => Some(Self::Reflect),
            "constant" => Some(Self::Constant),
            "replicate" => Some(Self::Replicate),
            _ => None,
        }
    }
}

/// Largest im2col/col2im scratch (in elements) one convolution call may allocate. At 32 kHz
/// the outer layers would otherwise build buffers of up to 1.7 GB for 30 s of audio; longer
/// inputs are split along time into pieces whose outputs are computed from exactly the same
/// input samples, so the result does not depend on the split.
const CONV_SCRATCH_ELEMS: usize = 1 << 23;

/// transformers' `EncodecConv1d._pad1d`: `F.pad`, except that reflect padding of an input no
/// longer than the padding first appends zeros (then drops them again), as torch's reflect
/// needs `pad < length`.
fn pad1d(xs: &Tensor, left: usize, right: usize, mode: PadMode) -> Result<Tensor> {
    if left == 0 && right == 0 {
        return Ok(xs.clone());
    }
    let dim = xs.rank().saturating_sub(1);
    match mode {
        PadMode::Constant => Ok(xs.pad_with_zeros(dim, left, right)?),
        PadMode::Replicate => Ok(xs.pad_with_same(dim, left, right)?),
        PadMode::Reflect => {
            let length = xs.dim(dim)?;
            let max_pad = left.max(right);
            let extra = if length <= max_pad {
                max_pad - length + 1
            } else {
                0
            };
            // index_select reads contiguous tensors only (conv and LSTM outputs already are).
            let xs = if extra > 0 {
                xs.pad_with_zeros(dim, 0, extra)?
            } else {
                xs.contiguous()?
            };
            let padded_len = length + extra;
            let mut parts = Vec::with_capacity(3);
            if left > 0 {
                // x[left], ..., x[1]: the mirror image excluding the edge sample.
                parts.push(reversed(&xs, dim, 1, left)?);
            }
            parts.push(xs.clone());
            if right > 0 {
                // x[n-2], ..., x[n-1-right].
                parts.push(reversed(&xs, dim, padded_len - 1 - right, right)?);
            }
            let padded = Tensor::cat(&parts, dim)?;
            Ok(padded.narrow(dim, 0, left + length + right)?)
        }
    }
}

/// `xs[start .. start + len]` along `dim`, in reverse order; `xs` must be contiguous.
fn reversed(xs: &Tensor, dim: usize, start: usize, len: usize) -> Result<Tensor> {
    let ids: Vec<u32> = (start..start + len).rev().map(|i| i as u32).collect();
    let ids = Tensor::from_vec(ids, len, xs.device())?;
    Ok(xs.index_select(&ids, dim)?)
}

/// transformers' `_get_extra_padding_for_conv1d`: right padding that makes the last window
/// of a strided convolution complete (always 0 for stride 1).
fn extra_padding(length: usize, kernel: usize, stride: usize, padding_total: usize) -> usize {
    let (length, kernel, stride, padding_total) = (
        length as i64,
        kernel as i64,
        stride as i64,
        padding_total as i64,
    );
    let n_frames_minus_one = ceil_div(length - kernel + padding_total, stride);
    let ideal_length = n_frames_minus_one * stride + kernel - padding_total;
    (ideal_length - length).max(0) as usize
}

fn ceil_div(a: i64, b: i64) -> i64 {
    -((-a).div_euclid(b))
}

/// Weight-normalised 1-D convolution with EnCodec's asymmetric/causal padding
/// (transformers' `EncodecConv1d`).
struct Conv1d {
    /// `[out, in, k]`.
    weight: Tensor,
    /// `[1, out, 1]`, ready to broadcast over `[B, out, T]`.
    bias: Tensor,
    stride: usize,
    dilation: usize,
    causal: bool,
    pad_mode: PadMode,
}

impl Conv1d {
    fn new(spec: &ConvSpec, cfg: &Config, vb: &Vb<'_>) -> Result<Self> {
        let vb = vb.pp("conv");
        let weight = vb.weight_norm(&[spec.cout, spec.cin, spec.kernel])?;
        let bias = vb.get(&[spec.cout], "bias")?.reshape((1, spec.cout, 1))?;
        Ok(Self {
            weight,
            bias,
            stride: 1,
            dilation: spec.dilation,
            causal: cfg.use_causal_conv,
            pad_mode: pad_mode(cfg),
        })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        self.forward_with_budget(xs, CONV_SCRATCH_ELEMS)
    }

    fn forward_with_budget(&self, xs: &Tensor, budget: usize) -> Result<Tensor> {
        let (batch, c_in, length) = xs.dims3()?;
        let taps = self.weight.dim(2)?;
        let kernel = (taps - 1) * self.dilation + 1;
        let padding_total = kernel.saturating_sub(self.stride);
        let extra = extra_padding(length, kernel, self.stride, padding_total);
        let (left, right) = if self.causal {
            (padding_total, extra)
        } else {
            let right = padding_total / 2;
            (padding_total - right, right + extra)
        };
        let padded = pad1d(xs, left, right, self.pad_mode)?;
        let padded_len = padded.dim(2)?;
        if padded_len < kernel {
            return Err(candle_core::Error::Msg(format!(
                "EnCodec conv: {padded_len} padded samples are fewer than the kernel {kernel}"
            ))
            .into());
        }
        let out_len = (padded_len - kernel) / self.stride + 1;
        let chunk = (budget / (batch * c_in * taps).max(1)).max(1);
        let ys = if chunk >= out_len {
            padded.conv1d(&self.weight, 0, self.stride, self.dilation, 1)?
        } else {
            let mut pieces = Vec::with_capacity(out_len.div_ceil(chunk));
            let mut start = 0;
            while start < out_len {
                let end = (start + chunk).min(out_len);
                let in_start = start * self.stride;
                let in_len = (end - 1 - start) * self.stride + kernel;
                let piece = padded.narrow(2, in_start, in_len)?.contiguous()?;
                pieces.push(piece.conv1d(&self.weight, 0, self.stride, self.dilation, 1)?);
                start = end;
            }
            Tensor::cat(&pieces, 2)?
        };
        Ok(ys.broadcast_add(&self.bias)?)
    }
}

/// Weight-normalised transposed convolution whose output is trimmed back to
/// `stride * input_len` samples (transformers' `EncodecConvTranspose1d`).
struct ConvTranspose1d {
    /// `[in, out, k]`.
    weight: Tensor,
    /// `[1, out, 1]`.
    bias: Tensor,
    stride: usize,
    causal: bool,
    trim_right_ratio: f64,
}

impl ConvTranspose1d {
    fn new(cin: usize, cout: usize, ratio: usize, cfg: &Config, vb: &Vb<'_>) -> Result<Self> {
        let vb = vb.pp("conv");
        let weight = vb.weight_norm(&[cin, cout, 2 * ratio])?;
        let bias = vb.get(&[cout], "bias")?.reshape((1, cout, 1))?;
        Ok(Self {
            weight,
            bias,
            stride: ratio,
            causal: cfg.use_causal_conv,
            trim_right_ratio: cfg.trim_right_ratio,
        })
    }

    /// Samples trimmed from the (left, right) of the full transposed-convolution output.
    fn trim(&self, kernel: usize) -> (usize, usize) {
        let padding_total = kernel.saturating_sub(self.stride);
        let right = if self.causal {
            (padding_total as f64 * self.trim_right_ratio).ceil() as usize
        } else {
            padding_total / 2
        };
        (
            padding_total - right.min(padding_total),
            right.min(padding_total),
        )
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        self.forward_with_budget(xs, CONV_SCRATCH_ELEMS)
    }

    /// The untrimmed transposed convolution, one batch item at a time: candle 0.11.1's CPU
    /// `conv_transpose1d` (col2im path) mixes up batch items when B > 1, because its matmul
    /// folds the batch of a transposed left operand into rows as if it were row-major.
    fn conv_transpose(&self, xs: &Tensor) -> Result<Tensor> {
        let batch = xs.dim(0)?;
        if batch == 1 {
            return Ok(xs.conv_transpose1d(&self.weight, 0, 0, self.stride, 1, 1)?);
        }
        let items = (0..batch)
            .map(|b| {
                xs.narrow(0, b, 1)?.contiguous()?.conv_transpose1d(
                    &self.weight,
                    0,
                    0,
                    self.stride,
                    1,
                    1,
                )
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Tensor::cat(&items, 0)?)
    }

    fn forward_with_budget(&self, xs: &Tensor, budget: usize) -> Result<Tensor> {
        let (batch, _c_in, length) = xs.dims3()?;
        let (_, c_out, kernel) = self.weight.dims3()?;
        let stride = self.stride;
        if length == 0 {
            return Ok(Tensor::zeros((batch, c_out, 0), xs.dtype(), xs.device())?);
        }
        let full_len = (length - 1) * stride + kernel;
        let (left, right) = self.trim(kernel);
        let (out_start, out_end) = (left, full_len - right);
        // Each input frame produces `c_out * kernel` scratch values and covers `stride`
        // outputs; size output pieces (a multiple of the stride) to stay within the budget.
        let frames = (budget / (batch * c_out * kernel).max(1)).max(1);
        let chunk = frames * stride;
        let ys = if chunk >= out_end - out_start {
            let full = self.conv_transpose(xs)?;
            full.narrow(2, out_start, out_end - out_start)?
        } else {
            let mut pieces = Vec::with_capacity((out_end - out_start).div_ceil(chunk));
            let mut start = out_start;
            while start < out_end {
                let end = (start + chunk).min(out_end);
                // Output o receives input i when i*stride <= o < i*stride + kernel; take every
                // such input so each output sums exactly the terms of the whole computation.
                let first =
                    ceil_div(start as i64 - kernel as i64 + 1, stride as i64).max(0) as usize;
                let last = ((end - 1) / stride + 1).min(length);
                let piece = xs.narrow(2, first, last - first)?.contiguous()?;
                let local = self.conv_transpose(&piece)?;
                pieces.push(local.narrow(2, start - first * stride, end - start)?);
                start = end;
            }
            Tensor::cat(&pieces, 2)?
        };
        Ok(ys.broadcast_add(&self.bias)?)
    }
}

/// One layer of `torch.nn.LSTM` (gate order i, f, g, o), with the input projection of all
/// frames done as one matmul before the recurrence.
struct LstmLayer {
    /// `W_ih^T`, `[in, 4H]`.
    w_ih_t: Tensor,
    /// `W_hh^T`, `[H, 4H]`, contiguous so each step is a plain row-times-matrix product.
    w_hh_t: Tensor,
    /// `b_ih + b_hh`, `[4H]`.
    bias: Tensor,
    hidden: usize,
}

impl LstmLayer {
    fn new(dim: usize, layer: usize, vb: &Vb<'_>) -> Result<Self> {
        let w_ih = vb.get(&[4 * dim, dim], &format!("weight_ih_l{layer}"))?;
        let w_hh = vb.get(&[4 * dim, dim], &format!("weight_hh_l{layer}"))?;
        let b_ih = vb.get(&[4 * dim], &format!("bias_ih_l{layer}"))?;
        let b_hh = vb.get(&[4 * dim], &format!("bias_hh_l{layer}"))?;
        Self::from_tensors(&w_ih, &w_hh, &b_ih, &b_hh)
    }

    fn from_tensors(w_ih: &Tensor, w_hh: &Tensor, b_ih: &Tensor, b_hh: &Tensor) -> Result<Self> {
        let hidden = w_hh.dim(1)?;
        Ok(Self {
            w_ih_t: w_ih.t()?.contiguous()?,
            w_hh_t: w_hh.t()?.contiguous()?,
            bias: (b_ih + b_hh)?,
            hidden,
        })
    }

    /// `[T, B, in]` -> `[T, B, H]`, from zero initial state.
    fn forward(&self, xs_tbc: &Tensor) -> Result<Tensor> {
        let (steps, batch, c_in) = xs_tbc.dims3()?;
        let h = self.hidden;
        // Hoisted: W_ih·x + b_ih + b_hh for every frame at once; the loop only adds W_hh·h.
        let projected = xs_tbc
            .reshape((steps * batch, c_in))?
            .matmul(&self.w_ih_t)?
            .broadcast_add(&self.bias)?
            .reshape((steps, batch, 4 * h))?;
        let mut hx = Tensor::zeros((batch, h), xs_tbc.dtype(), xs_tbc.device())?;
        let mut cx = hx.clone();
        let mut outputs = Vec::with_capacity(steps);
        for t in 0..steps {
            let gates = (projected.get(t)? + hx.matmul(&self.w_hh_t)?)?;
            // Sigmoid over all four gates is one kernel; the g slice is simply not used.
            let sig = candle_nn::ops::sigmoid(&gates)?;
            let in_gate = sig.narrow(1, 0, h)?;
            let forget_gate = sig.narrow(1, h, h)?;
            let cell_gate = gates.narrow(1, 2 * h, h)?.tanh()?;
            let out_gate = sig.narrow(1, 3 * h, h)?;
            cx = ((forget_gate * &cx)? + (in_gate * cell_gate)?)?;
            hx = (out_gate * cx.tanh()?)?;
            outputs.push(hx.clone());
        }
        Ok(Tensor::stack(&outputs, 0)?)
    }
}

/// transformers' `EncodecLSTM`: a stacked LSTM over the time axis plus its input.
struct Lstm {
    layers: Vec<LstmLayer>,
}

impl Lstm {
    fn new(dim: usize, cfg: &Config, vb: &Vb<'_>) -> Result<Self> {
        let vb = vb.pp("lstm");
        let layers = (0..cfg.num_lstm_layers)
            .map(|l| LstmLayer::new(dim, l, &vb))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { layers })
    }

    /// `[B, C, T]` -> `[B, C, T]`.
    fn forward(&self, xs_bct: &Tensor) -> Result<Tensor> {
        let xs_tbc = xs_bct.permute((2, 0, 1))?.contiguous()?;
        let mut ys = xs_tbc.clone();
        for layer in &self.layers {
            ys = layer.forward(&ys)?;
        }
        let ys = (ys + xs_tbc)?;
        Ok(ys.permute((1, 2, 0))?.contiguous()?)
    }
}

/// SEANet residual block (transformers' `EncodecResnetBlock`): ELU, conv(k, dilation), ELU,
/// conv(1), plus the input (or its 1x1 convolution).
struct ResnetBlock {
    conv1: Conv1d,
    conv2: Conv1d,
    shortcut: Option<Conv1d>,
}

impl ResnetBlock {
    fn new(dim: usize, dilation: usize, cfg: &Config, vb: &Vb<'_>) -> Result<Self> {
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
        let ys = self.conv1.forward(&xs.elu(1.0)?)?;
        let ys = self.conv2.forward(&ys.elu(1.0)?)?;
        let residual = match &self.shortcut {
            Some(conv) => conv.forward(xs)?,
            None => xs.clone(),
        };
        Ok((residual + ys)?)
    }
}

#[derive(Clone, Copy, Debug)]
struct ConvSpec {
    cin: usize,
    cout: usize,
    kernel: usize,
    dilation: usize,
}

impl ConvSpec {
    fn new(cin: usize, cout: usize, kernel: usize, dilation: usize) -> Self {
        Self {
            cin,
            cout,
            kernel,
            dilation,
        }
    }
}

/// One entry of `decoder.layers`, in transformers' order; the index is its key.
#[derive(Clone, Copy, Debug)]
enum LayerSpec {
    Conv(ConvSpec),
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

/// transformers' `EncodecDecoder.__init__`, as a list of layers.
fn decoder_plan(cfg: &Config) -> Vec<LayerSpec> {
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

fn pad_mode(cfg: &Config) -> PadMode {
    // `validate` rejects other modes before any layer is built.
    PadMode::parse(&cfg.pad_mode).unwrap_or(PadMode::Reflect)
}

/// The checkpoint tensors the decoder reads, relative to the `audio_encoder` prefix, with
/// their shapes, under the legacy weight-norm names (`weight_g`/`weight_v`): what a random or
/// tiny checkpoint must hold for [`EncodecDecoder::new`] to load.
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
            LayerSpec::Elu => {}
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

enum Layer {
    Conv(Conv1d),
    Lstm(Lstm),
    Elu,
    ConvTranspose(ConvTranspose1d),
    Resnet(ResnetBlock),
}

impl Layer {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        match self {
            Self::Conv(conv) => conv.forward(xs),
            Self::Lstm(lstm) => lstm.forward(xs),
            Self::Elu => Ok(xs.elu(1.0)?),
            Self::ConvTranspose(conv) => conv.forward(xs),
            Self::Resnet(block) => block.forward(xs),
        }
    }
}

/// EnCodec's decoding path: codebook lookup and sum (the residual vector quantizer's decode),
/// then the SEANet decoder, always in f32.
pub struct EncodecDecoder {
    config: Config,
    /// `quantizer.layers.{i}.codebook.embed`, `[codebook_size, codebook_dim]` each.
    codebooks: Vec<Tensor>,
    layers: Vec<Layer>,
    device: Device,
}

impl EncodecDecoder {
    /// Loads the decoder from `vb` at the `audio_encoder` prefix: the codebooks of all
    /// `cfg.num_quantizers()` quantizers and `decoder.layers.*`. Validates `cfg` first.
    pub fn new(cfg: &Config, vb: Vb<'_>) -> Result<Self> {
        cfg.validate()?;
        // EnCodec is small next to the LM and sensitive to rounding: keep it in f32 whatever
        // dtype the rest of the model uses.
        let vb = vb.with_dtype(DType::F32);
        let codebooks = (0..cfg.num_quantizers())
            .map(|q| {
                vb.pp("quantizer")
                    .pp("layers")
                    .pp(q)
                    .pp("codebook")
                    .get(&[cfg.codebook_size, cfg.codebook_dim()], "embed")
            })
            .collect::<Result<Vec<_>>>()?;
        let layers_vb = vb.pp("decoder").pp("layers");
        let mut layers = Vec::new();
        for (n, spec) in decoder_plan(cfg).into_iter().enumerate() {
            let lvb = layers_vb.pp(n);
            layers.push(match spec {
                LayerSpec::Conv(c) => Layer::Conv(Conv1d::new(&c, cfg, &lvb)?),
                LayerSpec::Lstm { dim } => Layer::Lstm(Lstm::new(dim, cfg, &lvb)?),
                LayerSpec::Elu => Layer::Elu,
                LayerSpec::ConvTranspose { cin, cout, ratio } => {
                    Layer::ConvTranspose(ConvTranspose1d::new(cin, cout, ratio, cfg, &lvb)?)
                }
                LayerSpec::Resnet { dim, dilation } => {
                    Layer::Resnet(ResnetBlock::new(dim, dilation, cfg, &lvb)?)
                }
            });
        }
        Ok(Self {
            config: cfg.clone(),
            codebooks,
            layers,
            device: vb.device().clone(),
        })
    }

    /// The codec config.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Codebooks available to [`decode`](Self::decode).
    pub fn num_quantizers(&self) -> usize {
        self.codebooks.len()
    }

    /// Audio samples per code frame.
    pub fn hop_length(&self) -> usize {
        self.config.hop_length()
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Decodes codes `[B, Kq, N]` (u32, `1 <= Kq <= num_quantizers`, each below
    /// `codebook_size`) to audio `[B, audio_channels, N * hop_length]` in f32. No loudness
    /// rescaling: MusicGen decodes with `audio_scales = None`.
    pub fn decode(&self, codes: &Tensor) -> Result<Tensor> {
        let (batch, _, frames) = codes.dims3()?;
        if frames == 0 {
            return Ok(Tensor::zeros(
                (batch, self.config.audio_channels, 0),
                DType::F32,
                &self.device,
            )?);
        }
        let embeddings = self.embed_codes(codes)?;
        self.decode_embeddings(&embeddings)
    }

    /// The quantizer's decode (transformers' `EncodecResidualVectorQuantizer.decode`): the
    /// sum over codebooks of `embed[codes]`, `[B, Kq, N]` -> `[B, codebook_dim, N]`.
    pub fn embed_codes(&self, codes: &Tensor) -> Result<Tensor> {
        let (batch, books, frames) = codes.dims3()?;
        if codes.dtype() != DType::U32 {
            return Err(bad_codes(format!(
                "codes are {:?}, u32 expected",
                codes.dtype()
            )));
        }
        if books == 0 || books > self.codebooks.len() {
            return Err(bad_codes(format!(
                "{books} codebooks given, the codec has {}",
                self.codebooks.len()
            )));
        }
        let codes = codes.to_device(&self.device)?;
        if frames > 0 {
            let max = codes.flatten_all()?.max(0)?.to_scalar::<u32>()?;
            if max as usize >= self.config.codebook_size {
                return Err(bad_codes(format!(
                    "code {max} is out of range (codebook_size {})",
                    self.config.codebook_size
                )));
            }
        }
        let dim = self.config.codebook_dim();
        // Summed in codebook order, as transformers does (0 + q0 + q1 + ...).
        let mut sum: Option<Tensor> = None;
        for (k, embed) in self.codebooks.iter().enumerate().take(books) {
            let ids = codes.narrow(1, k, 1)?.flatten_all()?;
            let quantized = embed.embedding(&ids)?;
            sum = Some(match sum {
                Some(acc) => (acc + quantized)?,
                None => quantized,
            });
        }
        let sum = match sum {
            Some(sum) => sum,
            None => Tensor::zeros((batch * frames, dim), DType::F32, &self.device)?,
        };
        Ok(sum
            .reshape((batch, frames, dim))?
            .transpose(1, 2)?
            .contiguous()?)
    }

    /// The SEANet decoder alone: latents `[B, hidden_size, N]` -> audio
    /// `[B, audio_channels, N * hop_length]`.
    pub fn decode_embeddings(&self, embeddings: &Tensor) -> Result<Tensor> {
        let mut xs = embeddings.to_dtype(DType::F32)?.to_device(&self.device)?;
        for layer in &self.layers {
            xs = layer.forward(&xs)?;
        }
        Ok(xs)
    }
}

fn bad_codes(message: String) -> ModelError {
    ModelError::Candle(candle_core::Error::Msg(format!(
        "EnCodec decode: {message}"
    )))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::weights::Weights;

    fn row(t: &Tensor) -> Vec<f32> {
        t.flatten_all()
            .and_then(|t| t.to_vec1::<f32>())
            .unwrap_or_default()
    }

    fn t1(values: &[f32]) -> Result<Tensor> {
        Ok(Tensor::new(values, &Device::Cpu)?.reshape((1, 1, values.len()))?)
    }

    /// Deterministic pseudo-random values in [-scale, scale] (no RNG dependency in tests).
    fn values(n: usize, seed: u64, scale: f32) -> Vec<f32> {
        let mut state = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (0..n)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let unit = (state >> 40) as f32 / (1u64 << 24) as f32;
                (unit * 2.0 - 1.0) * scale
            })
            .collect()
    }

    fn random(shape: &[usize], seed: u64, scale: f32) -> Result<Tensor> {
        let n = shape.iter().product();
        Ok(Tensor::from_vec(
            values(n, seed, scale),
            shape,
            &Device::Cpu,
        )?)
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        row(a)
            .iter()
            .zip(row(b))
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    }

    #[test]
    fn reflect_padding_matches_torch_including_short_inputs() -> Result<()> {
        // Expected values printed by transformers 4.47.1 `EncodecConv1d._pad1d`.
        let cases: [(&[f32], usize, usize, &[f32]); 4] = [
            (
                &[1., 2., 3., 4., 5.],
                2,
                3,
                &[3., 2., 1., 2., 3., 4., 5., 4., 3., 2.],
            ),
            (&[1., 2.], 3, 2, &[0., 0., 2., 1., 2., 0., 0.]),
            (&[1., 2., 3.], 1, 3, &[2., 1., 2., 3., 0., 3., 2.]),
            (&[7.], 2, 2, &[0., 0., 7., 0., 0.]),
        ];
        for (input, left, right, expected) in cases {
            let padded = pad1d(&t1(input)?, left, right, PadMode::Reflect)?;
            assert_eq!(row(&padded), expected, "{input:?} padded ({left}, {right})");
        }
        let x = t1(&[1., 2., 3.])?;
        assert_eq!(
            row(&pad1d(&x, 2, 1, PadMode::Constant)?),
            [0., 0., 1., 2., 3., 0.]
        );
        assert_eq!(
            row(&pad1d(&x, 1, 2, PadMode::Replicate)?),
            [1., 1., 2., 3., 3., 3.]
        );
        Ok(())
    }

    #[test]
    fn extra_padding_completes_the_last_strided_window() {
        // (10 - 4 + 1) / 3 + 1 = 3.33 frames -> 4 frames need 12 samples.
        assert_eq!(extra_padding(10, 4, 3, 1), 2);
        assert_eq!(extra_padding(9, 4, 3, 1), 0);
        for length in 1..20 {
            assert_eq!(extra_padding(length, 7, 1, 6), 0);
        }
    }

    #[test]
    fn quantizer_count_and_frame_rate_follow_transformers() -> Result<()> {
        let cfg = Config::musicgen_32khz();
        assert_eq!(
            (cfg.hop_length(), cfg.frame_rate(), cfg.num_quantizers()),
            (640, 50, 4)
        );
        cfg.validate()?;
        let default: Config = serde_json::from_str("{}").map_err(|e| bad_codes(e.to_string()))?;
        assert_eq!(default, Config::default());
        // 24 kHz: hop 320, 75 Hz, 24 kbps -> 32 quantizers.
        assert_eq!((default.frame_rate(), default.num_quantizers()), (75, 32));
        assert_eq!(py_floordiv(1000.0 * 2.2, 500.0), 4.0);
        assert_eq!(py_floordiv(7.0, 2.0), 3.0);
        Ok(())
    }

    #[test]
    fn config_reads_musicgen_json_ignoring_unknown_keys_and_rejects_what_is_not_run() -> Result<()>
    {
        let json = r#"{"_name_or_path": "facebook/encodec_32khz", "model_type": "encodec",
            "architectures": ["EncodecModel"], "audio_channels": 1, "chunk_length_s": null,
            "codebook_dim": 128, "codebook_size": 2048, "compress": 2,
            "dilation_growth_rate": 2, "hidden_size": 128, "kernel_size": 7,
            "last_kernel_size": 7, "norm_type": "weight_norm", "normalize": false,
            "num_filters": 64, "num_lstm_layers": 2, "num_residual_layers": 1, "overlap": null,
            "pad_mode": "reflect", "residual_kernel_size": 3, "sampling_rate": 32000,
            "target_bandwidths": [2.2], "trim_right_ratio": 1.0,
            "upsampling_ratios": [8, 5, 4, 4], "use_causal_conv": false,
            "use_conv_shortcut": false, "torch_dtype": "float32"}"#;
        let cfg: Config = serde_json::from_str(json).map_err(|e| bad_codes(e.to_string()))?;
        assert_eq!(cfg, Config::musicgen_32khz());
        let group_norm = Config {
            norm_type: "time_group_norm".into(),
            ..cfg.clone()
        };
        let err = group_norm.validate().unwrap_err().to_string();
        assert!(err.contains("audio_encoder.norm_type"), "{err}");
        let circular = Config {
            pad_mode: "circular".into(),
            ..cfg.clone()
        };
        let err = circular.validate().unwrap_err().to_string();
        assert!(err.contains("audio_encoder.pad_mode"), "{err}");
        let trimmed = Config {
            trim_right_ratio: 0.5,
            ..cfg
        };
        let err = trimmed.validate().unwrap_err().to_string();
        assert!(err.contains("audio_encoder.trim_right_ratio"), "{err}");
        Ok(())
    }

    /// Direct definition of a transposed convolution, `[1, cin, L]` -> `[1, cout, (L-1)s+k]`.
    fn convtr_reference(
        x: &[f32],
        w: &[f32],
        cin: usize,
        cout: usize,
        k: usize,
        s: usize,
    ) -> Vec<f32> {
        let l = x.len() / cin;
        let full = (l - 1) * s + k;
        let mut y = vec![0f32; cout * full];
        for i in 0..l {
            for ci in 0..cin {
                for co in 0..cout {
                    for kk in 0..k {
                        y[co * full + i * s + kk] += x[ci * l + i] * w[(ci * cout + co) * k + kk];
                    }
                }
            }
        }
        y
    }

    #[test]
    fn conv_transpose_trims_to_stride_times_length_and_chunks_exactly() -> Result<()> {
        let (cin, cout, stride, length) = (3, 2, 3, 5);
        let kernel = 2 * stride;
        let w = random(&[cin, cout, kernel], 1, 0.5)?;
        let x = random(&[1, cin, length], 2, 1.0)?;
        let full = convtr_reference(&row(&x), &row(&w), cin, cout, kernel, stride);
        let full_len = (length - 1) * stride + kernel;
        // Batched, the item must come out as alone (candle's batched col2im path does not).
        let x2 = Tensor::cat(&[&random(&[1, cin, length], 3, 1.0)?, &x], 0)?;
        for (causal, left) in [(false, 2), (true, 0)] {
            let conv = ConvTranspose1d {
                weight: w.clone(),
                bias: Tensor::zeros((1, cout, 1), DType::F32, &Device::Cpu)?,
                stride,
                causal,
                trim_right_ratio: 1.0,
            };
            let whole = conv.forward(&x)?;
            assert_eq!(whole.dims(), [1, cout, stride * length]);
            let expected: Vec<f32> = (0..cout)
                .flat_map(|c| {
                    full[c * full_len + left..c * full_len + left + stride * length].to_vec()
                })
                .collect();
            let got = row(&whole);
            for (g, e) in got.iter().zip(&expected) {
                assert!(
                    (g - e).abs() < 1e-5,
                    "causal={causal}: {got:?} vs {expected:?}"
                );
            }
            // A scratch budget of one or two frames forces many pieces.
            for budget in [1, cout * kernel * 2] {
                let chunked = conv.forward_with_budget(&x, budget)?;
                assert_eq!(row(&chunked), got, "budget {budget}");
            }
            let batched = conv.forward(&x2)?;
            assert_eq!(row(&batched.narrow(0, 1, 1)?), got);
        }
        Ok(())
    }

    #[test]
    fn conv1d_pads_like_transformers_and_chunks_exactly() -> Result<()> {
        let (cin, cout, taps, dilation, length) = (2, 3, 3, 2, 9);
        let w = random(&[cout, cin, taps], 3, 0.5)?;
        let x = random(&[1, cin, length], 4, 1.0)?;
        let conv = Conv1d {
            weight: w.clone(),
            bias: random(&[1, cout, 1], 5, 0.1)?,
            stride: 1,
            dilation,
            causal: false,
            pad_mode: PadMode::Reflect,
        };
        let y = conv.forward(&x)?;
        assert_eq!(y.dims(), [1, cout, length]);
        // Effective kernel 5: two reflected samples each side, then a valid convolution.
        let (xv, wv, bv) = (row(&x), row(&w), row(&conv.bias));
        let padded: Vec<Vec<f32>> = (0..cin)
            .map(|c| {
                let s = &xv[c * length..(c + 1) * length];
                let mut p = vec![s[2], s[1]];
                p.extend_from_slice(s);
                p.extend([s[length - 2], s[length - 3]]);
                p
            })
            .collect();
        let got = row(&y);
        for co in 0..cout {
            for t in 0..length {
                let mut acc = bv[co];
                for (ci, p) in padded.iter().enumerate() {
                    for k in 0..taps {
                        acc += wv[(co * cin + ci) * taps + k] * p[t + k * dilation];
                    }
                }
                assert!((got[co * length + t] - acc).abs() < 1e-5, "({co}, {t})");
            }
        }
        for budget in [1, cin * taps * 4] {
            assert_eq!(row(&conv.forward_with_budget(&x, budget)?), got);
        }
        Ok(())
    }

    fn sigmoid(x: f32) -> f32 {
        1.0 / (1.0 + (-x).exp())
    }

    #[test]
    fn hoisted_lstm_matches_step_by_step_reference() -> Result<()> {
        let (dim, steps, batch, num_layers) = (4, 6, 2, 2);
        let mut layers = Vec::new();
        let mut raw = Vec::new();
        for l in 0..num_layers {
            let seed = 10 + 4 * l as u64;
            let w_ih = random(&[4 * dim, dim], seed, 0.5)?;
            let w_hh = random(&[4 * dim, dim], seed + 1, 0.5)?;
            let b_ih = random(&[4 * dim], seed + 2, 0.5)?;
            let b_hh = random(&[4 * dim], seed + 3, 0.5)?;
            layers.push(LstmLayer::from_tensors(&w_ih, &w_hh, &b_ih, &b_hh)?);
            raw.push([row(&w_ih), row(&w_hh), row(&b_ih), row(&b_hh)]);
        }
        let lstm = Lstm { layers };
        let x = random(&[batch, dim, steps], 99, 1.0)?;
        let got = row(&lstm.forward(&x)?);

        // Reference: nn.LSTM's equations one frame at a time, input layout [B, C, T].
        let xv = row(&x);
        let mut seq: Vec<Vec<Vec<f32>>> = (0..batch)
            .map(|b| {
                (0..steps)
                    .map(|t| (0..dim).map(|c| xv[(b * dim + c) * steps + t]).collect())
                    .collect()
            })
            .collect();
        let input = seq.clone();
        for [w_ih, w_hh, b_ih, b_hh] in &raw {
            for sample in seq.iter_mut() {
                let (mut h, mut c) = (vec![0f32; dim], vec![0f32; dim]);
                for frame in sample.iter_mut() {
                    let gate = |g: usize, j: usize| {
                        let r = g * dim + j;
                        let mut acc = b_ih[r] + b_hh[r];
                        for k in 0..dim {
                            acc += w_ih[r * dim + k] * frame[k] + w_hh[r * dim + k] * h[k];
                        }
                        acc
                    };
                    let gates: Vec<[f32; 4]> = (0..dim)
                        .map(|j| [gate(0, j), gate(1, j), gate(2, j), gate(3, j)])
                        .collect();
                    for (j, [i, f, g, o]) in gates.into_iter().enumerate() {
                        c[j] = sigmoid(f) * c[j] + sigmoid(i) * g.tanh();
                        h[j] = sigmoid(o) * c[j].tanh();
                    }
                    frame.clone_from(&h);
                }
            }
        }
        for b in 0..batch {
            for c in 0..dim {
                for t in 0..steps {
                    let expected = seq[b][t][c] + input[b][t][c];
                    let g = got[(b * dim + c) * steps + t];
                    assert!(
                        (g - expected).abs() < 1e-5,
                        "({b}, {c}, {t}): {g} vs {expected}"
                    );
                }
            }
        }
        Ok(())
    }

    fn tiny_config(use_conv_shortcut: bool) -> Config {
        Config {
            // hop 6 at 600 Hz: 100 frames/s, and 2 kbps // (100 * 10) gives 2 quantizers.
            target_bandwidths: vec![2.0],
            sampling_rate: 600,
            hidden_size: 4,
            num_filters: 2,
            num_residual_layers: 2,
            upsampling_ratios: vec![3, 2],
            use_causal_conv: false,
            codebook_size: 8,
            codebook_dim: Some(4),
            use_conv_shortcut,
            ..Config::default()
        }
    }

    fn tiny_weights(cfg: &Config) -> Result<Weights> {
        let mut map = HashMap::new();
        for (i, (name, shape)) in decoder_weight_shapes(cfg).into_iter().enumerate() {
            map.insert(name, random(&shape, 1000 + i as u64, 0.4)?);
        }
        Ok(Weights::from_tensors(map, &Device::Cpu))
    }

    #[test]
    fn tiny_decoder_outputs_hop_samples_per_frame_and_batches_independently() -> Result<()> {
        for shortcut in [false, true] {
            let cfg = tiny_config(shortcut);
            assert_eq!((cfg.hop_length(), cfg.num_quantizers()), (6, 2));
            let weights = tiny_weights(&cfg)?;
            let decoder = EncodecDecoder::new(&cfg, weights.root(DType::F32))?;
            let frames = 5;
            let ids: Vec<u32> = (0..2 * 2 * frames as u32)
                .map(|i| (i * 5 + 3) % 8)
                .collect();
            let codes = Tensor::from_vec(ids, (2, 2, frames), &Device::Cpu)?;
            let audio = decoder.decode(&codes)?;
            assert_eq!(audio.dims(), [2, 1, frames * 6]);
            assert_eq!(audio.dtype(), DType::F32);
            assert!(row(&audio).iter().all(|v| v.is_finite()));
            // Each batch row decodes as if alone (no state leaks across the batch).
            for b in 0..2 {
                let alone = decoder.decode(&codes.narrow(0, b, 1)?)?;
                assert!(max_diff(&alone, &audio.narrow(0, b, 1)?) < 1e-6);
            }
            // One codebook decodes too; a code out of range is an error, not a panic.
            assert_eq!(
                decoder.decode(&codes.narrow(1, 0, 1)?)?.dims(),
                [2, 1, frames * 6]
            );
            let bad = Tensor::from_vec(vec![8u32; frames], (1, 1, frames), &Device::Cpu)?;
            assert!(decoder.decode(&bad).is_err());
        }
        Ok(())
    }

    #[test]
    fn quantizer_decode_sums_codebook_rows() -> Result<()> {
        let cfg = tiny_config(false);
        let weights = tiny_weights(&cfg)?;
        let decoder = EncodecDecoder::new(&cfg, weights.root(DType::F32))?;
        let codes = Tensor::from_vec(vec![1u32, 2, 7, 0], (1, 2, 2), &Device::Cpu)?;
        let emb = decoder.embed_codes(&codes)?;
        assert_eq!(emb.dims(), [1, 4, 2]);
        let (e0, e1) = (row(&decoder.codebooks[0]), row(&decoder.codebooks[1]));
        let got = row(&emb);
        for d in 0..4 {
            assert_eq!(got[d * 2], e0[4 + d] + e1[7 * 4 + d]);
            assert_eq!(got[d * 2 + 1], e0[2 * 4 + d] + e1[d]);
        }
        Ok(())
    }
}
