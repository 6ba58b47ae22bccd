//! Proxy-based losses with caller-held proxies: Proxy-NCA (Movshovitz-Attias et al.
//! 2017) and Proxy-Anchor (Kim et al., CVPR 2020), with gradients with respect to the
//! embeddings **and** the proxies.
//!
//! The proxies are a `C x dim` [`Matrix`], one learned vector per class; `labels[i]` is
//! the index (`0..C`) of row `i`'s proxy. Both losses follow pytorch-metric-learning's
//! implementation:
//!
//! - **Proxy-NCA**: rows of `x` and of the proxies are L2-normalised
//!   (`v / max(|v|, 1e-12)`); with `q_ic = |x^_i - P^_c|^2` and `s = softmax_scale`,
//!
//!   ```text
//!   loss = (1/n) sum_i -ln softmax_c(-s q_i.)[labels[i]]
//!        = (1/n) sum_i ( s q_{i,y_i} + ln sum_c e^{-s q_ic} )
//!   ```
//!
//! - **Proxy-Anchor**: with the cosine similarity `s_ic = cos(x_i, P_c)` (norms clamped at
//!   `1e-12`), margin `delta` and scale `alpha`,
//!
//!   ```text
//!   loss = (1/|P+|) sum_{c in P+} ln(1 + sum_{i: y_i = c}  e^{-alpha (s_ic - delta)})
//!        + (1/C)    sum_{c}       ln(1 + sum_{i: y_i != c} e^{ alpha (s_ic + delta)})
//!   ```
//!
//!   where `P+` is the set of proxies with at least one row in the batch. A proxy with no
//!   row contributes only to the negative part.
//!
//! Every log-sum-exp is shifted by its largest exponent (including the `0` of the `1 +`),
//! so large `softmax_scale` and `alpha` neither overflow nor lose the loss to `inf - inf`:
//! the loss is finite whenever `4 softmax_scale + ln C` (Proxy-NCA) or
//! `2 (alpha (1 + |margin|) + ln(n + 1))` (Proxy-Anchor, whose two parts can each reach
//! `alpha (1 + |margin|) + ln(n + 1)`) is below `f32::MAX`. The per-row (Proxy-NCA) and
//! per-proxy (Proxy-Anchor) terms are summed in `f64`, so a sum whose mean is finite never
//! overflows on the way.
//!
//! Gradients with respect to raw (unnormalised) rows go through the normalisation, as
//! [`crate::l2_normalize_backward`]: a row whose norm is at most `1e-12` gets the
//! derivative of the clamped formula, `1e12` times the gradient of its normalised value.

use crate::distance::{l2_normalize_backward_on, l2_normalize_on};
use crate::error::Error;
use crate::math;
use crate::matrix::Matrix;
use crate::simd::{self, Backend};
use crate::validate::{check_finite, check_labels, check_len, check_workspace};
use crate::workspace::Carve;

/// Parameters of [`proxy_nca_loss`].
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub struct ProxyNcaParams {
    /// Scale `s` of the negated squared distances inside the softmax; finite and `> 0`.
    pub softmax_scale: f32,
}

impl ProxyNcaParams {
    /// pytorch-metric-learning's `ProxyNCALoss` default: `softmax_scale = 1`.
    pub const fn pytorch_metric_learning() -> Self {
        Self::new(1.0)
    }

    /// Deprecated form of [`ProxyNcaParams::pytorch_metric_learning`].
    #[deprecated(
        since = "0.2.0",
        note = "use `ProxyNcaParams::pytorch_metric_learning()`"
    )]
    pub const PYTORCH_METRIC_LEARNING: Self = Self::pytorch_metric_learning();

    /// Proxy-NCA with the given softmax scale.
    pub const fn new(softmax_scale: f32) -> Self {
        ProxyNcaParams { softmax_scale }
    }

    /// The same parameters with another `softmax_scale`.
    #[must_use]
    pub const fn with_softmax_scale(mut self, softmax_scale: f32) -> Self {
        self.softmax_scale = softmax_scale;
        self
    }

    pub(crate) fn validate(self) -> Result<(), Error> {
        let s = self.softmax_scale;
        if s.is_finite() && s > 0.0 {
            Ok(())
        } else {
            Err(Error::InvalidParameter {
                name: "softmax_scale",
                expected: "finite and > 0",
            })
        }
    }
}

