//! Contrastive loss over all ordered pairs of a labelled batch, and its gradient.
//!
//! For every ordered pair `(i, j)` with `i != j` and `d = d(x_i, x_j)` under the chosen
//! [`Metric`]:
//!
//! - a **positive pair** (`labels[i] == labels[j]`) contributes `relu(d - pos_margin)`;
//! - a **negative pair** (`labels[i] != labels[j]`) contributes `relu(neg_margin - d)`.
//!
//! With [`ContrastiveForm::Squared`] each term is squared instead: `relu(d - pos_margin)^2`
//! and `relu(neg_margin - d)^2`, which with `pos_margin = 0` is the classic form of Hadsell,
//! Chopra and LeCun (2006), `d^2` for positives and `relu(m - d)^2` for negatives, as
//! TensorFlow Addons ships it. **No factor 1/2**: the paper's loss is
//! `(1/2) d^2 + (1/2) relu(m - d)^2`, so these terms (and their gradients) are twice the
//! paper's; halve the loss and the gradient to reproduce it.
//!
//! The terms are reduced by a [`ContrastiveReduction`]; the default,
//! [`ContrastiveReduction::MeanNonzeroPerPart`], is pytorch-metric-learning's: the mean of
//! the positive terms that are `> 0` plus the mean of the negative terms that are `> 0`,
//! each count held constant for the gradient. Every unordered pair appears twice (as
//! `(i, j)` and `(j, i)`), exactly as in pytorch-metric-learning; the means are unchanged
//! by this, [`ContrastiveReduction::Sum`] counts each pair twice.
//!
//! A batch of one row, or without positive (negative) pairs, has no positive (negative)
//! terms: that part is 0 with a zero gradient.

pub(crate) mod pairs;

pub use pairs::{
    contrastive_loss_pairs, contrastive_loss_pairs_grad, contrastive_loss_pairs_workspace_len,
};

use crate::distance::{clamped_row_norms, distance, pair_grad_rows, Metric};
use crate::error::Error;
use crate::matrix::Matrix;
use crate::reduce::Reduction;
use crate::simd::Backend;
use crate::validate::{check_labels, check_len, check_rows, check_workspace};
use crate::workspace::Carve;

/// Whether the pair terms of [`contrastive_loss`] are hinges or squared hinges.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum ContrastiveForm {
    /// `relu(d - pos_margin)` and `relu(neg_margin - d)` (pytorch-metric-learning).
    #[default]
    Linear,
    /// `relu(d - pos_margin)^2` and `relu(neg_margin - d)^2` (Hadsell et al. 2006 with
    /// `pos_margin = 0`; TensorFlow Addons' `contrastive_loss`).
    Squared,
}

impl ContrastiveForm {
    /// Term of a positive pair at distance `d`.
    #[inline]
    pub(crate) fn pos_term(self, d: f32, pos_margin: f32) -> f32 {
        let v = crate::math::relu(d - pos_margin);
        match self {
            ContrastiveForm::Linear => v,
            ContrastiveForm::Squared => v * v,
        }
    }

    /// Term of a negative pair at distance `d`.
    #[inline]
    pub(crate) fn neg_term(self, d: f32, neg_margin: f32) -> f32 {
        let v = crate::math::relu(neg_margin - d);
        match self {
            ContrastiveForm::Linear => v,
            ContrastiveForm::Squared => v * v,
        }
    }

    /// `d pos_term / d d` (0 at the kink).
    #[inline]
    pub(crate) fn pos_slope(self, d: f32, pos_margin: f32) -> f32 {
        let v = d - pos_margin;
        if v > 0.0 {
            match self {
                ContrastiveForm::Linear => 1.0,
                ContrastiveForm::Squared => 2.0 * v,
            }
        } else {
            0.0
        }
    }

    /// `d neg_term / d d` (0 at the kink).
    #[inline]
    pub(crate) fn neg_slope(self, d: f32, neg_margin: f32) -> f32 {
        let v = neg_margin - d;
        if v > 0.0 {
            match self {
                ContrastiveForm::Linear => -1.0,
                ContrastiveForm::Squared => -2.0 * v,
            }
        } else {
            0.0
        }
    }
}

