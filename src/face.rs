//! Face-recognition heads with caller-held class weights: ArcFace (Deng et al., CVPR 2019)
//! and CosFace (Wang et al., CVPR 2018), with gradients with respect to the embeddings
//! **and** the class weights.
//!
//! The class weights are a `C x dim` [`Matrix`] `W`, one row per class (the proxies of
//! [`crate::proxy`]; pytorch-metric-learning stores their transpose); `labels[i]` is row
//! `i`'s class in `0..C`. With the cosine similarity `c_ij = <x_i, W_j> / (max(|x_i|, eps)
//! max(|W_j|, eps))` (`eps = 1e-12`), scale `s` and `t = labels[i]`, every logit is
//! `s c_ij` except the target one, `s f(c_it)`:
//!
//! ```text
//! ArcFace:  f(c) = cos(acos(c) + m)         when acos(c) <= pi - m   (m in radians)
//!                = c - m sin(m)              otherwise (keeps f decreasing past pi - m)
//! CosFace:  f(c) = c - m
//! loss = (1/n) sum_i ( ln sum_j e^{z_ij} - z_it ),   z_ij = s c_ij (j != t), z_it = s f(c_it)
//! ```
//!
//! as pytorch-metric-learning's `ArcFaceLoss` and `CosFaceLoss` compute them. ArcFace's
//! `acos` takes `c` clamped to `[-1, 1]`, and the clamp passes the gradient only strictly
//! inside (at `|c| >= 1` the target's derivative is taken as 0, where `acos` has none);
//! `cos(acos(c) + m)` is evaluated as `c cos(m) - sqrt((1 - c)(1 + c)) sin(m)`.
//!
//! # Algorithm
//!
//! The class weights are normalised once into the workspace; the rows go in blocks of up
//! to 64: each block is normalised, its `block x C` cosines come from the packed
//! register-blocked microkernel of [`crate::cross_distances`] (as negated inner products
//! of the normalised rows), and each row's log-sum-exp is shifted by its largest logit.
//! For the gradient, `g_ij = d loss / d c_ij = (s / n) (p_ij - [j = t]) (f'(c_it) for j =
//! t)`, `p_i = softmax(z_i)`, overwrites the block's cosines; two register-blocked
//! products give `G W^` (the block's normalised rows) and add `G^T X^` to the normalised
//! weights' gradient; both are chained through the normalisations, as
//! [`crate::l2_normalize_backward`]. Memory: the workspace holds the normalised weights
//! and their gradient, one block of cosines and the packed rows, never the `n x C`
//! matrix; see [`arcface_loss_workspace_len`].

use crate::distance::{
    cross_distances_rows_workspace_len, cross_tile_on, gemm_acc, l2_normalize_backward_on,
    l2_normalize_on, DistanceMode, Metric, GEMM_MR,
};
use crate::error::Error;
use crate::math;
use crate::matrix::Matrix;
use crate::proxy::{check_proxy_data, check_proxy_shapes};
use crate::simd::{Backend, Kernel, Simd, MAX_LANES};
use crate::workspace::{max_len, min_len, Carve};

/// Rows per block.
const ROW_BLOCK: usize = 64;

/// Parameters of [`arcface_loss`].
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub struct ArcFaceParams {
    /// Additive angular margin `m`, in degrees; finite, in `[0, 180)`.
    pub margin_degrees: f32,
    /// Scale `s` of the logits; finite and `> 0`.
    pub scale: f32,
}

impl ArcFaceParams {
    /// pytorch-metric-learning's `ArcFaceLoss` default: margin 28.6 degrees (0.5 rad),
    /// scale 64.
    pub const fn pytorch_metric_learning() -> Self {
        Self::new(28.6, 64.0)
    }

    /// ArcFace with the given margin (degrees) and scale.
    pub const fn new(margin_degrees: f32, scale: f32) -> Self {
        ArcFaceParams {
            margin_degrees,
            scale,
        }
    }

    /// The same parameters with another margin (degrees).
    #[must_use]
    pub const fn with_margin_degrees(mut self, margin_degrees: f32) -> Self {
        self.margin_degrees = margin_degrees;
        self
    }

    /// The same parameters with another scale.
    #[must_use]
    pub const fn with_scale(mut self, scale: f32) -> Self {
        self.scale = scale;
        self
    }

