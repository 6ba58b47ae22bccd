//! Scalar twins of [`crate::triplet`]: every distance in `f64`, every term and weight in
//! `f64`, two plain passes (loss, then gradient with the known reduction weight).

use crate::distance::Metric;
use crate::error::Error;
use crate::matrix::Matrix;
use crate::mining::{HardestPair, Mining, Triplet, NO_INDEX};
use crate::reduce::Hinge;
use crate::scalar::acc::{check_twin_workspace, Acc64};
use crate::scalar::distance::{distance64, normalize_backward64, pair_grad64};
use crate::scalar::l2_normalize;
use crate::scalar::mining::{for_each_triplet64, pair64};
use crate::scalar::reduce::{hinge64, slope64, weight64};
use crate::triplet::{
    check_batch_args, check_hardest_pairs_args, check_triplet_args,
    triplet_batch_loss_workspace_len, BatchLoss, BatchParams, TripletParams,
};
use crate::validate::{check_len, check_rows, check_workspace};

/// Workspace elements that the twins [`triplet_margin_loss`] and
/// [`triplet_margin_loss_grad`] need for `rows` embeddings of dimension `dim`:
/// `rows * dim`, the low halves of the gradient's `f64` accumulators (the high halves live
/// in `grad`). The loss alone uses none of it but checks the same length. Saturates
/// instead of overflowing.
pub const fn triplet_margin_loss_workspace_len(rows: usize, dim: usize) -> usize {
    rows.saturating_mul(dim)
}

/// Deprecated name of [`triplet_margin_loss_workspace_len`].
#[deprecated(
    since = "0.2.0",
    note = "renamed to `triplet_margin_loss_workspace_len`"
)]
pub const fn triplet_margin_workspace_len(rows: usize, dim: usize) -> usize {
    triplet_margin_loss_workspace_len(rows, dim)
}

/// Workspace elements that the twin [`triplet_batch_loss_grad`] needs for `rows`
/// embeddings of dimension `dim` under `params`: `rows * dim` for the low halves of the
/// gradient's `f64` accumulators (the high halves live in `grad`), plus `rows * dim` for
/// the normalised rows when `params.normalize`. The twin [`triplet_batch_loss`] takes the
/// fast kernel's [`crate::triplet_batch_loss_workspace_len`]. Saturates instead of
/// overflowing.
pub const fn triplet_batch_loss_grad_workspace_len(
    rows: usize,
    dim: usize,
    params: BatchParams,
) -> usize {
    let len = rows.saturating_mul(dim);
    if params.normalize {
        len.saturating_mul(2)
    } else {
        len
    }
}

/// `d(a, b)` in `f64`, with PyTorch's shift `eps` of the difference vector (Euclidean
/// metrics only; validated callers pass `eps = 0` for cosine).
fn distance_eps64(metric: Metric, a: &[f32], b: &[f32], eps: f64) -> f64 {
    if eps == 0.0 {
        return distance64(metric, a, b);
    }
    let sq: f64 = a
        .iter()
        .zip(b)
        .map(|(&u, &v)| {
            let t = f64::from(u) - f64::from(v) + eps;
            t * t
        })
        .sum();
    match metric {
        Metric::SquaredEuclidean => sq,
        Metric::Euclidean => libm::sqrt(sq),
        Metric::Cosine => distance64(metric, a, b),
    }
}

/// [`pair_grad64`] on rows `i` and `j` of `x`.
#[allow(clippy::too_many_arguments)]
fn add_pair_grad64(
    metric: Metric,
    x: &Matrix<'_>,
    i: usize,
    j: usize,
    dist: f64,
    eps: f64,
    coef: f64,
    acc: &mut Acc64<'_>,
) {
    if let (Some(a), Some(b)) = (x.row(i), x.row(j)) {
        pair_grad64(metric, (i, a), (j, b), dist, eps, coef, acc);
    }
}

