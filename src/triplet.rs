//! Triplet margin losses and their gradients: over explicit triplets, and over a labelled
//! batch with online mining.
//!
//! For a triplet `(a, p, n)` of rows of `x` the margin value is
//!
//! ```text
//! v = d(a, p) - d'(a, n) + margin,   d'(a, n) = min(d(a, n), d(p, n)) with `swap`, else d(a, n)
//! ```
//!
//! and the term is `h(v)` for the [`Hinge`] (`max(v, 0)`, or the soft margin
//! `ln(1 + e^v)`, computed stably). The [`Reduction`] turns the `k` terms into the loss:
//! `sum`, `mean` (`sum / k`) or `mean_nonzero` (sum over the terms `> 0` divided by their
//! count, pytorch-metric-learning's AvgNonZero; the count is a constant for the gradient).
//! A term counts as nonzero by its exact value: `v > 0` for relu, always for the soft
//! margin (its `f32` value underflows to 0 below `v` of about -104, yet it is positive and
//! still counted, so fast kernels and `f64` twins agree on the count).
//! A reduction of zero terms is 0 with a zero gradient. PyTorch's `reduction = 'none'` is
//! the `terms` output of [`triplet_margin_loss`]; the gradient of their sum is
//! [`Reduction::Sum`].
//!
//! The batch losses ([`triplet_batch_loss`], [`triplet_batch_loss_grad`]) select the
//! triplets with a [`Mining`] strategy (see [`crate::mining`]'s rules: anchors without a
//! positive or a negative contribute nothing, ties go to the smallest index) and never
//! build an `n^3` mask: the workspace holds one `n x n` distance matrix.
//!
//! # Presets
//!
//! | preset | reproduces |
//! |---|---|
//! | [`TripletParams::pytorch`] | `torch.nn.TripletMarginLoss()`: Euclidean with `eps = 1e-6` added to the difference vector, margin 1, mean |
//! | [`BatchParams::pml_triplet_margin`] | pytorch-metric-learning `TripletMarginLoss()`: L2-normalised rows, Euclidean, margin 0.05, all triplets, AvgNonZero |
//! | [`BatchParams::tfa_semihard`] | TensorFlow Addons `TripletSemiHardLoss()`: squared Euclidean, rows as given, margin 1, semi-hard, mean |
//! | [`BatchParams::tfa_hard`] | TensorFlow Addons `TripletHardLoss()`: squared Euclidean, rows as given, margin 1, batch-hard, mean |
//! | [`BatchParams::tfa_hard_soft`] | TensorFlow Addons `TripletHardLoss(soft=True)`: soft margin `ln(1 + e^(d_ap - d_an))`, no margin |
//!
//! TensorFlow Addons names its metrics differently: its default `distance_metric="L_2"`
//! computes `pairwise_distance(squared=True)`, the **squared** Euclidean distance
//! ([`Metric::SquaredEuclidean`]); its `"L_1"` is the plain Euclidean distance
//! ([`Metric::Euclidean`], not an L1 distance); its `"angular"` is `1 - cos` with norms
//! clamped at `1e-6` and the result clamped below at `1e-16` ([`Metric::Cosine`] clamps
//! norms at `1e-12` and not the result; they differ on zero or tiny rows only). Its `"L_2"` and `"L_1"` compute
//! distances with the Gram expansion `|a|^2 - 2 <a, b> + |b|^2` clamped at 0, which loses
//! digits for near-identical rows; this crate sums `(a_i - b_i)^2` directly.
//!
//! Degenerate anchors are the one semantic difference. TensorFlow Addons averages over
//! every anchor (batch-hard) or every anchor-positive pair (semi-hard), and its masked
//! minimum and maximum fall back to the row's extreme distance when the mask is empty: an
//! anchor without a positive contributes `h(margin - min_n d(a, n))` (its hardest positive
//! distance becoming the row minimum, 0), one without a negative
//! `h(max_p d(a, p) - max_j d(a, j) + margin)`, and in semi-hard every positive pair of an
//! anchor without a negative contributes `h(d(a, p) + margin)`. This crate leaves such
//! anchors out, as the conformance format requires. On batches where every anchor has a
//! positive and a negative (every P x K batch with P, K >= 2, as in all of the shipped
//! TensorFlow Addons vectors) both agree.
//!
//! # Non-finite data
//!
//! The loss kernels scan `x` first and return [`Error::NonFinite`] for a NaN or an
//! infinity (a hinge or a mining decision would otherwise hide it). Finite data whose
//! squared distances overflow `f32` (`|x|` around `1e19`) gives infinite distances and
//! may give a NaN loss in the fast kernels; the `f64` twins do not overflow there.

