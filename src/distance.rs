//! Distance matrices (pairwise and cross), row norms and L2 normalisation.
//!
//! All three metrics share one pass over pairs of rows:
//!
//! - `SquaredEuclidean`: `d(a, b) = sum (a_i - b_i)^2`;
//! - `Euclidean`: `d(a, b) = sqrt(sum (a_i - b_i)^2)`;
//! - `Cosine`: `d(a, b) = 1 - <a, b> / (max(|a|, 1e-12) * max(|b|, 1e-12))`, so a zero
//!   vector is at distance 1 from every other row.
//!
//! # Numerics
//!
//! The fast path computes squared Euclidean distances directly, `sum (a_i - b_i)^2`, in
//! `f32` with eight lanes and two accumulators, so equal rows give exactly 0 and there is
//! no cancellation. Against the `f64` scalar twin ([`crate::scalar`]) each entry satisfies
//! `|fast - exact| <= (d / 8 + 10) * 2^-24 * S`, where `S` is the sum of the absolute
//! values of the summed terms (`sum (a_i - b_i)^2` for Euclidean metrics, `sum |a_i b_i|`
//! normalised by the norms for cosine); the tests check a bound of `4 * (d + 8) * 2^-24 * S`.
//! The Euclidean distance's relative error is at most half the squared distance's. Terms
//! below `f32`'s normal range (`|a_i - b_i| < 1.1e-19`) underflow, which adds an absolute
//! error of at most `(d + 8) * 1.2e-38` to a squared distance (its square root to a
//! Euclidean one).
//! Results may differ in the last bits between builds with and without FMA.
//!
//! The bounds hold while every row's squared norm stays below `f32::MAX / 4` (about
//! `8.5e37`). Past it, `f32` sums overflow: squared distances saturate to `+inf` and cosine
//! distances of the affected rows are unspecified (never a panic; the `f64` twin stays exact).
//!
//! NaN and infinity in the data are not checked: they propagate to every entry computed
//! from an affected row (NaN or infinite, which one is unspecified), never elsewhere.

use crate::error::{check_len, check_workspace, checked_area, Error};
use crate::math;
use crate::matrix::Matrix;
use crate::simd;

/// Lower bound applied to norms before dividing, as PyTorch's `F.normalize` and
/// `cosine_similarity` do.
pub const NORM_EPS: f32 = 1e-12;

/// Which distance a kernel computes. See the [module docs](self) for the formulas.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Metric {
    /// `sum (a_i - b_i)^2`.
    SquaredEuclidean,
    /// `sqrt(sum (a_i - b_i)^2)`; its gradient at distance 0 is taken as 0.
    Euclidean,
    /// `1 - cos(a, b)`, with norms clamped below at [`NORM_EPS`].
    Cosine,
}

/// Workspace elements that [`pairwise_distances`] needs for `rows` embeddings of
/// dimension `dim`. Saturates instead of overflowing.
pub const fn pairwise_distances_workspace_len(rows: usize, dim: usize) -> usize {
    let _ = dim;
    rows
}

/// Workspace elements that [`cross_distances`] needs for `rows_x` queries against
/// `rows_y` references of dimension `dim`. Saturates instead of overflowing.
pub const fn cross_distances_workspace_len(rows_x: usize, rows_y: usize, dim: usize) -> usize {
    let _ = dim;
    rows_x.saturating_add(rows_y)
}

/// Validates the arguments of a pairwise kernel; returns `n`.
pub(crate) fn check_pairwise(x: &Matrix<'_>, out: usize, workspace: usize) -> Result<usize, Error> {
    let n = x.rows();
    check_len("out", checked_area(n, n)?, out)?;
    check_workspace(pairwise_distances_workspace_len(n, x.dim()), workspace)?;
    Ok(n)
}

/// Validates the arguments of a cross kernel; returns `(m, n)`.
pub(crate) fn check_cross(
    x: &Matrix<'_>,
    y: &Matrix<'_>,
    out: usize,
    workspace: usize,
) -> Result<(usize, usize), Error> {
    if x.dim() != y.dim() {
        return Err(Error::DimensionMismatch {
            left: x.dim(),
            right: y.dim(),
        });
    }
    let (m, n) = (x.rows(), y.rows());
    check_len("out", checked_area(m, n)?, out)?;
    check_workspace(cross_distances_workspace_len(m, n, x.dim()), workspace)?;
    Ok((m, n))
}

/// Clamps a norm below at [`NORM_EPS`], keeping NaN.
#[inline]
fn clamp_norm(n: f32) -> f32 {
    if n < NORM_EPS {
        NORM_EPS
    } else {
        n
    }
}

/// Fills `norms[i]` with the clamped norm of row `i` (cosine only).
fn clamped_norms(x: &Matrix<'_>, norms: &mut [f32]) {
    for (row, n) in x.row_iter().zip(norms.iter_mut()) {
        *n = clamp_norm(math::sqrt(simd::sq_norm(row)));
    }
}