/// How the positive and negative pair terms of [`contrastive_loss`] become one loss.
///
/// `P` and `N` are the numbers of ordered positive and negative pairs, `P+` and `N+` the
/// numbers of those whose term is `> 0`. A division by a zero count gives 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum ContrastiveReduction {
    /// `sum(pos) / P+ + sum(neg) / N+`: pytorch-metric-learning's default
    /// (`AvgNonZeroReducer`, applied to each part).
    #[default]
    MeanNonzeroPerPart,
    /// `sum(pos) / P + sum(neg) / N` (pytorch-metric-learning with `MeanReducer`).
    MeanPerPart,
    /// `(sum(pos) + sum(neg)) / (P + N)`: the mean over all `n (n - 1)` ordered pairs
    /// (TensorFlow Addons' mean over the pairs it is given).
    Mean,
    /// `sum(pos) + sum(neg)`.
    Sum,
}

impl ContrastiveReduction {
    /// The weights of a positive and of a negative term.
    pub(crate) fn weights(
        self,
        pos_count: usize,
        pos_active: usize,
        neg_count: usize,
        neg_active: usize,
    ) -> (f32, f32) {
        match self {
            ContrastiveReduction::MeanNonzeroPerPart => (
                Reduction::MeanNonzero.weight(pos_count, pos_active),
                Reduction::MeanNonzero.weight(neg_count, neg_active),
            ),
            ContrastiveReduction::MeanPerPart => (
                Reduction::Mean.weight(pos_count, pos_active),
                Reduction::Mean.weight(neg_count, neg_active),
            ),
            ContrastiveReduction::Mean => {
                let w = Reduction::Mean.weight(pos_count.saturating_add(neg_count), 0);
                (w, w)
            }
            ContrastiveReduction::Sum => (1.0, 1.0),
        }
    }
}

/// Parameters of [`contrastive_loss`].
///
/// Margins are in the unit of the chosen [`Metric`] (squared units for
/// [`Metric::SquaredEuclidean`]); any finite value is accepted.
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub struct ContrastiveParams {
    /// Positive pairs closer than this cost nothing.
    pub pos_margin: f32,
    /// Negative pairs farther than this cost nothing.
    pub neg_margin: f32,
    /// Hinge or squared hinge.
    pub form: ContrastiveForm,
    /// How the terms are reduced.
    pub reduction: ContrastiveReduction,
}

impl ContrastiveParams {
    /// pytorch-metric-learning's `ContrastiveLoss()` defaults: `pos_margin = 0`,
    /// `neg_margin = 1`, linear hinges, [`ContrastiveReduction::MeanNonzeroPerPart`].
    ///
    /// pytorch-metric-learning's default distance is the Euclidean distance between
    /// L2-normalised embeddings: to reproduce it, normalise with [`crate::l2_normalize`],
    /// use [`Metric::Euclidean`], and chain the gradient through
    /// [`crate::l2_normalize_backward`].
    pub const fn pytorch_metric_learning() -> Self {
        Self::new(0.0, 1.0)
    }

    /// Deprecated form of [`ContrastiveParams::pytorch_metric_learning`].
    #[deprecated(
        since = "0.2.0",
        note = "use `ContrastiveParams::pytorch_metric_learning()`"
    )]
    pub const PYTORCH_METRIC_LEARNING: Self = Self::pytorch_metric_learning();

    /// Linear hinges with the given margins, reduced by
    /// [`ContrastiveReduction::MeanNonzeroPerPart`].
    pub const fn new(pos_margin: f32, neg_margin: f32) -> Self {
        ContrastiveParams {
            pos_margin,
            neg_margin,
            form: ContrastiveForm::Linear,
            reduction: ContrastiveReduction::MeanNonzeroPerPart,
        }
    }

    /// The classic squared form (Hadsell et al. 2006, TensorFlow Addons): `d^2` for
    /// positive pairs, `relu(margin - d)^2` for negative pairs, mean over all ordered
    /// pairs ([`ContrastiveReduction::Mean`]). TensorFlow Addons' default margin is 1.
    pub const fn hadsell(margin: f32) -> Self {
        ContrastiveParams {
            pos_margin: 0.0,
            neg_margin: margin,
            form: ContrastiveForm::Squared,
            reduction: ContrastiveReduction::Mean,
        }
    }

    /// The same parameters with another `pos_margin`.
    #[must_use]
    pub const fn with_pos_margin(self, pos_margin: f32) -> Self {
        ContrastiveParams { pos_margin, ..self }
    }

    /// The same parameters with another `neg_margin`.
    #[must_use]
    pub const fn with_neg_margin(self, neg_margin: f32) -> Self {
        ContrastiveParams { neg_margin, ..self }
    }

    /// The same parameters with another form.
    #[must_use]
    pub const fn with_form(self, form: ContrastiveForm) -> Self {
        ContrastiveParams { form, ..self }
    }

    /// The same parameters with another reduction.
    #[must_use]
    pub const fn with_reduction(self, reduction: ContrastiveReduction) -> Self {
        ContrastiveParams { reduction, ..self }
    }

    /// `Err(InvalidParameter)` for a NaN or infinite margin.
    pub(crate) fn validate(&self) -> Result<(), Error> {
        if !self.pos_margin.is_finite() {
            return Err(Error::InvalidParameter {
                name: "pos_margin",
                expected: "finite",
            });
        }
        if !self.neg_margin.is_finite() {
            return Err(Error::InvalidParameter {
                name: "neg_margin",
                expected: "finite",
            });
        }
        Ok(())
    }
}