    fn validate(self) -> Result<Head, Error> {
        let m = self.margin_degrees;
        if !(m.is_finite() && (0.0..180.0).contains(&m)) {
            return Err(Error::InvalidParameter {
                name: "margin_degrees",
                expected: "finite, in [0, 180)",
            });
        }
        check_scale(self.scale)?;
        let m = f64::from(m) * core::f64::consts::PI / 180.0;
        let (sin_m, cos_m) = (libm::sin(m), libm::cos(m));
        Ok(Head::Arc {
            cos_m,
            sin_m,
            // acos(c) <= pi - m  <=>  c >= cos(pi - m) = -cos(m).
            bound: -cos_m,
            fallback: m * sin_m,
        })
    }
}

impl Default for ArcFaceParams {
    /// [`ArcFaceParams::pytorch_metric_learning`].
    fn default() -> Self {
        Self::pytorch_metric_learning()
    }
}

/// Parameters of [`cosface_loss`].
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub struct CosFaceParams {
    /// Additive cosine margin `m`; finite.
    pub margin: f32,
    /// Scale `s` of the logits; finite and `> 0`.
    pub scale: f32,
}

impl CosFaceParams {
    /// pytorch-metric-learning's `CosFaceLoss` default: margin 0.35, scale 64.
    pub const fn pytorch_metric_learning() -> Self {
        Self::new(0.35, 64.0)
    }

    /// CosFace with the given margin and scale.
    pub const fn new(margin: f32, scale: f32) -> Self {
        CosFaceParams { margin, scale }
    }

    /// The same parameters with another margin.
    #[must_use]
    pub const fn with_margin(mut self, margin: f32) -> Self {
        self.margin = margin;
        self
    }

    /// The same parameters with another scale.
    #[must_use]
    pub const fn with_scale(mut self, scale: f32) -> Self {
        self.scale = scale;
        self
    }

    fn validate(self) -> Result<Head, Error> {
        if !self.margin.is_finite() {
            return Err(Error::InvalidParameter {
                name: "margin",
                expected: "finite",
            });
        }
        check_scale(self.scale)?;
        Ok(Head::Cos {
            margin: self.margin,
        })
    }
}

impl Default for CosFaceParams {
    /// [`CosFaceParams::pytorch_metric_learning`].
    fn default() -> Self {
        Self::pytorch_metric_learning()
    }
}

fn check_scale(scale: f32) -> Result<(), Error> {
    if scale.is_finite() && scale > 0.0 {
        Ok(())
    } else {
        Err(Error::InvalidParameter {
            name: "scale",
            expected: "finite and > 0",
        })
    }
}

/// The target logit's margin function `f` of both heads.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Head {
    Arc {
        cos_m: f64,
        sin_m: f64,
        /// `-cos(m)`: `f`'s first branch holds for `c >= bound`.
        bound: f64,
        /// `m sin(m)`.
        fallback: f64,
    },
    Cos {
        margin: f32,
    },
}

impl Head {
    /// `(f(c), f'(c))`.
    #[inline]
    fn target(self, c: f32) -> (f32, f32) {
        match self {
            Head::Arc {
                cos_m,
                sin_m,
                bound,
                fallback,
            } => {
                let (cos_m, sin_m) = (cos_m as f32, sin_m as f32);
                if c >= bound as f32 {
                    let cc = c.clamp(-1.0, 1.0);
                    let sin_t = math::sqrt(((1.0 - cc) * (1.0 + cc)).max(0.0));
                    let f = cc * cos_m - sin_t * sin_m;
                    let df = if c.abs() < 1.0 && sin_t > 0.0 {
                        cos_m + sin_m * cc / sin_t
                    } else {
                        0.0
                    };
                    (f, df)
                } else {
                    (c - fallback as f32, 1.0)
                }
            }
            Head::Cos { margin } => (c - margin, 1.0),
        }
    }
}

