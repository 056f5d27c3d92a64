//! Covers with the built-in synth, of test songs made here with known tempo, key and
//! chords: the cover keeps the tempo within 2 %, the key, and at least 80 % of the beat
//! chords; unusable uploads are refused with a clear error.

use std::io::Cursor;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use son1k_engine::cover::{load_song, ANALYSIS_RATE};
use son1k_engine::synth::SynthModel;
use son1k_engine::{generate, CoverRequest, GenerateRequest, Length, Limits, MusicModel};
use son1k_models::analysis::analyse;
use son1k_models::theory::{midi_to_hz, Chord, ChordQuality, Key, Mode};

/// A test song: one chord per bar as sustained harmonic tones, a bass root, a kick on every
/// beat and a simple melody of chord tones, at `bpm`.
struct TestSong {
    bpm: f64,
    key: Key,
    chords: Vec<Chord>,
}

impl TestSong {
    const RATE: u32 = 32_000;

    fn chord_at(&self, t: f64) -> Chord {
        let bar = (t / (4.0 * 60.0 / self.bpm)).floor().max(0.0) as usize;
        self.chords[bar % self.chords.len()]
    }

    fn render(&self, seconds: f64) -> Vec<f32> {
        let n = (seconds * Self::RATE as f64) as usize;
        let beat_s = 60.0 / self.bpm;
        let mut out = vec![0.0f32; n];
        for (i, sample) in out.iter_mut().enumerate() {
            let t = i as f64 / Self::RATE as f64;
            let chord = self.chord_at(t);
            let beat_phase = (t / beat_s).fract() * beat_s;
            let mut x = 0.0f64;
            for (k, &interval) in chord.intervals().iter().enumerate() {
                let f = midi_to_hz(60.0 + ((chord.root + interval) % 12) as f32) as f64;
                for h in 1..=4 {
                    x += 0.12 / h as f64
                        * (std::f64::consts::TAU * f * h as f64 * t + k as f64).sin();
                }
            }
            let bass = midi_to_hz(36.0 + chord.root as f32) as f64;
            x += 0.25 * (std::f64::consts::TAU * bass * t).sin();
            // Melody: the chord's tones in turn, one per beat, an octave up.
            let beat = (t / beat_s).floor() as usize;
            let tones = chord.intervals();
            let tone = (chord.root + tones[beat % tones.len()]) % 12;
            let f = midi_to_hz(72.0 + tone as f32) as f64;
            x += 0.2 * (-3.0 * beat_phase).exp() * (std::f64::consts::TAU * f * t).sin();
            // Kick: a decaying low thump on every beat.
            x += 0.8
                * (-40.0 * beat_phase).exp()
                * (std::f64::consts::TAU * 55.0 * beat_phase).sin();
            *sample = (0.35 * x) as f32;
        }
        out
    }

