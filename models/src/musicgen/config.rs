//! MusicGen's `config.json` and `generation_config.json`, mirrored as serde structs; sizes,
//! codebook count and channels all come from here, never from hard-coded shapes.

use std::path::Path;

use crate::error::{ModelError, Result};
use crate::{encodec, t5};

/// `model_type` of a MusicGen checkpoint: its decoder cross-attends to the text.
pub const MUSICGEN: &str = "musicgen";
/// `model_type` of a MusicGen-Melody checkpoint: chroma and text are a decoder prefix.
pub const MUSICGEN_MELODY: &str = "musicgen_melody";

/// The top-level `config.json` of a `MusicgenForConditionalGeneration` or
/// `MusicgenMelodyForConditionalGeneration` checkpoint.
#[derive(Clone, Debug, PartialEq, serde::Deserialize, serde::Serialize)]
pub struct Config {
    /// `musicgen` or `musicgen_melody` (absent in hand-written configs: `musicgen`).
    #[serde(default = "defaults::model_type")]
    pub model_type: String,
    /// The T5 text encoder.
    pub text_encoder: t5::Config,
    /// The EnCodec audio codec.
    pub audio_encoder: encodec::Config,
    /// The MusicGen decoder.
    pub decoder: DecoderConfig,
    /// Melody: chroma classes per frame (12).
    #[serde(default = "defaults::num_chroma")]
    pub num_chroma: usize,
    /// Melody: chroma frames of the decoder prefix (235: 30 s at hop 4096); a shorter
    /// song's chroma is tiled to it.
    #[serde(default = "defaults::chroma_length")]
    pub chroma_length: usize,
}

/// The `decoder` sub-config (transformers' `MusicgenDecoderConfig`), with its defaults.
#[derive(Clone, Debug, PartialEq, serde::Deserialize, serde::Serialize)]
pub struct DecoderConfig {
    /// Codebook size (the decoder's output classes); embeddings have one more row.
    #[serde(default = "defaults::vocab_size")]
    pub vocab_size: usize,
    /// Number of positions of the sinusoidal table: the longest sequence.
    #[serde(default = "defaults::max_positions")]
    pub max_position_embeddings: usize,
    /// Decoder layers.
    #[serde(default = "defaults::layers")]
    pub num_hidden_layers: usize,
    /// Feed-forward inner size.
    #[serde(default = "defaults::ffn_dim")]
    pub ffn_dim: usize,
    /// Attention heads.
    #[serde(default = "defaults::heads")]
    pub num_attention_heads: usize,
    /// Activation of the feed-forward block (`gelu`, exact erf).
    #[serde(default = "defaults::activation")]
    pub activation_function: String,
    /// Hidden size.
    #[serde(default = "defaults::hidden")]
    pub hidden_size: usize,
    /// Whether token embeddings are scaled by sqrt(hidden) (false in every release).
    #[serde(default)]
    pub scale_embedding: bool,
    /// Codebooks predicted per step (4 mono, 8 stereo).
    #[serde(default = "defaults::codebooks")]
    pub num_codebooks: usize,
    /// Audio channels (2 for the stereo variants, whose codebooks are interleaved L/R).
    #[serde(default = "defaults::channels")]
    pub audio_channels: usize,
    /// Token used for padding and for the delay pattern's empty slots.
    #[serde(default = "defaults::special")]
    pub pad_token_id: u32,
    /// First token of every codebook stream.
    #[serde(default = "defaults::special")]
    pub bos_token_id: u32,
    /// Hidden size of the cross-attention keys, when it differs from the decoder's.
    #[serde(default)]
    pub cross_attention_hidden_size: Option<usize>,
}

mod defaults {
    pub(super) fn model_type() -> String {
        super::MUSICGEN.to_string()
    }
    pub(super) fn num_chroma() -> usize {
        crate::musicgen::chroma::NUM_CHROMA
    }
    pub(super) fn chroma_length() -> usize {
        235
    }
    pub(super) fn vocab_size() -> usize {
        2048
    }
    pub(super) fn max_positions() -> usize {
        2048
    }
    pub(super) fn layers() -> usize {
        24
    }
    pub(super) fn ffn_dim() -> usize {
        4096
    }
    pub(super) fn heads() -> usize {
        16
    }
    pub(super) fn activation() -> String {
        "gelu".to_string()
    }
    pub(super) fn hidden() -> usize {
        1024
    }
    pub(super) fn codebooks() -> usize {
        4
    }
    pub(super) fn channels() -> usize {
        1
    }
    pub(super) fn special() -> u32 {
        2048
    }
}

