//! Compact storage formats for embeddings (f16, bf16, int8 with a per-row scale, sign
//! bits) and their quantize / dequantize kernels.
//!
//! Half-precision values are stored as their raw 16 bits in `u16` (IEEE 754 binary16 for
//! f16, the upper half of an `f32` for bf16), so the crate needs no dependency for them
//! and any half-precision type converts for free: with the `half` crate,
//! `half::f16::from_bits(b)` / `x.to_bits()`, or a `bytemuck` cast of a `&[half::f16]`.

use crate::error::Error;
use crate::matrix::Matrix;
use crate::simd::{Backend, Kernel, Simd};
use crate::validate::{check_finite, check_len, checked_area};
use core::num::NonZeroUsize;

/// Smallest `|x|` that rounds to infinity in f16 (`65520`); quantizing it is an error.
pub(crate) const F16_OVERFLOW: f32 = 65520.0;
/// Smallest `|x|` that rounds to infinity in bf16 (`0x7f7f8000` as `f32`, about
/// `3.3961776e38`).
pub(crate) const BF16_OVERFLOW_BITS: u32 = 0x7f7f_8000;
/// The int8 code range is symmetric: `[-127, 127]`.
pub(crate) const I8_MAX: f32 = 127.0;
/// `1.5 * 2^23`: adding and subtracting it rounds an `f32` of magnitude below `2^22` to
/// an integer, ties to even (the default rounding of every operation).
const ROUND_MAGIC: f32 = 12_582_912.0;

/// f16 bits to `f32`, exactly (every f16 value is an `f32` value; NaN stays NaN).
#[inline(always)]
pub(crate) fn f16_to_f32(h: u16) -> f32 {
    let sign = u32::from(h & 0x8000) << 16;
    let exp = u32::from((h >> 10) & 0x1f);
    let mant = u32::from(h & 0x3ff);
    let magnitude = if exp == 0 {
        // Zero or subnormal: `mant * 2^-24`, exact.
        mant as f32 * 5.960_464_5e-8
    } else if exp == 31 {
        f32::from_bits(0x7f80_0000 | (mant << 13))
    } else {
        f32::from_bits(((exp + 112) << 23) | (mant << 13))
    };
    f32::from_bits(magnitude.to_bits() | sign)
}

/// `x` rounded to f16 (to nearest, ties to even), as its bits; beyond the largest finite
/// f16 the result is infinity, NaN stays NaN.
#[inline(always)]
pub(crate) fn f32_to_f16(x: f32) -> u16 {
    let b = x.to_bits();
    let sign = ((b >> 16) & 0x8000) as u16;
    let a = b & 0x7fff_ffff;
    if a > 0x7f80_0000 {
        return sign | 0x7e00;
    }
    if a >= 0x4780_0000 {
        return sign | 0x7c00;
    }
    if a >= 0x3880_0000 {
        // Normal f16: re-bias the exponent, round the mantissa from 23 to 10 bits (a
        // carry into the exponent is the correct result, infinity included).
        let r = a - 0x3800_0000;
        let rounded = r + 0x0fff + ((r >> 13) & 1);
        return sign | (rounded >> 13) as u16;
    }
    // Subnormal f16 (or zero): `|x| / 2^-24` (exact scaling, below 1024) rounded to an
    // integer, ties to even; 1024 is the smallest normal, the right carry.
    let v = f32::from_bits(a) * 16_777_216.0;
    let q = (v + ROUND_MAGIC) - ROUND_MAGIC;
    sign | q as u16
}

/// bf16 bits to `f32`, exactly.
#[inline(always)]
pub(crate) fn bf16_to_f32(h: u16) -> f32 {
    f32::from_bits(u32::from(h) << 16)
}

/// `x` rounded to bf16 (to nearest, ties to even), as its bits; NaN stays NaN.
#[inline(always)]
pub(crate) fn f32_to_bf16(x: f32) -> u16 {
    if x.is_nan() {
        return ((x.to_bits() >> 16) as u16) | 0x40;
    }
    let b = x.to_bits();
    (b.wrapping_add(0x7fff + ((b >> 16) & 1)) >> 16) as u16
}

