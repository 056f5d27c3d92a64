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
//! - Finished audio goes to the object store [`names::AUDIO_STORE`], and a cover's song
//!   travels to the node that runs it through [`inputs`].
//! - [`cluster::Cluster`]: what any node answers for any job on these: submit, get, list,
//!   cancel and its events.
//!
//! Names and keys are in [`names`]; `../shared/reference/scale-out.md` has the design notes
//! behind them.

pub mod cluster;
pub(crate) mod fetched;
pub mod inputs;
pub mod log;
pub mod names;
pub mod queue;
pub mod quotas;
pub mod records;
pub(crate) mod runner;

#[cfg(any(test, feature = "test-broker"))]
pub mod test_server;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer, kv, object_store, stream};
use async_nats::Event;
use tokio::sync::watch;

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
    /// Submissions one tenant may make a minute across the cluster (default 120).
    pub max_submits_per_minute: u32,
    /// Jobs one tenant may keep across the cluster, finished ones included (default 1000).
    pub max_stored_jobs_per_tenant: usize,
    /// Audio bytes one tenant may keep across the cluster (default 1 GiB).
    pub max_stored_bytes_per_tenant: u64,
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
            max_submits_per_minute: 120,
            max_stored_jobs_per_tenant: 1000,
            max_stored_bytes_per_tenant: 1 << 30,
        }
    }
}

/// Attempts at a compare-and-set that other nodes keep winning before giving up.
pub(super) const RACES: usize = 16;

/// How often a node checks its connection's state, beside the client's events.
const CONNECTION_CHECK: Duration = Duration::from_millis(500);

/// The longest pause between two attempts to reach a lost broker.
pub const RECONNECT_PAUSE: Duration = Duration::from_secs(2);

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
    /// Each tenant's rate and stored jobs.
    pub quotas: quotas::Quotas,
    /// Finished audio.
    pub audio: object_store::ObjectStore,
    /// Covers' songs while their jobs are unfinished.
    pub inputs: object_store::ObjectStore,
    /// Whether the connection is up now: false from a lost connection until the client
    /// has reconnected by itself.
    pub connected: watch::Receiver<bool>,
}

/// A broker error as the engine reports it: the broker is out of reach or refused.
pub(crate) fn unavailable(what: &str, error: impl std::fmt::Display) -> EngineError {
    EngineError::Unavailable(format!("the broker {what}: {error}"))
}

impl Broker {
    /// Connects to `url` (`nats://host:port`) as `node` and creates or updates every stream,
    /// the consumer and the buckets to `config`. The client reconnects by itself after
    /// a lost connection, as often as it takes (at most [`RECONNECT_PAUSE`] apart), and
    /// [`Broker::connected`] follows it.
    pub async fn connect(
        url: &str,
        node: &str,
        config: &BrokerConfig,
    ) -> Result<Self, EngineError> {
        let (up, connected) = watch::channel(true);
        let up = Arc::new(up);
        let on_event = Arc::clone(&up);
        let node_name = node.to_string();
        let client = async_nats::ConnectOptions::new()
            .name(format!("son1k {node}"))
            .connection_timeout(Duration::from_secs(5))
            .reconnect_delay_callback(|attempts| {
                let pause = Duration::from_millis(100).saturating_mul(attempts as u32);
                pause.min(RECONNECT_PAUSE)
            })
            .event_callback(move |event| {
                match &event {
                    Event::Disconnected => {
                        tracing::warn!(node = %node_name, "lost the broker; reconnecting");
                        on_event.send_replace(false);
                    }
                    Event::Connected => {
                        tracing::info!(node = %node_name, "connected to the broker");
                        on_event.send_replace(true);
                    }
                    _ => {}
                }
                std::future::ready(())
            })
            .connect(url)
            .await
            .map_err(|e| unavailable(&format!("at {url} cannot be reached"), e))?;
        tokio::spawn(follow_connection(client.clone(), up));
        Self::set_up(jetstream::new(client), config, connected).await
    }

    /// Refuses at once, as UNAVAILABLE, while the connection is down, rather than after a
    /// request's timeout.
    pub fn check_connected(&self) -> Result<(), EngineError> {
        if *self.connected.borrow() {
            Ok(())
        } else {
            Err(EngineError::Unavailable(
                "the broker is out of reach (the node is reconnecting); retry shortly".into(),
            ))
        }
    }

    /// Creates or updates what the nodes share.
    async fn set_up(
        context: jetstream::Context,
        config: &BrokerConfig,
        connected: watch::Receiver<bool>,
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
        let records = records::Records::new(jobs, requests);
        let usage = ensure_bucket(&context, names::USAGE_BUCKET, config.retention).await?;
        let submits = ensure_stream(
            &context,
            stream::Config {
                name: names::SUBMITS_STREAM.into(),
                subjects: vec![names::SUBMITS_SUBJECTS.into()],
                retention: stream::RetentionPolicy::Limits,
                storage: stream::StorageType::File,
                discard: stream::DiscardPolicy::New,
                discard_new_per_subject: true,
                max_messages_per_subject: i64::from(config.max_submits_per_minute.max(1)),
                max_age: Duration::from_millis(quotas::SUBMIT_WINDOW_MS),
                allow_direct: true,
                ..Default::default()
            },
        )
        .await?;
        let quotas = quotas::Quotas::new(
            context.clone(),
            submits,
            usage,
            records.clone(),
            quotas::QuotaLimits {
                per_minute: config.max_submits_per_minute.max(1),
                max_stored: config.max_stored_jobs_per_tenant.max(1),
                max_stored_bytes: config.max_stored_bytes_per_tenant,
                retention: config.retention,
            },
        );
        let audio = ensure_object_store(&context, names::AUDIO_STORE, config.retention).await?;
        let inputs = ensure_object_store(&context, names::INPUTS_STORE, config.retention).await?;
        Ok(Self {
            queue: queue::WorkQueue::new(context.clone(), work, consumer),
            log: log::JobLog::new(context.clone(), events),
            records,
            quotas,
            audio,
            inputs,
            context,
            connected,
        })
    }
}

/// Keeps `up` true exactly while `client` is connected, checking every
/// [`CONNECTION_CHECK`]: the client's events say so at once, but it drops events when a
/// slow reader fills their queue, and a lost one must not leave a node refusing work (or
/// taking it) for good. Ends once nothing reads `up`.
async fn follow_connection(client: async_nats::Client, up: Arc<watch::Sender<bool>>) {
    while !up.is_closed() {
        tokio::time::sleep(CONNECTION_CHECK).await;
        let now = client.connection_state() == async_nats::connection::State::Connected;
        up.send_if_modified(|was| std::mem::replace(was, now) != now);
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

/// The object store `name` (on disk, each object kept `max_age`), created if missing.
async fn ensure_object_store(
    context: &jetstream::Context,
    name: &str,
    max_age: Duration,
) -> Result<object_store::ObjectStore, EngineError> {
    if let Ok(store) = context.get_object_store(name).await {
        return Ok(store);
    }
    context
        .create_object_store(object_store::Config {
            bucket: name.into(),
            max_age,
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await
        .map_err(|e| unavailable(&format!("cannot set up {name}"), e))
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
