//! Batch-hard mining split over workers that share the batch: [`hardest_pairs_part`]
//! sweeps one part of the upper triangle of tiles, [`merge_hardest_pairs`] combines the
//! parts' running choices, and [`crate::triplet_hardest_pairs_loss_grad`] turns the
//! merged choices into the batch loss.

use super::hard::{hard_len, sweep_choices};
use super::NO_INDEX;
use crate::distance::Metric;
use crate::error::Error;
use crate::matrix::Matrix;
use crate::simd::Backend;
use crate::validate::{check_labels, check_len, check_rows, check_workspace};

/// One anchor's batch-hard choice: its farthest positive and nearest negative with their
/// mining distances, or [`NO_INDEX`] (with distance `-inf` for the positive, `+inf` for
/// the negative) where none was seen.
///
/// The distances are the `f32` values the choice was made on: the Gram-form distances
/// with the accuracy fix-up of [`crate::hardest_pairs`], in the sweep's metric.
/// `#[repr(C)]` and [`bytemuck::Pod`]: 16 bytes, so a worker's choices can be sent as
/// bytes (an all-gather, a file) and merged elsewhere.
///
/// ```
/// use triplet_kernels::{HardestPair, NO_INDEX};
/// let none = HardestPair::NONE;
/// assert_eq!((none.positive, none.negative), (NO_INDEX, NO_INDEX));
/// assert_eq!(core::mem::size_of::<HardestPair>(), 16);
/// ```
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct HardestPair {
    /// Row of the farthest positive, or [`NO_INDEX`].
    pub positive: u32,
    /// Row of the nearest negative, or [`NO_INDEX`].
    pub negative: u32,
    /// Its distance to the anchor (`-inf` without a positive).
    pub pos_dist: f32,
    /// Its distance to the anchor (`+inf` without a negative).
    pub neg_dist: f32,
}

impl HardestPair {
    /// No choice yet: the neutral element of [`merge_hardest_pairs`].
    pub const NONE: HardestPair = HardestPair {
        positive: NO_INDEX,
        negative: NO_INDEX,
        pos_dist: f32::NEG_INFINITY,
        neg_dist: f32::INFINITY,
    };

    /// `self` with `other`'s choices where they win: a larger positive distance, a
    /// smaller negative distance, ties to the smaller index; [`NO_INDEX`] never wins.
    #[inline(always)]
    const fn merged(self, other: HardestPair) -> HardestPair {
        let mut out = self;
        if other.positive != NO_INDEX
            && (self.positive == NO_INDEX
                || other.pos_dist > self.pos_dist
                || (other.pos_dist == self.pos_dist && other.positive < self.positive))
        {
            out.positive = other.positive;
            out.pos_dist = other.pos_dist;
        }
        if other.negative != NO_INDEX
            && (self.negative == NO_INDEX
                || other.neg_dist < self.neg_dist
                || (other.neg_dist == self.neg_dist && other.negative < self.negative))
        {
            out.negative = other.negative;
            out.neg_dist = other.neg_dist;
        }
        out
    }
}

impl Default for HardestPair {
    fn default() -> Self {
        HardestPair::NONE
    }
}

/// Part `index` of `parts` of the batch-hard sweep, for [`hardest_pairs_part`].
///
/// The sweep's tiles (the upper triangle of the distance matrix in `256 x 256` tiles, in
/// row-major order) are cut into `parts` consecutive runs of about equal cost (a diagonal
/// tile counts its triangle); each tile belongs to the run that holds the middle of its
/// cost. The partition depends on the number of rows only, so every worker computes the
/// same one. A part may own no tile (with fewer tiles than parts, or a large tile
/// spanning a part's share): its choices stay [`HardestPair::NONE`].
///
/// ```
/// use triplet_kernels::SweepPart;
/// let p = SweepPart::new(1, 2);
/// assert_eq!((p.index(), p.parts()), (1, 2));
/// assert_eq!(SweepPart::WHOLE, SweepPart::new(0, 1));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SweepPart {
    index: usize,
    parts: usize,
}

