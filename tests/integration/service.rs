//! The generation service over real sockets: streams, re-attach, polling, audio after a
//! restart, cancellation, idempotency, health and reflection.

use std::io::Cursor;

use crate::common::server::{
    audio_file, authed, collect, completed, generate, is_stage, name, names, poll, read_until,
    watch, Server,
};
use son1k::proto::v1 as pb;
use son1k::proto::v1::generation_event::Event;
use tonic::Code;

/// Reads a WAV file from memory: (spec, frames).
fn wav_frames(bytes: &[u8]) -> (hound::WavSpec, u32) {
    let reader = hound::WavReader::new(Cursor::new(bytes)).expect("a valid WAV file");
    (reader.spec(), reader.duration())
}

#[tokio::test]
async fn generate_streams_progress_to_100_then_the_audio_in_pieces_then_completed() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]).await;
    let mut client = server.client().await;

    // 7 s of 16-bit stereo at 44.1 kHz is 1.2 MB: at least two pieces.
    let stream = client
        .generate(generate("upbeat funk with bass and drums", 7.0, 11))
        .await
        .unwrap()
        .into_inner();
    let events = collect(stream).await.unwrap();
    let kinds = names(&events);
    assert_eq!(kinds.first(), Some(&"accepted"), "{kinds:?}");
    assert_eq!(kinds.last(), Some(&"completed"), "{kinds:?}");
    assert!(
        kinds.contains(&"chunk"),
        "the synth streams previews: {kinds:?}"
    );
    assert!(
        kinds.iter().filter(|k| **k == "audio").count() >= 2,
        "{kinds:?}"
    );

    // Sequences count 1, 2, 3, ... and every event names the job.
    let id = events[0].generation_id.clone();
    for (i, event) in events.iter().enumerate() {
        assert_eq!(event.sequence, i as u64 + 1);
        assert_eq!(event.generation_id, id);
        assert_eq!(event.kind, pb::GenerationKind::Generation as i32);
    }

    // Percent never decreases and reaches 100 only right before completion.
    let percents: Vec<f32> = events
        .iter()
        .filter_map(|e| match &e.event {
            Some(Event::Progress(p)) => Some(p.percent),
            _ => None,
        })
        .collect();
    assert!(percents.windows(2).all(|w| w[0] <= w[1]), "{percents:?}");
    assert_eq!(percents.last(), Some(&100.0));
    assert!(percents[..percents.len() - 1].iter().all(|p| *p < 100.0));
    let hundred = events
        .iter()
        .position(|e| matches!(&e.event, Some(Event::Progress(p)) if p.percent == 100.0))
        .unwrap();
    assert_eq!(names(&events[hundred + 1..]), ["completed"]);
    let last_piece = kinds.iter().rposition(|k| *k == "audio").unwrap();
    assert!(last_piece < hundred, "the audio comes before completion");

    // The pieces make a valid WAV of the requested length.
    let file = audio_file(&events);
    let (spec, frames) = wav_frames(&file);
    assert_eq!(
        (spec.channels, spec.sample_rate, spec.bits_per_sample),
        (2, 44100, 16)
    );
    assert_eq!(frames, 7 * 44100);
    let done = completed(&events);
    assert_eq!(done.audio_bytes, file.len() as u64);
    assert_eq!(done.seed, 11);
    assert_eq!(done.model, "son1k-synth");
    assert!((done.duration_seconds - 7.0).abs() < 1e-9);
    let understood = &done.parameters.as_ref().unwrap().understood;
    assert!(understood.contains_key("genre"), "{understood:?}");

    // FLAC too: the same music, smaller.
    let mut request = generate("upbeat funk with bass and drums", 7.0, 11);
    request.audio_format = pb::AudioFormat::Flac as i32;
    let events = collect(client.generate(request).await.unwrap().into_inner())
        .await
        .unwrap();
    let flac = audio_file(&events);
    assert_eq!(&flac[..4], b"fLaC");
    assert!(flac.len() < file.len());
    let decoded =
        son1k_engine::audio::decode::decode_audio(&flac, Some("x.flac"), &Default::default())
            .unwrap();
    assert_eq!(decoded.frames(), 7 * 44100);
}

