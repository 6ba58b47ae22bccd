//! The crate's one error type.

use core::fmt;

/// Why a kernel refused its arguments.
///
/// Every public function of the crate reports a bad shape, length, index or parameter
/// through this type instead of panicking. Variants carry the offending sizes so a caller
/// can log them without allocating. `Display` writes a one-line message, also without
/// allocating.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Error {
    /// `rows * cols` (or another product of sizes the call needs) does not fit in `usize`.
    ShapeOverflow {
        /// First factor.
        rows: usize,
        /// Second factor.
        cols: usize,
    },
    /// A matrix with zero rows or zero columns: every kernel needs at least one embedding
    /// of at least one dimension.
    EmptyMatrix {
        /// Rows given.
        rows: usize,
        /// Columns given.
        cols: usize,
    },
    /// A buffer's length differs from the one the shapes require.
    LengthMismatch {
        /// Which argument: `"data"`, `"out"`, `"labels"`, `"grad"`, ...
        buffer: &'static str,
        /// Length the shapes require.
        expected: usize,
        /// Length given.
        actual: usize,
    },
    /// The workspace is shorter than the kernel's `*_workspace_len` query asks for.
    WorkspaceTooSmall {
        /// Elements required.
        required: usize,
        /// Elements given.
        actual: usize,
    },
    /// Two matrices that must share their embedding dimension do not.
    DimensionMismatch {
        /// Columns of the first matrix.
        left: usize,
        /// Columns of the second matrix.
        right: usize,
    },
    /// An index (a row of a triplet, a proxy label, ...) is not below its bound.
    IndexOutOfRange {
        /// Which argument holds it.
        buffer: &'static str,
        /// Position of the bad entry inside that argument.
        position: usize,
        /// The value found.
        index: usize,
        /// The exclusive upper bound it had to respect.
        bound: usize,
    },
    /// A scalar parameter is outside its documented domain (NaN, infinite, beyond a
    /// bound, or of a sign the kernel does not accept).
    InvalidParameter {
        /// The parameter's name, as in the kernel's docs.
        name: &'static str,
        /// The condition the parameter must meet, as the kernel's docs state it (for
        /// example `"finite"`, `"finite, |margin| <= 2^100"`, `"in [0, 1]"`); `Display`
        /// prints it after "must be".
        expected: &'static str,
    },
    /// A data value is NaN or infinite where the kernel requires finite data.
    ///
    /// For matrix data, `row` and `col` locate the first non-finite element in row-major
    /// order. For one-dimensional data (verification scores, ...) `row` is the element's
    /// index and `col` is 0.
    NonFinite {
        /// Which argument holds it.
        buffer: &'static str,
        /// Row of the first non-finite element (its index, for one-dimensional data).
        row: usize,
        /// Column of that element (0 for one-dimensional data).
        col: usize,
    },
    /// A data value too large for the kernel's `f32` arithmetic: the loss kernels and
    /// miners require `|x_ik| * sqrt(dim) <= 2^52` (about `4.5e15 / sqrt(dim)`) for the
    /// rows they take distances of without normalising them first, so that no squared
    /// norm, squared distance or running sum of them can overflow `f32` (see the crate
    /// docs, "Data range").
    TooLarge {
        /// Which argument holds it.
        buffer: &'static str,
        /// Row of the largest element (the first one, if several are equal).
        row: usize,
        /// Column of that element.
        col: usize,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Error::ShapeOverflow { rows, cols } => {
                write!(f, "shape {rows} x {cols} overflows usize")
            }
            Error::EmptyMatrix { rows, cols } => {
                write!(
                    f,
                    "empty matrix: {rows} x {cols} (rows and columns must be >= 1)"
                )
            }
            Error::LengthMismatch {
                buffer,
                expected,
                actual,
            } => write!(
                f,
                "`{buffer}` has length {actual}, the shapes require {expected}"
            ),
            Error::WorkspaceTooSmall { required, actual } => {
                write!(f, "workspace has {actual} elements, {required} required")
            }
            Error::DimensionMismatch { left, right } => {
                write!(f, "embedding dimensions differ: {left} vs {right}")
            }
            Error::IndexOutOfRange {
                buffer,
                position,
                index,
                bound,
            } => write!(
                f,
                "`{buffer}[{position}]` = {index} is out of range (must be < {bound})"
            ),
            Error::InvalidParameter { name, expected } => {
                write!(f, "parameter `{name}` must be {expected}")
            }
            Error::NonFinite { buffer, row, col } => {
                write!(f, "`{buffer}` row {row}, column {col} is NaN or infinite")
            }
            Error::TooLarge { buffer, row, col } => write!(
                f,
                "`{buffer}` row {row}, column {col}: |value| * sqrt(dim) exceeds 2^52 \
                 (about 4.5e15), so its squared distances could overflow f32"
            ),
        }
    }
}

impl core::error::Error for Error {}
