//! Pair mining: the [`Pair`] index type, the counts of a pair miner ([`PairCounts`]) and
//! threshold mining over ordered pairs (pytorch-metric-learning's `PairMarginMiner`):
//! [`pair_mine`], [`pair_mine_count`].

use super::rows_len;
use super::sweep::sweep_rows;
use crate::distance::Metric;
use crate::error::Error;
use crate::matrix::Matrix;
use crate::simd::Backend;
use crate::validate::{check_labels, check_rows, check_workspace};

/// One ordered `(anchor, other)` pair of row indices into a batch: a positive pair when
/// the two rows share a label, a negative pair otherwise.
///
/// `#[repr(C)]`: two consecutive `u32`, so a buffer of pairs can be shared with C or
/// reinterpreted as `[u32; 2]` rows (an index tensor of shape `k x 2`).
///
/// ```
/// use triplet_kernels::Pair;
/// let p = Pair::new(3, 5);
/// assert_eq!((p.anchor, p.other), (3, 5));
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
pub struct Pair {
    /// Row of the anchor.
    pub anchor: u32,
    /// Row of the other member of the pair.
    pub other: u32,
}

impl Pair {
    /// The pair `(anchor, other)`.
    pub const fn new(anchor: u32, other: u32) -> Self {
        Pair { anchor, other }
    }

    /// Views a flat buffer `[a0, o0, a1, o1, ...]` as pairs, without copying.
    ///
    /// # Errors
    ///
    /// [`Error::LengthMismatch`] (`"pairs"`) when the length is odd.
    ///
    /// ```
    /// use triplet_kernels::Pair;
    /// let flat = [0_u32, 1, 2, 3];
    /// assert_eq!(Pair::from_flat(&flat)?, [Pair::new(0, 1), Pair::new(2, 3)]);
    /// # Ok::<(), triplet_kernels::Error>(())
    /// ```
    pub fn from_flat(flat: &[u32]) -> Result<&[Pair], Error> {
        bytemuck::try_cast_slice(flat).map_err(|_| Error::LengthMismatch {
            buffer: "pairs",
            expected: flat.len() - flat.len() % 2,
            actual: flat.len(),
        })
    }

    /// The pairs as one flat `u32` buffer, the inverse of [`Pair::from_flat`].
    pub fn as_flat(pairs: &[Pair]) -> &[u32] {
        bytemuck::cast_slice(pairs)
    }
}

/// How many positive and negative pairs a pair miner keeps (or wrote).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct PairCounts {
    /// Positive pairs (same label).
    pub positives: usize,
    /// Negative pairs (different labels).
    pub negatives: usize,
}

/// Parameters of [`pair_mine`].
///
/// Margins are in the unit of the chosen [`Metric`] (squared units for
/// [`Metric::SquaredEuclidean`], cosine *distance* for [`Metric::Cosine`]).
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub struct PairMinerParams {
    /// Positive pairs farther than this are kept.
    pub pos_margin: f32,
    /// Negative pairs nearer than this are kept.
    pub neg_margin: f32,
}

impl PairMinerParams {
    /// Keep positive pairs with `d > pos_margin` and negative pairs with `d < neg_margin`.
    pub const fn new(pos_margin: f32, neg_margin: f32) -> Self {
        PairMinerParams {
            pos_margin,
            neg_margin,
        }
    }

    /// pytorch-metric-learning's `PairMarginMiner()` defaults: `pos_margin = 0.2`,
    /// `neg_margin = 0.8`, on its default distance, the Euclidean distance of
    /// L2-normalised rows (normalise with [`crate::l2_normalize`], use
    /// [`Metric::Euclidean`]). With its `CosineSimilarity`, whose thresholds are
    /// similarities, pass `1 - pos_margin` and `1 - neg_margin` with [`Metric::Cosine`].
    pub const fn pytorch_metric_learning() -> Self {
        Self::new(0.2, 0.8)
    }

    /// The same parameters with another `pos_margin`.
    #[must_use]
    pub const fn with_pos_margin(self, pos_margin: f32) -> Self {
        PairMinerParams { pos_margin, ..self }
    }

