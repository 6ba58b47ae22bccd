//! Scalar twins of [`crate::face`].

use crate::error::Error;
use crate::face::{arc_head, check_head, cos_head, target64, ArcFaceParams, CosFaceParams, Head};
use crate::matrix::Matrix;
use crate::scalar::acc::{check_twin_workspace, Acc64};
use crate::scalar::distance::{clamped_norm64, dot64, normalize_backward64};

/// Workspace elements that the twins of ArcFace and CosFace need for `rows` embeddings,
/// `classes` class weights and dimension `dim`: `(rows + classes) * dim`, the low halves
/// of the `f64` accumulators of `grad` and `grad_weights` (the high halves live in those
/// buffers). The loss alone uses none of it but checks the same length. Saturates
/// instead of overflowing.
pub const fn arcface_loss_workspace_len(rows: usize, classes: usize, dim: usize) -> usize {
    rows.saturating_add(classes).saturating_mul(dim)
}

/// Workspace elements of the CosFace twins: as [`arcface_loss_workspace_len`].
pub const fn cosface_loss_workspace_len(rows: usize, classes: usize, dim: usize) -> usize {
    arcface_loss_workspace_len(rows, classes, dim)
}

/// Both heads in `f64`, accumulating the gradients when `grads` is given: first with
/// respect to the cosines, then the normalised rows and weights, then chained through the
/// normalisations.
fn heads64(
    x: &Matrix<'_>,
    labels: &[u32],
    weights: &Matrix<'_>,
    head: Head,
    scale: f32,
    mut grads: Option<(Acc64<'_>, Acc64<'_>)>,
) -> f64 {
    let s = f64::from(scale);
    let n = x.rows() as f64;
    let dim = x.dim();
    let mut loss = 0.0;
    for (i, (xi, &t)) in x.row_iter().zip(labels).enumerate() {
        let t = t as usize;
        let rx = clamped_norm64(xi);
        let cos = |w: &[f32]| dot64(xi, w) / (rx * clamped_norm64(w));
        let logit = |j: usize, w: &[f32]| {
            let c = cos(w);
            if j == t {
                s * target64(head, c).0
            } else {
                s * c
            }
        };
        let m = weights
            .row_iter()
            .enumerate()
            .map(|(j, w)| logit(j, w))
            .fold(f64::NEG_INFINITY, f64::max);
        let z: f64 = weights
            .row_iter()
            .enumerate()
            .map(|(j, w)| libm::exp(logit(j, w) - m))
            .sum();
        let z_t = weights.row(t).map_or(m, |w| logit(t, w));
        loss += m + libm::log(z) - z_t;
        let Some((gx, gw)) = grads.as_mut() else {
            continue;
        };
        for (j, w) in weights.row_iter().enumerate() {
            let p = libm::exp(logit(j, w) - m) / z;
            let g = if j == t {
                (p - 1.0) * s / n * target64(head, cos(w)).1
            } else {
                p * s / n
            };
            // d c = <d x^, w^> + <x^, d w^>.
            let rw = clamped_norm64(w);
            gx.add_row(i, dim, w.iter().map(|&v| g * f64::from(v) / rw));
            gw.add_row(j, dim, xi.iter().map(|&u| g * f64::from(u) / rx));
        }
    }
    if let Some((mut gx, mut gw)) = grads {
        for (i, xi) in x.row_iter().enumerate() {
            normalize_backward64(xi, &mut gx, i);
        }
        for (j, w) in weights.row_iter().enumerate() {
            normalize_backward64(w, &mut gw, j);
        }
        gx.finish();
        gw.finish();
    }
    loss / n
}

/// The checks and the `f64` computation shared by the four twins.
fn twin(
    x: Matrix<'_>,
    labels: &[u32],
    weights: Matrix<'_>,
    head: Result<Head, Error>,
    scale: f32,
    grads: Option<(&mut [f32], &mut [f32])>,
    workspace: &mut [f32],
) -> Result<f32, Error> {
    let lens = grads.as_ref().map(|(g, gw)| (g.len(), gw.len()));
    let head = check_twin_workspace(
        arcface_loss_workspace_len(x.rows(), weights.rows(), x.dim()),
        workspace.len(),
        |ws| check_head(&x, labels, &weights, head, lens, ws),
    )?;
    let accs = match grads {
        Some((g, gw)) => Some(accumulators(g, gw, workspace)?),
        None => None,
    };
    Ok(heads64(&x, labels, &weights, head, scale, accs) as f32)
}

fn accumulators<'a>(
    grad: &'a mut [f32],
    grad_weights: &'a mut [f32],
    workspace: &'a mut [f32],
) -> Result<(Acc64<'a>, Acc64<'a>), Error> {
    let (g, rest) = Acc64::new(grad, workspace)?;
    let (gw, _) = Acc64::new(grad_weights, rest)?;
    Ok((g, gw))
}

/// Scalar twin of [`crate::arcface_loss`]: the formula row by row in `f64` (log-sum-exp
/// shifted by the largest logit), cosines in `f64`.
///
/// `workspace` needs [`arcface_loss_workspace_len`]`(rows, classes, dim)` elements (the
/// twin's), checked but not used.
///
/// # Errors
///
/// Those of [`crate::arcface_loss`], in the same order; [`Error::WorkspaceTooSmall`]
/// reports the twin's requirement.
///
/// # Example
///
/// ```
/// use triplet_kernels::{scalar, ArcFaceParams, Matrix};
/// let x = Matrix::new(&[1.0, 0.0], 1, 2)?;
/// let w = Matrix::new(&[2.0, 0.0, 0.0, 1.0], 2, 2)?;
/// let mut ws = [0.0_f32; scalar::arcface_loss_workspace_len(1, 2, 2)];
/// let loss = scalar::arcface_loss(x, &[0], w, ArcFaceParams::new(30.0, 10.0), &mut ws)?;
/// let z = 10.0 * 30.0_f32.to_radians().cos();
/// assert!((loss - ((z.exp() + 1.0).ln() - z)).abs() < 1e-5);
/// # Ok::<(), triplet_kernels::Error>(())
/// ```
#[cfg_attr(feature = "no-panic", no_panic::no_panic)]
pub fn arcface_loss(
    x: Matrix<'_>,
    labels: &[u32],
    weights: Matrix<'_>,
    params: ArcFaceParams,
    workspace: &mut [f32],
) -> Result<f32, Error> {
    twin(
        x,
        labels,
        weights,
        arc_head(params),
        params.scale,
        None,
        workspace,
    )
}

