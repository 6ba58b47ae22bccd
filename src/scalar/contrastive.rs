//! Scalar twins of [`crate::contrastive`].

use crate::contrastive::pairs::check_contrastive_pairs;
use crate::contrastive::{
    check_contrastive, ContrastiveForm, ContrastiveParams, ContrastiveReduction,
};
use crate::distance::Metric;
use crate::error::Error;
use crate::matrix::Matrix;
use crate::mining::Pair;
use crate::scalar::acc::{check_twin_workspace, Acc64};
use crate::scalar::distance::{distance64, pair_grad64};
use crate::scalar::reduce::weight64;

/// Workspace elements that the twins [`contrastive_loss`] and [`contrastive_loss_grad`]
/// need for `rows` embeddings of dimension `dim`: `rows * dim`, the low halves of the
/// gradient's `f64` accumulators (the high halves live in `grad`). The loss alone uses
/// none of it but checks the same length. Saturates instead of overflowing.
pub const fn contrastive_loss_workspace_len(rows: usize, dim: usize) -> usize {
    rows.saturating_mul(dim)
}

/// Deprecated name of [`contrastive_loss_workspace_len`].
#[deprecated(since = "0.2.0", note = "renamed to `contrastive_loss_workspace_len`")]
pub const fn contrastive_workspace_len(rows: usize, dim: usize) -> usize {
    contrastive_loss_workspace_len(rows, dim)
}

/// The shared argument checks with the twin's workspace requirement; returns `n`.
fn check64(
    x: &Matrix<'_>,
    labels: &[u32],
    params: &ContrastiveParams,
    grad: Option<usize>,
    workspace: usize,
) -> Result<usize, Error> {
    check_twin_workspace(
        contrastive_loss_workspace_len(x.rows(), x.dim()),
        workspace,
        |ws| check_contrastive(x, labels, params, grad, ws),
    )
}

fn relu64(v: f64) -> f64 {
    if v < 0.0 {
        0.0
    } else {
        v
    }
}

/// `(term, slope)` of one pair at distance `d` in `f64`.
fn term64(params: &ContrastiveParams, positive: bool, d: f64) -> (f64, f64) {
    // v is the hinge argument, sign its derivative with respect to d.
    let (v, sign) = if positive {
        (d - f64::from(params.pos_margin), 1.0)
    } else {
        (f64::from(params.neg_margin) - d, -1.0)
    };
    let h = relu64(v);
    let active = v > 0.0;
    match params.form {
        ContrastiveForm::Linear => (h, if active { sign } else { 0.0 }),
        ContrastiveForm::Squared => (h * h, if active { 2.0 * sign * v } else { 0.0 }),
    }
}

/// Sums and counts over all ordered pairs, in `f64`.
struct Parts64 {
    pos_sum: f64,
    neg_sum: f64,
    pos_count: usize,
    pos_active: usize,
    neg_count: usize,
    neg_active: usize,
}

fn forward64(
    x: &Matrix<'_>,
    labels: &[u32],
    metric: Metric,
    params: &ContrastiveParams,
) -> Parts64 {
    let mut p = Parts64 {
        pos_sum: 0.0,
        neg_sum: 0.0,
        pos_count: 0,
        pos_active: 0,
        neg_count: 0,
        neg_active: 0,
    };
    for (i, (a, &la)) in x.row_iter().zip(labels).enumerate() {
        for (j, (b, &lb)) in x.row_iter().zip(labels).enumerate() {
            if i == j {
                continue;
            }
            let positive = la == lb;
            let (t, _) = term64(params, positive, distance64(metric, a, b));
            if positive {
                p.pos_sum += t;
                p.pos_count += 1;
                p.pos_active += usize::from(t > 0.0);
            } else {
                p.neg_sum += t;
                p.neg_count += 1;
                p.neg_active += usize::from(t > 0.0);
            }
        }
    }
    p
}

fn weights64(reduction: ContrastiveReduction, p: &Parts64) -> (f64, f64) {
    use crate::reduce::Reduction;
    match reduction {
        ContrastiveReduction::MeanNonzeroPerPart => (
            weight64(Reduction::MeanNonzero, p.pos_count, p.pos_active),
            weight64(Reduction::MeanNonzero, p.neg_count, p.neg_active),
        ),
        ContrastiveReduction::MeanPerPart => (
            weight64(Reduction::Mean, p.pos_count, p.pos_active),
            weight64(Reduction::Mean, p.neg_count, p.neg_active),
        ),
        ContrastiveReduction::Mean => {
            let w = weight64(Reduction::Mean, p.pos_count + p.neg_count, 0);
            (w, w)
        }
        ContrastiveReduction::Sum => (1.0, 1.0),
    }
}

