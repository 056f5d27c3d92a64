//! Pitched instruments of the built-in synth: one mono note at a time, rendered from simple
//! physical or subtractive models (additive piano, FM electric piano, Karplus-Strong guitar,
//! detuned-saw strings and pads, organ drawbars) with no sample data or weights.

use super::dsp::{
    advance, decay_coef, fade_edges, fast_sin, normalize_peak, peak, saw, soft_clip, square, Adsr,
    Biquad, Noise, OnePole, Partials,
};
use super::prompt::Instrument;
use crate::random::Rng;
use crate::theory::midi_to_hz;

/// Moving filters and LFOs are updated every this many samples: a `sin_cos` per sample would
/// dominate the cost, and 16 samples (< 0.4 ms) is far below what the ear resolves as steps.
const CONTROL: usize = 16;

/// What every instrument model needs to know about the note.
struct Note {
    sr: f32,
    midi: f32,
    f0: f32,
    vel: f32,
    /// Index of the first released sample.
    hold: usize,
    /// Release time constant: the tail lasts about five of them.
    release_tau: f32,
}

/// Seconds a note of `instrument` keeps sounding after its held duration.
pub fn release_s(instrument: Instrument) -> f32 {
    match instrument {
        Instrument::Drums => 0.0,
        Instrument::Bass => 0.12,
        Instrument::Piano => 0.3,
        Instrument::ElectricPiano => 0.3,
        Instrument::Guitar => 0.15,
        Instrument::Strings => 0.5,
        Instrument::Pad => 1.5,
        Instrument::Lead => 0.15,
        Instrument::Organ => 0.06,
    }
}

/// Renders one note of `instrument` at MIDI `pitch` (fractional allowed; the fundamental is
/// exactly `midi_to_hz(pitch)`; pitches are clamped to 12 and to where f0 reaches a fifth of
/// the sample rate), `velocity` 0..1 (a velocity-1 note peaks around 0.5-0.8), held
/// `duration_s` seconds (at most 60), followed by its [`release_s`] tail. Mono, starting and
/// ending at zero, deterministic for a `seed`. `Drums`, a NaN pitch or a sample rate under
/// 8 kHz give an empty buffer.
pub fn render_instrument(
    instrument: Instrument,
    pitch: f32,
    velocity: f32,
    duration_s: f32,
    sample_rate: u32,
    seed: u64,
) -> Vec<f32> {
    if instrument == Instrument::Drums || sample_rate < 8000 || !pitch.is_finite() {
        return Vec::new();
    }
    let sr = sample_rate as f32;
    let fin = |x: f32, lo: f32, hi: f32| if x.is_finite() { x.clamp(lo, hi) } else { lo };
    // Keep the top harmonic-rich oscillators below Nyquist even at low sample rates.
    let midi = pitch.clamp(12.0, 69.0 + 12.0 * (0.2 * sr / 440.0).log2());
    let release = release_s(instrument);
    let hold = (fin(duration_s, 0.0, 60.0) * sr).round() as usize;
    let note = Note {
        sr,
        midi,
        f0: midi_to_hz(midi),
        vel: fin(velocity, 0.0, 1.0),
        hold,
        release_tau: release / 5.0,
    };
    let mut out = vec![0.0f32; hold + (release * sr).round() as usize];
    let mut rng = Rng::new(seed);
    match instrument {
        Instrument::Drums => {}
        Instrument::Bass => bass(&mut out, &note),
        Instrument::Piano => piano(&mut out, &note, &mut rng),
        Instrument::ElectricPiano => electric_piano(&mut out, &note),
        Instrument::Guitar => guitar(&mut out, &note, &mut rng),
        Instrument::Strings => strings(&mut out, &note, &mut rng),
        Instrument::Pad => pad(&mut out, &note, &mut rng),
        Instrument::Lead => lead(&mut out, &note),
        Instrument::Organ => organ(&mut out, &note, &mut rng),
    }
    fade_edges(&mut out, (0.001 * sr) as usize, (0.005 * sr) as usize);
    // Resonances can pile up on unlucky phase alignments; never hand the mixer a hot note.
    if peak(&out) > 0.95 {
        normalize_peak(&mut out, 0.95);
    }
    out
}

