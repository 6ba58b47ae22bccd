//! Distance matrices (pairwise and cross), row norms and L2 normalisation.
//!
//! Three metrics:
//!
//! - `SquaredEuclidean`: `d(a, b) = sum (a_i - b_i)^2`;
//! - `Euclidean`: `d(a, b) = sqrt(sum (a_i - b_i)^2)`;
//! - `Cosine`: `d(a, b) = 1 - <a, b> / (max(|a|, 1e-12) * max(|b|, 1e-12))`, so a zero
//!   vector is at distance 1 from every other row.
//!
//! The matrix kernels run a packed, register-blocked microkernel (one `MR x NR` tile of
//! accumulators in registers while the whole dimension streams through; rows packed into
//! panels first; the SIMD backend chosen at run time, see [`crate::Backend`]). In a
//! pairwise matrix only the tiles on or above the diagonal are computed and every value
//! is mirrored, so the matrix is symmetric bit for bit; its diagonal is the formula's
//! value, exactly 0 except for cosine rows of norm below 1e-12 (1 for a zero row).
//! Every matrix kernel also exists for a block of anchor rows
//! ([`pairwise_distances_rows`], [`cross_distances_rows`]), so a caller can spread one
//! batch over threads.
//!
//! Internally, the matrix kernels share one packed microkernel; row norms and L2
//! normalisation, the distance and gradient of one pair that every loss uses, the
//! Gram-to-direct accuracy fix-up of the miners and the register-blocked products of
//! batch-all's gradient live beside them.
//!
//! # Numerics
//!
//! The error bounds of the matrix kernels, for both modes and every metric, are in the
//! docs of [`DistanceMode`]. NaN and infinity in the data are not checked: they propagate
//! to every entry computed from an affected row (NaN or infinite, which one is
//! unspecified), never elsewhere.

mod fixup;
mod gemm;
mod norms;
mod pair;
mod tile;

use crate::error::Error;
use crate::matrix::Matrix;
use crate::simd::Backend;
use crate::validate::{check_len, check_workspace, checked_area};
use core::ops::Range;

pub use norms::{l2_normalize, l2_normalize_backward, row_norms};

pub(crate) use fixup::{fix_up, metric_norms, needs_direct, refine_pairwise};
pub(crate) use gemm::{gemm_acc, symmetrise, GEMM_MR};
pub(crate) use norms::{clamped_row_norms, l2_normalize_backward_on, l2_normalize_on};
pub(crate) use pair::{
    cosine_own_factor, distance, distance_with, euclidean_from_sq, euclidean_grad_factor,
    pair_grad_rows, pair_grad_rows_with, TINY_DISTANCE,
};

/// Lower bound applied to norms before dividing, as PyTorch's `F.normalize` and
/// `cosine_similarity` do.
pub const NORM_EPS: f32 = 1e-12;

/// Which distance a kernel computes; each variant gives its formula.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Metric {
    /// `sum (a_i - b_i)^2`.
    SquaredEuclidean,
    /// `sqrt(sum (a_i - b_i)^2)`; its gradient at distance 0 is taken as 0.
    Euclidean,
    /// `1 - cos(a, b)`, with norms clamped below at [`NORM_EPS`].
    Cosine,
}