impl SweepPart {
    /// The whole sweep: one part.
    pub const WHOLE: SweepPart = SweepPart { index: 0, parts: 1 };

    /// Part `index` (from 0) of `parts`; checked by the kernels (`index < parts`).
    pub const fn new(index: usize, parts: usize) -> Self {
        SweepPart { index, parts }
    }

    /// This part's index.
    pub const fn index(self) -> usize {
        self.index
    }

    /// The number of parts.
    pub const fn parts(self) -> usize {
        self.parts
    }
}

/// Workspace elements that [`hardest_pairs_part`] needs for `rows` embeddings of dimension
/// `dim`: as [`crate::hardest_pairs_workspace_len`] (`5 rows`, one `t x t` tile with
/// `t = min(rows, 256)` and its packing), whatever the part. Saturates instead of
/// overflowing.
pub const fn hardest_pairs_part_workspace_len(rows: usize, dim: usize) -> usize {
    hard_len(rows, dim)
}

/// The checks of [`hardest_pairs_part`] and its scalar twin, in their documented order:
/// labels, part, output, workspace, finite data. Returns the number of rows.
pub(crate) fn check_part_args(
    x: &Matrix<'_>,
    labels: &[u32],
    part: SweepPart,
    out_len: usize,
    workspace_len: usize,
) -> Result<usize, Error> {
    let n = check_labels(x, labels)?;
    if part.parts == 0 || part.index >= part.parts {
        return Err(Error::InvalidParameter {
            name: "part",
            expected: "index < parts",
        });
    }
    check_len("out", n, out_len)?;
    check_workspace(hardest_pairs_part_workspace_len(n, x.dim()), workspace_len)?;
    check_rows(x, false)?;
    Ok(n)
}

