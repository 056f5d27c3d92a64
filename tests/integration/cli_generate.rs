//! End to end through the `son1k` binary: a tiny checkpoint written by `tiny-model`
//! generates WAV files of exactly the requested length, reproducibly per seed.

use std::path::Path;

use candle_core::Device;

use crate::common::{assert_clean_failure, read_wav, son1k, stderr, tiny_model};

#[test]
fn tiny_model_generates_exactly_the_requested_duration() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("tiny");
    tiny_model(&model, false);
    let out = dir.path().join("out.wav");
    let run = son1k(&[
        "generate",
        "--model",
        model.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--duration",
        "1.5",
        "--seed",
        "7",
        "lofi piano with soft drums",
    ]);
    assert!(run.status.success(), "{}", stderr(&run));
    let (spec, samples) = read_wav(&out);
    assert_eq!(
        (spec.channels, spec.sample_rate, spec.bits_per_sample),
        (1, 32000, 16)
    );
    // 1.5 s = 75 frames of 640 samples.
    assert_eq!(samples.len(), 75 * 640);
    assert!(samples.iter().any(|&s| s != 0.0), "silent output");
    assert!(String::from_utf8_lossy(&run.stdout).contains("seed 7"));
}

#[test]
fn stereo_f32_output_and_max_new_tokens_count_like_transformers() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("tiny-stereo");
    tiny_model(&model, true);
    let out = dir.path().join("out.wav");
    let run = son1k(&[
        "generate",
        "--model",
        model.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--max-new-tokens",
        "12",
        "--sample-format",
        "f32",
        "--top-k",
        "1",
        "rock",
    ]);
    assert!(run.status.success(), "{}", stderr(&run));
    let (spec, samples) = read_wav(&out);
    assert_eq!((spec.channels, spec.bits_per_sample), (2, 32));
    assert_eq!(spec.sample_format, hound::SampleFormat::Float);
    // 12 steps with 4 delay pairs = 9 frames per channel.
    assert_eq!(samples.len(), 2 * 9 * 640);
}

#[test]
fn a_seed_reproduces_the_file_and_another_seed_changes_it() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("tiny");
    tiny_model(&model, false);
    let make = |seed: &str, name: &str| {
        let out = dir.path().join(name);
        let run = son1k(&[
            "generate",
            "--model",
            model.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--duration",
            "0.5",
            "--seed",
            seed,
            "jazz",
        ]);
        assert!(run.status.success(), "{}", stderr(&run));
        std::fs::read(out).unwrap()
    };
    let a = make("1", "a.wav");
    assert_eq!(a, make("1", "b.wav"));
    assert_ne!(a, make("2", "c.wav"));
}

#[test]
fn bench_reports_the_documented_json_schema() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("tiny");
    tiny_model(&model, false);
    let out = son1k(&[
        "bench",
        "--model",
        model.to_str().unwrap(),
        "--duration",
        "0.4",
        "--steps",
        "3",
        "--threads",
        "1",
        "--repeat",
        "2",
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["schema"], "son1k.bench.v1");
    assert_eq!(report["threads"], 1);
    assert_eq!(report["rayon_num_threads"], "1");
    assert_eq!(report["candle_num_threads"], "1");
    assert_eq!(report["repeat"], 2);
    assert_eq!(report["dtype"], "f32");
    // 0.4 s is 20 frames, plus the 3 delay columns of 4 codebooks.
    assert_eq!(report["steps"], 23);
    assert_eq!(report["windows"], 1);
    assert!((report["audio_s"].as_f64().unwrap() - 0.4).abs() < 1e-9);
    for field in [
        "step_ms_median",
        "step_ms_p95",
        "rtf",
        "first_audio_ms",
        "encodec_ms",
        "bandwidth_gb_s",
        "floor_ratio",
    ] {
        let value = report[field].as_f64().unwrap_or(f64::NAN);
        assert!(value.is_finite() && value > 0.0, "{field}: {value}");
    }
    // Three bandwidth probes (before loading, after the timed steps, after the runs); the
    // floor uses their median.
    let mut probes: Vec<f64> = report["bandwidth_probes_gb_s"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_f64().unwrap())
        .collect();
    assert_eq!(probes.len(), 3);
    probes.sort_by(f64::total_cmp);
    assert_eq!(report["bandwidth_gb_s"].as_f64().unwrap(), probes[1]);
    // Weights read per step, from the checkpoint's own config: every layer's Q, K, V, O,
    // cross-attention Q and O and FFN pair, then the LM heads, 4 bytes each.
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(model.join("config.json")).unwrap()).unwrap();
    let decoder = &config["decoder"];
    let get = |key: &str| decoder[key].as_u64().unwrap();
    let (d, ffn) = (get("hidden_size"), get("ffn_dim"));
    let expected = get("num_hidden_layers") * (6 * d * d + 2 * d * ffn)
        + get("num_codebooks") * d * get("vocab_size");
    assert_eq!(report["weight_bytes_per_step"], 4 * expected);
    assert!(report["peak_rss_bytes"].as_u64().is_some_and(|b| b > 0));
    let time = |f: &str| report[f].as_f64().unwrap();
    assert!(time("first_audio_ms") >= time("encodec_ms") + time("text_encode_ms"));
}

