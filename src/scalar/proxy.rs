//! Scalar twins of [`crate::proxy`].

use crate::distance::Metric;
use crate::error::Error;
use crate::matrix::Matrix;
use crate::proxy::{check_anchor, check_nca, ProxyAnchorParams, ProxyNcaParams};
use crate::scalar::acc::{check_twin_workspace, Acc64};
use crate::scalar::distance::{add_distance_grad64, clamped_norm64, dot64, normalize_backward64};

/// `(rows + classes) * dim`, saturating.
const fn proxy_len(rows: usize, classes: usize, dim: usize) -> usize {
    rows.saturating_add(classes).saturating_mul(dim)
}

/// Workspace elements that the twins [`proxy_nca_loss`] and [`proxy_nca_loss_grad`] need
/// for `rows` embeddings, `classes` proxies and dimension `dim`: `(rows + classes) * dim`,
/// the low halves of the `f64` accumulators of `grad` and `grad_proxies` (the high halves
/// live in those buffers). The loss alone uses none of it but checks the same length.
/// Saturates instead of overflowing.
pub const fn proxy_nca_loss_workspace_len(rows: usize, classes: usize, dim: usize) -> usize {
    proxy_len(rows, classes, dim)
}

/// Deprecated name of [`proxy_nca_loss_workspace_len`].
#[deprecated(since = "0.2.0", note = "renamed to `proxy_nca_loss_workspace_len`")]
pub const fn proxy_nca_workspace_len(rows: usize, classes: usize, dim: usize) -> usize {
    proxy_nca_loss_workspace_len(rows, classes, dim)
}

/// Workspace elements that the twins [`proxy_anchor_loss`] and [`proxy_anchor_loss_grad`]
/// need for `rows` embeddings, `classes` proxies and dimension `dim`:
/// `(rows + classes) * dim`, the low halves of the `f64` accumulators of `grad` and
/// `grad_proxies` (the high halves live in those buffers). The loss alone uses none of it
/// but checks the same length. Saturates instead of overflowing.
pub const fn proxy_anchor_loss_workspace_len(rows: usize, classes: usize, dim: usize) -> usize {
    proxy_len(rows, classes, dim)
}

/// Deprecated name of [`proxy_anchor_loss_workspace_len`].
#[deprecated(since = "0.2.0", note = "renamed to `proxy_anchor_loss_workspace_len`")]
pub const fn proxy_anchor_workspace_len(rows: usize, classes: usize, dim: usize) -> usize {
    proxy_anchor_loss_workspace_len(rows, classes, dim)
}

/// The accumulators of `grad` and `grad_proxies`, in this order, from one workspace.
fn accumulators<'a>(
    grad: &'a mut [f32],
    grad_proxies: &'a mut [f32],
    workspace: &'a mut [f32],
) -> Result<(Acc64<'a>, Acc64<'a>), Error> {
    let (g, rest) = Acc64::new(grad, workspace)?;
    let (gp, _) = Acc64::new(grad_proxies, rest)?;
    Ok((g, gp))
}

/// `|a / ra - b / rb|^2` in `f64`, `ra`, `rb` the clamped norms.
fn normalized_sq_dist64(a: &[f32], ra: f64, b: &[f32], rb: f64) -> f64 {
    a.iter()
        .zip(b)
        .map(|(&u, &v)| {
            let t = f64::from(u) / ra - f64::from(v) / rb;
            t * t
        })
        .sum()
}

/// `cos(a, b)` with clamped norms, in `f64`.
fn cos64(a: &[f32], b: &[f32]) -> f64 {
    dot64(a, b) / (clamped_norm64(a) * clamped_norm64(b))
}