/// Cents to a frequency ratio.
fn cents(c: f32) -> f32 {
    (c / 1200.0).exp2()
}

/// Warm synth/electric bass: saw + square through a resonant lowpass whose plucky envelope
/// opens wider with velocity, plus a sine at the fundamental for weight.
fn bass(out: &mut [f32], n: &Note) {
    let (sr, dt, inv_dt) = (n.sr, n.f0 / n.sr, n.sr / n.f0);
    let mut amp = Adsr::new(sr, 0.004, 0.35, 0.55, n.release_tau);
    let (base, sweep) = ((n.f0 * 2.0).max(140.0), 300.0 + 2200.0 * n.vel);
    let mut filter = Biquad::lowpass(sr, base + sweep, 1.3);
    let (fcoef, mut fenv) = (control_coef(sr, 0.09), 1.0f32);
    // Clipping the asymmetric saw + square mix leaves a little DC; block it.
    let (mut ph, mut dc) = (0.0f32, OnePole::new(sr, 15.0));
    let mut sine = steady_sine(sr, n.f0, 1.0);
    for (i, s) in out.iter_mut().enumerate() {
        if i == n.hold {
            amp.release();
        }
        if i % CONTROL == 0 {
            filter.set_lowpass(sr, base + sweep * fenv, 1.3);
            fenv *= fcoef;
        }
        let osc = 0.6 * saw(ph, inv_dt) + 0.4 * square(ph, inv_dt);
        let sub = sine.next_each()[0];
        advance(&mut ph, dt);
        let lp = filter.process(osc);
        *s = 0.85 * dc.highpass(soft_clip(0.9 * lp + 0.6 * sub)) * amp.next_value() * n.vel;
    }
}

/// A single steady sine (slot 0 of a 4-wide bank) in phase with a phasor starting at 0.
fn steady_sine(sr: f32, hz: f32, amp: f32) -> Partials<4> {
    Partials::new(
        sr,
        &[hz, 0.0, 0.0, 0.0],
        &[amp, 0.0, 0.0, 0.0],
        &[f32::INFINITY; 4],
    )
}

/// Per-control-step multiplier of an exponential decay with time constant `tau` seconds.
fn control_coef(sr: f32, tau: f32) -> f32 {
    decay_coef(sr / CONTROL as f32, tau)
}