/// Workspace elements that [`arcface_loss`], [`arcface_loss_grad`], [`cosface_loss`] and
/// [`cosface_loss_grad`] need for `rows` embeddings, `classes` class weights and dimension
/// `dim`: with `b = min(rows, 64)`, `2 classes dim + 2 b dim + b classes +
/// max(classes, b) 4 +` [`crate::cross_distances_rows_workspace_len`]`(b, classes, dim)`
/// (the normalised weights and their gradient, one block of normalised rows and their
/// gradient, one block of cosines, packed coefficients and the packed rows of the
/// microkernel): linear in `classes dim`, never `rows x classes`. Saturates instead of
/// overflowing.
pub const fn arcface_loss_workspace_len(rows: usize, classes: usize, dim: usize) -> usize {
    let b = min_len(rows, ROW_BLOCK);
    classes
        .saturating_mul(dim)
        .saturating_mul(2)
        .saturating_add(b.saturating_mul(dim).saturating_mul(2))
        .saturating_add(b.saturating_mul(classes))
        .saturating_add(max_len(classes, b).saturating_mul(GEMM_MR))
        .saturating_add(cross_distances_rows_workspace_len(b, classes, dim))
}

/// Workspace elements of the CosFace kernels: as [`arcface_loss_workspace_len`].
pub const fn cosface_loss_workspace_len(rows: usize, classes: usize, dim: usize) -> usize {
    arcface_loss_workspace_len(rows, classes, dim)
}

/// All argument checks, in the documented order; returns the head.
pub(crate) fn check_head(
    x: &Matrix<'_>,
    labels: &[u32],
    weights: &Matrix<'_>,
    head: Result<Head, Error>,
    grads: Option<(usize, usize)>,
    workspace: usize,
) -> Result<Head, Error> {
    let required = arcface_loss_workspace_len(x.rows(), weights.rows(), x.dim());
    check_proxy_shapes(x, labels, weights, grads, required, workspace)?;
    let head = head?;
    check_proxy_data(x, labels, weights)?;
    Ok(head)
}

/// `out += coef B` through [`gemm_acc`] (see there for the strides).
struct Product<'a> {
    coef: &'a [f32],
    rs: usize,
    cs: usize,
    b: &'a [f32],
    d: usize,
    out: &'a mut [f32],
    cpack: &'a mut [f32],
}

impl Kernel for Product<'_> {
    type Output = ();
    #[inline(always)]
    fn run<S: Simd, const MR: usize, const NV: usize>(self, s: S) {
        gemm_acc(
            s, self.coef, self.rs, self.cs, self.b, self.d, self.out, self.cpack,
        );
    }
}

/// Each row of a block of negated cosines into its loss term and, when `grad_scale` (`s /
/// n`) is given, into `d loss / d c_ij` in place: the logits, their largest value, the
/// shifted exponentials ([`math::exp_poly`], elementwise so the loop vectorises) and
/// their sum in vector lanes. Returns the block's summed row losses.
struct Softmax<'a> {
    cos: &'a mut [f32],
    classes: usize,
    labels: &'a [u32],
    head: Head,
    scale: f32,
    grad_scale: Option<f32>,
}

impl Kernel for Softmax<'_> {
    type Output = f64;
    #[inline(always)]
    fn run<S: Simd, const MR: usize, const NV: usize>(self, s: S) -> f64 {
        let Self {
            cos,
            classes,
            labels,
            head,
            scale,
            grad_scale,
        } = self;
        let l = S::LANES;
        let mut total = 0.0_f64;
        if classes == 0 || l == 0 || l > MAX_LANES {
            return total;
        }
        for (row, &t) in cos.chunks_exact_mut(classes).zip(labels) {
            let t = t as usize;
            for v in row.iter_mut() {
                *v = -*v;
            }
            let Some(c_t) = row.get_mut(t) else {
                continue;
            };
            // The target's cosine becomes `f(c_t)`: every logit is then `s row_j`.
            let (f, df) = head.target(*c_t);
            *c_t = f;
            let z_t = scale * f;
            // Largest logit (`s > 0`, so the largest entry of the row).
            let mut vmax = s.splat(f);
            let mut chunks = row.chunks_exact(l);
            for c in chunks.by_ref() {
                vmax = s.max(vmax, s.load(c));
            }
            let mut lanes = [f; MAX_LANES];
            s.store(vmax, &mut lanes);
            let mut top = f;
            for &x in lanes.iter().take(l).chain(chunks.remainder()) {
                top = top.max(x);
            }
            let m = scale * top;
            for v in row.iter_mut() {
                *v = math::exp_poly(scale * *v - m);
            }
            let mut vsum = s.zero();
            let mut chunks = row.chunks_exact(l);
            for c in chunks.by_ref() {
                vsum = s.add(vsum, s.load(c));
            }
            let mut z = s.reduce_add(vsum);
            for &x in chunks.remainder() {
                z += x;
            }
            total += f64::from(m + math::ln(z) - z_t);
            if let Some(gs) = grad_scale {
                // d loss / d c_ij = (s / n) (p_ij - [j = t]) (f'(c_it) for j = t).
                let w = gs / z;
                for v in row.iter_mut() {
                    *v *= w;
                }
                if let Some(v) = row.get_mut(t) {
                    *v = (*v - gs) * df;
                }
            }
        }
        total
    }
}