/// How the matrix kernels evaluate the Euclidean metrics (cosine is the same in both).
///
/// # Numerics
///
/// Let `u = 2^-24` (the unit roundoff of `f32`), `d` the dimension, and
/// `N = |a|^2 + |b|^2`. Each entry is accumulated sequentially over the `d` coordinates
/// (fused multiply-adds on the AVX2 and AVX-512 backends and on FMA builds of the portable
/// one). Bounds against the exact value (the `f64` scalar twins in [`crate::scalar`] are
/// exact to well below them), to be multiplied by `1 / (1 - (d + 2) u)` (below 1.01 for
/// `d < 160_000`):
///
/// - [`DistanceMode::Gram`] (the default, used by [`pairwise_distances`] and
///   [`cross_distances`]): squared Euclidean as `|a|^2 + |b|^2 - 2 <a, b>`, clamped at 0.
///   `|fast - exact| <= (2 d + 4) u N`. This bounds the error by the *norms*, not by
///   the distance: two points much closer to each other than to the origin lose relative
///   accuracy (a distance below about `sqrt((2 d + 4) u) * |a|` is noise; the
///   Euclidean distance, a square root, is then off by up to `sqrt((2 d + 4) u N)`).
///   Equal rows still give exactly 0: a row's squared norm is computed with the same
///   arithmetic, in the same order, as the dot product of that row with itself.
/// - [`DistanceMode::Direct`]: `sum (a_i - b_i)^2` computed as written, no cancellation.
///   `|fast - exact| <= (d + 2) u S` with `S` the exact squared distance: full relative
///   accuracy for nearly coincident points, for one extra subtraction per multiply-add
///   (about 0.7 times the Gram mode's speed on AVX-512, 0.6 on the portable path). Use it
///   when points nearly coincide (or when `|x|^2` overflows `f32`, above about `1.8e19`,
///   where the Gram form gives NaN or infinity).
/// - `Cosine` is the same in both modes: `1 - <a, b> (1 / |a|) (1 / |b|)` with the clamped
///   norms inverted once per row; `|fast - exact| <= (2 d + 10) u`.
/// - The Euclidean distance's error is that of the squared distance passed through the
///   square root: relative error at most half the squared distance's, plus one rounding.
/// - Terms below `f32`'s normal range (`|a_i|`, `|b_i|` or `|a_i - b_i|` under
///   `1.1e-19`) underflow, which adds an absolute error of at most `(2 d + 8) * 1.2e-38`
///   to a squared distance (Gram), `(d + 8) * 1.2e-38` (direct).
///
/// Backends and builds (fused or unfused multiply-add, lane count) may differ in the last
/// bits; the bounds hold for all of them. The row-wise kernels ([`row_norms`],
/// [`l2_normalize`], [`l2_normalize_backward`]) and the per-pair helpers use the SIMD
/// seam's two-accumulator reductions and keep their tighter bounds.
///
/// The Euclidean bounds hold while every row's squared norm stays below `f32::MAX / 4`
/// (about `8.5e37`). Past it, `f32` sums overflow: squared distances saturate to `+inf`
/// in direct mode and are `+inf` or NaN in Gram mode (never a panic; the `f64` twin stays
/// exact). Cosine distances have no such limit: a row whose squared norm exceeds `2^126`
/// is scaled by an exact power of two before its dot products, which leaves its cosine
/// unchanged. The loss kernels reject rows past the Euclidean limit instead (see
/// [`Error::TooLarge`]).
///
/// NaN and infinity in the data are not checked: they propagate to every entry computed
/// from an affected row (NaN or infinite, which one is unspecified), never elsewhere.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DistanceMode {
    /// `|a|^2 + |b|^2 - 2 <a, b>`, clamped at 0: a dot-product tile plus row norms, the
    /// fastest form. Error bounded relative to `|a|^2 + |b|^2`: nearly coincident points
    /// lose relative accuracy.
    #[default]
    Gram,
    /// `sum (a_i - b_i)^2` as written: error bounded relative to the distance itself,
    /// somewhat slower than [`DistanceMode::Gram`] (one more operation per multiply-add).
    Direct,
}

/// Workspace elements that [`pairwise_distances`] needs for `rows` embeddings of
/// dimension `dim`: about `(rows + 32) * (dim + 1)`, the rows packed into panels (one
/// panel more, `(rows + 64) * (dim + 1)`, from `rows^2 >= 2^20`, where the panels are
/// cut at the output's cache lines). Saturates instead of overflowing.
pub const fn pairwise_distances_workspace_len(rows: usize, dim: usize) -> usize {
    tile::block_workspace_len(rows, 0, dim)
}

/// Workspace elements that [`cross_distances`] needs for `rows_x` queries against
/// `rows_y` references of dimension `dim`: about `(rows_x + rows_y + 96) * (dim + 1)`,
/// both sides packed into panels. Saturates instead of overflowing.
pub const fn cross_distances_workspace_len(rows_x: usize, rows_y: usize, dim: usize) -> usize {
    tile::block_workspace_len(rows_x, rows_y, dim)
}

