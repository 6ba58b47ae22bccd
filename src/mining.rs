//! Online mining inside a labelled batch: which `(anchor, positive, negative)` triplets a
//! loss sees.
//!
//! For a batch `x` (`n` rows) with `labels`, a *positive* of anchor `a` is a row `p != a`
//! with `label(p) == label(a)`, a *negative* a row with `label(n) != label(a)`. With
//! `d` the chosen [`Metric`]:
//!
//! - [`Mining::All`]: every `(a, p, n)`, in ascending `(a, p, n)` order.
//! - [`Mining::BatchHard`] (Hermans et al. 2017): for each anchor that has at least one
//!   positive and one negative, one triplet: the farthest positive `argmax_p d(a, p)` and
//!   the nearest negative `argmin_n d(a, n)`. Ascending `a`.
//! - [`Mining::SemiHard`] (FaceNet, as TensorFlow Addons implements it): for each
//!   anchor-positive pair whose anchor has a negative, one triplet: the nearest negative
//!   with `d(a, n) > d(a, p)`, or, when no negative is farther than the positive, the
//!   farthest negative. Ascending `(a, p)`.
//!
//! Anchors without a positive or without a negative contribute no triplet, so a
//! single-row batch or a one-class batch selects nothing. **Ties go to the smallest
//! index** (in the fast kernels and in their [`crate::scalar`] twins alike): a candidate
//! replaces the current choice only when it is strictly better, and among equal
//! distances the smallest index wins.
//!
//! The number of selected triplets depends on the labels only, see
//! [`mine_triplets_count`].
//!
//! # Memory: no `n x n` matrix
//!
//! The fast kernels never hold the whole distance matrix; their workspace grows like
//! `n * (dim + 1)` plus `256 n` (at `n = 4096`, `dim = 256`: about 0.24e6 elements for
//! batch-hard, 2.1e6 for semi-hard, against 16.8e6 for the matrix), see
//! [`hardest_pairs_workspace_len`] and [`mine_triplets_workspace_len`]:
//!
//! - batch-hard sweeps the upper triangle of the matrix in square tiles of up to 256 x 256
//!   distances ([`crate::pairwise_distances`] on the diagonal, [`crate::cross_distances`]
//!   elsewhere): each tile updates the running farthest positive and nearest negative of
//!   its rows *and* (by symmetry) of its columns, so every distance is computed once.
//!   Tiles are visited row block by row block, so every anchor meets its candidates in
//!   ascending index order and a strict comparison keeps the smallest index on ties.
//! - semi-hard (and the batch-all loss) needs whole rows: anchors are processed in blocks
//!   of up to 256 rows, each block's `256 x n` distances computed at once
//!   ([`crate::pairwise_distances_rows`], symmetric inside the block, so a batch of up to
//!   256 rows costs one triangle) and every anchor mined from its row.
//! - batch-all mining needs no distance at all.
//!
//! # Distances and their accuracy
//!
//! Distances come from the packed Gram-form kernels ([`crate::DistanceMode::Gram`]),
//! whose error is bounded by the rows' norms, not by the distance: points much closer to
//! each other than to the origin would lose relative accuracy. So, for the Euclidean
//! metrics, every Gram value `S` (a squared distance) is checked against the rows' squared
//! norms: when `4 S < |a|^2 + |b|^2` the value is recomputed directly as
//! `sum (a_i - b_i)^2` ([`crate::DistanceMode::Direct`]'s arithmetic), and a tile or block
//! in which more than one value in eight needs this is recomputed whole in direct mode.
//! Every squared distance a decision reads is therefore within `(8 d + 16) 2^-24` of its
//! exact value *relative to the distance itself* (times `1 / (1 - (8 d + 16) 2^-24)`,
//! below 1.01 for `d < 500_000`), however close the points are: the Gram bound
//! `(2 d + 4) 2^-24 (|a|^2 + |b|^2)` with `|a|^2 + |b|^2 <= 4 S`, or the direct bound
//! `(d + 2) 2^-24 S`. Integer-valued inputs whose squared norms stay below `2^24` give
//! exact squared distances in both forms, hence exactly the decisions of the `f64`
//! twins. Cosine distances are the same in both forms (absolute error
//! `(2 d + 10) 2^-24`).