/// The shared forward (and backward when `grads` is given) of both heads; arguments
/// already checked.
#[allow(clippy::too_many_arguments)]
fn heads(
    backend: Backend,
    x: &Matrix<'_>,
    labels: &[u32],
    weights: &Matrix<'_>,
    head: Head,
    scale: f32,
    grads: Option<(&mut [f32], &mut [f32])>,
    workspace: &mut [f32],
) -> Result<f32, Error> {
    let (n, c_count, d) = (x.rows(), weights.rows(), x.dim());
    let b = min_len(n, ROW_BLOCK);
    let mut ws = Carve::new(workspace);
    let wn = ws.take(weights.len())?;
    let gwn = ws.take(weights.len())?;
    let xb = ws.take(b * d)?;
    let gxb = ws.take(b * d)?;
    let cos = ws.take(b * c_count)?;
    let cpack = ws.take(max_len(c_count, b) * GEMM_MR)?;
    let pack = ws.rest();
    l2_normalize_on(backend, *weights, wn)?;
    let wm = Matrix::new(wn, c_count, d)?;
    let want_grad = grads.is_some();
    let (mut gx_out, gw_out) = match grads {
        Some((g, gp)) => (Some(g), Some(gp)),
        None => (None, None),
    };
    gwn.fill(0.0);
    let inv_n = 1.0 / n as f32;
    let mut total = 0.0_f64;
    let mut r0 = 0;
    while r0 < n {
        let r1 = min_len(r0 + b, n);
        let rb = r1 - r0;
        let rows = x.sub_rows(r0, r1)?;
        let xb = xb.get_mut(..rb * d).unwrap_or_default();
        l2_normalize_on(backend, rows, xb)?;
        let xm = Matrix::new(xb, rb, d)?;
        let cos = cos.get_mut(..rb * c_count).unwrap_or_default();
        // `-<x^_i, W^_j>`, then negated: the cosines.
        cross_tile_on(
            backend,
            xm,
            0..rb,
            wm,
            Metric::SquaredEuclidean,
            DistanceMode::Gram,
            true,
            cos,
            pack,
        );
        total += backend.dispatch(Softmax {
            cos: &mut *cos,
            classes: c_count,
            labels: labels.get(r0..r1).unwrap_or_default(),
            head,
            scale,
            grad_scale: if want_grad { Some(scale * inv_n) } else { None },
        });
        if let Some(gx) = gx_out.as_deref_mut() {
            let gxb = gxb.get_mut(..rb * d).unwrap_or_default();
            gxb.fill(0.0);
            backend.dispatch(Product {
                coef: cos,
                rs: c_count,
                cs: 1,
                b: wn,
                d,
                out: gxb,
                cpack: &mut *cpack,
            });
            backend.dispatch(Product {
                coef: cos,
                rs: 1,
                cs: c_count,
                b: xb,
                d,
                out: &mut *gwn,
                cpack: &mut *cpack,
            });
            let g = gx.get_mut(r0 * d..r1 * d).unwrap_or_default();
            l2_normalize_backward_on(backend, rows, gxb, g)?;
        }
        r0 = r1;
    }
    if let Some(gp) = gw_out {
        l2_normalize_backward_on(backend, *weights, gwn, gp)?;
    }
    Ok((total / n as f64) as f32)
}

