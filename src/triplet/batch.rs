//! The batch losses with online mining ([`triplet_batch_loss`],
//! [`triplet_batch_loss_grad`]): validation, workspace, optional normalisation and its
//! backward pass, and the reduction; the triplets themselves are mined and accumulated by
//! [`per_triplet`] (batch-hard, semi-hard) or
//! [`batch_all`].

use super::{batch_all, check_batch_args, finish_grad, per_triplet, BatchLoss, BatchParams};
use crate::distance::{l2_normalize_backward_on, l2_normalize_on, metric_norms};
use crate::error::Error;
use crate::matrix::Matrix;
use crate::mining::{hard_len, rows_len, Mining};
use crate::reduce::Reduction;
use crate::simd::Backend;
use crate::validate::{check_len, check_rows, check_workspace};
use crate::workspace::Carve;

/// Workspace of a batch loss (`grad`: with its gradient).
const fn batch_len(rows: usize, dim: usize, params: BatchParams, grad: bool) -> usize {
    let mining = match params.mining {
        Mining::BatchHard => hard_len(rows, dim),
        Mining::SemiHard => rows_len(rows, dim, 0),
        Mining::All => rows_len(rows, dim, if grad { batch_all::ALL_GRAD_ARRAYS } else { 0 }),
    };
    if params.normalize {
        let y = rows.saturating_mul(dim);
        mining
            .saturating_add(y)
            .saturating_add(if grad { dim } else { 0 })
    } else {
        mining
    }
}

/// Workspace elements that [`triplet_batch_loss`] needs for `rows` embeddings of
/// dimension `dim` under `params`; no `rows x rows` matrix, `O(rows * dim)`. With
/// `t = min(rows, 256)`:
///
/// - [`Mining::BatchHard`]: `5 rows`, one tile of `t x t` distances and its packing
///   ([`crate::cross_distances_workspace_len`]`(t, t, dim)`);
/// - [`Mining::SemiHard`] and [`Mining::All`]: `3 rows`, one block of `t x rows`
///   distances and its packing ([`crate::pairwise_distances_rows_workspace_len`]`(rows, t,
///   dim)`, about `(rows + 96) * (dim + 1)`);
///
/// plus `rows * dim` when `params.normalize`. For `rows = 4096`, `dim = 256`: about
/// `0.24e6` elements (1 MiB) for batch-hard, `2.1e6` (8.6 MiB) for the others, against
/// `16.8e6` for the distance matrix. Saturates instead of overflowing.
pub const fn triplet_batch_loss_workspace_len(
    rows: usize,
    dim: usize,
    params: BatchParams,
) -> usize {
    batch_len(rows, dim, params, false)
}

/// Workspace elements that [`triplet_batch_loss_grad`] needs for `rows` embeddings of
/// dimension `dim` under `params`: those of [`triplet_batch_loss_workspace_len`], plus
/// `6 rows` for [`Mining::All`] (a row of pair coefficients, the diagonal terms of the
/// gradient and the GEMM's packed coefficients) and `dim` when `params.normalize`.
/// Saturates instead of overflowing.
pub const fn triplet_batch_loss_grad_workspace_len(
    rows: usize,
    dim: usize,
    params: BatchParams,
) -> usize {
    batch_len(rows, dim, params, true)
}

/// Running totals of a batch loss.
#[derive(Default)]
pub(super) struct Totals {
    pub(super) sum: f64,
    pub(super) count: usize,
    pub(super) active: usize,
}

impl Totals {
    #[inline(always)]
    pub(super) fn add(&mut self, h: f32, active: bool) {
        self.sum += f64::from(h);
        self.count = self.count.saturating_add(1);
        self.active = self.active.saturating_add(usize::from(active));
    }

    pub(super) fn finish(&self, reduction: Reduction) -> (BatchLoss, f32) {
        let w = reduction.weight(self.count, self.active);
        let loss = BatchLoss {
            loss: (self.sum * f64::from(w)) as f32,
            num_triplets: self.count,
            num_active: self.active,
            sum: self.sum,
        };
        (loss, w)
    }
}

