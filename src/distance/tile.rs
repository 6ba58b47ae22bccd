//! The packed, register-blocked distance microkernel, written once over [`Simd`].
//!
//! A call computes a block of anchor rows `r0..r1` of `a` against every row of `b`
//! (`b = a` for a pairwise matrix), writing `out[(i - r0) * n + j] = d(a_i, b_j)`.
//!
//! - **Packing.** Rows are copied into panels of `NR = NV * LANES` rows, transposed to
//!   `[k][NR]`, zero-padded: for each coordinate `k`, the `NR` values are contiguous.
//!   The anchor block and the columns outside its symmetric part are packed once, at a
//!   64-byte boundary of the workspace; in a pairwise block the anchor panels also serve
//!   as the column panels of the symmetric part. An output too large for the cache
//!   (`ALIGNED_OUT_MIN`) is cut at its cache lines: panels start where a tile's rows of
//!   values fill whole lines of `out`, the first panel of each range partial, so no line
//!   is written by two tiles that run far apart. Finite values do not depend on the cut
//!   (a NaN entry stays NaN, but which input's payload it carries may).
//! - **Loop order** (a GEMM macrokernel's): the packed anchors in blocks of about 32 KiB;
//!   each block is swept by every column panel in order; each pair (anchor micro-panel,
//!   column panel) is one microkernel call. A block stays in the first cache levels and
//!   the stores of consecutive tiles stay in the block's rows.
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
//!   computed; each strictly-upper value is written at `(i, j)` and `(j, i)`; the
//!   diagonal is exactly 0, except for cosine rows whose norm is clamped (see
//!   `Epilogue::diagonal`).
//! - **Square tiles** (`MR == LANES`, `NV == 1`, the x86 backends' shape) and **paired
//!   tiles** (`2 MR == LANES`, `NV == 2`: two `MR x 2 LANES` micro-tiles stacked make the
//!   two `LANES x LANES` squares of a group of `LANES` rows): the mirror image of a square
//!   and the packing of `LANES x LANES` blocks go through an in-register transpose
//!   ([`Simd::transpose`]) and whole-vector stores, and a square's rows are all finished
//!   before the first is stored; other shapes (the portable backend on SSE2) fall back to
//!   element-wise copies. The AVX-512 backend's `16 x 16` square gives way to the paired
//!   `8 x 32` tile for rows of at least [`LONG_ROWS`] elements: its step issues 2 loads
//!   and 8 broadcasts for 16 multiply-adds (the square's: 1 load and 16 broadcasts), and
//!   measured faster on long rows, slower on short ones.

use super::{clamp_norm, DistanceMode, Metric, NORM_EPS};
use crate::math;
use crate::matrix::Matrix;
use crate::simd::{Backend, Kernel, Simd, MAX_LANES, MR_MAX, NR_MAX};

/// Workspace elements for a block of `rows` anchor rows against `other` columns outside
/// the block's symmetric part (all of them for a cross matrix), of dimension `dim`, for
/// every backend: norms and packed rows, each of the (up to three) groups padded to whole
/// panels, and one tile; nothing for an empty block. Saturates instead of overflowing.
pub(super) const fn block_workspace_len(rows: usize, other: usize, dim: usize) -> usize {
    if rows == 0 {
        return 0;
    }
    // Every backend's panel width `nr` divides `NR_MAX`, so whole `NR_MAX` panels cover
    // its whole panels. A range cut to the output's lines (`store_phase`: only for an
    // output of at least `ALIGNED_OUT_MIN` elements, at most `rows * (rows + other)`;
    // the anchor rows only in a pairwise block, which this function cannot tell apart)
    // takes at most one panel more than its length needs, its first one partial: at most
    // `(len.div_ceil(nr) + 1) * nr <= (len.div_ceil(NR_MAX) + 1) * NR_MAX` slots.
    let extra = (rows.saturating_mul(rows.saturating_add(other)) >= ALIGNED_OUT_MIN) as usize;
    let rows_padded = rows
        .div_ceil(NR_MAX)
        .saturating_add(extra)
        .saturating_mul(NR_MAX);
    // The other columns form at most two ranges, each under `len + (1 + extra) * nr`.
    let other_padded = if other == 0 {
        0
    } else {
        other.saturating_add((2 + 2 * extra) * NR_MAX)
    };
    let packed_rows = rows_padded.saturating_add(other_padded);
    packed_rows
        .saturating_add(packed_rows.saturating_mul(dim))
        .saturating_add(MR_MAX * NR_MAX)
        .saturating_add(ALIGN)
}