impl Default for ProxyNcaParams {
    /// [`ProxyNcaParams::pytorch_metric_learning`].
    fn default() -> Self {
        Self::pytorch_metric_learning()
    }
}

/// Parameters of [`proxy_anchor_loss`].
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub struct ProxyAnchorParams {
    /// Margin `delta` on the cosine similarity; finite (any sign).
    pub margin: f32,
    /// Scale `alpha`; finite and `> 0`.
    pub alpha: f32,
}

impl ProxyAnchorParams {
    /// pytorch-metric-learning's `ProxyAnchorLoss` defaults, also the paper's:
    /// `margin = 0.1`, `alpha = 32`.
    pub const fn pytorch_metric_learning() -> Self {
        Self::new(0.1, 32.0)
    }

    /// Deprecated form of [`ProxyAnchorParams::pytorch_metric_learning`].
    #[deprecated(
        since = "0.2.0",
        note = "use `ProxyAnchorParams::pytorch_metric_learning()`"
    )]
    pub const PYTORCH_METRIC_LEARNING: Self = Self::pytorch_metric_learning();

    /// Proxy-Anchor with the given margin and scale.
    pub const fn new(margin: f32, alpha: f32) -> Self {
        ProxyAnchorParams { margin, alpha }
    }

    /// The same parameters with another `margin`.
    #[must_use]
    pub const fn with_margin(self, margin: f32) -> Self {
        ProxyAnchorParams { margin, ..self }
    }

    /// The same parameters with another `alpha`.
    #[must_use]
    pub const fn with_alpha(self, alpha: f32) -> Self {
        ProxyAnchorParams { alpha, ..self }
    }

    pub(crate) fn validate(self) -> Result<(), Error> {
        if !self.margin.is_finite() {
            return Err(Error::InvalidParameter {
                name: "margin",
                expected: "finite",
            });
        }
        if !(self.alpha.is_finite() && self.alpha > 0.0) {
            return Err(Error::InvalidParameter {
                name: "alpha",
                expected: "finite and > 0",
            });
        }
        Ok(())
    }
}

impl Default for ProxyAnchorParams {
    /// [`ProxyAnchorParams::pytorch_metric_learning`].
    fn default() -> Self {
        Self::pytorch_metric_learning()
    }
}

/// Workspace elements that [`proxy_nca_loss`] and [`proxy_nca_loss_grad`] need for `rows`
/// embeddings, `classes` proxies and dimension `dim`: `2 classes dim + 2 classes + 2 dim`
/// (independent of `rows`). Saturates instead of overflowing.
pub const fn proxy_nca_loss_workspace_len(rows: usize, classes: usize, dim: usize) -> usize {
    let _ = rows;
    classes
        .saturating_mul(dim)
        .saturating_mul(2)
        .saturating_add(classes.saturating_mul(2))
        .saturating_add(dim.saturating_mul(2))
}

/// Deprecated name of [`proxy_nca_loss_workspace_len`].
#[deprecated(since = "0.2.0", note = "renamed to `proxy_nca_loss_workspace_len`")]
pub const fn proxy_nca_workspace_len(rows: usize, classes: usize, dim: usize) -> usize {
    proxy_nca_loss_workspace_len(rows, classes, dim)
}

/// Workspace elements that [`proxy_anchor_loss`] and [`proxy_anchor_loss_grad`] need for
/// `rows` embeddings, `classes` proxies and dimension `dim`:
/// `2 classes dim + rows classes + 2 dim`. Saturates instead of overflowing.
pub const fn proxy_anchor_loss_workspace_len(rows: usize, classes: usize, dim: usize) -> usize {
    classes
        .saturating_mul(dim)
        .saturating_mul(2)
        .saturating_add(rows.saturating_mul(classes))
        .saturating_add(dim.saturating_mul(2))
}

