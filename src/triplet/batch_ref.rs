//! The reference forms of the batch losses and of the miner: anchors from one set `x`,
//! positives and negatives from another, `y` (a cross-batch memory, a gathered global
//! batch, a gallery), with an optional per-anchor row of `y` that is the anchor itself.
//!
//! Anchors go in blocks of up to [`REF_BLOCK`] rows and `y` streams through in tiles of
//! [`REF_TILE`] rows, each tile's distances computed in Gram form with the accuracy
//! fix-up while both sides are in cache. Batch-hard mines each tile at once
//! ([`ref_hard_sweep`]: the running choices of the block's anchors); semi-hard
//! ([`RefRowBlock`]) and batch-all ([`RefAllBlock`]) copy the tiles into a block of whole
//! rows first, since each anchor needs its whole row. No `n x m` matrix is held.
//! Batch-hard and semi-hard recompute the two distances of each selected triplet directly
//! and update its three rows in one pass ([`RefAcc`]); batch-all turns each anchor's pair
//! coefficients into a row of a GEMM, as the in-batch loss does.

use super::batch::Totals;
use super::batch_all::{list_label, relu_group, soft_pair, GROUP};
use super::per_triplet::{triplet_update, two_sq_dists};
use super::{check_batch_args_params, finish_grad, BatchLoss, BatchParams};
use crate::distance::{
    cosine_own_factor, cross_distances_on, cross_distances_rows_on, cross_distances_workspace_len,
    distance_with, euclidean_from_sq, euclidean_grad_factor, fix_up, gemm_acc, metric_norms,
    needs_direct, DistanceMode, Metric, GEMM_MR, TINY_DISTANCE,
};
use crate::error::Error;
use crate::matrix::{two_rows_mut, Matrix};
use crate::mining::{
    ref_hard_fallback, Mining, RefHardState, RefHardTile, RefRowBlock, Sink, Triplet, NO_INDEX,
};
use crate::reduce::{Hinge, Reduction};
use crate::simd::{self, Backend, Kernel, Simd};
use crate::validate::{check_len, check_rows, check_workspace};
use crate::workspace::{max_len, min_len, Carve};

/// Anchor rows per block of the reference forms.
pub(crate) const REF_BLOCK: usize = 256;
/// Candidate rows per tile of the reference forms' distance sweep.
pub(crate) const REF_TILE: usize = 256;

/// The candidate set of the reference forms: the rows `y` (`m x dim`) with their
/// `labels`, and optionally, per anchor, the row of `y` that is the anchor itself.
///
/// `self_index[a] = j` says row `j` of `y` is anchor `a` (a memory that already holds
/// the current batch, `y = concat(memory, x)`): `(a, j)` is then neither a positive nor
/// a negative. [`NO_INDEX`] means no such row. Without `self_index` nothing is excluded.
/// Plain `Copy` data, validated at call time.
///
/// ```
/// use triplet_kernels::{Matrix, RefSet, NO_INDEX};
/// let y = Matrix::new(&[0.0, 1.0, 2.0], 3, 1)?;
/// let refs = RefSet::new(y, &[0, 0, 1]).with_self_index(&[2, NO_INDEX]);
/// assert_eq!(refs.self_index, Some(&[2, NO_INDEX][..]));
/// # Ok::<(), triplet_kernels::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub struct RefSet<'a> {
    /// The candidate rows, `m x dim`.
    pub y: Matrix<'a>,
    /// One label per row of `y`.
    pub labels: &'a [u32],
    /// Per anchor, its own row of `y` or [`NO_INDEX`]; `None`: no row is excluded.
    pub self_index: Option<&'a [u32]>,
}

impl<'a> RefSet<'a> {
    /// The candidates `y` with their labels, no row excluded.
    pub const fn new(y: Matrix<'a>, labels: &'a [u32]) -> Self {
        RefSet {
            y,
            labels,
            self_index: None,
        }
    }

    /// Sets [`RefSet::self_index`] (one entry per anchor).
    #[must_use]
    pub const fn with_self_index(mut self, self_index: &'a [u32]) -> Self {
        self.self_index = Some(self_index);
        self
    }
}

/// Whether a gradient kernel overwrites its gradient buffers or adds to them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum GradMode {
    /// Every element is overwritten with the gradient.
    #[default]
    Overwrite,
    /// The gradient is added to the buffers' contents (blocks of anchors computed one
    /// after the other, or several losses, summed into one buffer).
    Accumulate,
}

/// The gradient outputs of [`triplet_batch_ref_loss_grad`]: `d loss / d x` (`n * dim`),
/// optionally `d loss / d y` (`m * dim`), and whether they are overwritten or added to.
///
/// ```
/// use triplet_kernels::{GradMode, RefGrad};
/// let (mut gx, mut gy) = ([0.0_f32; 4], [0.0_f32; 6]);
/// let g = RefGrad::new(&mut gx).with_y(&mut gy).with_mode(GradMode::Accumulate);
/// assert_eq!(g.mode, GradMode::Accumulate);
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub struct RefGrad<'g> {
    /// `d loss / d x`, `n * dim` elements.
    pub x: &'g mut [f32],
    /// `d loss / d y`, `m * dim` elements, when wanted.
    pub y: Option<&'g mut [f32]>,
    /// Overwrite or accumulate.
    pub mode: GradMode,
}

impl<'g> RefGrad<'g> {
    /// The gradient with respect to `x` alone, overwritten.
    pub fn new(x: &'g mut [f32]) -> Self {
        RefGrad {
            x,
            y: None,
            mode: GradMode::Overwrite,
        }
    }

    /// Also the gradient with respect to `y`.
    #[must_use]
    pub fn with_y(mut self, y: &'g mut [f32]) -> Self {
        self.y = Some(y);
        self
    }

    /// Sets [`RefGrad::mode`].
    #[must_use]
    pub fn with_mode(mut self, mode: GradMode) -> Self {
        self.mode = mode;
        self
    }
}

// ---------------------------------------------------------------------------------------
// Workspace.

/// Anchor rows of the largest block.
const fn ref_block(rows: usize) -> usize {
    min_len(rows, REF_BLOCK)
}

/// Norms, one tile and its packing, and (`whole_rows`) one block of whole distance rows.
const fn base_len(rows: usize, refs: usize, dim: usize, whole_rows: bool) -> usize {
    let b = ref_block(rows);
    let t = min_len(refs, REF_TILE);
    let block = if whole_rows {
        b.saturating_mul(refs)
    } else {
        0
    };
    rows.saturating_add(refs)
        .saturating_add(block)
        .saturating_add(b.saturating_mul(t))
        .saturating_add(cross_distances_workspace_len(b, t, dim))
}

/// Workspace of a reference-form loss (`grad`: with its gradient).
const fn ref_len(rows: usize, refs: usize, dim: usize, params: BatchParams, grad: bool) -> usize {
    let base = base_len(rows, refs, dim, !matches!(params.mining, Mining::BatchHard));
    let extra = match params.mining {
        Mining::BatchHard | Mining::SemiHard => {
            let g = if grad { dim.saturating_mul(2) } else { 0 };
            refs.saturating_mul(2)
                .saturating_add(ref_block(rows).saturating_mul(4))
                .saturating_add(g)
        }
        Mining::All => {
            let g = if grad {
                refs.saturating_mul(2)
                    .saturating_add(GEMM_MR.saturating_mul(max_len(refs, ref_block(rows))))
                    .saturating_add(dim)
            } else {
                0
            };
            refs.saturating_mul(2).saturating_add(g)
        }
    };
    base.saturating_add(extra)
}