mod hard;
pub(crate) mod multi_similarity;
pub(crate) mod pairs;
mod rows;
mod select;
mod split;
mod sweep;
pub(crate) mod threshold;

pub(crate) use hard::{
    hard_len, hard_sweep, sweep_choices, EmitHard, EmitPairs, HardState, PartTiles, TILE,
};
pub(crate) use rows::{block_rows, for_row_blocks, rows_len, SemiBlock};
pub(crate) use rows::{ref_hard_fallback, RefHardState, RefHardTile, RefRowBlock};
pub(crate) use split::check_part_args;
pub use split::{
    hardest_pairs_part, hardest_pairs_part_workspace_len, merge_hardest_pairs, HardestPair,
    SweepPart,
};

pub(crate) use multi_similarity::check_ms_mine;
pub use multi_similarity::{
    multi_similarity_mine, multi_similarity_mine_count, MultiSimilarityMinerParams,
};
pub use pairs::{
    pair_mine, pair_mine_count, pair_mine_workspace_len, Pair, PairCounts, PairMinerParams,
};
pub use threshold::{
    triplet_mine, triplet_mine_count, triplet_mine_workspace_len, TripletMinerParams, TripletType,
};

use crate::distance::{metric_norms, Metric};
use crate::error::Error;
use crate::matrix::Matrix;
use crate::simd::{self, Backend, Simd};
use crate::validate::{check_labels, check_len, check_rows, check_workspace};
use crate::workspace::{max_len, Carve};

/// Marks "no such row" in the index outputs of [`hardest_pairs`] (an anchor without a
/// positive or without a negative).
pub const NO_INDEX: u32 = u32::MAX;

/// One `(anchor, positive, negative)` triplet of row indices into a batch.
///
/// `#[repr(C)]`: three consecutive `u32`, so a buffer of triplets can be shared with C or
/// reinterpreted as `[u32; 3]` rows.
///
/// ```
/// use triplet_kernels::Triplet;
/// let t = Triplet::new(0, 1, 2);
/// assert_eq!((t.anchor, t.positive, t.negative), (0, 1, 2));
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
pub struct Triplet {
    /// Row of the anchor.
    pub anchor: u32,
    /// Row of the positive (same label as the anchor).
    pub positive: u32,
    /// Row of the negative (another label).
    pub negative: u32,
}

impl Triplet {
    /// The triplet `(anchor, positive, negative)`.
    pub const fn new(anchor: u32, positive: u32, negative: u32) -> Self {
        Triplet {
            anchor,
            positive,
            negative,
        }
    }

    /// Views a flat buffer `[a0, p0, n0, a1, p1, n1, ...]` (for example an index tensor
    /// of shape `k x 3`) as `k` triplets, without copying.
    ///
    /// # Errors
    ///
    /// [`Error::LengthMismatch`] (`"triplets"`) when the length is not a multiple of 3.
    ///
    /// ```
    /// use triplet_kernels::Triplet;
    /// let flat = [0_u32, 1, 2, 3, 4, 5];
    /// let t = Triplet::from_flat(&flat)?;
    /// assert_eq!(t, [Triplet::new(0, 1, 2), Triplet::new(3, 4, 5)]);
    /// # Ok::<(), triplet_kernels::Error>(())
    /// ```
    pub fn from_flat(flat: &[u32]) -> Result<&[Triplet], Error> {
        bytemuck::try_cast_slice(flat).map_err(|_| Error::LengthMismatch {
            buffer: "triplets",
            expected: flat.len() - flat.len() % 3,
            actual: flat.len(),
        })
    }

    /// The triplets as one flat `u32` buffer, the inverse of [`Triplet::from_flat`].
    pub fn as_flat(triplets: &[Triplet]) -> &[u32] {
        bytemuck::cast_slice(triplets)
    }
}

