//! Borrowing the f32 data of contiguous CPU tensors, for the hand-written kernels that beat
//! candle's general ones on the shapes a decoder step or EnCodec uses.

use std::marker::PhantomData;

use candle_core::{Storage, StorageRef, Tensor, WithDType};

/// Runs `f` on the tensor's elements in row-major order when it is a contiguous f32 tensor
/// on the CPU; `None` otherwise (the caller falls back to candle).
pub fn with_f32<R>(tensor: &Tensor, f: impl FnOnce(&[f32]) -> R) -> candle_core::Result<Option<R>> {
    Ok(cpu_data::<f32>(tensor)?.map(|data| f(&data)))
}

/// The elements of a contiguous CPU tensor of element type `T`, borrowed for as long as
/// the value lives.
pub struct CpuData<'a, T> {
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
pub fn cpu_data<T: WithDType>(tensor: &Tensor) -> candle_core::Result<Option<CpuData<'_, T>>> {
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

/// Runs `f` on a thread of rayon's global pool. The parallel kernels `f` calls then share
/// their work with the other pool threads from inside the pool; called from outside, each
/// of them (an EnCodec decode makes hundreds) would hand its work over and wait, waking
/// the pool every time and leaving the calling thread idle. A CPU decoder step, one run of
/// [`crate::phases`], then has the calling thread work alongside the others.
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

/// [`has_avx2_fma`], plus F16C for the kernels that widen f16 values (scales, caches).
#[cfg(target_arch = "x86_64")]
pub fn has_avx2_fma_f16c() -> bool {
    has_avx2_fma() && std::arch::is_x86_feature_detected!("f16c")
}

/// Where a matrix's elements lie in a slice: element `(i, j)` is at
/// `offset + i * row_stride + j * col_stride`.
#[derive(Clone, Copy, Debug)]
pub struct MatrixView {
    pub offset: usize,
    pub row_stride: usize,
    pub col_stride: usize,
}

impl MatrixView {
    /// A row-major `[_, cols]` matrix starting at `offset`.
    pub fn rows(offset: usize, cols: usize) -> Self {
        Self {
            offset,
            row_stride: cols,
            col_stride: 1,
        }
    }

    /// Whether every element of a `[rows, cols]` matrix lies inside a slice of `len`.
    fn fits(&self, rows: usize, cols: usize, len: usize) -> bool {
        if rows == 0 || cols == 0 {
            return true;
        }
        let last = (rows - 1)
            .checked_mul(self.row_stride)
            .zip((cols - 1).checked_mul(self.col_stride))
            .and_then(|(a, b)| a.checked_add(b)?.checked_add(self.offset));
        matches!(last, Some(last) if last < len)
    }

    /// Whether no two elements of a `[rows, cols]` matrix share a place, so parallel
    /// writes to them cannot race.
    fn distinct(&self, rows: usize, cols: usize) -> bool {
        let (r, c) = (self.row_stride, self.col_stride);
        rows == 0
            || cols == 0
            || rows == 1 && (cols == 1 || c > 0)
            || cols == 1 && r > 0
            || c > 0 && r > c.saturating_mul(cols - 1)
            || r > 0 && c > r.saturating_mul(rows - 1)
    }

    fn strides(&self) -> (isize, isize) {
        (self.col_stride as isize, self.row_stride as isize)
    }
}

/// `dst += a · b` for `a` `[m, k]` and `b` `[k, n]` laid out as their views say, on the
/// rayon pool with the GEMM kernels candle uses. Strided views let a convolution multiply
/// shifted windows of its input in place, where candle would first copy them (im2col).
/// `None`, touching nothing, when a view reaches outside its slice or names one element
/// of `dst` twice.
#[allow(clippy::too_many_arguments)]
pub fn gemm_accumulate(
    (m, n, k): (usize, usize, usize),
    dst: &mut [f32],
    dst_view: MatrixView,
    a: &[f32],
    a_view: MatrixView,
    b: &[f32],
    b_view: MatrixView,
) -> Option<()> {
    let fits = dst_view.fits(m, n, dst.len())
        && dst_view.distinct(m, n)
        && a_view.fits(m, k, a.len())
        && b_view.fits(k, n, b.len());
    if !fits {
        return None;
    }
    if m == 0 || n == 0 || k == 0 {
        return Some(());
    }
    let (dst_cs, dst_rs) = dst_view.strides();
    let (a_cs, a_rs) = a_view.strides();
    let (b_cs, b_rs) = b_view.strides();
    // SAFETY: every element each view names lies inside its slice (checked above), and
    // `dst` is borrowed mutably, so it overlaps neither input.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr().add(dst_view.offset),
            dst_cs,
            dst_rs,
            true,
            a.as_ptr().add(a_view.offset),
            a_cs,
            a_rs,
            b.as_ptr().add(b_view.offset),
            b_cs,
            b_rs,
            1.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::Rayon(0),
        );
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strided_products_accumulate_into_their_views_and_stray_views_are_refused() {
        // a = [[1, 2], [3, 4]] read transposed from [1, 3, 2, 4]; b = the 2x3 matrix whose
        // columns are every other element of 0..6 (offset 0, column stride 2).
        let a = [1.0, 3.0, 2.0, 4.0];
        let a_view = MatrixView {
            offset: 0,
            row_stride: 1,
            col_stride: 2,
        };
        let b: Vec<f32> = (0..8).map(|v| v as f32).collect();
        let b_view = a_view;
        let mut dst = vec![1.0f32; 6];
        gemm_accumulate(
            (2, 3, 2),
            &mut dst,
            MatrixView::rows(0, 3),
            &a,
            a_view,
            &b,
            b_view,
        )
        .unwrap();
        // b = [[0, 2, 4], [1, 3, 5]]: a.b = [[2, 8, 14], [4, 18, 32]], plus the ones.
        assert_eq!(dst, [3.0, 9.0, 15.0, 5.0, 19.0, 33.0]);
        // One element past the end of b, and a destination whose rows overlap.
        let far = MatrixView {
            offset: 3,
            ..b_view
        };
        assert!(gemm_accumulate(
            (2, 3, 2),
            &mut dst,
            MatrixView::rows(0, 3),
            &a,
            a_view,
            &b,
            far
        )
        .is_none());
        let overlapping = MatrixView::rows(0, 2);
        assert!(
            gemm_accumulate((2, 3, 2), &mut dst, overlapping, &a, a_view, &b, b_view).is_none()
        );
        assert_eq!(dst, [3.0, 9.0, 15.0, 5.0, 19.0, 33.0]);
    }
}
