//! Quadruplet loss (Chen et al., CVPR 2017) over caller-given quadruplets, its gradient,
//! and a miner that forms quadruplets inside a labelled batch.
//!
//! A [`Quadruplet`] `(a, p, n1, n2)` holds row indices: `p` shares `a`'s class, `n1` does
//! not, `n2` belongs to a third class (different from both). Its term is
//!
//! ```text
//! h(d(a,p) - d(a,n1) + margin1) + h(d(a,p) - d(n1,n2) + margin2)
//! ```
//!
//! with the hinge `h` ([`Hinge::Relu`] in the paper) and distance `d` under the chosen
//! [`Metric`]. The first part is the triplet constraint; the second asks the positive
//! pair to be closer than a negative pair that does not involve the anchor. The terms are
//! reduced by a [`Reduction`] (`Mean` in the paper; `MeanNonzero` divides by the number of
//! quadruplets whose term is `> 0`).
//!
//! The loss kernels do not look at labels: any indices below `rows` are accepted,
//! repeated ones included, and the formula is applied as written.

use crate::distance::{
    clamped_row_norms, distance, pair_grad_rows, pairwise_distances_on,
    pairwise_distances_workspace_len, refine_pairwise, Metric,
};
use crate::error::Error;
use crate::matrix::Matrix;
use crate::reduce::{Hinge, Reduction};
use crate::simd::Backend;
use crate::validate::{check_labels, check_len, check_rows, check_workspace};
use crate::workspace::Carve;

/// One quadruplet of row indices: anchor, positive, first negative, second negative.
///
/// `#[repr(C)]`: four `u32` in the order `a, p, n1, n2` (16 bytes, alignment 4), the layout
/// of a C `struct { uint32_t a, p, n1, n2; }` or of a `[u32; 4]`. Converts from and to
/// `[u32; 4]` in that order.
///
/// ```
/// use triplet_kernels::Quadruplet;
/// let q = Quadruplet::from([0, 1, 2, 3]);
/// assert_eq!(q, Quadruplet::new(0, 1, 2, 3));
/// assert_eq!(<[u32; 4]>::from(q), [0, 1, 2, 3]);
/// assert_eq!(core::mem::size_of::<Quadruplet>(), 16);
/// ```
#[repr(C)]
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    Default,
    PartialOrd,
    Ord,
    bytemuck::Pod,
    bytemuck::Zeroable,
)]
pub struct Quadruplet {
    /// Row of the anchor `a`.
    pub anchor: u32,
    /// Row of the positive `p` (same class as `a`).
    pub positive: u32,
    /// Row of the first negative `n1` (another class than `a`).
    pub negative1: u32,
    /// Row of the second negative `n2` (a class different from both `a`'s and `n1`'s).
    pub negative2: u32,
}

impl Quadruplet {
    /// `(anchor, positive, negative1, negative2)`.
    pub const fn new(anchor: u32, positive: u32, negative1: u32, negative2: u32) -> Self {
        Quadruplet {
            anchor,
            positive,
            negative1,
            negative2,
        }
    }

    /// Views a flat buffer `[a0, p0, n1_0, n2_0, a1, ...]` (an index tensor of shape
    /// `k x 4`) as `k` quadruplets, without copying.
    ///
    /// # Errors
    ///
    /// [`Error::LengthMismatch`] (`"quadruplets"`) when the length is not a multiple of 4.
    ///
    /// ```
    /// use triplet_kernels::Quadruplet;
    /// let q = Quadruplet::from_flat(&[0, 1, 2, 3])?;
    /// assert_eq!(q, [Quadruplet::new(0, 1, 2, 3)]);
    /// # Ok::<(), triplet_kernels::Error>(())
    /// ```
    pub fn from_flat(flat: &[u32]) -> Result<&[Quadruplet], Error> {
        bytemuck::try_cast_slice(flat).map_err(|_| Error::LengthMismatch {
            buffer: "quadruplets",
            expected: flat.len() - flat.len() % 4,
            actual: flat.len(),
        })
    }

    /// The four indices in order `[a, p, n1, n2]`.
    pub const fn to_array(self) -> [u32; 4] {
        [self.anchor, self.positive, self.negative1, self.negative2]
    }
}

