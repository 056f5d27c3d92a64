//! son1k-models: the math and checkpoint layouts of Son1k's models. MusicGen (T5 text
//! encoder, decoder with KV cache, delay pattern, EnCodec) loads from unmodified Hugging Face
//! checkpoints; sampling and random presets live here too. No I/O but reading weight files.

// Unsafe code lives in `kernels` (and in the decoder step that runs on its phases, and the
// memory-mapping of weight files); the same rules hold for all of it.
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]
#![deny(clippy::missing_safety_doc)]

pub mod analysis;
pub mod encodec;
pub mod error;
pub mod kernels;
pub mod musicgen;
pub mod quant;
pub mod random;
pub mod sampling;
pub mod synth;
pub mod t5;
pub mod theory;
pub mod weights;

pub use error::{ModelError, Result};
