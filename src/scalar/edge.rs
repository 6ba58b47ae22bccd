//! Scalar twins of the edge formats: quantizers from their definitions in `f64`, and the
//! searches ranking every gallery row by its `f64` distance (or exact Hamming count).

use core::cmp::Ordering;

use crate::distance::NORM_EPS;
use crate::error::Error;
use crate::matrix::Matrix;
use crate::retrieval::quant::{
    binary_row_words, check_dim, BinaryMatrix, EdgeMatrix, BF16_OVERFLOW_BITS, F16_OVERFLOW, I8_MAX,
};
use crate::retrieval::{scalar_len, EdgeGallery, SearchMetric};
use crate::validate::{check_finite, check_len, check_workspace, checked_area};

/// `2^k` for `-1022 <= k <= 1023`, exactly.
fn pow2(k: i32) -> f64 {
    f64::from_bits(((k + 1023) as u64) << 52)
}

/// `|x|` rounded to the floating-point format of `mant` stored mantissa bits and smallest
/// normal exponent `emin` (subnormals below it), to nearest, ties to even, in `f64`
/// (exact: the quotient by a power of two is exact, `rint` rounds to an integer).
fn round_to(x: f64, mant: i32, emin: i32) -> f64 {
    let ax = x.abs();
    let e = if ax < pow2(emin) {
        emin
    } else {
        ((ax.to_bits() >> 52) & 0x7ff) as i32 - 1023
    };
    let quantum = pow2(e - mant);
    libm::rint(ax / quantum) * quantum
}

/// Errors of the f16 / bf16 quantizers: length, finiteness, then the overflow bound.
fn check_narrow(x: &Matrix<'_>, out_len: usize, limit: f32) -> Result<(), Error> {
    check_len("out", x.len(), out_len)?;
    check_finite("x", x.as_slice(), x.dim())?;
    let d = x.dim().max(1);
    if let Some(p) = x.as_slice().iter().position(|v| v.abs() >= limit) {
        return Err(Error::TooLarge {
            buffer: "x",
            row: p / d,
            col: p % d,
        });
    }
    Ok(())
}

/// Scalar twin of [`crate::quantize_f16`]: each value rounded in `f64` to 11 significant
/// bits (subnormal below `2^-14`, quantum `2^-24`), then encoded.
///
/// # Errors
///
/// Those of [`crate::quantize_f16`].
///
/// # Example
///
/// ```
/// use triplet_kernels::{scalar, Matrix};
/// let mut out = [0_u16; 2];
/// scalar::quantize_f16(Matrix::new(&[1.0, -2.0], 1, 2)?, &mut out)?;
/// assert_eq!(out, [0x3c00, 0xc000]);
/// # Ok::<(), triplet_kernels::Error>(())
/// ```
#[cfg_attr(feature = "no-panic", no_panic::no_panic)]
pub fn quantize_f16(x: Matrix<'_>, out: &mut [u16]) -> Result<(), Error> {
    check_narrow(&x, out.len(), F16_OVERFLOW)?;
    for (o, &v) in out.iter_mut().zip(x.as_slice()) {
        let r = round_to(f64::from(v), 10, -14);
        let sign = if v.is_sign_negative() { 0x8000 } else { 0 };
        let mag = if r < pow2(-14) {
            // Subnormal: the count of `2^-24` (1024 is the smallest normal's encoding).
            (r / pow2(-24)) as u16
        } else {
            let e = ((r.to_bits() >> 52) & 0x7ff) as i32 - 1023;
            let m = (r / pow2(e) - 1.0) * 1024.0;
            (((e + 15) as u16) << 10) | m as u16
        };
        *o = sign | mag;
    }
    Ok(())
}

