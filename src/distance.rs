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
//! # Numerics
//!
//! The error bounds of the matrix kernels, for both modes and every metric, are in the
//! public docs of [`DistanceMode`] (this module is private, its docs are not rendered).
//! NaN and infinity in the data are not checked: they propagate to every entry computed
//! from an affected row (NaN or infinite, which one is unspecified), never elsewhere.

mod fixup;
mod gemm;
mod tile;

use crate::error::Error;
use crate::math;
use crate::matrix::{two_rows_mut, Matrix};
use crate::simd::{self, Backend, Kernel, Simd};
use crate::validate::{check_len, check_workspace, checked_area};
use core::ops::Range;

pub(crate) use fixup::{fix_up, metric_norms, needs_direct, refine_pairwise};
pub(crate) use gemm::{gemm_acc, symmetrise, GEMM_MR};

/// Lower bound applied to norms before dividing, as PyTorch's `F.normalize` and
/// `cosine_similarity` do.
pub const NORM_EPS: f32 = 1e-12;

/// Which distance a kernel computes; each variant gives its formula.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
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
/// dimension `dim`: about `(rows + 32) * (dim + 1)`, the rows packed into panels.
/// Saturates instead of overflowing.
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
        return Err(Error::InvalidParameter { name: "rows" });
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

/// Clamps a norm below at [`NORM_EPS`], keeping NaN.
#[inline]
fn clamp_norm(n: f32) -> f32 {
    if n < NORM_EPS {
        NORM_EPS
    } else {
        n
    }
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
    backend.dispatch(tile::Block {
        a: x,
        r0: 0,
        r1: n,
        b: x,
        pairwise: true,
        metric,
        mode: DistanceMode::Gram,
        out,
        ws: workspace,
    });
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
    backend.dispatch(tile::Block {
        a: x,
        r0,
        r1,
        b: x,
        pairwise: true,
        metric,
        mode,
        out: out_block,
        ws: workspace,
    });
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
    backend.dispatch(tile::Block {
        a: x,
        r0: 0,
        r1: m,
        b: y,
        pairwise: false,
        metric,
        mode: DistanceMode::Gram,
        out,
        ws: workspace,
    });
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
    backend.dispatch(tile::Block {
        a: x,
        r0,
        r1,
        b: y,
        pairwise: false,
        metric,
        mode,
        out: out_block,
        ws: workspace,
    });
    Ok(())
}

/// Squared norms at or above this are summed without losing terms to underflow (the
/// squares of elements below `2^-63` flush into the subnormal range).
const SAFE_SQ_MIN: f32 = 8.271_806e-25; // 2^-80

/// `(r, c)` with `|row| = r / c`: `c` is a power of two (1 unless the plain sum of
/// squares overflows or underflows) and `r` the norm of the exactly scaled row `c row`,
/// so every finite row has a finite, accurate `r` (the `hypot` idea, with one extra pass
/// over the row in the rare scaled case only). NaN rows give a NaN `r`; a row holding an
/// infinity gives `r = inf`.
#[inline(always)]
pub(crate) fn scaled_norm_with<S: Simd>(s: S, row: &[f32]) -> (f32, f32) {
    let sq = simd::dot_with(s, row, row);
    if sq.is_nan() || (SAFE_SQ_MIN..=f32::MAX).contains(&sq) {
        return (math::sqrt(sq), 1.0);
    }
    let m = row.iter().fold(0.0_f32, |m, v| m.max(v.abs()));
    if m == 0.0 || m.is_infinite() {
        return (math::sqrt(sq), 1.0);
    }
    let c = pow2_inverse(m);
    let vc = s.splat(c);
    let (mut a0, mut a1) = (s.zero(), s.zero());
    let mut chunks = row.chunks(S::LANES);
    while let Some(x0) = chunks.next() {
        let v = s.mul(s.load(x0), vc);
        a0 = s.fma(v, v, a0);
        if let Some(x1) = chunks.next() {
            let v = s.mul(s.load(x1), vc);
            a1 = s.fma(v, v, a1);
        }
    }
    (math::sqrt(s.reduce_add(s.add(a0, a1))), c)
}