/// Which triplets of a labelled batch a loss uses. See the [module docs](self).
///
/// The default is [`Mining::BatchHard`], as in [`crate::BatchParams::new`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Mining {
    /// Every valid triplet (batch-all).
    All,
    /// Per anchor, the farthest positive and the nearest negative (batch-hard). The
    /// default.
    #[default]
    BatchHard,
    /// Per anchor-positive pair, the nearest negative farther than the positive, else the
    /// farthest negative (semi-hard, FaceNet / TensorFlow Addons).
    SemiHard,
}

// ---------------------------------------------------------------------------------------
// Workspace sizes.

/// Workspace elements that [`mine_triplets`] needs for `rows` embeddings of dimension
/// `dim`, whatever the mining: the larger of the batch-hard sweep
/// ([`hardest_pairs_workspace_len`]) and the row-wise minings (`3 rows`, one `t x rows`
/// block of distances and its packing,
/// [`crate::pairwise_distances_rows_workspace_len`]`(rows, t, dim)`, about
/// `(rows + 96) * (dim + 1)`), with `t = min(rows, 256)`. No `rows x rows` matrix: for
/// `rows = 4096`, `dim = 256` about `2.1e6` elements (8.6 MiB) instead of `16.8e6`.
/// Saturates instead of overflowing.
pub const fn mine_triplets_workspace_len(rows: usize, dim: usize) -> usize {
    max_len(hard_len(rows, dim), rows_len(rows, dim, 0))
}

/// Workspace elements that [`hardest_pairs`] needs for `rows` embeddings of dimension
/// `dim`: the batch-hard sweep's `5 rows`, one `t x t` tile (`t = min(rows, 256)`) and the
/// packing of its rows ([`crate::pairwise_distances_workspace_len`]`(t, dim)` when
/// `rows <= 256`, a single diagonal tile; [`crate::cross_distances_workspace_len`]`(t, t,
/// dim)` otherwise). For `rows = 4096`, `dim = 256` about `0.24e6` elements (1 MiB).
/// Saturates instead of overflowing.
pub const fn hardest_pairs_workspace_len(rows: usize, dim: usize) -> usize {
    hard_len(rows, dim)
}

/// Deprecated name of [`mine_triplets_workspace_len`] (which also covers
/// [`hardest_pairs`]).
#[deprecated(since = "0.2.0", note = "renamed to `mine_triplets_workspace_len`")]
pub const fn mining_workspace_len(rows: usize, dim: usize) -> usize {
    mine_triplets_workspace_len(rows, dim)
}

// ---------------------------------------------------------------------------------------
// Triplet counts and the argument checks of the miners.

/// Positives and negatives of anchor `a`.
fn anchor_counts(labels: &[u32], a: usize, la: u32) -> (usize, usize) {
    let mut pos = 0;
    let mut neg = 0;
    for (j, &l) in labels.iter().enumerate() {
        if l != la {
            neg += 1;
        } else if j != a {
            pos += 1;
        }
    }
    (pos, neg)
}

/// The exact count of [`mine_triplets_count`] (no shortcut).
pub(crate) fn count_exact(labels: &[u32], mining: Mining) -> Result<usize, Error> {
    let n = labels.len();
    let overflow = Error::ShapeOverflow { rows: n, cols: n };
    let mut total = 0_usize;
    for (a, &la) in labels.iter().enumerate() {
        let (pos, neg) = anchor_counts(labels, a, la);
        let k = match mining {
            Mining::All => pos.checked_mul(neg).ok_or(overflow)?,
            Mining::BatchHard => usize::from(pos > 0 && neg > 0),
            Mining::SemiHard => {
                if neg > 0 {
                    pos
                } else {
                    0
                }
            }
        };
        total = total.checked_add(k).ok_or(overflow)?;
    }
    Ok(total)
}