    /// The same parameters with another `neg_margin`.
    #[must_use]
    pub const fn with_neg_margin(self, neg_margin: f32) -> Self {
        PairMinerParams { neg_margin, ..self }
    }

    fn validate(self) -> Result<(), Error> {
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

impl Default for PairMinerParams {
    /// [`PairMinerParams::pytorch_metric_learning`].
    fn default() -> Self {
        Self::pytorch_metric_learning()
    }
}

/// Workspace elements that [`pair_mine`], [`pair_mine_count`] and the multi-similarity
/// miner need for `rows` embeddings of dimension `dim`: `3 rows`, one block of
/// `min(rows, 256)` distance rows and its packing; no `rows x rows` matrix. Saturates
/// instead of overflowing.
pub const fn pair_mine_workspace_len(rows: usize, dim: usize) -> usize {
    rows_len(rows, dim, 0)
}

/// Receives the kept pairs in ascending `(anchor, other)` order, positives and negatives
/// separately.
pub(crate) trait PairVisit {
    fn positive(&mut self, a: usize, j: usize);
    fn negative(&mut self, a: usize, j: usize);
}

/// Counts the kept pairs.
#[derive(Default)]
pub(crate) struct PairCount(pub(crate) PairCounts);

impl PairVisit for PairCount {
    #[inline]
    fn positive(&mut self, _a: usize, _j: usize) {
        self.0.positives += 1;
    }
    #[inline]
    fn negative(&mut self, _a: usize, _j: usize) {
        self.0.negatives += 1;
    }
}

/// Writes the kept pairs.
pub(crate) struct PairWrite<'o> {
    pub(crate) positives: &'o mut [Pair],
    pub(crate) negatives: &'o mut [Pair],
    pub(crate) counts: PairCounts,
}

impl PairVisit for PairWrite<'_> {
    #[inline]
    fn positive(&mut self, a: usize, j: usize) {
        if let Some(o) = self.positives.get_mut(self.counts.positives) {
            *o = Pair::new(a as u32, j as u32);
        }
        self.counts.positives += 1;
    }
    #[inline]
    fn negative(&mut self, a: usize, j: usize) {
        if let Some(o) = self.negatives.get_mut(self.counts.negatives) {
            *o = Pair::new(a as u32, j as u32);
        }
        self.counts.negatives += 1;
    }
}

/// The numbers of ordered positive and negative pairs of the batch (labels only):
/// upper bounds of every pair miner's counts.
pub(crate) fn pair_bounds(labels: &[u32]) -> PairCounts {
    let mut c = PairCounts::default();
    for (a, &la) in labels.iter().enumerate() {
        for (j, &l) in labels.iter().enumerate() {
            if l != la {
                c.negatives += 1;
            } else if j != a {
                c.positives += 1;
            }
        }
    }
    c
}

/// `Err(LengthMismatch)` naming the output shorter than its count.
pub(crate) fn check_pair_outputs(
    counts: PairCounts,
    positives: usize,
    negatives: usize,
) -> Result<(), Error> {
    if positives < counts.positives {
        return Err(Error::LengthMismatch {
            buffer: "positives",
            expected: counts.positives,
            actual: positives,
        });
    }
    if negatives < counts.negatives {
        return Err(Error::LengthMismatch {
            buffer: "negatives",
            expected: counts.negatives,
            actual: negatives,
        });
    }
    Ok(())
}

/// Runs a pair miner's sweep into `positives` and `negatives`, counting first (a second
/// sweep) unless both outputs hold the label bounds, so that nothing is written on error.
pub(crate) fn write_pairs<F>(
    labels: &[u32],
    positives: &mut [Pair],
    negatives: &mut [Pair],
    workspace: &mut [f32],
    mut sweep: F,
) -> Result<PairCounts, Error>
where
    F: PairSweep,
{
    let bounds = pair_bounds(labels);
    if positives.len() < bounds.positives || negatives.len() < bounds.negatives {
        let mut c = PairCount::default();
        sweep.run(&mut *workspace, &mut c)?;
        check_pair_outputs(c.0, positives.len(), negatives.len())?;
    }
    let mut w = PairWrite {
        positives,
        negatives,
        counts: PairCounts::default(),
    };
    sweep.run(workspace, &mut w)?;
    Ok(w.counts)
}

