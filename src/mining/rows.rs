//! The row-wise minings: anchors in blocks of up to `BLOCK` rows, each block's distances
//! to every row computed at once (Gram form with the accuracy fix-up, see
//! [`for_row_blocks`]) and every anchor mined from its row. Semi-hard mining
//! ([`SemiBlock`]) lives here; the batch-all loss walks the same blocks.

use super::select::{argmax, argmin};
use super::{Sink, NO_INDEX};
use crate::distance::{
    fix_up, pairwise_distances_rows_on, pairwise_distances_rows_workspace_len, DistanceMode, Metric,
};
use crate::error::Error;
use crate::matrix::Matrix;
use crate::simd::{Backend, Kernel, Simd};
use crate::workspace::{max_len, min_len};

/// Anchor rows per block of the row-wise minings (semi-hard, batch-all).
const BLOCK: usize = 256;
/// Per-row `f32` arrays of the row-wise minings: norms and two scratch rows.
const ROW_ARRAYS: usize = 3;

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

/// Calls `f(i0, i1, block)` for consecutive blocks of at most [`BLOCK`] anchor rows, with
/// `block` (`(i1 - i0) x n`, row-major) holding their distances to every row (Gram form
/// with the accuracy fix-up). `norms` are the rows'
/// [`metric_norms`](crate::distance::metric_norms); `block` holds at least
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

/// Batch-hard or semi-hard mining of a block of anchor rows `i0..` of `x` against a
/// separate candidate set `y` (`block`: the anchors' distance rows to every row of `y`,
/// `m` columns). Candidate `j` is a positive of anchor `a` when `cand[j] == labels[a]`
/// and a negative otherwise, except the anchor's own row `own[a]` of `y` (if any,
/// [`NO_INDEX`] for none), which is neither. The selection rules are the in-batch ones
/// (ties to the smallest index); anchors without a positive or a negative select nothing.
pub(crate) struct RefRowBlock<'a, 'o, K> {
    pub block: &'a [f32],
    pub i0: usize,
    /// Labels of the anchors (all of `x`, indexed by `i0 + r`).
    pub labels: &'a [u32],
    /// Labels of the candidates (`m`).
    pub cand: &'a [u32],
    /// Per anchor, its own row of `y` or [`NO_INDEX`]; `None`: no row is excluded.
    pub own: Option<&'a [u32]>,
    /// Batch-hard when `true`, semi-hard otherwise.
    pub hard: bool,
    /// `2 m` elements of scratch.
    pub scratch: &'o mut [f32],
    pub sink: &'o mut K,
}

impl<K: Sink> Kernel for RefRowBlock<'_, '_, K> {
    type Output = ();
    #[inline(always)]
    fn run<S: Simd, const MR: usize, const NV: usize>(self, s: S) {
        let RefRowBlock {
            block,
            i0,
            labels,
            cand,
            own,
            hard,
            scratch,
            sink,
        } = self;
        let m = cand.len();
        if m == 0 {
            return;
        }
        let Some((first, second)) = scratch.split_at_mut_checked(m) else {
            return;
        };
        let Some(second) = second.get_mut(..m) else {
            return;
        };
        for (r, row) in block.chunks_exact(m).enumerate() {
            let a = i0 + r;
            let Some(&la) = labels.get(a) else {
                return;
            };
            let skip = own
                .and_then(|o| o.get(a))
                .map_or(usize::MAX, |&j| j as usize);
            if hard {
                // Positives (others -inf) and negatives (others +inf) as two scratch rows
                // (branch-free, vectorised).
                for (j, ((p, q), (&v, &l))) in first
                    .iter_mut()
                    .zip(second.iter_mut())
                    .zip(row.iter().zip(cand))
                    .enumerate()
                {
                    let mine = j != skip;
                    let pos = (u8::from(mine) & u8::from(l == la)) != 0;
                    let neg = (u8::from(mine) & u8::from(l != la)) != 0;
                    *p = if pos { v } else { f32::NEG_INFINITY };
                    *q = if neg { v } else { f32::INFINITY };
                }
                // NaN distances (only from overflowing data) are candidates too, never
                // chosen by the selection: the first candidate then stands in.
                let p = match argmax(s, first) {
                    NO_INDEX => first.iter().position(|&v| v != f32::NEG_INFINITY),
                    p => Some(p as usize),
                };
                let q = match argmin(s, second) {
                    NO_INDEX => second.iter().position(|&v| v != f32::INFINITY),
                    q => Some(q as usize),
                };
                if let (Some(p), Some(q)) = (p, q) {
                    sink.triplet(s, a, p, q);
                }
                continue;
            }
            // Semi-hard: the row's negatives, every other entry -inf (never the farthest,
            // never beyond a positive).
            for (j, ((m_, &v), &l)) in first.iter_mut().zip(row).zip(cand).enumerate() {
                // Non-short-circuit on purpose: branch-free selects vectorise.
                let neg = (u8::from(j != skip) & u8::from(l != la)) != 0;
                *m_ = if neg { v } else { f32::NEG_INFINITY };
            }
            let first_neg = cand
                .iter()
                .enumerate()
                .position(|(j, &l)| j != skip && l != la);
            let Some(first_neg) = first_neg else {
                continue;
            };
            let far = match argmax(s, first) {
                NO_INDEX => first_neg,
                q => q as usize,
            };
            for (p, (&lp, &dap)) in cand.iter().zip(row).enumerate() {
                if p == skip || lp != la {
                    continue;
                }
                for (b, &v) in second.iter_mut().zip(first.iter()) {
                    *b = if v > dap { v } else { f32::INFINITY };
                }
                let q = match argmin(s, second) {
                    NO_INDEX => far,
                    q => q as usize,
                };
                sink.triplet(s, a, p, q);
            }
        }
    }
}