/// The `f64` twin of [`Hinge::is_active`]: relu terms with `v > 0`, every soft-margin term
/// with `v > -inf`.
fn is_active64(hinge: Hinge, v: f64) -> bool {
    match hinge {
        Hinge::Relu => v > 0.0,
        Hinge::SoftPlus => v > f64::NEG_INFINITY,
    }
}

/// One explicit triplet in `f64`: `(v, d(a,p), (d', i, j))` with `(i, j)` the rows of the
/// negative distance used.
fn triplet_value64(
    x: &Matrix<'_>,
    t: &Triplet,
    params: &TripletParams,
) -> (f64, f64, (f64, usize, usize)) {
    let (ia, ip, iq) = (t.anchor as usize, t.positive as usize, t.negative as usize);
    let eps = f64::from(params.eps);
    let d = |i: usize, j: usize| match (x.row(i), x.row(j)) {
        (Some(a), Some(b)) => distance_eps64(params.metric, a, b, eps),
        _ => 0.0,
    };
    let dap = d(ia, ip);
    let dan = d(ia, iq);
    let mut neg = (dan, ia, iq);
    if params.swap {
        let dpn = d(ip, iq);
        if dpn < dan {
            neg = (dpn, ip, iq);
        }
    }
    (dap - neg.0 + f64::from(params.margin), dap, neg)
}

fn triplet_margin64(
    x: Matrix<'_>,
    triplets: &[Triplet],
    params: &TripletParams,
    terms: &mut [f32],
    grad: Option<&mut [f32]>,
    workspace: &mut [f32],
) -> Result<f32, Error> {
    check_twin_workspace(
        triplet_margin_loss_workspace_len(x.rows(), x.dim()),
        workspace.len(),
        |ws| check_triplet_args(&x, triplets, params, terms.len(), ws),
    )?;
    if let Some(g) = grad.as_deref() {
        check_len("grad", x.len(), g.len())?;
    }
    check_rows(&x, false)?;
    let acc = match grad {
        Some(g) => Some(Acc64::new(g, workspace)?.0),
        None => None,
    };
    let mut sum = 0.0_f64;
    let mut active = 0_usize;
    for (t, term) in triplets.iter().zip(terms.iter_mut()) {
        let v = triplet_value64(&x, t, params).0;
        let h = hinge64(params.hinge, v);
        *term = h as f32;
        sum += h;
        active += usize::from(is_active64(params.hinge, v));
    }
    let w = weight64(params.reduction, triplets.len(), active);
    if let Some(mut acc) = acc {
        if w != 0.0 {
            let eps = f64::from(params.eps);
            for t in triplets {
                let (v, dap, (dneg, i, j)) = triplet_value64(&x, t, params);
                let c = w * slope64(params.hinge, v);
                if c != 0.0 {
                    let (ia, ip) = (t.anchor as usize, t.positive as usize);
                    add_pair_grad64(params.metric, &x, ia, ip, dap, eps, c, &mut acc);
                    add_pair_grad64(params.metric, &x, i, j, dneg, eps, -c, &mut acc);
                }
            }
        }
        acc.finish();
    }
    Ok((sum * w) as f32)
}

