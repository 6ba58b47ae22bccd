//! Scalar twins of [`crate::quadruplet`].

use crate::distance::Metric;
use crate::error::Error;
use crate::matrix::Matrix;
use crate::quadruplet::{
    check_mining, check_quadruplet, is_active, select, Quadruplet, QuadrupletParams,
};
use crate::scalar::acc::{check_twin_workspace, Acc64};
use crate::scalar::distance::{distance64, pair_grad64};
use crate::scalar::reduce::{hinge64, slope64, weight64};

/// Workspace elements that the twins [`quadruplet_loss`] and [`quadruplet_loss_grad`] need
/// for `rows` embeddings of dimension `dim`: `rows * dim`, the low halves of the
/// gradient's `f64` accumulators (the high halves live in `grad`). The loss alone uses
/// none of it but checks the same length. Saturates instead of overflowing.
pub const fn quadruplet_loss_workspace_len(rows: usize, dim: usize) -> usize {
    rows.saturating_mul(dim)
}

/// Deprecated name of [`quadruplet_loss_workspace_len`].
#[deprecated(since = "0.2.0", note = "renamed to `quadruplet_loss_workspace_len`")]
pub const fn quadruplet_workspace_len(rows: usize, dim: usize) -> usize {
    quadruplet_loss_workspace_len(rows, dim)
}

/// The shared argument checks with the twin's workspace requirement.
fn check64(
    x: &Matrix<'_>,
    quadruplets: &[Quadruplet],
    params: &QuadrupletParams,
    grad: Option<usize>,
    workspace: usize,
) -> Result<(), Error> {
    check_twin_workspace(
        quadruplet_loss_workspace_len(x.rows(), x.dim()),
        workspace,
        |ws| check_quadruplet(x, quadruplets, params, grad, ws),
    )
}

/// The rows of a quadruplet (indices already checked).
fn rows<'a>(x: &Matrix<'a>, q: Quadruplet) -> Option<[&'a [f32]; 4]> {
    Some([
        x.row(q.anchor as usize)?,
        x.row(q.positive as usize)?,
        x.row(q.negative1 as usize)?,
        x.row(q.negative2 as usize)?,
    ])
}

/// `(d(a,p), d(a,n1), d(n1,n2))` and the two hinge arguments, in `f64`.
fn margins64(metric: Metric, r: [&[f32]; 4], params: &QuadrupletParams) -> ([f64; 3], f64, f64) {
    let [a, p, n1, n2] = r;
    let d = [
        distance64(metric, a, p),
        distance64(metric, a, n1),
        distance64(metric, n1, n2),
    ];
    let v1 = d[0] - d[1] + f64::from(params.margin1);
    let v2 = d[0] - d[2] + f64::from(params.margin2);
    (d, v1, v2)
}

/// Sum of the terms and number of terms `> 0`, in `f64`.
fn forward64(
    x: &Matrix<'_>,
    quadruplets: &[Quadruplet],
    metric: Metric,
    params: &QuadrupletParams,
) -> (f64, usize) {
    let mut sum = 0.0;
    let mut active = 0;
    for &q in quadruplets {
        let Some(r) = rows(x, q) else { continue };
        let (_, v1, v2) = margins64(metric, r, params);
        sum += hinge64(params.hinge, v1) + hinge64(params.hinge, v2);
        active += usize::from(is_active(params.hinge, v1, v2));
    }
    (sum, active)
}