/// One distance from the two rows and, for cosine, their clamped norms.
#[inline(always)]
fn pair(metric: Metric, a: &[f32], b: &[f32], na: f32, nb: f32) -> f32 {
    match metric {
        Metric::SquaredEuclidean => simd::sq_dist(a, b),
        Metric::Euclidean => math::sqrt(simd::sq_dist(a, b)),
        Metric::Cosine => 1.0 - simd::dot(a, b) / (na * nb),
    }
}

/// Pairwise distance matrix of the rows of `x`: `out[i * n + j] = d(x_i, x_j)`.
///
/// `out` has exactly `n * n` elements and is fully overwritten. The matrix is symmetric
/// bit for bit (one triangle is computed, then mirrored) and its diagonal is exactly 0,
/// also for cosine (a zero row is at distance 1 from every *other* row). Scalar twin:
/// [`crate::scalar::pairwise_distances`].
///
/// `workspace` needs [`pairwise_distances_workspace_len`]`(n, dim)` elements; its contents
/// are garbage before and after.
///
/// # Errors
///
/// - [`Error::ShapeOverflow`] when `n * n` overflows `usize`;
/// - [`Error::LengthMismatch`] (`"out"`) when `out.len() != n * n`;
/// - [`Error::WorkspaceTooSmall`] when the workspace is too short.
///
/// # Numerics
///
/// See the [module docs](self): NaN/inf propagate to the entries of affected rows; the
/// error against the `f64` twin is bounded by the sum of absolute terms.
///
/// # Example
///
/// ```
/// use triplet_kernels::{pairwise_distances, pairwise_distances_workspace_len, Matrix, Metric};
/// let x = Matrix::new(&[0.0, 0.0, 3.0, 4.0], 2, 2)?;
/// let mut out = [0.0_f32; 4];
/// let mut ws = [0.0_f32; pairwise_distances_workspace_len(2, 2)];
/// pairwise_distances(x, Metric::Euclidean, &mut out, &mut ws)?;
/// assert_eq!(out, [0.0, 5.0, 5.0, 0.0]);
/// # Ok::<(), triplet_kernels::Error>(())
/// ```
#[cfg_attr(feature = "no-panic", no_panic::no_panic)]
pub fn pairwise_distances(
    x: Matrix<'_>,
    metric: Metric,
    out: &mut [f32],
    workspace: &mut [f32],
) -> Result<(), Error> {
    let n = check_pairwise(&x, out.len(), workspace.len())?;
    let dim = x.dim();
    if n == 0 || dim == 0 {
        // Unreachable (a Matrix is never empty); lets the optimiser drop the
        // zero-chunk-size panic of `chunks_exact`.
        return Ok(());
    }
    let norms = workspace.get_mut(..n).unwrap_or_default();
    if metric == Metric::Cosine {
        clamped_norms(&x, norms);
    }
    // Row i against rows i+1.. : the strict upper triangle, then mirrored.
    let mut rest = x.as_slice();
    let mut rest_norms: &[f32] = norms;
    for (a, out_row) in x.row_iter().zip(out.chunks_exact_mut(n)) {
        rest = rest.get(dim..).unwrap_or_default();
        let na = rest_norms.first().copied().unwrap_or(1.0);
        rest_norms = rest_norms.get(1..).unwrap_or_default();
        let upper = out_row
            .get_mut(n.saturating_sub(rest_norms.len() + 1)..)
            .unwrap_or_default();
        if let Some((diag, upper)) = upper.split_first_mut() {
            *diag = 0.0;
            for ((b, o), nb) in rest.chunks_exact(dim).zip(upper.iter_mut()).zip(rest_norms) {
                *o = pair(metric, a, b, na, *nb);
            }
        }
    }
    mirror_upper(out, n);
    Ok(())
}

/// Copies the strict upper triangle of an `n x n` row-major matrix onto the lower one.
pub(crate) fn mirror_upper(out: &mut [f32], n: usize) {
    for i in 1..n {
        for j in 0..i {
            if let Some(&v) = out.get(j * n + i) {
                if let Some(o) = out.get_mut(i * n + j) {
                    *o = v;
                }
            }
        }
    }
}

