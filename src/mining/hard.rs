//! Batch-hard mining: the symmetric tile sweep. The upper triangle of the distance matrix
//! is computed in `TILE x TILE` tiles (Gram form with the accuracy fix-up); each tile
//! offers its distances to the running farthest positive and nearest negative of its rows
//! and, off the diagonal, of its columns, so every distance is computed once (see the
//! [family docs](super#memory-no-n-x-n-matrix)). [`EmitHard`] then hands the chosen
//! triplets to a [`Sink`].

use super::select::{argmax, argmin};
use super::{HardestPair, Sink, NO_INDEX};
use crate::distance::{
    cross_distances_on, cross_distances_rows_on, cross_distances_workspace_len, fix_up,
    metric_norms, pairwise_distances_on, pairwise_distances_rows_on,
    pairwise_distances_workspace_len, DistanceMode, Metric,
};
use crate::error::Error;
use crate::matrix::Matrix;
use crate::simd::{Backend, Kernel, Simd};
use crate::workspace::{min_len, Carve};

/// Side of the square distance tiles of the batch-hard sweep.
pub(crate) const TILE: usize = 256;
/// Per-row `f32` arrays of the batch-hard sweep: norms and the four running choices.
const HARD_ARRAYS: usize = 5;

/// Workspace of the batch-hard sweep over `rows` rows: the per-row arrays, one tile and
/// the packing of a tile's rows: the one diagonal tile's rows (a pairwise block) when
/// `rows <= TILE`, else the two row blocks of an off-diagonal tile (a cross block).
/// Saturates.
pub(crate) const fn hard_len(rows: usize, dim: usize) -> usize {
    let t = min_len(rows, TILE);
    let pack = if rows <= TILE {
        pairwise_distances_workspace_len(t, dim)
    } else {
        cross_distances_workspace_len(t, t, dim)
    };
    rows.saturating_mul(HARD_ARRAYS)
        .saturating_add(t.saturating_mul(t))
        .saturating_add(pack)
}

/// The running choices of the batch-hard sweep, one entry per row: the farthest positive
/// and the nearest negative seen so far (value and index, [`NO_INDEX`] for none yet).
pub(crate) struct HardState<'w> {
    pos_val: &'w mut [f32],
    pub(super) pos_idx: &'w mut [u32],
    neg_val: &'w mut [f32],
    pub(super) neg_idx: &'w mut [u32],
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

    /// Copies the choices into `out` (as many rows as both hold).
    pub(crate) fn write_pairs(&self, out: &mut [HardestPair]) {
        for ((((o, &p), &pv), &q), &qv) in out
            .iter_mut()
            .zip(self.pos_idx.iter())
            .zip(self.pos_val.iter())
            .zip(self.neg_idx.iter())
            .zip(self.neg_val.iter())
        {
            *o = HardestPair {
                positive: p,
                negative: q,
                pos_dist: pv,
                neg_dist: qv,
            };
        }
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
/// accuracy fix-up), updating `st`. `norms` are the rows'
/// [`metric_norms`]; `tile` holds at least `min(n, TILE)^2`
/// elements and `pack` the tile kernels' scratch.
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
    hard_sweep_tiles(backend, x, labels, metric, norms, st, tile, pack, None)?;
    hard_fallback(labels, st);
    Ok(())
}

/// Carves the batch-hard sweep's buffers off `workspace` (norms, the running choices, one
/// tile and the tile kernels' packing: [`hard_len`]), computes the rows' norms and sweeps
/// the tiles of `part` (every tile for `None`, followed by [`hard_fallback`]); returns the
/// choices, which live in `workspace`.
pub(crate) fn sweep_choices<'w>(
    backend: Backend,
    x: &Matrix<'_>,
    labels: &[u32],
    metric: Metric,
    workspace: &'w mut [f32],
    part: Option<(usize, usize)>,
) -> Result<HardState<'w>, Error> {
    let n = x.rows();
    let mut ws = Carve::new(workspace);
    let norms = ws.take(n)?;
    metric_norms(backend, x, metric, norms);
    let mut st = HardState::take(&mut ws, n)?;
    let t = n.min(TILE);
    let tile = ws.take(t * t)?;
    let pack = ws.rest();
    hard_sweep_tiles(backend, x, labels, metric, norms, &mut st, tile, pack, part)?;
    if part.is_none() {
        hard_fallback(labels, &mut st);
    }
    Ok(st)
}

/// Cost of a tile of the sweep in distances: `ti * tj`, or the triangle `ti (ti + 1) / 2`
/// on the diagonal (the pairwise kernel computes each symmetric pair once).
const fn tile_cost(ti: usize, tj: usize, diagonal: bool) -> u64 {
    let (ti, tj) = (ti as u64, tj as u64);
    if diagonal {
        ti * (ti + 1) / 2
    } else {
        ti * tj
    }
}

