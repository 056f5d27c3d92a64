//! The formats people download: the same synth piece written as WAV, MP3 and Ogg Opus by
//! `son1k generate`, and asked for over gRPC. Each lossy file decodes back (MP3 with
//! symphonia, Opus with libopus' `opusdec`, the reference decoder) to the WAV's length, rate
//! and channels, lines up with it sample for sample, and stays within 0.5 LU of its loudness.

use std::path::Path;
use std::process::Command;

use son1k::proto::v1 as pb;
use son1k_engine::audio::decode::{decode_audio, DecodeLimits};
use son1k_engine::audio::resample::resample;
use son1k_engine::audio::Audio;
use son1k_models::synth::master::measure;

use crate::common::server::{audio_file, collect, completed, generate, Server};
use crate::common::{read_wav, son1k, stderr};

/// The piece: stereo, a few instruments, mastered by the synth.
const PROMPT: &str = "bright funk with slap bass, brass and drums, 110 bpm";
const SECONDS: &str = "6";

/// Writes the piece to `out` (the format from its extension) with a fixed seed.
fn write(out: &Path) {
    let output = son1k(&[
        "generate",
        "--duration",
        SECONDS,
        "--seed",
        "11",
        "--out",
        out.to_str().unwrap(),
        PROMPT,
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
}

/// A WAV file as planar audio.
fn wav_audio(path: &Path) -> Audio {
    let (spec, interleaved) = read_wav(path);
    let channels = spec.channels as usize;
    Audio {
        sample_rate: spec.sample_rate,
        channels: (0..channels)
            .map(|c| {
                interleaved
                    .iter()
                    .skip(c)
                    .step_by(channels)
                    .copied()
                    .collect()
            })
            .collect(),
    }
}

fn lufs(audio: &Audio) -> f64 {
    measure(&audio.channels, audio.sample_rate)
        .unwrap()
        .integrated_lufs
}

/// Pearson correlation of two signals over their common length: near 1 only when they
/// line up (a shift of the encoder's delay, tens of milliseconds, brings it near 0).
fn correlation(a: &[f32], b: &[f32]) -> f64 {
    let n = a.len().min(b.len());
    let mean = |x: &[f32]| x[..n].iter().map(|&v| v as f64).sum::<f64>() / n as f64;
    let (ma, mb) = (mean(a), mean(b));
    let (mut ab, mut aa, mut bb) = (0.0, 0.0, 0.0);
    for i in 0..n {
        let (x, y) = (a[i] as f64 - ma, b[i] as f64 - mb);
        ab += x * y;
        aa += x * x;
        bb += y * y;
    }
    ab / (aa * bb).sqrt()
}

/// The `OpusHead` fields a player reads: (channels, pre-skip, input sample rate).
fn opus_head(file: &[u8]) -> (u8, u16, u32) {
    assert_eq!(&file[..4], b"OggS", "not an Ogg file");
    let at = file
        .windows(8)
        .position(|w| w == b"OpusHead")
        .expect("an OpusHead packet");
    let head = &file[at..];
    (
        head[9],
        u16::from_le_bytes([head[10], head[11]]),
        u32::from_le_bytes([head[12], head[13], head[14], head[15]]),
    )
}

/// Decodes an Ogg Opus file with the reference decoder, at 48 kHz, to planar audio.
fn opusdec(file: &Path, dir: &Path) -> Audio {
    let wav = dir.join("opusdec.wav");
    let output = Command::new("opusdec")
        .args(["--quiet", "--rate", "48000"])
        .arg(file)
        .arg(&wav)
        .output()
        .expect(
            "opusdec (libopus' reference decoder, Debian's opus-tools, which .ci/run installs) \
             runs",
        );
    assert!(output.status.success(), "{}", stderr(&output));
    wav_audio(&wav)
}

#[test]
fn mp3_and_opus_decode_back_to_the_wavs_length_rate_channels_and_loudness() {
    let dir = tempfile::tempdir().unwrap();
    let (wav, mp3, opus) = (
        dir.path().join("piece.wav"),
        dir.path().join("piece.mp3"),
        dir.path().join("piece.opus"),
    );
    for out in [&wav, &mp3, &opus] {
        write(out);
    }
    let reference = wav_audio(&wav);
    let frames = reference.frames();
    assert_eq!(reference.channels.len(), 2);
    assert_eq!(frames as f64 / reference.sample_rate as f64, 6.0);
    let loudness = lufs(&reference);
    let wav_bytes = std::fs::metadata(&wav).unwrap().len();

    // MP3: an MPEG audio frame sync, gapless to the sample through the LAME info frame.
    let mp3_bytes = std::fs::read(&mp3).unwrap();
    assert!(
        mp3_bytes[0] == 0xFF && mp3_bytes[1] & 0xE0 == 0xE0,
        "no MPEG sync"
    );
    let decoded = decode_audio(&mp3_bytes, Some("piece.mp3"), &DecodeLimits::default()).unwrap();
    assert_eq!(decoded.sample_rate, reference.sample_rate);
    assert_eq!(decoded.channels.len(), 2);
    assert_eq!(decoded.frames(), frames, "the MP3 is not the WAV's length");
    let lu = (lufs(&decoded) - loudness).abs();
    eprintln!(
        "MP3: {} bytes (WAV {wav_bytes}), {lu:.3} LU from the WAV",
        mp3_bytes.len()
    );
    assert!(lu < 0.5, "the MP3 is {lu:.2} LU away from the WAV");
    for c in 0..2 {
        let r = correlation(&decoded.channels[c], &reference.channels[c]);
        eprintln!("MP3 channel {c}: r = {r:.4}");
        assert!(
            r > 0.99,
            "MP3 channel {c} does not line up with the WAV: r = {r:.3}"
        );
    }
    assert!(
        mp3_bytes.len() as u64 * 3 < wav_bytes,
        "the MP3 is not small"
    );

    // Opus: 48 kHz, the source rate in the header, the reference decoder's output the WAV's
    // length at 48 kHz.
    let opus_bytes = std::fs::read(&opus).unwrap();
    let (channels, pre_skip, input_rate) = opus_head(&opus_bytes);
    assert_eq!((channels, input_rate), (2, reference.sample_rate));
    assert!(pre_skip > 0, "no pre-skip for the encoder's delay");
    let decoded = opusdec(&opus, dir.path());
    assert_eq!(decoded.sample_rate, 48_000);
    assert_eq!(decoded.channels.len(), 2);
    let expected = frames * 48_000 / reference.sample_rate as usize;
    assert_eq!(
        decoded.frames(),
        expected,
        "the Opus file is not the WAV's length"
    );
    let lu = (lufs(&decoded) - loudness).abs();
    eprintln!("Opus: {} bytes, {lu:.3} LU from the WAV", opus_bytes.len());
    assert!(lu < 0.5, "the Opus file is {lu:.2} LU away from the WAV");
    for c in 0..2 {
        let at_48k = resample(&reference.channels[c], reference.sample_rate, 48_000).unwrap();
        let r = correlation(&decoded.channels[c], &at_48k);
        eprintln!("Opus channel {c}: r = {r:.4}");
        assert!(
            r > 0.99,
            "Opus channel {c} does not line up with the WAV: r = {r:.3}"
        );
    }
    assert!(
        opus_bytes.len() as u64 * 3 < wav_bytes,
        "the Opus file is not small"
    );
}

#[test]
fn lossy_formats_refuse_32_bit_float_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("piece.opus");
    let output = son1k(&[
        "generate",
        "--sample-format",
        "f32",
        "--out",
        out.to_str().unwrap(),
        "rock",
    ]);
    assert!(!output.status.success());
    let err = stderr(&output);
    assert!(
        err.contains("sample_format") && err.contains("WAV only"),
        "{err}"
    );
    assert!(!out.exists());
}

#[tokio::test]
async fn a_client_asking_for_mp3_or_opus_gets_that_file_over_grpc() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]).await;
    let mut client = server.client().await;
    for (format, magic) in [
        (pb::AudioFormat::Mp3, &b"\xFF"[..]),
        (pb::AudioFormat::Opus, &b"OggS"[..]),
    ] {
        let request = pb::GenerateRequest {
            audio_format: format as i32,
            ..generate("calm piano", 3.0, 5)
        };
        let events = collect(client.generate(request).await.unwrap().into_inner())
            .await
            .unwrap();
        let done = completed(&events);
        assert_eq!(done.format, format as i32);
        let file = audio_file(&events);
        assert_eq!(done.audio_bytes, file.len() as u64);
        assert!(
            file.starts_with(magic),
            "{format:?} starts {:?}",
            &file[..4]
        );
    }
}