/// Scalar twin of [`crate::triplet_margin_loss`]: every distance, term and sum in `f64`.
///
/// `workspace` needs [`triplet_margin_loss_workspace_len`]`(rows, dim)` elements (the twin's,
/// see there), checked but not used.
///
/// # Errors
///
/// Those of [`crate::triplet_margin_loss`], in the same order;
/// [`Error::WorkspaceTooSmall`] reports the twin's requirement.
///
/// # Example
///
/// ```
/// use triplet_kernels::{scalar, Matrix, Triplet, TripletParams};
/// let x = Matrix::new(&[0.0, 1.0, 3.0], 3, 1)?;
/// let mut terms = [0.0_f32; 1];
/// let mut ws = [0.0_f32; scalar::triplet_margin_loss_workspace_len(3, 1)];
/// let loss = scalar::triplet_margin_loss(
///     x, &[Triplet::new(0, 1, 2)], TripletParams::new().with_margin(2.5), &mut terms, &mut ws)?;
/// assert_eq!((loss, terms), (0.5, [0.5]));
/// # Ok::<(), triplet_kernels::Error>(())
/// ```
#[cfg_attr(feature = "no-panic", no_panic::no_panic)]
pub fn triplet_margin_loss(
    x: Matrix<'_>,
    triplets: &[Triplet],
    params: TripletParams,
    terms: &mut [f32],
    workspace: &mut [f32],
) -> Result<f32, Error> {
    triplet_margin64(x, triplets, &params, terms, None, workspace)
}

/// Scalar twin of [`crate::triplet_margin_loss_grad`]: every distance, term and sum in
/// `f64`; every gradient element summed in `f64` and rounded to `f32` once.
///
/// `workspace` needs [`triplet_margin_loss_workspace_len`]`(rows, dim)` elements, garbage
/// before and after.
///
/// # Errors
///
/// Those of [`crate::triplet_margin_loss_grad`], in the same order;
/// [`Error::WorkspaceTooSmall`] reports the twin's requirement.
///
/// # Example
///
/// ```
/// use triplet_kernels::{scalar, Matrix, Triplet, TripletParams};
/// let x = Matrix::new(&[0.0, 1.0, 3.0], 3, 1)?;
/// let (mut terms, mut grad) = ([0.0_f32; 1], [0.0_f32; 3]);
/// let mut ws = [0.0_f32; scalar::triplet_margin_loss_workspace_len(3, 1)];
/// let params = TripletParams::new().with_margin(2.5);
/// scalar::triplet_margin_loss_grad(x, &[Triplet::new(0, 1, 2)], params, &mut terms, &mut grad, &mut ws)?;
/// assert_eq!(grad, [0.0, 1.0, -1.0]);
/// # Ok::<(), triplet_kernels::Error>(())
/// ```
#[cfg_attr(feature = "no-panic", no_panic::no_panic)]
pub fn triplet_margin_loss_grad(
    x: Matrix<'_>,
    triplets: &[Triplet],
    params: TripletParams,
    terms: &mut [f32],
    grad: &mut [f32],
    workspace: &mut [f32],
) -> Result<f32, Error> {
    triplet_margin64(x, triplets, &params, terms, Some(grad), workspace)
}

/// The textbook batch loss; `grad` is `None` for the forward pass. Inlined into both
/// entry points, so that the link-time no-panic proof sees its body there.
#[inline(always)]
fn triplet_batch64(
    x: Matrix<'_>,
    labels: &[u32],
    params: &BatchParams,
    grad: Option<&mut [f32]>,
    workspace: &mut [f32],
) -> Result<BatchLoss, Error> {
    let n = check_batch_args(&x, labels, params)?;
    let dim = x.dim();
    if let Some(g) = grad.as_deref() {
        check_len("grad", x.len(), g.len())?;
        check_workspace(
            triplet_batch_loss_grad_workspace_len(n, dim, *params),
            workspace.len(),
        )?;
    } else {
        check_workspace(
            triplet_batch_loss_workspace_len(n, dim, *params),
            workspace.len(),
        )?;
    }
    check_rows(&x, params.normalize)?;
    // The normalised rows (rounded to f32) live at the start of the workspace.
    let y_len = if params.normalize { x.len() } else { 0 };
    let actual = workspace.len();
    let (y, rest) = workspace
        .split_at_mut_checked(y_len)
        .ok_or(Error::WorkspaceTooSmall {
            required: y_len,
            actual,
        })?;
    let xs = if params.normalize {
        l2_normalize(x, y)?;
        Matrix::new(y, n, dim)?
    } else {
        x
    };
    let (metric, mining) = (params.metric, params.mining);
    let each = Mined {
        xs: &xs,
        labels,
        metric,
        mining,
    };
    let mut acc = match grad {
        Some(g) => Some(Acc64::new(g, rest)?.0),
        None => None,
    };
    let loss = terms64(&xs, params, &each, acc.as_mut());
    if let Some(mut acc) = acc {
        if params.normalize {
            // From the f64 gradient with respect to the normalised rows to that of x.
            for (i, row) in x.row_iter().enumerate() {
                normalize_backward64(row, &mut acc, i);
            }
        }
        acc.finish();
    }
    Ok(loss)
}

