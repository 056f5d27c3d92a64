//! son1k-engine: validated requests, the generation loop with progress and cancellation,
//! the job system (registry, queue, workers, result store), device selection, the model
//! trait and its adapters, and audio formats.

#![forbid(unsafe_code)]

pub mod audio;
pub mod cover;
pub mod device;
pub mod digest;
pub mod error;
pub mod hub;
pub mod jobs;
pub mod limits;
pub mod metrics;
pub mod model;
pub mod model_info;
pub mod musicgen;
pub mod request;
pub mod run;
pub mod synth;

pub use audio::{Audio, AudioChunk, AudioFormat, SampleFormat};
pub use cover::CoverMode;
pub use device::{DeviceChoice, KvCache, Precision};
pub use error::EngineError;
pub use limits::Limits;
pub use model::{MusicModel, PreviewRender, Session};
pub use model_info::{ModelInfo, ModelKind, SamplingDefaults};
pub use request::{CoverRequest, GenerateRequest, Length, ValidatedRequest};
pub use run::{generate, GenerationOutput, Progress, Stage, Update};