/// A power of two `c` with `c m` in `[1, 4)` for finite `m > 0`, so `c x` is exact.
#[inline(always)]
fn pow2_inverse(m: f32) -> f32 {
    // The unbiased exponent of m; subnormals count as the smallest normal exponent.
    let e = ((m.to_bits() >> 23) & 0xff).cast_signed() - 127;
    let e = e.clamp(-126, 126);
    f32::from_bits(((127 - e) as u32) << 23)
}

/// The norm `|row|` through [`scaled_norm_with`]: infinite only where the exact norm
/// exceeds `f32::MAX`.
#[inline(always)]
pub(crate) fn norm_with<S: Simd>(s: S, row: &[f32]) -> f32 {
    let (r, c) = scaled_norm_with(s, row);
    if c == 1.0 {
        r
    } else {
        r / c
    }
}

/// Kernel of [`clamped_row_norms`].
struct ClampedNorms<'a, 'o> {
    x: Matrix<'a>,
    out: &'o mut [f32],
}
impl Kernel for ClampedNorms<'_, '_> {
    type Output = ();
    #[inline(always)]
    fn run<S: Simd, const MR: usize, const NV: usize>(self, s: S) {
        for (row, n) in self.x.row_iter().zip(self.out.iter_mut()) {
            *n = clamp_norm(norm_with(s, row));
        }
    }
}

/// Kernel of [`row_norms`].
struct RowNorms<'a, 'o> {
    x: Matrix<'a>,
    out: &'o mut [f32],
}
impl Kernel for RowNorms<'_, '_> {
    type Output = ();
    #[inline(always)]
    fn run<S: Simd, const MR: usize, const NV: usize>(self, s: S) {
        for (row, o) in self.x.row_iter().zip(self.out.iter_mut()) {
            *o = norm_with(s, row);
        }
    }
}

/// Kernel of [`l2_normalize`].
struct Normalize<'a, 'o> {
    x: Matrix<'a>,
    out: &'o mut [f32],
}
impl Kernel for Normalize<'_, '_> {
    type Output = ();
    #[inline(always)]
    fn run<S: Simd, const MR: usize, const NV: usize>(self, s: S) {
        for (row, o) in self
            .x
            .row_iter()
            .zip(self.out.chunks_exact_mut(self.x.dim()))
        {
            let (r, c) = scaled_norm_with(s, row);
            if c == 1.0 {
                simd::scale_into_with(s, 1.0 / clamp_norm(r), row, o);
            } else if r / c < NORM_EPS {
                simd::scale_into_with(s, 1.0 / NORM_EPS, row, o);
            } else {
                // (x c) / r: the exact scaling first, so neither |x| nor 1 / |x| is formed.
                scaled_unit_row(s, row, c, r, o);
            }
        }
    }
}

/// `out = (c x) * (1 / r)`: the unit row of `x` from [`scaled_norm_with`]'s `(r, c)`.
#[inline(always)]
fn scaled_unit_row<S: Simd>(s: S, row: &[f32], c: f32, r: f32, out: &mut [f32]) {
    let (vc, vi) = (s.splat(c), s.splat(1.0 / r));
    for (xc, oc) in row.chunks(S::LANES).zip(out.chunks_mut(S::LANES)) {
        s.store(s.mul(s.mul(s.load(xc), vc), vi), oc);
    }
}