#[tokio::test]
async fn a_dropped_client_re_attaches_and_misses_nothing_even_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut server = Server::start_process(&data, &[]).await;
    let mut client = server.client().await;

    let mut stream = client
        .generate(generate("slow ambient pads", 20.0, 5))
        .await
        .unwrap()
        .into_inner();
    let first = read_until(&mut stream, |e| is_stage(e, pb::Stage::Generating)).await;
    let id = first[0].generation_id.clone();
    let seen = first.last().unwrap().sequence;
    drop(stream);

    let rest = watch(&mut client.clone(), &id, seen).await;
    // Exactly the missed events, once each, in order, to the end.
    let all: Vec<u64> = first.iter().chain(&rest).map(|e| e.sequence).collect();
    assert_eq!(all, (1..=all.len() as u64).collect::<Vec<_>>());
    let done = completed(&rest);
    let file = audio_file(&rest);

    // Polling sees the same end.
    let polled = poll(&mut client, &id).await;
    assert_eq!(polled.state, pb::GenerationState::Completed as i32);
    assert_eq!(polled.last_sequence, *all.last().unwrap());
    assert_eq!(polled.result.as_ref(), Some(&done));
    assert_eq!(polled.progress.unwrap().percent, 100.0);

    let get_audio = |mut client: crate::common::server::Client, id: String| async move {
        let mut stream = client
            .get_audio(pb::GetAudioRequest { generation_id: id })
            .await
            .unwrap()
            .into_inner();
        let mut bytes = Vec::new();
        while let Some(piece) = stream.message().await.unwrap() {
            assert_eq!(piece.offset, bytes.len() as u64);
            bytes.extend_from_slice(&piece.data);
        }
        bytes
    };
    assert_eq!(get_audio(client.clone(), id.clone()).await, file);

    // After a restart: the same audio, the same record, the same replay.
    server.kill().await;
    let server = Server::start_process(&data, &[]).await;
    let client = server.client().await;
    assert_eq!(get_audio(client.clone(), id.clone()).await, file);
    let polled_again = poll(&mut client.clone(), &id).await;
    assert_eq!(polled_again, polled);
    let replay = watch(&mut client.clone(), &id, seen).await;
    // Previews are transient; everything else replays with its original number.
    let lasting: Vec<_> = rest.iter().filter(|e| name(e) != "chunk").collect();
    let described = |events: &[&pb::GenerationEvent]| -> Vec<(u64, &str)> {
        events.iter().map(|e| (e.sequence, name(e))).collect()
    };
    assert_eq!(
        described(&replay.iter().collect::<Vec<_>>()),
        described(&lasting)
    );
    for (replayed, original) in replay.iter().zip(&lasting) {
        assert!(
            replayed == *original,
            "event {} differs: {:?} vs {:?}",
            original.sequence,
            replayed
                .event
                .as_ref()
                .filter(|_| name(replayed) != "audio"),
            original
                .event
                .as_ref()
                .filter(|_| name(original) != "audio")
        );
    }
}

#[tokio::test]
async fn a_job_running_when_the_server_dies_is_reported_interrupted_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let long = ["--max-duration", "600"];
    let mut server = Server::start_process(&data, &long).await;
    let mut client = server.client().await;
    let mut stream = client
        .generate(generate("endless drone", 600.0, 1))
        .await
        .unwrap()
        .into_inner();
    let seen = read_until(&mut stream, |e| is_stage(e, pb::Stage::Generating)).await;
    let id = seen[0].generation_id.clone();
    server.kill().await;

    let server = Server::start_process(&data, &long).await;
    let mut client = server.client().await;
    let after = seen.last().unwrap().sequence;
    let events = watch(&mut client.clone(), &id, after).await;
    let Some(Event::Failed(failed)) = events.last().and_then(|e| e.event.clone()) else {
        panic!("expected Failed, got {:?}", names(&events));
    };
    assert_eq!(failed.code, pb::ErrorCode::Interrupted as i32);
    assert!(events.last().unwrap().sequence > after);
    let polled = poll(&mut client, &id).await;
    assert_eq!(polled.state, pb::GenerationState::Failed as i32);
}

