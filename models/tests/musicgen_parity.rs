//! Parity with the reference: checkpoints written by transformers (tests/fixtures, made by
//! tools/make_fixtures.py) generate, greedy with guidance 3.0, the same codes as
//! transformers and the same waveform within 1e-4, whichever weight-norm naming or
//! sharding the checkpoint uses.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use son1k_models::musicgen::{AudioConditions, Generation, GenerationParams, MusicGen};
use son1k_models::quant::WeightFormat;
use son1k_models::sampling::{apply_guidance, SamplingParams};

/// The waveform tolerance the issue sets against transformers, in f32.
const AUDIO_TOLERANCE: f32 = 1e-4;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures")
        .join(name)
}

fn expected(dir: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(dir.join("expected.safetensors"), &Device::Cpu).unwrap()
}

fn prompts(dir: &Path) -> Vec<(String, usize)> {
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
    json["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["prompt"].as_str().unwrap().to_string(),
                p["max_new_tokens"].as_u64().unwrap() as usize,
            )
        })
        .collect()
}

/// Copies the non-weight files of a checkpoint into `to`.
fn copy_metadata(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for name in ["config.json", "generation_config.json", "tokenizer.json"] {
        std::fs::copy(from.join(name), to.join(name)).unwrap();
    }
}

fn load_weights(dir: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu).unwrap()
}

/// The same checkpoint with the published (legacy) weight-norm names.
fn legacy_copy(from: &Path, to: &Path) {
    copy_metadata(from, to);
    let renamed: HashMap<String, Tensor> = load_weights(from)
        .into_iter()
        .map(|(k, v)| {
            let k = k
                .replace("parametrizations.weight.original0", "weight_g")
                .replace("parametrizations.weight.original1", "weight_v");
            (k, v)
        })
        .collect();
    assert!(renamed.keys().any(|k| k.ends_with("weight_g")));
    candle_core::safetensors::save(&renamed, to.join("model.safetensors")).unwrap();
}

