//! The broker's parts against a real NATS server ([`super::test_server`]): fencing and
//! replay of the logs, the queue's atomic limits, leases that pass to another node, records
//! by compare-and-set and idempotency keys.

use std::time::Duration;

use futures_util::StreamExt;

use super::cluster::Cluster;
use super::log::Appended;
use super::queue::{Offer, WorkOrder};
use super::records::{Record, RequestClaim};
use super::test_server::NatsServer;
use super::{Broker, BrokerConfig};
use crate::error::EngineError;
use crate::jobs::event::{EventBody, JobEvent, JobKind, JobStage, JobState, ProgressReport};
use crate::jobs::job::JobInfo;

async fn broker(server: &NatsServer, config: &BrokerConfig) -> Broker {
    Broker::connect(&server.url, "test", config).await.unwrap()
}

fn config() -> BrokerConfig {
    BrokerConfig::new(6, 2, Duration::from_secs(3600))
}

fn event(sequence: u64, body: EventBody) -> JobEvent {
    JobEvent {
        sequence,
        time_unix_ms: 0,
        body,
    }
}

fn progress(percent: f32) -> EventBody {
    EventBody::Progress(ProgressReport {
        percent,
        stage: JobStage::Generating,
        frames_done: 0,
        frames_total: 0,
        eta_s: None,
        queue_position: 0,
    })
}

const JOB: &str = "0123456789abcdef0123456789abcdef";

#[tokio::test]
async fn a_stale_writer_is_fenced_and_a_replay_gives_each_event_once_to_the_end() {
    let server = NatsServer::start();
    let broker = broker(&server, &config()).await;
    let log = &broker.log;
    assert_eq!(log.last(JOB).await.unwrap(), None);
    let accepted = event(
        1,
        EventBody::Accepted {
            queue_position: 0,
            model: "m".into(),
        },
    );
    let Appended::Stored(first) = log.append(JOB, 0, &accepted, "node-a.1").await.unwrap() else {
        panic!("the first event of an empty log is stored");
    };
    // Two writers both believe they own the job after `first`: one wins, the other is
    // refused, and the refused one's event is not in the log.
    let Appended::Stored(second) = log
        .append(JOB, first, &event(2, progress(10.0)), "node-b.2")
        .await
        .unwrap()
    else {
        panic!("the owner's event is stored");
    };
    let zombie = log
        .append(JOB, first, &event(2, progress(99.0)), "node-a.1")
        .await
        .unwrap();
    assert_eq!(zombie, Appended::Fenced);
    let stale_empty = log
        .append(JOB, 0, &event(2, progress(99.0)), "node-c.1")
        .await
        .unwrap();
    // The owner repeating its append (its answer lost, say) hears where it was stored,
    // and nothing is stored twice.
    let repeated = log
        .append(JOB, first, &event(2, progress(10.0)), "node-b.2")
        .await
        .unwrap();
    assert_eq!(repeated, Appended::Stored(second));
    assert_eq!(stale_empty, Appended::Fenced);
    assert_eq!(
        log.last(JOB).await.unwrap(),
        Some((second, event(2, progress(10.0))))
    );

    // A replay that starts now follows the job live to its terminal event and stops.
    let mut replay = log.replay(JOB, 1).await.unwrap();
    assert_eq!(
        replay.next().await.unwrap().unwrap(),
        event(2, progress(10.0))
    );
    let done = event(
        3,
        EventBody::Cancelled {
            reason: "test".into(),
        },
    );
    let writer = log.clone();
    let appended = tokio::spawn(async move { writer.append(JOB, second, &done, "node-b.2").await });
    let live = tokio::time::timeout(Duration::from_secs(10), replay.next()).await;
    assert!(matches!(
        live.unwrap().unwrap().unwrap().body,
        EventBody::Cancelled { .. }
    ));
    assert!(matches!(
        appended.await.unwrap().unwrap(),
        Appended::Stored(_)
    ));
    assert!(
        replay.next().await.is_none(),
        "the replay ends at the terminal event"
    );

    // From any point, each stored event once, in order.
    for after in 0..=3 {
        let events: Vec<u64> = log
            .replay(JOB, after)
            .await
            .unwrap()
            .map(|e| e.unwrap().sequence)
            .collect()
            .await;
        assert_eq!(
            events,
            ((after + 1)..=3).collect::<Vec<u64>>(),
            "after {after}"
        );
    }
}

