//! Scalar twins of the reference forms of [`crate::triplet`]: the selected triplets
//! enumerated one by one, every distance, term, sum and gradient contribution in `f64`.

use crate::distance::Metric;
use crate::error::Error;
use crate::matrix::Matrix;
use crate::mining::{Mining, Triplet, NO_INDEX};
use crate::reduce::Hinge;
use crate::scalar::acc::Acc64;
use crate::scalar::distance::{add_distance_grad64, distance64};
use crate::scalar::reduce::{hinge64, slope64, weight64};
use crate::triplet::{
    check_mine_ref_args, check_ref_args, check_y_rows, ref_count,
    triplet_batch_ref_loss_workspace_len, BatchLoss, BatchParams, GradMode, RefGrad, RefSet,
};
use crate::validate::{check_len, check_rows, check_workspace};

/// Workspace elements that the twin [`triplet_batch_ref_loss_grad`] needs for `rows`
/// anchors and `ref_rows` candidates of dimension `dim`: `2 (rows + ref_rows) dim`, the
/// low halves of the gradients' `f64` accumulators and a copy of the buffers' contents
/// for [`GradMode::Accumulate`]. The twin [`triplet_batch_ref_loss`] takes the fast
/// kernel's [`crate::triplet_batch_ref_loss_workspace_len`]. Saturates instead of
/// overflowing.
pub const fn triplet_batch_ref_loss_grad_workspace_len(
    rows: usize,
    ref_rows: usize,
    dim: usize,
    _params: BatchParams,
) -> usize {
    rows.saturating_add(ref_rows)
        .saturating_mul(dim)
        .saturating_mul(2)
}

/// `d(x_a, y_j)` in `f64` (0 out of range, which validated callers never pass).
fn dist64(x: &Matrix<'_>, y: &Matrix<'_>, metric: Metric, a: usize, j: usize) -> f64 {
    match (x.row(a), y.row(j)) {
        (Some(u), Some(v)) => distance64(metric, u, v),
        _ => 0.0,
    }
}

/// The own row of anchor `a` (`usize::MAX` for none).
fn own64(refs: &RefSet<'_>, a: usize) -> usize {
    match refs.self_index.and_then(|o| o.get(a)) {
        Some(&j) if j != NO_INDEX => j as usize,
        _ => usize::MAX,
    }
}

/// Calls `f(a, p, n)` for every triplet `mining` selects, in ascending `(a, p, n)` order,
/// by the textbook loops (ties to the smallest index).
fn for_each_ref_triplet64<F: FnMut(usize, usize, usize)>(
    x: &Matrix<'_>,
    labels: &[u32],
    refs: &RefSet<'_>,
    metric: Metric,
    mining: Mining,
    mut f: F,
) {
    let y = &refs.y;
    for (a, &la) in labels.iter().enumerate() {
        let own = own64(refs, a);
        let is_pos = |j: usize, l: u32| j != own && l == la;
        let is_neg = |j: usize, l: u32| j != own && l != la;
        match mining {
            Mining::All => {
                for (p, &lp) in refs.labels.iter().enumerate() {
                    if !is_pos(p, lp) {
                        continue;
                    }
                    for (q, &lq) in refs.labels.iter().enumerate() {
                        if is_neg(q, lq) {
                            f(a, p, q);
                        }
                    }
                }
            }
            Mining::BatchHard => {
                let mut far: Option<(usize, f64)> = None;
                let mut near: Option<(usize, f64)> = None;
                for (j, &l) in refs.labels.iter().enumerate() {
                    if is_pos(j, l) {
                        let d = dist64(x, y, metric, a, j);
                        match far {
                            Some((_, bd)) if d <= bd => {}
                            _ => far = Some((j, d)),
                        }
                    } else if is_neg(j, l) {
                        let d = dist64(x, y, metric, a, j);
                        match near {
                            Some((_, bd)) if d >= bd => {}
                            _ => near = Some((j, d)),
                        }
                    }
                }
                if let (Some((p, _)), Some((q, _))) = (far, near) {
                    f(a, p, q);
                }
            }
            Mining::SemiHard => {
                for (p, &lp) in refs.labels.iter().enumerate() {
                    if !is_pos(p, lp) {
                        continue;
                    }
                    let dap = dist64(x, y, metric, a, p);
                    let mut above: Option<(usize, f64)> = None;
                    let mut far: Option<(usize, f64)> = None;
                    for (q, &lq) in refs.labels.iter().enumerate() {
                        if !is_neg(q, lq) {
                            continue;
                        }
                        let d = dist64(x, y, metric, a, q);
                        if d > dap {
                            match above {
                                Some((_, bd)) if d >= bd => {}
                                _ => above = Some((q, d)),
                            }
                        }
                        match far {
                            Some((_, bd)) if d <= bd => {}
                            _ => far = Some((q, d)),
                        }
                    }
                    if let Some((q, _)) = above.or(far) {
                        f(a, p, q);
                    }
                }
            }
        }
    }
}