/// The same checkpoint split in three shards with an index.
fn sharded_copy(from: &Path, to: &Path) {
    copy_metadata(from, to);
    let mut names: Vec<(String, Tensor)> = load_weights(from).into_iter().collect();
    names.sort_by(|a, b| a.0.cmp(&b.0));
    let chunk = names.len().div_ceil(3);
    let mut weight_map = serde_json::Map::new();
    for (i, part) in names.chunks(chunk).enumerate() {
        let file = format!("model-{:05}-of-00003.safetensors", i + 1);
        let tensors: HashMap<String, Tensor> = part.iter().cloned().collect();
        for name in tensors.keys() {
            weight_map.insert(name.clone(), serde_json::Value::String(file.clone()));
        }
        candle_core::safetensors::save(&tensors, to.join(&file)).unwrap();
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": weight_map});
    std::fs::write(to.join("model.safetensors.index.json"), index.to_string()).unwrap();
}

fn to_u32_rows(codes: &Tensor) -> Vec<Vec<u32>> {
    // [1, K, N] int64 -> [K][N]
    let rows: Vec<Vec<i64>> = codes.squeeze(0).unwrap().to_vec2().unwrap();
    rows.into_iter()
        .map(|r| r.into_iter().map(|c| c as u32).collect())
        .collect()
}

/// A recorded `[1, L]` i64 prompt as token ids.
fn token_ids(input_ids: &Tensor) -> Vec<u32> {
    input_ids
        .squeeze(0)
        .unwrap()
        .to_vec1::<i64>()
        .unwrap()
        .into_iter()
        .map(|x| x as u32)
        .collect()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar()
        .unwrap()
}

/// The fixtures' setting: greedy with guidance 3.0, `frames` frames, as transformers'
/// `generate(do_sample=False, guidance_scale=3.0)` runs it; checks the step count.
fn greedy_guided(model: &MusicGen, ids: &[u32], frames: usize) -> Vec<Vec<u32>> {
    let params = GenerationParams {
        frames,
        guidance_scale: 3.0,
        sampling: SamplingParams::GREEDY,
        seed: 0,
    };
    let mut job = Generation::new(model, ids, &params).unwrap();
    let delays = model.config().decoder.channel_codebooks();
    assert_eq!(job.total_steps(), frames + delays - 1);
    while !job.is_done() {
        job.step(model).unwrap();
    }
    job.frames()
}

/// Runs every prompt of the fixture through `model` and compares with transformers.
fn assert_matches_reference(model: &MusicGen, fixture_dir: &Path, label: &str) {
    let expected = expected(fixture_dir);
    for (i, (prompt, max_new_tokens)) in prompts(fixture_dir).into_iter().enumerate() {
        let ids = model.tokenize(&prompt).unwrap();
        let want_ids: Vec<i64> = expected[&format!("prompt{i}.input_ids")]
            .squeeze(0)
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(
            ids.iter().map(|&x| x as i64).collect::<Vec<_>>(),
            want_ids,
            "{label} prompt {i} ids"
        );

        // First step's guided logits.
        let text = model.condition(&ids, None, true).unwrap();
        let mut cache = model.new_cache(&text, 4).unwrap();
        let k = model.config().decoder.num_codebooks;
        let logits = model
            .step(&vec![2048; k], &mut cache, 2)
            .unwrap()
            .to_vec3::<f32>()
            .unwrap();
        let mut guided = Vec::new();
        let want_logits: Vec<Vec<f32>> = expected[&format!("prompt{i}.first_step_logits")]
            .to_vec2()
            .unwrap();
        for (codebook, want) in want_logits.iter().enumerate() {
            apply_guidance(&logits[0][codebook], &logits[1][codebook], 3.0, &mut guided);
            let diff = guided
                .iter()
                .zip(want)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f32::max);
            assert!(
                diff < 1e-3,
                "{label} prompt {i} codebook {codebook}: logits differ by {diff}"
            );
        }

        let delays = model.config().decoder.channel_codebooks();
        let frames = greedy_guided(model, &ids, max_new_tokens + 1 - delays);
        assert_eq!(
            frames,
            to_u32_rows(&expected[&format!("prompt{i}.codes")]),
            "{label} prompt {i} codes"
        );

        let audio = model.decode_audio(&frames).unwrap();
        let want_audio = expected[&format!("prompt{i}.audio")].squeeze(0).unwrap();
        let diff = max_abs_diff(&audio, &want_audio);
        assert!(
            diff <= AUDIO_TOLERANCE,
            "{label} prompt {i}: waveform differs by {diff}"
        );
    }
}

fn check_all_layouts(name: &str) {
    let dir = fixture(name);
    let tmp = tempfile::tempdir().unwrap();
    let legacy = tmp.path().join("legacy");
    legacy_copy(&dir, &legacy);
    let sharded = tmp.path().join("sharded");
    sharded_copy(&dir, &sharded);
    for (label, path) in [
        ("as written by transformers", &dir),
        ("legacy weight-norm names", &legacy),
        ("sharded", &sharded),
    ] {
        let model = MusicGen::load(path, &Device::Cpu, DType::F32, WeightFormat::Dense).unwrap();
        assert_matches_reference(&model, &dir, &format!("{name}, {label}"));
    }
}

#[test]
fn mono_checkpoint_matches_transformers_in_every_layout() {
    check_all_layouts("musicgen-tiny-mono");
}

#[test]
fn stereo_checkpoint_matches_transformers_in_every_layout() {
    check_all_layouts("musicgen-tiny-stereo");
}

#[test]
fn encodec_decode_matches_transformers() {
    let dir = fixture("musicgen-tiny-mono");
    let model = MusicGen::load(&dir, &Device::Cpu, DType::F32, WeightFormat::Dense).unwrap();
    let expected = expected(&dir);
    let audio = model
        .decode_audio(&to_u32_rows(&expected["encodec.codes"]))
        .unwrap();
    let diff = max_abs_diff(&audio, &expected["encodec.audio"].squeeze(0).unwrap());
    assert!(diff <= AUDIO_TOLERANCE, "EnCodec differs by {diff}");
}