fn unsupported(field: &str, message: impl Into<String>) -> ModelError {
    ModelError::UnsupportedConfig {
        field: field.to_string(),
        message: message.into(),
    }
}

impl DecoderConfig {
    /// Codebooks per audio channel: the number of distinct delays of the pattern.
    pub fn channel_codebooks(&self) -> usize {
        self.num_codebooks / self.audio_channels.max(1)
    }

    /// Size of one attention head.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads.max(1)
    }

    /// Decoder weights one step reads: per layer the self-attention Q, K, V and O, the
    /// cross-attention Q and O where the layers have it (its K and V are computed once per
    /// job) and the feed-forward pair; then the LM heads. Embedding lookups read one row
    /// each and are left out.
    pub fn weights_read_per_step(&self, cross_attention: bool) -> usize {
        let d = self.hidden_size;
        let attention = if cross_attention { 6 } else { 4 };
        let per_layer = attention * d * d + 2 * d * self.ffn_dim;
        self.num_hidden_layers * per_layer + self.num_codebooks * d * self.vocab_size
    }

    /// KV-cache elements one step reads at `position` (keys and values of every layer for
    /// `rows` guidance rows).
    pub fn kv_elements_read_at(&self, position: usize, rows: usize) -> usize {
        2 * self.num_hidden_layers * self.hidden_size * position * rows
    }
}

impl Config {
    /// Reads and validates `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let config: Self = read_json(path, "MusicGen config.json")?;
        config.validate()?;
        Ok(config)
    }

    /// Whether this is a MusicGen-Melody checkpoint.
    pub fn is_melody(&self) -> bool {
        self.model_type == MUSICGEN_MELODY
    }

    /// Checks the config describes a model this implementation runs exactly.
    pub fn validate(&self) -> Result<()> {
        if self.model_type != MUSICGEN && self.model_type != MUSICGEN_MELODY {
            return Err(unsupported(
                "model_type",
                format!(
                    "`{}` is not a MusicGen checkpoint ({MUSICGEN} or {MUSICGEN_MELODY} is)",
                    self.model_type
                ),
            ));
        }
        if self.is_melody() {
            let bins = crate::musicgen::chroma::NUM_CHROMA;
            if self.num_chroma != bins {
                return Err(unsupported(
                    "num_chroma",
                    format!(
                        "{} chroma classes; the chroma extractor makes {bins}",
                        self.num_chroma
                    ),
                ));
            }
            let rate = crate::musicgen::chroma::CHROMA_SAMPLE_RATE;
            if self.audio_encoder.sampling_rate != rate {
                return Err(unsupported(
                    "audio_encoder.sampling_rate",
                    format!(
                        "{} Hz; a melody model's chroma is computed at {rate} Hz",
                        self.audio_encoder.sampling_rate
                    ),
                ));
            }
            if self.chroma_length == 0 || self.chroma_length >= self.decoder.max_position_embeddings
            {
                return Err(unsupported(
                    "chroma_length",
                    format!(
                        "{} must be positive and below decoder.max_position_embeddings {}",
                        self.chroma_length, self.decoder.max_position_embeddings
                    ),
                ));
            }
        }
        self.text_encoder.validate()?;
        self.audio_encoder.validate()?;
        let d = &self.decoder;
        if d.activation_function != "gelu" {
            return Err(unsupported(
                "decoder.activation_function",
                format!("`{}` is not supported (gelu is)", d.activation_function),
            ));
        }
        if d.scale_embedding {
            return Err(unsupported(
                "decoder.scale_embedding",
                "true is not supported",
            ));
        }
        if d.num_attention_heads == 0 || !d.hidden_size.is_multiple_of(d.num_attention_heads) {
            return Err(unsupported(
                "decoder.num_attention_heads",
                format!("must divide hidden_size {}", d.hidden_size),
            ));
        }
        if !matches!(d.audio_channels, 1 | 2) {
            return Err(unsupported("decoder.audio_channels", "must be 1 or 2"));
        }
        if d.num_codebooks == 0 || !d.num_codebooks.is_multiple_of(d.audio_channels) {
            return Err(unsupported(
                "decoder.num_codebooks",
                "must be a positive multiple of audio_channels",
            ));
        }
        let quantizers = self.audio_encoder.num_quantizers();
        if d.channel_codebooks() > quantizers {
            return Err(unsupported(
                "decoder.num_codebooks",
                format!(
                    "{} codebooks per channel, but the audio codec has {quantizers} quantizers",
                    d.channel_codebooks()
                ),
            ));
        }
        if d.vocab_size != self.audio_encoder.codebook_size {
            return Err(unsupported(
                "decoder.vocab_size",
                format!(
                    "{} differs from audio_encoder.codebook_size {}",
                    d.vocab_size, self.audio_encoder.codebook_size
                ),
            ));
        }
        if (d.pad_token_id as usize) > d.vocab_size || (d.bos_token_id as usize) > d.vocab_size {
            return Err(unsupported(
                "decoder.pad_token_id",
                "pad and bos tokens must index the embedding table (at most vocab_size)",
            ));
        }
        if d.max_position_embeddings <= d.channel_codebooks() {
            return Err(unsupported(
                "decoder.max_position_embeddings",
                "too small to hold one frame",
            ));
        }
        if !d.hidden_size.is_multiple_of(2) || d.hidden_size < 4 {
            return Err(unsupported(
                "decoder.hidden_size",
                "must be even and at least 4",
            ));
        }
        Ok(())
    }

    /// Whether `enc_to_dec_proj` exists: the text hidden size differs from the decoder's.
    pub fn has_enc_to_dec_proj(&self) -> bool {
        (self.is_melody() || self.decoder.cross_attention_hidden_size.is_none())
            && self.text_encoder.d_model != self.decoder.hidden_size
    }

    /// Melody: whether `audio_enc_to_dec_proj` exists (the chroma width differs from the
    /// decoder's).
    pub fn has_audio_enc_to_dec_proj(&self) -> bool {
        self.is_melody() && self.num_chroma != self.decoder.hidden_size
    }

    /// Positions the decoder's prefix takes before the audio for `text_tokens` tokens: the
    /// chroma and the text for melody, none where the text is cross-attended.
    pub fn prefix_positions(&self, text_tokens: usize) -> usize {
        if self.is_melody() {
            self.chroma_length + text_tokens
        } else {
            0
        }
    }

    /// Decoder weights one step reads ([`DecoderConfig::weights_read_per_step`]); melody
    /// decoders have no cross-attention.
    pub fn weights_read_per_step(&self) -> usize {
        self.decoder.weights_read_per_step(!self.is_melody())
    }

    /// Audio frames per second (50 for the 32 kHz EnCodec).
    pub fn frame_rate(&self) -> usize {
        self.audio_encoder.frame_rate()
    }

    /// The most audio frames one generation can hold: positions minus the delay columns
    /// (and, for melody, minus the prefix of `text_tokens` tokens).
    pub fn max_frames(&self, text_tokens: usize) -> usize {
        self.decoder
            .max_position_embeddings
            .saturating_sub(self.decoder.channel_codebooks() + self.prefix_positions(text_tokens))
    }
}