/// Scalar twin of [`crate::contrastive_loss`]: every ordered pair in `f64`.
///
/// `workspace` needs [`contrastive_loss_workspace_len`]`(rows, dim)` elements (the twin's, see
/// there), checked but not used.
///
/// # Errors
///
/// Those of [`crate::contrastive_loss`], in the same order;
/// [`Error::WorkspaceTooSmall`] reports the twin's requirement.
///
/// # Example
///
/// ```
/// use triplet_kernels::{scalar, ContrastiveParams, Matrix, Metric};
/// let x = Matrix::new(&[0.0, 1.0, 1.5], 3, 1)?;
/// let mut ws = [0.0_f32; scalar::contrastive_loss_workspace_len(3, 1)];
/// let params = ContrastiveParams::new(0.5, 1.0);
/// let loss = scalar::contrastive_loss(x, &[7, 7, 9], Metric::Euclidean, params, &mut ws)?;
/// assert_eq!(loss, 1.0);
/// # Ok::<(), triplet_kernels::Error>(())
/// ```
#[cfg_attr(feature = "no-panic", no_panic::no_panic)]
pub fn contrastive_loss(
    x: Matrix<'_>,
    labels: &[u32],
    metric: Metric,
    params: ContrastiveParams,
    workspace: &mut [f32],
) -> Result<f32, Error> {
    check64(&x, labels, &params, None, workspace.len())?;
    let p = forward64(&x, labels, metric, &params);
    let (wp, wn) = weights64(params.reduction, &p);
    Ok((wp * p.pos_sum + wn * p.neg_sum) as f32)
}

/// Scalar twin of [`crate::contrastive_loss_grad`]: every ordered pair in `f64`, every
/// gradient element summed in `f64` and rounded to `f32` once.
///
/// `workspace` needs [`contrastive_loss_workspace_len`]`(rows, dim)` elements, garbage before
/// and after.
///
/// # Errors
///
/// Those of [`crate::contrastive_loss_grad`], in the same order;
/// [`Error::WorkspaceTooSmall`] reports the twin's requirement.
///
/// # Example
///
/// ```
/// use triplet_kernels::{scalar, ContrastiveParams, Matrix, Metric};
/// let x = Matrix::new(&[0.0, 2.0], 2, 1)?;
/// let mut grad = [0.0_f32; 2];
/// let mut ws = [0.0_f32; scalar::contrastive_loss_workspace_len(2, 1)];
/// let params = ContrastiveParams::new(0.0, 1.0);
/// let loss =
///     scalar::contrastive_loss_grad(x, &[1, 1], Metric::Euclidean, params, &mut grad, &mut ws)?;
/// assert_eq!((loss, grad), (2.0, [-1.0, 1.0]));
/// # Ok::<(), triplet_kernels::Error>(())
/// ```
#[cfg_attr(feature = "no-panic", no_panic::no_panic)]
pub fn contrastive_loss_grad(
    x: Matrix<'_>,
    labels: &[u32],
    metric: Metric,
    params: ContrastiveParams,
    grad: &mut [f32],
    workspace: &mut [f32],
) -> Result<f32, Error> {
    check64(&x, labels, &params, Some(grad.len()), workspace.len())?;
    let (mut acc, _) = Acc64::new(grad, workspace)?;
    let p = forward64(&x, labels, metric, &params);
    let (wp, wn) = weights64(params.reduction, &p);
    for (i, (a, &la)) in x.row_iter().zip(labels).enumerate() {
        for (j, (b, &lb)) in x.row_iter().zip(labels).enumerate() {
            if i == j {
                continue;
            }
            let positive = la == lb;
            let d = distance64(metric, a, b);
            let (_, slope) = term64(&params, positive, d);
            let coef = slope * if positive { wp } else { wn };
            // The term of (i, j) depends on both rows.
            pair_grad64(metric, (i, a), (j, b), d, 0.0, coef, &mut acc);
        }
    }
    acc.finish();
    Ok((wp * p.pos_sum + wn * p.neg_sum) as f32)
}

/// Workspace elements that the twins [`contrastive_loss_pairs`] and
/// [`contrastive_loss_pairs_grad`] need: `rows * dim`, the low halves of the gradient's
/// `f64` accumulators (`pairs` is not used). Saturates instead of overflowing.
pub const fn contrastive_loss_pairs_workspace_len(rows: usize, dim: usize, pairs: usize) -> usize {
    let _ = pairs;
    rows.saturating_mul(dim)
}