/// Enumerates triplets for [`terms64`] (a trait rather than a `dyn` callback, so that
/// every call is static and the no-panic proof sees through it).
trait Triplets {
    fn each<F: FnMut(usize, usize, usize)>(&self, f: F);
}

/// The triplets `mining` selects in a labelled batch.
struct Mined<'a, 'x> {
    xs: &'a Matrix<'x>,
    labels: &'a [u32],
    metric: Metric,
    mining: Mining,
}

impl Triplets for Mined<'_, '_> {
    fn each<F: FnMut(usize, usize, usize)>(&self, f: F) {
        for_each_triplet64(self.xs, self.labels, self.metric, self.mining, f);
    }
}

/// One triplet per anchor whose given choice names both rows.
struct Given<'a>(&'a [HardestPair]);

impl Triplets for Given<'_> {
    fn each<F: FnMut(usize, usize, usize)>(&self, mut f: F) {
        for (a, c) in self.0.iter().enumerate() {
            if c.positive != NO_INDEX && c.negative != NO_INDEX {
                f(a, c.positive as usize, c.negative as usize);
            }
        }
    }
}

/// The loss of the triplets `each` enumerates over `xs` (every distance, term and sum in
/// `f64`) and, into `acc`, its gradient: two passes, the second with the known reduction
/// weight.
fn terms64<E: Triplets>(
    xs: &Matrix<'_>,
    params: &BatchParams,
    each: &E,
    acc: Option<&mut Acc64<'_>>,
) -> BatchLoss {
    let (metric, hinge) = (params.metric, params.hinge);
    let margin = f64::from(params.margin);
    let value = |a: usize, p: usize, q: usize| {
        let dap = pair64(xs, metric, a, p);
        let dan = pair64(xs, metric, a, q);
        (dap - dan + margin, dap, dan)
    };
    let mut sum = 0.0_f64;
    let mut count = 0_usize;
    let mut active = 0_usize;
    each.each(|a, p, q| {
        let v = value(a, p, q).0;
        sum += hinge64(hinge, v);
        count = count.saturating_add(1);
        active = active.saturating_add(usize::from(is_active64(hinge, v)));
    });
    let w = weight64(params.reduction, count, active);
    if let Some(acc) = acc {
        if w != 0.0 {
            each.each(|a, p, q| {
                let (v, dap, dan) = value(a, p, q);
                let c = w * slope64(hinge, v);
                if c != 0.0 {
                    add_pair_grad64(metric, xs, a, p, dap, 0.0, c, acc);
                    add_pair_grad64(metric, xs, a, q, dan, 0.0, -c, acc);
                }
            });
        }
    }
    BatchLoss {
        loss: (sum * w) as f32,
        num_triplets: count,
        num_active: active,
        sum,
    }
}

/// Workspace elements that the twin [`triplet_hardest_pairs_loss_grad`] needs for `rows`
/// embeddings of dimension `dim`: `rows * dim`, the low halves of the gradient's `f64`
/// accumulators. The twin [`triplet_hardest_pairs_loss`] takes the fast kernel's
/// [`crate::triplet_hardest_pairs_loss_workspace_len`]. Saturates instead of overflowing.
pub const fn triplet_hardest_pairs_loss_grad_workspace_len(rows: usize, dim: usize) -> usize {
    rows.saturating_mul(dim)
}