/// The symmetric int8 scale of a row whose largest magnitude is `max`: `max / 127`
/// (rounded once).
#[inline(always)]
pub(crate) fn i8_scale(max: f32) -> f32 {
    max / I8_MAX
}

/// The int8 code of `x` at scale `s > 0`: `round_half_even(fl(x / s))` clamped to
/// `[-127, 127]`.
#[inline(always)]
pub(crate) fn i8_code(x: f32, s: f32) -> i8 {
    let v = (x / s).clamp(-I8_MAX, I8_MAX);
    ((v + ROUND_MAGIC) - ROUND_MAGIC) as i8
}

/// Words of the sign bits of one row of dimension `dim`: `ceil(dim / 64)`.
pub const fn binary_row_words(dim: usize) -> usize {
    dim.div_ceil(64)
}

/// `u64` words of [`quantize_binary`]'s output for `rows` rows of dimension `dim`:
/// `rows * ceil(dim / 64)`. Saturates instead of overflowing.
pub const fn binary_words_len(rows: usize, dim: usize) -> usize {
    rows.saturating_mul(binary_row_words(dim))
}

// ---------------------------------------------------------------------------------------
// Validated views.

/// A validated row-major `rows x dim` view of embeddings stored in one of the compact
/// formats (or in `f32`), as [`Matrix`] is for `f32`: the gallery of
/// [`prepare_edge_gallery`](super::prepare_edge_gallery) and the int8 queries of
/// [`knn_edge_i8`](super::knn_edge_i8).
#[derive(Clone, Copy, Debug)]
pub struct EdgeMatrix<'a> {
    pub(crate) data: EdgeData<'a>,
    rows: NonZeroUsize,
    dim: NonZeroUsize,
}