/// Workspace elements that [`triplet_batch_ref_loss`] needs for `rows` anchors and
/// `ref_rows` candidates of dimension `dim` under `params`; no `rows x ref_rows` matrix.
/// With `b = min(rows, 256)` and `t = min(ref_rows, 256)`: the norms (`rows + ref_rows`),
/// one `b x t` tile of distances and its packing
/// ([`crate::cross_distances_workspace_len`]`(b, t, dim)`, about `(b + t) (dim + 1)`),
/// `2 ref_rows` of mining scratch, and
///
/// - [`Mining::BatchHard`]: `4 b` for the running choices (the tiles are mined as they
///   are computed);
/// - [`Mining::SemiHard`], [`Mining::All`]: one block of `b x ref_rows` whole distance
///   rows (each anchor needs its whole row).
///
/// For 256 queries against 8,192 candidates of dimension 128, batch-hard: about `0.15e6`
/// elements (0.6 MiB), against `1.1e6` for the candidates themselves. Saturates instead
/// of overflowing.
pub const fn triplet_batch_ref_loss_workspace_len(
    rows: usize,
    ref_rows: usize,
    dim: usize,
    params: BatchParams,
) -> usize {
    ref_len(rows, ref_rows, dim, params, false)
}

/// Workspace elements that [`triplet_batch_ref_loss_grad`] needs: those of
/// [`triplet_batch_ref_loss_workspace_len`], plus `2 dim` for batch-hard and semi-hard,
/// or `2 ref_rows + 4 max(ref_rows, b) + dim` for batch-all (pair coefficients, diagonal
/// terms, the GEMM's packed coefficients). Saturates instead of overflowing.
pub const fn triplet_batch_ref_loss_grad_workspace_len(
    rows: usize,
    ref_rows: usize,
    dim: usize,
    params: BatchParams,
) -> usize {
    ref_len(rows, ref_rows, dim, params, true)
}

/// Workspace elements that [`mine_triplets_ref`] needs, whatever the mining: those of
/// [`triplet_batch_ref_loss_workspace_len`] for semi-hard plus the `4 b` of batch-hard's
/// running choices. Saturates instead of overflowing.
pub const fn mine_triplets_ref_workspace_len(rows: usize, ref_rows: usize, dim: usize) -> usize {
    base_len(rows, ref_rows, dim, true)
        .saturating_add(ref_rows.saturating_mul(2))
        .saturating_add(ref_block(rows).saturating_mul(4))
}

// ---------------------------------------------------------------------------------------
// Checks and counts.

/// Positives and negatives of anchor `a` (label `la`, own row `own`).
#[inline]
fn ref_anchor_counts(cand: &[u32], la: u32, own: usize) -> (usize, usize) {
    let mut same = 0_usize;
    for &l in cand {
        same += usize::from(l == la);
    }
    let mut other = cand.len() - same;
    if let Some(&l) = cand.get(own) {
        if l == la {
            same = same.saturating_sub(1);
        } else {
            other = other.saturating_sub(1);
        }
    }
    (same, other)
}

/// The own row of anchor `a` (`usize::MAX` for none).
#[inline(always)]
fn own_of(self_index: Option<&[u32]>, a: usize) -> usize {
    match self_index.and_then(|o| o.get(a)) {
        Some(&j) if j != NO_INDEX => j as usize,
        _ => usize::MAX,
    }
}

