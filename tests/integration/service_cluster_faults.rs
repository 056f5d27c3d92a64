//! A cluster's faults, with each node a `son1k serve --broker` process of its own: a node
//! killed (SIGKILL) mid-job, a node paused (SIGSTOP) past its lease and then resumed, and
//! the broker itself killed and restarted mid-job. In each, every job ends once, every
//! watcher on a live node sees strictly increasing sequences, each once, with one terminal
//! event last, and every node serves the same audio.

use std::time::{Duration, Instant};

use son1k::proto::v1 as pb;
use son1k::proto::v1::generation_event::Event;
use son1k_engine::jobs::broker::test_server::NatsServer;

use crate::common::metrics::{samples, scrape};
use crate::common::server::{
    audio_file, collect, completed, generate, generate_when_admitted, get_audio, is_stage, names,
    read_until, watch, Client, Server,
};

/// Seconds of music in a job long enough to be caught mid-run on this machine's synth.
const LONG: f64 = 200.0;
/// The lease: a stopped node's job passes to another this long after its last heartbeat.
const LEASE: &str = "1.5";

/// The prefix of a node's count of jobs it completed.
const COMPLETED: &str = "son1k_jobs_ended_total{model=\"son1k-synth\",state=\"completed\"";

/// `count` process nodes on `nats`, each running one job at a time, holding a job
/// `lease` seconds without a heartbeat, with `extra` flags.
async fn nodes(
    nats: &NatsServer,
    dir: &std::path::Path,
    count: usize,
    lease: &str,
    extra: &[&str],
) -> Vec<Server> {
    let mut nodes = Vec::new();
    for n in 1..=count {
        let node = format!("node-{n}");
        let mut flags = vec![
            "--broker",
            &nats.url,
            "--node-id",
            &node,
            "--max-running",
            "1",
            "--max-duration",
            "600",
            "--lease-seconds",
            lease,
        ];
        flags.extend_from_slice(extra);
        nodes.push(Server::start_process(&dir.join(&node), &flags).await);
    }
    nodes
}

async fn clients(nodes: &[Server]) -> Vec<Client> {
    let mut clients = Vec::new();
    for node in nodes {
        clients.push(node.client().await);
    }
    clients
}

/// The sum of a node's samples whose name and labels start with `prefix`.
async fn metric(node: &Server, prefix: &str) -> f64 {
    let (_, text) = scrape(&node.addr, None).await;
    samples(&text)
        .iter()
        .filter(|(key, _)| key.starts_with(prefix))
        .map(|(_, v)| v)
        .sum()
}

