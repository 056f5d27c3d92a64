//! The one mapping from engine errors to gRPC statuses. Every variant has its own arm, so a
//! new error cannot reach clients as an accidental UNKNOWN.

use son1k_engine::EngineError;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// The status a client sees for an engine error.
pub fn to_status(error: EngineError) -> Status {
    if error.is_internal() {
        // Paths and panic text go to the log, never to the client.
        tracing::warn!("{error}");
    }
    let message = error.public_message();
    match error {
        EngineError::InvalidArgument { field, .. } => Status::with_error_details(
            Code::InvalidArgument,
            message.clone(),
            ErrorDetails::with_bad_request_violation(field, message),
        ),
        EngineError::Unsupported(_) | EngineError::NotReady(_) => {
            Status::failed_precondition(message)
        }
        EngineError::NotFound(_) => Status::not_found(message),
        EngineError::AlreadyExists(_) => Status::already_exists(message),
        EngineError::ResourceExhausted { retry_after, .. } => {
            let mut status = Status::with_error_details(
                Code::ResourceExhausted,
                message,
                ErrorDetails::with_retry_info(Some(retry_after)),
            );
            // Plain clients (and browsers) read the hint from this header.
            if let Ok(value) = retry_after.as_secs().max(1).to_string().parse() {
                status.metadata_mut().insert("retry-after", value);
            }
            status
        }
        EngineError::Cancelled => Status::cancelled(message),
        EngineError::Unavailable(_) => Status::unavailable(message),
        EngineError::Internal(_) | EngineError::Model(_) | EngineError::Output { .. } => {
            Status::internal(message)
        }
    }
}