/// The `f64` twin of [`Hinge::is_active`].
fn is_active64(hinge: Hinge, v: f64) -> bool {
    match hinge {
        Hinge::Relu => v > 0.0,
        Hinge::SoftPlus => v > f64::NEG_INFINITY,
    }
}

/// The textbook reference-form loss; `grad` is `None` for the forward pass.
#[inline(always)]
fn ref64(
    x: Matrix<'_>,
    labels: &[u32],
    refs: RefSet<'_>,
    params: &BatchParams,
    grad: Option<RefGrad<'_>>,
    workspace: &mut [f32],
) -> Result<BatchLoss, Error> {
    let (n, m) = check_ref_args(&x, labels, &refs, params)?;
    let dim = x.dim();
    if let Some(g) = grad.as_ref() {
        check_len("grad", x.len(), g.x.len())?;
        if let Some(gy) = g.y.as_deref() {
            check_len("grad_y", refs.y.len(), gy.len())?;
        }
        check_workspace(
            triplet_batch_ref_loss_grad_workspace_len(n, m, dim, *params),
            workspace.len(),
        )?;
    } else {
        check_workspace(
            triplet_batch_ref_loss_workspace_len(n, m, dim, *params),
            workspace.len(),
        )?;
    }
    check_rows(&x, false)?;
    check_y_rows(&refs.y)?;
    let (metric, hinge) = (params.metric, params.hinge);
    let margin = f64::from(params.margin);
    let y = refs.y;
    let value = |a: usize, p: usize, q: usize| {
        let dap = dist64(&x, &y, metric, a, p);
        let dan = dist64(&x, &y, metric, a, q);
        (dap - dan + margin, dap, dan)
    };
    let (mut sum, mut count, mut active) = (0.0_f64, 0_usize, 0_usize);
    for_each_ref_triplet64(&x, labels, &refs, metric, params.mining, |a, p, q| {
        let v = value(a, p, q).0;
        sum += hinge64(hinge, v);
        count = count.saturating_add(1);
        active = active.saturating_add(usize::from(is_active64(hinge, v)));
    });
    let w = weight64(params.reduction, count, active);
    if let Some(RefGrad { x: gx, y: gy, mode }) = grad {
        let accumulate = mode == GradMode::Accumulate;
        // Workspace: low halves of x's and y's accumulators, then copies of the buffers'
        // contents (kept for `Accumulate`).
        let (xl, rest) =
            workspace
                .split_at_mut_checked(x.len())
                .ok_or(Error::WorkspaceTooSmall {
                    required: x.len(),
                    actual: 0,
                })?;
        let (yl, rest) =
            rest.split_at_mut_checked(refs.y.len())
                .ok_or(Error::WorkspaceTooSmall {
                    required: refs.y.len(),
                    actual: 0,
                })?;
        let (xs, ys) = rest
            .split_at_mut_checked(x.len())
            .ok_or(Error::WorkspaceTooSmall {
                required: x.len(),
                actual: 0,
            })?;
        for (s, &g) in xs.iter_mut().zip(gx.iter()) {
            *s = if accumulate { g } else { 0.0 };
        }
        if let Some(gy) = gy.as_deref() {
            for (s, &g) in ys.iter_mut().zip(gy.iter()) {
                *s = if accumulate { g } else { 0.0 };
            }
        }
        let mut ax = Acc64::new(gx, xl)?.0;
        let mut ay = match gy {
            Some(gy) => Some(Acc64::new(gy, yl)?.0),
            None => None,
        };
        if w != 0.0 {
            for_each_ref_triplet64(&x, labels, &refs, metric, params.mining, |a, p, q| {
                let (v, dap, dan) = value(a, p, q);
                let c = w * slope64(hinge, v);
                if c == 0.0 {
                    return;
                }
                let (Some(xa), Some(yp), Some(yq)) = (x.row(a), y.row(p), y.row(q)) else {
                    return;
                };
                add_distance_grad64(metric, xa, yp, dap, c, &mut ax, a);
                add_distance_grad64(metric, xa, yq, dan, -c, &mut ax, a);
                if let Some(ay) = ay.as_mut() {
                    add_distance_grad64(metric, yp, xa, dap, c, ay, p);
                    add_distance_grad64(metric, yq, xa, dan, -c, ay, q);
                }
            });
        }
        for (k, &s) in xs.iter().enumerate() {
            ax.set(k, ax.get(k) + f64::from(s));
        }
        ax.finish();
        if let Some(mut ay) = ay {
            for (k, &s) in ys.iter().enumerate().take(refs.y.len()) {
                ay.set(k, ay.get(k) + f64::from(s));
            }
            ay.finish();
        }
    }
    Ok(BatchLoss {
        loss: (sum * w) as f32,
        num_triplets: count,
        num_active: active,
        sum,
    })
}