use crate::distance::{add_distance_grad, clamped_row_norms, distance, Metric};
use crate::error::{check_len, check_workspace, Error};
use crate::math;
use crate::matrix::Matrix;
use crate::mining::{
    check_finite, check_labels, check_triplet_count, distance_matrix, distance_scratch_len,
    visit_anchor, Mining, Triplet,
};
use crate::reduce::{Hinge, Reduction};
use crate::simd;
use crate::{l2_normalize, l2_normalize_backward};

/// Parameters of the explicit-triplet loss [`triplet_margin_loss`]. Plain `Copy` data,
/// validated at call time.
///
/// ```
/// use triplet_kernels::{Hinge, Metric, Reduction, TripletParams};
/// const P: TripletParams = TripletParams::new()
///     .with_metric(Metric::Cosine)
///     .with_margin(0.2)
///     .with_swap(true)
///     .with_reduction(Reduction::Sum);
/// assert_eq!(P.hinge, Hinge::Relu);
/// assert_eq!(TripletParams::pytorch().eps, 1e-6);
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TripletParams {
    /// The distance `d`.
    pub metric: Metric,
    /// The margin added to `d(a, p) - d(a, n)`; any finite value.
    pub margin: f32,
    /// PyTorch's distance swap: use `min(d(a, n), d(p, n))` as the negative distance.
    pub swap: bool,
    /// Added to every element of the difference vector before the norm, as PyTorch's
    /// `pairwise_distance` does: `d(a, b) = |a - b + eps|` (squared for
    /// [`Metric::SquaredEuclidean`]). Any finite value; must be 0 for [`Metric::Cosine`].
    /// Note that it makes `d(a, b) != d(b, a)`.
    pub eps: f32,
    /// Hinge applied to each margin value.
    pub hinge: Hinge,
    /// How the terms are reduced to the loss.
    pub reduction: Reduction,
}

impl TripletParams {
    /// Euclidean, margin 1, no swap, `eps = 0`, [`Hinge::Relu`], [`Reduction::Mean`].
    pub const fn new() -> Self {
        TripletParams {
            metric: Metric::Euclidean,
            margin: 1.0,
            swap: false,
            eps: 0.0,
            hinge: Hinge::Relu,
            reduction: Reduction::Mean,
        }
    }

    /// PyTorch's `torch.nn.TripletMarginLoss()` defaults: Euclidean with `eps = 1e-6`
    /// added to the difference vector, margin 1, no swap, hinge, mean.
    pub const fn pytorch() -> Self {
        Self::new().with_eps(1e-6)
    }

    /// Sets [`TripletParams::metric`].
    #[must_use]
    pub const fn with_metric(mut self, metric: Metric) -> Self {
        self.metric = metric;
        self
    }

    /// Sets [`TripletParams::margin`].
    #[must_use]
    pub const fn with_margin(mut self, margin: f32) -> Self {
        self.margin = margin;
        self
    }

    /// Sets [`TripletParams::swap`].
    #[must_use]
    pub const fn with_swap(mut self, swap: bool) -> Self {
        self.swap = swap;
        self
    }

    /// Sets [`TripletParams::eps`].
    #[must_use]
    pub const fn with_eps(mut self, eps: f32) -> Self {
        self.eps = eps;
        self
    }

    /// Sets [`TripletParams::hinge`].
    #[must_use]
    pub const fn with_hinge(mut self, hinge: Hinge) -> Self {
        self.hinge = hinge;
        self
    }

    /// Sets [`TripletParams::reduction`].
    #[must_use]
    pub const fn with_reduction(mut self, reduction: Reduction) -> Self {
        self.reduction = reduction;
        self
    }
}

impl Default for TripletParams {
    fn default() -> Self {
        Self::new()
    }
}

/// Parameters of the batch losses [`triplet_batch_loss`] and [`triplet_batch_loss_grad`].
/// Plain `Copy` data, validated at call time.
///
/// ```
/// use triplet_kernels::{BatchParams, Hinge, Mining, Reduction};
/// const P: BatchParams = BatchParams::new()
///     .with_mining(Mining::SemiHard)
///     .with_margin(0.5)
///     .with_reduction(Reduction::Sum);
/// assert_eq!(P.hinge, Hinge::Relu);
/// assert!(BatchParams::pml_triplet_margin().normalize);
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BatchParams {
    /// The distance `d`.
    pub metric: Metric,
    /// Which triplets of the batch are used.
    pub mining: Mining,
    /// The margin added to `d(a, p) - d(a, n)`; any finite value (use 0 with
    /// [`Hinge::SoftPlus`] for the soft margin of Hermans et al. and TensorFlow Addons).
    pub margin: f32,
    /// Hinge applied to each margin value.
    pub hinge: Hinge,
    /// How the terms are reduced to the loss.
    pub reduction: Reduction,
    /// L2-normalise every row (`x_i / max(|x_i|, 1e-12)`, see [`crate::l2_normalize`])
    /// before computing distances; the gradient is taken through the normalisation.
    pub normalize: bool,
}