/// Elements skipped at most to start the packed buffers on a 64-byte boundary (whole
/// cache lines, aligned vector loads).
const ALIGN: usize = 16;

/// Packed anchor rows per row block: about 32 KiB, so a block stays in the first cache
/// levels while every column panel passes over it.
const ROW_BLOCK_ELEMS: usize = 8192;

/// How a range of rows `start..end` is cut into panels of `nr` slots: panel `p` covers
/// the virtual slots `p * nr..(p + 1) * nr` of the range shifted right by `shift < nr`,
/// so the first panel holds `nr - shift` rows (or fewer: the range's length), the last
/// one what remains, and every other panel starts at an index congruent to `start -
/// shift` modulo `nr`. A panel's rows sit in its first slots, the rest is zero padding.
#[derive(Clone, Copy)]
struct Cuts {
    start: usize,
    end: usize,
    shift: usize,
    nr: usize,
}

impl Cuts {
    /// Cuts `start..end` (`start <= end`, `nr > 0`) so that panels after the first begin
    /// at indices congruent to `phase` modulo `nr`; at `start` itself without a phase.
    #[inline(always)]
    fn new(start: usize, end: usize, nr: usize, phase: Option<usize>) -> Self {
        let shift = match phase {
            Some(phase) if nr != 0 => (start % nr + nr - phase % nr) % nr,
            _ => 0,
        };
        Cuts {
            start,
            end,
            shift,
            nr,
        }
    }

    /// Number of panels: none for an empty range.
    #[inline(always)]
    fn count(self) -> usize {
        if self.end <= self.start || self.nr == 0 {
            return 0;
        }
        (self.end - self.start + self.shift).div_ceil(self.nr)
    }

    /// The rows of panel `p` (`p < count()`).
    #[inline(always)]
    fn rows(self, p: usize) -> (usize, usize) {
        let first = self.start + (p * self.nr).max(self.shift) - self.shift;
        let last = (self.start + (p + 1) * self.nr - self.shift).min(self.end);
        (first, last.max(first))
    }
}

/// Smallest output block (elements) whose tiles are cut to its cache lines: 4 MiB, more
/// than the second-level cache of current cores.
const ALIGNED_OUT_MIN: usize = 1 << 20;

/// The index phase (modulo `nr`) at which a tile's row of `nr` values fills aligned
/// `4 nr` bytes of `out` (rows of `n` values; `nr` divides 16, or is a multiple of 16
/// and each of its squares' rows fills a line), so that every line of `out` is written
/// by one tile. Worth it only for an output that leaves the cache: a line shared by two
/// tiles that run far apart (the mirrored stores of two row blocks) is then fetched and
/// written back twice, while the aligned cut costs one panel more, a partial one at each
/// end (3 % more tiles for `n = 1024`). `None` below
/// [`ALIGNED_OUT_MIN`] elements, for fewer than 32 column panels, or when no phase does
/// it for every row (`n` not a multiple of `nr`, or of 16 for wider panels).
#[inline(always)]
fn store_phase(out: &[f32], n: usize, nr: usize) -> Option<usize> {
    if nr == 0
        || !(16_usize.is_multiple_of(nr) || nr.is_multiple_of(16))
        || !n.is_multiple_of(nr.min(16))
        || n < 32 * nr
        || out.len() < ALIGNED_OUT_MIN
    {
        return None;
    }
    // Elements to the next 64-byte line; an `f32` buffer is 4-byte aligned.
    let skip = out.as_ptr().align_offset(64);
    (skip < 16).then_some(skip % nr)
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
    /// `b` is `a`: use symmetry inside `r0..r1` and write the diagonal exactly.
    pub pairwise: bool,
    pub metric: Metric,
    pub mode: DistanceMode,
    /// Compute `-<a, b>` instead of a distance (the inner-product search of the
    /// retrieval kernels; `metric` and `mode` are then unread).
    pub neg_dot: bool,
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
    /// The diagonal entry `d(x_i, x_i)` of a pairwise matrix, from the tile's value there
    /// and the row's norm term: exactly 0 for the Euclidean metrics.
    #[inline(always)]
    fn diagonal(value: f32, norm_term: f32) -> f32 {
        let _ = (value, norm_term);
        0.0
    }
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
    /// The formula's value `1 - |a|^2 / max(|a|, eps)^2`: exactly 0 for a row whose norm
    /// is above the clamp, `1 - (|a| / eps)^2` (1 for a zero row) below it, as the same
    /// row gives in a cross matrix.
    #[inline(always)]
    fn diagonal(value: f32, norm_term: f32) -> f32 {
        if norm_term == 1.0 / NORM_EPS {
            value
        } else {
            0.0
        }
    }
}