impl From<[u32; 4]> for Quadruplet {
    /// `[a, p, n1, n2]`.
    fn from([a, p, n1, n2]: [u32; 4]) -> Self {
        Quadruplet::new(a, p, n1, n2)
    }
}

impl From<Quadruplet> for [u32; 4] {
    /// `[a, p, n1, n2]`.
    fn from(q: Quadruplet) -> Self {
        q.to_array()
    }
}

/// Parameters of [`quadruplet_loss`].
///
/// Margins are in the unit of the chosen [`Metric`]; any finite value is accepted. Chen
/// et al. take `margin2` smaller than `margin1` (the constraint on pairs that do not share
/// the anchor is weaker).
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub struct QuadrupletParams {
    /// Margin of the triplet part, `d(a,p) - d(a,n1) + margin1`.
    pub margin1: f32,
    /// Margin of the pair part, `d(a,p) - d(n1,n2) + margin2`.
    pub margin2: f32,
    /// Hinge applied to each part (the paper: [`Hinge::Relu`]).
    pub hinge: Hinge,
    /// How the per-quadruplet terms are reduced (the paper: [`Reduction::Mean`]).
    pub reduction: Reduction,
}

impl QuadrupletParams {
    /// The paper's form with the given margins: [`Hinge::Relu`], [`Reduction::Mean`].
    pub const fn new(margin1: f32, margin2: f32) -> Self {
        QuadrupletParams {
            margin1,
            margin2,
            hinge: Hinge::Relu,
            reduction: Reduction::Mean,
        }
    }

    /// The same parameters with another `margin1`.
    #[must_use]
    pub const fn with_margin1(self, margin1: f32) -> Self {
        QuadrupletParams { margin1, ..self }
    }

    /// The same parameters with another `margin2`.
    #[must_use]
    pub const fn with_margin2(self, margin2: f32) -> Self {
        QuadrupletParams { margin2, ..self }
    }

    /// The same parameters with another hinge.
    #[must_use]
    pub const fn with_hinge(self, hinge: Hinge) -> Self {
        QuadrupletParams { hinge, ..self }
    }

    /// The same parameters with another reduction.
    #[must_use]
    pub const fn with_reduction(self, reduction: Reduction) -> Self {
        QuadrupletParams { reduction, ..self }
    }

    pub(crate) fn validate(&self) -> Result<(), Error> {
        if !self.margin1.is_finite() {
            return Err(Error::InvalidParameter {
                name: "margin1",
                expected: "finite",
            });
        }
        if !self.margin2.is_finite() {
            return Err(Error::InvalidParameter {
                name: "margin2",
                expected: "finite",
            });
        }
        Ok(())
    }
}

/// Workspace elements that [`quadruplet_loss`] and [`quadruplet_loss_grad`] need for
/// `rows` embeddings of dimension `dim` (the row norms). Saturates instead of overflowing.
pub const fn quadruplet_loss_workspace_len(rows: usize, dim: usize) -> usize {
    let _ = dim;
    rows
}

/// Deprecated name of [`quadruplet_loss_workspace_len`].
#[deprecated(since = "0.2.0", note = "renamed to `quadruplet_loss_workspace_len`")]
pub const fn quadruplet_workspace_len(rows: usize, dim: usize) -> usize {
    quadruplet_loss_workspace_len(rows, dim)
}

/// `Err(IndexOutOfRange)` for the first index `>= rows`; the position is the flat one,
/// `4 k + field` (field 0..4 in the order a, p, n1, n2), as if `quadruplets` were a
/// `[u32]`.
pub(crate) fn check_indices(quadruplets: &[Quadruplet], rows: usize) -> Result<(), Error> {
    for (k, q) in quadruplets.iter().enumerate() {
        for (f, &v) in q.to_array().iter().enumerate() {
            let index = v as usize;
            if index >= rows {
                return Err(Error::IndexOutOfRange {
                    buffer: "quadruplets",
                    position: k.saturating_mul(4).saturating_add(f),
                    index,
                    bound: rows,
                });
            }
        }
    }
    Ok(())
}

