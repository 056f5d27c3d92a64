//! The generation loop: start the model's session, step it with a progress report after
//! every step and a cancel check before each, then decode.

use std::sync::atomic::{AtomicBool, Ordering};

use crate::audio::{Audio, AudioChunk};
use crate::error::EngineError;
use crate::model::MusicModel;
use crate::request::ValidatedRequest;

/// What the job is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Tokenising and encoding the prompt.
    Encoding,
    /// Running decoder steps.
    Generating,
    /// Turning tokens into audio.
    Decoding,
}

/// A progress report; `steps_done` never decreases within a job.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    /// Current stage.
    pub stage: Stage,
    /// Steps finished.
    pub steps_done: usize,
    /// Steps in total.
    pub steps_total: usize,
}

/// What a running job reports.
#[derive(Clone, Debug, PartialEq)]
pub enum Update {
    /// Progress, after every step.
    Progress(Progress),
    /// Audio playable before the job ends, where the model streams.
    Chunk(AudioChunk),
}

/// A finished generation.
#[derive(Clone, Debug, PartialEq)]
pub struct GenerationOutput {
    /// The audio.
    pub audio: Audio,
    /// The request as run (defaults filled, seed chosen).
    pub request: ValidatedRequest,
    /// What the model understood of the prompt.
    pub understood: Vec<(String, String)>,
}

/// Runs one job to the end. `on_update` gets progress after every step and audio chunks as
/// they become ready; `cancel` is checked before every step, so a set flag stops the job
/// within one step with [`EngineError::Cancelled`].
pub fn generate(
    model: &dyn MusicModel,
    request: &ValidatedRequest,
    cancel: &AtomicBool,
    on_update: &mut dyn FnMut(Update),
) -> Result<GenerationOutput, EngineError> {
    generate_timed(model, request, cancel, on_update, &mut |_| {})
}

/// [`generate`], telling `on_step` how long each step took (the step alone, not the
/// reports and previews after it).
pub fn generate_timed(
    model: &dyn MusicModel,
    request: &ValidatedRequest,
    cancel: &AtomicBool,
    on_update: &mut dyn FnMut(Update),
    on_step: &mut dyn FnMut(std::time::Duration),
) -> Result<GenerationOutput, EngineError> {
    let mut session = model.start(request)?;
    let total = session.total_steps();
    on_update(Update::Progress(Progress {
        stage: Stage::Encoding,
        steps_done: 0,
        steps_total: total,
    }));
    while session.steps_done() < total {
        if cancel.load(Ordering::Relaxed) {
            return Err(EngineError::Cancelled);
        }
        let stepping = std::time::Instant::now();
        session.step()?;
        on_step(stepping.elapsed());
        on_update(Update::Progress(Progress {
            stage: Stage::Generating,
            steps_done: session.steps_done(),
            steps_total: total,
        }));
        if let Some(chunk) = session.take_preview().and_then(|render| render()) {
            on_update(Update::Chunk(chunk));
        }
    }
    if cancel.load(Ordering::Relaxed) {
        return Err(EngineError::Cancelled);
    }
    on_update(Update::Progress(Progress {
        stage: Stage::Decoding,
        steps_done: total,
        steps_total: total,
    }));
    let understood = session.understood();
    let audio = session.finish()?;
    Ok(GenerationOutput {
        audio,
        request: request.clone(),
        understood,
    })
}