impl BatchParams {
    /// Euclidean, [`Mining::BatchHard`], margin 0.2, [`Hinge::Relu`], [`Reduction::Mean`],
    /// no normalisation.
    pub const fn new() -> Self {
        BatchParams {
            metric: Metric::Euclidean,
            mining: Mining::BatchHard,
            margin: 0.2,
            hinge: Hinge::Relu,
            reduction: Reduction::Mean,
            normalize: false,
        }
    }

    /// pytorch-metric-learning's `TripletMarginLoss()` defaults: rows L2-normalised
    /// (its `LpDistance(normalize_embeddings=True)`), Euclidean, margin 0.05, all triplets,
    /// hinge, AvgNonZero ([`Reduction::MeanNonzero`]). With its `BatchHardMiner`, set
    /// [`Mining::BatchHard`].
    pub const fn pml_triplet_margin() -> Self {
        BatchParams {
            metric: Metric::Euclidean,
            mining: Mining::All,
            margin: 0.05,
            hinge: Hinge::Relu,
            reduction: Reduction::MeanNonzero,
            normalize: true,
        }
    }

    /// TensorFlow Addons' `TripletSemiHardLoss()` defaults: its `distance_metric="L_2"`,
    /// which is the squared Euclidean distance, on the rows as given (not normalised),
    /// margin 1, semi-hard, hinge, mean over the anchor-positive pairs. Its `"L_1"` is
    /// [`Metric::Euclidean`] and its `"angular"` [`Metric::Cosine`]; see the
    /// [module docs](self) for the differences on degenerate anchors.
    pub const fn tfa_semihard() -> Self {
        BatchParams {
            metric: Metric::SquaredEuclidean,
            mining: Mining::SemiHard,
            margin: 1.0,
            hinge: Hinge::Relu,
            reduction: Reduction::Mean,
            normalize: false,
        }
    }

    /// TensorFlow Addons' `TripletHardLoss()` defaults: squared Euclidean (its `"L_2"`),
    /// rows as given, margin 1, batch-hard, hinge, mean over the anchors.
    pub const fn tfa_hard() -> Self {
        BatchParams {
            metric: Metric::SquaredEuclidean,
            mining: Mining::BatchHard,
            margin: 1.0,
            hinge: Hinge::Relu,
            reduction: Reduction::Mean,
            normalize: false,
        }
    }

    /// TensorFlow Addons' `TripletHardLoss(soft=True)`: the soft margin
    /// `ln(1 + e^(d(a,p) - d(a,n)))`, which ignores the margin (so margin 0 here),
    /// batch-hard, mean, squared Euclidean (its `"L_2"`).
    pub const fn tfa_hard_soft() -> Self {
        BatchParams {
            metric: Metric::SquaredEuclidean,
            mining: Mining::BatchHard,
            margin: 0.0,
            hinge: Hinge::SoftPlus,
            reduction: Reduction::Mean,
            normalize: false,
        }
    }

    /// Sets [`BatchParams::metric`].
    #[must_use]
    pub const fn with_metric(mut self, metric: Metric) -> Self {
        self.metric = metric;
        self
    }

    /// Sets [`BatchParams::mining`].
    #[must_use]
    pub const fn with_mining(mut self, mining: Mining) -> Self {
        self.mining = mining;
        self
    }

    /// Sets [`BatchParams::margin`].
    #[must_use]
    pub const fn with_margin(mut self, margin: f32) -> Self {
        self.margin = margin;
        self
    }

    /// Sets [`BatchParams::hinge`].
    #[must_use]
    pub const fn with_hinge(mut self, hinge: Hinge) -> Self {
        self.hinge = hinge;
        self
    }

    /// Sets [`BatchParams::reduction`].
    #[must_use]
    pub const fn with_reduction(mut self, reduction: Reduction) -> Self {
        self.reduction = reduction;
        self
    }

    /// Sets [`BatchParams::normalize`].
    #[must_use]
    pub const fn with_normalize(mut self, normalize: bool) -> Self {
        self.normalize = normalize;
        self
    }
}

impl Default for BatchParams {
    fn default() -> Self {
        Self::new()
    }
}

/// What a batch loss returns: the loss and how many triplets it saw.
#[derive(Clone, Copy, Debug, PartialEq, Default)]
pub struct BatchLoss {
    /// The reduced loss.
    pub loss: f32,
    /// Number of triplets the mining selected (equals
    /// [`crate::mine_triplets_count`]`(labels, mining)`).
    pub num_triplets: usize,
    /// Number of selected triplets whose term is positive: `v > 0` for relu, every term
    /// for the soft margin (see the [module docs](self)). The divisor of
    /// [`Reduction::MeanNonzero`].
    pub num_active: usize,
}

