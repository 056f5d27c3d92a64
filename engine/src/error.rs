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
    /// No job with that id belongs to the caller.
    #[error("{0}")]
    NotFound(String),
    /// An idempotency key was reused for a different request.
    #[error("{0}")]
    AlreadyExists(String),
    /// A limit on queued or concurrent work is reached; retrying later may succeed.
    #[error("{message}; retry in {} s", retry_after.as_secs_f64().ceil())]
    ResourceExhausted {
        /// Which limit, and its value.
        message: String,
        /// When a retry is likely to be admitted.
        retry_after: std::time::Duration,
    },
    /// The job is not in a state that allows the call (e.g. audio of an unfinished job).
    #[error("{0}")]
    NotReady(String),
    /// The engine is loading, draining or stopped.
    #[error("{0}")]
    Unavailable(String),
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
    /// What a client may be told: the error itself, except where it carries the server's
    /// internals (file paths, panic and library text), which only the server's log gets.
    pub fn public_message(&self) -> String {
        match self {
            Self::Output { .. } => {
                "the server could not store or read the result; its log says why".into()
            }
            Self::Internal(_) | Self::Model(_) => {
                "the model failed while running; the server's log says why".into()
            }
            _ => self.to_string(),
        }
    }

    /// Whether [`Self::public_message`] hides the details, so they belong in the log.
    pub fn is_internal(&self) -> bool {
        matches!(
            self,
            Self::Output { .. } | Self::Internal(_) | Self::Model(_)
        )
    }

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
