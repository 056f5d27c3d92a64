//! Stereo room reverb for the synth's mix: Jezar's Freeverb (eight damped feedback combs in
//! parallel and four allpasses in series per channel, the right channel's delays 23 samples
//! longer for width), with the original 44.1 kHz tunings scaled to the sample rate.

/// Comb delays in samples at 44.1 kHz: mutually prime-ish so their echoes never line up.
const COMBS: [usize; 8] = [1116, 1188, 1277, 1356, 1422, 1491, 1557, 1617];
/// Allpass delays in samples at 44.1 kHz.
const ALLPASSES: [usize; 4] = [556, 441, 341, 225];
/// Extra delay of the right channel, the source of the decorrelation between ears.
const SPREAD: usize = 23;
/// Input attenuation: eight combs at feedback near one would otherwise clip.
const FIXED_GAIN: f32 = 0.015;
/// A constant far below audibility fed into the combs so their decaying state never reaches
/// denormal floats, which are a hundred times slower on x86.
const ANTI_DENORMAL: f32 = 1e-18;

/// One delay line with a lowpass in its feedback path.
#[derive(Clone, Debug)]
struct Comb {
    buf: Vec<f32>,
    idx: usize,
    store: f32,
}

impl Comb {
    fn new(len: usize) -> Self {
        Self {
            buf: vec![0.0; len.max(1)],
            idx: 0,
            store: 0.0,
        }
    }

    #[inline]
    fn process(&mut self, input: f32, feedback: f32, damp1: f32, damp2: f32) -> f32 {
        let out = self.buf[self.idx];
        self.store = out * damp2 + self.store * damp1;
        self.buf[self.idx] = input + self.store * feedback;
        self.idx += 1;
        if self.idx >= self.buf.len() {
            self.idx = 0;
        }
        out
    }
}

/// Schroeder allpass with feedback 0.5: thickens the echo density without colouring.
#[derive(Clone, Debug)]
struct Allpass {
    buf: Vec<f32>,
    idx: usize,
}

impl Allpass {
    fn new(len: usize) -> Self {
        Self {
            buf: vec![0.0; len.max(1)],
            idx: 0,
        }
    }

    #[inline]
    fn process(&mut self, input: f32) -> f32 {
        let delayed = self.buf[self.idx];
        self.buf[self.idx] = input + delayed * 0.5;
        self.idx += 1;
        if self.idx >= self.buf.len() {
            self.idx = 0;
        }
        delayed - input
    }
}

/// One channel: the parallel combs then the series allpasses.
#[derive(Clone, Debug)]
struct Channel {
    combs: [Comb; 8],
    allpasses: [Allpass; 4],
}

impl Channel {
    fn new(scale: f32, extra: usize) -> Self {
        let len = |base: usize| ((base + extra) as f32 * scale).round() as usize;
        Self {
            combs: COMBS.map(|d| Comb::new(len(d))),
            allpasses: ALLPASSES.map(|d| Allpass::new(len(d))),
        }
    }

    #[inline]
    fn process(&mut self, input: f32, feedback: f32, damp1: f32, damp2: f32) -> f32 {
        let mut acc = 0.0;
        for c in self.combs.iter_mut() {
            acc += c.process(input, feedback, damp1, damp2);
        }
        for a in self.allpasses.iter_mut() {
            acc = a.process(acc);
        }
        acc
    }
}

/// A Freeverb stereo reverb. Keep one per piece and feed it the whole mix (or a send) in
/// order; its state carries across calls, so the mix may be processed in blocks.
#[derive(Clone, Debug)]
pub struct Reverb {
    left: Channel,
    right: Channel,
    feedback: f32,
    damp1: f32,
    damp2: f32,
    wet1: f32,
    wet2: f32,
}

impl Reverb {
    /// A reverb for `sample_rate`. `room_size` 0..1 sets the decay (comb feedback 0.70-0.98),
    /// `damping` 0..1 how fast highs die, `width` 0..1 how far the two sides are kept apart
    /// (0 = mono wet). The wet gain is Freeverb's default; scale the input to set the send.
    pub fn new(sample_rate: u32, room_size: f32, damping: f32, width: f32) -> Self {
        let unit = |x: f32| {
            if x.is_finite() {
                x.clamp(0.0, 1.0)
            } else {
                0.5
            }
        };
        let scale = sample_rate.max(1) as f32 / 44_100.0;
        let (damp, width) = (unit(damping) * 0.4, unit(width));
        Self {
            left: Channel::new(scale, 0),
            right: Channel::new(scale, SPREAD),
            feedback: unit(room_size) * 0.28 + 0.7,
            damp1: damp,
            damp2: 1.0 - damp,
            wet1: width / 2.0 + 0.5,
            wet2: (1.0 - width) / 2.0,
        }
    }