/// Validates the arguments of a quadruplet loss kernel in the documented order.
pub(crate) fn check_quadruplet(
    x: &Matrix<'_>,
    quadruplets: &[Quadruplet],
    params: &QuadrupletParams,
    grad: Option<usize>,
    workspace: usize,
) -> Result<(), Error> {
    if let Some(g) = grad {
        check_len("grad", x.len(), g)?;
    }
    check_workspace(quadruplet_loss_workspace_len(x.rows(), x.dim()), workspace)?;
    params.validate()?;
    check_indices(quadruplets, x.rows())?;
    check_rows(x, false)
}

/// Whether a quadruplet's term is `> 0` in exact arithmetic, the count of
/// [`Reduction::MeanNonzero`]: `v1 > 0` or `v2 > 0` for [`Hinge::Relu`], always for
/// [`Hinge::SoftPlus`] (whose `f32` value underflows to 0 below about `v = -103`, which must
/// not change the count).
#[inline]
pub(crate) fn is_active<T: PartialOrd + Default + Copy>(hinge: Hinge, v1: T, v2: T) -> bool {
    match hinge {
        Hinge::Relu => v1 > T::default() || v2 > T::default(),
        Hinge::SoftPlus => true,
    }
}

/// The three distances of one quadruplet.
struct Dists {
    ap: f32,
    an1: f32,
    n1n2: f32,
}

/// Rows and clamped norms of one quadruplet (indices already checked).
struct Rows<'a> {
    r: [&'a [f32]; 4],
    n: [f32; 4],
}

impl<'a> Rows<'a> {
    fn get(x: &Matrix<'a>, norms: &[f32], q: Quadruplet) -> Option<Self> {
        let idx = q.to_array().map(|v| v as usize);
        let r = [
            x.row(idx[0])?,
            x.row(idx[1])?,
            x.row(idx[2])?,
            x.row(idx[3])?,
        ];
        let n = idx.map(|i| norms.get(i).copied().unwrap_or(1.0));
        Some(Rows { r, n })
    }

    fn dists(&self, backend: Backend, metric: Metric) -> Dists {
        let [a, p, n1, n2] = self.r;
        let [na, np, nn1, nn2] = self.n;
        Dists {
            ap: distance(backend, metric, a, p, na, np),
            an1: distance(backend, metric, a, n1, na, nn1),
            n1n2: distance(backend, metric, n1, n2, nn1, nn2),
        }
    }
}

/// The shared body of the quadruplet losses; `grad` is `None` for the forward pass.
/// Inlined into both entry points, as their bodies were.
#[inline(always)]
fn quadruplet_impl(
    x: Matrix<'_>,
    quadruplets: &[Quadruplet],
    metric: Metric,
    params: &QuadrupletParams,
    mut grad: Option<&mut [f32]>,
    workspace: &mut [f32],
) -> Result<f32, Error> {
    check_quadruplet(
        &x,
        quadruplets,
        params,
        grad.as_deref().map(<[f32]>::len),
        workspace.len(),
    )?;
    let norms = Carve::new(workspace).take(x.rows())?;
    // Read once: the norms, the distances and the gradient updates use it.
    let backend = Backend::active();
    if metric == Metric::Cosine {
        clamped_row_norms(backend, &x, norms);
    }
    if let Some(g) = grad.as_deref_mut() {
        g.fill(0.0);
    }
    let h = params.hinge;
    let mut sum = 0.0_f64;
    let mut active = 0_usize;
    for &q in quadruplets {
        let Some(rows) = Rows::get(&x, norms, q) else {
            continue;
        };
        let d = rows.dists(backend, metric);
        let v1 = d.ap - d.an1 + params.margin1;
        let v2 = d.ap - d.n1n2 + params.margin2;
        sum += f64::from(h.apply(v1)) + f64::from(h.apply(v2));
        active += usize::from(is_active(h, v1, v2));
        let Some(grad) = grad.as_deref_mut() else {
            continue;
        };
        let (s1, s2) = (h.slope(v1), h.slope(v2));
        let [ia, ip, in1, in2] = q.to_array().map(|v| v as usize);
        let [na, np, nn1, nn2] = rows.n;
        for ((i, j), dist, coef, norms) in [
            ((ia, ip), d.ap, s1 + s2, (na, np)),
            ((ia, in1), d.an1, -s1, (na, nn1)),
            ((in1, in2), d.n1n2, -s2, (nn1, nn2)),
        ] {
            if coef != 0.0 {
                pair_grad_rows(backend, metric, &x, (i, j), dist, norms, 0.0, coef, grad);
            }
        }
    }
    if let Some(grad) = grad {
        let w = params.reduction.weight(quadruplets.len(), active);
        if w != 1.0 {
            for g in grad.iter_mut() {
                *g *= w;
            }
        }
    }
    Ok(params.reduction.reduce(sum, quadruplets.len(), active))
}

