//! Nodes sharing one queue, job logs and results on a NATS server with JetStream
//! (`son1k serve --broker`), over real sockets: jobs submitted to one node run on whichever
//! node has a free slot, and every node streams, lists, serves the audio of and cancels
//! every job, covers included; admission and idempotency hold across the cluster.

use son1k::proto::v1 as pb;
use son1k_engine::jobs::broker::test_server::NatsServer;

use crate::common::metrics::{samples, scrape, value};
use crate::common::server::{
    audio_file, collect, completed, generate, generate_when_admitted, get_audio, is_stage, name,
    names, read_until, retry_after_secs, watch, Server,
};

/// `count` nodes on `nats`, each running one job at a time, with `extra` flags.
async fn nodes(
    nats: &NatsServer,
    dir: &std::path::Path,
    count: usize,
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
        ];
        flags.extend_from_slice(extra);
        nodes.push(Server::start(&dir.join(&node), &flags).await);
    }
    nodes
}

/// `seconds` of a four-note tune as a 16-bit WAV file at 22.05 kHz.
fn wav_song(seconds: u32) -> Vec<u8> {
    const RATE: u32 = 22_050;
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: RATE,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut file = std::io::Cursor::new(Vec::new());
    let mut writer = hound::WavWriter::new(&mut file, spec).unwrap();
    for i in 0..seconds * RATE {
        let note = [262.0, 330.0, 392.0, 523.0][(i / (RATE / 2)) as usize % 4];
        let x = 0.4 * (2.0 * std::f32::consts::PI * note * i as f32 / RATE as f32).sin();
        writer.write_sample((x * 32767.0) as i16).unwrap();
    }
    writer.finalize().unwrap();
    file.into_inner()
}

