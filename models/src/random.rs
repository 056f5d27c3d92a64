//! Random weights with sensible scales, fixed by a seed and the tensor's name, for tiny test
//! checkpoints and for benchmarks of full-size shapes without downloading anything.

use candle_core::{Device, Tensor};

use crate::error::Result;
use crate::rng::{hash_name, Rng};

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

#[cfg(test)]
mod tests {
    use super::*;

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