/// Number of triplets that `mining` selects in a batch with these `labels`. It depends on
/// the labels only: with `pos(a)` and `neg(a)` the numbers of positives and negatives of
/// anchor `a`, it is `sum_a pos(a) * neg(a)` for [`Mining::All`], the number of anchors
/// with `pos(a) > 0` and `neg(a) > 0` for [`Mining::BatchHard`], and
/// `sum over anchors with neg(a) > 0 of pos(a)` for [`Mining::SemiHard`].
///
/// Use it to size the `out` buffer of [`mine_triplets`]. `O(n^2)` label comparisons, no
/// workspace. Scalar twin: [`crate::scalar::mine_triplets_count`].
///
/// # Errors
///
/// [`Error::ShapeOverflow`] (`rows = cols = labels.len()`) when the count overflows
/// `usize`.
///
/// # Numerics
///
/// Exact integer arithmetic; identical to the twin.
///
/// # Example
///
/// ```
/// use triplet_kernels::{mine_triplets_count, Mining};
/// let labels = [7, 7, 3, 3, 3];
/// assert_eq!(mine_triplets_count(&labels, Mining::All)?, 2 * 3 + 3 * 2 * 2);
/// assert_eq!(mine_triplets_count(&labels, Mining::BatchHard)?, 5);
/// assert_eq!(mine_triplets_count(&labels, Mining::SemiHard)?, 2 + 3 * 2);
/// assert_eq!(mine_triplets_count(&[1, 1, 1], Mining::All)?, 0); // one class
/// # Ok::<(), triplet_kernels::Error>(())
/// ```
#[cfg_attr(feature = "no-panic", no_panic::no_panic)]
pub fn mine_triplets_count(labels: &[u32], mining: Mining) -> Result<usize, Error> {
    count_exact(labels, mining)
}

/// The checks of [`hardest_pairs`] and its scalar twin, in their documented order.
/// Returns the number of rows.
pub(crate) fn check_hardest_args(
    x: &Matrix<'_>,
    labels: &[u32],
    positives_len: usize,
    negatives_len: usize,
    workspace_len: usize,
) -> Result<usize, Error> {
    let n = check_labels(x, labels)?;
    check_len("positives", n, positives_len)?;
    check_len("negatives", n, negatives_len)?;
    check_workspace(hardest_pairs_workspace_len(n, x.dim()), workspace_len)?;
    check_rows(x, false)?;
    Ok(n)
}

/// The checks of [`mine_triplets`] and its scalar twin, in their documented order: labels,
/// triplet count against `out_len`, workspace, finite data. Returns the number of rows.
pub(crate) fn check_mine_args(
    x: &Matrix<'_>,
    labels: &[u32],
    mining: Mining,
    out_len: usize,
    workspace_len: usize,
) -> Result<usize, Error> {
    let n = check_labels(x, labels)?;
    let count = count_exact(labels, mining)?;
    if out_len < count {
        return Err(Error::LengthMismatch {
            buffer: "out",
            expected: count,
            actual: out_len,
        });
    }
    check_workspace(mine_triplets_workspace_len(n, x.dim()), workspace_len)?;
    check_rows(x, false)?;
    Ok(n)
}

// ---------------------------------------------------------------------------------------
// The miners' output.

/// Receives the selected triplets, in the order of the [module docs](self). Generic over
/// the backend so that it runs inside the mining kernel.
pub(crate) trait Sink {
    /// One selected triplet `(a, p, q)`.
    fn triplet<S: Simd>(&mut self, s: S, a: usize, p: usize, q: usize);
}

// ---------------------------------------------------------------------------------------
// Public mining kernels.

