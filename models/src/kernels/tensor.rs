//! Borrowing the elements of contiguous CPU tensors, for the kernels that beat candle's
//! general ones on the shapes a decoder step or EnCodec uses.

use std::marker::PhantomData;

use candle_core::{Storage, StorageRef, Tensor, WithDType};

/// Runs `f` on the tensor's elements in row-major order when it is a contiguous f32 tensor
/// on the CPU; `None` otherwise (the caller falls back to candle).
pub(crate) fn with_f32<R>(
    tensor: &Tensor,
    f: impl FnOnce(&[f32]) -> R,
) -> candle_core::Result<Option<R>> {
    Ok(cpu_data::<f32>(tensor)?.map(|data| f(&data)))
}

/// The elements of a contiguous CPU tensor of element type `T`, borrowed for as long as
/// the value lives.
pub(crate) struct CpuData<'a, T> {
    storage: StorageRef<'a>,
    start: usize,
    len: usize,
    element: PhantomData<T>,
}

impl<T: WithDType> std::ops::Deref for CpuData<'_, T> {
    type Target = [T];

    fn deref(&self) -> &[T] {
        match &*self.storage {
            // `cpu_data` built this value from a CPU storage of `T` holding the range.
            Storage::Cpu(cpu) => cpu
                .as_slice::<T>()
                .map_or(&[], |all| &all[self.start..self.start + self.len]),
            _ => &[],
        }
    }
}

/// The tensor's elements in row-major order when it is a contiguous CPU tensor of `T`;
/// `None` otherwise.
pub(crate) fn cpu_data<T: WithDType>(
    tensor: &Tensor,
) -> candle_core::Result<Option<CpuData<'_, T>>> {
    if !tensor.device().is_cpu() || tensor.dtype() != T::DTYPE || !tensor.is_contiguous() {
        return Ok(None);
    }
    let (storage, layout) = tensor.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else {
        return Ok(None);
    };
    let (start, len) = (layout.start_offset(), tensor.elem_count());
    if cpu.as_slice::<T>()?.len() < start + len {
        return Ok(None);
    }
    Ok(Some(CpuData {
        storage,
        start,
        len,
        element: PhantomData,
    }))
}
