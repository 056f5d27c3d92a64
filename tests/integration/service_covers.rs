//! Neural covers over real sockets: a server with a tiny MusicGen-Melody and a tiny
//! MusicGen covers an MP3 the test encodes (with LAME, which `.ci/run` installs) in each
//! mode, streaming progress and the final audio; every bad cover is refused naming its
//! field and limit while another job runs on untouched.

use std::path::Path;

use crate::common::server::{audio_file, authed, collect, completed, names, Client, Server};
use crate::common::{son1k, stderr};
use son1k::proto::v1 as pb;
use tonic::Code;

const TOKEN: &str = "cover-token-0123456789";
const RATE: u32 = 32_000;

/// `seconds` of a four-note tune at 32 kHz, as an MP3 encoded by the `lame` command.
fn mp3_song(dir: &Path, seconds: u32) -> Vec<u8> {
    let wav = dir.join(format!("song-{seconds}.wav"));
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: RATE,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut writer = hound::WavWriter::create(&wav, spec).unwrap();
    for i in 0..seconds * RATE {
        let note = [262.0, 330.0, 392.0, 523.0][(i / (RATE / 2)) as usize % 4];
        let x = 0.4 * (2.0 * std::f32::consts::PI * note * i as f32 / RATE as f32).sin();
        writer.write_sample((x * 32767.0) as i16).unwrap();
    }
    writer.finalize().unwrap();
    let mp3 = wav.with_extension("mp3");
    let encoded = std::process::Command::new("lame")
        .args(["--quiet", "-b", "64"])
        .arg(&wav)
        .arg(&mp3)
        .status();
    match encoded {
        Ok(status) if status.success() => std::fs::read(&mp3).unwrap(),
        other => {
            panic!("`lame` must encode the test song (apt: lame; .ci/run installs it): {other:?}")
        }
    }
}

