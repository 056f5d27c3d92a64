//! MusicGen as an engine model: validates the prompt's token count, runs the generation
//! one decoder pass per step over as many windows as the length needs, decodes with
//! EnCodec at the end. Covers: any MusicGen continues a clip of the song; MusicGen-Melody
//! also follows the song's melody.

use std::any::Any;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use son1k_models::musicgen::decoder::StepBuffers;
use son1k_models::musicgen::long_form::EXTEND_STRIDE_SECONDS;
use son1k_models::musicgen::{
    GenerationParams, LongGeneration, MusicGen, PreviewMixer, PreviewSettings, Previewer, Windows,
};
use son1k_models::ModelError;

use crate::audio::{Audio, AudioChunk};
use crate::cover::CoverMode;
use crate::device::{DeviceChoice, KvCache, Precision};
use crate::error::EngineError;
use crate::model::{MusicModel, PreviewRender, Session};
use crate::model_info::{ModelInfo, ModelKind, SamplingDefaults};
use crate::request::ValidatedRequest;

/// How far each window of a long generation starts after the one before, in seconds
/// (audiocraft's `extend_stride`); the default of `--extend-stride`.
pub const DEFAULT_EXTEND_STRIDE_SECONDS: f64 = EXTEND_STRIDE_SECONDS;

/// Seconds of audio a job has made when its first preview comes; the default of
/// `--preview-after`.
pub const DEFAULT_PREVIEW_AFTER_SECONDS: f64 = 1.0;

/// The longest `--preview-after`.
pub const MAX_PREVIEW_AFTER_SECONDS: f64 = 30.0;

/// A loaded MusicGen checkpoint.
pub struct MusicGenModel {
    model: Arc<MusicGen>,
    info: ModelInfo,
    windows: Windows,
    /// When jobs stream previews; `None`: they do not.
    preview: Option<PreviewSettings>,
    /// The batched step's rows and logits, kept from step to step; one batch thread
    /// steps a model, so the lock is never contended.
    buffers: Mutex<StepBuffers>,
}

impl MusicGenModel {
    /// Loads a Hugging Face checkpoint directory onto a device in a precision, with its
    /// self-attention cache stored as `kv_cache` says.
    /// `model` is a directory, or a Hub id found in the Hugging Face cache
    /// ([`hub::locate`](crate::hub::locate)); the model is listed under the directory's
    /// name, or the repository's.
    pub fn load(
        model: &Path,
        device: DeviceChoice,
        precision: Precision,
        kv_cache: KvCache,
    ) -> Result<Self, EngineError> {
        let (dir, id) = crate::hub::locate(model)?;
        let candle_device = device.open()?;
        let dtype = precision.dtype_on(&candle_device)?;
        let mut model = MusicGen::load(&dir, &candle_device, dtype, precision.weight_format())?;
        model.set_kv_cache_dtype(kv_cache.dtype(dtype))?;
        let device = match kv_cache {
            KvCache::Compute => format!("{device} {precision}"),
            KvCache::F16 => format!("{device} {precision}, f16 KV cache"),
        };
        Ok(Self::new(model, id, device))
    }

    /// Wraps a model already built; `device` says where it runs, for clients.
    pub fn new(model: MusicGen, id: String, device: String) -> Self {
        let config = model.config();
        let generation = model.generation_config();
        let defaults = SamplingDefaults {
            // `do_sample: false` in the checkpoint means greedy by default.
            top_k: if generation.do_sample {
                generation.top_k
            } else {
                1
            },
            top_p: generation.top_p,
            temperature: generation.temperature,
            guidance_scale: generation.guidance_scale,
        };
        let frame_rate = config.frame_rate();
        let windows = Windows::audiocraft(config);
        let cover_modes = if config.is_melody() {
            vec![CoverMode::Melody, CoverMode::Continuation]
        } else {
            vec![CoverMode::Continuation]
        };
        let info = ModelInfo {
            id,
            kind: ModelKind::MusicGen,
            device,
            streams_audio: true,
            sample_rate: model.sample_rate(),
            channels: model.channels(),
            frame_rate,
            // Windows carry generation past the positions; the duration limit bounds it.
            max_frames: usize::MAX,
            extra_steps: config.decoder.channel_codebooks() - 1,
            vocab_size: config.decoder.vocab_size,
            defaults,
            cover_modes,
            song_rate: model.sample_rate(),
            max_clip_frames: windows.window,
        };
        Self {
            model: Arc::new(model),
            preview: Some(PreviewSettings::new(
                frame_rate,
                DEFAULT_PREVIEW_AFTER_SECONDS,
            )),
            info,
            windows,
            buffers: Mutex::new(StepBuffers::new()),
        }
    }

