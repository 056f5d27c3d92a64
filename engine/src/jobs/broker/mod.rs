//! The job system's shared state on NATS JetStream, for `son1k serve --broker`: what lets
//! several nodes share one queue, one set of job logs and one result store. This module
//! holds the broker's parts, each tested against a real server; the nodes' job system is
//! built on them.
//!
//! - [`queue::WorkQueue`]: one work message per unfinished job on `son1k.work.<tenant>`
//!   (work-queue retention). The stream's per-subject limit is the tenant's limit of
//!   unfinished jobs and its message limit the cluster's queue, both refused atomically by
//!   the server (discard-new). Nodes take messages from one durable pull consumer; a taken
//!   message is a lease that lasts the ack wait, extended by in-progress acks and
//!   redelivered to another node when its holder stops.
//! - [`log::JobLog`]: each job's events on `son1k.ev.<job>`, published with the job
//!   subject's expected last sequence. That sequence is the writer's fencing token: a node
//!   that lost its lease (paused past it, say) is refused, so no event is written twice or
//!   by two owners, and a replay from any node delivers each stored event once, in order.
//! - [`records::Records`]: job records in KV with compare-and-set by revision, and
//!   idempotency keys that only their first request creates.
//! - Finished audio goes to the object store [`names::AUDIO_STORE`].
//! - [`cluster::Cluster`]: what any node answers for any job on these: submit, get, list,
//!   cancel and its events.
//!
//! Names and keys are in [`names`]; `../shared/reference/scale-out.md` has the design notes
//! behind them.

pub mod cluster;
pub mod log;
pub mod names;
pub mod queue;
pub mod records;
pub(crate) mod runner;

#[cfg(any(test, feature = "test-broker"))]
pub mod test_server;
#[cfg(test)]
mod tests;

use std::time::Duration;

use async_nats::jetstream::{self, consumer, kv, object_store, stream};

use crate::error::EngineError;

/// How the broker's streams and buckets are set up; every node of a cluster should give the
/// same values (the last node to start sets them).
#[derive(Clone, Debug, PartialEq)]
pub struct BrokerConfig {
    /// Work messages the cluster holds at once: its running slots plus its queue.
    pub max_unfinished: usize,
    /// Unfinished jobs one tenant may have across the cluster.
    pub max_jobs_per_tenant: usize,
    /// How long a node holds a job without an in-progress ack before another node may
    /// take it (default 30 s).
    pub ack_wait: Duration,
    /// Runs of one job before it is given up as Failed (INTERRUPTED), each on a node that
    /// stopped before finishing it (default 3). The job's record counts the runs; its work
    /// message is delivered until a node ends it, so the node that takes it after the last
    /// run ends it and frees its place.
    pub max_attempts: u32,
    /// How long job logs, records and audio are kept (the node's retention).
    pub retention: Duration,
    /// How long an idempotency key answers for its job (default 24 h).
    pub request_key_ttl: Duration,
}

impl BrokerConfig {
    /// The defaults for a cluster of `max_unfinished` work messages and a tenant limit.
    pub fn new(max_unfinished: usize, max_jobs_per_tenant: usize, retention: Duration) -> Self {
        Self {
            max_unfinished,
            max_jobs_per_tenant,
            ack_wait: Duration::from_secs(30),
            max_attempts: 3,
            retention,
            request_key_ttl: Duration::from_secs(24 * 3600),
        }
    }
}

/// A connection to the broker with its streams, consumer and buckets in place.
#[derive(Clone)]
pub struct Broker {
    /// The JetStream context.
    pub context: jetstream::Context,
    /// The work queue.
    pub queue: queue::WorkQueue,
    /// The job logs.
    pub log: log::JobLog,
    /// Records and idempotency keys.
    pub records: records::Records,
    /// Finished audio.
    pub audio: object_store::ObjectStore,
}

/// A broker error as the engine reports it: the broker is out of reach or refused.
pub(crate) fn unavailable(what: &str, error: impl std::fmt::Display) -> EngineError {
    EngineError::Unavailable(format!("the broker {what}: {error}"))
}