#[tokio::test]
async fn the_queue_refuses_past_a_tenants_limit_and_its_own_atomically() {
    let server = NatsServer::start();
    let broker = broker(&server, &config()).await;
    let order = |tenant: &str, n: usize| WorkOrder {
        job: format!("{tenant}-{n}"),
        tenant: tenant.into(),
    };
    // Ten offers from one tenant at once, as if from ten nodes: exactly its limit of 2 is
    // queued.
    let offers = futures_util::future::join_all((0..10).map(|n| {
        let queue = broker.queue.clone();
        let order = order("a", n);
        async move { queue.offer(&order).await.unwrap() }
    }))
    .await;
    let queued = offers
        .iter()
        .filter(|o| matches!(o, Offer::Queued(_)))
        .count();
    assert_eq!(queued, 2, "{offers:?}");
    assert!(offers
        .iter()
        .all(|o| matches!(o, Offer::Queued(_) | Offer::TenantFull)));
    // A retried publish of a queued job is stored once.
    let first = offers
        .iter()
        .position(|o| matches!(o, Offer::Queued(_)))
        .unwrap();
    assert!(matches!(
        broker.queue.offer(&order("a", first)).await.unwrap(),
        Offer::Queued(_)
    ));
    // Other tenants fill the cluster's 6 places; the next is refused as a full queue.
    for (tenant, n) in [("b", 0), ("b", 1), ("c", 0), ("c", 1)] {
        assert!(matches!(
            broker.queue.offer(&order(tenant, n)).await.unwrap(),
            Offer::Queued(_)
        ));
    }
    assert_eq!(
        broker.queue.offer(&order("d", 0)).await.unwrap(),
        Offer::QueueFull
    );
    // A queued job taken away frees its tenant's place.
    let Offer::Queued(sequence) = offers[first] else {
        unreachable!()
    };
    assert!(broker.queue.remove(sequence).await.unwrap());
    assert!(!broker.queue.remove(sequence).await.unwrap());
    assert!(matches!(
        broker.queue.offer(&order("a", 99)).await.unwrap(),
        Offer::Queued(_)
    ));
}

#[tokio::test]
async fn a_lease_kept_alive_stays_and_a_dropped_one_passes_to_another_node() {
    let server = NatsServer::start();
    let config = BrokerConfig {
        ack_wait: Duration::from_millis(800),
        ..config()
    };
    let node_a = broker(&server, &config).await;
    let node_b = broker(&server, &config).await;
    let order = WorkOrder {
        job: JOB.into(),
        tenant: "t".into(),
    };
    node_a.queue.offer(&order).await.unwrap();
    let lease = node_a
        .queue
        .take(Duration::from_secs(5))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((lease.order.clone(), lease.delivered), (order.clone(), 1));
    // Kept alive past three ack waits: nobody else gets it.
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        lease.extend().await.unwrap();
    }
    assert!(node_b
        .queue
        .take(Duration::from_millis(300))
        .await
        .unwrap()
        .is_none());
    // Its holder stops (killed, or paused): after the ack wait another node takes it,
    // knowing it is a second delivery.
    drop(lease);
    let again = node_b
        .queue
        .take(Duration::from_secs(5))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((again.order.clone(), again.delivered), (order.clone(), 2));
    // Finished, it leaves the queue: the tenant's place is free and nothing comes back.
    again.finish().await.unwrap();
    assert!(node_a
        .queue
        .take(Duration::from_millis(1500))
        .await
        .unwrap()
        .is_none());
    for n in 0..2 {
        let next = WorkOrder {
            job: format!("next-{n}"),
            tenant: "t".into(),
        };
        assert!(matches!(
            node_a.queue.offer(&next).await.unwrap(),
            Offer::Queued(_)
        ));
    }
}

fn record(tenant: &str, id: &str) -> Record {
    Record {
        info: JobInfo {
            id: id.into(),
            tenant: tenant.into(),
            kind: JobKind::Generation,
            model: "m".into(),
            prompt: "p".into(),
            request_id: None,
            fingerprint: 1,
            state: JobState::Queued,
            progress: ProgressReport {
                percent: 0.0,
                stage: JobStage::Queued,
                frames_done: 0,
                frames_total: 0,
                eta_s: None,
                queue_position: 1,
            },
            result: None,
            failure: None,
            created_unix_ms: 0,
            finished_unix_ms: None,
            last_sequence: 1,
        },
        owner: None,
        attempt: 0,
        work_sequence: None,
        cancel_requested: false,
        request: crate::request::GenerateRequest::new("p", crate::request::Length::Seconds(1.0)),
        format: crate::audio::AudioFormat::Wav,
        cover: None,
    }
}