/// Additive piano: twelve slightly stretched partials (inharmonicity B = 0.0004, normalised
/// so the first partial is exact), higher ones quieter and shorter-lived, brighter when struck
/// harder; the lowest four doubled by a second string a fraction of a cent away (the slow
/// beating and two-stage decay of a real unison); a short hammer thump; dampers on release.
fn piano(out: &mut [f32], n: &Note, rng: &mut Rng) {
    const PARTIALS: usize = 12;
    const N: usize = PARTIALS + 4;
    const B: f32 = 0.0004;
    let sr = n.sr;
    let rolloff = 0.5 - 0.32 * n.vel;
    // Bass strings ring for many seconds, treble ones for well under one.
    let tau1 = 4.0 * (-(n.midi - 21.0) / 26.0).exp2();
    let (mut hz, mut amp, mut tau, mut damped) = ([0.0; N], [0.0; N], [0.0; N], [0.0; N]);
    for k in 0..PARTIALS {
        let h = (k + 1) as f32;
        hz[k] = n.f0 * h * ((1.0 + B * h * h) / (1.0 + B)).sqrt();
        amp[k] = (-rolloff * (h - 1.0)).exp() / h.powf(0.7) / (1.0 + (hz[k] / 6000.0).powi(2));
        tau[k] = tau1 / (1.0 + 0.6 * (h - 1.0));
        damped[k] = tau[k].min(0.07 / (1.0 + 0.3 * (h - 1.0)));
    }
    let gain = 0.62 * n.vel / amp.iter().sum::<f32>().sqrt();
    for k in 0..N - PARTIALS {
        // Detuned symmetrically, so the average pitch stays exact.
        let j = PARTIALS + k;
        (hz[j], hz[k]) = (hz[k] * cents(-0.7), hz[k] * cents(0.7));
        // Unequal strings, so their slow beating dips the partial without cancelling it.
        (amp[j], amp[k]) = (0.35 * amp[k], 0.65 * amp[k]);
        (tau[j], damped[j]) = (1.5 * tau[k], damped[k]);
    }
    // Two banks of eight, each small enough to stay in registers for its whole pass.
    let hold = n.hold.min(out.len());
    for bank in [0, 8] {
        let part = |a: &[f32; N]| -> [f32; 8] { std::array::from_fn(|i| a[bank + i]) };
        let mut strings = Partials::new(sr, &part(&hz), &part(&amp), &part(&tau));
        strings.add_to(&mut out[..hold], gain);
        strings.set_decay(sr, &part(&damped));
        strings.add_to(&mut out[hold..], gain);
    }
    // The hammer: a few milliseconds of lowpassed noise, brighter when harder.
    let mut noise = Noise::new(rng.next_u64());
    let mut thump = OnePole::new(sr, 1200.0 + 3000.0 * n.vel);
    let (hcoef, mut henv) = (decay_coef(sr, 0.004), 0.25 * n.vel);
    let thump_len = out.len().min((0.03 * sr) as usize);
    for s in out[..thump_len].iter_mut() {
        *s += thump.lowpass(noise.next_sample()) * henv;
        henv *= hcoef;
    }
}

/// Two-operator FM electric piano: a 1:1 modulator whose index decays from bright to mellow,
/// plus a ratio-14 modulator that flashes the metallic tine at the attack; gentle tremolo.
fn electric_piano(out: &mut [f32], n: &Note) {
    let (sr, dt) = (n.sr, n.f0 / n.sr);
    let mut amp = Adsr::new(sr, 0.002, 2.5 * (-(n.midi - 60.0) / 24.0).exp2(), 0.0, 0.06);
    let (lo, hi) = (0.2 + 0.3 * n.vel, 0.5 + 1.8 * n.vel);
    let (icoef, mut ienv) = (decay_coef(sr, 0.4), 1.0f32);
    // The tine's sidebands sit at 13 and 15 times f0: fade them out before they alias.
    let tine_max = 0.9 * n.vel * (1.0 - 14.0 * n.f0 / (0.45 * sr)).max(0.0);
    let (tcoef, mut tenv) = (decay_coef(sr, 0.05), tine_max);
    // Modulators as sine oscillators locked to the carrier's phase: 1:1 and the 14:1 tine.
    let mut mods = Partials::new(
        sr,
        &[n.f0, 14.0 * n.f0, 0.0, 0.0],
        &[1.0, 1.0, 0.0, 0.0],
        &[f32::INFINITY; 4],
    );
    // The oscillators return the sample after the current one, so the carrier starts one
    // step in too: any phase offset between them would add a DC component.
    let (mut ph, mut trem, mut tremolo) = (dt, 0.0f32, 1.0f32);
    for (i, s) in out.iter_mut().enumerate() {
        if i == n.hold {
            amp.release();
        }
        if i % CONTROL == 0 {
            tremolo = 0.94 + 0.06 * fast_sin(trem);
            trem += 4.8 * CONTROL as f32 / sr;
        }
        let [m1, m14, _, _] = mods.next_each();
        // Indices are in radians; `fast_sin` takes cycles.
        let m = ((lo + (hi - lo) * ienv) * m1 + tenv * m14) * (1.0 / std::f32::consts::TAU);
        ienv *= icoef;
        tenv *= tcoef;
        *s = 0.6 * fast_sin(ph + m) * amp.next_value() * tremolo * n.vel;
        advance(&mut ph, dt);
    }
}