/// The storage of an [`EdgeMatrix`].
#[derive(Clone, Copy, Debug)]
pub(crate) enum EdgeData<'a> {
    F32(&'a [f32]),
    F16(&'a [u16]),
    Bf16(&'a [u16]),
    I8 { codes: &'a [i8], scales: &'a [f32] },
}

/// The storage format of an [`EdgeMatrix`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum EdgeFormat {
    /// `f32`, 4 bytes per element.
    F32,
    /// IEEE 754 binary16 bits, 2 bytes per element.
    F16,
    /// bfloat16 bits (the upper half of an `f32`), 2 bytes per element.
    Bf16,
    /// Symmetric int8 codes with one `f32` scale per row: 1 byte per element plus 4 per
    /// row.
    I8,
}

/// Checks `rows x dim` and returns `rows * dim`.
const fn area(rows: usize, dim: usize) -> Result<(NonZeroUsize, NonZeroUsize, usize), Error> {
    let Some(len) = rows.checked_mul(dim) else {
        return Err(Error::ShapeOverflow { rows, cols: dim });
    };
    let (Some(r), Some(d)) = (NonZeroUsize::new(rows), NonZeroUsize::new(dim)) else {
        return Err(Error::EmptyMatrix { rows, cols: dim });
    };
    Ok((r, d, len))
}

impl<'a> EdgeMatrix<'a> {
    fn with(data: EdgeData<'a>, len: usize, rows: usize, dim: usize) -> Result<Self, Error> {
        let (r, d, area) = area(rows, dim)?;
        check_len("data", area, len)?;
        Ok(EdgeMatrix {
            data,
            rows: r,
            dim: d,
        })
    }

    /// An `f32` matrix (the re-scoring copy of a two-stage search, or a gallery kept in
    /// full precision next to compact ones).
    pub fn f32(x: Matrix<'a>) -> Self {
        EdgeMatrix {
            data: EdgeData::F32(x.as_slice()),
            rows: NonZeroUsize::new(x.rows()).unwrap_or(NonZeroUsize::MIN),
            dim: NonZeroUsize::new(x.dim()).unwrap_or(NonZeroUsize::MIN),
        }
    }

    /// `rows x dim` f16 values, as the bits [`quantize_f16`] writes.
    ///
    /// # Errors
    ///
    /// Those of [`Matrix::new`]: [`Error::ShapeOverflow`], [`Error::EmptyMatrix`],
    /// [`Error::LengthMismatch`] (`"data"`).
    pub fn f16(bits: &'a [u16], rows: usize, dim: usize) -> Result<Self, Error> {
        Self::with(EdgeData::F16(bits), bits.len(), rows, dim)
    }

    /// `rows x dim` bf16 values, as the bits [`quantize_bf16`] writes.
    ///
    /// # Errors
    ///
    /// As [`EdgeMatrix::f16`].
    pub fn bf16(bits: &'a [u16], rows: usize, dim: usize) -> Result<Self, Error> {
        Self::with(EdgeData::Bf16(bits), bits.len(), rows, dim)
    }

    /// `rows x dim` int8 codes with one scale per row, as [`quantize_i8`] writes them:
    /// element `(i, j)` stands for `codes[i * dim + j] * scales[i]`.
    ///
    /// # Errors
    ///
    /// As [`EdgeMatrix::f16`], and [`Error::LengthMismatch`] (`"scales"`) when `scales`
    /// does not have `rows` elements, [`Error::NonFinite`] (`"scales"`, the row, column 0)
    /// for a scale that is NaN or infinite, [`Error::InvalidParameter`] (`"scales"`) for a
    /// negative one.
    pub fn i8(codes: &'a [i8], scales: &'a [f32], rows: usize, dim: usize) -> Result<Self, Error> {
        let m = Self::with(EdgeData::I8 { codes, scales }, codes.len(), rows, dim)?;
        check_len("scales", rows, scales.len())?;
        check_finite("scales", scales, 1)?;
        if scales.iter().any(|&s| s < 0.0) {
            return Err(Error::InvalidParameter {
                name: "scales",
                expected: "finite and >= 0",
            });
        }
        Ok(m)
    }

    /// Number of rows, at least 1.
    pub fn rows(&self) -> usize {
        self.rows.get()
    }

    /// Elements per row, at least 1.
    pub fn dim(&self) -> usize {
        self.dim.get()
    }

    /// The storage format.
    pub fn format(&self) -> EdgeFormat {
        match self.data {
            EdgeData::F32(_) => EdgeFormat::F32,
            EdgeData::F16(_) => EdgeFormat::F16,
            EdgeData::Bf16(_) => EdgeFormat::Bf16,
            EdgeData::I8 { .. } => EdgeFormat::I8,
        }
    }

    /// Bytes one row occupies: `4 dim` (f32), `2 dim` (f16, bf16), `dim + 4` (int8 and its
    /// scale).
    pub fn bytes_per_row(&self) -> usize {
        let d = self.dim();
        match self.data {
            EdgeData::F32(_) => d.saturating_mul(4),
            EdgeData::F16(_) | EdgeData::Bf16(_) => d.saturating_mul(2),
            EdgeData::I8 { .. } => d.saturating_add(4),
        }
    }

    /// Rows `r0..r1` (in range, checked by the caller).
    pub(crate) fn sub_rows(&self, r0: usize, r1: usize) -> Option<EdgeMatrix<'a>> {
        let d = self.dim();
        let (a, b) = (r0.checked_mul(d)?, r1.checked_mul(d)?);
        let data = match self.data {
            EdgeData::F32(x) => EdgeData::F32(x.get(a..b)?),
            EdgeData::F16(x) => EdgeData::F16(x.get(a..b)?),
            EdgeData::Bf16(x) => EdgeData::Bf16(x.get(a..b)?),
            EdgeData::I8 { codes, scales } => EdgeData::I8 {
                codes: codes.get(a..b)?,
                scales: scales.get(r0..r1)?,
            },
        };
        Some(EdgeMatrix {
            data,
            rows: NonZeroUsize::new(r1.checked_sub(r0)?)?,
            dim: self.dim,
        })
    }

    /// Element `(i, j)` dequantized (`f32`; for int8 `code * scale`, rounded once).
    pub(crate) fn value(&self, i: usize, j: usize) -> f32 {
        let at = i * self.dim() + j;
        match self.data {
            EdgeData::F32(x) => x.get(at).copied().unwrap_or(0.0),
            EdgeData::F16(x) => x.get(at).map_or(0.0, |&h| f16_to_f32(h)),
            EdgeData::Bf16(x) => x.get(at).map_or(0.0, |&h| bf16_to_f32(h)),
            EdgeData::I8 { codes, scales } => {
                let s = scales.get(i).copied().unwrap_or(0.0);
                codes.get(at).map_or(0.0, |&c| f32::from(c) * s)
            }
        }
    }
}

