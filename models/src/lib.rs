//! son1k-models: the math and checkpoint layouts of Son1k's models. MusicGen (T5 text
//! encoder, decoder with KV cache, delay pattern, EnCodec) loads from unmodified Hugging Face
//! checkpoints; sampling and random presets live here too. No I/O but reading weight files.

pub mod activations;
pub mod analysis;
pub mod attention;
pub mod cpu;
pub mod encodec;
pub mod error;
pub mod gemv;
pub mod musicgen;
pub mod phases;
pub mod quant;
pub mod random;
pub mod rng;
pub mod sampling;
pub mod synth;
pub mod t5;
pub mod weights;

pub use error::{ModelError, Result};