/// Per anchor, the hardest positive and the hardest negative under `metric`:
/// `positives[a] = argmax_{p != a, label(p) = label(a)} d(a, p)` and
/// `negatives[a] = argmin_{label(n) != label(a)} d(a, n)`, or [`NO_INDEX`] where the anchor
/// has no such row (each written independently: an anchor without a negative still gets
/// its farthest positive). Ties go to the smallest index. Both outputs have exactly `rows`
/// elements and are fully overwritten. [`Mining::BatchHard`] selects
/// `(a, positives[a], negatives[a])` for every anchor where both exist.
///
/// The distance matrix is never stored: its upper triangle is swept in tiles, each
/// distance computed once and offered to both of its rows (see the
/// [module docs](self#memory-no-n-x-n-matrix)). Scalar twin:
/// [`crate::scalar::hardest_pairs`]. `workspace` needs
/// [`hardest_pairs_workspace_len`]`(rows, dim)` elements, garbage before and after.
///
/// # Errors
///
/// - [`Error::LengthMismatch`] (`"labels"`, `"positives"`, `"negatives"`) when a buffer
///   does not have `rows` elements;
/// - [`Error::WorkspaceTooSmall`] when the workspace is too short;
/// - [`Error::NonFinite`] (`"x"`, row and column of the first one) when `x` holds a NaN
///   or an infinity: mining would otherwise hide it in an index.
/// - [`Error::TooLarge`] (`"x"`, row and column) when an element of `x` exceeds
///   `2^52 / sqrt(dim)`, where squared distances could overflow `f32`.
///
/// # Numerics
///
/// Decisions are taken on `f32` distances accurate to `(8 d + 16) 2^-24` relative for the
/// Euclidean metrics and `(2 d + 10) 2^-24` absolute for cosine (see the
/// [module docs](self#distances-and-their-accuracy)). Where two candidates' distances are
/// equal as computed, the smallest index wins. On integer-valued inputs (squared norms
/// below `2^24`, Euclidean metrics) the distances are exact and the indices equal the
/// twin's; elsewhere a candidate can differ from the twin's only when their distances lie
/// within that bound of each other, so the chosen distances agree to it.
///
/// # Example
///
/// ```
/// use triplet_kernels::{hardest_pairs, hardest_pairs_workspace_len, Matrix, Metric, NO_INDEX};
/// let x = Matrix::new(&[0.0, 1.0, 3.0, 4.0, 10.0], 5, 1)?;
/// let labels = [0, 0, 0, 1, 2];
/// let (mut pos, mut neg) = ([0_u32; 5], [0_u32; 5]);
/// let mut ws = [0.0_f32; hardest_pairs_workspace_len(5, 1)];
/// hardest_pairs(x, &labels, Metric::Euclidean, &mut pos, &mut neg, &mut ws)?;
/// assert_eq!(pos, [2, 2, 0, NO_INDEX, NO_INDEX]);
/// assert_eq!(neg, [3, 3, 3, 2, 3]);
/// # Ok::<(), triplet_kernels::Error>(())
/// ```
#[cfg_attr(feature = "no-panic", no_panic::no_panic)]
pub fn hardest_pairs(
    x: Matrix<'_>,
    labels: &[u32],
    metric: Metric,
    positives: &mut [u32],
    negatives: &mut [u32],
    workspace: &mut [f32],
) -> Result<(), Error> {
    check_hardest_args(
        &x,
        labels,
        positives.len(),
        negatives.len(),
        workspace.len(),
    )?;
    let st = sweep_choices(Backend::active(), &x, labels, metric, workspace, None)?;
    for (o, &p) in positives.iter_mut().zip(st.pos_idx.iter()) {
        *o = p;
    }
    for (o, &q) in negatives.iter_mut().zip(st.neg_idx.iter()) {
        *o = q;
    }
    Ok(())
}

/// Writes the triplets into `out`, counting them.
struct Writer<'o> {
    out: &'o mut [Triplet],
    k: usize,
}

impl Sink for Writer<'_> {
    #[inline(always)]
    fn triplet<S: Simd>(&mut self, _s: S, a: usize, p: usize, q: usize) {
        if let Some(t) = self.out.get_mut(self.k) {
            *t = Triplet::new(a as u32, p as u32, q as u32);
        }
        self.k += 1;
    }
}

