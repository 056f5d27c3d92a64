//! Quality of quantized weights, measured against f32: teacher-forced decoder steps with
//! guidance 3.0, comparing the guided logits (relative RMS error) and the greedy choice of
//! every codebook at every step. On the transformers fixture (hidden 16: only the
//! feed-forward output has rows a block size divides) and on a random model whose every
//! projection quantizes (hidden 256, feed-forward 1024).
//!
//! Tolerances held: Q8 within 2 % relative RMS of the f32 logits with at least 97 % of the
//! greedy choices unchanged; Q4 within 15 % with at least 85 % unchanged. Measured when
//! written: fixture Q8 0.8 % / 99.0 %, Q4 3.8 % / 92.7 %; random 256-wide Q8 1.4 % / 100 %,
//! Q4 10.0 % / 93.8 % (uniform random weights are the hard case for 4 bits).
//!
//! An f16 KV cache (f32 weights) is held to 0.5 % with at least 99 % unchanged; measured
//! when written: 0.006 % and 0.009 %, every choice unchanged.

use std::path::PathBuf;

use candle_core::{DType, Device};
use son1k_models::musicgen::presets::preset;
use son1k_models::musicgen::{GenerationConfig, MusicGen};
use son1k_models::quant::WeightFormat;
use son1k_models::sampling::apply_guidance;
use son1k_models::weights::Weights;

const STEPS: usize = 24;
const GUIDANCE: f32 = 3.0;

/// Guided logits of `STEPS` steps, each fed the reference's greedy column: (per step, the
/// K x vocab guided logits).
fn guided_logits(model: &MusicGen, ids: &[u32], columns: &[Vec<u32>]) -> Vec<Vec<f32>> {
    let text = model.condition(ids, None, true).unwrap();
    let mut cache = model.new_cache(&text, columns.len()).unwrap();
    let mut out = Vec::new();
    for column in columns {
        let logits = model.step(column, &mut cache, 2).unwrap();
        let rows = logits.to_vec3::<f32>().unwrap();
        let mut step = Vec::new();
        for (cond, uncond) in rows[0].iter().zip(&rows[1]) {
            let mut guided = vec![0.0; cond.len()];
            apply_guidance(cond, uncond, GUIDANCE, &mut guided);
            step.extend(guided);
        }
        out.push(step);
    }
    out
}

fn argmax(xs: &[f32]) -> usize {
    xs.iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map_or(0, |(i, _)| i)
}

/// The reference's columns: start tokens, then its own greedy choice each step.
fn reference_columns(model: &MusicGen, ids: &[u32]) -> Vec<Vec<u32>> {
    let k = model.config().decoder.num_codebooks;
    let vocab = model.config().decoder.vocab_size;
    let start = model.config().decoder.bos_token_id;
    let text = model.condition(ids, None, true).unwrap();
    let mut cache = model.new_cache(&text, STEPS).unwrap();
    let mut columns = vec![vec![start; k]];
    while columns.len() < STEPS {
        let logits = model
            .step(columns.last().unwrap(), &mut cache, 2)
            .unwrap()
            .to_vec3::<f32>()
            .unwrap();
        let next = (0..k)
            .map(|c| {
                let mut guided = vec![0.0; vocab];
                apply_guidance(&logits[0][c], &logits[1][c], GUIDANCE, &mut guided);
                argmax(&guided) as u32
            })
            .collect();
        columns.push(next);
    }
    columns
}

/// (relative RMS error of the guided logits, share of greedy choices that agree).
fn compare(reference: &MusicGen, quantized: &MusicGen, ids: &[u32]) -> (f64, f64) {
    let columns = reference_columns(reference, ids);
    let want = guided_logits(reference, ids, &columns);
    let got = guided_logits(quantized, ids, &columns);
    let vocab = reference.config().decoder.vocab_size;
    let (mut error, mut norm, mut agree, mut total) = (0.0, 0.0, 0, 0);
    for (w, g) in want.iter().zip(&got) {
        for (a, b) in w.iter().zip(g) {
            error += ((a - b) as f64).powi(2);
            norm += (*a as f64).powi(2);
        }
        for (wk, gk) in w.chunks(vocab).zip(g.chunks(vocab)) {
            agree += usize::from(argmax(wk) == argmax(gk));
            total += 1;
        }
    }
    ((error / norm).sqrt(), agree as f64 / total as f64)
}

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/musicgen-tiny-mono")
}

