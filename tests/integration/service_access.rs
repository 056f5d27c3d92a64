//! Who may call and what is refused, over real sockets: bearer tokens and tenants, full
//! queues, every bad field named, garbage uploads, covers.

use crate::common::server::{audio_file, authed, collect, completed, generate, Server};
use son1k::proto::v1 as pb;
use tonic::Code;

const ALICE: &str = "alice-token-0123456789";
const BOB: &str = "bob-token-9876543210xyz";

#[tokio::test]
async fn tokens_name_tenants_and_a_tenant_sees_only_its_own_jobs() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(
        &tokens,
        format!("# tenant token\nalice {ALICE}\nbob {BOB}\n"),
    )
    .unwrap();
    let server = Server::start(
        &dir.path().join("data"),
        &["--tokens-file", tokens.to_str().unwrap()],
    )
    .await;
    let mut client = server.client().await;

    for token in [None, Some("wrong-token-0123456789")] {
        let status = client
            .generate(authed(generate("x", 1.0, 1), token))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
        let status = client
            .list_models(authed(pb::ListModelsRequest {}, token))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated);
    }

    let events = collect(
        client
            .generate(authed(generate("tango", 1.0, 1), Some(ALICE)))
            .await
            .unwrap()
            .into_inner(),
    )
    .await
    .unwrap();
    let id = events[0].generation_id.clone();
    completed(&events);

    // Bob cannot see, follow, fetch or cancel Alice's job: to him it does not exist.
    let not_found = |status: tonic::Status| assert_eq!(status.code(), Code::NotFound);
    let as_bob = |generation_id: &str| authed(generation_id.to_string(), Some(BOB));
    not_found(
        client
            .get_generation(
                as_bob(&id).map(|generation_id| pb::GetGenerationRequest { generation_id }),
            )
            .await
            .unwrap_err(),
    );
    not_found(
        client
            .watch(as_bob(&id).map(|generation_id| pb::WatchRequest {
                generation_id,
                after_sequence: 0,
            }))
            .await
            .unwrap_err(),
    );
    not_found(
        client
            .get_audio(as_bob(&id).map(|generation_id| pb::GetAudioRequest { generation_id }))
            .await
            .unwrap_err(),
    );
    not_found(
        client
            .cancel_generation(
                as_bob(&id).map(|generation_id| pb::CancelGenerationRequest { generation_id }),
            )
            .await
            .unwrap_err(),
    );
    let list = |token| {
        let mut client = client.clone();
        async move {
            client
                .list_generations(authed(pb::ListGenerationsRequest::default(), Some(token)))
                .await
                .unwrap()
                .into_inner()
                .generations
        }
    };
    assert!(list(BOB).await.is_empty());
    let alices = list(ALICE).await;
    assert_eq!(alices.len(), 1);
    assert_eq!(alices[0].generation_id, id);
}