/// Karplus-Strong plucked string: a noise burst (brighter when harder, comb-filtered for the
/// pluck position) circulates in a delay line through a two-point average (the damping) and a
/// first-order allpass that supplies the fractional delay, so the pitch is exact.
fn guitar(out: &mut [f32], n: &Note, rng: &mut Rng) {
    let sr = n.sr;
    let period = sr / n.f0;
    // Loop delay = len + 0.5 (average) + frac (allpass); keep frac in [0.1, 1.1) for accuracy.
    let len = ((period - 0.6) as usize).max(2);
    let frac = period - 0.5 - len as f32;
    let w = std::f32::consts::TAU / period;
    // Allpass coefficient giving exactly `frac` samples of phase delay at the fundamental.
    let a = (w * (1.0 - frac) / 2.0).sin() / (w * (1.0 + frac) / 2.0).sin();
    // Per-period gain for a 60 dB decay over t60 seconds, compensating the average's loss.
    let loop_gain = |t60: f32| (10f32.powf(-3.0 / (n.f0 * t60)) / (w / 2.0).cos()).min(0.9995);
    let t60 = 4.5 * (-(n.midi - 40.0) / 30.0).exp2();
    let (ring, damp) = (loop_gain(t60), loop_gain(0.12));
    let mut noise = Noise::new(rng.next_u64());
    let mut tone = OnePole::new(sr, 1000.0 + 7000.0 * n.vel * n.vel);
    let burst: Vec<f32> = (0..len)
        .map(|_| tone.lowpass(noise.next_sample()))
        .collect();
    // Plucking 1/7 of the way along the string cancels every 7th harmonic.
    let pick = (len / 7).max(1);
    let mut line: Vec<f32> = (0..len)
        .map(|i| burst[i] - burst[(i + len - pick) % len])
        .collect();
    let mean = line.iter().sum::<f32>() / len as f32;
    line.iter_mut().for_each(|s| *s -= mean);
    let (mut idx, mut prev, mut ap_x, mut ap_y, mut g) = (0usize, 0.0f32, 0.0f32, 0.0f32, ring);
    let mut body = Biquad::lowpass(sr, 5000.0, 0.8);
    for (i, s) in out.iter_mut().enumerate() {
        if i == n.hold {
            g = damp;
        }
        let x = line[idx];
        let avg = 0.5 * (x + prev);
        prev = x;
        let y = a * avg + ap_x - a * ap_y;
        ap_x = avg;
        ap_y = y;
        // The tiny offset keeps a string held for a minute from decaying into denormals.
        line[idx] = y * g + 1e-20;
        idx += 1;
        if idx == len {
            idx = 0;
        }
        *s = body.process(x);
    }
    // How much of the burst survives the loop and body filters depends strongly on pitch;
    // the peak is always in the attack, so set it directly.
    normalize_peak(out, 0.7 * n.vel);
}

/// Shared voice of strings and pads: four detuned band-limited saws around f0 with a common
/// vibrato, so their average pitch is exactly f0. Kept as arrays of four with branch-free
/// saws so the compiler runs all four in one SIMD lane set.
struct Unison {
    phase: [f32; 4],
    ratio: [f32; 4],
    inc: [f32; 4],
    inv: [f32; 4],
}

impl Unison {
    /// `detune` in cents must be symmetric around zero; start phases are random per seed so
    /// chords do not all start with aligned edges.
    fn new(detune: [f32; 4], rng: &mut Rng) -> Self {
        Self {
            phase: std::array::from_fn(|_| rng.uniform() as f32),
            ratio: detune.map(cents),
            inc: [0.0; 4],
            inv: [1.0; 4],
        }
    }

    /// Sets the common phase increment (f0 / sample rate, vibrato included).
    fn tune(&mut self, dt: f32) {
        for i in 0..4 {
            self.inc[i] = dt * self.ratio[i];
            self.inv[i] = 1.0 / self.inc[i];
        }
    }