/// Deprecated name of [`proxy_anchor_loss_workspace_len`].
#[deprecated(since = "0.2.0", note = "renamed to `proxy_anchor_loss_workspace_len`")]
pub const fn proxy_anchor_workspace_len(rows: usize, classes: usize, dim: usize) -> usize {
    proxy_anchor_loss_workspace_len(rows, classes, dim)
}

/// Shape checks shared by both proxy losses (first half of the documented order).
pub(crate) fn check_proxy_shapes(
    x: &Matrix<'_>,
    labels: &[u32],
    proxies: &Matrix<'_>,
    grads: Option<(usize, usize)>,
    workspace_required: usize,
    workspace: usize,
) -> Result<(), Error> {
    if x.dim() != proxies.dim() {
        return Err(Error::DimensionMismatch {
            left: x.dim(),
            right: proxies.dim(),
        });
    }
    check_labels(x, labels)?;
    if let Some((g, gp)) = grads {
        check_len("grad", x.len(), g)?;
        check_len("grad_proxies", proxies.len(), gp)?;
    }
    check_workspace(workspace_required, workspace)
}

/// Data checks shared by both proxy losses (second half, after the parameters).
pub(crate) fn check_proxy_data(
    x: &Matrix<'_>,
    labels: &[u32],
    proxies: &Matrix<'_>,
) -> Result<(), Error> {
    let bound = proxies.rows();
    if let Some((position, &l)) = labels
        .iter()
        .enumerate()
        .find(|&(_, &l)| l as usize >= bound)
    {
        return Err(Error::IndexOutOfRange {
            buffer: "labels",
            position,
            index: l as usize,
            bound,
        });
    }
    check_finite("x", x.as_slice(), x.dim())?;
    check_finite("proxies", proxies.as_slice(), proxies.dim())
}

/// All argument checks of Proxy-NCA, in the documented order.
pub(crate) fn check_nca(
    x: &Matrix<'_>,
    labels: &[u32],
    proxies: &Matrix<'_>,
    params: ProxyNcaParams,
    grads: Option<(usize, usize)>,
    workspace: usize,
) -> Result<(), Error> {
    let required = proxy_nca_loss_workspace_len(x.rows(), proxies.rows(), x.dim());
    check_proxy_shapes(x, labels, proxies, grads, required, workspace)?;
    params.validate()?;
    check_proxy_data(x, labels, proxies)
}

/// All argument checks of Proxy-Anchor, in the documented order.
pub(crate) fn check_anchor(
    x: &Matrix<'_>,
    labels: &[u32],
    proxies: &Matrix<'_>,
    params: ProxyAnchorParams,
    grads: Option<(usize, usize)>,
    workspace: usize,
) -> Result<(), Error> {
    let required = proxy_anchor_loss_workspace_len(x.rows(), proxies.rows(), x.dim());
    check_proxy_shapes(x, labels, proxies, grads, required, workspace)?;
    params.validate()?;
    check_proxy_data(x, labels, proxies)
}

/// Normalises one row into `out` (as [`crate::l2_normalize`] does for a matrix).
fn normalize_row(backend: Backend, row: &[f32], out: &mut [f32]) -> Result<(), Error> {
    l2_normalize_on(backend, Matrix::new(row, 1, row.len())?, out)
}

/// Backward of [`normalize_row`]: `grad_row = d/d row` from `grad_hat = d/d row^`.
fn normalize_row_backward(
    backend: Backend,
    row: &[f32],
    grad_hat: &[f32],
    grad_row: &mut [f32],
) -> Result<(), Error> {
    l2_normalize_backward_on(backend, Matrix::new(row, 1, row.len())?, grad_hat, grad_row)
}

/// `a.zip(b)` for iterators over rows (`chunks_exact`), without `Zip`'s random-access
/// specialisation: that one's constructor divides each slice length by the chunk size,
/// and where the optimiser keeps the constructor out of line it can no longer see that
/// the size (a matrix dimension) is nonzero, leaving a division-by-zero panic path.
/// Stepping both iterators costs nothing next to the row operation of each step.
#[inline(always)]
fn lockstep<A: IntoIterator, B: IntoIterator>(
    a: A,
    b: B,
) -> impl Iterator<Item = (A::Item, B::Item)> {
    let (mut a, mut b) = (a.into_iter(), b.into_iter());
    core::iter::from_fn(move || Some((a.next()?, b.next()?)))
}