impl Default for ContrastiveParams {
    /// [`ContrastiveParams::pytorch_metric_learning`].
    fn default() -> Self {
        Self::pytorch_metric_learning()
    }
}

/// Workspace elements that [`contrastive_loss`] and [`contrastive_loss_grad`] need for
/// `rows` embeddings of dimension `dim`: `rows` norms plus the `rows (rows - 1) / 2`
/// distances of the unordered pairs. Saturates instead of overflowing.
pub const fn contrastive_loss_workspace_len(rows: usize, dim: usize) -> usize {
    let _ = dim;
    let pairs = if rows.is_multiple_of(2) {
        (rows / 2).saturating_mul(rows.saturating_sub(1))
    } else {
        rows.saturating_mul(rows.saturating_sub(1) / 2)
    };
    rows.saturating_add(pairs)
}

/// Deprecated name of [`contrastive_loss_workspace_len`].
#[deprecated(since = "0.2.0", note = "renamed to `contrastive_loss_workspace_len`")]
pub const fn contrastive_workspace_len(rows: usize, dim: usize) -> usize {
    contrastive_loss_workspace_len(rows, dim)
}

/// Validates the arguments of a contrastive kernel in the documented order; returns `n`.
pub(crate) fn check_contrastive(
    x: &Matrix<'_>,
    labels: &[u32],
    params: &ContrastiveParams,
    grad: Option<usize>,
    workspace: usize,
) -> Result<usize, Error> {
    let n = check_labels(x, labels)?;
    if let Some(g) = grad {
        check_len("grad", x.len(), g)?;
    }
    check_workspace(contrastive_loss_workspace_len(n, x.dim()), workspace)?;
    params.validate()?;
    check_rows(x, false)?;
    Ok(n)
}

/// Sums and counts over the unordered pairs.
#[derive(Default)]
struct Parts {
    pos_sum: f64,
    neg_sum: f64,
    pos_count: usize,
    pos_active: usize,
    neg_count: usize,
    neg_active: usize,
}

/// Fills the norms (cosine) and the packed distances, returns the per-part sums and counts
/// over unordered pairs.
fn forward(
    backend: Backend,
    x: &Matrix<'_>,
    labels: &[u32],
    metric: Metric,
    params: &ContrastiveParams,
    workspace: &mut [f32],
) -> Result<Parts, Error> {
    let n = x.rows();
    let mut ws = Carve::new(workspace);
    let norms = ws.take(n)?;
    let dists = ws.rest();
    if metric == Metric::Cosine {
        clamped_row_norms(backend, x, norms);
    }
    let mut parts = Parts::default();
    let mut slots = dists.iter_mut();
    let form = params.form;
    for (i, (a, &la)) in x.row_iter().zip(labels).enumerate() {
        let na = norms.get(i).copied().unwrap_or(1.0);
        let (mut pos_row, mut neg_row) = (0.0_f64, 0.0_f64);
        for ((b, &lb), &nb) in x.row_iter().zip(labels).zip(norms.iter()).skip(i + 1) {
            let d = distance(backend, metric, a, b, na, nb);
            if let Some(s) = slots.next() {
                *s = d;
            }
            if la == lb {
                let t = form.pos_term(d, params.pos_margin);
                pos_row += f64::from(t);
                parts.pos_count += 1;
                parts.pos_active += usize::from(t > 0.0);
            } else {
                let t = form.neg_term(d, params.neg_margin);
                neg_row += f64::from(t);
                parts.neg_count += 1;
                parts.neg_active += usize::from(t > 0.0);
            }
        }
        parts.pos_sum += pos_row;
        parts.neg_sum += neg_row;
    }
    Ok(parts)
}

