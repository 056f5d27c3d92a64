//! End to end through the `son1k` binary: a tiny checkpoint written by `tiny-model`
//! generates WAV files of exactly the requested length, reproducibly per seed.

mod common;

use common::{read_wav, son1k, stderr, tiny_model};

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
    common::assert_clean_failure(&refused, &["melody", "its cover modes: continuation"]);
    // Before the song is read: a missing file is not what the error is about.
    std::fs::remove_file(&song).unwrap();
    let refused = cover(&["--mode", "melody", "jazz"]);
    common::assert_clean_failure(&refused, &["its cover modes: continuation"]);
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
    common::assert_clean_failure(&refused, &["clip_start", "5 s"]);
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
