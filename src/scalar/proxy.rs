//! Scalar twins of [`crate::proxy`].

use crate::distance::{Metric, NORM_EPS};
use crate::error::Error;
use crate::matrix::Matrix;
use crate::proxy::{check_anchor, check_nca, ProxyAnchorParams, ProxyNcaParams};
use crate::scalar::distance::{add_distance_grad64, clamped_norm64, dot64, norm64};

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

/// Adds `coef * d |a^ - b^|^2 / d a` to `grad_a`, with `v^ = v / max(|v|, 1e-12)`: the
/// gradient `g = 2 (a^ - b^)` of the normalised row, chained through the normalisation
/// (`(g - a^ <a^, g>) / |a|`, or `g / 1e-12` where the clamp is active). Each element's
/// contribution is formed in `f64` and rounded once into `grad_a`.
fn add_normalized_sq_dist_grad64(a: &[f32], b: &[f32], coef: f64, grad_a: &mut [f32]) {
    let raw = norm64(a);
    let ra = clamped_norm64(a);
    let rb = clamped_norm64(b);
    let g = |u: f32, v: f32| 2.0 * (f64::from(u) / ra - f64::from(v) / rb);
    if raw > f64::from(NORM_EPS) {
        let proj: f64 = a
            .iter()
            .zip(b)
            .map(|(&u, &v)| f64::from(u) / ra * g(u, v))
            .sum();
        for ((o, &u), &v) in grad_a.iter_mut().zip(a).zip(b) {
            let d = (g(u, v) - f64::from(u) / ra * proj) / ra;
            *o = (f64::from(*o) + coef * d) as f32;
        }
    } else {
        for ((o, &u), &v) in grad_a.iter_mut().zip(a).zip(b) {
            *o = (f64::from(*o) + coef * g(u, v) / f64::from(NORM_EPS)) as f32;
        }
    }
}

/// `cos(a, b)` with clamped norms, in `f64`.
fn cos64(a: &[f32], b: &[f32]) -> f64 {
    dot64(a, b) / (clamped_norm64(a) * clamped_norm64(b))
}

/// Proxy-NCA in `f64`, adding the gradients when `grads` is given.
fn nca64(
    x: &Matrix<'_>,
    labels: &[u32],
    proxies: &Matrix<'_>,
    params: ProxyNcaParams,
    mut grads: Option<(&mut [f32], &mut [f32])>,
) -> f64 {
    let s = f64::from(params.softmax_scale);
    let n = x.rows() as f64;
    let dim = x.dim();
    let mut loss = 0.0;
    if let Some((g, gp)) = grads.as_mut() {
        g.fill(0.0);
        gp.fill(0.0);
    }
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
        let Some((g, gp)) = grads.as_mut() else {
            continue;
        };
        let Some(gx) = g.chunks_exact_mut(dim).nth(i) else {
            continue;
        };
        for (c, (p, gpc)) in proxies.row_iter().zip(gp.chunks_exact_mut(dim)).enumerate() {
            let prob = libm::exp(-s * (q(p) - q_min)) / z;
            let target = if c == y as usize { 1.0 } else { 0.0 };
            let w = s * (target - prob) / n;
            add_normalized_sq_dist_grad64(xi, p, w, gx);
            add_normalized_sq_dist_grad64(p, xi, w, gpc);
        }
    }
    loss / n
}

/// Scalar twin of [`crate::proxy_nca_loss`]: the formula row by row in `f64`
/// (log-sum-exp shifted by the smallest distance).
///
/// `workspace` is checked for the same length as the fast kernel but not used.
///
/// # Errors
///
/// Exactly those of [`crate::proxy_nca_loss`].
///
/// # Example
///
/// ```
/// use triplet_kernels::{scalar, proxy_nca_workspace_len, Matrix, ProxyNcaParams};
/// let x = Matrix::new(&[1.0, 0.0, 0.0, 2.0], 2, 2)?;
/// let proxies = Matrix::new(&[3.0, 0.0, 0.0, 1.0], 2, 2)?;
/// let mut ws = [0.0_f32; proxy_nca_workspace_len(2, 2, 2)];
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
    check_nca(&x, labels, &proxies, params, None, workspace.len())?;
    Ok(nca64(&x, labels, &proxies, params, None) as f32)
}

