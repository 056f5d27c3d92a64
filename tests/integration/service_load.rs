//! A load test on loopback: 200 concurrent Generate streams on the synth, each checked for
//! lost, duplicated or reordered events and for a complete file; first on one node without
//! a broker, then on three nodes sharing a NATS broker, side by side in one run. Bounded in
//! count and time; run with `--nocapture` to see its figures.

use std::time::{Duration, Instant};

use son1k_engine::jobs::broker::test_server::NatsServer;

use crate::common::server::{audio_file, collect, completed, generate, names, Client, Server};

const STREAMS: usize = 200;
/// Client connections, spread over the nodes.
const CONNECTIONS: usize = 6;

/// Every limit a tenant meets, opened for the load.
const OPEN: [&str; 10] = [
    "--max-queued",
    "256",
    "--max-jobs-per-tenant",
    "256",
    "--max-streams-per-tenant",
    "256",
    "--max-submits-per-minute",
    "256",
    "--max-duration",
    "10",
];

/// What one run of the load took.
struct Figures {
    events: usize,
    wall: Duration,
    /// Completion latencies, sorted.
    latencies: Vec<Duration>,
    /// Time to each stream's first event (Accepted), sorted.
    accepted: Vec<Duration>,
}

impl Figures {
    fn line(&self, what: &str) -> String {
        let at = |l: &[Duration], q: usize| l[(STREAMS * q / 100).min(STREAMS - 1)].as_secs_f64();
        format!(
            "load on {what}: {STREAMS} streams over {CONNECTIONS} connections, {} events, \
             wall {:.2} s, {:.1} jobs/s, accepted p50 {:.3} s, p95 {:.3} s, completion p50 \
             {:.2} s, p95 {:.2} s, max {:.2} s",
            self.events,
            self.wall.as_secs_f64(),
            STREAMS as f64 / self.wall.as_secs_f64(),
            at(&self.accepted, 50),
            at(&self.accepted, 95),
            at(&self.latencies, 50),
            at(&self.latencies, 95),
            at(&self.latencies, 100),
        )
    }
}

/// Runs the load over `nodes`: stream `i` on connection `i % CONNECTIONS`, connection `c`
/// to node `c % nodes`; checks every stream and returns the figures.
async fn load(nodes: &[Server]) -> Figures {
    let mut clients: Vec<Client> = Vec::new();
    for c in 0..CONNECTIONS {
        clients.push(nodes[c % nodes.len()].client().await);
    }
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..STREAMS {
        let mut client = clients[i % CONNECTIONS].clone();
        tasks.push(tokio::spawn(async move {
            let t0 = Instant::now();
            let mut stream = client
                .generate(generate("lofi piano with soft drums", 1.0, i as u64))
                .await
                .expect("admitted")
                .into_inner();
            let first = stream.message().await.expect("a healthy stream");
            let accepted = t0.elapsed();
            let rest = collect(stream).await.expect("a healthy stream");
            let events: Vec<_> = first.into_iter().chain(rest).collect();
            (accepted, t0.elapsed(), events)
        }));
    }
    let all = tokio::time::timeout(Duration::from_secs(300), async {
        let mut out = Vec::new();
        for task in tasks {
            out.push(task.await.unwrap());
        }
        out
    })
    .await
    .expect("200 one-second jobs finish within 5 minutes");
    let wall = started.elapsed();
    let mut figures = Figures {
        events: 0,
        wall,
        latencies: Vec::new(),
        accepted: Vec::new(),
    };
    let mut ids = std::collections::HashSet::new();
    for (accepted, elapsed, events) in all {
        let sequences: Vec<u64> = events.iter().map(|e| e.sequence).collect();
        assert_eq!(
            sequences,
            (1..=events.len() as u64).collect::<Vec<_>>(),
            "lost, duplicated or reordered: {:?}",
            names(&events)
        );
        assert_eq!(names(&events)[0], "accepted");
        let done = completed(&events);
        assert_eq!(audio_file(&events).len() as u64, done.audio_bytes);
        assert!(
            ids.insert(events[0].generation_id.clone()),
            "a job id twice"
        );
        figures.events += events.len();
        figures.latencies.push(elapsed);
        figures.accepted.push(accepted);
    }
    figures.latencies.sort();
    figures.accepted.sort();
    figures
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_streams_lose_and_duplicate_nothing_on_one_node_or_three() {
    let dir = tempfile::tempdir().unwrap();
    let alone = [Server::start(&dir.path().join("alone"), &OPEN).await];
    let one = load(&alone).await;
    drop(alone);

    let nats = NatsServer::start();
    let mut nodes = Vec::new();
    for n in 1..=3 {
        let node = format!("node-{n}");
        let mut flags = vec!["--broker", &nats.url, "--node-id", &node];
        flags.extend_from_slice(&["--cluster-capacity", "256"]);
        flags.extend_from_slice(&OPEN);
        nodes.push(Server::start(&dir.path().join(&node), &flags).await);
    }
    let three = load(&nodes).await;
    eprintln!("{}", one.line("one node, no broker"));
    eprintln!("{}", three.line("three nodes and a broker"));
}
