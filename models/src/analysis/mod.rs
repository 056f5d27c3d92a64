//! Music analysis of a mono recording: tempo and beat grid, key, the chord of every beat and
//! the main melody. Covers use it to re-render a song in another style; tests use it to check
//! what the synth played.
//!
//! Conventions: the tempo is the bpm of the quarter-note beat, searched in 60–180 bpm (a
//! prior centred on 125 bpm settles halves and doubles the metre leaves open); times are in
//! seconds from the start of the input; pitch classes count from C = 0; melody pitches are
//! MIDI numbers.

pub mod chords;
pub mod key;
pub mod melody;
pub mod spectrum;
pub mod tempo;

pub use melody::MelodyNote;
pub use tempo::TempoEstimate;

use crate::theory::{Chord, Key};

/// Shortest input `analyse` accepts, in seconds.
pub const MIN_SECONDS: f64 = 4.0;
/// Lowest and highest sample rate `analyse` accepts, in Hz.
pub const SAMPLE_RATE_RANGE: (u32, u32) = (8_000, 384_000);
/// Peak level below which the input counts as silent (-60 dBFS).
pub const SILENCE_PEAK: f32 = 0.001;

/// Why a recording could not be analysed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AnalysisError {
    /// Too little audio to find a tempo.
    #[error("the audio is too short to analyse: {seconds:.1} s (at least {min:.0} s needed)")]
    TooShort {
        /// Length of the input.
        seconds: f64,
        /// The minimum, [`MIN_SECONDS`].
        min: f64,
    },
    /// Nothing audible.
    #[error("the audio is silent (its peak is below -60 dBFS)")]
    Silent,
    /// Samples that are not numbers.
    #[error("the audio contains invalid samples (NaN or infinity)")]
    InvalidSamples,
    /// A sample rate outside [`SAMPLE_RATE_RANGE`].
    #[error("unsupported sample rate {rate} Hz (supported: {min}..={max} Hz)")]
    UnsupportedSampleRate {
        /// The rate given.
        rate: u32,
        /// Lowest rate accepted.
        min: u32,
        /// Highest rate accepted.
        max: u32,
    },
    /// No regular pulse could be found.
    #[error("could not find a steady beat in the audio")]
    NoBeat,
}

/// Everything the analysis found in a song.
#[derive(Clone, Debug, PartialEq)]
pub struct SongAnalysis {
    /// Tempo of the quarter-note beat in beats per minute.
    pub tempo_bpm: f64,
    /// Time of every beat, in seconds, ascending.
    pub beat_times_s: Vec<f64>,
    /// The key of the whole song.
    pub key: Key,
    /// The triad heard from each beat to the next (one per entry of `beat_times_s`).
    pub beat_chords: Vec<Chord>,
    /// The main melody as notes, starts snapped to sixteenths of the beat grid.
    pub melody: Vec<MelodyNote>,
}

/// Analyses a mono recording: tempo, beats, key, chords per beat and melody.
pub fn analyse(mono: &[f32], sample_rate: u32) -> Result<SongAnalysis, AnalysisError> {
    let (min, max) = SAMPLE_RATE_RANGE;
    if !(min..=max).contains(&sample_rate) {
        return Err(AnalysisError::UnsupportedSampleRate {
            rate: sample_rate,
            min,
            max,
        });
    }
    let seconds = mono.len() as f64 / f64::from(sample_rate);
    if seconds < MIN_SECONDS {
        return Err(AnalysisError::TooShort {
            seconds,
            min: MIN_SECONDS,
        });
    }
    if mono.iter().any(|s| !s.is_finite()) {
        return Err(AnalysisError::InvalidSamples);
    }
    if mono.iter().all(|s| s.abs() < SILENCE_PEAK) {
        return Err(AnalysisError::Silent);
    }
    let tempo = tempo::estimate_tempo(mono, sample_rate).ok_or(AnalysisError::NoBeat)?;
    let chroma = spectrum::chromagram(mono, sample_rate);
    let beat_chords = chords::chords_from_chroma(&chroma, &tempo.beat_times_s, seconds);
    let key = key::key_with_chords(&key::chroma_profile(&chroma), &beat_chords);
    let melody = melody::extract_melody(mono, sample_rate, &tempo.beat_times_s);
    Ok(SongAnalysis {
        tempo_bpm: tempo.bpm,
        beat_times_s: tempo.beat_times_s,
        key,
        beat_chords,
        melody,
    })
}

/// Synthetic songs with known tempo, key, chords and melody, for the analysis tests.
#[cfg(test)]
pub(crate) mod test_audio {
    use super::MelodyNote;
    use crate::theory::{midi_to_hz, Chord, Key};
    use std::f64::consts::TAU;

