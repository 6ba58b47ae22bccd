//! The packed, register-blocked distance microkernel, written once over [`Simd`].
//!
//! A call computes a block of anchor rows `r0..r1` of `a` against every row of `b`
//! (`b = a` for a pairwise matrix), writing `out[(i - r0) * n + j] = d(a_i, b_j)`.
//!
//! - **Packing.** Rows are copied into panels of `NR = NV * LANES` rows, transposed to
//!   `[k][NR]`, zero-padded: for each coordinate `k`, the `NR` values are contiguous.
//!   The anchor block is packed once; in a pairwise block its panels also serve as
//!   column panels, other column panels are packed one at a time.
//! - **Microkernel.** An `MR x NR` tile of accumulators stays in registers while `k` runs
//!   over the whole dimension: per step, `NV` vector loads of the column panel, `MR`
//!   broadcasts from the anchor panel (`MR` divides `NR`, so a micro-panel is a slice of
//!   a packed panel), `MR * NV` fused multiply-adds. Gram mode accumulates `a_k b_k`,
//!   direct mode `(b_k - a_k)^2`. Each entry is summed sequentially over `k`.
//! - **Norms** (Gram mode) come from the same packed panels with the same lane
//!   arithmetic, `fma(x_k, x_k, acc)` in `k` order, so a row's squared norm equals,
//!   bit for bit, the tile's dot product of that row with itself: equal rows give
//!   exactly 0.
//! - **Epilogue.** The tile becomes distances (`|a|^2 + |b|^2 - 2 a.b` clamped at 0, its
//!   square root, `1 - a.b / (|a| |b|)`, or the direct sum) and is stored. In the
//!   symmetric part of a pairwise block only tiles on or above the diagonal are
//!   computed; each strictly-upper value is written at `(i, j)` and `(j, i)`, the
//!   diagonal is set to exactly 0.
//! - **Square tiles** (`MR == LANES`, `NV == 1`, the x86 backends' shape): the mirror
//!   image of a tile and the packing of `LANES x LANES` blocks go through an in-register
//!   transpose ([`Simd::transpose`]) and whole-vector stores; other shapes fall back to
//!   element-wise copies.

use super::{clamp_norm, DistanceMode, Metric};
use crate::math;
use crate::matrix::Matrix;
use crate::simd::{Kernel, Simd, MR_MAX, NR_MAX};

/// Workspace elements for a block of `rows` anchor rows of dimension `dim`, for every
/// backend: row norms and packed anchors padded to a whole panel, one column panel and its
/// norms, one tile; nothing for an empty block. Saturates instead of overflowing.
pub(super) const fn block_workspace_len(rows: usize, dim: usize) -> usize {
    if rows == 0 {
        return 0;
    }
    let padded = rows.saturating_add(NR_MAX);
    padded
        .saturating_add(NR_MAX)
        .saturating_add(padded.saturating_mul(dim))
        .saturating_add(NR_MAX.saturating_mul(dim))
        .saturating_add(MR_MAX * NR_MAX)
}

/// One block-of-rows distance computation; arguments already validated.
pub(super) struct Block<'a, 'o> {
    /// Anchor source.
    pub a: Matrix<'a>,
    /// First anchor row.
    pub r0: usize,
    /// One past the last anchor row (`r0 <= r1 <= a.rows()`).
    pub r1: usize,
    /// Column source (`a` itself when `pairwise`).
    pub b: Matrix<'a>,
    /// `b` is `a`: use symmetry inside `r0..r1` and put exact zeros on the diagonal.
    pub pairwise: bool,
    pub metric: Metric,
    pub mode: DistanceMode,
    /// `(r1 - r0) * b.rows()` elements.
    pub out: &'o mut [f32],
    /// At least `block_workspace_len(r1 - r0, dim)` elements.
    pub ws: &'o mut [f32],
}

/// What the per-row norm buffers hold.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Norms {
    /// Nothing (direct mode).
    None,
    /// `|x|^2`.
    Squared,
    /// `1 / max(|x|, NORM_EPS)`.
    InvClamped,
}

/// How accumulators become distances.
trait Epilogue {
    /// Accumulate `(b_k - a_k)^2` instead of `a_k b_k`.
    const DIRECT: bool;
    const NORMS: Norms;
    /// The distance from the accumulator and the row and column norm terms.
    fn finish<S: Simd>(s: S, acc: S::V, row: S::V, col: S::V) -> S::V;
}