/// `son1k cover` with a MusicGen checkpoint: a continuation of a clip of a WAV song, the
/// sampling flags of `generate` accepted, exactly the requested length; melody mode on a
/// model without it is refused naming the modes it has, before the song is read.
#[test]
fn cover_continues_a_clip_locally_and_names_the_modes_a_model_lacks() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("tiny");
    tiny_model(&model, false);
    let song = dir.path().join("song.wav");
    write_song(&song);
    let out = dir.path().join("cover.wav");
    let cover = |extra: &[&str]| {
        let mut args = vec![
            "cover",
            "--model",
            model.to_str().unwrap(),
            "--input",
            song.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        son1k(&args)
    };
    let run = cover(&[
        "--mode",
        "continuation",
        "--clip-start",
        "0.5",
        "--clip-end",
        "1.5",
        "--duration",
        "2.5",
        "--top-k",
        "50",
        "--temperature",
        "0.8",
        "--guidance-scale",
        "2",
        "--seed",
        "3",
        "jazz",
    ]);
    assert!(run.status.success(), "{}", stderr(&run));
    let (spec, samples) = read_wav(&out);
    assert_eq!((spec.channels, spec.sample_rate), (1, 32000));
    assert_eq!(samples.len(), 125 * 640);
    let refused = cover(&["--mode", "melody", "jazz"]);
    crate::common::assert_clean_failure(&refused, &["melody", "its cover modes: continuation"]);
    // Before the song is read: a missing file is not what the error is about.
    std::fs::remove_file(&song).unwrap();
    let refused = cover(&["--mode", "melody", "jazz"]);
    crate::common::assert_clean_failure(&refused, &["its cover modes: continuation"]);
    assert!(
        !stderr(&refused).contains("song.wav"),
        "{}",
        stderr(&refused)
    );
    write_song(&song);
    // With neither clip nor duration: the song's first half, continued to its length.
    let run = cover(&["--seed", "1", "jazz"]);
    assert!(run.status.success(), "{}", stderr(&run));
    assert_eq!(read_wav(&out).1.len(), 150 * 640);
    let refused = cover(&["--clip-start", "5", "jazz"]);
    crate::common::assert_clean_failure(&refused, &["clip_start", "5 s"]);
}

