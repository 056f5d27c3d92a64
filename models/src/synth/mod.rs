//! The built-in synth: a composer and synthesizer driven by the prompt, needing no weights.
//! Prompt understanding, style, composition, arrangement, instruments, reverb, mastering;
//! rendered a bar per step so it runs through the engine like any model.

pub mod arrange;
pub mod compose;
pub mod cover;
pub mod drums;
pub mod dsp;
pub mod master;
pub mod prompt;
pub mod render;
pub mod reverb;
pub mod score;
pub mod style;
pub mod voices;

use compose::{write_lead_sheet, LeadSheet, BEATS_PER_BAR};
use master::{Loudness, MasterError, MasterTarget};
use prompt::understand;
use render::Renderer;
use style::{plan, Plan};

/// The synth's output sample rate.
pub const SAMPLE_RATE: u32 = 44_100;

/// One synth piece being made.
pub struct SynthJob {
    plan: Plan,
    renderer: Renderer,
}

impl SynthJob {
    /// Composes a piece of `duration_s` seconds for `prompt`, fixed by `seed`.
    pub fn from_prompt(prompt: &str, duration_s: f64, seed: u64) -> Self {
        let plan = plan(&understand(prompt), seed);
        let bar_s = 60.0 / plan.tempo_bpm * BEATS_PER_BAR as f64;
        let bars = (duration_s / bar_s).ceil().max(1.0) as usize;
        let sheet = write_lead_sheet(&plan, bars, seed);
        Self::from_lead_sheet(plan, &sheet, duration_s, seed)
    }

    /// A cover of an analysed song in the style `prompt` asks for: the song's tempo, key,
    /// chords and melody, re-rendered.
    pub fn cover(
        prompt: &str,
        song: &crate::analysis::SongAnalysis,
        duration_s: f64,
        seed: u64,
    ) -> Self {
        let plan = cover::cover_plan(prompt, song, seed);
        let sheet = cover::lead_sheet(song, duration_s);
        Self::from_lead_sheet(plan, &sheet, duration_s, seed)
    }

    /// Arranges an existing lead sheet (a cover's) in the plan's style.
    pub fn from_lead_sheet(plan: Plan, sheet: &LeadSheet, duration_s: f64, seed: u64) -> Self {
        let score = arrange::arrange(sheet, &plan, duration_s, seed);
        Self {
            renderer: Renderer::new(score, SAMPLE_RATE, seed),
            plan,
        }
    }

    /// The resolved choices, for the result metadata: genre, mood, tempo, key, instruments.
    pub fn understood(&self) -> Vec<(String, String)> {
        let p = &self.plan;
        let mut out = vec![
            ("genre".to_string(), p.genre.name().to_string()),
            ("tempo_bpm".to_string(), format!("{:.1}", p.tempo_bpm)),
            ("key".to_string(), p.key.name()),
            (
                "instruments".to_string(),
                p.instruments
                    .iter()
                    .map(|i| i.name())
                    .collect::<Vec<_>>()
                    .join(", "),
            ),
        ];
        if let Some(mood) = p.mood {
            out.push(("mood".to_string(), mood.name().to_string()));
        }
        let chords: Vec<String> = self
            .renderer
            .score()
            .chords
            .iter()
            .step_by(BEATS_PER_BAR)
            .take(8)
            .map(|c| c.name())
            .collect();
        out.push(("progression".to_string(), chords.join(" ")));
        out
    }

    /// The resolved plan.
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// Steps (bars) in total.
    pub fn total_steps(&self) -> usize {
        self.renderer.total_steps()
    }

    /// Steps done.
    pub fn steps_done(&self) -> usize {
        self.renderer.steps_done()
    }

    /// Renders one bar.
    pub fn step(&mut self) {
        self.renderer.step();
    }

    /// Audio ready since the last call, for listening while it renders: see
    /// [`Renderer::take_preview`].
    pub fn take_preview(&mut self) -> Option<(usize, Vec<Vec<f32>>)> {
        self.renderer.take_preview()
    }

    /// Finishes and masters to -14 LUFS, true peak at most -1 dBTP: stereo channels.
    pub fn finish(self) -> Result<(Vec<Vec<f32>>, Loudness), MasterError> {
        self.renderer.finish(MasterTarget::default())
    }
}