    /// Adds the reverberated `input_*` into `out_*` (the dry signal is not copied). Processes
    /// as many samples as the shortest of the four slices holds.
    pub fn process(
        &mut self,
        input_l: &[f32],
        input_r: &[f32],
        out_l: &mut [f32],
        out_r: &mut [f32],
    ) {
        let (fb, d1, d2) = (self.feedback, self.damp1, self.damp2);
        let frames = input_l
            .iter()
            .zip(input_r)
            .zip(out_l.iter_mut().zip(out_r.iter_mut()));
        for ((&il, &ir), (ol, or)) in frames {
            let input = (il + ir) * FIXED_GAIN + ANTI_DENORMAL;
            let l = self.left.process(input, fb, d1, d2);
            let r = self.right.process(input, fb, d1, d2);
            *ol += l * self.wet1 + r * self.wet2;
            *or += r * self.wet1 + l * self.wet2;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn energy(x: &[f32]) -> f64 {
        x.iter().map(|&s| f64::from(s) * f64::from(s)).sum()
    }

    #[test]
    fn impulse_tail_is_stereo_and_decays() {
        let sr = 44_100;
        let n = 3 * sr as usize;
        let mut input = vec![0.0f32; n];
        input[0] = 1.0;
        let (mut l, mut r) = (vec![0.0f32; n], vec![0.0f32; n]);
        let mut rev = Reverb::new(sr, 0.7, 0.5, 1.0);
        rev.process(&input, &input, &mut l, &mut r);
        assert!(l.iter().chain(&r).all(|s| s.is_finite()));
        // Nothing comes out before the shortest comb, and the tail then fills in.
        assert!(l[..200].iter().all(|&s| s.abs() < 1e-12));
        let early = energy(&l[4410..22_050]);
        let late = energy(&l[88_200..105_840]);
        assert!(early > 0.0 && late < 0.1 * early, "{early} {late}");
        let diff: f64 = l
            .iter()
            .zip(&r)
            .map(|(a, b)| f64::from(a - b).powi(2))
            .sum();
        assert!(diff > 0.1 * energy(&l), "left and right should decorrelate");
    }

    #[test]
    fn adds_into_output_and_carries_state_across_blocks() {
        let sr = 32_000;
        let input: Vec<f32> = (0..8000)
            .map(|i| ((i * 7919) % 13) as f32 / 13.0 - 0.5)
            .collect();
        let mut whole = Reverb::new(sr, 0.5, 0.3, 0.8);
        let (mut l1, mut r1) = (vec![0.25f32; 8000], vec![0.25f32; 8000]);
        whole.process(&input, &input, &mut l1, &mut r1);
        let mut blocks = Reverb::new(sr, 0.5, 0.3, 0.8);
        let (mut l2, mut r2) = (vec![0.25f32; 8000], vec![0.25f32; 8000]);
        for i in (0..8000).step_by(1000) {
            let (a, b) = (&mut l2[i..i + 1000], &mut r2[i..i + 1000]);
            blocks.process(&input[i..i + 1000], &input[i..i + 1000], a, b);
        }
        assert_eq!(l1, l2);
        assert_eq!(r1, r2);
        assert!(l1[..500].iter().all(|&s| (s - 0.25).abs() < 1e-9));
        // A bigger room rings longer.
        let tail = |room: f32| {
            let mut imp = vec![0.0f32; 44_100];
            imp[0] = 1.0;
            let (mut l, mut r) = (vec![0.0f32; 44_100], vec![0.0f32; 44_100]);
            Reverb::new(44_100, room, 0.5, 1.0).process(&imp, &imp, &mut l, &mut r);
            energy(&l[30_000..])
        };
        assert!(tail(0.9) > 3.0 * tail(0.3));
    }
}