/// Gradient buffers of a `_grad` call.
struct Grads<'g> {
    x: &'g mut [f32],
    proxies: &'g mut [f32],
}

/// Proxy-NCA forward (and backward when `grads` is given); arguments already checked.
fn nca(
    backend: Backend,
    x: &Matrix<'_>,
    labels: &[u32],
    proxies: &Matrix<'_>,
    params: ProxyNcaParams,
    mut grads: Option<Grads<'_>>,
    workspace: &mut [f32],
) -> Result<f32, Error> {
    let (c_count, dim, n) = (proxies.rows(), x.dim(), x.rows());
    let mut ws = Carve::new(workspace);
    let pn = ws.take(proxies.len())?;
    let gpn = ws.take(proxies.len())?;
    let e = ws.take(c_count)?;
    let wsum = ws.take(c_count)?;
    let xn = ws.take(dim)?;
    let gxn = ws.take(dim)?;
    l2_normalize_on(backend, *proxies, pn)?;
    if grads.is_some() {
        gpn.fill(0.0);
        wsum.fill(0.0);
    }
    let s = params.softmax_scale;
    let w_scale = s / n as f32;
    // Per-row terms are summed in f64: each is finite (at most 4 s + ln C), their f32 sum
    // need not be, while the mean is.
    let mut loss = 0.0_f64;
    for (i, (row, &y)) in lockstep(x.row_iter(), labels).enumerate() {
        normalize_row(backend, row, xn)?;
        let mut q_min = f32::INFINITY;
        for (p, ec) in lockstep(pn.chunks_exact(dim), e.iter_mut()) {
            let q = simd::sq_dist(backend, xn, p);
            *ec = q;
            q_min = q_min.min(q);
        }
        let q_y = e.get(y as usize).copied().unwrap_or(q_min);
        let mut z = 0.0_f32;
        for ec in e.iter_mut() {
            *ec = math::exp(-s * (*ec - q_min));
            z += *ec;
        }
        loss += f64::from(s * (q_y - q_min)) + f64::from(math::ln(z));
        let Some(g) = grads.as_mut() else { continue };
        // w_c = d loss / d q_ic = (s / n) (1[c = y] - softmax_c).
        let inv_z = 1.0 / z;
        let mut w_total = 0.0_f32;
        for (c, (ec, ws)) in e.iter_mut().zip(wsum.iter_mut()).enumerate() {
            let target = if c == y as usize { 1.0 } else { 0.0 };
            let w = w_scale * (target - *ec * inv_z);
            *ec = w;
            *ws += w;
            w_total += w;
        }
        // d q_ic / d x^_i = 2 (x^_i - P^_c); d q_ic / d P^_c = 2 (P^_c - x^_i).
        simd::scale_into(backend, 2.0 * w_total, xn, gxn);
        let proxy_rows = lockstep(pn.chunks_exact(dim), gpn.chunks_exact_mut(dim));
        for ((p, gp), &w) in proxy_rows.zip(e.iter()) {
            simd::axpy(backend, -2.0 * w, p, gxn);
            simd::axpy(backend, -2.0 * w, xn, gp);
        }
        if let Some(gx) = g.x.chunks_exact_mut(dim).nth(i) {
            normalize_row_backward(backend, row, gxn, gx)?;
        }
    }
    if let Some(g) = grads {
        let proxy_rows = lockstep(pn.chunks_exact(dim), gpn.chunks_exact_mut(dim));
        for ((p, gp), &w) in proxy_rows.zip(wsum.iter()) {
            simd::axpy(backend, 2.0 * w, p, gp);
        }
        l2_normalize_backward_on(backend, *proxies, gpn, g.proxies)?;
    }
    Ok((loss / n as f64) as f32)
}