/// Scalar twin of [`crate::quantize_bf16`]: each value rounded in `f64` to 8 significant
/// bits (subnormal below `2^-126`), then encoded as the upper half of its `f32`.
///
/// # Errors
///
/// Those of [`crate::quantize_bf16`].
///
/// # Example
///
/// ```
/// use triplet_kernels::{scalar, Matrix};
/// let mut out = [0_u16; 1];
/// scalar::quantize_bf16(Matrix::new(&[3.0], 1, 1)?, &mut out)?;
/// assert_eq!(out, [0x4040]);
/// # Ok::<(), triplet_kernels::Error>(())
/// ```
#[cfg_attr(feature = "no-panic", no_panic::no_panic)]
pub fn quantize_bf16(x: Matrix<'_>, out: &mut [u16]) -> Result<(), Error> {
    check_narrow(&x, out.len(), f32::from_bits(BF16_OVERFLOW_BITS))?;
    for (o, &v) in out.iter_mut().zip(x.as_slice()) {
        let r = round_to(f64::from(v), 7, -126) as f32;
        let r = if v.is_sign_negative() { -r } else { r };
        *o = (r.to_bits() >> 16) as u16;
    }
    Ok(())
}

/// Scalar twin of [`crate::quantize_i8`]: the scale `M / 127` and each quotient `x / s`
/// computed in `f64` and rounded to `f32` (the same values as the `f32` operations), the
/// code rounded half to even and clamped.
///
/// # Errors
///
/// Those of [`crate::quantize_i8`].
///
/// # Example
///
/// ```
/// use triplet_kernels::{scalar, Matrix};
/// let (mut c, mut s) = ([0_i8; 2], [0.0_f32; 1]);
/// scalar::quantize_i8(Matrix::new(&[2.54, -1.0], 1, 2)?, &mut c, &mut s)?;
/// assert_eq!(c, [127, -50]);
/// # Ok::<(), triplet_kernels::Error>(())
/// ```
#[cfg_attr(feature = "no-panic", no_panic::no_panic)]
pub fn quantize_i8(x: Matrix<'_>, codes: &mut [i8], scales: &mut [f32]) -> Result<(), Error> {
    check_len("codes", x.len(), codes.len())?;
    check_len("scales", x.rows(), scales.len())?;
    check_finite("x", x.as_slice(), x.dim())?;
    let Some(d) = core::num::NonZeroUsize::new(x.dim()) else {
        return Ok(());
    };
    let d = d.get();
    for ((row, out), s) in x
        .row_iter()
        .zip(codes.chunks_exact_mut(d))
        .zip(scales.iter_mut())
    {
        let max = row.iter().fold(0.0_f64, |m, &v| m.max(f64::from(v).abs()));
        let scale = (max / f64::from(I8_MAX)) as f32;
        *s = scale;
        for (c, &v) in out.iter_mut().zip(row) {
            *c = if scale == 0.0 {
                0
            } else {
                let q = f64::from((f64::from(v) / f64::from(scale)) as f32);
                libm::rint(q.clamp(-127.0, 127.0)) as i8
            };
        }
    }
    Ok(())
}

/// Scalar twin of [`crate::quantize_binary`]: bit set when the value is above 0.
///
/// # Errors
///
/// Those of [`crate::quantize_binary`].
///
/// # Example
///
/// ```
/// use triplet_kernels::{scalar, Matrix};
/// let mut w = [0_u64; 1];
/// scalar::quantize_binary(Matrix::new(&[1.0, 0.0, 2.0], 1, 3)?, &mut w)?;
/// assert_eq!(w, [0b101]);
/// # Ok::<(), triplet_kernels::Error>(())
/// ```
#[cfg_attr(feature = "no-panic", no_panic::no_panic)]
pub fn quantize_binary(x: Matrix<'_>, words: &mut [u64]) -> Result<(), Error> {
    let w = binary_row_words(x.dim());
    check_len("words", x.rows().saturating_mul(w), words.len())?;
    check_finite("x", x.as_slice(), x.dim())?;
    for o in words.iter_mut() {
        *o = 0;
    }
    let d = x.dim().max(1);
    for (p, &v) in x.as_slice().iter().enumerate() {
        let (i, j) = (p / d, p % d);
        if let Some(o) = words.get_mut(i * w + j / 64) {
            *o |= u64::from(v > 0.0) << (j % 64);
        }
    }
    Ok(())
}

