//! The model interface of the engine: the step API a job runs through (start, one step at
//! a time, finish), never a closed loop, and one step over many jobs for the models that
//! batch. What a model tells about itself is [`crate::model_info`].

use std::any::Any;

use crate::audio::{Audio, AudioChunk};
use crate::error::EngineError;
use crate::model_info::ModelInfo;
use crate::request::ValidatedRequest;

/// A model the engine can run. Implementations are immutable and shared; each job's state
/// lives in its [`Session`].
pub trait MusicModel: Send + Sync {
    /// What the model is and its limits.
    fn info(&self) -> &ModelInfo;

    /// Prepares a job (tokenising and encoding the prompt); no decoder step runs yet.
    fn start(&self, request: &ValidatedRequest) -> Result<Box<dyn Session>, EngineError>;

    /// Whether one step over many jobs ([`MusicModel::step_batch`]) costs much less than a
    /// step of each: the engine then runs this model's jobs together on one thread.
    fn batches(&self) -> bool {
        false
    }

    /// Runs one step of every session, which this model started; one result per session,
    /// in order. A session that fails does not stop the others, and no session's numbers
    /// depend on which others share the step. The default steps each in turn.
    fn step_batch(&self, sessions: &mut [&mut dyn Session]) -> Vec<Result<(), EngineError>> {
        sessions.iter_mut().map(|session| session.step()).collect()
    }
}

/// The rendering of a preview ([`Session::take_preview`]): `None` where it failed (the
/// job goes on without previews; the session logs why).
pub type PreviewRender = Box<dyn FnOnce() -> Option<AudioChunk> + Send>;

/// One job on one model, advanced a step at a time. It owns its state (a model that
/// batches finds its own sessions among the ones it is given through [`Any`]) and may move
/// to another thread to be finished.
pub trait Session: Any + Send {
    /// Steps in total.
    fn total_steps(&self) -> usize;

    /// Steps done so far.
    fn steps_done(&self) -> usize;

    /// Runs one step.
    fn step(&mut self) -> Result<(), EngineError>;

    /// What the model read from the request (genre, tempo, key, ...), for the result
    /// metadata; empty for models that do not interpret the prompt.
    fn understood(&self) -> Vec<(String, String)> {
        Vec::new()
    }

    /// Audio playable while the job runs, due since the last call (where the model can
    /// stream; the final audio may differ, e.g. by mastering), as work that renders it
    /// away from the steps: a batch need not wait for a decode. A job's renders must run
    /// in the order they were taken.
    fn take_preview(&mut self) -> Option<PreviewRender> {
        None
    }

    /// Turns the finished job into audio.
    fn finish(self: Box<Self>) -> Result<Audio, EngineError>;
}
