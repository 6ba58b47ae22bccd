//! Validated row-major views of embeddings ([`Matrix`]), and mutable access to several
//! rows of a row-major buffer at once (the gradient updates of a pair or a triplet).

use core::num::NonZeroUsize;

use crate::error::Error;

/// A validated, read-only, row-major `rows x dim` matrix of `f32` embeddings.
///
/// Row `i` is `data[i * dim .. (i + 1) * dim]`. Construction checks the shape once, so
/// every kernel that takes a `Matrix` can rely on `rows >= 1`, `dim >= 1` and
/// `data.len() == rows * dim`.
///
/// ```
/// use triplet_kernels::Matrix;
/// let data = [1.0_f32, 2.0, 3.0, 4.0, 5.0, 6.0];
/// let x = Matrix::new(&data, 3, 2)?;
/// assert_eq!(x.row(1), Some(&[3.0_f32, 4.0][..]));
/// # Ok::<(), triplet_kernels::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Matrix<'a> {
    data: &'a [f32],
    // Non-zero by type, so the optimiser knows `chunks_exact(dim)` cannot panic.
    rows: NonZeroUsize,
    dim: NonZeroUsize,
}

impl<'a> Matrix<'a> {
    /// Wraps `data` as a `rows x dim` row-major matrix.
    ///
    /// # Errors
    ///
    /// - [`Error::ShapeOverflow`] when `rows * dim` overflows `usize`;
    /// - [`Error::EmptyMatrix`] when `rows == 0` or `dim == 0`;
    /// - [`Error::LengthMismatch`] (buffer `"data"`) when `data.len() != rows * dim`.
    pub const fn new(data: &'a [f32], rows: usize, dim: usize) -> Result<Self, Error> {
        let Some(len) = rows.checked_mul(dim) else {
            return Err(Error::ShapeOverflow { rows, cols: dim });
        };
        let (Some(nz_rows), Some(nz_dim)) = (NonZeroUsize::new(rows), NonZeroUsize::new(dim))
        else {
            return Err(Error::EmptyMatrix { rows, cols: dim });
        };
        if data.len() != len {
            return Err(Error::LengthMismatch {
                buffer: "data",
                expected: len,
                actual: data.len(),
            });
        }
        Ok(Matrix {
            data,
            rows: nz_rows,
            dim: nz_dim,
        })
    }

    /// Number of embeddings (rows), at least 1.
    #[inline]
    pub const fn rows(&self) -> usize {
        self.rows.get()
    }

    /// Embedding dimension (columns), at least 1.
    #[inline]
    pub const fn dim(&self) -> usize {
        self.dim.get()
    }

    /// The whole buffer, `rows * dim` elements.
    #[inline]
    pub const fn as_slice(&self) -> &'a [f32] {
        self.data
    }

    /// `rows * dim`, the number of elements (it cannot overflow: checked at construction).
    #[inline]
    pub const fn len(&self) -> usize {
        self.data.len()
    }

    /// Always `false`: a `Matrix` has at least one element. Present for API symmetry.
    #[inline]
    pub const fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Row `i`, or `None` when `i >= rows`.
    #[inline]
    pub fn row(&self, i: usize) -> Option<&'a [f32]> {
        let dim = self.dim.get();
        let start = i.checked_mul(dim)?;
        self.data.get(start..start.checked_add(dim)?)
    }

    /// Iterator over the rows, in order.
    #[inline]
    pub fn row_iter(&self) -> core::slice::ChunksExact<'a, f32> {
        self.data.chunks_exact(self.dim.get())
    }

    /// Rows `r0..r1` as a matrix of their own (an error for an empty or out-of-range
    /// range).
    pub(crate) fn sub_rows(&self, r0: usize, r1: usize) -> Result<Matrix<'a>, Error> {
        let d = self.dim();
        let data = self
            .as_slice()
            .get(r0.saturating_mul(d)..r1.saturating_mul(d))
            .unwrap_or(&[]);
        Matrix::new(data, r1.saturating_sub(r0), d)
    }
}

/// Rows `i` and `j` of a row-major buffer with rows of `dim`, both mutable, in that order;
/// `None` when `i == j` or a row is out of range.
#[inline(always)]
pub(crate) fn two_rows_mut(
    buf: &mut [f32],
    dim: usize,
    i: usize,
    j: usize,
) -> Option<(&mut [f32], &mut [f32])> {
    let (lo, hi) = if i < j { (i, j) } else { (j, i) };
    if lo == hi {
        return None;
    }
    let (head, tail) = buf.split_at_mut_checked(hi.checked_mul(dim)?)?;
    let rl = head.get_mut(lo.checked_mul(dim)?..)?.get_mut(..dim)?;
    let rh = tail.get_mut(..dim)?;
    Some(if i < j { (rl, rh) } else { (rh, rl) })
}

/// Rows `i`, `j` and `k` of a row-major buffer with rows of `dim`, all mutable, in that
/// order; `None` when two of them coincide or a row is out of range.
#[inline(always)]
pub(crate) fn three_rows_mut(
    buf: &mut [f32],
    dim: usize,
    i: usize,
    j: usize,
    k: usize,
) -> Option<[&mut [f32]; 3]> {
    // Sort the three (row, slot) pairs by row.
    let mut o = [(i, 0_usize), (j, 1), (k, 2)];
    if o[0].0 > o[1].0 {
        o.swap(0, 1);
    }
    if o[1].0 > o[2].0 {
        o.swap(1, 2);
    }
    if o[0].0 > o[1].0 {
        o.swap(0, 1);
    }
    let [(r0, s0), (r1, s1), (r2, s2)] = o;
    if r0 == r1 || r1 == r2 {
        return None;
    }
    let (head, rest) = buf.split_at_mut_checked(r1.checked_mul(dim)?)?;
    let (mid, tail) = rest.split_at_mut_checked((r2 - r1).checked_mul(dim)?)?;
    let mut slots: [Option<&mut [f32]>; 3] = [None, None, None];
    for (slot, row) in [
        (s0, head.get_mut(r0.checked_mul(dim)?..)?.get_mut(..dim)?),
        (s1, mid.get_mut(..dim)?),
        (s2, tail.get_mut(..dim)?),
    ] {
        if let Some(x) = slots.get_mut(slot) {
            *x = Some(row);
        }
    }
    let [Some(a), Some(b), Some(c)] = slots else {
        return None;
    };
    Some([a, b, c])
}