/// Proxy-NCA loss (Movshovitz-Attias et al. 2017) of the rows of `x` against
/// caller-held `proxies`, as pytorch-metric-learning's `ProxyNCALoss` computes it. Scalar
/// twin: [`crate::scalar::proxy_nca_loss`]; with gradients: [`proxy_nca_loss_grad`].
///
/// Rows of `x` and of the proxies are L2-normalised (`v / max(|v|, 1e-12)`, a zero row
/// stays zero); with `q_ic = |x^_i - P^_c|^2` and `s = softmax_scale`,
///
/// ```text
/// loss = (1/n) sum_i -ln softmax_c(-s q_i.)[labels[i]]
///      = (1/n) sum_i ( s q_{i,labels[i]} + ln sum_c e^{-s q_ic} )
/// ```
///
/// `labels[i]` is the index of row `i`'s proxy, in `0..proxies.rows()`. `workspace` needs
/// [`proxy_nca_loss_workspace_len`]`(rows, classes, dim)` elements, garbage before and after.
///
/// pytorch-metric-learning drops the rows whose softmax probability underflows to exactly
/// 0 in floating point; this kernel computes the log-softmax directly and keeps them (the
/// two agree whenever no probability underflows).
///
/// # Errors
///
/// In this order:
/// - [`Error::DimensionMismatch`] when `x` and `proxies` have different dimensions;
/// - [`Error::LengthMismatch`] (`"labels"`) when `labels.len() != rows`;
/// - [`Error::WorkspaceTooSmall`] when the workspace is too short;
/// - [`Error::InvalidParameter`] (`"softmax_scale"`) unless it is finite and `> 0`;
/// - [`Error::IndexOutOfRange`] (`"labels"`) for the first label `>= proxies.rows()`;
/// - [`Error::NonFinite`] (`"x"`, then `"proxies"`) for a NaN or infinite element.
///
/// # Numerics
///
/// Per row, the squared distances are shifted by their minimum before exponentiation
/// (a log-sum-exp), so the loss is finite for every finite `softmax_scale` up to
/// `f32::MAX / 4`. Against the `f64` twin, each `q_ic` is within about
/// `(d / 8 + 12) * 2^-24 * 4` and the loss within about
/// `(C + n + d / 8 + 20) * 2^-24 * (s * 4 + ln C)` per row, averaged. Zero rows and zero
/// proxies normalise to zero vectors (`q = 1` against a unit vector).
///
/// # Example
///
/// ```
/// use triplet_kernels::{proxy_nca_loss, proxy_nca_loss_workspace_len, Matrix, ProxyNcaParams};
/// let x = Matrix::new(&[1.0, 0.0, 0.0, 2.0], 2, 2)?;
/// let proxies = Matrix::new(&[3.0, 0.0, 0.0, 1.0], 2, 2)?;
/// let labels = [0, 1]; // each row sits on its own proxy: q = 0 to it, 2 to the other
/// let mut ws = [0.0_f32; proxy_nca_loss_workspace_len(2, 2, 2)];
/// let loss = proxy_nca_loss(x, &labels, proxies, ProxyNcaParams::new(1.0), &mut ws)?;
/// let want = (1.0_f32 + (-2.0_f32).exp()).ln(); // -ln(1 / (1 + e^-2))
/// assert!((loss - want).abs() < 1e-6);
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
    nca(
        Backend::active(),
        &x,
        labels,
        &proxies,
        params,
        None,
        workspace,
    )
}