/// Scalar twin of [`crate::triplet_batch_ref_loss`]: the selected triplets enumerated one
/// by one, every distance, term and sum in `f64`.
///
/// # Errors
///
/// Exactly those of [`crate::triplet_batch_ref_loss`].
///
/// # Example
///
/// ```
/// use triplet_kernels::{scalar, triplet_batch_ref_loss_workspace_len, BatchParams, Matrix, RefSet};
/// let x = Matrix::new(&[0.0, 4.0], 2, 1)?;
/// let y = Matrix::new(&[1.0, 3.0, 1.5, 6.0], 4, 1)?;
/// const P: BatchParams = BatchParams::new().with_margin(1.0);
/// let mut ws = [0.0_f32; triplet_batch_ref_loss_workspace_len(2, 4, 1, P)];
/// let out = scalar::triplet_batch_ref_loss(x, &[0, 1], RefSet::new(y, &[0, 0, 1, 1]), P, &mut ws)?;
/// assert_eq!(out.loss, 2.5);
/// # Ok::<(), triplet_kernels::Error>(())
/// ```
#[cfg_attr(feature = "no-panic", no_panic::no_panic)]
pub fn triplet_batch_ref_loss(
    x: Matrix<'_>,
    labels: &[u32],
    refs: RefSet<'_>,
    params: BatchParams,
    workspace: &mut [f32],
) -> Result<BatchLoss, Error> {
    ref64(x, labels, refs, &params, None, workspace)
}

