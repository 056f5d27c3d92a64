//! The job system's configuration: admission limits, workers, where results live and how
//! long they are kept. Every value is documented with its default.

use std::path::PathBuf;
use std::time::Duration;

use crate::limits::Limits;

/// How the engine admits, runs and keeps jobs.
#[derive(Clone, Debug, PartialEq)]
pub struct EngineConfig {
    /// Request limits (prompt, duration, sampling, uploads).
    pub limits: Limits,
    /// Jobs of models that do not batch (the synth) that run at once, each on its own
    /// worker thread (default 2). More jobs than cores only share the cores.
    pub max_running: usize,
    /// Jobs one model that batches (MusicGen on the CPU) steps together (default 8): every
    /// decoder step reads the weights once for all of them. More wait in the queue, first
    /// come, first served.
    pub max_batch: usize,
    /// Jobs that may wait for a worker (default 64); beyond it a submit is refused with
    /// `ResourceExhausted` and a retry hint.
    pub max_queued: usize,
    /// Unfinished (queued or running) jobs one tenant may have (default 16).
    pub max_jobs_per_tenant: usize,
    /// The retry hint given with a refusal when no job has finished yet to estimate from
    /// (default 5 s).
    pub retry_after: Duration,
    /// Where job records and finished audio are stored (`<data_dir>/jobs/<id>/`).
    pub data_dir: PathBuf,
    /// How long a finished job and its audio are kept (default 24 h).
    pub retention: Duration,
    /// Audio pieces of the final file are at most this many bytes (default 1 MiB).
    pub audio_piece_bytes: usize,
    /// The model used when a request names none (default: the first model given).
    pub default_model: Option<String>,
    /// Uploads one tenant may decode at once (default 1); the server decodes as many as
    /// `max_running` at once overall, so one tenant's uploads cannot take every slot.
    pub max_decodes_per_tenant: usize,
    /// How long an upload may wait for a decode slot before the Cover is refused with
    /// `ResourceExhausted` (default 30 s).
    pub decode_wait: Duration,
    /// Free bytes the data directory's file system must keep; under it, submissions are
    /// refused with `ResourceExhausted` (default 256 MiB), so running jobs still have room
    /// to finish.
    pub min_free_bytes: u64,
    /// Jobs one tenant may have stored, finished ones included until they expire (default
    /// 1000).
    pub max_stored_jobs_per_tenant: usize,
    /// Bytes of finished audio one tenant may have stored (default 1 GiB). Checked when a
    /// job is submitted, so running jobs may take a tenant past it by their own output.
    pub max_stored_bytes_per_tenant: u64,
    /// Jobs one tenant may submit a minute, in bursts of as many (default 120).
    pub max_submits_per_minute: u32,
    /// This node's name in logs and in each job's span (default: the host's name, from
    /// [`default_node_name`]).
    pub node: String,
}

impl EngineConfig {
    /// The defaults, storing under `data_dir`.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            limits: Limits::default(),
            max_running: 2,
            max_batch: 8,
            max_queued: 64,
            max_jobs_per_tenant: 16,
            retry_after: Duration::from_secs(5),
            data_dir: data_dir.into(),
            retention: Duration::from_secs(24 * 3600),
            audio_piece_bytes: 1024 * 1024,
            default_model: None,
            max_decodes_per_tenant: 1,
            decode_wait: Duration::from_secs(30),
            min_free_bytes: 256 << 20,
            max_stored_jobs_per_tenant: 1000,
            max_stored_bytes_per_tenant: 1 << 30,
            max_submits_per_minute: 120,
            node: default_node_name(),
        }
    }
}

/// The host's name (Linux's `/proc/sys/kernel/hostname`, else `$HOSTNAME`), or `son1k`
/// where neither says.
pub fn default_node_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|name| name.trim().to_string())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "son1k".into())
}
