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
//! [`mining_workspace_len`]:
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

use crate::distance::{
    cross_distances_on, cross_distances_rows_on, cross_distances_workspace_len, fix_up,
    metric_norms, pairwise_distances_on, pairwise_distances_rows_on,
    pairwise_distances_rows_workspace_len, DistanceMode, Metric,
};
use crate::error::Error;
use crate::matrix::Matrix;
use crate::simd::{self, Backend, Kernel, Simd, MAX_LANES};
use crate::validate::{check_labels, check_len, check_rows, check_workspace};
use crate::workspace::{max_len, min_len, Carve};

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

// ---------------------------------------------------------------------------------------
// Workspace sizes.

/// Side of the square distance tiles of the batch-hard sweep.
pub(crate) const TILE: usize = 256;
/// Anchor rows per block of the row-wise minings (semi-hard, batch-all).
pub(crate) const BLOCK: usize = 256;
/// Per-row `f32` arrays of the batch-hard sweep: norms and the four running choices.
const HARD_ARRAYS: usize = 5;
/// Per-row `f32` arrays of the row-wise minings: norms and two scratch rows.
const ROW_ARRAYS: usize = 3;

/// Workspace of the batch-hard sweep over `rows` rows: the per-row arrays, one tile and
/// the packing of a tile's two row blocks. Saturates.
pub(crate) const fn hard_len(rows: usize, dim: usize) -> usize {
    let t = min_len(rows, TILE);
    rows.saturating_mul(HARD_ARRAYS)
        .saturating_add(t.saturating_mul(t))
        .saturating_add(cross_distances_workspace_len(t, t, dim))
}

/// Rows of the largest block of the row-wise minings.
pub(crate) const fn block_rows(rows: usize) -> usize {
    min_len(rows, BLOCK)
}

/// Packing scratch of [`crate::pairwise_distances_rows`] for every block of [`for_row_blocks`].
const fn block_pack_len(rows: usize, dim: usize) -> usize {
    let b = block_rows(rows);
    if b == 0 {
        return 0;
    }
    let last = if rows.is_multiple_of(b) { b } else { rows % b };
    max_len(
        pairwise_distances_rows_workspace_len(rows, b, dim),
        pairwise_distances_rows_workspace_len(rows, last, dim),
    )
}

/// Workspace of the row-wise minings over `rows` rows: the per-row arrays plus
/// `extra_arrays` more, one block of rows and its packing. Saturates.
pub(crate) const fn rows_len(rows: usize, dim: usize, extra_arrays: usize) -> usize {
    rows.saturating_mul(ROW_ARRAYS + extra_arrays)
        .saturating_add(block_rows(rows).saturating_mul(rows))
        .saturating_add(block_pack_len(rows, dim))
}

/// Workspace elements that [`hardest_pairs`] and [`mine_triplets`] need for `rows`
/// embeddings of dimension `dim`, whatever the mining: the larger of the batch-hard sweep
/// (`5 rows`, one `t x t` tile and the packing of its two row blocks,
/// [`crate::cross_distances_workspace_len`]`(t, t, dim)`) and the row-wise minings
/// (`3 rows`, one `t x rows` block of distances and its packing,
/// [`crate::pairwise_distances_rows_workspace_len`]`(rows, t, dim)`, about
/// `(rows + 96) * (dim + 1)`), with `t = min(rows, 256)`. No `rows x rows` matrix: for
/// `rows = 4096`, `dim = 256` about `2.1e6` elements (8.6 MiB) instead of `16.8e6`.
/// Saturates instead of overflowing.
pub const fn mining_workspace_len(rows: usize, dim: usize) -> usize {
    max_len(hard_len(rows, dim), rows_len(rows, dim, 0))
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
    check_workspace(mining_workspace_len(n, x.dim()), workspace_len)?;
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
    check_workspace(mining_workspace_len(n, x.dim()), workspace_len)?;
    check_rows(x, false)?;
    Ok(n)
}

// ---------------------------------------------------------------------------------------
// Argmin / argmax with the smallest index on ties.

/// Index of the largest value of `buf`, ties to the smallest index; [`NO_INDEX`] when
/// `buf` holds no candidate (every value `-inf` or NaN). See [`arg_extreme`].
#[inline(always)]
fn argmax<S: Simd>(s: S, buf: &[f32]) -> u32 {
    arg_extreme(s, buf, true)
}

/// Index of the smallest value of `buf`, ties to the smallest index; [`NO_INDEX`] when
/// `buf` holds no candidate (every value `+inf` or NaN). See [`arg_extreme`].
#[inline(always)]
fn argmin<S: Simd>(s: S, buf: &[f32]) -> u32 {
    arg_extreme(s, buf, false)
}

