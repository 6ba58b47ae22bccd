//! The triplet margin loss over caller-given triplets ([`triplet_margin_loss`]) and its
//! gradient: each triplet's two or three distances computed pair by pair in the direct
//! form, with PyTorch's difference shift `eps` and distance swap (see the
//! [family docs](super)).

use super::{check_triplet_args, finish_grad, TripletParams};
use crate::distance::{clamped_row_norms, distance, euclidean_from_sq, pair_grad_rows, Metric};
use crate::error::Error;
use crate::matrix::Matrix;
use crate::mining::Triplet;
use crate::simd::{self, Backend};
use crate::validate::{check_len, check_rows};

/// Workspace elements that [`triplet_margin_loss`] and [`triplet_margin_loss_grad`] need
/// for `rows` embeddings of dimension `dim` (the row norms): `rows`. Saturates instead of
/// overflowing.
pub const fn triplet_margin_loss_workspace_len(rows: usize, dim: usize) -> usize {
    let _ = dim;
    rows
}

/// Deprecated name of [`triplet_margin_loss_workspace_len`].
#[deprecated(
    since = "0.2.0",
    note = "renamed to `triplet_margin_loss_workspace_len`"
)]
pub const fn triplet_margin_workspace_len(rows: usize, dim: usize) -> usize {
    triplet_margin_loss_workspace_len(rows, dim)
}

/// `d(a, b)` with the optional difference shift `eps` (Euclidean metrics only).
#[inline]
fn distance_eps(
    backend: Backend,
    metric: Metric,
    a: &[f32],
    b: &[f32],
    na: f32,
    nb: f32,
    eps: f32,
) -> f32 {
    if eps == 0.0 {
        return distance(backend, metric, a, b, na, nb);
    }
    match metric {
        Metric::SquaredEuclidean => simd::sq_dist_offset(backend, a, b, eps),
        Metric::Euclidean => euclidean_from_sq(simd::sq_dist_offset(backend, a, b, eps), a, b, eps),
        Metric::Cosine => distance(backend, metric, a, b, na, nb),
    }
}

/// The shared body of the explicit-triplet losses; `grad` is `None` for the forward pass.
fn triplet_margin_impl(
    x: Matrix<'_>,
    triplets: &[Triplet],
    params: &TripletParams,
    terms: &mut [f32],
    mut grad: Option<&mut [f32]>,
    workspace: &mut [f32],
) -> Result<f32, Error> {
    let n = check_triplet_args(&x, triplets, params, terms.len(), workspace.len())?;
    if let Some(g) = grad.as_deref() {
        check_len("grad", x.len(), g.len())?;
    }
    check_rows(&x, false)?;
    // Read once: every distance and gradient update of this call uses it.
    let backend = Backend::active();
    let norms = workspace.split_at_mut(n).0;
    if params.metric == Metric::Cosine {
        clamped_row_norms(backend, &x, norms);
    }
    if let Some(g) = grad.as_deref_mut() {
        g.fill(0.0);
    }
    let (metric, eps) = (params.metric, params.eps);
    let mut sum = 0.0_f64;
    let mut active = 0_usize;
    for (t, term) in triplets.iter().zip(terms.iter_mut()) {
        let (ia, ip, iq) = (t.anchor as usize, t.positive as usize, t.negative as usize);
        let (Some(a), Some(p), Some(q)) = (x.row(ia), x.row(ip), x.row(iq)) else {
            continue;
        };
        let nrm = |i: usize| norms.get(i).copied().unwrap_or(1.0);
        let dap = distance_eps(backend, metric, a, p, nrm(ia), nrm(ip), eps);
        let dan = distance_eps(backend, metric, a, q, nrm(ia), nrm(iq), eps);
        // (distance, first row, second row) of the negative distance actually used.
        let mut neg = (dan, ia, iq);
        if params.swap {
            let dpn = distance_eps(backend, metric, p, q, nrm(ip), nrm(iq), eps);
            if dpn < dan {
                neg = (dpn, ip, iq);
            }
        }
        let v = dap - neg.0 + params.margin;
        let h = params.hinge.apply(v);
        *term = h;
        sum += f64::from(h);
        active += usize::from(params.hinge.is_active(v));
        if let Some(g) = grad.as_deref_mut() {
            let s = params.hinge.slope(v);
            if s != 0.0 {
                let nrm = |i: usize| norms.get(i).copied().unwrap_or(1.0);
                let (i, j) = (neg.1, neg.2);
                pair_grad_rows(
                    backend,
                    metric,
                    &x,
                    (ia, ip),
                    dap,
                    (nrm(ia), nrm(ip)),
                    eps,
                    s,
                    g,
                );
                pair_grad_rows(
                    backend,
                    metric,
                    &x,
                    (i, j),
                    neg.0,
                    (nrm(i), nrm(j)),
                    eps,
                    -s,
                    g,
                );
            }
        }
    }
    let w = params.reduction.weight(triplets.len(), active);
    if let Some(g) = grad {
        finish_grad(backend, w, g);
    }
    Ok((sum * f64::from(w)) as f32)
}

