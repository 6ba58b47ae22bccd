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
//! index** (in the fast kernels and in their [`crate::scalar`] twins alike): rows are
//! scanned in ascending order and a candidate replaces the current choice only when it is
//! strictly better.
//!
//! The number of selected triplets depends on the labels only, see
//! [`mine_triplets_count`].

use crate::distance::{pairwise_distances, Metric};
use crate::error::{check_len, check_workspace, checked_area, Error};
use crate::matrix::Matrix;

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
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Mining {
    /// Every valid triplet (batch-all).
    #[default]
    All,
    /// Per anchor, the farthest positive and the nearest negative (batch-hard).
    BatchHard,
    /// Per anchor-positive pair, the nearest negative farther than the positive, else the
    /// farthest negative (semi-hard, FaceNet / TensorFlow Addons).
    SemiHard,
}

/// Workspace elements that [`hardest_pairs`] and [`mine_triplets`] need for `rows`
/// embeddings of dimension `dim`: `rows * rows` for the distance matrix plus
/// [`crate::pairwise_distances_workspace_len`]`(rows, dim)` for computing it. Saturates
/// instead of overflowing.
pub const fn mining_workspace_len(rows: usize, dim: usize) -> usize {
    rows.saturating_mul(rows)
        .saturating_add(distance_scratch_len(rows, dim))
}

/// Scratch for [`distance_matrix`]: what the pairwise kernel needs, and at least `rows`
/// (the batch losses reuse it for the row norms).
pub(crate) const fn distance_scratch_len(rows: usize, dim: usize) -> usize {
    let pw = crate::distance::pairwise_distances_workspace_len(rows, dim);
    if pw > rows {
        pw
    } else {
        rows
    }
}

/// Checks `labels` against `x` and that the `n x n` distance matrix fits; returns `n`.
pub(crate) fn check_labels(x: &Matrix<'_>, labels: &[u32]) -> Result<usize, Error> {
    let n = x.rows();
    check_len("labels", n, labels.len())?;
    checked_area(n, n)?;
    Ok(n)
}

/// `Err(NonFinite)` at the first NaN or infinite element of `x`.
pub(crate) fn check_finite(x: &Matrix<'_>) -> Result<(), Error> {
    match x.as_slice().iter().position(|v| !v.is_finite()) {
        Some(position) => Err(Error::NonFinite {
            buffer: "x",
            position,
        }),
        None => Ok(()),
    }
}

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