/// A validated `rows x dim` view of sign bits, as [`quantize_binary`] packs them: row `i`
/// is words `i * w .. (i + 1) * w` with `w = ceil(dim / 64)`, element `j` bit `j % 64` of
/// word `j / 64`, the padding bits of the last word 0.
#[derive(Clone, Copy, Debug)]
pub struct BinaryMatrix<'a> {
    pub(crate) words: &'a [u64],
    rows: NonZeroUsize,
    dim: NonZeroUsize,
}

impl<'a> BinaryMatrix<'a> {
    /// Wraps `words` as `rows` rows of `dim` sign bits.
    ///
    /// # Errors
    ///
    /// [`Error::ShapeOverflow`], [`Error::EmptyMatrix`], and [`Error::LengthMismatch`]
    /// (`"words"`) when `words` does not have [`binary_words_len`]`(rows, dim)` elements.
    /// Padding bits are not checked: they must be 0 (as [`quantize_binary`] writes them),
    /// else they count in the Hamming distances.
    pub fn new(words: &'a [u64], rows: usize, dim: usize) -> Result<Self, Error> {
        let (r, d, _) = area(rows, dim)?;
        let len = checked_area(rows, binary_row_words(dim))?;
        check_len("words", len, words.len())?;
        Ok(BinaryMatrix {
            words,
            rows: r,
            dim: d,
        })
    }

    /// Number of rows, at least 1.
    pub fn rows(&self) -> usize {
        self.rows.get()
    }

    /// Bits per row (the embedding dimension), at least 1.
    pub fn dim(&self) -> usize {
        self.dim.get()
    }

    /// The packed words.
    pub fn words(&self) -> &'a [u64] {
        self.words
    }
}

// ---------------------------------------------------------------------------------------
// Quantize and dequantize.

/// First element of `x` whose magnitude is at least `limit` (as `TooLarge`).
fn check_below(x: &Matrix<'_>, limit: f32) -> Result<(), Error> {
    let d = x.dim().max(1);
    match x.as_slice().iter().position(|v| v.abs() >= limit) {
        Some(p) => Err(Error::TooLarge {
            buffer: "x",
            row: p / d,
            col: p % d,
        }),
        None => Ok(()),
    }
}

/// Rounds every element of `x` to f16 (IEEE 754 binary16, round to nearest, ties to
/// even: the conversion of F16C's `vcvtps2ph` and of `half::f16::from_f32`) into `out`, as
/// bits. Results below the smallest normal f16 (`2^-14`) are subnormal, down to
/// `2^-24`.
///
/// `out` has `rows * dim` elements and is fully written. Scalar twin:
/// [`crate::scalar::quantize_f16`].
///
/// # Errors
///
/// - [`Error::LengthMismatch`] (`"out"`) when `out` has another length;
/// - [`Error::NonFinite`] (`"x"`) at the first NaN or infinity;
/// - [`Error::TooLarge`] (`"x"`) at the first element of magnitude at least `65520`,
///   which would round to infinity.
///
/// # Example
///
/// ```
/// use triplet_kernels::{dequantize_f16, quantize_f16, Matrix};
/// let x = [1.0, -0.1, 3.0e-6, 65504.0];
/// let mut bits = [0_u16; 4];
/// quantize_f16(Matrix::new(&x, 1, 4)?, &mut bits)?;
/// assert_eq!(bits[0], 0x3c00);
/// let mut back = [0.0_f32; 4];
/// dequantize_f16(&bits, &mut back)?;
/// assert_eq!(back[0], 1.0);
/// assert!((back[1] + 0.1).abs() <= 0.1 * 2.0_f32.powi(-11));
/// assert_eq!(back[3], 65504.0);
/// # Ok::<(), triplet_kernels::Error>(())
/// ```
#[cfg_attr(feature = "no-panic", no_panic::no_panic)]
pub fn quantize_f16(x: Matrix<'_>, out: &mut [u16]) -> Result<(), Error> {
    check_len("out", x.len(), out.len())?;
    check_finite("x", x.as_slice(), x.dim())?;
    check_below(&x, F16_OVERFLOW)?;
    Backend::active().dispatch(Narrow {
        x: x.as_slice(),
        out,
        bf16: false,
    });
    Ok(())
}

