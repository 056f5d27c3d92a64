//! Checkpoint tensors by name: memory-mapped safetensors (single file or sharded) or an
//! in-memory map, with shape and dtype checks whose errors name the tensor and the file.
//!
//! Why not candle-nn's `VarBuilder`: its safetensors backend (`impl SimpleBackend for
//! MmapedSafetensors` in candle-nn's `var_builder.rs`) takes shard paths rather than
//! `model.safetensors.index.json`, keeps no file paths, loads and converts a tensor before
//! comparing shapes, and reports "shape mismatch for NAME" or "cannot find tensor NAME"
//! without the file; it also accepts any stored dtype and knows neither weight-norm naming.
//! A custom `SimpleBackend` could do all of that (its `get` receives the full name, the
//! expected shape, the dtype and the device), but it must return `candle_core::Error`, so
//! our typed errors would survive only as text, and it would hold all of this file's logic
//! anyway; candle's random init uses the device RNG, which cannot be seeded on the CPU. So
//! `Vb` keeps `VarBuilder`'s shape (`pp`, `get(shape, name)`, `contains`) over our own
//! `Weights`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};

use crate::error::{ModelError, Result};

/// Name of the single-file weights in a Hugging Face checkpoint.
pub const SINGLE_FILE: &str = "model.safetensors";
/// Name of the shard index of a sharded Hugging Face checkpoint.
pub const SHARD_INDEX: &str = "model.safetensors.index.json";

enum Source {
    /// Memory-mapped files; `routing` maps a tensor name to its index in `files`.
    Files {
        files: Vec<(PathBuf, MmapedSafetensors)>,
        routing: HashMap<String, usize>,
        description: String,
    },
    /// Tensors built in memory.
    Memory(HashMap<String, Tensor>),
    /// Random tensors made on request, each fixed by the seed and its name (tiny models,
    /// benchmark presets); recorded, when asked, so they can be saved as a checkpoint.
    Random {
        seed: u64,
        recorded: Option<Mutex<HashMap<String, Tensor>>>,
    },
}

/// All tensors of a checkpoint, loaded lazily by name onto one device.
pub struct Weights {
    source: Source,
    device: Device,
}

impl Weights {
    /// Opens the weights of a checkpoint directory: `model.safetensors`, or the shards that
    /// `model.safetensors.index.json` lists.
    pub fn from_dir(dir: &Path, device: &Device) -> Result<Self> {
        let single = dir.join(SINGLE_FILE);
        let index = dir.join(SHARD_INDEX);
        if single.is_file() {
            let st = open_safetensors(&single)?;
            let routing = st
                .tensors()
                .into_iter()
                .map(|(name, _)| (name, 0))
                .collect();
            let description = single.display().to_string();
            return Ok(Self {
                source: Source::Files {
                    files: vec![(single, st)],
                    routing,
                    description,
                },
                device: device.clone(),
            });
        }
        if !index.is_file() {
            return Err(ModelError::MissingFile {
                path: single,
                what: "the model weights (or a sharded model.safetensors.index.json)",
            });
        }
        let text = std::fs::read_to_string(&index).map_err(|source| ModelError::Io {
            path: index.clone(),
            source,
        })?;
        let parsed: ShardIndex = serde_json::from_str(&text).map_err(|e| ModelError::BadJson {
            path: index.clone(),
            what: "safetensors shard index",
            message: e.to_string(),
        })?;
        let mut file_slots: HashMap<String, usize> = HashMap::new();
        let mut files = Vec::new();
        let mut routing = HashMap::new();
        let mut entries: Vec<_> = parsed.weight_map.into_iter().collect();
        entries.sort();
        for (name, file) in entries {
            let slot = match file_slots.get(&file) {
                Some(slot) => *slot,
                None => {
                    let path = dir.join(&file);
                    if !path.is_file() {
                        return Err(ModelError::MissingFile {
                            path,
                            what: "a weight shard listed in model.safetensors.index.json",
                        });
                    }
                    let st = open_safetensors(&path)?;
                    files.push((path, st));
                    file_slots.insert(file, files.len() - 1);
                    files.len() - 1
                }
            };
            routing.insert(name, slot);
        }
        let description = format!("{} ({} shards)", index.display(), files.len());
        Ok(Self {
            source: Source::Files {
                files,
                routing,
                description,
            },
            device: device.clone(),
        })
    }

    /// Wraps tensors built in memory.
    pub fn from_tensors(tensors: HashMap<String, Tensor>, device: &Device) -> Self {
        Self {
            source: Source::Memory(tensors),
            device: device.clone(),
        }
    }

