//! The contrastive loss over caller-given pairs (those a miner kept):
//! [`contrastive_loss_pairs`], [`contrastive_loss_pairs_grad`].

use super::ContrastiveParams;
use crate::distance::{clamped_row_norms, distance, pair_grad_rows, Metric};
use crate::error::Error;
use crate::matrix::Matrix;
use crate::mining::Pair;
use crate::multi_similarity::check_pair_indices;
use crate::simd::Backend;
use crate::validate::{check_len, check_rows, check_workspace};
use crate::workspace::Carve;

/// Workspace elements that [`contrastive_loss_pairs`] and [`contrastive_loss_pairs_grad`]
/// need for `rows` embeddings of dimension `dim` and `pairs` positive and negative pairs
/// in all: `rows` norms and one distance per pair. Saturates instead of overflowing.
pub const fn contrastive_loss_pairs_workspace_len(rows: usize, dim: usize, pairs: usize) -> usize {
    let _ = dim;
    rows.saturating_add(pairs)
}

/// The checks of the pair-list contrastive kernels, shared with the twins: pairs, grad,
/// workspace, parameters, data. Returns the number of rows.
pub(crate) fn check_contrastive_pairs(
    x: &Matrix<'_>,
    positives: &[Pair],
    negatives: &[Pair],
    params: &ContrastiveParams,
    grad: Option<usize>,
    workspace: usize,
) -> Result<usize, Error> {
    let n = x.rows();
    check_pair_indices("positives", positives, n)?;
    check_pair_indices("negatives", negatives, n)?;
    if let Some(g) = grad {
        check_len("grad", x.len(), g)?;
    }
    let k = positives.len().saturating_add(negatives.len());
    check_workspace(
        contrastive_loss_pairs_workspace_len(n, x.dim(), k),
        workspace,
    )?;
    params.validate()?;
    check_rows(x, false)?;
    Ok(n)
}

fn pairs_impl(
    x: Matrix<'_>,
    metric: Metric,
    params: ContrastiveParams,
    positives: &[Pair],
    negatives: &[Pair],
    grad: Option<&mut [f32]>,
    workspace: &mut [f32],
) -> Result<f32, Error> {
    let n = check_contrastive_pairs(
        &x,
        positives,
        negatives,
        &params,
        grad.as_deref().map(<[f32]>::len),
        workspace.len(),
    )?;
    let backend = Backend::active();
    let mut ws = Carve::new(workspace);
    let norms = ws.take(n)?;
    if metric == Metric::Cosine {
        clamped_row_norms(backend, &x, norms);
    }
    let norms = &*norms;
    let dists = ws.take(positives.len() + negatives.len())?;
    let norm = |i: usize| norms.get(i).copied().unwrap_or(1.0);
    let form = params.form;
    let (mut pos_sum, mut neg_sum) = (0.0_f64, 0.0_f64);
    let (mut pos_active, mut neg_active) = (0_usize, 0_usize);
    let Some((dp, dn)) = dists.split_at_mut_checked(positives.len()) else {
        return Ok(0.0);
    };
    for (part, (ds, pairs)) in [(&mut *dp, positives), (&mut *dn, negatives)]
        .into_iter()
        .enumerate()
    {
        for (slot, p) in ds.iter_mut().zip(pairs) {
            let (a, j) = (p.anchor as usize, p.other as usize);
            let d = match (x.row(a), x.row(j)) {
                (Some(ra), Some(rj)) => distance(backend, metric, ra, rj, norm(a), norm(j)),
                _ => 0.0,
            };
            *slot = d;
            if part == 0 {
                let t = form.pos_term(d, params.pos_margin);
                pos_sum += f64::from(t);
                pos_active += usize::from(t > 0.0);
            } else {
                let t = form.neg_term(d, params.neg_margin);
                neg_sum += f64::from(t);
                neg_active += usize::from(t > 0.0);
            }
        }
    }
    let (wp, wn) =
        params
            .reduction
            .weights(positives.len(), pos_active, negatives.len(), neg_active);
    let loss = (f64::from(wp) * pos_sum + f64::from(wn) * neg_sum) as f32;
    if let Some(g) = grad {
        g.fill(0.0);
        for (&d, p) in dp.iter().zip(positives) {
            let coef = wp * form.pos_slope(d, params.pos_margin);
            if coef != 0.0 {
                let (a, j) = (p.anchor as usize, p.other as usize);
                pair_grad_rows(
                    backend,
                    metric,
                    &x,
                    (a, j),
                    d,
                    (norm(a), norm(j)),
                    0.0,
                    coef,
                    g,
                );
            }
        }
        for (&d, p) in dn.iter().zip(negatives) {
            let coef = wn * form.neg_slope(d, params.neg_margin);
            if coef != 0.0 {
                let (a, j) = (p.anchor as usize, p.other as usize);
                pair_grad_rows(
                    backend,
                    metric,
                    &x,
                    (a, j),
                    d,
                    (norm(a), norm(j)),
                    0.0,
                    coef,
                    g,
                );
            }
        }
    }
    Ok(loss)
}