/// Rounds every element of `x` to bf16 (the upper 16 bits of an `f32` after rounding to
/// nearest, ties to even) into `out`, as bits.
///
/// `out` has `rows * dim` elements and is fully written. Scalar twin:
/// [`crate::scalar::quantize_bf16`].
///
/// # Errors
///
/// - [`Error::LengthMismatch`] (`"out"`) when `out` has another length;
/// - [`Error::NonFinite`] (`"x"`) at the first NaN or infinity;
/// - [`Error::TooLarge`] (`"x"`) at the first element that would round to infinity
///   (magnitude at least `3.3961776e38`).
///
/// # Example
///
/// ```
/// use triplet_kernels::{dequantize_bf16, quantize_bf16, Matrix};
/// let x = [1.0, 1.00390625, -3.0];
/// let mut bits = [0_u16; 3];
/// quantize_bf16(Matrix::new(&x, 1, 3)?, &mut bits)?;
/// assert_eq!(bits, [0x3f80, 0x3f80, 0xc040]); // 1 + 2^-8 ties to even: 1
/// let mut back = [0.0_f32; 3];
/// dequantize_bf16(&bits, &mut back)?;
/// assert_eq!(back, [1.0, 1.0, -3.0]);
/// # Ok::<(), triplet_kernels::Error>(())
/// ```
#[cfg_attr(feature = "no-panic", no_panic::no_panic)]
pub fn quantize_bf16(x: Matrix<'_>, out: &mut [u16]) -> Result<(), Error> {
    check_len("out", x.len(), out.len())?;
    check_finite("x", x.as_slice(), x.dim())?;
    check_below(&x, f32::from_bits(BF16_OVERFLOW_BITS))?;
    Backend::active().dispatch(Narrow {
        x: x.as_slice(),
        out,
        bf16: true,
    });
    Ok(())
}

/// Symmetric int8 quantization with one scale per row: for row `i` with largest
/// magnitude `M_i`, `scales[i] = M_i / 127` (one `f32` division) and
/// `codes[i * dim + j] = round_half_even(fl(x_ij / scales[i]))` clamped to
/// `[-127, 127]` (-128 is never used, so the code range is symmetric and negation exact).
/// A row whose scale is 0 (all zeros, or `M_i` below `127 * 2^-150`) gets codes 0 and
/// scale 0. Element `j` of row `i` then stands for `codes[i * dim + j] * scales[i]`,
/// within `scales[i] / 2` of `x_ij` (one more rounding of `x_ij / s` aside).
///
/// `codes` (`rows * dim`) and `scales` (`rows`) are fully written. Scalar twin:
/// [`crate::scalar::quantize_i8`].
///
/// # Errors
///
/// - [`Error::LengthMismatch`] (`"codes"`, `"scales"`) for a buffer of another length;
/// - [`Error::NonFinite`] (`"x"`) at the first NaN or infinity.
///
/// # Example
///
/// ```
/// use triplet_kernels::{dequantize_i8, quantize_i8, Matrix};
/// let x = [0.5, -1.27, 0.0, 0.2, 0.1, 0.0];
/// let (mut codes, mut scales) = ([0_i8; 6], [0.0_f32; 2]);
/// quantize_i8(Matrix::new(&x, 2, 3)?, &mut codes, &mut scales)?;
/// assert_eq!(codes, [50, -127, 0, 127, 64, 0]); // 63.5 ties to 64
/// assert_eq!(scales[0], 1.27 / 127.0);
/// let mut back = [0.0_f32; 6];
/// dequantize_i8(&codes, &scales, 3, &mut back)?;
/// assert_eq!(back[1], -1.27);
/// # Ok::<(), triplet_kernels::Error>(())
/// ```
#[cfg_attr(feature = "no-panic", no_panic::no_panic)]
pub fn quantize_i8(x: Matrix<'_>, codes: &mut [i8], scales: &mut [f32]) -> Result<(), Error> {
    check_len("codes", x.len(), codes.len())?;
    check_len("scales", x.rows(), scales.len())?;
    check_finite("x", x.as_slice(), x.dim())?;
    let Some(d) = NonZeroUsize::new(x.dim()) else {
        return Ok(());
    };
    for ((row, out), s) in x
        .row_iter()
        .zip(codes.chunks_exact_mut(d.get()))
        .zip(scales.iter_mut())
    {
        let max = row.iter().fold(0.0_f32, |m, v| m.max(v.abs()));
        let scale = i8_scale(max);
        *s = scale;
        if scale == 0.0 {
            for c in out.iter_mut() {
                *c = 0;
            }
            continue;
        }
        for (c, &v) in out.iter_mut().zip(row) {
            *c = i8_code(v, scale);
        }
    }
    Ok(())
}