/// Writes the triplets `mining` selects in the batch into `out`, in the order of the
/// [module docs](self) (ascending `(a, p)`, then `n` for [`Mining::All`]), and returns how
/// many it wrote: exactly [`mine_triplets_count`]`(labels, mining)`. `out` needs at least
/// that many elements; the first `count` are overwritten, the rest are left untouched.
///
/// Batch-hard sweeps the distance matrix in tiles, semi-hard in blocks of anchor rows
/// (see the [module docs](self#memory-no-n-x-n-matrix)); batch-all reads the labels only.
/// Scalar twin: [`crate::scalar::mine_triplets`]. `workspace` needs
/// [`mine_triplets_workspace_len`]`(rows, dim)` elements, garbage before and after. Feed the
/// result to [`crate::triplet_margin_loss`] to compute a loss over the mined triplets, or
/// use [`crate::triplet_batch_loss`], which mines and reduces in one call.
///
/// # Errors
///
/// - [`Error::LengthMismatch`] (`"labels"`) when `labels.len() != rows`;
/// - [`Error::ShapeOverflow`] when the triplet count overflows `usize`;
/// - [`Error::LengthMismatch`] (`"out"`, `expected` = the count) when `out` is shorter
///   than the count;
/// - [`Error::WorkspaceTooSmall`] when the workspace is too short;
/// - [`Error::NonFinite`] (`"x"`, row and column of the first one) when `x` holds a NaN or an infinity.
/// - [`Error::TooLarge`] (`"x"`, row and column) when an element of `x` exceeds
///   `2^52 / sqrt(dim)`, where squared distances could overflow `f32`.
///
/// # Numerics
///
/// As [`hardest_pairs`]; the semi-hard boundary `d(a, n) > d(a, p)` is decided on the
/// `f32` distances, so a negative whose distance lies within their error bound of the
/// positive's may fall on the other side than in the `f64` twin.
///
/// # Example
///
/// ```
/// use triplet_kernels::{mine_triplets, mine_triplets_count, mine_triplets_workspace_len};
/// use triplet_kernels::{Matrix, Metric, Mining, Triplet};
/// let x = Matrix::new(&[0.0, 1.0, 3.0, 4.0], 4, 1)?;
/// let labels = [0, 0, 1, 1];
/// let mut out = [Triplet::default(); 4];
/// let mut ws = [0.0_f32; mine_triplets_workspace_len(4, 1)];
/// assert_eq!(mine_triplets_count(&labels, Mining::SemiHard)?, 4);
/// let k = mine_triplets(x, &labels, Metric::Euclidean, Mining::SemiHard, &mut out, &mut ws)?;
/// assert_eq!(k, 4);
/// // Anchor 0: positive 1 at distance 1; the nearest negative beyond it is row 2.
/// assert_eq!(out[0], Triplet::new(0, 1, 2));
/// // Anchor 3: positive 2 at distance 1; negatives at 3 and 4: the nearest beyond is row 1.
/// assert_eq!(out[3], Triplet::new(3, 2, 1));
/// # Ok::<(), triplet_kernels::Error>(())
/// ```
#[cfg_attr(feature = "no-panic", no_panic::no_panic)]
pub fn mine_triplets(
    x: Matrix<'_>,
    labels: &[u32],
    metric: Metric,
    mining: Mining,
    out: &mut [Triplet],
    workspace: &mut [f32],
) -> Result<usize, Error> {
    let n = check_mine_args(&x, labels, mining, out.len(), workspace.len())?;
    let backend = Backend::active();
    let mut w = Writer { out, k: 0 };
    match mining {
        Mining::All => {
            for (a, &la) in labels.iter().enumerate() {
                for (p, &lp) in labels.iter().enumerate() {
                    if p == a || lp != la {
                        continue;
                    }
                    for (q, &lq) in labels.iter().enumerate() {
                        if lq != la {
                            w.triplet(simd::Portable, a, p, q);
                        }
                    }
                }
            }
        }
        Mining::BatchHard => {
            let st = sweep_choices(backend, &x, labels, metric, workspace, None)?;
            backend.dispatch(EmitHard {
                st: &st,
                sink: &mut w,
            });
        }
        Mining::SemiHard => {
            let mut ws = Carve::new(workspace);
            let norms = ws.take(n)?;
            metric_norms(backend, &x, metric, norms);
            let scratch = ws.take(2 * n)?;
            let block = ws.take(block_rows(n) * n)?;
            let norms = &*norms;
            let pack = ws.rest();
            for_row_blocks(backend, &x, metric, norms, block, pack, |i0, _, blk| {
                backend.dispatch(SemiBlock {
                    block: blk,
                    i0,
                    labels,
                    scratch: &mut *scratch,
                    sink: &mut w,
                });
                Ok(())
            })?;
        }
    }
    Ok(w.k)
}