/// Index of the largest (`max`) or smallest value of `buf`, ties to the smallest index;
/// [`NO_INDEX`] when the extreme is the neutral value (`-inf` for `max`, `+inf`
/// otherwise), that is when `buf` holds no candidate. NaN values are never chosen.
///
/// The extreme comes from a vector pass of `min`/`max` (every lane keeps the extreme of
/// the positions congruent to it); the index is then searched only in the lanes that
/// hold the extreme, first position first.
#[inline(always)]
fn arg_extreme<S: Simd>(s: S, buf: &[f32], max: bool) -> u32 {
    let l = S::LANES;
    let neutral = if max {
        f32::NEG_INFINITY
    } else {
        f32::INFINITY
    };
    let mut acc = s.splat(neutral);
    let mut chunks = buf.chunks_exact(l);
    for c in chunks.by_ref() {
        // Candidate first: a NaN candidate keeps the accumulator.
        acc = if max {
            s.max(s.load(c), acc)
        } else {
            s.min(s.load(c), acc)
        };
    }
    let rem = chunks.remainder();
    // Lanes past `l` keep the neutral value.
    let mut lanes = [neutral; MAX_LANES];
    s.store(acc, &mut lanes);
    let mut m = extreme_of(&lanes, max);
    for &v in rem {
        let better = if max { v > m } else { v < m };
        m = if better { v } else { m };
    }
    if m == neutral {
        return NO_INDEX;
    }
    let full = buf.len() - rem.len();
    // Lanes holding the extreme, as a bit mask (usually one bit).
    let mut hits = 0_u32;
    for (b, &v) in lanes.iter().enumerate() {
        hits |= u32::from(v == m) << b;
    }
    let mut best = NO_INDEX;
    while hits != 0 {
        let lane = hits.trailing_zeros() as usize;
        hits &= hits - 1;
        let mut j = lane;
        while j < full {
            if buf.get(j).is_some_and(|&x| x == m) {
                best = best.min(j as u32);
                break;
            }
            j += l;
        }
    }
    if best == NO_INDEX {
        if let Some(k) = rem.iter().position(|&x| x == m) {
            best = (full + k) as u32;
        }
    }
    best
}

/// The largest (`max`) or smallest of `MAX_LANES` values (no NaN), by a fixed tree of
/// halves.
#[inline(always)]
fn extreme_of(v: &[f32; MAX_LANES], max: bool) -> f32 {
    let mut h = *v;
    let mut w = MAX_LANES / 2;
    while w > 0 {
        for i in 0..MAX_LANES / 2 {
            if i < w {
                let (a, b) = (h[i], h[i + w]);
                let better = if max { b > a } else { b < a };
                h[i] = if better { b } else { a };
            }
        }
        w /= 2;
    }
    h[0]
}

// ---------------------------------------------------------------------------------------
// Batch-hard: the symmetric tile sweep.

/// The running choices of the batch-hard sweep, one entry per row: the farthest positive
/// and the nearest negative seen so far (value and index, [`NO_INDEX`] for none yet).
pub(crate) struct HardState<'w> {
    pos_val: &'w mut [f32],
    pos_idx: &'w mut [u32],
    neg_val: &'w mut [f32],
    neg_idx: &'w mut [u32],
}

impl<'w> HardState<'w> {
    /// Carves the four arrays (`4 rows` elements) off `ws`.
    pub(crate) fn take(ws: &mut Carve<'w>, rows: usize) -> Result<Self, Error> {
        Ok(HardState {
            pos_val: ws.take(rows)?,
            pos_idx: ws.take_u32(rows)?,
            neg_val: ws.take(rows)?,
            neg_idx: ws.take_u32(rows)?,
        })
    }
}

/// The mining epilogue of one tile of the sweep: rows `i0..i0 + ti` against columns
/// `j0..j0 + tj` (`tile` row-major, `ti x tj`). Every row takes the tile's columns as
/// candidates; in an off-diagonal tile every column also takes the tile's rows. NaN
/// distances are never taken here (see [`hard_fallback`]).
struct HardTile<'a, 'o, 'w> {
    tile: &'o mut [f32],
    ti: usize,
    tj: usize,
    i0: usize,
    j0: usize,
    diagonal: bool,
    labels: &'a [u32],
    st: &'o mut HardState<'w>,
}