/// The sign bits of `x`: bit `j % 64` of word `i * w + j / 64` (`w = ceil(dim / 64)`) is
/// 1 when `x_ij > 0` and 0 otherwise (zero and negative values); the padding bits of
/// each row's last word are 0. Dequantized, a bit stands for `+1` (set) or `-1`, so the
/// Hamming distance of two rows is `(dim - <a, b>) / 2` of their `+-1` vectors.
///
/// `words` has [`binary_words_len`]`(rows, dim)` elements and is fully written. Scalar
/// twin: [`crate::scalar::quantize_binary`].
///
/// # Errors
///
/// - [`Error::LengthMismatch`] (`"words"`) when `words` has another length;
/// - [`Error::NonFinite`] (`"x"`) at the first NaN or infinity.
///
/// # Example
///
/// ```
/// use triplet_kernels::{binary_words_len, quantize_binary, Matrix};
/// let x = [0.3, -1.0, 0.0, 2.0];
/// let mut words = [0_u64; binary_words_len(1, 4)];
/// quantize_binary(Matrix::new(&x, 1, 4)?, &mut words)?;
/// assert_eq!(words, [0b1001]);
/// # Ok::<(), triplet_kernels::Error>(())
/// ```
#[cfg_attr(feature = "no-panic", no_panic::no_panic)]
pub fn quantize_binary(x: Matrix<'_>, words: &mut [u64]) -> Result<(), Error> {
    let w = binary_row_words(x.dim());
    check_len("words", binary_words_len(x.rows(), x.dim()), words.len())?;
    check_finite("x", x.as_slice(), x.dim())?;
    let Some(w) = NonZeroUsize::new(w) else {
        return Ok(());
    };
    for (row, out) in x.row_iter().zip(words.chunks_exact_mut(w.get())) {
        binarize_row(row, out);
    }
    Ok(())
}

/// The sign bits of one row into `out` (`ceil(len / 64)` words).
#[inline]
pub(crate) fn binarize_row(row: &[f32], out: &mut [u64]) {
    for (o, chunk) in out.iter_mut().zip(row.chunks(64)) {
        let mut word = 0_u64;
        for (bit, &v) in chunk.iter().enumerate() {
            word |= u64::from(v > 0.0) << bit;
        }
        *o = word;
    }
}