/// Quadruplet loss (Chen et al., CVPR 2017) of the given quadruplets of rows of `x`.
/// Scalar twin: [`crate::scalar::quadruplet_loss`]; with the gradient:
/// [`quadruplet_loss_grad`]; quadruplets from a labelled batch: [`mine_quadruplets`].
///
/// Each quadruplet `(a, p, n1, n2)` contributes, with `h` the hinge and `d` the metric,
///
/// ```text
/// h(d(a,p) - d(a,n1) + margin1) + h(d(a,p) - d(n1,n2) + margin2)
/// ```
///
/// and the terms are reduced by `params.reduction`: `Sum`, `Mean` (over the quadruplets),
/// or `MeanNonzero` (over the quadruplets whose term is `> 0` in exact arithmetic: with
/// `Relu` those with a positive hinge argument, with `SoftPlus` all of them). Labels are
/// not checked: any indices below `rows` are accepted, repeated ones included.
///
/// An empty `quadruplets` gives 0. `workspace` needs
/// [`quadruplet_loss_workspace_len`]`(rows, dim)` elements, garbage before and after.
///
/// # Errors
///
/// In this order:
/// - [`Error::WorkspaceTooSmall`] when the workspace is too short;
/// - [`Error::InvalidParameter`] (`"margin1"`, `"margin2"`) for a NaN or infinite margin;
/// - [`Error::IndexOutOfRange`] (`"quadruplets"`) for an index `>= rows`; `position` is
///   the flat position `4 k + f` of the first bad index (`f` = 0, 1, 2, 3 for a, p, n1,
///   n2), as if the quadruplets were a `[u32]`;
/// - [`Error::NonFinite`] (`"x"`) when `x` holds a NaN or an infinity.
/// - [`Error::TooLarge`] (`"x"`, row and column) when an element of `x` exceeds
///   `2^52 / sqrt(dim)`, where squared distances could overflow `f32`.
///
/// # Numerics
///
/// Non-finite data and data past the documented range are refused, so no distance
/// overflows. Each distance is computed pair by pair in the direct form, within
/// `(d / 8 + 10) * 2^-24 * S` of the exact one (`S` the sum of its absolute terms); the
/// terms are summed in `f64`, error at most about `(d / 8 + 10) * 2^-24` times the sum of
/// the absolute values of the distances and margins involved, against the `f64` twin
/// (away from hinge kinks, where `MeanNonzero` may count differently).
///
/// # Example
///
/// ```
/// use triplet_kernels::{
///     quadruplet_loss, quadruplet_loss_workspace_len, Matrix, Metric, Quadruplet, QuadrupletParams,
/// };
/// // a = 0, p = 1 (d = 1), n1 = 2 (d(a, n1) = 1.5), n2 = 3 (d(n1, n2) = 1).
/// let x = Matrix::new(&[0.0, 1.0, 1.5, 2.5], 4, 1)?;
/// let quads = [Quadruplet::new(0, 1, 2, 3)];
/// let mut ws = [0.0_f32; quadruplet_loss_workspace_len(4, 1)];
/// let params = QuadrupletParams::new(1.0, 0.5);
/// let loss = quadruplet_loss(x, &quads, Metric::Euclidean, params, &mut ws)?;
/// assert_eq!(loss, 0.5 + 0.5); // relu(1 - 1.5 + 1) + relu(1 - 1 + 0.5)
/// # Ok::<(), triplet_kernels::Error>(())
/// ```
#[cfg_attr(feature = "no-panic", no_panic::no_panic)]
pub fn quadruplet_loss(
    x: Matrix<'_>,
    quadruplets: &[Quadruplet],
    metric: Metric,
    params: QuadrupletParams,
    workspace: &mut [f32],
) -> Result<f32, Error> {
    quadruplet_impl(x, quadruplets, metric, &params, None, workspace)
}