/// Scalar twin of [`crate::proxy_nca_loss_grad`]: the formula in `f64`, each gradient
/// contribution (per row and proxy) rounded once into `grad` or `grad_proxies`.
///
/// # Errors
///
/// Exactly those of [`crate::proxy_nca_loss_grad`].
///
/// # Example
///
/// ```
/// use triplet_kernels::{scalar, proxy_nca_workspace_len, Matrix, ProxyNcaParams};
/// let x = Matrix::new(&[1.0, 0.0, 0.0, 2.0], 2, 2)?;
/// let proxies = Matrix::new(&[3.0, 0.0, 0.0, 1.0], 2, 2)?;
/// let (mut g, mut gp) = ([0.0_f32; 4], [0.0_f32; 4]);
/// let mut ws = [0.0_f32; proxy_nca_workspace_len(2, 2, 2)];
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
    check_nca(
        &x,
        labels,
        &proxies,
        params,
        Some((grad.len(), grad_proxies.len())),
        workspace.len(),
    )?;
    Ok(nca64(&x, labels, &proxies, params, Some((grad, grad_proxies))) as f32)
}

/// Proxy-Anchor in `f64`, adding the gradients when `grads` is given.
fn anchor64(
    x: &Matrix<'_>,
    labels: &[u32],
    proxies: &Matrix<'_>,
    params: ProxyAnchorParams,
    mut grads: Option<(&mut [f32], &mut [f32])>,
) -> f64 {
    let alpha = f64::from(params.alpha);
    let delta = f64::from(params.margin);
    let c_count = proxies.rows();
    let dim = x.dim();
    let with_pos = (0..c_count)
        .filter(|&c| labels.iter().any(|&l| l as usize == c))
        .count();
    let w_pos = 1.0 / with_pos.max(1) as f64;
    let w_neg = 1.0 / c_count as f64;
    if let Some((g, gp)) = grads.as_mut() {
        g.fill(0.0);
        gp.fill(0.0);
    }
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
        let Some((g, gp)) = grads.as_mut() else {
            continue;
        };
        let Some(gpc) = gp.chunks_exact_mut(dim).nth(c) else {
            continue;
        };
        for ((xi, &l), gx) in x.row_iter().zip(labels).zip(g.chunks_exact_mut(dim)) {
            let v = exponent(xi, l);
            // d loss / d s_ic.
            let gs = if l as usize == c {
                -alpha * w_pos * libm::exp(v - m_pos) / z_pos
            } else {
                alpha * w_neg * libm::exp(v - m_neg) / z_neg
            };
            // s = 1 - cosine distance: d s = -d dist.
            let dist = 1.0 - cos64(xi, p);
            add_distance_grad64(Metric::Cosine, xi, p, dist, -gs, gx);
            add_distance_grad64(Metric::Cosine, p, xi, dist, -gs, gpc);
        }
    }
    w_pos * pos_loss + w_neg * neg_loss
}

/// Scalar twin of [`crate::proxy_anchor_loss`]: the formula proxy by proxy in `f64`
/// (each log-sum-exp shifted by its largest exponent).
///
/// `workspace` is checked for the same length as the fast kernel but not used.
///
/// # Errors
///
/// Exactly those of [`crate::proxy_anchor_loss`].
///
/// # Example
///
/// ```
/// use triplet_kernels::{scalar, proxy_anchor_workspace_len, Matrix, ProxyAnchorParams};
/// let x = Matrix::new(&[1.0, 0.0], 1, 2)?;
/// let proxies = Matrix::new(&[2.0, 0.0, 0.0, 5.0], 2, 2)?;
/// let mut ws = [0.0_f32; proxy_anchor_workspace_len(1, 2, 2)];
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
    check_anchor(&x, labels, &proxies, params, None, workspace.len())?;
    Ok(anchor64(&x, labels, &proxies, params, None) as f32)
}

/// Scalar twin of [`crate::proxy_anchor_loss_grad`]: the formula in `f64`, each gradient
/// contribution (per row and proxy) rounded once into `grad` or `grad_proxies`.
///
/// # Errors
///
/// Exactly those of [`crate::proxy_anchor_loss_grad`].
///
/// # Example
///
/// ```
/// use triplet_kernels::{scalar, proxy_anchor_workspace_len, Matrix, ProxyAnchorParams};
/// let x = Matrix::new(&[1.0, 1.0], 1, 2)?;
/// let proxies = Matrix::new(&[1.0, 0.0, 0.0, 1.0], 2, 2)?;
/// let (mut g, mut gp) = ([0.0_f32; 2], [0.0_f32; 4]);
/// let mut ws = [0.0_f32; proxy_anchor_workspace_len(1, 2, 2)];
/// let params = ProxyAnchorParams::PYTORCH_METRIC_LEARNING;
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
    check_anchor(
        &x,
        labels,
        &proxies,
        params,
        Some((grad.len(), grad_proxies.len())),
        workspace.len(),
    )?;
    Ok(anchor64(&x, labels, &proxies, params, Some((grad, grad_proxies))) as f32)
}