/// Widens f16 bits to `f32` (exact; NaN stays NaN).
///
/// `out` has `bits.len()` elements and is fully written. Scalar twin:
/// [`crate::scalar::dequantize_f16`].
///
/// # Errors
///
/// [`Error::LengthMismatch`] (`"out"`) when the lengths differ.
///
/// # Example
///
/// ```
/// use triplet_kernels::dequantize_f16;
/// let mut out = [0.0_f32; 3];
/// dequantize_f16(&[0x3c00, 0xc000, 0x0001], &mut out)?;
/// assert_eq!(out, [1.0, -2.0, 2.0_f32.powi(-24)]);
/// # Ok::<(), triplet_kernels::Error>(())
/// ```
#[cfg_attr(feature = "no-panic", no_panic::no_panic)]
pub fn dequantize_f16(bits: &[u16], out: &mut [f32]) -> Result<(), Error> {
    check_len("out", bits.len(), out.len())?;
    Backend::active().dispatch(Widen {
        src: EdgeData::F16(bits),
        dim: 1,
        out,
    });
    Ok(())
}

/// Widens bf16 bits to `f32` (exact: the bits become the upper half).
///
/// `out` has `bits.len()` elements and is fully written. Scalar twin:
/// [`crate::scalar::dequantize_bf16`].
///
/// # Errors
///
/// [`Error::LengthMismatch`] (`"out"`) when the lengths differ.
///
/// # Example
///
/// ```
/// use triplet_kernels::dequantize_bf16;
/// let mut out = [0.0_f32; 2];
/// dequantize_bf16(&[0x3f80, 0xc040], &mut out)?;
/// assert_eq!(out, [1.0, -3.0]);
/// # Ok::<(), triplet_kernels::Error>(())
/// ```
#[cfg_attr(feature = "no-panic", no_panic::no_panic)]
pub fn dequantize_bf16(bits: &[u16], out: &mut [f32]) -> Result<(), Error> {
    check_len("out", bits.len(), out.len())?;
    Backend::active().dispatch(Widen {
        src: EdgeData::Bf16(bits),
        dim: 1,
        out,
    });
    Ok(())
}

/// The values int8 codes stand for: `out[i * dim + j] = codes[i * dim + j] * scales[i]`,
/// one `f32` product (rounded once), as every int8 kernel of the crate reads them.
///
/// `codes` and `out` have `scales.len() * dim` elements; `out` is fully written. Scalar
/// twin: [`crate::scalar::dequantize_i8`].
///
/// # Errors
///
/// - [`Error::InvalidParameter`] (`"dim"`) when `dim == 0`;
/// - [`Error::ShapeOverflow`] when `scales.len() * dim` overflows;
/// - [`Error::LengthMismatch`] (`"codes"`, `"out"`) for a buffer of another length.
///
/// # Example
///
/// ```
/// use triplet_kernels::dequantize_i8;
/// let mut out = [0.0_f32; 4];
/// dequantize_i8(&[1, -2, 127, 0], &[0.5, 2.0], 2, &mut out)?;
/// assert_eq!(out, [0.5, -1.0, 254.0, 0.0]);
/// # Ok::<(), triplet_kernels::Error>(())
/// ```
#[cfg_attr(feature = "no-panic", no_panic::no_panic)]
pub fn dequantize_i8(
    codes: &[i8],
    scales: &[f32],
    dim: usize,
    out: &mut [f32],
) -> Result<(), Error> {
    check_dim(dim)?;
    let len = checked_area(scales.len(), dim)?;
    check_len("codes", len, codes.len())?;
    check_len("out", len, out.len())?;
    Backend::active().dispatch(Widen {
        src: EdgeData::I8 { codes, scales },
        dim,
        out,
    });
    Ok(())
}