/// [`quadruplet_loss`] and its gradient: returns the loss and writes
/// `grad = d loss / d x` (`rows * dim` elements, every one overwritten; rows in no
/// quadruplet get 0). Scalar twin: [`crate::scalar::quadruplet_loss_grad`].
///
/// The quadruplets are constants for the gradient, as is the active count of
/// [`Reduction::MeanNonzero`]; [`Hinge::Relu`] has slope 0 at its kink.
///
/// # Errors
///
/// As [`quadruplet_loss`], preceded by [`Error::LengthMismatch`] (`"grad"`) when
/// `grad.len() != rows * dim`.
///
/// # Numerics
///
/// As [`quadruplet_loss`]. The gradient is accumulated unweighted in `f32` and scaled by
/// the reduction's weight at the end: each element within about
/// `(d / 8 + m + 10) * 2^-24` times the sum of the absolute values of its contributions,
/// where `m` counts the quadruplets using that row. The Euclidean gradient at distance 0
/// is 0; a pair `(i, i)` contributes nothing.
///
/// # Example
///
/// ```
/// use triplet_kernels::{
///     quadruplet_loss_grad, quadruplet_loss_workspace_len, Matrix, Metric, Quadruplet,
///     QuadrupletParams,
/// };
/// let x = Matrix::new(&[0.0, 1.0, 1.5, 2.5], 4, 1)?;
/// let quads = [Quadruplet::new(0, 1, 2, 3)];
/// let mut grad = [0.0_f32; 4];
/// let mut ws = [0.0_f32; quadruplet_loss_workspace_len(4, 1)];
/// let params = QuadrupletParams::new(1.0, 0.5);
/// let loss = quadruplet_loss_grad(x, &quads, Metric::Euclidean, params, &mut grad, &mut ws)?;
/// assert_eq!(loss, 1.0);
/// // a and p are pulled together by both parts; n1 is pushed away from a (towards +x)
/// // and away from n2 (towards -x): the two cancel.
/// assert_eq!(grad, [-1.0, 2.0, 0.0, -1.0]);
/// # Ok::<(), triplet_kernels::Error>(())
/// ```
#[cfg_attr(feature = "no-panic", no_panic::no_panic)]
pub fn quadruplet_loss_grad(
    x: Matrix<'_>,
    quadruplets: &[Quadruplet],
    metric: Metric,
    params: QuadrupletParams,
    grad: &mut [f32],
    workspace: &mut [f32],
) -> Result<f32, Error> {
    quadruplet_impl(x, quadruplets, metric, &params, Some(grad), workspace)
}

/// How many quadruplets [`mine_quadruplets`] forms for this batch: the number of rows
/// whose label occurs at least twice, when the batch holds at least three distinct labels;
/// 0 otherwise. Depends on the labels only (O(n^2) comparisons, no allocation). Scalar
/// twin: [`crate::scalar::mine_quadruplets_count`].
///
/// # Errors
///
/// None today (the count never exceeds `labels.len()`); the `Result` matches
/// [`crate::mine_triplets_count`], so both counts are used alike.
///
/// # Example
///
/// ```
/// use triplet_kernels::mine_quadruplets_count;
/// assert_eq!(mine_quadruplets_count(&[1, 1, 2, 2, 3])?, 4); // the lone 3 has no positive
/// assert_eq!(mine_quadruplets_count(&[1, 1, 2, 2])?, 0); // no third class
/// # Ok::<(), triplet_kernels::Error>(())
/// ```
#[cfg_attr(feature = "no-panic", no_panic::no_panic)]
pub fn mine_quadruplets_count(labels: &[u32]) -> Result<usize, Error> {
    Ok(count_quadruplets(labels))
}

