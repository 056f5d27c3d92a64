//! Jobs: a registry task that owns every job (admission-controlled queue, event logs with
//! sequence numbers, subscribers, cancel flags), worker threads that run the models, and a
//! store on disk where results and records survive restarts.

mod batch;
pub mod broker;
mod command;
mod config;
mod decode_slots;
mod event;
mod event_stream;
mod handle;
mod job;
mod metrics;
mod registry;
mod restore;
mod store;
mod tenants;
mod worker;

pub use command::{Admitted, ReservationId, Submission};
pub use config::{default_node_name, EngineConfig};
pub use event::{
    AudioPiece, EventBody, FailureCode, JobEvent, JobKind, JobResult, JobStage, JobState, PcmChunk,
    ProgressReport, ResolvedParams,
};
pub use event_stream::EventStream;
pub use handle::{Engine, Reservation, StoredAudio};
pub use job::{check_job_id, JobInfo};
pub use store::StoreHealth;
pub use tenants::ListCursor;

#[cfg(test)]
mod tests;