    #[inline]
    fn next_sum(&mut self) -> f32 {
        let mut v = [0.0f32; 4];
        for (i, out) in v.iter_mut().enumerate() {
            *out = saw(self.phase[i], self.inv[i]);
            // Wrap by subtracting a 0/1 mask: stays one vector select, no per-lane branches.
            let p = self.phase[i] + self.inc[i];
            self.phase[i] = p - if p >= 1.0 { 1.0 } else { 0.0 };
        }
        (v[0] + v[1]) + (v[2] + v[3])
    }
}

/// Vibrato depth ramp: 0 before `delay_s`, full after a further `ramp_s`.
fn vibrato_depth(i: usize, sr: f32, delay_s: f32, ramp_s: f32) -> f32 {
    ((i as f32 / sr - delay_s) / ramp_s).clamp(0.0, 1.0)
}

/// String ensemble: four detuned saws, slow bow attack, 5 Hz vibrato fading in, lowpassed
/// around 2.5-5 kHz depending on velocity.
fn strings(out: &mut [f32], n: &Note, rng: &mut Rng) {
    let sr = n.sr;
    let mut saws = Unison::new([-9.0, -3.0, 3.0, 9.0], rng);
    let mut amp = Adsr::new(sr, 0.3, 1.0, 1.0, n.release_tau);
    let fc = (2500.0 + 2500.0 * n.vel).max(3.0 * n.f0);
    let (mut filter, mut smooth) = (Biquad::lowpass(sr, fc, 0.6), OnePole::new(sr, fc));
    let mut lfo = 0.0f32;
    for (i, s) in out.iter_mut().enumerate() {
        if i == n.hold {
            amp.release();
        }
        if i % CONTROL == 0 {
            let depth = 0.0025 * vibrato_depth(i, sr, 0.0, 0.5);
            saws.tune(n.f0 / sr * (1.0 + depth * fast_sin(lfo)));
            lfo += 5.0 * CONTROL as f32 / sr;
        }
        let x = smooth.lowpass(filter.process(saws.next_sum()));
        *s = 0.22 * x * amp.next_value() * n.vel;
    }
}

/// Synth pad: four detuned saws and a sine at f0 through a resonant lowpass that drifts
/// slowly; 0.8 s attack.
fn pad(out: &mut [f32], n: &Note, rng: &mut Rng) {
    let sr = n.sr;
    let mut saws = Unison::new([-12.0, -4.0, 4.0, 12.0], rng);
    saws.tune(n.f0 / sr);
    let mut amp = Adsr::new(sr, 0.8, 1.0, 1.0, n.release_tau);
    let base = (900.0 + 900.0 * n.vel).max(2.0 * n.f0);
    let mut filter = Biquad::lowpass(sr, base, 1.1);
    let mut lfo = rng.uniform() as f32;
    let mut sine = steady_sine(sr, n.f0, 0.5);
    for (i, s) in out.iter_mut().enumerate() {
        if i == n.hold {
            amp.release();
        }
        if i % CONTROL == 0 {
            filter.set_lowpass(sr, base * (1.0 + 0.35 * fast_sin(lfo)), 1.1);
            lfo += 0.2 * CONTROL as f32 / sr;
        }
        let x = filter.process(saws.next_sum()) + sine.next_each()[0];
        *s = 0.18 * x * amp.next_value() * n.vel;
    }
}