/// [`proxy_nca_loss`] and its gradients: returns the loss and writes
/// `grad = d loss / d x` (`rows * dim`) and `grad_proxies = d loss / d proxies`
/// (`classes * dim`), every element overwritten. Scalar twin:
/// [`crate::scalar::proxy_nca_loss_grad`].
///
/// With `w_ic = (s / n) (1[c = y_i] - softmax_c(-s q_i.))`, the gradient of the
/// normalised rows is `sum_c 2 w_ic (x^_i - P^_c)` and of the normalised proxies
/// `sum_i 2 w_ic (P^_c - x^_i)`, then chained through the normalisation.
///
/// # Errors
///
/// As [`proxy_nca_loss`], with [`Error::LengthMismatch`] (`"grad"`, then
/// `"grad_proxies"`) checked right after the labels.
///
/// # Numerics
///
/// As [`proxy_nca_loss`]; each gradient element sums `C` (rows) or `n` (proxies) terms in
/// `f32`, error within about `(C + n + d / 4 + 30) * 2^-24` times the sum of their
/// absolute values, divided by the row's norm `r`. Terms below `f32`'s normal range
/// (about `1.2e-38`: a tiny `softmax_scale`, or softmax weights that small) keep only an
/// absolute precision and add about `(3 (n + C) + d + 3) (1 + 1 / r) 2^-150` per element.
/// A zero row or proxy (norm `<= 1e-12`) gets gradients of order `1e12`, the derivative
/// of the clamped normalisation.
///
/// # Example
///
/// ```
/// use triplet_kernels::{proxy_nca_loss_grad, proxy_nca_loss_workspace_len, Matrix, ProxyNcaParams};
/// let x = Matrix::new(&[1.0, 0.0, 0.0, 2.0], 2, 2)?;
/// let proxies = Matrix::new(&[3.0, 0.0, 0.0, 1.0], 2, 2)?;
/// let (mut g, mut gp) = ([0.0_f32; 4], [0.0_f32; 4]);
/// let mut ws = [0.0_f32; proxy_nca_loss_workspace_len(2, 2, 2)];
/// let params = ProxyNcaParams::new(1.0);
/// let loss = proxy_nca_loss_grad(x, &[0, 1], proxies, params, &mut g, &mut gp, &mut ws)?;
/// assert!(loss > 0.0);
/// // Row 0 is pulled away from proxy 1, i.e. its second coordinate decreases.
/// assert!(g[1] > 0.0);
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
    let grads = Grads {
        x: grad,
        proxies: grad_proxies,
    };
    nca(
        Backend::active(),
        &x,
        labels,
        &proxies,
        params,
        Some(grads),
        workspace,
    )
}

/// `ln(1 + sum e^v)` from its shift `m` and the shifted sum `z = e^-m + sum e^(v - m)`.
#[inline]
fn shifted_log1p_sum(m: f32, z: f32) -> f32 {
    m + math::ln(z)
}