/// Workspace elements that [`pairwise_distances_rows`] needs for a block of `block_rows`
/// of the `rows` embeddings of dimension `dim`: about `(rows + 96) * (dim + 1)` (the
/// block packed once, the other rows once). Saturates instead of overflowing.
pub const fn pairwise_distances_rows_workspace_len(
    rows: usize,
    block_rows: usize,
    dim: usize,
) -> usize {
    tile::block_workspace_len(block_rows, rows.saturating_sub(block_rows), dim)
}

/// Workspace elements that [`cross_distances_rows`] needs for a block of `block_rows`
/// queries against `rows_y` references of dimension `dim`: about
/// `(block_rows + rows_y + 96) * (dim + 1)`. Saturates instead of overflowing.
pub const fn cross_distances_rows_workspace_len(
    block_rows: usize,
    rows_y: usize,
    dim: usize,
) -> usize {
    tile::block_workspace_len(block_rows, rows_y, dim)
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
    check_dims(x, y)?;
    let (m, n) = (x.rows(), y.rows());
    check_len("out", checked_area(m, n)?, out)?;
    check_workspace(cross_distances_workspace_len(m, n, x.dim()), workspace)?;
    Ok((m, n))
}

fn check_dims(x: &Matrix<'_>, y: &Matrix<'_>) -> Result<(), Error> {
    if x.dim() == y.dim() {
        Ok(())
    } else {
        Err(Error::DimensionMismatch {
            left: x.dim(),
            right: y.dim(),
        })
    }
}

/// Validates a block of rows `rows` of a matrix with `total` rows, its `out_block` of
/// `rows.len() * cols` elements and the workspace (`pairwise`: the block's own columns
/// need no packing of their own); returns `(r0, r1)`.
fn check_block(
    rows: &Range<usize>,
    total: usize,
    cols: usize,
    pairwise: bool,
    dim: usize,
    out: usize,
    workspace: usize,
) -> Result<(usize, usize), Error> {
    let (r0, r1) = (rows.start, rows.end);
    if r1 > total {
        return Err(Error::IndexOutOfRange {
            buffer: "rows",
            position: 1,
            index: r1,
            bound: total.saturating_add(1),
        });
    }
    if r0 > r1 {
        return Err(Error::InvalidParameter {
            name: "rows",
            expected: "a range with start <= end",
        });
    }
    let other = if pairwise { cols - (r1 - r0) } else { cols };
    check_len("out", checked_area(r1 - r0, cols)?, out)?;
    check_workspace(tile::block_workspace_len(r1 - r0, other, dim), workspace)?;
    Ok((r0, r1))
}

/// Validates the arguments of [`pairwise_distances_rows`] (and its twin); returns
/// `(r0, r1)`.
pub(crate) fn check_pairwise_rows(
    x: &Matrix<'_>,
    rows: &Range<usize>,
    out: usize,
    workspace: usize,
) -> Result<(usize, usize), Error> {
    check_block(rows, x.rows(), x.rows(), true, x.dim(), out, workspace)
}

/// Validates the arguments of [`cross_distances_rows`] (and its twin); returns `(r0, r1)`.
pub(crate) fn check_cross_rows(
    x: &Matrix<'_>,
    y: &Matrix<'_>,
    rows: &Range<usize>,
    out: usize,
    workspace: usize,
) -> Result<(usize, usize), Error> {
    check_dims(x, y)?;
    check_block(rows, x.rows(), y.rows(), false, x.dim(), out, workspace)
}