/// The hardest-pairs twins' body; `grad` is `None` for the loss alone.
fn hardest_pairs64(
    x: Matrix<'_>,
    pairs: &[HardestPair],
    params: &BatchParams,
    grad: Option<&mut [f32]>,
    workspace: &mut [f32],
) -> Result<BatchLoss, Error> {
    let grad_len = grad.as_deref().map(<[f32]>::len);
    match grad_len {
        Some(_) => check_twin_workspace(
            triplet_hardest_pairs_loss_grad_workspace_len(x.rows(), x.dim()),
            workspace.len(),
            |ws| check_hardest_pairs_args(&x, pairs, params, grad_len, ws),
        )?,
        None => check_hardest_pairs_args(&x, pairs, params, None, workspace.len())?,
    };
    let each = Given(pairs);
    let mut acc = match grad {
        Some(g) => Some(Acc64::new(g, workspace)?.0),
        None => None,
    };
    let loss = terms64(&x, params, &each, acc.as_mut());
    if let Some(acc) = acc {
        acc.finish();
    }
    Ok(loss)
}

/// Scalar twin of [`crate::triplet_hardest_pairs_loss`]: the given triplets one by one,
/// every distance, term and sum in `f64`.
///
/// # Errors
///
/// Exactly those of [`crate::triplet_hardest_pairs_loss`].
///
/// # Example
///
/// ```
/// use triplet_kernels::{scalar, triplet_hardest_pairs_loss_workspace_len};
/// use triplet_kernels::{BatchParams, HardestPair, Matrix, Metric};
/// let x = Matrix::new(&[0.0, 1.0, 3.0], 3, 1)?;
/// let pairs = [HardestPair { positive: 1, negative: 2, ..HardestPair::NONE }; 3];
/// let p = BatchParams::new().with_metric(Metric::SquaredEuclidean).with_margin(1.0);
/// let mut ws = [0.0_f32; triplet_hardest_pairs_loss_workspace_len(3, 1)];
/// let out = scalar::triplet_hardest_pairs_loss(x, &pairs, p, &mut ws)?;
/// // Squared Euclidean, margin 1: 1 - 9 + 1 < 0; 0 - 4 + 1 < 0; 4 - 0 + 1 = 5.
/// assert_eq!((out.num_triplets, out.num_active, out.sum), (3, 1, 5.0));
/// # Ok::<(), triplet_kernels::Error>(())
/// ```
#[cfg_attr(feature = "no-panic", no_panic::no_panic)]
pub fn triplet_hardest_pairs_loss(
    x: Matrix<'_>,
    pairs: &[HardestPair],
    params: BatchParams,
    workspace: &mut [f32],
) -> Result<BatchLoss, Error> {
    hardest_pairs64(x, pairs, &params, None, workspace)
}

/// Scalar twin of [`crate::triplet_hardest_pairs_loss_grad`]: every gradient element
/// summed in `f64` and rounded to `f32` once. `workspace` needs
/// [`triplet_hardest_pairs_loss_grad_workspace_len`]`(rows, dim)` elements.
///
/// # Errors
///
/// Those of [`crate::triplet_hardest_pairs_loss_grad`], in the same order;
/// [`Error::WorkspaceTooSmall`] reports the twin's requirement.
///
/// # Example
///
/// ```
/// use triplet_kernels::{scalar, BatchParams, HardestPair, Matrix, Metric, Reduction};
/// let x = Matrix::new(&[0.0, 1.0, 3.0], 3, 1)?;
/// let pairs = [HardestPair { positive: 1, negative: 2, ..HardestPair::NONE }; 3];
/// let p = BatchParams::new()
///     .with_metric(Metric::SquaredEuclidean)
///     .with_margin(1.0)
///     .with_reduction(Reduction::Sum);
/// let mut grad = [0.0_f32; 3];
/// let mut ws = [0.0_f32; scalar::triplet_hardest_pairs_loss_grad_workspace_len(3, 1)];
/// scalar::triplet_hardest_pairs_loss_grad(x, &pairs, p, &mut grad, &mut ws)?;
/// // Only anchor 2 is active, with the pairs (2, 1) and (2, 2): 2 (x2 - x1) = 4 on x2, -4 on x1.
/// assert_eq!(grad, [0.0, -4.0, 4.0]);
/// # Ok::<(), triplet_kernels::Error>(())
/// ```
#[cfg_attr(feature = "no-panic", no_panic::no_panic)]
pub fn triplet_hardest_pairs_loss_grad(
    x: Matrix<'_>,
    pairs: &[HardestPair],
    params: BatchParams,
    grad: &mut [f32],
    workspace: &mut [f32],
) -> Result<BatchLoss, Error> {
    hardest_pairs64(x, pairs, &params, Some(grad), workspace)
}