/// Scalar twin of [`crate::quadruplet_loss`]: the formula per quadruplet in `f64`.
///
/// `workspace` needs [`quadruplet_loss_workspace_len`]`(rows, dim)` elements (the twin's, see
/// there), checked but not used.
///
/// # Errors
///
/// Those of [`crate::quadruplet_loss`], in the same order;
/// [`Error::WorkspaceTooSmall`] reports the twin's requirement.
///
/// # Example
///
/// ```
/// use triplet_kernels::{
///     scalar, Matrix, Metric, Quadruplet, QuadrupletParams,
/// };
/// let x = Matrix::new(&[0.0, 1.0, 1.5, 2.5], 4, 1)?;
/// let quads = [Quadruplet::new(0, 1, 2, 3)];
/// let mut ws = [0.0_f32; scalar::quadruplet_loss_workspace_len(4, 1)];
/// let params = QuadrupletParams::new(1.0, 0.5);
/// assert_eq!(scalar::quadruplet_loss(x, &quads, Metric::Euclidean, params, &mut ws)?, 1.0);
/// # Ok::<(), triplet_kernels::Error>(())
/// ```
#[cfg_attr(feature = "no-panic", no_panic::no_panic)]
pub fn quadruplet_loss(
    x: Matrix<'_>,
    quadruplets: &[Quadruplet],
    metric: Metric,
    params: QuadrupletParams,
    workspace: &mut [f32],
) -> Result<f32, Error> {
    check64(&x, quadruplets, &params, None, workspace.len())?;
    let (sum, active) = forward64(&x, quadruplets, metric, &params);
    Ok((sum * weight64(params.reduction, quadruplets.len(), active)) as f32)
}

/// Scalar twin of [`crate::quadruplet_loss_grad`]: the formula per quadruplet in `f64`,
/// every gradient element summed in `f64` and rounded to `f32` once.
///
/// `workspace` needs [`quadruplet_loss_workspace_len`]`(rows, dim)` elements, garbage before
/// and after.
///
/// # Errors
///
/// Those of [`crate::quadruplet_loss_grad`], in the same order;
/// [`Error::WorkspaceTooSmall`] reports the twin's requirement.
///
/// # Example
///
/// ```
/// use triplet_kernels::{
///     scalar, Matrix, Metric, Quadruplet, QuadrupletParams,
/// };
/// let x = Matrix::new(&[0.0, 1.0, 1.5, 2.5], 4, 1)?;
/// let quads = [Quadruplet::new(0, 1, 2, 3)];
/// let mut grad = [0.0_f32; 4];
/// let mut ws = [0.0_f32; scalar::quadruplet_loss_workspace_len(4, 1)];
/// let params = QuadrupletParams::new(1.0, 0.5);
/// let loss =
///     scalar::quadruplet_loss_grad(x, &quads, Metric::Euclidean, params, &mut grad, &mut ws)?;
/// assert_eq!((loss, grad), (1.0, [-1.0, 2.0, 0.0, -1.0]));
/// # Ok::<(), triplet_kernels::Error>(())
/// ```
#[cfg_attr(feature = "no-panic", no_panic::no_panic)]
pub fn quadruplet_loss_grad(
    x: Matrix<'_>,
    quadruplets: &[Quadruplet],
    metric: Metric,
    params: QuadrupletParams,
    grad: &mut [f32],
    workspace: &mut [f32],
) -> Result<f32, Error> {
    check64(&x, quadruplets, &params, Some(grad.len()), workspace.len())?;
    let (mut acc, _) = Acc64::new(grad, workspace)?;
    let (sum, active) = forward64(&x, quadruplets, metric, &params);
    let w = weight64(params.reduction, quadruplets.len(), active);
    for &q in quadruplets {
        let Some(r) = rows(&x, q) else { continue };
        let (d, v1, v2) = margins64(metric, r, &params);
        let s1 = w * slope64(params.hinge, v1);
        let s2 = w * slope64(params.hinge, v2);
        let [ia, ip, in1, in2] = q.to_array().map(|v| v as usize);
        let [a, p, n1, n2] = r;
        pair_grad64(metric, (ia, a), (ip, p), d[0], 0.0, s1 + s2, &mut acc);
        pair_grad64(metric, (ia, a), (in1, n1), d[1], 0.0, -s1, &mut acc);
        pair_grad64(metric, (in1, n1), (in2, n2), d[2], 0.0, -s2, &mut acc);
    }
    acc.finish();
    Ok((sum * w) as f32)
}