#[tokio::test]
async fn cancel_stops_the_job_within_a_step_and_frees_its_slot() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        &dir.path().join("data"),
        &["--max-duration", "600", "--max-running", "1"],
    )
    .await;
    let mut client = server.client().await;
    let mut long = client
        .generate(generate("a very long piece", 600.0, 2))
        .await
        .unwrap()
        .into_inner();
    let seen = read_until(&mut long, |e| is_stage(e, pb::Stage::Generating)).await;
    let id = seen[0].generation_id.clone();

    // A second job waits for the only slot.
    let mut next = client
        .generate(generate("short jingle", 1.0, 3))
        .await
        .unwrap()
        .into_inner();
    let accepted = next.message().await.unwrap().unwrap();
    let Some(Event::Accepted(a)) = accepted.event else {
        panic!("expected Accepted");
    };
    assert_eq!(a.queue_position, 1);

    let before = poll(&mut client, &id).await;
    let state = client
        .cancel_generation(pb::CancelGenerationRequest {
            generation_id: id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .state;
    assert_eq!(state, pb::GenerationState::Cancelled as i32);
    let after = poll(&mut client, &id).await;
    assert_eq!(after.state, pb::GenerationState::Cancelled as i32);
    // Stopped early (the engine's tests pin down "within one step" exactly).
    assert!(after.last_sequence > before.last_sequence);
    assert!(after.progress.unwrap().frames_done < 600 * 50);

    let rest = collect(long).await.unwrap();
    assert_eq!(rest.last().map(name), Some("cancelled"));
    // The freed slot runs the waiting job to completion.
    let done = collect(next).await.unwrap();
    completed(&done);
    // Cancelling a finished job changes nothing.
    let again = client
        .cancel_generation(pb::CancelGenerationRequest { generation_id: id })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.state, pb::GenerationState::Cancelled as i32);
}

#[tokio::test]
async fn a_disconnect_cancels_only_when_the_request_asked_for_it() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &["--max-duration", "600"]).await;
    let mut client = server.client().await;

    let mut request = generate("long piece", 600.0, 4);
    request.cancel_on_disconnect = true;
    let mut stream = client.generate(request).await.unwrap().into_inner();
    let seen = read_until(&mut stream, |e| is_stage(e, pb::Stage::Generating)).await;
    drop(stream);
    let rest = watch(
        &mut client.clone(),
        &seen[0].generation_id,
        seen.last().unwrap().sequence,
    )
    .await;
    let Some(Event::Cancelled(c)) = rest.last().and_then(|e| e.event.clone()) else {
        panic!("expected Cancelled, got {:?}", names(&rest));
    };
    assert!(c.reason.contains("disconnect"), "{}", c.reason);

    let mut stream = client
        .generate(generate("short piece", 4.0, 4))
        .await
        .unwrap()
        .into_inner();
    let seen = read_until(&mut stream, |e| name(e) == "accepted").await;
    drop(stream);
    let rest = watch(&mut client.clone(), &seen[0].generation_id, 1).await;
    completed(&rest);
}

