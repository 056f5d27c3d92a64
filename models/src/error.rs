//! The one error type of the model crate: every failure names the file, tensor or field at fault.

use std::path::PathBuf;

/// Errors raised while loading checkpoints or running model math.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A checkpoint directory or one of its files does not exist or cannot be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file or directory that failed.
        path: PathBuf,
        /// The underlying I/O error.
        source: std::io::Error,
    },
    /// A required file is absent from the checkpoint directory.
    #[error("{path} is missing: {what}")]
    MissingFile {
        /// The expected location.
        path: PathBuf,
        /// What the file is for, so the user knows what to provide.
        what: &'static str,
    },
    /// A JSON file (config, generation config, shard index) does not parse.
    #[error("{path} is not a valid {what}: {message}")]
    BadJson {
        /// The file that failed to parse.
        path: PathBuf,
        /// What kind of document was expected.
        what: &'static str,
        /// The parser's explanation.
        message: String,
    },
    /// A safetensors file is corrupt or truncated.
    #[error("{path} is not a valid safetensors file: {message}")]
    BadSafetensors {
        /// The file that failed.
        path: PathBuf,
        /// The reader's explanation.
        message: String,
    },
    /// A tensor the model needs is not in the checkpoint.
    #[error("tensor `{name}` is missing from {location}")]
    MissingTensor {
        /// Checkpoint key of the tensor.
        name: String,
        /// The file(s) searched.
        location: String,
    },
    /// A tensor has a different shape than the config implies.
    #[error("tensor `{name}` in {location} has shape {found:?}, expected {expected:?}")]
    ShapeMismatch {
        /// Checkpoint key of the tensor.
        name: String,
        /// The file holding it.
        location: String,
        /// The shape the config implies.
        expected: Vec<usize>,
        /// The shape stored in the file.
        found: Vec<usize>,
    },
    /// A tensor is stored in a dtype this engine does not read.
    #[error("tensor `{name}` in {location} has unsupported dtype {dtype:?} (f32, f16 and bf16 are read)")]
    UnsupportedDtype {
        /// Checkpoint key of the tensor.
        name: String,
        /// The file holding it.
        location: String,
        /// The stored dtype.
        dtype: candle_core::DType,
    },
    /// A config value is out of the range this implementation supports.
    #[error("config field `{field}`: {message}")]
    UnsupportedConfig {
        /// The config field (dotted path).
        field: String,
        /// Why it is not supported.
        message: String,
    },
    /// The tokenizer could not be loaded or failed on a prompt.
    #[error("tokenizer {path}: {message}")]
    Tokenizer {
        /// The tokenizer file.
        path: PathBuf,
        /// The tokenizer library's explanation.
        message: String,
    },
    /// The model produced NaN or infinite logits (usually a precision too low for it).
    #[error("the decoder produced non-finite logits at step {step} in {dtype:?}; f32 is the exact precision")]
    NonFiniteLogits {
        /// The decoder step.
        step: usize,
        /// The decoder's dtype.
        dtype: candle_core::DType,
    },
    /// A decoder pass shared by several jobs failed, so each of them did.
    #[error("the batched decoder step failed: {0}")]
    BatchFailed(String),
    /// Audio prompt codes that cannot start a continuation.
    #[error("bad audio prompt: {0}")]
    BadPrompt(String),
    /// A melody for a model without melody conditioning.
    #[error("this model has no melody conditioning (model_type `{model_type}`)")]
    NoMelody {
        /// The checkpoint's `model_type`.
        model_type: String,
    },
    /// More frames than one generation's positions hold.
    #[error("{frames} frames do not fit one generation; it holds at most {max}")]
    TooManyFrames {
        /// Frames asked for.
        frames: usize,
        /// The most that fit, after the delay columns and any prefix.
        max: usize,
    },
    /// A tensor operation failed (an internal error: shapes are validated at load).
    #[error("tensor operation failed: {0}")]
    Candle(#[from] candle_core::Error),
}

/// Result alias of the model crate.
pub type Result<T> = std::result::Result<T, ModelError>;