/// Pairwise distance matrix of the rows of `x`: `out[i * n + j] = d(x_i, x_j)`.
///
/// `out` has exactly `n * n` elements and is fully overwritten. The matrix is symmetric
/// bit for bit (one triangle is computed, then mirrored). Its diagonal is the formula's
/// value, as in [`cross_distances`]`(x, x)`: exactly 0 for the Euclidean metrics and for
/// cosine rows with `|x_i| >= 1e-12`; for a cosine row below the clamp,
/// `1 - |x_i|^2 / 1e-24`, so a zero row is at distance 1 from every row, itself included
/// (as PyTorch's `1 - cosine_similarity(0, 0)`). The Euclidean
/// metrics use the Gram form ([`DistanceMode::Gram`]); for points that nearly coincide,
/// [`pairwise_distances_rows`] over `0..n` with [`DistanceMode::Direct`] gives the same
/// matrix with full relative accuracy. Scalar twin: [`crate::scalar::pairwise_distances`].
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
/// See [`DistanceMode`](DistanceMode#numerics): Gram-form bound `(2 d + 4) 2^-24 (|a|^2 + |b|^2)`
/// on squared distances, `(2 d + 10) 2^-24` on cosine distances; equal rows give exactly
/// 0; NaN/inf propagate to the entries of affected rows.
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
    pairwise_distances_on(Backend::active(), x, metric, out, workspace)
}

/// [`pairwise_distances`] with the caller's backend.
pub(crate) fn pairwise_distances_on(
    backend: Backend,
    x: Matrix<'_>,
    metric: Metric,
    out: &mut [f32],
    workspace: &mut [f32],
) -> Result<(), Error> {
    let n = check_pairwise(&x, out.len(), workspace.len())?;
    tile::Block {
        a: x,
        r0: 0,
        r1: n,
        b: x,
        pairwise: true,
        metric,
        mode: DistanceMode::Gram,
        neg_dot: false,
        out,
        ws: workspace,
    }
    .run_on(backend);
    Ok(())
}

/// Rows `rows` of the pairwise distance matrix of `x`:
/// `out_block[(i - rows.start) * n + j] = d(x_i, x_j)` for `i` in `rows`, `j` in `0..n`.
///
/// Blocks that partition `0..n` reproduce [`pairwise_distances`] exactly (same values,
/// same bits: every entry is computed by the same tile arithmetic whatever the block),
/// so disjoint blocks can run on different threads over `split_at_mut` pieces of one
/// output. Inside the block's own columns symmetry halves the work, the columns
/// outside it are computed in full, so `t` equal blocks do `(2 t - 1) / t` times the work
/// of one whole call. `mode` picks the Gram or the direct form of the Euclidean metrics
/// ([`DistanceMode`]); an empty range writes nothing. Scalar twin:
/// [`crate::scalar::pairwise_distances_rows`].
///
/// `workspace` needs [`pairwise_distances_rows_workspace_len`]`(n, rows.len(), dim)`
/// elements, garbage before and after.
///
/// # Errors
///
/// - [`Error::IndexOutOfRange`] (`"rows"`, position 1) when `rows.end > n`;
/// - [`Error::InvalidParameter`] (`"rows"`) when `rows.start > rows.end`;
/// - [`Error::ShapeOverflow`] when `rows.len() * n` overflows `usize`;
/// - [`Error::LengthMismatch`] (`"out"`) when `out_block.len() != rows.len() * n`;
/// - [`Error::WorkspaceTooSmall`] when the workspace is too short.
///
/// # Numerics
///
/// As [`pairwise_distances`] in [`DistanceMode::Gram`]; in [`DistanceMode::Direct`] the
/// squared distances are within `(d + 2) 2^-24` relative of the exact ones (see the
/// [`DistanceMode`](DistanceMode#numerics)). The diagonal entries in the block are those
/// of [`pairwise_distances`].
///
/// # Example
///
/// ```
/// use triplet_kernels::{
///     pairwise_distances_rows, pairwise_distances_rows_workspace_len, DistanceMode, Matrix,
///     Metric,
/// };
/// let x = Matrix::new(&[0.0, 0.0, 3.0, 4.0, 6.0, 8.0], 3, 2)?;
/// // Row 1 only, exact mode.
/// let mut row = [0.0_f32; 3];
/// let mut ws = [0.0_f32; pairwise_distances_rows_workspace_len(3, 1, 2)];
/// pairwise_distances_rows(x, 1..2, Metric::Euclidean, DistanceMode::Direct, &mut row, &mut ws)?;
/// assert_eq!(row, [5.0, 0.0, 5.0]);
/// # Ok::<(), triplet_kernels::Error>(())
/// ```
#[cfg_attr(feature = "no-panic", no_panic::no_panic)]
pub fn pairwise_distances_rows(
    x: Matrix<'_>,
    rows: Range<usize>,
    metric: Metric,
    mode: DistanceMode,
    out_block: &mut [f32],
    workspace: &mut [f32],
) -> Result<(), Error> {
    let backend = Backend::active();
    pairwise_distances_rows_on(backend, x, rows, metric, mode, out_block, workspace)
}

