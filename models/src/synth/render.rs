//! Plays a score: each event rendered by its instrument, placed in a stereo mix with its
//! level, pan and reverb send, one bar per step; then reverb, a fade at the end and
//! mastering.

use super::drums::render_drum;
use super::master::{master, Loudness, MasterError, MasterTarget};
use super::prompt::Instrument;
use super::reverb::Reverb;
use super::score::{DrumKind, Score, Voice};
use super::voices::render_instrument;
use crate::random::hash_name;

/// Level, pan (-1 left .. 1 right) and reverb send of a voice in the mix.
fn mix(voice: Voice) -> (f32, f32, f32) {
    match voice {
        // Drum sounds come out at their kit level already; only place them.
        Voice::Drum(d) => match d {
            DrumKind::Kick | DrumKind::Kick808 => (1.0, 0.0, 0.03),
            DrumKind::Snare => (1.0, 0.05, 0.18),
            DrumKind::Clap => (1.0, -0.05, 0.2),
            DrumKind::Rim => (1.0, 0.15, 0.1),
            DrumKind::ClosedHat => (1.0, 0.3, 0.05),
            DrumKind::OpenHat => (1.0, 0.3, 0.1),
            DrumKind::Ride => (1.0, -0.3, 0.1),
            DrumKind::Crash => (1.0, 0.35, 0.15),
            DrumKind::Tom => (1.0, -0.15, 0.25),
            DrumKind::Shaker => (1.0, 0.45, 0.1),
        },
        Voice::Instrument(i) => match i {
            Instrument::Drums => (0.0, 0.0, 0.0),
            Instrument::Bass => (0.75, 0.0, 0.02),
            Instrument::Piano => (0.55, -0.15, 0.22),
            Instrument::ElectricPiano => (0.55, -0.2, 0.22),
            Instrument::Guitar => (0.5, 0.35, 0.18),
            Instrument::Strings => (0.4, -0.3, 0.35),
            Instrument::Pad => (0.3, 0.25, 0.4),
            Instrument::Lead => (0.45, 0.1, 0.25),
            Instrument::Organ => (0.3, -0.35, 0.2),
        },
    }
}

/// Length of the fade at the end of the piece.
const FADE_S: f64 = 1.5;

/// A score being rendered, a bar at a time.
pub struct Renderer {
    score: Score,
    sample_rate: u32,
    seed: u64,
    /// Dry mix, left and right.
    dry: [Vec<f32>; 2],
    /// Reverb send bus, left and right.
    send: [Vec<f32>; 2],
    next_event: usize,
    bars_done: usize,
    total_bars: usize,
    /// Frames already handed out as previews.
    previewed: usize,
}

/// How far before a bar line preview audio stops: humanised notes of the next bar may
/// start up to a few standard deviations early.
const PREVIEW_MARGIN_S: f64 = 0.05;

/// Level of previews (the dry mix before reverb and mastering), chosen to sit near the
/// mastered loudness for typical arrangements.
const PREVIEW_GAIN: f32 = 0.6;

impl Renderer {
    /// Prepares to render `score` at `sample_rate`; the seed varies noisy sounds.
    pub fn new(score: Score, sample_rate: u32, seed: u64) -> Self {
        let frames = (score.duration_s * sample_rate as f64).round() as usize;
        let bar_s = score.beat_s() * score.beats_per_bar as f64;
        let total_bars = ((score.duration_s - score.first_beat_s.max(0.0)) / bar_s)
            .ceil()
            .max(1.0) as usize;
        Self {
            score,
            sample_rate,
            seed,
            dry: [vec![0.0; frames], vec![0.0; frames]],
            send: [vec![0.0; frames], vec![0.0; frames]],
            next_event: 0,
            bars_done: 0,
            total_bars,
            previewed: 0,
        }
    }

    /// The score being rendered.
    pub fn score(&self) -> &Score {
        &self.score
    }

    /// Steps (bars) in total.
    pub fn total_steps(&self) -> usize {
        self.total_bars
    }

    /// Steps done.
    pub fn steps_done(&self) -> usize {
        self.bars_done
    }

