//! The pair mining of the multi-similarity loss (Wang et al., CVPR 2019), as
//! pytorch-metric-learning's `MultiSimilarityMiner`: [`multi_similarity_mine`],
//! [`multi_similarity_mine_count`].

use super::pairs::{
    pair_mine_workspace_len, write_pairs, Pair, PairCount, PairCounts, PairSweep, PairVisit,
};
use super::sweep::sweep_rows;
use crate::distance::Metric;
use crate::error::Error;
use crate::matrix::Matrix;
use crate::simd::Backend;
use crate::validate::{check_labels, check_rows, check_workspace};

/// Parameters of [`multi_similarity_mine`].
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub struct MultiSimilarityMinerParams {
    /// The margin `epsilon` of the mining rule, in cosine similarity.
    pub epsilon: f32,
}

impl MultiSimilarityMinerParams {
    /// The rule with margin `epsilon`.
    pub const fn new(epsilon: f32) -> Self {
        MultiSimilarityMinerParams { epsilon }
    }

    /// pytorch-metric-learning's `MultiSimilarityMiner()` default: `epsilon = 0.1`.
    pub const fn pytorch_metric_learning() -> Self {
        Self::new(0.1)
    }

    /// The same parameters with another `epsilon`.
    #[must_use]
    pub const fn with_epsilon(self, epsilon: f32) -> Self {
        MultiSimilarityMinerParams { epsilon }
    }

    fn validate(self) -> Result<(), Error> {
        if self.epsilon.is_finite() {
            Ok(())
        } else {
            Err(Error::InvalidParameter {
                name: "epsilon",
                expected: "finite",
            })
        }
    }
}

impl Default for MultiSimilarityMinerParams {
    /// [`MultiSimilarityMinerParams::pytorch_metric_learning`].
    fn default() -> Self {
        Self::pytorch_metric_learning()
    }
}

/// The checks of the multi-similarity miner and its twin before the outputs: labels,
/// parameters, workspace, data (finite, and in the range of [`Error::TooLarge`]). Returns
/// the number of rows.
pub(crate) fn check_ms_mine(
    x: &Matrix<'_>,
    labels: &[u32],
    params: MultiSimilarityMinerParams,
    workspace: usize,
) -> Result<usize, Error> {
    let n = check_labels(x, labels)?;
    params.validate()?;
    check_workspace(pair_mine_workspace_len(n, x.dim()), workspace)?;
    check_rows(x, false)?;
    Ok(n)
}

fn sweep_ms<V: PairVisit>(
    backend: Backend,
    x: &Matrix<'_>,
    labels: &[u32],
    eps: f32,
    workspace: &mut [f32],
    visit: &mut V,
) -> Result<(), Error> {
    sweep_rows(backend, x, Metric::Cosine, workspace, |a, row, sim| {
        let Some(&la) = labels.get(a) else {
            return false;
        };
        // Similarities; the hardest negative (largest) and positive (smallest).
        let (mut max_neg, mut min_pos) = (f32::NEG_INFINITY, f32::INFINITY);
        for (j, ((s, &d), &l)) in sim.iter_mut().zip(row).zip(labels).enumerate() {
            *s = 1.0 - d;
            if l != la {
                max_neg = max_neg.max(*s);
            } else if j != a {
                min_pos = min_pos.min(*s);
            }
        }
        if max_neg == f32::NEG_INFINITY || min_pos == f32::INFINITY {
            return true;
        }
        for (j, (&s, &l)) in sim.iter().zip(labels).enumerate() {
            if l != la {
                if s + eps > min_pos {
                    visit.negative(a, j);
                }
            } else if j != a && s - eps < max_neg {
                visit.positive(a, j);
            }
        }
        true
    })
}