/// `max(0, |a|^2 + |b|^2 - 2 a.b)`, NaN kept.
#[inline(always)]
fn gram_sq<S: Simd>(s: S, acc: S::V, row: S::V, col: S::V) -> S::V {
    s.max(s.zero(), s.sub(s.add(row, col), s.add(acc, acc)))
}

struct SqGram;
impl Epilogue for SqGram {
    const DIRECT: bool = false;
    const NORMS: Norms = Norms::Squared;
    #[inline(always)]
    fn finish<S: Simd>(s: S, acc: S::V, row: S::V, col: S::V) -> S::V {
        gram_sq(s, acc, row, col)
    }
}

struct EuclidGram;
impl Epilogue for EuclidGram {
    const DIRECT: bool = false;
    const NORMS: Norms = Norms::Squared;
    #[inline(always)]
    fn finish<S: Simd>(s: S, acc: S::V, row: S::V, col: S::V) -> S::V {
        s.sqrt(gram_sq(s, acc, row, col))
    }
}

struct Cosine;
impl Epilogue for Cosine {
    const DIRECT: bool = false;
    const NORMS: Norms = Norms::InvClamped;
    #[inline(always)]
    fn finish<S: Simd>(s: S, acc: S::V, row: S::V, col: S::V) -> S::V {
        // `row * col` first: symmetric in (i, j), so a value and its mirror image agree
        // bit for bit whichever of the two rows is the anchor. Normal while both norms
        // stay below the documented overflow limit.
        s.sub(s.splat(1.0), s.mul(acc, s.mul(row, col)))
    }
}

struct SqDirect;
impl Epilogue for SqDirect {
    const DIRECT: bool = true;
    const NORMS: Norms = Norms::None;
    #[inline(always)]
    fn finish<S: Simd>(_: S, acc: S::V, _: S::V, _: S::V) -> S::V {
        acc
    }
}

struct EuclidDirect;
impl Epilogue for EuclidDirect {
    const DIRECT: bool = true;
    const NORMS: Norms = Norms::None;
    #[inline(always)]
    fn finish<S: Simd>(s: S, acc: S::V, _: S::V, _: S::V) -> S::V {
        s.sqrt(acc)
    }
}

impl Kernel for Block<'_, '_> {
    type Output = ();
    #[inline(always)]
    fn run<S: Simd, const MR: usize, const NV: usize>(self, s: S) {
        match (self.metric, self.mode) {
            (Metric::SquaredEuclidean, DistanceMode::Gram) => drive::<S, MR, NV, SqGram>(s, self),
            (Metric::Euclidean, DistanceMode::Gram) => drive::<S, MR, NV, EuclidGram>(s, self),
            (Metric::Cosine, _) => drive::<S, MR, NV, Cosine>(s, self),
            (Metric::SquaredEuclidean, DistanceMode::Direct) => {
                drive::<S, MR, NV, SqDirect>(s, self);
            }
            (Metric::Euclidean, DistanceMode::Direct) => {
                drive::<S, MR, NV, EuclidDirect>(s, self);
            }
        }
    }
}

/// Copies `src` (consecutive rows of length `d`, at most `nr` of them) into `panel`
/// (`d * nr` elements) as `panel[k * nr + c] = row_c[k]`, zero-padding missing rows.
/// With square tiles (`nr == LANES`) a block of `LANES x LANES` at a time, through
/// [`Simd::transpose`].
#[inline(always)]
fn pack<S: Simd, const MR: usize, const NV: usize>(
    s: S,
    src: &[f32],
    d: usize,
    nr: usize,
    panel: &mut [f32],
) {
    let l = S::LANES;
    if NV == 1 && MR == l && nr == l {
        let mut k0 = 0;
        while k0 < d {
            let kl = l.min(d - k0);
            let mut blk = [s.zero(); MR];
            for (c, b) in blk.iter_mut().enumerate() {
                let start = c * d + k0;
                // A missing row (past the end of `src`) loads as zeros.
                *b = s.load(src.get(start..start + kl).unwrap_or(&[]));
            }
            s.transpose(&mut blk);
            for (kk, b) in blk.iter().enumerate().take(kl) {
                let start = (k0 + kk) * nr;
                s.store(*b, panel.get_mut(start..start + nr).unwrap_or(&mut []));
            }
            k0 += l;
        }
        return;
    }
    let mut count = 0;
    if d != 0 {
        for (c, row) in src.chunks_exact(d).take(nr).enumerate() {
            for (dst, &v) in panel.iter_mut().skip(c).step_by(nr).zip(row) {
                *dst = v;
            }
            count = c + 1;
        }
    }
    if count < nr {
        for k_row in panel.chunks_exact_mut(nr) {
            for v in k_row.iter_mut().skip(count) {
                *v = 0.0;
            }
        }
    }
}