/// Which tiles of the sweep over `n` rows belong to one part `(index, parts)` of the
/// partition of [`crate::SweepPart`]: the tiles in sweep order are split into `parts` runs
/// of about equal cost ([`tile_cost`]), a tile going to the run that holds the middle of
/// its cost. Ask [`PartTiles::owns`] about every tile, in sweep order.
///
/// The owner is computed in `f64` (`floor((done + cost / 2) parts / total)`): the same
/// partition on every machine (IEEE arithmetic, no contraction), no integer division
/// (whose 128-bit form would be a library call), no overflow.
pub(crate) struct PartTiles {
    total: f64,
    done: u64,
    parts: f64,
    index: u64,
    last: u64,
}

impl PartTiles {
    /// The partition for `n` rows; `None` is the whole sweep (one part).
    pub(crate) fn new(n: usize, part: Option<(usize, usize)>) -> Self {
        let (index, parts) = part.unwrap_or((0, 1));
        let mut total = 0_u64;
        let mut i0 = 0;
        while i0 < n {
            let i1 = n.min(i0 + TILE);
            let mut j0 = i0;
            while j0 < n {
                let j1 = n.min(j0 + TILE);
                total = total.saturating_add(tile_cost(i1 - i0, j1 - j0, i0 == j0));
                j0 = j1;
            }
            i0 = i1;
        }
        PartTiles {
            total: total.max(1) as f64,
            done: 0,
            parts: parts as f64,
            index: index as u64,
            last: (parts as u64).saturating_sub(1),
        }
    }

    /// Whether the next tile (`ti x tj`, on the diagonal or not) belongs to the part.
    pub(crate) fn owns(&mut self, ti: usize, tj: usize, diagonal: bool) -> bool {
        let cost = tile_cost(ti, tj, diagonal);
        let mid = self.done as f64 + 0.5 * cost as f64;
        // `as` saturates; `total >= 1`.
        let owner = (mid * self.parts / self.total) as u64;
        self.done = self.done.saturating_add(cost);
        owner.min(self.last) == self.index
    }
}

/// The sweep of [`hard_sweep`] over all tiles (`part: None`) or over the tiles of one part
/// `(index, parts)` of the partition of [`crate::SweepPart`]: tiles in sweep order, split
/// into `parts` runs of about equal cost, a tile going to the run that holds the middle of
/// its cost. Initialises `st`; no fallback.
#[allow(clippy::too_many_arguments)]
pub(crate) fn hard_sweep_tiles(
    backend: Backend,
    x: &Matrix<'_>,
    labels: &[u32],
    metric: Metric,
    norms: &[f32],
    st: &mut HardState<'_>,
    tile: &mut [f32],
    pack: &mut [f32],
    part: Option<(usize, usize)>,
) -> Result<(), Error> {
    st.pos_val.fill(f32::NEG_INFINITY);
    st.pos_idx.fill(NO_INDEX);
    st.neg_val.fill(f32::INFINITY);
    st.neg_idx.fill(NO_INDEX);
    let n = x.rows();
    let mut owned = PartTiles::new(n, part);
    let mut i0 = 0;
    while i0 < n {
        let i1 = n.min(i0 + TILE);
        let xi = x.sub_rows(i0, i1)?;
        let ni = norms.get(i0..i1).unwrap_or(&[]);
        let mut j0 = i0;
        while j0 < n {
            let j1 = n.min(j0 + TILE);
            let (ti, tj) = (i1 - i0, j1 - j0);
            let diagonal = i0 == j0;
            if !owned.owns(ti, tj, diagonal) {
                j0 = j1;
                continue;
            }
            let xj = x.sub_rows(j0, j1)?;
            let nj = norms.get(j0..j1).unwrap_or(&[]);
            let area = ti * tj;
            let actual = tile.len();
            let out = tile.get_mut(..area).ok_or(Error::WorkspaceTooSmall {
                required: area,
                actual,
            })?;
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
    Ok(())
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

/// Emits the batch-hard triplets of given choices, ascending anchors: those of
/// [`EmitHard`] when the choices are a whole sweep's.
pub(crate) struct EmitPairs<'o, K> {
    pub pairs: &'o [HardestPair],
    pub sink: &'o mut K,
}

impl<K: Sink> Kernel for EmitPairs<'_, K> {
    type Output = ();
    #[inline(always)]
    fn run<S: Simd, const MR: usize, const NV: usize>(self, s: S) {
        for (a, c) in self.pairs.iter().enumerate() {
            if c.positive != NO_INDEX && c.negative != NO_INDEX {
                self.sink
                    .triplet(s, a, c.positive as usize, c.negative as usize);
            }
        }
    }
}
