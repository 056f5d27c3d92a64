//! MusicGen (text-to-music) from Hugging Face checkpoints: config, decoder, delay pattern,
//! the model's step API and the per-job generation state.

pub mod chroma;
pub mod config;
pub mod decoder;
pub mod delay;
pub mod generation;
pub mod long_form;
pub mod model;
pub mod presets;
pub mod preview;
pub mod tokenizer;

pub use config::{Config, DecoderConfig, GenerationConfig};
pub use delay::DelayPattern;
pub use generation::{AudioConditions, Generation, GenerationParams};
pub use long_form::{LongGeneration, Windows};
pub use model::{Conditioning, MusicGen};
pub use preview::{snr_db, PreviewMixer, PreviewSettings, PreviewWindow, Previewer};