/// The count of [`mine_quadruplets_count`].
fn count_quadruplets(labels: &[u32]) -> usize {
    let Some(&l0) = labels.first() else {
        return 0;
    };
    let Some(&l1) = labels.iter().find(|&&l| l != l0) else {
        return 0;
    };
    if !labels.iter().any(|&l| l != l0 && l != l1) {
        return 0;
    }
    labels
        .iter()
        .enumerate()
        .filter(|&(i, &li)| labels.iter().enumerate().any(|(j, &lj)| j != i && lj == li))
        .count()
}

/// Workspace elements that [`mine_quadruplets`] needs for `rows` embeddings of dimension
/// `dim`: the `rows x rows` distance matrix plus the scratch of
/// [`crate::pairwise_distances`]. Saturates instead of overflowing.
pub const fn mine_quadruplets_workspace_len(rows: usize, dim: usize) -> usize {
    rows.saturating_mul(rows)
        .saturating_add(pairwise_distances_workspace_len(rows, dim))
}

/// Validates the arguments of the miner in the documented order; returns the count.
pub(crate) fn check_mining(
    x: &Matrix<'_>,
    labels: &[u32],
    out: usize,
    workspace: usize,
) -> Result<usize, Error> {
    check_labels(x, labels)?;
    if u32::try_from(x.rows()).is_err() {
        return Err(Error::ShapeOverflow {
            rows: x.rows(),
            cols: x.dim(),
        });
    }
    check_workspace(mine_quadruplets_workspace_len(x.rows(), x.dim()), workspace)?;
    let count = count_quadruplets(labels);
    if out < count {
        return Err(Error::LengthMismatch {
            buffer: "out",
            expected: count,
            actual: out,
        });
    }
    check_rows(x, false)?;
    Ok(count)
}

/// The index `j` whose `key(j)` is best among the candidates, keeping the smallest index on
/// ties (`better(new, old)` is strict).
pub(crate) fn select<T: Copy>(
    candidates: impl Iterator<Item = (usize, T)>,
    better: impl Fn(T, T) -> bool,
) -> Option<usize> {
    let mut best: Option<(usize, T)> = None;
    for (j, v) in candidates {
        match best {
            Some((_, b)) if !better(v, b) => {}
            _ => best = Some((j, v)),
        }
    }
    best.map(|(j, _)| j)
}