#[test]
fn half_precision_storage_loads_and_generates_the_right_length() {
    let dir = fixture("musicgen-tiny-mono");
    for dtype in [DType::F16, DType::BF16] {
        let tmp = tempfile::tempdir().unwrap();
        copy_metadata(&dir, tmp.path());
        let converted: HashMap<String, Tensor> = load_weights(&dir)
            .into_iter()
            .map(|(k, v)| (k, v.to_dtype(dtype).unwrap()))
            .collect();
        candle_core::safetensors::save(&converted, tmp.path().join("model.safetensors")).unwrap();
        let model =
            MusicGen::load(tmp.path(), &Device::Cpu, DType::F32, WeightFormat::Dense).unwrap();
        let ids = model.tokenize("lofi piano").unwrap();
        let audio = model.decode_audio(&greedy_guided(&model, &ids, 5)).unwrap();
        assert_eq!(audio.dims(), &[1, 5 * 640], "{dtype:?}");
    }
}

#[test]
fn half_precision_compute_with_guidance_stays_finite_and_close() {
    // The unconditional guidance row is fully masked in cross-attention: in f16 a naive
    // mask would turn it into NaN.
    let dir = fixture("musicgen-tiny-mono");
    let expected = expected(&dir);
    let model = MusicGen::load(&dir, &Device::Cpu, DType::F16, WeightFormat::Dense).unwrap();
    let (prompt, max_new_tokens) = prompts(&dir).remove(0);
    let ids = model.tokenize(&prompt).unwrap();
    let frames = greedy_guided(&model, &ids, max_new_tokens - 3);
    let want = to_u32_rows(&expected["prompt0.codes"]);
    let same = frames
        .iter()
        .flatten()
        .zip(want.iter().flatten())
        .filter(|(a, b)| a == b)
        .count();
    let total = want.iter().flatten().count();
    // Half precision may flip a near-tie; most codes must still agree.
    assert!(
        same * 10 >= total * 8,
        "only {same} of {total} codes agree in f16"
    );
}

/// The checkpoint's EnCodec encoder, from its config and weights.
fn encoder(dir: &Path) -> son1k_models::encodec::EncodecEncoder {
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let cfg: son1k_models::encodec::Config =
        serde_json::from_value(config["audio_encoder"].clone()).unwrap();
    let weights = son1k_models::weights::Weights::from_dir(dir, &Device::Cpu).unwrap();
    son1k_models::encodec::EncodecEncoder::new(&cfg, weights.root(DType::F32).pp("audio_encoder"))
        .unwrap()
}

#[test]
fn the_encoder_gives_transformers_codes_under_either_weight_norm_naming() {
    let scratch = tempfile::tempdir().unwrap();
    for name in ["musicgen-tiny-mono", "musicgen-tiny-stereo"] {
        let dir = fixture(name);
        let expected =
            candle_core::safetensors::load(dir.join("encoder.safetensors"), &Device::Cpu).unwrap();
        let legacy = scratch.path().join(name);
        legacy_copy(&dir, &legacy);
        let want: Vec<Vec<Vec<i64>>> = expected["codes"].to_vec3().unwrap();
        for checkpoint in [dir.clone(), legacy] {
            let encoder = encoder(&checkpoint);
            let latents = encoder.encode_latents(&expected["audio"]).unwrap();
            // The CPU path and candle's layers agree as well.
            let by_candle = encoder
                .encode_latents_with_candle(&expected["audio"])
                .unwrap();
            let apart = max_abs_diff(&latents, &by_candle);
            assert!(
                apart <= 1e-5,
                "{name}: CPU and candle paths differ by {apart}"
            );
            let worst = max_abs_diff(&latents, &expected["latents"]);
            assert!(
                worst <= AUDIO_TOLERANCE,
                "{name}: latents differ by {worst}"
            );
            let codes: Vec<Vec<Vec<u32>>> = encoder
                .encode(&expected["audio"])
                .unwrap()
                .to_vec3()
                .unwrap();
            let codes: Vec<Vec<Vec<i64>>> = codes
                .iter()
                .map(|b| {
                    b.iter()
                        .map(|k| k.iter().map(|&c| c as i64).collect())
                        .collect()
                })
                .collect();
            assert_eq!(codes, want, "{name} ({})", checkpoint.display());
            // Audio of the wrong shape is an error, not a panic.
            let stereo = Tensor::zeros((1, 2, 640), DType::F32, &Device::Cpu).unwrap();
            let error = encoder.encode(&stereo).unwrap_err().to_string();
            assert!(error.contains("2 channels"), "{error}");
        }
    }
}