/// `Err(ShapeOverflow)` when the number of triplets of a batch could overflow `usize`
/// (checked exactly only when `n^3` itself overflows).
pub(crate) fn check_triplet_count(labels: &[u32], mining: Mining) -> Result<(), Error> {
    let n = labels.len();
    if n.checked_mul(n).and_then(|m| m.checked_mul(n)).is_some() {
        Ok(())
    } else {
        count_exact(labels, mining).map(|_| ())
    }
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

/// Calls `f(p, n, d(a, p), d(a, n))` for every triplet `mining` selects for anchor `a`,
/// in ascending `(p, n)` order; `row` holds `d(a, j)` for every `j`.
#[inline]
pub(crate) fn visit_anchor<F: FnMut(usize, usize, f32, f32)>(
    row: &[f32],
    labels: &[u32],
    a: usize,
    mining: Mining,
    mut f: F,
) {
    let Some(&la) = labels.get(a) else {
        return;
    };
    match mining {
        Mining::All => {
            for (p, (&lp, &dap)) in labels.iter().zip(row).enumerate() {
                if p == a || lp != la {
                    continue;
                }
                for (q, (&lq, &daq)) in labels.iter().zip(row).enumerate() {
                    if lq != la {
                        f(p, q, dap, daq);
                    }
                }
            }
        }
        Mining::BatchHard => {
            if let (Some((p, dap)), Some((q, daq))) = hardest_in_row(row, labels, a, la) {
                f(p, q, dap, daq);
            }
        }
        Mining::SemiHard => {
            for (p, (&lp, &dap)) in labels.iter().zip(row).enumerate() {
                if p == a || lp != la {
                    continue;
                }
                if let Some((q, daq)) = semi_hard_in_row(row, labels, la, dap) {
                    f(p, q, dap, daq);
                }
            }
        }
    }
}

/// A chosen row and its distance to the anchor.
type Pick = (usize, f32);

/// The farthest positive and the nearest negative of anchor `a` in one pass, each with
/// its distance; ties to the smallest index.
#[inline]
fn hardest_in_row(row: &[f32], labels: &[u32], a: usize, la: u32) -> (Option<Pick>, Option<Pick>) {
    // Plain scalars instead of options keep the loop tight; `usize::MAX` marks "none yet",
    // and the first candidate is always taken.
    let (mut pi, mut pd) = (usize::MAX, f32::NEG_INFINITY);
    let (mut ni, mut nd) = (usize::MAX, f32::INFINITY);
    for (j, (&l, &d)) in labels.iter().zip(row).enumerate() {
        let neg = l != la;
        let take_n = neg && (ni == usize::MAX || d < nd);
        let take_p = !neg && j != a && (pi == usize::MAX || d > pd);
        if take_n {
            (ni, nd) = (j, d);
        }
        if take_p {
            (pi, pd) = (j, d);
        }
    }
    (
        (pi != usize::MAX).then_some((pi, pd)),
        (ni != usize::MAX).then_some((ni, nd)),
    )
}

/// The semi-hard negative of an anchor-positive pair at distance `dap`: the nearest
/// negative with `d > dap`, else the farthest negative; ties to the smallest index.
/// `None` when the anchor has no negative.
#[inline]
fn semi_hard_in_row(row: &[f32], labels: &[u32], la: u32, dap: f32) -> Option<Pick> {
    // As in `hardest_in_row`: `usize::MAX` marks "none yet".
    let (mut ai, mut ad) = (usize::MAX, f32::INFINITY);
    let (mut fi, mut fd) = (usize::MAX, f32::NEG_INFINITY);
    for (j, (&l, &d)) in labels.iter().zip(row).enumerate() {
        let neg = l != la;
        let take_a = neg && d > dap && (ai == usize::MAX || d < ad);
        let take_f = neg && (fi == usize::MAX || d > fd);
        if take_a {
            (ai, ad) = (j, d);
        }
        if take_f {
            (fi, fd) = (j, d);
        }
    }
    if ai != usize::MAX {
        Some((ai, ad))
    } else if fi != usize::MAX {
        Some((fi, fd))
    } else {
        None
    }
}

/// Fills `dist` (`n * n`) with the pairwise distances of `x`, using `scratch`
/// ([`distance_scratch_len`] elements).
pub(crate) fn distance_matrix(
    x: Matrix<'_>,
    metric: Metric,
    dist: &mut [f32],
    scratch: &mut [f32],
) -> Result<(), Error> {
    pairwise_distances(x, metric, dist, scratch)
}

/// Per anchor, the hardest positive and the hardest negative under `metric`:
/// `positives[a] = argmax_{p != a, label(p) = label(a)} d(a, p)` and
/// `negatives[a] = argmin_{label(n) != label(a)} d(a, n)`, or [`NO_INDEX`] where the anchor
/// has no such row (each written independently: an anchor without a negative still gets
/// its farthest positive). Ties go to the smallest index. Both outputs have exactly `rows`
/// elements and are fully overwritten. [`Mining::BatchHard`] selects
/// `(a, positives[a], negatives[a])` for every anchor where both exist.
///
/// Scalar twin: [`crate::scalar::hardest_pairs`]. `workspace` needs
/// [`mining_workspace_len`]`(rows, dim)` elements, garbage before and after.
///
/// # Errors
///
/// - [`Error::LengthMismatch`] (`"labels"`, `"positives"`, `"negatives"`) when a buffer
///   does not have `rows` elements;
/// - [`Error::ShapeOverflow`] when `rows * rows` overflows `usize`;
/// - [`Error::WorkspaceTooSmall`] when the workspace is too short;
/// - [`Error::NonFinite`] (`"x"`, flat position) when `x` holds a NaN or an infinity:
///   mining would otherwise hide it in an index.
///
/// # Numerics
///
/// Decisions are taken on the `f32` distances of [`crate::pairwise_distances`]. Where two
/// candidates' distances are equal as computed, the smallest index wins. On inputs whose
/// distances are exact in `f32` (small integers, Euclidean metrics) the indices equal the
/// twin's; elsewhere a candidate can differ from the twin's only when their distances lie
/// within the distance error bound of each other, so the chosen distances agree to that
/// bound.
///
/// # Example
///
/// ```
/// use triplet_kernels::{hardest_pairs, mining_workspace_len, Matrix, Metric, NO_INDEX};
/// let x = Matrix::new(&[0.0, 1.0, 3.0, 4.0, 10.0], 5, 1)?;
/// let labels = [0, 0, 0, 1, 2];
/// let (mut pos, mut neg) = ([0_u32; 5], [0_u32; 5]);
/// let mut ws = [0.0_f32; mining_workspace_len(5, 1)];
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
    let n = check_labels(&x, labels)?;
    check_len("positives", n, positives.len())?;
    check_len("negatives", n, negatives.len())?;
    check_workspace(mining_workspace_len(n, x.dim()), workspace.len())?;
    check_finite(&x)?;
    let (dist, rest) = workspace.split_at_mut(n * n);
    distance_matrix(x, metric, dist, rest)?;
    for (a, ((row, pa), na)) in dist
        .chunks_exact(n)
        .zip(positives.iter_mut())
        .zip(negatives.iter_mut())
        .enumerate()
    {
        let la = labels.get(a).copied().unwrap_or_default();
        let (p, q) = hardest_in_row(row, labels, a, la);
        *pa = p.map_or(NO_INDEX, |(j, _)| j as u32);
        *na = q.map_or(NO_INDEX, |(j, _)| j as u32);
    }
    Ok(())
}