impl Kernel for HardTile<'_, '_, '_> {
    type Output = ();
    #[inline(always)]
    fn run<S: Simd, const MR: usize, const NV: usize>(self, s: S) {
        let HardTile {
            tile,
            ti,
            tj,
            i0,
            j0,
            diagonal,
            labels,
            st,
        } = self;
        if tj == 0 || tj > TILE {
            return;
        }
        let (Some(cl), Some(rl)) = (labels.get(j0..j0 + tj), labels.get(i0..i0 + ti)) else {
            return;
        };
        if diagonal {
            // A row is not its own positive: its own (zero) entry is never the largest.
            for (r, row) in tile.chunks_exact_mut(tj).enumerate() {
                if let Some(v) = row.get_mut(r) {
                    *v = f32::NEG_INFINITY;
                }
            }
        }
        let tile = &*tile;
        // Rows: the row's positives (other columns -inf) and negatives (others +inf) as
        // two scratch rows, each reduced to its extreme; merged into the state, which
        // holds smaller indices from earlier tiles and so wins ties.
        let mut pbuf = [f32::NEG_INFINITY; TILE];
        let mut nbuf = [f32::INFINITY; TILE];
        let (Some(pb), Some(nb)) = (pbuf.get_mut(..tj), nbuf.get_mut(..tj)) else {
            return;
        };
        for (r, (row, &la)) in tile.chunks_exact(tj).zip(rl).enumerate() {
            for (((p, n), &v), &lb) in pb.iter_mut().zip(nb.iter_mut()).zip(row).zip(cl) {
                let same = lb == la;
                *p = if same { v } else { f32::NEG_INFINITY };
                *n = if same { f32::INFINITY } else { v };
            }
            let a = i0 + r;
            let k = argmax(s, pb);
            if let (Some(&v), Some(sv), Some(si)) = (
                pb.get(k as usize),
                st.pos_val.get_mut(a),
                st.pos_idx.get_mut(a),
            ) {
                if *si == NO_INDEX || v > *sv {
                    (*sv, *si) = (v, (j0 + k as usize) as u32);
                }
            }
            let k = argmin(s, nb);
            if let (Some(&v), Some(sv), Some(si)) = (
                nb.get(k as usize),
                st.neg_val.get_mut(a),
                st.neg_idx.get_mut(a),
            ) {
                if *si == NO_INDEX || v < *sv {
                    (*sv, *si) = (v, (j0 + k as usize) as u32);
                }
            }
        }
        if diagonal {
            return;
        }
        // Columns: the tile's rows, in ascending order, as candidates of every column
        // (element-wise over the columns, vectorised by the compiler).
        let (Some(pvs), Some(pis), Some(nvs), Some(nis)) = (
            st.pos_val.get_mut(j0..j0 + tj),
            st.pos_idx.get_mut(j0..j0 + tj),
            st.neg_val.get_mut(j0..j0 + tj),
            st.neg_idx.get_mut(j0..j0 + tj),
        ) else {
            return;
        };
        for (r, (row, &li)) in tile.chunks_exact(tj).zip(rl).enumerate() {
            let i = (i0 + r) as u32;
            for (((((&v, &lb), pv), pi), nv), ni) in row
                .iter()
                .zip(cl)
                .zip(pvs.iter_mut())
                .zip(pis.iter_mut())
                .zip(nvs.iter_mut())
                .zip(nis.iter_mut())
            {
                let same = lb == li;
                // Non-short-circuit on purpose: branch-free selects vectorise.
                let (tp, tn) = (
                    u8::from(same) & u8::from(v > *pv),
                    u8::from(!same) & u8::from(v < *nv),
                );
                let (tp, tn) = (tp != 0, tn != 0);
                *pv = if tp { v } else { *pv };
                *pi = if tp { i } else { *pi };
                *nv = if tn { v } else { *nv };
                *ni = if tn { i } else { *ni };
            }
        }
    }
}

/// Anchors whose candidates were all NaN distances (only possible when `|x|^2` overflows
/// `f32`) still get a choice: the candidate of smallest index.
fn hard_fallback(labels: &[u32], st: &mut HardState<'_>) {
    for (a, ((pi, ni), &la)) in st
        .pos_idx
        .iter_mut()
        .zip(st.neg_idx.iter_mut())
        .zip(labels)
        .enumerate()
    {
        if *pi == NO_INDEX {
            if let Some(p) = labels
                .iter()
                .enumerate()
                .position(|(j, &l)| j != a && l == la)
            {
                *pi = p as u32;
            }
        }
        if *ni == NO_INDEX {
            if let Some(q) = labels.iter().position(|&l| l != la) {
                *ni = q as u32;
            }
        }
    }
}