/// `-<a, b>`: the inner product, negated so that the largest ranks first (never on a
/// pairwise block: its diagonal would be 0).
struct NegDot;
impl Epilogue for NegDot {
    const DIRECT: bool = false;
    const NORMS: Norms = Norms::None;
    #[inline(always)]
    fn finish<S: Simd>(s: S, acc: S::V, _: S::V, _: S::V) -> S::V {
        s.sub(s.zero(), acc)
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
        self.run_shape::<S, MR, NV>(s);
    }
}

/// A block on the AVX-512 backend's long-row shape, the paired `8 x 32` tile (only
/// dispatched to that backend).
struct LongRows<'a, 'o>(Block<'a, 'o>);

impl Kernel for LongRows<'_, '_> {
    type Output = ();
    #[inline(always)]
    fn run<S: Simd, const MR: usize, const NV: usize>(self, s: S) {
        self.0.run_shape::<S, 8, 2>(s);
    }
}

impl Block<'_, '_> {
    /// Runs the block on `backend`: with the backend's own tile, or on AVX-512 with rows
    /// of at least [`LONG_ROWS`] elements the paired `8 x 32` one. Two kernel types, not
    /// a branch inside one: each shape is then its own entry function, whose stack frame,
    /// in an unoptimised build, holds the locals of every path inlined into it.
    pub(super) fn run_on(self, backend: Backend) {
        if backend == Backend::Avx512 && self.a.dim() >= LONG_ROWS {
            backend.dispatch(LongRows(self));
        } else {
            backend.dispatch(self);
        }
    }
}

/// Row length from which the AVX-512 backend's square `16 x 16` tile gives way to the
/// paired `8 x 32` one (measured on a Xeon core with AVX-512, pairwise matrices of
/// 1024 rows: the paired tile 3 % faster at `d = 256`, 10-12 % at `d = 512`, unchanged
/// at `d = 128`, 20 % slower at `d = 64`).
const LONG_ROWS: usize = 256;