/// Whether a term counts as nonzero for [`Reduction::MeanNonzero`] and `num_active`: by
/// the exact value of the hinge, `v > 0` for relu and every `v > -inf` for the soft margin
/// (whose `f32` value underflows to 0 below `v` of about -104 although the term is
/// positive), so the count does not depend on the precision of the arithmetic.
#[inline]
pub(crate) fn is_active(hinge: Hinge, v: f32) -> bool {
    match hinge {
        Hinge::Relu => v > 0.0,
        Hinge::SoftPlus => v > f32::NEG_INFINITY,
    }
}

// ---------------------------------------------------------------------------------------
// Validation shared with the scalar twins.

/// Checks the parameters of an explicit-triplet loss.
pub(crate) fn check_triplet_params(params: &TripletParams) -> Result<(), Error> {
    if !params.margin.is_finite() {
        return Err(Error::InvalidParameter { name: "margin" });
    }
    if !params.eps.is_finite() || (params.metric == Metric::Cosine && params.eps != 0.0) {
        return Err(Error::InvalidParameter { name: "eps" });
    }
    Ok(())
}

/// Checks every argument of an explicit-triplet loss except the gradient; returns `n`.
pub(crate) fn check_triplet_args(
    x: &Matrix<'_>,
    triplets: &[Triplet],
    params: &TripletParams,
    terms: usize,
    workspace: usize,
) -> Result<usize, Error> {
    check_triplet_params(params)?;
    let n = x.rows();
    check_len("terms", triplets.len(), terms)?;
    for (k, t) in triplets.iter().enumerate() {
        for (f, index) in [t.anchor, t.positive, t.negative].into_iter().enumerate() {
            if index as usize >= n {
                return Err(Error::IndexOutOfRange {
                    buffer: "triplets",
                    position: k.saturating_mul(3).saturating_add(f),
                    index: index as usize,
                    bound: n,
                });
            }
        }
    }
    check_workspace(triplet_margin_workspace_len(n, x.dim()), workspace)?;
    Ok(n)
}

/// Checks every argument of a batch loss except the gradient and the workspace; returns
/// `n`.
pub(crate) fn check_batch_args(
    x: &Matrix<'_>,
    labels: &[u32],
    params: &BatchParams,
) -> Result<usize, Error> {
    if !params.margin.is_finite() {
        return Err(Error::InvalidParameter { name: "margin" });
    }
    let n = check_labels(x, labels)?;
    check_triplet_count(labels, params.mining)?;
    Ok(n)
}

// ---------------------------------------------------------------------------------------
// Explicit triplets.

/// Workspace elements that [`triplet_margin_loss`] and [`triplet_margin_loss_grad`] need
/// for `rows` embeddings of dimension `dim` (the row norms): `rows`. Saturates instead of
/// overflowing.
pub const fn triplet_margin_workspace_len(rows: usize, dim: usize) -> usize {
    let _ = dim;
    rows
}

/// `d(a, b)` with the optional difference shift `eps` (Euclidean metrics only).
#[inline]
fn distance_eps(metric: Metric, a: &[f32], b: &[f32], na: f32, nb: f32, eps: f32) -> f32 {
    if eps == 0.0 {
        return distance(metric, a, b, na, nb);
    }
    match metric {
        Metric::SquaredEuclidean => simd::sq_dist_offset(a, b, eps),
        Metric::Euclidean => math::sqrt(simd::sq_dist_offset(a, b, eps)),
        Metric::Cosine => distance(metric, a, b, na, nb),
    }
}

/// Adds `coef * d d(a, b) / d x` to the rows `ia` (`a`) and `ib` (`b`) of `grad`, where
/// `dist = d(a, b)` (with the shift `eps`, Euclidean metrics only). The Euclidean metrics
/// form the difference once (`axpy_diff`); the Euclidean gradient at distance 0 is 0.
#[allow(clippy::too_many_arguments)]
#[inline]
fn add_pair_grad(
    metric: Metric,
    x: &Matrix<'_>,
    norms: &[f32],
    ia: usize,
    ib: usize,
    dist: f32,
    eps: f32,
    coef: f32,
    grad: &mut [f32],
) {
    let dim = x.dim();
    let (Some(a), Some(b)) = (x.row(ia), x.row(ib)) else {
        return;
    };
    let k = match metric {
        Metric::SquaredEuclidean => 2.0 * coef,
        Metric::Euclidean => {
            if dist > 0.0 {
                coef / dist
            } else {
                return;
            }
        }
        Metric::Cosine => {
            let na = norms.get(ia).copied().unwrap_or(1.0);
            let nb = norms.get(ib).copied().unwrap_or(1.0);
            if let Some(ga) = grad.get_mut(ia * dim..(ia + 1) * dim) {
                add_distance_grad(metric, a, b, dist, na, nb, coef, ga);
            }
            if let Some(gb) = grad.get_mut(ib * dim..(ib + 1) * dim) {
                add_distance_grad(metric, b, a, dist, nb, na, coef, gb);
            }
            return;
        }
    };
    if let Some(ga) = grad.get_mut(ia * dim..(ia + 1) * dim) {
        simd::axpy_diff(k, a, b, eps, ga);
    }
    if let Some(gb) = grad.get_mut(ib * dim..(ib + 1) * dim) {
        simd::axpy_diff(k, b, a, -eps, gb);
    }
}

