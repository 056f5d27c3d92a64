//! Borrowing the f32 data of contiguous CPU tensors, for the hand-written kernels that beat
//! candle's general ones on the shapes a decoder step or EnCodec uses.

use candle_core::{DType, Storage, Tensor};

/// Runs `f` on the tensor's elements in row-major order when it is a contiguous f32 tensor
/// on the CPU; `None` otherwise (the caller falls back to candle).
pub fn with_f32<R>(tensor: &Tensor, f: impl FnOnce(&[f32]) -> R) -> candle_core::Result<Option<R>> {
    if !tensor.device().is_cpu() || tensor.dtype() != DType::F32 || !tensor.is_contiguous() {
        return Ok(None);
    }
    let (storage, layout) = tensor.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else {
        return Ok(None);
    };
    let start = layout.start_offset();
    let data = &cpu.as_slice::<f32>()?[start..start + tensor.elem_count()];
    Ok(Some(f(data)))
}

/// Runs `f` on a thread of rayon's global pool. The parallel kernels `f` calls then share
/// their work with the other pool threads from inside the pool; called from outside, each
/// of them (a decoder step makes about 200) would hand its work over and wait, waking the
/// pool every time and leaving the calling thread idle.
pub fn on_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    if rayon::current_thread_index().is_some() {
        return f();
    }
    rayon::scope(|_| f())
}

/// Whether the CPU has AVX2 and FMA, which the fast paths of our hand-written kernels
/// need (the check is cached by the standard library).
#[cfg(target_arch = "x86_64")]
pub fn has_avx2_fma() -> bool {
    std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
}