/// Per-row norm terms of a packed panel into `out` (`nr` elements), computed lane-wise
/// with the microkernel's arithmetic.
#[inline(always)]
fn panel_norms<S: Simd, const NV: usize, E: Epilogue>(
    s: S,
    panel: &[f32],
    nr: usize,
    out: &mut [f32],
) {
    if E::NORMS == Norms::None {
        return;
    }
    let l = S::LANES;
    let mut acc = [s.zero(); NV];
    for k_row in panel.chunks_exact(nr) {
        for (v, a) in acc.iter_mut().enumerate() {
            let x = s.load(k_row.get(v * l..).unwrap_or(&[]));
            *a = s.fma(x, x, *a);
        }
    }
    for (v, a) in acc.iter().enumerate() {
        s.store(*a, out.get_mut(v * l..).unwrap_or(&mut []));
    }
    if E::NORMS == Norms::InvClamped {
        for o in out.iter_mut().take(nr) {
            *o = 1.0 / clamp_norm(math::sqrt(*o));
        }
    }
}

/// The `MR x (NV * LANES)` tile of micro-panel `off..off + MR` of `apanel` against
/// `bpanel` (both packed `[k][nr]`).
#[inline(always)]
fn micro<S: Simd, const MR: usize, const NV: usize, E: Epilogue>(
    s: S,
    apanel: &[f32],
    off: usize,
    bpanel: &[f32],
    nr: usize,
) -> [[S::V; NV]; MR] {
    let l = S::LANES;
    let mut acc = [[s.zero(); NV]; MR];
    for (ak, bk) in apanel.chunks_exact(nr).zip(bpanel.chunks_exact(nr)) {
        let Some(ak) = ak.get(off..off + MR) else {
            break;
        };
        let mut bv = [s.zero(); NV];
        for (v, x) in bv.iter_mut().enumerate() {
            *x = s.load(bk.get(v * l..).unwrap_or(&[]));
        }
        for (acc_r, &a) in acc.iter_mut().zip(ak) {
            let av = s.splat(a);
            for (c, &b) in acc_r.iter_mut().zip(&bv) {
                *c = if E::DIRECT {
                    let t = s.sub(b, av);
                    s.fma(t, t, *c)
                } else {
                    s.fma(av, b, *c)
                };
            }
        }
    }
    acc
}

/// Shapes shared by the loops of one call.
#[derive(Clone, Copy)]
struct Geometry {
    /// Dimension.
    d: usize,
    /// Columns of `out` (rows of `b`).
    n: usize,
    /// Panel width `NV * LANES`.
    nr: usize,
    /// `nr * d`, never 0.
    panel_len: usize,
    r0: usize,
    r1: usize,
}

/// Where a tile's values go.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Placement {
    /// Below or beside the symmetric part: stored as computed.
    Rect,
    /// Strictly above the diagonal of the symmetric part: stored and mirrored.
    Upper,
    /// Crossing the diagonal: entries above it stored and mirrored, the diagonal zeroed.
    Diagonal,
}