/// [`pairwise_distances_rows`] with the caller's backend.
pub(crate) fn pairwise_distances_rows_on(
    backend: Backend,
    x: Matrix<'_>,
    rows: Range<usize>,
    metric: Metric,
    mode: DistanceMode,
    out_block: &mut [f32],
    workspace: &mut [f32],
) -> Result<(), Error> {
    let (r0, r1) = check_pairwise_rows(&x, &rows, out_block.len(), workspace.len())?;
    tile::Block {
        a: x,
        r0,
        r1,
        b: x,
        pairwise: true,
        metric,
        mode,
        neg_dot: false,
        out: out_block,
        ws: workspace,
    }
    .run_on(backend);
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
/// `out` has exactly `m * n` elements and is fully overwritten. The Euclidean metrics use
/// the Gram form; [`cross_distances_rows`] over `0..m` with [`DistanceMode::Direct`] is
/// the exact alternative. Scalar twin: [`crate::scalar::cross_distances`]. `workspace`
/// needs [`cross_distances_workspace_len`]`(m, n, dim)` elements, garbage before and
/// after.
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
/// As [`pairwise_distances`]: equal rows in `x` and `y` give exactly 0 for the Euclidean
/// metrics, and `1 - cos` rounded for cosine. Cosine rows whose squared norm exceeds
/// `2^126` are scaled by an exact power of two when packed, so their distances stay finite
/// and accurate for every finite input.
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
    cross_distances_on(Backend::active(), x, y, metric, out, workspace)
}

/// [`cross_distances`] with the caller's backend.
pub(crate) fn cross_distances_on(
    backend: Backend,
    x: Matrix<'_>,
    y: Matrix<'_>,
    metric: Metric,
    out: &mut [f32],
    workspace: &mut [f32],
) -> Result<(), Error> {
    let (m, _) = check_cross(&x, &y, out.len(), workspace.len())?;
    tile::Block {
        a: x,
        r0: 0,
        r1: m,
        b: y,
        pairwise: false,
        metric,
        mode: DistanceMode::Gram,
        neg_dot: false,
        out,
        ws: workspace,
    }
    .run_on(backend);
    Ok(())
}

/// Rows `rows` of the cross distance matrix:
/// `out_block[(i - rows.start) * n + j] = d(x_i, y_j)` for `i` in `rows`, `j` in `0..n`.
///
/// Blocks that partition `0..m` reproduce [`cross_distances`] bit for bit, with no extra
/// work, so disjoint blocks can run on different threads. `mode` picks the Gram or the
/// direct form of the Euclidean metrics ([`DistanceMode`]); an empty range writes
/// nothing. Scalar twin: [`crate::scalar::cross_distances_rows`].
///
/// `workspace` needs [`cross_distances_rows_workspace_len`]`(rows.len(), n, dim)`
/// elements, garbage before and after.
///
/// # Errors
///
/// - [`Error::DimensionMismatch`] when `x` and `y` have different dimensions;
/// - [`Error::IndexOutOfRange`] (`"rows"`, position 1) when `rows.end > m`;
/// - [`Error::InvalidParameter`] (`"rows"`) when `rows.start > rows.end`;
/// - [`Error::ShapeOverflow`] when `rows.len() * n` overflows `usize`;
/// - [`Error::LengthMismatch`] (`"out"`) when `out_block.len() != rows.len() * n`;
/// - [`Error::WorkspaceTooSmall`] when the workspace is too short.
///
/// # Numerics
///
/// As [`cross_distances`] in [`DistanceMode::Gram`]; as [`pairwise_distances_rows`] in
/// [`DistanceMode::Direct`].
///
/// # Example
///
/// ```
/// use triplet_kernels::{
///     cross_distances_rows, cross_distances_rows_workspace_len, DistanceMode, Matrix, Metric,
/// };
/// let x = Matrix::new(&[0.0, 0.0, 1.0, 1.0], 2, 2)?;
/// let y = Matrix::new(&[1.0, 1.0, 4.0, 5.0], 2, 2)?;
/// let mut block = [0.0_f32; 2];
/// let mut ws = [0.0_f32; cross_distances_rows_workspace_len(1, 2, 2)];
/// cross_distances_rows(x, y, 1..2, Metric::SquaredEuclidean, DistanceMode::Gram, &mut block, &mut ws)?;
/// assert_eq!(block, [0.0, 25.0]);
/// # Ok::<(), triplet_kernels::Error>(())
/// ```
#[cfg_attr(feature = "no-panic", no_panic::no_panic)]
pub fn cross_distances_rows(
    x: Matrix<'_>,
    y: Matrix<'_>,
    rows: Range<usize>,
    metric: Metric,
    mode: DistanceMode,
    out_block: &mut [f32],
    workspace: &mut [f32],
) -> Result<(), Error> {
    let backend = Backend::active();
    cross_distances_rows_on(backend, x, y, rows, metric, mode, out_block, workspace)
}