/// A melody cover of `song` by the synth.
fn cover(song: &[u8], seconds: f64) -> pb::CoverRequest {
    pb::CoverRequest {
        song: song.to_vec(),
        prompt: "bright synth pop".into(),
        duration_seconds: seconds,
        mode: pb::CoverMode::Melody as i32,
        sampling: Some(pb::Sampling {
            seed: Some(8),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_run_one_queue_and_every_node_answers_for_every_job() {
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let nodes = nodes(&nats, dir.path(), 3, &["--max-duration", "600"]).await;
    let mut clients = Vec::new();
    for node in &nodes {
        clients.push(node.client().await);
    }

    // Six jobs at once through the first node, which runs one at a time; each stream is
    // read as it comes (one connection's streams share its flow-control window).
    let mut streams = Vec::new();
    for seed in 0..6 {
        let request = generate("house groove", 20.0, seed);
        let stream = clients[0].generate(request).await.unwrap().into_inner();
        streams.push(tokio::spawn(collect(stream)));
    }
    let mut jobs = Vec::new();
    for stream in streams {
        let events = stream.await.unwrap().unwrap();
        completed(&events);
        jobs.push(events);
    }
    // Whichever node had a free slot ran them: more than one did, and six runs in all.
    let mut ran = Vec::new();
    for node in &nodes {
        let (_, text) = scrape(&node.addr, None).await;
        let runs = value(
            &samples(&text),
            "son1k_jobs_submitted_total{model=\"son1k-synth\"}",
        );
        ran.push(runs);
    }
    assert_eq!(ran.iter().sum::<f64>(), 6.0, "{ran:?}");
    assert!(ran.iter().filter(|&&n| n > 0.0).count() >= 2, "{ran:?}");

    // Every node streams every job's log the same, each event once and in order, one
    // terminal event last, and serves the same file.
    for events in &jobs {
        let id = &events[0].generation_id;
        let sequences: Vec<u64> = events.iter().map(|e| e.sequence).collect();
        assert!(sequences.windows(2).all(|w| w[0] < w[1]), "{sequences:?}");
        let terminal = events.iter().filter(|e| name(e) == "completed").count();
        assert_eq!(terminal, 1);
        let stored: Vec<u64> = watch(&mut clients[0], id, 0)
            .await
            .iter()
            .map(|e| e.sequence)
            .collect();
        let audio = get_audio(&mut clients[0], id).await;
        assert!(!audio.is_empty());
        for client in &mut clients[1..] {
            let seen: Vec<u64> = watch(client, id, 0)
                .await
                .iter()
                .map(|e| e.sequence)
                .collect();
            assert_eq!(seen, stored, "job {id}");
            assert_eq!(get_audio(client, id).await, audio, "job {id}");
        }
    }
    // Every node lists the tenant's jobs.
    for client in &mut clients {
        let page = client
            .list_generations(pb::ListGenerationsRequest {
                page_size: 50,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(page.generations.len(), 6);
    }

    // A long job cancelled from the last node stops where it runs; its stream on the
    // first node ends Cancelled.
    let mut long = clients[0]
        .generate(generate("endless drone", 600.0, 9))
        .await
        .unwrap()
        .into_inner();
    let seen = read_until(&mut long, |e| is_stage(e, pb::Stage::Generating)).await;
    let id = seen[0].generation_id.clone();
    let state = clients[2]
        .cancel_generation(pb::CancelGenerationRequest {
            generation_id: id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .state;
    assert_eq!(state, pb::GenerationState::Cancelled as i32);
    let rest = collect(long).await.unwrap();
    assert_eq!(rest.last().map(name), Some("cancelled"));
    let polled = clients[1]
        .get_generation(pb::GetGenerationRequest { generation_id: id })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(polled.state, pb::GenerationState::Cancelled as i32);

    // A cover uploaded to one node runs on whichever is free, and every node follows it
    // and serves its file.
    let song = wav_song(6);
    let stream = clients[1]
        .cover(cover(&song, 4.0))
        .await
        .unwrap()
        .into_inner();
    let events = collect(stream).await.unwrap();
    completed(&events);
    let id = &events[0].generation_id;
    let file = audio_file(&events);
    for client in &mut clients {
        let seen = watch(client, id, 0).await;
        assert_eq!(names(&seen), names(&events));
        assert_eq!(get_audio(client, id).await, file);
    }
    // The same upload again makes the same cover (its song went to the node that ran it
    // intact).
    let again = clients[2]
        .cover(cover(&song, 4.0))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(audio_file(&collect(again).await.unwrap()), file);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admission_and_idempotency_hold_across_the_cluster() {
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let nodes = nodes(
        &nats,
        dir.path(),
        2,
        &["--max-duration", "600", "--max-jobs-per-tenant", "1"],
    )
    .await;
    let mut first = nodes[0].client().await;
    let mut second = nodes[1].client().await;
    let keyed = pb::GenerateRequest {
        request_id: "retry-me".into(),
        ..generate("slow ambient", 600.0, 3)
    };
    let mut running = first.generate(keyed.clone()).await.unwrap().into_inner();
    let seen = read_until(&mut running, |e| is_stage(e, pb::Stage::Generating)).await;
    let id = seen[0].generation_id.clone();
    // The tenant's one unfinished job counts on every node.
    let refused = second
        .generate(generate("another one", 1.0, 4))
        .await
        .unwrap_err();
    assert_eq!(
        refused.code(),
        tonic::Code::ResourceExhausted,
        "{refused:?}"
    );
    assert!(retry_after_secs(&refused) >= 1);
    // A cover counts against the same limit.
    let refused = second.cover(cover(&wav_song(6), 4.0)).await.unwrap_err();
    assert_eq!(
        refused.code(),
        tonic::Code::ResourceExhausted,
        "{refused:?}"
    );
    // The same request id on another node is the same job, from its first event.
    let again = second.generate(keyed.clone()).await.unwrap().into_inner();
    let mut again = again;
    let first_event = again.message().await.unwrap().unwrap();
    assert_eq!(
        (first_event.generation_id.as_str(), first_event.sequence),
        (id.as_str(), 1)
    );
    let other = pb::GenerateRequest {
        prompt: "other parameters".into(),
        ..keyed.clone()
    };
    let conflict = second.generate(other).await.unwrap_err();
    assert_eq!(conflict.code(), tonic::Code::AlreadyExists);
    second
        .cancel_generation(pb::CancelGenerationRequest {
            generation_id: id.clone(),
        })
        .await
        .unwrap();
    assert_eq!(
        collect(running).await.unwrap().last().map(name),
        Some("cancelled")
    );
    // Its place frees on any node once its owner has taken its work back (just after the
    // end it announced).
    let next = generate_when_admitted(&mut second, generate("short", 1.0, 5)).await;
    completed(&collect(next).await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenants_submission_rate_holds_across_the_cluster() {
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let nodes = nodes(&nats, dir.path(), 2, &["--max-submits-per-minute", "2"]).await;
    let mut first = nodes[0].client().await;
    let mut second = nodes[1].client().await;
    for (client, seed) in [(&mut first, 1), (&mut second, 2)] {
        let stream = client.generate(generate("short", 1.0, seed)).await.unwrap();
        completed(&collect(stream.into_inner()).await.unwrap());
    }
    // The third within the minute is refused on either node.
    for client in [&mut first, &mut second] {
        let refused = client
            .generate(generate("one more", 1.0, 3))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert!(
            refused.message().contains("max_submits_per_minute"),
            "{refused:?}"
        );
        assert!(retry_after_secs(&refused) >= 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenants_stored_audio_counts_on_every_node() {
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let nodes = nodes(
        &nats,
        dir.path(),
        2,
        &["--max-stored-bytes-per-tenant", "100000"],
    )
    .await;
    let mut first = nodes[0].client().await;
    let mut second = nodes[1].client().await;
    let stream = first.generate(generate("short", 1.0, 1)).await.unwrap();
    let done = completed(&collect(stream.into_inner()).await.unwrap());
    assert!(done.audio_bytes > 100_000, "{}", done.audio_bytes);
    // Whichever node ran it counted its file; the other node refuses the next.
    let refused = second
        .generate(generate("one more", 1.0, 2))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
    assert!(
        refused.message().contains("max_stored_bytes_per_tenant"),
        "{refused:?}"
    );
}