    /// Random weights for whatever shapes the model asks for, fixed by `seed`; see
    /// [`crate::random::random_tensor`] for the distributions. Nothing is kept beyond what
    /// the model holds, so a benchmark's memory is the model's.
    pub fn random(seed: u64, device: &Device) -> Self {
        Self {
            source: Source::Random {
                seed,
                recorded: None,
            },
            device: device.clone(),
        }
    }

    /// Random weights like [`Weights::random`] that also keep every tensor handed out, for
    /// [`Weights::into_tensors`] to save as a checkpoint.
    pub fn random_recorded(seed: u64, device: &Device) -> Self {
        Self {
            source: Source::Random {
                seed,
                recorded: Some(Mutex::new(HashMap::new())),
            },
            device: device.clone(),
        }
    }

    /// Every tensor handed out by recorded random weights (or held by in-memory weights), by name,
    /// in the dtype it was made in: what a checkpoint of this model must contain.
    pub fn into_tensors(self) -> HashMap<String, Tensor> {
        match self.source {
            Source::Files { .. } => HashMap::new(),
            Source::Memory(map) => map,
            Source::Random { recorded, .. } => recorded
                .map(|r| r.into_inner().unwrap_or_else(|e| e.into_inner()))
                .unwrap_or_default(),
        }
    }

    /// The device tensors are loaded onto.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Whether the checkpoint holds a tensor of this name.
    pub fn contains(&self, name: &str) -> bool {
        match &self.source {
            Source::Files { routing, .. } => routing.contains_key(name),
            Source::Memory(map) => map.contains_key(name),
            // Random weights follow the config: optional tensors are taken to be absent.
            Source::Random { .. } => false,
        }
    }

    /// A root builder whose tensors are converted to `dtype`.
    pub fn root(&self, dtype: DType) -> Vb<'_> {
        Vb {
            weights: self,
            prefix: String::new(),
            dtype,
        }
    }

    fn describe(&self) -> String {
        match &self.source {
            Source::Files { description, .. } => description.clone(),
            Source::Memory(_) | Source::Random { .. } => "the in-memory weights".to_string(),
        }
    }

    /// Loads tensor `name`, checks its shape and converts it to `dtype`.
    fn load(&self, name: &str, shape: &[usize], dtype: DType) -> Result<Tensor> {
        let (tensor, location) = match &self.source {
            Source::Random { seed, recorded } => {
                let tensor = crate::random::random_tensor(name, shape, *seed, &self.device)?;
                if let Some(recorded) = recorded {
                    let mut recorded = recorded.lock().unwrap_or_else(|e| e.into_inner());
                    recorded.insert(name.to_string(), tensor.clone());
                }
                (tensor, self.describe())
            }
            Source::Memory(map) => {
                let tensor = map.get(name).ok_or_else(|| ModelError::MissingTensor {
                    name: name.to_string(),
                    location: self.describe(),
                })?;
                (tensor.clone(), self.describe())
            }
            Source::Files { files, routing, .. } => {
                let slot = *routing.get(name).ok_or_else(|| ModelError::MissingTensor {
                    name: name.to_string(),
                    location: self.describe(),
                })?;
                let (path, st) = &files[slot];
                let location = path.display().to_string();
                let view = st.get(name).map_err(|_| ModelError::MissingTensor {
                    name: name.to_string(),
                    location: location.clone(),
                })?;
                // Check before reading, so a mis-shaped tensor costs no copy.
                check_shape(name, &location, shape, view.shape())?;
                let tensor =
                    st.load(name, &self.device)
                        .map_err(|e| ModelError::BadSafetensors {
                            path: path.clone(),
                            message: format!("tensor `{name}`: {e}"),
                        })?;
                (tensor, location)
            }
        };
        check_shape(name, &location, shape, tensor.dims())?;
        if !matches!(tensor.dtype(), DType::F32 | DType::F16 | DType::BF16) {
            return Err(ModelError::UnsupportedDtype {
                name: name.to_string(),
                location,
                dtype: tensor.dtype(),
            });
        }
        Ok(tensor.to_dtype(dtype)?.to_device(&self.device)?)
    }
}

fn check_shape(name: &str, location: &str, expected: &[usize], found: &[usize]) -> Result<()> {
    if expected == found {
        Ok(())
    } else {
        Err(ModelError::ShapeMismatch {
            name: name.to_string(),
            location: location.to_string(),
            expected: expected.to_vec(),
            found: found.to_vec(),
        })
    }
}

