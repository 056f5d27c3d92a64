//! The model interface of the engine: the step API a job runs through (start, one step at
//! a time, finish), never a closed loop. What a model tells about itself is
//! [`crate::model_info`].

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
    fn start<'a>(
        &'a self,
        request: &ValidatedRequest,
    ) -> Result<Box<dyn Session + 'a>, EngineError>;
}

/// One job on one model, advanced a step at a time.
pub trait Session {
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

    /// Audio playable while the job runs, ready since the last call (where the model can
    /// stream; the final audio may differ, e.g. by mastering).
    fn take_preview(&mut self) -> Option<AudioChunk> {
        None
    }

    /// Turns the finished job into audio.
    fn finish(self: Box<Self>) -> Result<Audio, EngineError>;
}
