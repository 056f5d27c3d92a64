//! Randomness fixed by a seed: a small pseudo-random generator (xoshiro256++ seeded by
//! SplitMix64), so a seed gives the same music on every platform and every future version
//! of Son1k, and random weights with sensible scales, fixed by a seed and the tensor's
//! name, for tiny test checkpoints and for benchmarks of full-size shapes without
//! downloading anything.

use candle_core::{Device, Tensor};

use crate::error::Result;

/// A random tensor for checkpoint key `name`: norms' weights and weight-norm gains are
/// ones, biases zeros, everything else uniform with standard deviation 1/sqrt(fan-in), so
/// activations keep their scale through deep stacks.
pub fn random_tensor(name: &str, shape: &[usize], seed: u64, device: &Device) -> Result<Tensor> {
    let numel: usize = shape.iter().product();
    let is_norm_weight = name.ends_with("norm.weight");
    let values: Vec<f32> =
        if is_norm_weight || name.ends_with("weight_g") || name.ends_with("original0") {
            vec![1.0; numel]
        } else if name.ends_with("bias") || name.contains(".bias_") {
            vec![0.0; numel]
        } else {
            let fan_in = (numel / shape.first().copied().unwrap_or(1).max(1)).max(1);
            // A uniform on [-a, a] has standard deviation a / sqrt(3).
            let bound = (3.0 / fan_in as f64).sqrt();
            let mut rng = Rng::new(seed ^ hash_name(name));
            (0..numel)
                .map(|_| ((rng.uniform() * 2.0 - 1.0) * bound) as f32)
                .collect()
        };
    Ok(Tensor::from_vec(values, shape, device)?)
}

/// Deterministic random numbers for sampling and random weights.
#[derive(Clone, Debug)]
pub struct Rng {
    state: [u64; 4],
}

impl Rng {
    /// A generator whose whole sequence is fixed by `seed`.
    pub fn new(seed: u64) -> Self {
        let mut sm = seed;
        let mut next = || {
            sm = sm.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = sm;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        };
        Self {
            state: [next(), next(), next(), next()],
        }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.state;
        let result = s[0].wrapping_add(s[3]).rotate_left(23).wrapping_add(s[0]);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// A uniform sample in `[0, 1)` with 53 bits of precision.
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// `n` uniform samples in `[low, high)`, as f32.
    pub fn uniform_f32s(&mut self, n: usize, low: f32, high: f32) -> Vec<f32> {
        (0..n)
            .map(|_| low + (high - low) * self.uniform() as f32)
            .collect()
    }

    /// A standard normal sample (Box-Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.uniform(); // in (0, 1], so ln is finite
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }
}

/// A stable 64-bit hash of a string (FNV-1a), to derive per-tensor seeds from names.
pub fn hash_name(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_sequence_and_different_seeds_differ() {
        let a: Vec<u64> = (0..4)
            .scan(Rng::new(7), |r, _| Some(r.next_u64()))
            .collect();
        let b: Vec<u64> = (0..4)
            .scan(Rng::new(7), |r, _| Some(r.next_u64()))
            .collect();
        let c: Vec<u64> = (0..4)
            .scan(Rng::new(8), |r, _| Some(r.next_u64()))
            .collect();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn uniform_and_normal_have_the_right_moments() {
        let mut rng = Rng::new(1);
        let n = 100_000;
        let u: Vec<f64> = (0..n).map(|_| rng.uniform()).collect();
        assert!(u.iter().all(|x| (0.0..1.0).contains(x)));
        let mean_u = u.iter().sum::<f64>() / n as f64;
        assert!((mean_u - 0.5).abs() < 0.01, "{mean_u}");
        let z: Vec<f64> = (0..n).map(|_| rng.normal()).collect();
        let mean = z.iter().sum::<f64>() / n as f64;
        let var = z.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n as f64;
        assert!(
            mean.abs() < 0.02 && (var - 1.0).abs() < 0.03,
            "{mean} {var}"
        );
    }

    #[test]
    fn same_name_and_seed_give_the_same_tensor() -> Result<()> {
        let a = random_tensor("x.weight", &[4, 8], 1, &Device::Cpu)?;
        let b = random_tensor("x.weight", &[4, 8], 1, &Device::Cpu)?;
        let c = random_tensor("y.weight", &[4, 8], 1, &Device::Cpu)?;
        let a: Vec<f32> = a.flatten_all()?.to_vec1()?;
        assert_eq!(a, b.flatten_all()?.to_vec1::<f32>()?);
        assert_ne!(a, c.flatten_all()?.to_vec1::<f32>()?);
        let bound = (3.0f32 / 8.0).sqrt();
        assert!(a.iter().all(|v| v.abs() <= bound));
        let norm: Vec<f32> =
            random_tensor("ln.layer_norm.weight", &[3], 1, &Device::Cpu)?.to_vec1()?;
        assert_eq!(norm, vec![1.0; 3]);
        Ok(())
    }
}