/// Default sampling from `generation_config.json`.
#[derive(Clone, Debug, PartialEq, serde::Deserialize, serde::Serialize)]
pub struct GenerationConfig {
    /// Sample (true) or take the arg-max (false).
    #[serde(default = "default_true")]
    pub do_sample: bool,
    /// Classifier-free guidance scale (1 = no guidance).
    #[serde(default = "default_guidance")]
    pub guidance_scale: f32,
    /// Top-k; when the file does not set it Son1k uses audiocraft's 250 (the paper's
    /// setting), not transformers' generic 50.
    #[serde(default = "default_top_k")]
    pub top_k: usize,
    /// Top-p (0 = off).
    #[serde(default)]
    pub top_p: f32,
    /// Temperature.
    #[serde(default = "default_temperature")]
    pub temperature: f32,
    /// Total decoder sequence length including the start column.
    #[serde(default = "default_max_length")]
    pub max_length: usize,
}

fn default_true() -> bool {
    true
}
fn default_guidance() -> f32 {
    3.0
}
fn default_top_k() -> usize {
    250
}
fn default_temperature() -> f32 {
    1.0
}
fn default_max_length() -> usize {
    1500
}

impl Default for GenerationConfig {
    fn default() -> Self {
        Self {
            do_sample: true,
            guidance_scale: default_guidance(),
            top_k: default_top_k(),
            top_p: 0.0,
            temperature: default_temperature(),
            max_length: default_max_length(),
        }
    }
}

impl GenerationConfig {
    /// Reads `generation_config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        read_json(path, "generation_config.json")
    }
}

/// Reads a JSON document, naming the file in every error.
pub(crate) fn read_json<T: serde::de::DeserializeOwned>(
    path: &Path,
    what: &'static str,
) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            ModelError::MissingFile {
                path: path.to_path_buf(),
                what,
            }
        } else {
            ModelError::Io {
                path: path.to_path_buf(),
                source,
            }
        }
    })?;
    serde_json::from_str(&text).map_err(|e| ModelError::BadJson {
        path: path.to_path_buf(),
        what,
        message: e.to_string(),
    })
}