#[tokio::test]
async fn records_change_by_revision_and_a_request_key_answers_for_its_first_job() {
    let server = NatsServer::start();
    let broker = broker(&server, &config()).await;
    let records = &broker.records;
    let mine = record("a", JOB);
    let revision = records.create(&mine).await.unwrap().unwrap();
    assert_eq!(records.create(&mine).await.unwrap(), None, "created once");
    // Another tenant's id is as unknown as a made-up one.
    assert_eq!(records.read("b", JOB).await.unwrap(), None);
    let (read, at) = records.read("a", JOB).await.unwrap().unwrap();
    assert_eq!((read, at), (mine.clone(), revision));
    // Two nodes race from the same revision: one wins.
    let running = Record {
        owner: Some("node-1".into()),
        attempt: 1,
        ..mine.clone()
    };
    let cancelled = Record {
        cancel_requested: true,
        ..mine.clone()
    };
    let won = records.update(&running, revision).await.unwrap();
    assert!(won.is_some());
    assert_eq!(records.update(&cancelled, revision).await.unwrap(), None);
    assert_eq!(records.read("a", JOB).await.unwrap().unwrap().0, running);
    records
        .create(&record("a", "other"))
        .await
        .unwrap()
        .unwrap();
    records
        .create(&record("b", "theirs"))
        .await
        .unwrap()
        .unwrap();
    let mut listed: Vec<String> = records
        .list("a")
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.info.id)
        .collect();
    listed.sort();
    assert_eq!(listed, [JOB.to_string(), "other".to_string()]);
    // A removed record is not listed; the tenant's last value of each other one is.
    records.remove("a", "other").await.unwrap();
    let listed: Vec<Record> = records.list("a").await.unwrap();
    assert_eq!(listed, std::slice::from_ref(&running));
    assert_eq!(records.list("c").await.unwrap(), []);

    let claim = RequestClaim {
        job: JOB.into(),
        fingerprint: 7,
    };
    assert_eq!(
        records.claim_request("a", "key-1", &claim).await.unwrap(),
        None
    );
    let later = RequestClaim {
        job: "second".into(),
        fingerprint: 8,
    };
    let (existing, revision) = records
        .claim_request("a", "key-1", &later)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(existing, claim);
    // A retry of a cancelled job takes the key over once; a second from the same revision
    // loses.
    assert!(records
        .reclaim_request("a", "key-1", &later, revision)
        .await
        .unwrap());
    assert!(!records
        .reclaim_request("a", "key-1", &claim, revision)
        .await
        .unwrap());
    // A released key is free for the next request.
    records.release_request("a", "key-1").await.unwrap();
    assert_eq!(
        records.claim_request("a", "key-1", &claim).await.unwrap(),
        None
    );
    // The same key from another tenant is its own.
    assert_eq!(
        records.claim_request("b", "key-1", &later).await.unwrap(),
        None
    );
}

/// A new job's record as a node fills it before submitting.
fn new_job(tenant: &str, n: u8, request_id: Option<&str>, fingerprint: u64) -> Record {
    let id = format!("{n:032x}");
    let mut job = record(tenant, &id);
    job.info.request_id = request_id.map(Into::into);
    job.info.fingerprint = fingerprint;
    job.info.created_unix_ms = i64::from(n);
    job
}

/// A node's own engine with the synth, its store in `dir`.
fn synth_engine(dir: &std::path::Path) -> crate::jobs::Engine {
    let models: Vec<std::sync::Arc<dyn crate::model::MusicModel>> =
        vec![std::sync::Arc::new(crate::synth::SynthModel::default())];
    crate::jobs::Engine::start(crate::jobs::EngineConfig::new(dir), models).unwrap()
}

fn id(n: u8) -> String {
    format!("{n:032x}")
}

