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