/// Proxy-Anchor forward (and backward when `grads` is given); arguments already checked.
fn anchor(
    backend: Backend,
    x: &Matrix<'_>,
    labels: &[u32],
    proxies: &Matrix<'_>,
    params: ProxyAnchorParams,
    grads: Option<Grads<'_>>,
    workspace: &mut [f32],
) -> Result<f32, Error> {
    let (c_count, dim) = (proxies.rows(), x.dim());
    let sim_len = x.rows().saturating_mul(c_count);
    let mut ws = Carve::new(workspace);
    let pn = ws.take(proxies.len())?;
    let gpn = ws.take(proxies.len())?;
    let sim = ws.take(sim_len)?;
    let xn = ws.take(dim)?;
    let gxn = ws.take(dim)?;
    l2_normalize_on(backend, *proxies, pn)?;
    // s_ic = <x^_i, P^_c>, row-major n x C.
    for (row, s_row) in lockstep(x.row_iter(), sim.chunks_exact_mut(c_count)) {
        normalize_row(backend, row, xn)?;
        for (p, s) in lockstep(pn.chunks_exact(dim), s_row.iter_mut()) {
            *s = simd::dot(backend, xn, p);
        }
    }
    let with_pos = (0..c_count)
        .filter(|&c| labels.iter().any(|&l| l as usize == c))
        .count();
    let w_pos = 1.0 / with_pos.max(1) as f32;
    let w_neg = 1.0 / c_count as f32;
    let (alpha, delta) = (params.alpha, params.margin);
    let exponent = |s: f32, positive: bool| {
        if positive {
            -alpha * (s - delta)
        } else {
            alpha * (s + delta)
        }
    };
    // Per-proxy log-sum-exps are summed in f64: each is finite, their f32 sum need not be.
    let (mut pos_loss, mut neg_loss) = (0.0_f64, 0.0_f64);
    for c in 0..c_count {
        // Shift of each log-sum-exp: the largest exponent, or 0 for the `1 +`.
        let (mut m_pos, mut m_neg) = (0.0_f32, 0.0_f32);
        for (&s, &l) in sim.iter().skip(c).step_by(c_count).zip(labels) {
            let positive = l as usize == c;
            let v = exponent(s, positive);
            if positive {
                m_pos = m_pos.max(v);
            } else {
                m_neg = m_neg.max(v);
            }
        }
        let (mut z_pos, mut z_neg) = (math::exp(-m_pos), math::exp(-m_neg));
        for (s, &l) in sim.iter_mut().skip(c).step_by(c_count).zip(labels) {
            let positive = l as usize == c;
            let v = exponent(*s, positive);
            let e = math::exp(v - if positive { m_pos } else { m_neg });
            *s = e;
            if positive {
                z_pos += e;
            } else {
                z_neg += e;
            }
        }
        pos_loss += f64::from(shifted_log1p_sum(m_pos, z_pos));
        neg_loss += f64::from(shifted_log1p_sum(m_neg, z_neg));
        if grads.is_some() {
            // d loss / d s_ic.
            let (g_pos, g_neg) = (-alpha * w_pos / z_pos, alpha * w_neg / z_neg);
            for (s, &l) in sim.iter_mut().skip(c).step_by(c_count).zip(labels) {
                *s *= if l as usize == c { g_pos } else { g_neg };
            }
        }
    }
    let loss = (f64::from(w_pos) * pos_loss + f64::from(w_neg) * neg_loss) as f32;
    let Some(g) = grads else { return Ok(loss) };
    gpn.fill(0.0);
    let rows = lockstep(x.row_iter(), sim.chunks_exact(c_count));
    for ((row, g_row), gx) in lockstep(rows, g.x.chunks_exact_mut(dim)) {
        normalize_row(backend, row, xn)?;
        gxn.fill(0.0);
        let proxy_rows = lockstep(pn.chunks_exact(dim), gpn.chunks_exact_mut(dim));
        for ((p, gp), &gs) in proxy_rows.zip(g_row) {
            simd::axpy(backend, gs, p, gxn);
            simd::axpy(backend, gs, xn, gp);
        }
        normalize_row_backward(backend, row, gxn, gx)?;
    }
    l2_normalize_backward_on(backend, *proxies, gpn, g.proxies)?;
    Ok(loss)
}

/// Proxy-Anchor loss (Kim et al., CVPR 2020) of the rows of `x` against caller-held
/// `proxies`, as pytorch-metric-learning's `ProxyAnchorLoss` computes it. Scalar twin:
/// [`crate::scalar::proxy_anchor_loss`]; with gradients: [`proxy_anchor_loss_grad`].
///
/// With the cosine similarity `s_ic = cos(x_i, P_c)` (norms clamped below at `1e-12`, so a
/// zero row has similarity 0 with everything), `delta = margin`, and `P+` the proxies with
/// at least one row in the batch,
///
/// ```text
/// loss = (1/|P+|) sum_{c in P+} ln(1 + sum_{i: y_i = c}  e^{-alpha (s_ic - delta)})
///      + (1/C)    sum_{c}       ln(1 + sum_{i: y_i != c} e^{ alpha (s_ic + delta)})
/// ```
///
/// `labels[i]` is the index of row `i`'s proxy, in `0..proxies.rows()`. The positive part
/// is averaged over the proxies that have at least one row in the batch, the negative part
/// over all `C` proxies. `workspace` needs [`proxy_anchor_loss_workspace_len`]`(rows, classes,
/// dim)` elements, garbage before and after.
///
/// # Errors
///
/// In this order:
/// - [`Error::DimensionMismatch`] when `x` and `proxies` have different dimensions;
/// - [`Error::LengthMismatch`] (`"labels"`) when `labels.len() != rows`;
/// - [`Error::WorkspaceTooSmall`] when the workspace is too short;
/// - [`Error::InvalidParameter`] (`"margin"`) when the margin is NaN or infinite,
///   (`"alpha"`) unless `alpha` is finite and `> 0`;
/// - [`Error::IndexOutOfRange`] (`"labels"`) for the first label `>= proxies.rows()`;
/// - [`Error::NonFinite`] (`"x"`, then `"proxies"`) for a NaN or infinite element.
///
/// # Numerics
///
/// Each of the `2 C` log-sum-exps is shifted by its largest exponent (or 0) and their sums
/// are taken in `f64`, so the loss is finite whenever `2 (alpha (1 + |margin|) + ln(n + 1))`
/// is below `f32::MAX` (each part is at most half of that). Against the `f64` twin, each similarity
/// is within about `(d / 8 + 12) * 2^-24`, and the loss within about
/// `(n + C + d / 8 + 20) * 2^-24 * alpha (1 + |margin|)`. Zero rows and zero proxies have
/// similarity 0 with everything.
///
/// # Example
///
/// ```
/// use triplet_kernels::{proxy_anchor_loss, proxy_anchor_loss_workspace_len, Matrix, ProxyAnchorParams};
/// let x = Matrix::new(&[1.0, 0.0], 1, 2)?;
/// let proxies = Matrix::new(&[2.0, 0.0, 0.0, 5.0], 2, 2)?;
/// let mut ws = [0.0_f32; proxy_anchor_loss_workspace_len(1, 2, 2)];
/// let params = ProxyAnchorParams::new(0.1, 32.0);
/// let loss = proxy_anchor_loss(x, &[0], proxies, params, &mut ws)?;
/// // s = 1 with proxy 0 (positive), s = 0 with proxy 1 (negative, one of C = 2 proxies).
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
    anchor(
        Backend::active(),
        &x,
        labels,
        &proxies,
        params,
        None,
        workspace,
    )
}