/// Numbers of pairs [`multi_similarity_mine`] keeps. With `s` the cosine similarity, for
/// each anchor `a` with at least one positive (`j != a`, same label) and one negative
/// (another label), the positive pair `(a, p)` is kept when
/// `s(a, p) - epsilon < max_n s(a, n)` and the negative pair `(a, n)` when
/// `s(a, n) + epsilon > min_p s(a, p)` (Wang et al. 2019, as pytorch-metric-learning's
/// `MultiSimilarityMiner`). Anchors without a positive or a negative keep nothing.
///
/// The similarity rows are computed in blocks of up to 256 rows, no `n x n` matrix.
/// Scalar twin: [`crate::scalar::multi_similarity_mine_count`]. `workspace` needs
/// [`pair_mine_workspace_len`]`(rows, dim)` elements, garbage before and after.
///
/// # Errors
///
/// In this order:
/// - [`Error::LengthMismatch`] (`"labels"`) when `labels.len() != rows`;
/// - [`Error::InvalidParameter`] (`"epsilon"`) for a NaN or infinite epsilon;
/// - [`Error::WorkspaceTooSmall`] when the workspace is too short;
/// - [`Error::NonFinite`] (`"x"`, row and column) when `x` holds a NaN or an infinity;
/// - [`Error::TooLarge`] (`"x"`, row and column) when an element of `x` exceeds
///   `2^52 / sqrt(dim)`, where the Gram products could overflow `f32`.
///
/// # Numerics
///
/// Similarities are `1 -` the mining kernels' `f32` cosine distances (absolute error
/// `(2 d + 10) 2^-24`); a pair within that bound of its threshold may be decided
/// otherwise than by the `f64` twin. A zero row has similarity 0 to every row.
///
/// # Example
///
/// ```
/// use triplet_kernels::{multi_similarity_mine_count, pair_mine_workspace_len};
/// use triplet_kernels::{Matrix, MultiSimilarityMinerParams, PairCounts};
/// // Rows 0 and 1 share a label; row 2 is at 45 degrees from row 0, 90 from row 1.
/// let x = Matrix::new(&[1.0, 0.0, 0.0, 1.0, 1.0, 1.0], 3, 2)?;
/// let mut ws = [0.0_f32; pair_mine_workspace_len(3, 2)];
/// let c = multi_similarity_mine_count(x, &[0, 0, 1], MultiSimilarityMinerParams::new(0.1), &mut ws)?;
/// assert_eq!(c, PairCounts { positives: 2, negatives: 2 });
/// # Ok::<(), triplet_kernels::Error>(())
/// ```
#[cfg_attr(feature = "no-panic", no_panic::no_panic)]
pub fn multi_similarity_mine_count(
    x: Matrix<'_>,
    labels: &[u32],
    params: MultiSimilarityMinerParams,
    workspace: &mut [f32],
) -> Result<PairCounts, Error> {
    check_ms_mine(&x, labels, params, workspace.len())?;
    let mut c = PairCount::default();
    sweep_ms(
        Backend::active(),
        &x,
        labels,
        params.epsilon,
        workspace,
        &mut c,
    )?;
    Ok(c.0)
}

/// Writes the pairs [`multi_similarity_mine_count`] counts: kept positive pairs into
/// `positives`, kept negative pairs into `negatives`, each in ascending
/// `(anchor, other)` order; returns how many of each it wrote (the first that many
/// elements of each output are overwritten, the rest left untouched). The pairs feed
/// [`crate::multi_similarity_loss_pairs`] (pytorch-metric-learning's
/// `MultiSimilarityLoss` with a `MultiSimilarityMiner`) and
/// [`crate::contrastive_loss_pairs`].
///
/// When an output is shorter than the batch's number of ordered pairs of its kind, the
/// counts are taken first (a second sweep), so that nothing is written on error. Scalar
/// twin: [`crate::scalar::multi_similarity_mine`]. `workspace` needs
/// [`pair_mine_workspace_len`]`(rows, dim)` elements, garbage before and after.
///
/// # Errors
///
/// Those of [`multi_similarity_mine_count`], in its order, then
/// [`Error::LengthMismatch`] (`"positives"` or `"negatives"`, `expected` = the count)
/// when an output is shorter than its count.
///
/// # Numerics
///
/// As [`multi_similarity_mine_count`].
///
/// # Example
///
/// ```
/// use triplet_kernels::{multi_similarity_mine, pair_mine_workspace_len};
/// use triplet_kernels::{Matrix, MultiSimilarityMinerParams, Pair};
/// let x = Matrix::new(&[1.0, 0.0, 0.0, 1.0, 1.0, 1.0], 3, 2)?;
/// let mut ws = [0.0_f32; pair_mine_workspace_len(3, 2)];
/// let (mut pos, mut neg) = ([Pair::default(); 2], [Pair::default(); 2]);
/// let params = MultiSimilarityMinerParams::pytorch_metric_learning();
/// let c = multi_similarity_mine(x, &[0, 0, 1], params, &mut pos, &mut neg, &mut ws)?;
/// // s(0, 1) = 0 is below the hardest negative's 0.71: both positive pairs are kept; the
/// // negative is above the anchors' positive similarity 0: (0, 2) and (1, 2) are kept.
/// assert_eq!(pos[..c.positives], [Pair::new(0, 1), Pair::new(1, 0)]);
/// assert_eq!(neg[..c.negatives], [Pair::new(0, 2), Pair::new(1, 2)]);
/// # Ok::<(), triplet_kernels::Error>(())
/// ```
#[cfg_attr(feature = "no-panic", no_panic::no_panic)]
pub fn multi_similarity_mine(
    x: Matrix<'_>,
    labels: &[u32],
    params: MultiSimilarityMinerParams,
    positives: &mut [Pair],
    negatives: &mut [Pair],
    workspace: &mut [f32],
) -> Result<PairCounts, Error> {
    check_ms_mine(&x, labels, params, workspace.len())?;
    let backend = Backend::active();
    let sweep = MsSweep {
        backend,
        x: &x,
        labels,
        eps: params.epsilon,
    };
    write_pairs(labels, positives, negatives, workspace, sweep)
}

/// [`multi_similarity_mine`]'s sweep.
struct MsSweep<'a, 'x> {
    backend: Backend,
    x: &'a Matrix<'x>,
    labels: &'a [u32],
    eps: f32,
}

impl PairSweep for MsSweep<'_, '_> {
    fn run<V: PairVisit>(&mut self, workspace: &mut [f32], visit: &mut V) -> Result<(), Error> {
        sweep_ms(
            self.backend,
            self.x,
            self.labels,
            self.eps,
            workspace,
            visit,
        )
    }
}