/// Forms one quadruplet per eligible anchor of the labelled batch `x` (batch-hard
/// quadruplet mining) and writes them to the start of `out`; returns how many it wrote,
/// which is [`mine_quadruplets_count`]`(labels)`. Scalar twin:
/// [`crate::scalar::mine_quadruplets`].
///
/// For each anchor `a` in ascending order, with distances under `metric`:
///
/// 1. `p` = the **farthest positive**: `argmax d(a, j)` over `j != a` with
///    `labels[j] == labels[a]`;
/// 2. `n1` = the **nearest negative**: `argmin d(a, j)` over `labels[j] != labels[a]`;
/// 3. `n2` = the **nearest row to `n1` from a third class**: `argmin d(n1, j)` over
///    `labels[j] != labels[a]` and `labels[j] != labels[n1]`.
///
/// So `(n1, n2)` is the hardest negative pair of two classes other than `a`'s that
/// contains `a`'s hardest negative: step 1 maximises both parts of the quadruplet term,
/// step 2 the first part, step 3 the second part given `n1` (Chen et al.'s second term
/// shares `n1` with the first). Every `argmax`/`argmin` keeps the **smallest index** on
/// ties. An anchor without a positive gets no quadruplet; with at least one positive, it
/// gets one exactly when the batch holds at least three distinct labels (then `n1` and
/// `n2` always exist). Quadruplets are written in ascending anchor order; `out[count..]`
/// is left untouched.
///
/// `labels` are arbitrary ids compared for equality only. `workspace` needs
/// [`mine_quadruplets_workspace_len`]`(rows, dim)` elements, garbage before and after.
///
/// # Errors
///
/// In this order:
/// - [`Error::LengthMismatch`] (`"labels"`) when `labels.len() != rows`;
/// - [`Error::ShapeOverflow`] when `rows` does not fit in the `u32` of a [`Quadruplet`];
/// - [`Error::WorkspaceTooSmall`] when the workspace is too short;
/// - [`Error::LengthMismatch`] (`"out"`, `expected` = the count) when `out` is shorter
///   than [`mine_quadruplets_count`]`(labels)`;
/// - [`Error::NonFinite`] (`"x"`) when `x` holds a NaN or an infinity.
/// - [`Error::TooLarge`] (`"x"`, row and column) when an element of `x` exceeds
///   `2^52 / sqrt(dim)`, where squared distances could overflow `f32`.
///
/// # Numerics
///
/// Decisions are taken on the distances of [`crate::pairwise_distances`] (symmetric bit
/// for bit) with the triplet miners' accuracy fix-up (see
/// [`crate::mining`](crate::mining#distances-and-their-accuracy)): Euclidean distances
/// too small against their rows' norms for the Gram form are recomputed directly, so a
/// near-duplicate negative is told apart from an exact one. They match the `f64` twin
/// exactly whenever no two candidate distances are within that accuracy of each other,
/// in particular on small-integer data for the Euclidean metrics; otherwise the chosen
/// distances agree within it.
///
/// # Example
///
/// ```
/// use triplet_kernels::{
///     mine_quadruplets, mine_quadruplets_count, mine_quadruplets_workspace_len, Matrix,
///     Metric, Quadruplet,
/// };
/// let x = Matrix::new(&[0.0, 1.0, 3.0, 4.0, 9.0, 7.0], 6, 1)?;
/// let labels = [0, 0, 1, 1, 2, 2];
/// let mut out = [Quadruplet::default(); 6];
/// let mut ws = [0.0_f32; mine_quadruplets_workspace_len(6, 1)];
/// let k = mine_quadruplets(x, &labels, Metric::Euclidean, &mut out, &mut ws)?;
/// assert_eq!(k, mine_quadruplets_count(&labels)?);
/// // Anchor 0: positive 1, nearest negative 2 (at 3), nearest third-class row to 2: 5.
/// assert_eq!(out[0], Quadruplet::new(0, 1, 2, 5));
/// # Ok::<(), triplet_kernels::Error>(())
/// ```
#[cfg_attr(feature = "no-panic", no_panic::no_panic)]
pub fn mine_quadruplets(
    x: Matrix<'_>,
    labels: &[u32],
    metric: Metric,
    out: &mut [Quadruplet],
    workspace: &mut [f32],
) -> Result<usize, Error> {
    let count = check_mining(&x, labels, out.len(), workspace.len())?;
    if count == 0 {
        return Ok(0);
    }
    let n = x.rows();
    let mut ws = Carve::new(workspace);
    let dist = ws.take(n.saturating_mul(n))?;
    let rest = ws.rest();
    let backend = Backend::active();
    pairwise_distances_on(backend, x, metric, dist, rest)?;
    refine_pairwise(backend, &x, metric, dist, rest)?;
    let mut written = 0;
    let mut slots = out.iter_mut();
    for (a, (row, &la)) in dist.chunks_exact(n).zip(labels).enumerate() {
        let cands = || row.iter().copied().zip(labels).enumerate();
        let p = select(
            cands()
                .filter(|&(j, (_, &l))| j != a && l == la)
                .map(|(j, (d, _))| (j, d)),
            |v, b| v > b,
        );
        let n1 = select(
            cands()
                .filter(|&(_, (_, &l))| l != la)
                .map(|(j, (d, _))| (j, d)),
            |v, b| v < b,
        );
        let (Some(p), Some(n1)) = (p, n1) else {
            continue;
        };
        let (Some(&ln1), Some(row_n1)) = (labels.get(n1), dist.chunks_exact(n).nth(n1)) else {
            continue;
        };
        let n2 = select(
            row_n1
                .iter()
                .copied()
                .zip(labels)
                .enumerate()
                .filter(|&(_, (_, &l))| l != la && l != ln1)
                .map(|(j, (d, _))| (j, d)),
            |v, b| v < b,
        );
        let Some(n2) = n2 else {
            continue;
        };
        if let Some(slot) = slots.next() {
            *slot = Quadruplet::new(a as u32, p as u32, n1 as u32, n2 as u32);
            written += 1;
        }
    }
    Ok(written)
}
