//! Strided GEMM into a view of a buffer, on the rayon pool with the kernels candle uses:
//! a convolution multiplies shifted windows of its input in place, where candle would
//! first copy them (im2col).

/// Where a matrix's elements lie in a slice: element `(i, j)` is at
/// `offset + i * row_stride + j * col_stride`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct MatrixView {
    pub offset: usize,
    pub row_stride: usize,
    pub col_stride: usize,
}

impl MatrixView {
    /// A row-major `[_, cols]` matrix starting at `offset`.
    pub(crate) fn rows(offset: usize, cols: usize) -> Self {
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
pub(crate) fn gemm_accumulate(
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