#[test]
fn the_melody_chroma_equals_transformers_frame_for_frame() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures");
    let expected =
        candle_core::safetensors::load(fixtures.join("melody-chroma.safetensors"), &Device::Cpu)
            .unwrap();
    for song in ["scale", "short", "gap"] {
        let samples: Vec<i16> = expected[&format!("{song}.audio")].to_vec1().unwrap();
        let audio: Vec<f32> = samples.iter().map(|&s| f32::from(s) / 32768.0).collect();
        let one_hot: Vec<Vec<i64>> = expected[&format!("{song}.chroma")].to_vec2().unwrap();
        let want: Vec<usize> = one_hot
            .iter()
            .map(|row| {
                assert_eq!(row.iter().sum::<i64>(), 1, "{song}: not one-hot");
                row.iter().position(|&v| v == 1).unwrap()
            })
            .collect();
        let got = son1k_models::musicgen::chroma::melody_chroma(&audio);
        assert_eq!(got, want, "{song}");
    }
}

#[test]
fn a_continuation_keeps_the_prompt_and_generates_transformers_codes_and_waveform() {
    for name in ["musicgen-tiny-mono", "musicgen-tiny-stereo"] {
        let dir = fixture(name);
        let recorded =
            candle_core::safetensors::load(dir.join("continuation.safetensors"), &Device::Cpu)
                .unwrap();
        let model = MusicGen::load(&dir, &Device::Cpu, DType::F32, WeightFormat::Dense).unwrap();
        let ids = token_ids(&recorded["input_ids"]);
        let rows = |key: &str| -> Vec<Vec<u32>> {
            recorded[key]
                .squeeze(0)
                .unwrap()
                .to_vec2::<i64>()
                .unwrap()
                .into_iter()
                .map(|row| row.into_iter().map(|c| c as u32).collect())
                .collect()
        };
        let (prompt, want) = (rows("prompt_codes"), rows("codes"));
        // The prompt as our encoder makes it from the clip (stereo: the clip on both sides).
        let clip = &candle_core::safetensors::load(dir.join("encoder.safetensors"), &Device::Cpu)
            .unwrap()["audio"];
        let encoded: Vec<Vec<u32>> = encoder(&dir)
            .encode(clip)
            .unwrap()
            .squeeze(0)
            .unwrap()
            .to_vec2()
            .unwrap();
        let channels = model.config().decoder.audio_channels;
        let interleaved: Vec<Vec<u32>> = encoded
            .iter()
            .flat_map(|row| std::iter::repeat_n(row.clone(), channels))
            .collect();
        assert_eq!(interleaved, prompt, "{name}: prompt codes");
        let params = GenerationParams {
            frames: want[0].len(),
            guidance_scale: 3.0,
            sampling: SamplingParams::GREEDY,
            seed: 0,
        };
        // Codes that cannot be a prompt are refused, not run.
        for bad in [
            vec![vec![0u32; 3]; 1],
            vec![vec![4096u32; 3]; prompt.len()],
            vec![vec![0u32; want[0].len() + 1]; prompt.len()],
        ] {
            let audio = AudioConditions {
                prompt: bad,
                chroma: None,
            };
            let refused = Generation::conditioned(&model, &ids, &params, audio).err();
            assert!(
                matches!(refused, Some(son1k_models::error::ModelError::BadPrompt(_))),
                "{name}"
            );
        }
        let audio = AudioConditions {
            prompt,
            chroma: None,
        };
        let mut job = Generation::conditioned(&model, &ids, &params, audio).unwrap();
        while !job.is_done() {
            job.step(&model).unwrap();
        }
        let frames = job.into_frames();
        assert_eq!(frames, want, "{name}: continued codes");
        let audio = model.decode_audio(&frames).unwrap();
        let diff = max_abs_diff(&audio, &recorded["audio"].squeeze(0).unwrap());
        assert!(
            diff <= AUDIO_TOLERANCE,
            "{name}: waveform differs by {diff}"
        );
    }
}