/// Cross distance matrix: `out[i * n + j] = d(x_i, y_j)` for `m` queries `x` and `n`
/// references `y` (queries vs gallery, embeddings vs proxies).
///
/// `out` has exactly `m * n` elements and is fully overwritten. Scalar twin:
/// [`crate::scalar::cross_distances`]. `workspace` needs
/// [`cross_distances_workspace_len`]`(m, n, dim)` elements, garbage before and after.
///
/// # Errors
///
/// - [`Error::DimensionMismatch`] when `x` and `y` have different dimensions;
/// - [`Error::ShapeOverflow`] when `m * n` overflows `usize`;
/// - [`Error::LengthMismatch`] (`"out"`) when `out.len() != m * n`;
/// - [`Error::WorkspaceTooSmall`] when the workspace is too short.
///
/// # Numerics
///
/// As [`pairwise_distances`], without the forced zero diagonal: a row at distance 0 from
/// itself gives exactly 0 for the Euclidean metrics, and `1 - cos` rounded for cosine.
///
/// # Example
///
/// ```
/// use triplet_kernels::{cross_distances, cross_distances_workspace_len, Matrix, Metric};
/// let queries = Matrix::new(&[1.0, 0.0], 1, 2)?;
/// let gallery = Matrix::new(&[1.0, 0.0, 0.0, 2.0, 0.0, 0.0], 3, 2)?;
/// let mut out = [0.0_f32; 3];
/// let mut ws = [0.0_f32; cross_distances_workspace_len(1, 3, 2)];
/// cross_distances(queries, gallery, Metric::Cosine, &mut out, &mut ws)?;
/// assert_eq!(out, [0.0, 1.0, 1.0]); // a zero vector is at distance 1
/// # Ok::<(), triplet_kernels::Error>(())
/// ```
#[cfg_attr(feature = "no-panic", no_panic::no_panic)]
pub fn cross_distances(
    x: Matrix<'_>,
    y: Matrix<'_>,
    metric: Metric,
    out: &mut [f32],
    workspace: &mut [f32],
) -> Result<(), Error> {
    let (m, n) = check_cross(&x, &y, out.len(), workspace.len())?;
    let (norms_x, rest) = workspace.split_at_mut(m);
    let norms_y = rest.split_at_mut(n).0;
    if metric == Metric::Cosine {
        clamped_norms(&x, norms_x);
        clamped_norms(&y, norms_y);
    }
    for ((a, out_row), na) in x
        .row_iter()
        .zip(out.chunks_exact_mut(n))
        .zip(norms_x.iter())
    {
        for ((b, o), nb) in y.row_iter().zip(out_row.iter_mut()).zip(norms_y.iter()) {
            *o = pair(metric, a, b, *na, *nb);
        }
    }
    Ok(())
}

/// Euclidean norm of every row: `out[i] = |x_i|`. `out` has exactly `rows` elements.
/// Scalar twin: [`crate::scalar::row_norms`].
///
/// # Errors
///
/// [`Error::LengthMismatch`] (`"out"`) when `out.len() != rows`.
///
/// # Numerics
///
/// Relative error at most `(d / 8 + 10) * 2^-24` against the exact norm; a sum of squares
/// that overflows `f32` gives `inf`.
///
/// # Example
///
/// ```
/// use triplet_kernels::{row_norms, Matrix};
/// let x = Matrix::new(&[3.0, 4.0, 0.0, 0.0], 2, 2)?;
/// let mut out = [0.0_f32; 2];
/// row_norms(x, &mut out)?;
/// assert_eq!(out, [5.0, 0.0]);
/// # Ok::<(), triplet_kernels::Error>(())
/// ```
#[cfg_attr(feature = "no-panic", no_panic::no_panic)]
pub fn row_norms(x: Matrix<'_>, out: &mut [f32]) -> Result<(), Error> {
    check_len("out", x.rows(), out.len())?;
    for (row, o) in x.row_iter().zip(out.iter_mut()) {
        *o = math::sqrt(simd::sq_norm(row));
    }
    Ok(())
}

/// L2-normalises every row: `out_i = x_i / max(|x_i|, 1e-12)` (PyTorch's `F.normalize`).
/// A zero row stays zero. `out` has exactly `rows * dim` elements. Scalar twin:
/// [`crate::scalar::l2_normalize`]. Backward pass: [`l2_normalize_backward`].
///
/// # Errors
///
/// [`Error::LengthMismatch`] (`"out"`) when `out.len() != rows * dim`.
///
/// # Numerics
///
/// Each element within `(d / 8 + 12) * 2^-24` relative of the exact quotient.
///
/// # Example
///
/// ```
/// use triplet_kernels::{l2_normalize, Matrix};
/// let x = Matrix::new(&[3.0, 4.0], 1, 2)?;
/// let mut out = [0.0_f32; 2];
/// l2_normalize(x, &mut out)?;
/// assert_eq!(out, [0.6, 0.8]);
/// # Ok::<(), triplet_kernels::Error>(())
/// ```
#[cfg_attr(feature = "no-panic", no_panic::no_panic)]
pub fn l2_normalize(x: Matrix<'_>, out: &mut [f32]) -> Result<(), Error> {
    check_len("out", x.len(), out.len())?;
    for (row, o) in x.row_iter().zip(out.chunks_exact_mut(x.dim())) {
        let norm = clamp_norm(math::sqrt(simd::sq_norm(row)));
        simd::scale_into(1.0 / norm, row, o);
    }
    Ok(())
}

