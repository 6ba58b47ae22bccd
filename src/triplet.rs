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
//! anchors out (a triplet needs a positive and a negative), as its conformance vectors
//! expect. On batches where every anchor has a positive and a negative (every P x K batch
//! with P, K >= 2, as in all of the shipped TensorFlow Addons vectors) both agree.
//!
//! # Non-finite data and the data range
//!
//! The loss kernels scan `x` first and return [`Error::NonFinite`] for a NaN or an
//! infinity (a hinge or a mining decision would otherwise hide it). Without `normalize`,
//! they also return [`Error::TooLarge`] for an element above `2^52 / sqrt(dim)` (about
//! `4.5e15 / sqrt(dim)`): past it squared distances or their sums could overflow `f32`.
//! One rule for every mining strategy, fast kernel and twin alike; with `normalize` any
//! finite data is accepted (normalisation is overflow-safe).

mod batch;
mod batch_all;
mod batch_ref;
mod explicit;
mod hard_pairs;
mod per_triplet;

pub use batch::{
    triplet_batch_loss, triplet_batch_loss_grad, triplet_batch_loss_grad_workspace_len,
    triplet_batch_loss_workspace_len,
};
pub(crate) use batch_ref::{check_mine_ref_args, check_ref_args, check_y_rows, ref_count};
pub use batch_ref::{
    mine_triplets_ref, mine_triplets_ref_count, mine_triplets_ref_workspace_len,
    triplet_batch_ref_loss, triplet_batch_ref_loss_grad, triplet_batch_ref_loss_grad_workspace_len,
    triplet_batch_ref_loss_workspace_len, GradMode, RefGrad, RefSet,
};
#[allow(deprecated)]
pub use explicit::triplet_margin_workspace_len;
pub use explicit::{
    triplet_margin_loss, triplet_margin_loss_grad, triplet_margin_loss_workspace_len,
};
pub(crate) use hard_pairs::check_hardest_pairs_args;
pub use hard_pairs::{
    triplet_hardest_pairs_loss, triplet_hardest_pairs_loss_grad,
    triplet_hardest_pairs_loss_workspace_len,
};

use crate::distance::Metric;
use crate::error::Error;
use crate::matrix::Matrix;
use crate::mining::{Mining, Triplet};
use crate::reduce::{Hinge, Reduction};
use crate::simd::{self, Backend};
use crate::validate::{check_labels, check_len, check_triplet_count, check_workspace};

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
#[non_exhaustive]
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
#[non_exhaustive]
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
    /// Euclidean, [`Mining::BatchHard`] (which is also `Mining::default()`), margin 0.2,
    /// [`Hinge::Relu`], [`Reduction::Mean`], no normalisation.
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
#[non_exhaustive]
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
    /// The unreduced sum of the selected terms, in `f64`, before the reduction's weight:
    /// with the two counts, what blocks of anchors computed separately add up to the
    /// whole batch's loss ([`combine_batch_losses`]).
    pub sum: f64,
}