/// Kernel of [`l2_normalize_backward`].
struct NormalizeBackward<'a, 'o> {
    x: Matrix<'a>,
    grad_out: &'a [f32],
    grad_x: &'o mut [f32],
}
impl Kernel for NormalizeBackward<'_, '_> {
    type Output = ();
    #[inline(always)]
    fn run<S: Simd, const MR: usize, const NV: usize>(self, s: S) {
        let dim = self.x.dim();
        for ((row, g), gx) in self
            .x
            .row_iter()
            .zip(self.grad_out.chunks_exact(dim))
            .zip(self.grad_x.chunks_exact_mut(dim))
        {
            let (rs, scale) = scaled_norm_with(s, row);
            let r = if scale == 1.0 { rs } else { rs / scale };
            // A NaN norm takes this branch and propagates.
            if scale != 1.0 && r > NORM_EPS {
                // A row whose squared norm overflows (or underflows): the same formula
                // from the exactly scaled row, y = (x scale) / rs.
                let inv = 1.0 / rs;
                let yg: f32 = row
                    .iter()
                    .zip(g)
                    .map(|(&xk, &gk)| xk * scale * inv * gk)
                    .sum();
                let c = yg * inv * scale;
                for ((o, &gk), &xk) in gx.iter_mut().zip(g).zip(row) {
                    *o = gk * (inv * scale) - c * (xk * scale * inv);
                }
            } else if r.is_nan() || r > NORM_EPS {
                let inv = 1.0 / r;
                // With y = x / r: grad = (g - y <y, g>) / r, formed as
                // g / r - (<x, g / r> / r) (x / r). Every intermediate keeps the scale of
                // g / r, of y, or of <y, g> (the products x_k (g_k / r)), so none
                // underflows unless g itself is that small. Shorter forms did: for long
                // rows `x (<x, g> / r^3)` (|x| ~ 1e17: 1 / r^3 ~ 1e-51) left a residue of
                // about 1e-29 where the gradient is 0; for short rows `<x, g> / r^2`
                // (|x| ~ 4e-11, |g| ~ 1e-30: <x, g> ~ 4e-41, subnormal) left 3e-25.
                simd::scale_into_with(s, inv, g, gx);
                let c = simd::dot_with(s, row, gx) * inv;
                for (o, &xk) in gx.iter_mut().zip(row) {
                    *o -= c * (xk * inv);
                }
            } else {
                simd::scale_into_with(s, 1.0 / NORM_EPS, g, gx);
            }
        }
    }
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
/// Relative error at most `(d / 8 + 10) * 2^-24` against the exact norm, for every finite
/// row: when the plain sum of squares would overflow (`|x|` above about `1.8e19`) or lose
/// terms to underflow (`|x|` below about `9e-13`), the row is first scaled by an exact
/// power of two, as `hypot` does. The result is infinite only where the exact norm
/// exceeds `f32::MAX`.
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
    Backend::active().dispatch(RowNorms { x, out });
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
/// Each element within `(d / 8 + 12) * 2^-24` relative of the exact quotient. The norm is
/// taken as in [`row_norms`], so every finite non-zero row has a finite unit image, also
/// when its squared norm overflows `f32` (`[1.9e19, 0]` becomes `[1, 0]`).
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
    l2_normalize_on(Backend::active(), x, out)
}

/// [`l2_normalize`] with the caller's backend.
pub(crate) fn l2_normalize_on(
    backend: Backend,
    x: Matrix<'_>,
    out: &mut [f32],
) -> Result<(), Error> {
    check_len("out", x.len(), out.len())?;
    backend.dispatch(Normalize { x, out });
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
/// Error bounded by `(2 d / 8 + 20) * 2^-24 * (|grad_out| / r)` per element while the
/// intermediates `grad_out / r` and `<y, grad_out>` stay in `f32`'s normal range (above
/// about `1.2e-38`). Below it they round to multiples of `2^-149`, which adds an absolute
/// error of at most `(d + 3) (1 + 1 / r) 2^-150` (under `7e-34 (d + 3)` for any
/// `r > 1e-12`).
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
    l2_normalize_backward_on(Backend::active(), x, grad_out, grad_x)
}

/// [`l2_normalize_backward`] with the caller's backend.
pub(crate) fn l2_normalize_backward_on(
    backend: Backend,
    x: Matrix<'_>,
    grad_out: &[f32],
    grad_x: &mut [f32],
) -> Result<(), Error> {
    check_len("grad_out", x.len(), grad_out.len())?;
    check_len("grad_x", x.len(), grad_x.len())?;
    backend.dispatch(NormalizeBackward {
        x,
        grad_out,
        grad_x,
    });
    Ok(())
}

/// Clamped norms of every row into `norms` (`rows` elements), for kernels that need
/// cosine distances and their gradients.
pub(crate) fn clamped_row_norms(backend: Backend, x: &Matrix<'_>, norms: &mut [f32]) {
    backend.dispatch(ClampedNorms { x: *x, out: norms });
}