/// A server running a tiny melody model (`melody`) and a tiny plain one (`plain`).
async fn server(dir: &Path, extra: &[&str]) -> Server {
    for (name, flags) in [("melody", &["--melody"][..]), ("plain", &[][..])] {
        let out_dir = dir.join(name);
        let mut args = vec![
            "tiny-model",
            "--out",
            out_dir.to_str().unwrap(),
            "--seed",
            "5",
        ];
        args.extend_from_slice(flags);
        let out = son1k(&args);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let tokens = dir.join("tokens");
    std::fs::write(&tokens, format!("covers {TOKEN}\n")).unwrap();
    let (melody, plain) = (dir.join("melody"), dir.join("plain"));
    let mut args = vec![
        "--model",
        melody.to_str().unwrap(),
        "--model",
        plain.to_str().unwrap(),
        "--tokens-file",
        tokens.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    Server::start(&dir.join("data"), &args).await
}

fn cover(song: &[u8], model: &str, mode: pb::CoverMode, seconds: f64) -> pb::CoverRequest {
    pb::CoverRequest {
        song: song.to_vec(),
        prompt: "jazz with piano".into(),
        model: model.into(),
        duration_seconds: seconds,
        mode: mode as i32,
        sampling: Some(pb::Sampling {
            seed: Some(4),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The model's capabilities as ListModels reports them.
async fn capabilities(client: &mut Client, id: &str) -> Vec<i32> {
    let models = client
        .list_models(authed(pb::ListModelsRequest {}, Some(TOKEN)))
        .await
        .unwrap()
        .into_inner()
        .models;
    models
        .into_iter()
        .find(|m| m.id == id)
        .map(|m| m.capabilities)
        .unwrap_or_default()
}

#[tokio::test]
async fn an_mp3_is_covered_in_each_mode_with_progress_and_the_final_audio() {
    let dir = tempfile::tempdir().unwrap();
    let song = mp3_song(dir.path(), 12);
    let server = server(dir.path(), &["--default-model", "plain"]).await;
    let mut client = server.client().await;
    let listed = client
        .list_models(authed(pb::ListModelsRequest {}, Some(TOKEN)))
        .await
        .unwrap()
        .into_inner()
        .models;
    assert_eq!(listed[0].id, "plain", "the default is listed first");
    let (melody, continuation) = (
        pb::Capability::CoverMelody as i32,
        pb::Capability::CoverContinuation as i32,
    );
    let streaming = pb::Capability::StreamingAudio as i32;
    let caps = capabilities(&mut client, "melody").await;
    assert!(
        caps.contains(&melody) && caps.contains(&continuation) && caps.contains(&streaming),
        "{caps:?}"
    );
    let caps = capabilities(&mut client, "plain").await;
    assert!(
        !caps.contains(&melody) && caps.contains(&continuation) && caps.contains(&streaming),
        "{caps:?}"
    );
    let caps = capabilities(&mut client, "son1k-synth").await;
    assert!(
        caps.contains(&melody) && !caps.contains(&continuation),
        "{caps:?}"
    );

    let mut continued = cover(&song, "plain", pb::CoverMode::Continuation, 5.0);
    continued.clip_start_seconds = Some(2.0);
    continued.clip_end_seconds = Some(4.0);
    // Everything left to the server: its default model's first mode (continuation), the
    // song's first half as the clip, as long as the song.
    let defaults = cover(&song, "", pb::CoverMode::Unspecified, 0.0);
    for (label, request, seconds) in [
        (
            "melody",
            cover(&song, "melody", pb::CoverMode::Melody, 5.0),
            5,
        ),
        ("continuation", continued, 5),
        ("defaults", defaults, 12),
    ] {
        let stream = client
            .cover(authed(request, Some(TOKEN)))
            .await
            .unwrap_or_else(|s| panic!("{label}: {s:?}"))
            .into_inner();
        let events = collect(stream).await.unwrap();
        let names = names(&events);
        assert_eq!(names.first(), Some(&"accepted"), "{label}: {names:?}");
        assert_eq!(names.last(), Some(&"completed"), "{label}: {names:?}");
        let percents: Vec<f32> = events
            .iter()
            .filter_map(|e| match &e.event {
                Some(pb::generation_event::Event::Progress(p)) => Some(p.percent),
                _ => None,
            })
            .collect();
        assert!(percents.len() > 10, "{label}: {percents:?}");
        assert!(
            percents.windows(2).all(|w| w[0] <= w[1]),
            "{label}: monotonic"
        );
        let done = completed(&events);
        assert_eq!(done.duration_seconds, seconds as f64, "{label}");
        let wav = audio_file(&events);
        let reader = hound::WavReader::new(std::io::Cursor::new(wav)).unwrap();
        assert_eq!(reader.spec().sample_rate, RATE, "{label}");
        assert_eq!(
            reader.duration(),
            seconds * RATE,
            "{label}: exact to the sample"
        );
        // Previews stream while it runs, one after another, covering the whole output.
        let mut next = 0;
        for event in &events {
            if let Some(pb::generation_event::Event::AudioChunk(chunk)) = &event.event {
                assert_eq!(chunk.start_frame, next, "{label}: contiguous previews");
                assert_eq!((chunk.sample_rate, chunk.channels), (RATE, 1), "{label}");
                next += chunk.pcm_s16le.len() as u64 / 2;
            }
        }
        assert_eq!(
            next,
            u64::from(seconds * RATE),
            "{label}: previews of it all"
        );
        let first_chunk = names.iter().position(|n| *n == "chunk");
        let last_progress = names.iter().rposition(|n| *n == "progress");
        assert!(
            first_chunk.is_some() && first_chunk < last_progress,
            "{label}: previews before the end: {names:?}"
        );
    }
}

#[tokio::test]
async fn bad_covers_name_their_field_and_limit_while_another_job_runs_on() {
    let dir = tempfile::tempdir().unwrap();
    let song = mp3_song(dir.path(), 12);
    let long_song = mp3_song(dir.path(), 25);
    let server = server(dir.path(), &["--max-song-seconds", "20"]).await;
    let mut client = server.client().await;
    // A job that runs meanwhile: a 40 s melody cover, in two windows.
    let running = client
        .cover(authed(
            cover(&song, "melody", pb::CoverMode::Melody, 40.0),
            Some(TOKEN),
        ))
        .await
        .unwrap()
        .into_inner();
    let running = tokio::spawn(collect(running));

    let clip = |start: Option<f64>, end: Option<f64>| {
        let mut request = cover(&song, "plain", pb::CoverMode::Continuation, 8.0);
        request.clip_start_seconds = start;
        request.clip_end_seconds = end;
        request
    };
    let cases: Vec<(&str, pb::CoverRequest, Code, &[&str])> = vec![
        (
            "empty song",
            cover(&[], "plain", pb::CoverMode::Continuation, 8.0),
            Code::InvalidArgument,
            &["song", "empty"],
        ),
        (
            "unreadable song",
            cover(&[9u8; 4096], "plain", pb::CoverMode::Continuation, 8.0),
            Code::InvalidArgument,
            &["song"],
        ),
        (
            "clip past the song",
            clip(Some(30.0), None),
            Code::InvalidArgument,
            &["clip_start", "30 s", "0 to 12"],
        ),
        (
            "empty clip",
            clip(Some(3.0), Some(3.0)),
            Code::InvalidArgument,
            &["clip_end", "after clip_start"],
        ),
        (
            "song over the length limit",
            cover(&long_song, "plain", pb::CoverMode::Continuation, 8.0),
            Code::InvalidArgument,
            &["song", "20"],
        ),
        (
            "melody on a model without it",
            cover(&song, "plain", pb::CoverMode::Melody, 8.0),
            Code::FailedPrecondition,
            &["plain", "melody", "continuation"],
        ),
        (
            "past the long-form limit",
            cover(&song, "melody", pb::CoverMode::Melody, 301.0),
            Code::InvalidArgument,
            &["duration", "300"],
        ),
    ];
    for (label, request, code, needles) in cases {
        let status = client
            .cover(authed(request, Some(TOKEN)))
            .await
            .err()
            .unwrap_or_else(|| panic!("{label}: accepted"));
        assert_eq!(status.code(), code, "{label}: {status:?}");
        for needle in needles {
            assert!(
                status.message().contains(needle),
                "{label}: `{needle}` not in `{}`",
                status.message()
            );
        }
    }
    let events = running.await.unwrap().unwrap();
    assert_eq!(names(&events).last(), Some(&"completed"));
    assert_eq!(completed(&events).duration_seconds, 40.0);
}
