//! Drum sounds of the built-in synth, modelled on analogue drum machines: swept sines for
//! kicks and toms, filtered noise for snares, claps and shakers, and sums of inharmonic square
//! waves for hi-hats and cymbals. One mono hit per call, deterministic for a seed.

use super::dsp::{
    advance, decay_coef, fade_edges, fast_sin, normalize_peak, soft_clip, Biquad, Noise, OnePole,
};
use super::score::DrumKind;
use crate::theory::midi_to_hz;

/// The six square-wave frequencies of the TR-808 cymbal circuit: their inharmonic sum is what
/// makes a hat sound metallic rather than like plain noise.
const METAL_HZ: [f32; 6] = [205.3, 304.4, 369.6, 522.7, 540.0, 800.0];

/// Peak of a velocity-1 hit of `kind`, a starting balance for the kit (the mixer may rescale).
pub fn drum_level(kind: DrumKind) -> f32 {
    match kind {
        DrumKind::Kick => 0.9,
        DrumKind::Kick808 => 0.85,
        DrumKind::Snare => 0.75,
        DrumKind::Clap => 0.65,
        DrumKind::Rim => 0.5,
        DrumKind::ClosedHat | DrumKind::OpenHat => 0.35,
        DrumKind::Ride => 0.3,
        DrumKind::Crash => 0.45,
        DrumKind::Tom => 0.75,
        DrumKind::Shaker => 0.25,
    }
}

/// Renders one drum hit. `pitch` (MIDI) tunes `Kick808` and `Tom`; `duration_s` sets the held
/// length of `Kick808` and the ring of `OpenHat` (0 gives 0.3 s); both are ignored by the rest.
/// The result peaks at exactly `drum_level(kind) * velocity`, starts and ends at zero and is
/// identical for identical arguments; noisy kinds change with `seed`.
pub fn render_drum(
    kind: DrumKind,
    pitch: f32,
    velocity: f32,
    duration_s: f32,
    sample_rate: u32,
    seed: u64,
) -> Vec<f32> {
    if sample_rate < 8000 {
        return Vec::new();
    }
    let sr = sample_rate as f32;
    let finite_or = |x: f32, default: f32| if x.is_finite() { x } else { default };
    let vel = finite_or(velocity, 0.0).clamp(0.0, 1.0);
    let dur = finite_or(duration_s, 0.0).max(0.0);
    let hz = midi_to_hz(finite_or(pitch, 36.0).clamp(12.0, 96.0));
    let open_len = if dur > 0.0 { dur.clamp(0.1, 1.5) } else { 0.3 };
    let held_808 = dur.clamp(0.15, 4.0);
    let len_s = match kind {
        DrumKind::Kick => 0.45,
        DrumKind::Kick808 => held_808 + 0.12,
        DrumKind::Snare => 0.3,
        DrumKind::Clap => 0.35,
        DrumKind::Rim => 0.08,
        DrumKind::ClosedHat => 0.08,
        DrumKind::OpenHat => open_len + 0.03,
        DrumKind::Ride => 1.6,
        DrumKind::Crash => 2.2,
        DrumKind::Tom => 0.5,
        DrumKind::Shaker => 0.09,
    };
    let mut out = vec![0.0f32; (len_s * sr) as usize];
    let mut noise = Noise::new(seed);
    match kind {
        DrumKind::Kick => kick(&mut out, sr, &mut noise),
        DrumKind::Kick808 => kick_808(&mut out, sr, hz, held_808),
        DrumKind::Snare => snare(&mut out, sr, &mut noise),
        DrumKind::Clap => clap(&mut out, sr, &mut noise),
        DrumKind::Rim => rim(&mut out, sr, &mut noise),
        DrumKind::ClosedHat => hat(&mut out, sr, &mut noise, 0.015),
        DrumKind::OpenHat => hat(&mut out, sr, &mut noise, open_len / 4.5),
        DrumKind::Ride => ride(&mut out, sr, &mut noise),
        DrumKind::Crash => crash(&mut out, sr, &mut noise),
        DrumKind::Tom => tom(&mut out, sr, hz, &mut noise),
        DrumKind::Shaker => shaker(&mut out, sr, &mut noise),
    }
    fade_edges(&mut out, (0.0003 * sr) as usize, (0.01 * sr) as usize);
    normalize_peak(&mut out, drum_level(kind) * vel);
    out
}

