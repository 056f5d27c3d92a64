//! The one place that turns a device and precision choice into a candle device and dtype.
//! CUDA and Metal are compiled in by the `cuda` and `metal` features.

use candle_core::{DType, Device};
use son1k_models::quant::WeightFormat;

use crate::error::EngineError;

/// Where a model runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DeviceChoice {
    /// The CPU (always available).
    #[default]
    Cpu,
    /// An NVIDIA GPU by ordinal (build with `--features cuda`).
    Cuda(usize),
    /// An Apple GPU by ordinal (build with `--features metal`).
    Metal(usize),
}

impl std::str::FromStr for DeviceChoice {
    type Err = EngineError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (kind, ordinal) = match s.split_once(':') {
            Some((kind, n)) => {
                let n = n.parse().map_err(|_| {
                    EngineError::invalid(
                        "device",
                        format!("`{s}`: the ordinal after `:` must be a number"),
                    )
                })?;
                (kind, n)
            }
            None => (s, 0),
        };
        match kind {
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda(ordinal)),
            "metal" => Ok(Self::Metal(ordinal)),
            _ => Err(EngineError::invalid(
                "device",
                format!("`{s}` is not one of cpu, cuda[:N], metal[:N]"),
            )),
        }
    }
}

impl std::fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Cpu => write!(f, "cpu"),
            Self::Cuda(n) => write!(f, "cuda:{n}"),
            Self::Metal(n) => write!(f, "metal:{n}"),
        }
    }
}

impl DeviceChoice {
    /// Opens the device, or explains which build feature it needs.
    pub fn open(self) -> Result<Device, EngineError> {
        let unavailable = |feature: &str, e: candle_core::Error| {
            EngineError::Unsupported(format!(
                "device {self} is unavailable ({e}); it needs a build with `--features {feature}` \
                 and a working driver"
            ))
        };
        match self {
            Self::Cpu => Ok(Device::Cpu),
            Self::Cuda(n) => Device::new_cuda(n).map_err(|e| unavailable("cuda", e)),
            Self::Metal(n) => Device::new_metal(n).map_err(|e| unavailable("metal", e)),
        }
    }
}

/// How a model's decoder computes and stores its weights.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Precision {
    /// 32-bit float (default; exact against the reference).
    #[default]
    F32,
    /// 16-bit float.
    F16,
    /// bfloat16 (GPU only: candle has no bf16 matmul on CPU).
    Bf16,
    /// f32 compute with the large projections quantized to 8 bits at load (Q8_0).
    Q8,
    /// f32 compute with the large projections quantized to 4 bits at load (Q4_K).
    Q4,
}

impl std::str::FromStr for Precision {
    type Err = EngineError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "f32" => Ok(Self::F32),
            "f16" => Ok(Self::F16),
            "bf16" => Ok(Self::Bf16),
            "q8" => Ok(Self::Q8),
            "q4" => Ok(Self::Q4),
            other => Err(EngineError::invalid(
                "dtype",
                format!("`{other}` is not one of f32, f16, bf16, q8, q4"),
            )),
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::F32 => "f32",
            Self::F16 => "f16",
            Self::Bf16 => "bf16",
            Self::Q8 => "q8",
            Self::Q4 => "q4",
        })
    }
}

impl Precision {
    /// The candle dtype on `device`, refusing combinations candle cannot run.
    pub fn dtype_on(self, device: &Device) -> Result<DType, EngineError> {
        match self {
            Self::F32 | Self::Q8 | Self::Q4 => Ok(DType::F32),
            Self::F16 => Ok(DType::F16),
            Self::Bf16 if device.is_cpu() => Err(EngineError::invalid(
                "dtype",
                "bf16 is not supported on cpu (candle has no bf16 matmul there); use f32 or f16",
            )),
            Self::Bf16 => Ok(DType::BF16),
        }
    }

    /// How the large projections store their weights.
    pub fn weight_format(self) -> WeightFormat {
        match self {
            Self::F32 | Self::F16 | Self::Bf16 => WeightFormat::Dense,
            Self::Q8 => WeightFormat::Q8,
            Self::Q4 => WeightFormat::Q4,
        }
    }
}

/// How the MusicGen decoder stores the keys and values of its self-attention cache.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KvCache {
    /// In the precision the decoder computes in (default; exact against the reference).
    #[default]
    Compute,
    /// In f16: half the bytes each step reads from the cache, widened as they are read.
    F16,
}

impl std::str::FromStr for KvCache {
    type Err = EngineError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "compute" => Ok(Self::Compute),
            "f16" => Ok(Self::F16),
            other => Err(EngineError::invalid(
                "kv-cache",
                format!("`{other}` is not one of compute, f16"),
            )),
        }
    }
}

impl std::fmt::Display for KvCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Compute => "compute",
            Self::F16 => "f16",
        })
    }
}

impl KvCache {
    /// The cache's dtype for a decoder computing in `compute`.
    pub fn dtype(self, compute: DType) -> DType {
        match self {
            Self::Compute => compute,
            Self::F16 => DType::F16,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kv_cache_choices_parse_and_a_bad_one_names_the_flag() {
        assert_eq!("f16".parse::<KvCache>().unwrap(), KvCache::F16);
        assert_eq!(KvCache::default().dtype(DType::F32), DType::F32);
        assert_eq!(KvCache::F16.dtype(DType::F32), DType::F16);
        let error = "q8".parse::<KvCache>().unwrap_err().to_string();
        assert!(
            error.contains("kv-cache") && error.contains("compute, f16"),
            "{error}"
        );
    }

    #[test]
    fn device_names_parse_and_bad_ones_name_the_field() {
        assert_eq!("cpu".parse::<DeviceChoice>().unwrap(), DeviceChoice::Cpu);
        assert_eq!(
            "cuda:1".parse::<DeviceChoice>().unwrap(),
            DeviceChoice::Cuda(1)
        );
        assert_eq!(
            "metal".parse::<DeviceChoice>().unwrap(),
            DeviceChoice::Metal(0)
        );
        let err = "tpu".parse::<DeviceChoice>().unwrap_err().to_string();
        assert!(err.contains("device") && err.contains("tpu"), "{err}");
        assert!(DeviceChoice::Cpu.open().unwrap().is_cpu());
    }

    #[test]
    fn bf16_is_refused_on_cpu_with_a_reason() {
        let err = Precision::Bf16
            .dtype_on(&Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(err.contains("dtype") && err.contains("cpu"), "{err}");
        assert_eq!(Precision::F16.dtype_on(&Device::Cpu).unwrap(), DType::F16);
    }
}