/// The exact number of triplets `mining` selects.
pub(crate) fn ref_count(
    labels: &[u32],
    y_labels: &[u32],
    self_index: Option<&[u32]>,
    mining: Mining,
) -> Result<usize, Error> {
    let overflow = Error::ShapeOverflow {
        rows: labels.len(),
        cols: y_labels.len(),
    };
    let mut total = 0_usize;
    for (a, &la) in labels.iter().enumerate() {
        let (pos, neg) = ref_anchor_counts(y_labels, la, own_of(self_index, a));
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

/// Checks the labels, the candidate set and the self indices; returns `(n, m)`.
pub(crate) fn check_ref_set(
    x: &Matrix<'_>,
    labels: &[u32],
    refs: &RefSet<'_>,
) -> Result<(usize, usize), Error> {
    let n = x.rows();
    check_len("labels", n, labels.len())?;
    if refs.y.dim() != x.dim() {
        return Err(Error::DimensionMismatch {
            left: x.dim(),
            right: refs.y.dim(),
        });
    }
    let m = refs.y.rows();
    check_len("y_labels", m, refs.labels.len())?;
    if let Some(own) = refs.self_index {
        check_len("self_index", n, own.len())?;
        for (position, &j) in own.iter().enumerate() {
            if j != NO_INDEX && j as usize >= m {
                return Err(Error::IndexOutOfRange {
                    buffer: "self_index",
                    position,
                    index: j as usize,
                    bound: m,
                });
            }
        }
    }
    Ok((n, m))
}

/// `check_rows` of the candidates, errors naming `"y"`.
pub(crate) fn check_y_rows(y: &Matrix<'_>) -> Result<(), Error> {
    check_rows(y, false).map_err(|e| match e {
        Error::NonFinite { row, col, .. } => Error::NonFinite {
            buffer: "y",
            row,
            col,
        },
        Error::TooLarge { row, col, .. } => Error::TooLarge {
            buffer: "y",
            row,
            col,
        },
        e => e,
    })
}

/// Every check of a reference-form loss except the gradient lengths, the workspace and
/// the data; returns `(n, m)`.
pub(crate) fn check_ref_args(
    x: &Matrix<'_>,
    labels: &[u32],
    refs: &RefSet<'_>,
    params: &BatchParams,
) -> Result<(usize, usize), Error> {
    check_batch_args_params(params)?;
    if params.normalize {
        return Err(Error::InvalidParameter {
            name: "normalize",
            expected: "false for the reference forms (normalise x and y first)",
        });
    }
    let (n, m) = check_ref_set(x, labels, refs)?;
    // The count can overflow only when n m^2 does.
    if n.checked_mul(m).and_then(|k| k.checked_mul(m)).is_none() {
        ref_count(labels, refs.labels, refs.self_index, params.mining)?;
    }
    Ok((n, m))
}

// ---------------------------------------------------------------------------------------
// The block sweep.

/// Calls `f(i0, i1, block)` for consecutive blocks of at most [`REF_BLOCK`] anchors,
/// `block` (`(i1 - i0) x m`) holding their distances to every row of `y`. The block is
/// filled tile by tile: `y` streams through in tiles of [`REF_TILE`] rows, each tile's
/// distances to the anchors computed in Gram form with the accuracy fix-up (both sides of
/// a tile stay in cache, where one product over all of `y` would stream it from memory
/// for every few anchors) and copied into place. `nx`, `ny` are the [`metric_norms`];
/// `tile` holds `min(n, REF_BLOCK) * min(m, REF_TILE)` elements and `pack` the tile
/// kernel's scratch.
/// Semi-hard selection of every anchor against `refs`: the blocks of
/// [`for_ref_blocks`], each row's negative chosen by [`RefRowBlock`] and handed to
/// `sink` (the loss accumulator or the miner). `bufs` is `(block, tile, pack, scratch)`.
#[allow(clippy::too_many_arguments)]
fn semi_hard_sweep<K: Sink>(
    backend: Backend,
    x: &Matrix<'_>,
    labels: &[u32],
    refs: &RefSet<'_>,
    metric: Metric,
    norms: (&[f32], &[f32]),
    (block, tile, pack, scratch): (&mut [f32], &mut [f32], &mut [f32], &mut [f32]),
    sink: &mut K,
) -> Result<(), Error> {
    for_ref_blocks(
        backend,
        x,
        &refs.y,
        metric,
        norms,
        (block, tile),
        pack,
        |i0, _, blk| {
            backend.dispatch(RefRowBlock {
                block: blk,
                i0,
                labels,
                cand: refs.labels,
                own: refs.self_index,
                hard: false,
                scratch: &mut *scratch,
                sink: &mut *sink,
            });
            Ok(())
        },
    )
}

#[allow(clippy::too_many_arguments)]
fn for_ref_blocks<F>(
    backend: Backend,
    x: &Matrix<'_>,
    y: &Matrix<'_>,
    metric: Metric,
    (nx, ny): (&[f32], &[f32]),
    (block, tile): (&mut [f32], &mut [f32]),
    pack: &mut [f32],
    mut f: F,
) -> Result<(), Error>
where
    F: FnMut(usize, usize, &mut [f32]) -> Result<(), Error>,
{
    let (n, m) = (x.rows(), y.rows());
    let mut i0 = 0;
    while i0 < n {
        let i1 = n.min(i0 + REF_BLOCK);
        let ti = i1 - i0;
        let area = ti * m;
        let actual = block.len();
        let out = block.get_mut(..area).ok_or(Error::WorkspaceTooSmall {
            required: area,
            actual,
        })?;
        let xi = x.sub_rows(i0, i1)?;
        let ni = nx.get(i0..i1).unwrap_or(&[]);
        let mut j0 = 0;
        while j0 < m {
            let j1 = m.min(j0 + REF_TILE);
            let tj = j1 - j0;
            let actual = tile.len();
            let t = tile.get_mut(..ti * tj).ok_or(Error::WorkspaceTooSmall {
                required: ti * tj,
                actual,
            })?;
            let yj = y.sub_rows(j0, j1)?;
            let nj = ny.get(j0..j1).unwrap_or(&[]);
            cross_distances_on(backend, xi, yj, metric, t, pack)?;
            if fix_up(backend, metric, t, &xi, &yj, ni, nj, None) {
                let direct = DistanceMode::Direct;
                cross_distances_rows_on(backend, xi, yj, 0..ti, metric, direct, t, pack)?;
            }
            if tj > 0 {
                for (r, src) in t.chunks_exact(tj).enumerate() {
                    if let Some(dst) = out.get_mut(r * m + j0..r * m + j1) {
                        dst.copy_from_slice(src);
                    }
                }
            }
            j0 = j1;
        }
        f(i0, i1, out)?;
        i0 = i1;
    }
    Ok(())
}

/// Emits the batch-hard triplets of a block of anchors `i0..` from its choices.
struct EmitRefHard<'o, 'w, K> {
    i0: usize,
    st: &'o RefHardState<'w>,
    sink: &'o mut K,
}

impl<K: Sink> Kernel for EmitRefHard<'_, '_, K> {
    type Output = ();
    #[inline(always)]
    fn run<S: Simd, const MR: usize, const NV: usize>(self, s: S) {
        for (r, (&p, &q)) in self
            .st
            .pos_idx
            .iter()
            .zip(self.st.neg_idx.iter())
            .enumerate()
        {
            if p != NO_INDEX && q != NO_INDEX {
                self.sink.triplet(s, self.i0 + r, p as usize, q as usize);
            }
        }
    }
}

/// Batch-hard against the reference set without a block of whole rows: per block of
/// anchors, `y` streams through in tiles of [`REF_TILE`] rows, each tile's distances
/// (Gram form with the accuracy fix-up) updating the anchors' running choices while the
/// tile is in cache; the block's triplets then go to `sink`, ascending anchors. `st`
/// holds four arrays of `min(n, REF_BLOCK)`, `tile` `min(n, REF_BLOCK) * min(m,
/// REF_TILE)` elements.
#[allow(clippy::too_many_arguments)]
fn ref_hard_sweep<K: Sink>(
    backend: Backend,
    x: &Matrix<'_>,
    labels: &[u32],
    refs: &RefSet<'_>,
    metric: Metric,
    (nx, ny): (&[f32], &[f32]),
    st: &mut RefHardState<'_>,
    tile: &mut [f32],
    pack: &mut [f32],
    sink: &mut K,
) -> Result<(), Error> {
    let y = &refs.y;
    let (n, m) = (x.rows(), y.rows());
    let mut i0 = 0;
    while i0 < n {
        let i1 = n.min(i0 + REF_BLOCK);
        let ti = i1 - i0;
        let xi = x.sub_rows(i0, i1)?;
        let ni = nx.get(i0..i1).unwrap_or(&[]);
        let mut block = RefHardState {
            pos_val: st.pos_val.get_mut(..ti).unwrap_or(&mut []),
            pos_idx: st.pos_idx.get_mut(..ti).unwrap_or(&mut []),
            neg_val: st.neg_val.get_mut(..ti).unwrap_or(&mut []),
            neg_idx: st.neg_idx.get_mut(..ti).unwrap_or(&mut []),
        };
        block.reset();
        let mut j0 = 0;
        while j0 < m {
            let j1 = m.min(j0 + REF_TILE);
            let tj = j1 - j0;
            let actual = tile.len();
            let t = tile.get_mut(..ti * tj).ok_or(Error::WorkspaceTooSmall {
                required: ti * tj,
                actual,
            })?;
            let yj = y.sub_rows(j0, j1)?;
            let nj = ny.get(j0..j1).unwrap_or(&[]);
            cross_distances_on(backend, xi, yj, metric, t, pack)?;
            if fix_up(backend, metric, t, &xi, &yj, ni, nj, None) {
                let direct = DistanceMode::Direct;
                cross_distances_rows_on(backend, xi, yj, 0..ti, metric, direct, t, pack)?;
            }
            backend.dispatch(RefHardTile {
                tile: t,
                tj,
                i0,
                j0,
                labels,
                cand: refs.labels,
                own: refs.self_index,
                st: &mut block,
            });
            j0 = j1;
        }
        ref_hard_fallback(i0, labels, refs.labels, refs.self_index, &mut block);
        backend.dispatch(EmitRefHard {
            i0,
            st: &block,
            sink: &mut *sink,
        });
        i0 = i1;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Batch-hard and semi-hard: one triplet at a time.

/// The pair gradient of the crate for an anchor row `a` and a candidate row `b` held in
/// two buffers: adds `coef d d(a, b) / d a` to `ga` and `coef d d(a, b) / d b` to `gb`
/// (`dist = d(a, b)`, `na`, `nb` the clamped norms, read for cosine only). The Euclidean
/// metrics scale the difference `a - b` once; below [`TINY_DISTANCE`] the difference and
/// the distance are first scaled by an exact power of two, so that `coef / dist` cannot
/// overflow; at distance 0 nothing.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn ref_pair_grad<S: Simd>(
    s: S,
    metric: Metric,
    a: &[f32],
    b: &[f32],
    dist: f32,
    (na, nb): (f32, f32),
    _offset: f32,
    coef: f32,
    ga: &mut [f32],
    gb: &mut [f32],
) {
    let l = S::LANES;
    let k = match metric {
        Metric::SquaredEuclidean => 2.0 * coef,
        Metric::Euclidean if dist >= TINY_DISTANCE => coef / dist,
        Metric::Euclidean if dist > 0.0 => {
            // Difference and distance scaled by the same exact power of two `c`, so that
            // `(a - b) c / (dist c)` stays near unit size.
            let e = ((dist.to_bits() >> 23) & 0xff).cast_signed() - 127;
            let c = f32::from_bits(((127 - e.clamp(-126, 126)) as u32) << 23);
            let k = coef / (dist * c);
            for (((&u, &v), x), y) in a.iter().zip(b).zip(ga.iter_mut()).zip(gb.iter_mut()) {
                let t = (u - v) * c * k;
                *x += t;
                *y -= t;
            }
            return;
        }
        Metric::Euclidean => return,
        Metric::Cosine => {
            let cross = s.splat(-coef / (na * nb));
            let sa = s.splat(cosine_own_factor(coef, dist, na));
            let sb = s.splat(cosine_own_factor(coef, dist, nb));
            for (((ac, bc), gac), gbc) in a
                .chunks(l)
                .zip(b.chunks(l))
                .zip(ga.chunks_mut(l))
                .zip(gb.chunks_mut(l))
            {
                let (av, bv) = (s.load(ac), s.load(bc));
                s.store(s.fma(sa, av, s.fma(cross, bv, s.load(gac))), gac);
                s.store(s.fma(sb, bv, s.fma(cross, av, s.load(gbc))), gbc);
            }
            return;
        }
    };
    let (vk, nk) = (s.splat(k), s.splat(-k));
    for (((ac, bc), gac), gbc) in a
        .chunks(l)
        .zip(b.chunks(l))
        .zip(ga.chunks_mut(l))
        .zip(gb.chunks_mut(l))
    {
        let diff = s.sub(s.load(ac), s.load(bc));
        s.store(s.fma(diff, vk, s.load(gac)), gac);
        s.store(s.fma(diff, nk, s.load(gbc)), gbc);
    }
}

/// The gradient buffers of [`RefAcc`].
struct AccGrad<'g> {
    gx: &'g mut [f32],
    gy: Option<&'g mut [f32]>,
    /// Two rows of scratch standing in for the rows of `gy` when it is not wanted.
    sink: &'g mut [f32],
}

/// The cosine pair update of [`ref_pair_grad`] on rows of equal length, in whole vectors
/// and one remainder: `ga += own(na) a + cross b`, `gb += own(nb) b + cross a`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn cosine_pair_update<S: Simd>(
    s: S,
    coef: f32,
    dist: f32,
    (na, nb): (f32, f32),
    a: &[f32],
    b: &[f32],
    ga: &mut [f32],
    gb: &mut [f32],
) {
    let l = S::LANES;
    let cross = s.splat(-coef / (na * nb));
    let sa = s.splat(cosine_own_factor(coef, dist, na));
    let sb = s.splat(cosine_own_factor(coef, dist, nb));
    let step = |ac: &[f32], bc: &[f32], gac: &mut [f32], gbc: &mut [f32]| {
        let (av, bv) = (s.load(ac), s.load(bc));
        s.store(s.fma(sa, av, s.fma(cross, bv, s.load(gac))), gac);
        s.store(s.fma(sb, bv, s.fma(cross, av, s.load(gbc))), gbc);
    };
    let (mut ai, mut bi) = (a.chunks_exact(l), b.chunks_exact(l));
    let (mut gai, mut gbi) = (ga.chunks_exact_mut(l), gb.chunks_exact_mut(l));
    for (((ac, bc), gac), gbc) in ai
        .by_ref()
        .zip(bi.by_ref())
        .zip(gai.by_ref())
        .zip(gbi.by_ref())
    {
        step(ac, bc, gac, gbc);
    }
    let (ar, br) = (ai.remainder(), bi.remainder());
    if !ar.is_empty() {
        step(ar, br, gai.into_remainder(), gbi.into_remainder());
    }
}

/// The Euclidean pair update for tiny distances, element by element: `ga += k (a - b)`,
/// `gb -= k (a - b)` with `k = coef / dist`, the difference and the distance first scaled
/// by the same exact power of two so that the factor cannot overflow; nothing at 0.
#[inline(always)]
fn euclidean_pair_update(
    coef: f32,
    dist: f32,
    a: &[f32],
    b: &[f32],
    ga: &mut [f32],
    gb: &mut [f32],
) {
    if dist.is_nan() || dist <= 0.0 {
        return;
    }
    let e = ((dist.to_bits() >> 23) & 0xff).cast_signed() - 127;
    let c = f32::from_bits(((127 - e.clamp(-126, 126)) as u32) << 23);
    let k = coef / (dist * c);
    for (((&u, &v), x), y) in a.iter().zip(b).zip(ga.iter_mut()).zip(gb.iter_mut()) {
        let t = (u - v) * c * k;
        *x += t;
        *y -= t;
    }
}

/// The loss (and gradient) accumulator of the reference forms of batch-hard and
/// semi-hard: each selected triplet's two distances recomputed directly, its term added,
/// its rows updated with the coefficient `cw h'(v)`.
struct RefAcc<'a, 'g> {
    x: Matrix<'a>,
    y: Matrix<'a>,
    nx: &'a [f32],
    ny: &'a [f32],
    metric: Metric,
    margin: f32,
    hinge: Hinge,
    cw: f32,
    totals: Totals,
    grad: Option<AccGrad<'g>>,
}

impl Sink for RefAcc<'_, '_> {
    #[inline(always)]
    fn triplet<S: Simd>(&mut self, s: S, a: usize, p: usize, q: usize) {
        let (Some(xa), Some(yp), Some(yq)) = (self.x.row(a), self.y.row(p), self.y.row(q)) else {
            return;
        };
        let metric = self.metric;
        let nrm = |v: &[f32], i: usize| v.get(i).copied().unwrap_or(1.0);
        let (na, np, nq) = (nrm(self.nx, a), nrm(self.ny, p), nrm(self.ny, q));
        let (dap, daq) = match metric {
            Metric::SquaredEuclidean => two_sq_dists(s, xa, yp, yq),
            Metric::Euclidean => {
                let (sp, sq) = two_sq_dists(s, xa, yp, yq);
                (
                    euclidean_from_sq(sp, xa, yp, 0.0),
                    euclidean_from_sq(sq, xa, yq, 0.0),
                )
            }
            Metric::Cosine => (
                distance_with(s, metric, xa, yp, na, np),
                distance_with(s, metric, xa, yq, na, nq),
            ),
        };
        let v = dap - daq + self.margin;
        self.totals
            .add(self.hinge.apply(v), self.hinge.is_active(v));
        let Some(g) = self.grad.as_mut() else {
            return;
        };
        let sl = self.cw * self.hinge.slope(v);
        if sl == 0.0 {
            return;
        }
        // Every row exactly `d` long (the remainders of the vector loops then agree).
        let d = self.x.dim();
        let Some(ga) = a
            .checked_mul(d)
            .and_then(|start| g.gx.get_mut(start..))
            .and_then(|r| r.get_mut(..d))
        else {
            return;
        };
        let rows = match g.gy.as_deref_mut() {
            Some(gy) => two_rows_mut(gy, d, p, q),
            None => g
                .sink
                .split_at_mut_checked(d)
                .and_then(|(u, v)| Some((u, v.get_mut(..d)?))),
        };
        let Some((gp, gq)) = rows else {
            return;
        };
        let (Some(xa), Some(yp), Some(yq)) = (xa.get(..d), yp.get(..d), yq.get(..d)) else {
            return;
        };
        let tiny = metric == Metric::Euclidean && dap.min(daq) < TINY_DISTANCE;
        if metric == Metric::Cosine {
            cosine_pair_update(s, sl, dap, (na, np), xa, yp, ga, gp);
            cosine_pair_update(s, -sl, daq, (na, nq), xa, yq, ga, gq);
        } else if tiny {
            euclidean_pair_update(sl, dap, xa, yp, ga, gp);
            euclidean_pair_update(-sl, daq, xa, yq, ga, gq);
        } else {
            let squared = metric == Metric::SquaredEuclidean;
            let k = |dist: f32| euclidean_grad_factor(squared, sl, dist);
            triplet_update(s, k(dap), k(daq), xa, yp, yq, [ga, gp, gq]);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Batch-all.

/// The gradient buffers of [`RefAllBlock`].
struct AllGrad<'o> {
    /// Pair coefficients of the current anchor (`m`).
    coef: &'o mut [f32],
    /// Diagonal terms of the candidates: `gy_j += diag_j y_j` at the end (`m`).
    diag: &'o mut [f32],
    /// The GEMM's packed coefficients.
    cpack: &'o mut [f32],
    gx: &'o mut [f32],
    gy: Option<&'o mut [f32]>,
    /// One row standing in for a row of `gy` when it is not wanted.
    sink: &'o mut [f32],
}

/// Batch-all over a block of anchors `i0..` (`block`: their distance rows to `y`), with
/// its gradient when `grad` is given: per anchor, its positives swept over its negatives
/// four at a time ([`relu_group`], [`soft_pair`]) give the loss terms and the pair
/// coefficients `c_aj`; with `k_aj` the factor of `d d(a, j) / d x_a = k_aj (x_a - y_j)`
/// (or the cosine terms), the block's row of `G` is `-k_aj`, so that
/// `gx[block] += G Y + diag_x X[block]` and `gy += G^T X[block] + diag_y Y`.
struct RefAllBlock<'a, 'o> {
    x: Matrix<'a>,
    y: Matrix<'a>,
    labels: &'a [u32],
    cand: &'a [u32],
    own: Option<&'a [u32]>,
    nx: &'a [f32],
    ny: &'a [f32],
    metric: Metric,
    hinge: Hinge,
    margin: f32,
    cw: f32,
    i0: usize,
    block: &'o mut [f32],
    masked: &'o mut [f32],
    pos: &'o mut [u32],
    totals: &'o mut Totals,
    grad: Option<AllGrad<'o>>,
}

impl Kernel for RefAllBlock<'_, '_> {
    type Output = ();
    #[inline(always)]
    fn run<S: Simd, const MR: usize, const NV: usize>(self, s: S) {
        let RefAllBlock {
            x,
            y,
            labels,
            cand,
            own,
            nx,
            ny,
            metric,
            hinge,
            margin,
            cw,
            i0,
            block,
            masked,
            pos,
            totals,
            mut grad,
        } = self;
        let m = cand.len();
        let d = x.dim();
        if m == 0 || masked.len() != m || ny.len() != m || pos.len() != m {
            return;
        }
        let (mut pos_label, mut pos_len) = (None, 0);
        for (r, row) in block.chunks_exact_mut(m).enumerate() {
            let a = i0 + r;
            let Some(&la) = labels.get(a) else {
                return;
            };
            let skip = own_of(own, a);
            let mut negs = 0_u32;
            for (j, ((mk, &v), &l)) in masked.iter_mut().zip(row.iter()).zip(cand).enumerate() {
                let neg = (u8::from(l != la) & u8::from(j != skip)) != 0;
                *mk = if neg { v } else { f32::NAN };
                negs += u32::from(neg);
            }
            let negs = negs as usize;
            if let Some(g) = grad.as_mut() {
                g.coef.fill(0.0);
            }
            if negs > 0 {
                if pos_label != Some(la) {
                    pos_len = list_label(cand, la, pos);
                    pos_label = Some(la);
                }
                let mut positives = pos
                    .get(..pos_len)
                    .unwrap_or(&[])
                    .iter()
                    .map(|&p| p as usize)
                    .filter(|&p| p != skip);
                loop {
                    let mut members = [usize::MAX; GROUP];
                    let mut bases = [f32::NAN; GROUP];
                    let mut filled = 0;
                    while filled < GROUP {
                        let Some(p) = positives.next() else {
                            break;
                        };
                        if let (Some(&dap), Some(slot), Some(base)) =
                            (row.get(p), members.get_mut(filled), bases.get_mut(filled))
                        {
                            *slot = p;
                            *base = dap + margin;
                            filled += 1;
                        }
                    }
                    if filled == 0 {
                        break;
                    }
                    let mut sums = [(0.0_f64, 0_usize, 0.0_f32); GROUP];
                    let coef = grad.as_mut().map(|g| &mut *g.coef);
                    match hinge {
                        Hinge::Relu => {
                            let (h, on) = relu_group(s, masked, &bases, coef);
                            for ((t, &h), &on) in sums.iter_mut().zip(&h).zip(&on) {
                                *t = (f64::from(h), on as usize, on);
                            }
                        }
                        Hinge::SoftPlus => {
                            let filled = sums.iter_mut().zip(&bases).take(filled);
                            if let Some(coef) = coef {
                                for (t, &base) in filled {
                                    *t = soft_pair(masked, base, Some(&mut *coef));
                                }
                            } else {
                                for (t, &base) in filled {
                                    *t = soft_pair(masked, base, None);
                                }
                            }
                        }
                    }
                    for (&p, &(sum, active, slopes)) in members.iter().zip(&sums) {
                        if p == usize::MAX {
                            continue;
                        }
                        totals.sum += sum;
                        totals.count = totals.count.saturating_add(negs);
                        totals.active = totals.active.saturating_add(active);
                        if let Some(c) = grad.as_mut().and_then(|g| g.coef.get_mut(p)) {
                            *c += slopes;
                        }
                    }
                }
            }
            if let Some(g) = grad.as_mut() {
                ref_coefficient_row(s, metric, (&x, &y), (nx, ny), a, cw, row, g);
            }
        }
        let Some(g) = grad else {
            return;
        };
        let rows = block.len() / m;
        let i1 = i0 + rows;
        let block = &*block;
        let (Some(xb), Some(ga)) = (
            x.as_slice().get(i0 * d..i1 * d),
            g.gx.get_mut(i0 * d..i1 * d),
        ) else {
            return;
        };
        // Anchor side: gx[a] += sum_j G[a][j] y_j.
        gemm_acc(s, block, m, 1, y.as_slice(), d, ga, g.cpack);
        // Candidate side: gy[j] += sum_a G[a][j] x_a.
        if let Some(gy) = g.gy {
            gemm_acc(s, block, 1, m, xb, d, gy, g.cpack);
        }
    }
}

/// Turns anchor `a`'s pair coefficients (`g.coef`, times `cw`) and distances (`row`)
/// into its row of `G` (written over `row`) and the diagonal terms (the anchor's applied
/// at once, the candidates' collected in `g.diag`); Euclidean pairs too close for the
/// GEMM form (the accuracy fix-up's test) are updated in difference form directly.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn ref_coefficient_row<S: Simd>(
    s: S,
    metric: Metric,
    (x, y): (&Matrix<'_>, &Matrix<'_>),
    (nx, ny): (&[f32], &[f32]),
    a: usize,
    cw: f32,
    row: &mut [f32],
    g: &mut AllGrad<'_>,
) {
    let d = x.dim();
    let (Some(&na), Some(xa)) = (nx.get(a), x.row(a)) else {
        return;
    };
    let mut diag_a = 0.0_f32;
    match metric {
        Metric::SquaredEuclidean | Metric::Euclidean => {
            let squared = metric == Metric::SquaredEuclidean;
            for (j, (((r, &c), &nj), dg)) in row
                .iter_mut()
                .zip(g.coef.iter())
                .zip(ny)
                .zip(g.diag.iter_mut())
                .enumerate()
            {
                let c = c * cw;
                let dist = *r;
                if c != 0.0 && needs_direct(dist, squared, na, nj) {
                    let yj = y.row(j).unwrap_or(&[]);
                    let ga = g.gx.get_mut(a * d..(a + 1) * d).unwrap_or(&mut []);
                    let gj = match g.gy.as_deref_mut() {
                        Some(gy) => gy.get_mut(j * d..(j + 1) * d).unwrap_or(&mut []),
                        None => &mut *g.sink,
                    };
                    ref_pair_grad(s, metric, xa, yj, dist, (na, nj), 0.0, c, ga, gj);
                    *r = 0.0;
                    continue;
                }
                let k = euclidean_grad_factor(squared, c, dist);
                *r = -k;
                *dg += k;
                diag_a += k;
            }
        }
        Metric::Cosine => {
            for (((r, &c), &nj), dg) in row
                .iter_mut()
                .zip(g.coef.iter())
                .zip(ny)
                .zip(g.diag.iter_mut())
            {
                let c = c * cw;
                let dist = *r;
                *r = -c / (na * nj);
                *dg += cosine_own_factor(c, dist, nj);
                diag_a += cosine_own_factor(c, dist, na);
            }
        }
    }
    if let Some(ga) = g.gx.get_mut(a * d..(a + 1) * d) {
        simd::axpy_with(s, diag_a, xa, ga);
    }
}

/// `gy_j += diag_j y_j` for every candidate.
struct AddDiag<'a, 'o> {
    y: Matrix<'a>,
    diag: &'a [f32],
    gy: &'o mut [f32],
}

impl Kernel for AddDiag<'_, '_> {
    type Output = ();
    #[inline(always)]
    fn run<S: Simd, const MR: usize, const NV: usize>(self, s: S) {
        let d = self.y.dim();
        for (j, (row, &k)) in self.y.row_iter().zip(self.diag).enumerate() {
            if let Some(g) = self.gy.get_mut(j * d..(j + 1) * d) {
                simd::axpy_with(s, k, row, g);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// The shared body.

/// One pass over the anchor blocks: the totals, and the gradient (coefficients times
/// `cw`) added to `grad` when given.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn ref_pass(
    backend: Backend,
    x: Matrix<'_>,
    labels: &[u32],
    refs: &RefSet<'_>,
    params: &BatchParams,
    cw: f32,
    grad: Option<(&mut [f32], Option<&mut [f32]>)>,
    workspace: &mut [f32],
) -> Result<Totals, Error> {
    let (n, m, d) = (x.rows(), refs.y.rows(), x.dim());
    let y = refs.y;
    let metric = params.metric;
    let mut ws = Carve::new(workspace);
    let nx = ws.take(n)?;
    metric_norms(backend, &x, metric, nx);
    let ny = ws.take(m)?;
    metric_norms(backend, &y, metric, ny);
    let (nx, ny) = (&*nx, &*ny);
    let rows_len = if params.mining == Mining::BatchHard {
        0
    } else {
        ref_block(n) * m
    };
    let block = ws.take(rows_len)?;
    let tile = ws.take(ref_block(n) * m.min(REF_TILE))?;
    match params.mining {
        Mining::BatchHard | Mining::SemiHard => {
            let scratch = ws.take(2 * m)?;
            let grad = match grad {
                Some((gx, gy)) => Some(AccGrad {
                    gx,
                    gy,
                    sink: ws.take(2 * d)?,
                }),
                None => None,
            };
            let mut acc = RefAcc {
                x,
                y,
                nx,
                ny,
                metric,
                margin: params.margin,
                hinge: params.hinge,
                cw,
                totals: Totals::default(),
                grad,
            };
            if params.mining == Mining::BatchHard {
                let b = ref_block(n);
                let mut st = RefHardState {
                    pos_val: ws.take(b)?,
                    pos_idx: ws.take_u32(b)?,
                    neg_val: ws.take(b)?,
                    neg_idx: ws.take_u32(b)?,
                };
                let pack = ws.rest();
                let norms = (nx, ny);
                ref_hard_sweep(
                    backend, &x, labels, refs, metric, norms, &mut st, tile, pack, &mut acc,
                )?;
                return Ok(acc.totals);
            }
            let pack = ws.rest();
            let bufs = (block, tile, pack, scratch);
            semi_hard_sweep(backend, &x, labels, refs, metric, (nx, ny), bufs, &mut acc)?;
            Ok(acc.totals)
        }
        Mining::All => {
            let masked = ws.take(m)?;
            let pos = ws.take_u32(m)?;
            let mut bufs = match grad {
                Some((gx, gy)) => {
                    let coef = ws.take(m)?;
                    let diag = ws.take(m)?;
                    let cpack = ws.take(GEMM_MR * m.max(ref_block(n)))?;
                    let sink = ws.take(d)?;
                    diag.fill(0.0);
                    Some((coef, diag, cpack, gx, gy, sink))
                }
                None => None,
            };
            let mut totals = Totals::default();
            let pack = ws.rest();
            for_ref_blocks(
                backend,
                &x,
                &y,
                metric,
                (nx, ny),
                (block, tile),
                pack,
                |i0, _, blk| {
                    backend.dispatch(RefAllBlock {
                        x,
                        y,
                        labels,
                        cand: refs.labels,
                        own: refs.self_index,
                        nx,
                        ny,
                        metric,
                        hinge: params.hinge,
                        margin: params.margin,
                        cw,
                        i0,
                        block: blk,
                        masked: &mut *masked,
                        pos: &mut *pos,
                        totals: &mut totals,
                        grad: bufs
                            .as_mut()
                            .map(|(coef, diag, cpack, gx, gy, sink)| AllGrad {
                                coef,
                                diag,
                                cpack,
                                gx,
                                gy: gy.as_deref_mut(),
                                sink,
                            }),
                    });
                    Ok(())
                },
            )?;
            if let Some((_, diag, _, _, Some(gy), _)) = bufs {
                backend.dispatch(AddDiag { y, diag, gy });
            }
            Ok(totals)
        }
    }
}

/// The shared body of the reference-form losses; `grad` is `None` for the forward pass.
/// Inlined into both entry points, so that the link-time no-panic proof sees its body
/// there.
#[inline(always)]
fn ref_impl(
    x: Matrix<'_>,
    labels: &[u32],
    refs: RefSet<'_>,
    params: &BatchParams,
    grad: Option<RefGrad<'_>>,
    workspace: &mut [f32],
) -> Result<BatchLoss, Error> {
    let (n, m) = check_ref_args(&x, labels, &refs, params)?;
    let dim = x.dim();
    if let Some(g) = grad.as_ref() {
        check_len("grad", x.len(), g.x.len())?;
        if let Some(gy) = g.y.as_deref() {
            check_len("grad_y", refs.y.len(), gy.len())?;
        }
    }
    check_workspace(ref_len(n, m, dim, *params, grad.is_some()), workspace.len())?;
    check_rows(&x, false)?;
    check_y_rows(&refs.y)?;
    let backend = Backend::active();
    let Some(RefGrad {
        x: gx,
        y: mut gy,
        mode,
    }) = grad
    else {
        let totals = ref_pass(backend, x, labels, &refs, params, 1.0, None, workspace)?;
        return Ok(totals.finish(params.reduction).0);
    };
    match mode {
        GradMode::Overwrite => {
            gx.fill(0.0);
            if let Some(gy) = gy.as_deref_mut() {
                gy.fill(0.0);
            }
            let g = Some((&mut *gx, gy.as_deref_mut()));
            let totals = ref_pass(backend, x, labels, &refs, params, 1.0, g, workspace)?;
            let (loss, w) = totals.finish(params.reduction);
            finish_grad(backend, w, gx);
            if let Some(gy) = gy {
                finish_grad(backend, w, gy);
            }
            Ok(loss)
        }
        GradMode::Accumulate => {
            // The weight is needed before the first contribution: from the labels for
            // the mean, from a forward pass for the mean over active terms.
            let w = match params.reduction {
                Reduction::Sum => 1.0,
                Reduction::Mean => {
                    let k = ref_count(labels, refs.labels, refs.self_index, params.mining)?;
                    params.reduction.weight(k, 0)
                }
                Reduction::MeanNonzero => {
                    let t = ref_pass(backend, x, labels, &refs, params, 1.0, None, workspace)?;
                    params.reduction.weight(t.count, t.active)
                }
            };
            let g = (w != 0.0).then_some((gx, gy));
            let totals = ref_pass(backend, x, labels, &refs, params, w, g, workspace)?;
            Ok(totals.finish(params.reduction).0)
        }
    }
}

/// Triplet loss of anchors `x` (`n x dim`, with `labels`) against a reference set `refs`
/// (`y`, `m x dim`, with its labels and optional self indices), with online mining: the
/// in-batch rules of [`crate::triplet_batch_loss`] with the positives and negatives taken
/// from `y`. For anchor `a` with own row `o = self_index[a]` (none without it), a
/// positive is a row `j != o` of `y` with `y_label(j) = label(a)`, a negative a row
/// `j != o` with another label. Each selected triplet `(a, p, n)` (`a` a row of `x`, `p`,
/// `n` rows of `y`) gives
///
/// ```text
/// v = d(x_a, y_p) - d(x_a, y_n) + margin,   term = h(v)
/// ```
///
/// and the terms are reduced as `params.reduction` says ([`BatchLoss::sum`] holds the
/// unreduced sum). [`Mining::All`] takes every (a, p, n); [`Mining::BatchHard`] per
/// anchor the farthest positive and the nearest negative; [`Mining::SemiHard`] per
/// anchor-positive pair the nearest negative farther than the positive, else the farthest
/// negative. Anchors without a positive or a negative contribute nothing; ties go to the
/// smallest index. This is a cross-batch memory (XBM) loss when `y` holds past embeddings
/// (and the current batch, with `self_index`), and one worker's share of a data-parallel
/// batch when `x` is its local rows and `y` the gathered global batch.
///
/// Anchors go in blocks of up to 256 rows, `y` streams through in tiles of 256 rows
/// (no `n x m` matrix).
/// `params.normalize` must be `false`: normalise `x` and `y` first
/// ([`crate::l2_normalize`]) and chain the gradient ([`crate::l2_normalize_backward`]).
/// Scalar twin: [`crate::scalar::triplet_batch_ref_loss`]; with gradients:
/// [`triplet_batch_ref_loss_grad`]; the selected triplets: [`mine_triplets_ref`].
/// `workspace` needs [`triplet_batch_ref_loss_workspace_len`]`(n, m, dim, params)`
/// elements, garbage before and after.
///
/// # Errors
///
/// - [`Error::InvalidParameter`] (`"margin"`) for a margin that is NaN or above `2^100`
///   in magnitude, (`"normalize"`) when `params.normalize`;
/// - [`Error::LengthMismatch`] (`"labels"`) when `labels.len() != n`;
/// - [`Error::DimensionMismatch`] when `x` and `y` have different dimensions;
/// - [`Error::LengthMismatch`] (`"y_labels"`, `"self_index"`) when `refs.labels.len() != m`
///   or `self_index.len() != n`;
/// - [`Error::IndexOutOfRange`] (`"self_index"`) for an entry `>= m` other than
///   [`NO_INDEX`];
/// - [`Error::ShapeOverflow`] when the triplet count overflows `usize`;
/// - [`Error::WorkspaceTooSmall`] when the workspace is too short;
/// - [`Error::NonFinite`] and [`Error::TooLarge`] (`"x"` or `"y"`, row and column) as for
///   [`crate::triplet_batch_loss`] without normalisation.
///
/// # Numerics
///
/// As [`crate::triplet_batch_loss`]: mining decisions on the fixed-up `f32` distances;
/// batch-hard and semi-hard terms from directly recomputed distances, batch-all terms from
/// the block's distances; sums in `f64`.
///
/// # Example
///
/// ```
/// use triplet_kernels::{triplet_batch_ref_loss, triplet_batch_ref_loss_workspace_len};
/// use triplet_kernels::{BatchParams, Matrix, Mining, RefSet, Reduction};
/// let x = Matrix::new(&[0.0, 4.0], 2, 1)?;
/// let y = Matrix::new(&[1.0, 3.0, 1.5, 6.0], 4, 1)?;
/// const P: BatchParams = BatchParams::new()
///     .with_mining(Mining::BatchHard)
///     .with_margin(1.0)
///     .with_reduction(Reduction::Sum);
/// let mut ws = [0.0_f32; triplet_batch_ref_loss_workspace_len(2, 4, 1, P)];
/// let out = triplet_batch_ref_loss(x, &[0, 1], RefSet::new(y, &[0, 0, 1, 1]), P, &mut ws)?;
/// // Anchor 0: farthest positive 3 (y_1), nearest negative 1.5 (y_2): 3 - 1.5 + 1 = 2.5.
/// // Anchor 4: farthest positive 1.5 (y_2, at 2.5), nearest negative 3 (y_1, at 1):
/// // 2.5 - 1 + 1 = 2.5.
/// assert_eq!((out.loss, out.num_triplets), (5.0, 2));
/// # Ok::<(), triplet_kernels::Error>(())
/// ```
#[cfg_attr(feature = "no-panic", no_panic::no_panic)]
pub fn triplet_batch_ref_loss(
    x: Matrix<'_>,
    labels: &[u32],
    refs: RefSet<'_>,
    params: BatchParams,
    workspace: &mut [f32],
) -> Result<BatchLoss, Error> {
    ref_impl(x, labels, refs, &params, None, workspace)
}

/// [`triplet_batch_ref_loss`] and its gradients in one call: `grad.x = d loss / d x`
/// with `y` held fixed and, when `grad.y` is given, `grad.y = d loss / d y` with `x` held
/// fixed (where rows of `y` are copies of rows of `x`, a caller that feeds `x` into `y`
/// adds the two; a cross-batch memory that stores `y` detached uses `grad.x` alone).
///
/// Each selected triplet gives the pairs `(a, p)` and `(a, n)` the coefficients `+s` and
/// `-s`, `s = w h'(v)` with `w` the reduction's weight; a pair with coefficient `c` adds
/// `c d d(x_a, y_j) / d x_a` to row `a` of `grad.x` and `c d d(x_a, y_j) / d y_j` to row
/// `j` of `grad.y`:
///
/// ```text
/// squared Euclidean: d/dx_a = 2 (x_a - y_j)        d/dy_j = -2 (x_a - y_j)
/// Euclidean:         d/dx_a = (x_a - y_j) / d      d/dy_j = -(x_a - y_j) / d   (0 at d = 0)
/// cosine:            d/dx_a = -y_j / (|x_a| |y_j|) + (1 - d) x_a / |x_a|^2, symmetrically
/// ```
///
/// [`GradMode::Overwrite`] writes every element (the sum's gradient, scaled by `w` at the
/// end, as [`crate::triplet_batch_loss_grad`] does); [`GradMode::Accumulate`] adds the
/// gradient to the buffers' contents, each contribution scaled by `w` as it is added (for
/// [`Reduction::MeanNonzero`] after a forward pass that counts the active terms). Blocks
/// of anchors computed separately add up to the whole batch: give each block its own
/// anchors and the same `refs`, use [`Reduction::Sum`], add the gradients (accumulate
/// into one buffer, or all-reduce) and scale them by the `w` that
/// [`crate::combine_batch_losses`] returns. Scalar twin:
/// [`crate::scalar::triplet_batch_ref_loss_grad`]. `workspace` needs
/// [`triplet_batch_ref_loss_grad_workspace_len`]`(n, m, dim, params)` elements, garbage
/// before and after.
///
/// # Errors
///
/// Those of [`triplet_batch_ref_loss`], and [`Error::LengthMismatch`] (`"grad"`,
/// `"grad_y"`) when `grad.x.len() != n * dim` or `grad.y` is given with
/// `len() != m * dim`; they come before the workspace check.
///
/// # Numerics
///
/// The loss is that of [`triplet_batch_ref_loss`], bit for bit. The gradients are within
/// the bounds of [`crate::triplet_batch_loss_grad`] of the twin's (per-triplet updates in
/// difference form for batch-hard and semi-hard; the GEMM form for batch-all). A row of
/// `grad.x` depends only on its anchor's triplets, so splitting the anchors into blocks
/// changes its bits only where a block boundary changes a fix-up decision or a mining
/// near-tie; rows of `grad.y` gather contributions from every block, in a different order.
///
/// # Example
///
/// ```
/// use triplet_kernels::{triplet_batch_ref_loss_grad, triplet_batch_ref_loss_grad_workspace_len};
/// use triplet_kernels::{BatchParams, Matrix, Metric, Mining, RefGrad, RefSet, Reduction};
/// let x = Matrix::new(&[0.0, 4.0], 2, 1)?;
/// let y = Matrix::new(&[1.0, 3.0, 1.5, 6.0], 4, 1)?;
/// const P: BatchParams = BatchParams::new()
///     .with_metric(Metric::SquaredEuclidean)
///     .with_mining(Mining::BatchHard)
///     .with_margin(1.0)
///     .with_reduction(Reduction::Sum);
/// let (mut gx, mut gy) = ([f32::NAN; 2], [f32::NAN; 4]);
/// let mut ws = [0.0_f32; triplet_batch_ref_loss_grad_workspace_len(2, 4, 1, P)];
/// let refs = RefSet::new(y, &[0, 0, 1, 1]);
/// let out = triplet_batch_ref_loss_grad(x, &[0, 1], refs, P, RefGrad::new(&mut gx).with_y(&mut gy), &mut ws)?;
/// // Triplets (0; y1, y2) and (1; y2, y1): (9 - 2.25 + 1) + (6.25 - 1 + 1).
/// assert_eq!(out.loss, 14.0);
/// // d|a - b|^2/da = 2 (a - b), d/db = -2 (a - b).
/// assert_eq!(gx, [2.0 * (0.0 - 3.0) - 2.0 * (0.0 - 1.5), 2.0 * (4.0 - 1.5) - 2.0 * (4.0 - 3.0)]);
/// assert_eq!(gy, [0.0, 6.0 + 2.0, -3.0 - 5.0, 0.0]);
/// # Ok::<(), triplet_kernels::Error>(())
/// ```
#[cfg_attr(feature = "no-panic", no_panic::no_panic)]
pub fn triplet_batch_ref_loss_grad(
    x: Matrix<'_>,
    labels: &[u32],
    refs: RefSet<'_>,
    params: BatchParams,
    grad: RefGrad<'_>,
    workspace: &mut [f32],
) -> Result<BatchLoss, Error> {
    ref_impl(x, labels, refs, &params, Some(grad), workspace)
}

/// Number of triplets `mining` selects for anchors with `labels` against candidates
/// with `y_labels` (and optional self indices, see [`RefSet`]): with `pos(a)` and
/// `neg(a)` the anchor's positives and negatives in `y`, `sum_a pos(a) neg(a)` for
/// [`Mining::All`], the anchors with both for [`Mining::BatchHard`], and
/// `sum over anchors with neg(a) > 0 of pos(a)` for [`Mining::SemiHard`]. `O(n m)` label
/// comparisons, no workspace; the `out` length [`mine_triplets_ref`] needs.
///
/// # Errors
///
/// - [`Error::LengthMismatch`] (`"self_index"`) when `self_index.len() != labels.len()`;
/// - [`Error::IndexOutOfRange`] (`"self_index"`) for an entry `>= y_labels.len()` other
///   than [`NO_INDEX`];
/// - [`Error::ShapeOverflow`] when the count overflows `usize`.
///
/// # Example
///
/// ```
/// use triplet_kernels::{mine_triplets_ref_count, Mining};
/// let (labels, y_labels) = ([0, 1], [0, 0, 1, 1, 1]);
/// assert_eq!(mine_triplets_ref_count(&labels, &y_labels, None, Mining::All)?, 2 * 3 + 3 * 2);
/// // Anchor 0 is row 0 of y: one positive left.
/// assert_eq!(mine_triplets_ref_count(&labels, &y_labels, Some(&[0, 4]), Mining::SemiHard)?, 1 + 2);
/// # Ok::<(), triplet_kernels::Error>(())
/// ```
#[cfg_attr(feature = "no-panic", no_panic::no_panic)]
pub fn mine_triplets_ref_count(
    labels: &[u32],
    y_labels: &[u32],
    self_index: Option<&[u32]>,
    mining: Mining,
) -> Result<usize, Error> {
    if let Some(own) = self_index {
        check_len("self_index", labels.len(), own.len())?;
        let m = y_labels.len();
        for (position, &j) in own.iter().enumerate() {
            if j != NO_INDEX && j as usize >= m {
                return Err(Error::IndexOutOfRange {
                    buffer: "self_index",
                    position,
                    index: j as usize,
                    bound: m,
                });
            }
        }
    }
    ref_count(labels, y_labels, self_index, mining)
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

/// The checks of [`mine_triplets_ref`] and its twin, in their documented order; returns
/// `(n, m)`.
pub(crate) fn check_mine_ref_args(
    x: &Matrix<'_>,
    labels: &[u32],
    refs: &RefSet<'_>,
    mining: Mining,
    out_len: usize,
    workspace_len: usize,
) -> Result<(usize, usize), Error> {
    let (n, m) = check_ref_set(x, labels, refs)?;
    let count = ref_count(labels, refs.labels, refs.self_index, mining)?;
    if out_len < count {
        return Err(Error::LengthMismatch {
            buffer: "out",
            expected: count,
            actual: out_len,
        });
    }
    check_workspace(
        mine_triplets_ref_workspace_len(n, m, x.dim()),
        workspace_len,
    )?;
    check_rows(x, false)?;
    check_y_rows(&refs.y)?;
    Ok((n, m))
}

/// The triplets `mining` selects for anchors `x` against the reference set `refs` (the
/// rules of [`triplet_batch_ref_loss`]), written into `out` in ascending `(a, p)` order
/// (then `n` for [`Mining::All`]), `a` a row of `x`, `p` and `n` rows of `y`; returns how
/// many: exactly [`mine_triplets_ref_count`]. The first `count` elements of `out` are
/// overwritten, the rest left untouched. Scalar twin: [`crate::scalar::mine_triplets_ref`].
/// `workspace` needs [`mine_triplets_ref_workspace_len`]`(n, m, dim)` elements, garbage
/// before and after.
///
/// # Errors
///
/// Those of [`triplet_batch_ref_loss`] about the sets (labels, dimensions, self indices,
/// count), then [`Error::LengthMismatch`] (`"out"`, `expected` = the count) when `out`
/// is shorter, [`Error::WorkspaceTooSmall`], and the data errors for `"x"` and `"y"`.
///
/// # Numerics
///
/// As [`crate::mine_triplets`].
///
/// # Example
///
/// ```
/// use triplet_kernels::{mine_triplets_ref, mine_triplets_ref_workspace_len};
/// use triplet_kernels::{Matrix, Metric, Mining, RefSet, Triplet};
/// let x = Matrix::new(&[0.0, 4.0], 2, 1)?;
/// let y = Matrix::new(&[1.0, 3.0, 1.5, 6.0], 4, 1)?;
/// let mut out = [Triplet::default(); 2];
/// let mut ws = [0.0_f32; mine_triplets_ref_workspace_len(2, 4, 1)];
/// let refs = RefSet::new(y, &[0, 0, 1, 1]);
/// let k = mine_triplets_ref(x, &[0, 1], refs, Metric::Euclidean, Mining::BatchHard, &mut out, &mut ws)?;
/// assert_eq!(&out[..k], [Triplet::new(0, 1, 2), Triplet::new(1, 2, 1)]);
/// # Ok::<(), triplet_kernels::Error>(())
/// ```
#[cfg_attr(feature = "no-panic", no_panic::no_panic)]
pub fn mine_triplets_ref(
    x: Matrix<'_>,
    labels: &[u32],
    refs: RefSet<'_>,
    metric: Metric,
    mining: Mining,
    out: &mut [Triplet],
    workspace: &mut [f32],
) -> Result<usize, Error> {
    let (n, m) = check_mine_ref_args(&x, labels, &refs, mining, out.len(), workspace.len())?;
    let mut w = Writer { out, k: 0 };
    if mining == Mining::All {
        for (a, &la) in labels.iter().enumerate() {
            let skip = own_of(refs.self_index, a);
            for (p, &lp) in refs.labels.iter().enumerate() {
                if p == skip || lp != la {
                    continue;
                }
                for (q, &lq) in refs.labels.iter().enumerate() {
                    if q != skip && lq != la {
                        w.triplet(simd::Portable, a, p, q);
                    }
                }
            }
        }
        return Ok(w.k);
    }
    let backend = Backend::active();
    let y = refs.y;
    let mut ws = Carve::new(workspace);
    let nx = ws.take(n)?;
    metric_norms(backend, &x, metric, nx);
    let ny = ws.take(m)?;
    metric_norms(backend, &y, metric, ny);
    let block = ws.take(ref_block(n) * m)?;
    let tile = ws.take(ref_block(n) * m.min(REF_TILE))?;
    let scratch = ws.take(2 * m)?;
    let b = ref_block(n);
    let mut st = RefHardState {
        pos_val: ws.take(b)?,
        pos_idx: ws.take_u32(b)?,
        neg_val: ws.take(b)?,
        neg_idx: ws.take_u32(b)?,
    };
    let pack = ws.rest();
    if mining == Mining::BatchHard {
        let norms = (&*nx, &*ny);
        ref_hard_sweep(
            backend, &x, labels, &refs, metric, norms, &mut st, tile, pack, &mut w,
        )?;
        return Ok(w.k);
    }
    let bufs = (block, tile, pack, scratch);
    semi_hard_sweep(backend, &x, labels, &refs, metric, (nx, ny), bufs, &mut w)?;
    Ok(w.k)
}