/// MusicGen-Melody (tools/make_melody_fixtures.py): the song's chroma equals the
/// extractor's, and greedy generation with guidance 3.0, with the song and without one,
/// gives transformers' codes and waveform, mono and stereo, under either weight-norm naming.
#[test]
fn melody_checkpoints_match_transformers_with_and_without_a_song() {
    for name in ["musicgen-tiny-melody", "musicgen-tiny-melody-stereo"] {
        let dir = fixture(name);
        let recorded =
            candle_core::safetensors::load(dir.join("melody.safetensors"), &Device::Cpu).unwrap();
        let song: Vec<f32> = recorded["song"]
            .to_vec1::<i16>()
            .unwrap()
            .into_iter()
            .map(|s| f32::from(s) / 32768.0)
            .collect();
        let chroma = son1k_models::musicgen::chroma::melody_chroma(&song);
        let want_chroma: Vec<usize> = recorded["chroma"]
            .squeeze(0)
            .unwrap()
            .argmax(1)
            .unwrap()
            .to_vec1::<u32>()
            .unwrap()
            .into_iter()
            .map(|c| c as usize)
            .collect();
        assert_eq!(chroma, want_chroma, "{name}: chroma");
        let ids = token_ids(&recorded["input_ids"]);
        let scratch = tempfile::tempdir().unwrap();
        let legacy = scratch.path().join("legacy");
        legacy_copy(&dir, &legacy);
        for checkpoint in [&dir, &legacy] {
            let model =
                MusicGen::load(checkpoint, &Device::Cpu, DType::F32, WeightFormat::Dense).unwrap();
            assert!(model.config().is_melody(), "{name}");
            for (key, chroma) in [("melody", Some(chroma.clone())), ("text", None)] {
                let want = to_u32_rows(&recorded[&format!("{key}.codes")]);
                let params = GenerationParams {
                    frames: want[0].len(),
                    guidance_scale: 3.0,
                    sampling: SamplingParams::GREEDY,
                    seed: 0,
                };
                let audio = AudioConditions {
                    prompt: Vec::new(),
                    chroma,
                };
                let mut job = Generation::conditioned(&model, &ids, &params, audio).unwrap();
                while !job.is_done() {
                    job.step(&model).unwrap();
                }
                let frames = job.into_frames();
                assert_eq!(frames, want, "{name} {key}: codes");
                let audio = model.decode_audio(&frames).unwrap();
                let want_audio = recorded[&format!("{key}.audio")].squeeze(0).unwrap();
                let diff = max_abs_diff(&audio, &want_audio);
                assert!(
                    diff <= AUDIO_TOLERANCE,
                    "{name} {key}: waveform differs by {diff}"
                );
            }
        }
    }
}

#[test]
fn a_melody_for_a_model_without_melody_is_refused() {
    let dir = fixture("musicgen-tiny-mono");
    let model = MusicGen::load(&dir, &Device::Cpu, DType::F32, WeightFormat::Dense).unwrap();
    let params = GenerationParams {
        frames: 4,
        guidance_scale: 3.0,
        sampling: SamplingParams::GREEDY,
        seed: 0,
    };
    let audio = AudioConditions {
        prompt: Vec::new(),
        chroma: Some(vec![3; 20]),
    };
    let error = Generation::conditioned(&model, &[5, 1], &params, audio)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        error.contains("no melody") && error.contains("`musicgen`"),
        "{error}"
    );
}
