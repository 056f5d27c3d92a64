//! The request limits, each a documented configuration value with its default.

/// Bounds every request is validated against. The model adds its own (positions,
/// vocabulary); the tighter bound applies.
#[derive(Clone, Debug, PartialEq)]
pub struct Limits {
    /// Longest prompt in characters (default 2000).
    pub max_prompt_chars: usize,
    /// Longest prompt in text-encoder tokens, end token included (default 256).
    pub max_prompt_tokens: usize,
    /// Longest audio in seconds (default 30, MusicGen's training length; a model with fewer
    /// positions lowers it).
    pub max_duration_s: f64,
    /// Highest sampling temperature (default 5).
    pub max_temperature: f32,
    /// Highest classifier-free guidance scale (default 20).
    pub max_guidance_scale: f32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_prompt_chars: 2000,
            max_prompt_tokens: 256,
            max_duration_s: 30.0,
            max_temperature: 5.0,
            max_guidance_scale: 20.0,
        }
    }
}