#[test]
fn quantized_fixture_stays_within_tolerance_of_f32() {
    let load = |format| MusicGen::load(&fixture(), &Device::Cpu, DType::F32, format).unwrap();
    let reference = load(WeightFormat::Dense);
    let ids = reference
        .tokenize("80s pop track with bassy drums and synth")
        .unwrap();
    for (format, max_error, min_agreement) in [
        (WeightFormat::Q8, 0.02, 0.97),
        (WeightFormat::Q4, 0.15, 0.85),
    ] {
        let (error, agreement) = compare(&reference, &load(format), &ids);
        eprintln!("fixture {format:?}: logits error {error:.5}, greedy agreement {agreement:.3}");
        assert!(
            error > 0.0,
            "{format:?} changed nothing: is it quantized at all?"
        );
        assert!(error <= max_error, "{format:?}: error {error}");
        assert!(
            agreement >= min_agreement,
            "{format:?}: agreement {agreement}"
        );
    }
}

/// A random model whose every projection quantizes (hidden 256, feed-forward 1024) and
/// whose heads are 64 wide, as MusicGen's are; the same weights for every `format`.
fn wide_random_model(format: WeightFormat) -> MusicGen {
    let mut config = preset("tiny").unwrap();
    config.decoder.hidden_size = 256;
    config.decoder.ffn_dim = 1024;
    config.decoder.num_attention_heads = 4;
    let weights = Weights::random(7, &Device::Cpu);
    let generation = GenerationConfig::default();
    MusicGen::from_weights(config, generation, None, &weights, DType::F32, format).unwrap()
}

#[test]
fn every_projection_quantized_stays_within_tolerance_of_f32() {
    let reference = wide_random_model(WeightFormat::Dense);
    let ids = [5, 9, 13, 2, 1];
    for (format, max_error, min_agreement) in [
        (WeightFormat::Q8, 0.02, 0.97),
        (WeightFormat::Q4, 0.15, 0.85),
    ] {
        let (error, agreement) = compare(&reference, &wide_random_model(format), &ids);
        eprintln!(
            "random 256-wide {format:?}: logits error {error:.5}, greedy agreement {agreement:.3}"
        );
        assert!(error <= max_error, "{format:?}: error {error}");
        assert!(
            agreement >= min_agreement,
            "{format:?}: agreement {agreement}"
        );
    }
}

#[test]
fn an_f16_kv_cache_stays_within_tolerance_of_f32() {
    // The fixture's 4-wide heads widen the cache through a buffer; the random model's
    // 64-wide heads (MusicGen's width) take the F16C kernel where the CPU has one.
    let random = |kv: DType| {
        let mut model = wide_random_model(WeightFormat::Dense);
        model.set_kv_cache_dtype(kv).unwrap();
        model
    };
    let fixture = |kv: DType| {
        let mut model =
            MusicGen::load(&fixture(), &Device::Cpu, DType::F32, WeightFormat::Dense).unwrap();
        model.set_kv_cache_dtype(kv).unwrap();
        model
    };
    let fixture_ids = fixture(DType::F32)
        .tokenize("80s pop track with bassy drums and synth")
        .unwrap();
    let cases = [
        (
            "fixture",
            fixture(DType::F32),
            fixture(DType::F16),
            fixture_ids,
        ),
        (
            "random 256-wide",
            random(DType::F32),
            random(DType::F16),
            vec![5, 9, 13, 2, 1],
        ),
    ];
    for (name, reference, half_cache, ids) in cases {
        assert_eq!(half_cache.kv_cache_dtype(), DType::F16);
        let (error, agreement) = compare(&reference, &half_cache, &ids);
        eprintln!("{name} f16 KV cache: logits error {error:.5}, greedy agreement {agreement:.3}");
        assert!(error > 0.0, "{name}: the f16 cache changed nothing");
        assert!(error <= 0.005, "{name}: error {error}");
        assert!(agreement >= 0.99, "{name}: agreement {agreement}");
    }
    // Other cache dtypes are refused, naming the setting.
    let error = fixture(DType::F32)
        .set_kv_cache_dtype(DType::BF16)
        .unwrap_err();
    assert!(error.to_string().contains("kv_cache"), "{error}");
}