/// Synth lead: saw/square mix, a filter envelope that opens with velocity, vibrato that
/// comes in after 0.2 s, 10 ms attack.
fn lead(out: &mut [f32], n: &Note) {
    let sr = n.sr;
    let mut amp = Adsr::new(sr, 0.01, 0.3, 0.8, n.release_tau);
    let (base, sweep) = (n.f0 * 2.0 + 800.0, 4000.0 * n.vel);
    let mut filter = Biquad::lowpass(sr, base + sweep, 1.5);
    let (fcoef, mut fenv) = (control_coef(sr, 0.25), 1.0f32);
    let (mut ph, mut lfo, mut dt, mut inv_dt) = (0.0f32, 0.0f32, n.f0 / sr, sr / n.f0);
    let mut dc = OnePole::new(sr, 15.0);
    for (i, s) in out.iter_mut().enumerate() {
        if i == n.hold {
            amp.release();
        }
        if i % CONTROL == 0 {
            filter.set_lowpass(sr, base + sweep * fenv, 1.5);
            fenv *= fcoef;
            let depth = 0.004 * vibrato_depth(i, sr, 0.2, 0.3);
            dt = n.f0 / sr * (1.0 + depth * fast_sin(lfo));
            inv_dt = 1.0 / dt;
            lfo += 5.5 * CONTROL as f32 / sr;
        }
        let osc = 0.6 * saw(ph, inv_dt) + 0.4 * square(ph, inv_dt);
        advance(&mut ph, dt);
        *s = 0.9 * dc.highpass(soft_clip(filter.process(osc))) * amp.next_value() * n.vel;
    }
}