    fn wav(&self, seconds: f64) -> Vec<u8> {
        let spec = hound::WavSpec {
            channels: 1,
            sample_rate: Self::RATE,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let mut bytes = Cursor::new(Vec::new());
        let mut writer = hound::WavWriter::new(&mut bytes, spec).unwrap();
        for x in self.render(seconds) {
            writer
                .write_sample((x.clamp(-1.0, 1.0) * 32767.0) as i16)
                .unwrap();
        }
        writer.finalize().unwrap();
        bytes.into_inner()
    }
}

fn triad(root: u8, minor: bool) -> Chord {
    Chord::triad(
        root,
        if minor {
            ChordQuality::Minor
        } else {
            ChordQuality::Major
        },
    )
}

fn test_songs() -> Vec<TestSong> {
    vec![
        // G major: G D Em C
        TestSong {
            bpm: 100.0,
            key: Key {
                tonic: 7,
                mode: Mode::Major,
            },
            chords: vec![
                triad(7, false),
                triad(2, false),
                triad(4, true),
                triad(0, false),
            ],
        },
        // A minor: Am F C G
        TestSong {
            bpm: 92.0,
            key: Key {
                tonic: 9,
                mode: Mode::Minor,
            },
            chords: vec![
                triad(9, true),
                triad(5, false),
                triad(0, false),
                triad(7, false),
            ],
        },
        // D major: D G A D
        TestSong {
            bpm: 120.0,
            key: Key {
                tonic: 2,
                mode: Mode::Major,
            },
            chords: vec![
                triad(2, false),
                triad(7, false),
                triad(9, false),
                triad(2, false),
            ],
        },
    ]
}

#[test]
fn covers_keep_tempo_key_and_beat_chords() {
    let limits = Limits::default();
    let model = SynthModel::default();
    for (song, style) in test_songs()
        .iter()
        .zip(["rock with guitars", "lofi with piano", "house"])
    {
        let bytes = song.wav(24.0);
        let decoded = load_song(
            &bytes,
            Some("song.wav"),
            &limits,
            ANALYSIS_RATE,
            &AtomicBool::new(false),
        )
        .unwrap();
        let request = GenerateRequest {
            seed: Some(5),
            cover: Some(CoverRequest::new(Arc::new(decoded))),
            ..GenerateRequest::new(style, Length::Seconds(24.0))
        }
        .validate(&limits, model.info())
        .unwrap();
        let output = generate(&model, &request, &AtomicBool::new(false), &mut |_| {}).unwrap();
        let audio = &output.audio;
        let mono: Vec<f32> = audio.channels[0]
            .iter()
            .zip(&audio.channels[1])
            .map(|(l, r)| 0.5 * (l + r))
            .collect();
        let cover = analyse(&mono, audio.sample_rate).unwrap();
        let tempo_error = (cover.tempo_bpm - song.bpm).abs() / song.bpm;
        assert!(
            tempo_error <= 0.02,
            "{style}: cover at {:.2} bpm, song at {}",
            cover.tempo_bpm,
            song.bpm
        );
        assert_eq!(cover.key, song.key, "{style}: cover key");
        // Chords of the cover's beats against the song's chord at the same time (the beat's
        // middle), skipping the final fade.
        let beat_s = 60.0 / cover.tempo_bpm;
        let judged: Vec<bool> = cover
            .beat_times_s
            .iter()
            .zip(&cover.beat_chords)
            .filter(|(t, _)| **t + beat_s < 22.0)
            .map(|(t, c)| c.as_triad() == song.chord_at(t + beat_s / 2.0))
            .collect();
        let kept = judged.iter().filter(|&&ok| ok).count() as f64 / judged.len() as f64;
        assert!(
            kept >= 0.8,
            "{style}: only {:.0} % of beat chords kept",
            kept * 100.0
        );
    }
}

#[test]
fn every_common_format_decodes_to_the_same_song() {
    // The same 8 s excerpt in four codecs: each decodes to its full length, and the analysis
    // hears the same tempo (100 bpm) and the same key as in the lossless FLAC.
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/songs");
    let mut keys = Vec::new();
    for ext in ["flac", "mp3", "ogg", "m4a"] {
        let name = format!("pop-g-major-100bpm.{ext}");
        let bytes = std::fs::read(dir.join(&name)).unwrap();
        let song = load_song(
            &bytes,
            Some(&name),
            &Limits::default(),
            ANALYSIS_RATE,
            &AtomicBool::new(false),
        )
        .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(
            (song.duration_s() - 8.0).abs() < 0.1,
            "{name}: {} s",
            song.duration_s()
        );
        let analysis = analyse(&song.mono, song.sample_rate).unwrap();
        assert!(
            (analysis.tempo_bpm - 100.0).abs() <= 2.0,
            "{name}: {} bpm",
            analysis.tempo_bpm
        );
        keys.push(analysis.key);
    }
    assert!(keys.iter().all(|k| *k == keys[0]), "{keys:?}");
}
