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
