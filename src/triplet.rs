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
//! build an `n^3` mask nor an `n x n` matrix: mining runs on tiles or blocks of rows of
//! the distance matrix, and the workspace grows like `n * dim`.
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
//! digits for near-identical rows; this crate recomputes such distances directly as
//! `sum (a_i - b_i)^2` (see [`crate::mining`]'s
//! [accuracy notes](crate::mining#distances-and-their-accuracy)), so they keep full
//! relative accuracy.
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

use crate::distance::{
    clamped_row_norms, distance, euclidean_from_sq, gemm_acc, l2_normalize_backward_on,
    l2_normalize_on, metric_norms, needs_direct, pair_grad_rows, pair_grad_rows_with, symmetrise,
    Metric, GEMM_MR, NORM_EPS,
};
use crate::error::Error;
use crate::matrix::Matrix;
use crate::mining::{
    block_rows, for_row_blocks, hard_len, hard_sweep, rows_len, EmitHard, HardState, Mining,
    SemiBlock, Sink, Triplet, TILE,
};
use crate::reduce::{Hinge, Reduction};
use crate::simd::{self, Backend, Kernel, Simd, MAX_LANES};
use crate::validate::{check_labels, check_len, check_rows, check_triplet_count, check_workspace};
use crate::workspace::Carve;

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
    /// [`Metric::SquaredEuclidean`]). `|eps| <= 1` (PyTorch's default is `1e-6`; larger
    /// shifts could overflow the squared distances); must be 0 for [`Metric::Cosine`].
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
    /// The margin added to `d(a, p) - d(a, n)`; `|margin| <= 2^100` (about `1.3e30`, so
    /// that batch-all's `f32` row sums of hinge terms cannot overflow; use 0 with
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
    // |eps| <= 1 keeps the shifted squared distances inside f32 for every accepted row
    // (see `Error::TooLarge`); PyTorch's default is 1e-6.
    let eps_ok = params.eps.abs() <= 1.0;
    if !eps_ok || (params.metric == Metric::Cosine && params.eps != 0.0) {
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

/// Largest `|margin|` of the batch losses: `2^100` (about `1.3e30`).
pub(crate) const MARGIN_MAX: f32 = 1.267_650_6e30;

/// Checks every argument of a batch loss except the gradient and the workspace; returns
/// `n`.
pub(crate) fn check_batch_args(
    x: &Matrix<'_>,
    labels: &[u32],
    params: &BatchParams,
) -> Result<usize, Error> {
    // |margin| <= 2^100 keeps batch-all's f32 row sums of hinge terms finite (see
    // `Error::TooLarge` for the data side of the same rule).
    let margin_ok = params.margin.abs() <= MARGIN_MAX;
    if !margin_ok {
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

/// Scales an accumulated gradient by the reduction weight (exact zeros when it is 0).
#[inline]
fn finish_grad(backend: Backend, w: f32, grad: &mut [f32]) {
    if w == 0.0 {
        grad.fill(0.0);
    } else if w != 1.0 {
        simd::scale(backend, w, grad);
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
        active += usize::from(is_active(params.hinge, v));
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
/// - [`Error::InvalidParameter`] (`"margin"`, `"eps"`) for a NaN or infinite margin, an
///   `eps` that is NaN or outside `[-1, 1]`, or a nonzero `eps` with [`Metric::Cosine`];
/// - [`Error::LengthMismatch`] (`"terms"`) when `terms.len() != triplets.len()`;
/// - [`Error::IndexOutOfRange`] (`"triplets"`, position `3 k + field` with fields
///   anchor, positive, negative) for an index `>= rows`;
/// - [`Error::WorkspaceTooSmall`] when the workspace is too short;
/// - [`Error::NonFinite`] (`"x"`, flat position) when `x` holds a NaN or an infinity.
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

/// Extra per-row arrays of the batch-all gradient: the coefficient row, the diagonal
/// terms and the GEMM's packed coefficients (`GEMM_MR` per row).
const ALL_GRAD_ARRAYS: usize = 2 + GEMM_MR;

/// Workspace of a batch loss (`grad`: with its gradient).
const fn batch_len(rows: usize, dim: usize, params: BatchParams, grad: bool) -> usize {
    let mining = match params.mining {
        Mining::BatchHard => hard_len(rows, dim),
        Mining::SemiHard => rows_len(rows, dim, 0),
        Mining::All => rows_len(rows, dim, if grad { ALL_GRAD_ARRAYS } else { 0 }),
    };
    if params.normalize {
        let y = rows.saturating_mul(dim);
        mining
            .saturating_add(y)
            .saturating_add(if grad { dim } else { 0 })
    } else {
        mining
    }
}

/// Workspace elements that [`triplet_batch_loss`] needs for `rows` embeddings of
/// dimension `dim` under `params`; no `rows x rows` matrix, `O(rows * dim)`. With
/// `t = min(rows, 256)`:
///
/// - [`Mining::BatchHard`]: `5 rows`, one tile of `t x t` distances and its packing
///   ([`crate::cross_distances_workspace_len`]`(t, t, dim)`);
/// - [`Mining::SemiHard`] and [`Mining::All`]: `3 rows`, one block of `t x rows`
///   distances and its packing ([`crate::pairwise_distances_rows_workspace_len`]`(rows, t,
///   dim)`, about `(rows + 96) * (dim + 1)`);
///
/// plus `rows * dim` when `params.normalize`. For `rows = 4096`, `dim = 256`: about
/// `0.24e6` elements (1 MiB) for batch-hard, `2.1e6` (8.6 MiB) for the others, against
/// `16.8e6` for the distance matrix. Saturates instead of overflowing.
pub const fn triplet_batch_loss_workspace_len(
    rows: usize,
    dim: usize,
    params: BatchParams,
) -> usize {
    batch_len(rows, dim, params, false)
}

/// Workspace elements that [`triplet_batch_loss_grad`] needs for `rows` embeddings of
/// dimension `dim` under `params`: those of [`triplet_batch_loss_workspace_len`], plus
/// `6 rows` for [`Mining::All`] (a row of pair coefficients, the diagonal terms of the
/// gradient and the GEMM's packed coefficients) and `dim` when `params.normalize`.
/// Saturates instead of overflowing.
pub const fn triplet_batch_loss_grad_workspace_len(
    rows: usize,
    dim: usize,
    params: BatchParams,
) -> usize {
    batch_len(rows, dim, params, true)
}

/// Running totals of a batch loss.
#[derive(Default)]
struct Totals {
    sum: f64,
    count: usize,
    active: usize,
}

impl Totals {
    #[inline(always)]
    fn add(&mut self, h: f32, active: bool) {
        self.sum += f64::from(h);
        self.count = self.count.saturating_add(1);
        self.active = self.active.saturating_add(usize::from(active));
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

/// `d(a, b)` as written (`sum (a_i - b_i)^2`, no Gram form), `na`, `nb` the clamped norms
/// (cosine only): the arithmetic of [`triplet_margin_loss`].
#[inline(always)]
fn direct_distance<S: Simd>(s: S, metric: Metric, a: &[f32], b: &[f32], na: f32, nb: f32) -> f32 {
    match metric {
        Metric::SquaredEuclidean => simd::sq_dist_with(s, a, b),
        Metric::Euclidean => euclidean_from_sq(simd::sq_dist_with(s, a, b), a, b, 0.0),
        Metric::Cosine => 1.0 - simd::dot_with(s, a, b) / (na * nb),
    }
}

/// [`pair_grad_rows_with`] for rows `i`, `j` of `x`, their clamped norms read from
/// `norms` (cosine only).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn pair_grad<S: Simd>(
    s: S,
    metric: Metric,
    x: &Matrix<'_>,
    norms: &[f32],
    i: usize,
    j: usize,
    dist: f32,
    coef: f32,
    grad: &mut [f32],
) {
    let nrm = |k: usize| norms.get(k).copied().unwrap_or(1.0);
    pair_grad_rows_with(
        s,
        metric,
        x,
        (i, j),
        dist,
        (nrm(i), nrm(j)),
        0.0,
        coef,
        grad,
    );
}

/// `(|a - p|^2, |a - q|^2)` computed directly, in one pass over the three rows (one
/// lane-wise accumulator each).
#[inline(always)]
fn two_sq_dists<S: Simd>(s: S, a: &[f32], p: &[f32], q: &[f32]) -> (f32, f32) {
    let l = S::LANES;
    let (mut sp, mut sq) = (s.zero(), s.zero());
    let (mut ai, mut pi, mut qi) = (a.chunks_exact(l), p.chunks_exact(l), q.chunks_exact(l));
    for ((ac, pc), qc) in ai.by_ref().zip(pi.by_ref()).zip(qi.by_ref()) {
        let av = s.load(ac);
        let dp = s.sub(av, s.load(pc));
        let dq = s.sub(av, s.load(qc));
        sp = s.fma(dp, dp, sp);
        sq = s.fma(dq, dq, sq);
    }
    let (ar, pr, qr) = (ai.remainder(), pi.remainder(), qi.remainder());
    if !ar.is_empty() {
        // Zero padding adds exact zeros.
        let av = s.load(ar);
        let dp = s.sub(av, s.load(pr));
        let dq = s.sub(av, s.load(qr));
        sp = s.fma(dp, dp, sp);
        sq = s.fma(dq, dq, sq);
    }
    (s.reduce_add(sp), s.reduce_add(sq))
}

/// Rows `i`, `j`, `k` (pairwise distinct) of a row-major `grad` with rows of `d`, all
/// mutable, in that order.
#[inline(always)]
fn three_rows_mut(
    grad: &mut [f32],
    i: usize,
    j: usize,
    k: usize,
    d: usize,
) -> Option<[&mut [f32]; 3]> {
    // Sort the three (row, slot) pairs by row.
    let mut o = [(i, 0_usize), (j, 1), (k, 2)];
    if o[0].0 > o[1].0 {
        o.swap(0, 1);
    }
    if o[1].0 > o[2].0 {
        o.swap(1, 2);
    }
    if o[0].0 > o[1].0 {
        o.swap(0, 1);
    }
    let [(r0, s0), (r1, s1), (r2, s2)] = o;
    if r0 == r1 || r1 == r2 {
        return None;
    }
    let (head, rest) = grad.split_at_mut_checked(r1.checked_mul(d)?)?;
    let (mid, tail) = rest.split_at_mut_checked((r2 - r1).checked_mul(d)?)?;
    let mut slots: [Option<&mut [f32]>; 3] = [None, None, None];
    for (slot, row) in [
        (s0, head.get_mut(r0.checked_mul(d)?..)?.get_mut(..d)?),
        (s1, mid.get_mut(..d)?),
        (s2, tail.get_mut(..d)?),
    ] {
        if let Some(x) = slots.get_mut(slot) {
            *x = Some(row);
        }
    }
    let [Some(a), Some(b), Some(c)] = slots else {
        return None;
    };
    Some([a, b, c])
}

/// One triplet's Euclidean-type update in one pass: `ga += kp (a - p) - kq (a - q)`,
/// `gp -= kp (a - p)`, `gq += kq (a - q)`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn triplet_update<S: Simd>(
    s: S,
    kp: f32,
    kq: f32,
    a: &[f32],
    p: &[f32],
    q: &[f32],
    [ga, gp, gq]: [&mut [f32]; 3],
) {
    let k = [s.splat(kp), s.splat(-kp), s.splat(kq), s.splat(-kq)];
    let l = S::LANES;
    let (mut ai, mut pi, mut qi) = (a.chunks_exact(l), p.chunks_exact(l), q.chunks_exact(l));
    let (mut gai, mut gpi, mut gqi) = (
        ga.chunks_exact_mut(l),
        gp.chunks_exact_mut(l),
        gq.chunks_exact_mut(l),
    );
    for (((((ac, pc), qc), gac), gpc), gqc) in ai
        .by_ref()
        .zip(pi.by_ref())
        .zip(qi.by_ref())
        .zip(gai.by_ref())
        .zip(gpi.by_ref())
        .zip(gqi.by_ref())
    {
        triplet_step(s, k, [ac, pc, qc], [gac, gpc, gqc]);
    }
    let (ar, pr, qr) = (ai.remainder(), pi.remainder(), qi.remainder());
    if !ar.is_empty() {
        let g = [
            gai.into_remainder(),
            gpi.into_remainder(),
            gqi.into_remainder(),
        ];
        triplet_step(s, k, [ar, pr, qr], g);
    }
}

/// One vector of [`triplet_update`]; `k = [kp, -kp, kq, -kq]`.
#[inline(always)]
fn triplet_step<S: Simd>(
    s: S,
    k: [S::V; 4],
    [ac, pc, qc]: [&[f32]; 3],
    [ga, gp, gq]: [&mut [f32]; 3],
) {
    let [vkp, nkp, vkq, nkq] = k;
    let av = s.load(ac);
    let dp = s.sub(av, s.load(pc));
    let dq = s.sub(av, s.load(qc));
    s.store(s.fma(dq, nkq, s.fma(dp, vkp, s.load(ga))), ga);
    s.store(s.fma(dp, nkp, s.load(gp)), gp);
    s.store(s.fma(dq, vkq, s.load(gq)), gq);
}

/// The loss (and gradient) accumulator of batch-hard and semi-hard: each selected triplet's
/// two distances recomputed directly (as [`triplet_margin_loss`] does), its term added,
/// its two pairs updated.
struct LossAcc<'a, 'g> {
    x: Matrix<'a>,
    norms: &'a [f32],
    metric: Metric,
    margin: f32,
    hinge: Hinge,
    totals: Totals,
    grad: Option<&'g mut [f32]>,
}

impl Sink for LossAcc<'_, '_> {
    #[inline(always)]
    fn triplet<S: Simd>(&mut self, s: S, a: usize, p: usize, q: usize) {
        let (Some(xa), Some(xp), Some(xq)) = (self.x.row(a), self.x.row(p), self.x.row(q)) else {
            return;
        };
        let metric = self.metric;
        let (dap, daq) = match metric {
            Metric::SquaredEuclidean => two_sq_dists(s, xa, xp, xq),
            Metric::Euclidean => {
                let (sp, sq) = two_sq_dists(s, xa, xp, xq);
                (
                    euclidean_from_sq(sp, xa, xp, 0.0),
                    euclidean_from_sq(sq, xa, xq, 0.0),
                )
            }
            Metric::Cosine => {
                let nrm = |i: usize| self.norms.get(i).copied().unwrap_or(1.0);
                let (na, np, nq) = (nrm(a), nrm(p), nrm(q));
                (
                    direct_distance(s, metric, xa, xp, na, np),
                    direct_distance(s, metric, xa, xq, na, nq),
                )
            }
        };
        let v = dap - daq + self.margin;
        self.totals
            .add(self.hinge.apply(v), is_active(self.hinge, v));
        let Some(g) = self.grad.as_deref_mut() else {
            return;
        };
        let sl = self.hinge.slope(v);
        if sl == 0.0 {
            return;
        }
        let k = |dist: f32| {
            if metric == Metric::SquaredEuclidean {
                2.0 * sl
            } else if dist > 0.0 {
                sl / dist
            } else {
                0.0
            }
        };
        if metric == Metric::Cosine {
            pair_grad(s, metric, &self.x, self.norms, a, p, dap, sl, g);
            pair_grad(s, metric, &self.x, self.norms, a, q, daq, -sl, g);
        } else if let Some(rows) = three_rows_mut(g, a, p, q, self.x.dim()) {
            triplet_update(s, k(dap), k(daq), xa, xp, xq, rows);
        }
    }
}

/// Lanes of the batch-all sums.
const W: usize = 16;

/// Sum of the lanes in a fixed tree order.
#[inline(always)]
fn sum_lanes(v: &[f32; W]) -> f32 {
    let mut h = *v;
    let mut w = W / 2;
    while w > 0 {
        for l in 0..w {
            if let (Some(&hi), Some(lo)) = (h.get(l + w), h.get(l)) {
                h[l] = lo + hi;
            }
        }
        w /= 2;
    }
    h[0]
}

/// Positives swept together by [`relu_group`]: their terms share each load of the
/// negatives' distances and each update of the coefficients.
const GROUP: usize = 4;

/// Up to [`GROUP`] anchor-positive pairs of batch-all under the relu hinge: for every
/// negative distance `m_q` of `masked` (NaN elsewhere) and each `base_g` of `bases`,
/// `v = base_g - m_q`; returns per pair the sum of `max(v, 0)` and the number of `v > 0`
/// (lane-wise `f32` accumulators over the chunks in order, then the backend's lane sum:
/// the same arithmetic, pair by pair, as one pair at a time), and subtracts the slopes
/// (0 or 1, so their sum is exact) from `coef[q]` when given. A NaN base adds nothing.
///
/// The slope is `min(max(v, 0) * 2^149, 1)`, computed in two exact scalings: 0 for
/// `v <= 0` (or NaN), 1 for every `v > 0` down to the smallest subnormal.
#[inline(always)]
fn relu_group<S: Simd>(
    s: S,
    masked: &[f32],
    bases: &[f32; GROUP],
    coef: Option<&mut [f32]>,
) -> ([f32; GROUP], [f32; GROUP]) {
    let l = S::LANES;
    let zero = s.zero();
    let one = s.splat(1.0);
    let (up1, up2) = (
        s.splat(f32::from_bits(253 << 23)),
        s.splat(f32::from_bits(150 << 23)),
    );
    let vb: [S::V; GROUP] = bases.map(|b| s.splat(b));
    let mut hs = [zero; GROUP];
    let mut on = [zero; GROUP];
    // One chunk of negatives against the group; returns the chunk's summed slopes.
    let mut step = |m: S::V| {
        let mut count = zero;
        for ((&b, h_acc), o_acc) in vb.iter().zip(hs.iter_mut()).zip(on.iter_mut()) {
            let h = s.max(s.sub(b, m), zero);
            let sl = s.min(s.mul(s.mul(h, up1), up2), one);
            *h_acc = s.add(*h_acc, h);
            *o_acc = s.add(*o_acc, sl);
            count = s.add(count, sl);
        }
        count
    };
    let mut chunks = masked.chunks_exact(l);
    // Padding lanes of the tail are NaN: no term, no slope.
    let mut tail = [f32::NAN; MAX_LANES];
    for (t, &m) in tail.iter_mut().zip(chunks.remainder()) {
        *t = m;
    }
    let rem = chunks.remainder().len();
    if let Some(coef) = coef {
        let mut cc = coef.chunks_exact_mut(l);
        for (m, c) in chunks.by_ref().zip(cc.by_ref()) {
            let count = step(s.load(m));
            s.store(s.sub(s.load(c), count), c);
        }
        if rem > 0 {
            let count = step(s.load(&tail));
            let c = cc.into_remainder();
            s.store(s.sub(s.load(c), count), c);
        }
    } else {
        for m in chunks.by_ref() {
            step(s.load(m));
        }
        if rem > 0 {
            step(s.load(&tail));
        }
    }
    (hs.map(|h| s.reduce_add(h)), on.map(|o| s.reduce_add(o)))
}

/// The gradient buffers of the batch-all loss.
struct AllGrad<'o> {
    /// Pair coefficients of the current anchor (`n`).
    coef: &'o mut [f32],
    /// Diagonal terms: `grad_i += diag_i * x_i` at the end (`n`).
    diag: &'o mut [f32],
    /// The GEMM's packed coefficients (`GEMM_MR * n`).
    cpack: &'o mut [f32],
    grad: &'o mut [f32],
}

/// Batch-all loss over a block of anchor rows `i0..` (`block`: their distance rows), with
/// its gradient when `grad` is given.
///
/// Per anchor `a`, its positives `p` (listed once per run of equal anchor labels) are
/// swept over the row's negatives four at a time (one vector pass per group for the relu
/// hinge), giving the pair coefficients `c_aj` (`+sum of slopes` for `j = p`,
/// `-sum of slopes` for a negative). The gradient of the block is then GEMM-shaped: with
/// `k_aj` the factor of `d d(a, j) / d a = k_aj (x_a - x_j)` (`2 c`, `c / d`) or the
/// cosine terms, the block's row of `G` is `-k_aj` and the diagonal terms collect
/// `sum_j k_aj`, so that `grad[block] += G X` and `grad += G^T X[block]`, plus
/// `diag * X` at the end. Pairs whose distance is small against their norms (the
/// accuracy fix-up's test) are updated in difference form instead.
struct AllBlock<'a, 'o> {
    x: Matrix<'a>,
    labels: &'a [u32],
    norms: &'a [f32],
    metric: Metric,
    hinge: Hinge,
    margin: f32,
    i0: usize,
    block: &'o mut [f32],
    masked: &'o mut [f32],
    /// Scratch for the positives of an anchor (`n` row indices).
    pos: &'o mut [u32],
    totals: &'o mut Totals,
    grad: Option<AllGrad<'o>>,
}

/// Writes the indices of the rows labelled `label` to the front of `out`, ascending, and
/// returns how many there are (rows past `out.len()` or past `u32::MAX` are not listed;
/// the caller provides one slot per row and rows fit a `u32` by the batch's checks).
#[inline(always)]
fn list_label(labels: &[u32], label: u32, out: &mut [u32]) -> usize {
    let mut len = 0;
    for (j, &l) in labels.iter().enumerate() {
        if l == label {
            if let (Some(slot), Ok(j)) = (out.get_mut(len), u32::try_from(j)) {
                *slot = j;
                len += 1;
            }
        }
    }
    len
}

impl Kernel for AllBlock<'_, '_> {
    type Output = ();
    #[inline(always)]
    fn run<S: Simd, const MR: usize, const NV: usize>(self, s: S) {
        let AllBlock {
            x,
            labels,
            norms,
            metric,
            hinge,
            margin,
            i0,
            block,
            masked,
            pos,
            totals,
            mut grad,
        } = self;
        let n = labels.len();
        if n == 0 || masked.len() != n || norms.len() != n || pos.len() != n {
            return;
        }
        let (mut pos_label, mut pos_len) = (None, 0);
        for (r, row) in block.chunks_exact_mut(n).enumerate() {
            let a = i0 + r;
            let Some(&la) = labels.get(a) else {
                return;
            };
            let mut negs = 0_u32;
            for ((m, &v), &l) in masked.iter_mut().zip(row.iter()).zip(labels) {
                let neg = l != la;
                *m = if neg { v } else { f32::NAN };
                negs += u32::from(neg);
            }
            let negs = negs as usize;
            if let Some(g) = grad.as_mut() {
                g.coef.fill(0.0);
            }
            if negs > 0 {
                // The anchor's positives, ascending: the rows of its label (listed once
                // per run of equal anchor labels) other than itself.
                if pos_label != Some(la) {
                    pos_len = list_label(labels, la, pos);
                    pos_label = Some(la);
                }
                let mut positives = pos
                    .get(..pos_len)
                    .unwrap_or(&[])
                    .iter()
                    .map(|&p| p as usize)
                    .filter(|&p| p != a);
                loop {
                    // The next group of positives (`usize::MAX` and a NaN base mark an
                    // empty slot, which adds nothing).
                    let mut members = [usize::MAX; GROUP];
                    let mut bases = [f32::NAN; GROUP];
                    let mut filled = 0;
                    while filled < GROUP {
                        let Some(p) = positives.next() else {
                            break;
                        };
                        if let (Some(&dap), Some(slot), Some(base)) =
                            (row.get(p), members.get_mut(filled), bases.get_mut(filled))
                        {
                            *slot = p;
                            *base = dap + margin;
                            filled += 1;
                        }
                    }
                    if filled == 0 {
                        break;
                    }
                    let mut sums = [(0.0_f64, 0_usize, 0.0_f32); GROUP];
                    let coef = grad.as_mut().map(|g| &mut *g.coef);
                    match hinge {
                        Hinge::Relu => {
                            let (h, on) = relu_group(s, masked, &bases, coef);
                            for ((t, &h), &on) in sums.iter_mut().zip(&h).zip(&on) {
                                *t = (f64::from(h), on as usize, on);
                            }
                        }
                        Hinge::SoftPlus => {
                            let filled = sums.iter_mut().zip(&bases).take(filled);
                            if let Some(coef) = coef {
                                for (t, &base) in filled {
                                    *t = soft_pair(masked, base, Some(&mut *coef));
                                }
                            } else {
                                for (t, &base) in filled {
                                    *t = soft_pair(masked, base, None);
                                }
                            }
                        }
                    }
                    for (&p, &(sum, active, slopes)) in members.iter().zip(&sums) {
                        if p == usize::MAX {
                            continue;
                        }
                        totals.sum += sum;
                        totals.count = totals.count.saturating_add(negs);
                        totals.active = totals.active.saturating_add(active);
                        if let Some(c) = grad.as_mut().and_then(|g| g.coef.get_mut(p)) {
                            *c += slopes;
                        }
                    }
                }
            }
            if let Some(g) = grad.as_mut() {
                coefficient_row(s, metric, &x, norms, a, row, g);
            }
        }
        let Some(g) = grad else {
            return;
        };
        let d = x.dim();
        let rows = block.len() / n;
        let i1 = i0 + rows;
        // The block's own columns: G[a][j] and G[j][a] both in the block, summed into one
        // symmetric coefficient so the anchor side alone applies them.
        symmetrise(s, block, n, i0, rows);
        let block = &*block;
        let (Some(xb), Some((head, rest))) = (
            x.as_slice().get(i0 * d..i1 * d),
            g.grad.split_at_mut_checked(i0 * d),
        ) else {
            return;
        };
        let Some((ga, tail)) = rest.split_at_mut_checked(rows * d) else {
            return;
        };
        // Anchor side: grad[a] += sum_j G[a][j] x_j.
        gemm_acc(s, block, n, 1, x.as_slice(), d, ga, g.cpack);
        // Column side, outside the block: grad[j] += sum_a G[a][j] x_a.
        gemm_acc(s, block, 1, n, xb, d, head, g.cpack);
        gemm_acc(
            s,
            block.get(i1..).unwrap_or(&[]),
            1,
            n,
            xb,
            d,
            tail,
            g.cpack,
        );
    }
}

/// The soft-margin twin of [`relu_pair`] (scalar `ln(1 + e^v)` per term, summed in `f64`):
/// returns the sum, the number of active terms and the sum of the slopes.
#[inline(always)]
fn soft_pair(masked: &[f32], base: f32, coef: Option<&mut [f32]>) -> (f64, usize, f32) {
    let (mut sum, mut active, mut slopes) = (0.0_f64, 0_usize, 0.0_f32);
    let hinge = Hinge::SoftPlus;
    match coef {
        Some(coef) => {
            for (&m, c) in masked.iter().zip(coef.iter_mut()) {
                if !m.is_nan() {
                    let v = base - m;
                    sum += f64::from(hinge.apply(v));
                    active += usize::from(is_active(hinge, v));
                    let sl = hinge.slope(v);
                    *c -= sl;
                    slopes += sl;
                }
            }
        }
        None => {
            for &m in masked {
                if !m.is_nan() {
                    let v = base - m;
                    sum += f64::from(hinge.apply(v));
                    active += usize::from(is_active(hinge, v));
                }
            }
        }
    }
    (sum, active, slopes)
}

/// Turns anchor `a`'s pair coefficients (`g.coef`) and distances (`row`) into its row of
/// the GEMM coefficients `G` (written over `row`) and the diagonal terms; near pairs are
/// updated in difference form directly.
#[inline(always)]
fn coefficient_row<S: Simd>(
    s: S,
    metric: Metric,
    x: &Matrix<'_>,
    norms: &[f32],
    a: usize,
    row: &mut [f32],
    g: &mut AllGrad<'_>,
) {
    let Some(&na) = norms.get(a) else {
        return;
    };
    let mut diag_a = [0.0_f32; W];
    match metric {
        Metric::SquaredEuclidean | Metric::Euclidean => {
            let squared = metric == Metric::SquaredEuclidean;
            let k_of = |c: f32, dist: f32| {
                if squared {
                    2.0 * c
                } else if dist > 0.0 {
                    c / dist
                } else {
                    0.0
                }
            };
            // Near pairs (rare): difference form, then out of the GEMM.
            let mut near = 0_u32;
            for ((&dist, &c), &nj) in row.iter().zip(g.coef.iter()).zip(norms) {
                near += u32::from((c != 0.0) & needs_direct(dist, squared, na, nj));
            }
            if near > 0 {
                for (j, ((&dist, c), &nj)) in
                    row.iter().zip(g.coef.iter_mut()).zip(norms).enumerate()
                {
                    if *c != 0.0 && needs_direct(dist, squared, na, nj) {
                        pair_grad(s, metric, x, norms, a, j, dist, *c, g.grad);
                        *c = 0.0;
                    }
                }
            }
            let (rc, rt) = row.as_chunks_mut::<W>();
            let (cc, ct) = g.coef.as_chunks::<W>();
            let (dc, dt) = g.diag.as_chunks_mut::<W>();
            // Whole chunks: one loop per metric, the division done unconditionally and
            // then selected, so that the compiler vectorises it (the branchy closure form
            // stays scalar).
            let chunks = rc.iter_mut().zip(cc).zip(dc.iter_mut());
            if squared {
                for ((r, c), dg) in chunks {
                    for l in 0..W {
                        let k = 2.0 * c[l];
                        r[l] = -k;
                        dg[l] += k;
                        diag_a[l] += k;
                    }
                }
            } else {
                for ((r, c), dg) in chunks {
                    // In local arrays: the row and the diagonal terms are slices the
                    // compiler cannot prove disjoint.
                    let (rv, cv, mut dv) = (*r, *c, *dg);
                    let mut k = [0.0_f32; W];
                    for l in 0..W {
                        let q = cv[l] / rv[l];
                        k[l] = if rv[l] > 0.0 { q } else { 0.0 };
                    }
                    for l in 0..W {
                        dv[l] += k[l];
                        diag_a[l] += k[l];
                    }
                    *r = k.map(|v| -v);
                    *dg = dv;
                }
            }
            for (l, ((r, &c), dg)) in rt.iter_mut().zip(ct).zip(dt.iter_mut()).enumerate() {
                let k = k_of(c, *r);
                *r = -k;
                *dg += k;
                if let Some(da) = diag_a.get_mut(l) {
                    *da += k;
                }
            }
        }
        Metric::Cosine => {
            let own = |c: f32, dist: f32, n: f32| {
                if n > NORM_EPS {
                    c * (1.0 - dist) / (n * n)
                } else {
                    0.0
                }
            };
            for (l, (((r, &c), &nj), dg)) in row
                .iter_mut()
                .zip(g.coef.iter())
                .zip(norms)
                .zip(g.diag.iter_mut())
                .enumerate()
            {
                let dist = *r;
                *r = -c / (na * nj);
                *dg += own(c, dist, nj);
                if let Some(da) = diag_a.get_mut(l % W) {
                    *da += own(c, dist, na);
                }
            }
        }
    }
    if let Some(da) = g.diag.get_mut(a) {
        *da += sum_lanes(&diag_a);
    }
}

/// `grad_i += diag_i * x_i` for every row.
struct AddDiag<'a, 'o> {
    x: Matrix<'a>,
    diag: &'a [f32],
    grad: &'o mut [f32],
}

impl Kernel for AddDiag<'_, '_> {
    type Output = ();
    #[inline(always)]
    fn run<S: Simd, const MR: usize, const NV: usize>(self, s: S) {
        let d = self.x.dim();
        for (i, (row, &k)) in self.x.row_iter().zip(self.diag).enumerate() {
            if let Some(g) = self.grad.get_mut(i * d..(i + 1) * d) {
                simd::axpy_with(s, k, row, g);
            }
        }
    }
}

/// The shared body of the batch losses; `grad` is `None` for the forward pass. Inlined
/// into both entry points, so that the link-time no-panic proof sees its body there.
#[inline(always)]
fn batch_impl(
    x: Matrix<'_>,
    labels: &[u32],
    params: &BatchParams,
    mut grad: Option<&mut [f32]>,
    workspace: &mut [f32],
) -> Result<BatchLoss, Error> {
    let n = check_batch_args(&x, labels, params)?;
    let dim = x.dim();
    if let Some(g) = grad.as_deref() {
        check_len("grad", x.len(), g.len())?;
    }
    check_workspace(batch_len(n, dim, *params, grad.is_some()), workspace.len())?;
    check_rows(&x, params.normalize)?;
    // Read once: normalisation, distances, mining, gradient blocks and the backward
    // normalisation of this call all use it.
    let backend = Backend::active();
    let mut ws = Carve::new(workspace);
    let (y, tmp) = if params.normalize {
        let y = ws.take(x.len())?;
        let tmp = ws.take(if grad.is_some() { dim } else { 0 })?;
        l2_normalize_on(backend, x, y)?;
        (Some(&*y), tmp)
    } else {
        (None, &mut [][..])
    };
    let xs = match y {
        Some(y) => Matrix::new(y, n, dim)?,
        None => x,
    };
    let norms = ws.take(n)?;
    metric_norms(backend, &xs, params.metric, norms);
    let norms = &*norms;
    if let Some(g) = grad.as_deref_mut() {
        g.fill(0.0);
    }
    let (metric, hinge, margin) = (params.metric, params.hinge, params.margin);
    let totals = match params.mining {
        Mining::BatchHard | Mining::SemiHard => {
            let mut acc = LossAcc {
                x: xs,
                norms,
                metric,
                margin,
                hinge,
                totals: Totals::default(),
                grad: grad.as_deref_mut(),
            };
            if params.mining == Mining::BatchHard {
                let mut st = HardState::take(&mut ws, n)?;
                let t = n.min(TILE);
                let tile = ws.take(t * t)?;
                let pack = ws.rest();
                hard_sweep(backend, &xs, labels, metric, norms, &mut st, tile, pack)?;
                backend.dispatch(EmitHard {
                    st: &st,
                    sink: &mut acc,
                });
            } else {
                let scratch = ws.take(2 * n)?;
                let block = ws.take(block_rows(n) * n)?;
                let pack = ws.rest();
                for_row_blocks(backend, &xs, metric, norms, block, pack, |i0, _, blk| {
                    backend.dispatch(SemiBlock {
                        block: blk,
                        i0,
                        labels,
                        scratch: &mut *scratch,
                        sink: &mut acc,
                    });
                    Ok(())
                })?;
            }
            acc.totals
        }
        Mining::All => {
            let masked = ws.take(n)?;
            let pos = ws.take_u32(n)?;
            let mut bufs = match grad.as_deref_mut() {
                Some(g) => {
                    let coef = ws.take(n)?;
                    let diag = ws.take(n)?;
                    let cpack = ws.take(GEMM_MR * n)?;
                    diag.fill(0.0);
                    Some((coef, diag, cpack, g))
                }
                None => None,
            };
            let block = ws.take(block_rows(n) * n)?;
            let mut totals = Totals::default();
            let pack = ws.rest();
            for_row_blocks(backend, &xs, metric, norms, block, pack, |i0, _, blk| {
                backend.dispatch(AllBlock {
                    x: xs,
                    labels,
                    norms,
                    metric,
                    hinge,
                    margin,
                    i0,
                    block: blk,
                    masked: &mut *masked,
                    pos: &mut *pos,
                    totals: &mut totals,
                    grad: bufs.as_mut().map(|(coef, diag, cpack, grad)| AllGrad {
                        coef,
                        diag,
                        cpack,
                        grad,
                    }),
                });
                Ok(())
            })?;
            if let Some((_, diag, _, grad)) = bufs {
                backend.dispatch(AddDiag { x: xs, diag, grad });
            }
            totals
        }
    };
    let (loss, w) = totals.finish(params.reduction);
    if let Some(g) = grad {
        finish_grad(backend, w, g);
        if params.normalize {
            // Row by row (indices, not a zip of chunk iterators, whose length would
            // divide by the row length).
            for (i, row) in x.row_iter().enumerate() {
                let Some(gr) = g.get_mut(i * dim..(i + 1) * dim) else {
                    break;
                };
                for (t, &v) in tmp.iter_mut().zip(gr.iter()) {
                    *t = v;
                }
                l2_normalize_backward_on(backend, Matrix::new(row, 1, dim)?, tmp, gr)?;
            }
        }
    }
    Ok(loss)
}

/// Triplet loss of a labelled batch with online mining: selects the triplets with
/// `params.mining`, forms `v = d(a, p) - d(a, n) + margin` for each, applies the hinge and
/// reduces (see the [module docs](self)). Returns the loss with the number of selected and
/// of active (`> 0`) terms. A batch that selects nothing (one row, one class, no
/// positives) has loss 0.
///
/// No `n x n` matrix is held (see [`crate::mining`]'s
/// [memory notes](crate::mining#memory-no-n-x-n-matrix)): batch-hard sweeps the upper
/// triangle of the distance matrix in tiles, each distance computed once; semi-hard and
/// batch-all compute blocks of 256 anchor rows at a time and mine each anchor from its
/// row. Batch-hard and semi-hard then recompute the two distances of each selected
/// triplet directly (`sum (a_i - b_i)^2`, as [`triplet_margin_loss`] does); batch-all
/// uses the row's distances. Scalar twin: [`crate::scalar::triplet_batch_loss`]; with the
/// gradient: [`triplet_batch_loss_grad`]. `workspace` needs
/// [`triplet_batch_loss_workspace_len`]`(rows, dim, params)` elements, garbage before and
/// after.
///
/// # Errors
///
/// - [`Error::InvalidParameter`] (`"margin"`) for a margin that is NaN or above `2^100` in
///   magnitude;
/// - [`Error::LengthMismatch`] (`"labels"`) when `labels.len() != rows`;
/// - [`Error::ShapeOverflow`] when the triplet count overflows `usize`;
/// - [`Error::WorkspaceTooSmall`] when the workspace is too short;
/// - [`Error::NonFinite`] (`"x"`, flat position) when `x` holds a NaN or an infinity.
/// - [`Error::TooLarge`] (`"x"`, row and column) when an element of `x` exceeds
///   `2^52 / sqrt(dim)` and the rows are not normalised first (`normalize: false`),
///   where squared distances could overflow `f32`.
///
/// # Numerics
///
/// Mining decisions on `f32` distances with the accuracy of
/// [`crate::mining`](crate::mining#distances-and-their-accuracy) (ties to the smallest
/// index). Batch-hard and semi-hard terms use directly computed distances, within
/// `(d + 2) 2^-24` relative of the exact squared distances; batch-all terms use the
/// mined rows' distances, within `(8 d + 16) 2^-24` relative (Euclidean metrics) or
/// `(2 d + 10) 2^-24` absolute (cosine). Terms in `f32`; batch-hard and semi-hard terms
/// summed in `f64`; batch-all relu terms of one anchor-positive pair summed in the SIMD
/// backend's `f32` lanes (8 or 16) and then across them (error at most
/// `(n / 8 + 5) 2^-24` times their sum), the pairs in `f64`; soft-margin terms in `f64`.
/// Batch-all and batch-hard losses are continuous in the distances, so they stay within
/// the weighted sum of the per-term bounds even where a near-tie is decided differently
/// from the `f64` twin; semi-hard can differ by a whole term where a negative's distance
/// lies within rounding of the positive's.
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
    batch_impl(x, labels, &params, None, workspace)
}

/// [`triplet_batch_loss`] and its gradient with respect to `x`, in one call: mines,
/// reduces, writes `grad = d loss / d x` (`rows * dim`, every element overwritten) and
/// returns the loss with the triplet counts.
///
/// Each selected triplet gives the pair `(a, p)` the coefficient `+s` and the pair
/// `(a, n)` the coefficient `-s`, `s = h'(v)`; a pair with coefficient `c` adds
/// `c * d d(a, j) / d x` to the rows `a` and `j` (formulas in
/// [`triplet_margin_loss_grad`]), and the total is scaled by the reduction weight at the
/// end. Batch-hard and semi-hard, with one or a few triplets per anchor, update the three
/// rows of each triplet in one pass (differences formed once, `O(triplets * dim)`).
/// Batch-all sums the coefficients of each anchor's pairs (one vector pass per four
/// positives) and accumulates a block of anchors with register-blocked GEMMs: with `G`
/// the block's `256 x n` pair factors (written over its distances),
/// `grad[block] += G X` and, for the columns outside the block, `grad += G^T X[block]`;
/// inside the block `G` is summed with its transpose first, so a batch of up to 256 rows
/// needs the one product `G X` (`n^2 d` multiply-adds, twice the forward's triangle of
/// distances). Pairs that nearly coincide (the accuracy fix-up's test) are updated in
/// difference form instead. With `params.normalize` the
/// gradient is taken through the normalisation ([`crate::l2_normalize_backward`]). Mining
/// decisions are constants for the gradient. Scalar twin:
/// [`crate::scalar::triplet_batch_loss_grad`]. `workspace` needs
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
/// As [`triplet_batch_loss`] for the loss, bit for bit the same value. Away from hinge
/// kinks and mining near-ties the gradient is within `(m + d / 8 + 16) * 2^-24 * G` of
/// the twin's per element for batch-hard and semi-hard (`m` updates to the row, `G` the
/// sum of their absolute values). Batch-all's GEMM form `sum_j k_j x_a - sum_j k_j x_j`
/// rounds relative to the rows rather than their differences; since it only takes pairs
/// with `|a|^2 + |b|^2 <= 4 |a - b|^2`, so that `|a_i| + |b_i| <= sqrt(8 d) max_i
/// |a_i - b_i|`, each element stays within `(2 n + 4) sqrt(8 d) 2^-24 * G'`, `G'` the
/// sum over the row's pair updates of `|k| max_i |a_i - b_i|`, plus the effect of the
/// distance errors on the coefficients. The gradient is finite on every degenerate batch (single row, one class,
/// duplicate rows: the Euclidean gradient at distance 0 is 0; zero rows under cosine use
/// the clamped norm `1e-12`, which gives large but finite values).
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
    batch_impl(x, labels, &params, Some(grad), workspace)
}