/// ArcFace loss (Deng et al., CVPR 2019) of the rows of `x` against caller-held class
/// weights `weights` (`C x dim`), as pytorch-metric-learning's `ArcFaceLoss` computes it;
/// see the [module docs](self) for the formula. Scalar twin:
/// [`crate::scalar::arcface_loss`]; with gradients: [`arcface_loss_grad`].
///
/// `labels[i]` is row `i`'s class, in `0..C`. `workspace` needs
/// [`arcface_loss_workspace_len`]`(rows, classes, dim)` elements, garbage before and after.
///
/// # Errors
///
/// In this order:
/// - [`Error::DimensionMismatch`] when `x` and `weights` have different dimensions;
/// - [`Error::LengthMismatch`] (`"labels"`) when `labels.len() != rows`;
/// - [`Error::WorkspaceTooSmall`] when the workspace is too short;
/// - [`Error::InvalidParameter`] (`"margin_degrees"`) unless it is finite and in
///   `[0, 180)`, (`"scale"`) unless the scale is finite and `> 0`;
/// - [`Error::IndexOutOfRange`] (`"labels"`) for the first label `>= C`;
/// - [`Error::NonFinite`] (`"x"`, then `"proxies"`) for a NaN or infinite element.
///
/// # Numerics
///
/// Each row's log-sum-exp is shifted by its largest logit and the per-row losses are
/// summed in `f64`, so the loss is finite for any finite scale below `f32::MAX / 4` and
/// any number of classes: at scale 64 and `C = 10^5` the logits span at most 128 + ln C.
/// Each cosine is within about `(d + 8) 2^-24` of the exact one; the loss within about
/// `s (d + 12) 2^-24 + (C + 4) 2^-24 ln C` per row, plus, for ArcFace, the conditioning of
/// `f` near `|c| = 1`, where `f'` grows like `1 / sqrt(1 - c^2)`.
///
/// # Example
///
/// ```
/// use triplet_kernels::{arcface_loss, arcface_loss_workspace_len, ArcFaceParams, Matrix};
/// // Two rows, each exactly on its own class's weight row.
/// let x = Matrix::new(&[1.0, 0.0, 0.0, 2.0], 2, 2)?;
/// let w = Matrix::new(&[3.0, 0.0, 0.0, 1.0], 2, 2)?;
/// let mut ws = vec![0.0_f32; arcface_loss_workspace_len(2, 2, 2)];
/// let p = ArcFaceParams::new(30.0, 10.0);
/// let loss = arcface_loss(x, &[0, 1], w, p, &mut ws)?;
/// // Target logit 10 cos(30 deg), the other 10 cos(90 deg) = 0.
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
    let head = check_head(
        &x,
        labels,
        &weights,
        params.validate(),
        None,
        workspace.len(),
    )?;
    let backend = Backend::active();
    heads(
        backend,
        &x,
        labels,
        &weights,
        head,
        params.scale,
        None,
        workspace,
    )
}

/// [`arcface_loss`] and its gradients: returns the loss and writes `grad = d loss / d x`
/// (`rows * dim`) and `grad_weights = d loss / d weights` (`classes * dim`, classes without
/// rows included: they get a gradient through the softmax), every element overwritten.
/// Scalar twin: [`crate::scalar::arcface_loss_grad`].
///
/// # Errors
///
/// As [`arcface_loss`], with [`Error::LengthMismatch`] (`"grad"`, then `"grad_proxies"`)
/// checked right after the labels.
///
/// # Numerics
///
/// As [`arcface_loss`]; each element of `grad` sums `C` and of `grad_weights` `n` terms
/// in `f32` through the products, then the normalisations' backward.
///
/// # Example
///
/// ```
/// use triplet_kernels::{arcface_loss_grad, arcface_loss_workspace_len, ArcFaceParams, Matrix};
/// let x = Matrix::new(&[1.0, 0.2, 0.1, 1.0], 2, 2)?;
/// let w = Matrix::new(&[1.0, 0.0, 0.0, 1.0, -1.0, 0.0], 3, 2)?;
/// let (mut g, mut gw) = ([0.0_f32; 4], [0.0_f32; 6]);
/// let mut ws = vec![0.0_f32; arcface_loss_workspace_len(2, 3, 2)];
/// // pml's margin at a small scale (at scale 64 this easy batch has a loss of 0 in f32).
/// let p = ArcFaceParams::pytorch_metric_learning().with_scale(4.0);
/// let loss = arcface_loss_grad(x, &[0, 1], w, p, &mut g, &mut gw, &mut ws)?;
/// assert!(loss > 0.0);
/// // Row 0 is pulled toward class 0: its second coordinate should shrink.
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
    let lens = Some((grad.len(), grad_weights.len()));
    let head = check_head(
        &x,
        labels,
        &weights,
        params.validate(),
        lens,
        workspace.len(),
    )?;
    let backend = Backend::active();
    let grads = Some((grad, grad_weights));
    heads(
        backend,
        &x,
        labels,
        &weights,
        head,
        params.scale,
        grads,
        workspace,
    )
}