/// Drawbar organ: sines at harmonics 1, 2, 3, 4, 6 and 8 (percussion off), a key click at
/// the start and at the release, and a slow rotary-style tremolo.
fn organ(out: &mut [f32], n: &Note, rng: &mut Rng) {
    // Two silent slots pad the bank to a multiple of four for SIMD.
    const HARMONICS: [f32; 8] = [1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 1.0, 1.0];
    const LEVELS: [f32; 8] = [1.0, 0.75, 0.55, 0.5, 0.3, 0.3, 0.0, 0.0];
    let sr = n.sr;
    let hz = HARMONICS.map(|h| h * n.f0);
    let mut pipes = Partials::new(sr, &hz, &LEVELS, &[f32::INFINITY; 8]);
    pipes.add_to(out, 0.25 * n.vel);
    let mut amp = Adsr::new(sr, 0.004, 1.0, 1.0, n.release_tau);
    let (mut trem, mut tremolo) = (0.0f32, 1.0f32);
    for (i, s) in out.iter_mut().enumerate() {
        if i == n.hold {
            amp.release();
        }
        if i % CONTROL == 0 {
            tremolo = 0.93 + 0.07 * fast_sin(trem);
            trem += 6.5 * CONTROL as f32 / sr;
        }
        *s *= tremolo * amp.next_value();
    }
    // Key click: a burst of bandpassed noise as the contacts close and again as they open.
    let mut noise = Noise::new(rng.next_u64());
    let click_len = (0.01 * sr) as usize;
    for (start, level) in [(0, 0.4), (n.hold, 0.2)] {
        let mut filter = Biquad::bandpass(sr, 3000.0, 0.8);
        let (coef, mut env) = (decay_coef(sr, 0.0015), level * n.vel);
        let end = out.len().min(start + click_len);
        for s in out[start.min(end)..end].iter_mut() {
            *s += filter.process(noise.next_sample()) * env;
            env *= coef;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::dsp::{estimate_hz, peak};
    use super::*;

    const SR: u32 = 44_100;
    const PITCHED: [Instrument; 8] = [
        Instrument::Bass,
        Instrument::Piano,
        Instrument::ElectricPiano,
        Instrument::Guitar,
        Instrument::Strings,
        Instrument::Pad,
        Instrument::Lead,
        Instrument::Organ,
    ];

    #[test]
    fn fundamentals_are_exact() {
        let cases: [(Instrument, &[f32]); 8] = [
            (Instrument::Bass, &[28.0, 36.0, 45.0, 52.0]),
            (Instrument::Piano, &[36.0, 48.0, 60.0, 72.0]),
            (Instrument::ElectricPiano, &[48.0, 60.0, 72.0]),
            (Instrument::Guitar, &[40.0, 52.0, 64.0, 76.0]),
            (Instrument::Strings, &[43.0, 55.0, 67.0, 79.0]),
            (Instrument::Pad, &[48.0, 60.0, 72.0]),
            (Instrument::Lead, &[60.0, 72.0, 84.0]),
            (Instrument::Organ, &[36.0, 48.0, 72.0, 61.5]),
        ];
        for (inst, pitches) in cases {
            for &p in pitches {
                let x = render_instrument(inst, p, 0.8, 1.2, SR, 3);
                // A steady stretch after every attack (strings and pads are still swelling,
                // which does not move the pitch).
                let hz = estimate_hz(&x[26_460..37_000], SR as f32, 35.0);
                let want = midi_to_hz(p);
                println!("{inst:?} {p}: {hz:.3} vs {want:.3}");
                assert!(
                    (hz / want - 1.0).abs() < 0.005,
                    "{inst:?} {p}: {hz} vs {want}"
                );
            }
        }
    }

    #[test]
    fn notes_are_clean_and_sized() {
        for inst in PITCHED {
            for p in [30.0, 45.0, 60.0, 75.0, 90.0, 100.0] {
                let x = render_instrument(inst, p, 1.0, 0.5, SR, 9);
                let want = ((0.5 + release_s(inst)) * SR as f32).round() as usize;
                assert_eq!(x.len(), want, "{inst:?}");
                assert!(x.iter().all(|s| s.is_finite()), "{inst:?}");
                assert!(
                    x[0].abs() < 1e-3 && x[want - 1].abs() < 1e-3,
                    "{inst:?} {p}"
                );
                let pk = peak(&x);
                println!("{inst:?} {p}: peak {pk:.3}");
                assert!((0.25..=0.95).contains(&pk), "{inst:?} {p}: peak {pk}");
                let mean = x.iter().map(|&s| f64::from(s)).sum::<f64>() / x.len() as f64;
                assert!(mean.abs() < 0.01, "{inst:?} {p}: dc {mean}");
                let soft = peak(&render_instrument(inst, p, 0.3, 0.5, SR, 9));
                assert!(soft < 0.6 * pk, "{inst:?} {p}: {soft} vs {pk}");
            }
        }
    }

    #[test]
    fn seeds_are_deterministic_and_drums_silent() {
        for inst in PITCHED {
            let a = render_instrument(inst, 57.0, 0.7, 0.3, SR, 1);
            assert_eq!(a, render_instrument(inst, 57.0, 0.7, 0.3, SR, 1));
        }
        assert!(render_instrument(Instrument::Drums, 60.0, 1.0, 1.0, SR, 1).is_empty());
        assert!(render_instrument(Instrument::Piano, f32::NAN, 1.0, 1.0, SR, 1).is_empty());
    }

    #[test]
    fn harder_notes_are_brighter() {
        // Mean squared slope over mean square: a cheap spectral-centroid proxy.
        let brightness = |x: &[f32]| {
            let slope: f32 = x.windows(2).map(|w| (w[1] - w[0]).powi(2)).sum();
            slope / x.iter().map(|s| s * s).sum::<f32>()
        };
        for inst in [
            Instrument::Piano,
            Instrument::Guitar,
            Instrument::Bass,
            Instrument::Lead,
        ] {
            let loud = render_instrument(inst, 52.0, 1.0, 0.5, SR, 4);
            let soft = render_instrument(inst, 52.0, 0.3, 0.5, SR, 4);
            let (b1, b0) = (brightness(&loud[..8820]), brightness(&soft[..8820]));
            assert!(b1 > 1.3 * b0, "{inst:?}: {b1} vs {b0}");
        }
    }

    #[test]
    fn release_silences_the_note() {
        // A held piano note keeps ringing; a released one is damped well before its tail ends.
        for inst in [Instrument::Piano, Instrument::Guitar, Instrument::Organ] {
            let x = render_instrument(inst, 48.0, 1.0, 0.5, SR, 2);
            let hold = 22_050;
            let tail = x.len() - hold;
            let late = peak(&x[hold + tail * 3 / 4..]);
            assert!(late < 0.1 * peak(&x[hold - 2000..hold]), "{inst:?}: {late}");
        }
    }
}