/// Proxy-NCA in `f64`, accumulating the gradients when `grads` is given: first with
/// respect to the normalised rows and proxies, then chained through the normalisations.
fn nca64(
    x: &Matrix<'_>,
    labels: &[u32],
    proxies: &Matrix<'_>,
    params: ProxyNcaParams,
    mut grads: Option<(Acc64<'_>, Acc64<'_>)>,
) -> f64 {
    let s = f64::from(params.softmax_scale);
    let n = x.rows() as f64;
    let dim = x.dim();
    let mut loss = 0.0;
    for (i, (xi, &y)) in x.row_iter().zip(labels).enumerate() {
        let rx = clamped_norm64(xi);
        let q = |p: &[f32]| normalized_sq_dist64(xi, rx, p, clamped_norm64(p));
        let q_min = proxies.row_iter().map(q).fold(f64::INFINITY, f64::min);
        let q_y = proxies.row(y as usize).map_or(q_min, q);
        let z: f64 = proxies
            .row_iter()
            .map(|p| libm::exp(-s * (q(p) - q_min)))
            .sum();
        loss += s * (q_y - q_min) + libm::log(z);
        let Some((gx, gp)) = grads.as_mut() else {
            continue;
        };
        for (c, p) in proxies.row_iter().enumerate() {
            let prob = libm::exp(-s * (q(p) - q_min)) / z;
            let target = if c == y as usize { 1.0 } else { 0.0 };
            let w = s * (target - prob) / n;
            let rp = clamped_norm64(p);
            // d |x^ - p^|^2 = 2 (x^ - p^) d x^ - 2 (x^ - p^) d p^.
            let diff = || {
                xi.iter()
                    .zip(p)
                    .map(move |(&u, &v)| 2.0 * w * (f64::from(u) / rx - f64::from(v) / rp))
            };
            gx.add_row(i, dim, diff());
            gp.add_row(c, dim, diff().map(|t| -t));
        }
    }
    if let Some((mut gx, mut gp)) = grads {
        for (i, xi) in x.row_iter().enumerate() {
            normalize_backward64(xi, &mut gx, i);
        }
        for (c, p) in proxies.row_iter().enumerate() {
            normalize_backward64(p, &mut gp, c);
        }
        gx.finish();
        gp.finish();
    }
    loss / n
}

/// Scalar twin of [`crate::proxy_nca_loss`]: the formula row by row in `f64`
/// (log-sum-exp shifted by the smallest distance), on rows and proxies normalised in
/// `f64`.
///
/// `workspace` needs [`proxy_nca_loss_workspace_len`]`(rows, classes, dim)` elements (the
/// twin's, see there), checked but not used.
///
/// # Errors
///
/// Those of [`crate::proxy_nca_loss`], in the same order;
/// [`Error::WorkspaceTooSmall`] reports the twin's requirement.
///
/// # Example
///
/// ```
/// use triplet_kernels::{scalar, Matrix, ProxyNcaParams};
/// let x = Matrix::new(&[1.0, 0.0, 0.0, 2.0], 2, 2)?;
/// let proxies = Matrix::new(&[3.0, 0.0, 0.0, 1.0], 2, 2)?;
/// let mut ws = [0.0_f32; scalar::proxy_nca_loss_workspace_len(2, 2, 2)];
/// let loss = scalar::proxy_nca_loss(x, &[0, 1], proxies, ProxyNcaParams::new(1.0), &mut ws)?;
/// assert!((loss - (1.0_f32 + (-2.0_f32).exp()).ln()).abs() < 1e-6);
/// # Ok::<(), triplet_kernels::Error>(())
/// ```
#[cfg_attr(feature = "no-panic", no_panic::no_panic)]
pub fn proxy_nca_loss(
    x: Matrix<'_>,
    labels: &[u32],
    proxies: Matrix<'_>,
    params: ProxyNcaParams,
    workspace: &mut [f32],
) -> Result<f32, Error> {
    check_twin_workspace(
        proxy_nca_loss_workspace_len(x.rows(), proxies.rows(), x.dim()),
        workspace.len(),
        |ws| check_nca(&x, labels, &proxies, params, None, ws),
    )?;
    Ok(nca64(&x, labels, &proxies, params, None) as f32)
}