/// One distance between two rows, computed directly (`sum (a_i - b_i)^2`, no Gram form);
/// `na`, `nb` are their clamped norms (read for cosine only, see [`clamped_row_norms`]).
/// [`distance_with`] is the same arithmetic inside a [`Kernel`].
#[inline]
pub(crate) fn distance(
    backend: Backend,
    metric: Metric,
    a: &[f32],
    b: &[f32],
    na: f32,
    nb: f32,
) -> f32 {
    match metric {
        Metric::SquaredEuclidean => simd::sq_dist(backend, a, b),
        Metric::Euclidean => euclidean_from_sq(simd::sq_dist(backend, a, b), a, b, 0.0),
        Metric::Cosine => 1.0 - simd::dot(backend, a, b) / (na * nb),
    }
}

/// [`distance`] on the backend `s`, for code generic over [`Simd`] (inlined into the
/// caller's target-feature entry point).
#[inline(always)]
pub(crate) fn distance_with<S: Simd>(
    s: S,
    metric: Metric,
    a: &[f32],
    b: &[f32],
    na: f32,
    nb: f32,
) -> f32 {
    match metric {
        Metric::SquaredEuclidean => simd::sq_dist_with(s, a, b),
        Metric::Euclidean => euclidean_from_sq(simd::sq_dist_with(s, a, b), a, b, 0.0),
        Metric::Cosine => 1.0 - simd::dot_with(s, a, b) / (na * nb),
    }
}

/// `sqrt(sq)` for a directly computed squared distance `sq = sum (a_i - b_i + offset)^2`.
/// Below `2^-80` the sum may have lost its terms to underflow (rows `1e-23` apart give
/// `sq = 0`), so the distance is then recomputed from the difference scaled by an exact
/// power of two: positive for any two different rows, exactly 0 for equal ones.
#[inline(always)]
pub(crate) fn euclidean_from_sq(sq: f32, a: &[f32], b: &[f32], offset: f32) -> f32 {
    if sq.is_nan() || sq >= SAFE_SQ_MIN {
        return math::sqrt(sq);
    }
    let diff = |(&u, &v): (&f32, &f32)| u - v + offset;
    let m = a
        .iter()
        .zip(b)
        .map(diff)
        .fold(0.0_f32, |m, t| m.max(t.abs()));
    if m == 0.0 {
        return 0.0;
    }
    let c = pow2_inverse(m);
    let r: f32 = a
        .iter()
        .zip(b)
        .map(|p| {
            let t = diff(p) * c;
            t * t
        })
        .sum();
    math::sqrt(r) / c
}

/// The one pair gradient of the crate: adds `coef * d d(a, b) / d a` to `ga` and
/// `coef * d d(a, b) / d b` to `gb`, where `dist = d(a, b)`, `na`, `nb` are the clamped
/// norms (cosine only) and `offset` is PyTorch's shift of the difference vector
/// (Euclidean metrics only; 0 elsewhere). Every loss's gradient goes through it.
///
/// - squared Euclidean: `2 (a - b + offset)` and its negative;
/// - Euclidean: `(a - b + offset) / d` and its negative, 0 at `d = 0` (never NaN);
/// - cosine, `d = 1 - <a,b> / (na nb)`: `-b / (na nb) + (1 - d) a / na^2` for `a` (the
///   second term only where `|a|` is above the clamp, below it the norm is a constant),
///   symmetrically for `b`.
///
/// The Euclidean metrics form the difference `a - b` first and scale it once, in one pass
/// over both rows: the rounding error scales with `|a - b|`, not with `|a|` (two separate
/// updates `+c a`, `-c b` would lose the gradient of nearly coincident rows far from the
/// origin).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn pair_grad_with<S: Simd>(
    s: S,
    metric: Metric,
    a: &[f32],
    b: &[f32],
    dist: f32,
    (na, nb): (f32, f32),
    offset: f32,
    coef: f32,
    ga: &mut [f32],
    gb: &mut [f32],
) {
    let k = match metric {
        Metric::SquaredEuclidean => 2.0 * coef,
        Metric::Euclidean if dist > 0.0 => coef / dist,
        Metric::Euclidean => return,
        Metric::Cosine => {
            let own = |n: f32| cosine_own_factor(coef, dist, n);
            let cross = s.splat(-coef / (na * nb));
            let (sa, sb) = (s.splat(own(na)), s.splat(own(nb)));
            let l = S::LANES;
            for (((ac, bc), gac), gbc) in a
                .chunks(l)
                .zip(b.chunks(l))
                .zip(ga.chunks_mut(l))
                .zip(gb.chunks_mut(l))
            {
                let (av, bv) = (s.load(ac), s.load(bc));
                s.store(s.fma(sa, av, s.fma(cross, bv, s.load(gac))), gac);
                s.store(s.fma(sb, bv, s.fma(cross, av, s.load(gbc))), gbc);
            }
            return;
        }
    };
    let (vk, nk, vo) = (s.splat(k), s.splat(-k), s.splat(offset));
    let l = S::LANES;
    for (((ac, bc), gac), gbc) in a
        .chunks(l)
        .zip(b.chunks(l))
        .zip(ga.chunks_mut(l))
        .zip(gb.chunks_mut(l))
    {
        let diff = s.add(s.sub(s.load(ac), s.load(bc)), vo);
        s.store(s.fma(diff, vk, s.load(gac)), gac);
        s.store(s.fma(diff, nk, s.load(gbc)), gbc);
    }
}

