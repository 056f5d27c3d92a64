//! A load test on loopback: 200 concurrent Generate streams on the synth, each checked for
//! lost, duplicated or reordered events and for a complete file. Bounded in count and time;
//! run with `--nocapture` to see its figures.

use std::time::{Duration, Instant};

use crate::common::server::{audio_file, collect, completed, generate, names, Server};

const STREAMS: usize = 200;
const CHANNELS: usize = 4;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_streams_lose_and_duplicate_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        &dir.path().join("data"),
        &[
            "--max-queued",
            "256",
            "--max-jobs-per-tenant",
            "256",
            "--max-streams-per-tenant",
            "256",
            "--max-submits-per-minute",
            "256",
        ],
    )
    .await;
    let mut clients = Vec::new();
    for _ in 0..CHANNELS {
        clients.push(server.client().await);
    }
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..STREAMS {
        let mut client = clients[i % CHANNELS].clone();
        tasks.push(tokio::spawn(async move {
            let t0 = Instant::now();
            let stream = client
                .generate(generate("lofi piano with soft drums", 1.0, i as u64))
                .await
                .expect("admitted")
                .into_inner();
            let events = collect(stream).await.expect("a healthy stream");
            (t0.elapsed(), events)
        }));
    }
    let mut latencies = Vec::new();
    let mut total_events = 0;
    let mut ids = std::collections::HashSet::new();
    let all = tokio::time::timeout(Duration::from_secs(300), async {
        let mut out = Vec::new();
        for task in tasks {
            out.push(task.await.unwrap());
        }
        out
    })
    .await
    .expect("200 one-second jobs finish within 5 minutes");
    for (elapsed, events) in all {
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
        total_events += events.len();
        latencies.push(elapsed);
    }
    let wall = started.elapsed();
    latencies.sort();
    eprintln!(
        "load: {STREAMS} streams over {CHANNELS} connections, {total_events} events, \
         wall {:.2} s, {:.1} jobs/s, completion p50 {:.2} s, p95 {:.2} s, max {:.2} s",
        wall.as_secs_f64(),
        STREAMS as f64 / wall.as_secs_f64(),
        latencies[STREAMS / 2].as_secs_f64(),
        latencies[STREAMS * 95 / 100].as_secs_f64(),
        latencies[STREAMS - 1].as_secs_f64(),
    );
}
