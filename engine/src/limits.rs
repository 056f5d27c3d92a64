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
    /// Largest song upload for a cover, in bytes (default 50 MiB).
    pub max_song_bytes: usize,
    /// Longest song to cover, in seconds (default 600).
    pub max_song_seconds: f64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_prompt_chars: 2000,
            max_prompt_tokens: 256,
            max_duration_s: 30.0,
            max_temperature: 5.0,
            max_guidance_scale: 20.0,
            max_song_bytes: 50 * 1024 * 1024,
            max_song_seconds: 600.0,
        }
    }
}