/// Writes 3 s of a 44.1 kHz stereo tone to `path`.
fn write_song(path: &std::path::Path) {
    let spec = hound::WavSpec {
        channels: 2,
        sample_rate: 44_100,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut writer = hound::WavWriter::create(path, spec).unwrap();
    for i in 0..3 * 44_100 {
        let x = (0.3 * (i as f32 * 0.05).sin() * 32767.0) as i16;
        writer.write_sample(x).unwrap();
        writer.write_sample(x).unwrap();
    }
    writer.finalize().unwrap();
}

#[test]
fn cover_cli_makes_a_file_and_unusable_songs_are_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    // A 10 s song with a beat, chords and a melody: the synth's own.
    let song = dir.path().join("song.wav");
    let made = son1k(&[
        "generate",
        "--out",
        song.to_str().unwrap(),
        "--duration",
        "10",
        "--seed",
        "1",
        "pop in g major at 100 bpm",
    ]);
    assert!(made.status.success(), "{}", stderr(&made));
    let out = dir.path().join("cover.wav");
    let run = son1k(&[
        "cover",
        "--input",
        song.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--seed",
        "2",
        "jazz",
    ]);
    assert!(run.status.success(), "{}", stderr(&run));
    let (spec, samples) = read_wav(&out);
    assert_eq!((spec.channels, spec.sample_rate), (2, 44_100));
    assert_eq!(samples.len(), 2 * 10 * 44_100);

    let write_wav = |name: &str, channels: u16, rate: u32, seconds: f64, amplitude: f32| {
        let path = dir.path().join(name);
        let spec = hound::WavSpec {
            channels,
            sample_rate: rate,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let mut w = hound::WavWriter::create(&path, spec).unwrap();
        for i in 0..(seconds * rate as f64) as usize * channels as usize {
            w.write_sample((amplitude * 32767.0 * ((i as f32) * 0.05).sin()) as i16)
                .unwrap();
        }
        w.finalize().unwrap();
        path
    };
    let garbage = dir.path().join("garbage.mp3");
    std::fs::write(&garbage, b"this is not audio at all, just text pretending").unwrap();
    let empty = dir.path().join("empty.wav");
    std::fs::write(&empty, b"").unwrap();
    let cases = vec![
        (garbage, vec!["song", "not audio"]),
        (empty, vec!["song"]),
        (
            write_wav("silent.wav", 1, 32000, 5.0, 0.0),
            vec!["song", "silent"],
        ),
        (
            write_wav("long.wav", 1, 8000, 12.0, 0.5),
            vec!["song", "too long", "10"],
        ),
        (
            write_wav("rate.wav", 1, 4000, 5.0, 0.5),
            vec!["song", "sample rate", "4000"],
        ),
        (
            write_wav("channels.wav", 10, 32000, 1.0, 0.5),
            vec!["song", "channels", "10"],
        ),
    ];
    for (path, needles) in cases {
        let output = son1k(&[
            "cover",
            "--input",
            path.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--max-song-seconds",
            "10",
            "rock",
        ]);
        assert_clean_failure(&output, &needles);
        assert_eq!(output.status.code(), Some(2), "{}", path.display());
    }
}

#[test]
fn cli_generate_writes_the_reference_waveform() {
    // The transformers fixture (tools/make_fixtures.py): its first prompt, and the waveform
    // transformers made of it.
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/musicgen-tiny-mono");
    let expected =
        candle_core::safetensors::load(dir.join("expected.safetensors"), &Device::Cpu).unwrap();
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
    let first = &json["prompts"][0];
    let prompt = first["prompt"].as_str().unwrap().to_string();
    let max_new_tokens = first["max_new_tokens"].as_u64().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out.wav");
    let steps = max_new_tokens.to_string();
    let run = son1k(&[
        "generate",
        "--model",
        dir.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--max-new-tokens",
        &steps,
        "--top-k",
        "1",
        "--guidance-scale",
        "3",
        "--sample-format",
        "f32",
        &prompt,
    ]);
    assert!(run.status.success(), "{}", stderr(&run));
    let (_, samples) = read_wav(&out);
    let want: Vec<f32> = expected["prompt0.audio"]
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    assert_eq!(samples.len(), want.len());
    let diff = samples
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    assert!(diff <= 1e-4, "CLI waveform differs by {diff}");
}

#[test]
fn a_model_named_by_its_hub_id_is_found_in_the_hugging_face_cache() {
    // A cache as huggingface_hub lays it out: the checkpoint in a snapshot named by its
    // commit, and the branch pointing at it.
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("hf").join("hub");
    let commit = "89abcdef0123456789abcdef0123456789abcdef";
    let repo = cache.join("models--acme--musicgen-tiny");
    tiny_model(&repo.join("snapshots").join(commit), false);
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs").join("main"), commit).unwrap();
    let run = |model: &str, out: &Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_son1k"))
            .args([
                "generate",
                "--model",
                model,
                "--duration",
                "0.5",
                "--seed",
                "1",
            ])
            .arg("--out")
            .arg(out)
            .arg("rock")
            .env_remove("HF_HUB_CACHE")
            .env("HF_HOME", dir.path().join("hf"))
            .env("HF_HUB_OFFLINE", "1")
            .output()
            .unwrap()
    };
    let by_branch = dir.path().join("branch.wav");
    let output = run("acme/musicgen-tiny", &by_branch);
    assert!(output.status.success(), "{}", stderr(&output));
    let by_commit = dir.path().join("commit.wav");
    let output = run(&format!("acme/musicgen-tiny@{commit}"), &by_commit);
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(read_wav(&by_branch).1, read_wav(&by_commit).1);

    // What is missing is named, with where it was looked for.
    let absent = run("acme/musicgen-huge", &dir.path().join("x.wav"));
    assert_clean_failure(
        &absent,
        &[
            "acme/musicgen-huge",
            "models--acme--musicgen-huge",
            "huggingface-cli download",
            "HF_HUB_OFFLINE",
        ],
    );
    let tag = run("acme/musicgen-tiny@v9", &dir.path().join("x.wav"));
    assert_clean_failure(&tag, &["revision `v9`", "refs"]);

    // `son1k models` lists what is there: its id, kind, size and branch.
    tiny_model(
        &cache
            .join("models--acme--musicgen-stereo-tiny")
            .join("snapshots")
            .join(commit),
        true,
    );
    let listed = std::process::Command::new(env!("CARGO_BIN_EXE_son1k"))
        .arg("models")
        .env_remove("HF_HUB_CACHE")
        .env("HF_HOME", dir.path().join("hf"))
        .output()
        .unwrap();
    assert!(listed.status.success(), "{}", stderr(&listed));
    let text = String::from_utf8_lossy(&listed.stdout);
    let line = |repo: &str| {
        text.lines()
            .find(|l| l.split_whitespace().next() == Some(repo))
            .unwrap_or_else(|| panic!("{repo} not listed: {text}"))
            .to_string()
    };
    let mono = line("acme/musicgen-tiny");
    assert!(mono.contains("musicgen") && mono.contains(" MB"), "{mono}");
    assert!(mono.contains(&format!("main {}", &commit[..10])), "{mono}");
    assert!(
        line("acme/musicgen-stereo-tiny").contains("stereo"),
        "{text}"
    );
    let empty = std::process::Command::new(env!("CARGO_BIN_EXE_son1k"))
        .args(["models", "--cache"])
        .arg(dir.path().join("nowhere"))
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&empty.stdout).contains("no checkpoints"));
}