/// [`cross_distances_rows`] with the caller's backend.
#[allow(clippy::too_many_arguments)]
pub(crate) fn cross_distances_rows_on(
    backend: Backend,
    x: Matrix<'_>,
    y: Matrix<'_>,
    rows: Range<usize>,
    metric: Metric,
    mode: DistanceMode,
    out_block: &mut [f32],
    workspace: &mut [f32],
) -> Result<(), Error> {
    let (r0, r1) = check_cross_rows(&x, &y, &rows, out_block.len(), workspace.len())?;
    tile::Block {
        a: x,
        r0,
        r1,
        b: y,
        pairwise: false,
        metric,
        mode,
        neg_dot: false,
        out: out_block,
        ws: workspace,
    }
    .run_on(backend);
    Ok(())
}

/// The block of rows `rows` of `x` against every row of `y` into `out` (`rows.len() *
/// y.rows()` values), as [`cross_distances_rows`] computes it, for callers that have
/// validated the shapes and sized `ws` with [`cross_distances_rows_workspace_len`]
/// (nothing is written when they are short); `-<x_i, y_j>` instead when `neg_dot`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn cross_tile_on(
    backend: Backend,
    x: Matrix<'_>,
    rows: Range<usize>,
    y: Matrix<'_>,
    metric: Metric,
    mode: DistanceMode,
    neg_dot: bool,
    out: &mut [f32],
    ws: &mut [f32],
) {
    let (r0, r1) = (rows.start, rows.end);
    let fits = r0 <= r1
        && r1 <= x.rows()
        && x.dim() == y.dim()
        && out.len() == (r1 - r0).saturating_mul(y.rows())
        && ws.len() >= tile::block_workspace_len(r1 - r0, y.rows(), x.dim());
    if !fits {
        return;
    }
    tile::Block {
        a: x,
        r0,
        r1,
        b: y,
        pairwise: false,
        metric,
        mode,
        neg_dot,
        out,
        ws,
    }
    .run_on(backend);
}

// ---------------------------------------------------------------------------------------
// Norm clamping and exact rescaling, shared by the tile, the norms and the pair kernels.

/// Clamps a norm below at [`NORM_EPS`], keeping NaN.
#[inline]
fn clamp_norm(n: f32) -> f32 {
    if n < NORM_EPS {
        NORM_EPS
    } else {
        n
    }
}

/// Squared norms at or above this are summed without losing terms to underflow (the
/// squares of elements below `2^-63` flush into the subnormal range).
const SAFE_SQ_MIN: f32 = 8.271_806e-25; // 2^-80

/// A power of two `c` with `c m` in `[1, 4)` for finite `m > 0`, so `c x` is exact.
#[inline(always)]
fn pow2_inverse(m: f32) -> f32 {
    // The unbiased exponent of m; subnormals count as the smallest normal exponent.
    let e = ((m.to_bits() >> 23) & 0xff).cast_signed() - 127;
    let e = e.clamp(-126, 126);
    f32::from_bits(((127 - e) as u32) << 23)
}
