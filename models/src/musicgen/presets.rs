//! Named MusicGen shapes (the published sizes, and a tiny one for tests), and a writer of
//! random checkpoints in the Hugging Face layout.

use std::path::Path;

use candle_core::{DType, Device};
use serde_json::json;

use super::config::{Config, GenerationConfig};
use super::model::{MusicGen, CONFIG_FILE, GENERATION_CONFIG_FILE, TOKENIZER_FILE};
use super::tokenizer::{tiny_tokenizer_json, tiny_vocab_size};
use crate::error::{ModelError, Result};
use crate::quant::WeightFormat;
use crate::weights::{Weights, SINGLE_FILE};

/// Names accepted by [`preset`].
pub const PRESET_NAMES: &[&str] = &[
    "musicgen-small",
    "musicgen-medium",
    "musicgen-large",
    "musicgen-stereo-small",
    "musicgen-stereo-medium",
    "musicgen-stereo-large",
    "musicgen-melody",
    "musicgen-melody-large",
    "musicgen-stereo-melody",
    "musicgen-stereo-melody-large",
    "tiny",
    "tiny-stereo",
    "tiny-melody",
];

/// The config of a named shape, or `None` for an unknown name. The melody shapes are the
/// published ones: `musicgen-melody` is medium-sized, `-large` large.
pub fn preset(name: &str) -> Option<Config> {
    let melody_size = match name {
        "musicgen-melody" | "musicgen-stereo-melody" => Some("musicgen-medium"),
        "musicgen-melody-large" | "musicgen-stereo-melody-large" => Some("musicgen-large"),
        "tiny-melody" => Some("tiny"),
        _ => None,
    };
    if let Some(size) = melody_size {
        let mut config = preset(size)?;
        if name.starts_with("musicgen-stereo-") {
            config = preset(&size.replace("musicgen-", "musicgen-stereo-"))?;
        }
        config.model_type = super::config::MUSICGEN_MELODY.to_string();
        return Some(config);
    }
    let (stereo, size) = match name.strip_prefix("musicgen-stereo-") {
        Some(size) => (true, size),
        None => (false, name.strip_prefix("musicgen-").unwrap_or(name)),
    };
    let (size, stereo) = match size {
        "tiny-stereo" => ("tiny", true),
        other => (other, stereo),
    };
    let (hidden, layers, heads) = match size {
        "small" => (1024, 24, 16),
        "medium" => (1536, 48, 24),
        "large" => (2048, 48, 32),
        "tiny" => return tiny(stereo),
        _ => return None,
    };
    let config = json!({
        "text_encoder": {},
        "audio_encoder": encodec_32khz(64, 128),
        "decoder": decoder(hidden, layers, heads, 4 * hidden, stereo),
    });
    serde_json::from_value(config).ok()
}

fn encodec_32khz(num_filters: usize, hidden: usize) -> serde_json::Value {
    json!({
        "sampling_rate": 32000, "audio_channels": 1, "target_bandwidths": [2.2],
        "upsampling_ratios": [8, 5, 4, 4], "num_filters": num_filters, "hidden_size": hidden,
        "codebook_size": 2048, "use_causal_conv": false, "pad_mode": "reflect",
        "norm_type": "weight_norm", "use_conv_shortcut": false, "num_lstm_layers": 2,
        "compress": 2, "kernel_size": 7, "last_kernel_size": 7, "residual_kernel_size": 3,
        "dilation_growth_rate": 2, "num_residual_layers": 1, "normalize": false,
        "trim_right_ratio": 1.0, "chunk_length_s": null, "overlap": null
    })
}

fn decoder(
    hidden: usize,
    layers: usize,
    heads: usize,
    ffn: usize,
    stereo: bool,
) -> serde_json::Value {
    json!({
        "hidden_size": hidden, "num_hidden_layers": layers, "num_attention_heads": heads,
        "ffn_dim": ffn, "num_codebooks": if stereo { 8 } else { 4 },
        "audio_channels": if stereo { 2 } else { 1 }, "vocab_size": 2048,
        "max_position_embeddings": 2048, "pad_token_id": 2048, "bos_token_id": 2048,
        "activation_function": "gelu"
    })
}

/// A tiny MusicGen with the real 32 kHz framing (50 frames per second, 4 quantizers): fast
/// enough for tests and for trying the engine.
fn tiny(stereo: bool) -> Option<Config> {
    let config = json!({
        "text_encoder": {"vocab_size": tiny_vocab_size(), "d_model": 32, "d_kv": 8, "d_ff": 64,
                          "num_layers": 2, "num_heads": 4},
        "audio_encoder": encodec_32khz(4, 16),
        "decoder": decoder(32, 2, 4, 128, stereo),
    });
    serde_json::from_value(config).ok()
}