/// Triplet margin loss over caller-given triplets of rows of `x`: writes the per-triplet
/// terms `terms[k] = h(d(a_k, p_k) - d'(a_k, n_k) + margin)` and returns their reduction
/// (see the [module docs](super) for `d'`, `h` and the reductions).
///
/// `terms` has exactly `triplets.len()` elements (PyTorch's `reduction = 'none'` output).
/// Indices may repeat and may coincide (`a == p` gives `d(a, p) = d(a, a)`: 0, except
/// for a cosine row below the norm clamp, where it is `1 - |a|^2 / 1e-24`, 1 for a zero
/// row). Zero triplets give
/// a loss of 0. Scalar twin: [`crate::scalar::triplet_margin_loss`]; with the gradient:
/// [`triplet_margin_loss_grad`]. `workspace` needs
/// [`triplet_margin_loss_workspace_len`]`(rows, dim)` elements, garbage before and after.
///
/// # Errors
///
/// - [`Error::InvalidParameter`] (`"margin"`, `"eps"`) for a NaN or infinite margin, an
///   `eps` that is NaN or outside `[-1, 1]`, or a nonzero `eps` with [`Metric::Cosine`];
/// - [`Error::LengthMismatch`] (`"terms"`) when `terms.len() != triplets.len()`;
/// - [`Error::IndexOutOfRange`] (`"triplets"`, position `3 k + field` with fields
///   anchor, positive, negative) for an index `>= rows`;
/// - [`Error::WorkspaceTooSmall`] when the workspace is too short;
/// - [`Error::NonFinite`] (`"x"`, row and column of the first one) when `x` holds a NaN or an infinity.
/// - [`Error::TooLarge`] (`"x"`, row and column) when an element of `x` exceeds
///   `2^52 / sqrt(dim)`, where squared distances could overflow `f32`.
///
/// # Numerics
///
/// Distances computed pair by pair in `f32`, in the direct form; terms in `f32`; their
/// sum in `f64`. The hinges are 1-Lipschitz, so each term is within
/// `(d / 8 + 12) * 2^-24 * (S_ap + S_an + |margin|)` of the twin's, `S` being the sums of
/// absolute values the distance bound uses (the distance itself for the Euclidean metrics,
/// at most 2 for cosine), and the loss within the weighted sum of those bounds (the tests
/// check four times this). The swap decision is taken on the `f32` distances.
///
/// # Example
///
/// ```
/// use triplet_kernels::{triplet_margin_loss, triplet_margin_loss_workspace_len};
/// use triplet_kernels::{Matrix, Reduction, Triplet, TripletParams};
/// let x = Matrix::new(&[0.0, 0.0, 1.0, 0.0, 0.0, 3.0], 3, 2)?;
/// let triplets = [Triplet::new(0, 1, 2), Triplet::new(1, 0, 2)];
/// let params = TripletParams::new().with_margin(3.0).with_reduction(Reduction::Sum);
/// let mut terms = [0.0_f32; 2];
/// let mut ws = [0.0_f32; triplet_margin_loss_workspace_len(3, 2)];
/// let loss = triplet_margin_loss(x, &triplets, params, &mut terms, &mut ws)?;
/// // d(0,1) = 1, d(0,2) = 3: 1 - 3 + 3 = 1; d(1,0) = 1, d(1,2) = sqrt(10).
/// assert_eq!(terms[0], 1.0);
/// assert!((terms[1] - (4.0 - 10.0_f32.sqrt())).abs() < 1e-6);
/// assert!((loss - (terms[0] + terms[1])).abs() < 1e-6);
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
    triplet_margin_impl(x, triplets, &params, terms, None, workspace)
}