/// CosFace loss (Wang et al., CVPR 2018) of the rows of `x` against caller-held class
/// weights, as pytorch-metric-learning's `CosFaceLoss` computes it: the target logit is
/// `s (c_it - m)`; see the [module docs](self). Scalar twin:
/// [`crate::scalar::cosface_loss`]; with gradients: [`cosface_loss_grad`].
///
/// `workspace` needs [`cosface_loss_workspace_len`]`(rows, classes, dim)` elements.
///
/// # Errors
///
/// As [`arcface_loss`], with (`"margin"`) unless the margin is finite.
///
/// # Numerics
///
/// As [`arcface_loss`], without ArcFace's conditioning near `|c| = 1`.
///
/// # Example
///
/// ```
/// use triplet_kernels::{cosface_loss, cosface_loss_workspace_len, CosFaceParams, Matrix};
/// let x = Matrix::new(&[1.0, 0.0], 1, 2)?;
/// let w = Matrix::new(&[2.0, 0.0, 0.0, 1.0], 2, 2)?;
/// let mut ws = vec![0.0_f32; cosface_loss_workspace_len(1, 2, 2)];
/// let loss = cosface_loss(x, &[0], w, CosFaceParams::new(0.35, 10.0), &mut ws)?;
/// let z = 10.0 * (1.0 - 0.35_f32); // target logit; the other is 10 * 0
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
    let head = check_head(
        &x,
        labels,
        &weights,
        params.validate(),
        None,
        workspace.len(),
    )?;
    let backend = Backend::active();
    heads(
        backend,
        &x,
        labels,
        &weights,
        head,
        params.scale,
        None,
        workspace,
    )
}

/// [`cosface_loss`] and its gradients, as [`arcface_loss_grad`] for ArcFace. Scalar twin:
/// [`crate::scalar::cosface_loss_grad`].
///
/// # Errors
///
/// As [`cosface_loss`], with [`Error::LengthMismatch`] (`"grad"`, then `"grad_proxies"`)
/// checked right after the labels.
///
/// # Example
///
/// ```
/// use triplet_kernels::{cosface_loss_grad, cosface_loss_workspace_len, CosFaceParams, Matrix};
/// let x = Matrix::new(&[1.0, 0.2, 0.1, 1.0], 2, 2)?;
/// let w = Matrix::new(&[1.0, 0.0, 0.0, 1.0], 2, 2)?;
/// let (mut g, mut gw) = ([0.0_f32; 4], [0.0_f32; 4]);
/// let mut ws = vec![0.0_f32; cosface_loss_workspace_len(2, 2, 2)];
/// let p = CosFaceParams::pytorch_metric_learning().with_scale(4.0);
/// let loss = cosface_loss_grad(x, &[0, 1], w, p, &mut g, &mut gw, &mut ws)?;
/// assert!(loss > 0.0 && g[1] > 0.0);
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
    let lens = Some((grad.len(), grad_weights.len()));
    let head = check_head(
        &x,
        labels,
        &weights,
        params.validate(),
        lens,
        workspace.len(),
    )?;
    let backend = Backend::active();
    let grads = Some((grad, grad_weights));
    heads(
        backend,
        &x,
        labels,
        &weights,
        head,
        params.scale,
        grads,
        workspace,
    )
}

/// The `(f(c), f'(c))` of a head in `f64`, for the twins.
pub(crate) fn target64(head: Head, c: f64) -> (f64, f64) {
    match head {
        Head::Arc {
            cos_m,
            sin_m,
            bound,
            fallback,
        } => {
            if c >= bound {
                let cc = c.clamp(-1.0, 1.0);
                let sin_t = libm::sqrt(((1.0 - cc) * (1.0 + cc)).max(0.0));
                let df = if c.abs() < 1.0 && sin_t > 0.0 {
                    cos_m + sin_m * cc / sin_t
                } else {
                    0.0
                };
                (cc * cos_m - sin_t * sin_m, df)
            } else {
                (c - fallback, 1.0)
            }
        }
        Head::Cos { margin } => (c - f64::from(margin), 1.0),
    }
}

/// The head of validated parameters, for the twins.
pub(crate) fn arc_head(params: ArcFaceParams) -> Result<Head, Error> {
    params.validate()
}

/// The head of validated parameters, for the twins.
pub(crate) fn cos_head(params: CosFaceParams) -> Result<Head, Error> {
    params.validate()
}