/// Scalar twin of [`crate::arcface_loss_grad`]: the formula in `f64`; the gradients are
/// summed in `f64`, chained through the normalisations in `f64`, and every element of
/// `grad` and `grad_weights` is rounded to `f32` once.
///
/// # Errors
///
/// Those of [`crate::arcface_loss_grad`], in the same order; [`Error::WorkspaceTooSmall`]
/// reports the twin's requirement ([`arcface_loss_workspace_len`]).
///
/// # Example
///
/// ```
/// use triplet_kernels::{scalar, ArcFaceParams, Matrix};
/// let x = Matrix::new(&[1.0, 0.2], 1, 2)?;
/// let w = Matrix::new(&[1.0, 0.0, 0.0, 1.0], 2, 2)?;
/// let (mut g, mut gw) = ([0.0_f32; 2], [0.0_f32; 4]);
/// let mut ws = [0.0_f32; scalar::arcface_loss_workspace_len(1, 2, 2)];
/// let p = ArcFaceParams::pytorch_metric_learning();
/// scalar::arcface_loss_grad(x, &[0], w, p, &mut g, &mut gw, &mut ws)?;
/// assert!(g[1] > 0.0);
/// # Ok::<(), triplet_kernels::Error>(())
/// ```
#[cfg_attr(feature = "no-panic", no_panic::no_panic)]
pub fn arcface_loss_grad(
    x: Matrix<'_>,
    labels: &[u32],
    weights: Matrix<'_>,
    params: ArcFaceParams,
    grad: &mut [f32],
    grad_weights: &mut [f32],
    workspace: &mut [f32],
) -> Result<f32, Error> {
    twin(
        x,
        labels,
        weights,
        arc_head(params),
        params.scale,
        Some((grad, grad_weights)),
        workspace,
    )
}

/// Scalar twin of [`crate::cosface_loss`], as [`arcface_loss`] for ArcFace.
///
/// # Errors
///
/// Those of [`crate::cosface_loss`], in the same order; [`Error::WorkspaceTooSmall`]
/// reports the twin's requirement ([`cosface_loss_workspace_len`]).
///
/// # Example
///
/// ```
/// use triplet_kernels::{scalar, CosFaceParams, Matrix};
/// let x = Matrix::new(&[1.0, 0.0], 1, 2)?;
/// let w = Matrix::new(&[2.0, 0.0, 0.0, 1.0], 2, 2)?;
/// let mut ws = [0.0_f32; scalar::cosface_loss_workspace_len(1, 2, 2)];
/// let loss = scalar::cosface_loss(x, &[0], w, CosFaceParams::new(0.35, 10.0), &mut ws)?;
/// let z = 10.0 * (1.0 - 0.35_f32);
/// assert!((loss - ((z.exp() + 1.0).ln() - z)).abs() < 1e-5);
/// # Ok::<(), triplet_kernels::Error>(())
/// ```
#[cfg_attr(feature = "no-panic", no_panic::no_panic)]
pub fn cosface_loss(
    x: Matrix<'_>,
    labels: &[u32],
    weights: Matrix<'_>,
    params: CosFaceParams,
    workspace: &mut [f32],
) -> Result<f32, Error> {
    twin(
        x,
        labels,
        weights,
        cos_head(params),
        params.scale,
        None,
        workspace,
    )
}

/// Scalar twin of [`crate::cosface_loss_grad`], as [`arcface_loss_grad`] for ArcFace.
///
/// # Errors
///
/// Those of [`crate::cosface_loss_grad`], in the same order; [`Error::WorkspaceTooSmall`]
/// reports the twin's requirement ([`cosface_loss_workspace_len`]).
///
/// # Example
///
/// ```
/// use triplet_kernels::{scalar, CosFaceParams, Matrix};
/// let x = Matrix::new(&[1.0, 0.2], 1, 2)?;
/// let w = Matrix::new(&[1.0, 0.0, 0.0, 1.0], 2, 2)?;
/// let (mut g, mut gw) = ([0.0_f32; 2], [0.0_f32; 4]);
/// let mut ws = [0.0_f32; scalar::cosface_loss_workspace_len(1, 2, 2)];
/// let p = CosFaceParams::pytorch_metric_learning();
/// scalar::cosface_loss_grad(x, &[0], w, p, &mut g, &mut gw, &mut ws)?;
/// assert!(g[1] > 0.0);
/// # Ok::<(), triplet_kernels::Error>(())
/// ```
#[cfg_attr(feature = "no-panic", no_panic::no_panic)]
pub fn cosface_loss_grad(
    x: Matrix<'_>,
    labels: &[u32],
    weights: Matrix<'_>,
    params: CosFaceParams,
    grad: &mut [f32],
    grad_weights: &mut [f32],
    workspace: &mut [f32],
) -> Result<f32, Error> {
    twin(
        x,
        labels,
        weights,
        cos_head(params),
        params.scale,
        Some((grad, grad_weights)),
        workspace,
    )
}