    /// Renders every event that starts within the next bar.
    pub fn step(&mut self) {
        if self.bars_done >= self.total_bars {
            return;
        }
        self.bars_done += 1;
        let bar_s = self.score.beat_s() * self.score.beats_per_bar as f64;
        let until = if self.bars_done == self.total_bars {
            f64::INFINITY
        } else {
            self.score.first_beat_s + self.bars_done as f64 * bar_s
        };
        let frames = self.dry[0].len();
        while let Some(event) = self.score.events.get(self.next_event).copied() {
            if event.start_s >= until {
                break;
            }
            let index = self.next_event;
            self.next_event += 1;
            let start = (event.start_s * self.sample_rate as f64).round() as usize;
            if start >= frames {
                continue;
            }
            let seed = self.seed ^ hash_name(&format!("event{index}"));
            let sound = match event.voice {
                Voice::Drum(kind) => render_drum(
                    kind,
                    event.pitch,
                    event.velocity,
                    event.duration_s as f32,
                    self.sample_rate,
                    seed,
                ),
                Voice::Instrument(i) => render_instrument(
                    i,
                    event.pitch,
                    event.velocity,
                    event.duration_s as f32,
                    self.sample_rate,
                    seed,
                ),
            };
            let (level, pan, send) = mix(event.voice);
            let angle = (pan + 1.0) * std::f32::consts::FRAC_PI_4;
            let gains = [level * angle.cos(), level * angle.sin()];
            let end = (start + sound.len()).min(frames);
            for ((dry, bus), gain) in self.dry.iter_mut().zip(self.send.iter_mut()).zip(gains) {
                let dry = &mut dry[start..end];
                let bus = &mut bus[start..end];
                for ((d, b), &x) in dry.iter_mut().zip(bus.iter_mut()).zip(&sound) {
                    let y = x * gain;
                    *d += y;
                    *b += y * send;
                }
            }
        }
    }

    /// Audio that no later step will change, since the last call: `(first frame, [left,
    /// right])`. It is the dry mix before reverb and mastering, so a listener hears the
    /// piece while it renders; the finished file is mastered.
    pub fn take_preview(&mut self) -> Option<(usize, Vec<Vec<f32>>)> {
        let frames = self.dry[0].len();
        let ready = if self.bars_done >= self.total_bars {
            frames
        } else {
            let bar_s = self.score.beat_s() * self.score.beats_per_bar as f64;
            let until_s =
                self.score.first_beat_s + self.bars_done as f64 * bar_s - PREVIEW_MARGIN_S;
            ((until_s.max(0.0) * self.sample_rate as f64) as usize).min(frames)
        };
        if ready <= self.previewed {
            return None;
        }
        let start = self.previewed;
        self.previewed = ready;
        let channels = self
            .dry
            .iter()
            .map(|c| {
                c[start..ready]
                    .iter()
                    .map(|x| (x * PREVIEW_GAIN).clamp(-1.0, 1.0))
                    .collect()
            })
            .collect();
        Some((start, channels))
    }

    /// Renders what is left, adds the reverb, fades the ending and masters the mix.
    pub fn finish(
        mut self,
        target: MasterTarget,
    ) -> Result<(Vec<Vec<f32>>, Loudness), MasterError> {
        while self.bars_done < self.total_bars {
            self.step();
        }
        let [mut left, mut right] = self.dry;
        let mut reverb = Reverb::new(self.sample_rate, 0.75, 0.45, 1.0);
        reverb.process(&self.send[0], &self.send[1], &mut left, &mut right);
        let frames = left.len();
        let fade = ((FADE_S * self.sample_rate as f64) as usize).min(frames);
        for i in 0..fade {
            let g = 0.5 + 0.5 * (std::f32::consts::PI * (i + 1) as f32 / fade as f32).cos();
            left[frames - fade + i] *= g;
            right[frames - fade + i] *= g;
        }
        let mut channels = vec![left, right];
        let loudness = master(&mut channels, self.sample_rate, target)?;
        Ok((channels, loudness))
    }
}