fn pairs64(
    x: &Matrix<'_>,
    metric: Metric,
    params: &ContrastiveParams,
    positives: &[Pair],
    negatives: &[Pair],
    mut acc: Option<&mut Acc64<'_>>,
) -> f64 {
    let d =
        |p: &Pair| crate::scalar::mining::pair64(x, metric, p.anchor as usize, p.other as usize);
    let mut parts = Parts64 {
        pos_sum: 0.0,
        neg_sum: 0.0,
        pos_count: positives.len(),
        pos_active: 0,
        neg_count: negatives.len(),
        neg_active: 0,
    };
    for p in positives {
        let (t, _) = term64(params, true, d(p));
        parts.pos_sum += t;
        parts.pos_active += usize::from(t > 0.0);
    }
    for p in negatives {
        let (t, _) = term64(params, false, d(p));
        parts.neg_sum += t;
        parts.neg_active += usize::from(t > 0.0);
    }
    let (wp, wn) = weights64(params.reduction, &parts);
    if let Some(acc) = acc.as_mut() {
        for (positive, w, list) in [(true, wp, positives), (false, wn, negatives)] {
            for p in list {
                let (i, j) = (p.anchor as usize, p.other as usize);
                let dist = d(p);
                let (_, slope) = term64(params, positive, dist);
                if let (Some(a), Some(b)) = (x.row(i), x.row(j)) {
                    pair_grad64(metric, (i, a), (j, b), dist, 0.0, w * slope, acc);
                }
            }
        }
    }
    wp * parts.pos_sum + wn * parts.neg_sum
}

/// Scalar twin of [`crate::contrastive_loss_pairs`]: every pair in `f64`.
///
/// `workspace` needs [`contrastive_loss_pairs_workspace_len`]`(rows, dim, pairs)` elements
/// (checked, not used).
///
/// # Errors
///
/// Those of [`crate::contrastive_loss_pairs`], in the same order;
/// [`Error::WorkspaceTooSmall`] reports the twin's requirement.
///
/// # Example
///
/// ```
/// use triplet_kernels::{scalar, ContrastiveParams, Matrix, Metric, Pair};
/// let x = Matrix::new(&[0.0, 1.0, 1.5], 3, 1)?;
/// let (pos, neg) = ([Pair::new(0, 1)], [Pair::new(1, 2), Pair::new(0, 2)]);
/// let mut ws = [0.0_f32; scalar::contrastive_loss_pairs_workspace_len(3, 1, 3)];
/// let params = ContrastiveParams::new(0.5, 1.0);
/// let loss = scalar::contrastive_loss_pairs(x, Metric::Euclidean, params, &pos, &neg, &mut ws)?;
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
    let k = positives.len().saturating_add(negatives.len());
    check_twin_workspace(
        contrastive_loss_pairs_workspace_len(x.rows(), x.dim(), k),
        workspace.len(),
        |ws| check_contrastive_pairs(&x, positives, negatives, &params, None, ws),
    )?;
    Ok(pairs64(&x, metric, &params, positives, negatives, None) as f32)
}

/// Scalar twin of [`crate::contrastive_loss_pairs_grad`]: every pair and gradient
/// element in `f64`, rounded to `f32` once.
///
/// `workspace` needs [`contrastive_loss_pairs_workspace_len`]`(rows, dim, pairs)` elements,
/// garbage before and after.
///
/// # Errors
///
/// Those of [`crate::contrastive_loss_pairs_grad`], in the same order;
/// [`Error::WorkspaceTooSmall`] reports the twin's requirement.
///
/// # Example
///
/// ```
/// use triplet_kernels::{scalar, ContrastiveParams, Matrix, Metric, Pair};
/// let x = Matrix::new(&[0.0, 2.0], 2, 1)?;
/// let mut grad = [0.0_f32; 2];
/// let mut ws = [0.0_f32; scalar::contrastive_loss_pairs_workspace_len(2, 1, 1)];
/// let params = ContrastiveParams::new(0.0, 1.0);
/// let pos = [Pair::new(0, 1)];
/// let loss =
///     scalar::contrastive_loss_pairs_grad(x, Metric::Euclidean, params, &pos, &[], &mut grad, &mut ws)?;
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
    let k = positives.len().saturating_add(negatives.len());
    check_twin_workspace(
        contrastive_loss_pairs_workspace_len(x.rows(), x.dim(), k),
        workspace.len(),
        |ws| check_contrastive_pairs(&x, positives, negatives, &params, Some(grad.len()), ws),
    )?;
    let (mut acc, _) = Acc64::new(grad, workspace)?;
    let loss = pairs64(&x, metric, &params, positives, negatives, Some(&mut acc));
    acc.finish();
    Ok(loss as f32)
}