/// Gradient of [`l2_normalize`]: given `x` and `grad_out = dL/dy` for `y = normalize(x)`,
/// writes `grad_x = dL/dx`.
///
/// With `r = |x|`: when `r > 1e-12`, `grad_x = (grad_out - y <y, grad_out>) / r`;
/// otherwise (the clamp is active) `grad_x = grad_out / 1e-12`, the derivative of the
/// clamped formula. Scalar twin: [`crate::scalar::l2_normalize_backward`].
///
/// # Errors
///
/// [`Error::LengthMismatch`] (`"grad_out"` or `"grad_x"`) when either buffer does not have
/// `rows * dim` elements.
///
/// # Numerics
///
/// Error bounded by `(2 d / 8 + 20) * 2^-24 * (|grad_out| / r)` per element.
///
/// # Example
///
/// ```
/// use triplet_kernels::{l2_normalize_backward, Matrix};
/// let x = Matrix::new(&[3.0, 4.0], 1, 2)?;
/// // Moving along x itself does not change the normalised vector.
/// let mut gx = [9.0_f32; 2];
/// l2_normalize_backward(x, &[0.6, 0.8], &mut gx)?;
/// assert!(gx.iter().all(|g| g.abs() < 1e-7));
/// # Ok::<(), triplet_kernels::Error>(())
/// ```
#[cfg_attr(feature = "no-panic", no_panic::no_panic)]
pub fn l2_normalize_backward(
    x: Matrix<'_>,
    grad_out: &[f32],
    grad_x: &mut [f32],
) -> Result<(), Error> {
    check_len("grad_out", x.len(), grad_out.len())?;
    check_len("grad_x", x.len(), grad_x.len())?;
    let dim = x.dim();
    for ((row, g), gx) in x
        .row_iter()
        .zip(grad_out.chunks_exact(dim))
        .zip(grad_x.chunks_exact_mut(dim))
    {
        let r = math::sqrt(simd::sq_norm(row));
        // Written so that a NaN norm takes this branch and propagates.
        if r.is_nan() || r > NORM_EPS {
            let inv = 1.0 / r;
            // <y, g> = <x, g> / r; grad = g / r - x <x, g> / r^3.
            let proj = simd::dot(row, g) * inv * inv;
            simd::scale_into(inv, g, gx);
            simd::axpy(-proj * inv, row, gx);
        } else {
            simd::scale_into(1.0 / NORM_EPS, g, gx);
        }
    }
    Ok(())
}

/// Clamped norms of every row into `norms` (`rows` elements), for kernels that need
/// cosine distances and their gradients.
pub(crate) fn clamped_row_norms(x: &Matrix<'_>, norms: &mut [f32]) {
    clamped_norms(x, norms);
}

/// One distance between two rows; `na`, `nb` are their clamped norms (read for cosine
/// only, see [`clamped_row_norms`]).
#[inline]
pub(crate) fn distance(metric: Metric, a: &[f32], b: &[f32], na: f32, nb: f32) -> f32 {
    pair(metric, a, b, na, nb)
}

/// Adds `coef * d d(a, b) / d a` to `grad_a`, where `dist = d(a, b)` and `na`, `nb` are
/// the clamped norms (cosine only). For the gradient with respect to `b`, call again with
/// the rows swapped: every metric here is symmetric.
///
/// - squared Euclidean: `2 (a - b)`;
/// - Euclidean: `(a - b) / d`, and 0 at `d = 0` (never NaN);
/// - cosine, `d = 1 - <a,b> / (na nb)`: `-b / (na nb) + (1 - d) a / na^2`, the second term
///   only where the norm of `a` is above the clamp (below it the norm is a constant).
#[inline]
#[allow(clippy::too_many_arguments)]
pub(crate) fn add_distance_grad(
    metric: Metric,
    a: &[f32],
    b: &[f32],
    dist: f32,
    na: f32,
    nb: f32,
    coef: f32,
    grad_a: &mut [f32],
) {
    match metric {
        Metric::SquaredEuclidean => {
            simd::axpy(2.0 * coef, a, grad_a);
            simd::axpy(-2.0 * coef, b, grad_a);
        }
        Metric::Euclidean => {
            if dist > 0.0 {
                let c = coef / dist;
                simd::axpy(c, a, grad_a);
                simd::axpy(-c, b, grad_a);
            }
        }
        Metric::Cosine => {
            simd::axpy(-coef / (na * nb), b, grad_a);
            if na > NORM_EPS {
                simd::axpy(coef * (1.0 - dist) / (na * na), a, grad_a);
            }
        }
    }
}