/// A sine whose frequency falls exponentially from `from` to `to` with time constant `tau`,
/// under an exponential amplitude decay `amp_tau`, added into `out`.
fn swept_sine(out: &mut [f32], sr: f32, from: f32, to: f32, tau: f32, amp_tau: f32) {
    let (fcoef, acoef) = (decay_coef(sr, tau), decay_coef(sr, amp_tau));
    let (mut sweep, mut amp, mut ph) = ((from - to) / sr, 1.0f32, 0.0f32);
    for s in out.iter_mut() {
        *s += fast_sin(ph) * amp;
        advance(&mut ph, to / sr + sweep);
        sweep *= fcoef;
        amp *= acoef;
    }
}

/// Adds `gain`·(filtered noise) under an exponential decay `tau` into `out`.
fn noise_burst(
    out: &mut [f32],
    noise: &mut Noise,
    filter: &mut Biquad,
    gain: f32,
    tau: f32,
    sr: f32,
) {
    let (coef, mut env) = (decay_coef(sr, tau), gain);
    for s in out.iter_mut() {
        *s += filter.process(noise.next_sample()) * env;
        env *= coef;
    }
}

/// Sum of squares at `hz`, a metallic, inharmonic tone in [-1, 1]. Naive (not band-limited)
/// squares on purpose: their aliases land in the same noisy band the highpass keeps, and the
/// branch-free form is several times cheaper.
fn metal(out: &mut [f32], sr: f32, hz: &[f32; 6], phase_seed: &mut Noise) {
    let mut ph: [f32; 6] = std::array::from_fn(|_| 0.5 + 0.5 * phase_seed.next_sample());
    let dt = hz.map(|f| f / sr);
    for s in out.iter_mut() {
        let mut sum = 0.0;
        for (p, d) in ph.iter_mut().zip(dt) {
            sum += (0.5 - *p).signum();
            advance(p, d);
        }
        *s = sum / 6.0;
    }
}

/// Kick: a 150→50 Hz sweep decaying over ~0.35 s, lightly saturated, with a noise click.
fn kick(out: &mut [f32], sr: f32, noise: &mut Noise) {
    swept_sine(out, sr, 150.0, 50.0, 0.035, 0.13);
    out.iter_mut().for_each(|s| *s = soft_clip(1.4 * *s));
    let click_len = out.len().min((0.01 * sr) as usize);
    let mut hp = Biquad::highpass(sr, 2000.0, 0.7);
    noise_burst(&mut out[..click_len], noise, &mut hp, 0.5, 0.0015, sr);
}

/// 808: a sine at the note with a short drop from above, slow decay over the held length,
/// quick release after it, saturated for harmonics that small speakers can reproduce.
fn kick_808(out: &mut [f32], sr: f32, hz: f32, held: f32) {
    swept_sine(out, sr, 2.0 * hz, hz, 0.015, held / 1.2);
    let (hold, coef) = ((held * sr) as usize, decay_coef(sr, 0.03));
    let mut release = 1.0f32;
    for (i, s) in out.iter_mut().enumerate() {
        if i >= hold {
            release *= coef;
        }
        *s = soft_clip(1.3 * *s) * release;
    }
}

/// Snare: a 185/330 Hz shell tone plus bright noise for the wires, ~0.2 s.
fn snare(out: &mut [f32], sr: f32, noise: &mut Noise) {
    swept_sine(out, sr, 240.0, 185.0, 0.01, 0.05);
    let mut shell2 = vec![0.0f32; out.len()];
    swept_sine(&mut shell2, sr, 380.0, 330.0, 0.01, 0.035);
    let mut wires = vec![0.0f32; out.len()];
    let mut hp = Biquad::highpass(sr, 1200.0, 0.7);
    noise_burst(&mut wires, noise, &mut hp, 1.0, 0.07, sr);
    let mut tame = OnePole::new(sr, 9000.0);
    for ((s, t), w) in out.iter_mut().zip(&shell2).zip(&wires) {
        *s = 0.5 * *s + 0.3 * t + 0.8 * tame.lowpass(*w);
    }
}

/// Clap: three noise bursts ~11 ms apart, then a decaying tail, bandpassed around 1.2 kHz.
fn clap(out: &mut [f32], sr: f32, noise: &mut Noise) {
    let mut bp = Biquad::bandpass(sr, 1200.0, 1.2);
    let (gap, tail_start) = (((0.011 * sr) as usize).max(1), (0.033 * sr) as usize);
    let (burst, tail) = (decay_coef(sr, 0.004), decay_coef(sr, 0.07));
    let mut env = 1.0f32;
    for (i, s) in out.iter_mut().enumerate() {
        if i < tail_start && i % gap == 0 {
            env = 1.0;
        } else if i == tail_start {
            env = 0.9;
        }
        *s = bp.process(noise.next_sample()) * env;
        env *= if i < tail_start { burst } else { tail };
    }
}