/// Combines the [`BatchLoss`]es of blocks of anchors computed separately (on threads or
/// on other machines, each over its own anchors against the same candidates) into the
/// loss of the whole batch:
///
/// ```text
/// S = sum_b sum_b,   K = sum_b num_triplets_b,   A = sum_b num_active_b,
/// w = reduction.weight(K, A)   (1 for sum, 1 / K for mean, 1 / A for mean_nonzero, 0 / 0 = 0)
/// loss = S * w
/// ```
///
/// Returns the combined [`BatchLoss`] and `w`: gradients of the blocks computed with
/// [`Reduction::Sum`] (their sums, [`GradMode::Accumulate`] into shared buffers or added
/// up by an all-reduce) times `w` are the whole batch's gradient. The parts are added in
/// the given order; the loss is rounded to `f32` once, as the single call rounds it.
///
/// # Numerics
///
/// `S` in `f64`, so it differs from the single call's sum (added anchor by anchor) by at
/// most `k 2^-53` times the sum of the term magnitudes; where the sums are exact (for
/// example integer terms) the combined loss equals the single call's bit for bit.
///
/// # Example
///
/// ```
/// use triplet_kernels::{combine_batch_losses, triplet_batch_ref_loss};
/// use triplet_kernels::{triplet_batch_ref_loss_workspace_len, BatchParams, Matrix, RefSet, Reduction};
/// let y = Matrix::new(&[0.0, 1.0, 1.5, 4.0], 4, 1)?;
/// let labels = [0, 0, 1, 1];
/// const P: BatchParams = BatchParams::new().with_margin(1.0).with_reduction(Reduction::Sum);
/// let mut ws = [0.0_f32; triplet_batch_ref_loss_workspace_len(4, 4, 1, P)];
/// let refs = RefSet::new(y, &labels).with_self_index(&[0, 1, 2, 3]);
/// let whole = triplet_batch_ref_loss(y, &labels, refs, P.with_reduction(Reduction::Mean), &mut ws)?;
/// // Two blocks of anchors, rows 0..2 and 2..4, each against the whole set.
/// let lo = Matrix::new(&[0.0, 1.0], 2, 1)?;
/// let hi = Matrix::new(&[1.5, 4.0], 2, 1)?;
/// let b0 = triplet_batch_ref_loss(lo, &labels[..2], refs.with_self_index(&[0, 1]), P, &mut ws)?;
/// let b1 = triplet_batch_ref_loss(hi, &labels[2..], refs.with_self_index(&[2, 3]), P, &mut ws)?;
/// let (all, w) = combine_batch_losses(&[b0, b1], Reduction::Mean);
/// assert_eq!((all.loss, all.num_triplets, w), (whole.loss, 4, 0.25));
/// # Ok::<(), triplet_kernels::Error>(())
/// ```
#[cfg_attr(feature = "no-panic", no_panic::no_panic)]
pub fn combine_batch_losses(parts: &[BatchLoss], reduction: Reduction) -> (BatchLoss, f32) {
    let mut total = BatchLoss::default();
    for p in parts {
        total.sum += p.sum;
        total.num_triplets = total.num_triplets.saturating_add(p.num_triplets);
        total.num_active = total.num_active.saturating_add(p.num_active);
    }
    let w = reduction.weight(total.num_triplets, total.num_active);
    total.loss = (total.sum * f64::from(w)) as f32;
    (total, w)
}

// ---------------------------------------------------------------------------------------
// Validation shared with the scalar twins.

/// Checks the parameters of an explicit-triplet loss.
pub(crate) fn check_triplet_params(params: &TripletParams) -> Result<(), Error> {
    if !params.margin.is_finite() {
        return Err(Error::InvalidParameter {
            name: "margin",
            expected: "finite",
        });
    }
    // |eps| <= 1 keeps the shifted squared distances inside f32 for every accepted row
    // (see `Error::TooLarge`); PyTorch's default is 1e-6.
    let eps_ok = params.eps.abs() <= 1.0;
    if !eps_ok || (params.metric == Metric::Cosine && params.eps != 0.0) {
        return Err(Error::InvalidParameter {
            name: "eps",
            expected: "|eps| <= 1, and 0 for cosine",
        });
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
    check_workspace(triplet_margin_loss_workspace_len(n, x.dim()), workspace)?;
    Ok(n)
}

/// Largest `|margin|` of the batch losses: `2^100` (about `1.3e30`).
pub(crate) const MARGIN_MAX: f32 = 1.267_650_6e30;

/// Checks the parameters of a batch loss (the margin).
pub(crate) fn check_batch_args_params(params: &BatchParams) -> Result<(), Error> {
    // |margin| <= 2^100 keeps batch-all's f32 row sums of hinge terms finite (see
    // `Error::TooLarge` for the data side of the same rule).
    let margin_ok = params.margin.abs() <= MARGIN_MAX;
    if !margin_ok {
        return Err(Error::InvalidParameter {
            name: "margin",
            expected: "finite, |margin| <= 2^100",
        });
    }
    Ok(())
}

/// Checks every argument of a batch loss except the gradient and the workspace; returns
/// `n`.
pub(crate) fn check_batch_args(
    x: &Matrix<'_>,
    labels: &[u32],
    params: &BatchParams,
) -> Result<usize, Error> {
    check_batch_args_params(params)?;
    let n = check_labels(x, labels)?;
    check_triplet_count(labels, params.mining)?;
    Ok(n)
}

// ---------------------------------------------------------------------------------------
// Shared by the explicit and the batch losses.

/// Scales an accumulated gradient by the reduction weight (exact zeros when it is 0).
#[inline]
fn finish_grad(backend: Backend, w: f32, grad: &mut [f32]) {
    if w == 0.0 {
        grad.fill(0.0);
    } else if w != 1.0 {
        simd::scale(backend, w, grad);
    }
}