/// Which of the `candidates` runs the cluster's one running job, once one does.
async fn running_on(nodes: &[Server], candidates: &[usize]) -> usize {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        for &n in candidates {
            if metric(&nodes[n], "son1k_running_slots{").await > 0.0 {
                return n;
            }
        }
        assert!(Instant::now() < deadline, "no node ran the job");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every event of a job after `after` by Watch on `client`, spawned so that streams on
/// one connection are read together.
fn follow(
    client: &Client,
    id: &str,
    after: u64,
) -> tokio::task::JoinHandle<Vec<pb::GenerationEvent>> {
    let (mut client, id) = (client.clone(), id.to_string());
    tokio::spawn(async move { watch(&mut client, &id, after).await })
}

/// Checks what a client of a job saw from its first event: strictly increasing sequences,
/// percent never going down, one terminal event (Completed) and it last; returns the
/// sequences.
fn check_log(events: &[pb::GenerationEvent]) -> Vec<u64> {
    let sequences: Vec<u64> = events.iter().map(|e| e.sequence).collect();
    assert_eq!(sequences.first(), Some(&1), "{sequences:?}");
    assert!(
        sequences.windows(2).all(|w| w[0] < w[1]),
        "sequences: {sequences:?}"
    );
    let mut percent = 0f32;
    for event in events {
        if let Some(Event::Progress(p)) = &event.event {
            assert!(p.percent >= percent, "{} after {percent}", p.percent);
            percent = p.percent;
        }
    }
    let kinds = names(events);
    let terminal = kinds
        .iter()
        .filter(|k| ["completed", "failed", "cancelled"].contains(k))
        .count();
    assert_eq!(terminal, 1, "{kinds:?}");
    completed(events);
    sequences
}

/// Waits until the node's log has a line containing one of `texts`.
async fn logged(node: &Server, texts: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !texts.iter().any(|text| node.log().contains(text)) {
        assert!(
            Instant::now() < deadline,
            "the node never logged any of {texts:?}: {}",
            node.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_whose_node_is_killed_completes_on_another_and_its_watchers_see_it_go_on() {
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = nodes(&nats, dir.path(), 3, LEASE, &[]).await;
    let mut clients = clients(&nodes).await;
    let mut submitted = clients[0]
        .generate(generate("long drone", LONG, 1))
        .await
        .unwrap()
        .into_inner();
    let opening = read_until(&mut submitted, |e| is_stage(e, pb::Stage::Generating)).await;
    let id = opening[0].generation_id.clone();
    let owner = running_on(&nodes, &[0, 1, 2]).await;
    let survivors: Vec<usize> = (0..3).filter(|&n| n != owner).collect();

    // Watchers from the first event on the nodes that live, and one on the owner that
    // will lose its stream with it.
    let watchers: Vec<_> = survivors
        .iter()
        .map(|&n| follow(&clients[n], &id, 0))
        .collect();
    let submitter = (owner != 0).then(|| tokio::spawn(collect(submitted)));
    let mut on_owner = clients[owner]
        .watch(pb::WatchRequest {
            generation_id: id.clone(),
            after_sequence: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let seen = read_until(&mut on_owner, |e| is_stage(e, pb::Stage::Generating)).await;

    nodes[owner].kill().await;

    // The owner's watcher re-attaches to another node after the last event it saw.
    let after = seen.last().unwrap().sequence;
    let rest = watch(&mut clients[survivors[0]], &id, after).await;
    let reattached: Vec<pb::GenerationEvent> = seen.into_iter().chain(rest).collect();
    let full = watch(&mut clients[survivors[1]], &id, 0).await;
    let sequences = check_log(&full);
    assert_eq!(check_log(&reattached), sequences);
    for watcher in watchers {
        let events = watcher.await.unwrap();
        assert_eq!(check_log(&events), sequences);
        assert_eq!(names(&events), names(&full));
    }
    if let Some(submitter) = submitter {
        let rest = submitter.await.unwrap().unwrap();
        let events: Vec<_> = opening.into_iter().chain(rest).collect();
        assert_eq!(check_log(&events), sequences);
    }
    // It ran again, to the end, on one of the nodes that live; both serve its audio, the
    // file its events carried.
    let mut ended = 0.0;
    for &n in &survivors {
        ended += metric(&nodes[n], COMPLETED).await;
    }
    assert_eq!(ended, 1.0);
    let audio = get_audio(&mut clients[survivors[0]], &id).await;
    assert_eq!(audio, audio_file(&full));
    assert_eq!(get_audio(&mut clients[survivors[1]], &id).await, audio);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_paused_past_its_lease_is_fenced_when_it_wakes() {
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let nodes = nodes(&nats, dir.path(), 3, LEASE, &[]).await;
    let mut clients = clients(&nodes).await;
    let mut submitted = clients[0]
        .generate(generate("long drone", LONG, 2))
        .await
        .unwrap()
        .into_inner();
    let opening = read_until(&mut submitted, |e| is_stage(e, pb::Stage::Generating)).await;
    drop(submitted);
    let id = opening[0].generation_id.clone();
    let zombie = running_on(&nodes, &[0, 1, 2]).await;
    let others: Vec<usize> = (0..3).filter(|&n| n != zombie).collect();

    nodes[zombie].pause();
    // Another node takes the job after the lease and runs it to the end.
    let full = watch(&mut clients[others[0]], &id, 0).await;
    let sequences = check_log(&full);
    let audio = get_audio(&mut clients[others[0]], &id).await;

    // The zombie wakes mid-run: its next write is refused (or, while its connection to the
    // broker comes back, never acknowledged), and it stops its run.
    nodes[zombie].resume();
    logged(
        &nodes[zombie],
        &[
            "another node owns the job now",
            "the broker did not store an event",
        ],
    )
    .await;
    // Nothing it did reached the job: every node, the zombie too, has the same log and
    // audio as before it woke.
    for client in &mut clients {
        let events = watch(client, &id, 0).await;
        assert_eq!(check_log(&events), sequences);
        assert_eq!(names(&events), names(&full));
        assert_eq!(get_audio(client, &id).await, audio);
    }
    let ended =
        metric(&nodes[others[0]], COMPLETED).await + metric(&nodes[others[1]], COMPLETED).await;
    assert_eq!(ended, 1.0);
    let zombie_completed = metric(&nodes[zombie], COMPLETED).await;
    assert_eq!(zombie_completed, 0.0, "the zombie completed the job too");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restart_mid_job_loses_nothing_and_the_nodes_come_back_by_themselves() {
    let mut nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let nodes = nodes(&nats, dir.path(), 2, "10", &[]).await;
    let mut clients = clients(&nodes).await;
    // Two jobs run (one a node) and a third waits in line.
    let mut first = clients[0]
        .generate(generate("long drone", LONG, 3))
        .await
        .unwrap()
        .into_inner();
    let opening = read_until(&mut first, |e| is_stage(e, pb::Stage::Generating)).await;
    let mut streams = vec![tokio::spawn(async move {
        let rest = collect(first).await?;
        Ok::<_, tonic::Status>(opening.into_iter().chain(rest).collect::<Vec<_>>())
    })];
    for seed in 4..6 {
        let stream = clients[0]
            .generate(generate("long drone", LONG, seed))
            .await
            .unwrap()
            .into_inner();
        streams.push(tokio::spawn(collect(stream)));
    }

    nats.kill();
    // Each node says it is not serving (health and metrics) and refuses new work at once.
    for node in &nodes {
        node.wait_health(false).await;
        assert_eq!(metric(node, "son1k_broker_connected").await, 0.0);
    }
    let refused = clients[1]
        .generate(generate("short", 1.0, 9))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    // The broker stays away a while, as a restart on a busy machine would.
    tokio::time::sleep(Duration::from_secs(2)).await;
    nats.restart();
    for node in &nodes {
        node.wait_health(true).await;
        assert_eq!(metric(node, "son1k_broker_connected").await, 1.0);
    }
    // Every accepted job ends completed, its stream going on over the restart.
    for stream in streams {
        let events = stream.await.unwrap().expect("the stream went on");
        let sequences = check_log(&events);
        let id = &events[0].generation_id;
        let stored = watch(&mut clients[1], id, 0).await;
        assert_eq!(check_log(&stored), sequences);
        let audio = get_audio(&mut clients[1], id).await;
        assert_eq!(audio, audio_file(&events));
        assert_eq!(get_audio(&mut clients[0], id).await, audio);
    }
    // And the cluster takes new work again.
    let again = clients[1]
        .generate(generate("short", 1.0, 9))
        .await
        .unwrap()
        .into_inner();
    completed(&collect(again).await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_that_keeps_killing_its_nodes_fails_interrupted_and_frees_its_place() {
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let extra = ["--max-attempts", "2", "--max-jobs-per-tenant", "1"];
    let mut nodes = nodes(&nats, dir.path(), 3, LEASE, &extra).await;
    let mut clients = clients(&nodes).await;
    let mut submitted = clients[0]
        .generate(generate("long drone", LONG, 7))
        .await
        .unwrap()
        .into_inner();
    let accepted = submitted.message().await.unwrap().unwrap();
    drop(submitted);
    let id = accepted.generation_id;
    // Its first two nodes die under it, one after the other.
    let mut live: Vec<usize> = (0..3).collect();
    for _ in 0..2 {
        let owner = running_on(&nodes, &live).await;
        nodes[owner].kill().await;
        live.retain(|&n| n != owner);
    }
    // The node that takes it after its last run ends it, and its place frees.
    let client = &mut clients[live[0]];
    let events = watch(client, &id, 0).await;
    let failed = match events.last().and_then(|e| e.event.clone()) {
        Some(Event::Failed(failed)) => failed,
        _ => panic!("not failed: {:?}", names(&events)),
    };
    assert_eq!(failed.code, pb::ErrorCode::Interrupted as i32, "{failed:?}");
    let next = generate_when_admitted(client, generate("short", 1.0, 8)).await;
    completed(&collect(next).await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_stopped_with_sigterm_hands_its_job_to_another_at_once() {
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    // A lease far longer than the test: the job can only move on by being handed back.
    let lease = "120";
    let mut nodes = nodes(&nats, dir.path(), 2, lease, &["--drain-timeout", "0.5"]).await;
    let mut clients = clients(&nodes).await;
    let mut submitted = clients[0]
        .generate(generate("long drone", LONG, 11))
        .await
        .unwrap()
        .into_inner();
    let opening = read_until(&mut submitted, |e| is_stage(e, pb::Stage::Generating)).await;
    drop(submitted);
    let id = opening[0].generation_id.clone();
    let owner = running_on(&nodes, &[0, 1]).await;
    let other = 1 - owner;
    let watcher = follow(&clients[other], &id, 0);

    nodes[owner].terminate();
    let status = nodes[owner].exit_status(Duration::from_secs(30)).await;
    assert!(status.success(), "{status:?}: {}", nodes[owner].log());
    assert!(
        nodes[owner]
            .log()
            .contains("handed the job back to the cluster"),
        "{}",
        nodes[owner].log()
    );
    // The other node runs it to the end, long before the lease would have passed.
    let events = tokio::time::timeout(Duration::from_secs(60), watcher)
        .await
        .expect("the job moved on before its lease")
        .unwrap();
    let sequences = check_log(&events);
    assert_eq!(
        check_log(&watch(&mut clients[other], &id, 0).await),
        sequences
    );
    let ran = metric(&nodes[other], COMPLETED).await;
    assert_eq!(ran, 1.0);
}