/// [`proxy_anchor_loss`] and its gradients: returns the loss and writes
/// `grad = d loss / d x` (`rows * dim`) and `grad_proxies = d loss / d proxies`
/// (`classes * dim`), every element overwritten. Scalar twin:
/// [`crate::scalar::proxy_anchor_loss_grad`].
///
/// `d loss / d s_ic` is `-alpha / |P+|` times the softmax weight of row `i` in proxy
/// `c`'s positive log-sum-exp (the `1 +` counting as one more entry) for a positive pair,
/// `alpha / C` times its weight in the negative one otherwise; chained through the
/// cosine similarity of the clamped-normalised rows.
///
/// # Errors
///
/// As [`proxy_anchor_loss`], with [`Error::LengthMismatch`] (`"grad"`, then
/// `"grad_proxies"`) checked right after the labels.
///
/// # Numerics
///
/// As [`proxy_anchor_loss`]; each gradient element sums `C` (rows) or `n` (proxies)
/// terms in `f32`, error within about `(C + n + d / 4 + 30) * 2^-24` times the sum of
/// their absolute values, divided by the row's norm `r`. Terms below `f32`'s normal range
/// (about `1.2e-38`: a tiny `alpha`, or softmax weights that small) keep only an absolute
/// precision and add about `(3 (n + C) + d + 3) (1 + 1 / r) 2^-150` per element. A zero
/// row or proxy (norm `<= 1e-12`) gets gradients of order `1e12`, the derivative of the
/// clamped normalisation.
///
/// # Example
///
/// ```
/// use triplet_kernels::{
///     proxy_anchor_loss_grad, proxy_anchor_loss_workspace_len, Matrix, ProxyAnchorParams,
/// };
/// let x = Matrix::new(&[1.0, 1.0], 1, 2)?;
/// let proxies = Matrix::new(&[1.0, 0.0, 0.0, 1.0], 2, 2)?;
/// let (mut g, mut gp) = ([0.0_f32; 2], [0.0_f32; 4]);
/// let mut ws = [0.0_f32; proxy_anchor_loss_workspace_len(1, 2, 2)];
/// let params = ProxyAnchorParams::pytorch_metric_learning();
/// proxy_anchor_loss_grad(x, &[0], proxies, params, &mut g, &mut gp, &mut ws)?;
/// // The row is pulled towards proxy 0 (first axis) and away from proxy 1 (second).
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
    let grads = Grads {
        x: grad,
        proxies: grad_proxies,
    };
    anchor(
        Backend::active(),
        &x,
        labels,
        &proxies,
        params,
        Some(grads),
        workspace,
    )
}
