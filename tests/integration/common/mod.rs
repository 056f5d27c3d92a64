//! Helpers shared by the end-to-end tests: running the `son1k` binary and making tiny
//! checkpoints.

#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Output};

/// Runs the `son1k` binary with `args`.
pub(crate) fn son1k(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_son1k"))
        .args(args)
        .output()
        .expect("the son1k binary runs")
}

/// stderr of a run, as text.
pub(crate) fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Asserts the run failed cleanly (no panic) with a message containing every `needle`.
pub(crate) fn assert_clean_failure(output: &Output, needles: &[&str]) {
    let err = stderr(output);
    assert!(!output.status.success(), "expected failure, stderr: {err}");
    assert!(!err.contains("panicked"), "panicked: {err}");
    for needle in needles {
        assert!(err.contains(needle), "`{needle}` not in: {err}");
    }
}

/// Writes a tiny random checkpoint with `son1k tiny-model`.
pub(crate) fn tiny_model(dir: &Path, stereo: bool) {
    let dir = dir.to_str().expect("utf-8 temp path");
    let mut args = vec!["tiny-model", "--out", dir, "--seed", "3"];
    if stereo {
        args.push("--stereo");
    }
    let out = son1k(&args);
    assert!(out.status.success(), "tiny-model failed: {}", stderr(&out));
}

/// Reads a WAV file: (spec, interleaved samples as f32).
pub(crate) fn read_wav(path: &Path) -> (hound::WavSpec, Vec<f32>) {
    let mut reader = hound::WavReader::open(path).expect("a valid WAV file");
    let spec = reader.spec();
    let samples = match spec.sample_format {
        hound::SampleFormat::Float => reader
            .samples::<f32>()
            .map(|s| s.expect("sample"))
            .collect(),
        hound::SampleFormat::Int => reader
            .samples::<i16>()
            .map(|s| s.expect("sample") as f32 / i16::MAX as f32)
            .collect(),
    };
    (spec, samples)
}
pub(crate) mod flac_bomb;
pub(crate) mod metrics;
pub(crate) mod server;