impl Broker {
    /// Connects to `url` (`nats://host:port`) as `node` and creates or updates every stream,
    /// the consumer and the buckets to `config`. The client reconnects by itself after
    /// a lost connection.
    pub async fn connect(
        url: &str,
        node: &str,
        config: &BrokerConfig,
    ) -> Result<Self, EngineError> {
        let client = async_nats::ConnectOptions::new()
            .name(format!("son1k {node}"))
            .connection_timeout(Duration::from_secs(5))
            .connect(url)
            .await
            .map_err(|e| unavailable(&format!("at {url} cannot be reached"), e))?;
        Self::set_up(jetstream::new(client), config).await
    }

    /// Creates or updates what the nodes share.
    async fn set_up(
        context: jetstream::Context,
        config: &BrokerConfig,
    ) -> Result<Self, EngineError> {
        let setup = |what: &str| {
            let what = format!("cannot set up {what}");
            move |e: Box<dyn std::error::Error + Send + Sync>| unavailable(&what, e)
        };
        let as_i64 = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        let work = ensure_stream(
            &context,
            stream::Config {
                name: names::WORK_STREAM.into(),
                subjects: vec![names::WORK_SUBJECTS.into()],
                retention: stream::RetentionPolicy::WorkQueue,
                storage: stream::StorageType::File,
                discard: stream::DiscardPolicy::New,
                discard_new_per_subject: true,
                max_messages: as_i64(config.max_unfinished.max(1)),
                max_messages_per_subject: as_i64(config.max_jobs_per_tenant.max(1)),
                ..Default::default()
            },
        )
        .await?;
        let events = ensure_stream(
            &context,
            stream::Config {
                name: names::EVENTS_STREAM.into(),
                subjects: vec![names::EVENTS_SUBJECTS.into()],
                retention: stream::RetentionPolicy::Limits,
                storage: stream::StorageType::File,
                max_age: config.retention,
                allow_direct: true,
                ..Default::default()
            },
        )
        .await?;
        let workers = consumer::pull::Config {
            durable_name: Some(names::WORKERS.into()),
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait: config.ack_wait,
            // Unlimited: the record's attempts bound the runs (a delivery that dies before
            // taking the job counts none), and the last delivery frees the job's place.
            max_deliver: -1,
            ..Default::default()
        };
        // The consumer's settings follow the configuration: created, or updated in place.
        let consumer = match work.update_consumer(workers.clone()).await {
            Ok(consumer) => consumer,
            Err(_) => work
                .create_consumer(workers)
                .await
                .map_err(|e| setup(names::WORKERS)(e.into()))?,
        };
        let jobs = ensure_bucket(&context, names::JOBS_BUCKET, config.retention).await?;
        let requests =
            ensure_bucket(&context, names::REQUESTS_BUCKET, config.request_key_ttl).await?;
        let audio = match context.get_object_store(names::AUDIO_STORE).await {
            Ok(store) => store,
            Err(_) => context
                .create_object_store(object_store::Config {
                    bucket: names::AUDIO_STORE.into(),
                    max_age: config.retention,
                    storage: stream::StorageType::File,
                    ..Default::default()
                })
                .await
                .map_err(|e| setup(names::AUDIO_STORE)(e.into()))?,
        };
        Ok(Self {
            queue: queue::WorkQueue::new(context.clone(), work, consumer),
            log: log::JobLog::new(context.clone(), events),
            records: records::Records::new(jobs, requests),
            audio,
            context,
        })
    }
}

/// Creates `config`'s stream, or updates it to `config` (its limits follow the nodes'
/// configuration), and returns it.
async fn ensure_stream(
    context: &jetstream::Context,
    config: stream::Config,
) -> Result<stream::Stream, EngineError> {
    let name = config.name.clone();
    let what = format!("cannot set up {name}");
    context
        .create_or_update_stream(config)
        .await
        .map_err(|e| unavailable(&what, e))?;
    context
        .get_stream(&name)
        .await
        .map_err(|e| unavailable(&what, e))
}

/// Creates the key-value bucket `name` (one value a key, on disk, each kept `max_age`), or
/// updates it to that.
async fn ensure_bucket(
    context: &jetstream::Context,
    name: &str,
    max_age: Duration,
) -> Result<kv::Store, EngineError> {
    context
        .create_or_update_key_value(kv::Config {
            bucket: name.into(),
            history: 1,
            max_age,
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await
        .map_err(|e| unavailable(&format!("cannot set up {name}"), e))
}