    /// Sets how far each window of a long generation starts after the one before: more
    /// than 0 and under the window's seconds.
    pub fn with_extend_stride(mut self, seconds: f64) -> Result<Self, EngineError> {
        let frames = (seconds * self.info.frame_rate as f64).round();
        if !seconds.is_finite() || frames < 1.0 || frames as usize >= self.windows.window {
            return Err(EngineError::invalid(
                "extend_stride",
                format!(
                    "{seconds} s must be above 0 and under the {} s window",
                    self.windows.window as f64 / self.info.frame_rate as f64
                ),
            ));
        }
        self.windows.stride = frames as usize;
        Ok(self)
    }

    /// Sets when a job's first preview comes: after `seconds` of audio (0 turns previews
    /// off), at most [`MAX_PREVIEW_AFTER_SECONDS`].
    pub fn with_preview_after(mut self, seconds: f64) -> Result<Self, EngineError> {
        if !(0.0..=MAX_PREVIEW_AFTER_SECONDS).contains(&seconds) {
            return Err(EngineError::invalid(
                "preview_after",
                format!(
                    "{seconds} s must be from 0 (no previews) to {MAX_PREVIEW_AFTER_SECONDS} s"
                ),
            ));
        }
        self.preview = (seconds > 0.0).then(|| PreviewSettings::new(self.info.frame_rate, seconds));
        self.info.streams_audio = self.preview.is_some();
        Ok(self)
    }

    /// The underlying model.
    pub fn model(&self) -> &MusicGen {
        &self.model
    }
}

impl MusicModel for MusicGenModel {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn start(&self, request: &ValidatedRequest) -> Result<Box<dyn Session>, EngineError> {
        let ids = self.model.tokenize(&request.prompt)?;
        if ids.len() > request.max_prompt_tokens {
            return Err(EngineError::invalid(
                "prompt",
                format!(
                    "{} tokens is over the limit of {}",
                    ids.len(),
                    request.max_prompt_tokens
                ),
            ));
        }
        let params = GenerationParams {
            frames: request.frames,
            guidance_scale: request.guidance_scale,
            sampling: request.sampling,
            seed: request.seed,
        };
        let (prompt, song) = match &request.cover {
            Some(cover) if cover.mode == CoverMode::Continuation => {
                let clip = cover.song.mono.get(cover.clip.clone()).ok_or_else(|| {
                    EngineError::invalid("clip_end", "the clip is outside the song")
                })?;
                (self.model.encode_prompt(clip)?, None)
            }
            Some(cover) => (Vec::new(), Some(cover.song.mono.clone())),
            None => (Vec::new(), None),
        };
        let generation =
            LongGeneration::new(&self.model, &ids, &params, prompt, song, self.windows).map_err(
                |e| match e {
                    // The request's clip or length, where validation could not know the
                    // prompt's token count.
                    ModelError::BadPrompt(message) => EngineError::invalid("clip_end", message),
                    e => e.into(),
                },
            )?;
        Ok(Box::new(MusicGenSession {
            model: Arc::clone(&self.model),
            generation,
            previewer: self.preview.map(Previewer::new),
            renders: Arc::default(),
        }))
    }