/// Batch-hard choices of every row of `x`: sweeps the upper triangle of the distance
/// matrix in `TILE x TILE` tiles (each distance computed once, in Gram form with the
/// accuracy fix-up), updating `st`. `norms` are [`metric_norms`]; `tile` holds at least
/// `min(n, TILE)^2` elements and `pack` the tile kernels' scratch.
#[allow(clippy::too_many_arguments)]
pub(crate) fn hard_sweep(
    backend: Backend,
    x: &Matrix<'_>,
    labels: &[u32],
    metric: Metric,
    norms: &[f32],
    st: &mut HardState<'_>,
    tile: &mut [f32],
    pack: &mut [f32],
) -> Result<(), Error> {
    st.pos_val.fill(f32::NEG_INFINITY);
    st.pos_idx.fill(NO_INDEX);
    st.neg_val.fill(f32::INFINITY);
    st.neg_idx.fill(NO_INDEX);
    let n = x.rows();
    let mut i0 = 0;
    while i0 < n {
        let i1 = n.min(i0 + TILE);
        let xi = x.sub_rows(i0, i1)?;
        let ni = norms.get(i0..i1).unwrap_or(&[]);
        let mut j0 = i0;
        while j0 < n {
            let j1 = n.min(j0 + TILE);
            let xj = x.sub_rows(j0, j1)?;
            let nj = norms.get(j0..j1).unwrap_or(&[]);
            let (ti, tj) = (i1 - i0, j1 - j0);
            let area = ti * tj;
            let actual = tile.len();
            let out = tile.get_mut(..area).ok_or(Error::WorkspaceTooSmall {
                required: area,
                actual,
            })?;
            let diagonal = i0 == j0;
            if diagonal {
                pairwise_distances_on(backend, xi, metric, out, pack)?;
            } else {
                cross_distances_on(backend, xi, xj, metric, out, pack)?;
            }
            let own = diagonal.then_some(0);
            if fix_up(backend, metric, out, &xi, &xj, ni, nj, own) {
                let mode = DistanceMode::Direct;
                if diagonal {
                    pairwise_distances_rows_on(backend, xi, 0..ti, metric, mode, out, pack)?;
                } else {
                    cross_distances_rows_on(backend, xi, xj, 0..ti, metric, mode, out, pack)?;
                }
            }
            backend.dispatch(HardTile {
                tile: out,
                ti,
                tj,
                i0,
                j0,
                diagonal,
                labels,
                st,
            });
            j0 = j1;
        }
        i0 = i1;
    }
    hard_fallback(labels, st);
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Row blocks (semi-hard, batch-all).

/// Calls `f(i0, i1, block)` for consecutive blocks of at most [`BLOCK`] anchor rows, with
/// `block` (`(i1 - i0) x n`, row-major) holding their distances to every row (Gram form
/// with the accuracy fix-up). `norms` are [`metric_norms`]; `block` holds at least
/// `min(n, BLOCK) * n` elements and `pack` the row kernel's scratch.
pub(crate) fn for_row_blocks<F>(
    backend: Backend,
    x: &Matrix<'_>,
    metric: Metric,
    norms: &[f32],
    block: &mut [f32],
    pack: &mut [f32],
    mut f: F,
) -> Result<(), Error>
where
    F: FnMut(usize, usize, &mut [f32]) -> Result<(), Error>,
{
    let n = x.rows();
    let mut i0 = 0;
    while i0 < n {
        let i1 = n.min(i0 + BLOCK);
        let area = (i1 - i0) * n;
        let actual = block.len();
        let out = block.get_mut(..area).ok_or(Error::WorkspaceTooSmall {
            required: area,
            actual,
        })?;
        let mode = DistanceMode::Gram;
        pairwise_distances_rows_on(backend, *x, i0..i1, metric, mode, out, pack)?;
        let xi = x.sub_rows(i0, i1)?;
        let ni = norms.get(i0..i1).unwrap_or(&[]);
        if fix_up(backend, metric, out, &xi, x, ni, norms, Some(i0)) {
            let mode = DistanceMode::Direct;
            pairwise_distances_rows_on(backend, *x, i0..i1, metric, mode, out, pack)?;
        }
        f(i0, i1, out)?;
        i0 = i1;
    }
    Ok(())
}

/// Receives the selected triplets, in the order of the [module docs](self). Generic over
/// the backend so that it runs inside the mining kernel.
pub(crate) trait Sink {
    /// One selected triplet `(a, p, q)`.
    fn triplet<S: Simd>(&mut self, s: S, a: usize, p: usize, q: usize);
}

/// Semi-hard mining of a block of anchor rows `i0..` (`block`: their distance rows).
pub(crate) struct SemiBlock<'a, 'o, K> {
    pub block: &'a [f32],
    pub i0: usize,
    pub labels: &'a [u32],
    /// `2 n` elements of scratch.
    pub scratch: &'o mut [f32],
    pub sink: &'o mut K,
}

impl<K: Sink> Kernel for SemiBlock<'_, '_, K> {
    type Output = ();
    #[inline(always)]
    fn run<S: Simd, const MR: usize, const NV: usize>(self, s: S) {
        let SemiBlock {
            block,
            i0,
            labels,
            scratch,
            sink,
        } = self;
        let n = labels.len();
        let Some((masked, above)) = scratch.split_at_mut_checked(n) else {
            return;
        };
        let Some(above) = above.get_mut(..n) else {
            return;
        };
        if n == 0 {
            return;
        }
        for (r, row) in block.chunks_exact(n).enumerate() {
            let a = i0 + r;
            let Some(&la) = labels.get(a) else {
                return;
            };
            // The row's negatives, every other entry -inf (never the farthest, never
            // beyond a positive).
            for ((m, &v), &l) in masked.iter_mut().zip(row).zip(labels) {
                *m = if l == la { f32::NEG_INFINITY } else { v };
            }
            let Some(first_neg) = labels.iter().position(|&l| l != la) else {
                continue;
            };
            let far = match argmax(s, masked) {
                NO_INDEX => first_neg,
                q => q as usize,
            };
            for (p, (&lp, &dap)) in labels.iter().zip(row).enumerate() {
                if p == a || lp != la {
                    continue;
                }
                // The negatives beyond the positive (others +inf), nearest first.
                for (b, &m) in above.iter_mut().zip(masked.iter()) {
                    *b = if m > dap { m } else { f32::INFINITY };
                }
                let q = match argmin(s, above) {
                    NO_INDEX => far,
                    q => q as usize,
                };
                sink.triplet(s, a, p, q);
            }
        }
    }
}

/// Emits the batch-hard triplets of the sweep's choices, ascending anchors.
pub(crate) struct EmitHard<'o, 'w, K> {
    pub st: &'o HardState<'w>,
    pub sink: &'o mut K,
}

impl<K: Sink> Kernel for EmitHard<'_, '_, K> {
    type Output = ();
    #[inline(always)]
    fn run<S: Simd, const MR: usize, const NV: usize>(self, s: S) {
        for (a, (&p, &q)) in self
            .st
            .pos_idx
            .iter()
            .zip(self.st.neg_idx.iter())
            .enumerate()
        {
            if p != NO_INDEX && q != NO_INDEX {
                self.sink.triplet(s, a, p as usize, q as usize);
            }
        }
    }
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
/// [`mining_workspace_len`]`(rows, dim)` elements, garbage before and after.
///
/// # Errors
///
/// - [`Error::LengthMismatch`] (`"labels"`, `"positives"`, `"negatives"`) when a buffer
///   does not have `rows` elements;
/// - [`Error::WorkspaceTooSmall`] when the workspace is too short;
/// - [`Error::NonFinite`] (`"x"`, flat position) when `x` holds a NaN or an infinity:
///   mining would otherwise hide it in an index.
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
    let n = check_hardest_args(
        &x,
        labels,
        positives.len(),
        negatives.len(),
        workspace.len(),
    )?;
    let backend = Backend::active();
    let mut ws = Carve::new(workspace);
    let norms = ws.take(n)?;
    metric_norms(backend, &x, metric, norms);
    let mut st = HardState::take(&mut ws, n)?;
    let t = n.min(TILE);
    let tile = ws.take(t * t)?;
    let pack = ws.rest();
    hard_sweep(backend, &x, labels, metric, norms, &mut st, tile, pack)?;
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
/// [`mining_workspace_len`]`(rows, dim)` elements, garbage before and after. Feed the
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
/// - [`Error::NonFinite`] (`"x"`, flat position) when `x` holds a NaN or an infinity.
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
            let mut ws = Carve::new(workspace);
            let norms = ws.take(n)?;
            metric_norms(backend, &x, metric, norms);
            let mut st = HardState::take(&mut ws, n)?;
            let t = n.min(TILE);
            let tile = ws.take(t * t)?;
            let pack = ws.rest();
            hard_sweep(backend, &x, labels, metric, norms, &mut st, tile, pack)?;
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