    /// The drum pattern (or its absence) of a test song.
    #[derive(Clone, Copy, Debug, PartialEq)]
    pub(crate) enum Drums {
        /// No drums: the chords are arpeggiated in eighths on a piano.
        None,
        /// Kick on every beat, clap on 2 and 4, open hat on the off-beats (house).
        FourOnFloor,
        /// Kick 1 and 3, snare 2 and 4, eighth hats (rock, pop).
        Backbeat,
        /// Kick 1, snare 3, sixteenth hats (half-time trap).
        Trap,
        /// Kick every beat, snare on the dembow offsets (reggaeton).
        Dembow,
        /// Syncopated kick, snare 2 and 4, swung sixteenth hats (lo-fi, funk).
        Swung,
        /// Kick 1 and the "and" of 2, snare 2 and 4, swung eighth hats (boom bap).
        BoomBap,
        /// Ride on every beat plus the swung "and" of 2 and 4, hi-hat on 2 and 4 (jazz).
        Ride,
    }

    /// A synthetic song and its ground truth: one chord per bar, melody as (start s,
    /// duration s, MIDI pitch).
    pub(crate) struct Song {
        pub sample_rate: u32,
        pub bpm: f64,
        pub key: Key,
        pub bars: usize,
        pub progression: Vec<Chord>,
        pub drums: Drums,
        pub melody: Vec<(f64, f64, f32)>,
    }

    /// A tiny deterministic generator of numbers in [0, 1).
    pub(crate) struct Lcg(pub u64);
    impl Lcg {
        pub(crate) fn next(&mut self) -> f64 {
            let x = self.0.wrapping_mul(6364136223846793005);
            self.0 = x.wrapping_add(1442695040888963407);
            (self.0 >> 11) as f64 / (1u64 << 53) as f64
        }
    }

