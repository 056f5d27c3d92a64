//! The request limits, each a documented configuration value with its default.

use crate::error::EngineError;

/// Bounds every request is validated against. The model adds its own (positions,
/// vocabulary); the tighter bound applies.
#[derive(Clone, Debug, PartialEq)]
pub struct Limits {
    /// Longest prompt in characters (default 2000).
    pub max_prompt_chars: usize,
    /// Longest prompt in text-encoder tokens, end token included (default 256).
    pub max_prompt_tokens: usize,
    /// Longest audio in seconds (default 300: MusicGen generates past its 30 s window in
    /// windows, so this alone bounds a job's length).
    pub max_duration_s: f64,
    /// Highest sampling temperature (default 5).
    pub max_temperature: f32,
    /// Highest classifier-free guidance scale (default 20).
    pub max_guidance_scale: f32,
    /// Largest song upload for a cover, in bytes (default 50 MiB).
    pub max_song_bytes: usize,
    /// Longest song to cover, in seconds (default 600).
    pub max_song_seconds: f64,
    /// Most samples a song may decode to, every channel counted (default 120 M: 600 s of
    /// 96 kHz stereo). Checked against the length the file declares and while decoding,
    /// so a small file that claims or expands to hours of many-channel audio is refused.
    pub max_song_samples: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_prompt_chars: 2000,
            max_prompt_tokens: 256,
            max_duration_s: 300.0,
            max_temperature: 5.0,
            max_guidance_scale: 20.0,
            max_song_bytes: 50 * 1024 * 1024,
            max_song_seconds: 600.0,
            max_song_samples: 120_000_000,
        }
    }
}

/// The highest duration limit a configuration may set, in seconds (an hour: MusicGen's
/// output alone is then 920 MB of f32 stereo, and its windows 200).
pub const MAX_DURATION_LIMIT_S: f64 = 3600.0;

impl Limits {
    /// `seconds` as a duration limit (`--max-duration`): positive and at most
    /// [`MAX_DURATION_LIMIT_S`].
    pub fn duration_limit(seconds: f64) -> Result<f64, EngineError> {
        if seconds.is_finite() && seconds > 0.0 && seconds <= MAX_DURATION_LIMIT_S {
            Ok(seconds)
        } else {
            Err(EngineError::invalid(
                "argument",
                format!(
                    "--max-duration must be above 0 and at most {MAX_DURATION_LIMIT_S} s, not \
                     {seconds}"
                ),
            ))
        }
    }

    /// The prompt without surrounding space, if it is not empty and within
    /// `max_prompt_chars`. Cheap, so servers call it before copying or hashing a request.
    pub fn check_prompt<'a>(&self, prompt: &'a str) -> Result<&'a str, EngineError> {
        let prompt = prompt.trim();
        if prompt.is_empty() {
            return Err(EngineError::invalid("prompt", "must not be empty"));
        }
        let chars = prompt.chars().count();
        if chars > self.max_prompt_chars {
            return Err(EngineError::invalid(
                "prompt",
                format!(
                    "{chars} characters is over the limit of {}",
                    self.max_prompt_chars
                ),
            ));
        }
        Ok(prompt)
    }
}