/// Rim click: two short woody tones and a bandpassed tick.
fn rim(out: &mut [f32], sr: f32, noise: &mut Noise) {
    swept_sine(out, sr, 1700.0, 1700.0, 1.0, 0.006);
    let mut low = vec![0.0f32; out.len()];
    swept_sine(&mut low, sr, 520.0, 520.0, 1.0, 0.01);
    let mut bp = Biquad::bandpass(sr, 2500.0, 2.0);
    noise_burst(out, noise, &mut bp, 0.8, 0.004, sr);
    out.iter_mut().zip(&low).for_each(|(s, l)| *s += 0.6 * l);
}

/// Hi-hat: metallic squares and noise, highpassed above 7 kHz, decaying with `tau`.
fn hat(out: &mut [f32], sr: f32, noise: &mut Noise, tau: f32) {
    metal(out, sr, &METAL_HZ.map(|f| f * 1.5), noise);
    let (mut hp, mut hp2) = (
        Biquad::highpass(sr, 7000.0, 0.7),
        Biquad::highpass(sr, 7000.0, 0.7),
    );
    let (coef, mut env) = (decay_coef(sr, tau), 1.0f32);
    for s in out.iter_mut() {
        let x = 0.6 * *s + 0.4 * noise.next_sample();
        *s = hp2.process(hp.process(x)) * env;
        env *= coef;
    }
}

/// Ride: a metallic ping (inharmonic squares bandpassed near 3.5 kHz) over a highpassed
/// metallic wash, ~1.5 s.
fn ride(out: &mut [f32], sr: f32, noise: &mut Noise) {
    const RATIOS: [f32; 6] = [1.0, 1.342, 1.789, 2.27, 2.73, 3.41];
    metal(out, sr, &RATIOS.map(|r| r * 430.0), noise);
    let (mut hp, mut bell) = (
        Biquad::highpass(sr, 5000.0, 0.7),
        Biquad::bandpass(sr, 3500.0, 3.0),
    );
    let (wash_coef, bell_coef) = (decay_coef(sr, 0.45), decay_coef(sr, 0.25));
    let (mut wash, mut ping) = (1.0f32, 1.0f32);
    for s in out.iter_mut() {
        let x = *s + 0.15 * noise.next_sample();
        *s = hp.process(x) * wash + 0.7 * bell.process(*s) * ping;
        wash *= wash_coef;
        ping *= bell_coef;
    }
}

/// Crash: bright noise and metallic squares, fast swell, ~2 s decay.
fn crash(out: &mut [f32], sr: f32, noise: &mut Noise) {
    metal(out, sr, &METAL_HZ.map(|f| f * 1.3), noise);
    let (mut hp, mut air) = (
        Biquad::highpass(sr, 3500.0, 0.7),
        OnePole::new(sr, 12_000.0),
    );
    let (coef, attack) = (decay_coef(sr, 0.55), 1.0 / (0.003 * sr));
    let mut env = 1.0f32;
    for (i, s) in out.iter_mut().enumerate() {
        let x = 0.5 * *s + 0.7 * noise.next_sample();
        *s = air.lowpass(hp.process(x)) * env * (i as f32 * attack).min(1.0);
        env *= coef;
    }
}

/// Tom: a sine with a little second partial, dropping to the note over ~40 ms, ~0.4 s, with a
/// soft stick thump.
fn tom(out: &mut [f32], sr: f32, hz: f32, noise: &mut Noise) {
    swept_sine(out, sr, 1.6 * hz, hz, 0.04, 0.14);
    let mut upper = vec![0.0f32; out.len()];
    swept_sine(&mut upper, sr, 3.2 * hz, 2.0 * hz, 0.04, 0.06);
    let thump_len = out.len().min((0.02 * sr) as usize);
    let mut lp = Biquad::lowpass(sr, 1500.0, 0.7);
    noise_burst(&mut out[..thump_len], noise, &mut lp, 0.4, 0.004, sr);
    out.iter_mut().zip(&upper).for_each(|(s, u)| *s += 0.2 * u);
}

/// Shaker: bandpassed high noise that swells for 25 ms then falls away.
fn shaker(out: &mut [f32], sr: f32, noise: &mut Noise) {
    let mut bp = Biquad::bandpass(sr, 7000.0, 1.0);
    let (rise, coef) = ((0.025 * sr) as usize, decay_coef(sr, 0.015));
    let mut fall = 1.0f32;
    for (i, s) in out.iter_mut().enumerate() {
        let env = if i < rise {
            let t = i as f32 / rise as f32;
            t * t
        } else {
            fall *= coef;
            fall
        };
        *s = bp.process(noise.next_sample()) * env;
    }
}