/// Writes the triplets `mining` selects in the batch into `out`, in the order of the
/// [module docs](self) (ascending `(a, p)`, then `n` for [`Mining::All`]), and returns how
/// many it wrote: exactly [`mine_triplets_count`]`(labels, mining)`. `out` needs at least
/// that many elements; the first `count` are overwritten, the rest are left untouched.
///
/// Scalar twin: [`crate::scalar::mine_triplets`]. `workspace` needs
/// [`mining_workspace_len`]`(rows, dim)` elements, garbage before and after. Feed the
/// result to [`crate::triplet_margin_loss`] to compute a loss over the mined triplets, or
/// use [`crate::triplet_batch_loss`], which mines and reduces in one call.
///
/// # Errors
///
/// - [`Error::LengthMismatch`] (`"labels"`) when `labels.len() != rows`;
/// - [`Error::ShapeOverflow`] when `rows * rows` or the triplet count overflows `usize`;
/// - [`Error::LengthMismatch`] (`"out"`, `expected` = the count) when `out` is shorter
///   than the count;
/// - [`Error::WorkspaceTooSmall`] when the workspace is too short;
/// - [`Error::NonFinite`] (`"x"`, flat position) when `x` holds a NaN or an infinity.
///
/// # Numerics
///
/// As [`hardest_pairs`]; the semi-hard boundary `d(a, n) > d(a, p)` is decided on the
/// `f32` distances, so a negative whose distance lies within rounding of the positive's
/// may fall on the other side than in the `f64` twin.
///
/// # Example
///
/// ```
/// use triplet_kernels::{mine_triplets, mine_triplets_count, mining_workspace_len};
/// use triplet_kernels::{Matrix, Metric, Mining, Triplet};
/// let x = Matrix::new(&[0.0, 1.0, 3.0, 4.0], 4, 1)?;
/// let labels = [0, 0, 1, 1];
/// let mut out = [Triplet::default(); 4];
/// let mut ws = [0.0_f32; mining_workspace_len(4, 1)];
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
    let n = check_labels(&x, labels)?;
    let count = count_exact(labels, mining)?;
    if out.len() < count {
        return Err(Error::LengthMismatch {
            buffer: "out",
            expected: count,
            actual: out.len(),
        });
    }
    check_workspace(mining_workspace_len(n, x.dim()), workspace.len())?;
    check_finite(&x)?;
    let (dist, rest) = workspace.split_at_mut(n * n);
    distance_matrix(x, metric, dist, rest)?;
    let mut k = 0_usize;
    for (a, row) in dist.chunks_exact(n).enumerate() {
        visit_anchor(row, labels, a, mining, |p, q, _, _| {
            if let Some(t) = out.get_mut(k) {
                *t = Triplet::new(a as u32, p as u32, q as u32);
            }
            k += 1;
        });
    }
    Ok(k)
}