    /// Loudness, harmonic amplitudes and decay time (s) of an instrument.
    struct Timbre(f64, &'static [f64], f64);
    const BASS: Timbre = Timbre(0.25, &[1.0, 0.6, 0.3], 0.6);
    const PAD: Timbre = Timbre(0.08, &[1.0, 0.4, 0.2, 0.1], 8.0);
    const PIANO: Timbre = Timbre(0.16, &[1.0, 0.5, 0.33, 0.25, 0.2, 0.16], 0.4);
    const LEAD: Timbre = Timbre(0.12, &[1.0, 0.5, 0.33, 0.25, 0.2, 0.16], 3.0);
    const RHYTHMS: [&[f64]; 4] = [
        &[2.0, 1.0, 1.0],
        &[1.0, 1.0, 2.0],
        &[1.5, 0.5, 1.0, 1.0],
        &[1.0; 4],
    ];

    impl Song {
        /// ~12 s in `key` cycling through diatonic triads on `degrees`, one per bar, with a
        /// lead melody of chord tones (MIDI 72..84).
        pub(crate) fn new(bpm: f64, key: Key, degrees: &[usize], drums: Drums) -> Song {
            let chord = |&d: &usize| key.diatonic_chord(d, false);
            let progression: Vec<Chord> = degrees.iter().map(chord).collect();
            let beat = 60.0 / bpm;
            let bars = (12.0 / (4.0 * beat)).ceil() as usize;
            let mut rng = Lcg(bpm as u64 * 7919 + u64::from(key.tonic));
            let mut melody = vec![];
            for bar in 0..bars {
                let pcs = progression[bar % progression.len()].pitch_classes();
                let mut at = 0.0;
                for &len in RHYTHMS[(rng.next() * 4.0) as usize % 4] {
                    let pc = pcs[(rng.next() * 3.0) as usize % 3];
                    let start = (bar as f64 * 4.0 + at) * beat;
                    melody.push((start, len * beat * 0.9, 72.0 + f32::from(pc)));
                    at += len;
                }
            }
            let sample_rate = 22_050;
            Song {
                sample_rate,
                bpm,
                key,
                bars,
                progression,
                drums,
                melody,
            }
        }

        fn beat_s(&self) -> f64 {
            60.0 / self.bpm
        }

        /// The chord sounding at time `t`.
        pub(crate) fn chord_at(&self, t: f64) -> Chord {
            let bar = (t / (4.0 * self.beat_s())).max(0.0) as usize;
            self.progression[bar % self.progression.len()]
        }

        /// Fraction of detected beats (with a successor) whose chord is the one played there.
        pub(crate) fn chord_accuracy(&self, beats: &[f64], chords: &[Chord]) -> f64 {
            let end = self.bars as f64 * 4.0 * self.beat_s();
            let (mut right, mut total) = (0, 0);
            for (w, c) in beats.windows(2).zip(chords).filter(|(w, _)| w[1] < end) {
                total += 1;
                right += usize::from(*c == self.chord_at(0.5 * (w[0] + w[1])));
            }
            right as f64 / total.max(1) as f64
        }

        /// (share of detected note time on the right pitch, share of melody time found),
        /// sampled every 10 ms.
        pub(crate) fn melody_accuracy(&self, notes: &[MelodyNote]) -> (f64, f64) {
            let truth = |t: f64| self.melody.iter().find(|m| t >= m.0 && t < m.0 + m.1);
            let found = |t: f64| {
                notes
                    .iter()
                    .find(|n| t >= n.start_s && t < n.start_s + n.duration_s)
            };
            let (mut right, mut voiced, mut melody) = (0.0, 0.0, 0.0);
            for k in 0..(self.bars as f64 * 4.0 * self.beat_s() * 100.0) as usize {
                let t = k as f64 / 100.0;
                let (f, g) = (found(t).map(|n| n.pitch), truth(t).map(|m| m.2));
                voiced += f64::from(u8::from(f.is_some()));
                melody += f64::from(u8::from(g.is_some()));
                right += f64::from(u8::from(f.is_some() && f == g));
            }
            (right / f64::max(voiced, 1.0), right / f64::max(melody, 1.0))
        }

        /// Renders the song as mono audio.
        pub(crate) fn render(&self) -> Vec<f32> {
            let sr = f64::from(self.sample_rate);
            let beat = self.beat_s();
            let mut out = vec![0.0f32; ((self.bars as f64 * 4.0 * beat + 1.0) * sr) as usize];
            let mut rng = Lcg(self.bpm as u64 + 17);
            for bar in 0..self.bars {
                let chord = self.progression[bar % self.progression.len()];
                let t0 = bar as f64 * 4.0 * beat;
                let pcs = chord.pitch_classes();
                let root = 36.0 + f64::from(chord.root);
                for half in [0.0, 2.0] {
                    tone(
                        &mut out,
                        sr,
                        (t0 + half * beat, 2.0 * beat, root),
                        1.0,
                        &BASS,
                    );
                }
                if self.drums == Drums::None {
                    let notes = [pcs[0], pcs[2], pcs[0] + 12, pcs[1] + 12];
                    for i in 0..8 {
                        let (at, pitch) = (t0 + i as f64 * beat / 2.0, f64::from(notes[i % 4]));
                        let gain = if i % 2 == 0 { 1.0 } else { 0.625 };
                        tone(&mut out, sr, (at, beat, 48.0 + pitch), gain, &PIANO);
                    }
                } else {
                    for &pc in &pcs {
                        let pitch = 55.0 + f64::from((pc + 5) % 12);
                        tone(&mut out, sr, (t0, 4.0 * beat, pitch), 1.0, &PAD);
                    }
                    self.drum_bar(&mut out, sr, t0, &mut rng);
                }
            }
            for &(start, dur, midi) in &self.melody {
                tone(&mut out, sr, (start, dur, f64::from(midi)), 1.0, &LEAD);
            }
            out
        }

        fn drum_bar(&self, out: &mut [f32], sr: f64, t0: f64, rng: &mut Lcg) {
            let sixteenth = self.beat_s() / 4.0;
            let eighths: Vec<usize> = (0..16).step_by(2).collect();
            let (kicks, snares, hats): (&[usize], &[usize], Vec<usize>) = match self.drums {
                Drums::None => return,
                Drums::FourOnFloor => (&[0, 4, 8, 12], &[4, 12], vec![2, 6, 10, 14]),
                Drums::Backbeat => (&[0, 8, 10], &[4, 12], eighths),
                Drums::Trap => (&[0, 7, 11], &[8], (0..16).collect()),
                Drums::Dembow => (&[0, 4, 8, 12], &[3, 6, 11, 14], eighths),
                Drums::Swung => (&[0, 7, 10], &[4, 12], (0..16).collect()),
                Drums::BoomBap => (&[0, 6, 10], &[4, 12], eighths),
                Drums::Ride => (&[0, 8], &[4, 12], vec![0, 4, 6, 8, 12, 14]),
            };
            let mut at = |pos: usize| {
                let swing = match self.drums {
                    Drums::Swung if pos % 2 == 1 => sixteenth / 3.0,
                    Drums::BoomBap | Drums::Ride if pos % 4 == 2 => 2.0 * sixteenth / 3.0,
                    _ => 0.0,
                };
                t0 + pos as f64 * sixteenth + swing + (rng.next() - 0.5) * 0.006
            };
            for &p in kicks {
                burst(out, sr, at(p), 0.3, 0.0, |x, _| {
                    0.9 * (TAU * (45.0 * x + 3.15 * (1.0 - (-x / 0.03).exp()))).sin()
                        * (-x / 0.12).exp()
                });
            }
            for &p in snares {
                burst(out, sr, at(p), 0.25, 1000.0, |x, n| {
                    (0.4 * n + 0.3 * (TAU * 190.0 * x).sin()) * (-x / 0.07).exp()
                });
            }
            let open = if self.drums == Drums::FourOnFloor {
                0.08
            } else {
                0.02
            };
            for &p in &hats {
                let v = if p % 4 == 0 { 0.22 } else { 0.14 };
                burst(out, sr, at(p), 0.15, 6000.0, |x, n| {
                    v * n * (-x / open).exp()
                });
            }
        }
    }

    /// Adds a harmonic tone (start s, held s, MIDI pitch) with a 5 ms attack, exponential
    /// decay and 30 ms release.
    fn tone(
        out: &mut [f32],
        sr: f64,
        (start, dur, midi): (f64, f64, f64),
        gain: f64,
        timbre: &Timbre,
    ) {
        let Timbre(amp, harmonics, decay) = *timbre;
        let f0 = f64::from(midi_to_hz(midi as f32));
        let end = start + dur + 0.03;
        for i in (start * sr) as usize..((end * sr) as usize).min(out.len()) {
            let x = i as f64 / sr - start;
            let env =
                (x / 0.005).min(1.0) * (-x / decay).exp() * ((end - i as f64 / sr) / 0.03).min(1.0);
            let partials = harmonics
                .iter()
                .zip(1..)
                .filter(|(_, h)| f0 * f64::from(*h) < sr * 0.45);
            let s: f64 = partials
                .map(|(g, h)| g * (TAU * f0 * f64::from(h) * x).sin())
                .sum();
            out[i] += (gain * amp * env * s) as f32;
        }
    }

    /// Adds `len` seconds of `f(time since start, noise)` from `start`, the noise white above
    /// `cutoff` Hz (one-pole high-pass).
    fn burst(
        out: &mut [f32],
        sr: f64,
        start: f64,
        len: f64,
        cutoff: f64,
        f: impl Fn(f64, f64) -> f64,
    ) {
        let mut rng = Lcg((start * 1e6) as u64);
        let a = 1.0 - (-TAU * cutoff / sr).exp();
        let mut low = 0.0;
        for i in (start.max(0.0) * sr) as usize..((start + len) * sr) as usize {
            let Some(slot) = out.get_mut(i) else { break };
            let white = rng.next() * 2.0 - 1.0;
            low += a * (white - low);
            *slot += f(i as f64 / sr - start, 1.5 * (white - low)) as f32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_audio::{Drums, Song};
    use super::*;
    use crate::theory::Mode;

    #[test]
    fn rejects_unusable_input_with_clear_errors() {
        let err = analyse(&[0.1; 8000], 16_000).unwrap_err();
        assert!(matches!(err, AnalysisError::TooShort { .. }));
        assert!(err.to_string().contains("too short"), "{err}");
        assert_eq!(analyse(&[0.0; 160_000], 16_000), Err(AnalysisError::Silent));
        let mut nan = vec![0.1; 160_000];
        nan[5] = f32::NAN;
        assert_eq!(analyse(&nan, 16_000), Err(AnalysisError::InvalidSamples));
        let err = analyse(&nan, 100).unwrap_err();
        assert!(matches!(err, AnalysisError::UnsupportedSampleRate { .. }));
    }

    #[test]
    fn analyses_whole_songs() {
        let key = |tonic, mode| Key { tonic, mode };
        let cases = [
            (
                112.0,
                key(2, Mode::Major),
                [0usize, 5, 3, 4],
                Drums::Backbeat,
            ),
            (90.0, key(9, Mode::Minor), [0, 5, 2, 6], Drums::Dembow),
            (142.0, key(4, Mode::Minor), [0, 3, 4, 0], Drums::Trap),
        ];
        for (bpm, key, degrees, drums) in cases {
            let song = Song::new(bpm, key, &degrees, drums);
            let a = analyse(&song.render(), song.sample_rate).unwrap();
            let chords = song.chord_accuracy(&a.beat_times_s, &a.beat_chords);
            let (pitch, found) = song.melody_accuracy(&a.melody);
            let what = format!("{drums:?} at {bpm} in {}", key.name());
            eprintln!(
                "{what}: {:.2} bpm, {}, chords {chords:.2}, melody {pitch:.2}/{found:.2}",
                a.tempo_bpm,
                a.key.name()
            );
            assert!((a.tempo_bpm / bpm - 1.0).abs() < 0.01, "{}", a.tempo_bpm);
            assert_eq!(a.key, song.key);
            assert_eq!(a.beat_chords.len(), a.beat_times_s.len());
            assert!(chords >= 0.9, "{chords}");
            assert!(pitch >= 0.85 && found >= 0.8, "{pitch} {found}");
        }
    }
}