/// Scalar twin of [`crate::mine_quadruplets`]: the same selection rules on `f64`
/// distances computed pair by pair.
///
/// `workspace` is checked for the same length as the fast kernel but not used.
///
/// # Errors
///
/// Exactly those of [`crate::mine_quadruplets`].
///
/// # Example
///
/// ```
/// use triplet_kernels::{scalar, mine_quadruplets_workspace_len, Matrix, Metric, Quadruplet};
/// let x = Matrix::new(&[0.0, 1.0, 3.0, 4.0, 9.0, 7.0], 6, 1)?;
/// let mut out = [Quadruplet::default(); 6];
/// let mut ws = [0.0_f32; mine_quadruplets_workspace_len(6, 1)];
/// let k = scalar::mine_quadruplets(x, &[0, 0, 1, 1, 2, 2], Metric::Euclidean, &mut out, &mut ws)?;
/// assert_eq!((k, out[0]), (6, Quadruplet::new(0, 1, 2, 5)));
/// # Ok::<(), triplet_kernels::Error>(())
/// ```
#[cfg_attr(feature = "no-panic", no_panic::no_panic)]
pub fn mine_quadruplets(
    x: Matrix<'_>,
    labels: &[u32],
    metric: Metric,
    out: &mut [Quadruplet],
    workspace: &mut [f32],
) -> Result<usize, Error> {
    check_mining(&x, labels, out.len(), workspace.len())?;
    let mut written = 0;
    let mut slots = out.iter_mut();
    for (a, (ra, &la)) in x.row_iter().zip(labels).enumerate() {
        let cands = || x.row_iter().zip(labels).enumerate();
        let p = select(
            cands()
                .filter(|&(j, (_, &l))| j != a && l == la)
                .map(|(j, (r, _))| (j, distance64(metric, ra, r))),
            |v, b| v > b,
        );
        let n1 = select(
            cands()
                .filter(|&(_, (_, &l))| l != la)
                .map(|(j, (r, _))| (j, distance64(metric, ra, r))),
            |v, b| v < b,
        );
        let (Some(p), Some(n1)) = (p, n1) else {
            continue;
        };
        let (Some(&ln1), Some(rn1)) = (labels.get(n1), x.row(n1)) else {
            continue;
        };
        let n2 = select(
            cands()
                .filter(|&(_, (_, &l))| l != la && l != ln1)
                .map(|(j, (r, _))| (j, distance64(metric, rn1, r))),
            |v, b| v < b,
        );
        let Some(n2) = n2 else { continue };
        if let Some(slot) = slots.next() {
            *slot = Quadruplet::new(a as u32, p as u32, n1 as u32, n2 as u32);
            written += 1;
        }
    }
    Ok(written)
}

/// Scalar twin of [`crate::mine_quadruplets_count`], by its definition: when the batch
/// holds at least three distinct labels, the number of rows whose label occurs on another
/// row; 0 otherwise.
///
/// # Errors
///
/// Exactly those of [`crate::mine_quadruplets_count`] (none today).
///
/// # Example
///
/// ```
/// use triplet_kernels::scalar;
/// assert_eq!(scalar::mine_quadruplets_count(&[1, 1, 2, 2, 3])?, 4);
/// # Ok::<(), triplet_kernels::Error>(())
/// ```
#[cfg_attr(feature = "no-panic", no_panic::no_panic)]
pub fn mine_quadruplets_count(labels: &[u32]) -> Result<usize, Error> {
    let mut classes = 0_usize;
    for (i, l) in labels.iter().enumerate() {
        if !labels.get(..i).is_some_and(|seen| seen.contains(l)) {
            classes += 1;
        }
    }
    if classes < 3 {
        return Ok(0);
    }
    let mut count = 0_usize;
    for (i, li) in labels.iter().enumerate() {
        if labels.iter().enumerate().any(|(j, lj)| j != i && lj == li) {
            count += 1;
        }
    }
    Ok(count)
}