/// f16 bits as `f64`, from the format's definition.
fn f16_value(h: u16) -> f64 {
    let sign = if h & 0x8000 != 0 { -1.0 } else { 1.0 };
    let e = i32::from((h >> 10) & 0x1f);
    let m = f64::from(h & 0x3ff);
    sign * match e {
        0 => m * pow2(-24),
        31 if m == 0.0 => f64::INFINITY,
        31 => f64::NAN,
        _ => (1024.0 + m) * pow2(e - 25),
    }
}

/// Scalar twin of [`crate::dequantize_f16`], from the binary16 definition in `f64`.
///
/// # Errors
///
/// Those of [`crate::dequantize_f16`].
///
/// # Example
///
/// ```
/// use triplet_kernels::scalar;
/// let mut out = [0.0_f32; 1];
/// scalar::dequantize_f16(&[0x3555], &mut out)?;
/// assert_eq!(out, [0.333_251_95]);
/// # Ok::<(), triplet_kernels::Error>(())
/// ```
#[cfg_attr(feature = "no-panic", no_panic::no_panic)]
pub fn dequantize_f16(bits: &[u16], out: &mut [f32]) -> Result<(), Error> {
    check_len("out", bits.len(), out.len())?;
    for (o, &h) in out.iter_mut().zip(bits) {
        *o = f16_value(h) as f32;
    }
    Ok(())
}

/// Scalar twin of [`crate::dequantize_bf16`].
///
/// # Errors
///
/// Those of [`crate::dequantize_bf16`].
///
/// # Example
///
/// ```
/// use triplet_kernels::scalar;
/// let mut out = [0.0_f32; 1];
/// scalar::dequantize_bf16(&[0x4040], &mut out)?;
/// assert_eq!(out, [3.0]);
/// # Ok::<(), triplet_kernels::Error>(())
/// ```
#[cfg_attr(feature = "no-panic", no_panic::no_panic)]
pub fn dequantize_bf16(bits: &[u16], out: &mut [f32]) -> Result<(), Error> {
    check_len("out", bits.len(), out.len())?;
    for (o, &h) in out.iter_mut().zip(bits) {
        *o = f32::from_bits(u32::from(h) << 16);
    }
    Ok(())
}

/// Scalar twin of [`crate::dequantize_i8`]: the exact `f64` product rounded once.
///
/// # Errors
///
/// Those of [`crate::dequantize_i8`].
///
/// # Example
///
/// ```
/// use triplet_kernels::scalar;
/// let mut out = [0.0_f32; 2];
/// scalar::dequantize_i8(&[3, -4], &[0.5], 2, &mut out)?;
/// assert_eq!(out, [1.5, -2.0]);
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
    for (p, (o, &c)) in out.iter_mut().zip(codes).enumerate() {
        let s = scales.get(p / dim.max(1)).copied().unwrap_or(0.0);
        *o = (f64::from(c) * f64::from(s)) as f32;
    }
    Ok(())
}