    /// On the CPU the decoder step reads each weight once for every job in the batch.
    fn batches(&self) -> bool {
        self.model.device().is_cpu()
    }

    fn step_batch(&self, sessions: &mut [&mut dyn Session]) -> Vec<Result<(), EngineError>> {
        // A session of another model (the engine never mixes them) fails; the rest step.
        let mut ours: Vec<&mut LongGeneration> = Vec::with_capacity(sessions.len());
        let mut places: Vec<Option<usize>> = Vec::with_capacity(sessions.len());
        let mut results: Vec<Result<(), EngineError>> = Vec::with_capacity(sessions.len());
        for session in sessions.iter_mut() {
            let any: &mut dyn Any = &mut **session;
            match any.downcast_mut::<MusicGenSession>() {
                Some(session) if Arc::ptr_eq(&session.model, &self.model) => {
                    places.push(Some(ours.len()));
                    ours.push(&mut session.generation);
                    results.push(Ok(()));
                }
                _ => {
                    places.push(None);
                    results.push(Err(EngineError::Internal(
                        "a session of another model in MusicGen's batch".into(),
                    )));
                }
            }
        }
        // A poisoned lock only means an earlier step panicked; the buffers are rewritten
        // by every step.
        let mut buffers = self.buffers.lock().unwrap_or_else(|e| e.into_inner());
        let mut stepped = LongGeneration::step_batch(&self.model, &mut ours, &mut buffers)
            .into_iter()
            .map(Some)
            .collect::<Vec<_>>();
        for (result, place) in results.iter_mut().zip(places) {
            if let Some(outcome) = place.and_then(|n| stepped[n].take()) {
                *result = outcome.map_err(EngineError::from);
            }
        }
        results
    }
}

struct MusicGenSession {
    model: Arc<MusicGen>,
    generation: LongGeneration,
    /// Plans the previews; `None` when they are off.
    previewer: Option<Previewer>,
    /// Renders them, wherever the renders run.
    renders: Arc<Renders>,
}

/// The rendering side of a job's previews.
#[derive(Default)]
struct Renders {
    mixer: Mutex<PreviewMixer>,
    /// Set when a render failed: the job goes on without previews.
    failed: AtomicBool,
}

impl Session for MusicGenSession {
    fn total_steps(&self) -> usize {
        self.generation.total_steps()
    }

    fn steps_done(&self) -> usize {
        self.generation.steps_done()
    }

    fn step(&mut self) -> Result<(), EngineError> {
        Ok(self.generation.step(&self.model)?)
    }

    fn take_preview(&mut self) -> Option<PreviewRender> {
        if self.renders.failed.load(Ordering::Relaxed) {
            return None;
        }
        let window = self
            .previewer
            .as_mut()?
            .plan(&self.model, &self.generation)?;
        let (model, renders) = (Arc::clone(&self.model), Arc::clone(&self.renders));
        Some(Box::new(move || {
            if renders.failed.load(Ordering::Relaxed) {
                return None;
            }
            let rendered = match renders.mixer.lock() {
                Ok(mut mixer) => mixer.render(&model, window).map_err(|e| e.to_string()),
                Err(_) => Err("an earlier render panicked".to_string()),
            };
            match rendered {
                Ok(chunk) => Some(AudioChunk {
                    start_frame: chunk.start,
                    audio: Audio {
                        sample_rate: model.sample_rate(),
                        channels: chunk.channels,
                    },
                }),
                Err(e) => {
                    tracing::warn!("previews stop: {e}");
                    renders.failed.store(true, Ordering::Relaxed);
                    None
                }
            }
        }))
    }

    fn finish(self: Box<Self>) -> Result<Audio, EngineError> {
        let MusicGenSession {
            model, generation, ..
        } = *self;
        let audio = model.decode_audio(&generation.into_frames())?;
        Ok(Audio {
            sample_rate: model.sample_rate(),
            channels: audio.to_vec2::<f32>()?,
        })
    }
}
