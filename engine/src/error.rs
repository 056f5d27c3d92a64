//! The engine's error type: what a user did wrong (naming the field), what the model
//! could not do, and cancellation.

use son1k_models::ModelError;

/// Errors of the engine; each maps to one client-visible status.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// A request field is missing or out of range.
    #[error("invalid {field}: {message}")]
    InvalidArgument {
        /// The request field at fault (`prompt`, `duration`, `top_k`, ...).
        field: &'static str,
        /// What is wrong and what the limit is.
        message: String,
    },
    /// The request is valid but this build or device cannot run it.
    #[error("{0}")]
    Unsupported(String),
    /// The model failed while running (not the request's fault).
    #[error("the model failed: {0}")]
    Internal(String),
    /// The job was cancelled before it finished.
    #[error("generation cancelled")]
    Cancelled,
    /// Loading or running the model failed.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// Writing output failed.
    #[error("cannot write {path}: {message}")]
    Output {
        /// Where the output was going.
        path: String,
        /// Why it failed.
        message: String,
    },
}

impl EngineError {
    /// A bad request field.
    pub fn invalid(field: &'static str, message: impl Into<String>) -> Self {
        Self::InvalidArgument {
            field,
            message: message.into(),
        }
    }
}

impl From<candle_core::Error> for EngineError {
    fn from(e: candle_core::Error) -> Self {
        Self::Model(ModelError::Candle(e))
    }
}