/// Scales an accumulated gradient by the reduction weight (exact zeros when it is 0).
#[inline]
fn finish_grad(w: f32, grad: &mut [f32]) {
    if w == 0.0 {
        grad.fill(0.0);
    } else if w != 1.0 {
        simd::scale(w, grad);
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
    check_finite(&x)?;
    let norms = workspace.split_at_mut(n).0;
    if params.metric == Metric::Cosine {
        clamped_row_norms(&x, norms);
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
        let dap = distance_eps(metric, a, p, nrm(ia), nrm(ip), eps);
        let dan = distance_eps(metric, a, q, nrm(ia), nrm(iq), eps);
        // (distance, first row, second row) of the negative distance actually used.
        let mut neg = (dan, ia, iq);
        if params.swap {
            let dpn = distance_eps(metric, p, q, nrm(ip), nrm(iq), eps);
            if dpn < dan {
                neg = (dpn, ip, iq);
            }
        }
        let v = dap - neg.0 + params.margin;
        let h = params.hinge.apply(v);
        *term = h;
        sum += f64::from(h);
        active += usize::from(is_active(params.hinge, v));
        if let Some(g) = grad.as_deref_mut() {
            let s = params.hinge.slope(v);
            if s != 0.0 {
                add_pair_grad(metric, &x, norms, ia, ip, dap, eps, s, g);
                add_pair_grad(metric, &x, norms, neg.1, neg.2, neg.0, eps, -s, g);
            }
        }
    }
    let w = params.reduction.weight(triplets.len(), active);
    if let Some(g) = grad {
        finish_grad(w, g);
    }
    Ok((sum * f64::from(w)) as f32)
}

/// Triplet margin loss over caller-given triplets of rows of `x`: writes the per-triplet
/// terms `terms[k] = h(d(a_k, p_k) - d'(a_k, n_k) + margin)` and returns their reduction
/// (see the [module docs](self) for `d'`, `h` and the reductions).
///
/// `terms` has exactly `triplets.len()` elements (PyTorch's `reduction = 'none'` output).
/// Indices may repeat and may coincide (`a == p` gives `d(a, p) = 0`). Zero triplets give
/// a loss of 0. Scalar twin: [`crate::scalar::triplet_margin_loss`]; with the gradient:
/// [`triplet_margin_loss_grad`]. `workspace` needs
/// [`triplet_margin_workspace_len`]`(rows, dim)` elements, garbage before and after.
///
/// # Errors
///
/// - [`Error::InvalidParameter`] (`"margin"`, `"eps"`) for a NaN or infinite margin or
///   `eps`, or a nonzero `eps` with [`Metric::Cosine`];
/// - [`Error::LengthMismatch`] (`"terms"`) when `terms.len() != triplets.len()`;
/// - [`Error::IndexOutOfRange`] (`"triplets"`, position `3 k + field` with fields
///   anchor, positive, negative) for an index `>= rows`;
/// - [`Error::WorkspaceTooSmall`] when the workspace is too short;
/// - [`Error::NonFinite`] (`"x"`, flat position) when `x` holds a NaN or an infinity.
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
/// use triplet_kernels::{triplet_margin_loss, triplet_margin_workspace_len};
/// use triplet_kernels::{Matrix, Reduction, Triplet, TripletParams};
/// let x = Matrix::new(&[0.0, 0.0, 1.0, 0.0, 0.0, 3.0], 3, 2)?;
/// let triplets = [Triplet::new(0, 1, 2), Triplet::new(1, 0, 2)];
/// let params = TripletParams::new().with_margin(3.0).with_reduction(Reduction::Sum);
/// let mut terms = [0.0_f32; 2];
/// let mut ws = [0.0_f32; triplet_margin_workspace_len(3, 2)];
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
/// use triplet_kernels::{triplet_margin_loss_grad, triplet_margin_workspace_len};
/// use triplet_kernels::{Matrix, Metric, Reduction, Triplet, TripletParams};
/// let x = Matrix::new(&[0.0, 0.0, 2.0, 0.0, 1.0, 0.0], 3, 2)?;
/// let params = TripletParams::new().with_metric(Metric::SquaredEuclidean).with_margin(1.0);
/// let mut terms = [0.0_f32; 1];
/// let mut grad = [0.0_f32; 6];
/// let mut ws = [0.0_f32; triplet_margin_workspace_len(3, 2)];
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

// ---------------------------------------------------------------------------------------
// Batch losses with online mining.

/// Workspace elements that [`triplet_batch_loss`] needs for `rows` embeddings of
/// dimension `dim` under `params`: `rows * rows` for the distance matrix plus the scratch
/// of the pairwise kernel, plus `rows * dim` when `params.normalize`. Saturates instead of
/// overflowing.
pub const fn triplet_batch_loss_workspace_len(
    rows: usize,
    dim: usize,
    params: BatchParams,
) -> usize {
    let base = rows
        .saturating_mul(rows)
        .saturating_add(distance_scratch_len(rows, dim));
    if params.normalize {
        base.saturating_add(rows.saturating_mul(dim))
    } else {
        base
    }
}

/// Workspace elements that [`triplet_batch_loss_grad`] needs for `rows` embeddings of
/// dimension `dim` under `params`: `rows * rows + rows` plus the scratch of the pairwise
/// kernel, plus `rows * dim + dim` when `params.normalize`. Saturates instead of
/// overflowing.
pub const fn triplet_batch_loss_grad_workspace_len(
    rows: usize,
    dim: usize,
    params: BatchParams,
) -> usize {
    let base = rows
        .saturating_mul(rows)
        .saturating_add(rows)
        .saturating_add(distance_scratch_len(rows, dim));
    if params.normalize {
        base.saturating_add(rows.saturating_mul(dim))
            .saturating_add(dim)
    } else {
        base
    }
}

/// Running totals of a batch loss.
#[derive(Default)]
struct Totals {
    sum: f64,
    count: usize,
    active: usize,
}

impl Totals {
    #[inline]
    fn add(&mut self, h: f32, active: bool) {
        self.sum += f64::from(h);
        self.count = self.count.saturating_add(1);
        self.active = self.active.saturating_add(usize::from(active));
    }

    /// Batch-all, one anchor-positive pair: every negative `q` of the anchor (label not
    /// `la`) in ascending order; with `coef`, subtracts each slope from `coef[q]` and
    /// returns the sum of the slopes (the coefficient of the pair itself).
    #[inline]
    #[allow(clippy::too_many_arguments)]
    fn add_all_negatives(
        &mut self,
        row: &[f32],
        labels: &[u32],
        la: u32,
        dap: f32,
        margin: f32,
        hinge: Hinge,
        coef: Option<&mut [f32]>,
    ) -> f32 {
        let base = dap + margin;
        let mut slopes = 0.0_f32;
        match coef {
            Some(coef) => {
                for ((c, &d), &l) in coef.iter_mut().zip(row).zip(labels) {
                    if l != la {
                        let v = base - d;
                        self.add(hinge.apply(v), is_active(hinge, v));
                        let s = hinge.slope(v);
                        *c -= s;
                        slopes += s;
                    }
                }
            }
            None => {
                for (&d, &l) in row.iter().zip(labels) {
                    if l != la {
                        let v = base - d;
                        self.add(hinge.apply(v), is_active(hinge, v));
                    }
                }
            }
        }
        slopes
    }

    fn finish(&self, reduction: Reduction) -> (BatchLoss, f32) {
        let w = reduction.weight(self.count, self.active);
        let loss = BatchLoss {
            loss: (self.sum * f64::from(w)) as f32,
            num_triplets: self.count,
            num_active: self.active,
        };
        (loss, w)
    }
}

/// Triplet loss of a labelled batch with online mining: selects the triplets with
/// `params.mining`, forms `v = d(a, p) - d(a, n) + margin` for each, applies the hinge and
/// reduces (see the [module docs](self)). Returns the loss with the number of selected and
/// of active (`> 0`) terms. A batch that selects nothing (one row, one class, no
/// positives) has loss 0.
///
/// The distance matrix is computed once with [`crate::pairwise_distances`] into the
/// workspace; each anchor is then mined from its row alone (batch-hard: one pass over the
/// row; semi-hard and batch-all: one pass per positive). Scalar twin:
/// [`crate::scalar::triplet_batch_loss`]; with the gradient:
/// [`triplet_batch_loss_grad`]. `workspace` needs
/// [`triplet_batch_loss_workspace_len`]`(rows, dim, params)` elements, garbage before and
/// after.
///
/// # Errors
///
/// - [`Error::InvalidParameter`] (`"margin"`) for a NaN or infinite margin;
/// - [`Error::LengthMismatch`] (`"labels"`) when `labels.len() != rows`;
/// - [`Error::ShapeOverflow`] when `rows * rows` or the triplet count overflows `usize`;
/// - [`Error::WorkspaceTooSmall`] when the workspace is too short;
/// - [`Error::NonFinite`] (`"x"`, flat position) when `x` holds a NaN or an infinity.
///
/// # Numerics
///
/// Mining decisions on the `f32` distance matrix (ties to the smallest index); terms in
/// `f32`, their sum in `f64`. Batch-all and batch-hard losses are continuous in the
/// distances, so they stay within the weighted sum of the per-term bounds of
/// [`triplet_margin_loss`] even where a near-tie is decided differently from the `f64`
/// twin; semi-hard can differ by a whole term where a negative's distance lies within
/// rounding of the positive's.
///
/// # Example
///
/// ```
/// use triplet_kernels::{triplet_batch_loss, triplet_batch_loss_workspace_len};
/// use triplet_kernels::{BatchParams, Matrix, Mining};
/// let x = Matrix::new(&[0.0, 1.0, 1.5, 4.0], 4, 1)?;
/// let labels = [0, 0, 1, 1];
/// const P: BatchParams = BatchParams::new().with_mining(Mining::BatchHard).with_margin(1.0);
/// let mut ws = [0.0_f32; triplet_batch_loss_workspace_len(4, 1, P)];
/// let out = triplet_batch_loss(x, &labels, P, &mut ws)?;
/// // Anchors 0, 1, 2, 3: max(1 - 1.5 + 1, 0) = 0.5, max(1 - 0.5 + 1, 0) = 1.5,
/// // max(2.5 - 0.5 + 1, 0) = 3, max(2.5 - 3 + 1, 0) = 0.5.
/// assert_eq!((out.num_triplets, out.num_active), (4, 4));
/// assert_eq!(out.loss, (0.5 + 1.5 + 3.0 + 0.5) / 4.0);
/// # Ok::<(), triplet_kernels::Error>(())
/// ```
#[cfg_attr(feature = "no-panic", no_panic::no_panic)]
pub fn triplet_batch_loss(
    x: Matrix<'_>,
    labels: &[u32],
    params: BatchParams,
    workspace: &mut [f32],
) -> Result<BatchLoss, Error> {
    let n = check_batch_args(&x, labels, &params)?;
    let dim = x.dim();
    check_workspace(
        triplet_batch_loss_workspace_len(n, dim, params),
        workspace.len(),
    )?;
    check_finite(&x)?;
    let (scratch, rest) = workspace.split_at_mut(distance_scratch_len(n, dim));
    let (dist, rest) = rest.split_at_mut(n * n);
    let xs = if params.normalize {
        let y = rest.split_at_mut(x.len()).0;
        l2_normalize(x, y)?;
        Matrix::new(y, n, dim)?
    } else {
        x
    };
    distance_matrix(xs, params.metric, dist, scratch)?;
    let mut totals = Totals::default();
    let (hinge, margin) = (params.hinge, params.margin);
    for ((a, row), &la) in dist.chunks_exact(n).enumerate().zip(labels) {
        if params.mining == Mining::All {
            for (p, (&lp, &dap)) in labels.iter().zip(row).enumerate() {
                if p != a && lp == la {
                    totals.add_all_negatives(row, labels, la, dap, margin, hinge, None);
                }
            }
        } else {
            visit_anchor(row, labels, a, params.mining, |_, _, dap, daq| {
                let v = dap - daq + margin;
                totals.add(hinge.apply(v), is_active(hinge, v));
            });
        }
    }
    Ok(totals.finish(params.reduction).0)
}

/// [`triplet_batch_loss`] and its gradient with respect to `x`, in one call: mines,
/// reduces, writes `grad = d loss / d x` (`rows * dim`, every element overwritten) and
/// returns the loss with the triplet counts.
///
/// Each selected triplet gives the pair `(a, p)` the coefficient `+s` and the pair
/// `(a, n)` the coefficient `-s`, `s = h'(v)`; a pair with coefficient `c` adds
/// `c * d d(a, j) / d x` to the rows `a` and `j` (formulas in
/// [`triplet_margin_loss_grad`]), and the total is scaled by the reduction weight at the
/// end. Batch-all first sums the coefficients of each anchor's pairs (one `n`-element row
/// of the workspace), so every pair is updated once per anchor; batch-hard and semi-hard,
/// with one or a few triplets per anchor, update their pairs directly. With
/// `params.normalize` the gradient is taken through the normalisation
/// ([`crate::l2_normalize_backward`]). Mining decisions are constants for the gradient.
/// Scalar twin: [`crate::scalar::triplet_batch_loss_grad`]. `workspace` needs
/// [`triplet_batch_loss_grad_workspace_len`]`(rows, dim, params)` elements, garbage
/// before and after.
///
/// # Errors
///
/// Those of [`triplet_batch_loss`], and [`Error::LengthMismatch`] (`"grad"`) when
/// `grad.len() != rows * dim`.
///
/// # Numerics
///
/// As [`triplet_batch_loss`] for the loss. Away from hinge kinks and mining near-ties the
/// gradient is within `(m + d / 8 + 16) * 2^-24 * G` of the twin's per element (`m`
/// updates to the row, `G` the sum of their absolute values). It is finite on every
/// degenerate batch (single row, one class, duplicate rows: the Euclidean gradient at
/// distance 0 is 0; zero rows under cosine use the clamped norm `1e-12`, which gives
/// large but finite values).
///
/// # Example
///
/// ```
/// use triplet_kernels::{triplet_batch_loss_grad, triplet_batch_loss_grad_workspace_len};
/// use triplet_kernels::{BatchParams, Matrix, Metric, Mining, Reduction};
/// let x = Matrix::new(&[0.0, 1.0, 1.5, 4.0], 4, 1)?;
/// let labels = [0, 0, 1, 1];
/// const P: BatchParams = BatchParams::new()
///     .with_metric(Metric::Euclidean)
///     .with_mining(Mining::BatchHard)
///     .with_margin(1.0)
///     .with_reduction(Reduction::Sum);
/// let mut grad = [f32::NAN; 4];
/// let mut ws = [0.0_f32; triplet_batch_loss_grad_workspace_len(4, 1, P)];
/// let out = triplet_batch_loss_grad(x, &labels, P, &mut grad, &mut ws)?;
/// assert_eq!(out.loss, 0.5 + 1.5 + 3.0 + 0.5);
/// // Triplets (0,1,2), (1,0,2), (2,3,1), (3,2,1), all active; d|a-b|/da = sign(a-b).
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
    let n = check_batch_args(&x, labels, &params)?;
    let dim = x.dim();
    check_len("grad", x.len(), grad.len())?;
    check_workspace(
        triplet_batch_loss_grad_workspace_len(n, dim, params),
        workspace.len(),
    )?;
    check_finite(&x)?;
    let (norms, rest) = workspace.split_at_mut(distance_scratch_len(n, dim));
    let (dist, rest) = rest.split_at_mut(n * n);
    let (coef, rest) = rest.split_at_mut(n);
    let (y, tmp) = if params.normalize {
        let (y, rest) = rest.split_at_mut(x.len());
        (y, rest.split_at_mut(dim).0)
    } else {
        (&mut [][..], &mut [][..])
    };
    let xs = if params.normalize {
        l2_normalize(x, y)?;
        Matrix::new(y, n, dim)?
    } else {
        x
    };
    distance_matrix(xs, params.metric, dist, norms)?;
    if params.metric == Metric::Cosine {
        clamped_row_norms(&xs, norms);
    }
    grad.fill(0.0);
    let mut totals = Totals::default();
    let (hinge, margin, metric) = (params.hinge, params.margin, params.metric);
    for ((a, row), &la) in dist.chunks_exact(n).enumerate().zip(labels) {
        if params.mining == Mining::All {
            // Many triplets share each pair: gather one coefficient per pair (a, j), then
            // one update per pair.
            coef.fill(0.0);
            for (p, (&lp, &dap)) in labels.iter().zip(row).enumerate() {
                if p != a && lp == la {
                    let s = totals.add_all_negatives(
                        row,
                        labels,
                        la,
                        dap,
                        margin,
                        hinge,
                        Some(&mut coef[..]),
                    );
                    if let Some(c) = coef.get_mut(p) {
                        *c += s;
                    }
                }
            }
            for (j, (&c, &d)) in coef.iter().zip(row).enumerate() {
                if c != 0.0 {
                    add_pair_grad(metric, &xs, norms, a, j, d, 0.0, c, grad);
                }
            }
        } else {
            // One or a few triplets per anchor: update the pairs directly.
            visit_anchor(row, labels, a, params.mining, |p, q, dap, daq| {
                let v = dap - daq + margin;
                totals.add(hinge.apply(v), is_active(hinge, v));
                let s = hinge.slope(v);
                if s != 0.0 {
                    add_pair_grad(metric, &xs, norms, a, p, dap, 0.0, s, grad);
                    add_pair_grad(metric, &xs, norms, a, q, daq, 0.0, -s, grad);
                }
            });
        }
    }
    let (loss, w) = totals.finish(params.reduction);
    finish_grad(w, grad);
    if params.normalize {
        for (row, g) in x.row_iter().zip(grad.chunks_exact_mut(dim)) {
            for (t, &v) in tmp.iter_mut().zip(g.iter()) {
                *t = v;
            }
            l2_normalize_backward(Matrix::new(row, 1, dim)?, tmp, g)?;
        }
    }
    Ok(loss)
}