/// Scalar twin of [`crate::triplet_batch_loss`]: the selected triplets enumerated one by
/// one, every distance, term and sum in `f64`. With `params.normalize`, the rows are
/// normalised in `f64` and rounded to `f32` (as the fast kernel does), in the workspace of
/// [`crate::triplet_batch_loss_workspace_len`].
///
/// # Errors
///
/// Exactly those of [`crate::triplet_batch_loss`].
///
/// # Example
///
/// ```
/// use triplet_kernels::{scalar, triplet_batch_loss_workspace_len, BatchParams, Matrix};
/// let x = Matrix::new(&[0.0, 1.0, 1.5, 4.0], 4, 1)?;
/// const P: BatchParams = BatchParams::new().with_margin(1.0);
/// let mut ws = [0.0_f32; triplet_batch_loss_workspace_len(4, 1, P)];
/// let out = scalar::triplet_batch_loss(x, &[0, 0, 1, 1], P, &mut ws)?;
/// assert_eq!(out.loss, 1.375);
/// # Ok::<(), triplet_kernels::Error>(())
/// ```
#[cfg_attr(feature = "no-panic", no_panic::no_panic)]
pub fn triplet_batch_loss(
    x: Matrix<'_>,
    labels: &[u32],
    params: BatchParams,
    workspace: &mut [f32],
) -> Result<BatchLoss, Error> {
    triplet_batch64(x, labels, &params, None, workspace)
}

/// Scalar twin of [`crate::triplet_batch_loss_grad`]: the selected triplets enumerated
/// one by one, every distance, term and sum in `f64`; every gradient element summed in
/// `f64` and rounded to `f32` once.
///
/// With `params.normalize`, the rows are normalised in `f64` and rounded to `f32`, as the
/// fast kernel does: the loss and its gradient are those of these rounded rows. The
/// gradient with respect to them is chained through the normalisation in `f64`, from the
/// unrounded sums.
///
/// `workspace` needs [`triplet_batch_loss_grad_workspace_len`]`(rows, dim, params)`
/// elements, garbage before and after.
///
/// # Errors
///
/// Those of [`crate::triplet_batch_loss_grad`], in the same order;
/// [`Error::WorkspaceTooSmall`] reports the twin's requirement.
///
/// # Example
///
/// ```
/// use triplet_kernels::{scalar, BatchParams, Matrix, Reduction};
/// let x = Matrix::new(&[0.0, 1.0, 1.5, 4.0], 4, 1)?;
/// const P: BatchParams = BatchParams::new().with_margin(1.0).with_reduction(Reduction::Sum);
/// let mut grad = [0.0_f32; 4];
/// let mut ws = [0.0_f32; scalar::triplet_batch_loss_grad_workspace_len(4, 1, P)];
/// scalar::triplet_batch_loss_grad(x, &[0, 0, 1, 1], P, &mut grad, &mut ws)?;
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
    triplet_batch64(x, labels, &params, Some(grad), workspace)
}
