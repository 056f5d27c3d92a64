//! The registry's vocabulary: what clients submit and get back, and the messages the
//! registry task serves (from client calls, worker threads and the store thread).

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use super::event::{JobEvent, JobKind, JobState};
use super::job::JobInfo;
use super::metrics::Gauges;
use super::store::StoreReport;
use super::tenants::ListCursor;
use super::worker::WorkerReport;
use crate::audio::AudioFormat;
use crate::error::EngineError;
use crate::request::GenerateRequest;

/// A job to admit.
#[derive(Clone, Debug)]
pub struct Submission {
    /// Who submits it.
    pub tenant: String,
    /// Generation or cover.
    pub kind: JobKind,
    /// A model id; `None` for the default model.
    pub model: Option<String>,
    /// The request.
    pub request: GenerateRequest,
    /// The final file's container.
    pub format: AudioFormat,
    /// The client's idempotency key.
    pub request_id: Option<String>,
    /// A digest of the parameters, to tell a retry from a different request under the
    /// same key.
    pub fingerprint: u64,
    /// The admission slot taken before expensive preparation (decoding an upload), from
    /// [`Engine::reserve`](super::Engine::reserve); `None` is admitted as it comes.
    pub reservation: Option<ReservationId>,
    /// A cluster admitted it already, under this id: this node runs it under the same id,
    /// without the tenant's admission again (its node's slot is all it takes).
    pub cluster_id: Option<String>,
}

/// Names an admission slot held by a [`Reservation`](super::Reservation).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ReservationId(pub(crate) u64);

/// An admitted job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Admitted {
    /// The job's id.
    pub id: String,
    /// Whether an earlier submission with the same key made it.
    pub existing: bool,
}

/// A subscription's channel, and whether the channel alone carries the job to its end.
pub(crate) struct Feed {
    pub events: mpsc::Receiver<Arc<JobEvent>>,
    pub to_the_end: bool,
    pub kind: JobKind,
    /// The job has ended and its log is on disk: replay from the file instead.
    pub from_disk: bool,
}

/// Messages to the registry.
pub(crate) enum Command {
    Submit {
        submission: Box<Submission>,
        reply: oneshot::Sender<Result<Admitted, EngineError>>,
    },
    Subscribe {
        tenant: String,
        id: String,
        after: u64,
        reply: oneshot::Sender<Result<Feed, EngineError>>,
    },
    Get {
        tenant: String,
        id: String,
        reply: oneshot::Sender<Result<JobInfo, EngineError>>,
    },
    /// A page of the tenant's jobs, newest first, after a cursor.
    List {
        tenant: String,
        after: Option<ListCursor>,
        size: usize,
        reply: oneshot::Sender<(Vec<JobInfo>, Option<ListCursor>)>,
    },
    Cancel {
        tenant: String,
        id: String,
        reason: String,
        reply: oneshot::Sender<Result<JobState, EngineError>>,
    },
    Drain {
        reply: oneshot::Sender<()>,
    },
    /// What the gauges of `/metrics` read: jobs by state, the queue, the slots.
    Gauges {
        reply: oneshot::Sender<Gauges>,
    },
    /// Answers once every event and record so far is on disk.
    Flush {
        reply: oneshot::Sender<()>,
    },
    /// Takes an admission slot for a job from `tenant` (before expensive work such as
    /// decoding an upload): it counts against the queue and the tenant's limits until a
    /// submission uses it or it is released.
    Reserve {
        tenant: String,
        /// The model its job will run on (it holds a slot of that model's lane).
        model: String,
        reply: oneshot::Sender<Result<ReservationId, EngineError>>,
    },
    /// Gives an unused slot back (a used one is already gone).
    Release {
        id: ReservationId,
    },
    /// What the store thread has to say: logs on disk, failed writes, its health.
    Store(StoreReport),
    Worker {
        id: String,
        report: WorkerReport,
    },
}