/// Contrastive loss over the given pairs: each pair `(i, j)` of `positives` contributes
/// the positive term and each of `negatives` the negative term of [`super::contrastive_loss`]
/// (`relu(d - pos_margin)`, `relu(neg_margin - d)`, or their squares), reduced by
/// `params.reduction` with `P`, `N` the lengths of the two lists. Their roles are as given
/// (no label is read); a pair is counted once as listed (the all-pairs loss counts both
/// orders). This is pytorch-metric-learning's `ContrastiveLoss` fed by a miner
/// ([`crate::pair_mine`], [`crate::multi_similarity_mine`]). Empty lists give a zero part.
/// Scalar twin: [`crate::scalar::contrastive_loss_pairs`].
///
/// `workspace` needs [`contrastive_loss_pairs_workspace_len`]`(rows, dim,
/// positives.len() + negatives.len())` elements, garbage before and after.
///
/// # Errors
///
/// In this order:
/// - [`Error::IndexOutOfRange`] (`"positives"`, `"negatives"`) at the first pair holding
///   an index `>= rows`;
/// - [`Error::WorkspaceTooSmall`] when the workspace is too short;
/// - [`Error::InvalidParameter`] (`"pos_margin"`, `"neg_margin"`) for a NaN or infinite
///   margin;
/// - [`Error::NonFinite`] (`"x"`, row and column) when `x` holds a NaN or an infinity;
/// - [`Error::TooLarge`] (`"x"`, row and column) when an element of `x` exceeds
///   `2^52 / sqrt(dim)`.
///
/// # Numerics
///
/// As [`super::contrastive_loss`]: distances pair by pair in the direct form, terms
/// rounded once to `f32`, sums in `f64`.
///
/// # Example
///
/// ```
/// use triplet_kernels::{contrastive_loss_pairs, contrastive_loss_pairs_workspace_len};
/// use triplet_kernels::{ContrastiveParams, Matrix, Metric, Pair};
/// let x = Matrix::new(&[0.0, 1.0, 1.5], 3, 1)?;
/// let pos = [Pair::new(0, 1)];
/// let neg = [Pair::new(1, 2), Pair::new(0, 2)];
/// let mut ws = [0.0_f32; contrastive_loss_pairs_workspace_len(3, 1, 3)];
/// let params = ContrastiveParams::new(0.5, 1.0);
/// let loss = contrastive_loss_pairs(x, Metric::Euclidean, params, &pos, &neg, &mut ws)?;
/// // positive part: relu(1 - 0.5) = 0.5; negative part: mean of the active terms: 0.5.
/// assert_eq!(loss, 1.0);
/// # Ok::<(), triplet_kernels::Error>(())
/// ```
#[cfg_attr(feature = "no-panic", no_panic::no_panic)]
pub fn contrastive_loss_pairs(
    x: Matrix<'_>,
    metric: Metric,
    params: ContrastiveParams,
    positives: &[Pair],
    negatives: &[Pair],
    workspace: &mut [f32],
) -> Result<f32, Error> {
    pairs_impl(x, metric, params, positives, negatives, None, workspace)
}

/// [`contrastive_loss_pairs`] and its gradient: returns the loss and writes
/// `grad = d loss / d x` (`rows * dim` elements, every one overwritten). The active
/// counts of the mean-over-active reductions are constants for the gradient; a term at
/// its kink has slope 0. Scalar twin: [`crate::scalar::contrastive_loss_pairs_grad`].
///
/// # Errors
///
/// As [`contrastive_loss_pairs`], with [`Error::LengthMismatch`] (`"grad"`) when
/// `grad.len() != rows * dim`, checked right after the pairs.
///
/// # Numerics
///
/// As [`super::contrastive_loss_grad`].
///
/// # Example
///
/// ```
/// use triplet_kernels::{contrastive_loss_pairs_grad, contrastive_loss_pairs_workspace_len};
/// use triplet_kernels::{ContrastiveParams, Matrix, Metric, Pair};
/// let x = Matrix::new(&[0.0, 2.0], 2, 1)?;
/// let mut grad = [0.0_f32; 2];
/// let mut ws = [0.0_f32; contrastive_loss_pairs_workspace_len(2, 1, 1)];
/// let params = ContrastiveParams::new(0.0, 1.0);
/// let pos = [Pair::new(0, 1)];
/// let loss = contrastive_loss_pairs_grad(x, Metric::Euclidean, params, &pos, &[], &mut grad, &mut ws)?;
/// assert_eq!((loss, grad), (2.0, [-1.0, 1.0]));
/// # Ok::<(), triplet_kernels::Error>(())
/// ```
#[cfg_attr(feature = "no-panic", no_panic::no_panic)]
pub fn contrastive_loss_pairs_grad(
    x: Matrix<'_>,
    metric: Metric,
    params: ContrastiveParams,
    positives: &[Pair],
    negatives: &[Pair],
    grad: &mut [f32],
    workspace: &mut [f32],
) -> Result<f32, Error> {
    pairs_impl(
        x,
        metric,
        params,
        positives,
        negatives,
        Some(grad),
        workspace,
    )
}