impl Block<'_, '_> {
    #[inline(always)]
    fn run_shape<S: Simd, const MR: usize, const NV: usize>(self, s: S) {
        if self.neg_dot {
            drive::<S, MR, NV, NegDot>(s, self);
            return;
        }
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
/// For shapes stored by squares (`nr == NV * LANES`) a block of `LANES x LANES` at a
/// time, square by square, through [`Simd::transpose`].
#[inline(always)]
fn pack<S: Simd, const MR: usize, const NV: usize>(
    s: S,
    src: &[f32],
    d: usize,
    nr: usize,
    panel: &mut [f32],
) {
    let l = S::LANES;
    if squares::<S, MR, NV>() && nr == NV * l {
        for h in 0..NV {
            let rows = src.get(h * l * d..).unwrap_or(&[]);
            let mut k0 = 0;
            while k0 < d {
                let kl = l.min(d - k0);
                let mut blk = [s.zero(); MAX_LANES];
                let blk = blk.get_mut(..l).unwrap_or(&mut []);
                for (c, b) in blk.iter_mut().enumerate() {
                    let start = c * d + k0;
                    // A missing row (past the end of `src`) loads as zeros.
                    *b = s.load(rows.get(start..start + kl).unwrap_or(&[]));
                }
                s.transpose(blk);
                for (kk, b) in blk.iter().enumerate().take(kl) {
                    let start = (k0 + kk) * nr + h * l;
                    s.store(*b, panel.get_mut(start..start + l).unwrap_or(&mut []));
                }
                k0 += l;
            }
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
    panel: &mut [f32],
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
        for (c, o) in out.iter_mut().take(nr).enumerate() {
            if *o > COSINE_SQ_MAX {
                *o = rescale_column(panel, nr, c);
            }
            *o = 1.0 / clamp_norm(math::sqrt(*o));
        }
    }
}

/// Largest squared norm a cosine row is packed with: below it no dot product of two
/// packed rows can overflow (`|<a, b>| <= |a| |b|`).
const COSINE_SQ_MAX: f32 = 8.507_059e37; // 2^126

/// Scales column `c` of a packed panel (one row, `panel[k * nr + c]`) by a power of two
/// that brings its largest element into `[1, 4)`, and returns its new squared norm.
/// Exact, and invisible to the cosine distance, which is scale-invariant per row; only
/// rows whose squared norm exceeds [`COSINE_SQ_MAX`] take this path, far above the norm
/// clamp. A row holding an infinity keeps it (and its distances stay non-finite).
#[inline(always)]
fn rescale_column(panel: &mut [f32], nr: usize, c: usize) -> f32 {
    let column = || panel.iter().skip(c).step_by(nr);
    let m = column().fold(0.0_f32, |m, v| m.max(v.abs()));
    if !m.is_finite() {
        return f32::INFINITY;
    }
    let scale = super::pow2_inverse(m);
    let mut sq = 0.0_f32;
    for v in panel.iter_mut().skip(c).step_by(nr) {
        *v *= scale;
        sq += *v * *v;
    }
    sq
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
    // Advanced by hand: a `zip` of chunk iterators that is not inlined keeps a division by
    // the chunk size, and with it a panic path.
    let mut b_rows = bpanel.chunks_exact(nr);
    for ak in apanel.chunks_exact(nr) {
        let (Some(ak), Some(bk)) = (ak.get(off..off + MR), b_rows.next()) else {
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
    /// Columns of `out` (rows of `b`).
    n: usize,
    /// Panel width `NV * LANES`.
    nr: usize,
    /// `nr * d`, never 0.
    panel_len: usize,
    r0: usize,
}

/// Where a tile's values go.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Placement {
    /// Below or beside the symmetric part: stored as computed.
    Rect,
    /// Strictly above the diagonal of the symmetric part: stored and mirrored.
    Upper,
    /// Crossing the diagonal: entries above it stored and mirrored, the diagonal exact.
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
    cuts: Cuts,
    panels: (usize, usize),
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
        ..
    } = g;
    let l = S::LANES;
    let mut cn = [s.zero(); NV];
    for (v, c) in cn.iter_mut().enumerate() {
        *c = s.load(col_norms.get(v * l..ncols).unwrap_or(&[]));
    }
    for (p, apanel) in apack
        .chunks_exact(panel_len)
        .enumerate()
        .take(panels.1)
        .skip(panels.0)
    {
        let pnorms = row_norms.get(p * nr..(p + 1) * nr).unwrap_or(&[]);
        let (first, last) = cuts.rows(p);
        // Groups of `LANES` rows (one micro-tile, or two stacked) for the shapes stored
        // by squares, single micro-tiles otherwise.
        let step = if squares::<S, MR, NV>() { l } else { MR };
        for off in (0..nr).step_by(step) {
            let i0 = first + off;
            if i0 >= last {
                break;
            }
            if symmetric && i0 >= j0 + ncols {
                return;
            }
            let mr = step.min(last - i0);
            if squares::<S, MR, NV>() {
                let rn = pnorms.get(off..off + l).unwrap_or(&[]);
                let top = micro::<S, MR, NV, E>(s, apanel, off, bpanel, nr);
                // A second micro-tile of padding rows only is not computed.
                let bottom = if MR < l && mr > MR {
                    micro::<S, MR, NV, E>(s, apanel, off + MR, bpanel, nr)
                } else {
                    [[s.zero(); NV]; MR]
                };
                for (h, &c) in cn.iter().enumerate() {
                    let jh = j0 + h * l;
                    let nch = ncols.saturating_sub(h * l).min(l);
                    if nch == 0 {
                        break;
                    }
                    // Row `r` of the group against the square's columns, every row
                    // finished before the first is stored.
                    let mut v = [c; MAX_LANES];
                    for r in 0..MR {
                        let halves = [&top, &bottom].into_iter().enumerate().take(l / MR);
                        for (half, acc) in halves {
                            let row = half * MR + r;
                            let rv = s.splat(rn.get(row).copied().unwrap_or(0.0));
                            let a = acc[r].get(h).copied().unwrap_or(c);
                            if let Some(x) = v.get_mut(row) {
                                *x = E::finish(s, a, rv, c);
                            }
                        }
                    }
                    let rows = (i0, mr);
                    store_square::<S, E>(s, g, &mut v, rn, rows, (jh, nch), symmetric, out, tile);
                }
                continue;
            }
            let placement = if !symmetric {
                Placement::Rect
            } else if i0 + mr <= j0 {
                Placement::Upper
            } else {
                Placement::Diagonal
            };
            let acc = micro::<S, MR, NV, E>(s, apanel, off, bpanel, nr);
            let rn = pnorms.get(off..off + MR).unwrap_or(&[]);
            let il0 = i0 - r0;
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
                store_diagonal::<E>(g, tile, rn, i0, mr, j0, ncols, out);
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

/// Shapes whose tiles are stored by squares (`LANES x LANES`, through the in-register
/// transpose): the square tile (`MR == LANES`, `NV == 1`) and the paired one (`2 MR ==
/// LANES`, `NV == 2`: two `MR x 2 LANES` micro-tiles stacked make the two squares of a
/// group of `LANES` rows).
#[inline(always)]
const fn squares<S: Simd, const MR: usize, const NV: usize>() -> bool {
    (MR == S::LANES && NV == 1) || (2 * MR == S::LANES && NV == 2)
}

/// Stores the square of rows `i0..i0 + mr` and columns `j0..j0 + nc` (at most `LANES`
/// each) whose rows are the first `LANES` vectors of `v` (transposed in place when
/// mirrored), `rn` the rows' norm terms: as a square tile's values are stored.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn store_square<S: Simd, E: Epilogue>(
    s: S,
    g: Geometry,
    v: &mut [S::V; MAX_LANES],
    rn: &[f32],
    (i0, mr): (usize, usize),
    (j0, nc): (usize, usize),
    symmetric: bool,
    out: &mut [f32],
    tile: &mut [f32],
) {
    let Geometry { n, nr, r0, .. } = g;
    let il0 = i0 - r0;
    let v = v.get_mut(..S::LANES).unwrap_or(&mut []);
    let placement = if !symmetric {
        Placement::Rect
    } else if i0 + mr <= j0 {
        Placement::Upper
    } else if j0 + nc <= i0 {
        // Wholly below the diagonal: another square's mirror image.
        return;
    } else {
        Placement::Diagonal
    };
    if placement == Placement::Diagonal && (i0 != j0 || mr != S::LANES || nc != S::LANES) {
        // A partial square crossing the diagonal: through the tile buffer.
        for (r, x) in v.iter().enumerate() {
            s.store(*x, tile.get_mut(r * nr..(r + 1) * nr).unwrap_or(&mut []));
        }
        store_diagonal::<E>(g, tile, rn, i0, mr, j0, nc, out);
        return;
    }
    // Rows stored as computed (a partial first panel has fewer rows than the square),
    // then, in the symmetric part, transposed in registers. Above the diagonal: the
    // transposed rows are the mirrored rows. On it (a whole square, whose rows are its
    // columns): each row's entries left of the diagonal are overwritten (a masked store of
    // the first `r` lanes) by its transposed row, the values computed above the diagonal,
    // and the diagonal entry is set: what `store_diagonal` writes.
    for (r, x) in v.iter().enumerate().take(mr) {
        let start = (il0 + r) * n + j0;
        s.store(*x, out.get_mut(start..start + nc).unwrap_or(&mut []));
    }
    if placement == Placement::Rect {
        return;
    }
    s.transpose(v);
    if placement == Placement::Upper {
        for (c, x) in v.iter().enumerate().take(nc) {
            let start = (j0 + c - r0) * n + i0;
            s.store(*x, out.get_mut(start..start + mr).unwrap_or(&mut []));
        }
    } else {
        for (r, x) in v.iter().enumerate() {
            let start = (il0 + r) * n + j0;
            s.store(*x, out.get_mut(start..start + r).unwrap_or(&mut []));
            if let Some(o) = out.get_mut(start + r) {
                *o = E::diagonal(*o, rn.get(r).copied().unwrap_or(0.0));
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
    for c in 0..ncols {
        let start = (j0 + c - r0) * n + i0;
        let dst = out.get_mut(start..start + mr).unwrap_or(&mut []);
        for (r, o) in dst.iter_mut().enumerate() {
            if let Some(&v) = tile.get(r * nr + c) {
                *o = v;
            }
        }
    }
}

/// Stores a tile that crosses the diagonal: `(i, j)` and `(j, i)` for `j > i`,
/// [`Epilogue::diagonal`] at `i == j` (`rn`: the rows' norm terms), nothing else (the
/// entries below the diagonal come from other tiles' mirrors).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn store_diagonal<E: Epilogue>(
    g: Geometry,
    tile: &[f32],
    rn: &[f32],
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
                let v = tile.get(r * nr + c).copied().unwrap_or(0.0);
                let norm_term = rn.get(r).copied().unwrap_or(0.0);
                if let Some(o) = out.get_mut((i - r0) * n + i) {
                    *o = E::diagonal(v, norm_term);
                }
            }
        }
    }
}

/// The block driver: packs the anchors, then sweeps the column panels.
#[inline(always)]
fn drive<S: Simd, const MR: usize, const NV: usize, E: Epilogue>(s: S, job: Block<'_, '_>) {
    // The lane, tile and panel buffers (and the workspace) are sized for these bounds.
    const {
        assert!(S::LANES <= MAX_LANES && MR <= MR_MAX && NV * S::LANES <= NR_MAX);
    }
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
    // Panels of rows and of columns start where a tile's stores fill whole aligned
    // vectors of `out` (when some phase does that for every row): a mirrored tile's rows
    // are the column panel's rows, so both kinds of store are aligned.
    let phase = store_phase(out, n, nr);
    // A cross block's anchor rows are only stored as rows: their cut does not move a
    // store, and a partial first panel would only add tiles.
    let cuts = Cuts::new(r0, r1, nr, if pairwise { phase } else { None });
    let panels = cuts.count();
    let padded = panels * nr;
    // Columns outside the symmetric part: `0..r0` and `r1..n` for a pairwise block, all
    // of `b` for a cross block. Packed once, panel by panel.
    let regions = if pairwise {
        [(0, r0), (r1, n)]
    } else {
        [(0, n), (n, n)]
    };
    let regions = regions.map(|(c0, c1)| Cuts::new(c0, c1, nr, phase));
    let rect_panels = regions[0].count() + regions[1].count();
    // Norms and panels are whole multiples of `nr` elements: aligning the start aligns
    // every panel.
    let skip = ws.as_ptr().align_offset(4 * ALIGN).min(ALIGN);
    let Some(ws) = ws.get_mut(skip..) else {
        return;
    };
    // The caller checked `ws.len() >= block_workspace_len(m, other, d)`, which covers every
    // backend's panel width; the checked splits below cannot fail.
    let Some((row_norms, ws)) = ws.split_at_mut_checked(padded) else {
        return;
    };
    let Some((col_norms, ws)) = ws.split_at_mut_checked(rect_panels * nr) else {
        return;
    };
    let Some((apack, ws)) = ws.split_at_mut_checked(padded * d) else {
        return;
    };
    let Some((bpack, tile)) = ws.split_at_mut_checked(rect_panels * panel_len) else {
        return;
    };
    let Some(anchors) = a.as_slice().get(r0 * d..r1 * d) else {
        return;
    };
    pack_rows::<S, MR, NV, E>(s, anchors, d, cuts, panel_len, apack, row_norms);
    let mut packed_cols = 0;
    for region in regions {
        let src = b
            .as_slice()
            .get(region.start * d..region.end * d)
            .unwrap_or(&[]);
        let count = region.count();
        let dst = bpack
            .get_mut(packed_cols * panel_len..(packed_cols + count) * panel_len)
            .unwrap_or(&mut []);
        let norms = col_norms
            .get_mut(packed_cols * nr..(packed_cols + count) * nr)
            .unwrap_or(&mut []);
        pack_rows::<S, MR, NV, E>(s, src, d, region, panel_len, dst, norms);
        packed_cols += count;
    }
    let (apack, row_norms, bpack, col_norms) = (&*apack, &*row_norms, &*bpack, &*col_norms);
    let g = Geometry {
        n,
        nr,
        panel_len,
        r0,
    };

    // Row blocks of packed anchors, each against every column panel in order.
    let block = (ROW_BLOCK_ELEMS / panel_len).max(1);
    let mut p0 = 0;
    while p0 < panels {
        let p1 = (p0 + block).min(panels);
        let mut rect_panel = 0;
        for (i, region) in regions.iter().enumerate() {
            if i == 1 && pairwise {
                // The symmetric part: the anchor panels are the column panels; only those
                // on or right of the row block's diagonal.
                for (q, bpanel) in apack.chunks_exact(panel_len).enumerate().skip(p0) {
                    let cnorms = row_norms.get(q * nr..(q + 1) * nr).unwrap_or(&[]);
                    let (j0, j1) = cuts.rows(q);
                    sweep::<S, MR, NV, E>(
                        s,
                        g,
                        apack,
                        row_norms,
                        cuts,
                        (p0, p1),
                        bpanel,
                        cnorms,
                        j0,
                        j1 - j0,
                        true,
                        out,
                        tile,
                    );
                }
            }
            for t in 0..region.count() {
                let (j0, j1) = region.rows(t);
                let bpanel = bpack
                    .get(rect_panel * panel_len..(rect_panel + 1) * panel_len)
                    .unwrap_or(&[]);
                let cnorms = col_norms
                    .get(rect_panel * nr..(rect_panel + 1) * nr)
                    .unwrap_or(&[]);
                sweep::<S, MR, NV, E>(
                    s,
                    g,
                    apack,
                    row_norms,
                    cuts,
                    (p0, p1),
                    bpanel,
                    cnorms,
                    j0,
                    j1 - j0,
                    false,
                    out,
                    tile,
                );
                rect_panel += 1;
            }
        }
        p0 = p1;
    }
}

/// Packs consecutive rows `src` (length `d` each, the rows of `cuts`) into the panels of
/// `cuts`, whole panels of `dst`, and their norm terms into `norms` (`nr` per panel).
#[inline(always)]
fn pack_rows<S: Simd, const MR: usize, const NV: usize, E: Epilogue>(
    s: S,
    src: &[f32],
    d: usize,
    cuts: Cuts,
    panel_len: usize,
    dst: &mut [f32],
    norms: &mut [f32],
) {
    if panel_len == 0 {
        return;
    }
    let nr = NV * S::LANES;
    for (p, panel) in dst.chunks_exact_mut(panel_len).enumerate() {
        let (first, last) = cuts.rows(p);
        let rows = src
            .get((first - cuts.start) * d..(last - cuts.start) * d)
            .unwrap_or(&[]);
        let pnorms = norms.get_mut(p * nr..(p + 1) * nr).unwrap_or(&mut []);
        pack::<S, MR, NV>(s, rows, d, nr, panel);
        panel_norms::<S, NV, E>(s, panel, nr, pnorms);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Test data of valid shapes.
mod tests {
    use super::*;
    extern crate std;
    use std::vec;
    use std::vec::Vec;

    /// A block run with the paired shape on every backend (`LANES / 2 x 2 LANES`),
    /// whatever the row length: the AVX-512 backend takes it only for long rows, the
    /// others never.
    struct Paired<'a, 'o>(Block<'a, 'o>);

    impl Kernel for Paired<'_, '_> {
        type Output = ();
        #[inline(always)]
        fn run<S: Simd, const MR: usize, const NV: usize>(self, s: S) {
            if S::LANES == 16 {
                self.0.run_shape::<S, 8, 2>(s);
            } else if S::LANES == 8 {
                self.0.run_shape::<S, 4, 2>(s);
            }
        }
    }

    type Job<'a> = (
        Matrix<'a>,
        Matrix<'a>,
        (usize, usize),
        bool,
        Metric,
        DistanceMode,
    );

    fn block<'a, 'o>(job: Job<'a>, out: &'o mut [f32], ws: &'o mut [f32]) -> Block<'a, 'o> {
        let (a, b, (r0, r1), pairwise, metric, mode) = job;
        Block {
            a,
            r0,
            r1,
            b,
            pairwise,
            metric,
            mode,
            neg_dot: false,
            out,
            ws,
        }
    }

    fn values(len: usize, seed: u32) -> Vec<f32> {
        let mut state = seed | 1;
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                (state % 2001) as f32 / 500.0 - 2.0
            })
            .collect()
    }

    /// Rows `r0..r1` of `x` against `y` (`x` itself when `pairwise`), every metric and
    /// mode, written `shift` floats past a cache line: the paired shape writes the same
    /// bits as the backend's own (each entry is summed in the same order), except that a
    /// NaN entry only has to stay NaN.
    fn check(x: Matrix<'_>, y: Matrix<'_>, (r0, r1): (usize, usize), pairwise: bool) {
        let m = r1 - r0;
        let n = y.rows();
        let other = if pairwise { n - m } else { n };
        let mut ws = vec![0.0_f32; block_workspace_len(m, other, x.dim())];
        let mut buf = vec![f32::NAN; m * n + 32];
        let mut want = vec![0.0_f32; m * n];
        let modes = [DistanceMode::Gram, DistanceMode::Direct];
        let metrics = [Metric::SquaredEuclidean, Metric::Euclidean, Metric::Cosine];
        for &backend in Backend::available() {
            for metric in metrics {
                for mode in modes {
                    for shift in [0, 3] {
                        let base = buf.as_ptr().align_offset(64);
                        let out = &mut buf[base + shift..base + shift + m * n];
                        let job = (x, y, (r0, r1), pairwise, metric, mode);
                        out.fill(f32::NAN);
                        backend.dispatch(block(job, out, &mut ws));
                        want.copy_from_slice(out);
                        out.fill(-1.0);
                        backend.dispatch(Paired(block(job, out, &mut ws)));
                        for (i, (g, w)) in out.iter().zip(&want).enumerate() {
                            assert!(
                                g.to_bits() == w.to_bits() || g.is_nan() && w.is_nan(),
                                "{backend:?} {metric:?} {mode:?} shift {shift}: \
                                 entry {i} {g} vs {w}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn paired_tiles_match_the_backends_own() {
        // Partial last panels and groups (of 13 and 5 rows at 16 lanes, 5 and 3 at 8), a
        // row block that starts and ends inside groups, a cross block, NaN rows.
        let (n, d) = (77, 9);
        let mut data = values(n * d, 7);
        data[5 * d + 2] = f32::NAN;
        data[40 * d] = f32::NAN;
        let x = Matrix::new(&data, n, d).unwrap();
        check(x, x, (0, n), true);
        check(x, x, (13, 50), true);
        let y = Matrix::new(&data[..61 * d], 61, d).unwrap();
        check(x, y, (3, 70), false);
        // Large enough to be cut at its cache lines (4 MiB, 32 panels of 32 columns).
        let (n, d) = (1040, 3);
        let data = values(n * d, 11);
        let x = Matrix::new(&data, n, d).unwrap();
        check(x, x, (0, n), true);
    }
}
