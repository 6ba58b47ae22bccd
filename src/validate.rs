//! Argument and data validation shared by every kernel family and its scalar twin: buffer
//! lengths, workspace sizes, products of sizes, labels, triplet counts, and the data rules
//! of the crate docs (finite values; the range of [`Error::TooLarge`] for rows whose
//! distances are taken without normalising them). Each check returns the one [`Error`]
//! the public docs name; a kernel runs its checks in its documented order, all of them
//! before its first write.

use crate::error::Error;
use crate::matrix::Matrix;
use crate::mining::{count_exact, Mining};
use crate::simd::{Backend, Kernel, Simd};

// ---------------------------------------------------------------------------------------
// Lengths and sizes.

/// Checks that `buffer` has exactly `expected` elements.
#[inline]
pub(crate) fn check_len(buffer: &'static str, expected: usize, actual: usize) -> Result<(), Error> {
    if expected == actual {
        Ok(())
    } else {
        Err(Error::LengthMismatch {
            buffer,
            expected,
            actual,
        })
    }
}

/// Checks that a workspace has at least `required` elements.
#[inline]
pub(crate) fn check_workspace(required: usize, actual: usize) -> Result<(), Error> {
    if actual >= required {
        Ok(())
    } else {
        Err(Error::WorkspaceTooSmall { required, actual })
    }
}

/// `a * b`, or `ShapeOverflow`.
#[inline]
pub(crate) fn checked_area(rows: usize, cols: usize) -> Result<usize, Error> {
    rows.checked_mul(cols)
        .ok_or(Error::ShapeOverflow { rows, cols })
}

/// Checks that `labels` has one label per row of `x`; returns the number of rows.
pub(crate) fn check_labels(x: &Matrix<'_>, labels: &[u32]) -> Result<usize, Error> {
    let n = x.rows();
    check_len("labels", n, labels.len())?;
    Ok(n)
}

// ---------------------------------------------------------------------------------------
// Data.

/// `Err(NonFinite)` at the first NaN or infinite element of `data`, which the caller
/// names `buffer`: row-major data of `cols` columns (the matrix dimension, or 1 for
/// one-dimensional data, whose `row` is then the index and `col` 0).
pub(crate) fn check_finite(buffer: &'static str, data: &[f32], cols: usize) -> Result<(), Error> {
    let cols = cols.max(1);
    match data.iter().position(|v| !v.is_finite()) {
        Some(position) => Err(Error::NonFinite {
            buffer,
            row: position / cols,
            col: position % cols,
        }),
        None => Ok(()),
    }
}

/// The square of the largest `|x_ik| * sqrt(dim)` the loss kernels accept for rows they
/// take distances of without normalising them: `(2^52)^2`. Every squared norm is then at
/// most `2^104` and every squared distance (`|a - b|^2 <= 2 |a|^2 + 2 |b|^2`) and Gram
/// term at most `2^106`, so even a sum of `2^21` such terms (a batch-all row sum, in
/// `f32` lanes) stays below `f32::MAX` (about `2^128`).
const ELEMENT_BOUND_SQ_TIMES_DIM: f64 = 2.028_240_960_365_167e31; // 2^104

/// Validates the data of a loss kernel or miner: every element finite
/// ([`Error::NonFinite`] at the first offender), and, unless the kernel normalises the
/// rows first (`normalized`), within the range [`Error::TooLarge`] documents. One
/// branch-free pass over the absolute values' bit patterns (an integer maximum,
/// vectorised by the active backend's instructions); the positions are searched only on
/// failure.
pub(crate) fn check_rows(x: &Matrix<'_>, normalized: bool) -> Result<(), Error> {
    let data = x.as_slice();
    let max_bits = Backend::active().dispatch(MaxBits(data));
    if max_bits >= 0x7f80_0000 {
        check_finite("x", data, x.dim())?;
    }
    if normalized {
        return Ok(());
    }
    let m = f64::from(f32::from_bits(max_bits));
    if m * m * x.dim() as f64 <= ELEMENT_BOUND_SQ_TIMES_DIM {
        return Ok(());
    }
    let position = data
        .iter()
        .position(|v| v.to_bits() & 0x7fff_ffff == max_bits)
        .unwrap_or(0);
    Err(Error::TooLarge {
        buffer: "x",
        row: position / x.dim(),
        col: position % x.dim(),
    })
}

/// The largest absolute value's bit pattern of a slice (NaN and infinities above every
/// finite value), as a kernel: compiled with the backend's target features.
struct MaxBits<'a>(&'a [f32]);

impl Kernel for MaxBits<'_> {
    type Output = u32;
    #[inline(always)]
    fn run<S: Simd, const MR: usize, const NV: usize>(self, _: S) -> u32 {
        self.0
            .iter()
            .fold(0_u32, |m, v| m.max(v.to_bits() & 0x7fff_ffff))
    }
}

// ---------------------------------------------------------------------------------------
// Triplet counts.

/// `Err(ShapeOverflow)` when the number of triplets of a batch could overflow `usize`
/// (checked exactly only when `n^3` itself overflows).
pub(crate) fn check_triplet_count(labels: &[u32], mining: Mining) -> Result<(), Error> {
    let n = labels.len();
    if n.checked_mul(n).and_then(|m| m.checked_mul(n)).is_some() {
        Ok(())
    } else {
        count_exact(labels, mining).map(|_| ())
    }
}