/// The shared body of the batch losses; `grad` is `None` for the forward pass. Inlined
/// into both entry points, so that the link-time no-panic proof sees its body there.
#[inline(always)]
fn batch_impl(
    x: Matrix<'_>,
    labels: &[u32],
    params: &BatchParams,
    mut grad: Option<&mut [f32]>,
    workspace: &mut [f32],
) -> Result<BatchLoss, Error> {
    let n = check_batch_args(&x, labels, params)?;
    let dim = x.dim();
    if let Some(g) = grad.as_deref() {
        check_len("grad", x.len(), g.len())?;
    }
    check_workspace(batch_len(n, dim, *params, grad.is_some()), workspace.len())?;
    check_rows(&x, params.normalize)?;
    // Read once: normalisation, distances, mining, gradient blocks and the backward
    // normalisation of this call all use it.
    let backend = Backend::active();
    let mut ws = Carve::new(workspace);
    let (y, tmp) = if params.normalize {
        let y = ws.take(x.len())?;
        let tmp = ws.take(if grad.is_some() { dim } else { 0 })?;
        l2_normalize_on(backend, x, y)?;
        (Some(&*y), tmp)
    } else {
        (None, &mut [][..])
    };
    let xs = match y {
        Some(y) => Matrix::new(y, n, dim)?,
        None => x,
    };
    let norms = ws.take(n)?;
    metric_norms(backend, &xs, params.metric, norms);
    let norms = &*norms;
    if let Some(g) = grad.as_deref_mut() {
        g.fill(0.0);
    }
    let totals = match params.mining {
        Mining::BatchHard | Mining::SemiHard => {
            per_triplet::mined_totals(backend, xs, labels, norms, params, grad.as_deref_mut(), ws)?
        }
        Mining::All => {
            batch_all::all_totals(backend, xs, labels, norms, params, grad.as_deref_mut(), ws)?
        }
    };
    let (loss, w) = totals.finish(params.reduction);
    if let Some(g) = grad {
        finish_grad(backend, w, g);
        if params.normalize {
            // Row by row (indices, not a zip of chunk iterators, whose length would
            // divide by the row length).
            for (i, row) in x.row_iter().enumerate() {
                let Some(gr) = g.get_mut(i * dim..(i + 1) * dim) else {
                    break;
                };
                for (t, &v) in tmp.iter_mut().zip(gr.iter()) {
                    *t = v;
                }
                l2_normalize_backward_on(backend, Matrix::new(row, 1, dim)?, tmp, gr)?;
            }
        }
    }
    Ok(loss)
}

