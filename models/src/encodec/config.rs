//! The `audio_encoder` sub-config (transformers' `EncodecConfig`): fields, defaults,
//! derived sizes and the validation that rejects codecs this decoder does not run exactly.

use super::pad::PadMode;
use crate::error::{ModelError, Result};

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
    pub(super) fn target_bandwidths() -> Vec<f64> {
        vec![1.5, 3.0, 6.0, 12.0, 24.0]
    }
    pub(super) fn sampling_rate() -> u32 {
        24_000
    }
    pub(super) fn audio_channels() -> usize {
        1
    }
    pub(super) fn hidden_size() -> usize {
        128
    }
    pub(super) fn num_filters() -> usize {
        32
    }
    pub(super) fn num_residual_layers() -> usize {
        1
    }
    pub(super) fn upsampling_ratios() -> Vec<usize> {
        vec![8, 5, 4, 2]
    }
    pub(super) fn norm_type() -> String {
        "weight_norm".to_string()
    }
    pub(super) fn kernel_size() -> usize {
        7
    }
    pub(super) fn residual_kernel_size() -> usize {
        3
    }
    pub(super) fn dilation_growth_rate() -> usize {
        2
    }
    pub(super) fn use_causal_conv() -> bool {
        true
    }
    pub(super) fn pad_mode() -> String {
        "reflect".to_string()
    }
    pub(super) fn compress() -> usize {
        2
    }
    pub(super) fn num_lstm_layers() -> usize {
        2
    }
    pub(super) fn trim_right_ratio() -> f64 {
        1.0
    }
    pub(super) fn codebook_size() -> usize {
        1024
    }
    pub(super) fn use_conv_shortcut() -> bool {
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

pub(super) fn unsupported(field: &str, message: impl Into<String>) -> ModelError {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encodec::decoder::bad_codes;

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
}