/// A pair miner's sweep, generic over what receives the pairs (statically dispatched, so
/// that the no-panic proof sees through it).
pub(crate) trait PairSweep {
    fn run<V: PairVisit>(&mut self, workspace: &mut [f32], visit: &mut V) -> Result<(), Error>;
}

/// [`pair_mine`]'s sweep.
struct MarginSweep<'a, 'x> {
    backend: Backend,
    x: &'a Matrix<'x>,
    labels: &'a [u32],
    metric: Metric,
    params: PairMinerParams,
}

impl PairSweep for MarginSweep<'_, '_> {
    fn run<V: PairVisit>(&mut self, workspace: &mut [f32], visit: &mut V) -> Result<(), Error> {
        sweep_pairs(
            self.backend,
            self.x,
            self.labels,
            self.metric,
            self.params,
            workspace,
            visit,
        )
    }
}

/// The checks of the pair miners before their outputs: labels, parameters, workspace,
/// data. Returns the number of rows.
pub(crate) fn check_pair_mine(
    x: &Matrix<'_>,
    labels: &[u32],
    params: PairMinerParams,
    workspace: usize,
) -> Result<usize, Error> {
    let n = check_labels(x, labels)?;
    params.validate()?;
    check_workspace(pair_mine_workspace_len(n, x.dim()), workspace)?;
    check_rows(x, false)?;
    Ok(n)
}

fn sweep_pairs<V: PairVisit>(
    backend: Backend,
    x: &Matrix<'_>,
    labels: &[u32],
    metric: Metric,
    params: PairMinerParams,
    workspace: &mut [f32],
    visit: &mut V,
) -> Result<(), Error> {
    let (pm, nm) = (params.pos_margin, params.neg_margin);
    sweep_rows(backend, x, metric, workspace, |a, row, _| {
        let Some(&la) = labels.get(a) else {
            return false;
        };
        for (j, (&l, &d)) in labels.iter().zip(row).enumerate() {
            if l != la {
                if d < nm {
                    visit.negative(a, j);
                }
            } else if j != a && d > pm {
                visit.positive(a, j);
            }
        }
        true
    })
}

/// Numbers of ordered pairs [`pair_mine`] keeps: positive pairs `(i, j)`, `i != j`,
/// `label(i) == label(j)`, with `d(x_i, x_j) > pos_margin`, and negative pairs with
/// `d(x_i, x_j) < neg_margin` (pytorch-metric-learning's `PairMarginMiner`, with the
/// margins in distance units for every metric). `(i, j)` and `(j, i)` are counted
/// separately.
///
/// The distance rows are computed in blocks of up to 256 rows, no `n x n` matrix. Scalar
/// twin: [`crate::scalar::pair_mine_count`]. `workspace` needs
/// [`pair_mine_workspace_len`]`(rows, dim)` elements, garbage before and after.
///
/// # Errors
///
/// In this order:
/// - [`Error::LengthMismatch`] (`"labels"`) when `labels.len() != rows`;
/// - [`Error::InvalidParameter`] (`"pos_margin"`, `"neg_margin"`) for a NaN or infinite
///   margin;
/// - [`Error::WorkspaceTooSmall`] when the workspace is too short;
/// - [`Error::NonFinite`] (`"x"`, row and column) when `x` holds a NaN or an infinity;
/// - [`Error::TooLarge`] (`"x"`, row and column) when an element of `x` exceeds
///   `2^52 / sqrt(dim)`.
///
/// # Numerics
///
/// Decisions are taken on the mining kernels' `f32` distances (see the
/// [accuracy notes](super#distances-and-their-accuracy)): a pair whose distance lies
/// within their error bound of a margin may be decided otherwise than by the `f64` twin.
///
/// # Example
///
/// ```
/// use triplet_kernels::{pair_mine_count, pair_mine_workspace_len};
/// use triplet_kernels::{Matrix, Metric, PairCounts, PairMinerParams};
/// let x = Matrix::new(&[0.0, 2.0, 2.5], 3, 1)?;
/// let mut ws = [0.0_f32; pair_mine_workspace_len(3, 1)];
/// let params = PairMinerParams::new(1.0, 1.0);
/// let c = pair_mine_count(x, &[4, 4, 5], Metric::Euclidean, params, &mut ws)?;
/// // (0, 1), (1, 0) at 2 > 1; negatives (1, 2), (2, 1) at 0.5 < 1.
/// assert_eq!(c, PairCounts { positives: 2, negatives: 2 });
/// # Ok::<(), triplet_kernels::Error>(())
/// ```
#[cfg_attr(feature = "no-panic", no_panic::no_panic)]
pub fn pair_mine_count(
    x: Matrix<'_>,
    labels: &[u32],
    metric: Metric,
    params: PairMinerParams,
    workspace: &mut [f32],
) -> Result<PairCounts, Error> {
    check_pair_mine(&x, labels, params, workspace.len())?;
    let mut c = PairCount::default();
    sweep_pairs(
        Backend::active(),
        &x,
        labels,
        metric,
        params,
        workspace,
        &mut c,
    )?;
    Ok(c.0)
}