/// Triplet loss of a labelled batch with online mining: selects the triplets with
/// `params.mining`, forms `v = d(a, p) - d(a, n) + margin` for each, applies the hinge and
/// reduces (see the [module docs](super)). Returns the loss with the number of selected and
/// of active (`> 0`) terms. A batch that selects nothing (one row, one class, no
/// positives) has loss 0.
///
/// No `n x n` matrix is held (see [`crate::mining`]'s
/// [memory notes](crate::mining#memory-no-n-x-n-matrix)): batch-hard sweeps the upper
/// triangle of the distance matrix in tiles, each distance computed once; semi-hard and
/// batch-all compute blocks of 256 anchor rows at a time and mine each anchor from its
/// row. Batch-hard and semi-hard then recompute the two distances of each selected
/// triplet directly (`sum (a_i - b_i)^2`, as
/// [`triplet_margin_loss`](super::triplet_margin_loss) does); batch-all uses the row's
/// distances. Scalar twin: [`crate::scalar::triplet_batch_loss`]; with the gradient:
/// [`triplet_batch_loss_grad`]. `workspace` needs
/// [`triplet_batch_loss_workspace_len`]`(rows, dim, params)` elements, garbage before and
/// after.
///
/// # Errors
///
/// - [`Error::InvalidParameter`] (`"margin"`) for a margin that is NaN or above `2^100` in
///   magnitude;
/// - [`Error::LengthMismatch`] (`"labels"`) when `labels.len() != rows`;
/// - [`Error::ShapeOverflow`] when the triplet count overflows `usize`;
/// - [`Error::WorkspaceTooSmall`] when the workspace is too short;
/// - [`Error::NonFinite`] (`"x"`, row and column of the first one) when `x` holds a NaN or an infinity.
/// - [`Error::TooLarge`] (`"x"`, row and column) when an element of `x` exceeds
///   `2^52 / sqrt(dim)` and the rows are not normalised first (`normalize: false`),
///   where squared distances could overflow `f32`.
///
/// # Numerics
///
/// Mining decisions on `f32` distances with the accuracy of
/// [`crate::mining`](crate::mining#distances-and-their-accuracy) (ties to the smallest
/// index). Batch-hard and semi-hard terms use directly computed distances, within
/// `(d + 2) 2^-24` relative of the exact squared distances; batch-all terms use the
/// mined rows' distances, within `(8 d + 16) 2^-24` relative (Euclidean metrics) or
/// `(2 d + 10) 2^-24` absolute (cosine). Terms in `f32`; batch-hard and semi-hard terms
/// summed in `f64`; batch-all relu terms of one anchor-positive pair summed in the SIMD
/// backend's `f32` lanes (8 or 16) and then across them (error at most
/// `(n / 8 + 5) 2^-24` times their sum), the pairs in `f64`; soft-margin terms in `f64`.
/// Batch-all and batch-hard losses are continuous in the distances, so they stay within
/// the weighted sum of the per-term bounds even where a near-tie is decided differently
/// from the `f64` twin; semi-hard can differ by a whole term where a negative's distance
/// lies within rounding of the positive's.
///
/// # Example
///
/// ```
/// use triplet_kernels::{triplet_batch_loss, triplet_batch_loss_workspace_len};
/// use triplet_kernels::{BatchParams, Matrix, Mining};
/// let x = Matrix::new(&[0.0, 1.0, 1.5, 4.0], 4, 1)?;
/// let labels = [0, 0, 1, 1];
/// const P: BatchParams = BatchParams::new().with_mining(Mining::BatchHard).with_margin(1.0);
/// let mut ws = [0.0_f32; triplet_batch_loss_workspace_len(4, 1, P)];
/// let out = triplet_batch_loss(x, &labels, P, &mut ws)?;
/// // Anchors 0, 1, 2, 3: max(1 - 1.5 + 1, 0) = 0.5, max(1 - 0.5 + 1, 0) = 1.5,
/// // max(2.5 - 0.5 + 1, 0) = 3, max(2.5 - 3 + 1, 0) = 0.5.
/// assert_eq!((out.num_triplets, out.num_active), (4, 4));
/// assert_eq!(out.loss, (0.5 + 1.5 + 3.0 + 0.5) / 4.0);
/// # Ok::<(), triplet_kernels::Error>(())
/// ```
#[cfg_attr(feature = "no-panic", no_panic::no_panic)]
pub fn triplet_batch_loss(
    x: Matrix<'_>,
    labels: &[u32],
    params: BatchParams,
    workspace: &mut [f32],
) -> Result<BatchLoss, Error> {
    batch_impl(x, labels, &params, None, workspace)
}