/// Scalar twin of [`crate::proxy_nca_loss_grad`]: the formula in `f64`. The gradients
/// with respect to the normalised rows and proxies are summed in `f64`, chained through
/// the normalisations in `f64`, and every element of `grad` and `grad_proxies` is rounded
/// to `f32` once.
///
/// `workspace` needs [`proxy_nca_loss_workspace_len`]`(rows, classes, dim)` elements, garbage
/// before and after.
///
/// # Errors
///
/// Those of [`crate::proxy_nca_loss_grad`], in the same order;
/// [`Error::WorkspaceTooSmall`] reports the twin's requirement.
///
/// # Example
///
/// ```
/// use triplet_kernels::{scalar, Matrix, ProxyNcaParams};
/// let x = Matrix::new(&[1.0, 0.0, 0.0, 2.0], 2, 2)?;
/// let proxies = Matrix::new(&[3.0, 0.0, 0.0, 1.0], 2, 2)?;
/// let (mut g, mut gp) = ([0.0_f32; 4], [0.0_f32; 4]);
/// let mut ws = [0.0_f32; scalar::proxy_nca_loss_workspace_len(2, 2, 2)];
/// let params = ProxyNcaParams::new(1.0);
/// scalar::proxy_nca_loss_grad(x, &[0, 1], proxies, params, &mut g, &mut gp, &mut ws)?;
/// assert!(g[0].abs() < 1e-7 && g[1] > 0.0);
/// # Ok::<(), triplet_kernels::Error>(())
/// ```
#[cfg_attr(feature = "no-panic", no_panic::no_panic)]
pub fn proxy_nca_loss_grad(
    x: Matrix<'_>,
    labels: &[u32],
    proxies: Matrix<'_>,
    params: ProxyNcaParams,
    grad: &mut [f32],
    grad_proxies: &mut [f32],
    workspace: &mut [f32],
) -> Result<f32, Error> {
    let lens = Some((grad.len(), grad_proxies.len()));
    check_twin_workspace(
        proxy_nca_loss_workspace_len(x.rows(), proxies.rows(), x.dim()),
        workspace.len(),
        |ws| check_nca(&x, labels, &proxies, params, lens, ws),
    )?;
    let accs = accumulators(grad, grad_proxies, workspace)?;
    Ok(nca64(&x, labels, &proxies, params, Some(accs)) as f32)
}

/// Proxy-Anchor in `f64`, accumulating the gradients when `grads` is given.
fn anchor64(
    x: &Matrix<'_>,
    labels: &[u32],
    proxies: &Matrix<'_>,
    params: ProxyAnchorParams,
    mut grads: Option<(Acc64<'_>, Acc64<'_>)>,
) -> f64 {
    let alpha = f64::from(params.alpha);
    let delta = f64::from(params.margin);
    let c_count = proxies.rows();
    let with_pos = (0..c_count)
        .filter(|&c| labels.iter().any(|&l| l as usize == c))
        .count();
    let w_pos = 1.0 / with_pos.max(1) as f64;
    let w_neg = 1.0 / c_count as f64;
    let (mut pos_loss, mut neg_loss) = (0.0, 0.0);
    for (c, p) in proxies.row_iter().enumerate() {
        let exponent = |xi: &[f32], l: u32| {
            let s = cos64(xi, p);
            if l as usize == c {
                -alpha * (s - delta)
            } else {
                alpha * (s + delta)
            }
        };
        // ln(1 + sum e^v) = m + ln(e^-m + sum e^(v - m)), m = max(0, max v).
        let (mut m_pos, mut m_neg) = (0.0_f64, 0.0_f64);
        for (xi, &l) in x.row_iter().zip(labels) {
            let v = exponent(xi, l);
            if l as usize == c {
                m_pos = m_pos.max(v);
            } else {
                m_neg = m_neg.max(v);
            }
        }
        let (mut z_pos, mut z_neg) = (libm::exp(-m_pos), libm::exp(-m_neg));
        for (xi, &l) in x.row_iter().zip(labels) {
            let v = exponent(xi, l);
            if l as usize == c {
                z_pos += libm::exp(v - m_pos);
            } else {
                z_neg += libm::exp(v - m_neg);
            }
        }
        pos_loss += m_pos + libm::log(z_pos);
        neg_loss += m_neg + libm::log(z_neg);
        let Some((gx, gp)) = grads.as_mut() else {
            continue;
        };
        for (i, (xi, &l)) in x.row_iter().zip(labels).enumerate() {
            let v = exponent(xi, l);
            // d loss / d s_ic.
            let gs = if l as usize == c {
                -alpha * w_pos * libm::exp(v - m_pos) / z_pos
            } else {
                alpha * w_neg * libm::exp(v - m_neg) / z_neg
            };
            // s = 1 - cosine distance: d s = -d dist.
            let dist = 1.0 - cos64(xi, p);
            add_distance_grad64(Metric::Cosine, xi, p, dist, -gs, gx, i);
            add_distance_grad64(Metric::Cosine, p, xi, dist, -gs, gp, c);
        }
    }
    if let Some((gx, gp)) = grads {
        gx.finish();
        gp.finish();
    }
    w_pos * pos_loss + w_neg * neg_loss
}