/// Takes `tenant`'s job `job` from the queue as a runner would: its lease, and its record
/// Running, owned by `node-1`, on its first attempt.
async fn take_as_owner(broker: &Broker, tenant: &str, job: &str) -> super::queue::Lease {
    let lease = broker
        .queue
        .take(Duration::from_secs(5))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(lease.order.job, job);
    let (mut running, revision) = broker.records.read(tenant, job).await.unwrap().unwrap();
    running.info.state = JobState::Running;
    running.owner = Some("node-1".into());
    running.attempt = 1;
    broker
        .records
        .update(&running, revision)
        .await
        .unwrap()
        .unwrap();
    lease
}

/// Every event of a job that has ended.
async fn ended_log(cluster: &Cluster, tenant: &str, job: &str) -> Vec<JobEvent> {
    let events = cluster.events(tenant, job, 0).await.unwrap();
    let all = tokio::time::timeout(Duration::from_secs(10), events.collect::<Vec<_>>());
    all.await.unwrap().into_iter().map(Result::unwrap).collect()
}

#[tokio::test]
async fn a_submit_is_idempotent_admitted_by_the_clusters_limits_and_cancelled_in_line() {
    let server = NatsServer::start();
    let broker = broker(&server, &config()).await;
    let cluster = Cluster::new(broker, Duration::from_secs(3));
    let first = cluster
        .submit(new_job("a", 1, Some("k"), 1), None)
        .await
        .unwrap();
    assert_eq!((first.id.as_str(), first.existing), (id(1).as_str(), false));
    let opening: Vec<EventBody> = cluster
        .events("a", &id(1), 0)
        .await
        .unwrap()
        .take(2)
        .map(|e| e.unwrap().body)
        .collect()
        .await;
    assert!(
        matches!(
            opening[0],
            EventBody::Accepted {
                queue_position: 1,
                ..
            }
        ),
        "{opening:?}"
    );
    assert!(matches!(&opening[1], EventBody::Progress(p) if p.queue_position == 1));
    assert_eq!(cluster.get("a", &id(1)).await.unwrap().last_sequence, 2);

    // The same key answers for its job; with other parameters it is refused.
    let again = cluster
        .submit(new_job("a", 2, Some("k"), 1), None)
        .await
        .unwrap();
    assert_eq!((again.id.as_str(), again.existing), (id(1).as_str(), true));
    let other = cluster
        .submit(new_job("a", 3, Some("k"), 2), None)
        .await
        .unwrap_err();
    assert!(matches!(other, EngineError::AlreadyExists(_)), "{other}");

    // The tenant's limit of 2 holds across the cluster: the third is refused with a hint,
    // and leaves nothing behind (no record, no log, its key free).
    cluster
        .submit(new_job("a", 4, Some("k4"), 1), None)
        .await
        .unwrap();
    let refused = cluster
        .submit(new_job("a", 5, Some("k5"), 1), None)
        .await
        .unwrap_err();
    let EngineError::ResourceExhausted { retry_after, .. } = refused else {
        panic!("{refused}");
    };
    assert_eq!(retry_after, Duration::from_secs(3));
    assert!(matches!(
        cluster.get("a", &id(5)).await,
        Err(EngineError::NotFound(_))
    ));
    let (listed, next) = cluster.list("a", None, 10).await.unwrap();
    let listed: Vec<String> = listed.into_iter().map(|i| i.id).collect();
    assert_eq!((listed, next), (vec![id(4), id(1)], None));
    let (page, next) = cluster.list("a", None, 1).await.unwrap();
    assert_eq!(page[0].id, id(4));
    let (page, next) = cluster.list("a", next.as_ref(), 1).await.unwrap();
    assert_eq!((page[0].id.clone(), next), (id(1), None));

    // Another tenant's job is unknown to every call.
    assert!(matches!(
        cluster.get("b", &id(4)).await,
        Err(EngineError::NotFound(_))
    ));
    assert!(matches!(
        cluster.cancel("b", &id(4), "x").await,
        Err(EngineError::NotFound(_))
    ));
    assert!(cluster.events("b", &id(4), 0).await.is_err());
    assert!(cluster.list("b", None, 10).await.unwrap().0.is_empty());

    // Cancelled in line: its log ends, its place frees, and its key may start a new job.
    assert_eq!(
        cluster
            .cancel("a", &id(1), "changed my mind")
            .await
            .unwrap(),
        JobState::Cancelled
    );
    let log = ended_log(&cluster, "a", &id(1)).await;
    assert_eq!(
        log.iter().map(|e| e.sequence).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    assert!(matches!(&log[2].body, EventBody::Cancelled { reason } if reason == "changed my mind"));
    assert_eq!(
        cluster.cancel("a", &id(1), "again").await.unwrap(),
        JobState::Cancelled
    );
    let retried = cluster
        .submit(new_job("a", 6, Some("k"), 1), None)
        .await
        .unwrap();
    assert_eq!(
        (retried.id.as_str(), retried.existing),
        (id(6).as_str(), false)
    );
    let past = cluster.events("a", &id(6), 3).await.err().unwrap();
    assert!(
        matches!(past, EngineError::InvalidArgument { .. }),
        "{past}"
    );
}

#[tokio::test]
async fn cancelling_a_running_job_flags_it_and_answers_once_its_node_stopped_it() {
    let server = NatsServer::start();
    let broker = broker(&server, &config()).await;
    let cluster = Cluster::new(broker.clone(), Duration::from_secs(3));
    cluster
        .submit(new_job("a", 1, None, 1), None)
        .await
        .unwrap();
    // A node takes it and runs it, watching its record for a cancel.
    let lease = take_as_owner(&broker, "a", &id(1)).await;
    let node = tokio::spawn({
        let broker = broker.clone();
        async move {
            loop {
                let (mut record, revision) =
                    broker.records.read("a", &id(1)).await.unwrap().unwrap();
                if record.cancel_requested {
                    let (at, last) = broker.log.last(&id(1)).await.unwrap().unwrap();
                    let body = EventBody::Cancelled {
                        reason: "stopped".into(),
                    };
                    let event = event(last.sequence + 1, body);
                    broker.log.append(&id(1), at, &event, "test").await.unwrap();
                    record.info.state = JobState::Cancelled;
                    broker
                        .records
                        .update(&record, revision)
                        .await
                        .unwrap()
                        .unwrap();
                    lease.finish().await.unwrap();
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    });
    let state = cluster.cancel("a", &id(1), "stop").await.unwrap();
    assert_eq!(state, JobState::Cancelled);
    node.await.unwrap();
    let log = ended_log(&cluster, "a", &id(1)).await;
    assert_eq!(
        log.iter().map(|e| e.sequence).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    assert_eq!(
        cluster.get("a", &id(1)).await.unwrap().state,
        JobState::Cancelled
    );
}

#[tokio::test]
async fn a_job_whose_owner_ended_its_log_but_not_its_record_is_not_run_again() {
    let server = NatsServer::start();
    let config = BrokerConfig {
        ack_wait: Duration::from_millis(800),
        ..config()
    };
    let broker = broker(&server, &config).await;
    let cluster = Cluster::new(broker.clone(), Duration::from_secs(3));
    cluster
        .submit(new_job("a", 1, None, 1), None)
        .await
        .unwrap();
    // An owner took it, wrote its end, and stopped before its record and its ack.
    let lease = take_as_owner(&broker, "a", &id(1)).await;
    let (at, last) = broker.log.last(&id(1)).await.unwrap().unwrap();
    let failed = EventBody::Failed {
        code: crate::jobs::event::FailureCode::Internal,
        message: "boom".into(),
    };
    broker
        .log
        .append(&id(1), at, &event(last.sequence + 1, failed), "test")
        .await
        .unwrap();
    drop(lease);
    // A node's runner takes it after the lease: it writes the log's end into the record and
    // takes the work back, running nothing.
    let dir = tempfile::tempdir().unwrap();
    let engine = synth_engine(dir.path());
    let runner =
        super::runner::Runner::new(broker.clone(), config.clone(), engine.clone(), "node-2");
    let running = tokio::spawn(runner.run(1));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (record, _) = broker.records.read("a", &id(1)).await.unwrap().unwrap();
        if record.info.state == JobState::Failed {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the record never took the log's end"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    running.abort();
    assert_eq!(cluster.get("a", &id(1)).await.unwrap().last_sequence, 3);
    let log = ended_log(&cluster, "a", &id(1)).await;
    assert_eq!(log.len(), 3, "nothing ran again");
    assert!(
        engine.get("a", &id(1)).await.is_err(),
        "the node never ran it"
    );
    // Its work is taken back: the tenant's two places are free.
    for n in 2..4 {
        cluster
            .submit(new_job("a", n, None, 1), None)
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn a_tenants_rate_and_stored_jobs_hold_across_nodes_atomically() {
    let server = NatsServer::start();
    let mut config = config();
    config.max_submits_per_minute = 5;
    config.max_stored_jobs_per_tenant = 2;
    config.max_stored_bytes_per_tenant = 1000;
    // Two nodes spend from one allowance at once: five submissions pass, no more.
    let nodes = [
        broker(&server, &config).await,
        broker(&server, &config).await,
    ];
    let mut tries = Vec::new();
    for n in 0..12 {
        let quotas = nodes[n % 2].quotas.clone();
        tries.push(tokio::spawn(async move { quotas.admit("a").await }));
    }
    let mut passed = Vec::new();
    for attempt in tries {
        match attempt.await.unwrap() {
            Ok(spent) => passed.push(spent),
            Err(EngineError::ResourceExhausted {
                message,
                retry_after,
            }) => {
                assert!(message.contains("max_submits_per_minute"), "{message}");
                assert!(retry_after >= Duration::from_secs(1));
            }
            Err(e) => panic!("{e:?}"),
        }
    }
    assert_eq!(passed.len(), 5);
    // A submission refused later on (its queue full) gives its place in the rate back.
    nodes[0].quotas.refund(passed[0]).await;
    let _ = nodes[1].quotas.admit("a").await.unwrap();
    assert!(nodes[0].quotas.admit("a").await.is_err());
    // Another tenant has its own allowance.
    let _ = nodes[1].quotas.admit("b").await.unwrap();

    // Stored jobs count whatever their state.
    for n in 1..=2 {
        nodes[0]
            .records
            .create(&record("c", &id(n)))
            .await
            .unwrap()
            .unwrap();
    }
    let Err(EngineError::ResourceExhausted { message, .. }) = nodes[1].quotas.admit("c").await
    else {
        panic!("a tenant with its limit of stored jobs was admitted");
    };
    assert!(message.contains("max_stored_jobs_per_tenant"), "{message}");
    nodes[0].records.remove("c", &id(1)).await.unwrap();
    let _ = nodes[1].quotas.admit("c").await.unwrap();

    // Stored audio counts each completed job once, whichever node completed it.
    nodes[0].quotas.add_stored("d", &id(1), 600).await.unwrap();
    nodes[1].quotas.add_stored("d", &id(1), 600).await.unwrap();
    let _ = nodes[1].quotas.admit("d").await.unwrap();
    nodes[1].quotas.add_stored("d", &id(2), 600).await.unwrap();
    let Err(EngineError::ResourceExhausted {
        message,
        retry_after,
    }) = nodes[0].quotas.admit("d").await
    else {
        panic!("a tenant storing its limit of audio was admitted");
    };
    assert!(message.contains("max_stored_bytes_per_tenant"), "{message}");
    // The hint is when its oldest audio expires (the retention, an hour here).
    assert!(retry_after > Duration::from_secs(3500), "{retry_after:?}");
}

#[tokio::test]
async fn a_cover_whose_song_is_gone_fails_naming_it_and_is_not_run_again() {
    let server = NatsServer::start();
    let broker = broker(&server, &config()).await;
    let cluster = Cluster::new(broker.clone(), Duration::from_secs(3));
    let mut cover = new_job("a", 1, None, 1);
    cover.info.kind = JobKind::Cover;
    cover.cover = Some(super::inputs::CoverSpec {
        mode: Some(crate::cover::CoverMode::Melody),
        clip_start_s: None,
        clip_end_s: None,
        sample_rate: 22_050,
        digest: 7,
        samples: 22_050 * 6,
    });
    let song = crate::cover::Song {
        sample_rate: 22_050,
        mono: vec![0.0; 22_050 * 6],
        digest: 7,
    };
    cluster.submit(cover, Some(&song)).await.unwrap();
    // The song went missing before any node ran the job.
    broker.inputs.delete(id(1)).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let engine = synth_engine(dir.path());
    let runner = super::runner::Runner::new(broker.clone(), config(), engine, "node-1");
    let running = tokio::spawn(runner.run(1));
    let log = tokio::time::timeout(Duration::from_secs(10), ended_log(&cluster, "a", &id(1)))
        .await
        .expect("the job ended");
    running.abort();
    match &log.last().unwrap().body {
        EventBody::Failed { code, message } => {
            assert_eq!(*code, crate::jobs::event::FailureCode::InvalidArgument);
            assert!(
                message.contains("song") && message.contains("gone"),
                "{message}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        cluster.get("a", &id(1)).await.unwrap().state,
        JobState::Failed
    );
}
