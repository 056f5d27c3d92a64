//! Bad input ends with one clear message naming the file, tensor or field, and a non-zero
//! exit: never a panic.

use std::collections::HashMap;
use std::path::Path;

use crate::common::{assert_clean_failure, son1k, tiny_model};
use candle_core::{Device, Tensor};

fn generate(model: &Path, extra: &[&str]) -> std::process::Output {
    let out = model.parent().unwrap().join("out.wav");
    let mut args = vec![
        "generate",
        "--model",
        model.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    son1k(&args)
}

fn rewrite_weights(model: &Path, edit: impl FnOnce(&mut HashMap<String, Tensor>)) {
    let path = model.join("model.safetensors");
    let mut tensors = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    edit(&mut tensors);
    candle_core::safetensors::save(&tensors, &path).unwrap();
}

#[test]
fn missing_directory_and_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let absent = dir.path().join("nowhere");
    assert_clean_failure(
        &generate(&absent, &["rock"]),
        &["nowhere", "checkpoint directory"],
    );

    let model = dir.path().join("tiny");
    tiny_model(&model, false);
    std::fs::remove_file(model.join("tokenizer.json")).unwrap();
    assert_clean_failure(&generate(&model, &["rock"]), &["tokenizer.json", "missing"]);
    std::fs::remove_file(model.join("config.json")).unwrap();
    assert_clean_failure(&generate(&model, &["rock"]), &["config.json", "missing"]);
}

#[test]
fn corrupt_safetensors_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("tiny");
    tiny_model(&model, false);
    let path = model.join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 3]).unwrap();
    assert_clean_failure(
        &generate(&model, &["rock"]),
        &["model.safetensors", "not a valid safetensors"],
    );
    std::fs::write(&path, b"garbage").unwrap();
    assert_clean_failure(&generate(&model, &["rock"]), &["model.safetensors"]);
}

#[test]
fn missing_and_misshaped_tensors_are_named_with_shapes() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("tiny");
    tiny_model(&model, false);
    let name = "decoder.model.decoder.layers.1.fc1.weight";
    rewrite_weights(&model, |t| {
        t.remove(name);
    });
    assert_clean_failure(
        &generate(&model, &["rock"]),
        &[name, "missing", "model.safetensors"],
    );

    rewrite_weights(&model, |t| {
        t.insert(
            name.to_string(),
            Tensor::zeros((128, 31), candle_core::DType::F32, &Device::Cpu).unwrap(),
        );
    });
    assert_clean_failure(
        &generate(&model, &["rock"]),
        &[name, "[128, 31]", "[128, 32]"],
    );
}

#[test]
fn bad_request_fields_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("tiny");
    tiny_model(&model, false);
    let long_prompt = "rock ".repeat(600);
    let cases: Vec<(Vec<&str>, Vec<&str>)> = vec![
        (vec![""], vec!["prompt", "empty"]),
        (
            vec![&long_prompt],
            vec!["prompt", "characters", "limit of 2000"],
        ),
        (
            vec!["a b c d e f", "--max-prompt-tokens", "4"],
            vec!["prompt", "tokens", "limit of 4"],
        ),
        (vec!["rock", "--duration", "0"], vec!["duration"]),
        (vec!["rock", "--duration", "301"], vec!["duration", "300"]),
        (
            vec!["rock", "--extend-stride", "30"],
            vec!["extend_stride", "30 s window"],
        ),
        (vec!["rock", "--duration", "-1"], vec!["duration"]),
        (
            vec!["rock", "--max-new-tokens", "2"],
            vec!["max_new_tokens"],
        ),
        (vec!["rock", "--top-k", "5000"], vec!["top_k", "2048"]),
        (vec!["rock", "--top-p", "1.5"], vec!["top_p"]),
        (vec!["rock", "--temperature", "-0.5"], vec!["temperature"]),
        (
            vec!["rock", "--guidance-scale", "100"],
            vec!["guidance_scale", "20"],
        ),
        (vec!["rock", "--dtype", "bf16"], vec!["dtype", "cpu"]),
        (vec!["rock", "--device", "tpu"], vec!["device", "tpu"]),
        (
            vec!["rock", "--sample-format", "s24"],
            vec!["sample_format", "s24"],
        ),
        (
            vec!["rock", "--threads", "0"],
            vec!["threads", "at least 1"],
        ),
    ];
    for (args, needles) in cases {
        let output = generate(&model, &args);
        assert_clean_failure(&output, &needles);
        assert_eq!(output.status.code(), Some(2), "{args:?}");
    }
}

#[test]
fn an_output_name_of_a_format_son1k_does_not_write_is_refused_naming_those_it_does() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("song.m4a");
    let output = son1k(&["generate", "--out", out.to_str().unwrap(), "rock"]);
    assert_clean_failure(
        &output,
        &["song.m4a", "`.m4a`", ".wav, .flac, .mp3 or .opus"],
    );
    assert!(!out.exists(), "a WAV was written under an .m4a name");
    let wav = dir.path().join("song.wav");
    let output = son1k(&[
        "generate",
        "--out",
        wav.to_str().unwrap(),
        "--format",
        "flac",
        "rock",
    ]);
    assert_clean_failure(&output, &["song.wav", "--format is flac"]);
}