/// Scalar twin of [`crate::proxy_anchor_loss`]: the formula proxy by proxy in `f64`
/// (each log-sum-exp shifted by its largest exponent), cosines from `f64` norms.
///
/// `workspace` needs [`proxy_anchor_loss_workspace_len`]`(rows, classes, dim)` elements (the
/// twin's, see there), checked but not used.
///
/// # Errors
///
/// Those of [`crate::proxy_anchor_loss`], in the same order;
/// [`Error::WorkspaceTooSmall`] reports the twin's requirement.
///
/// # Example
///
/// ```
/// use triplet_kernels::{scalar, Matrix, ProxyAnchorParams};
/// let x = Matrix::new(&[1.0, 0.0], 1, 2)?;
/// let proxies = Matrix::new(&[2.0, 0.0, 0.0, 5.0], 2, 2)?;
/// let mut ws = [0.0_f32; scalar::proxy_anchor_loss_workspace_len(1, 2, 2)];
/// let params = ProxyAnchorParams::new(0.1, 32.0);
/// let loss = scalar::proxy_anchor_loss(x, &[0], proxies, params, &mut ws)?;
/// let want = (1.0_f32 + (-32.0_f32 * 0.9).exp()).ln() + (1.0_f32 + 3.2_f32.exp()).ln() / 2.0;
/// assert!((loss - want).abs() < 1e-5);
/// # Ok::<(), triplet_kernels::Error>(())
/// ```
#[cfg_attr(feature = "no-panic", no_panic::no_panic)]
pub fn proxy_anchor_loss(
    x: Matrix<'_>,
    labels: &[u32],
    proxies: Matrix<'_>,
    params: ProxyAnchorParams,
    workspace: &mut [f32],
) -> Result<f32, Error> {
    check_twin_workspace(
        proxy_anchor_loss_workspace_len(x.rows(), proxies.rows(), x.dim()),
        workspace.len(),
        |ws| check_anchor(&x, labels, &proxies, params, None, ws),
    )?;
    Ok(anchor64(&x, labels, &proxies, params, None) as f32)
}

/// Scalar twin of [`crate::proxy_anchor_loss_grad`]: the formula in `f64`, every element
/// of `grad` and `grad_proxies` summed in `f64` and rounded to `f32` once.
///
/// `workspace` needs [`proxy_anchor_loss_workspace_len`]`(rows, classes, dim)` elements,
/// garbage before and after.
///
/// # Errors
///
/// Those of [`crate::proxy_anchor_loss_grad`], in the same order;
/// [`Error::WorkspaceTooSmall`] reports the twin's requirement.
///
/// # Example
///
/// ```
/// use triplet_kernels::{scalar, Matrix, ProxyAnchorParams};
/// let x = Matrix::new(&[1.0, 1.0], 1, 2)?;
/// let proxies = Matrix::new(&[1.0, 0.0, 0.0, 1.0], 2, 2)?;
/// let (mut g, mut gp) = ([0.0_f32; 2], [0.0_f32; 4]);
/// let mut ws = [0.0_f32; scalar::proxy_anchor_loss_workspace_len(1, 2, 2)];
/// let params = ProxyAnchorParams::pytorch_metric_learning();
/// scalar::proxy_anchor_loss_grad(x, &[0], proxies, params, &mut g, &mut gp, &mut ws)?;
/// assert!(g[0] < 0.0 && g[1] > 0.0);
/// # Ok::<(), triplet_kernels::Error>(())
/// ```
#[cfg_attr(feature = "no-panic", no_panic::no_panic)]
pub fn proxy_anchor_loss_grad(
    x: Matrix<'_>,
    labels: &[u32],
    proxies: Matrix<'_>,
    params: ProxyAnchorParams,
    grad: &mut [f32],
    grad_proxies: &mut [f32],
    workspace: &mut [f32],
) -> Result<f32, Error> {
    let lens = Some((grad.len(), grad_proxies.len()));
    check_twin_workspace(
        proxy_anchor_loss_workspace_len(x.rows(), proxies.rows(), x.dim()),
        workspace.len(),
        |ws| check_anchor(&x, labels, &proxies, params, lens, ws),
    )?;
    let accs = accumulators(grad, grad_proxies, workspace)?;
    Ok(anchor64(&x, labels, &proxies, params, Some(accs)) as f32)
}