/// Scalar twin of [`crate::dequantize_binary`].
///
/// # Errors
///
/// Those of [`crate::dequantize_binary`].
///
/// # Example
///
/// ```
/// use triplet_kernels::{scalar, BinaryMatrix};
/// let mut out = [0.0_f32; 2];
/// scalar::dequantize_binary(BinaryMatrix::new(&[0b10], 1, 2)?, &mut out)?;
/// assert_eq!(out, [-1.0, 1.0]);
/// # Ok::<(), triplet_kernels::Error>(())
/// ```
#[cfg_attr(feature = "no-panic", no_panic::no_panic)]
pub fn dequantize_binary(bits: BinaryMatrix<'_>, out: &mut [f32]) -> Result<(), Error> {
    let (n, d) = (bits.rows(), bits.dim());
    check_len("out", checked_area(n, d)?, out.len())?;
    let (w, d) = (binary_row_words(d), d.max(1));
    for (p, o) in out.iter_mut().enumerate() {
        let (i, j) = (p / d, p % d);
        let word = bits.words().get(i * w + j / 64).copied().unwrap_or(0);
        *o = if (word >> (j % 64)) & 1 == 1 {
            1.0
        } else {
            -1.0
        };
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Searches.

/// Ranking of `[distance, index]` pairs: smaller distance first, NaN after every number,
/// ties by the smaller index.
fn rank(x: &[f64; 2], y: &[f64; 2]) -> Ordering {
    let ([dx, ix], [dy, iy]) = (*x, *y);
    let by_index = ix.total_cmp(&iy);
    match (dx.is_nan(), dy.is_nan()) {
        (false, false) => dx
            .partial_cmp(&dy)
            .unwrap_or(Ordering::Equal)
            .then(by_index),
        (false, true) => Ordering::Less,
        (true, false) => Ordering::Greater,
        (true, true) => by_index,
    }
}

/// Moves the `need` least pairs to the front, in order (selection sort: `O(len need)`).
fn select_prefix(pairs: &mut [[f64; 2]], need: usize) {
    let len = pairs.len();
    for t in 0..need.min(len) {
        let mut best = t;
        for j in t + 1..len {
            if let (Some(a), Some(b)) = (pairs.get(j), pairs.get(best)) {
                if rank(a, b) == Ordering::Less {
                    best = j;
                }
            }
        }
        if let Some((lo, hi)) = pairs.split_at_mut_checked(best) {
            if let (Some(a), Some(b)) = (lo.get_mut(t), hi.first_mut()) {
                core::mem::swap(a, b);
            }
        }
    }
}

/// How the twins measure a pair.
#[derive(Clone, Copy)]
enum Measure {
    Sq,
    Cosine,
    NegDot,
}

fn measure(metric: SearchMetric) -> Measure {
    match metric {
        SearchMetric::Cosine => Measure::Cosine,
        SearchMetric::InnerProduct => Measure::NegDot,
        _ => Measure::Sq,
    }
}

/// The `f64` distance of two rows given as element functions.
fn distance(m: Measure, d: usize, a: impl Fn(usize) -> f64, b: impl Fn(usize) -> f64) -> f64 {
    let (mut dot, mut aa, mut bb, mut sq) = (0.0_f64, 0.0_f64, 0.0_f64, 0.0_f64);
    for j in 0..d {
        let (x, y) = (a(j), b(j));
        dot += x * y;
        aa += x * x;
        bb += y * y;
        sq += (x - y) * (x - y);
    }
    let eps = f64::from(NORM_EPS);
    match m {
        Measure::Sq => sq,
        Measure::Cosine => 1.0 - dot / (libm::sqrt(aa).max(eps) * libm::sqrt(bb).max(eps)),
        Measure::NegDot => -dot,
    }
}

/// The pairs area of a twin's workspace.
fn pairs(workspace: &mut [f32]) -> &mut [[f64; 2]] {
    bytemuck::pod_align_to_mut::<f32, [f64; 2]>(workspace).1
}

/// Writes the first `k` pairs (distance rooted for Euclidean) to the output rows.
fn emit(pairs: &[[f64; 2]], metric: SearchMetric, i_row: &mut [u32], d_row: &mut [f32]) {
    for ((&[d, j], i), o) in pairs.iter().zip(i_row.iter_mut()).zip(d_row.iter_mut()) {
        *i = j as u32;
        *o = if metric == SearchMetric::Euclidean {
            libm::sqrt(d) as f32
        } else {
            d as f32
        };
    }
}

/// Workspace elements that the twins [`knn_edge`], [`knn_edge_i8`] and [`knn_rescored`]
/// need against `references` gallery rows: `4 references + 1`.
/// Saturates instead of overflowing.
pub const fn knn_edge_workspace_len(queries: usize, references: usize, dim: usize) -> usize {
    let _ = (queries, dim);
    scalar_len(references)
}

/// Scalar twin of [`crate::knn_edge`]: every gallery row dequantized (as
/// [`crate::dequantize_i8`] and the others write it), its `f64` distance to the query,
/// the `k` nearest by (distance, index).
///
/// # Errors
///
/// Those of [`crate::knn_edge`], except that the workspace must hold
/// [`knn_edge_workspace_len`] elements.
///
/// # Example
///
/// ```
/// use triplet_kernels::{prepare_edge_gallery, scalar, EdgeMatrix, Matrix, SearchMetric};
/// let bits = [0x3c00_u16, 0, 0, 0x3c00];
/// let (mut norms, mut ws) = ([0.0_f32; 2], [0.0_f32; 2]);
/// let g = prepare_edge_gallery(EdgeMatrix::f16(&bits, 2, 2)?, SearchMetric::SquaredEuclidean, &mut norms, &mut ws)?;
/// let (mut idx, mut dist) = ([0_u32; 1], [0.0_f32; 1]);
/// let mut ws = [0.0_f32; scalar::knn_edge_workspace_len(1, 2, 2)];
/// scalar::knn_edge(Matrix::new(&[0.0, 2.0], 1, 2)?, &g, 1, &mut idx, &mut dist, &mut ws)?;
/// assert_eq!((idx, dist), ([1], [1.0]));
/// # Ok::<(), triplet_kernels::Error>(())
/// ```
#[cfg_attr(feature = "no-panic", no_panic::no_panic)]
pub fn knn_edge(
    queries: Matrix<'_>,
    gallery: &EdgeGallery<'_>,
    k: usize,
    indices: &mut [u32],
    distances: &mut [f32],
    workspace: &mut [f32],
) -> Result<(), Error> {
    let rows = gallery.rows();
    let (n, m, d) = (queries.rows(), rows.rows(), queries.dim());
    crate::retrieval::edge_check(n, d, rows.dim(), m, k, indices, distances)?;
    check_workspace(knn_edge_workspace_len(n, m, d), workspace.len())?;
    let how = measure(gallery.metric());
    let pairs = pairs(workspace);
    for ((a, i_row), d_row) in queries
        .row_iter()
        .zip(indices.chunks_exact_mut(k))
        .zip(distances.chunks_exact_mut(k))
    {
        for (j, p) in pairs.iter_mut().take(m).enumerate() {
            let x = |c: usize| f64::from(a.get(c).copied().unwrap_or(0.0));
            let y = |c: usize| f64::from(rows.value(j, c));
            *p = [distance(how, d, x, y), j as f64];
        }
        let ranked = pairs.get_mut(..m).unwrap_or_default();
        select_prefix(ranked, k);
        emit(ranked, gallery.metric(), i_row, d_row);
    }
    Ok(())
}

/// Scalar twin of [`crate::knn_edge_i8`]: the exact values `code * scale` of both sides
/// (exact in `f64`), their `f64` distances, the `k` nearest by (distance, index).
///
/// # Errors
///
/// Those of [`crate::knn_edge_i8`], except that the workspace must hold
/// [`knn_edge_workspace_len`] elements.
///
/// # Example
///
/// ```
/// use triplet_kernels::{prepare_edge_gallery, scalar, EdgeMatrix, SearchMetric};
/// let (codes, scales) = ([127_i8, 0, 0, 127], [1.0_f32, 1.0]);
/// let (mut norms, mut ws) = ([0.0_f32; 2], [0.0_f32; 2]);
/// let g = prepare_edge_gallery(EdgeMatrix::i8(&codes, &scales, 2, 2)?, SearchMetric::InnerProduct, &mut norms, &mut ws)?;
/// let (mut idx, mut dist) = ([0_u32; 1], [0.0_f32; 1]);
/// let mut ws = [0.0_f32; scalar::knn_edge_workspace_len(1, 2, 2)];
/// let q = EdgeMatrix::i8(&[1, 2], &[1.0], 1, 2)?;
/// scalar::knn_edge_i8(q, &g, 1, &mut idx, &mut dist, &mut ws)?;
/// assert_eq!((idx, dist), ([1], [-254.0]));
/// # Ok::<(), triplet_kernels::Error>(())
/// ```
#[cfg_attr(feature = "no-panic", no_panic::no_panic)]
pub fn knn_edge_i8(
    queries: EdgeMatrix<'_>,
    gallery: &EdgeGallery<'_>,
    k: usize,
    indices: &mut [u32],
    distances: &mut [f32],
    workspace: &mut [f32],
) -> Result<(), Error> {
    let rows = gallery.rows();
    let (q_codes, q_scales) = crate::retrieval::edge_i8_parts(&queries, &rows)?;
    let (n, m, d) = (queries.rows(), rows.rows(), queries.dim());
    crate::retrieval::edge_check(n, d, rows.dim(), m, k, indices, distances)?;
    check_workspace(knn_edge_workspace_len(n, m, d), workspace.len())?;
    let (g_codes, g_scales) = crate::retrieval::edge_i8_parts(&rows, &rows)?;
    let how = measure(gallery.metric());
    let pairs = pairs(workspace);
    for (i, (i_row, d_row)) in indices
        .chunks_exact_mut(k)
        .zip(distances.chunks_exact_mut(k))
        .enumerate()
    {
        let sa = f64::from(q_scales.get(i).copied().unwrap_or(0.0));
        for (j, p) in pairs.iter_mut().take(m).enumerate() {
            let sb = f64::from(g_scales.get(j).copied().unwrap_or(0.0));
            let x = |c: usize| f64::from(q_codes.get(i * d + c).copied().unwrap_or(0)) * sa;
            let y = |c: usize| f64::from(g_codes.get(j * d + c).copied().unwrap_or(0)) * sb;
            *p = [distance(how, d, x, y), j as f64];
        }
        let ranked = pairs.get_mut(..m).unwrap_or_default();
        select_prefix(ranked, k);
        emit(ranked, gallery.metric(), i_row, d_row);
    }
    Ok(())
}

/// Hamming distance of binary rows `i` of `a` and `j` of `b`.
fn hamming(a: &BinaryMatrix<'_>, i: usize, b: &BinaryMatrix<'_>, j: usize) -> f64 {
    let w = binary_row_words(a.dim());
    let mut h = 0_u32;
    for t in 0..w {
        let x = a.words().get(i * w + t).copied().unwrap_or(0);
        let y = b.words().get(j * w + t).copied().unwrap_or(0);
        h += (x ^ y).count_ones();
    }
    f64::from(h)
}

/// Scalar twin of [`crate::knn_hamming`]: every count, kept in the output rows by
/// insertion (a count enters before the first larger one, so equal counts keep index
/// order).
///
/// # Errors
///
/// Those of [`crate::knn_hamming`].
///
/// # Example
///
/// ```
/// use triplet_kernels::{scalar, BinaryMatrix};
/// let (mut idx, mut dist) = ([0_u32; 1], [0.0_f32; 1]);
/// let g = BinaryMatrix::new(&[0b111, 0b001], 2, 3)?;
/// scalar::knn_hamming(BinaryMatrix::new(&[0b011], 1, 3)?, g, 1, &mut idx, &mut dist)?;
/// assert_eq!((idx, dist), ([0], [1.0]));
/// # Ok::<(), triplet_kernels::Error>(())
/// ```
#[cfg_attr(feature = "no-panic", no_panic::no_panic)]
pub fn knn_hamming(
    queries: BinaryMatrix<'_>,
    gallery: BinaryMatrix<'_>,
    k: usize,
    indices: &mut [u32],
    distances: &mut [f32],
) -> Result<(), Error> {
    let (n, m) = (queries.rows(), gallery.rows());
    crate::retrieval::edge_rows(m)?;
    crate::retrieval::edge_check(n, queries.dim(), gallery.dim(), m, k, indices, distances)?;
    for (i, (i_row, d_row)) in indices
        .chunks_exact_mut(k)
        .zip(distances.chunks_exact_mut(k))
        .enumerate()
    {
        let mut len = 0;
        for j in 0..m {
            let h = hamming(&queries, i, &gallery, j) as f32;
            let pos = d_row.iter().take(len).position(|&x| x > h).unwrap_or(len);
            if pos >= k {
                continue;
            }
            len = (len + 1).min(k);
            // Shift the tail one place right, dropping the last entry if full.
            let mut t = len - 1;
            while t > pos {
                if let (Some(&pd), Some(&pi)) = (d_row.get(t - 1), i_row.get(t - 1)) {
                    if let (Some(dd), Some(ii)) = (d_row.get_mut(t), i_row.get_mut(t)) {
                        *dd = pd;
                        *ii = pi;
                    }
                }
                t -= 1;
            }
            if let (Some(dd), Some(ii)) = (d_row.get_mut(pos), i_row.get_mut(pos)) {
                *dd = h;
                *ii = j as u32;
            }
        }
    }
    Ok(())
}

/// Scalar twin of [`crate::knn_rescored`]: the query's sign bits, the `shortlist` least
/// Hamming counts (ties to the smaller index), then the `f64` distances of those
/// candidates to the dequantized rows of `fine`, the `k` nearest by (distance, index).
///
/// # Errors
///
/// Those of [`crate::knn_rescored`], except that the workspace must hold
/// [`knn_edge_workspace_len`] elements.
///
/// # Example
///
/// ```
/// use triplet_kernels::{prepare_edge_gallery, quantize_binary, scalar};
/// use triplet_kernels::{BinaryMatrix, EdgeMatrix, Matrix, SearchMetric};
/// let x = Matrix::new(&[1.0, 0.2, 0.9, 0.8, -1.0, 0.1], 3, 2)?;
/// let mut bits = [0_u64; 3];
/// quantize_binary(x, &mut bits)?;
/// let (mut norms, mut ws) = ([0.0_f32; 3], [0.0_f32; 2]);
/// let fine = prepare_edge_gallery(EdgeMatrix::f32(x), SearchMetric::Cosine, &mut norms, &mut ws)?;
/// let (mut idx, mut dist) = ([0_u32; 1], [0.0_f32; 1]);
/// let mut ws = [0.0_f32; scalar::knn_edge_workspace_len(1, 3, 2)];
/// let q = Matrix::new(&[0.7, 0.7], 1, 2)?;
/// scalar::knn_rescored(q, BinaryMatrix::new(&bits, 3, 2)?, &fine, 2, 1, &mut idx, &mut dist, &mut ws)?;
/// assert_eq!(idx, [1]);
/// # Ok::<(), triplet_kernels::Error>(())
/// ```
#[allow(clippy::too_many_arguments)]
#[cfg_attr(feature = "no-panic", no_panic::no_panic)]
pub fn knn_rescored(
    queries: Matrix<'_>,
    binary: BinaryMatrix<'_>,
    fine: &EdgeGallery<'_>,
    shortlist: usize,
    k: usize,
    indices: &mut [u32],
    distances: &mut [f32],
    workspace: &mut [f32],
) -> Result<(), Error> {
    let rows = fine.rows();
    let (n, m, d) = (queries.rows(), rows.rows(), queries.dim());
    crate::retrieval::rescored_check(n, d, &binary, &rows, shortlist, k, indices, distances)?;
    check_workspace(knn_edge_workspace_len(n, m, d), workspace.len())?;
    let how = measure(fine.metric());
    let w = binary_row_words(d);
    let pairs = pairs(workspace);
    for ((a, i_row), d_row) in queries
        .row_iter()
        .zip(indices.chunks_exact_mut(k))
        .zip(distances.chunks_exact_mut(k))
    {
        for (j, p) in pairs.iter_mut().take(m).enumerate() {
            let mut h = 0_u32;
            for t in 0..w {
                let mut q = 0_u64;
                for (bit, &v) in a.iter().enumerate().skip(64 * t).take(64) {
                    q |= u64::from(v > 0.0) << (bit - 64 * t);
                }
                let g = binary.words().get(j * w + t).copied().unwrap_or(0);
                h += (q ^ g).count_ones();
            }
            *p = [f64::from(h), j as f64];
        }
        let all = pairs.get_mut(..m).unwrap_or_default();
        select_prefix(all, shortlist);
        let short = all.get_mut(..shortlist).unwrap_or_default();
        for p in short.iter_mut() {
            let j = p[1] as usize;
            let x = |c: usize| f64::from(a.get(c).copied().unwrap_or(0.0));
            let y = |c: usize| f64::from(rows.value(j, c));
            p[0] = distance(how, d, x, y);
        }
        select_prefix(short, k);
        emit(short, fine.metric(), i_row, d_row);
    }
    Ok(())
}