#[tokio::test]
async fn the_same_request_id_returns_the_same_job_and_other_parameters_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]).await;
    let mut client = server.client().await;
    let mut request = generate("bossa nova guitar", 2.0, 9);
    request.request_id = "order-42".into();
    let first = collect(client.generate(request.clone()).await.unwrap().into_inner())
        .await
        .unwrap();
    let again = collect(client.generate(request.clone()).await.unwrap().into_inner())
        .await
        .unwrap();
    assert_eq!(first[0].generation_id, again[0].generation_id);
    assert_eq!(audio_file(&first), audio_file(&again));
    let listed = client
        .list_generations(pb::ListGenerationsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.generations.len(), 1);

    request.prompt = "bossa nova piano".into();
    let status = client.generate(request).await.unwrap_err();
    assert_eq!(status.code(), Code::AlreadyExists, "{status:?}");
    assert!(status.message().contains("order-42"));
}

#[tokio::test]
async fn health_is_serving_and_reflection_lists_the_service() {
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;

    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        &dir.path().join("data"),
        &["--max-song-bytes", "1000000", "--max-prompt-chars", "500"],
    )
    .await;
    // `Server::start` waited for SERVING; the overall status agrees.
    let mut health = tonic_health::pb::health_client::HealthClient::new(server.channel().await);
    let overall = health
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        overall.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    let mut reflection = ServerReflectionClient::new(server.channel().await);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = reflection
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let response = responses.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("expected a service list");
    };
    let services: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(
        services.contains(&"son1k.v1.GenerationService".to_string()),
        "{services:?}"
    );
    assert!(
        services.contains(&"grpc.health.v1.Health".to_string()),
        "{services:?}"
    );

    let listed = server
        .client()
        .await
        .list_models(authed(pb::ListModelsRequest {}, None))
        .await
        .unwrap()
        .into_inner();
    let models = listed.models;
    assert_eq!(models[0].id, "son1k-synth");
    // The server's limits, as configured, for clients to check before they send.
    let limits = listed.limits.expect("the request limits");
    assert_eq!(limits.max_song_bytes, 1_000_000);
    assert_eq!(limits.max_prompt_chars, 500);
    assert_eq!(limits.max_duration_seconds, models[0].max_duration_seconds);
    assert!(models[0]
        .capabilities
        .contains(&(pb::Capability::Cover as i32)));
}

#[tokio::test]
async fn sigterm_refuses_new_jobs_and_exits_once_running_ones_end() {
    use tonic_health::pb::health_check_response::ServingStatus;
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start_process(
        &dir.path().join("data"),
        &[
            "--max-duration",
            "600",
            "--max-running",
            "1",
            "--drain-timeout",
            "120",
        ],
    )
    .await;
    let mut client = server.client().await;
    let mut running = client
        .generate(generate("long", 600.0, 1))
        .await
        .unwrap()
        .into_inner();
    let seen = read_until(&mut running, |e| is_stage(e, pb::Stage::Generating)).await;
    let queued = client
        .generate(generate("waiting", 1.0, 2))
        .await
        .unwrap()
        .into_inner();

    server.terminate();
    // The queued job is cancelled at once; the running one may finish.
    let rest = collect(queued).await.unwrap();
    let Some(Event::Cancelled(c)) = rest.last().and_then(|e| e.event.clone()) else {
        panic!("expected Cancelled, got {:?}", names(&rest));
    };
    assert!(c.reason.contains("shutting down"), "{}", c.reason);
    let status = client
        .generate(generate("too late", 1.0, 3))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    let mut health = tonic_health::pb::health_client::HealthClient::new(server.channel().await);
    let check = health
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(check.status, ServingStatus::NotServing as i32);

    // Once the running job ends (here: cancelled), the server exits cleanly.
    client
        .cancel_generation(pb::CancelGenerationRequest {
            generation_id: seen[0].generation_id.clone(),
        })
        .await
        .unwrap();
    let rest = collect(running).await.unwrap();
    assert_eq!(rest.last().map(name), Some("cancelled"));
    let exit = server.exit_status(std::time::Duration::from_secs(30)).await;
    assert!(exit.success(), "{exit:?}");
}