fn open_safetensors(path: &Path) -> Result<MmapedSafetensors> {
    // SAFETY: the file is mapped read-only; like every mmap reader we rely on nobody
    // truncating the checkpoint while it is in use.
    unsafe { MmapedSafetensors::new(path) }.map_err(|e| ModelError::BadSafetensors {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

#[derive(serde::Deserialize)]
struct ShardIndex {
    weight_map: HashMap<String, String>,
}

/// A view of the checkpoint under a key prefix, in the manner of candle's `VarBuilder`:
/// `vb.pp("layers").pp(3).get(&[h, h], "weight")` loads `layers.3.weight`.
#[derive(Clone)]
pub struct Vb<'a> {
    weights: &'a Weights,
    prefix: String,
    dtype: DType,
}

impl<'a> Vb<'a> {
    /// The builder for keys under `prefix.name`.
    pub fn pp(&self, name: impl std::fmt::Display) -> Vb<'a> {
        let prefix = if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{}", self.prefix, name)
        };
        Vb {
            weights: self.weights,
            prefix,
            dtype: self.dtype,
        }
    }

    /// The same prefix with tensors converted to another dtype.
    pub fn with_dtype(&self, dtype: DType) -> Vb<'a> {
        Vb {
            dtype,
            ..self.clone()
        }
    }

    /// The dtype tensors are converted to.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The device tensors are loaded onto.
    pub fn device(&self) -> &Device {
        self.weights.device()
    }

    /// The full checkpoint key of `name` under this prefix.
    pub fn key(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{}", self.prefix, name)
        }
    }

    /// Whether `name` exists under this prefix.
    pub fn contains(&self, name: &str) -> bool {
        self.weights.contains(&self.key(name))
    }

    /// Loads `name` with the expected `shape`.
    pub fn get(&self, shape: &[usize], name: &str) -> Result<Tensor> {
        self.weights.load(&self.key(name), shape, self.dtype)
    }

    /// Loads a weight-normalised `weight` of `shape` (dim 0 kept), computing
    /// `v * (g / ‖v‖)` from either naming: `weight_g`/`weight_v` (published checkpoints) or
    /// `parametrizations.weight.original0`/`original1` (newer torch exports).
    pub fn weight_norm(&self, shape: &[usize]) -> Result<Tensor> {
        let mut g_shape = vec![1; shape.len()];
        g_shape[0] = shape[0];
        let (g_name, v_name) = if self.contains("weight_g") || !self.contains(NEW_G) {
            ("weight_g", "weight_v")
        } else {
            (NEW_G, NEW_V)
        };
        // Weight norm is computed in f32 whatever the compute dtype, as torch does.
        let f32_vb = self.with_dtype(DType::F32);
        let g = f32_vb.get(&g_shape, g_name)?;
        let v = f32_vb.get(shape, v_name)?;
        let dims: Vec<usize> = (1..shape.len()).collect();
        let norm = v.sqr()?.sum_keepdim(dims)?.sqrt()?;
        let weight = v.broadcast_mul(&g.div(&norm)?)?;
        Ok(weight.to_dtype(self.dtype)?)
    }
}

const NEW_G: &str = "parametrizations.weight.original0";
const NEW_V: &str = "parametrizations.weight.original1";

#[cfg(test)]
mod tests {
    use super::*;

    fn memory(entries: &[(&str, Tensor)]) -> Weights {
        let map = entries
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        Weights::from_tensors(map, &Device::Cpu)
    }

    #[test]
    fn weight_norm_reads_both_namings_and_normalises_per_output_channel() -> Result<()> {
        let v = Tensor::new(&[[[3f32, 4.0]], [[0.0, 2.0]]], &Device::Cpu)?; // [2,1,2]
        let g = Tensor::new(&[[[10f32]], [[0.5]]], &Device::Cpu)?; // [2,1,1]
        let legacy = memory(&[("c.weight_g", g.clone()), ("c.weight_v", v.clone())]);
        let newer = memory(&[
            ("c.parametrizations.weight.original0", g),
            ("c.parametrizations.weight.original1", v),
        ]);
        for weights in [legacy, newer] {
            let w = weights.root(DType::F32).pp("c").weight_norm(&[2, 1, 2])?;
            let w: Vec<f32> = w.flatten_all()?.to_vec1()?;
            assert_eq!(w, vec![6.0, 8.0, 0.0, 0.5]);
        }
        Ok(())
    }

    #[test]
    fn missing_and_misshaped_tensors_are_named() -> Result<()> {
        let weights = memory(&[("a.weight", Tensor::zeros((2, 3), DType::F32, &Device::Cpu)?)]);
        let vb = weights.root(DType::F32).pp("a");
        let err = vb.get(&[3, 2], "weight").unwrap_err().to_string();
        assert!(err.contains("`a.weight`") && err.contains("[2, 3]") && err.contains("[3, 2]"));
        let err = vb.get(&[1], "bias").unwrap_err().to_string();
        assert!(err.contains("`a.bias` is missing"), "{err}");
        Ok(())
    }
}