/// Writes a random checkpoint of `config` to `dir` in the published Hugging Face layout:
/// `config.json`, `generation_config.json`, `tokenizer.json` (the tiny tokenizer) and
/// `model.safetensors` with legacy weight-norm names (`weight_g`/`weight_v`).
pub fn write_random_checkpoint(dir: &Path, config: &Config, seed: u64) -> Result<()> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ModelError::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let weights = Weights::random_recorded(seed, &Device::Cpu);
    // Building the model asks for every tensor it needs, with its shape.
    MusicGen::from_weights(
        config.clone(),
        GenerationConfig::default(),
        None,
        &weights,
        DType::F32,
        WeightFormat::Dense,
    )?;
    let tensors = weights.into_tensors();
    let path = dir.join(SINGLE_FILE);
    candle_core::safetensors::save(&tensors, &path).map_err(|e| ModelError::BadSafetensors {
        path: path.clone(),
        message: e.to_string(),
    })?;
    let write_json = |name: &str, value: serde_json::Value| {
        let path = dir.join(name);
        let text = serde_json::to_string_pretty(&value).map_err(|e| ModelError::BadJson {
            path: path.clone(),
            what: "JSON output",
            message: e.to_string(),
        })?;
        std::fs::write(&path, text).map_err(io(&path))
    };
    write_json(CONFIG_FILE, hf_config_json(config)?)?;
    let generation = json!({
        "_from_model_config": false, "bos_token_id": config.decoder.bos_token_id,
        "decoder_start_token_id": config.decoder.bos_token_id,
        "pad_token_id": config.decoder.pad_token_id, "do_sample": true,
        "guidance_scale": 3.0, "max_length": 1500
    });
    write_json(GENERATION_CONFIG_FILE, generation)?;
    write_json(TOKENIZER_FILE, tiny_tokenizer_json())
}

/// `config.json` as transformers writes it: the three sub-configs with their model types.
fn hf_config_json(config: &Config) -> Result<serde_json::Value> {
    let to_value = |v: serde_json::Result<serde_json::Value>| {
        v.map_err(|e| ModelError::BadJson {
            path: CONFIG_FILE.into(),
            what: "MusicGen config",
            message: e.to_string(),
        })
    };
    let mut text = to_value(serde_json::to_value(&config.text_encoder))?;
    let mut audio = to_value(serde_json::to_value(&config.audio_encoder))?;
    let mut decoder = to_value(serde_json::to_value(&config.decoder))?;
    text["model_type"] = json!("t5");
    audio["model_type"] = json!("encodec");
    if config.is_melody() {
        decoder["model_type"] = json!("musicgen_melody_decoder");
        return Ok(json!({
            "architectures": ["MusicgenMelodyForConditionalGeneration"],
            "model_type": config.model_type,
            "is_encoder_decoder": false,
            "num_chroma": config.num_chroma,
            "chroma_length": config.chroma_length,
            "text_encoder": text,
            "audio_encoder": audio,
            "decoder": decoder,
        }));
    }
    decoder["model_type"] = json!("musicgen_decoder");
    Ok(json!({
        "architectures": ["MusicgenForConditionalGeneration"],
        "model_type": config.model_type,
        "is_encoder_decoder": true,
        "text_encoder": text,
        "audio_encoder": audio,
        "decoder": decoder,
    }))
}

/// The tiny shape with random weights, for tests of the generation loop.
#[cfg(test)]
pub(crate) fn tiny_random(seed: u64) -> MusicGen {
    tiny_random_in(seed, WeightFormat::Dense)
}

/// [`tiny_random`] with the decoder's projections stored in `format`.
#[cfg(test)]
pub(crate) fn tiny_random_in(seed: u64, format: WeightFormat) -> MusicGen {
    let weights = Weights::random(seed, &Device::Cpu);
    let config = preset("tiny").unwrap_or_else(|| unreachable!("the tiny preset exists"));
    MusicGen::from_weights(
        config,
        GenerationConfig::default(),
        None,
        &weights,
        DType::F32,
        format,
    )
    .unwrap_or_else(|e| panic!("the tiny preset builds: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_step_reads_361m_weights_as_the_reference_counts() {
        // performance.md: 361 M weights per step for musicgen-small (cross-attention K/V
        // cached), 419 M parameters in the decoder in all.
        let small = preset("musicgen-small").unwrap();
        assert_eq!(small.weights_read_per_step(), 360_710_144);
        let small = small.decoder;
        // f32 KV with guidance: 393 KB per step of history.
        assert_eq!(small.kv_elements_read_at(1, 2) * 4, 393_216);
    }

    #[test]
    fn every_preset_name_resolves_and_validates() {
        for name in PRESET_NAMES {
            let config = preset(name).unwrap_or_else(|| panic!("{name}"));
            config.validate().unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(config.frame_rate(), 50, "{name}");
        }
        let small = preset("musicgen-small").unwrap();
        assert_eq!(
            (small.decoder.hidden_size, small.decoder.num_hidden_layers),
            (1024, 24)
        );
        assert_eq!(small.text_encoder.d_model, 768);
        let stereo = preset("musicgen-stereo-large").unwrap();
        assert_eq!(
            (stereo.decoder.num_codebooks, stereo.decoder.audio_channels),
            (8, 2)
        );
        assert!(preset("musicgen-huge").is_none());
        let melody = preset("musicgen-stereo-melody-large").unwrap();
        assert!(melody.is_melody());
        assert_eq!(
            (melody.decoder.hidden_size, melody.decoder.num_codebooks),
            (2048, 8)
        );
        assert_eq!(preset("musicgen-melody").unwrap().decoder.hidden_size, 1536);
    }

    /// A random melody checkpoint written in the published layout loads back as a melody
    /// model whose prefix holds the chroma and the text.
    #[test]
    fn a_random_melody_checkpoint_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let config = preset("tiny-melody").unwrap();
        write_random_checkpoint(dir.path(), &config, 3).unwrap();
        let model =
            MusicGen::load(dir.path(), &Device::Cpu, DType::F32, WeightFormat::Dense).unwrap();
        assert!(model.config().is_melody());
        let text: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.path().join(CONFIG_FILE)).unwrap())
                .unwrap();
        assert_eq!(text["model_type"], "musicgen_melody");
        let with_song = model.condition(&[3, 1], Some(&[4, 7]), true).unwrap();
        assert_eq!(with_song.prefix_positions().unwrap(), 235 + 2);
    }
}