/// [`triplet_margin_loss`] and its gradient with respect to `x`: writes the terms, writes
/// `grad = d loss / d x` (`rows * dim`, every element overwritten) and returns the loss.
///
/// With `s_k = h'(v_k)` (`relu'(0)` taken as 0) and `w` the reduction weight (1, `1 / k`,
/// or `1 / #active`), `grad = w * sum_k s_k (d d(a_k, p_k) / d x - d d'(a_k, n_k) / d x)`,
/// the gradient flowing through the negative distance `swap` chose (`d(a, n)` on a tie).
/// Per metric, `d d(a, b) / d a` is `2 (a - b + eps)`, `(a - b + eps) / d` (0 at `d = 0`),
/// or `-b / (|a| |b|) + (1 - d) a / |a|^2` (norms clamped at `1e-12`, the second term only
/// above the clamp). Scalar twin: [`crate::scalar::triplet_margin_loss_grad`].
///
/// # Errors
///
/// Those of [`triplet_margin_loss`], and [`Error::LengthMismatch`] (`"grad"`) when
/// `grad.len() != rows * dim`.
///
/// # Numerics
///
/// As [`triplet_margin_loss`] for the loss. The gradient is the exact derivative of the
/// computed loss, accumulated in `f32` (one fused update per pair of rows, the difference
/// formed before scaling) and scaled by `w` at the end: away from hinge kinks and swap
/// ties, each element is within `(m + d / 8 + 16) * 2^-24 * G` of the twin's, where `m`
/// is the number of updates the row receives and `G` the sum of their absolute values
/// (the tests check `8 (m + d + 16) 2^-24 G`, plus, for the soft margin, the change of
/// each slope with its margin value's error). The gradient is finite on every finite input whose distances do not overflow: zero
/// distances give a zero Euclidean gradient.
///
/// # Example
///
/// ```
/// use triplet_kernels::{triplet_margin_loss_grad, triplet_margin_loss_workspace_len};
/// use triplet_kernels::{Matrix, Metric, Reduction, Triplet, TripletParams};
/// let x = Matrix::new(&[0.0, 0.0, 2.0, 0.0, 1.0, 0.0], 3, 2)?;
/// let params = TripletParams::new().with_metric(Metric::SquaredEuclidean).with_margin(1.0);
/// let mut terms = [0.0_f32; 1];
/// let mut grad = [0.0_f32; 6];
/// let mut ws = [0.0_f32; triplet_margin_loss_workspace_len(3, 2)];
/// let loss =
///     triplet_margin_loss_grad(x, &[Triplet::new(0, 1, 2)], params, &mut terms, &mut grad, &mut ws)?;
/// assert_eq!(loss, 4.0 - 1.0 + 1.0);
/// // d/da (|a-p|^2 - |a-n|^2) = 2(a-p) - 2(a-n) = 2(n-p).
/// // d/dp = 2(p-a), d/dn = 2(a-n).
/// assert_eq!(grad, [-2.0, 0.0, 4.0, 0.0, -2.0, 0.0]);
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
    triplet_margin_impl(x, triplets, &params, terms, Some(grad), workspace)
}