#[cfg(test)]
mod tests {
    use super::super::dsp::{estimate_hz, peak};
    use super::*;

    const SR: u32 = 44_100;
    const KINDS: [DrumKind; 11] = [
        DrumKind::Kick,
        DrumKind::Kick808,
        DrumKind::Snare,
        DrumKind::Clap,
        DrumKind::Rim,
        DrumKind::ClosedHat,
        DrumKind::OpenHat,
        DrumKind::Ride,
        DrumKind::Crash,
        DrumKind::Tom,
        DrumKind::Shaker,
    ];

    /// Zero crossings per second: low for kicks and toms, high for hats and shakers.
    fn crossing_rate(x: &[f32]) -> f32 {
        let n = x
            .windows(2)
            .filter(|w| (w[0] >= 0.0) != (w[1] >= 0.0))
            .count();
        n as f32 * SR as f32 / x.len() as f32
    }

    #[test]
    fn hits_are_clean_levelled_and_deterministic() {
        for kind in KINDS {
            let x = render_drum(kind, 40.0, 0.8, 0.4, SR, 5);
            assert!(!x.is_empty() && x.iter().all(|s| s.is_finite()), "{kind:?}");
            assert!(x[0].abs() < 0.05 && x[x.len() - 1].abs() < 1e-3, "{kind:?}");
            let pk = peak(&x);
            assert!((pk - 0.8 * drum_level(kind)).abs() < 1e-3, "{kind:?}: {pk}");
            let mean = x.iter().sum::<f32>() / x.len() as f32;
            assert!(mean.abs() < 0.02, "{kind:?}: dc {mean}");
            assert_eq!(x, render_drum(kind, 40.0, 0.8, 0.4, SR, 5), "{kind:?}");
            println!(
                "{kind:?}: {} ms, {} crossings/s",
                x.len() / 44,
                crossing_rate(&x)
            );
        }
        for kind in [
            DrumKind::Snare,
            DrumKind::Clap,
            DrumKind::ClosedHat,
            DrumKind::Shaker,
        ] {
            assert_ne!(
                render_drum(kind, 40.0, 1.0, 0.2, SR, 1),
                render_drum(kind, 40.0, 1.0, 0.2, SR, 2)
            );
        }
        assert!(render_drum(DrumKind::Snare, 40.0, 0.0, 0.2, SR, 1)
            .iter()
            .all(|&s| s == 0.0));
    }

    #[test]
    fn pitched_drums_sit_on_their_notes() {
        for p in [28.0, 33.0, 40.0] {
            let x = render_drum(DrumKind::Kick808, p, 1.0, 1.0, SR, 0);
            let hz = estimate_hz(&x[8820..20_000], SR as f32, 30.0);
            assert!((hz / midi_to_hz(p) - 1.0).abs() < 0.01, "808 {p}: {hz}");
        }
        let x = render_drum(DrumKind::Tom, 45.0, 1.0, 0.2, SR, 0);
        let hz = estimate_hz(&x[8820..17_640], SR as f32, 60.0);
        assert!((hz / 110.0 - 1.0).abs() < 0.02, "tom: {hz}");
        let kick = render_drum(DrumKind::Kick, 0.0, 1.0, 0.0, SR, 0);
        let hz = estimate_hz(&kick[6615..15_000], SR as f32, 35.0);
        assert!((45.0..70.0).contains(&hz), "kick: {hz}");
    }

    #[test]
    fn lengths_and_colours_fit_the_kind() {
        let len = |k, d| render_drum(k, 36.0, 1.0, d, SR, 0).len() as f32 / SR as f32;
        assert!(len(DrumKind::Kick808, 2.0) > 2.0 && len(DrumKind::Kick808, 0.5) < 0.7);
        assert!(
            len(DrumKind::OpenHat, 0.6) > 0.6 && (len(DrumKind::OpenHat, 0.0) - 0.33).abs() < 0.01
        );
        assert!(len(DrumKind::ClosedHat, 1.0) < 0.1 && len(DrumKind::Crash, 0.0) > 2.0);
        let rate = |k| crossing_rate(&render_drum(k, 40.0, 1.0, 0.3, SR, 3));
        assert!(rate(DrumKind::Kick) < 400.0 && rate(DrumKind::Tom) < 600.0);
        for k in [
            DrumKind::ClosedHat,
            DrumKind::OpenHat,
            DrumKind::Ride,
            DrumKind::Crash,
            DrumKind::Shaker,
        ] {
            assert!(rate(k) > 6000.0, "{k:?}: {}", rate(k));
        }
        let snare = rate(DrumKind::Snare);
        assert!(snare > rate(DrumKind::Kick) && snare < rate(DrumKind::ClosedHat));
    }
}