/// Scalar twin of [`crate::triplet_batch_ref_loss_grad`]: every distance, term and sum
/// in `f64`; every gradient element summed in `f64` (from the buffer's contents for
/// [`GradMode::Accumulate`], every contribution already weighted) and rounded to `f32`
/// once. `workspace` needs [`triplet_batch_ref_loss_grad_workspace_len`]`(n, m, dim,
/// params)` elements, garbage before and after.
///
/// # Errors
///
/// Those of [`crate::triplet_batch_ref_loss_grad`], in the same order;
/// [`Error::WorkspaceTooSmall`] reports the twin's requirement.
///
/// # Example
///
/// ```
/// use triplet_kernels::{scalar, BatchParams, Matrix, Metric, RefGrad, RefSet, Reduction};
/// let x = Matrix::new(&[0.0, 4.0], 2, 1)?;
/// let y = Matrix::new(&[1.0, 3.0, 1.5, 6.0], 4, 1)?;
/// const P: BatchParams = BatchParams::new().with_metric(Metric::Euclidean).with_margin(1.0).with_reduction(Reduction::Sum);
/// let mut gx = [0.0_f32; 2];
/// let mut ws = [0.0_f32; scalar::triplet_batch_ref_loss_grad_workspace_len(2, 4, 1, P)];
/// let refs = RefSet::new(y, &[0, 0, 1, 1]);
/// scalar::triplet_batch_ref_loss_grad(x, &[0, 1], refs, P, RefGrad::new(&mut gx), &mut ws)?;
/// assert_eq!(gx, [0.0, 0.0]);
/// # Ok::<(), triplet_kernels::Error>(())
/// ```
#[cfg_attr(feature = "no-panic", no_panic::no_panic)]
pub fn triplet_batch_ref_loss_grad(
    x: Matrix<'_>,
    labels: &[u32],
    refs: RefSet<'_>,
    params: BatchParams,
    grad: RefGrad<'_>,
    workspace: &mut [f32],
) -> Result<BatchLoss, Error> {
    ref64(x, labels, refs, &params, Some(grad), workspace)
}

/// Scalar twin of [`crate::mine_triplets_ref`]: the textbook loops, every distance in
/// `f64`. `workspace` needs the fast kernel's
/// [`crate::mine_triplets_ref_workspace_len`], checked but not used.
///
/// # Errors
///
/// Exactly those of [`crate::mine_triplets_ref`].
///
/// # Example
///
/// ```
/// use triplet_kernels::{mine_triplets_ref_workspace_len, scalar, Matrix, Metric, Mining, RefSet, Triplet};
/// let x = Matrix::new(&[0.0, 4.0], 2, 1)?;
/// let y = Matrix::new(&[1.0, 3.0, 1.5, 6.0], 4, 1)?;
/// let mut out = [Triplet::default(); 2];
/// let mut ws = [0.0_f32; mine_triplets_ref_workspace_len(2, 4, 1)];
/// let refs = RefSet::new(y, &[0, 0, 1, 1]);
/// let k = scalar::mine_triplets_ref(x, &[0, 1], refs, Metric::Euclidean, Mining::BatchHard, &mut out, &mut ws)?;
/// assert_eq!(&out[..k], [Triplet::new(0, 1, 2), Triplet::new(1, 2, 1)]);
/// # Ok::<(), triplet_kernels::Error>(())
/// ```
#[cfg_attr(feature = "no-panic", no_panic::no_panic)]
pub fn mine_triplets_ref(
    x: Matrix<'_>,
    labels: &[u32],
    refs: RefSet<'_>,
    metric: Metric,
    mining: Mining,
    out: &mut [Triplet],
    workspace: &mut [f32],
) -> Result<usize, Error> {
    check_mine_ref_args(&x, labels, &refs, mining, out.len(), workspace.len())?;
    let mut k = 0_usize;
    for_each_ref_triplet64(&x, labels, &refs, metric, mining, |a, p, q| {
        if let Some(t) = out.get_mut(k) {
            *t = Triplet::new(a as u32, p as u32, q as u32);
        }
        k += 1;
    });
    Ok(k)
}

/// Scalar twin of [`crate::mine_triplets_ref_count`]: the same exact count.
///
/// # Errors
///
/// Exactly those of [`crate::mine_triplets_ref_count`].
///
/// # Example
///
/// ```
/// use triplet_kernels::{scalar, Mining};
/// assert_eq!(scalar::mine_triplets_ref_count(&[0, 1], &[0, 0, 1], None, Mining::BatchHard)?, 2);
/// # Ok::<(), triplet_kernels::Error>(())
/// ```
#[cfg_attr(feature = "no-panic", no_panic::no_panic)]
pub fn mine_triplets_ref_count(
    labels: &[u32],
    y_labels: &[u32],
    self_index: Option<&[u32]>,
    mining: Mining,
) -> Result<usize, Error> {
    crate::triplet::mine_triplets_ref_count(labels, y_labels, self_index, mining)
        .and_then(|_| ref_count(labels, y_labels, self_index, mining))
}