impl Parts {
    /// Weights of one *ordered* positive and negative term, and the loss.
    fn reduce(&self, reduction: ContrastiveReduction) -> (f32, f32, f32) {
        let (wp, wn) = reduction.weights(
            self.pos_count.saturating_mul(2),
            self.pos_active.saturating_mul(2),
            self.neg_count.saturating_mul(2),
            self.neg_active.saturating_mul(2),
        );
        // Each unordered pair stands for two equal ordered terms. Sums in f64: a sum of
        // finite terms does not overflow before the reduction divides it.
        let loss = (2.0 * (f64::from(wp) * self.pos_sum + f64::from(wn) * self.neg_sum)) as f32;
        (wp, wn, loss)
    }
}

/// Contrastive loss of the labelled batch `x` over all ordered pairs `i != j`. Scalar
/// twin: [`crate::scalar::contrastive_loss`]; with the gradient: [`contrastive_loss_grad`].
///
/// With `d = d(x_i, x_j)` under `metric`, each ordered pair contributes
///
/// ```text
/// positive pair (labels[i] == labels[j]):  relu(d - pos_margin)      Linear
///                                          relu(d - pos_margin)^2    Squared
/// negative pair (labels[i] != labels[j]):  relu(neg_margin - d)      Linear
///                                          relu(neg_margin - d)^2    Squared
/// ```
///
/// and the terms are reduced by [`ContrastiveReduction`] (by default the mean of the
/// positive terms `> 0` plus the mean of the negative terms `> 0`, as
/// pytorch-metric-learning). Each unordered pair appears twice, as in
/// pytorch-metric-learning: the means are unchanged by this, a sum counts it twice. A part
/// without any term (one row; no positive or no negative pair) is 0 with a zero gradient.
///
/// `labels` has one arbitrary id per row, compared for equality only. `workspace` needs
/// [`contrastive_loss_workspace_len`]`(rows, dim)` elements, garbage before and after.
///
/// # Errors
///
/// In this order:
/// - [`Error::LengthMismatch`] (`"labels"`) when `labels.len() != rows`;
/// - [`Error::WorkspaceTooSmall`] when the workspace is too short;
/// - [`Error::InvalidParameter`] (`"pos_margin"`, `"neg_margin"`) for a NaN or infinite
///   margin;
/// - [`Error::NonFinite`] (`"x"`, row and column of the first such element) when `x`
///   holds a NaN or an infinity.
/// - [`Error::TooLarge`] (`"x"`, row and column) when an element of `x` exceeds
///   `2^52 / sqrt(dim)`, where squared distances could overflow `f32`.
///
/// # Numerics
///
/// Non-finite data and data past the documented range are refused (above), so no
/// distance overflows. Distances are computed pair by pair in the direct form (as
/// [`crate::DistanceMode::Direct`], not the Gram form of the matrix kernels); the Euclidean
/// gradient at distance 0 is 0; a zero row is at cosine distance 1 from every other row.
/// Each term is rounded once to `f32` and the terms are summed in `f64`: against the
/// `f64` twin the error is at most about `(d / 8 + 10) * 2^-24` times the weighted sum of
/// the absolute terms, as long as no term sits within that error of its hinge kink (where
/// the two may count a different number of active terms). The gradient adds each pair's
/// update in difference form (`a - b` first), so nearly coincident rows keep their
/// gradient's relative accuracy.
///
/// # Example
///
/// ```
/// use triplet_kernels::{
///     contrastive_loss, contrastive_loss_workspace_len, ContrastiveParams, Matrix, Metric,
/// };
/// // Two classes on a line: 0 and 1 are positives at distance 1, 2 is a negative.
/// let x = Matrix::new(&[0.0, 1.0, 1.5], 3, 1)?;
/// let labels = [7, 7, 9];
/// let mut ws = [0.0_f32; contrastive_loss_workspace_len(3, 1)];
/// let params = ContrastiveParams::new(0.5, 1.0);
/// let loss = contrastive_loss(x, &labels, Metric::Euclidean, params, &mut ws)?;
/// // positive part: relu(1 - 0.5) = 0.5; negative part: relu(1 - 0.5) = 0.5 (pair 1, 2),
/// // pair (0, 2) at distance 1.5 is inactive.
/// assert_eq!(loss, 1.0);
/// # Ok::<(), triplet_kernels::Error>(())
/// ```
#[cfg_attr(feature = "no-panic", no_panic::no_panic)]
pub fn contrastive_loss(
    x: Matrix<'_>,
    labels: &[u32],
    metric: Metric,
    params: ContrastiveParams,
    workspace: &mut [f32],
) -> Result<f32, Error> {
    check_contrastive(&x, labels, &params, None, workspace.len())?;
    let parts = forward(Backend::active(), &x, labels, metric, &params, workspace)?;
    Ok(parts.reduce(params.reduction).2)
}