/// Computes and stores every tile of the anchor block against one column panel.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn sweep<S: Simd, const MR: usize, const NV: usize, E: Epilogue>(
    s: S,
    g: Geometry,
    apack: &[f32],
    row_norms: &[f32],
    bpanel: &[f32],
    col_norms: &[f32],
    j0: usize,
    ncols: usize,
    symmetric: bool,
    out: &mut [f32],
    tile: &mut [f32],
) {
    let Geometry {
        n,
        nr,
        panel_len,
        r0,
        r1,
        ..
    } = g;
    let l = S::LANES;
    let mut cn = [s.zero(); NV];
    for (v, c) in cn.iter_mut().enumerate() {
        *c = s.load(col_norms.get(v * l..ncols).unwrap_or(&[]));
    }
    for (p, (apanel, pnorms)) in apack
        .chunks_exact(panel_len)
        .zip(row_norms.chunks_exact(nr))
        .enumerate()
    {
        for off in (0..nr).step_by(MR) {
            let i0 = r0 + p * nr + off;
            if i0 >= r1 || (symmetric && i0 >= j0 + ncols) {
                return;
            }
            let mr = MR.min(r1 - i0);
            let placement = if !symmetric {
                Placement::Rect
            } else if i0 + MR <= j0 {
                Placement::Upper
            } else {
                Placement::Diagonal
            };
            let acc = micro::<S, MR, NV, E>(s, apanel, off, bpanel, nr);
            let rn = pnorms.get(off..off + MR).unwrap_or(&[]);
            let il0 = i0 - r0;
            if placement == Placement::Upper && NV == 1 && MR == l {
                // Square tile: rows stored as computed, then transposed in registers and
                // stored as the mirrored rows.
                let mut vals = [s.zero(); MR];
                for (r, (v, acc_r)) in vals.iter_mut().zip(&acc).enumerate() {
                    let rv = s.splat(rn.get(r).copied().unwrap_or(0.0));
                    if let (Some(a), Some(c)) = (acc_r.first(), cn.first()) {
                        *v = E::finish(s, *a, rv, *c);
                    }
                    let start = (il0 + r) * n + j0;
                    s.store(*v, out.get_mut(start..start + ncols).unwrap_or(&mut []));
                }
                s.transpose(&mut vals);
                for (c, v) in vals.iter().enumerate().take(ncols) {
                    let start = (j0 + c - r0) * n + i0;
                    s.store(*v, out.get_mut(start..start + mr).unwrap_or(&mut []));
                }
                continue;
            }
            if placement == Placement::Diagonal {
                // Values to the tile buffer, then element by element.
                for (r, acc_r) in acc.iter().enumerate() {
                    let rv = s.splat(rn.get(r).copied().unwrap_or(0.0));
                    let row = tile.get_mut(r * nr..(r + 1) * nr).unwrap_or(&mut []);
                    for (v, (a, c)) in acc_r.iter().zip(&cn).enumerate() {
                        let val = E::finish(s, *a, rv, *c);
                        s.store(val, row.get_mut(v * l..).unwrap_or(&mut []));
                    }
                }
                store_diagonal(g, tile, i0, mr, j0, ncols, out);
                continue;
            }
            for (r, acc_r) in acc.iter().enumerate().take(mr) {
                let rv = s.splat(rn.get(r).copied().unwrap_or(0.0));
                let start = (il0 + r) * n + j0;
                let orow = out.get_mut(start..start + ncols).unwrap_or(&mut []);
                let trow = tile.get_mut(r * nr..(r + 1) * nr).unwrap_or(&mut []);
                for (v, (a, c)) in acc_r.iter().zip(&cn).enumerate() {
                    let val = E::finish(s, *a, rv, *c);
                    s.store(val, orow.get_mut(v * l..).unwrap_or(&mut []));
                    if placement == Placement::Upper {
                        s.store(val, trow.get_mut(v * l..).unwrap_or(&mut []));
                    }
                }
            }
            if placement == Placement::Upper {
                store_transposed(g, tile, i0, mr, j0, ncols, out);
            }
        }
    }
}

/// Writes `out[j][i] = tile[i - i0][j - j0]` (local rows) for the tile's `mr x ncols`
/// values: the mirror image of a strictly-upper tile.
#[inline(always)]
fn store_transposed(
    g: Geometry,
    tile: &[f32],
    i0: usize,
    mr: usize,
    j0: usize,
    ncols: usize,
    out: &mut [f32],
) {
    let Geometry { n, nr, r0, .. } = g;
    let rows = out.get_mut((j0 - r0) * n..).unwrap_or(&mut []);
    for (c, orow) in rows.chunks_exact_mut(n).take(ncols).enumerate() {
        let dst = orow.get_mut(i0..i0 + mr).unwrap_or(&mut []);
        for (r, o) in dst.iter_mut().enumerate() {
            if let Some(&v) = tile.get(r * nr + c) {
                *o = v;
            }
        }
    }
}

/// Stores a tile that crosses the diagonal: `(i, j)` and `(j, i)` for `j > i`, exact 0 at
/// `i == j`, nothing else (the entries below the diagonal come from other tiles' mirrors).
#[inline(always)]
fn store_diagonal(
    g: Geometry,
    tile: &[f32],
    i0: usize,
    mr: usize,
    j0: usize,
    ncols: usize,
    out: &mut [f32],
) {
    let Geometry { n, nr, r0, .. } = g;
    for r in 0..mr {
        let i = i0 + r;
        for c in 0..ncols {
            let j = j0 + c;
            if j > i {
                let v = tile.get(r * nr + c).copied().unwrap_or(0.0);
                if let Some(o) = out.get_mut((i - r0) * n + j) {
                    *o = v;
                }
                if let Some(o) = out.get_mut((j - r0) * n + i) {
                    *o = v;
                }
            } else if j == i {
                if let Some(o) = out.get_mut((i - r0) * n + i) {
                    *o = 0.0;
                }
            }
        }
    }
}