/// The factor `k` of a Euclidean-type pair gradient, `d d(a, b) / d a = k (a - b)`, for
/// a pair with coefficient `coef` at distance `dist`: `2 coef` for the squared distance,
/// `coef / dist` for the distance itself, 0 at `dist = 0` (where [`pair_grad_with`]
/// leaves the rows alone) and for a NaN distance.
#[inline(always)]
pub(crate) fn euclidean_grad_factor(squared: bool, coef: f32, dist: f32) -> f32 {
    if squared {
        2.0 * coef
    } else if dist > 0.0 {
        coef / dist
    } else {
        0.0
    }
}

/// The own-norm factor of the cosine pair gradient: `d d(a, b) / d a` holds
/// `coef (1 - d) a / |a|^2` for a pair with coefficient `coef` at distance `dist`, `norm`
/// being `|a|`; 0 where the norm is clamped at [`NORM_EPS`] (a constant there).
#[inline(always)]
pub(crate) fn cosine_own_factor(coef: f32, dist: f32, norm: f32) -> f32 {
    if norm > NORM_EPS {
        coef * (1.0 - dist) / (norm * norm)
    } else {
        0.0
    }
}

/// [`pair_grad_with`] on rows `i` and `j` of `x`, into the same rows of `grad`; nothing
/// when `i == j` (the derivative of `d(x_i, x_i)` is 0 for every metric).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn pair_grad_rows_with<S: Simd>(
    s: S,
    metric: Metric,
    x: &Matrix<'_>,
    (i, j): (usize, usize),
    dist: f32,
    norms: (f32, f32),
    offset: f32,
    coef: f32,
    grad: &mut [f32],
) {
    let (Some(a), Some(b)) = (x.row(i), x.row(j)) else {
        return;
    };
    if let Some((ga, gb)) = two_rows_mut(grad, x.dim(), i, j) {
        pair_grad_with(s, metric, a, b, dist, norms, offset, coef, ga, gb);
    }
}

/// [`pair_grad_rows_with`] on `backend`, for callers outside a [`Kernel`].
#[inline]
#[allow(clippy::too_many_arguments)]
pub(crate) fn pair_grad_rows(
    backend: Backend,
    metric: Metric,
    x: &Matrix<'_>,
    rows: (usize, usize),
    dist: f32,
    norms: (f32, f32),
    offset: f32,
    coef: f32,
    grad: &mut [f32],
) {
    backend.dispatch(PairGradRows {
        metric,
        x,
        rows,
        dist,
        norms,
        offset,
        coef,
        grad,
    });
}

/// Kernel of [`pair_grad_rows`].
struct PairGradRows<'a, 'x, 'g> {
    metric: Metric,
    x: &'a Matrix<'x>,
    rows: (usize, usize),
    dist: f32,
    norms: (f32, f32),
    offset: f32,
    coef: f32,
    grad: &'g mut [f32],
}
impl Kernel for PairGradRows<'_, '_, '_> {
    type Output = ();
    #[inline(always)]
    fn run<S: Simd, const MR: usize, const NV: usize>(self, s: S) {
        pair_grad_rows_with(
            s,
            self.metric,
            self.x,
            self.rows,
            self.dist,
            self.norms,
            self.offset,
            self.coef,
            self.grad,
        );
    }
}