#[test]
fn an_open_server_refuses_to_listen_beyond_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let out = crate::common::son1k(&[
        "serve",
        "--addr",
        "0.0.0.0:0",
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    crate::common::assert_clean_failure(&out, &["0.0.0.0", "--tokens-file", "loopback"]);
}

#[tokio::test]
async fn a_full_queue_is_resource_exhausted_with_a_retry_hint() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        &dir.path().join("data"),
        &[
            "--max-duration",
            "600",
            "--max-running",
            "1",
            "--max-queued",
            "1",
        ],
    )
    .await;
    let mut client = server.client().await;
    let mut running = client
        .generate(generate("long", 600.0, 1))
        .await
        .unwrap()
        .into_inner();
    let first = running.message().await.unwrap().unwrap();
    let mut waiting = client
        .generate(generate("long", 600.0, 2))
        .await
        .unwrap()
        .into_inner();
    let second = waiting.message().await.unwrap().unwrap();

    let status = client
        .generate(generate("one more", 1.0, 3))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("max_queued"),
        "{}",
        status.message()
    );
    assert!(crate::common::server::retry_after_secs(&status) >= 1);
    use tonic_types::StatusExt;
    assert!(status.get_details_retry_info().is_some());

    for event in [first, second] {
        client
            .cancel_generation(pb::CancelGenerationRequest {
                generation_id: event.generation_id,
            })
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn every_bad_field_is_invalid_argument_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]).await;
    let mut client = server.client().await;
    let base = generate("lofi piano", 2.0, 1);
    let cases: Vec<(&str, pb::GenerateRequest)> = vec![
        (
            "prompt",
            pb::GenerateRequest {
                prompt: "  ".into(),
                ..base.clone()
            },
        ),
        (
            "prompt",
            pb::GenerateRequest {
                prompt: "a".repeat(2001),
                ..base.clone()
            },
        ),
        (
            "duration",
            pb::GenerateRequest {
                duration_seconds: 301.0,
                ..base.clone()
            },
        ),
        (
            "duration",
            pb::GenerateRequest {
                duration_seconds: -1.0,
                ..base.clone()
            },
        ),
        (
            "model",
            pb::GenerateRequest {
                model: "nope".into(),
                ..base.clone()
            },
        ),
        (
            "audio_format",
            pb::GenerateRequest {
                audio_format: 9,
                ..base.clone()
            },
        ),
        (
            "sample_format",
            pb::GenerateRequest {
                sample_format: 9,
                ..base.clone()
            },
        ),
        (
            "sample_format",
            pb::GenerateRequest {
                audio_format: pb::AudioFormat::Flac as i32,
                sample_format: pb::SampleFormat::F32 as i32,
                ..base.clone()
            },
        ),
        (
            "request_id",
            pb::GenerateRequest {
                request_id: "k".repeat(129),
                ..base.clone()
            },
        ),
        (
            "top_p",
            pb::GenerateRequest {
                sampling: Some(pb::Sampling {
                    top_p: Some(1.5),
                    ..Default::default()
                }),
                ..base.clone()
            },
        ),
        (
            "temperature",
            pb::GenerateRequest {
                sampling: Some(pb::Sampling {
                    temperature: Some(-1.0),
                    ..Default::default()
                }),
                ..base.clone()
            },
        ),
        (
            "guidance_scale",
            pb::GenerateRequest {
                sampling: Some(pb::Sampling {
                    guidance_scale: Some(99.0),
                    ..Default::default()
                }),
                ..base.clone()
            },
        ),
    ];
    for (field, request) in cases {
        let status = client.generate(request).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{field}: {status:?}");
        assert!(
            status.message().contains(field),
            "`{field}` not named in: {}",
            status.message()
        );
    }
    // An id is checked at the boundary, and what is echoed back is cut short.
    let long_id = "no-such-job/".repeat(1000);
    let status = client
        .watch(pb::WatchRequest {
            generation_id: long_id,
            after_sequence: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("generation_id"), "{status:?}");
    assert!(status.message().len() < 200, "{}", status.message());
    // A well-formed id that names no job is not found.
    let status = client
        .watch(pb::WatchRequest {
            generation_id: "0123456789abcdef0123456789abcdef".into(),
            after_sequence: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
}

#[tokio::test]
async fn covers_stream_like_generations_and_garbage_songs_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("tiny");
    crate::common::tiny_model(&model, false);
    let server = Server::start(
        &dir.path().join("data"),
        &[
            "--model",
            model.to_str().unwrap(),
            "--max-song-bytes",
            "2000000",
        ],
    )
    .await;
    let mut client = server.client().await;
    let song = std::fs::read("tests/fixtures/songs/pop-g-major-100bpm.flac").unwrap();
    let cover = |song: Vec<u8>| pb::CoverRequest {
        song,
        prompt: "lofi with piano".into(),
        duration_seconds: 4.0,
        ..Default::default()
    };

    let events = collect(
        client
            .cover(cover(song.clone()))
            .await
            .unwrap()
            .into_inner(),
    )
    .await
    .unwrap();
    assert!(events
        .iter()
        .all(|e| e.kind == pb::GenerationKind::Cover as i32));
    let done = completed(&events);
    let understood = done.parameters.unwrap().understood;
    // The cover keeps the song's tempo (100 bpm).
    let bpm: f64 = understood["tempo_bpm"].parse().unwrap();
    assert!((bpm - 100.0).abs() < 1.0, "{understood:?}");
    let file = audio_file(&events);
    let frames = hound::WavReader::new(std::io::Cursor::new(file))
        .unwrap()
        .duration();
    assert_eq!(frames, 4 * 44100);

    for (garbage, needle) in [
        (b"definitely not audio".to_vec(), "song"),
        (Vec::new(), "song"),
        (vec![0u8; 2_000_001], "2000000"),
    ] {
        let status = client.cover(cover(garbage)).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains(needle), "{}", status.message());
    }

    // A cover in a mode the model lacks, refused before the song is decoded.
    let mut on_musicgen = cover(song);
    on_musicgen.model = "tiny".into();
    on_musicgen.mode = pb::CoverMode::Melody as i32;
    let status = client.cover(on_musicgen).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(
        status.message().contains("its cover modes: continuation"),
        "{}",
        status.message()
    );

    // The server keeps serving, MusicGen included.
    let models = client
        .list_models(pb::ListModelsRequest {})
        .await
        .unwrap()
        .into_inner()
        .models;
    let ids: Vec<&str> = models.iter().map(|m| m.id.as_str()).collect();
    assert_eq!(ids, ["son1k-synth", "tiny"]);
    let mut request = generate("a tiny model", 0.1, 1);
    request.model = "tiny".into();
    let events = collect(client.generate(request).await.unwrap().into_inner())
        .await
        .unwrap();
    assert_eq!(completed(&events).model, "tiny");
}