/// The batch-hard choices of one part of the tile sweep of [`crate::hardest_pairs`]: every
/// row's farthest positive and nearest negative among the distances of the tiles of
/// `part` ([`SweepPart`]), written to `out` (`rows` elements, all overwritten; rows that
/// meet no candidate in this part get [`HardestPair::NONE`]'s halves).
///
/// Workers that share `x` run one part each (threads, or processes holding the gathered
/// batch), then fold the results with [`merge_hardest_pairs`]. The merged choices equal
/// those of one whole sweep bit for bit (indices and distances, whatever the number of
/// parts and the order of merging: every tile is computed by the same arithmetic, and the
/// merge keeps the sweep's tie rule), provided every part runs on the same backend
/// ([`crate::Backend`]; processes on different CPUs may differ in the last bits, and so
/// near ties), so the loss of
/// [`crate::triplet_hardest_pairs_loss_grad`] over them is bit for bit that of
/// [`crate::triplet_batch_loss_grad`] with [`crate::Mining::BatchHard`]. `p` parts take
/// `1 / p` of the sweep's `n^2 d / 2` multiply-adds each, to within one tile; anchor blocks
/// against the whole batch ([`crate::triplet_batch_ref_loss_grad`]) take `2 / p` of it
/// each (their `n / p` anchors against all `n` rows), so two of them together do twice
/// the sweep's work.
/// `x` must already be normalised if the loss normalises (the split takes no
/// `normalize`). Scalar twin: [`crate::scalar::hardest_pairs_part`]. `workspace` needs
/// [`hardest_pairs_part_workspace_len`]`(rows, dim)` elements, garbage before and after.
///
/// # Errors
///
/// - [`Error::LengthMismatch`] (`"labels"`, `"out"`) when a buffer does not have `rows`
///   elements;
/// - [`Error::InvalidParameter`] (`"part"`) when `part.index() >= part.parts()`;
/// - [`Error::WorkspaceTooSmall`] when the workspace is too short;
/// - [`Error::NonFinite`] and [`Error::TooLarge`] (`"x"`) as for [`crate::hardest_pairs`].
///
/// Checked in that order: labels, part, `out`, workspace, data.
///
/// # Numerics
///
/// As [`crate::hardest_pairs`]; the distances in `out` are the ones the choices were made
/// on. Since the data are finite and below the `TooLarge` bound, no distance is NaN, so
/// [`crate::hardest_pairs`]'s fallback for all-NaN rows never applies here.
///
/// # Example
///
/// ```
/// use triplet_kernels::{hardest_pairs_part, hardest_pairs_part_workspace_len};
/// use triplet_kernels::{merge_hardest_pairs, HardestPair, Matrix, Metric, SweepPart, NO_INDEX};
/// let x = Matrix::new(&[0.0, 1.0, 3.0, 4.0, 10.0], 5, 1)?;
/// let labels = [0, 0, 0, 1, 2];
/// let mut ws = [0.0_f32; hardest_pairs_part_workspace_len(5, 1)];
/// let (mut a, mut b) = ([HardestPair::NONE; 5], [HardestPair::NONE; 5]);
/// // Two workers (here one after the other), then the merge.
/// hardest_pairs_part(x, &labels, Metric::Euclidean, SweepPart::new(0, 2), &mut a, &mut ws)?;
/// hardest_pairs_part(x, &labels, Metric::Euclidean, SweepPart::new(1, 2), &mut b, &mut ws)?;
/// merge_hardest_pairs(&mut a, &b)?;
/// let pos: Vec<u32> = a.iter().map(|c| c.positive).collect();
/// let neg: Vec<u32> = a.iter().map(|c| c.negative).collect();
/// assert_eq!(pos, [2, 2, 0, NO_INDEX, NO_INDEX]); // as hardest_pairs
/// assert_eq!(neg, [3, 3, 3, 2, 3]);
/// assert_eq!((a[0].pos_dist, a[0].neg_dist), (3.0, 4.0));
/// # Ok::<(), triplet_kernels::Error>(())
/// ```
#[cfg_attr(feature = "no-panic", no_panic::no_panic)]
pub fn hardest_pairs_part(
    x: Matrix<'_>,
    labels: &[u32],
    metric: Metric,
    part: SweepPart,
    out: &mut [HardestPair],
    workspace: &mut [f32],
) -> Result<(), Error> {
    check_part_args(&x, labels, part, out.len(), workspace.len())?;
    let split = Some((part.index, part.parts));
    let st = sweep_choices(Backend::active(), &x, labels, metric, workspace, split)?;
    st.write_pairs(out);
    Ok(())
}

/// Folds `other` into `into`, row by row: each row keeps the farther positive and the
/// nearer negative of the two, ties to the smaller index, [`NO_INDEX`] losing to any
/// choice. The operation is associative and commutative with [`HardestPair::NONE`] as its
/// neutral element, so the parts of [`hardest_pairs_part`] can be merged in any order or
/// as a tree (an all-reduce). Scalar: a comparison per field, no arithmetic.
///
/// # Errors
///
/// [`Error::LengthMismatch`] (`"other"`) when `other.len() != into.len()`.
///
/// # Example
///
/// ```
/// use triplet_kernels::{merge_hardest_pairs, HardestPair, NO_INDEX};
/// let mut a = [HardestPair { positive: 4, negative: NO_INDEX, pos_dist: 2.0, neg_dist: f32::INFINITY }];
/// let b = [HardestPair { positive: 1, negative: 7, pos_dist: 2.0, neg_dist: 5.0 }];
/// merge_hardest_pairs(&mut a, &b)?;
/// // Equal positive distances: the smaller index; the only negative.
/// assert_eq!(a[0], HardestPair { positive: 1, negative: 7, pos_dist: 2.0, neg_dist: 5.0 });
/// # Ok::<(), triplet_kernels::Error>(())
/// ```
#[cfg_attr(feature = "no-panic", no_panic::no_panic)]
pub fn merge_hardest_pairs(into: &mut [HardestPair], other: &[HardestPair]) -> Result<(), Error> {
    check_len("other", into.len(), other.len())?;
    for (a, &b) in into.iter_mut().zip(other) {
        *a = a.merged(b);
    }
    Ok(())
}