/// [`contrastive_loss`] and its gradient: returns the loss and writes
/// `grad = d loss / d x` (`rows * dim` elements, every one overwritten). Scalar twin:
/// [`crate::scalar::contrastive_loss_grad`].
///
/// The active counts of [`ContrastiveReduction::MeanNonzeroPerPart`] are constants for the
/// gradient (as in pytorch-metric-learning); a term at its kink has slope 0.
///
/// # Errors
///
/// As [`contrastive_loss`], with [`Error::LengthMismatch`] (`"grad"`) when
/// `grad.len() != rows * dim`, checked right after the labels.
///
/// # Numerics
///
/// As [`contrastive_loss`]. Each gradient element sums up to `2 (n - 1)` contributions in
/// `f32`: error at most about `(d / 8 + n + 10) * 2^-24` times the sum of their absolute
/// values, against the `f64` twin. For cosine, a row whose norm is below `1e-12` gets the
/// derivative of the clamped formula (of order `1e12` times the other row's direction).
///
/// # Example
///
/// ```
/// use triplet_kernels::{
///     contrastive_loss_grad, contrastive_loss_workspace_len, ContrastiveParams, Matrix, Metric,
/// };
/// let x = Matrix::new(&[0.0, 2.0], 2, 1)?;
/// let labels = [1, 1];
/// let mut grad = [0.0_f32; 2];
/// let mut ws = [0.0_f32; contrastive_loss_workspace_len(2, 1)];
/// let loss = contrastive_loss_grad(
///     x, &labels, Metric::Euclidean, ContrastiveParams::new(0.0, 1.0), &mut grad, &mut ws,
/// )?;
/// assert_eq!(loss, 2.0); // one active positive part, mean of 2 and 2
/// assert_eq!(grad, [-1.0, 1.0]); // pulls the two rows together
/// # Ok::<(), triplet_kernels::Error>(())
/// ```
#[cfg_attr(feature = "no-panic", no_panic::no_panic)]
pub fn contrastive_loss_grad(
    x: Matrix<'_>,
    labels: &[u32],
    metric: Metric,
    params: ContrastiveParams,
    grad: &mut [f32],
    workspace: &mut [f32],
) -> Result<f32, Error> {
    let n = check_contrastive(&x, labels, &params, Some(grad.len()), workspace.len())?;
    // Read once: the distances and the gradient updates use the same backend.
    let backend = Backend::active();
    let parts = forward(backend, &x, labels, metric, &params, workspace)?;
    let (wp, wn, loss) = parts.reduce(params.reduction);
    let mut ws = Carve::new(workspace);
    let norms = &*ws.take(n)?;
    let dists = &*ws.rest();
    grad.fill(0.0);
    let mut slots = dists.iter();
    let form = params.form;
    for (i, &la) in labels.iter().enumerate() {
        let na = norms.get(i).copied().unwrap_or(1.0);
        for (j, (&lb, &nb)) in labels.iter().zip(norms.iter()).enumerate().skip(i + 1) {
            let Some(&d) = slots.next() else { break };
            // Both ordered pairs (i, j) and (j, i) have this term.
            let coef = if la == lb {
                2.0 * wp * form.pos_slope(d, params.pos_margin)
            } else {
                2.0 * wn * form.neg_slope(d, params.neg_margin)
            };
            if coef == 0.0 {
                continue;
            }
            pair_grad_rows(backend, metric, &x, (i, j), d, (na, nb), 0.0, coef, grad);
        }
    }
    Ok(loss)
}