/// Writes the ordered pairs of the batch that [`pair_mine_count`] counts: positive pairs
/// farther than `pos_margin` into `positives`, negative pairs nearer than `neg_margin`
/// into `negatives`, each in ascending `(anchor, other)` order; returns how many of each
/// it wrote. The first that many elements of each output are overwritten, the rest left
/// untouched. The pairs feed [`crate::contrastive_loss_pairs`] and
/// [`crate::multi_similarity_loss_pairs`].
///
/// When an output is shorter than the batch's number of ordered pairs of its kind, the
/// counts are taken first (a second sweep), so that nothing is written on error. Scalar
/// twin: [`crate::scalar::pair_mine`]. `workspace` needs
/// [`pair_mine_workspace_len`]`(rows, dim)` elements, garbage before and after.
///
/// # Errors
///
/// Those of [`pair_mine_count`], in its order, then [`Error::LengthMismatch`]
/// (`"positives"` or `"negatives"`, `expected` = the count) when an output is shorter
/// than its count.
///
/// # Numerics
///
/// As [`pair_mine_count`].
///
/// # Example
///
/// ```
/// use triplet_kernels::{pair_mine, pair_mine_workspace_len, Matrix, Metric, Pair, PairMinerParams};
/// let x = Matrix::new(&[0.0, 2.0, 2.5], 3, 1)?;
/// let mut ws = [0.0_f32; pair_mine_workspace_len(3, 1)];
/// let (mut pos, mut neg) = ([Pair::default(); 6], [Pair::default(); 6]);
/// let params = PairMinerParams::new(1.0, 1.0);
/// let c = pair_mine(x, &[4, 4, 5], Metric::Euclidean, params, &mut pos, &mut neg, &mut ws)?;
/// assert_eq!(pos[..c.positives], [Pair::new(0, 1), Pair::new(1, 0)]);
/// assert_eq!(neg[..c.negatives], [Pair::new(1, 2), Pair::new(2, 1)]);
/// # Ok::<(), triplet_kernels::Error>(())
/// ```
#[cfg_attr(feature = "no-panic", no_panic::no_panic)]
pub fn pair_mine(
    x: Matrix<'_>,
    labels: &[u32],
    metric: Metric,
    params: PairMinerParams,
    positives: &mut [Pair],
    negatives: &mut [Pair],
    workspace: &mut [f32],
) -> Result<PairCounts, Error> {
    check_pair_mine(&x, labels, params, workspace.len())?;
    let backend = Backend::active();
    let sweep = MarginSweep {
        backend,
        x: &x,
        labels,
        metric,
        params,
    };
    write_pairs(labels, positives, negatives, workspace, sweep)
}