/// The running batch-hard choices of a block of anchors against a candidate set streamed
/// in tiles: per anchor, the farthest positive and the nearest negative so far (value
/// and index, [`NO_INDEX`] for none yet). Each array holds one entry per anchor of the
/// block.
pub(crate) struct RefHardState<'w> {
    pub pos_val: &'w mut [f32],
    pub pos_idx: &'w mut [u32],
    pub neg_val: &'w mut [f32],
    pub neg_idx: &'w mut [u32],
}

impl RefHardState<'_> {
    /// No choice yet.
    pub(crate) fn reset(&mut self) {
        self.pos_val.fill(f32::NEG_INFINITY);
        self.pos_idx.fill(NO_INDEX);
        self.neg_val.fill(f32::INFINITY);
        self.neg_idx.fill(NO_INDEX);
    }
}

/// One tile of the streamed batch-hard sweep: the anchors `i0..i0 + ti` against the
/// candidates `j0..j0 + tj` (`tile`, `ti x tj` distances). Each anchor takes the tile's
/// positives and negatives (its own row excluded) as candidates; a tile's choice replaces
/// the running one only when strictly better, so with tiles in ascending `j0` ties go to
/// the smallest index. NaN distances are never taken (see [`ref_hard_fallback`]).
pub(crate) struct RefHardTile<'a, 'o, 'w> {
    pub tile: &'a [f32],
    pub tj: usize,
    pub i0: usize,
    pub j0: usize,
    pub labels: &'a [u32],
    pub cand: &'a [u32],
    pub own: Option<&'a [u32]>,
    pub st: &'o mut RefHardState<'w>,
}

/// Scratch rows of [`RefHardTile`] (one tile's columns).
const REF_TILE_MAX: usize = 256;

impl Kernel for RefHardTile<'_, '_, '_> {
    type Output = ();
    #[inline(always)]
    fn run<S: Simd, const MR: usize, const NV: usize>(self, s: S) {
        let RefHardTile {
            tile,
            tj,
            i0,
            j0,
            labels,
            cand,
            own,
            st,
        } = self;
        if tj == 0 || tj > REF_TILE_MAX {
            return;
        }
        let Some(cl) = cand.get(j0..j0 + tj) else {
            return;
        };
        let mut pbuf = [f32::NEG_INFINITY; REF_TILE_MAX];
        let mut nbuf = [f32::INFINITY; REF_TILE_MAX];
        let (Some(pb), Some(nb)) = (pbuf.get_mut(..tj), nbuf.get_mut(..tj)) else {
            return;
        };
        for (r, row) in tile.chunks_exact(tj).enumerate() {
            let a = i0 + r;
            let Some(&la) = labels.get(a) else {
                return;
            };
            let skip = match own.and_then(|o| o.get(a)) {
                Some(&j) if j != NO_INDEX => (j as usize).wrapping_sub(j0),
                _ => usize::MAX,
            };
            for (c, ((p, n), (&v, &lb))) in pb
                .iter_mut()
                .zip(nb.iter_mut())
                .zip(row.iter().zip(cl))
                .enumerate()
            {
                // Non-short-circuit on purpose: branch-free selects vectorise.
                let (mine, same) = (u8::from(c != skip), u8::from(lb == la));
                let (pos, neg) = ((mine & same) != 0, (mine & (1 - same)) != 0);
                *p = if pos { v } else { f32::NEG_INFINITY };
                *n = if neg { v } else { f32::INFINITY };
            }
            let k = argmax(s, pb);
            if let (Some(&v), Some(sv), Some(si)) = (
                pb.get(k as usize),
                st.pos_val.get_mut(r),
                st.pos_idx.get_mut(r),
            ) {
                if *si == NO_INDEX || v > *sv {
                    (*sv, *si) = (v, (j0 + k as usize) as u32);
                }
            }
            let k = argmin(s, nb);
            if let (Some(&v), Some(sv), Some(si)) = (
                nb.get(k as usize),
                st.neg_val.get_mut(r),
                st.neg_idx.get_mut(r),
            ) {
                if *si == NO_INDEX || v < *sv {
                    (*sv, *si) = (v, (j0 + k as usize) as u32);
                }
            }
        }
    }
}

/// Anchors of the block `i0..` whose candidates were all NaN distances (only possible
/// when squared norms overflow) still get a choice: the candidate of smallest index.
pub(crate) fn ref_hard_fallback(
    i0: usize,
    labels: &[u32],
    cand: &[u32],
    own: Option<&[u32]>,
    st: &mut RefHardState<'_>,
) {
    for (r, (pi, ni)) in st.pos_idx.iter_mut().zip(st.neg_idx.iter_mut()).enumerate() {
        let a = i0 + r;
        let Some(&la) = labels.get(a) else {
            return;
        };
        let skip = match own.and_then(|o| o.get(a)) {
            Some(&j) if j != NO_INDEX => j as usize,
            _ => usize::MAX,
        };
        if *pi == NO_INDEX {
            if let Some(p) = cand
                .iter()
                .enumerate()
                .position(|(j, &l)| j != skip && l == la)
            {
                *pi = p as u32;
            }
        }
        if *ni == NO_INDEX {
            if let Some(q) = cand
                .iter()
                .enumerate()
                .position(|(j, &l)| j != skip && l != la)
            {
                *ni = q as u32;
            }
        }
    }
}