/// [`triplet_batch_loss`] and its gradient with respect to `x`, in one call: mines,
/// reduces, writes `grad = d loss / d x` (`rows * dim`, every element overwritten) and
/// returns the loss with the triplet counts.
///
/// Each selected triplet gives the pair `(a, p)` the coefficient `+s` and the pair
/// `(a, n)` the coefficient `-s`, `s = h'(v)`; a pair with coefficient `c` adds
/// `c * d d(a, j) / d x` to the rows `a` and `j` (formulas in
/// [`triplet_margin_loss_grad`](super::triplet_margin_loss_grad)), and the total is scaled
/// by the reduction weight at the end. Batch-hard and semi-hard, with one or a few
/// triplets per anchor, update the three rows of each triplet in one pass (differences
/// formed once, `O(triplets * dim)`).
/// Batch-all sums the coefficients of each anchor's pairs (one vector pass per four
/// positives) and accumulates a block of anchors with register-blocked GEMMs: with `G`
/// the block's `256 x n` pair factors (written over its distances),
/// `grad[block] += G X` and, for the columns outside the block, `grad += G^T X[block]`;
/// inside the block `G` is summed with its transpose first, so a batch of up to 256 rows
/// needs the one product `G X` (`n^2 d` multiply-adds, twice the forward's triangle of
/// distances). Pairs that nearly coincide (the accuracy fix-up's test) are updated in
/// difference form instead. With `params.normalize` the
/// gradient is taken through the normalisation ([`crate::l2_normalize_backward`]). Mining
/// decisions are constants for the gradient. Scalar twin:
/// [`crate::scalar::triplet_batch_loss_grad`]. `workspace` needs
/// [`triplet_batch_loss_grad_workspace_len`]`(rows, dim, params)` elements, garbage
/// before and after.
///
/// # Errors
///
/// Those of [`triplet_batch_loss`], and [`Error::LengthMismatch`] (`"grad"`) when
/// `grad.len() != rows * dim`.
///
/// # Numerics
///
/// As [`triplet_batch_loss`] for the loss, bit for bit the same value. Away from hinge
/// kinks and mining near-ties the gradient is within `(m + d / 8 + 16) * 2^-24 * G` of
/// the twin's per element for batch-hard and semi-hard (`m` updates to the row, `G` the
/// sum of their absolute values). Batch-all's GEMM form `sum_j k_j x_a - sum_j k_j x_j`
/// rounds relative to the rows rather than their differences; since it only takes pairs
/// with `|a|^2 + |b|^2 <= 4 |a - b|^2`, so that `|a_i| + |b_i| <= sqrt(8 d) max_i
/// |a_i - b_i|`, each element stays within `(2 n + 4) sqrt(8 d) 2^-24 * G'`, `G'` the
/// sum over the row's pair updates of `|k| max_i |a_i - b_i|`, plus the effect of the
/// distance errors on the coefficients. The gradient is finite on every degenerate batch (single row, one class,
/// duplicate rows: the Euclidean gradient at distance 0 is 0; zero rows under cosine use
/// the clamped norm `1e-12`, which gives large but finite values).
///
/// # Example
///
/// ```
/// use triplet_kernels::{triplet_batch_loss_grad, triplet_batch_loss_grad_workspace_len};
/// use triplet_kernels::{BatchParams, Matrix, Metric, Mining, Reduction};
/// let x = Matrix::new(&[0.0, 1.0, 1.5, 4.0], 4, 1)?;
/// let labels = [0, 0, 1, 1];
/// const P: BatchParams = BatchParams::new()
///     .with_metric(Metric::Euclidean)
///     .with_mining(Mining::BatchHard)
///     .with_margin(1.0)
///     .with_reduction(Reduction::Sum);
/// let mut grad = [f32::NAN; 4];
/// let mut ws = [0.0_f32; triplet_batch_loss_grad_workspace_len(4, 1, P)];
/// let out = triplet_batch_loss_grad(x, &labels, P, &mut grad, &mut ws)?;
/// assert_eq!(out.loss, 0.5 + 1.5 + 3.0 + 0.5);
/// // Triplets (0,1,2), (1,0,2), (2,3,1), (3,2,1), all active; d|a-b|/da = sign(a-b).
/// assert_eq!(grad, [-1.0, 5.0, -5.0, 1.0]);
/// # Ok::<(), triplet_kernels::Error>(())
/// ```
#[cfg_attr(feature = "no-panic", no_panic::no_panic)]
pub fn triplet_batch_loss_grad(
    x: Matrix<'_>,
    labels: &[u32],
    params: BatchParams,
    grad: &mut [f32],
    workspace: &mut [f32],
) -> Result<BatchLoss, Error> {
    batch_impl(x, labels, &params, Some(grad), workspace)
}