/// The block driver: packs the anchors, then sweeps the column panels.
#[inline(always)]
fn drive<S: Simd, const MR: usize, const NV: usize, E: Epilogue>(s: S, job: Block<'_, '_>) {
    let Block {
        a,
        r0,
        r1,
        b,
        pairwise,
        out,
        ws,
        ..
    } = job;
    let d = a.dim();
    let nr = NV * S::LANES;
    let m = r1.saturating_sub(r0);
    // `panel_len != 0` (explicit, so the chunk iterators below have no panic path).
    let Some(panel_len) = nr.checked_mul(d).filter(|&l| l != 0) else {
        return;
    };
    if m == 0 || nr == 0 {
        return;
    }
    let n = b.rows();
    let padded = m.div_ceil(nr) * nr;
    // The caller checked `ws.len() >= block_workspace_len(m, d)`, which covers every
    // backend's panel width; the checked splits below cannot fail.
    let Some((row_norms, ws)) = ws.split_at_mut_checked(padded) else {
        return;
    };
    let Some((col_norms, ws)) = ws.split_at_mut_checked(nr) else {
        return;
    };
    let Some((apack, ws)) = ws.split_at_mut_checked(padded * d) else {
        return;
    };
    let Some((bpack, tile)) = ws.split_at_mut_checked(panel_len) else {
        return;
    };
    let Some(anchors) = a.as_slice().get(r0 * d..r1 * d) else {
        return;
    };
    for ((panel, pnorms), src) in apack
        .chunks_exact_mut(panel_len)
        .zip(row_norms.chunks_exact_mut(nr))
        .zip(anchors.chunks(panel_len))
    {
        pack::<S, MR, NV>(s, src, d, nr, panel);
        panel_norms::<S, NV, E>(s, panel, nr, pnorms);
    }
    let (apack, row_norms) = (&*apack, &*row_norms);
    let g = Geometry {
        d,
        n,
        nr,
        panel_len,
        r0,
        r1,
    };

    let mut rect = Rect {
        b,
        bpack,
        col_norms,
        apack,
        row_norms,
    };
    if pairwise {
        rect.run::<S, MR, NV, E>(s, g, 0, r0, out, tile);
        // The symmetric part: the anchor panels are the column panels.
        for (q, (bpanel, cnorms)) in apack
            .chunks_exact(panel_len)
            .zip(row_norms.chunks_exact(nr))
            .enumerate()
        {
            let j0 = r0 + q * nr;
            let ncols = nr.min(r1 - j0);
            sweep::<S, MR, NV, E>(
                s, g, apack, row_norms, bpanel, cnorms, j0, ncols, true, out, tile,
            );
        }
        rect.run::<S, MR, NV, E>(s, g, r1, n, out, tile);
    } else {
        rect.run::<S, MR, NV, E>(s, g, 0, n, out, tile);
    }
}

/// Columns outside the symmetric part, packed panel by panel.
struct Rect<'w, 'a> {
    b: Matrix<'a>,
    bpack: &'w mut [f32],
    col_norms: &'w mut [f32],
    apack: &'w [f32],
    row_norms: &'w [f32],
}

impl Rect<'_, '_> {
    /// Every tile of the anchor block against the columns `c0..c1` of `b`.
    #[inline(always)]
    fn run<S: Simd, const MR: usize, const NV: usize, E: Epilogue>(
        &mut self,
        s: S,
        g: Geometry,
        c0: usize,
        c1: usize,
        out: &mut [f32],
        tile: &mut [f32],
    ) {
        let (d, nr) = (g.d, g.nr);
        let mut j0 = c0;
        while j0 < c1 {
            let ncols = nr.min(c1 - j0);
            let src = self
                .b
                .as_slice()
                .get(j0 * d..(j0 + ncols) * d)
                .unwrap_or(&[]);
            pack::<S, MR, NV>(s, src, d, nr, self.bpack);
            panel_norms::<S, NV, E>(s, self.bpack, nr, self.col_norms);
            sweep::<S, MR, NV, E>(
                s,
                g,
                self.apack,
                self.row_norms,
                self.bpack,
                self.col_norms,
                j0,
                ncols,
                false,
                out,
                tile,
            );
            j0 += nr;
        }
    }
}