/// The `+-1` vectors sign bits stand for: `out[i * dim + j]` is `1.0` when bit `j` of row
/// `i` is set, else `-1.0`.
///
/// `out` has `rows * dim` elements and is fully written. Scalar twin:
/// [`crate::scalar::dequantize_binary`].
///
/// # Errors
///
/// [`Error::LengthMismatch`] (`"out"`) when `out` has another length.
///
/// # Example
///
/// ```
/// use triplet_kernels::{dequantize_binary, BinaryMatrix};
/// let mut out = [0.0_f32; 3];
/// dequantize_binary(BinaryMatrix::new(&[0b101], 1, 3)?, &mut out)?;
/// assert_eq!(out, [1.0, -1.0, 1.0]);
/// # Ok::<(), triplet_kernels::Error>(())
/// ```
#[cfg_attr(feature = "no-panic", no_panic::no_panic)]
pub fn dequantize_binary(bits: BinaryMatrix<'_>, out: &mut [f32]) -> Result<(), Error> {
    let (n, d) = (bits.rows(), bits.dim());
    check_len("out", checked_area(n, d)?, out.len())?;
    let w = binary_row_words(d);
    let Some(d) = NonZeroUsize::new(d) else {
        return Ok(());
    };
    for (i, row) in out.chunks_exact_mut(d.get()).enumerate() {
        let words = bits.words.get(i * w..(i + 1) * w).unwrap_or_default();
        for (j, o) in row.iter_mut().enumerate() {
            let set = words.get(j / 64).is_some_and(|&x| (x >> (j % 64)) & 1 == 1);
            *o = if set { 1.0 } else { -1.0 };
        }
    }
    Ok(())
}

/// `dim >= 1`.
pub(crate) fn check_dim(dim: usize) -> Result<(), Error> {
    if dim == 0 {
        return Err(Error::InvalidParameter {
            name: "dim",
            expected: ">= 1",
        });
    }
    Ok(())
}

/// Rounding of `f32` values to f16 or bf16 bits, compiled with the backend's features.
struct Narrow<'a, 'o> {
    x: &'a [f32],
    out: &'o mut [u16],
    bf16: bool,
}

impl Kernel for Narrow<'_, '_> {
    type Output = ();
    #[inline(always)]
    fn run<S: Simd, const MR: usize, const NV: usize>(self, _: S) {
        if self.bf16 {
            for (o, &v) in self.out.iter_mut().zip(self.x) {
                *o = f32_to_bf16(v);
            }
        } else {
            for (o, &v) in self.out.iter_mut().zip(self.x) {
                *o = f32_to_f16(v);
            }
        }
    }
}

/// Dequantization of rows into `f32`, through the backend's converting loads.
pub(crate) struct Widen<'a, 'o> {
    pub(crate) src: EdgeData<'a>,
    /// Elements per row (the scale's period for int8).
    pub(crate) dim: usize,
    pub(crate) out: &'o mut [f32],
}

impl Kernel for Widen<'_, '_> {
    type Output = ();
    #[inline(always)]
    fn run<S: Simd, const MR: usize, const NV: usize>(self, s: S) {
        widen_with(s, self.src, self.dim, self.out);
    }
}

/// See [`Widen`]: `out` gets the dequantized values of `src` (cut to the shorter).
#[inline(always)]
pub(crate) fn widen_with<S: Simd>(s: S, src: EdgeData<'_>, dim: usize, out: &mut [f32]) {
    let l = S::LANES;
    match src {
        EdgeData::F32(x) => {
            for (o, &v) in out.iter_mut().zip(x) {
                *o = v;
            }
        }
        EdgeData::F16(x) => {
            for (oc, xc) in out.chunks_mut(l).zip(x.chunks(l)) {
                s.store(s.load_f16(xc), oc);
            }
        }
        EdgeData::Bf16(x) => {
            for (oc, xc) in out.chunks_mut(l).zip(x.chunks(l)) {
                s.store(s.load_bf16(xc), oc);
            }
        }
        EdgeData::I8 { codes, scales } => {
            let Some(dim) = NonZeroUsize::new(dim) else {
                return;
            };
            for ((orow, crow), &sc) in out
                .chunks_mut(dim.get())
                .zip(codes.chunks(dim.get()))
                .zip(scales)
            {
                let vs = s.splat(sc);
                for (oc, cc) in orow.chunks_mut(l).zip(crow.chunks(l)) {
                    s.store(s.mul(s.load_i8(cc), vs), oc);
                }
            }
        }
    }
}

/// Dequantizes `src` (all its rows) into `out` with `backend`.
pub(crate) fn widen(backend: Backend, src: &EdgeMatrix<'_>, out: &mut [f32]) {
    backend.dispatch(Widen {
        src: src.data,
        dim: src.dim(),
        out,
    });
}
